/* Exit-cost loop: PARAM(2) exits of the kind PARAM(1) picks, then done.
 * 0: OUT to port EXIT_LOOP_PORT   1: MMIO read of TEST_MMIO_BASE
 * 2: MMIO write to TEST_MMIO_BASE   3: IN from port EXIT_LOOP_PORT */
#include "runtime.inc"
#define EXIT_LOOP_PORT 0x510

main:
    mov rcx, PARAM(2)
    mov rbx, PARAM(1)
    mov dx, EXIT_LOOP_PORT
    mov rsi, TEST_MMIO_BASE
    test rcx, rcx
    jz finished
    cmp rbx, 1
    je mmio_read
    cmp rbx, 2
    je mmio_write
    cmp rbx, 3
    je port_in
port_out:
    out dx, eax
    dec rcx
    jnz port_out
    jmp finished
mmio_read:
    mov eax, dword ptr [rsi]
    dec rcx
    jnz mmio_read
    jmp finished
mmio_write:
    mov dword ptr [rsi], eax
    dec rcx
    jnz mmio_write
    jmp finished
port_in:
    in eax, dx
    dec rcx
    jnz port_in
finished:
    GUEST_DONE
