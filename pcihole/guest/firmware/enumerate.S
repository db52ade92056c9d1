/*
 * A flat firmware image that enumerates PCI through ECAM, the same under
 * `qemu-system-x86_64 -machine q35 -bios IMAGE` and `pcihole boot --bios IMAGE`.
 *
 * From the reset vector (real mode, CS base 0xffff0000, IP 0xfff0) it goes to 32-bit
 * protected mode and to long mode on its own GDT and identity page tables (4 GiB, 2 MiB
 * user pages), builds an IDT, a TSS whose I/O permission bitmap grants every port (some
 * KVM hosts clear IOPL at ring 3) and then:
 *   1. reads the host bridge's IDs through CF8/CFC, and the first dword of the ECAM range
 *      while PCIEXBAR is still disabled (it must not be configuration space);
 *   2. enables ECAM at FW_ECAM_BASE, 256 buses, by writing the host bridge's PCIEXBAR
 *      (config 0x60) through CF8/CFC; with FW_ECAM_MOVE set it then moves the window
 *      there by writing PCIEXBAR through ECAM itself (length code FW_ECAM_MOVE_LENGTH);
 *      then numbers the bridges depth first through CF8/CFC, as SeaBIOS does (bridges
 *      come out of reset with bus numbers 0, so nothing behind them answers before);
 *   3. drops to ring 3 and scans FW_SCAN_BUSES buses brute force FW_RING3_PASSES times,
 *      then returns to ring 0 (int3) and scans FW_RING0_BUSES buses once;
 *      every scan reads the vendor ID of every function page and is timed with RDTSC;
 *   4. writes FW_EXIT_VALUE to QEMU's debug-exit port: status (value << 1) | 1.
 * Everything it learns goes to the debug console (port 0x402), one fact per line, numbers
 * in hex (``pcihole.guest.firmware.parse_output`` reads it back):
 *   fw enumerate hostbridge=0x29c08086 ecam-before=0xffffffff
 *   pciexbar=0xb0000001 ecam=0xb0000000
 *   cpuid max=0xd [leaf15=eax,ebx,ecx leaf16=eax]     (TSC frequency leaves, if any)
 *   scan ring=0x3 pass=0x1 buses=0x100 start
 *   scan ring=0x3 pass=0x1 buses=0x100 probes=0x10000 found=0x4 ticks=0x10f7a1c
 *   fn 00:00.0 8086:29c0            (one per function found, after each scan)
 *   exit value=0x10
 * Nothing is printed while a scan runs: the host can time it, and count its exits,
 * between the newline of its start line and the first byte of its result line.
 * An exception prints `fw exception vector=...` and exits with FW_FAIL_VALUE.
 */
.intel_syntax noprefix
.text

#ifndef FW_SIZE
#define FW_SIZE 0x10000
#endif
#define FW_BASE (FIRMWARE_TOP - FW_SIZE)
#define SEG_BASE (FIRMWARE_TOP - 0x10000)

/* RAM the firmware uses, all below 640 KiB. */
#define FW_GDT 0x1000
#define FW_TSS 0x2000
#define FW_TSS_SIZE (0x68 + 0x2000 + 1)
#define FW_IDT 0x4800
#define FW_IDT_ENTRIES 32
#define FW_PML4 0x5000
#define FW_PDPT 0x6000
#define FW_PD 0x7000
#define FW_VARS 0xF000
#define FW_RECORDS 0x20000
#define FW_MAX_RECORDS 4096
#define FW_USER_STACK 0x70000
#define FW_KERNEL_STACK 0x80000

/* Variables in RAM. */
#define V_ECAM qword ptr [FW_VARS]
#define V_PASS qword ptr [FW_VARS + 8]
#define V_T0 qword ptr [FW_VARS + 16]
#define V_NEXT_BUS dword ptr [FW_VARS + 24]

