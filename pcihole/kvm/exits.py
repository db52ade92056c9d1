"""Typed VM exits, and their decoding from ``struct kvm_run``.

Decoding only reads the shared ``kvm_run`` page and builds a value; acting on an exit
(answering a read, counting it) is the run loop's job (``pcihole.machine.runloop``).
"""

from __future__ import annotations

import mmap
import struct
from collections.abc import Callable
from dataclasses import dataclass

from pcihole.kvm import abi


@dataclass(frozen=True, slots=True)
class IoIn:
    """The guest read ``size`` bytes ``count`` times from ``port``; answer before the next run."""

    port: int
    size: int
    count: int


@dataclass(frozen=True, slots=True)
class IoOut:
    """The guest wrote ``data`` (``size`` bytes, ``count`` times) to ``port``."""

    port: int
    size: int
    count: int
    data: bytes


@dataclass(frozen=True, slots=True)
class MmioRead:
    """The guest read ``size`` bytes at guest-physical ``address``; answer before the next run."""

    address: int
    size: int


@dataclass(frozen=True, slots=True)
class MmioWrite:
    """The guest wrote ``data`` (``size`` bytes) at guest-physical ``address``."""

    address: int
    size: int
    data: bytes


@dataclass(frozen=True, slots=True)
class Hlt:
    """The guest executed HLT with interrupts it cannot receive: it is finished or stuck."""


@dataclass(frozen=True, slots=True)
class Shutdown:
    """Triple fault (or a shutdown request): the guest cannot continue."""


@dataclass(frozen=True, slots=True)
class FailEntry:
    """The hardware refused to enter the guest (bad vCPU state)."""

    hardware_reason: int
    cpu: int


@dataclass(frozen=True, slots=True)
class InternalError:
    """KVM could not handle something (e.g. emulation failed); ``data`` as the kernel gave it."""

    suberror: int
    data: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class EmulationFailure:
    """KVM's instruction emulator failed or refused an instruction (internal error,
    suberror KVM_INTERNAL_ERROR_EMULATION); RIP still points at it.

    ``window`` holds the bytes KVM fetched from RIP when it says it fetched any (the
    instruction and whatever follows it: decode to find its length), else it is empty.
    With KVM_CAP_EXIT_ON_EMULATION_FAILURE enabled nothing is queued for the guest; the
    monitor may finish the instruction and run on."""

    window: bytes
    data: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Interrupted:
    """KVM_RUN returned early because of a signal or ``immediate_exit``."""


@dataclass(frozen=True, slots=True)
class SystemEvent:
    """A system event (reset, shutdown, crash) reported by KVM."""

    kind: int
    flags: int


@dataclass(frozen=True, slots=True)
class Unsupported:
    """An exit reason pcihole does not decode; kept, never a crash."""

    reason: int


Exit = (
    IoIn
    | IoOut
    | MmioRead
    | MmioWrite
    | Hlt
    | Shutdown
    | FailEntry
    | InternalError
    | EmulationFailure
    | Interrupted
    | SystemEvent
    | Unsupported
)

# Hot exits are built without the frozen-dataclass __init__ (object.__setattr__ per field
# costs ~1.7 µs on these machines): a bare instance, then its slots filled through their
# descriptors (~0.9 µs). The instances are the same frozen values either way.
_new = object.__new__
_Setter = Callable[[object, object], None]


def _slot_setters(cls: type, *names: str) -> tuple[_Setter, ...]:
    return tuple(cls.__dict__[name].__set__ for name in names)


_set_io_port, _set_io_size, _set_io_count, _set_io_data = _slot_setters(
    IoOut, "port", "size", "count", "data"
)
_set_in_port, _set_in_size, _set_in_count = _slot_setters(IoIn, "port", "size", "count")
_set_read_address, _set_read_size = _slot_setters(MmioRead, "address", "size")
_set_write_address, _set_write_size, _set_write_data = _slot_setters(
    MmioWrite, "address", "size", "data"
)


def _io_out(port: int, size: int, count: int, data: bytes) -> IoOut:
    exit = _new(IoOut)
    _set_io_port(exit, port)
    _set_io_size(exit, size)
    _set_io_count(exit, count)
    _set_io_data(exit, data)
    return exit


