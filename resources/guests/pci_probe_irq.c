/* pci_probe_irq.c - the interrupt parts of pci_probe: MSI-X and MSI delivery, masking and
 * pending bits, and INTx through the IOAPIC, each interrupt taken with idt_call (rt/idt.c: the
 * handlers record the vector and jump back instead of returning). */
#include "pci_probe.h"

#define MSIX_CTRL_ENABLE 0x8000
#define MSIX_CTRL_FMASK 0x4000
#define MSIX_ENTRY_SIZE 16
#define MSIX_ENTRY_CTRL 12
#define MSIX_ENTRY_MASKED 1

#define MSI_CTRL_ENABLE 0x1
#define MSI_CTRL_64BIT 0x80
#define MSI_CTRL_PVM 0x100
#define MSI_MME_SHIFT 4

/* Interrupt messages go to the LAPIC: fixed delivery, physical destination, edge. */
#define MSI_ADDRESS_BASE 0xfee00000u
#define MSI_DEST_SHIFT 12

#define MSIX_VECTOR0 0x40 /* what MSI-X vector 0 sends */
#define MSIX_VECTOR1 0x41 /* what MSI-X vector 1 sends */
#define MSIX_VECTOR1_MOVED 0x42 /* ... after it is reprogrammed */
#define MSI_VECTOR_BASE 0x50 /* MSI with 2 messages: vector i sends 0x50 + i */
#define MSI_VECTOR_BASE_MOVED 0x58 /* MSI data after it is reprogrammed */
#define INTX_VECTOR 0x60     /* the IOAPIC entry of the device's INTx pin */

#define PCI_STATUS_INTERRUPT 0x8
#define PCI_CMD_INTX_DISABLE 0x400
#define PCI_INTERRUPT_LINE 0x3c
#define PCI_INTERRUPT_PIN 0x3d

#define IOAPIC_REGSEL 0x00
#define IOAPIC_WINDOW 0x10
#define IOAPIC_REDTBL 0x10
#define IOAPIC_LEVEL (1u << 15)
#define IOAPIC_MASKED (1u << 16)
#define IOAPIC_DEST_SHIFT 24

/* How long we wait for an interrupt that should come (the wait ends when it does, so this is
 * generous: a loaded host may deschedule the vCPU or KVM's injection worker for a while), and
 * how long we watch for one that must not come. */
#define IRQ_WAIT_US 2000000
#define IRQ_QUIET_US 200000

/* ---- helpers --------------------------------------------------------------------------------- */

static uint32_t msi_address(void)
{
    return MSI_ADDRESS_BASE | (lapic_id() << MSI_DEST_SHIFT);
}

static void interrupts_setup(void)
{
    static bool done;
    if (done)
        return;
    lapic_set_base(probe_acpi.lapic_addr);
    lapic_enable();
    idt_init(probe_acpi.lapic_addr);
    done = true;
}

struct fire_arg {
    uint32_t vector;
    uint64_t us;
};

static void fire_body(void *arg)
{
    probe_reg_write(REG_FIRE, ((struct fire_arg *)arg)->vector);
    rt_delay_us(((struct fire_arg *)arg)->us);
}

/* Writes FIRE and waits up to `us`; returns the vector that arrived or IDT_NO_INTERRUPT. */
static int fire_wait(uint32_t n, uint64_t us)
{
    struct fire_arg a = { n, us };
    return idt_call(fire_body, &a);
}

/* FIRE where an interrupt must come, and where none may. */
static int fire(uint32_t n) { return fire_wait(n, IRQ_WAIT_US); }
static int fire_quiet(uint32_t n) { return fire_wait(n, IRQ_QUIET_US); }

static void print_got(const char *prefix, int got)
{
    if (got == IDT_NO_INTERRUPT)
        rt_printf("%sgot=none", prefix);
    else
        rt_printf("%sgot=0x%x", prefix, got);
}

/* Where write_and_wait writes: MMIO, or the test device's config space (`addr` = offset). */
enum write_kind { WRITE_MMIO32, WRITE_CONFIG16, WRITE_CONFIG32 };

