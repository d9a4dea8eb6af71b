/* ap_trampoline.S (32-bit runtime) - where an application processor starts.
 *
 * rt_ap_trampoline_start..end is copied to a page below 1 MiB (smp.c) and entered in real mode at
 * CS = page >> 4, IP = 0. It must therefore only use offsets relative to its own start. It loads
 * the BSP's GDT (rt_gdt, above 1 MiB: lgdtl takes a 32-bit base), enables protected mode and far
 * jumps to rt_ap_entry32 in the main image. */

#include "gdt.h"

#define CR0_PE 1

    .section .rodata.trampoline, "a"
    .code16
    .globl rt_ap_trampoline_start, rt_ap_trampoline_end
rt_ap_trampoline_start:
    cli
    cld
    movw %cs, %ax
    movw %ax, %ds
    lgdtl ap_gdtr - rt_ap_trampoline_start
    movl %cr0, %eax
    orl $CR0_PE, %eax
    movl %eax, %cr0
    ljmpl $SEL_CODE32, $rt_ap_entry32
    .p2align 2
ap_gdtr:
    .word GDT_LIMIT
    .long rt_gdt
rt_ap_trampoline_end:

    .text
    .code32
rt_ap_entry32:
    movl $SEL_DATA, %eax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %ss
    lock incl rt_aps_online
1:  cli
    hlt
    jmp 1b
