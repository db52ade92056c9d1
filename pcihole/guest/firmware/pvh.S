/*
 * pcihole's PVH boot ROM: boots an ELF vmlinux through its Xen PVH entry point, in the
 * place of QEMU's pvh.bin, which never gets there on hosts whose ring 0 is emulated
 * (its GDT lies in the option ROM's read-only shadow: KVM's emulator cannot set a
 * descriptor's accessed bit there and retries the far jump for ever).
 *
 * The firmware (SeaBIOS) finds it as the fw_cfg file genroms/<name>, runs its empty
 * init entry, and calls its boot entry (BEV) after POST when bootorder names it first.
 * The kernel's PT_LOAD segments are already in RAM (the monitor wrote them, as QEMU's
 * ELF loader does); from real mode, with the BIOS still there, the ROM:
 *   1. copies the firmware's memory map (int 15h, e820) into an hvm_memmap table;
 *   2. finds the RSDP the firmware built (scan of 0xe0000-0xfffff, 0 if none);
 *   3. reads the command line and the initrd through fw_cfg DMA, as QEMU's items give
 *      them (CMDLINE_SIZE/DATA to PVH_CMDLINE_ADDR; INITRD_SIZE/ADDR/DATA);
 *   4. fills an hvm_start_info (version 1) and a one-entry module list;
 *   5. loads a GDT that lies in RAM with every descriptor already marked accessed,
 *      sets CR0.PE, loads flat data segments and far-jumps to KERNEL_ENTRY with
 *      EBX = the hvm_start_info, interrupts off, paging off, as the PVH ABI asks.
 * Everything it builds lies at PVH_DATA_ADDR (see layout.py). A failed DMA halts.
 */
.intel_syntax noprefix
.code16
.text

#define GDT (PVH_DATA_ADDR + 0x00)
#define GDTR (PVH_DATA_ADDR + 0x20)
#define FARPTR (PVH_DATA_ADDR + 0x28)
#define DESC (PVH_DATA_ADDR + 0x30)
#define START_INFO (PVH_DATA_ADDR + 0x40)
#define MODLIST (PVH_DATA_ADDR + 0x80)
#define MEMMAP (PVH_DATA_ADDR + 0x100)
#define MEMMAP_MAX 128
#define DATA_SIZE (0x100 + MEMMAP_MAX * 24)

/* hvm_start_info fields (Xen's arch-x86/hvm/start_info.h) */
#define SI_MAGIC 0
#define SI_VERSION 4
#define SI_NR_MODULES 12
#define SI_MODLIST 16
#define SI_CMDLINE 24
#define SI_RSDP 32
#define SI_MEMMAP 40
#define SI_MEMMAP_ENTRIES 48
#define HVM_START_MAGIC 0x336ec578

/* fw_cfg items (QEMU's FW_CFG_*) and DMA control bits */
#define CFG_INITRD_ADDR 0x0a
#define CFG_INITRD_SIZE 0x0b
#define CFG_KERNEL_ENTRY 0x10
#define CFG_INITRD_DATA 0x12
#define CFG_CMDLINE_SIZE 0x14
#define CFG_CMDLINE_DATA 0x15
#define DMA_SELECT_READ 0x0a

#define SMAP 0x534d4150
#define CODE_SEL 0x08
#define DATA_SEL 0x10

.globl _start
_start:
    .byte 0x55, 0xaa
    .byte 0                 /* size in 512-byte units: set by the builder */
    retf                    /* init entry: nothing to prepare */
    .org 0x18
    .word 0                 /* no PCI data structure */
    .word pnp
pnp:
    .ascii "$PnP"
    .byte 1                 /* revision */
    .byte (pnp_end - pnp) / 16
    .word 0                 /* no next header */
    .byte 0
    .byte 0                 /* checksum (unchecked) */
    .long 0                 /* device id */
    .word 0                 /* manufacturer */
    .word product
    .byte 0
    .word 0
    .byte 0
    .word 0                 /* no BCV */
    .word 0
    .word bev
    .word 0
    .word 0
pnp_end:
product:
    .asciz "pcihole PVH"

