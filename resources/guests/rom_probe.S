/*
 * rom_probe - a stand-in for UEFI firmware, booted with `vfiovm --firmware rom_probe.fd`: a
 * 1,966,080-byte image (the size of Debian's 2M OVMF_CODE.fd, so vfiovm maps it at 0xFFE20000
 * with the variable store flash at 0xFFE00000) whose reset vector at 0xFFFFFFF0 starts 16-bit
 * code in the image's last 64 KiB. It checks, from the first instruction on, what OVMF's reset
 * vector and PEI rely on, prints one `rom: ...` line per fact (hex values as 0x + 8 digits) and
 * powers off the way OVMF's ResetSystem does (PM1a_CNT, SLP_TYP 0). Nothing here needs RAM
 * contents: the stack is at 0x7000.
 *
 * The checks: real mode at reset (CR0, the CPU signature in EDX), MTRRdefType 0, CPUID
 * 0x8000001F zeroed, the image's own bytes read-only, the CFI flash probe OVMF makes
 * (QemuFlashDetected) and a byte programmed into it (through a flat 4 GiB data segment: "unreal
 * mode", as firmware reaches 0xFFE00000 before it has a GDT of its own), the host bridge and
 * the LPC bridge (PMBASE, ACPI_CNTL) through 0xCF8, PCIEXBAR written and read back, the ACPI PM
 * timer at PMBASE + 8, fw_cfg's signature and CPU count, and with two vCPUs or more that vCPU 1
 * waits for INIT-SIPI-SIPI (it runs a copy of ap_code at 0x8000 and sets a flag).
 *
 * Reboot: the first boot (the flash's counter byte at 0x200 erased, 0xff) leaves a mark in RAM,
 * programs the counter to 0xfe and resets through 0xCF9; with `--on-reset reboot` (the default
 * with --firmware) the VM comes back at the reset vector, where the second boot must find RAM
 * cleared (no mark), the host bridge's PCIEXBAR at its reset value, the counter kept, the AP
 * waiting for INIT-SIPI-SIPI again, and then powers off.
 */
#include "layout.h"

#define ROM_SIZE 0x1e0000
#define VARS_BASE 0xffe00000
#define FLASH_PROBE_OFFSET 0x100
#define APIC_BASE 0xfee00000
#define AP_PAGE 0x08                    /* the AP starts at 0x8000, CS 0x0800 */
#define AP_FLAG 0x9000
#define RAM_MARK 0x9008                 /* left by the first boot; a reset clears RAM */
#define FLASH_COUNTER_OFFSET 0x200      /* the boot counter in the variable store */

    .code16
    .text
    .org ROM_SIZE - 0x10000
seg_start:                      /* linear 0xFFFF0000, CS base at reset */

start:
    cli
    movl %edx, %ebp             /* EDX at reset: the CPU signature */
    xorw %ax, %ax
    movw %ax, %ss
    movw $0x7000, %sp

    movw $(s_hello - seg_start), %si
    call puts

    /* RAM is cleared at a reset: the mark the first boot leaves is not there. */
    movw $(s_mark - seg_start), %si
    call puts
    movl RAM_MARK, %eax
    call hex_nl

    movw $(s_cr0 - seg_start), %si
    call puts
    movl %cr0, %eax
    call hex_nl

    movw $(s_sig - seg_start), %si
    call puts
    movl %ebp, %eax
    call hex_nl

    /* MTRRdefType (OVMF's MemDetect asserts it is 0). */
    movw $(s_mtrr - seg_start), %si
    call puts
    movl $0x2ff, %ecx
    rdmsr
    call hex_nl

    /* CPUID 0x8000001F EAX, 0 when the leaf is absent. */
    movw $(s_sev - seg_start), %si
    call puts
    movl $0x80000000, %eax
    cpuid
    cmpl $0x8000001f, %eax
    jb 1f
    movl $0x8000001f, %eax
    cpuid
    jmp 2f
