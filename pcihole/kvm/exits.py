"""Typed VM exits, and their decoding from ``struct kvm_run``.

Decoding only reads the shared ``kvm_run`` page and builds a value; acting on an exit
(answering a read, counting it) is the run loop's job (``pcihole.machine.runloop``).
"""

from __future__ import annotations

import struct
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
    | Interrupted
    | SystemEvent
    | Unsupported
)

_U32 = struct.Struct("<I")
_IO = struct.Struct("<BBHIQ")
_MMIO = struct.Struct("<Q8sIB")
_FAIL = struct.Struct("<QI")
_INTERNAL_HEAD = struct.Struct("<II")
_SYSTEM_EVENT = struct.Struct("<IIQ")

_X = abi.RUN_EXIT_OFFSET
_HLT = Hlt()
_SHUTDOWN = Shutdown()
_INTERRUPTED = Interrupted()


def decode(run: memoryview | bytes | bytearray) -> Exit:
    """Decode the exit described by a ``kvm_run`` page (``run`` is the whole mapping)."""
    reason = _U32.unpack_from(run, abi.RUN_EXIT_REASON_OFFSET)[0]
    if reason == abi.ExitReason.IO:
        direction, size, port, count, data_offset = _IO.unpack_from(run, _X)
        if direction == abi.KVM_EXIT_IO_OUT:
            return IoOut(port, size, count, bytes(run[data_offset : data_offset + size * count]))
        return IoIn(port, size, count)
    if reason == abi.ExitReason.MMIO:
        address, data, length, is_write = _MMIO.unpack_from(run, _X)
        if is_write:
            return MmioWrite(address, length, data[:length])
        return MmioRead(address, length)
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
        return InternalError(suberror, tuple(data))
    if reason == abi.ExitReason.SYSTEM_EVENT:
        kind, _pad_or_ndata, flags = _SYSTEM_EVENT.unpack_from(run, _X)
        return SystemEvent(kind, flags)
    return Unsupported(reason)
