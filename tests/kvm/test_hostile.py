"""Hostile guests in real VMs, each next to a healthy VM that must still finish its scan.

The hostile guests (``guest/asm/hostile.S``, ``fault.S``, ``holes_probe.S``) make random
accesses of every width at random places of the ECAM window, storm the holes with writes,
hammer config registers, race a hot-plug, triple-fault, execute from a hole or never stop.
Whatever they do, the monitor must answer like a plain model of PCI would, report why a
guest stopped, and leave the other VM alone.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from pcihole import layout
from pcihole.guest.machine import PciMachine
from pcihole.holes.slots import HoleWrite
from pcihole.kvm import Kvm
from pcihole.machine import MachineOptions
from pcihole.machine.runloop import RunResult, StopReason
from pcihole.measure.scan import RECORD, RECURSIVE_RESULTS_OFFSET
from pcihole.pci.bdf import Bdf
from pcihole.pci.config import (
    CLASS_CODE,
    DEVICE_ID,
    HEADER_TYPE,
    REVISION_ID,
    VENDOR_ID,
)
from pcihole.pci.devices import MODELS
from pcihole.pci.topology import Topology
from tests.model_masks import PlainConfig, plain_config
from tests.support import Syncs, Worker, join, raise_stop_flag

BUSES = 16
"""Small enough that trapping modes stay quick, big enough for many hole runs."""
RANDOM, WRITE_HOLES, HAMMER = range(3)
LOG = struct.Struct("<IBBHQ")
MAX_OPS = layout.RESULTS_SIZE // LOG.size


# -- helpers ------------------------------------------------------------------------------


def scan_params(buses: int = BUSES, passes: int = 1, mode: int = 2) -> list[int]:
    """scan.S: ECAM base, buses, mode (2: brute force then recursive), passes."""
    return [layout.ECAM_BASE, buses, mode, passes]


def expected_records(topology: Topology) -> list[tuple[int, int, int, int]]:
    """What scan.S must record for ``topology``: bdf bits, IDs, class dword, header dword."""
    return [
        (
            f.bdf.bus << 8 | f.bdf.devfn,
            f.config.read(0, 4),
            f.config.read(8, 4),
            f.config.read(12, 4),
        )
        for f in topology
    ]


def read_records(machine: PciMachine, count: int, offset: int) -> list[tuple[int, int, int, int]]:
    raw = machine.guest.results(RECORD.size * count, offset)
    return sorted(RECORD.unpack_from(raw, i * RECORD.size) for i in range(count))


class Healthy:
    """A well-behaved VM enumerating the default topology twice (brute force, recursive)."""

    def __init__(self, kvm: Kvm, options: MachineOptions | None = None) -> None:
        options = options or MachineOptions(buses=BUSES)
        self.machine = PciMachine(
            kvm,
            Topology.default(options.buses),
            options,
            "scan",
            scan_params(options.buses),
            name="healthy",
        )
        self.expected = expected_records(Topology.default(options.buses))

    def check(self, result: RunResult) -> None:
        assert result.reason is StopReason.DONE, f"healthy VM: {result.detail}"
        found_brute, probes, found_recursive, _ = result.syncs
        assert probes == self.machine.options.buses * 256
        assert found_brute == found_recursive == len(self.expected)
        assert read_records(self.machine, found_brute, 0) == self.expected
        assert read_records(self.machine, found_recursive, RECURSIVE_RESULTS_OFFSET) == (
            self.expected
        )

    def close(self) -> None:
        self.machine.close()


@dataclass
class SideBySide:
    """Results of a hostile and a healthy VM run at the same time."""

    hostile: RunResult
    healthy: RunResult


def run_side_by_side(
    hostile: PciMachine, healthy: Healthy, *, stop_when_healthy_done: bool = False
) -> SideBySide:
    """Run both VMs on their own threads. A hostile guest that may never end on its own
    (``stop_when_healthy_done``) is stopped by the monitor once the healthy one is done,
    so it ran beside the whole healthy scan; any other is waited for."""
    results: dict[str, RunResult] = {}

    def run(name: str, machine: PciMachine) -> None:
        results[name] = machine.run()

    threads = {
        name: threading.Thread(target=run, args=(name, machine), name=f"{name} VM")
        for name, machine in (("hostile", hostile), ("healthy", healthy.machine))
    }
    for thread in threads.values():
        thread.start()
    try:
        join(threads["healthy"])
        if stop_when_healthy_done:
            hostile.request_stop()
        join(threads["hostile"])
    finally:
        for thread in threads.values():
            if thread.is_alive():  # hung: stop it rather than leave the test hanging
                hostile.request_stop()
                healthy.machine.request_stop()
                thread.join()
    return SideBySide(results["hostile"], results["healthy"])


# -- random accesses against a plain model --------------------------------------------------


@dataclass
class Op:
    offset: int
    width: int
    is_write: bool
    value: int


SECONDARY_BUS, SUBORDINATE_BUS, BRIDGE_CONTROL = 0x19, 0x1A, 0x3E
SECONDARY_BUS_RESET = 0x40
"""Bridge Control bit: while set, the bridge forwards nothing to its secondary side."""
ROUTING_BYTES = (SECONDARY_BUS, SUBORDINATE_BUS, BRIDGE_CONTROL)


class PlainMachine:
    """Plain configs of a topology by built address, and which ECAM page (``pages``)
    holds which under the bus numbers the guest has written into the bridges.

    Its routing is written here from the PCI-to-PCI bridge specification, never asked of
    pcihole, for one shape only (the default topology's): bridges on bus 0, each leading
    to a bus whose functions sit at device 0 and are not bridges (so a PCIe port's ARI
    Forwarding Enable changes nothing). A bus number B >= 1 goes to the first bridge, in
    (device, function) order, with secondary <= B <= subordinate and no Secondary Bus
    Reset; its functions answer there if B is its secondary, nothing does otherwise."""

    def __init__(self, topology: Topology) -> None:
        self.configs = {f.bdf: plain_config(f) for f in topology}
        self.behind: dict[Bdf, list[Bdf]] = {}
        for f in topology:
            if f.bridge_buses is not None:
                wired = [g.bdf for g in topology if g.bdf.bus == f.bridge_buses[0]]
                assert f.bdf.bus == 0 and all(g.device == 0 for g in wired), "not this shape"
                assert all(topology.get(g).bridge_buses is None for g in wired)  # type: ignore[union-attr]
                self.behind[f.bdf] = wired
        self.ports = {self.configs[bdf]: bdf for bdf in self.behind}
        self.pages: dict[int, PlainConfig] = {}
        self.reroute()

    def reroute(self) -> bool:
        """Derive ``pages`` from the bridges' registers again; whether any page changed."""
        pages = {bdf.ecam_offset >> 12: c for bdf, c in self.configs.items() if bdf.bus == 0}
        claims: list[range] = []
        for port in sorted(self.behind):
            data = self.configs[port].data
            if data[BRIDGE_CONTROL] & SECONDARY_BUS_RESET:
                continue
            secondary, subordinate = data[SECONDARY_BUS], data[SUBORDINATE_BUS]
            if 0 < secondary <= subordinate and not any(secondary in c for c in claims):
                for bdf in self.behind[port]:
                    guest = Bdf(secondary, bdf.device, bdf.function)
                    pages[guest.ecam_offset >> 12] = self.configs[bdf]
            claims.append(range(max(secondary, 1), subordinate + 1))
        changed = pages != self.pages
        self.pages = pages
        return changed

    def page_of(self, bdf: Bdf) -> int | None:
        """The page where the function built at ``bdf`` answers now, if any."""
        config = self.configs[bdf]
        return next((page for page, c in self.pages.items() if c is config), None)


@dataclass
class Replay:
    """What a plain model of PCI says about a log of accesses."""

    mismatches: list[str] = field(default_factory=list)
    hole_writes: list[tuple[int, int, bytes]] = field(default_factory=list)
    reads: int = 0
    writes: int = 0
    reroutes: int = 0
    """Writes after which a function answered at another page (or at none)."""


def read_log(machine: PciMachine, count: int) -> list[Op]:
    raw = machine.guest.results(LOG.size * count)
    ops = []
    for index in range(count):
        offset, width, is_write, pad, value = LOG.unpack_from(raw, index * LOG.size)
        assert width in (1, 2, 4, 8) and is_write in (0, 1) and pad == 0, f"bad record {index}"
        ops.append(Op(offset, width, bool(is_write), value))
    return ops


def replay_write(op: Op, model: PlainMachine, out: Replay) -> None:
    """Byte by byte into the configs of the pages they land on; bytes on no function's
    page are hole writes, one per page piece. A write to a bridge's routing bytes
    re-derives the pages after the whole access (a page's piece is one write)."""
    pieces: dict[int, list[int]] = {}
    routing = False
    for byte, address in enumerate(range(op.offset, op.offset + op.width)):
        pieces.setdefault(address >> 12, []).append(address)
        config = model.pages.get(address >> 12)
        if config is not None:
            config.write(address & 0xFFF, 1, op.value >> (8 * byte) & 0xFF)
            routing |= config in model.ports and (address & 0xFFF) in ROUTING_BYTES
    start = 0
    for page, where in pieces.items():
        data = bytes(op.value >> (8 * (start + i)) & 0xFF for i in range(len(where)))
        if page not in model.pages:
            out.hole_writes.append((where[0], len(where), data))
        start += len(where)
    if routing and model.reroute():
        out.reroutes += 1


def replay(ops: Sequence[Op], model: PlainMachine) -> Replay:
    """Apply ``ops`` to ``model`` (plain configs under their models' literal masks, at
    the pages the bridges route them to); holes read all ones and drop writes. Every read
    must return what the model holds at that moment."""
    out = Replay()
    for index, op in enumerate(ops):
        if op.is_write:
            out.writes += 1
            replay_write(op, model, out)
            continue
        out.reads += 1
        expected = 0
        for byte, address in enumerate(range(op.offset, op.offset + op.width)):
            config = model.pages.get(address >> 12)
            value = 0xFF if config is None else config.read(address & 0xFFF, 1)
            expected |= value << (8 * byte)
        if expected != op.value:
            out.mismatches.append(
                f"op {index}: {op.width}-byte read at {op.offset:#x} gave {op.value:#x}, "
                f"the model says {expected:#x}"
            )
    return out


def check_mirror(machine: PciMachine, model: PlainMachine, bdf: Bdf, expected: bytes) -> None:
    """The function's mirror is at the page the model routes it to, if that is in the
    window, and shows ``expected``; otherwise it has none."""
    page = model.page_of(bdf)
    if page is None or page << 12 >= machine.window.size:
        assert bdf not in machine.window.mirrors, bdf
        return
    mirror = machine.window.mirrors[bdf].page
    assert mirror.base == layout.ECAM_BASE + (page << 12), bdf
    assert mirror.read(mirror.base, layout.PAGE_SIZE) == expected


@pytest.mark.parametrize(
    ("strategy", "present", "buses", "ops", "seed"),
    [
        ("shared", "mirror", 16, 20000, 0x1234_5678),
        ("shared", "mirror", 4, 20000, 0xDEAD_BEEF),
        ("trap", "trap", 4, 4000, 0xC0FFEE),  # every access exits: the slow path, fewer ops
    ],
)
def test_random_accesses_read_what_a_plain_model_says(
    kvm: Kvm, strategy: str, present: str, buses: int, ops: int, seed: int
) -> None:
    """Random reads and writes of 1, 2, 4 and 8 bytes at random offsets, at ring 3, some
    crossing from a function's page into a hole. Replayed against a fresh topology with
    the same writes: every read is what the model held; every hole write reached the
    monitor once, in order; the machine's models end as the plain model does."""
    topology = Topology.default(buses)
    favoured = topology.present_offsets()
    params = [
        RANDOM,
        layout.ECAM_BASE,
        layout.ecam_size(buses),
        ops,
        seed,
        len(favoured),
        *favoured,
    ]
    options = MachineOptions(buses=buses, strategy=strategy, present=present)
    healthy = Healthy(kvm)
    try:
        with PciMachine(kvm, topology, options, "hostile", params, name="hostile") as machine:
            seen: list[tuple[int, int, bytes]] = []

            def record(write: HoleWrite) -> None:
                seen.append((write.address - layout.ECAM_BASE, write.size, write.data))

            machine.hole_writes.observe(record)
            runs = run_side_by_side(machine, healthy)
            assert runs.hostile.reason is StopReason.DONE, runs.hostile.detail
            assert runs.hostile.syncs == [ops]
            log = read_log(machine, ops)
            plain = Topology.default(buses)
            model = PlainMachine(plain)
            result = replay(log, model)
            assert result.mismatches == []
            assert result.reroutes > 0  # the guest renumbered the root ports
            assert result.reads > ops // 3 and result.writes > ops // 3
            # Some accesses crossed a page: the model had a hole piece and a device piece.
            crossing = [op for op in log if op.offset >> 12 != (op.offset + op.width - 1) >> 12]
            assert crossing
            assert seen == result.hole_writes
            assert machine.hole_writes.count == len(result.hole_writes)
            for function in plain:
                mine = machine.topology.get(function.bdf)
                assert mine is not None
                expected = model.configs[function.bdf].snapshot()
                assert mine.config.snapshot() == expected, function.bdf
                if present == "mirror":
                    check_mirror(machine, model, function.bdf, expected)
            strategy_object = machine.strategy
            assert strategy_object is not None
            if strategy == "shared":
                strategy_object.memory.source.verify()  # type: ignore[attr-defined]
        healthy.check(runs.healthy)
    finally:
        healthy.close()


def test_the_replay_catches_a_wrong_read() -> None:
    """The model is not a tautology: one wrong value in the log is found."""
    model = PlainMachine(Topology.default(BUSES))
    ops = [Op(0, 4, False, 0x29C08086), Op(0x1000, 2, False, 0xFFFF), Op(0x0, 2, False, 0x8087)]
    assert len(replay(ops, model).mismatches) == 1
    # and a write to a read-only register does not change what is read next
    model = PlainMachine(Topology.default(BUSES))
    ops = [Op(0, 2, True, 0x1234), Op(0, 2, False, 0x1234)]
    assert len(replay(ops, model).mismatches) == 1


PORT_1C0 = 0xE0000
"""00:1c.0's page: the root port to bus 1 (virtio-net at 01:00.0) in the default topology;
00:1c.1 leads to bus 2 (nvme at 02:00.0)."""
NET, NVME = Bdf(1, 0, 0), Bdf(2, 0, 0)


@pytest.mark.parametrize(
    ("writes", "net_bus", "nvme_bus"),
    [
        ([], 1, 2),
        ([(0x19, 1, 3), (0x1A, 1, 3)], 3, 2),
        ([(0x18, 4, 0x0505_0500)], 5, 2),  # one dword: primary, secondary, subordinate
        ([(0x19, 1, 3)], None, 2),  # secondary above subordinate: it claims nothing
        ([(0x19, 1, 0)], None, 2),  # as out of reset
        ([(0x3E, 1, 0x40)], None, 2),  # Secondary Bus Reset
        ([(0x19, 1, 2), (0x1A, 1, 2)], 2, None),  # both claim bus 2: 00:1c.0 comes first
        ([(0x1A, 1, 2)], 1, None),  # 00:1c.0 claims 1-2, so bus 2 goes nowhere
    ],
)
def test_the_replay_routes_by_the_bus_numbers_written(
    writes: list[tuple[int, int, int]], net_bus: int | None, nvme_bus: int | None
) -> None:
    """The replay's own routing moves and hides what is behind the root ports as the
    guest's writes to their bus numbers and bridge control say."""
    topology = Topology.default(BUSES)
    model = PlainMachine(topology)
    replay([Op(PORT_1C0 + at, width, True, value) for at, width, value in writes], model)
    found = {bus: 0xFFFF_FFFF for bus in range(1, 6)}
    for bdf, bus in ((NET, net_bus), (NVME, nvme_bus)):
        assert model.page_of(bdf) == (None if bus is None else bus << 8)
        if bus is not None:
            found[bus] = topology.get(bdf).config.read(0, 4)  # type: ignore[union-attr]
    reads = [Op(bus << 20, 4, False, ids) for bus, ids in found.items()]
    assert replay(reads, model).mismatches == []


# -- write storms ---------------------------------------------------------------------------

STORM = 20000
"""Writes per storming VM: more than a hundred times the coalesced ring (169 here)."""


def test_write_storms_into_holes_lose_nothing(kvm: Kvm) -> None:
    """Two VMs storm the holes above the last used bus (one hole run) at once, each far
    past the ring size, while a third VM scans. Every write reaches its own VM's monitor
    once, in guest order; the all-ones chunk is unchanged."""
    topology = Topology.default(BUSES)
    last_used = max(f.bdf.bus for f in topology)
    start = layout.ecam_size(last_used + 1)
    size = layout.ecam_size(BUSES) - start
    params = [2, layout.ECAM_BASE + start, size, STORM]  # holes_probe: write storm
    options = MachineOptions(buses=BUSES)
    healthy = Healthy(kvm)
    storms = [
        PciMachine(kvm, Topology.default(BUSES), options, "holes_probe", params, name=f"storm{i}")
        for i in range(2)
    ]
    try:
        values: list[list[int]] = [[], []]
        addresses: list[set[int]] = [set(), set()]
        for index, machine in enumerate(storms):
            ring = machine.guest.vcpu.ring_capacity
            assert 100 * ring < STORM

            def record(write: HoleWrite, index: int = index) -> None:
                values[index].append(int.from_bytes(write.data, "little"))
                addresses[index].add(write.address)

            machine.hole_writes.observe(record)
        results: dict[str, RunResult] = {}
        threads = [
            threading.Thread(target=lambda m=m: results.__setitem__(m.guest.name, m.run()))
            for m in [*storms, healthy.machine]
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            join(thread)
        for machine in storms:
            assert results[machine.guest.name].reason is StopReason.DONE
        for index, machine in enumerate(storms):
            assert values[index] == list(range(STORM))  # none lost, none twice, in order
            assert machine.hole_writes.count == STORM
            assert min(addresses[index]) == layout.ECAM_BASE + start
            assert max(addresses[index]) < layout.ECAM_BASE + start + size
            # writes left the guest only when the ring was full
            assert 0 < machine.ecam.exits.hole_writes <= STORM // ring + 1
            for function in machine.topology:  # the storm touched no model
                fresh = Topology.default(BUSES).get(function.bdf)
                assert fresh is not None
                assert function.config.snapshot() == fresh.config.snapshot()
        source = storms[0].strategy.memory.source  # type: ignore[union-attr]
        source.verify()
        healthy.check(results["healthy"])
    finally:
        for machine in storms:
            machine.close()
        healthy.close()


# -- read-only registers and BAR sizing -----------------------------------------------------

HAMMERED = ["02:00.0", "00:1c.0", "00:1f.2", "00:00.0"]
"""nvme (64-bit BAR, MSI-X), a root port (bridge windows, bus numbers), AHCI (I/O BARs),
the host bridge (PCIEXBAR)."""


@pytest.mark.parametrize("address", HAMMERED)
def test_all_ones_everywhere_leaves_identity_and_sizes_every_bar(kvm: Kvm, address: str) -> None:
    """The guest writes all ones at every offset of a function's page with every width.
    Identity registers keep their values, every BAR reads back its size mask, the
    mirror shows the model, and the model is what its literal write masks make of it."""
    bdf = Bdf.parse(address)
    ones = (1 << 64) - 1
    params = [HAMMER, layout.ECAM_BASE, layout.ecam_size(BUSES), bdf.ecam_offset, ones]
    healthy = Healthy(kvm)
    try:
        with PciMachine(
            kvm,
            Topology.default(BUSES),
            MachineOptions(buses=BUSES),
            "hostile",
            params,
            name="hostile",
        ) as machine:
            runs = run_side_by_side(machine, healthy)
            assert runs.hostile.reason is StopReason.DONE, runs.hostile.detail
            writes = 4096 + 2048 + 1024 + 512
            assert runs.hostile.syncs == [writes]
            assert machine.ecam.exits.device_writes == writes
            function = machine.topology.get(bdf)
            assert function is not None
            config = function.config
            fresh = Topology.default(BUSES).get(bdf)
            assert fresh is not None
            for register, size in (
                (VENDOR_ID, 2),
                (DEVICE_ID, 2),
                (REVISION_ID, 1),
                (CLASS_CODE, 3),
                (HEADER_TYPE, 1),
            ):
                for byte in range(size):
                    assert config.read(register + byte, 1) == fresh.config.read(register + byte, 1)
            if bdf != Bdf(0, 0, 0):  # the host bridge has none
                assert config.bars, "hammered a function without BARs"
            for bar in config.bars:
                width_mask = (1 << (8 * bar.width)) - 1
                sized = width_mask & ~(bar.size - 1) & ~bar.type_mask | bar.type_bits
                assert config.read(bar.offset, bar.width) == sized, bar
            plain = plain_config(fresh)
            for width in (1, 2, 4, 8):
                for offset in range(0, 4096, width):
                    plain.write(offset, width, ones >> (64 - 8 * width))
            assert config.snapshot() == plain.snapshot()
            page = machine.window.mirrors[bdf].page
            assert page.read(page.base, layout.PAGE_SIZE) == config.snapshot()
        healthy.check(runs.healthy)
    finally:
        healthy.close()


# -- hot-plug during a scan -----------------------------------------------------------------

PLUGGED = "00:03.0"
CYCLES = 4
QUICK_CHANGES = 3
"""Plug-unplug pairs made each cycle without waiting: they land wherever the scan is."""


def test_hot_plug_while_a_guest_scans(kvm: Kvm) -> None:
    """A function is plugged and unplugged from another thread, over and over, while a
    ring-3 guest enumerates the window by brute force pass after pass, until the host
    raises its stop flag. Each pass finds the fixed functions exactly and the plugged one
    or not; nothing else ever shows. Each cycle the host waits for a whole pass with the
    function plugged and one without, so both are seen whatever the machine's speed.
    A neighbour VM with the same topology scans meanwhile and sees no change at all."""
    topology = Topology.default(BUSES)
    fixed = expected_records(Topology.default(BUSES))
    bdf = Bdf.parse(PLUGGED)
    model = MODELS["virtio-blk"]
    probe_topology = Topology.default(BUSES)
    probe_topology.add(model.build(bdf))
    with_plugged = expected_records(probe_topology)
    plugged_record = next(r for r in with_plugged if r not in fixed)
    params = scan_params(passes=0, mode=0)
    passes: list[list[tuple[int, int, int, int]]] = []
    syncs = Syncs()
    with PciMachine(kvm, topology, MachineOptions(buses=BUSES), "scan", params) as machine:

        def on_sync(value: int) -> None:  # the vCPU waits while this runs
            if syncs.count() % 2 == 0:  # sync(found), then sync(probes)
                passes.append(read_records(machine, value, 0))
            syncs.record(value)

        machine.guest.on_sync(on_sync)

        def whole_pass() -> None:
            """Wait until a pass that began after now has ended."""
            syncs.wait_for(2 * (syncs.count() // 2 + 2))

        def plugger() -> None:
            try:
                for _ in range(CYCLES):
                    machine.hot_plug(model.build(bdf))
                    whole_pass()
                    machine.hot_unplug(bdf)
                    whole_pass()
                    for _ in range(QUICK_CHANGES):
                        machine.hot_plug(model.build(bdf))
                        machine.hot_unplug(bdf)
            finally:
                raise_stop_flag(machine.guest)

        healthy = Healthy(kvm)
        neighbour: list[RunResult] = []
        threads = [
            Worker(plugger, "plugger"),
            Worker(lambda: neighbour.append(healthy.machine.run()), "neighbour"),
        ]
        try:
            for thread in threads:
                thread.start()
            try:
                result = machine.run()
            finally:
                syncs.ended()
                raise_stop_flag(machine.guest)
                for thread in threads:
                    join(thread)
            assert result.reason is StopReason.DONE, result.detail
            for thread in threads:
                thread.finish()
            healthy.check(neighbour[0])
        finally:
            healthy.close()
        assert len(passes) == len(result.syncs) // 2 >= 2 * CYCLES
        assert result.syncs[1::2] == [BUSES * 256] * len(passes)
        shapes = set()
        for records in passes:
            extra = [r for r in records if r not in fixed]
            assert [r for r in records if r in fixed] == fixed
            # The plugged function, if seen, reads as itself; each later dword of its
            # record reads either its real value or all ones (a change may land between
            # two reads, as on real hardware), never anything else.
            for record in extra:
                assert record[0] == plugged_record[0]
                for got, real in zip(record[1:], plugged_record[1:], strict=True):
                    assert got in (real, 0xFFFFFFFF), (record, plugged_record)
            assert len(extra) <= 1
            shapes.add(len(extra))
        assert shapes == {0, 1}
        assert plugged_record in [r for records in passes for r in records]


# -- guests that fail, and one that never stops ---------------------------------------------

HOLE_PAGE = 0x5000
"""00:00.5: a hole in the middle of the root bus."""


MAY_NEVER_END = ("loop-forever", "execute-config-page")
"""Guests the monitor stops once their healthy neighbour is done (config bytes executed
as code may loop)."""


@pytest.mark.parametrize(
    ("name", "params", "ring", "strategy", "reasons"),
    [
        ("triple-fault", [4], 0, "shared", {StopReason.SHUTDOWN}),
        (
            "execute-hole-shared",
            [6, layout.ECAM_BASE + HOLE_PAGE],
            3,
            "shared",
            {StopReason.GUEST_EXCEPTION},
        ),
        ("execute-hole-trap", [6, layout.ECAM_BASE + HOLE_PAGE], 3, "trap", {StopReason.KVM_ERROR}),
        (
            "execute-config-page",
            [6, layout.ECAM_BASE],
            3,
            "shared",
            set(StopReason) - {StopReason.DONE},
        ),
        ("loop-forever", [3], 3, "shared", {StopReason.INTERRUPTED}),
        ("exception-ring0", [1], 0, "shared", {StopReason.GUEST_EXCEPTION}),
    ],
)
def test_a_failing_guest_is_reported_and_its_neighbour_finishes(
    kvm: Kvm, name: str, params: list[int], ring: int, strategy: str, reasons: set[StopReason]
) -> None:
    """A guest that triple-faults, executes from a hole (all ones decode as an invalid
    opcode; under trap there is no memory to fetch from at all), executes a function's
    config page, faults, or loops forever: each ends with a reason and a description, the
    monitor never hangs, and the healthy VM beside it enumerates correctly."""
    options = MachineOptions(buses=BUSES, strategy=strategy, ring=ring)
    healthy = Healthy(kvm, MachineOptions(buses=BUSES, strategy=strategy))
    try:
        with PciMachine(
            kvm, Topology.default(BUSES), options, "fault", params, name=name
        ) as machine:
            runs = run_side_by_side(machine, healthy, stop_when_healthy_done=name in MAY_NEVER_END)
        result = runs.hostile
        assert result.reason in reasons, f"{name}: {result.reason}: {result.detail}"
        assert result.detail
        if result.reason is StopReason.INTERRUPTED:  # only ever by the monitor
            assert name in MAY_NEVER_END
        if name == "loop-forever":
            assert result.detail == "stopped by the monitor"
        if name.startswith("execute-hole"):
            assert f"{layout.ECAM_BASE + HOLE_PAGE:#x}" in result.detail
        if name == "execute-hole-shared":
            assert result.exception is not None and result.exception.name == "#UD"
        healthy.check(runs.healthy)
    finally:
        healthy.close()


# -- load --------------------------------------------------------------------------------------

LOAD = Path(__file__).resolve().parents[2] / "benchmarks" / "load.py"


def test_load_small_every_vm_finds_everything_and_one_chunk_serves_all(tmp_path: Path) -> None:
    """benchmarks/load.py, small: 2 VMs in one process, then 2 processes x 2 VMs, one
    service, 16 buses, all scanning at once. Each VM finds exactly the configured
    functions, one chunk file serves them all and its Pss over every process adds up to
    at most the chunk."""
    out = tmp_path / "load.json"
    run = subprocess.run(
        [
            sys.executable,
            str(LOAD),
            "--one-process-vms",
            "2",
            "--processes",
            "2",
            "--vms",
            "2",
            "--buses",
            "16",
            "--json",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(LOAD.parents[1])},
    )
    assert run.returncode == 0, run.stderr
    report = json.loads(out.read_text())
    assert report["ok"] is True
    phases = {phase["phase"]: phase for phase in report["phases"]}
    assert set(phases) == {"one process", "processes"}
    for phase, vms in (("one process", 2), ("processes", 4)):
        data = phases[phase]
        assert data["vms"] == data["vms_found_exactly"] == vms
        assert data["functions_per_vm"] == len(Topology.default(16))
        assert data["errors"] == []
        assert data["chunk_files"] == 1
        assert 0 < data["chunk_pss_kib_sum"] <= data["chunk_kib"] == 2048
        # every worker maps the chunk into its window (128 times) plus once on its own
        workers = list(data["vmhwm_kib_by_worker"])
        assert len(workers) == data["processes"]
        for pid in workers:
            assert data["chunk_mappings_by_process"][pid] == 129
            assert data["vmhwm_kib_by_worker"][pid] > 0
        assert "from the hole service" in data["hole_memory_detail"]
        assert data["duration_seconds"] > data["scan_seconds"] > 0
        assert data["mem_available_low_kib"] > 0
        assert all(data["checks"].values())
