/* Copy every present function's 4 KiB of configuration space, as read through ECAM.
 *   PARAM(1) ECAM base   PARAM(2) buses in the window
 *   PARAM(3) pages of room at RESULTS_ADDR   PARAM(4) guest address for the u32 list
 * Brute force over every function page of the window: where the vendor ID is not
 * 0xffff, the page is copied dword by dword (a config access is at most a dword) to
 * RESULTS_ADDR + 4096 * k and its bdf (bus << 8 | devfn) stored at PARAM(4) + 4 * k.
 * Functions beyond the room are counted but not copied.
 * Reports: sync(functions found), then done. */
#include "runtime.inc"

#define ECAM r15
#define WINDOW_END r14
#define ROOM r13
#define LIST r12
#define FOUND r11

main:
    mov ECAM, PARAM(1)
    mov WINDOW_END, PARAM(2)
    shl WINDOW_END, 20
    mov ROOM, PARAM(3)
    mov LIST, PARAM(4)
    xor FOUND, FOUND
    xor r10, r10                        /* r10: ECAM offset of the function page */
probe:
    movzx eax, word ptr [ECAM + r10]
    cmp eax, 0xffff
    je next
    cmp FOUND, ROOM
    jae counted
    mov rax, r10
    shr rax, 12
    mov dword ptr [LIST + 4 * FOUND], eax
    lea rsi, [ECAM + r10]
    mov rdi, FOUND
    shl rdi, 12
    add rdi, RESULTS_ADDR
    mov ecx, 1024
copy:
    mov eax, dword ptr [rsi]
    mov dword ptr [rdi], eax
    add rsi, 4
    add rdi, 4
    dec ecx
    jnz copy
counted:
    inc FOUND
next:
    add r10, 4096
    cmp r10, WINDOW_END
    jb probe
    GUEST_SYNC(FOUND)
    GUEST_DONE
