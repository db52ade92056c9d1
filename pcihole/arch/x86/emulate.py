"""Instructions KVM's emulator refuses, decoded and finished outside it.

Where ring 0 runs through KVM's instruction emulator (``kvm_pvm`` hosts), some
instructions a guest kernel needs are refused (``int3``, ``popcnt``, ``fwait``,
``ldmxcsr``/``stmxcsr``, ``clac``/``stac``, ``cmpxchg16b``: KVM's emulator does the 8-byte
``cmpxchg8b`` but gives up on the 16-byte form; see shared/design/linux-guest.md). KVM hands
over the bytes at RIP; ``decode`` finds the instruction in them and ``emulate`` finishes
it on a ``CpuState`` through a ``GuestAccess`` (memory by linear address, MXCSR), so the
whole of it runs in unit tests without KVM. Anything not listed raises
``UnknownInstruction``: a monitor must stop rather than guess.

Not modelled: segment limits, canonical-address checks and the alignment check (EFLAGS.AC),
x87 exceptions pending at ``fwait``, VEX forms. ``cmpxchg16b`` is atomic only because
the machine has one vCPU, stopped while the monitor finishes the instruction.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Protocol

from pcihole.errors import EnvironmentProblem

MAX_LENGTH = 15
"""The longest x86 instruction."""

# RFLAGS bits
CF, PF, AF, ZF, SF, OF = 1 << 0, 1 << 2, 1 << 4, 1 << 6, 1 << 7, 1 << 11
AC = 1 << 18
ARITHMETIC_FLAGS = CF | PF | AF | ZF | SF | OF
CR0_MP, CR0_EM, CR0_TS, CR0_WP = 1 << 1, 1 << 2, 1 << 3, 1 << 16
CR4_OSFXSR = 1 << 9

# Exception vectors the emulated instructions raise
BP_VECTOR, UD_VECTOR, NM_VECTOR, GP_VECTOR, PF_VECTOR = 3, 6, 7, 13, 14

ES, CS, SS, DS, FS, GS = range(6)
"""Segment registers in encoding order (prefixes 26 2e 36 3e 64 65)."""
_SEGMENT_PREFIXES = {0x26: ES, 0x2E: CS, 0x36: SS, 0x3E: DS, 0x64: FS, 0x65: GS}
RAX, RCX, RDX, RBX, RSP, RBP = range(6)


class Mode(enum.Enum):
    """The processor's operating mode, as the one-line stop message names it."""

    REAL = "real"
    VM86 = "virtual-8086"
    PROTECTED = "protected"
    COMPATIBILITY = "compatibility"
    """Long mode running a 16/32-bit code segment."""
    LONG = "long"


class EmulationError(EnvironmentProblem):
    """KVM handed over an instruction the monitor cannot finish."""


class UnknownInstruction(EmulationError):
    """The bytes are not an instruction this module emulates."""


class GuestException(Exception):
    """The instruction faults: the guest takes exception ``vector`` (with ``error_code``
    when it has one; ``address`` goes to CR2 for a page fault) and nothing retires."""

    def __init__(self, vector: int, error_code: int | None = None, address: int = 0) -> None:
        super().__init__(f"exception {vector}")
        self.vector = vector
        self.error_code = error_code
        self.address = address


@dataclass
class CpuState:
    """What the emulator reads and changes: ``emulate`` updates gprs, rip and rflags."""

    gprs: list[int]
    """RAX, RCX, RDX, RBX, RSP, RBP, RSI, RDI, R8..R15: encoding order, 64-bit values."""
    rip: int
    rflags: int
    mode: Mode
    code_bits: int
    """The code segment's default size: 16, 32 or 64."""
    cpl: int = 0
    segment_bases: tuple[int, ...] = (0, 0, 0, 0, 0, 0)
    """ES, CS, SS, DS, FS, GS."""
    cr0: int = 0
    cr4: int = CR4_OSFXSR


class GuestAccess(Protocol):
    """Guest memory by linear address, and MXCSR. Reads and writes raise ``GuestException``
    where the guest would fault (a page not present, not writable)."""

    def read(self, linear: int, size: int) -> bytes: ...

    def write(self, linear: int, data: bytes) -> None: ...

    def mxcsr(self) -> tuple[int, int]:
        """(MXCSR, MXCSR_MASK: the bits MXCSR may hold)."""
        ...

    def set_mxcsr(self, value: int) -> None: ...


@dataclass(frozen=True, slots=True)
class MemoryOperand:
    """A ModRM memory operand: segment:[base + index * scale + displacement]."""

    segment: int
    base: int | None
    index: int | None
    scale: int
    displacement: int
    address_size: int
    rip_relative: bool = False


@dataclass(frozen=True, slots=True)
class Instruction:
    """A decoded instruction: ``reg`` is ModRM.reg (REX.R included), the r/m operand is
    ``register`` or ``memory``."""

    mnemonic: str
    length: int
    operand_size: int = 0
    reg: int = 0
    register: int | None = None
    memory: MemoryOperand | None = None


@dataclass(frozen=True, slots=True)
class Outcome:
    """A finished instruction, and the exception it raises as it retires (int3's #BP)."""

    instruction: Instruction
    exception: int | None = None


@dataclass
class _Prefixes:
    operand: bool = False
    address: bool = False
    rep: int = 0
    lock: bool = False
    segment: int | None = None
    rex: int = 0
    count: int = 0


def _prefixes(code: bytes, long_mode: bool) -> _Prefixes:
    found = _Prefixes()
    for byte in code[: MAX_LENGTH - 1]:
        if long_mode and 0x40 <= byte <= 0x4F:
            found.rex = byte
        elif byte in (0x66, 0x67, 0xF0, 0xF2, 0xF3) or byte in _SEGMENT_PREFIXES:
            found.rex = 0  # a REX counts only right before the opcode
            found.operand |= byte == 0x66
            found.address |= byte == 0x67
            found.lock |= byte == 0xF0
            found.rep = byte if byte in (0xF2, 0xF3) else found.rep
            found.segment = _SEGMENT_PREFIXES.get(byte, found.segment)
        else:
            return found
        found.count += 1
    raise UnknownInstruction(f"no opcode in {hex_bytes(code) or 'no bytes'} (prefixes only)")


def _sizes(prefixes: _Prefixes, code_bits: int) -> tuple[int, int]:
    """(operand size, address size) in bits."""
    if code_bits == 64:
        operand = 64 if prefixes.rex & 8 else 16 if prefixes.operand else 32
        return operand, 32 if prefixes.address else 64
    toggled = {16: 32, 32: 16}
    operand = toggled[code_bits] if prefixes.operand else code_bits
    return operand, toggled[code_bits] if prefixes.address else code_bits


def hex_bytes(code: bytes) -> str:
    return " ".join(f"{byte:02x}" for byte in code)


def decode(code: bytes, code_bits: int) -> Instruction:
    """The instruction at the start of ``code`` (KVM's fetch window: trailing bytes are
    the next instructions') for a code segment of ``code_bits`` (16, 32, 64)."""
    if code_bits not in (16, 32, 64):
        raise ValueError(f"code size {code_bits}, not 16, 32 or 64")
    prefixes = _prefixes(code, code_bits == 64)
    position = prefixes.count
    opcode = code[position : position + 3]
    plain = not (prefixes.operand or prefixes.rep or prefixes.lock)
    if opcode[:1] == b"\xcc" and plain:
        return Instruction("int3", position + 1)
    if opcode[:1] == b"\x9b" and plain:
        return Instruction("fwait", position + 1)
    if opcode[:2] == b"\x0f\x01" and opcode[2:] in (b"\xca", b"\xcb") and plain:
        return Instruction("clac" if opcode[2] == 0xCA else "stac", position + 3)
    if opcode[:2] == b"\x0f\xb8" and prefixes.rep == 0xF3 and not prefixes.lock:
        return _with_modrm("popcnt", code, position + 2, prefixes, code_bits)
    if opcode[:2] == b"\x0f\xae" and plain and len(opcode) == 3:
        reg, mod = (opcode[2] >> 3) & 7, opcode[2] >> 6
        if mod != 3 and reg in (2, 3):
            name = "ldmxcsr" if reg == 2 else "stmxcsr"
            return _with_modrm(name, code, position + 2, prefixes, code_bits)
    if opcode[:2] == b"\x0f\xc7" and len(opcode) == 3 and not prefixes.rep:
        # 0f c7 /1 with REX.W; without it, cmpxchg8b, which KVM finishes itself
        reg, mod = (opcode[2] >> 3) & 7, opcode[2] >> 6
        if mod != 3 and reg == 1 and prefixes.rex & 8:
            return _with_modrm("cmpxchg16b", code, position + 2, prefixes, code_bits)
    raise UnknownInstruction(f"no emulation for {hex_bytes(code[:MAX_LENGTH])}")


