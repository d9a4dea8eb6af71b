/* pci_hostile - a guest that writes garbage all over the PCI platform, to show the VMM survives
 * it. Pseudo-random values (xorshift32, `seed=` on the command line, else from the TSC; the seed
 * is printed so a failure can be replayed) of every size, aligned or not, including accesses
 * that run past the end of a BAR, of a function's config space or of the 0xCFC data ports:
 *
 *   1. config space: every offset 0..4095 of every present function on bus 0 through ECAM (a
 *      write of a random size at each offset, then a read), 64 random offsets of every absent
 *      function, 4096 writes anywhere in the ECAM window (any bus); every offset 0..255 of every
 *      function through 0xCF8/0xCFC (random data-port size), garbage CONFIG_ADDRESS values, and
 *      byte/word accesses to 0xCF8, 0xCFA and 0xCFB (never 0xCF9: that is the reset register);
 *   2. BARs of the test device (if present, --test-pci-device): it is put back in order first
 *      (decoding off, BARs reprogrammed to their firmware addresses, the 64-bit BAR 4 moved below
 *      4 GiB so a 32-bit guest reaches it, ROM enabled, bus mastering off), then every offset of
 *      every BAR gets a write of a random size. With bus mastering off no DMA can land in our own
 *      memory and no MSI can be sent (garbage MSI messages could be INIT or SMI);
 *   3. interrupts (test device): bus mastering on, random MSI-X table entries and control, random
 *      MSI address/data/control/mask, and FIRE of random vectors; message data keeps delivery
 *      mode "fixed" and DMA_GO is never written, so the guest itself stays intact.
 *
 * The only ports written are 0xCF8-0xCFF (not 0xCF9), the test device's I/O BAR, COM1 and, at
 * the end, the debug-exit port; the only other MMIO is the LAPIC (enable). Output:
 * "hostile: seed=0x..", one "hostile: phase=..." line per phase with the number of accesses,
 * "hostile: ident_after=0x.." (the test device still answers once reprogrammed) and
 * "hostile: survived"; then `action=` (default exit:0x2a, status 85). README.md has an example. */
#include "rt.h"

#define TESTDEV_VENDOR 0x1234
#define TESTDEV_DEVICE 0x5654
#define PCI_COMMAND 0x04
#define PCI_BAR0 0x10
#define PCI_ROM 0x30
#define CONFIG_SIZE 0x1000
#define ABSENT_SAMPLES 64
#define ECAM_ANYWHERE 4096
#define CF8_ADDRESS_GARBAGE 4096
#define DEFAULT_ACTION "exit:0x2a"
#define STORM_ROUNDS 4096

#define CAP_ID_MSI 0x05
#define CAP_ID_MSIX 0x11
#define MSI_CTRL_64BIT 0x80
#define MSI_DATA_DELIVERY_MODE 0x700u
#define REG_FIRE 0x28
#define REG_FIRE_STATUS 0x2c

static uint32_t rng_state;
static uint64_t accesses;

static uint32_t rnd(void)
{
    uint32_t x = rng_state;
    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    return rng_state = x;
}

static unsigned rnd_size(void)
{
    static const unsigned sizes[4] = { 1, 2, 4, 4 };
    return sizes[rnd() & 3];
}

static void mmio_write_sized(uint64_t addr, unsigned size, uint32_t v)
{
    accesses++;
    if (size == 1)
        mmio_write8(addr, (uint8_t)v);
    else if (size == 2)
        __asm__ volatile("movw %1, %0" : "=m"(*(volatile uint16_t *)rt_phys(addr)) : "r"((uint16_t)v) : "memory");
    else
        mmio_write32(addr, v);
}

static uint32_t mmio_read_sized(uint64_t addr, unsigned size)
{
    accesses++;
    if (size == 1)
        return mmio_read8(addr);
    if (size == 2) {
        uint16_t v;
        __asm__ volatile("movw %1, %0" : "=r"(v) : "m"(*(volatile uint16_t *)rt_phys(addr)) : "memory");
        return v;
    }
    return mmio_read32(addr);
}

static void port_write_sized(uint16_t port, unsigned size, uint32_t v)
{
    accesses++;
    if (size == 1)
        outb(port, (uint8_t)v);
    else if (size == 2)
        outw(port, (uint16_t)v);
    else
        outl(port, v);
}

