/* pci_bench - measures what one PCI config-space read costs the guest, timed with rdtsc:
 *   cf8       outl CONFIG_ADDRESS + inl CONFIG_DATA (two port exits): a full type-1 read
 *   cf8_data  inl CONFIG_DATA only, the address written once (one port exit)
 *   ecam      one 32-bit MMIO read of the ECAM window (one MMIO exit)
 * Each reads the vendor/device dword of 00:00.0 (the Q35 host bridge: present on vfiovm and on
 * QEMU -M q35), `n=` times (default 20000) after a short warm-up. Also boots under QEMU q35
 * (same ECAM base and ports), which is how scripts/bench.py compares the two.
 *
 * The TSC frequency comes from, in order: the hypervisor timing leaf 0x40000010 (EAX = kHz,
 * vfiovm provides it), CPUID 0x15 (crystal ratio), CPUID 0x16 (base MHz), else a calibration
 * against the ACPI PM timer (3.579545 MHz, port from the FADT). The PM-timer calibration is
 * always printed too, as a cross-check. Output (README.md):
 *   tsc: khz=N source=cpuid-0x40000010|cpuid-0x15|cpuid-0x16|pm-timer
 *   tsc: pm_timer_khz=N
 *   bench: mech=cf8 reads=N cycles_per_read=C.C ns_per_read=T.T value=0x29c08086
 * then runs `action=` (default exit:0, status 1). */
#include "rt.h"

#define DEFAULT_READS 20000
#define WARMUP_READS 200
#define HOST_BRIDGE PCI_BDF(0, 0, 0)

#define HV_SIGNATURE_LEAF 0x40000000
#define HV_TIMING_LEAF 0x40000010
#define CPUID_TSC_LEAF 0x15
#define CPUID_FREQ_LEAF 0x16

#define PM_TIMER_HZ 3579545
#define PM_TIMER_MASK 0xffffff
#define PM_CALIBRATE_TICKS (PM_TIMER_HZ / 20) /* 50 ms */

static struct acpi_info acpi;

static uint32_t pm_timer_port(void)
{
    return acpi.pm_tmr ? acpi.pm_tmr : LAYOUT_PORTS_PM_TMR;
}

/* One PM timer reading and the TSC at the time: the midpoint of the tightest of a few
 * rdtsc/inl/rdtsc brackets, so a vCPU preempted around one read does not skew it. */
static uint32_t pm_sample(uint16_t port, uint64_t *tsc)
{
    uint64_t best = ~0ULL;
    uint32_t pm = 0;
    for (int i = 0; i < 3; i++) {
        uint64_t t0 = cpu_rdtsc();
        uint32_t v = inl(port) & PM_TIMER_MASK;
        uint64_t t1 = cpu_rdtsc();
        if (t1 - t0 < best) {
            best = t1 - t0;
            pm = v;
            *tsc = t0 + (t1 - t0) / 2;
        }
    }
    return pm;
}

/* TSC kHz measured over at least PM_CALIBRATE_TICKS of the 24-bit PM timer; 0 if it does not
 * count. */
static uint64_t pm_timer_tsc_khz(void)
{
    uint16_t port = (uint16_t)pm_timer_port();
    uint64_t t0, t1;
    uint32_t start = pm_sample(port, &t0), elapsed = 0, guard = 0;
    while (elapsed < PM_CALIBRATE_TICKS) {
        elapsed = ((inl(port) & PM_TIMER_MASK) - start) & PM_TIMER_MASK;
        if (++guard > 100000000u)
            return 0;
    }
    elapsed = (pm_sample(port, &t1) - start) & PM_TIMER_MASK;
    /* kHz = cycles / (elapsed / PM_TIMER_HZ) / 1000 */
    return rt_udivmod64((t1 - t0) * PM_TIMER_HZ, (uint64_t)elapsed * 1000, NULL);
}