#define SEL_CODE32 0x08
#define SEL_DATA 0x10
#define SEL_CODE64 0x18
#define SEL_USER_DATA 0x20
#define SEL_USER_CODE 0x28
#define SEL_TSS 0x30
#define RETURN_VECTOR 3
/* Ring 3 comes back to ring 0 through the breakpoint gate (int3), made DPL 3. Not a
 * vector of its own: KVM hosts that run ring 3 natively may turn `int n` into #UD. */

#define PCIEXBAR 0x60
#define CF8_ENABLE 0x80000000

image_start:
.if FW_SIZE > 0x10000
    .fill FW_SIZE - 0x10000, 1, 0xff
.endif
seg_start:      /* linear SEG_BASE: CS base at reset, real-mode offsets count from here */

/* ---------------------------------------------------------------------------------- */
.code16
real_start:
    cli
    cld
    .byte 0x66                          /* operand size 32: the GDT base is 32 bits */
    lgdt cs:[gdt_pointer - seg_start]
    mov eax, cr0
    or eax, 1
    mov cr0, eax
    .byte 0x66, 0xea                    /* jmp far SEL_CODE32:protected_start */
    .long protected_start
    .word SEL_CODE32

/* ---------------------------------------------------------------------------------- */
.code32
protected_start:
    mov ax, SEL_DATA
    mov ds, ax
    mov es, ax
    mov ss, ax
    mov fs, ax
    mov gs, ax
    mov esp, FW_KERNEL_STACK
    /* Identity page tables: PML4 -> PDPT -> 4 page directories of 2 MiB user pages. */
    mov edi, FW_PML4
    xor eax, eax
    mov ecx, 6 * 1024
    rep stosd
    mov dword ptr [FW_PML4], FW_PDPT | 7
    mov edi, FW_PDPT
    mov eax, FW_PD | 7
    mov ecx, 4
1:  mov [edi], eax
    add eax, 0x1000
    add edi, 8
    loop 1b
    mov edi, FW_PD
    mov eax, 0x87                       /* present, writable, user, 2 MiB */
    mov ecx, 4 * 512
2:  mov [edi], eax
    add eax, 0x200000
    add edi, 8
    loop 2b
    mov eax, cr4
    or eax, 1 << 5                      /* PAE */
    mov cr4, eax
    mov eax, FW_PML4
    mov cr3, eax
    mov ecx, 0xc0000080                 /* EFER */
    rdmsr
    or eax, 1 << 8                      /* LME */
    wrmsr
    mov eax, cr0
    or eax, 0x80000001                  /* PG, PE */
    mov cr0, eax
    .byte 0xea                          /* jmp far SEL_CODE64:long_start */
    .long long_start
    .word SEL_CODE64

/* ---------------------------------------------------------------------------------- */
.code64
long_start:
    mov ax, SEL_DATA
    mov ds, ax
    mov es, ax
    mov ss, ax
    mov fs, ax
    mov gs, ax
    mov rsp, FW_KERNEL_STACK
    /* The GDT moves to RAM: LTR marks the TSS descriptor busy, a ROM cannot take that. */
    lea rsi, [rip + gdt]
    mov rdi, FW_GDT
    mov ecx, gdt_end - gdt
    rep movsb
    lgdt [rip + gdt_ram_pointer]
    /* TSS: RSP0, then an I/O bitmap of zeros (every port allowed) and its 0xff end byte. */
    mov rdi, FW_TSS
    xor eax, eax
    mov ecx, FW_TSS_SIZE
    rep stosb
    mov rax, FW_KERNEL_STACK
    mov [FW_TSS + 4], rax
    mov word ptr [FW_TSS + 0x66], 0x68
    mov byte ptr [FW_TSS + FW_TSS_SIZE - 1], 0xff
    mov ax, SEL_TSS
    ltr ax
    /* IDT: exception stubs 0-31 (ring 0 only), then the way back from ring 3. */
    lea rax, [rip + exception_stubs]
    mov rdi, FW_IDT
    mov ecx, 32
