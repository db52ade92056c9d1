/* MMIO round trip: read a u32 from the test device, sync it, write a u64, done. */
#include "runtime.inc"

main:
    mov eax, dword ptr [TEST_MMIO_BASE]
    GUEST_SYNC(rax)
    mov rax, 0x1122334455667788
    mov qword ptr [TEST_MMIO_BASE + 8], rax
    GUEST_DONE