1:  xorl %eax, %eax
2:  call hex_nl

    /* The image is read-only: a write to it changes nothing. */
    movw $(s_rom - seg_start), %si
    call puts
    movb %cs:(rom_byte - seg_start), %al
    movb $0xaa, %cs:(rom_byte - seg_start)
    movb %cs:(rom_byte - seg_start), %ah
    movzwl %ax, %eax
    call hex_nl

    /* A flat data segment, then back to real mode with its 4 GiB limit kept. */
    lgdtl %cs:(gdtr - seg_start)
    movl %cr0, %eax
    orb $1, %al
    movl %eax, %cr0
    movw $8, %bx
    movw %bx, %ds
    andb $0xfe, %al
    movl %eax, %cr0

    /* OVMF's flash probe: the array, 0x50 (clear status) reads the array, 0x70 (read status)
     * reads 0x00; then a program (0x10, byte) reads status 0x80, and read-array shows it. */
    movl $VARS_BASE, %ebx
    movw $(s_fl_orig - seg_start), %si
    call puts
    movzbl (%ebx), %eax
    call hex_nl
    movb $0x50, (%ebx)
    movw $(s_fl_clear - seg_start), %si
    call puts
    movzbl (%ebx), %eax
    call hex_nl
    movb $0x70, (%ebx)
    movw $(s_fl_status - seg_start), %si
    call puts
    movzbl (%ebx), %eax
    call hex_nl
    movb $0xff, (%ebx)
    movb $0x10, FLASH_PROBE_OFFSET(%ebx)
    movb $0x5a, FLASH_PROBE_OFFSET(%ebx)
    movw $(s_fl_prog - seg_start), %si
    call puts
    movzbl FLASH_PROBE_OFFSET(%ebx), %eax
    call hex_nl
    movb $0xff, (%ebx)
    movw $(s_fl_read - seg_start), %si
    call puts
    movzbl FLASH_PROBE_OFFSET(%ebx), %eax
    call hex_nl

    /* The boot counter in the flash: 0xff on the first boot, 0xfe after the reset. */
    movw $(s_counter - seg_start), %si
    call puts
    movzbl FLASH_COUNTER_OFFSET(%ebx), %eax
    call hex_nl

    /* PCI: 00:00.0 and 00:1f.0 identity, PMBASE, ACPI_CNTL, PCIEXBAR written as OVMF does. */
    movw $(s_host - seg_start), %si
    movl $0x80000000, %eax
    call pci_line
    movw $(s_lpc - seg_start), %si
    movl $0x8000f800, %eax
    call pci_line
    movw $(s_pmbase - seg_start), %si
    movl $0x8000f840, %eax
    call pci_line
    movw $(s_acpi_cntl - seg_start), %si
    movl $0x8000f844, %eax
    call pci_line
    movw $(s_pciexbar0 - seg_start), %si
    movl $0x80000060, %eax
    call pci_line
    movl $0x80000064, %eax
    xorl %ecx, %ecx
    call pci_write
    movl $0x80000060, %eax
    movl $0xb0000001, %ecx
    call pci_write
    movw $(s_pciexbar - seg_start), %si
    movl $0x80000060, %eax
    call pci_line

    /* The ACPI PM timer advances. */
    movw $(s_pmtmr - seg_start), %si
    call puts
    movw $LAYOUT_PORTS_PM_TMR, %dx
    inl %dx, %eax
    movl %eax, %edi
    movl $100000, %ecx
3:  inl %dx, %eax
    cmpl %eax, %edi
    jne 4f
    decl %ecx
    jnz 3b
4:  subl %edi, %eax
    setnz %al
    movzbl %al, %eax
    call hex_nl

    /* OVMF's sequence when ACPI_EN is clear, with another base: the PM block follows PMBASE
     * (its timer answers at 0xB008, 0x608 reads all ones), then back to 0x600. */
    movl $0x8000f844, %eax
    xorl %ecx, %ecx
    call pci_write
    movl $0x8000f840, %eax
    movl $0xb000, %ecx
    call pci_write
    movl $0x8000f844, %eax
    movl $0x80, %ecx
    call pci_write
    movw $(s_moved - seg_start), %si
    call puts
    movw $0xb008, %dx
    inl %dx, %eax
    movl %eax, %edi
    movl $100000, %ecx
