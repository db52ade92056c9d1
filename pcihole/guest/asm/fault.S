/* Misbehaving guests. PARAM(1) picks one:
 * 0: #UD (ud2)   1: #GP (non-canonical load)   2: #PF (load above the identity map)
 * 3: loop forever (counting at RESULTS_ADDR)   4: triple fault (load an empty IDT, then fault)
 * 5: assertion failure   6: jump into the address in PARAM(2) (execute from there) */
#include "runtime.inc"

main:
    mov rax, PARAM(1)
    cmp rax, 0
    je do_ud
    cmp rax, 1
    je do_gp
    cmp rax, 2
    je do_pf
    cmp rax, 3
    je do_loop
    cmp rax, 4
    je do_triple
    cmp rax, 5
    je do_assert
    cmp rax, 6
    je do_jump
    GUEST_DONE
do_ud:
    ud2
do_gp:
    mov rbx, 0x8000000000000000
    mov rax, [rbx]
    GUEST_DONE
do_pf:
    mov rbx, 0x200000000
    mov rax, [rbx]
    GUEST_DONE
do_loop:
    /* counts its rounds at RESULTS_ADDR, so the host can see it is in the loop */
    inc qword ptr [RESULTS_ADDR]
    jmp do_loop
do_triple:
    /* Needs ring 0: lidt with a zero limit, then any exception cannot be delivered. */
    lidt [empty_idt]
    ud2
do_assert:
    mov rax, 41
    GUEST_ASSERT_EQ(rax, 42)
    GUEST_DONE
do_jump:
    mov rax, PARAM(2)
    jmp rax

empty_idt:
    .word 0
    .quad 0
