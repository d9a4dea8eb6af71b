/* action.c - the ways a guest ends the VM, chosen by name (usually `action=` on the command line). */
#include "rt.h"

#define I8042_STATUS_INPUT_FULL 0x02
#define I8042_CMD_RESET 0xfe
#define I8042_POLL_LIMIT 100000

#define PM1_SLP_TYP_SHIFT 10
#define PM1_SLP_EN (1u << 13)
#define SLEEP_CTL_SLP_TYP_SHIFT 2
#define SLEEP_CTL_SLP_EN (1u << 5)

/* How long an action has to end the VM before we call it a failure (generous: the VMM may stop
 * the vCPU asynchronously, and CI machines are busy). */
#define ACTION_GRACE_US 1000000

#define DEFAULT_ACTION "exit:0"
#define ACTION_MAX 64

static void debug_exit(uint32_t value) { outl(LAYOUT_PORTS_DEBUG_EXIT, value); }

NORETURN static void action_failed(const char *spec)
{
    rt_printf("error: action %s did not end the VM\n", spec);
    debug_exit(RT_EXIT_FAILURE);
    cpu_halt_forever();
}

void rt_fail(const char *msg)
{
    rt_printf("error: %s\n", msg);
    debug_exit(RT_EXIT_FAILURE);
    cpu_halt_forever();
}

static void i8042_reset(void)
{
    for (int i = 0; i < I8042_POLL_LIMIT; i++) {
        if (!(inb(LAYOUT_PORTS_I8042_CMD) & I8042_STATUS_INPUT_FULL))
            break;
        cpu_pause();
    }
    outb(LAYOUT_PORTS_I8042_CMD, I8042_CMD_RESET);
}

/* reset-once: an NVRAM byte of the RTC survives a reset (as on a PC), guest RAM does not. */
#define CMOS_INDEX 0x70
#define CMOS_DATA 0x71
#define RESET_ONCE_CMOS_REG 0x40
#define RESET_ONCE_SEEN 0xa5
#define RESET_ONCE_RAM_MARK ((volatile uint32_t *)0x1000000)

static void reset_once(void)
{
    outb(CMOS_INDEX, RESET_ONCE_CMOS_REG);
    uint8_t seen = inb(CMOS_DATA);
    rt_printf("action: reset-once: cmos=0x%x ram_mark=0x%x\n", seen, *RESET_ONCE_RAM_MARK);
    if (seen == RESET_ONCE_SEEN) {
        rt_printf("action: reset-once: after the reset\n");
        debug_exit(0);
        return;
    }
    outb(CMOS_INDEX, RESET_ONCE_CMOS_REG);
    outb(CMOS_DATA, RESET_ONCE_SEEN);
    *RESET_ONCE_RAM_MARK = 0xfeedface;
    rt_printf("action: reset-once: resetting\n");
    i8042_reset();
}

static void gas_write8(const struct acpi_gas *g, uint8_t v)
{
    if (g->space == 1 && g->addr <= 0xffff)
        outb((uint16_t)g->addr, v);
    else if (g->space == 0 && rt_reachable(g->addr, 1))
        mmio_write8(g->addr, v);
}

static void acpi_poweroff(const struct acpi_info *acpi)
{
    uint8_t typ = acpi_s5_typ(acpi);

    if ((acpi->fadt_flags & ACPI_FADT_HW_REDUCED) && acpi->sleep_ctl.addr) {
        gas_write8(&acpi->sleep_ctl, (uint8_t)((typ << SLEEP_CTL_SLP_TYP_SHIFT) | SLEEP_CTL_SLP_EN));
        return;
    }
    uint32_t pm1a = acpi->pm1a_cnt ? acpi->pm1a_cnt : LAYOUT_PORTS_PM1A_CNT;
    uint16_t v = (uint16_t)((typ << PM1_SLP_TYP_SHIFT) | PM1_SLP_EN);
    if (acpi->pm1b_cnt)
        outw((uint16_t)acpi->pm1b_cnt, v);
    outw((uint16_t)pm1a, v);
}

/* A zero-limit IDT: any exception then escalates to a triple fault. */
NORETURN static void triple_fault(void)
{
    struct {
        uint16_t limit;
        uintptr_t base;
    } PACKED idtr = { 0, 0 };

    __asm__ volatile("lidt %0; ud2" : : "m"(idtr) : "memory");
    cpu_halt_forever();
}

void rt_action(const char *spec, const struct acpi_info *acpi)
{
    uint64_t code = 0;
    bool exit = rt_starts_with(spec, "exit:");

    if (exit && (!rt_parse_u64(spec + 5, &code) || code > 0xffffffffULL)) {
        rt_printf("error: bad exit code in action %s\n", spec);
        debug_exit(RT_EXIT_FAILURE);
        cpu_halt_forever();
    }
    bool known = exit || !strcmp(spec, "reset") || !strcmp(spec, "poweroff") ||
                 !strcmp(spec, "cf9") || !strcmp(spec, "fault") || !strcmp(spec, "hang") ||
                 !strcmp(spec, "spam") || !strcmp(spec, "reset-once");
    if (!known) {
        rt_printf("error: unknown action %s\n", spec);
        debug_exit(RT_EXIT_FAILURE);
        cpu_halt_forever();
    }

    rt_printf("action: %s\n", spec);
    if (!strcmp(spec, "poweroff")) {
        /* Say which register and value, so a failing power-off is easy to diagnose. */
        if ((acpi->fadt_flags & ACPI_FADT_HW_REDUCED) && acpi->sleep_ctl.addr)
            rt_printf("action: poweroff via sleep_ctl=0x%llx slp_typ=%u\n", acpi->sleep_ctl.addr,
                      acpi_s5_typ(acpi));
        else
            rt_printf("action: poweroff via pm1a_cnt=0x%x slp_typ=%u\n",
                      acpi->pm1a_cnt ? acpi->pm1a_cnt : LAYOUT_PORTS_PM1A_CNT, acpi_s5_typ(acpi));
    }
    rt_printf("done\n");

    if (exit)
        debug_exit((uint32_t)code);
    else if (!strcmp(spec, "reset"))
        i8042_reset();
    else if (!strcmp(spec, "poweroff"))
        acpi_poweroff(acpi);
    else if (!strcmp(spec, "reset-once"))
        reset_once();
    else if (!strcmp(spec, "cf9"))
        outb(LAYOUT_PORTS_RESET_CF9, LAYOUT_PORTS_RESET_VALUE);
    else if (!strcmp(spec, "fault"))
        triple_fault();
    else if (!strcmp(spec, "spam"))
        for (uint64_t n = 0;; n++)
            rt_printf("spam: line %llu of console output nobody has to read\n", n);
    else
        cpu_halt_forever(); /* "hang" */

    rt_delay_us(ACTION_GRACE_US);
    action_failed(spec);
}

void rt_action_from_cmdline(const struct rt_boot *boot, const struct acpi_info *acpi)
{
    char spec[ACTION_MAX];

    if (!rt_cmdline_get(boot->cmdline, "action", spec, sizeof(spec)))
        memcpy(spec, DEFAULT_ACTION, sizeof(DEFAULT_ACTION));
    rt_action(spec, acpi);
}
