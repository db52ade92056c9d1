/*
 * A stand-in for a PVH kernel: entered as the PVH ABI enters Linux (32-bit protected
 * mode, flat segments, paging off, EBX = hvm_start_info), it prints on the debug console
 * what it was given, then writes 0x10 to debug-exit (status 33):
 *   pvh magic=336ec578 version=00000001 cs=00000008 ds=00000010 ss=00000010
 *   pvh cr0.pe.pg=00000001 if=00000000
 *   pvh cmdline=<the command line>
 *   pvh modules=00000001 initrd=<its bytes>            (or modules=00000000)
 *   pvh rsdp=<8 bytes there>
 *   pvh e820 <start hi><lo> <end hi><lo> <type>       (one per memory map entry)
 *   pvh end
 * Linked to run at 0x100000.
 */
.intel_syntax noprefix
.code32
.text
.globl _start
_start:
    mov esi, ebx
    mov dx, DEBUGCON_PORT
    lea edi, m_magic
    call puts
    mov eax, [esi]
    call hex32
    lea edi, m_version
    call puts
    mov eax, [esi + 4]
    call hex32
    lea edi, m_cs
    call puts
    xor eax, eax
    mov ax, cs
    call hex32
    lea edi, m_ds
    call puts
    xor eax, eax
    mov ax, ds
    call hex32
    lea edi, m_ss
    call puts
    xor eax, eax
    mov ax, ss
    call hex32
    lea edi, m_cr0
    call puts
    mov eax, cr0
    and eax, 0x80000001
    call hex32
    lea edi, m_if
    call puts
    pushfd
    pop eax
    and eax, 0x200
    call hex32
    lea edi, m_cmdline
    call puts
    mov edi, [esi + 24]
    test edi, edi
    jz 1f
    call puts
1:  lea edi, m_modules
    call puts
    mov eax, [esi + 12]
    call hex32
    test eax, eax
    jz 2f
    lea edi, m_initrd
    call puts
    mov ebx, [esi + 16]
    mov edi, [ebx]
    mov ecx, [ebx + 8]
    call putn
2:  lea edi, m_rsdp
    call puts
    mov edi, [esi + 32]
    mov ecx, 8
    call putn
    mov ebx, [esi + 40]
    mov ecx, [esi + 48]
3:  test ecx, ecx
    jz 4f
    lea edi, m_e820
    call puts
    mov eax, [ebx + 4]
    call hex32
    mov eax, [ebx]
    call hex32
    mov al, ' '
    out dx, al
    mov eax, [ebx]
    add eax, [ebx + 8]
    mov edi, [ebx + 4]
    adc edi, [ebx + 12]
    push eax
    mov eax, edi
    call hex32
    pop eax
    call hex32
    mov al, ' '
    out dx, al
    mov eax, [ebx + 16]
    call hex32
    add ebx, 24
    dec ecx
    jmp 3b
4:  lea edi, m_end
    call puts
    mov eax, 0x10
    out DEBUG_EXIT_PORT, eax
5:  hlt
    jmp 5b

/* The NUL-terminated string at EDI. */
puts:
    mov al, [edi]
    test al, al
    jz 1f
    out dx, al
    inc edi
    jmp puts
1:  ret

/* ECX bytes at EDI. */
putn:
    jecxz 1f
    mov al, [edi]
    out dx, al
    inc edi
    dec ecx
    jmp putn
1:  ret

/* EAX in 8 hex digits. */
hex32:
    push ecx
    mov ecx, 8
1:  rol eax, 4
    push eax
    and al, 0xf
    add al, '0'
    cmp al, '9'
    jbe 2f
    add al, 'a' - '0' - 10
2:  out dx, al
    pop eax
    loop 1b
    pop ecx
    ret

m_magic: .asciz "pvh magic="
m_version: .asciz " version="
m_cs: .asciz " cs="
m_ds: .asciz " ds="
m_ss: .asciz " ss="
m_cr0: .asciz "\npvh cr0.pe.pg="
m_if: .asciz " if="
m_cmdline: .asciz "\npvh cmdline="
m_modules: .asciz "\npvh modules="
m_initrd: .asciz " initrd="
m_rsdp: .asciz "\npvh rsdp="
m_e820: .asciz "\npvh e820 "
m_end: .asciz "\npvh end\n"