bev:
    cld
    xor ax, ax
    mov ds, ax
    mov es, ax
    /* Zero what we build. */
    mov di, PVH_DATA_ADDR
    mov cx, DATA_SIZE / 2
    rep stosw
    call memory_map
    cli
    call find_rsdp
    mov dword ptr [START_INFO + SI_MAGIC], HVM_START_MAGIC
    mov dword ptr [START_INFO + SI_VERSION], 1
    mov dword ptr [START_INFO + SI_MEMMAP], MEMMAP
    call load_cmdline
    call load_initrd
    mov bx, CFG_KERNEL_ENTRY
    call cfg_read32
    mov dword ptr [FARPTR], eax
    mov word ptr [FARPTR + 4], CODE_SEL
    /* A GDT in RAM, accessed bits set: flat 32-bit code and data. */
    mov dword ptr [GDT + 8], 0x0000ffff
    mov dword ptr [GDT + 12], 0x00cf9b00
    mov dword ptr [GDT + 16], 0x0000ffff
    mov dword ptr [GDT + 20], 0x00cf9300
    mov word ptr [GDTR], 23
    mov dword ptr [GDTR + 2], GDT
    lgdt [GDTR]
    mov eax, cr0
    or al, 1
    mov cr0, eax
    mov ax, DATA_SEL
    mov ds, ax
    mov es, ax
    mov fs, ax
    mov gs, ax
    mov ss, ax
    mov ebx, START_INFO
    jmp fword ptr [FARPTR]

/* The firmware's e820 map as hvm_memmap_table entries (addr, size, type, reserved). */
memory_map:
    xor ebx, ebx
    xor bp, bp
    mov di, MEMMAP
1:  mov eax, 0xe820
    mov edx, SMAP
    mov ecx, 20
    int 0x15
    jc 2f
    cmp eax, SMAP
    jne 2f
    mov dword ptr [di + 20], 0
    add di, 24
    inc bp
    test ebx, ebx
    jz 2f
    cmp bp, MEMMAP_MAX
    jb 1b
2:  movzx eax, bp
    mov dword ptr [START_INFO + SI_MEMMAP_ENTRIES], eax
    xor ax, ax
    mov es, ax
    ret

/* "RSD PTR " on a 16-byte boundary of 0xe0000-0xfffff. */
find_rsdp:
    mov ax, 0xe000
1:  mov es, ax
    cmp dword ptr es:[0], 0x20445352
    jne 2f
    cmp dword ptr es:[4], 0x20525450
    je 3f
2:  inc ax
    jnz 1b
3:  movzx eax, ax
    shl eax, 4
    mov dword ptr [START_INFO + SI_RSDP], eax
    xor ax, ax
    mov es, ax
    ret

load_cmdline:
    mov bx, CFG_CMDLINE_SIZE
    call cfg_read32
    test eax, eax
    jz 1f
    cmp eax, PVH_CMDLINE_MAX
    jae fail
    mov ecx, eax
    mov edi, PVH_CMDLINE_ADDR
    mov bx, CFG_CMDLINE_DATA
    call cfg_dma_read
    mov dword ptr [START_INFO + SI_CMDLINE], PVH_CMDLINE_ADDR
1:  ret

load_initrd:
    mov bx, CFG_INITRD_SIZE
    call cfg_read32
    test eax, eax
    jz 1f
    mov ecx, eax
    mov dword ptr [MODLIST + 8], eax
    mov bx, CFG_INITRD_ADDR
    call cfg_read32
    mov edi, eax
    mov dword ptr [MODLIST], eax
    mov bx, CFG_INITRD_DATA
    call cfg_dma_read
    mov dword ptr [START_INFO + SI_MODLIST], MODLIST
    mov dword ptr [START_INFO + SI_NR_MODULES], 1
1:  ret

/* EAX = the u32 item BX, through the port interface (ECX kept). */
cfg_read32:
    push ecx
    mov dx, FW_CFG_PORT
    mov ax, bx
    out dx, ax
    inc dx
    xor eax, eax
    mov cx, 4
1:  in al, dx
    ror eax, 8
    loop 1b
    pop ecx
    ret

/* Item BX, ECX bytes, to physical EDI through fw_cfg DMA (big-endian descriptor). */
cfg_dma_read:
    movzx eax, bx
    shl eax, 16
    or eax, DMA_SELECT_READ
    bswap eax
    mov dword ptr [DESC], eax
    mov eax, ecx
    bswap eax
    mov dword ptr [DESC + 4], eax
    mov dword ptr [DESC + 8], 0
    mov eax, edi
    bswap eax
    mov dword ptr [DESC + 12], eax
    mov dx, FW_CFG_DMA_PORT
    xor eax, eax
    out dx, eax
    mov eax, DESC
    bswap eax
    add dx, 4
    out dx, eax             /* the low half starts the transfer */
    cmp dword ptr [DESC], 0
    jne fail
    ret

/* Say so on COM1 (where the kernel's console would be) and stop. */
fail:
    cli
    mov si, offset failed
    mov dx, SERIAL_COM1_PORT
1:  mov al, cs:[si]
    test al, al
    jz 2f
    out dx, al
    inc si
    jmp 1b
2:  hlt
    jmp 2b
failed:
    .asciz "pcihole PVH ROM: a fw_cfg DMA transfer failed\r\n"

    .byte 0                 /* room for the checksum */
