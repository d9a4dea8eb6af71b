/*
 * rt.h - the tiny freestanding runtime shared by the vfiovm test guests.
 *
 * Everything here compiles both as 32-bit code (PVH guests: protected mode, paging off) and as
 * 64-bit code (Linux boot protocol guests: long mode, 4 GiB identity mapped). Files that only make
 * sense in one mode say so at their top. The platform numbers (ports, MMIO bases) come from
 * layout.h, which build.rs generates from arch/src/layout.rs.
 */
#ifndef RT_H
#define RT_H

#include "layout.h"

/* ---- Types (we build with -nostdinc: no libc headers) ---------------------------------------- */

typedef unsigned char uint8_t;
typedef unsigned short uint16_t;
typedef unsigned int uint32_t;
typedef unsigned long long uint64_t; /* the same type in both modes, so "%llx" always fits */
typedef signed char int8_t;
typedef short int16_t;
typedef int int32_t;
typedef long long int64_t;
typedef unsigned long uintptr_t; /* pointer sized in both modes: print with "%lx" */
typedef __SIZE_TYPE__ size_t;    /* print with "%zu" */
typedef _Bool bool;
#define true 1
#define false 0
#define NULL ((void *)0)
typedef __builtin_va_list va_list;
#define va_start(ap, last) __builtin_va_start(ap, last)
#define va_arg(ap, type) __builtin_va_arg(ap, type)
#define va_end(ap) __builtin_va_end(ap)

#define ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))
#define NORETURN __attribute__((noreturn))
#define PACKED __attribute__((packed))
#define PRINTF(fmt, args) __attribute__((format(printf, fmt, args)))

/* Highest physical address + 1 the guest can touch: 4 GiB (paging off, or 4 GiB identity map). */
#define RT_ADDR_LIMIT 0x100000000ULL

/* True if [addr, addr + len) lies below RT_ADDR_LIMIT, so it can be turned into a pointer. */
static inline bool rt_reachable(uint64_t addr, uint64_t len)
{
    return addr < RT_ADDR_LIMIT && len <= RT_ADDR_LIMIT - addr;
}

/* A physical address as a pointer. Only call after rt_reachable(). */
static inline void *rt_phys(uint64_t addr)
{
    return (void *)(uintptr_t)addr;
}

/* ---- Port I/O, MMIO and CPU helpers (inline asm, no emulator-unfriendly instructions) -------- */

static inline void outb(uint16_t port, uint8_t v) { __asm__ volatile("outb %0, %1" : : "a"(v), "Nd"(port)); }
static inline void outw(uint16_t port, uint16_t v) { __asm__ volatile("outw %0, %1" : : "a"(v), "Nd"(port)); }
static inline void outl(uint16_t port, uint32_t v) { __asm__ volatile("outl %0, %1" : : "a"(v), "Nd"(port)); }

static inline uint8_t inb(uint16_t port)
{
    uint8_t v;
    __asm__ volatile("inb %1, %0" : "=a"(v) : "Nd"(port));
    return v;
}

static inline uint16_t inw(uint16_t port)
{
    uint16_t v;
    __asm__ volatile("inw %1, %0" : "=a"(v) : "Nd"(port));
    return v;
}

static inline uint32_t inl(uint16_t port)
{
    uint32_t v;
    __asm__ volatile("inl %1, %0" : "=a"(v) : "Nd"(port));
    return v;
}

/* MMIO: one plain `mov` per access, so KVM's instruction emulator always understands it. */
static inline uint32_t mmio_read32(uint64_t addr)
{
    uint32_t v;
    __asm__ volatile("movl %1, %0" : "=r"(v) : "m"(*(volatile uint32_t *)rt_phys(addr)) : "memory");
    return v;
}

static inline void mmio_write32(uint64_t addr, uint32_t v)
{
    __asm__ volatile("movl %1, %0" : "=m"(*(volatile uint32_t *)rt_phys(addr)) : "r"(v) : "memory");
}

static inline uint16_t mmio_read16(uint64_t addr)
{
    uint16_t v;
    __asm__ volatile("movw %1, %0" : "=r"(v) : "m"(*(volatile uint16_t *)rt_phys(addr)) : "memory");
    return v;
}

