/* multiboot.c (32-bit runtime) - the multiboot (v1) boot protocol: check the magic, print the
 * information structure's fields, copy the memory map, modules and command line into struct
 * rt_boot, then run the guest. Field offsets from the Multiboot Specification 0.6.96, 3.3. */
#include "rt.h"

#define MB_BOOTLOADER_MAGIC 0x2BADB002u
#define MBI_MEMORY (1u << 0)
#define MBI_CMDLINE (1u << 2)
#define MBI_MODS (1u << 3)
#define MBI_MMAP (1u << 6)
#define MBI_LOADER_NAME (1u << 9)

struct mb_info {
    uint32_t flags;
    uint32_t mem_lower;
    uint32_t mem_upper;
    uint32_t boot_device;
    uint32_t cmdline;
    uint32_t mods_count;
    uint32_t mods_addr;
    uint32_t syms[4];
    uint32_t mmap_length;
    uint32_t mmap_addr;
    uint32_t drives_length;
    uint32_t drives_addr;
    uint32_t config_table;
    uint32_t boot_loader_name;
};

struct mb_module {
    uint32_t mod_start;
    uint32_t mod_end;
    uint32_t string;
    uint32_t reserved;
};

struct __attribute__((packed)) mb_mmap_entry {
    uint32_t size; /* of the rest of the entry */
    uint64_t addr;
    uint64_t len;
    uint32_t type;
};

_Static_assert(sizeof(struct mb_info) == 68, "multiboot info layout");
_Static_assert(sizeof(struct mb_mmap_entry) == 24, "multiboot mmap entry layout");

static struct rt_boot boot;

/* Prints `label: <string>` for a NUL-terminated string at `addr` (at most 256 bytes). */
static void print_string(const char *label, uint32_t addr)
{
    if (!rt_reachable(addr, 1)) {
        rt_printf("%s: out of reach (0x%x)\n", label, addr);
        return;
    }
    const char *s = rt_phys(addr);
    rt_printf("%s: %s\n", label, s);
}

/* Entered from multiboot_entry.S with a stack and flat segments. */
NORETURN void rt_multiboot_entry(uint32_t magic, uint32_t info)
{
    serial_init();
    boot.protocol = "multiboot";
    boot.info_addr = info;
    boot.magic = magic;
    rt_printf("multiboot: magic=0x%x info=0x%x\n", magic, info);
    if (magic != MB_BOOTLOADER_MAGIC)
        rt_fail("multiboot: bad bootloader magic in eax");
    if (!rt_reachable(info, sizeof(struct mb_info)))
        rt_fail("multiboot: info out of reach");
    const struct mb_info *mbi = rt_phys(info);
    rt_printf("multiboot: flags=0x%x\n", mbi->flags);
    if (mbi->flags & MBI_MEMORY)
        rt_printf("multiboot: mem_lower=%u mem_upper=%u\n", mbi->mem_lower, mbi->mem_upper);
    if (mbi->flags & MBI_LOADER_NAME)
        print_string("multiboot: loader", mbi->boot_loader_name);

    if (mbi->flags & MBI_MMAP) {
        uint32_t at = mbi->mmap_addr, end = mbi->mmap_addr + mbi->mmap_length;
        uint32_t n = 0;
        while (at < end && rt_reachable(at, sizeof(struct mb_mmap_entry))) {
            const struct mb_mmap_entry *e = rt_phys(at);
            if (n < RT_MAX_MEMMAP) {
                boot.memmap[n].addr = e->addr;
                boot.memmap[n].size = e->len;
                boot.memmap[n].type = e->type;
            }
            n++;
            at += e->size + 4;
        }
        boot.memmap_total = n;
        boot.nr_memmap = n < RT_MAX_MEMMAP ? n : RT_MAX_MEMMAP;
    }

    if (mbi->flags & MBI_MODS) {
        boot.modules_total = mbi->mods_count;
        uint32_t n = mbi->mods_count < RT_MAX_MODULES ? mbi->mods_count : RT_MAX_MODULES;
        if (rt_reachable(mbi->mods_addr, n * sizeof(struct mb_module))) {
            const struct mb_module *m = rt_phys(mbi->mods_addr);
            for (uint32_t i = 0; i < n; i++) {
                boot.modules[i].addr = m[i].mod_start;
                boot.modules[i].size = m[i].mod_end - m[i].mod_start;
                rt_printf("multiboot: module[%u] start=0x%x end=0x%x\n", i, m[i].mod_start,
                          m[i].mod_end);
                print_string("multiboot: module string", m[i].string);
            }
            boot.nr_modules = n;
        }
    }

    if (mbi->flags & MBI_CMDLINE)
        boot_copy_cmdline(&boot, mbi->cmdline);
    guest_main(&boot);
}
