/* boot.c - boot information shared by every boot protocol: memory map and module printing. */
#include "rt.h"

#define MODULE_HEAD_BYTES 16
#define MEM_TYPE_RAM 1

uint64_t boot_ram_bytes(const struct rt_boot *boot)
{
    uint64_t total = 0;

    for (uint32_t i = 0; i < boot->nr_memmap; i++)
        if (boot->memmap[i].type == MEM_TYPE_RAM)
            total += boot->memmap[i].size;
    return total;
}

bool boot_is_ram(const struct rt_boot *boot, uint64_t addr, uint64_t len)
{
    for (uint32_t i = 0; i < boot->nr_memmap; i++) {
        const struct rt_mem_region *r = &boot->memmap[i];
        if (r->type == MEM_TYPE_RAM && addr >= r->addr && addr - r->addr <= r->size &&
            len <= r->size - (addr - r->addr))
            return true;
    }
    return false;
}

void boot_print_memmap(const struct rt_boot *boot, const char *label)
{
    rt_printf("%s: %u entries\n", label, boot->memmap_total);
    for (uint32_t i = 0; i < boot->nr_memmap; i++)
        rt_printf("%s[%u]: addr=0x%llx size=0x%llx type=%u\n", label, i, boot->memmap[i].addr,
                  boot->memmap[i].size, boot->memmap[i].type);
    if (boot->nr_memmap < boot->memmap_total)
        rt_printf("%s: only the first %u entries shown\n", label, boot->nr_memmap);
}

void boot_print_cmdline(const struct rt_boot *boot)
{
    rt_printf("cmdline: ");
    for (size_t i = 0; boot->cmdline[i]; i++) {
        char c = boot->cmdline[i];
        serial_putc(c >= 0x20 && c <= 0x7e ? c : '?');
    }
    rt_printf("%s\n", boot->cmdline_truncated ? " [truncated]" : "");
}

void boot_print_module(const struct rt_module *m)
{
    uint64_t n = m->size < MODULE_HEAD_BYTES ? m->size : MODULE_HEAD_BYTES;

    rt_printf("addr=0x%llx size=0x%llx head=", m->addr, m->size);
    if (rt_reachable(m->addr, n))
        rt_print_bytes(rt_phys(m->addr), (size_t)n);
    else
        rt_printf("unreachable");
}

/* Copies the NUL-terminated command line at guest-physical `addr` into boot->cmdline, bounded
 * by RT_CMDLINE_MAX and by what this runtime can reach. Shared by both boot protocols. */
void boot_copy_cmdline(struct rt_boot *boot, uint64_t addr)
{
    if (addr == 0)
        return;
    boot->has_cmdline = true;
    if (!rt_reachable(addr, 1)) {
        boot->cmdline_truncated = true;
        return;
    }
    const char *s = rt_phys(addr);
    uint64_t room = RT_ADDR_LIMIT - addr;
    size_t max = room < RT_CMDLINE_MAX - 1 ? (size_t)room : RT_CMDLINE_MAX - 1;
    size_t n = rt_strnlen(s, max);
    memcpy(boot->cmdline, s, n);
    boot->cmdline[n] = '\0';
    boot->cmdline_truncated = n == max && (n == room || s[n] != '\0');
}
