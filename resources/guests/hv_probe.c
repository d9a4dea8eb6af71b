/* hv_probe - the Windows-facing platform from inside (docs/firmware.md, "Windows-facing platform"):
 *
 * - CPUID: the hypervisor bit, leaves 0x40000000/1/3/4 (Hyper-V when vfiovm gives them) and
 *   0x40000100/1 (KVM's, moved there under Hyper-V); `cpuid: <leaf> eax=.. ebx=.. ecx=.. edx=..
 *   text=..` lines the tests parse.
 * - The RTC: `rtc: secs-of-day=N date=YYYY-MM-DD` (binary mode, read between two update flags).
 * - With Hyper-V leaves (0x40000001 EAX "Hv#1") and `test=hv`: the enlightenments KVM
 *   implements, each exercised as a guest uses it: the guest OS id and hypercall page, a
 *   hypercall (long spin-wait notification), the VP index, the reference counter advancing, the
 *   reference TSC page agreeing with it, the frequency MSRs, the SynIC (version, message page),
 *   a synthetic timer in direct mode and one posting its expiry message through SINT 0, the
 *   flush hypercall and the IPI hypercall (an IPI to itself), and an MSR left out of the
 *   features (the reset MSR) refused with #GP. `hv: ok` when every check passed, else
 *   `hv: FAIL <what>` lines and `hv: failures=N`.
 *
 * Ends with `action=` (the runtime's default: `exit:0`, status 1). */
#include "rt.h"

/* Hyper-V synthetic MSRs (TLFS; Linux's hvgdk_mini.h names). */
#define HV_MSR_GUEST_OS_ID 0x40000000u
#define HV_MSR_HYPERCALL 0x40000001u
#define HV_MSR_VP_INDEX 0x40000002u
#define HV_MSR_RESET 0x40000003u
#define HV_MSR_TIME_REF_COUNT 0x40000020u
#define HV_MSR_REFERENCE_TSC 0x40000021u
#define HV_MSR_TSC_FREQUENCY 0x40000022u
#define HV_MSR_APIC_FREQUENCY 0x40000023u
#define HV_MSR_SCONTROL 0x40000080u
#define HV_MSR_SVERSION 0x40000081u
#define HV_MSR_SIEFP 0x40000082u
#define HV_MSR_SIMP 0x40000083u
#define HV_MSR_EOM 0x40000084u
#define HV_MSR_SINT0 0x40000090u
#define HV_MSR_STIMER0_CONFIG 0x400000b0u
#define HV_MSR_STIMER0_COUNT 0x400000b1u
#define HV_MSR_STIMER1_CONFIG 0x400000b2u
#define HV_MSR_STIMER1_COUNT 0x400000b3u

#define HV_INTERFACE_HV1 0x31237648u /* "Hv#1" */
#define STIMER_ENABLE (1u << 0)
#define STIMER_DIRECT (1u << 12)
#define STIMER_VECTOR_SHIFT 4
#define STIMER_SINT_SHIFT 16
#define HVMSG_TIMER_EXPIRED 0x80000010u

#define HVCALL_FLUSH_VIRTUAL_ADDRESS_SPACE 0x0002u
#define HVCALL_NOTIFY_LONG_SPIN_WAIT 0x0008u
#define HVCALL_SEND_IPI 0x000bu
#define HV_FLUSH_ALL_PROCESSORS 1u
#define HV_FLUSH_ALL_VIRTUAL_ADDRESS_SPACES 2u

#define VECTOR_STIMER_DIRECT 0x50
#define VECTOR_SINT0 0x51
#define VECTOR_IPI 0x52
#define VECTOR_GP 13

/* A guest OS id as the TLFS's open-source encoding has it: bit 63 set, OS type Linux (0x1). */
#define GUEST_OS_ID 0x8100000000000000ull

static uint8_t hypercall_page[4096] __attribute__((aligned(4096)));
static uint8_t tsc_page[4096] __attribute__((aligned(4096)));
static uint8_t simp_page[4096] __attribute__((aligned(4096)));
static uint8_t siefp_page[4096] __attribute__((aligned(4096)));
static uint8_t input_page[4096] __attribute__((aligned(4096)));

static struct acpi_info acpi;
static unsigned failures;

static void check(bool ok, const char *what)
{
    if (!ok) {
        rt_printf("hv: FAIL %s\n", what);
        failures++;
    }
}

static uint64_t rdmsr(uint32_t msr)
{
    uint32_t lo, hi;
    __asm__ volatile("rdmsr" : "=a"(lo), "=d"(hi) : "c"(msr));
    return (uint64_t)hi << 32 | lo;
}