static uint32_t port_read_sized(uint16_t port, unsigned size)
{
    accesses++;
    if (size == 1)
        return inb(port);
    if (size == 2)
        return inw(port);
    return inl(port);
}

static void phase_ecam(void)
{
    uint64_t ecam = pci_ecam_address(0, 0);
    uint64_t start = accesses;
    unsigned present = 0;

    for (unsigned f = 0; f < 256; f++) {
        uint64_t fn = pci_ecam_address((uint16_t)f, 0);
        bool here = mmio_read32(fn) != 0xffffffffu;
        if (here) {
            present++;
            for (uint32_t off = 0; off < CONFIG_SIZE; off++) {
                unsigned size = rnd_size();
                mmio_write_sized(fn + off, size, rnd());
                mmio_read_sized(fn + (rnd() & (CONFIG_SIZE - 1)), rnd_size());
            }
        } else {
            for (unsigned i = 0; i < ABSENT_SAMPLES; i++)
                mmio_write_sized(fn + (rnd() & (CONFIG_SIZE - 1)), rnd_size(), rnd());
        }
    }
    for (unsigned i = 0; i < ECAM_ANYWHERE; i++) {
        uint64_t off = rnd() & (LAYOUT_PCI_ECAM_SIZE - 1);
        unsigned size = rnd_size();
        if (rnd() & 1)
            mmio_write_sized(ecam + off, size, rnd());
        else
            mmio_read_sized(ecam + off, size);
    }
    rt_printf("hostile: phase=ecam present_functions=%u accesses=%llu\n", present, accesses - start);
}

static void phase_cf8(void)
{
    uint64_t start = accesses;

    for (unsigned f = 0; f < 256; f++) {
        for (unsigned off = 0; off < 256; off++) {
            unsigned size = rnd_size();
            port_write_sized(LAYOUT_PORTS_PCI_CONFIG, 4, pci_cf8_address((uint16_t)f, (uint16_t)off));
            port_write_sized((uint16_t)(LAYOUT_PORTS_PCI_CONFIG + 4 + (off & 3)), size, rnd());
        }
    }
    /* Garbage addresses (enable bit on or off, any bus, reserved bits) with data accesses. */
    for (unsigned i = 0; i < CF8_ADDRESS_GARBAGE; i++) {
        port_write_sized(LAYOUT_PORTS_PCI_CONFIG, 4, rnd());
        uint16_t data = (uint16_t)(LAYOUT_PORTS_PCI_CONFIG + 4 + (rnd() & 3));
        unsigned size = rnd_size();
        if (rnd() & 1)
            port_write_sized(data, size, rnd());
        else
            port_read_sized(data, size);
    }
    /* Odd-sized accesses to CONFIG_ADDRESS itself; none touches 0xCF9. */
    static const struct {
        uint16_t off;
        unsigned size;
    } odd[] = { { 0, 1 }, { 0, 2 }, { 2, 1 }, { 2, 2 }, { 3, 1 } };
    for (unsigned i = 0; i < 256; i++) {
        unsigned k = rnd() % ARRAY_SIZE(odd);
        uint16_t port = (uint16_t)(LAYOUT_PORTS_PCI_CONFIG + odd[k].off);
        if (rnd() & 1)
            port_write_sized(port, odd[k].size, rnd());
        else
            port_read_sized(port, odd[k].size);
    }
    rt_printf("hostile: phase=cf8 accesses=%llu\n", accesses - start);
}

/* Firmware's placement of the test device, recorded before anything is disturbed. */
static struct pci_bar bars[7];
static uint16_t dev;

static void record_bars(void)
{
    for (unsigned i = 0; i < 6;) {
        unsigned regs = pci_bar_size(dev, i, &bars[i]);
        i += regs ? regs : 1;
    }
    pci_bar_size(dev, PCI_ROM_BAR, &bars[PCI_ROM_BAR]);
}

static bool overlaps_other(unsigned self, uint64_t start, uint64_t size)
{
    for (unsigned i = 0; i < 7; i++)
        if (i != self && bars[i].kind != PCI_BAR_NONE && bars[i].kind != PCI_BAR_IO &&
            start < bars[i].addr + bars[i].size && bars[i].addr < start + size)
            return true;
    return false;
}