struct write_arg {
    enum write_kind kind;
    uint64_t addr;
    uint32_t value;
};

static void write_body(void *arg)
{
    struct write_arg *w = arg;
    if (w->kind == WRITE_CONFIG16)
        pci_write16(probe_dev, (uint16_t)w->addr, (uint16_t)w->value);
    else if (w->kind == WRITE_CONFIG32)
        pci_write32(probe_dev, (uint16_t)w->addr, w->value);
    else
        mmio_write32(w->addr, w->value);
    rt_delay_us(IRQ_WAIT_US);
}

/* Performs one write with interrupts enabled and waits; returns the vector that arrived. */
static int write_and_wait(enum write_kind kind, uint64_t addr, uint32_t value)
{
    struct write_arg w = { kind, addr, value };
    return idt_call(write_body, &w);
}

void test_msix(void)
{
    uint16_t cap = pci_find_cap(PCI_ECAM, probe_dev, CAP_ID_MSIX);
    if (!cap) {
        probe_check(false, "MSI-X capability present");
        return;
    }
    interrupts_setup();
    uint16_t ctrl = pci_read16(probe_dev, cap + 2);
    uint32_t table = pci_read32(probe_dev, cap + 4), pba = pci_read32(probe_dev, cap + 8);
    uint64_t table_addr = probe_bar_addr(table & 7) + (table & ~7u);
    uint64_t pba_addr = probe_bar_addr(pba & 7) + (pba & ~7u);
    rt_printf("msix: cap=0x%x vectors=%u table=bar%u+0x%x pba=bar%u+0x%x\n", cap,
              (ctrl & 0x7ff) + 1, table & 7, table & ~7u, pba & 7, pba & ~7u);
    if (!rt_reachable(table_addr, 0x1000) || !rt_reachable(pba_addr, 8)) {
        probe_check(false, "MSI-X table and PBA below 4 GiB");
        return;
    }

    probe_set_command(PCI_CMD_MEMORY | PCI_CMD_BUS_MASTER, 0);
    static const uint32_t vectors[2] = { MSIX_VECTOR0, MSIX_VECTOR1 };
    for (unsigned i = 0; i < 2; i++) {
        uint64_t e = table_addr + i * MSIX_ENTRY_SIZE;
        mmio_write32(e + 0, msi_address());
        mmio_write32(e + 4, 0);
        mmio_write32(e + 8, vectors[i]);
        mmio_write32(e + MSIX_ENTRY_CTRL, 0);
    }
    pci_write16(probe_dev, cap + 2, (uint16_t)((ctrl | MSIX_CTRL_ENABLE) & ~MSIX_CTRL_FMASK));
    rt_printf("msix: enabled control=0x%x entry1_data=0x%x\n", pci_read16(probe_dev, cap + 2),
              mmio_read32(table_addr + MSIX_ENTRY_SIZE + 8));

    int got = fire(1);
    print_got("msix: fire=1 ", got);
    rt_printf(" fire_status=%u\n", probe_reg_read(REG_FIRE_STATUS));
    probe_check(got == MSIX_VECTOR1, "MSI-X vector 1 delivered with its data");
    got = fire(0);
    print_got("msix: fire=0 ", got);
    rt_printf(" fire_status=%u\n", probe_reg_read(REG_FIRE_STATUS));
    probe_check(got == MSIX_VECTOR0, "MSI-X vector 0 delivered with its data");

    /* Masked entry: no interrupt, the pending bit instead; unmasking delivers it. */
    uint64_t ctrl1 = table_addr + MSIX_ENTRY_SIZE + MSIX_ENTRY_CTRL;
    mmio_write32(ctrl1, MSIX_ENTRY_MASKED);
    got = fire_quiet(1);
    uint32_t pending = mmio_read32(pba_addr);
    print_got("msix: masked fire=1 ", got);
    rt_printf(" fire_status=%u pba=0x%x\n", probe_reg_read(REG_FIRE_STATUS), pending);
    probe_check(got == IDT_NO_INTERRUPT, "no interrupt from a masked MSI-X vector");
    probe_check(pending == 0x2, "PBA bit 1 set while masked");
    got = write_and_wait(WRITE_MMIO32, ctrl1, 0);
    pending = mmio_read32(pba_addr);
    print_got("msix: unmask ", got);
    rt_printf(" pba=0x%x\n", pending);
    probe_check(got == MSIX_VECTOR1, "pending MSI-X vector delivered on unmask");
    probe_check(pending == 0, "PBA clear after delivery");

    /* The function mask holds back every vector the same way. */
    ctrl = pci_read16(probe_dev, cap + 2);
    pci_write16(probe_dev, cap + 2, ctrl | MSIX_CTRL_FMASK);
    got = fire_quiet(0);
    pending = mmio_read32(pba_addr);
    print_got("msix: function_masked fire=0 ", got);
    rt_printf(" fire_status=%u pba=0x%x\n", probe_reg_read(REG_FIRE_STATUS), pending);
    probe_check(got == IDT_NO_INTERRUPT, "no interrupt while the function is masked");
    probe_check(pending == 0x1, "PBA bit 0 set while the function is masked");
    got = write_and_wait(WRITE_CONFIG16, cap + 2, ctrl & ~MSIX_CTRL_FMASK);
    print_got("msix: function_unmask ", got);
    rt_printf(" pba=0x%x\n", mmio_read32(pba_addr));
    probe_check(got == MSIX_VECTOR0, "pending vector delivered on function unmask");

    /* Reprogramming a masked entry (as an OS moving the interrupt does) takes effect. */
    mmio_write32(ctrl1, MSIX_ENTRY_MASKED);
    mmio_write32(table_addr + MSIX_ENTRY_SIZE + 8, MSIX_VECTOR1_MOVED);
    mmio_write32(ctrl1, 0);
    got = fire(1);
    print_got("msix: reprogrammed fire=1 ", got);
    rt_printf("\n");
    probe_check(got == MSIX_VECTOR1_MOVED, "MSI-X entry reprogrammed while masked");

    pci_write16(probe_dev, cap + 2, ctrl & ~(MSIX_CTRL_ENABLE | MSIX_CTRL_FMASK));
    rt_printf("msix: interrupts=%u vector0=%u vector1=%u\n", idt_total(), idt_count(MSIX_VECTOR0),
              idt_count(MSIX_VECTOR1) + idt_count(MSIX_VECTOR1_MOVED));
}

