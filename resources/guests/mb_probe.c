/* mb_probe - a multiboot (v1) guest, shaped like a kvm-unit-tests x86 image (ELF32, multiboot
 * header, entered in 32-bit protected mode): reports what the loader gave it (magic, information
 * flags, mem_lower/mem_upper, memory map, command line, module 0 and its string, the loader's
 * name: printed by rt/multiboot.c), then what kvm-unit-tests reads from the platform: fw_cfg's CPU
 * count (key 0x05) and RAM size (key 0x03), and pc-testdev's data register (0xe0, 0xe8), its MMIO
 * memory (0xff000000) and an interrupt line (0x2000 + 3, seen in the PIC's IRR); then performs `action=` (as pvh_probe).
 * Output lines are listed in README.md. */
#include "rt.h"

#define FW_CFG_SELECTOR 0x510
#define FW_CFG_DATA 0x511
#define FW_CFG_RAM_SIZE 0x03
#define FW_CFG_NB_CPUS 0x05
#define TESTDEV_DATA 0xe0
#define TESTDEV_BYTES 0xe8
#define TESTDEV_IRQ 0x2000
#define TESTDEV_IOMEM 0xff000000u
#define PIC1_CMD 0x20
#define PIC_OCW3_READ_IRR 0x0a
#define TEST_LINE 3 /* COM2's ISA line: nothing else drives it */

static struct acpi_info acpi;

static uint64_t fw_cfg_read(uint16_t key, unsigned bytes)
{
    uint64_t v = 0;
    outw(FW_CFG_SELECTOR, key);
    for (unsigned i = 0; i < bytes; i++)
        v |= (uint64_t)inb(FW_CFG_DATA) << (8 * i);
    return v;
}

static uint8_t pic_irr(void)
{
    outb(PIC1_CMD, PIC_OCW3_READ_IRR);
    return inb(PIC1_CMD);
}

static void pc_testdev(void)
{
    outl(TESTDEV_DATA, 0x12345678);
    uint32_t l = inl(TESTDEV_DATA);
    uint16_t w = inw(TESTDEV_DATA + 2);
    uint8_t b = inb(TESTDEV_BYTES + 1);
    outw(TESTDEV_DATA, 0x9999);
    uint32_t after_w = inl(TESTDEV_DATA);
    outb(TESTDEV_BYTES + 3, 0xab);
    uint32_t after_b = inl(TESTDEV_DATA);
    rt_printf("testdev: l=0x%x w=0x%x b=0x%x after_w=0x%x after_b=0x%x\n", l, w, b, after_w,
              after_b);
    /* The flush port must leave the data register and this page alone. */
    static volatile uint32_t page_word __attribute__((aligned(4096))) = 0xfeedf00d;
    outl(TESTDEV_DATA + 4, (uint32_t)(uintptr_t)&page_word);
    rt_printf("testdev: flush data=0x%x page=0x%x\n", inl(TESTDEV_DATA), page_word);

    /* The 64 KiB of MMIO memory at 0xFF000000 (paging is off: physical addresses). */
    mmio_write32(TESTDEV_IOMEM + 0x10, 0xcafef00d);
    mmio_write8(TESTDEV_IOMEM + 0x11, 0x5a);
    rt_printf("testdev: iomem=0x%x\n", mmio_read32(TESTDEV_IOMEM + 0x10));

    uint8_t before = pic_irr() & (1u << TEST_LINE);
    outb(TESTDEV_IRQ + TEST_LINE, 1);
    uint8_t raised = pic_irr() & (1u << TEST_LINE);
    outb(TESTDEV_IRQ + TEST_LINE, 0);
    rt_printf("testdev: irq line %u before=%u raised=%u\n", TEST_LINE, before ? 1 : 0,
              raised ? 1 : 0);
}

void guest_main(const struct rt_boot *boot)
{
    rt_printf("guest: mb_probe\n");
    cpu_print_state();
    boot_print_memmap(boot, "memmap");
    boot_print_cmdline(boot);
    rt_printf("modules: %u\n", boot->modules_total);
    for (uint32_t i = 0; i < boot->nr_modules; i++) {
        rt_printf("module[%u]: ", i);
        boot_print_module(&boot->modules[i]);
        rt_printf("\n");
    }
    rt_printf("fw_cfg: signature=0x%llx cpus=%llu ram=0x%llx\n", fw_cfg_read(0, 4),
              fw_cfg_read(FW_CFG_NB_CPUS, 2), fw_cfg_read(FW_CFG_RAM_SIZE, 8));
    char want[8];
    if (rt_cmdline_get(boot->cmdline, "testdev", want, sizeof(want)))
        pc_testdev();
    acpi_scan(&acpi, 0, false);
    rt_printf("cpus: %u\n", acpi.cpus);
    rt_action_from_cmdline(boot, &acpi);
}