static inline void mmio_write16(uint64_t addr, uint16_t v)
{
    __asm__ volatile("movw %1, %0" : "=m"(*(volatile uint16_t *)rt_phys(addr)) : "r"(v) : "memory");
}

static inline uint8_t mmio_read8(uint64_t addr)
{
    uint8_t v;
    __asm__ volatile("movb %1, %0" : "=q"(v) : "m"(*(volatile uint8_t *)rt_phys(addr)) : "memory");
    return v;
}

static inline void mmio_write8(uint64_t addr, uint8_t v)
{
    __asm__ volatile("movb %1, %0" : "=m"(*(volatile uint8_t *)rt_phys(addr)) : "q"(v) : "memory");
}

static inline void cpu_pause(void) { __asm__ volatile("pause" ::: "memory"); }
static inline void cpu_cli(void) { __asm__ volatile("cli" ::: "memory"); }

static inline uint64_t cpu_rdtsc(void)
{
    uint32_t lo, hi;
    __asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi));
    return ((uint64_t)hi << 32) | lo;
}

static inline void cpu_cpuid(uint32_t leaf, uint32_t sub, uint32_t r[4])
{
    __asm__ volatile("cpuid" : "=a"(r[0]), "=b"(r[1]), "=c"(r[2]), "=d"(r[3]) : "a"(leaf), "c"(sub));
}

/* cli; hlt forever. */
NORETURN void cpu_halt_forever(void);

/* Busy-wait for about `us` microseconds (TSC based; see cpu.c for the frequency used). */
void rt_delay_us(uint64_t us);
/* The TSC rate rt_delay_us assumes (CPUID leaf 0x16, else 3000 MHz): for deadlines. */
uint64_t rt_tsc_mhz(void);

/* ---- Serial console (COM1) and formatted output ---------------------------------------------- */

void serial_init(void);
void serial_putc(char c);
void serial_write(const char *s, size_t len);

/*
 * printf subset: %s %c %d %u %x %p %%, the length modifiers l (long), ll (64-bit) and z (size_t),
 * a '0' flag and a field width. Lines end with a bare '\n' (no '\r').
 */
void rt_printf(const char *fmt, ...) PRINTF(1, 2);
void rt_vprintf(const char *fmt, va_list ap);

/* Prints `len` bytes at `p` as text if every byte is printable ASCII, else as "hex:0011...". */
void rt_print_bytes(const uint8_t *p, size_t len);

/* n / d and n % d without libgcc (32-bit code cannot use the compiler's 64-bit division). */
uint64_t rt_udivmod64(uint64_t n, uint64_t d, uint64_t *rem);

/* ---- Strings and the command line ------------------------------------------------------------ */

void *memcpy(void *dst, const void *src, size_t n);
void *memset(void *dst, int c, size_t n);
int memcmp(const void *a, const void *b, size_t n);
size_t strlen(const char *s);
size_t rt_strnlen(const char *s, size_t max);
int strcmp(const char *a, const char *b);
bool rt_starts_with(const char *s, const char *prefix);

/* Parses a decimal or 0x-prefixed hexadecimal number that makes up all of `s`. */
bool rt_parse_u64(const char *s, uint64_t *out);

/*
 * Looks up the first `key=value` among the space-separated words of `cmdline`; copies value into
 * out[0..outlen) NUL-terminated (truncated if needed). Returns false if the key is absent.
 */
bool rt_cmdline_get(const char *cmdline, const char *key, char *out, size_t outlen);

/* ---- Boot information, the same for every boot protocol -------------------------------------- */

#define RT_MAX_MEMMAP 64
#define RT_MAX_MODULES 8
#define RT_CMDLINE_MAX 1024

struct rt_mem_region {
    uint64_t addr;
    uint64_t size;
    uint32_t type; /* 1 = RAM, 2 = reserved, 3 = ACPI reclaimable, 4 = ACPI NVS, ... */
};

struct rt_module {
    uint64_t addr;
    uint64_t size;
};

/*
 * What the boot protocol told us, copied out of the boot structures (so later code may reuse the
 * low memory they were in). Filled by pvh.c or linux64.c before guest_main() runs.
 */
