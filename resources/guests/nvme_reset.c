/* nvme_reset - what a reset of QEMU's NVMe controller (1b36:0010, passed through by vfiovm in the
 * nested rig) clears. Finds it by PCI scan, enables memory decoding and prints the Controller
 * Configuration (CC, BAR 0 + 0x14) and Controller Status (CSTS, + 0x1c) it starts with:
 *   "nvme_reset: start cc=0x........ csts=0x........"
 * then writes CC = 0x00460000 (the I/O queue entry sizes; Enable stays 0, so the controller never
 * starts and does no DMA) and reads it back ("nvme_reset: set cc=..."). A controller reset by
 * CC.EN does not touch this value; a function-level reset clears CC to 0.
 * `flr=1`: when the PCI Express capability advertises FLR (Device Capabilities bit 28), sets
 * Initiate Function-Level Reset (Device Control bit 15), waits 200 ms (the spec's 100 ms, twice),
 * and prints "nvme_reset: flr devctl=0x.... cc=0x........": the bit reads 0, CC is 0 again.
 * `leave=1`: writes CC = 0x00460000 once more and leaves it for whoever has the device next.
 * Prints "nvme_reset: failures=N"; exits with status 255 on failures, else runs `action=`
 * (default exit:0, status 1). */
#include "rt.h"

#define NVME_VENDOR 0x1b36
#define NVME_DEVICE 0x0010

#define NVME_REG_CC 0x14
#define NVME_REG_CSTS 0x1c
#define CC_VALUE 0x00460000u /* IOCQES = 4 (16 bytes), IOSQES = 6 (64 bytes), EN = 0 */

#define PCI_COMMAND 0x04
#define PCI_CMD_MEM 0x2
#define PCI_BAR0 0x10
#define PCI_BAR1 0x14
#define CAP_ID_EXP 0x10
#define EXP_DEVCAP 0x04
#define EXP_DEVCAP_FLR (1u << 28)
#define EXP_DEVCTL 0x08
#define EXP_DEVCTL_BCR_FLR 0x8000

static struct acpi_info acpi;
static unsigned failures;
static uint64_t bar0;

static void check(bool ok, const char *what)
{
    if (!ok) {
        failures++;
        rt_printf("fail: %s\n", what);
    }
}

static uint32_t reg_read(uint32_t reg) { return mmio_read32(bar0 + reg); }
static void reg_write(uint32_t reg, uint32_t v) { mmio_write32(bar0 + reg, v); }

static bool arg_is_1(const struct rt_boot *boot, const char *key)
{
    char val[8];
    return rt_cmdline_get(boot->cmdline, key, val, sizeof(val)) && val[0] == '1' && !val[1];
}

static void set_cc(const char *label)
{
    reg_write(NVME_REG_CC, CC_VALUE);
    uint32_t cc = reg_read(NVME_REG_CC);
    rt_printf("nvme_reset: %s cc=0x%08x\n", label, cc);
    check(cc == CC_VALUE, "CC keeps what was written");
}

void guest_main(const struct rt_boot *boot)
{
    rt_printf("guest: nvme_reset\n");
    acpi_scan(&acpi, boot->rsdp, false);
    if (acpi.have_mcfg)
        pci_set_ecam_base(acpi.ecam_base);
    uint16_t dev;
    if (!pci_find_device(NVME_VENDOR, NVME_DEVICE, &dev)) {
        rt_printf("nvme_reset: not found on bus 0\n");
        check(false, "the NVMe controller found by PCI scan");
        goto out;
    }
    uint32_t lo = pci_read32(dev, PCI_BAR0);
    bar0 = lo & ~0xfu;
    if ((lo & 0x6) == 0x4)
        bar0 |= (uint64_t)pci_read32(dev, PCI_BAR1) << 32;
    rt_printf("nvme_reset: found at 00:%02x.%u bar0=0x%llx\n", (dev >> 3) & 0x1f, dev & 7,
              (unsigned long long)bar0);
    if (bar0 >> 32) {
        check(false, "BAR 0 below 4 GiB (this guest runs in 32-bit mode)");
        goto out;
    }
    pci_write16(dev, PCI_COMMAND, pci_read16(dev, PCI_COMMAND) | PCI_CMD_MEM);
    rt_printf("nvme_reset: start cc=0x%08x csts=0x%08x\n", reg_read(NVME_REG_CC),
              reg_read(NVME_REG_CSTS));
    set_cc("set");

    if (arg_is_1(boot, "flr")) {
        uint16_t cap = pci_find_cap(PCI_ECAM, dev, CAP_ID_EXP);
        uint32_t devcap = cap ? pci_read32(dev, cap + EXP_DEVCAP) : 0;
        check(devcap & EXP_DEVCAP_FLR, "Device Capabilities advertises FLR");
        if (devcap & EXP_DEVCAP_FLR) {
            uint16_t ctl = pci_read16(dev, cap + EXP_DEVCTL);
            pci_write16(dev, cap + EXP_DEVCTL, ctl | EXP_DEVCTL_BCR_FLR);
            rt_delay_us(200000);
            /* A function-level reset leaves the command register at 0 on real hardware. */
            pci_write16(dev, PCI_COMMAND, pci_read16(dev, PCI_COMMAND) | PCI_CMD_MEM);
            uint16_t after = pci_read16(dev, cap + EXP_DEVCTL);
            uint32_t cc = reg_read(NVME_REG_CC);
            rt_printf("nvme_reset: flr devctl=0x%04x cc=0x%08x\n", after, cc);
            check(!(after & EXP_DEVCTL_BCR_FLR), "Initiate Function-Level Reset reads back 0");
            check(cc == 0, "the FLR cleared CC");
        }
    }
    if (arg_is_1(boot, "leave"))
        set_cc("left");

out:
    rt_printf("nvme_reset: failures=%u\n", failures);
    if (failures)
        outl(LAYOUT_PORTS_DEBUG_EXIT, 0x7f);
    rt_action_from_cmdline(boot, &acpi);
}