11: inl %dx, %eax
    cmpl %eax, %edi
    jne 12f
    decl %ecx
    jnz 11b
12: subl %edi, %eax
    setnz %al
    movzbl %al, %eax
    call hex_nl
    movw $(s_old_tmr - seg_start), %si
    call puts
    movw $LAYOUT_PORTS_PM_TMR, %dx
    inl %dx, %eax
    call hex_nl
    movl $0x8000f840, %eax
    movl $0x600, %ecx
    call pci_write

    /* fw_cfg: key 0, four bytes. */
    movw $(s_fwcfg - seg_start), %si
    call puts
    movw $0x510, %dx
    xorw %ax, %ax
    outw %ax, %dx
    movw $0x511, %dx
    movl $4, %ecx
5:  inb %dx, %al
    rorl $8, %eax
    decl %ecx
    jnz 5b
    call hex_nl

    /* The CPU count from fw_cfg (key 5), and with two or more, the APs wait for INIT-SIPI-SIPI:
     * wake vCPU 1 at AP_PAGE, where a copy of ap_code sets a flag. */
    movw $(s_cpus - seg_start), %si
    call puts
    movw $0x510, %dx
    movw $5, %ax
    outw %ax, %dx
    movw $0x511, %dx
    inb %dx, %al
    movzbl %al, %eax
    movl %eax, %ebp
    call hex_nl
    cmpl $2, %ebp
    jb 8f
    movw $(ap_code - seg_start), %si
    movl $(AP_PAGE << 12), %edi
    movw $(ap_code_end - ap_code), %cx
7:  movb %cs:(%si), %al
    movb %al, (%edi)
    incw %si
    incl %edi
    decw %cx
    jnz 7b
    movl $APIC_BASE, %ebx
    movl $0x1ff, 0xf0(%ebx)             /* SVR: software-enable the LAPIC */
    movl $(1 << 24), 0x310(%ebx)        /* ICR high: APIC ID 1 */
    movl $0x4500, 0x300(%ebx)           /* INIT */
    movl $(0x4600 | AP_PAGE), 0x300(%ebx) /* SIPI */
    movl $(0x4600 | AP_PAGE), 0x300(%ebx) /* SIPI again, as the MP protocol says */
    movl $AP_FLAG, %ebx
    movl $1000000, %ecx
9:  cmpb $1, (%ebx)
    je 10f
    decl %ecx
    jnz 9b
10: movw $(s_ap - seg_start), %si
    call puts
    movzbl (%ebx), %eax
    call hex_nl
8:
    /* The first boot (counter 0xff) leaves a mark in RAM, programs the counter and resets
     * through 0xCF9 as OVMF's ResetCold does; the boot after it powers off. */
    movl $0xfeedface, %eax
    movl %eax, RAM_MARK
    movl $VARS_BASE, %ebx
    cmpb $0xff, FLASH_COUNTER_OFFSET(%ebx)
    jne 13f
    movb $0x10, FLASH_COUNTER_OFFSET(%ebx)
    movb $0xfe, FLASH_COUNTER_OFFSET(%ebx)
    movb $0xff, (%ebx)
    movw $(s_reset - seg_start), %si
    call puts
    movw $0xcf9, %dx
    movb $0x06, %al
    outb %al, %dx
14: hlt
    jmp 14b
13:
    /* Power off as OVMF's ResetShutdown: SLP_TYP 0 with SLP_EN. */
    movw $(s_off - seg_start), %si
    call puts
    movw $LAYOUT_PORTS_PM1A_CNT, %dx
    movw $0x2000, %ax
    outw %ax, %dx
6:  hlt
    jmp 6b

