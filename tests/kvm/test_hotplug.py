"""Hot-plug on real guests: functions come and go while a ring-3 guest reads their page.

The guest (``guest/asm/hotplug_reader.S``) reads one function's vendor/device dword in a
loop and asserts every value is all ones or the device's real IDs. The host plugs and
unplugs the function from another thread, waiting each time until the guest has seen the
change, and checks that hole runs split and merge, the mirror page comes and goes, and
coalesced zones follow the runs, while the guest keeps running.
"""

from __future__ import annotations

import struct
import threading
import time
from collections.abc import Callable

import pytest

from pcihole import layout
from pcihole.guest.build import ASM_DIR
from pcihole.guest.machine import PciMachine
from pcihole.holes.planner import Run
from pcihole.host import mem as hostmem
from pcihole.kvm import Kvm
from pcihole.machine import MachineOptions
from pcihole.machine.runloop import RunResult, StopReason
from pcihole.pci.bdf import Bdf
from pcihole.pci.devices import MODELS, Function
from pcihole.pci.topology import Topology, parse_device_spec
from tests.support import HANG_SECONDS

BASE = [
    "00:00.0=host-bridge",
    "00:1c.0=root-port,bus=1",
    "01:00.0=virtio-net",
    "00:1c.1=root-port,bus=2",  # an empty slot: bus 2 has nobody yet
    "00:1f.0=ich9-lpc",
]
BUSES = 4
ALL_ONES = 0xFFFFFFFF
STOP_FLAG_ADDR = layout.STOP_FLAG_ADDR
CYCLES = 4
WAIT_SECONDS = HANG_SECONDS
MODES = [
    ("shared", "mirror"),
    ("fill", "mirror"),
    ("trap", "mirror"),
    ("shared", "trap"),
    ("trap", "trap"),
]
PLACES = {
    "root-bus": ("00:03.0", "virtio-blk"),  # between 00:00.0 and 00:1c.0, in one run
    "behind-root-port": ("02:00.0", "nvme"),  # the PCIe way: into the empty slot
}


def make_function(place: str, cycle: int) -> Function:
    """A fresh function for ``place``, built both ways the API allows (by turns)."""
    address, model = PLACES[place]
    if cycle % 2:
        return parse_device_spec(f"{address}={model}").build()
    return MODELS[model].build(Bdf.parse(address))


BASE_RUNS = [
    (0x1000, 0xDF000),
    (0xE2000, 0x16000),
    (0xF9000, 0x1000),
    (0xFC000, 0x4000),
    (0x101000, 0x2FF000),
]
"""Hole runs of BASE and the q35 built-ins in a 4-bus window (offset, size): around
00:00.0, 00:1c.0-1, 00:1f.0, 00:1f.2-3 and 01:00.0."""
PLUGGED_RUNS = {
    "root-bus": [(0x1000, 0x17000), (0x19000, 0xC7000), *BASE_RUNS[1:]],  # 00:03.0 at 0x18000
    "behind-root-port": [*BASE_RUNS[:4], (0x101000, 0xFF000), (0x201000, 0x1FF000)],  # 0x200000
}


def expected_runs(machine: PciMachine) -> list[Run]:
    """The runs the window must have now: BASE's, or with the place's function plugged."""
    window = machine.window
    assert window.base is not None
    plugged = [
        place for place, (address, _) in PLACES.items() if Bdf.parse(address) in machine.topology
    ]
    table = PLUGGED_RUNS[plugged[0]] if plugged else BASE_RUNS
    assert len(plugged) <= 1
    return [Run(window.base + offset, size) for offset, size in table]


def check_window(machine: PciMachine) -> list[Run]:
    """Slots, mirrors and zones match the topology right now; returns the hole runs."""
    window = machine.window
    assert window.holes is not None
    runs = expected_runs(machine)
    assert sorted(window.holes.runs) == runs
    if machine.options.present == "mirror":
        assert set(window.mirrors) == {f.bdf for f in machine.topology}
        for bdf, mirror in window.mirrors.items():
            function = machine.topology.get(bdf)
            assert function is not None
            assert mirror.page.read(mirror.page.base, layout.PAGE_SIZE) == (
                function.config.snapshot()
            )
    else:
        assert not window.mirrors
    zones = machine.guest.vm.coalesced_zones
    if window.holes.coalesce:
        assert zones == {(run.start, run.size) for run in runs}
    else:
        assert not zones
    if machine.options.strategy == "trap":
        assert window.hole_memslots == 0
    return runs


