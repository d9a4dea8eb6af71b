/* internal_error - a KVM internal error on purpose, for the teardown tests.
 *
 * The boot vCPU executes a 32-bit protected-mode `iret`. KVM's instruction emulator implements
 * `iret` only in real mode, and on the project's nested host every guest instruction goes through
 * it, so KVM stops the vCPU with KVM_EXIT_INTERNAL_ERROR, suberror 1 (emulation failure): vfiovm
 * exits with status 4. Command line:
 *   aps=spin   first wake every AP (INIT-SIPI-SIPI) into a real-mode loop that counts itself in
 *              and spins (`jmp $`): the other vCPUs are busy in KVM_RUN when the boot vCPU dies
 *   aps=halt   first wake the APs with the runtime's trampoline, which halts them
 *   bsp=spin   do not crash: spin forever too (for the signal tests)
 * Prints "internal_error: aps=<mode> online=N" (when APs were woken) and then
 * "internal_error: iret" or "internal_error: spinning". Where the `iret` is executed after all
 * (other hosts), it writes 0x7e to the debug-exit port: status 253, which no test accepts. */
#include "rt.h"

/* Real-mode AP code, copied to SMP_TRAMPOLINE_ADDR: `lock incw %cs:COUNTER; jmp .` */
#define AP_COUNTER_OFFSET 0x10
static const uint8_t ap_spin_code[] = {
    0x2e, 0xf0, 0xff, 0x06, AP_COUNTER_OFFSET, 0x00, /* lock incw %cs:0x10 */
    0xeb, 0xfe,                                      /* 1: jmp 1b */
};
#define PAGE_SIZE 0x1000
#define AP_WAIT_US 1000000
#define AP_POLL_US 1000
#define IRET_EMULATED_EXIT 0x7e

static struct acpi_info acpi;

static uint32_t wake_spinning_aps(const struct rt_boot *boot)
{
    volatile uint16_t *counter = rt_phys(SMP_TRAMPOLINE_ADDR + AP_COUNTER_OFFSET);
    uint32_t listed = acpi.cpus < ACPI_MAX_CPUS ? acpi.cpus : ACPI_MAX_CPUS;
    uint32_t expected = 0;

    if (listed <= 1 || !boot_is_ram(boot, SMP_TRAMPOLINE_ADDR, PAGE_SIZE))
        return 0;
    memcpy(rt_phys(SMP_TRAMPOLINE_ADDR), ap_spin_code, sizeof(ap_spin_code));
    *counter = 0;
    lapic_set_base(acpi.lapic_addr);
    lapic_enable();
    uint32_t self = lapic_id();
    for (uint32_t i = 0; i < listed; i++) {
        if (acpi.apic_ids[i] != self && acpi.apic_ids[i] <= 0xff &&
            lapic_init_sipi(acpi.apic_ids[i], SMP_TRAMPOLINE_ADDR / PAGE_SIZE))
            expected++;
    }
    for (uint32_t waited = 0; *counter < expected && waited < AP_WAIT_US; waited += AP_POLL_US)
        rt_delay_us(AP_POLL_US);
    return *counter;
}

NORETURN static void protected_mode_iret(void)
{
    /* A frame that returns to the next instruction with the current CS and EFLAGS. */
    __asm__ volatile("pushfl\n\t"
                     "pushl %%cs\n\t"
                     "pushl $1f\n\t"
                     "iret\n"
                     "1:" ::: "memory");
    outl(LAYOUT_PORTS_DEBUG_EXIT, IRET_EMULATED_EXIT);
    cpu_halt_forever();
}

void guest_main(const struct rt_boot *boot)
{
    char aps[8] = "", bsp[8] = "";

    rt_printf("guest: internal_error\n");
    rt_cmdline_get(boot->cmdline, "aps", aps, sizeof(aps));
    rt_cmdline_get(boot->cmdline, "bsp", bsp, sizeof(bsp));
    if (aps[0]) {
        acpi_scan(&acpi, boot->rsdp, false);
        uint32_t online = 0;
        if (!strcmp(aps, "spin"))
            online = wake_spinning_aps(boot);
        else if (!strcmp(aps, "halt"))
            online = smp_boot_aps(&acpi, boot);
        else
            rt_fail("aps= must be spin or halt");
        rt_printf("internal_error: aps=%s online=%u\n", aps, online);
    }
    if (!strcmp(bsp, "spin")) {
        rt_printf("internal_error: spinning\n");
        for (;;)
            cpu_pause();
    }
    rt_printf("internal_error: iret\n");
    protected_mode_iret();
}