struct rt_boot {
    const char *protocol;     /* "pvh" or "linux64" */
    uint64_t info_addr;       /* hvm_start_info or zero page */
    uint32_t magic;           /* start_info magic, or the zero page's setup header magic */
    uint32_t version;         /* start_info version, or the setup header's protocol version */
    uint32_t nr_memmap;       /* entries copied into memmap[] */
    uint32_t memmap_total;    /* entries the boot protocol reported */
    struct rt_mem_region memmap[RT_MAX_MEMMAP];
    uint32_t nr_modules;      /* entries copied into modules[] */
    uint32_t modules_total;   /* modules the boot protocol reported */
    struct rt_module modules[RT_MAX_MODULES];
    bool has_cmdline;
    bool cmdline_truncated;
    char cmdline[RT_CMDLINE_MAX];
    uint64_t rsdp;            /* RSDP address from the boot protocol, 0 if none */
};

/* The guest's own code: called once the boot information is parsed. */
NORETURN void guest_main(const struct rt_boot *boot);

/* Sum of the sizes of the RAM (type 1) regions. */
uint64_t boot_ram_bytes(const struct rt_boot *boot);

/* True if [addr, addr + len) lies inside one RAM (type 1) region. */
bool boot_is_ram(const struct rt_boot *boot, uint64_t addr, uint64_t len);

/* Prints "<label>: N entries" and "<label>[i]: addr=0x.. size=0x.. type=N". */
void boot_print_memmap(const struct rt_boot *boot, const char *label);

/* Prints "cmdline: <text>" (non-printable bytes as '?', " [truncated]" if cut). */
void boot_print_cmdline(const struct rt_boot *boot);
/* Copies the command line at guest-physical `addr` into boot->cmdline (boot protocols use it). */
void boot_copy_cmdline(struct rt_boot *boot, uint64_t addr);

/* Prints "addr=0x.. size=0x.. head=<first 16 bytes>" for a module, without a newline. */
void boot_print_module(const struct rt_module *m);

/* ---- ACPI ------------------------------------------------------------------------------------ */

#define ACPI_MAX_CPUS 64

/* An ACPI generic address structure, reduced to what we use. */
struct acpi_gas {
    uint8_t space; /* 0 = system memory, 1 = system I/O */
    uint8_t width; /* register bit width */
    uint64_t addr; /* 0 if absent */
};

struct acpi_info {
    bool ok;                    /* an RSDP with a valid checksum was found */
    uint64_t rsdp;
    uint8_t rsdp_revision;
    uint64_t root;              /* XSDT (revision >= 2) or RSDT */
    bool root_is_xsdt;
    uint32_t tables;            /* tables listed in the root table */
    uint32_t bad_tables;        /* tables with a bad signature, length or checksum */
    /* FADT */
    bool have_fadt;
    uint32_t fadt_flags;
    uint32_t pm1a_cnt;          /* PM1a control block port, 0 if none */
    uint32_t pm1b_cnt;
    uint32_t pm_tmr;            /* PM timer port, 0 if none */
    uint16_t sci;
    struct acpi_gas reset_reg;
    uint8_t reset_value;
    struct acpi_gas sleep_ctl;  /* hardware-reduced ACPI sleep control register */
    uint64_t dsdt;
    /* DSDT _S5 */
    bool have_s5;
    uint8_t s5_typ;             /* SLP_TYPa of \_S5 */
    /* MADT */
    bool have_madt;
    uint64_t lapic_addr;
    uint32_t cpus;              /* enabled local APIC / x2APIC entries */
    uint32_t apic_ids[ACPI_MAX_CPUS]; /* the first ACPI_MAX_CPUS of them */
    uint32_t ioapics;
    uint64_t ioapic_addr;       /* the first IOAPIC */
    /* MCFG */
    bool have_mcfg;
    /* WAET (Windows ACPI Emulated devices Table): its Emulated Device Flags. */
    bool have_waet;
    uint32_t waet_flags;
    uint64_t ecam_base;
    uint16_t ecam_segment;
    uint8_t ecam_bus_start, ecam_bus_end;
};

/* FADT flag: hardware-reduced ACPI (no PM1 blocks; use the sleep control register). */
#define ACPI_FADT_HW_REDUCED (1u << 20)

