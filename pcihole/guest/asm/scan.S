/* PCI enumeration through ECAM, as a guest OS does it.
 *   PARAM(1) ECAM base   PARAM(2) buses in the window
 *   PARAM(3) 0 = brute force over every bus/device/function, 1 = recursive (Linux order:
 *            function 0 first, other functions only when multi-function, bridges followed
 *            by their secondary bus), 2 = both, brute force first
 *   PARAM(4) passes (later passes run over warm mappings); 0: pass after pass until the
 *            host sets the u64 at STOP_FLAG_ADDR (checked after each pass)
 * After each enumeration: sync(functions found), then sync(vendor-ID probes made).
 * Each function found is a 16-byte record: u32 bdf (bus << 8 | devfn), then the dwords at
 * config offsets 0x00 (IDs), 0x08 (class, revision), 0x0c (header). Brute force writes
 * its records at RESULTS_ADDR, recursive ones at RESULTS_ADDR + RESULTS_SIZE / 2. */
#include "runtime.inc"

#define ECAM r15
#define WINDOW_END r14
#define OUT r13
#define FOUND r12
#define PROBES r11

main:
    mov ECAM, PARAM(1)
    mov WINDOW_END, PARAM(2)
    shl WINDOW_END, 20
    mov rbx, PARAM(4)
pass:
    push rbx
    cmp PARAM(3), 1
    je recursive
/* brute force: every 4 KiB function page of the window */
    mov OUT, RESULTS_ADDR
    xor FOUND, FOUND
    xor PROBES, PROBES
    xor r10, r10
brute_next:
    inc PROBES
    movzx eax, word ptr [ECAM + r10]
    cmp eax, 0xffff
    je brute_skip
    mov rdi, r10
    call record
brute_skip:
    add r10, 4096
    cmp r10, WINDOW_END
    jb brute_next
    GUEST_SYNC(FOUND)
    GUEST_SYNC(PROBES)
    cmp PARAM(3), 0
    je pass_done
recursive:
    mov OUT, RESULTS_ADDR + RESULTS_SIZE / 2
    xor FOUND, FOUND
    xor PROBES, PROBES
    xor edi, edi
    call scan_bus
    GUEST_SYNC(FOUND)
    GUEST_SYNC(PROBES)
pass_done:
    pop rbx
    test rbx, rbx
    jz until_stopped
    dec rbx
    jnz pass
    GUEST_DONE
until_stopped:
    cmp qword ptr [STOP_FLAG_ADDR], 0
    je pass
    GUEST_DONE

/* record(rdi = ECAM offset of a present function): append its record. */
record:
    mov rax, rdi
    shr rax, 12
    mov dword ptr [OUT], eax
    mov eax, dword ptr [ECAM + rdi]
    mov dword ptr [OUT + 4], eax
    mov eax, dword ptr [ECAM + rdi + 8]
    mov dword ptr [OUT + 8], eax
    mov eax, dword ptr [ECAM + rdi + 12]
    mov dword ptr [OUT + 12], eax
    add OUT, 16
    inc FOUND
    ret

/* scan_bus(rdi = bus number) */
scan_bus:
    push rbx
    push rbp
    mov rbx, rdi
    shl rbx, 20            /* rbx: ECAM offset of the bus */
    xor ebp, ebp           /* rbp: device * 8 + function */
function_next:
    call probe
    je function_absent
    call found_function
    test rbp, 7
    jnz function_step      /* functions 1-7: the device is multi-function */
    call function_offset
    test byte ptr [ECAM + rdi + 0x0e], 0x80
    jnz function_step      /* other functions only on a multi-function device */
device_skip:
    add rbp, 8
    and rbp, ~7
    jmp bus_check
function_absent:
    test rbp, 7
    jz device_skip         /* no function 0: no device */
function_step:
    inc rbp
bus_check:
    cmp rbp, 256
    jb function_next
    pop rbp
    pop rbx
    ret

/* probe(): one vendor-ID load of function rbp on the bus at rbx; rdi = its ECAM offset,
 * ZF set when nothing answers. */
probe:
    call function_offset
    inc PROBES
    movzx eax, word ptr [ECAM + rdi]
    cmp eax, 0xffff
    ret

/* function_offset(): rdi = ECAM offset of function rbp on the bus at rbx. */
function_offset:
    mov rdi, rbp
    shl rdi, 12
    add rdi, rbx
    ret

/* found_function(rdi = ECAM offset): record it; descend through a bridge. */
found_function:
    push rdi
    call record
    pop rdi
    movzx eax, byte ptr [ECAM + rdi + 0x0e]
    and eax, 0x7f
    cmp eax, 1
    jne 1f
    movzx eax, byte ptr [ECAM + rdi + 0x19]   /* secondary bus */
    mov rcx, rdi
    shr rcx, 20                                 /* this bus */
    cmp rax, rcx
    jbe 1f                                      /* must lie below us: no loops */
    mov rcx, rax
    shl rcx, 20
    cmp rcx, WINDOW_END
    jae 1f                                      /* outside the window */
    mov rdi, rax
    call scan_bus
1:
    ret
