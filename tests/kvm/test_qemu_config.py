"""Every function's 4096 bytes, and its answers to writes, against QEMU 7.2 q35 itself.

One paused QEMU per topology (tests/qemu.py). For each function: the reset bytes must be
equal, and writing each dword zeros, ones, then its old value must read back the same on
both. The only exceptions are listed below, each with its reason (also in the README).
"""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from pcihole.pci.bdf import Bdf
from pcihole.pci.devices import PCIEXBAR
from pcihole.pci.topology import Topology
from tests.qemu import ECAM_BASE, PCIEXBAR_ENABLE, probe_model, qemu_missing_reason, read_qemu

BLOCKDEVS = ("-blockdev", "null-co,node-name=d0", "-blockdev", "null-co,node-name=d1")

# (pcihole --device texts, the same machine as QEMU -device texts); bridges are numbered
# depth-first by the harness, as firmware does, so bus= must follow that order.
TOPOLOGIES: dict[str, tuple[list[str], list[str]]] = {
    "q35 built-ins": ([], []),
    "ports with virtio-net, virtio-blk, nvme": (
        [
            "00:01.0=root-port,bus=1",
            "01:00.0=virtio-net",
            "00:02.0=root-port,bus=2,chassis=1",
            "02:00.0=virtio-blk",
            "00:03.0=root-port,bus=3,chassis=2",
            "03:00.0=nvme",
        ],
        [
            "pcie-root-port,id=p1,addr=01.0",
            "virtio-net-pci,bus=p1",
            "pcie-root-port,id=p2,addr=02.0,chassis=1",
            "virtio-blk-pci,bus=p2,drive=d0",
            "pcie-root-port,id=p3,addr=03.0,chassis=2",
            "nvme,bus=p3,serial=a",
        ],
    ),
    "virtio and nvme on the root bus": (
        ["00:02.0=virtio-net", "00:03.0=virtio-blk", "00:04.0=nvme"],
        [
            "virtio-net-pci,addr=02.0",
            "virtio-blk-pci,addr=03.0,drive=d1",
            "nvme,addr=04.0,serial=b",
        ],
    ),
    "pcihole's default, chassis and slot, an empty port": (
        [
            "00:1c.0=root-port,bus=1",
            "01:00.0=virtio-net",
            "00:1c.1=root-port,bus=2,slot=1",
            "02:00.0=nvme",
            "00:1d.0=root-port,bus=3,chassis=9,slot=8191",
        ],
        [
            "pcie-root-port,id=a,addr=1c.0,multifunction=on",
            "virtio-net-pci,bus=a",
            "pcie-root-port,id=b,addr=1c.1,slot=1",
            "nvme,bus=b,serial=c",
            "pcie-root-port,addr=1d.0,chassis=9,slot=8191",
        ],
    ),
}

# Dwords whose answers to writes must differ, by model: QEMU gives these writes side
# effects pcihole does not model. Reset bytes never differ.
WRITE_EXCEPTIONS: dict[tuple[str, int], str] = {
    ("host-bridge", 0x9C): "SMRAM D_LCK and F_SMBASE lock themselves once written (SMM, "
    "which pcihole does not emulate)",
    ("ich9-lpc", 0xA0): "GEN_PMCON_1 SMI_LOCK is write-once on QEMU",
    ("root-port", 0x6C): "QEMU's slot controller raises Command Completed and toggles the "
    "electromechanical interlock on slot control writes",
}


def _qemu_or_skip() -> None:
    reason = qemu_missing_reason()
    if reason is not None:
        pytest.skip(reason)


def _compare(specs: Sequence[str], devices: Sequence[str]) -> None:
    qemu = read_qemu(devices, BLOCKDEVS, probes=True)
    topology = Topology.build(specs, 256)
    assert [str(bdf) for bdf in sorted(qemu)] == [str(f.bdf) for f in topology]
    # The harness enabled MMCONFIG; do the same write on pcihole's host bridge.
    host = topology.config_at(Bdf(0, 0, 0))
    assert host is not None
    host.write(PCIEXBAR, 4, ECAM_BASE | PCIEXBAR_ENABLE)
    for function in topology:
        reference = qemu[function.bdf]
        mine = function.config.snapshot()
        differ = [
            f"{at:#05x}: qemu {reference.config[at]:02x} pcihole {mine[at]:02x}"
            for at in range(len(mine))
            if mine[at] != reference.config[at]
        ]
        assert not differ, f"{function.spec}: {differ[:8]}"
        answers = probe_model(function.config)
        for dword, (theirs, ours) in enumerate(zip(reference.probes, answers, strict=True)):
            if theirs != ours and (function.model, 4 * dword) not in WRITE_EXCEPTIONS:
                pytest.fail(
                    f"{function.spec} dword {4 * dword:#05x}: writes of zeros, ones, "
                    f"old read back {theirs} on QEMU, {ours} on pcihole"
                )


@pytest.mark.parametrize("name", list(TOPOLOGIES))
def test_config_space_matches_qemu(name: str) -> None:
    _qemu_or_skip()
    specs, devices = TOPOLOGIES[name]
    _compare(specs, devices)


def test_write_exceptions_are_real() -> None:
    """Each listed exception still differs (drop it from the list when it no longer does)."""
    _qemu_or_skip()
    qemu = read_qemu(["pcie-root-port,id=p,addr=01.0"], probes=True)
    topology = Topology.build(["00:01.0=root-port,bus=1"], 256)
    seen = set()
    for function in topology:
        ours = probe_model(function.config)
        for model, offset in WRITE_EXCEPTIONS:
            if model == function.model:
                assert qemu[function.bdf].probes[offset // 4] != ours[offset // 4]
                seen.add((model, offset))
    assert seen == set(WRITE_EXCEPTIONS)