/*
 * Finds the RSDP (at `rsdp_hint` if non-zero, else by scanning 0xE0000-0xFFFFF), verifies every
 * table's signature, length and checksum, and collects what the other code needs. When `verbose`
 * it prints one "acpi: ..." line per fact (see README.md). Returns info->ok.
 */
bool acpi_scan(struct acpi_info *info, uint64_t rsdp_hint, bool verbose);

/* The SLP_TYP value for S5: from the DSDT if found there, else the layout's value. */
uint8_t acpi_s5_typ(const struct acpi_info *info);

/* ---- Local APIC ------------------------------------------------------------------------------ */

void lapic_set_base(uint64_t base);
uint32_t lapic_id(void);
void lapic_enable(void);
/* Sends INIT then two STARTUP IPIs with `vector` (start address vector << 12) to `apic_id`. */
bool lapic_init_sipi(uint32_t apic_id, uint8_t vector);

/* ---- SMP (32-bit runtime only) --------------------------------------------------------------- */

/* Physical page the AP real-mode trampoline is copied to (a SIPI vector is its page number). */
#define SMP_TRAMPOLINE_ADDR RT_AP_TRAMPOLINE_ADDR /* build.rs chooses it, checked against the layout */

/*
 * Wakes every enabled AP listed in the MADT with INIT-SIPI-SIPI; each AP increments a counter
 * and halts. Waits up to about a second and prints "smp: ..." lines. Returns the APs counted.
 */
uint32_t smp_boot_aps(const struct acpi_info *acpi, const struct rt_boot *boot);

/* ---- Control registers ----------------------------------------------------------------------- */

/* Prints "cpu: mode=32|64 cr0=0x.. cr4=0x.. efer=0x..". */
void cpu_print_state(void);

/* ---- Actions: how a guest ends ----------------------------------------------------------------- */

/*
 * Prints "action: <spec>" and "done", then performs `spec`:
 *   exit:N    write N (32-bit) to the debug-exit port
 *   reset     i8042 reset pulse (0xFE to port 0x64)
 *   poweroff  ACPI S5 (PM1a control block, or the sleep control register if hardware-reduced)
 *   cf9       0x06 to the reset control register 0xCF9
 *   fault     triple fault (zero-limit IDT, then ud2)
 *   hang      cli; hlt forever
 * If the action does not end the VM within about a second, it prints "error: action ... did not
 * end the VM" and writes RT_EXIT_FAILURE to the debug-exit port (then hangs).
 */
NORETURN void rt_action(const char *spec, const struct acpi_info *acpi);

/* Runs the action named by `action=` on the command line (default "exit:0"). */
NORETURN void rt_action_from_cmdline(const struct rt_boot *boot, const struct acpi_info *acpi);

/* Prints "error: <msg>" and ends the VM through the debug-exit port with RT_EXIT_FAILURE. */
NORETURN void rt_fail(const char *msg);

/* Debug-exit value for a guest-detected failure: the VMM exits with status (0x7f << 1) | 1 = 255. */
#define RT_EXIT_FAILURE 0x7f

/* ---- PCI configuration space (pci.c) ----------------------------------------------------------- */

/* A function's bus/device/function number as one 16-bit value. */
#define PCI_BDF(bus, dev, fn) ((uint16_t)(((bus) << 8) | ((dev) << 3) | (fn)))
#define PCI_BDF_BUS(bdf) ((bdf) >> 8)
#define PCI_BDF_DEV(bdf) (((bdf) >> 3) & 0x1f)
#define PCI_BDF_FN(bdf) ((bdf) & 7)

#define PCI_CMD_IO 0x1
#define PCI_CMD_MEMORY 0x2
#define PCI_CMD_BUS_MASTER 0x4

/* The two configuration mechanisms: type 1 (ports 0xCF8/0xCFC, offsets 0..0xFF) and ECAM. */
enum pci_mech { PCI_CF8, PCI_ECAM };

/* ECAM base (default: the layout's); pass acpi_info.ecam_base. 0 keeps the current one. */
void pci_set_ecam_base(uint64_t base);
uint64_t pci_ecam_address(uint16_t bdf, uint16_t offset);
/* The CONFIG_ADDRESS value for a dword at `offset` (enable bit set, offset & 0xFC). */
uint32_t pci_cf8_address(uint16_t bdf, uint16_t offset);