void test_msi(void)
{
    uint16_t cap = pci_find_cap(PCI_ECAM, probe_dev, CAP_ID_MSI);
    if (!cap) {
        probe_check(false, "MSI capability present");
        return;
    }
    interrupts_setup();
    uint16_t ctrl = pci_read16(probe_dev, cap + 2);
    bool is64 = ctrl & MSI_CTRL_64BIT, pvm = ctrl & MSI_CTRL_PVM;
    uint16_t data_off = cap + (is64 ? 0x0c : 0x08);
    uint16_t mask_off = data_off + 4, pending_off = data_off + 8;
    rt_printf("msi: cap=0x%x control=0x%x max_vectors=%u 64bit=%u per_vector_mask=%u\n", cap, ctrl,
              1u << ((ctrl >> 1) & 7), is64, pvm);

    probe_set_command(PCI_CMD_MEMORY | PCI_CMD_BUS_MASTER, 0);
    pci_write32(probe_dev, cap + 4, msi_address());
    if (is64)
        pci_write32(probe_dev, cap + 8, 0);
    pci_write16(probe_dev, data_off, MSI_VECTOR_BASE);
    if (pvm)
        pci_write32(probe_dev, mask_off, 0);
    /* Two messages (MME = 1), enabled. */
    pci_write16(probe_dev, cap + 2, (uint16_t)((ctrl & ~0x70) | (1 << MSI_MME_SHIFT) | MSI_CTRL_ENABLE));

    int got = fire(1);
    print_got("msi: fire=1 ", got);
    rt_printf(" fire_status=%u\n", probe_reg_read(REG_FIRE_STATUS));
    probe_check(got == MSI_VECTOR_BASE + 1, "MSI vector 1 delivered as data + 1");
    got = fire(0);
    print_got("msi: fire=0 ", got);
    rt_printf(" fire_status=%u\n", probe_reg_read(REG_FIRE_STATUS));
    probe_check(got == MSI_VECTOR_BASE, "MSI vector 0 delivered as data");

    if (pvm) {
        pci_write32(probe_dev, mask_off, 0x2);
        got = fire_quiet(1);
        uint32_t pending = pci_read32(probe_dev, pending_off);
        print_got("msi: masked fire=1 ", got);
        rt_printf(" fire_status=%u pending=0x%x\n", probe_reg_read(REG_FIRE_STATUS), pending);
        probe_check(got == IDT_NO_INTERRUPT, "no interrupt from a masked MSI vector");
        probe_check(pending == 0x2, "MSI pending bit 1 set while masked");
        got = write_and_wait(WRITE_CONFIG32, mask_off, 0);
        pending = pci_read32(probe_dev, pending_off);
        print_got("msi: unmask ", got);
        rt_printf(" pending=0x%x\n", pending);
        probe_check(got == MSI_VECTOR_BASE + 1, "pending MSI vector delivered on unmask");
        probe_check(pending == 0, "MSI pending bit clear after delivery");
    }
    /* New message data while enabled (an OS moving the interrupt without masking). */
    pci_write16(probe_dev, data_off, MSI_VECTOR_BASE_MOVED);
    got = fire(1);
    print_got("msi: reprogrammed fire=1 ", got);
    rt_printf("\n");
    probe_check(got == MSI_VECTOR_BASE_MOVED + 1, "MSI data reprogrammed while enabled");

    pci_write16(probe_dev, cap + 2, ctrl & ~MSI_CTRL_ENABLE);
    rt_printf("msi: interrupts=%u\n", idt_count(MSI_VECTOR_BASE) + idt_count(MSI_VECTOR_BASE + 1) +
                                          idt_count(MSI_VECTOR_BASE_MOVED + 1));
}

