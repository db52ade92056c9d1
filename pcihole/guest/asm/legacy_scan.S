/* PCI enumeration through configuration mechanism #1 (ports CF8/CFC), brute force.
 *   PARAM(1) buses to probe (0 .. PARAM(1) - 1)
 * Every bus/device/function: write the address to CF8, read the ID dword from CFC.
 * After the enumeration: sync(functions found), then sync(vendor-ID probes made).
 * Each function found is a 16-byte record at RESULTS_ADDR, as scan.S writes them:
 * u32 bdf (bus << 8 | devfn), then the dwords at config offsets 0x00, 0x08, 0x0c.
 * Ring 3 may do port I/O: the TSS I/O bitmap grants every port. */
#include "runtime.inc"

#define CF8_ENABLE 0x80000000
#define END r15
#define OUT r13
#define FOUND r12
#define PROBES r11

main:
    mov END, PARAM(1)
    shl END, 8              /* END: bus count in bdf units (bus << 8 | devfn) */
    mov OUT, RESULTS_ADDR
    xor FOUND, FOUND
    xor PROBES, PROBES
    xor ebx, ebx            /* rbx: bus << 8 | devfn */
next:
    inc PROBES
    xor esi, esi
    call config_read
    cmp ax, 0xffff
    je skip
    mov dword ptr [OUT], ebx
    mov dword ptr [OUT + 4], eax
    mov esi, 0x08
    call config_read
    mov dword ptr [OUT + 8], eax
    mov esi, 0x0c
    call config_read
    mov dword ptr [OUT + 12], eax
    add OUT, 16
    inc FOUND
skip:
    inc rbx
    cmp rbx, END
    jb next
    GUEST_SYNC(FOUND)
    GUEST_SYNC(PROBES)
    GUEST_DONE

/* config_read(rbx = bus << 8 | devfn, esi = dword register) -> eax */
config_read:
    mov eax, ebx
    shl eax, 8
    or eax, esi
    or eax, CF8_ENABLE
    mov dx, PCI_CONFIG_ADDRESS_PORT
    out dx, eax
    mov dx, PCI_CONFIG_DATA_PORT
    in eax, dx
    ret
