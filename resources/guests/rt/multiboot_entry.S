/* multiboot_entry.S (32-bit runtime) - a multiboot (v1) kernel's header and entry: 32-bit
 * protected mode, paging off, %eax = 0x2BADB002, %ebx = physical address of the multiboot
 * information. Loads our own GDT (the loader's is not promised to us), zeroes .bss, sets up a
 * stack and calls rt_multiboot_entry(magic, info). The linker script puts the header first in
 * .text, well inside the 8 KiB a loader searches. */

#include "flat32_entry.h"

#define MB_MAGIC 0x1BADB002
#define MB_FLAGS 0x00000003 /* modules page aligned, memory information */

    .section .text.multiboot, "ax"
    .p2align 2
    .long MB_MAGIC, MB_FLAGS, -(MB_MAGIC + MB_FLAGS)

    .code32
    .section .text.entry, "ax"
    .globl mb_start
mb_start:
    movl %eax, %esi             /* the bootloader magic; FLAT32_ENTER leaves %esi and %ebx */
    FLAT32_ENTER
    pushl %ebx
    pushl %esi
    call rt_multiboot_entry
    FLAT32_HALT

    FLAT32_DATA