/* `size` is 1, 2 or 4 (anything else: 4); reads zero-extend. Type-1 offsets above 0xFF read all
 * ones / drop the write. */
uint32_t pci_cf8_read(uint16_t bdf, uint16_t offset, unsigned size);
void pci_cf8_write(uint16_t bdf, uint16_t offset, unsigned size, uint32_t v);
uint32_t pci_ecam_read(uint16_t bdf, uint16_t offset, unsigned size);
void pci_ecam_write(uint16_t bdf, uint16_t offset, unsigned size, uint32_t v);
uint32_t pci_read(enum pci_mech mech, uint16_t bdf, uint16_t offset, unsigned size);
void pci_write(enum pci_mech mech, uint16_t bdf, uint16_t offset, unsigned size, uint32_t v);

/* Shorthands through ECAM. */
uint32_t pci_read32(uint16_t bdf, uint16_t offset);
uint16_t pci_read16(uint16_t bdf, uint16_t offset);
uint8_t pci_read8(uint16_t bdf, uint16_t offset);
void pci_write32(uint16_t bdf, uint16_t offset, uint32_t v);
void pci_write16(uint16_t bdf, uint16_t offset, uint16_t v);
void pci_write8(uint16_t bdf, uint16_t offset, uint8_t v);

/* Scans all 256 functions of bus 0 for vendor:device (ECAM); the first match in *bdf. */
bool pci_find_device(uint16_t vendor, uint16_t device, uint16_t *bdf);
/* Config offset of capability `id` in the standard list, 0 if absent. */
uint16_t pci_find_cap(enum pci_mech mech, uint16_t bdf, uint8_t id);
/* Config offset of extended capability `id` (ECAM, list at 0x100), 0 if absent. */
uint16_t pci_find_ext_cap(uint16_t bdf, uint16_t id);

#define PCI_ROM_BAR 6 /* BAR index that names the expansion ROM */

enum pci_bar_kind { PCI_BAR_NONE, PCI_BAR_IO, PCI_BAR_MEM32, PCI_BAR_MEM64, PCI_BAR_ROM };

struct pci_bar {
    uint8_t index;      /* 0..5, or PCI_ROM_BAR */
    uint8_t kind;       /* enum pci_bar_kind */
    bool prefetchable;
    bool enabled;       /* ROM enable bit */
    uint64_t addr;      /* address programmed before sizing */
    uint64_t size;      /* 0 if not implemented */
};

/*
 * Sizes BAR `index` (0..5 or PCI_ROM_BAR) the standard way: I/O and memory decoding off, write
 * all ones (the address bits only, for the ROM), read the mask, write the original back, restore
 * the command register. Returns the number of BAR registers it occupies (2 for a 64-bit BAR, so
 * the caller skips the next index), 0 for an index out of range.
 */
unsigned pci_bar_size(uint16_t bdf, unsigned index, struct pci_bar *bar);
const char *pci_bar_kind_name(enum pci_bar_kind kind);

/* ---- Interrupts without iret (idt.c, idt_stubs.S; 32-bit runtime only) ------------------------- */

/* idt_call's result when body returned before any interrupt arrived. */
#define IDT_NO_INTERRUPT (-1)

struct idt_event {
    uint32_t vector;
    uint32_t error_code; /* CPU error code of an exception, else 0 */
    uint32_t eip;        /* where the CPU was when it arrived */
};

/* Loads a 256-gate IDT; handlers EOI LAPIC vectors (32..254) at lapic_base (0: the layout's). */
void idt_init(uint64_t lapic_base);
/*
 * Calls body(arg) with interrupts enabled. Returns the vector of the first interrupt or exception
 * that arrives meanwhile (body is abandoned at that point: handlers never iret), or
 * IDT_NO_INTERRUPT if body returns first. Interrupts are disabled on return. Does not nest.
 */
int idt_call(void (*body)(void *), void *arg);
/* idt_call with a body that waits `us` microseconds. */
int idt_wait_us(uint64_t us);
/* Interrupts/exceptions seen so far: for one vector, in total, and the last one. */
uint32_t idt_count(uint8_t vector);
uint32_t idt_total(void);
void idt_last(struct idt_event *e);

#endif /* RT_H */
