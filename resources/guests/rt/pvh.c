/* pvh.c (32-bit runtime) - the PVH boot protocol: copy what struct hvm_start_info tells us into
 * struct rt_boot, then run the guest. Layouts from Xen's public/arch-x86/hvm/start_info.h. */
#include "rt.h"

#define HVM_START_MAGIC 0x336ec578

struct hvm_start_info {
    uint32_t magic;
    uint32_t version;
    uint32_t flags;
    uint32_t nr_modules;
    uint64_t modlist_paddr;
    uint64_t cmdline_paddr;
    uint64_t rsdp_paddr;
    uint64_t memmap_paddr; /* version >= 1 */
    uint32_t memmap_entries;
    uint32_t reserved;
};

struct hvm_modlist_entry {
    uint64_t paddr;
    uint64_t size;
    uint64_t cmdline_paddr;
    uint64_t reserved;
};

struct hvm_memmap_table_entry {
    uint64_t addr;
    uint64_t size;
    uint32_t type;
    uint32_t reserved;
};

_Static_assert(sizeof(struct hvm_start_info) == 56, "hvm_start_info layout");
_Static_assert(sizeof(struct hvm_modlist_entry) == 32, "hvm_modlist_entry layout");
_Static_assert(sizeof(struct hvm_memmap_table_entry) == 24, "hvm_memmap_table_entry layout");

static struct rt_boot boot;


/* Entered from pvh_entry.S with a stack and flat segments. */
NORETURN void rt_pvh_entry(uint32_t start_info)
{
    serial_init();
    boot.protocol = "pvh";
    boot.info_addr = start_info;
    if (!rt_reachable(start_info, sizeof(struct hvm_start_info)))
        rt_fail("pvh: start_info out of reach");
    const struct hvm_start_info *si = rt_phys(start_info);
    boot.magic = si->magic;
    boot.version = si->version;
    if (si->magic != HVM_START_MAGIC) {
        rt_printf("pvh: start_info=0x%x magic=0x%x (expected 0x%x)\n", start_info, si->magic,
                  HVM_START_MAGIC);
        rt_fail("pvh: bad start_info magic");
    }

    if (si->version >= 1 && si->memmap_paddr != 0) {
        boot.memmap_total = si->memmap_entries;
        uint32_t n = si->memmap_entries < RT_MAX_MEMMAP ? si->memmap_entries : RT_MAX_MEMMAP;
        if (rt_reachable(si->memmap_paddr, (uint64_t)n * sizeof(struct hvm_memmap_table_entry))) {
            const struct hvm_memmap_table_entry *e = rt_phys(si->memmap_paddr);
            for (uint32_t i = 0; i < n; i++) {
                boot.memmap[i].addr = e[i].addr;
                boot.memmap[i].size = e[i].size;
                boot.memmap[i].type = e[i].type;
            }
            boot.nr_memmap = n;
        }
    }

    boot.modules_total = si->nr_modules;
    if (si->nr_modules != 0) {
        uint32_t n = si->nr_modules < RT_MAX_MODULES ? si->nr_modules : RT_MAX_MODULES;
        if (rt_reachable(si->modlist_paddr, (uint64_t)n * sizeof(struct hvm_modlist_entry))) {
            const struct hvm_modlist_entry *m = rt_phys(si->modlist_paddr);
            for (uint32_t i = 0; i < n; i++) {
                boot.modules[i].addr = m[i].paddr;
                boot.modules[i].size = m[i].size;
            }
            boot.nr_modules = n;
        }
    }

    boot_copy_cmdline(&boot, si->cmdline_paddr);
    boot.rsdp = si->rsdp_paddr;
    guest_main(&boot);
}