static void wrmsr(uint32_t msr, uint64_t v)
{
    __asm__ volatile("wrmsr" : : "c"(msr), "a"((uint32_t)v), "d"((uint32_t)(v >> 32)) : "memory");
}

static void print_leaf(uint32_t leaf)
{
    uint32_t r[4];
    cpu_cpuid(leaf, 0, r);
    char text[13];
    memcpy(text, &r[1], 12);
    text[12] = 0;
    for (int i = 0; i < 12; i++)
        if (text[i] && (text[i] < 0x20 || text[i] > 0x7e))
            text[i] = '.';
    rt_printf("cpuid: 0x%x eax=0x%x ebx=0x%x ecx=0x%x edx=0x%x text=%s\n", leaf, r[0], r[1], r[2],
              r[3], text);
}

/* ---- RTC --------------------------------------------------------------------------------- */

static uint8_t cmos_read(uint8_t reg)
{
    outb(0x70, reg);
    return inb(0x71);
}

static void print_rtc(void)
{
    /* Binary, 24-hour: status B = DM | 24/12. */
    outb(0x70, 0x0b);
    outb(0x71, 0x06);
    uint8_t s, m, h, d, mo, y, c;
    do {
        while (cmos_read(0x0a) & 0x80)
            cpu_pause();
        s = cmos_read(0x00);
        m = cmos_read(0x02);
        h = cmos_read(0x04);
        d = cmos_read(0x07);
        mo = cmos_read(0x08);
        y = cmos_read(0x09);
        c = cmos_read(0x32);
    } while (s != cmos_read(0x00));
    rt_printf("rtc: secs-of-day=%u date=%u%02u-%02u-%02u time=%02u:%02u:%02u\n",
              (unsigned)h * 3600 + (unsigned)m * 60 + s, c, y, mo, d, h, m, s);
}

/* ---- Hypercalls (32-bit ABI: EDX:EAX control, EBX:ECX input GPA, EDI:ESI output GPA) ------ */

static uint32_t hypercall_entry;

static uint64_t hypercall(uint64_t control, uint64_t input_gpa)
{
    uint32_t lo = (uint32_t)control, hi = (uint32_t)(control >> 32);
    uint32_t in_lo = (uint32_t)input_gpa, in_hi = (uint32_t)(input_gpa >> 32);
    uint32_t out_lo = 0, out_hi = 0;
    hypercall_entry = (uint32_t)(uintptr_t)hypercall_page;
    __asm__ volatile("call *%[entry]"
                     : "+a"(lo), "+d"(hi), "+b"(in_hi), "+c"(in_lo), "+D"(out_hi), "+S"(out_lo)
                     : [entry] "m"(hypercall_entry)
                     : "memory", "cc");
    return (uint64_t)hi << 32 | lo;
}

/* ---- The reference TSC page: time = ((tsc * scale) >> 64) + offset --------------------------- */

static uint64_t mul_shift64(uint64_t a, uint64_t b)
{
    uint64_t a0 = (uint32_t)a, a1 = a >> 32, b0 = (uint32_t)b, b1 = b >> 32;
    uint64_t p00 = a0 * b0, p01 = a0 * b1, p10 = a1 * b0, p11 = a1 * b1;
    uint64_t mid = (p00 >> 32) + (uint32_t)p01 + (uint32_t)p10;
    return p11 + (p01 >> 32) + (p10 >> 32) + (mid >> 32);
}

static uint64_t tsc_page_time(uint32_t *seq_out)
{
    volatile uint32_t *seq = (volatile uint32_t *)tsc_page;
    volatile uint64_t *scale = (volatile uint64_t *)(tsc_page + 8);
    volatile int64_t *offset = (volatile int64_t *)(tsc_page + 16);
    uint32_t s;
    uint64_t t;
    do {
        s = *seq;
        t = mul_shift64(cpu_rdtsc(), *scale) + (uint64_t)*offset;
    } while (s != *seq);
    *seq_out = s;
    return t;
}

/* ---- Bodies for idt_call ---------------------------------------------------------------------- */

static void read_msr_body(void *arg) { (void)rdmsr((uint32_t)(uintptr_t)arg); }

static void wait_body(void *arg)
{
    uint64_t deadline = cpu_rdtsc() + rt_tsc_mhz() * (uint64_t)(uintptr_t)arg;
    while (cpu_rdtsc() < deadline)
        cpu_pause();
}

