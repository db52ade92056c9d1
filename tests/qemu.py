"""QEMU 7.2 q35 as the reference, for the tests (started by pcihole/measure/qemu.py).

Config space: one paused QEMU (``-S``) per topology, driven through qtest. MMCONFIG is
enabled by writing PCIEXBAR through CF8/CFC; bridges are then numbered depth-first as
firmware would (``bus=`` on pcihole's ``root-port``), and every function is read through
ECAM. ``probe`` measures writable and write-1-to-clear bits by writing each dword zeros,
then ones, then its old value; ``probe_model`` runs the same sequence on a pcihole
``ConfigSpace``, so a test compares answers rather than masks guessed from them.

fw_cfg: items read as firmware does (selector at 0x510, data bytes at 0x511), or, for
the megabytes of a kernel given with ``-kernel``, through the DMA interface.
"""

from __future__ import annotations

import os
import struct
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from pcihole.arch.x86.cpuid import VcpuIdentity
from pcihole.layout import FW_CFG_PORT
from pcihole.measure.qemu import Qemu as Qemu
from pcihole.measure.qemu import qemu_missing_reason as qemu_missing_reason
from pcihole.pci.bdf import Bdf
from pcihole.pci.config import ConfigSpace

PAGE = 4096
ECAM_BASE = 0xB000_0000
"""QEMU's PCIEXBAR reset base; 256 buses fit below 0xc0000000."""
PCIEXBAR = 0x60
PCIEXBAR_ENABLE = 0x1
CF8, CFC = 0xCF8, 0xCFC
CF8_ENABLE = 0x8000_0000
HOST_BRIDGE = Bdf(0, 0, 0)
FW_CFG_FILE_DIR = 0x19

Probe = tuple[int, int, int]
"""Per dword: (reads back after writing zeros, after writing ones, after writing old value)."""


@dataclass(frozen=True)
class QemuFunction:
    bdf: Bdf
    config: bytes
    """All 4096 bytes at reset (bridges already given their bus numbers)."""
    probes: tuple[Probe, ...] = ()
    """One per dword when asked for, see ``probe``."""


class QemuQ35:
    """Config-space accessors of a paused q35 QEMU (ECAM enabled at ``ECAM_BASE``)."""

    def __init__(self, qemu: Qemu) -> None:
        self.qemu = qemu
        self.cf8_write(HOST_BRIDGE, PCIEXBAR + 4, 0)
        self.cf8_write(HOST_BRIDGE, PCIEXBAR, ECAM_BASE | PCIEXBAR_ENABLE)

    def cf8_write(self, bdf: Bdf, offset: int, value: int) -> None:
        self.qemu.port_out(CF8, 4, CF8_ENABLE | bdf.bus << 16 | bdf.devfn << 8 | offset)
        self.qemu.port_out(CFC, 4, value)

    def cf8_read(self, bdf: Bdf, offset: int) -> int:
        self.qemu.port_out(CF8, 4, CF8_ENABLE | bdf.bus << 16 | bdf.devfn << 8 | offset)
        return self.qemu.port_in(CFC, 4)

    def page(self, bdf: Bdf) -> bytes:
        return self.qemu.read(ECAM_BASE + bdf.ecam_offset, PAGE)

    def read(self, bdf: Bdf, offset: int) -> int:
        return self.qemu.readl(ECAM_BASE + bdf.ecam_offset + offset)

    def write(self, bdf: Bdf, offset: int, value: int) -> None:
        self.qemu.writel(ECAM_BASE + bdf.ecam_offset + offset, value)

    def probe(self, bdf: Bdf, reset: bytes) -> tuple[Probe, ...]:
        """``probe`` of one function, all its commands in one batch (``reset``: its page)."""
        commands = []
        for offset in range(0, PAGE, 4):
            old = int.from_bytes(reset[offset : offset + 4], "little")
            for value in (0, 0xFFFF_FFFF, old):
                commands += self._write_read(bdf, offset, value)
        answers = self.qemu.batch(commands)
        values = [int(answer, 16) for answer in answers if answer]
        return tuple(zip(values[0::3], values[1::3], values[2::3], strict=True))

    def _write_read(self, bdf: Bdf, offset: int, value: int) -> list[str]:
        if bdf == HOST_BRIDGE and offset in (PCIEXBAR, PCIEXBAR + 4):
            # Moving PCIEXBAR moves ECAM itself: go through CF8/CFC.
            address = CF8_ENABLE | bdf.devfn << 8 | offset
            return [f"outl {CF8:#x} {address:#x}", f"outl {CFC:#x} {value:#x}", f"inl {CFC:#x}"]
        address = ECAM_BASE + bdf.ecam_offset + offset
        return [f"writel {address:#x} {value:#x}", f"readl {address:#x}"]

    def number_buses(self) -> list[Bdf]:
        """Find every function, giving bridges buses depth-first as firmware does."""
        found: list[Bdf] = []
        self._scan_bus(0, found, [1])
        return found

    def _scan_bus(self, bus: int, found: list[Bdf], next_bus: list[int]) -> None:
        for device in range(32):
            for function in range(8):
                bdf = Bdf(bus, device, function)
                if self.read(bdf, 0) & 0xFFFF == 0xFFFF:
                    if function == 0:
                        break
                    continue
                found.append(bdf)
                header = self.read(bdf, 0xC) >> 16 & 0xFF
                if header & 0x7F == 1:
                    self._number_bridge(bdf, found, next_bus)
                if function == 0 and not header & 0x80:
                    break

    def _number_bridge(self, bdf: Bdf, found: list[Bdf], next_bus: list[int]) -> None:
        secondary = next_bus[0]
        next_bus[0] += 1
        latency = self.read(bdf, 0x18) & 0xFF00_0000
        self.write(bdf, 0x18, latency | 0xFF << 16 | secondary << 8 | bdf.bus)
        self._scan_bus(secondary, found, next_bus)
        subordinate = next_bus[0] - 1
        self.write(bdf, 0x18, latency | subordinate << 16 | secondary << 8 | bdf.bus)


