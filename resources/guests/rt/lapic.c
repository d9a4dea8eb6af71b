/* lapic.c - the local APIC in xAPIC (MMIO) mode: ID, enable, INIT/STARTUP IPIs. */
#include "rt.h"

#define LAPIC_ID 0x20
#define LAPIC_SVR 0xf0
#define LAPIC_ICR_LO 0x300
#define LAPIC_ICR_HI 0x310

#define SVR_APIC_ENABLE (1u << 8)
#define SVR_SPURIOUS_VECTOR 0xff
#define ICR_DELIVERY_INIT (5u << 8)
#define ICR_DELIVERY_STARTUP (6u << 8)
#define ICR_LEVEL_ASSERT (1u << 14)
#define ICR_SEND_PENDING (1u << 12)
#define ICR_DEST_SHIFT 24
#define ICR_POLL_LIMIT 1000000

#define INIT_TO_SIPI_US 10000
#define SIPI_TO_SIPI_US 200

static uint64_t lapic_base = LAYOUT_APIC_START;

void lapic_set_base(uint64_t base)
{
    if (base != 0)
        lapic_base = base;
}

static uint32_t lapic_read(uint32_t reg) { return mmio_read32(lapic_base + reg); }
static void lapic_write(uint32_t reg, uint32_t v) { mmio_write32(lapic_base + reg, v); }

uint32_t lapic_id(void) { return lapic_read(LAPIC_ID) >> 24; }

void lapic_enable(void)
{
    lapic_write(LAPIC_SVR, lapic_read(LAPIC_SVR) | SVR_APIC_ENABLE | SVR_SPURIOUS_VECTOR);
}

/* Sends one IPI and waits (bounded) until the APIC has accepted it. */
static bool send_ipi(uint32_t apic_id, uint32_t icr_lo)
{
    lapic_write(LAPIC_ICR_HI, apic_id << ICR_DEST_SHIFT);
    lapic_write(LAPIC_ICR_LO, icr_lo);
    for (int i = 0; i < ICR_POLL_LIMIT; i++) {
        if (!(lapic_read(LAPIC_ICR_LO) & ICR_SEND_PENDING))
            return true;
        cpu_pause();
    }
    return false;
}

bool lapic_init_sipi(uint32_t apic_id, uint8_t vector)
{
    if (!send_ipi(apic_id, ICR_DELIVERY_INIT | ICR_LEVEL_ASSERT))
        return false;
    rt_delay_us(INIT_TO_SIPI_US);
    for (int i = 0; i < 2; i++) {
        if (!send_ipi(apic_id, ICR_DELIVERY_STARTUP | ICR_LEVEL_ASSERT | vector))
            return false;
        rt_delay_us(SIPI_TO_SIPI_US);
    }
    return true;
}