class Reader:
    """The reader guest on its own thread, and what the host can see of it while it runs."""

    def __init__(self, machine: PciMachine) -> None:
        self.machine = machine
        self.started = threading.Event()
        self.result: RunResult | None = None
        machine.guest.on_sync(self._on_sync)
        self.thread = threading.Thread(target=self._run, name="reader")

    def _on_sync(self, value: int) -> None:
        self.started.set()  # the first sync comes just before the loop

    def _run(self) -> None:
        self.result = self.machine.run()

    def __enter__(self) -> Reader:
        self.thread.start()
        self.wait(self.started.is_set, "the loop to start")
        return self

    def __exit__(self, *exc: object) -> None:
        ram = self.machine.guest.ram
        assert ram is not None
        ram.write(STOP_FLAG_ADDR, struct.pack("<Q", 1))
        self.thread.join(WAIT_SECONDS)
        if self.thread.is_alive():
            self.machine.request_stop()
            self.thread.join()

    def state(self) -> tuple[int, int]:
        """(changes the guest has seen, the value it read last)."""
        changes, last = struct.unpack("<QQ", self.machine.guest.results(16))
        return changes, last

    def wait(self, ready: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + WAIT_SECONDS
        while not ready():
            if not self.thread.is_alive():
                raise AssertionError(f"guest stopped waiting for {what}: {self.result}")
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}; guest state {self.state()}")
            time.sleep(0.0005)

    def wait_for_change(self, changes: int, value: int) -> None:
        self.wait(lambda: self.state() == (changes, value), f"change {changes} to {value:#x}")


@pytest.mark.parametrize("place", list(PLACES))
@pytest.mark.parametrize(("strategy", "present"), MODES)
def test_guest_sees_only_all_ones_or_the_real_header_across_plug_cycles(
    kvm: Kvm, strategy: str, present: str, place: str
) -> None:
    address = Bdf.parse(PLACES[place][0])
    ids = make_function(place, 0).config.read(0, 4)
    options = MachineOptions(buses=BUSES, strategy=strategy, present=present)
    params = [layout.ECAM_BASE + address.ecam_offset, ids, 1 << 62, STOP_FLAG_ADDR]
    with PciMachine(kvm, Topology.build(BASE, BUSES), options, "hotplug_reader", params) as m:
        original_runs = check_window(m)
        original_slots = (m.window.hole_memslots, m.memslots)
        port = m.topology.get(Bdf(0, 0x1C, 1))
        assert port is not None
        with Reader(m) as reader:
            for cycle in range(CYCLES):
                m.hot_plug(make_function(place, cycle))
                reader.wait_for_change(2 * cycle + 1, ids)
                runs = check_window(m)
                assert len(runs) == len(original_runs) + 1  # the run split around the page
                m.hot_unplug(address)
                reader.wait_for_change(2 * cycle + 2, ALL_ONES)
                assert check_window(m) == original_runs  # merged back
                assert (m.window.hole_memslots, m.memslots) == original_slots
        assert reader.result is not None
        result = reader.result.check()
    start, ones, device, changes, iterations = result.syncs
    assert start == 0
    assert changes == 2 * CYCLES  # each change seen once: no flapping on the way
    assert ones > 0 and device > 0 and ones + device == iterations


@pytest.mark.parametrize(("plugged", "expected"), [(False, ALL_ONES), (True, None)])
def test_reader_counts_exactly_n_iterations(kvm: Kvm, plugged: bool, expected: int | None) -> None:
    """Without a stop flag the loop makes exactly N reads, all of one kind."""
    function = make_function("behind-root-port", 0)
    ids = function.config.read(0, 4)
    topology = Topology.build(BASE, BUSES)
    if plugged:
        topology.add(function)
    iterations = 100_000
    params = [layout.ECAM_BASE + function.bdf.ecam_offset, ids, iterations, 0]
    with PciMachine(kvm, topology, MachineOptions(buses=BUSES), "hotplug_reader", params) as m:
        result = m.run().check()
    want = (iterations, 0) if expected == ALL_ONES else (0, iterations)
    assert result.syncs == [0, *want, 0, iterations]
    assert result.exit_counts == {"IoOut": 6}  # exit-less: only the five syncs and done