static uint64_t tsc_khz(const char **source)
{
    uint32_t r[4];

    cpu_cpuid(HV_SIGNATURE_LEAF, 0, r);
    if (r[0] >= HV_TIMING_LEAF && r[0] < HV_SIGNATURE_LEAF + 0x100) {
        cpu_cpuid(HV_TIMING_LEAF, 0, r);
        if (r[0]) {
            *source = "cpuid-0x40000010";
            return r[0];
        }
    }
    cpu_cpuid(0, 0, r);
    uint32_t max = r[0];
    if (max >= CPUID_TSC_LEAF) {
        cpu_cpuid(CPUID_TSC_LEAF, 0, r);
        if (r[0] && r[1] && r[2]) {
            *source = "cpuid-0x15";
            return rt_udivmod64((uint64_t)r[2] * r[1], (uint64_t)r[0] * 1000, NULL);
        }
    }
    if (max >= CPUID_FREQ_LEAF) {
        cpu_cpuid(CPUID_FREQ_LEAF, 0, r);
        if (r[0] & 0xffff) {
            *source = "cpuid-0x16";
            return (uint64_t)(r[0] & 0xffff) * 1000;
        }
    }
    *source = "pm-timer";
    return pm_timer_tsc_khz();
}

enum mech { CF8, CF8_DATA, ECAM };

/* `n` reads with one mechanism; returns the TSC cycles they took, the last value in *value. */
static uint64_t run(enum mech m, uint32_t n, uint32_t *value)
{
    uint32_t addr = pci_cf8_address(HOST_BRIDGE, 0), v = 0;
    uint64_t ecam = pci_ecam_address(HOST_BRIDGE, 0);
    uint16_t data = LAYOUT_PORTS_PCI_CONFIG + 4;

    if (m == CF8_DATA)
        outl(LAYOUT_PORTS_PCI_CONFIG, addr);
    uint64_t t0 = cpu_rdtsc();
    for (uint32_t i = 0; i < n; i++) {
        switch (m) {
        case CF8:
            outl(LAYOUT_PORTS_PCI_CONFIG, addr);
            v = inl(data);
            break;
        case CF8_DATA:
            v = inl(data);
            break;
        case ECAM:
            v = mmio_read32(ecam);
            break;
        }
    }
    uint64_t cycles = cpu_rdtsc() - t0;
    *value = v;
    return cycles;
}

/* Prints x/d with one decimal. */
static void print_tenths(const char *label, uint64_t x, uint64_t d)
{
    uint64_t tenths = rt_udivmod64(x * 10 + d / 2, d, NULL);
    uint64_t frac;
    uint64_t whole = rt_udivmod64(tenths, 10, &frac);
    rt_printf(" %s=%llu.%llu", label, whole, frac);
}

void guest_main(const struct rt_boot *boot)
{
    static const struct {
        enum mech m;
        const char *name;
    } mechs[] = { { CF8, "cf8" }, { CF8_DATA, "cf8_data" }, { ECAM, "ecam" } };
    char arg[24];
    uint64_t n = DEFAULT_READS;

    rt_printf("guest: pci_bench\n");
    if (rt_cmdline_get(boot->cmdline, "n", arg, sizeof(arg)) &&
        (!rt_parse_u64(arg, &n) || n == 0 || n > 10000000))
        rt_fail("n= must be 1..10000000");
    acpi_scan(&acpi, boot->rsdp, false);
    if (acpi.have_mcfg)
        pci_set_ecam_base(acpi.ecam_base);

    const char *source = "";
    uint64_t khz = tsc_khz(&source);
    uint64_t pm_khz = pm_timer_tsc_khz();
    rt_printf("tsc: khz=%llu source=%s\n", khz, source);
    rt_printf("tsc: pm_timer_khz=%llu\n", pm_khz);
    if (khz == 0)
        rt_fail("no TSC frequency");

    for (unsigned i = 0; i < ARRAY_SIZE(mechs); i++) {
        uint32_t value;
        run(mechs[i].m, WARMUP_READS, &value);
        uint64_t cycles = run(mechs[i].m, (uint32_t)n, &value);
        rt_printf("bench: mech=%s reads=%llu", mechs[i].name, n);
        print_tenths("cycles_per_read", cycles, n);
        /* ns = cycles * 1e6 / khz */
        print_tenths("ns_per_read", cycles * 1000000, n * khz);
        rt_printf(" value=0x%x\n", value);
        if (value != 0x29c08086u)
            rt_fail("00:00.0 is not the Q35 host bridge 8086:29c0");
    }
    rt_action_from_cmdline(boot, &acpi);
}
