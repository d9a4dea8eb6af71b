/* pvh_entry.S (32-bit runtime) - PVH entry: 32-bit protected mode, paging off, %ebx = physical
 * address of struct hvm_start_info. Loads our own GDT (the PVH ABI promises nothing about the
 * loader's), zeroes .bss, sets up a stack and calls rt_pvh_entry(start_info). */

#include "gdt.h"

#define STACK_SIZE 0x4000

    .code32
    .section .text.entry, "ax"
    .globl pvh_start
pvh_start:
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
    /* Loaders need not zero what the ELF file does not contain. %ebx survives. */
    movl $__bss_start, %edi
    movl $__bss_end, %ecx
    subl %edi, %ecx
    xorl %eax, %eax
    rep stosb
    movl $rt_stack_top, %esp
    pushl %ebx
    call rt_pvh_entry
2:  cli
    hlt
    jmp 2b

    /* Flat 4 GiB segments (gdt.h). The APs load it too (ap_trampoline.S). */
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
    .space STACK_SIZE
rt_stack_top:
