"""The decoder and emulator of instructions KVM hands over, without KVM."""

from __future__ import annotations

import struct

import pytest

from pcihole.arch.x86.emulate import (
    AC,
    ARITHMETIC_FLAGS,
    CR0_MP,
    CR0_TS,
    DS,
    FS,
    GS,
    SS,
    ZF,
    CpuState,
    GuestException,
    MemoryOperand,
    Mode,
    UnknownInstruction,
    decode,
    emulate,
    linear_address,
)
from pcihole.kvm import abi, exits

RAX, RCX, RDX, RBX, RSP, RBP, RSI, RDI = range(8)
R11, R12, R13 = 11, 12, 13


class Access:
    """Linear memory as a dict of bytes (absent bytes read 0), MXCSR as a value."""

    def __init__(self, mxcsr: int = 0x1F80, mask: int = 0xFFFF) -> None:
        self.memory: dict[int, int] = {}
        self.value, self.mask = mxcsr, mask
        self.reads: list[tuple[int, int]] = []

    def read(self, linear: int, size: int) -> bytes:
        self.reads.append((linear, size))
        return bytes(self.memory.get(linear + i, 0) for i in range(size))

    def write(self, linear: int, data: bytes) -> None:
        for i, byte in enumerate(data):
            self.memory[linear + i] = byte

    def put(self, linear: int, value: int, size: int) -> None:
        self.write(linear, value.to_bytes(size, "little"))

    def mxcsr(self) -> tuple[int, int]:
        return self.value, self.mask

    def set_mxcsr(self, value: int) -> None:
        self.value = value


def state(mode: Mode = Mode.LONG, bits: int = 64, **gprs: int) -> CpuState:
    names = [
        "rax",
        "rcx",
        "rdx",
        "rbx",
        "rsp",
        "rbp",
        "rsi",
        "rdi",
        *(f"r{i}" for i in range(8, 16)),
    ]
    return CpuState([gprs.get(n, 0) for n in names], 0x1000, 0x2, mode, bits)


def h(text: str) -> bytes:
    return bytes.fromhex(text)


# --- decoding ------------------------------------------------------------------------------
def test_register_popcnt_as_linux_uses_it() -> None:
    insn = decode(h("f3480fb8c7") + b"\x90" * 10, 64)  # popcnt rax, rdi + the next bytes
    assert (insn.mnemonic, insn.length, insn.operand_size) == ("popcnt", 5, 64)
    assert (insn.reg, insn.register, insn.memory) == (RAX, RDI, None)


@pytest.mark.parametrize(
    ("code", "bits", "size", "reg", "register"),
    [
        ("66f3450fb8dc", 64, 16, R11, R12),  # popcnt r11w, r12w: 66 and REX.R/B
        ("f30fb8c3", 64, 32, RAX, RBX),  # no REX: 32-bit
        ("48f30fb8c7", 64, 32, RAX, RDI),  # a REX before a prefix does not count
        ("f30fb8c3", 16, 16, RAX, RBX),  # real mode: 16-bit operands
        ("66f30fb8c3", 16, 32, RAX, RBX),
        ("66f30fb8c3", 32, 16, RAX, RBX),
    ],
)
def test_operand_sizes_and_rex(code: str, bits: int, size: int, reg: int, register: int) -> None:
    insn = decode(h(code), bits)
    assert (insn.operand_size, insn.reg, insn.register, insn.length) == (
        size,
        reg,
        register,
        len(h(code)),
    )


@pytest.mark.parametrize(
    ("code", "bits", "memory"),
    [
        # ldmxcsr [rsp + 4], as Linux's kernel_fpu_begin_mask: SIB base RSP, SS
        ("0fae542404", 64, MemoryOperand(SS, RSP, None, 1, 4, 64)),
        # popcnt ecx, [rbx + rsi * 4 + 8]
        ("f30fb84cb308", 64, MemoryOperand(DS, RBX, RSI, 4, 8, 64)),
        # stmxcsr [0x100100]: SIB with neither base nor index, disp32
        ("0fae1c2500011000", 64, MemoryOperand(DS, None, None, 1, 0x100100, 64)),
        # popcnt rax, [rax + r12 * 4]: REX.X reaches r12 (index 4 + X is a register)
        ("f34a0fb804a0", 64, MemoryOperand(DS, RAX, R12, 4, 0, 64)),
        # popcnt rax, [r13 + 0]: r13 needs a disp8, mod 0 would be RIP-relative
        ("f3490fb84500", 64, MemoryOperand(DS, R13, None, 1, 0, 64)),
        # RIP-relative, REX.B does not change it
        ("f3410fb805f0ffffff", 64, MemoryOperand(DS, None, None, 1, -16, 64, True)),
        # 32-bit code: mod 0 rm 5 is an absolute disp32
        ("f30fb80500100000", 32, MemoryOperand(DS, None, None, 1, 0x1000, 32)),
        # 16-bit addressing: [bp + 2] on SS, [bx + si] on DS, [0x1234]
        ("f30fb84602", 16, MemoryOperand(SS, RBP, None, 1, 2, 16)),
        ("f30fb800", 16, MemoryOperand(DS, RBX, RSI, 1, 0, 16)),
        ("f30fb8063412", 16, MemoryOperand(DS, None, None, 1, 0x1234, 16)),
        # segment override and address-size prefix
        ("64f3480fb8042508000000", 64, MemoryOperand(FS, None, None, 1, 8, 64)),
        ("67f30fb800", 64, MemoryOperand(DS, RAX, None, 1, 0, 32)),
        # lock cmpxchg16b gs:[0x400]: segment override, LOCK, SIB without base or index
        ("65f0480fc70c2500040000", 64, MemoryOperand(GS, None, None, 1, 0x400, 64)),
        # cmpxchg16b [rip + 0x20]; with REX.B as well ([r14 + r9 * 8 + 0x10])
        ("480fc70d20000000", 64, MemoryOperand(DS, None, None, 1, 0x20, 64, True)),
        ("4b0fc74cce10", 64, MemoryOperand(DS, 14, 9, 8, 0x10, 64)),
    ],
)
def test_memory_operands(code: str, bits: int, memory: MemoryOperand) -> None:
    insn = decode(h(code) + b"\xcc" * 4, bits)
    assert insn.memory == memory
    assert insn.length == len(h(code))


@pytest.mark.parametrize(
    ("code", "bits", "mnemonic", "length"),
    [
        ("cc", 64, "int3", 1),
        ("9b", 32, "fwait", 1),
        ("0f01ca", 64, "clac", 3),
        ("0f01cb", 64, "stac", 3),
        ("0fae5c2404", 64, "stmxcsr", 5),
        ("480fc70f", 64, "cmpxchg16b", 4),
        ("f0480fc70f", 64, "cmpxchg16b", 5),
        ("66480fc70f", 64, "cmpxchg16b", 5),
    ],
)
def test_the_other_instructions(code: str, bits: int, mnemonic: str, length: int) -> None:
    insn = decode(h(code) + h("90909090"), bits)
    assert (insn.mnemonic, insn.length) == (mnemonic, length)


@pytest.mark.parametrize(
    ("code", "bits"),
    [
        ("0f0b", 64),  # ud2
        ("0fae23", 64),  # xsave [rbx]
        ("0faee8", 64),  # lfence: 0f ae with a register operand
        ("f00f01ca", 64),  # lock clac
        ("f0f30fb8c0", 64),  # lock popcnt
        ("0fb8c0", 64),  # jmpe / no F3: not popcnt
        ("40cc", 32),  # 0x40 is inc eax outside 64-bit mode, not a REX
        ("0fc70f", 64),  # cmpxchg8b: KVM finishes it itself
        ("f00fc70f", 32),  # lock cmpxchg8b in 32-bit code
        ("480fc7cf", 64),  # 0f c7 /1 with a register operand is undefined
        ("480fc737", 64),  # 0f c7 /6 with memory: vmptrld, not ours
        ("48f00fc70f", 64),  # the REX before LOCK does not count: cmpxchg8b
        ("f3480fc70f", 64),  # with a REP prefix: not decoded
        ("f30fb8", 64),  # the bytes end before the ModRM
        ("f30fb884", 64),  # ... before the SIB
        ("f30fb80510", 64),  # ... inside the displacement
        ("66" * 15, 64),  # prefixes alone
        ("", 64),
    ],
)
def test_unknown_bytes_are_a_clear_error(code: str, bits: int) -> None:
    with pytest.raises(UnknownInstruction) as caught:
        decode(h(code), bits)
    assert str(caught.value)


def test_unknown_error_names_the_bytes() -> None:
    with pytest.raises(UnknownInstruction, match="0f 0b 90"):
        decode(h("0f0b90"), 64)


# --- executing -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("code", "value", "before", "after"),
    [
        ("f3480fb8c7", 0xF0F0F0F0F0F0F0F0, 0xFFFFFFFFFFFFFFFF, 32),  # r64
        ("f30fb8c7", 0xFFFFFFFF00000007, 0xFFFFFFFFFFFFFFFF, 3),  # r32 clears 63:32
        ("66f30fb8c7", 0x000000000000F00F, 0x1111222233334444, 0x1111222233330008),  # r16
        ("f3480fb8c7", 0, 0x55, 0),
    ],
)
def test_popcnt_result_and_flags(code: str, value: int, before: int, after: int) -> None:
    cpu = state(rax=before, rdi=value)
    cpu.rflags = 0x2 | ARITHMETIC_FLAGS | AC
    outcome = emulate(h(code), cpu, Access())
    assert cpu.gprs[RAX] == after
    assert cpu.rip == 0x1000 + len(h(code))
    assert cpu.rflags == 0x2 | AC | (ZF if value == 0 else 0)
    assert outcome.exception is None


def test_popcnt_from_rip_relative_memory() -> None:
    access, cpu = Access(), state()
    access.put(0x1000 + 9 + 0x10, 0x0102040810204080, 8)
    emulate(h("f3480fb81510000000"), cpu, access)
    assert cpu.gprs[RDX] == 8
    assert access.reads == [(0x1019, 8)]


def test_linear_addresses_wrap_and_add_segment_bases() -> None:
    cpu = state(rax=0x100000010)
    insn = decode(h("67f30fb800"), 64)
    assert insn.memory is not None
    assert linear_address(insn.memory, cpu, 0) == 0x10  # 32-bit address size
    cpu.segment_bases = (0, 0, 0, 0x5000, 0x7000, 0)
    fs = decode(h("64f3480fb8042508000000"), 64).memory
    ds = decode(h("f3480fb8042508000000"), 64).memory
    assert fs is not None and ds is not None
    assert linear_address(fs, cpu, 0) == 0x7008  # FS base counts in long mode
    assert linear_address(ds, cpu, 0) == 8  # DS base does not
    cpu.mode = Mode.PROTECTED
    assert linear_address(ds, cpu, 0) == 0x5008


def test_ldmxcsr_and_stmxcsr() -> None:
    access, cpu = Access(), state(rsp=0x8000)
    access.put(0x8004, 0x9FC0, 4)
    emulate(h("0fae542404"), cpu, access)
    assert access.value == 0x9FC0
    emulate(h("0fae1c2500011000"), cpu, access)
    assert access.read(0x100100, 4) == (0x9FC0).to_bytes(4, "little")
    assert cpu.rip == 0x1000 + 5 + 8


def test_ldmxcsr_reserved_bits_raise_gp_and_retire_nothing() -> None:
    access, cpu = Access(mask=0xFFFF), state(rsp=0x8000)
    access.put(0x8004, 0x10000, 4)
    with pytest.raises(GuestException) as caught:
        emulate(h("0fae542404"), cpu, access)
    assert (caught.value.vector, caught.value.error_code) == (13, 0)
    assert (cpu.rip, access.value) == (0x1000, 0x1F80)


def test_int3_retires_then_raises_bp() -> None:
    cpu = state()
    outcome = emulate(h("cc90"), cpu, Access())
    assert (cpu.rip, outcome.exception) == (0x1001, 3)


def test_clac_stac_and_their_privilege() -> None:
    cpu = state()
    emulate(h("0f01cb"), cpu, Access())
    assert cpu.rflags & AC
    emulate(h("0f01ca"), cpu, Access())
    assert not cpu.rflags & AC
    cpu.cpl = 3
    with pytest.raises(GuestException) as caught:
        emulate(h("0f01cb"), cpu, Access())
    assert caught.value.vector == 6


def test_fwait_skips_unless_the_fpu_is_switched_away() -> None:
    cpu = state()
    emulate(h("9b"), cpu, Access())
    assert cpu.rip == 0x1001
    cpu.cr0 = CR0_MP | CR0_TS
    with pytest.raises(GuestException) as caught:
        emulate(h("9b"), cpu, Access())
    assert caught.value.vector == 7


def _cmpxchg16b_state(memory: tuple[int, int]) -> tuple[CpuState, Access]:
    """RDX:RAX = 2:1, RCX:RBX = 4:3, ``memory`` (low, high) at 0x8010 = [rdi + 0x10]."""
    cpu = state(rax=1, rdx=2, rbx=3, rcx=4, rdi=0x8000)
    cpu.rflags = 0x2 | AC | (ARITHMETIC_FLAGS & ~ZF)
    access = Access()
    access.put(0x8010, memory[0] | memory[1] << 64, 16)
    return cpu, access


