/* linux64.c (64-bit runtime) - the Linux 64-bit boot protocol: copy what the zero page
 * (struct boot_params, Documentation/arch/x86/zero-page.rst) tells us into struct rt_boot, then
 * run the guest. */
#include "rt.h"

#define ZP_ACPI_RSDP_ADDR 0x070 /* u64 */
#define ZP_EXT_RAMDISK_IMAGE 0x0c0
#define ZP_EXT_RAMDISK_SIZE 0x0c4
#define ZP_EXT_CMD_LINE_PTR 0x0c8
#define ZP_E820_ENTRIES 0x1e8 /* u8 */
#define ZP_HDR_MAGIC 0x202    /* "HdrS" */
#define ZP_HDR_VERSION 0x206  /* u16 */
#define ZP_RAMDISK_IMAGE 0x218
#define ZP_RAMDISK_SIZE 0x21c
#define ZP_CMD_LINE_PTR 0x228
#define ZP_E820_TABLE 0x2d0
#define ZP_E820_MAX 128
#define E820_ENTRY_LEN 20
#define ZERO_PAGE_LEN 0x1000

static struct rt_boot boot;

static uint32_t rd32(const uint8_t *p) { return p[0] | p[1] << 8 | p[2] << 16 | (uint32_t)p[3] << 24; }
static uint64_t rd64(const uint8_t *p) { return rd32(p) | (uint64_t)rd32(p + 4) << 32; }


/* Entered from linux64_entry.S with our own stack; `zero_page` is what the loader put in rsi. */
NORETURN void rt_linux64_entry(uint64_t zero_page)
{
    serial_init();
    boot.protocol = "linux64";
    boot.info_addr = zero_page;
    if (!rt_reachable(zero_page, ZERO_PAGE_LEN))
        rt_fail("linux64: zero page out of reach");
    const uint8_t *zp = rt_phys(zero_page);
    boot.magic = rd32(zp + ZP_HDR_MAGIC);
    boot.version = (uint32_t)(zp[ZP_HDR_VERSION] | zp[ZP_HDR_VERSION + 1] << 8);

    uint32_t entries = zp[ZP_E820_ENTRIES];
    boot.memmap_total = entries;
    if (entries > ZP_E820_MAX)
        entries = ZP_E820_MAX;
    if (entries > RT_MAX_MEMMAP)
        entries = RT_MAX_MEMMAP;
    for (uint32_t i = 0; i < entries; i++) {
        const uint8_t *e = zp + ZP_E820_TABLE + i * E820_ENTRY_LEN;
        boot.memmap[i].addr = rd64(e);
        boot.memmap[i].size = rd64(e + 8);
        boot.memmap[i].type = rd32(e + 16);
    }
    boot.nr_memmap = entries;

    uint64_t rd_addr = rd32(zp + ZP_RAMDISK_IMAGE) | (uint64_t)rd32(zp + ZP_EXT_RAMDISK_IMAGE) << 32;
    uint64_t rd_size = rd32(zp + ZP_RAMDISK_SIZE) | (uint64_t)rd32(zp + ZP_EXT_RAMDISK_SIZE) << 32;
    if (rd_addr != 0 || rd_size != 0) {
        boot.modules[0].addr = rd_addr;
        boot.modules[0].size = rd_size;
        boot.nr_modules = boot.modules_total = 1;
    }

    boot_copy_cmdline(&boot, rd32(zp + ZP_CMD_LINE_PTR) | (uint64_t)rd32(zp + ZP_EXT_CMD_LINE_PTR) << 32);
    boot.rsdp = rd64(zp + ZP_ACPI_RSDP_ADDR);
    guest_main(&boot);
}
