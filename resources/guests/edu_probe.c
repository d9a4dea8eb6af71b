/* edu_probe - drives QEMU's edu device (1234:11e8) passed through by vfiovm (in the nested rig):
 * finds it by PCI scan, enables memory decoding and bus mastering, reads the ident register
 * through the BAR (0x010000ed; a KVM memory slot over the VFIO mmap), checks liveness, computes
 * a factorial, has edu DMA a pattern out of guest RAM and back into another buffer and compares,
 * and receives edu's MSI as an interrupt (MSI emulated by vfiovm, delivered eventfd -> irqfd).
 * `msis=N` fires N more MSIs with no console output in between (for counting exits per MSI).
 * Prints "edu: ..." lines, "fail: ..." per failed check, then "edu_probe: failures=N"; exits with
 * status 255 on failures, else runs `action=` (default exit:0, status 1). */
#include "rt.h"

#define EDU_VENDOR 0x1234
#define EDU_DEVICE 0x11e8
#define EDU_IDENT 0x010000edu

/* edu registers (BAR 0), from QEMU's docs/specs/edu.rst */
#define EDU_REG_IDENT 0x00
#define EDU_REG_LIVENESS 0x04
#define EDU_REG_FACTORIAL 0x08
#define EDU_REG_STATUS 0x20
#define EDU_REG_IRQ_STATUS 0x24
#define EDU_REG_IRQ_RAISE 0x60
#define EDU_REG_IRQ_ACK 0x64
#define EDU_REG_DMA_SRC 0x80
#define EDU_REG_DMA_DST 0x88
#define EDU_REG_DMA_COUNT 0x90
#define EDU_REG_DMA_CMD 0x98
#define EDU_STATUS_COMPUTING 0x01
#define EDU_DMA_START 0x01
#define EDU_DMA_TO_RAM 0x02
#define EDU_DMA_BUF 0x40000 /* edu's internal buffer (4 KiB) */
/* Less than the whole buffer: QEMU 7.2's edu rejects a transfer that ends exactly at the end of
 * its buffer (an off-by-one in edu_check_range) with hw_error(), which aborts QEMU. */
#define EDU_DMA_LEN 2048

#define PCI_COMMAND 0x04
#define PCI_CMD_MEM 0x2
#define PCI_CMD_MASTER 0x4
#define PCI_BAR0 0x10
#define CAP_ID_MSI 0x05
#define MSI_CTRL_ENABLE 0x1
#define MSI_CTRL_64BIT 0x80
#define MSI_ADDRESS 0xfee00000u
#define MSI_VECTOR 0x45

#define SPIN_LIMIT 50000000u

static struct acpi_info acpi;
static unsigned failures;
static uint64_t bar0;
static uint8_t src_buf[EDU_DMA_LEN] __attribute__((aligned(4096)));
static uint8_t dst_buf[EDU_DMA_LEN] __attribute__((aligned(4096)));

static void check(bool ok, const char *what)
{
    if (!ok) {
        failures++;
        rt_printf("fail: %s\n", what);
    }
}

static uint32_t edu_read(uint32_t reg) { return mmio_read32(bar0 + reg); }
static void edu_write(uint32_t reg, uint32_t v) { mmio_write32(bar0 + reg, v); }
static void edu_write64(uint32_t reg, uint64_t v)
{
    edu_write(reg, (uint32_t)v);
    edu_write(reg + 4, (uint32_t)(v >> 32));
}

static bool wait_clear(uint32_t reg, uint32_t bits)
{
    for (uint32_t i = 0; i < SPIN_LIMIT; i++)
        if (!(edu_read(reg) & bits))
            return true;
    return false;
}

static void raise_body(void *arg)
{
    edu_write(EDU_REG_IRQ_RAISE, (uint32_t)(uintptr_t)arg);
    for (uint32_t i = 0; i < SPIN_LIMIT; i++)
        __asm__ volatile("pause");
}

/* Raises edu interrupt status bit(s) `bits`; returns the vector that arrived (or none). */
static int raise_msi(uint32_t bits)
{
    int got = idt_call(raise_body, (void *)(uintptr_t)bits);
    edu_write(EDU_REG_IRQ_ACK, bits);
    return got;
}