def test_guest_assert_catches_a_wrong_header(kvm: Kvm) -> None:
    """The reader really checks: expecting other IDs than the device has fails at once."""
    function = make_function("behind-root-port", 0)
    topology = Topology.build(BASE, BUSES)
    topology.add(function)
    params = [layout.ECAM_BASE + function.bdf.ecam_offset, 0x12345678, 1000, 0]
    with PciMachine(kvm, topology, MachineOptions(buses=BUSES), "hotplug_reader", params) as m:
        result = m.run()
    source = (ASM_DIR / "hotplug_reader.S").read_text().splitlines()
    ids_check = next(n for n, text in enumerate(source, 1) if "GUEST_ASSERT_EQ(rax, IDS)" in text)
    assert result.reason is StopReason.ASSERT_FAILED
    assert result.assert_line == ids_check
    assert result.syncs == [0]


def test_enumeration_finds_a_plugged_function_and_not_an_unplugged_one(kvm: Kvm) -> None:
    params = [layout.ECAM_BASE, BUSES, 2, 1]  # brute force and recursive, one pass
    for unplug in (False, True):
        topology = Topology.build(BASE, BUSES)
        with PciMachine(kvm, topology, MachineOptions(buses=BUSES), "scan", params) as m:
            before = (m.window.hole_memslots, m.memslots)
            m.hot_plug(make_function("behind-root-port", 1))
            # The slot above the new function now shows presence, in its mirror too.
            port = m.window.mirrors[Bdf(0, 0x1C, 1)].page
            function = m.topology.get(Bdf(0, 0x1C, 1))
            assert function is not None
            assert port.read(port.base, layout.PAGE_SIZE) == function.config.snapshot()
            if unplug:
                m.hot_unplug(Bdf(2, 0, 0))
                assert (m.window.hole_memslots, m.memslots) == before
            result = m.run().check()
            found = 7 + (0 if unplug else 1)  # BASE and the two ICH9 built-ins it leaves out
            assert result.syncs[0::2] == [found, found]
            assert result.exit_counts == {"IoOut": 5}


@pytest.mark.parametrize("place", list(PLACES))
@pytest.mark.parametrize(("strategy", "present"), MODES)
def test_exits_answer_what_the_mapping_shows_at_every_memslot_change(
    kvm: Kvm, strategy: str, present: str, place: str
) -> None:
    """What an exit at the page answers changes only while no memslot maps the page.

    A guest's exit may be answered late (raised while the page was unmapped, handled
    after the next change started), so whenever a slot maps the page, an exit there must
    answer what that slot holds; otherwise a guest reads the header, all ones, the header.
    Checked before and after every memslot change a plug and an unplug make.
    """
    address = Bdf.parse(PLACES[place][0])
    options = MachineOptions(buses=BUSES, strategy=strategy, present=present)
    with PciMachine(kvm, Topology.build(BASE, BUSES), options, "hotplug_reader", [0] * 4) as m:
        assert m.window.base is not None
        page = m.window.base + address.ecam_offset
        vm = m.guest.vm
        answers: list[int] = []

        def check(when: str) -> None:
            answer = m.window.ecam.read(address.ecam_offset, 4)
            if not answers or answers[-1] != answer:
                answers.append(answer)
            for slot in vm.memslots.values():
                if slot.guest_address <= page < slot.guest_address + slot.size:
                    mapped = hostmem.read(slot.host_address + page - slot.guest_address, 4)
                    assert int.from_bytes(mapped, "little") == answer, when

        real_set = vm.set_memory_region

        def set_memory_region(
            slot: int, guest_address: int, size: int, host_address: int, flags: int = 0
        ) -> object:
            check(f"before slot {slot} at {guest_address:#x}+{size:#x}")
            result = real_set(slot, guest_address, size, host_address, flags)
            check(f"after slot {slot} at {guest_address:#x}+{size:#x}")
            return result

        vm.set_memory_region = set_memory_region  # type: ignore[method-assign, assignment]
        function = make_function(place, 0)
        check("before the plug")
        for _ in range(2):
            m.hot_plug(make_function(place, 0))
            check("after the plug")
            m.hot_unplug(address)
            check("after the unplug")
    ids = function.config.read(0, 4)
    assert answers == [ALL_ONES, ids, ALL_ONES, ids, ALL_ONES]