/* Puts the device back in order: decoding off, firmware addresses (memory BARs above 4 GiB
 * moved to the top of the 32-bit window), ROM enabled, bus mastering off, then decoding on. */
static void reprogram(void)
{
    pci_write16(dev, PCI_COMMAND, 0);
    for (unsigned i = 0; i < 6; i++) {
        struct pci_bar *b = &bars[i];
        if (b->kind == PCI_BAR_NONE)
            continue;
        if (b->kind == PCI_BAR_MEM64 && !rt_reachable(b->addr, b->size)) {
            uint64_t top = LAYOUT_PCI_MMIO32_START + LAYOUT_PCI_MMIO32_SIZE;
            uint64_t a = top - b->size;
            while (a >= LAYOUT_PCI_MMIO32_START && overlaps_other(i, a, b->size))
                a -= b->size;
            b->addr = a;
        }
        pci_write32(dev, (uint16_t)(PCI_BAR0 + 4 * i), (uint32_t)b->addr);
        if (b->kind == PCI_BAR_MEM64)
            pci_write32(dev, (uint16_t)(PCI_BAR0 + 4 * i + 4), (uint32_t)(b->addr >> 32));
    }
    if (bars[PCI_ROM_BAR].kind == PCI_BAR_ROM)
        pci_write32(dev, PCI_ROM, (uint32_t)bars[PCI_ROM_BAR].addr | 1);
    pci_write16(dev, PCI_COMMAND, PCI_CMD_IO | PCI_CMD_MEMORY);
}

static void phase_bars(void)
{
    uint64_t start = accesses;

    reprogram();
    for (unsigned i = 0; i < 7; i++) {
        struct pci_bar *b = &bars[i];
        if (b->kind == PCI_BAR_IO) {
            for (uint64_t off = 0; off < b->size; off++) {
                unsigned size = rnd_size();
                port_write_sized((uint16_t)(b->addr + off), size, rnd());
                port_read_sized((uint16_t)(b->addr + (rnd() & (b->size - 1))), 1);
            }
        } else if (b->kind != PCI_BAR_NONE && rt_reachable(b->addr, b->size)) {
            for (uint64_t off = 0; off < b->size; off++) {
                unsigned size = rnd_size();
                mmio_write_sized(b->addr + off, size, rnd());
            }
            for (uint64_t k = 0; k < b->size / 16; k++)
                mmio_read_sized(b->addr + (rnd() & (b->size - 1)), 1);
        }
    }
    rt_printf("hostile: phase=bars accesses=%llu\n", accesses - start);
    /* Bus mastering stayed off the whole time. */
    rt_printf("hostile: command_after=0x%x\n", pci_read16(dev, PCI_COMMAND));
}

/* FIRE_STATUS values (devices/src/pci/testdev.rs), for the summary line. */
static const char *const fire_status_names[] = {
    "none", "msix", "msi", "intx", "pending", "disabled", "invalid", "no_bus_master", "failed",
};

/*
 * Random MSI and MSI-X programming with bus mastering on, and FIRE of random vectors. Message
 * data always has delivery mode "fixed" (bits 10:8 = 0): a garbage INIT, SMI or NMI message
 * would stop this guest, which is a guest-side hazard, not a VMM one. The LAPIC is enabled so
 * messages are accepted; with IF=0 they only pile up in its IRR. DMA_GO is never written here.
 */
