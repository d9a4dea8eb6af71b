/* idt.c (32-bit runtime) - a 32-bit IDT whose handlers record what arrived and jump on instead of
 * returning, because KVM's instruction emulator (on the nested hosts these guests run on) cannot
 * emulate a protected-mode `iret`: it kills the guest with KVM_EXIT_INTERNAL_ERROR.
 *
 * How to take interrupts:
 *   idt_init(lapic_base);            once: load the IDT (256 interrupt gates)
 *   lapic_enable();                  software-enable the LAPIC (SVR bit 8)
 *   int v = idt_call(body, arg);     run body(arg) with IF=1
 * idt_call returns the vector of the first interrupt or exception that arrived while body ran,
 * or IDT_NO_INTERRUPT if body returned first; interrupts are disabled again either way. Whatever
 * body was doing when the interrupt came is abandoned (see idt_stubs.S), so body must be
 * written as "start something, then wait a bounded time" (idt_wait_us is exactly that). Every
 * LAPIC vector (32..254) is EOI'd by the handler. Counts per vector are kept in idt_count().
 *
 * An exception or interrupt outside idt_call (interrupts are off there, so: an exception) prints
 * "error: unexpected exception vector=N error=0x.. eip=0x.." and ends the VM with
 * RT_EXIT_FAILURE. idt_call does not nest. */
#include "rt.h"
#include "gdt.h"

#define IDT_VECTORS 256
#define STUB_SIZE 16
#define GATE_INTERRUPT32 0x8e00u /* present, DPL 0, 32-bit interrupt gate */
#define LAPIC_EOI 0xb0
#define FIRST_EXTERNAL_VECTOR 32
#define SPURIOUS_VECTOR 0xff

/* What the stub and the CPU pushed, lowest address first. */
struct idt_frame {
    uint32_t vector;
    uint32_t error_code;
    uint32_t eip;
    uint32_t cs;
    uint32_t eflags;
};

struct idt_gate {
    uint32_t lo; /* offset 15:0, selector */
    uint32_t hi; /* offset 31:16, type */
};

extern const uint8_t rt_idt_stubs[];

/* The resume point idt_call armed (its %esp), 0 when none; used by idt_stubs.S. */
uint32_t rt_idt_resume_esp;

static struct idt_gate idt[IDT_VECTORS] __attribute__((aligned(8)));
static uint64_t eoi_addr;
static volatile uint32_t counts[IDT_VECTORS];
static volatile struct idt_event last;

void idt_init(uint64_t lapic_base)
{
    eoi_addr = (lapic_base ? lapic_base : LAYOUT_APIC_START) + LAPIC_EOI;
    for (unsigned v = 0; v < IDT_VECTORS; v++) {
        uint32_t handler = (uint32_t)(uintptr_t)(rt_idt_stubs + v * STUB_SIZE);
        idt[v].lo = (handler & 0xffff) | ((uint32_t)SEL_CODE32 << 16);
        idt[v].hi = (handler & 0xffff0000u) | GATE_INTERRUPT32;
    }
    struct {
        uint16_t limit;
        uint32_t base;
    } PACKED idtr = { sizeof(idt) - 1, (uint32_t)(uintptr_t)idt };
    __asm__ volatile("lidt %0" : : "m"(idtr) : "memory");
}

/* Called by idt_stubs.S on the interrupted stack. Returns the vector when a resume point is armed. */
uint32_t rt_idt_dispatch(const struct idt_frame *f)
{
    uint32_t v = f->vector & 0xff;

    counts[v]++;
    last.vector = v;
    last.error_code = f->error_code;
    last.eip = f->eip;
    if (v >= FIRST_EXTERNAL_VECTOR && v != SPURIOUS_VECTOR)
        mmio_write32(eoi_addr, 0);
    if (rt_idt_resume_esp == 0) {
        rt_printf("error: unexpected exception vector=%u error=0x%x eip=0x%x\n", v, f->error_code,
                  f->eip);
        rt_fail("unexpected exception");
    }
    return v;
}

/* Called by idt_stubs.S when idt_call is entered while already armed. */
NORETURN void rt_idt_nested(void)
{
    rt_fail("idt_call does not nest");
}

uint32_t idt_count(uint8_t vector) { return counts[vector]; }

uint32_t idt_total(void)
{
    uint32_t n = 0;
    for (unsigned v = 0; v < IDT_VECTORS; v++)
        n += counts[v];
    return n;
}

void idt_last(struct idt_event *e)
{
    e->vector = last.vector;
    e->error_code = last.error_code;
    e->eip = last.eip;
}

static void wait_body(void *arg)
{
    rt_delay_us(*(const uint64_t *)arg);
}

int idt_wait_us(uint64_t us)
{
    return idt_call(wait_body, &us);
}