3:  mov edx, 0x8e00
    call set_gate
    add rax, 16
    add rdi, 16
    loop 3b
    mov rdi, FW_IDT + 16 * RETURN_VECTOR
    lea rax, [rip + back_to_ring0]
    mov edx, 0xee00                     /* DPL 3: ring 3 may raise it */
    call set_gate
    lidt [rip + idt_pointer]

    lea rsi, [rip + s_banner]
    call puts
    /* Host bridge IDs through CF8/CFC. */
    mov eax, CF8_ENABLE
    call config_read
    call print_num
    /* The ECAM range before PCIEXBAR is enabled. */
    mov rax, FW_ECAM_BASE
    mov eax, [rax]
    lea rsi, [rip + s_before]
    call print_field
    call newline

    /* Enable ECAM: PCIEXBAR high dword, then base | 256 buses | enable. */
    mov eax, CF8_ENABLE | (PCIEXBAR + 4)
    xor edx, edx
    call config_write
    mov eax, CF8_ENABLE | PCIEXBAR
    mov edx, FW_ECAM_BASE | 1
    call config_write
    mov rax, FW_ECAM_BASE
    mov V_ECAM, rax
.if FW_ECAM_MOVE
    /* Move the window by writing PCIEXBAR through ECAM itself. */
    mov rax, FW_ECAM_BASE
    mov dword ptr [rax + PCIEXBAR], FW_ECAM_MOVE | (FW_ECAM_MOVE_LENGTH << 1) | 1
    mov rax, FW_ECAM_MOVE
    mov V_ECAM, rax
.endif
    lea rsi, [rip + s_pciexbar]
    call puts
    mov eax, CF8_ENABLE | (PCIEXBAR + 4)
    call config_read
    mov rbx, rax
    shl rbx, 32
    mov eax, CF8_ENABLE | PCIEXBAR
    call config_read
    or rax, rbx
    call print_num
    mov rax, V_ECAM
    lea rsi, [rip + s_ecam]
    call print_field
    call newline

    mov V_NEXT_BUS, 0
    xor edi, edi
    call number_bus

    /* CPUID leaves that may give the TSC frequency (0x15: crystal ratio, 0x16: MHz). */
    lea rsi, [rip + s_cpuid]
    call puts
    xor eax, eax
    cpuid
    mov r12d, eax
    call print_num
    cmp r12d, 0x15
    jb 4f
    lea rsi, [rip + s_leaf15]
    call puts
    mov eax, 0x15
    xor ecx, ecx
    cpuid
    mov r13d, ebx
    mov r14d, ecx
    call print_num
    call comma
    mov eax, r13d
    call print_num
    call comma
    mov eax, r14d
    call print_num
    cmp r12d, 0x16
    jb 4f
    lea rsi, [rip + s_leaf16]
    call puts
    mov eax, 0x16
    xor ecx, ecx
    cpuid
    call print_num
4:  call newline

    /* Down to ring 3 (IOPL 3 asked for; the TSS bitmap is what grants ports here). */
    push SEL_USER_DATA | 3
    push FW_USER_STACK
    push 0x3002
    push SEL_USER_CODE | 3
    lea rax, [rip + ring3_main]
    push rax
    iretq

ring3_main:
    mov V_PASS, 1
5:  mov edi, 3
    mov esi, FW_SCAN_BUSES
    call timed_scan
    inc V_PASS
    cmp V_PASS, FW_RING3_PASSES
    jbe 5b
    int3                                /* back to ring 0 */

back_to_ring0:
    mov rsp, FW_KERNEL_STACK
    mov V_PASS, 1
.if FW_RING0_BUSES
    xor edi, edi
    mov esi, FW_RING0_BUSES
    call timed_scan
.endif
    mov eax, FW_EXIT_VALUE
    lea rsi, [rip + s_exit]
    call print_field
    call newline
    mov eax, FW_EXIT_VALUE
    jmp debug_exit

/* ---------------------------------------------------------------------------------- */
/* timed_scan(edi = ring, esi = buses): print a start line, scan, print the result line
 * and the functions found. */
