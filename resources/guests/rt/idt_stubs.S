/* idt_stubs.S (32-bit runtime) - interrupt entry stubs and idt_call(), for idt.c.
 *
 * KVM's instruction emulator on the hosts we test on cannot emulate a protected-mode `iret`, so
 * no handler here ever returns to the code it interrupted. Instead:
 *
 *   idt_call(body, arg) saves the callee-saved registers and its stack pointer (the "resume
 *   point"), enables interrupts and calls body(arg). If body returns, idt_call disables
 *   interrupts and returns IDT_NO_INTERRUPT (-1). If an interrupt or exception arrives while
 *   the resume point is armed, its stub pushes (error code, vector), rt_idt_dispatch() records
 *   it and sends the LAPIC EOI, and the stub resets %esp to the resume point, restores the
 *   registers and returns the vector from idt_call. The interrupted frame (EIP, CS, EFLAGS)
 *   is simply dropped. Interrupt gates clear IF, and nothing sets it again, so the CPU comes
 *   out of idt_call with interrupts disabled either way.
 *
 * Each stub is 16 bytes (.p2align 4; idt.c's STUB_SIZE computes the addresses): `push $0` for
 * vectors without a CPU error code, `push $vector`, `jmp idt_common`. */

    .code32
    .text

    .p2align 4
    .globl rt_idt_stubs
rt_idt_stubs:
    .set vec, 0
    .rept 256
    .p2align 4
    /* Exceptions that push an error code: #DF, #TS, #NP, #SS, #GP, #PF, #AC, #CP, #VC, #SX. */
    .if (vec == 8) || ((vec >= 10) && (vec <= 14)) || (vec == 17) || (vec == 21) || (vec == 29) || (vec == 30)
    .else
    pushl $0
    .endif
    pushl $vec
    jmp idt_common
    .set vec, vec + 1
    .endr

/* Stack on entry: vector, error code, EIP, CS, EFLAGS (no privilege change: one ring). */
idt_common:
    cld
    pushl %esp                  /* struct idt_frame * */
    call rt_idt_dispatch        /* returns the vector only if a resume point is armed */
    jmp idt_resume

/* int idt_call(void (*body)(void *), void *arg) */
    .globl idt_call
idt_call:
    pushl %ebp
    pushl %ebx
    pushl %esi
    pushl %edi
    cmpl $0, rt_idt_resume_esp
    jne 2f
    movl %esp, rt_idt_resume_esp
    movl 20(%esp), %eax         /* body */
    pushl 24(%esp)              /* arg */
    sti
    call *%eax
    cli
    addl $4, %esp
    movl $0, rt_idt_resume_esp
    movl $-1, %eax
    jmp 1f
idt_resume:                     /* %eax = vector */
    movl rt_idt_resume_esp, %esp
    movl $0, rt_idt_resume_esp
1:  popl %edi
    popl %esi
    popl %ebx
    popl %ebp
    ret
2:  call rt_idt_nested          /* does not return */
    jmp 2b