/* ---- intx ------------------------------------------------------------------------------------ */

static void ioapic_write(uint32_t reg, uint32_t v)
{
    uint64_t base = probe_acpi.ioapic_addr ? probe_acpi.ioapic_addr : LAYOUT_IOAPIC_START;
    mmio_write32(base + IOAPIC_REGSEL, reg);
    mmio_write32(base + IOAPIC_WINDOW, v);
}

static void intx_read_body(void *arg)
{
    (void)arg;
    (void)probe_reg_read(REG_SCRATCH);
    rt_delay_us(IRQ_WAIT_US);
}

static void intx_step(const char *step, int got)
{
    rt_printf("intx: step=%s ", step);
    print_got("", got);
    rt_printf("\n");
}

/*
 * INTx through the IOAPIC, level-triggered; MSI and MSI-X off. FIRE 0 asserts the line. Our
 * handler EOIs at once, while INTX_STATUS is still set: as on hardware, where a level line still
 * high at EOI interrupts again, the device asserts the line again (at its next register access,
 * where it notices the EOI: testdev.rs) until the guest clears INTX_STATUS. Device registers are
 * only touched where a step says so (each access may re-assert), so results are printed last.
 */
void test_intx(void)
{
    uint8_t line = pci_read8(probe_dev, PCI_INTERRUPT_LINE), pin = pci_read8(probe_dev, PCI_INTERRUPT_PIN);
    rt_printf("intx: pin=%u line=%u\n", pin, line);
    if (pin == 0 || line >= LAYOUT_IRQS_IOAPIC_PINS) {
        probe_check(false, "INTx pin wired to an IOAPIC pin");
        return;
    }
    interrupts_setup();
    uint16_t msix = pci_find_cap(PCI_ECAM, probe_dev, CAP_ID_MSIX);
    uint16_t msi = pci_find_cap(PCI_ECAM, probe_dev, CAP_ID_MSI);
    pci_write16(probe_dev, msix + 2, 0);
    pci_write16(probe_dev, msi + 2, 0);
    probe_set_command(PCI_CMD_MEMORY | PCI_CMD_BUS_MASTER, PCI_CMD_INTX_DISABLE);
    uint64_t regs = probe_regs_base();
    ioapic_write(IOAPIC_REDTBL + 2 * line + 1, lapic_id() << IOAPIC_DEST_SHIFT);
    ioapic_write(IOAPIC_REDTBL + 2 * line, INTX_VECTOR | IOAPIC_LEVEL);

    int fired = fire(0);
    uint32_t fire_status = mmio_read32(regs + REG_FIRE_STATUS); /* re-asserts: status is set */
    int reasserted = idt_wait_us(IRQ_WAIT_US);
    int quiet = idt_wait_us(IRQ_QUIET_US); /* EOI'd, no register access since */
    int on_access = idt_call(intx_read_body, NULL);
    uint32_t status_bit_set = pci_read16(probe_dev, PCI_STATUS) & PCI_STATUS_INTERRUPT;
    mmio_write32(regs + REG_INTX_STATUS, 1); /* the EOI above is noticed first: one more */
    int at_clear = idt_wait_us(IRQ_WAIT_US);
    int after_clear = idt_call(intx_read_body, NULL);
    uint32_t intx_status = mmio_read32(regs + REG_INTX_STATUS);
    uint32_t status_bit_clear = pci_read16(probe_dev, PCI_STATUS) & PCI_STATUS_INTERRUPT;

    /* INTx disabled in the command register: FIRE only records the status ... */
    probe_set_command(PCI_CMD_INTX_DISABLE, 0);
    int disabled = fire_quiet(0);
    uint32_t disabled_status = mmio_read32(regs + REG_FIRE_STATUS);
    /* ... and enabling it with INTX_STATUS set asserts the line. */
    int enabled = write_and_wait(WRITE_CONFIG16, PCI_COMMAND,
                                 (uint16_t)(pci_read16(probe_dev, PCI_COMMAND) & ~PCI_CMD_INTX_DISABLE));
    mmio_write32(regs + REG_INTX_STATUS, 1);
    ioapic_write(IOAPIC_REDTBL + 2 * line, INTX_VECTOR | IOAPIC_LEVEL | IOAPIC_MASKED);
    (void)idt_wait_us(IRQ_QUIET_US); /* drains what the clear re-asserted */

    intx_step("fire", fired);
    intx_step("fire_status_read", reasserted);
    intx_step("no_access", quiet);
    intx_step("register_read", on_access);
    intx_step("clear", at_clear);
    intx_step("after_clear", after_clear);
    intx_step("fire_while_disabled", disabled);
    intx_step("enable", enabled);
    rt_printf("intx: fire_status=%u status_bit_set=%u intx_status_after_clear=%u "
              "status_bit_after_clear=%u fire_status_disabled=%u\n",
              fire_status, status_bit_set != 0, intx_status, status_bit_clear != 0, disabled_status);
    probe_check(fired == INTX_VECTOR, "INTx delivered through the IOAPIC");
    probe_check(reasserted == INTX_VECTOR && on_access == INTX_VECTOR,
          "INTx asserted again at a register access while INTX_STATUS is set");
    probe_check(quiet == IDT_NO_INTERRUPT, "no INTx after EOI without a register access");
    probe_check(after_clear == IDT_NO_INTERRUPT && intx_status == 0 && status_bit_clear == 0,
          "no INTx once INTX_STATUS is clear");
    probe_check(disabled == IDT_NO_INTERRUPT, "no INTx while INTx is disabled");
    probe_check(enabled == INTX_VECTOR, "INTx asserted when enabled with INTX_STATUS set");
}
