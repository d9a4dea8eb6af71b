/* mb_pci_testdev - a multiboot guest, shaped like kvm-unit-tests' x86 images, that drives QEMU's
 * pci-testdev (1b36:0005, vfiovm's --pci-testdev) the way kvm-unit-tests does: it finds the
 * device through ports 0xCF8/0xCFC, takes the BARs as the VMM placed them (no firmware: vfiovm
 * places them and turns decoding on, as SeaBIOS does under QEMU), then for each BAR runs every
 * test as lib/pci-testdev.c's pci_testdev_one does: select test n, COUNT must read 0, WIDTH
 * 1/2/4, DATA and OFFSET read as dwords, 16 writes of DATA at OFFSET of WIDTH, COUNT read back;
 * a test whose header does not look like one ends the BAR's run. One "ptd: ..." line per test.
 * Before that it finds the device again as kvm-unit-tests' lib/x86/asm/pci.h does (register 2 in
 * CONFIG_ADDRESS, a word at 0xCFC) and sizes both BARs with decoding on as its pci_dev_init does:
 *   ptd: kvm-unit-tests find=yes|no bar0-mask=0x... bar1-mask=0x...
 *
 * Then a few probes of what QEMU's device counts when a write does reach it (a write of another
 * width or value than an eventfd test's binding takes):
 *   ptd: probe portio-wildcard outw count=N     (expect 1: KVM binds 1-byte writes only)
 *   ptd: probe portio-datamatch 0xce count=N    (expect 0: not DATA)
 *   ptd: probe mmio-no-eventfd movw count=N     (expect 1: the low byte at OFFSET is DATA)
 *   ptd: probe no-test test=0x... offset=0x...  (expect 0 and 0: no test selected)
 * and ends with "ptd: tests=N", then `action=` (default exit:0). Without the device it prints
 * "ptd: no pci-testdev" and runs `action=`. Output lines are listed in README.md. */
#include "rt.h"

#define PTD_VENDOR 0x1b36
#define PTD_DEVICE 0x0005
#define PCI_COMMAND 0x04
#define PCI_BAR0 0x10
#define PCI_BAR1 0x14

/* The header of the running test, at offset 0 of either BAR (kvm-unit-tests' lib/pci.h). */
#define HDR_TEST 0
#define HDR_WIDTH 1
#define HDR_OFFSET 4
#define HDR_DATA 8
#define HDR_COUNT 12
#define HDR_NAME 16
#define NR_WRITES 16
#define NAME_MAX 40

static struct acpi_info acpi;

/* One BAR's accessors: port I/O or MMIO at `base`. */
struct bar {
    bool io;
    uint32_t base;
};

static uint8_t rd8(const struct bar *b, uint32_t off)
{
    return b->io ? inb((uint16_t)(b->base + off)) : mmio_read8(b->base + off);
}

static uint32_t rd32(const struct bar *b, uint32_t off)
{
    return b->io ? inl((uint16_t)(b->base + off)) : mmio_read32(b->base + off);
}

static void wr(const struct bar *b, uint32_t off, unsigned width, uint32_t v)
{
    uint32_t at = b->base + off;
    switch (width) {
    case 1:
        if (b->io)
            outb((uint16_t)at, (uint8_t)v);
        else
            mmio_write8(at, (uint8_t)v);
        break;
    case 2:
        if (b->io)
            outw((uint16_t)at, (uint16_t)v);
        else
            mmio_write16(at, (uint16_t)v);
        break;
    default:
        if (b->io)
            outl((uint16_t)at, v);
        else
            mmio_write32(at, v);
    }
}

static void read_name(const struct bar *b, char *out)
{
    unsigned i = 0;
    for (; i < NAME_MAX - 1; i++) {
        char c = (char)rd8(b, HDR_NAME + i);
        if (!c)
            break;
        out[i] = c;
    }
    out[i] = 0;
}

/* lib/pci-testdev.c's pci_testdev_one, printing what it saw; false ends the BAR's run. */
static bool run_one(const struct bar *b, unsigned n)
{
    wr(b, HDR_TEST, 1, n);
    uint32_t count = rd32(b, HDR_COUNT);
    if (count != 0)
        return false;
    uint8_t width = rd8(b, HDR_WIDTH);
    if (width != 1 && width != 2 && width != 4)
        return false;
    uint32_t data = rd32(b, HDR_DATA);
    uint32_t off = rd32(b, HDR_OFFSET);
    char name[NAME_MAX];
    read_name(b, name);
    for (int i = 0; i < NR_WRITES; i++)
        wr(b, off, width, data);
    count = rd32(b, HDR_COUNT);
    /* kvm-unit-tests' verdict: 0 (an eventfd took every write) or all of them counted. */
    bool ok = count == 0 || count == NR_WRITES;
    rt_printf("ptd: %s test=%u index=%u name=%s width=%u offset=0x%x data=0x%x count=%u %s\n",
              b->io ? "io" : "mem", n, rd8(b, HDR_TEST), name, width, off, data, count,
              ok ? "ok" : "FAIL");
    return ok;
}