def _with_modrm(
    mnemonic: str, code: bytes, position: int, prefixes: _Prefixes, code_bits: int
) -> Instruction:
    operand_size, address_size = _sizes(prefixes, code_bits)
    if position >= len(code):
        raise UnknownInstruction(f"{mnemonic}: the bytes end before its ModRM")
    modrm = code[position]
    mod, reg, rm = modrm >> 6, ((modrm >> 3) & 7) | (prefixes.rex & 4) << 1, modrm & 7
    if mod == 3:
        register = rm | (prefixes.rex & 1) << 3
        return Instruction(mnemonic, position + 1, operand_size, reg, register=register)
    if address_size == 16:
        memory, end = _memory16(code, position + 1, mod, rm, prefixes.segment)
    else:
        memory, end = _memory32(code, position + 1, mod, rm, prefixes, address_size, code_bits)
    if end > MAX_LENGTH or end > len(code):
        raise UnknownInstruction(f"{mnemonic}: longer than the {len(code)} bytes given")
    return Instruction(mnemonic, end, operand_size, reg, memory=memory)


def _displacement(code: bytes, position: int, size: int) -> int:
    return int.from_bytes(code[position : position + size], "little", signed=True)


_MODRM16 = [(3, 6), (3, 7), (5, 6), (5, 7), (6, None), (7, None), (5, None), (3, None)]
"""16-bit r/m: (base, index) as gpr numbers (BX+SI, BX+DI, BP+SI, BP+DI, SI, DI, BP, BX)."""


def _memory16(
    code: bytes, position: int, mod: int, rm: int, segment: int | None
) -> tuple[MemoryOperand, int]:
    base: int | None = _MODRM16[rm][0]
    index = _MODRM16[rm][1]
    size = {0: 0, 1: 1, 2: 2}[mod]
    if mod == 0 and rm == 6:
        base, size = None, 2  # disp16 alone
    default = SS if base == RBP else DS
    memory = MemoryOperand(
        default if segment is None else segment,
        base,
        index,
        1,
        _displacement(code, position, size),
        16,
    )
    return memory, position + size


def _memory32(
    code: bytes,
    position: int,
    mod: int,
    rm: int,
    prefixes: _Prefixes,
    address_size: int,
    code_bits: int,
) -> tuple[MemoryOperand, int]:
    rex = prefixes.rex
    base: int | None = rm | (rex & 1) << 3
    index: int | None = None
    scale = 1
    if rm == 4:  # a SIB byte follows
        if position >= len(code):
            raise UnknownInstruction("the bytes end before the SIB byte")
        sib = code[position]
        position += 1
        scale = 1 << (sib >> 6)
        index = ((sib >> 3) & 7) | (rex & 2) << 2
        index = None if index == RSP else index  # 4 means none (r12 is an index)
        base = (sib & 7) | (rex & 1) << 3
        if sib & 7 == 5 and mod == 0:
            base = None  # disp32 alone
    rip_relative = rm == 5 and mod == 0
    if rip_relative:
        base = None
    size = 4 if mod == 2 or (mod == 0 and base is None) else mod
    default = SS if base in (RSP, RBP) else DS
    memory = MemoryOperand(
        default if prefixes.segment is None else prefixes.segment,
        base,
        index,
        scale,
        _displacement(code, position, size),
        address_size,
        rip_relative and code_bits == 64,
    )
    return memory, position + size


