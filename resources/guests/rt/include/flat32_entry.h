/* flat32_entry.h (32-bit runtime, assembler) - what the 32-bit entries (pvh_entry.S,
 * multiboot_entry.S) share: FLAT32_ENTER loads our own GDT (no loader promises us its own),
 * reloads the segments, zeroes .bss (a loader need not zero what the ELF file does not contain)
 * and sets up the stack, leaving %ebx and %esi as they were; FLAT32_DATA defines that GDT and
 * the stack. */
#ifndef FLAT32_ENTRY_H
#define FLAT32_ENTRY_H

#include "gdt.h"

#define FLAT32_STACK_SIZE 0x4000

.macro FLAT32_ENTER
    cli
    cld
    lgdt rt_gdt_desc
    ljmp $SEL_CODE32, $1f
1:  movl $SEL_DATA, %eax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %fs
    movw %ax, %gs
    movw %ax, %ss
    movl $__bss_start, %edi
    movl $__bss_end, %ecx
    subl %edi, %ecx
    xorl %eax, %eax
    rep stosb
    movl $rt_stack_top, %esp
.endm

/* Halts for good if the C entry returns. */
.macro FLAT32_HALT
2:  cli
    hlt
    jmp 2b
.endm

/* Flat 4 GiB segments (gdt.h). The APs load it too (ap_trampoline.S). */
.macro FLAT32_DATA
    .section .data
    .p2align 3
    .globl rt_gdt
rt_gdt:
    .quad 0                     /* null */
    .quad GDT_DESC_CODE32       /* SEL_CODE32 */
    .quad GDT_DESC_DATA         /* SEL_DATA */
    .p2align 2
rt_gdt_desc:
    .word GDT_LIMIT
    .long rt_gdt

    .section .bss
    .p2align 4
    .space FLAT32_STACK_SIZE
rt_stack_top:
.endm

#endif
