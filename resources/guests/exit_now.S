/* exit_now - the smallest PVH guest: writes 0 to the debug-exit port at its first instruction, so
 * the VMM exits with status (0 << 1) | 1 = 1. Boot-time benchmark target; no runtime, no stack. */
#include "layout.h"

    .code32
    .section .text.entry, "ax"
    .globl pvh_start
pvh_start:
    xorl %eax, %eax
    outl %eax, $LAYOUT_PORTS_DEBUG_EXIT
1:  cli
    hlt
    jmp 1b