def test_cmpxchg16b_equal_stores_rcx_rbx_and_sets_zf_alone() -> None:
    cpu, access = _cmpxchg16b_state((1, 2))
    emulate(h("f0480fc74f10"), cpu, access)  # lock cmpxchg16b [rdi + 0x10]
    assert access.read(0x8010, 16) == (3 | 4 << 64).to_bytes(16, "little")
    assert cpu.gprs[:4] == [1, 4, 2, 3]  # RAX, RCX, RDX, RBX as they were
    assert cpu.rflags == 0x2 | AC | ARITHMETIC_FLAGS
    assert cpu.rip == 0x1006


@pytest.mark.parametrize("memory", [(1, 0xFFFFFFFFFFFFFFFF), (0x8000000000000000, 2)])
def test_cmpxchg16b_unequal_loads_rdx_rax_and_clears_zf_alone(memory: tuple[int, int]) -> None:
    cpu, access = _cmpxchg16b_state(memory)
    cpu.rflags |= ZF
    emulate(h("480fc74f10"), cpu, access)
    assert (cpu.gprs[RAX], cpu.gprs[RDX]) == memory
    assert (cpu.gprs[RBX], cpu.gprs[RCX]) == (3, 4)
    assert access.read(0x8010, 16) == (memory[0] | memory[1] << 64).to_bytes(16, "little")
    assert cpu.rflags == 0x2 | AC | (ARITHMETIC_FLAGS & ~ZF)
    assert cpu.rip == 0x1005


class ReadOnly(Access):
    def write(self, linear: int, data: bytes) -> None:
        raise GuestException(14, 0b011, linear)


def test_cmpxchg16b_writes_even_when_unequal() -> None:
    """The locked cycle writes the old value back: a read-only page faults either way."""
    for memory in ((1, 2), (5, 6)):
        cpu, access = _cmpxchg16b_state(memory)
        readonly = ReadOnly()
        readonly.memory = access.memory
        with pytest.raises(GuestException) as caught:
            emulate(h("480fc74f10"), cpu, readonly)
        assert (caught.value.vector, caught.value.address) == (14, 0x8010)
        assert (cpu.gprs[RAX], cpu.gprs[RDX], cpu.rip) == (1, 2, 0x1000)


@pytest.mark.parametrize("offset", [0x8, 0x4, 0x1, 0xF])
def test_cmpxchg16b_misaligned_raises_gp_and_touches_nothing(offset: int) -> None:
    cpu, access = _cmpxchg16b_state((1, 2))
    cpu.gprs[RDI] += offset
    with pytest.raises(GuestException) as caught:
        emulate(h("480fc74f10"), cpu, access)
    assert (caught.value.vector, caught.value.error_code) == (13, 0)
    assert access.reads == []
    assert (cpu.rip, cpu.gprs[RAX], cpu.rflags & ZF) == (0x1000, 1, 0)


def test_cmpxchg16b_alignment_is_the_linear_address_s() -> None:
    """With GS base 0x8008, gs:[0x10] (an aligned offset) is misaligned, gs:[0x8] is not."""
    cpu, access = _cmpxchg16b_state((1, 2))
    cpu.segment_bases = (0, 0, 0, 0, 0, 0x8008)
    with pytest.raises(GuestException) as caught:
        emulate(h("65480fc70c2510000000"), cpu, access)
    assert caught.value.vector == 13
    emulate(h("65480fc70c2508000000"), cpu, access)  # linear 0x8010
    assert cpu.rflags & ZF
    assert access.read(0x8010, 16) == (3 | 4 << 64).to_bytes(16, "little")


# --- the exit as KVM writes it -------------------------------------------------------------
def _run_page(ndata: int, flags: int, window: bytes) -> bytearray:
    page = bytearray(4096)
    struct.pack_into("<I", page, abi.RUN_EXIT_REASON_OFFSET, abi.ExitReason.INTERNAL_ERROR)
    struct.pack_into(
        "<IIQB",
        page,
        abi.RUN_EXIT_OFFSET,
        abi.KVM_INTERNAL_ERROR_EMULATION,
        ndata,
        flags,
        len(window),
    )
    page[abi.RUN_EXIT_OFFSET + 17 : abi.RUN_EXIT_OFFSET + 17 + len(window)] = window
    return page


def test_emulation_failure_exit_carries_the_fetched_window() -> None:
    window = h("f3480fb8c7") + bytes(range(10))
    decoded = exits.decode(_run_page(3, 1, window))
    assert isinstance(decoded, exits.EmulationFailure)
    assert decoded.window == window
    # no bytes when KVM says it has none, or when ndata cannot hold them
    for ndata, flags in ((3, 0), (2, 1), (0, 0)):
        empty = exits.decode(_run_page(ndata, flags, window))
        assert isinstance(empty, exits.EmulationFailure) and empty.window == b""