def linear_address(memory: MemoryOperand, state: CpuState, next_rip: int) -> int:
    """Where ``memory`` points for the instruction ending at ``next_rip``."""
    address = memory.displacement
    if memory.rip_relative:
        address += next_rip
    if memory.base is not None:
        address += state.gprs[memory.base]
    if memory.index is not None:
        address += state.gprs[memory.index] * memory.scale
    address &= (1 << memory.address_size) - 1
    if state.mode is Mode.LONG:
        base = state.segment_bases[memory.segment] if memory.segment in (FS, GS) else 0
        return (address + base) & (1 << 64) - 1
    return (address + state.segment_bases[memory.segment]) & 0xFFFFFFFF


def emulate(code: bytes, state: CpuState, access: GuestAccess) -> Outcome:
    """Finish the instruction at the start of ``code`` on ``state``; raises
    ``UnknownInstruction``, or ``GuestException`` (``state`` then unchanged)."""
    instruction = decode(code, state.code_bits)
    next_rip = state.rip + instruction.length
    if state.code_bits < 64:
        next_rip &= 0xFFFFFFFF if state.code_bits == 32 else 0xFFFF
    exception = None
    name = instruction.mnemonic
    if name == "int3":
        exception = BP_VECTOR
    elif name == "fwait":
        if state.cr0 & CR0_MP and state.cr0 & CR0_TS:
            raise GuestException(NM_VECTOR)
    elif name in ("clac", "stac"):
        if state.cpl != 0:
            raise GuestException(UD_VECTOR)
        state.rflags = state.rflags | AC if name == "stac" else state.rflags & ~AC
    elif name == "popcnt":
        _popcnt(instruction, state, access, next_rip)
    elif name == "cmpxchg16b":
        _cmpxchg16b(instruction, state, access, next_rip)
    else:
        _mxcsr(instruction, state, access, next_rip)
    state.rip = next_rip
    return Outcome(instruction, exception)


def _popcnt(instruction: Instruction, state: CpuState, access: GuestAccess, next_rip: int) -> None:
    size = instruction.operand_size
    if instruction.memory is not None:
        address = linear_address(instruction.memory, state, next_rip)
        source = int.from_bytes(access.read(address, size // 8), "little")
    else:
        assert instruction.register is not None
        source = state.gprs[instruction.register] & ((1 << size) - 1)
    count = source.bit_count()
    old = state.gprs[instruction.reg]
    if size == 16:
        state.gprs[instruction.reg] = (old & ~0xFFFF) | count
    else:
        state.gprs[instruction.reg] = count  # a 32-bit write clears bits 63:32
    state.rflags = (state.rflags & ~ARITHMETIC_FLAGS) | (ZF if source == 0 else 0)


def _cmpxchg16b(
    instruction: Instruction, state: CpuState, access: GuestAccess, next_rip: int
) -> None:
    """Compare RDX:RAX with m128: equal, store RCX:RBX and set ZF; else load it into
    RDX:RAX and clear ZF. No other flag changes."""
    assert instruction.memory is not None
    address = linear_address(instruction.memory, state, next_rip)
    if address % 16:
        raise GuestException(GP_VECTOR, 0)
    gprs = state.gprs
    old = int.from_bytes(access.read(address, 16), "little")
    equal = old == gprs[RDX] << 64 | gprs[RAX]
    new = gprs[RCX] << 64 | gprs[RBX] if equal else old
    access.write(address, new.to_bytes(16, "little"))  # the locked cycle writes either way
    if not equal:
        gprs[RAX], gprs[RDX] = old & (1 << 64) - 1, old >> 64
    state.rflags = state.rflags | ZF if equal else state.rflags & ~ZF


def _mxcsr(instruction: Instruction, state: CpuState, access: GuestAccess, next_rip: int) -> None:
    if state.cr0 & CR0_EM or not state.cr4 & CR4_OSFXSR:
        raise GuestException(UD_VECTOR)
    if state.cr0 & CR0_TS:
        raise GuestException(NM_VECTOR)
    assert instruction.memory is not None
    address = linear_address(instruction.memory, state, next_rip)
    value, mask = access.mxcsr()
    if instruction.mnemonic == "stmxcsr":
        access.write(address, value.to_bytes(4, "little"))
        return
    loaded = int.from_bytes(access.read(address, 4), "little")
    if loaded & ~mask:
        raise GuestException(GP_VECTOR, 0)
    access.set_mxcsr(loaded)