static void ipi_body(void *arg)
{
    (void)arg;
    volatile uint32_t *in = (volatile uint32_t *)input_page;
    in[0] = VECTOR_IPI; /* vector */
    in[1] = 0;          /* reserved */
    in[2] = 1;          /* cpu mask: VP 0 */
    in[3] = 0;
    uint64_t status = hypercall(HVCALL_SEND_IPI, (uintptr_t)input_page);
    if ((uint16_t)status != 0)
        rt_printf("hv: send-ipi status=0x%llx\n", status);
    wait_body((void *)(uintptr_t)200000);
}

/* ---- The enlightenments --------------------------------------------------------------------- */

static void test_hv(void)
{
    uint32_t r[4];
    cpu_cpuid(0x40000003, 0, r);
    uint32_t features = r[0], misc = r[3];
    cpu_cpuid(0x40000004, 0, r);
    uint32_t hints = r[0];

    lapic_set_base(acpi.lapic_addr);
    lapic_enable();
    idt_init(acpi.lapic_addr);

    /* Guest OS id, then the hypercall page. */
    wrmsr(HV_MSR_GUEST_OS_ID, GUEST_OS_ID);
    check(rdmsr(HV_MSR_GUEST_OS_ID) == GUEST_OS_ID, "guest os id reads back");
    wrmsr(HV_MSR_HYPERCALL, (uintptr_t)hypercall_page | 1);
    rt_printf("hv: hypercall-page=0x%x first-bytes=%02x %02x %02x\n",
              (unsigned)(uintptr_t)hypercall_page, hypercall_page[0], hypercall_page[1],
              hypercall_page[2]);
    check(hypercall_page[0] == 0x0f && hypercall_page[1] == 0x01, "hypercall page holds vmcall");
    uint64_t st = hypercall(HVCALL_NOTIFY_LONG_SPIN_WAIT, 0);
    rt_printf("hv: spin-wait status=0x%llx\n", st);
    check((uint16_t)st == 0, "long spin-wait hypercall");

    /* VP index: the BSP is VP 0. */
    uint64_t vp = rdmsr(HV_MSR_VP_INDEX);
    rt_printf("hv: vp-index=%llu apic-id=%u\n", vp, lapic_id());
    check(vp == lapic_id(), "VP index is the APIC id");

    /* The reference counter (100 ns units) over 20 ms of TSC. */
    uint64_t t0 = rdmsr(HV_MSR_TIME_REF_COUNT);
    rt_delay_us(20000);
    uint64_t t1 = rdmsr(HV_MSR_TIME_REF_COUNT);
    rt_printf("hv: time-ref-count delta=%llu (20 ms of TSC)\n", t1 - t0);
    check(t1 > t0, "reference counter advances");

    /* The reference TSC page. */
    wrmsr(HV_MSR_REFERENCE_TSC, (uintptr_t)tsc_page | 1);
    uint32_t seq;
    uint64_t page_time = tsc_page_time(&seq);
    uint64_t msr_time = rdmsr(HV_MSR_TIME_REF_COUNT);
    int64_t diff = (int64_t)(page_time - msr_time);
    rt_printf("hv: tsc-page sequence=0x%x scale=0x%llx diff-to-msr=%lld\n", seq,
              *(volatile uint64_t *)(tsc_page + 8), diff);
    check(seq != 0 && seq != 0xffffffffu, "TSC page valid");
    /* 10 ms either way: the MSR read exits to the hypervisor after the page read. */
    check(diff > -100000 && diff < 100000, "TSC page agrees with the reference counter");

    /* Frequencies. */
    if (features & (1u << 11)) {
        uint64_t tsc_hz = rdmsr(HV_MSR_TSC_FREQUENCY), apic_hz = rdmsr(HV_MSR_APIC_FREQUENCY);
        rt_printf("hv: tsc-frequency=%llu apic-frequency=%llu\n", tsc_hz, apic_hz);
        check(tsc_hz > 100000000ull, "TSC frequency MSR");
        check(apic_hz > 0, "APIC frequency MSR");
    } else {
        check(false, "frequency MSRs offered");
    }

    /* SynIC and synthetic timers. */
    uint64_t sversion = rdmsr(HV_MSR_SVERSION);
    rt_printf("hv: synic version=%llu\n", sversion);
    check(sversion == 1, "SynIC version 1");
    wrmsr(HV_MSR_SIMP, (uintptr_t)simp_page | 1);
    wrmsr(HV_MSR_SIEFP, (uintptr_t)siefp_page | 1);
    wrmsr(HV_MSR_SINT0, VECTOR_SINT0); /* unmasked, not auto-EOI */
    wrmsr(HV_MSR_SCONTROL, 1);

    /* Timer 0, direct mode: the vector arrives at the LAPIC, no message. */
    if (misc & (1u << 19)) {
        uint64_t now = rdmsr(HV_MSR_TIME_REF_COUNT);
        wrmsr(HV_MSR_STIMER0_COUNT, now + 100000); /* one-shot, absolute: 10 ms on */
        wrmsr(HV_MSR_STIMER0_CONFIG,
              STIMER_ENABLE | STIMER_DIRECT | (VECTOR_STIMER_DIRECT << STIMER_VECTOR_SHIFT));
        int v = idt_call(wait_body, (void *)(uintptr_t)500000);
        rt_printf("hv: stimer0 direct vector=%d\n", v);
        check(v == VECTOR_STIMER_DIRECT, "direct-mode synthetic timer fires");
    } else {
        check(false, "direct-mode synthetic timers offered");
    }

    /* Timer 1 through SINT 0: an expiry message in the message page's slot 0, then the vector. */
    uint64_t now = rdmsr(HV_MSR_TIME_REF_COUNT);
    wrmsr(HV_MSR_STIMER1_COUNT, now + 100000);
    wrmsr(HV_MSR_STIMER1_CONFIG, STIMER_ENABLE | (0u << STIMER_SINT_SHIFT));
    int v = idt_call(wait_body, (void *)(uintptr_t)500000);
    uint32_t msg_type = *(volatile uint32_t *)simp_page;
    rt_printf("hv: stimer1 sint0 vector=%d message-type=0x%x\n", v, msg_type);
    check(v == VECTOR_SINT0, "SINT 0 interrupt from the synthetic timer");
    check(msg_type == HVMSG_TIMER_EXPIRED, "timer-expired message in the SynIC message page");
    *(volatile uint32_t *)simp_page = 0;
    wrmsr(HV_MSR_EOM, 0);

    /* TLB flush and IPI hypercalls. */
    if (hints & (1u << 2)) {
        volatile uint64_t *in = (volatile uint64_t *)input_page;
        in[0] = 0; /* address space */
        in[1] = HV_FLUSH_ALL_PROCESSORS | HV_FLUSH_ALL_VIRTUAL_ADDRESS_SPACES;
        in[2] = 0; /* processor mask (all processors) */
        st = hypercall(HVCALL_FLUSH_VIRTUAL_ADDRESS_SPACE, (uintptr_t)input_page);
        rt_printf("hv: flush status=0x%llx\n", st);
        check((uint16_t)st == 0, "flush hypercall");
    } else {
        check(false, "remote TLB flush recommended");
    }
    if (hints & (1u << 10)) {
        int got = idt_call(ipi_body, 0);
        rt_printf("hv: send-ipi vector=%d\n", got);
        check(got == VECTOR_IPI, "IPI hypercall to itself");
    } else {
        check(false, "IPI hypercalls recommended");
    }

    /* An MSR whose feature vfiovm leaves out: with CPUID enforcement KVM refuses it. */
    int gp = idt_call(read_msr_body, (void *)(uintptr_t)HV_MSR_RESET);
    rt_printf("hv: reset-msr %s\n", gp == VECTOR_GP ? "gp" : "readable");

    rt_printf("hv: failures=%u\n", failures);
    if (!failures)
        rt_printf("hv: ok\n");
}

void guest_main(const struct rt_boot *boot)
{
    char test[16];
    acpi_scan(&acpi, boot->rsdp, false);
    rt_printf("guest: hv_probe\n");
    uint32_t r[4];
    cpu_cpuid(1, 0, r);
    rt_printf("cpuid: hypervisor-bit=%u\n", (r[2] >> 31) & 1);
    for (uint32_t leaf = 0x40000000; leaf <= 0x40000004; leaf++)
        if (leaf != 0x40000002)
            print_leaf(leaf);
    print_leaf(0x40000010);
    print_leaf(0x40000100);
    print_leaf(0x40000101);
    print_leaf(0x40000110);
    print_rtc();
    cpu_cpuid(0x40000001, 0, r);
    bool hyperv = r[0] == HV_INTERFACE_HV1;
    rt_printf("hv: interface=%s\n", hyperv ? "Hv#1" : "none");
    if (rt_cmdline_get(boot->cmdline, "test", test, sizeof(test)) && !strcmp(test, "hv")) {
        if (hyperv)
            test_hv();
        else
            rt_printf("hv: FAIL no Hyper-V leaves\n");
    }
    rt_action_from_cmdline(boot, &acpi);
}
