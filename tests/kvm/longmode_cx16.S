/*
 * A 64 KiB firmware image for `pcihole boot --bios`: from the reset vector straight to
 * 64-bit ring 0 (GDT and identity page tables built in RAM, the ROM's top 2 MiB mapped
 * where it sits), then two cmpxchg16b on [0x5000] holding 5:6 with RDX:RAX = 6:5 (high:low)
 * and RCX:RBX = 8:7: the first is equal and stores 8:7, the second is unequal and loads
 * it. Debug-exit gets RAX + 16 * RDX = 0x87 when both did what they should.
 * Linked at IMAGE_BASE (4 GiB - 64 KiB), entered at F000:FFF0 in real mode.
 */
.intel_syntax noprefix
.text
#define PML4 0x1000
#define PDPT 0x2000
#define PD_LOW 0x3000
#define PD_TOP 0x4000
#define DATA 0x5000
#define GDT 0x600
#define GDT_POINTER 0x500
#define PRESENT_WRITABLE 0x3
#define LARGE_PAGE 0x83

.code16
start16:
    cli
    xor ax, ax
    mov ds, ax
    /* identity: 0-2 MiB, and 4 GiB - 2 MiB for the ROM */
    mov dword ptr [PML4], PDPT | PRESENT_WRITABLE
    mov dword ptr [PDPT], PD_LOW | PRESENT_WRITABLE
    mov dword ptr [PDPT + 3 * 8], PD_TOP | PRESENT_WRITABLE
    mov dword ptr [PD_LOW], LARGE_PAGE
    mov dword ptr [PD_TOP + 511 * 8], 0xffe00000 | LARGE_PAGE
    /* GDT in RAM: null, 0x08 64-bit code, 0x10 data; accessed bits already set */
    mov dword ptr [GDT + 0x08], 0
    mov dword ptr [GDT + 0x0c], 0x00209b00
    mov dword ptr [GDT + 0x10], 0x0000ffff
    mov dword ptr [GDT + 0x14], 0x00cf9300
    mov word ptr [GDT_POINTER], 0x17
    mov dword ptr [GDT_POINTER + 2], GDT
    lgdt [GDT_POINTER]
    mov eax, cr4
    or eax, 1 << 5              /* PAE */
    mov cr4, eax
    mov eax, PML4
    mov cr3, eax
    mov ecx, 0xc0000080         /* EFER */
    rdmsr
    or eax, 1 << 8              /* LME */
    wrmsr
    mov eax, cr0
    or eax, 0x80000001          /* PG | PE */
    mov cr0, eax
    .byte 0x66, 0xea            /* ljmp 0x08:long64 with a 32-bit offset */
    .long long64
    .word 0x08

.code64
long64:
    mov ax, 0x10
    mov ds, ax
    mov es, ax
    mov ss, ax
    mov rdi, DATA
    mov qword ptr [rdi], 5
    mov qword ptr [rdi + 8], 6
    mov eax, 5
    mov edx, 6
    mov ebx, 7
    mov ecx, 8
    lock cmpxchg16b [rdi]       /* equal: [rdi] = 8:7 */
    mov eax, 5
    mov edx, 6
    cmpxchg16b [rdi]            /* unequal: RDX:RAX = 8:7 */
    shl edx, 4
    add eax, edx
    mov dx, DEBUG_EXIT_PORT
    out dx, al
1:  hlt
    jmp 1b

.code16
.org 0xfff0
    jmp start16
.org 0x10000
