/* Read one function's vendor/device dword over and over while the host hot-plugs it.
 *   PARAM(1) guest address of the dword (ECAM base + the function's offset)
 *   PARAM(2) the function's real vendor/device dword
 *   PARAM(3) iterations (at most)
 *   PARAM(4) guest address of a u64 stop flag in RAM: the loop ends as soon as it reads
 *            non-zero (0: no flag, run all iterations)
 * Every value read must be all ones (a hole) or PARAM(2) (the device): anything else
 * fails GUEST_ASSERT. The guest publishes, for the host to follow it while it runs:
 *   RESULTS_ADDR + 0: u64 changes seen so far (value differs from the previous read)
 *   RESULTS_ADDR + 8: u64 the value read last (written before the change count)
 * Reports: sync(0) just before the loop starts; after it sync(all-ones reads),
 * sync(device reads), sync(changes), sync(iterations made); then done. */
#include "runtime.inc"

#define ADDRESS r15
#define IDS r14
#define LIMIT r13
#define FLAG r12
#define ONES r11
#define DEVICE r10
#define CHANGES r9
#define DONE_ITERATIONS r8

main:
    mov ADDRESS, PARAM(1)
    mov IDS, PARAM(2)
    mov LIMIT, PARAM(3)
    mov FLAG, PARAM(4)
    test FLAG, FLAG
    jnz 1f
    lea FLAG, [rip + never]
1:
    xor ONES, ONES
    xor DEVICE, DEVICE
    xor CHANGES, CHANGES
    xor DONE_ITERATIONS, DONE_ITERATIONS
    mov qword ptr [RESULTS_ADDR], 0
    mov ebx, dword ptr [ADDRESS]    /* rbx: the previous value */
    mov qword ptr [RESULTS_ADDR + 8], rbx
    GUEST_SYNC(0)
    test LIMIT, LIMIT
    jz finished
read:
    mov eax, dword ptr [ADDRESS]
    cmp eax, 0xffffffff
    je ones
    GUEST_ASSERT_EQ(rax, IDS)
    inc DEVICE
    jmp seen
ones:
    inc ONES
seen:
    cmp eax, ebx
    je same
    mov ebx, eax
    inc CHANGES
    mov qword ptr [RESULTS_ADDR + 8], rbx
    mov qword ptr [RESULTS_ADDR], CHANGES
same:
    inc DONE_ITERATIONS
    cmp DONE_ITERATIONS, LIMIT
    jae finished
    cmp qword ptr [FLAG], 0
    je read
finished:
    GUEST_SYNC(ONES)
    GUEST_SYNC(DEVICE)
    GUEST_SYNC(CHANGES)
    GUEST_SYNC(DONE_ITERATIONS)
    GUEST_DONE

.balign 8
never:
    .quad 0