static unsigned run_all(const struct bar *b)
{
    unsigned n = 0;
    while (n < 16 && run_one(b, n))
        n++;
    return n;
}

static uint32_t select_test(const struct bar *b, unsigned n)
{
    wr(b, HDR_TEST, 1, n);
    return rd32(b, HDR_OFFSET);
}

static void probes(const struct bar *mem, const struct bar *io)
{
    uint32_t off = select_test(io, 1); /* portio-wildcard-eventfd */
    wr(io, off, 2, 0x1234);
    rt_printf("ptd: probe portio-wildcard outw count=%u\n", rd32(io, HDR_COUNT));

    off = select_test(io, 2); /* portio-datamatch-eventfd */
    wr(io, off, 1, 0xce);
    rt_printf("ptd: probe portio-datamatch 0xce count=%u\n", rd32(io, HDR_COUNT));

    off = select_test(mem, 0); /* mmio-no-eventfd */
    wr(mem, off, 2, 0xabfa);
    rt_printf("ptd: probe mmio-no-eventfd movw count=%u\n", rd32(mem, HDR_COUNT));

    wr(mem, HDR_TEST, 1, 0xff); /* no such test: ends the running one */
    rt_printf("ptd: probe no-test test=0x%x offset=0x%x\n", rd32(mem, HDR_TEST),
              rd32(io, HDR_OFFSET));
}

/* kvm-unit-tests' lib/x86/asm/pci.h way: CONFIG_ADDRESS with the register's low bits (2 for the
 * device ID) and a word read at 0xCFC, which QEMU answers from the register written. */
static uint16_t kut_config_readw(uint16_t bdf, uint8_t reg)
{
    outl(0xcf8, 0x80000000u | ((uint32_t)bdf << 8) | reg);
    return inw(0xcfc);
}

static bool kut_find(uint16_t *bdf)
{
    for (unsigned f = 0; f < 256; f++) {
        if (kut_config_readw((uint16_t)f, 0) == PTD_VENDOR &&
            kut_config_readw((uint16_t)f, 2) == PTD_DEVICE) {
            *bdf = (uint16_t)f;
            return true;
        }
    }
    return false;
}

/* kvm-unit-tests' pci_dev_init sizes every BAR with decoding left on: all ones, read, restore. */
static uint32_t kut_bar_mask(uint16_t bdf, uint16_t off)
{
    uint32_t orig = pci_cf8_read(bdf, off, 4);
    pci_cf8_write(bdf, off, 4, 0xffffffffu);
    uint32_t mask = pci_cf8_read(bdf, off, 4);
    pci_cf8_write(bdf, off, 4, orig);
    return mask;
}

static void pci_testdev(void)
{
    uint16_t bdf = 0;
    bool found = false;
    for (unsigned f = 0; f < 256 && !found; f++) {
        uint32_t id = pci_cf8_read((uint16_t)f, 0, 4);
        if ((id & 0xffff) == PTD_VENDOR && (id >> 16) == PTD_DEVICE) {
            bdf = (uint16_t)f;
            found = true;
        }
    }
    if (!found) {
        rt_printf("ptd: no pci-testdev\n");
        return;
    }
    uint16_t kut_bdf = 0;
    bool kut = kut_find(&kut_bdf) && kut_bdf == bdf;
    uint32_t mask0 = kut_bar_mask(bdf, PCI_BAR0);
    uint32_t mask1 = kut_bar_mask(bdf, PCI_BAR1);
    rt_printf("ptd: kvm-unit-tests find=%s bar0-mask=0x%x bar1-mask=0x%x\n", kut ? "yes" : "no",
              mask0, mask1);
    uint32_t bar0 = pci_cf8_read(bdf, PCI_BAR0, 4);
    uint32_t bar1 = pci_cf8_read(bdf, PCI_BAR1, 4);
    uint32_t cmd = pci_cf8_read(bdf, PCI_COMMAND, 2);
    rt_printf("ptd: found at %x:%x.%x id=0x%x class=0x%x bar0=%s bar1=%s cmd-io=%u cmd-mem=%u\n",
              PCI_BDF_BUS(bdf), PCI_BDF_DEV(bdf), PCI_BDF_FN(bdf), pci_cf8_read(bdf, 0, 4),
              pci_cf8_read(bdf, 0x08, 4) >> 8, (bar0 & 1) ? "io" : "mem",
              (bar1 & 1) ? "io" : "mem", (cmd & PCI_CMD_IO) ? 1 : 0,
              (cmd & PCI_CMD_MEMORY) ? 1 : 0);
    struct bar mem = {.io = false, .base = bar0 & 0xfffffff0u};
    struct bar io = {.io = true, .base = bar1 & 0xfffffffcu};
    unsigned tests = run_all(&mem);
    tests += run_all(&io);
    probes(&mem, &io);
    rt_printf("ptd: tests=%u\n", tests);
}

void guest_main(const struct rt_boot *boot)
{
    rt_printf("guest: mb_pci_testdev\n");
    pci_testdev();
    acpi_scan(&acpi, 0, false);
    rt_action_from_cmdline(boot, &acpi);
}
