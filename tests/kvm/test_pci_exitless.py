"""Exit-less PCI discovery on real guests, writes through mirrors, and CF8/CFC.

With shared holes and mirrored present functions a ring-3 guest enumerates a 256-bus ECAM
window without a single configuration exit; writes to present functions exit to the model
and the guest's next read sees the new value; mechanism #1 reaches the same models.
"""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from pcihole import layout
from pcihole.guest.machine import PciMachine
from pcihole.kvm import Kvm
from pcihole.machine import MachineOptions
from pcihole.measure.scan import RECORD, ScanReport, run_scan
from pcihole.pci.bdf import Bdf
from pcihole.pci.config import BAR0, COMMAND, STATUS, VENDOR_ID
from pcihole.pci.ecam import encode_config_address
from pcihole.pci.topology import Topology

CUSTOM = [
    "00:00.0=host-bridge",
    "00:02.0=nvme",
    "00:1c.0=root-port,bus=0x80,subordinate=0x81",
    "80:00.0=root-port,bus=0x81",
    "81:00.0=virtio-net",
    "81:00.3=virtio-blk",
    "00:1d.0=root-port,bus=0xff",
    "ff:1f.0=nvme",
    "ff:1f.7=virtio-net",
    "00:1f.0=ich9-lpc",
    "00:1f.3=ich9-smbus",
]
"""A ``--device`` topology: a bridge below a bridge, a sparse multi-function device, and
functions on the last bus and device of a 256-bus window."""

TOPOLOGIES = {"default": None, "custom": CUSTOM}
REPORT_OUTS_PER_METHOD = 2  # sync(found), sync(probes)


def topology_factory(name: str, buses: int) -> Topology:
    specs = TOPOLOGIES[name]
    return Topology.build(specs, buses) if specs else Topology.default(buses)


def expected_records(topology: Topology) -> list[tuple[str, int, int, int]]:
    """(bdf, IDs, class/revision dword, header dword) of every function, as scan.S reads."""
    return [
        (str(f.bdf), f.config.read(0, 4), f.config.read(8, 4), f.config.read(12, 4))
        for f in topology
    ]


def found_records(report: ScanReport, method: str) -> list[tuple[str, int, int]]:
    return [
        (f.bdf, f.vendor | f.device << 16, f.class_code)
        for f in report.vms[0].enumerations[method].functions
    ]


# -- 1. exit-less discovery --------------------------------------------------------------


@pytest.mark.parametrize("topology_name", list(TOPOLOGIES))
@pytest.mark.parametrize("mode", ["brute", "recursive", "both"])
def test_read_only_enumeration_of_256_buses_makes_no_config_exits(
    kvm: Kvm, topology_name: str, mode: str
) -> None:
    options = MachineOptions(buses=256, strategy="shared", present="mirror", ring=3)
    report = run_scan(
        kvm, options, mode=mode, topology=lambda: topology_factory(topology_name, 256)
    )
    vm = report.vms[0]
    methods = ["brute", "recursive"] if mode == "both" else [mode]
    # Only the guest's own reports left it: two syncs per method and "done".
    assert vm.result.exit_counts == {"IoOut": REPORT_OUTS_PER_METHOD * len(methods) + 1}
    assert (vm.hole_exits, vm.device_exits) == (0, 0)
    topology = topology_factory(topology_name, 256)
    want = [(bdf, ids, class_rev >> 8) for bdf, ids, class_rev, _ in expected_records(topology)]
    for method in methods:
        assert found_records(report, method) == want
    if "brute" in methods:
        assert vm.enumerations["brute"].probes == 256 * 32 * 8
    if "recursive" in methods:
        # Linux order probes far less: 32 devices on each reachable bus and the extra
        # functions of multi-function devices.
        assert vm.enumerations["recursive"].probes < 32 * 8 * 8


def test_exitless_scan_counters_are_exactly_zero_on_the_machine(kvm: Kvm) -> None:
    """The same, on a machine we keep open: the ECAM device and the CF8 ports saw nothing."""
    topology = Topology.build(CUSTOM, 256)
    options = MachineOptions(buses=256)
    params = [layout.ECAM_BASE, 256, 2, 2]  # both methods, two passes
    with PciMachine(kvm, topology, options, "scan", params) as machine:
        result = machine.run().check()
        exits = machine.ecam.exits
        assert (exits.hole_reads, exits.hole_writes) == (0, 0)
        assert (exits.device_reads, exits.device_writes) == (0, 0)
        assert machine.legacy.exits == 0
        assert machine.hole_writes.count == 0
        assert machine.guest.mmio.unclaimed == 0 and machine.guest.ports.unclaimed == 0
        assert result.exit_counts == {"IoOut": 2 * 4 + 1}
        assert result.syncs[0::2] == [len(topology)] * 4  # functions found, every pass