timed_scan:
    push rbx
    push r12
    push r13
    mov r12d, edi
    mov r13d, esi
    call scan_head
    lea rsi, [rip + s_start]
    call puts
    call read_tsc
    mov V_T0, rax
    mov edi, r13d
    call scan                           /* rax = functions found */
    mov rbx, rax
    call read_tsc
    sub rax, V_T0
    push rax
    mov edi, r12d
    mov esi, r13d
    call scan_head
    mov eax, r13d
    shl eax, 8
    lea rsi, [rip + s_probes]
    call print_field
    mov rax, rbx
    lea rsi, [rip + s_found]
    call print_field
    pop rax
    lea rsi, [rip + s_ticks]
    call print_field
    call newline
    mov rdi, rbx
    call print_records
    pop r13
    pop r12
    pop rbx
    ret

/* scan_head(edi = ring, esi = buses): "scan ring=R pass=P buses=B " */
scan_head:
    push rsi
    mov eax, edi
    lea rsi, [rip + s_scan]
    call print_field
    mov rax, V_PASS
    lea rsi, [rip + s_pass]
    call print_field
    pop rax
    lea rsi, [rip + s_buses]
    call print_field
    ret

/* scan(edi = buses) -> rax = functions found; records (u32 page index, u32 IDs) at
 * FW_RECORDS, at most FW_MAX_RECORDS of them. The loop is all a guest OS's brute-force
 * probe is: one 16-bit load per function page. */
scan:
    push rbx
    mov r8, V_ECAM
    mov r9d, edi
    shl r9, 20                          /* end of the scanned window */
    xor r10d, r10d                      /* offset of the function page */
    xor r11d, r11d                      /* found */
    mov rbx, FW_RECORDS
6:  movzx eax, word ptr [r8 + r10]
    cmp eax, 0xffff
    jne 8f
7:  add r10, 0x1000
    cmp r10, r9
    jb 6b
    mov rax, r11
    pop rbx
    ret
8:  inc r11
    cmp r11, FW_MAX_RECORDS
    ja 7b
    mov eax, [r8 + r10]
    mov rcx, r10
    shr rcx, 12
    mov [rbx], ecx
    mov [rbx + 4], eax
    add rbx, 8
    jmp 7b

/* print_records(rdi = count): "fn BB:DD.F VVVV:DDDD" per record. */
print_records:
    push rbx
    push r12
    mov rbx, FW_RECORDS
    mov r12, rdi
    cmp r12, FW_MAX_RECORDS
    jbe 9f
    mov r12, FW_MAX_RECORDS
9:  test r12, r12
    jz 10f
    lea rsi, [rip + s_fn]
    call puts
    mov eax, [rbx]
    shr eax, 8
    mov ecx, 2
    call print_hex                      /* bus */
    mov al, ':'
    call putc
    mov eax, [rbx]
    shr eax, 3
    and eax, 31
    mov ecx, 2
    call print_hex                      /* device */
    mov al, '.'
    call putc
    mov eax, [rbx]
    and eax, 7
    mov ecx, 1
    call print_hex                      /* function */
    mov al, ' '
    call putc
    movzx eax, word ptr [rbx + 4]
    mov ecx, 4
    call print_hex                      /* vendor */
    mov al, ':'
    call putc
    movzx eax, word ptr [rbx + 6]
    mov ecx, 4
    call print_hex                      /* device */
    call newline
    add rbx, 8
    dec r12
    jmp 9b
10: pop r12
    pop rbx
    ret

/* ---------------------------------------------------------------------------------- */
/* config_read(eax = CF8 value) -> rax = dword; config_write(eax = CF8 value, edx). */
config_read:
    push rdx
    mov dx, PCI_CONFIG_ADDRESS_PORT
    out dx, eax
    mov dx, PCI_CONFIG_DATA_PORT
    in eax, dx
    pop rdx
    ret

config_write:
    push rdx
    mov dx, PCI_CONFIG_ADDRESS_PORT
    out dx, eax
    pop rax
    mov dx, PCI_CONFIG_DATA_PORT
    out dx, eax
    ret

/* number_bus(edi = bus): each bridge on the bus gets secondary = the next free bus,
 * subordinate 255 while the buses below it are numbered, then the last of them. */