/* Prints the NUL-terminated string at CS:SI. */
puts:
    pushw %dx
    movw $LAYOUT_PORTS_COM1, %dx
1:  movb %cs:(%si), %al
    testb %al, %al
    jz 2f
    outb %al, %dx
    incw %si
    jmp 1b
2:  popw %dx
    ret

/* Prints EAX as 0x + 8 hex digits and a newline. */
hex_nl:
    pushl %ecx
    pushl %edx
    movl %eax, %ecx
    movw $LAYOUT_PORTS_COM1, %dx
    movb $'0', %al
    outb %al, %dx
    movb $'x', %al
    outb %al, %dx
    movw $8, %si
1:  roll $4, %ecx
    movb %cl, %al
    andb $0xf, %al
    addb $'0', %al
    cmpb $'9', %al
    jbe 2f
    addb $('a' - '0' - 10), %al
2:  outb %al, %dx
    decw %si
    jnz 1b
    movb $'\n', %al
    outb %al, %dx
    popl %edx
    popl %ecx
    ret

/* Prints the string at SI, then the config dword at address EAX (0xCF8 form). */
pci_line:
    pushl %eax
    call puts
    popl %eax
    movw $0xcf8, %dx
    outl %eax, %dx
    movw $0xcfc, %dx
    inl %dx, %eax
    jmp hex_nl

/* Writes ECX to the config dword at address EAX. */
pci_write:
    movw $0xcf8, %dx
    outl %eax, %dx
    movw $0xcfc, %dx
    movl %ecx, %eax
    outl %eax, %dx
    ret

s_hello:     .asciz "rom: reset vector reached\n"
s_cr0:       .asciz "rom: cr0="
s_sig:       .asciz "rom: edx="
s_mtrr:      .asciz "rom: mtrr_def_type="
s_sev:       .asciz "rom: cpuid_8000001f_eax="
s_rom:       .asciz "rom: image byte before/after a write="
s_fl_orig:   .asciz "rom: flash array="
s_fl_clear:  .asciz "rom: flash after 0x50="
s_fl_status: .asciz "rom: flash after 0x70="
s_fl_prog:   .asciz "rom: flash status after program="
s_fl_read:   .asciz "rom: flash programmed byte="
s_host:      .asciz "rom: 00:00.0 id="
s_lpc:       .asciz "rom: 00:1f.0 id="
s_pmbase:    .asciz "rom: pmbase="
s_acpi_cntl: .asciz "rom: acpi_cntl="
s_pciexbar:  .asciz "rom: pciexbar="
s_pmtmr:     .asciz "rom: pm timer advances="
s_moved:     .asciz "rom: pm timer at 0xb008 advances="
s_old_tmr:   .asciz "rom: 0x608 after the move="
s_fwcfg:     .asciz "rom: fw_cfg signature="
s_cpus:      .asciz "rom: fw_cfg cpus="
s_ap:        .asciz "rom: ap started="
s_off:       .asciz "rom: powering off with SLP_TYP 0\n"
s_mark:      .asciz "rom: ram mark="
s_counter:   .asciz "rom: boot counter="
s_pciexbar0: .asciz "rom: pciexbar at reset="
s_reset:     .asciz "rom: resetting through 0xcf9\n"

rom_byte:    .byte 0x3c

/* What the AP runs from AP_PAGE in real mode: set the flag, then halt for good. Position
 * independent (copied to RAM). */
ap_code:
    xorw %ax, %ax
    movw %ax, %ds
    movb $1, AP_FLAG
1:  cli
    hlt
    jmp 1b
ap_code_end:

    .p2align 3
gdt:
    .quad 0
    .quad 0x00cf93000000ffff    /* flat 4 GiB data, read/write */
gdtr:
    .word gdtr - gdt - 1
    .long 0xffff0000 + (gdt - seg_start)

    .org ROM_SIZE - 16
reset_vector:                   /* linear 0xFFFFFFF0 */
    jmp start
    .org ROM_SIZE
