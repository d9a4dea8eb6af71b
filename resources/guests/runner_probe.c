/* runner_probe - the CI runner's tests (tests/runner.rs): reads the runner port's signature and
 * the pvpanic port's events, then does what `test=` on the command line says:
 *
 *   status:N        phase 1, phase 2, then N as the command's exit status (32-bit write)
 *   status-byte:N   the same with one-byte writes (an init in shell)
 *   no-init         never writes phase 1; spins with no exits
 *   spin            phase 1, then spins with no exits and prints nothing
 *   halt            phase 1, then cli; hlt (no exits: HLT stays in the in-kernel irqchip)
 *   chatter         phase 1, then a console line about every 200 ms, forever
 *   pvpanic         pvpanic bit 0 (the kernel asks the host to act)
 *   crash-loaded    pvpanic bit 1 (a crash kernel takes over), then an i8042 reset
 *   panic-line      Linux's panic lines on the console, then cli; hlt
 *   panic-reset     Linux's panic lines, then an i8042 reset
 *   init-failed     what vfiovm's --exec init does when it cannot run the command: a
 *                   "vfiovm-init:" line, then 0x100 in the status register
 *
 * A test that does not end the VM as it should ends it through debug-exit with 0x7f (255). */
#include "rt.h"

#define RUNNER_SIGNATURE 0x4e524656u /* "VFRN" */
#define RUNNER_REG_VERSION (LAYOUT_PORTS_RUNNER + 0x4)
#define RUNNER_REG_PHASE (LAYOUT_PORTS_RUNNER + 0x8)
#define RUNNER_REG_STATUS (LAYOUT_PORTS_RUNNER + 0xc)

static struct acpi_info acpi;

/* A loop the compiler keeps, with no instruction that exits to the VMM. */
NORETURN static void spin(void)
{
    for (;;)
        __asm__ volatile("" ::: "memory");
}

static void panic_lines(void)
{
    rt_printf("Kernel panic - not syncing: runner_probe: test panic\n");
    rt_printf("---[ end Kernel panic - not syncing: runner_probe: test panic ]---\n");
}

void guest_main(const struct rt_boot *boot)
{
    char test[32];
    uint64_t n = 0;

    if (!rt_cmdline_get(boot->cmdline, "test", test, sizeof(test)))
        rt_fail("runner_probe needs test=");
    uint32_t sig = inl(LAYOUT_PORTS_RUNNER);
    rt_printf("runner: signature 0x%x (%s), version %u\n", sig,
              sig == RUNNER_SIGNATURE ? "ok" : "bad", inl(RUNNER_REG_VERSION));
    if (sig != RUNNER_SIGNATURE)
        rt_fail("no runner port");
    rt_printf("runner: pvpanic events 0x%x\n", inb(LAYOUT_PORTS_PVPANIC));
    acpi_scan(&acpi, boot->rsdp, false);
    rt_printf("runner: test %s\n", test);

    if (!strcmp(test, "no-init")) {
        rt_printf("runner: not reporting init\n");
        spin();
    }
    outl(RUNNER_REG_PHASE, 1);
    if (inl(RUNNER_REG_PHASE) != 1)
        rt_fail("the phase register does not read back");

    if (rt_starts_with(test, "status:") && rt_parse_u64(test + 7, &n)) {
        outl(RUNNER_REG_PHASE, 2);
        rt_printf("runner: command exits with %llu\n", n);
        outl(RUNNER_REG_STATUS, (uint32_t)n);
    } else if (rt_starts_with(test, "status-byte:") && rt_parse_u64(test + 12, &n)) {
        outb(RUNNER_REG_PHASE, 2);
        rt_printf("runner: command exits with %llu\n", n);
        outb(RUNNER_REG_STATUS, (uint8_t)n);
    } else if (!strcmp(test, "spin")) {
        rt_printf("runner: spinning\n");
        spin();
    } else if (!strcmp(test, "halt")) {
        rt_printf("runner: halting\n");
        cpu_halt_forever();
    } else if (!strcmp(test, "chatter")) {
        for (;;) {
            rt_printf("runner: chatter %llu\n", n++);
            rt_delay_us(200000);
        }
    } else if (!strcmp(test, "pvpanic")) {
        rt_printf("runner: pvpanic panicked\n");
        outb(LAYOUT_PORTS_PVPANIC, 1);
    } else if (!strcmp(test, "crash-loaded")) {
        rt_printf("runner: pvpanic crash loaded\n");
        outb(LAYOUT_PORTS_PVPANIC, 2);
        rt_printf("runner: the crash kernel runs, then resets\n");
        rt_action("reset", &acpi);
    } else if (!strcmp(test, "panic-line")) {
        panic_lines();
        cpu_halt_forever();
    } else if (!strcmp(test, "init-failed")) {
        rt_printf("vfiovm-init: cannot run the command: runner_probe says so\n");
        outl(RUNNER_REG_STATUS, 0x100);
    } else if (!strcmp(test, "panic-reset")) {
        panic_lines();
        rt_action("reset", &acpi);
    } else {
        rt_fail("unknown test=");
    }
    rt_delay_us(1000000);
    rt_fail("the test did not end the VM");
}
