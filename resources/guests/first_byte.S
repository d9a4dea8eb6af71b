/* first_byte - a PVH guest that writes 'F' to COM1 at its first instruction, then 0 to the
 * debug-exit port (status 1). A harness that timestamps the first byte on the VMM's stdout
 * measures process start -> first guest instruction; the rig's QEMU comparison runs the same two
 * port writes from a reset-vector BIOS image. No runtime, no stack. */
#include "layout.h"

    .code32
    .section .text.entry, "ax"
    .globl pvh_start
pvh_start:
    movb $'F', %al
    movw $LAYOUT_PORTS_COM1, %dx
    outb %al, %dx
    xorl %eax, %eax
    outl %eax, $LAYOUT_PORTS_DEBUG_EXIT
1:  cli
    hlt
    jmp 1b
