/* Foundation self-test: sync a value, then done. PARAM(1) is the value to sync. */
#include "runtime.inc"

main:
    mov rbx, PARAM(1)
    GUEST_SYNC(rbx)
    GUEST_SYNC(0x1234)
    GUEST_DONE
