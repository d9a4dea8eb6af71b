/* smp.c (32-bit runtime) - wake the application processors and count them.
 *
 * The real-mode trampoline (ap_trampoline.S) is copied to SMP_TRAMPOLINE_ADDR, below 1 MiB as
 * STARTUP IPIs require; it switches to 32-bit protected mode on our GDT and jumps to
 * rt_ap_entry32, which increments rt_aps_online with `lock incl` and halts. */
#include "rt.h"

#define PAGE_SIZE 0x1000
#define AP_WAIT_US 1000000
#define AP_POLL_US 1000
#define XAPIC_MAX_ID 0xff

extern const uint8_t rt_ap_trampoline_start[], rt_ap_trampoline_end[];

/* Incremented by every AP that reaches 32-bit code (ap_trampoline.S). */
volatile uint32_t rt_aps_online;

uint32_t smp_boot_aps(const struct acpi_info *acpi, const struct rt_boot *boot)
{
    size_t size = (size_t)(rt_ap_trampoline_end - rt_ap_trampoline_start);
    uint32_t listed = acpi->cpus < ACPI_MAX_CPUS ? acpi->cpus : ACPI_MAX_CPUS;
    uint32_t expected = 0;

    _Static_assert(SMP_TRAMPOLINE_ADDR % PAGE_SIZE == 0 && SMP_TRAMPOLINE_ADDR < 0x100000,
                   "a SIPI vector names a page below 1 MiB");
    if (listed <= 1) {
        rt_printf("smp: aps_expected=0\n");
        rt_printf("smp: aps_online=0\n");
        return 0;
    }
    if (size > PAGE_SIZE || !boot_is_ram(boot, SMP_TRAMPOLINE_ADDR, PAGE_SIZE)) {
        rt_printf("smp: trampoline page 0x%x is not RAM in the memory map; not starting APs\n",
                  SMP_TRAMPOLINE_ADDR);
        return 0;
    }
    memcpy(rt_phys(SMP_TRAMPOLINE_ADDR), rt_ap_trampoline_start, size);

    lapic_set_base(acpi->lapic_addr);
    lapic_enable();
    uint32_t self = lapic_id();
    rt_printf("smp: bsp_apic_id=%u trampoline=0x%x\n", self, SMP_TRAMPOLINE_ADDR);
    for (uint32_t i = 0; i < listed; i++) {
        uint32_t id = acpi->apic_ids[i];
        if (id == self)
            continue;
        if (id > XAPIC_MAX_ID) {
            rt_printf("smp: apic_id=%u cannot be addressed in xAPIC mode\n", id);
            continue;
        }
        if (!lapic_init_sipi(id, SMP_TRAMPOLINE_ADDR / PAGE_SIZE)) {
            rt_printf("smp: apic_id=%u did not accept the IPI\n", id);
            continue;
        }
        expected++;
    }
    rt_printf("smp: aps_expected=%u\n", expected);
    for (uint32_t waited = 0; rt_aps_online < expected && waited < AP_WAIT_US; waited += AP_POLL_US)
        rt_delay_us(AP_POLL_US);
    uint32_t online = rt_aps_online;
    rt_printf("smp: aps_online=%u\n", online);
    return online;
}
