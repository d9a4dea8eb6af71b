/* mem_probe - guest RAM from inside: prints the memory map and the RAM total, checks that every
 * RAM region outside the first MiB starts and ends on an `align=` boundary (a power of two,
 * default 2 MiB),
 * writes a distinct word every 2 MiB of RAM below 4 GiB (from 16 MiB on) and reads them all
 * back, prints "mem_probe: ready", waits for a byte on COM1 (the test reads the VMM's
 * /proc/PID/smaps meanwhile), then powers off. Any failed check exits with RT_EXIT_FAILURE. */
#include "rt.h"

#define UART_RBR 0
#define UART_LSR 5
#define LSR_DR 0x01
#define STEP (2ull << 20)
#define FIRST (16ull << 20)
#define FOUR_GIB (1ull << 32)

static struct acpi_info acpi;

static uint32_t pattern(uint64_t addr)
{
    return (uint32_t)(addr >> 21) * 0x9e3779b1u ^ 0x5a5a5a5au;
}

/* Calls fn on every STEP-aligned address of RAM in [FIRST, 4 GiB). */
static uint64_t each_probe(const struct rt_boot *boot, bool write)
{
    uint64_t bad = 0;
    for (uint32_t i = 0; i < boot->nr_memmap; i++) {
        const struct rt_mem_region *r = &boot->memmap[i];
        if (r->type != 1)
            continue;
        uint64_t end = r->addr + r->size;
        if (end > FOUR_GIB)
            end = FOUR_GIB;
        uint64_t a = r->addr < FIRST ? FIRST : r->addr;
        a = (a + STEP - 1) & ~(STEP - 1);
        for (; a + 4 <= end; a += STEP) {
            volatile uint32_t *p = (volatile uint32_t *)(uintptr_t)a;
            if (write)
                *p = pattern(a);
            else if (*p != pattern(a))
                bad++;
        }
    }
    return bad;
}

void guest_main(const struct rt_boot *boot)
{
    acpi_scan(&acpi, boot->rsdp, false);
    char buf[32];
    uint64_t align = STEP;
    if (rt_cmdline_get(boot->cmdline, "align", buf, sizeof(buf)) && !rt_parse_u64(buf, &align))
        rt_fail("align= is not a number");
    if (align == 0 || (align & (align - 1)))
        rt_fail("align= is not a power of two");

    boot_print_memmap(boot, "memmap");
    rt_printf("mem_probe: ram_bytes=%llu\n", boot_ram_bytes(boot));
    for (uint32_t i = 0; i < boot->nr_memmap; i++) {
        const struct rt_mem_region *r = &boot->memmap[i];
        if (r->type != 1 || r->addr < (1ull << 20))
            continue;
        /* The region at 1 MiB continues the one at 0; its end is what the host aligned. */
        uint64_t start = r->addr == (1ull << 20) ? 0 : r->addr;
        if ((start & (align - 1)) || ((r->addr + r->size) & (align - 1))) {
            rt_printf("mem_probe: region addr=0x%llx size=0x%llx not aligned to 0x%llx\n",
                      r->addr, r->size, align);
            rt_fail("RAM region not aligned");
        }
    }
    each_probe(boot, true);
    uint64_t bad = each_probe(boot, false);
    uint64_t probes = 0;
    for (uint32_t i = 0; i < boot->nr_memmap; i++) {
        const struct rt_mem_region *r = &boot->memmap[i];
        if (r->type == 1 && r->addr + r->size > FIRST && r->addr < FOUR_GIB) {
            uint64_t lo = r->addr < FIRST ? FIRST : r->addr;
            uint64_t hi = r->addr + r->size > FOUR_GIB ? FOUR_GIB : r->addr + r->size;
            probes += (hi - lo) / STEP;
        }
    }
    rt_printf("mem_probe: probes=%llu mismatches=%llu\n", probes, bad);
    if (bad)
        rt_fail("guest RAM did not keep what was written");
    rt_printf("mem_probe: ready\n");
    while (!(inb(LAYOUT_PORTS_COM1 + UART_LSR) & LSR_DR))
        __asm__ volatile("pause");
    (void)inb(LAYOUT_PORTS_COM1 + UART_RBR);
    rt_action("poweroff", &acpi);
}
