/* cpu.c - CPU helpers: halting, control registers, and busy waiting on the TSC. Exactness does
 * not matter for the waits (IPI spacing and "give up after about a second"), so the TSC rate
 * comes from CPUID leaf 0x16 when the CPU reports it and is otherwise assumed to be 3 GHz. */
#include "rt.h"

#define DEFAULT_TSC_MHZ 3000
#define CPUID_FREQ_LEAF 0x16

uint64_t rt_tsc_mhz(void)
{
    static uint64_t mhz;
    uint32_t r[4];

    if (mhz)
        return mhz;
    mhz = DEFAULT_TSC_MHZ;
    cpu_cpuid(0, 0, r);
    if (r[0] >= CPUID_FREQ_LEAF) {
        cpu_cpuid(CPUID_FREQ_LEAF, 0, r);
        if (r[0] & 0xffff)
            mhz = r[0] & 0xffff;
    }
    return mhz;
}

void rt_delay_us(uint64_t us)
{
    uint64_t start = cpu_rdtsc(), cycles = us * rt_tsc_mhz();

    while (cpu_rdtsc() - start < cycles)
        cpu_pause();
}

void cpu_halt_forever(void)
{
    for (;;)
        __asm__ volatile("cli; hlt" ::: "memory");
}

#define MSR_EFER 0xc0000080

void cpu_print_state(void)
{
    unsigned long cr0, cr4;
    uint32_t lo, hi;

    __asm__ volatile("mov %%cr0, %0" : "=r"(cr0));
    __asm__ volatile("mov %%cr4, %0" : "=r"(cr4));
    __asm__ volatile("rdmsr" : "=a"(lo), "=d"(hi) : "c"(MSR_EFER));
    rt_printf("cpu: mode=%u cr0=0x%lx cr4=0x%lx efer=0x%llx\n", (unsigned)sizeof(long) * 8, cr0, cr4,
              (uint64_t)hi << 32 | lo);
}