static void phase_interrupts(const struct acpi_info *acpi)
{
    uint64_t start = accesses;
    uint16_t msix = pci_find_cap(PCI_ECAM, dev, CAP_ID_MSIX);
    uint16_t msi = pci_find_cap(PCI_ECAM, dev, CAP_ID_MSI);
    if (!msix || !msi || !rt_reachable(bars[0].addr, 0x1000))
        rt_fail("test device without MSI/MSI-X or registers out of reach");
    uint32_t table = pci_read32(dev, msix + 4);
    uint64_t table_addr = bars[table & 7].addr + (table & ~7u);
    uint32_t pba = pci_read32(dev, msix + 8);
    uint64_t pba_addr = bars[pba & 7].addr + (pba & ~7u);
    bool is64 = pci_read16(dev, msi + 2) & MSI_CTRL_64BIT;
    uint16_t msi_data = msi + (is64 ? 0x0c : 0x08);
    uint64_t regs = bars[0].addr;
    uint32_t statuses[ARRAY_SIZE(fire_status_names)] = { 0 };

    if (!rt_reachable(table_addr, 0x1000) || !rt_reachable(pba_addr, 8))
        rt_fail("MSI-X table or PBA out of reach");
    lapic_set_base(acpi->lapic_addr);
    lapic_enable();
    pci_write16(dev, PCI_COMMAND, PCI_CMD_IO | PCI_CMD_MEMORY | PCI_CMD_BUS_MASTER);
    for (unsigned i = 0; i < STORM_ROUNDS; i++) {
        uint32_t v = rnd();
        switch (rnd() % 9) {
        case 0: { /* an MSI-X table entry dword */
            unsigned dword = rnd() & 3;
            if (dword == 2)
                v &= ~MSI_DATA_DELIVERY_MODE;
            mmio_write32(table_addr + (rnd() & 1) * 16 + dword * 4, v);
            break;
        }
        case 1:
            pci_write16(dev, msix + 2, (uint16_t)v);
            break;
        case 2: /* MSI address, low or high */
            pci_write32(dev, (uint16_t)(msi + (is64 && (rnd() & 1) ? 8 : 4)), v);
            break;
        case 3:
            pci_write16(dev, msi_data, (uint16_t)(v & ~MSI_DATA_DELIVERY_MODE));
            break;
        case 4:
            pci_write16(dev, msi + 2, (uint16_t)v);
            break;
        case 5: /* MSI mask bits */
            pci_write32(dev, msi_data + 4, v);
            break;
        case 6:
        case 7: {
            mmio_write32(regs + REG_FIRE, (v & 0x10) ? v : (v & 3));
            uint32_t st = mmio_read32(regs + REG_FIRE_STATUS);
            statuses[st < ARRAY_SIZE(statuses) ? st : 0]++;
            accesses += 2;
            break;
        }
        default:
            (void)mmio_read32(pba_addr);
            (void)pci_read32(dev, msi_data + 8);
            accesses++;
            break;
        }
        accesses++;
    }
    pci_write16(dev, msix + 2, 0);
    pci_write16(dev, msi + 2, 0);
    pci_write16(dev, PCI_COMMAND, PCI_CMD_IO | PCI_CMD_MEMORY);
    rt_printf("hostile: phase=interrupts accesses=%llu", accesses - start);
    for (unsigned i = 1; i < ARRAY_SIZE(statuses); i++)
        rt_printf(" %s=%u", fire_status_names[i], statuses[i]);
    rt_printf("\n");
}

void guest_main(const struct rt_boot *boot)
{
    static struct acpi_info acpi;
    char arg[24], action[32];
    uint64_t seed = 0;

    rt_printf("guest: pci_hostile\n");
    acpi_scan(&acpi, boot->rsdp, false);
    if (acpi.have_mcfg)
        pci_set_ecam_base(acpi.ecam_base);
    if (rt_cmdline_get(boot->cmdline, "seed", arg, sizeof(arg)) &&
        (!rt_parse_u64(arg, &seed) || seed > 0xffffffffu))
        rt_fail("seed= must be a 32-bit number");
    if (!seed)
        seed = cpu_rdtsc();
    rng_state = (uint32_t)seed ? (uint32_t)seed : 1;
    rt_printf("hostile: seed=0x%x\n", rng_state);

    bool have_dev = pci_find_device(TESTDEV_VENDOR, TESTDEV_DEVICE, &dev);
    if (have_dev)
        record_bars();
    rt_printf("hostile: test_device=%s\n", have_dev ? "yes" : "no");

    phase_ecam();
    phase_cf8();
    if (have_dev) {
        phase_bars();
        phase_interrupts(&acpi);
        reprogram();
        rt_printf("hostile: ident_after=0x%x\n", mmio_read32(bars[0].addr));
    }
    rt_printf("hostile: accesses=%llu\n", accesses);
    rt_printf("hostile: survived\n");
    if (!rt_cmdline_get(boot->cmdline, "action", action, sizeof(action)))
        memcpy(action, DEFAULT_ACTION, sizeof(DEFAULT_ACTION));
    rt_action(action, &acpi);
}
