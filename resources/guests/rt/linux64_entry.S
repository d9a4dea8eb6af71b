/* linux64_entry.S (64-bit runtime) - Linux 64-bit boot protocol entry: long mode, the low 4 GiB
 * identity mapped, %rsi = physical address of the zero page. Zeroes .bss, switches to our own
 * stack and calls rt_linux64_entry(zero_page). */

#define STACK_SIZE 0x4000

    .code64
    .section .text.entry, "ax"
    .globl linux64_start
linux64_start:
    cli
    cld
    /* Loaders need not zero what the ELF file does not contain. %rsi survives. */
    movl $__bss_start, %edi
    movl $__bss_end, %ecx
    subl %edi, %ecx
    xorl %eax, %eax
    rep stosb
    movq $rt_stack_top, %rsp
    movq %rsi, %rdi
    call rt_linux64_entry
1:  cli
    hlt
    jmp 1b

    .section .bss
    .p2align 4
    .space STACK_SIZE
rt_stack_top:
