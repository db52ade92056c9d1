/* Ring-0 instructions KVM's emulator refuses on some hosts (int3, popcnt, fwait,
 * ldmxcsr/stmxcsr, clac/stac, cmpxchg16b), each checked for its architectural result.
 * Runs at ring 0 (PARAM(0) = 0). PARAM(1): 0 runs every check; 1 ldmxcsr with a reserved
 * bit (must raise #GP); 2 popcnt from an unmapped address (must raise #PF); 3 xsave,
 * which nobody emulates (CR4.OSXSAVE is clear: #UD where ring 0 runs natively);
 * 4 cmpxchg16b on an address 8 bytes off 16-byte alignment (must raise #GP).
 * PARAM(2) = 1 skips clac/stac (a host CPU without SMAP has neither).
 * Leaves the MXCSR found at start at RESULTS_ADDR + 0x100. */
#include "runtime.inc"

#define ARITH 0x8d5          /* CF PF AF ZF SF OF */
#define RFLAGS_AC 0x40000
#define BP_FRAME (RESULTS_ADDR + 0x200)
#define BP_COUNT (RESULTS_ADDR + 0x240)
#define CX16_DATA (RESULTS_ADDR + 0x400)   /* 16-byte aligned */
#define MSR_GS_BASE 0xc0000101
#define RFLAGS_ZF 0x40

/* Set every arithmetic flag, so popcnt must clear them. */
#define FLAGS_ALL_SET pushfq; or qword ptr [rsp], ARITH; popfq
#define FLAGS_TO(reg) pushfq; pop reg

main:
    mov rax, PARAM(1)
    cmp rax, 1
    je bad_ldmxcsr
    cmp rax, 2
    je unmapped_popcnt
    cmp rax, 3
    je unknown
    cmp rax, 4
    je misaligned_cmpxchg16b

    /* popcnt r64, r64: 32 bits set, every arithmetic flag cleared */
    mov rax, 0xF0F0F0F0F0F0F0F0
    FLAGS_ALL_SET
    popcnt rbx, rax
    FLAGS_TO(rcx)
    GUEST_ASSERT_EQ(rbx, 32)
    and rcx, ARITH
    GUEST_ASSERT_EQ(rcx, 0)

    /* popcnt r32, r32 with REX: the upper half of the source ignored, of the result cleared */
    mov r10, 0xFFFFFFFF00000007
    mov r9, 0xDEADBEEFDEADBEEF
    popcnt r9d, r10d
    GUEST_ASSERT_EQ(r9, 3)

    /* popcnt r16, r16: bits 63:16 of the destination kept */
    mov r12, 0x123400000000F00F
    mov r11, 0x1111222233334444
    popcnt r11w, r12w
    mov rax, 0x1111222233330008
    GUEST_ASSERT_EQ(r11, rax)

    /* a zero source: result 0 and ZF alone */
    xor eax, eax
    mov rdx, -1
    FLAGS_ALL_SET
    popcnt rdx, rax
    FLAGS_TO(rcx)
    GUEST_ASSERT_EQ(rdx, 0)
    and rcx, ARITH
    GUEST_ASSERT_EQ(rcx, 0x40)

    /* popcnt r64, m64, RIP-relative */
    popcnt rdx, qword ptr [rip + eight_bits]
    GUEST_ASSERT_EQ(rdx, 8)

    /* popcnt r32, m32 through base + index * 4 + disp8 */
    mov dword ptr [RESULTS_ADDR + 0x18], 0x7FFFFFFF
    mov rbx, RESULTS_ADDR
    mov rsi, 4
    popcnt ecx, dword ptr [rbx + rsi * 4 + 8]
    GUEST_ASSERT_EQ(rcx, 31)

    /* stmxcsr to an absolute address (SIB without base or index) */
    stmxcsr dword ptr [RESULTS_ADDR + 0x100]
    /* ldmxcsr from the stack as Linux's kernel_fpu_begin does: [rsp + 4] */
    sub rsp, 8
    mov dword ptr [rsp + 4], 0x9FC0
    ldmxcsr dword ptr [rsp + 4]
    add rsp, 8
    lea rdi, [RESULTS_ADDR + 0x108]
    stmxcsr dword ptr [rdi]
    mov eax, dword ptr [rdi]
    GUEST_ASSERT_EQ(rax, 0x9FC0)
    ldmxcsr dword ptr [RESULTS_ADDR + 0x100]
    stmxcsr dword ptr [rdi]
    mov eax, dword ptr [rdi]
    mov ecx, dword ptr [RESULTS_ADDR + 0x100]
    GUEST_ASSERT_EQ(rax, rcx)

    /* fwait: nothing pending, it just retires */
    fwait

    /* stac sets RFLAGS.AC, clac clears it */
    cmp qword ptr PARAM(2), 1
    je 1f
    stac
    FLAGS_TO(rax)
    and rax, RFLAGS_AC
    GUEST_ASSERT_EQ(rax, RFLAGS_AC)
    clac
    FLAGS_TO(rax)
    and rax, RFLAGS_AC
    GUEST_ASSERT_EQ(rax, 0)
1:

    /* lock cmpxchg16b [rdi], equal: RCX:RBX stored, ZF set, the other flags kept */
    mov rdi, CX16_DATA
    mov r8, 0x0123456789abcdef
    mov r9, 0xfedcba9876543210
    mov r10, 0x1111222233334444
    mov r11, 0x5555666677778888
    mov [rdi], r8
    mov [rdi + 8], r9
    mov rax, r8
    mov rdx, r9
    mov rbx, r10
    mov rcx, r11
    FLAGS_ALL_SET
    pushfq; and qword ptr [rsp], ~RFLAGS_ZF; popfq
    lock cmpxchg16b [rdi]
    FLAGS_TO(r12)
    GUEST_ASSERT_EQ([rdi], r10)
    GUEST_ASSERT_EQ([rdi + 8], r11)
    GUEST_ASSERT_EQ(rax, r8)
    GUEST_ASSERT_EQ(rdx, r9)
    GUEST_ASSERT_EQ(rbx, r10)
    GUEST_ASSERT_EQ(rcx, r11)
    and r12, ARITH
    GUEST_ASSERT_EQ(r12, ARITH)

    /* cmpxchg16b gs:[0x410] with GS at RESULTS_ADDR, unequal in the high half only:
     * RDX:RAX loaded, memory as it was, ZF cleared, the other flags kept */
    mov ecx, MSR_GS_BASE
    mov eax, RESULTS_ADDR
    xor edx, edx
    wrmsr
    mov [CX16_DATA + 0x10], r8
    mov [CX16_DATA + 0x18], r9
    mov rax, r8
    mov rdx, r10
    mov rbx, r11
    mov rcx, r9
    FLAGS_ALL_SET
    cmpxchg16b gs:[0x410]
    FLAGS_TO(r12)
    GUEST_ASSERT_EQ(rax, r8)
    GUEST_ASSERT_EQ(rdx, r9)
    GUEST_ASSERT_EQ(rbx, r11)
    GUEST_ASSERT_EQ(rcx, r9)
    GUEST_ASSERT_EQ([CX16_DATA + 0x10], r8)
    GUEST_ASSERT_EQ([CX16_DATA + 0x18], r9)
    and r12, ARITH
    GUEST_ASSERT_EQ(r12, ARITH & ~RFLAGS_ZF)
    mov ecx, MSR_GS_BASE
    xor eax, eax
    xor edx, edx
    wrmsr

    /* int3 through our own #BP gate: the handler records the frame and returns */
    call install_bp_handler
    mov qword ptr [BP_COUNT], 0
    FLAGS_TO(r14)
    mov r15, rsp
    int3
after_int3:
    GUEST_ASSERT_EQ(rsp, r15)
    GUEST_ASSERT_EQ(qword ptr [BP_COUNT], 1)
    lea rax, [rip + after_int3]
    GUEST_ASSERT_EQ(qword ptr [BP_FRAME], rax)       /* RIP after the int3 */
    GUEST_ASSERT_EQ(qword ptr [BP_FRAME + 8], 0x08)  /* CS */
    mov rax, [BP_FRAME + 16]
    btr rax, 16                                       /* RF may be set by a delivery */
    GUEST_ASSERT_EQ(rax, r14)                         /* RFLAGS */
    GUEST_ASSERT_EQ(qword ptr [BP_FRAME + 24], r15)  /* RSP */
    GUEST_ASSERT_EQ(qword ptr [BP_FRAME + 32], 0x10) /* SS */
    GUEST_DONE

bad_ldmxcsr:
    mov dword ptr [RESULTS_ADDR], 0x10000   /* bit 16 is reserved */
    ldmxcsr dword ptr [RESULTS_ADDR]
    GUEST_DONE

unmapped_popcnt:
    mov rbx, 0x200000000   /* above the identity map */
    popcnt rax, qword ptr [rbx + 8]
    GUEST_DONE

unknown:
    mov rbx, RESULTS_ADDR
    xsave [rbx]
    GUEST_DONE

misaligned_cmpxchg16b:
    mov rsi, CX16_DATA + 8
    lock cmpxchg16b [rsi]
    GUEST_DONE

/* IDT gate 3 -> bp_handler (64-bit interrupt gate, kernel CS) */
install_bp_handler:
    sidt [RESULTS_ADDR + 0x300]
    mov rdi, [RESULTS_ADDR + 0x302]
    add rdi, 3 * 16
    lea rax, [rip + bp_handler]
    mov word ptr [rdi], ax
    mov word ptr [rdi + 2], 0x08
    mov word ptr [rdi + 4], 0x8E00
    shr rax, 16
    mov word ptr [rdi + 6], ax
    shr rax, 16
    mov dword ptr [rdi + 8], eax
    mov dword ptr [rdi + 12], 0
    ret

bp_handler:
    push rax
    mov rax, [rsp + 8]
    mov [BP_FRAME], rax
    mov rax, [rsp + 16]
    mov [BP_FRAME + 8], rax
    mov rax, [rsp + 24]
    mov [BP_FRAME + 16], rax
    mov rax, [rsp + 32]
    mov [BP_FRAME + 24], rax
    mov rax, [rsp + 40]
    mov [BP_FRAME + 32], rax
    inc qword ptr [BP_COUNT]
    pop rax
    iretq

.balign 8
eight_bits:
    .quad 0x0102040810204080
