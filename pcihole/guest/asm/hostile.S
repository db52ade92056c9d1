/* A hostile guest: configuration accesses no well-behaved driver would make.
 * PARAM(1) picks the behaviour, PARAM(2) is the ECAM base, PARAM(3) the window's size.
 *
 *  0: random accesses. PARAM(4) operations, PARAM(5) a non-zero seed for xorshift64,
 *     PARAM(6) the number K of pages to favour and PARAM(7 .. 7 + K - 1) their offsets in
 *     the window (present functions, say). Each operation is a read or a write of 1, 2,
 *     4 or 8 bytes at a random offset: half of them in a favoured page (when K > 0), the
 *     rest anywhere; a quarter of the offsets are in the header (0x00-0x3f), a quarter
 *     in the last 8 bytes of a page (so wide accesses cross into the next page). Each
 *     operation is logged as a 16-byte record at RESULTS_ADDR + 16 * i:
 *         u32 offset, u8 width, u8 1 if a write, u16 0, u64 value written or read.
 *     Then sync(operations), done.
 *  1: write into every hole: for each 4 KiB page whose vendor ID reads 0xffff, write the
 *     page's offset as a u64 at +0, +8 and +0xff8, then read those three back: each must
 *     read all ones (GUEST_ASSERT). sync(hole pages written), done.
 *  2: hammer one function: PARAM(4) is the function page's offset in the window, PARAM(5)
 *     a u64 pattern. For each width 1, 2, 4, 8: write the pattern (truncated to the width)
 *     at every aligned offset of the page, first to last. sync(writes made), done.
 */
#include "runtime.inc"

#define ECAM r15
#define SIZE r14
#define STATE r13
#define OUT r12

main:
    mov ECAM, PARAM(2)
    mov SIZE, PARAM(3)
    mov rax, PARAM(1)
    cmp rax, 0
    je random_ops
    cmp rax, 1
    je write_holes
    cmp rax, 2
    je hammer
    GUEST_DONE

/* next_random: rax = the next xorshift64 value of STATE (clobbers rdx). */
next_random:
    mov rax, STATE
    mov rdx, rax
    shl rdx, 13
    xor rax, rdx
    mov rdx, rax
    shr rdx, 7
    xor rax, rdx
    mov rdx, rax
    shl rdx, 17
    xor rax, rdx
    mov STATE, rax
    ret

random_ops:
    mov STATE, PARAM(5)
    mov OUT, RESULTS_ADDR
    mov rbx, PARAM(4)              /* operations left */
    test rbx, rbx
    jz random_done
random_next:
    /* rbp: the first random value picks kind, width and where */
    call next_random
    mov rbp, rax
    /* r8: page offset */
    call next_random
    mov rcx, PARAM(6)
    test rcx, rcx
    jz any_page
    test rbp, 8
    jz any_page
    xor edx, edx
    div rcx                        /* rdx = random % K */
    mov r8, qword ptr [PARAMS_ADDR + 8 * 7 + 8 * rdx]
    jmp pick_register
any_page:
    mov rcx, SIZE
    shr rcx, 12                    /* pages in the window */
    xor edx, edx
    div rcx
    mov r8, rdx
    shl r8, 12
pick_register:
    call next_random
    mov r9, rax
    shr r9, 2
    mov rcx, rax
    and rcx, 3
    cmp rcx, 0
    jne 1f
    and r9, 0x3f                   /* header */
    jmp 3f
1:
    cmp rcx, 1
    jne 2f
    and r9, 7
    add r9, 0xff8                  /* the last 8 bytes: wide accesses cross the page */
    jmp 3f
2:
    and r9, 0xfff                  /* anywhere in the page */
3:
    add r8, r9                     /* r8: offset in the window */
    /* r10: width = 1 << ((rbp >> 1) & 3) */
    mov rcx, rbp
    shr rcx, 1
    and rcx, 3
    mov r10, 1
    shl r10, cl
    /* keep the access inside the window */
    lea rax, [r8 + r10]
    cmp rax, SIZE
    jbe 4f
    mov r8, SIZE
    sub r8, r10
4:
    /* the log record: offset, width, kind */
    mov dword ptr [OUT], r8d
    mov byte ptr [OUT + 4], r10b
    mov word ptr [OUT + 6], 0
    mov rax, rbp
    and eax, 1
    mov byte ptr [OUT + 5], al
    lea r11, [ECAM + r8]           /* r11: guest address */
    test rbp, 1
    jz do_read
    /* a write of a random value, truncated to the width */
    call next_random
    cmp r10, 8
    je write8
    mov rdx, 1
    mov rcx, r10
    shl rcx, 3
    shl rdx, cl
    dec rdx
    and rax, rdx
    cmp r10, 4
    je write4
    cmp r10, 2
    je write2
    mov byte ptr [r11], al
    jmp logged
write2:
    mov word ptr [r11], ax
    jmp logged
write4:
    mov dword ptr [r11], eax
    jmp logged
write8:
    mov qword ptr [r11], rax
    jmp logged
do_read:
    cmp r10, 8
    je read8
    cmp r10, 4
    je read4
    cmp r10, 2
    je read2
    movzx eax, byte ptr [r11]
    jmp logged
read2:
    movzx eax, word ptr [r11]
    jmp logged
read4:
    mov eax, dword ptr [r11]
    jmp logged
read8:
    mov rax, qword ptr [r11]
logged:
    mov qword ptr [OUT + 8], rax
    add OUT, 16
    dec rbx
    jnz random_next
random_done:
    mov rax, PARAM(4)
    GUEST_SYNC(rax)
    GUEST_DONE

write_holes:
    xor rbx, rbx                   /* page offset */
    xor rbp, rbp                   /* hole pages written */
5:
    movzx eax, word ptr [ECAM + rbx]
    cmp eax, 0xffff
    jne 6f
    mov qword ptr [ECAM + rbx], rbx
    mov qword ptr [ECAM + rbx + 8], rbx
    mov qword ptr [ECAM + rbx + 0xff8], rbx
    mov rax, qword ptr [ECAM + rbx]
    GUEST_ASSERT_EQ(rax, -1)
    mov rax, qword ptr [ECAM + rbx + 8]
    GUEST_ASSERT_EQ(rax, -1)
    mov rax, qword ptr [ECAM + rbx + 0xff8]
    GUEST_ASSERT_EQ(rax, -1)
    inc rbp
6:
    add rbx, 4096
    cmp rbx, SIZE
    jb 5b
    GUEST_SYNC(rbp)
    GUEST_DONE

hammer:
    mov r8, PARAM(4)
    add r8, ECAM                   /* the page */
    mov rax, PARAM(5)
    xor rbp, rbp                   /* writes made */
    xor rbx, rbx
7:
    mov byte ptr [r8 + rbx], al
    inc rbp
    add rbx, 1
    cmp rbx, 4096
    jb 7b
    xor rbx, rbx
8:
    mov word ptr [r8 + rbx], ax
    inc rbp
    add rbx, 2
    cmp rbx, 4096
    jb 8b
    xor rbx, rbx
9:
    mov dword ptr [r8 + rbx], eax
    inc rbp
    add rbx, 4
    cmp rbx, 4096
    jb 9b
    xor rbx, rbx
10:
    mov qword ptr [r8 + rbx], rax
    inc rbp
    add rbx, 8
    cmp rbx, 4096
    jb 10b
    GUEST_SYNC(rbp)
    GUEST_DONE
