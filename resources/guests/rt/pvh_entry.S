/* pvh_entry.S (32-bit runtime) - PVH entry: 32-bit protected mode, paging off, %ebx = physical
 * address of struct hvm_start_info. Loads our own GDT (the PVH ABI promises nothing about the
 * loader's), zeroes .bss, sets up a stack and calls rt_pvh_entry(start_info). */

#include "flat32_entry.h"

    .code32
    .section .text.entry, "ax"
    .globl pvh_start
pvh_start:
    FLAT32_ENTER
    pushl %ebx
    call rt_pvh_entry
    FLAT32_HALT

    FLAT32_DATA
