/* Run a list of configuration accesses the host gives, in order.
 *   PARAM(1) number of operations; operation i is three slots from PARAM(2 + 3 * i):
 *     kind << 8 | size (1, 2 or 4), address, value
 *   kinds: 0 ECAM read of the guest address: sync(value read)
 *          1 ECAM write of value to the guest address
 *          2 mechanism #1 read: address is the CF8 value, its low two bits pick the
 *            data port CFC + n: sync(value read)
 *          3 mechanism #1 write of value, address as for 2
 * Then done. Unknown kinds or sizes fail GUEST_ASSERT. */
#include "runtime.inc"

#define OPS r15
#define LEFT r14
#define SIZE r13
#define ADDRESS r12
#define VALUE r11

main:
    mov LEFT, PARAM(1)
    mov OPS, PARAMS_ADDR + 16
    test LEFT, LEFT
    jz finished
operation:
    movzx SIZE, byte ptr [OPS]
    movzx ebx, byte ptr [OPS + 1]        /* rbx: kind */
    mov ADDRESS, qword ptr [OPS + 8]
    mov VALUE, qword ptr [OPS + 16]
    cmp rbx, 2
    jb memory
    /* mechanism #1: latch the dword address, then use data port CFC + low bits */
    mov eax, r12d
    and eax, ~3
    mov dx, PCI_CONFIG_ADDRESS_PORT
    out dx, eax
    mov edx, r12d
    and edx, 3
    add edx, PCI_CONFIG_DATA_PORT
    cmp rbx, 3
    je port_write
    cmp rbx, 2
    GUEST_ASSERT(je)
    cmp SIZE, 1
    je port_read1
    cmp SIZE, 2
    je port_read2
    GUEST_ASSERT_EQ(SIZE, 4)
    in eax, dx
    jmp report
port_read1:
    xor eax, eax
    in al, dx
    jmp report
port_read2:
    xor eax, eax
    in ax, dx
    jmp report
port_write:
    mov rax, VALUE
    cmp SIZE, 1
    je port_write1
    cmp SIZE, 2
    je port_write2
    GUEST_ASSERT_EQ(SIZE, 4)
    out dx, eax
    jmp next
port_write1:
    out dx, al
    jmp next
port_write2:
    out dx, ax
    jmp next
memory:
    cmp rbx, 1
    je memory_write
    cmp SIZE, 1
    je memory_read1
    cmp SIZE, 2
    je memory_read2
    GUEST_ASSERT_EQ(SIZE, 4)
    mov eax, dword ptr [ADDRESS]
    jmp report
memory_read1:
    movzx eax, byte ptr [ADDRESS]
    jmp report
memory_read2:
    movzx eax, word ptr [ADDRESS]
    jmp report
memory_write:
    mov rax, VALUE
    cmp SIZE, 1
    je memory_write1
    cmp SIZE, 2
    je memory_write2
    GUEST_ASSERT_EQ(SIZE, 4)
    mov dword ptr [ADDRESS], eax
    jmp next
memory_write1:
    mov byte ptr [ADDRESS], al
    jmp next
memory_write2:
    mov word ptr [ADDRESS], ax
    jmp next
report:
    GUEST_SYNC(rax)
next:
    add OPS, 24
    dec LEFT
    jnz operation
finished:
    GUEST_DONE