# -- writes to present functions ---------------------------------------------------------

ECAM_READ, ECAM_WRITE, PORT_READ, PORT_WRITE = range(4)
Op = tuple[int, int, int, int]
"""(kind, size, address, value) for guest/asm/config_ops.S."""


def ops_params(ops: Sequence[Op]) -> list[int]:
    params = [len(ops)]
    for kind, size, address, value in ops:
        params += [kind << 8 | size, address, value]
    return params


def ecam(bdf: Bdf, register: int) -> int:
    return layout.ECAM_BASE + bdf.ecam_offset + register


def cf8(bdf: Bdf, register: int) -> int:
    """CF8 value with the register's low bits kept: config_ops.S picks CFC + (them)."""
    return encode_config_address(bdf, register & ~3) | register & 3


def run_ops(
    kvm: Kvm, ops: Sequence[Op], options: MachineOptions, topology: Topology | None = None
) -> tuple[PciMachine, list[int], dict[str, int]]:
    topology = topology or Topology.default(options.buses)
    machine = PciMachine(kvm, topology, options, "config_ops", ops_params(ops))
    try:
        result = machine.run().check()
    except BaseException:
        machine.close()
        raise
    return machine, result.syncs, result.exit_counts


NVME = Bdf(2, 0, 0)
NVME_IDS = 0x00101B36
HOLE = Bdf(2, 0, 1)
BAR_SIZING = [
    (ECAM_READ, 4, ecam(NVME, BAR0), 0),
    (ECAM_READ, 4, ecam(NVME, BAR0 + 4), 0),
    (ECAM_WRITE, 4, ecam(NVME, BAR0), 0xFFFFFFFF),  # size BAR 0 (64-bit: both halves)
    (ECAM_WRITE, 4, ecam(NVME, BAR0 + 4), 0xFFFFFFFF),
    (ECAM_READ, 4, ecam(NVME, BAR0), 0),
    (ECAM_READ, 4, ecam(NVME, BAR0 + 4), 0),
    (ECAM_WRITE, 4, ecam(NVME, BAR0), 0xFEB00000),  # then place it
    (ECAM_WRITE, 4, ecam(NVME, BAR0 + 4), 0),
    (ECAM_READ, 4, ecam(NVME, BAR0), 0),
    (ECAM_READ, 2, ecam(NVME, COMMAND), 0),
    (ECAM_WRITE, 2, ecam(NVME, COMMAND), 0x0006),  # memory space + bus master
    (ECAM_READ, 2, ecam(NVME, COMMAND), 0),
    (ECAM_WRITE, 4, ecam(NVME, VENDOR_ID), 0x12345678),  # read-only: ignored
    (ECAM_READ, 4, ecam(NVME, VENDOR_ID), 0),
    (ECAM_READ, 1, ecam(NVME, 0x0B), 0),  # base class byte
    (ECAM_WRITE, 4, ecam(HOLE, 0), 0xDEADBEEF),  # into a hole: dropped
    (ECAM_READ, 4, ecam(HOLE, 0), 0),
]
BAR_SIZING_READS = [0x4, 0, 0xFFFFC004, 0xFFFFFFFF, 0xFEB00004, 0, 6, NVME_IDS, 0x01, 0xFFFFFFFF]
DEVICE_WRITES = 6


def test_writes_exit_to_the_model_and_the_mirror_shows_them(kvm: Kvm) -> None:
    options = MachineOptions(buses=256)
    machine, values, exit_counts = run_ops(kvm, BAR_SIZING, options)
    with machine:
        assert values == BAR_SIZING_READS
        # Every write to the nvme exited once; no read did (they all hit the mirror).
        assert exit_counts == {"IoOut": len(BAR_SIZING_READS) + 1, "MmioWrite": DEVICE_WRITES}
        exits = machine.ecam.exits
        assert (exits.device_writes, exits.device_reads, exits.hole_reads) == (DEVICE_WRITES, 0, 0)
        # The hole write left no synchronous exit; the coalesced ring still reported it.
        assert exits.hole_writes == 0 and machine.hole_writes.count == 1
        config = machine.topology.config_at(NVME)
        assert config is not None
        assert config.read(BAR0, 4) == 0xFEB00004 and config.read(COMMAND, 2) == 6
        mirror = machine.window.mirrors[NVME].page
        assert mirror.read(mirror.base, layout.PAGE_SIZE) == config.snapshot()