number_bus:
    push rbx
    push r12
    push r13
    push r14
    push r15
    mov r12d, edi
    xor r13d, r13d                      /* devfn */
1:  mov ebx, r12d
    shl ebx, 16
    mov eax, r13d
    shl eax, 8
    or ebx, eax
    or ebx, CF8_ENABLE                  /* ebx: CF8 address of this function */
    mov eax, ebx
    call config_read
    cmp ax, 0xffff
    je 3f
    lea eax, [rbx + 0x0c]
    call config_read
    shr eax, 16
    and eax, 0x7f
    cmp eax, 1                          /* header type 1: a bridge */
    jne 3f
    mov r14d, V_NEXT_BUS
    inc r14d
    mov V_NEXT_BUS, r14d                /* r14: its secondary bus */
    lea eax, [rbx + 0x18]
    call config_read
    and eax, 0xff000000
    mov r15d, eax                       /* keep the secondary latency timer */
    mov edx, r14d
    shl edx, 8
    or edx, r12d
    or edx, r15d
    or edx, 0xff0000
    lea eax, [rbx + 0x18]
    call config_write
    mov edi, r14d
    call number_bus
    mov edx, V_NEXT_BUS
    shl edx, 16
    or edx, r15d
    mov eax, r14d
    shl eax, 8
    or edx, eax
    or edx, r12d
    lea eax, [rbx + 0x18]
    call config_write
3:  inc r13d
    cmp r13d, 256
    jb 1b
    pop r15
    pop r14
    pop r13
    pop r12
    pop rbx
    ret

/* set_gate(rdi = IDT entry, rax = handler, edx = type and attributes << 8). */
set_gate:
    push rax
    push rcx
    mov ecx, eax
    and ecx, 0xffff
    or ecx, SEL_CODE64 << 16
    mov [rdi], ecx
    mov ecx, eax
    and ecx, 0xffff0000
    or ecx, edx
    mov [rdi + 4], ecx
    shr rax, 32
    mov [rdi + 8], eax
    mov dword ptr [rdi + 12], 0
    pop rcx
    pop rax
    ret

/* Console output: every routine keeps every register but the flags. */
/* puts(rsi = NUL-terminated string) */
puts:
    push rax
    push rcx
    push rdx
    push rdi
    push rsi
    mov rdi, rsi
    xor eax, eax
    mov rcx, -1
    repne scasb
    not rcx
    dec rcx
    mov dx, DEBUGCON_PORT
    rep outsb
    pop rsi
    pop rdi
    pop rdx
    pop rcx
    pop rax
    ret

putc:                                   /* al */
    push rdx
    mov dx, DEBUGCON_PORT
    out dx, al
    pop rdx
    ret

newline:
    push rax
    mov al, '\n'
    call putc
    pop rax
    ret

comma:
    push rax
    mov al, ','
    call putc
    pop rax
    ret

/* print_hex(rax = value, ecx = digits) */
print_hex:
    push rax
    push rcx
    push rdx
    push rsi
    push rdi
    sub rsp, 24
    lea rdi, [rsp + rcx]
    mov byte ptr [rdi], 0
    lea rsi, [rip + hex_digits]
11: dec rdi
    mov edx, eax
    and edx, 15
    mov dl, [rsi + rdx]
    mov [rdi], dl
    shr rax, 4
    dec ecx
    jnz 11b
    mov rsi, rdi
    call puts
    add rsp, 24
    pop rdi
    pop rsi
    pop rdx
    pop rcx
    pop rax
    ret

/* print_num(rax): 0x and as few hex digits as the value needs. */
print_num:
    push rcx
    push rsi
    lea rsi, [rip + s_0x]
    call puts
    mov ecx, 1
    test rax, rax
    jz 12f
    bsr rcx, rax
    shr ecx, 2
    inc ecx
12: call print_hex
    pop rsi
    pop rcx
    ret

/* print_field(rsi = label, rax = value): the label, then the value. */
print_field:
    call puts
    jmp print_num

