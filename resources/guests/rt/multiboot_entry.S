/* multiboot_entry.S (32-bit runtime) - a multiboot (v1) kernel's header and entry: 32-bit
 * protected mode, paging off, %eax = 0x2BADB002, %ebx = physical address of the multiboot
 * information. Loads our own GDT (the loader's is not promised to us), zeroes .bss, sets up a
 * stack and calls rt_multiboot_entry(magic, info). The linker script puts the header first in
 * .text, well inside the 8 KiB a loader searches. */

#include "gdt.h"

#define STACK_SIZE 0x4000
#define MB_MAGIC 0x1BADB002
#define MB_FLAGS 0x00000003 /* modules page aligned, memory information */

    .section .text.multiboot, "ax"
    .p2align 2
    .long MB_MAGIC, MB_FLAGS, -(MB_MAGIC + MB_FLAGS)

    .code32
    .section .text.entry, "ax"
    .globl mb_start
mb_start:
    cli
    cld
    movl %eax, %esi             /* the bootloader magic; rep stosb leaves %esi and %ebx */
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
    pushl %ebx
    pushl %esi
    call rt_multiboot_entry
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