void guest_main(const struct rt_boot *boot)
{
    rt_printf("guest: edu_probe\n");
    acpi_scan(&acpi, boot->rsdp, false);
    if (acpi.have_mcfg)
        pci_set_ecam_base(acpi.ecam_base);
    uint16_t dev;
    if (!pci_find_device(EDU_VENDOR, EDU_DEVICE, &dev)) {
        rt_printf("edu: not found on bus 0\n");
        check(false, "edu found by PCI scan");
        goto out;
    }
    rt_printf("edu: found at 00:%02x.%u\n", (dev >> 3) & 0x1f, dev & 7);
    struct pci_bar bar;
    pci_bar_size(dev, 0, &bar);
    bar0 = pci_read32(dev, PCI_BAR0) & ~0xfu;
    rt_printf("edu: bar0=0x%llx size=0x%llx kind=%s\n", bar0, bar.size,
              pci_bar_kind_name((enum pci_bar_kind)bar.kind));
    pci_write16(dev, PCI_COMMAND, pci_read16(dev, PCI_COMMAND) | PCI_CMD_MEM | PCI_CMD_MASTER);

    uint32_t ident = edu_read(EDU_REG_IDENT);
    rt_printf("edu: ident=0x%08x\n", ident);
    check(ident == EDU_IDENT, "ident register reads 0x010000ed");

    edu_write(EDU_REG_LIVENESS, 0x12345678u);
    uint32_t live = edu_read(EDU_REG_LIVENESS);
    rt_printf("edu: liveness=0x%08x\n", live);
    check(live == ~0x12345678u, "liveness register inverts");

    edu_write(EDU_REG_FACTORIAL, 10);
    check(wait_clear(EDU_REG_STATUS, EDU_STATUS_COMPUTING), "factorial finishes");
    uint32_t fact = edu_read(EDU_REG_FACTORIAL);
    rt_printf("edu: factorial(10)=%u\n", fact);
    check(fact == 3628800u, "10! = 3628800");

    /* DMA: guest RAM -> edu's buffer -> another guest RAM buffer (IOVA = guest physical). */
    for (unsigned i = 0; i < EDU_DMA_LEN; i++) {
        src_buf[i] = (uint8_t)(i * 7 + 3);
        dst_buf[i] = 0;
    }
    edu_write64(EDU_REG_DMA_SRC, (uintptr_t)src_buf);
    edu_write64(EDU_REG_DMA_DST, EDU_DMA_BUF);
    edu_write64(EDU_REG_DMA_COUNT, EDU_DMA_LEN);
    edu_write(EDU_REG_DMA_CMD, EDU_DMA_START);
    check(wait_clear(EDU_REG_DMA_CMD, EDU_DMA_START), "DMA to edu finishes");
    edu_write64(EDU_REG_DMA_SRC, EDU_DMA_BUF);
    edu_write64(EDU_REG_DMA_DST, (uintptr_t)dst_buf);
    edu_write64(EDU_REG_DMA_COUNT, EDU_DMA_LEN);
    edu_write(EDU_REG_DMA_CMD, EDU_DMA_START | EDU_DMA_TO_RAM);
    check(wait_clear(EDU_REG_DMA_CMD, EDU_DMA_START), "DMA to RAM finishes");
    unsigned diff = 0;
    for (unsigned i = 0; i < EDU_DMA_LEN; i++)
        diff += dst_buf[i] != src_buf[i];
    rt_printf("edu: dma bytes=%u mismatches=%u src=0x%x dst=0x%x\n", EDU_DMA_LEN, diff,
              (uint32_t)(uintptr_t)src_buf, (uint32_t)(uintptr_t)dst_buf);
    check(diff == 0, "DMA round trip returns the same bytes");

    /* MSI: address/data into the capability, enable, raise. */
    uint16_t cap = pci_find_cap(PCI_ECAM, dev, CAP_ID_MSI);
    if (!cap) {
        check(false, "edu has an MSI capability");
        goto out;
    }
    uint16_t ctrl = pci_read16(dev, cap + 2);
    pci_write32(dev, cap + 4, MSI_ADDRESS);
    if (ctrl & MSI_CTRL_64BIT) {
        pci_write32(dev, cap + 8, 0);
        pci_write16(dev, cap + 12, MSI_VECTOR);
    } else {
        pci_write16(dev, cap + 8, MSI_VECTOR);
    }
    pci_write16(dev, cap + 2, ctrl | MSI_CTRL_ENABLE);
    lapic_enable();
    idt_init(acpi.lapic_addr);
    int got = raise_msi(0x1);
    rt_printf("edu: msi cap=0x%x got_vector=0x%x irq_status_after_ack=0x%x\n", cap,
              (unsigned)got, edu_read(EDU_REG_IRQ_STATUS));
    check(got == MSI_VECTOR, "edu's MSI arrives with the programmed vector");

    char val[24];
    uint64_t n64 = 0;
    if (rt_cmdline_get(boot->cmdline, "msis", val, sizeof(val)) && !rt_parse_u64(val, &n64))
        check(false, "msis= is a number");
    uint32_t n = (uint32_t)n64;
    uint32_t arrived = 0;
    for (uint32_t i = 0; i < n; i++)
        arrived += raise_msi(0x1) == MSI_VECTOR;
    rt_printf("edu: msis fired=%10u arrived=%10u\n", n, arrived);
    check(arrived == n, "every extra MSI arrives");

out:
    rt_printf("edu_probe: failures=%u\n", failures);
    if (failures)
        outl(LAYOUT_PORTS_DEBUG_EXIT, 0x7f);
    rt_action_from_cmdline(boot, &acpi);
}