@pytest.mark.parametrize(("strategy", "present"), [("trap", "trap"), ("trap", "mirror")])
def test_writes_read_back_the_same_in_trapping_modes(kvm: Kvm, strategy: str, present: str) -> None:
    options = MachineOptions(buses=4, strategy=strategy, present=present)
    machine, values, exit_counts = run_ops(kvm, BAR_SIZING, options)
    with machine:
        assert values == BAR_SIZING_READS
        exits = machine.ecam.exits
        device_reads = len(BAR_SIZING_READS) - 1 if present == "trap" else 0
        assert (exits.device_reads, exits.device_writes) == (device_reads, DEVICE_WRITES)
        assert (exits.hole_reads, exits.hole_writes) == (1, 1)
        assert exit_counts["MmioRead"] == device_reads + 1


# -- compare modes -----------------------------------------------------------------------

MODE_OPTIONS = {
    "trap": ("trap", "trap"),
    "crosvm-like": ("trap", "mirror"),
    "exit-less": ("shared", "mirror"),
}
COMPARE_BUSES = 8
"""Trap answers every probe in ~40 µs here: fewer buses keep the test quick."""


@pytest.mark.parametrize("topology_name", list(TOPOLOGIES))
def test_modes_find_the_same_functions_with_the_exits_each_promises(
    kvm: Kvm, topology_name: str
) -> None:
    specs = TOPOLOGIES[topology_name]
    if specs:  # the custom topology, folded into 8 buses
        specs = [
            "00:00.0=host-bridge",
            "00:02.0=nvme",
            "00:1c.0=root-port,bus=5,subordinate=6",
            "05:00.0=root-port,bus=6",
            "06:00.0=virtio-net",
            "06:00.3=virtio-blk",
            "00:1d.0=root-port,bus=7",
            "07:1f.0=nvme",
            "07:1f.7=virtio-net",
        ]
    found: dict[str, dict[str, list[tuple[str, int, int]]]] = {}
    for name, (strategy, present) in MODE_OPTIONS.items():
        options = MachineOptions(buses=COMPARE_BUSES, strategy=strategy, present=present)
        reports = {
            method: run_scan(
                kvm,
                options,
                mode=method,
                topology=lambda: (
                    Topology.build(specs, COMPARE_BUSES)
                    if specs
                    else Topology.default(COMPARE_BUSES)
                ),
            )
            for method in ("brute", "recursive")
        }
        found[name] = {method: found_records(r, method) for method, r in reports.items()}
        present_count = len(found[name]["brute"])
        brute, recursive = reports["brute"].vms[0], reports["recursive"].vms[0]
        brute_probes = brute.enumerations["brute"].probes
        recursive_probes = recursive.enumerations["recursive"].probes
        assert brute_probes == COMPARE_BUSES * 256
        if name == "exit-less":
            assert (brute.hole_exits, brute.device_exits) == (0, 0)
            assert (recursive.hole_exits, recursive.device_exits) == (0, 0)
            assert brute.result.exit_counts == {"IoOut": 3}
        else:
            # Every probe of a hole exits once, and nothing else touches holes.
            assert brute.hole_exits == brute_probes - present_count
            assert recursive.hole_exits == recursive_probes - present_count
            if present == "mirror":
                assert brute.device_exits == 0 and recursive.device_exits == 0
            else:  # the probe and the three record dwords of each function
                assert brute.device_exits == 4 * present_count
                assert recursive.device_exits > 4 * present_count  # headers, bridges too
            assert brute.result.exit_counts["MmioRead"] == brute.hole_exits + brute.device_exits
    reference = found["exit-less"]["brute"]
    assert len(reference) == (12 if specs else 8)  # 9 --device and the 3 ICH9 built-ins
    for name, methods in found.items():
        for method, records in methods.items():
            assert records == reference, (name, method)


