/* Probes of a hole region. PARAM(1) picks the test, PARAM(2) is the region's base,
 * PARAM(3) its size, PARAM(4) a test-specific count.
 *  0: the 2020 proposal's selftest: read a byte at +0 and +5000 (both 0xff), write a u64
 *     at +1024 and at +8000.
 *  1: reads of 1, 2, 4 and 8 bytes at many offsets (aligned, unaligned, across pages,
 *     across the 2 MiB boundary at PARAM(4)), `rep movsb` out of the hole, and a read
 *     after a write: everything must be all ones.
 *  2: a write storm: PARAM(4) writes of u32 i at base + (i * 8) mod size, i = 0, 1, ...
 *  3: scan loop: rounds, each reading a u64 from every 4 KiB page of the region and
 *     syncing the round number; any value but all ones fails. It stops after PARAM(4)
 *     rounds, or, when PARAM(4) is 0, once the host sets the u64 at STOP_FLAG_ADDR. */
#include "runtime.inc"

#define BASE r15
#define SIZE r14

main:
    mov BASE, PARAM(2)
    mov SIZE, PARAM(3)
    mov rax, PARAM(1)
    cmp rax, 0
    je proposal_selftest
    cmp rax, 1
    je read_widths
    cmp rax, 2
    je write_storm
    cmp rax, 3
    je scan_loop
    GUEST_DONE

proposal_selftest:
    movzx eax, byte ptr [BASE]
    GUEST_ASSERT_EQ(rax, 0xff)
    movzx eax, byte ptr [BASE + 5000]
    GUEST_ASSERT_EQ(rax, 0xff)
    mov rax, 0x0102030405060708
    mov qword ptr [BASE + 1024], rax
    mov rax, 0x1112131415161718
    mov qword ptr [BASE + 8000], rax
    GUEST_DONE

/* check_at(rdi = address): 1, 2, 4 and 8-byte reads there are all ones. */
check_at:
    movzx eax, byte ptr [rdi]
    GUEST_ASSERT_EQ(rax, 0xff)
    movzx eax, word ptr [rdi]
    GUEST_ASSERT_EQ(rax, 0xffff)
    mov eax, dword ptr [rdi]
    mov rdx, 0xffffffff
    GUEST_ASSERT_EQ(rax, rdx)
    mov rax, qword ptr [rdi]
    GUEST_ASSERT_EQ(rax, -1)
    ret

read_widths:
    /* aligned and unaligned offsets near the start */
    xor rbx, rbx
1:
    lea rdi, [BASE + rbx]
    call check_at
    inc rbx
    cmp rbx, 24
    jb 1b
    /* across the first page boundary: offsets 4089..4095 */
    mov rbx, 4089
2:
    lea rdi, [BASE + rbx]
    call check_at
    inc rbx
    cmp rbx, 4096
    jb 2b
    /* across the boundary at PARAM(4) (between two slots of one run), if any */
    mov rbx, PARAM(4)
    test rbx, rbx
    jz 3f
    sub rbx, 7
    mov rcx, 8
4:
    lea rdi, [rbx]
    push rcx
    call check_at
    pop rcx
    inc rbx
    dec rcx
    jnz 4b
3:
    /* the last 8 bytes of the region */
    lea rdi, [BASE + SIZE - 8]
    call check_at
    /* rep movsb 8 KiB out of the hole (from +100) into scratch, then check it */
    lea rsi, [BASE + 100]
    mov rdi, SCRATCH_ADDR
    mov rcx, 8192
    cld
    rep movsb
    mov rdi, SCRATCH_ADDR
    mov rcx, 1024
5:
    mov rax, qword ptr [rdi]
    GUEST_ASSERT_EQ(rax, -1)
    add rdi, 8
    dec rcx
    jnz 5b
    /* a read after a write still reads all ones */
    mov qword ptr [BASE + 64], 0
    mov rax, qword ptr [BASE + 64]
    GUEST_ASSERT_EQ(rax, -1)
    GUEST_DONE

write_storm:
    mov rcx, PARAM(4)
    xor rbx, rbx
6:
    test rcx, rcx
    jz 7f
    mov rax, rbx
    shl rax, 3
    xor rdx, rdx
    div SIZE                /* rdx = (i * 8) mod size */
    mov dword ptr [BASE + rdx], ebx
    inc rbx
    dec rcx
    jmp 6b
7:
    GUEST_DONE

scan_loop:
    mov r13, PARAM(4)
    xor r12, r12            /* round */
8:
    xor rbx, rbx
9:
    mov rax, qword ptr [BASE + rbx]
    GUEST_ASSERT_EQ(rax, -1)
    add rbx, 4096
    cmp rbx, SIZE
    jb 9b
    inc r12
    GUEST_SYNC(r12)
    test r13, r13
    jz 10f
    cmp r12, r13
    jb 8b
    GUEST_DONE
10:
    cmp qword ptr [STOP_FLAG_ADDR], 0
    je 8b
    GUEST_DONE