def probe_model(config: ConfigSpace) -> tuple[Probe, ...]:
    """What ``QemuQ35.probe`` does, on a pcihole function: each dword written zeros, ones,
    then its value at the start, read back after each write."""
    reset = config.snapshot()
    answers = []
    for offset in range(0, PAGE, 4):
        read_backs = []
        for value in (0, 0xFFFF_FFFF, int.from_bytes(reset[offset : offset + 4], "little")):
            config.write(offset, 4, value)
            read_backs.append(config.read(offset, 4))
        zeros, ones, back = read_backs
        answers.append((zeros, ones, back))
    return tuple(answers)


@contextmanager
def running_q35(devices: Sequence[str], args: Sequence[str] = ()) -> Iterator[QemuQ35]:
    """A paused q35 QEMU with ``args``, then ``-device`` for each of ``devices``; killed on exit.

    ``args`` carries what devices refer to, e.g. ``-blockdev null-co,node-name=d0``.
    """
    extra = [*args, *(arg for device in devices for arg in ("-device", device))]
    with Qemu(extra, paused=True, qtest=True) as qemu:
        yield QemuQ35(qemu)


def read_qemu(
    devices: Sequence[str], args: Sequence[str] = (), *, probes: bool = False
) -> dict[Bdf, QemuFunction]:
    """Every function's reset config space (and, with ``probes``, its write answers).

    Probing goes deepest bus first, so that bridge writes (secondary bus reset, slot power
    off, bus numbers) only touch functions already measured.
    """
    with running_q35(devices, args) as qemu:
        functions = qemu.number_buses()
        pages = {bdf: qemu.page(bdf) for bdf in functions}
        answers: dict[Bdf, tuple[Probe, ...]] = {}
        if probes:
            for bdf in sorted(functions, key=lambda b: (-b.bus, b.devfn)):
                answers[bdf] = qemu.probe(bdf, pages[bdf])
    return {bdf: QemuFunction(bdf, pages[bdf], answers.get(bdf, ())) for bdf in functions}


def fw_cfg_item(qemu: Qemu, selector: int, length: int) -> bytes:
    """An fw_cfg item as firmware reads it: 16-bit selector, then the data byte by byte."""
    qemu.port_out(FW_CFG_PORT, 2, selector)
    return bytes(qemu.port_in(FW_CFG_PORT + 1, 1) for _ in range(length))


def fw_cfg_directory(qemu: Qemu) -> dict[str, tuple[int, int]]:
    """File name -> (selector, size), from QEMU's fw_cfg file directory."""
    count = int.from_bytes(fw_cfg_item(qemu, FW_CFG_FILE_DIR, 4), "big")
    raw = fw_cfg_item(qemu, FW_CFG_FILE_DIR, 4 + 64 * count)[4:]
    entries = {}
    for index in range(count):
        entry = raw[64 * index : 64 * (index + 1)]
        name = entry[8:].rstrip(b"\0").decode("ascii")
        entries[name] = (int.from_bytes(entry[4:6], "big"), int.from_bytes(entry[:4], "big"))
    return entries


def qemu_vcpu(qemu: Qemu) -> VcpuIdentity:
    """What QEMU's board reads of its first vCPU (vendor, address bits, the features
    behind ``etc/msr_feature_control``), from the vCPU's QOM properties."""
    path = qemu.command("query-cpus-fast")[0]["qom-path"]

    def get(name: str) -> Any:
        return qemu.command("qom-get", path=path, property=name)

    return VcpuIdentity(
        str(get("vendor")),
        int(get("phys-bits")),
        vmx=bool(get("vmx")),
        sgx=bool(get("sgx")),
        sgx_lc=bool(get("sgxlc")),
    )


FW_CFG_DMA_HIGH, FW_CFG_DMA_LOW = FW_CFG_PORT + 4, FW_CFG_PORT + 8
DMA_SELECT_READ = 0x08 | 0x02


def fw_cfg_dma_read(qemu: Qemu, selector: int, length: int, scratch: int) -> bytes:
    """An fw_cfg item through QEMU's DMA interface into its guest RAM at ``scratch``
    (the descriptor 16 bytes below), then out with QMP ``pmemsave``: megabytes fast,
    where ``fw_cfg_item`` reads a byte per qtest command."""
    descriptor = scratch - 16
    control = selector << 16 | DMA_SELECT_READ
    qemu.write(descriptor, struct.pack(">IIQ", control, length, scratch))
    qemu.port_out(FW_CFG_DMA_HIGH, 4, 0)
    qemu.port_out(FW_CFG_DMA_LOW, 4, int.from_bytes(descriptor.to_bytes(4, "big"), "little"))
    status = struct.unpack(">I", qemu.read(descriptor, 4))[0]
    assert status == 0, f"QEMU's fw_cfg DMA of item {selector:#x} ended with {status:#x}"
    return qemu_memory(qemu, scratch, length)


def qemu_memory(qemu: Qemu, address: int, length: int) -> bytes:
    """Guest-physical memory of a QEMU through QMP ``pmemsave`` (any length, one command)."""
    with tempfile.TemporaryDirectory(prefix="pcihole-pmem-") as work:
        path = os.path.join(work, "mem")
        qemu.command("pmemsave", val=address, size=length, filename=path)
        with open(path, "rb") as dump:
            return dump.read()