/* read_tsc() -> rax: the TSC, after all earlier instructions (lfence). */
read_tsc:
    lfence
    rdtsc
    shl rdx, 32
    or rax, rdx
    ret

/* debug_exit(eax = value): QEMU's isa-debug-exit; the process ends (value << 1) | 1. */
debug_exit:
    mov dx, DEBUG_EXIT_PORT
    out dx, eax
13: hlt
    jmp 13b

/* ---------------------------------------------------------------------------------- */
/* Exception stubs, 16 bytes apart: vector v at exception_stubs + 16 * v. */
.balign 16
exception_stubs:
.irp vector, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
    .balign 16
    .if (\vector == 8) || (\vector >= 10 && \vector <= 14) || (\vector == 17) || (\vector == 21) || (\vector == 29) || (\vector == 30)
    .else
    push 0
    .endif
    push \vector
    jmp exception_common
.endr

exception_common:
    mov rax, [rsp]
    lea rsi, [rip + s_exception]
    call print_field
    mov rax, [rsp + 8]
    lea rsi, [rip + s_error]
    call print_field
    mov rax, [rsp + 16]
    lea rsi, [rip + s_rip]
    call print_field
    mov rax, [rsp + 24]
    lea rsi, [rip + s_cs]
    call print_field
    mov rax, cr2
    lea rsi, [rip + s_cr2]
    call print_field
    call newline
    mov eax, FW_FAIL_VALUE
    jmp debug_exit

/* ---------------------------------------------------------------------------------- */
.balign 8
gdt:
    .quad 0
    .quad 0x00cf9b000000ffff            /* 0x08 code, 32-bit, flat (accessed bit preset) */
    .quad 0x00cf93000000ffff            /* 0x10 data, flat */
    .quad 0x00af9b000000ffff            /* 0x18 code, 64-bit */
    .quad 0x00cff3000000ffff            /* 0x20 data, DPL 3 */
    .quad 0x00affb000000ffff            /* 0x28 code, 64-bit, DPL 3 */
    /* 0x30 TSS: available 64-bit TSS at FW_TSS */
    .word (FW_TSS_SIZE - 1) & 0xffff
    .word FW_TSS & 0xffff
    .byte (FW_TSS >> 16) & 0xff
    .byte 0x89
    .byte ((FW_TSS_SIZE - 1) >> 16) & 0xf
    .byte (FW_TSS >> 24) & 0xff
    .long 0
    .long 0
gdt_end:

gdt_pointer:                            /* the ROM copy, for the switch to protected mode */
    .word gdt_end - gdt - 1
    .long gdt
gdt_ram_pointer:
    .word gdt_end - gdt - 1
    .quad FW_GDT
idt_pointer:
    .word FW_IDT_ENTRIES * 16 - 1
    .quad FW_IDT

hex_digits: .ascii "0123456789abcdef"
s_0x: .asciz "0x"
s_banner: .asciz "fw enumerate hostbridge="
s_before: .asciz " ecam-before="
s_pciexbar: .asciz "pciexbar="
s_ecam: .asciz " ecam="
s_cpuid: .asciz "cpuid max="
s_leaf15: .asciz " leaf15="
s_leaf16: .asciz " leaf16="
s_scan: .asciz "scan ring="
s_pass: .asciz " pass="
s_buses: .asciz " buses="
s_start: .asciz " start\n"
s_probes: .asciz " probes="
s_found: .asciz " found="
s_ticks: .asciz " ticks="
s_fn: .asciz "fn "
s_exit: .asciz "exit value="
s_exception: .asciz "fw exception vector="
s_error: .asciz " error="
s_rip: .asciz " rip="
s_cs: .asciz " cs="
s_cr2: .asciz " cr2="

/* ---------------------------------------------------------------------------------- */
.org FW_SIZE - 16, 0xff
.code16
reset_vector:                           /* linear 0xfffffff0: CS base 0xffff0000, IP 0xfff0 */
    jmp real_start
.org FW_SIZE, 0xff