def _io_in(port: int, size: int, count: int) -> IoIn:
    exit = _new(IoIn)
    _set_in_port(exit, port)
    _set_in_size(exit, size)
    _set_in_count(exit, count)
    return exit


def _mmio_read(address: int, size: int) -> MmioRead:
    exit = _new(MmioRead)
    _set_read_address(exit, address)
    _set_read_size(exit, size)
    return exit


def _mmio_write(address: int, size: int, data: bytes) -> MmioWrite:
    exit = _new(MmioWrite)
    _set_write_address(exit, address)
    _set_write_size(exit, size)
    _set_write_data(exit, data)
    return exit


_U32 = struct.Struct("<I")
_IO = struct.Struct("<BBHIQ")
_MMIO = struct.Struct("<Q8sIB")
_FAIL = struct.Struct("<QI")
_INTERNAL_HEAD = struct.Struct("<II")
_SYSTEM_EVENT = struct.Struct("<IIQ")

_X = abi.RUN_EXIT_OFFSET
_REASON = abi.RUN_EXIT_REASON_OFFSET
_IO_REASON = int(abi.ExitReason.IO)
_MMIO_REASON = int(abi.ExitReason.MMIO)
_OUT = abi.KVM_EXIT_IO_OUT
_HLT = Hlt()
_SHUTDOWN = Shutdown()
_INTERRUPTED = Interrupted()


def decode(run: mmap.mmap | memoryview | bytes | bytearray) -> Exit:
    """Decode the exit described by a ``kvm_run`` page (``run`` is the whole mapping)."""
    reason = _U32.unpack_from(run, _REASON)[0]
    if reason == _IO_REASON:
        direction, size, port, count, data_offset = _IO.unpack_from(run, _X)
        if direction == _OUT:
            return _io_out(port, size, count, bytes(run[data_offset : data_offset + size * count]))
        return _io_in(port, size, count)
    if reason == _MMIO_REASON:
        address, data, length, is_write = _MMIO.unpack_from(run, _X)
        if is_write:
            return _mmio_write(address, length, data[:length])
        return _mmio_read(address, length)
    if reason == abi.ExitReason.HLT:
        return _HLT
    if reason == abi.ExitReason.SHUTDOWN:
        return _SHUTDOWN
    if reason == abi.ExitReason.INTR:
        return _INTERRUPTED
    if reason == abi.ExitReason.FAIL_ENTRY:
        hardware_reason, cpu = _FAIL.unpack_from(run, _X)
        return FailEntry(hardware_reason, cpu)
    if reason == abi.ExitReason.INTERNAL_ERROR:
        suberror, ndata = _INTERNAL_HEAD.unpack_from(run, _X)
        ndata = min(ndata, 16)
        data = struct.unpack_from(f"<{ndata}Q", run, _X + _INTERNAL_HEAD.size)
        if suberror == abi.KVM_INTERNAL_ERROR_EMULATION:
            return EmulationFailure(_instruction_window(run, ndata, data), tuple(data))
        return InternalError(suberror, tuple(data))
    if reason == abi.ExitReason.SYSTEM_EVENT:
        kind, _pad_or_ndata, flags = _SYSTEM_EVENT.unpack_from(run, _X)
        return SystemEvent(kind, flags)
    return Unsupported(reason)


_FAILURE = abi.kvm_run_emulation_failure
_WINDOW_MAX = _FAILURE.insn_bytes.size


def _instruction_window(
    run: mmap.mmap | memoryview | bytes | bytearray, ndata: int, data: tuple[int, ...]
) -> bytes:
    """The bytes an emulation-failure exit carries: flags in data[0], then insn_size and
    insn_bytes in data[1..2] (so ndata must reach 3)."""
    if ndata < 3 or not data[0] & abi.KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES:
        return b""
    size = min(run[_X + _FAILURE.insn_size.offset], _WINDOW_MAX)
    start = _X + _FAILURE.insn_bytes.offset
    return bytes(run[start : start + size])