# -- 2. configuration mechanism #1 -------------------------------------------------------


def read_records(machine: PciMachine, count: int) -> list[tuple[str, int, int, int]]:
    raw = machine.guest.results(RECORD.size * count)
    records = []
    for index in range(count):
        bits, ids, class_rev, header = RECORD.unpack_from(raw, index * RECORD.size)
        bdf = Bdf(bits >> 8, bits >> 3 & 0x1F, bits & 7)
        records.append((str(bdf), ids, class_rev, header))
    return records


@pytest.mark.parametrize("ring", [0, 3])
@pytest.mark.parametrize("topology_name", list(TOPOLOGIES))
def test_cf8_cfc_enumeration_matches_ecam(kvm: Kvm, ring: int, topology_name: str) -> None:
    buses = 4
    specs = TOPOLOGIES[topology_name]
    if specs:
        specs = ["00:00.0=host-bridge", "00:1c.0=root-port,bus=3", "03:1f.0=nvme"]
        specs += ["03:1f.5=virtio-blk", "00:1f.0=ich9-lpc", "00:1f.3=ich9-smbus"]

    def make() -> Topology:
        return Topology.build(specs, buses) if specs else Topology.default(buses)

    options = MachineOptions(buses=buses, ring=ring)
    with PciMachine(kvm, make(), options, "legacy_scan", [buses]) as machine:
        result = machine.run().check()
        found, probes = result.syncs
        assert probes == buses * 256
        legacy = read_records(machine, found)
        assert legacy == expected_records(machine.topology)
        # Each probe is an OUT to CF8 and an IN from CFC; each function two more dwords.
        assert machine.legacy.exits == 2 * (probes + 2 * found)
        assert result.exit_counts == {
            "IoIn": probes + 2 * found,
            "IoOut": probes + 2 * found + 3,
        }
        assert machine.ecam.exits.hole + machine.ecam.exits.device == 0

    ecam_scan = run_scan(kvm, MachineOptions(buses=buses), mode="both", topology=make)
    ecam_found = [(f.bdf, f.vendor | f.device << 16, f.class_code) for f in ecam_scan.functions]
    assert [(bdf, ids, class_rev >> 8) for bdf, ids, class_rev, _ in legacy] == ecam_found


def test_cf8_cfc_reads_and_writes_the_models_ecam_sees(kvm: Kvm) -> None:
    options = MachineOptions(buses=4, ring=3)
    ops: list[Op] = [
        (PORT_READ, 4, cf8(NVME, VENDOR_ID), 0),
        (PORT_READ, 2, cf8(NVME, 2), 0),  # device ID through CFE
        (PORT_READ, 1, cf8(NVME, 0x0B), 0),  # base class through CFF
        (PORT_READ, 4, cf8(HOLE, 0), 0),  # absent: all ones
        (PORT_READ, 2, cf8(Bdf(3, 0, 0), 0), 0),
        (PORT_WRITE, 2, cf8(NVME, COMMAND), 0x0006),  # a write through the ports...
        (ECAM_READ, 2, ecam(NVME, COMMAND), 0),  # ...shows in the ECAM mirror
        (ECAM_WRITE, 4, ecam(NVME, BAR0), 0xFFFFFFFF),  # and the other way round
        (PORT_READ, 4, cf8(NVME, BAR0), 0),
        (PORT_WRITE, 4, cf8(NVME, VENDOR_ID), 0),  # read-only through the ports too
        (PORT_READ, 4, cf8(NVME, VENDOR_ID), 0),
        (PORT_WRITE, 4, cf8(HOLE, COMMAND), 0xFFFF),  # dropped
        (PORT_READ, 2, cf8(NVME, STATUS), 0),
    ]
    machine, values, exit_counts = run_ops(kvm, ops, options)
    with machine:
        status = machine.topology.config_at(NVME)
        assert status is not None
        assert values == [
            NVME_IDS,
            0x0010,
            0x01,
            0xFFFFFFFF,
            0xFFFF,
            0x0006,
            0xFFFFC004,
            NVME_IDS,
            status.read(STATUS, 2),
        ]
        assert exit_counts["MmioWrite"] == 1 and "MmioRead" not in exit_counts
        assert machine.ecam.exits.device_writes == 1
        assert status.read(COMMAND, 2) == 6
