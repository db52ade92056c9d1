"""Faults: the kernel refusing part way, a monitor killed mid-scan, the hole service
restarted under its clients, a service handing out a bad memfd.

After each, nothing may be left behind: no memslot, no fd, no guest memory, no huge page,
and whoever was not hit keeps working.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from pcihole import layout
from pcihole.guest import vm as guestvm
from pcihole.guest.machine import PciMachine
from pcihole.holes import source as source_mod
from pcihole.holes.memory import shared_hole_memory
from pcihole.holes.planner import Run
from pcihole.holes.service import REQUEST, connect
from pcihole.holes.source import REQUIRED_SEALS, Backing, Seal, add_seals
from pcihole.holes.strategy import SharedStrategy
from pcihole.host.smaps import vmas
from pcihole.kvm import Kvm, KvmError, Vm
from pcihole.machine import MachineOptions
from pcihole.memory import GuestRam, SlotAllocator
from pcihole.pci.bdf import Bdf
from pcihole.pci.devices import MODELS
from pcihole.pci.topology import Topology
from tests.support import CHILD_ENV, HANG_SECONDS, join

BUSES = 16
SCAN_PARAMS = [layout.ECAM_BASE, BUSES, 2, 1]  # brute force and recursive, one pass
DEFAULT_HOLE_RUNS = 6
"""Hole runs of ``Topology.default(16)``: 0x1000+0xdf000, 0xe2000+0x16000, 0xf9000+0x1000,
0xfc000+0x4000, 0x101000+0xff000, 0x201000+0xdff000 (offsets in the window)."""
DEFAULT_HOLE_PIECES_THP = 12
"""The same runs cut at every 2 MiB boundary (the THP backing's slots)."""
WAIT = HANG_SECONDS


def open_fds() -> set[str]:
    """This process's fds with what they point at (a reused number with a new target
    counts as a change)."""
    found = set()
    for name in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            found.add(f"{name}->{os.readlink(f'/proc/self/fd/{name}')}")
    return found


def expected_functions() -> list[str]:
    return [str(f.bdf) for f in Topology.default(BUSES)]


def scan_ok(machine: PciMachine) -> None:
    """The machine is complete: its guest enumerates exactly the default functions."""
    result = machine.run().check()
    count = len(expected_functions())
    assert result.syncs == [count, BUSES * 256, count, result.syncs[3]]


class Tracker:
    """Watches every VM and guest RAM made while installed, and every memslot change."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.vms: list[Vm] = []
        self.live: dict[int, set[int]] = {}  # id(vm) -> slots the kernel holds
        self.left_at_close: dict[int, set[int]] = {}
        self.rams: list[GuestRam] = []
        self.creations = 0
        self.fail_at: int | None = None
        self.coalesced = 0
        self.fail_coalesced_at: int | None = None
        tracker = self
        real_create_vm = Kvm.create_vm
        real_set = Vm.set_memory_region
        real_close = Vm.close
        real_register = Vm.register_coalesced_mmio
        real_ram_init = GuestRam.__init__

        def create_vm(kvm: Kvm) -> Vm:
            vm = real_create_vm(kvm)
            tracker.vms.append(vm)
            tracker.live[id(vm)] = set()
            return vm

        def set_memory_region(
            vm: Vm, slot: int, guest_address: int, size: int, host_address: int, flags: int = 0
        ) -> Any:
            if size:
                tracker.creations += 1
                if tracker.creations == tracker.fail_at:
                    raise KvmError("KVM_SET_USER_MEMORY_REGION", errno.ENOMEM, "simulated")
            memslot = real_set(vm, slot, guest_address, size, host_address, flags)
            live = tracker.live.setdefault(id(vm), set())
            if size:
                live.add(slot)
            else:
                live.discard(slot)
            return memslot

        def register(vm: Vm, address: int, size: int) -> None:
            tracker.coalesced += 1
            if tracker.coalesced == tracker.fail_coalesced_at:
                raise KvmError("KVM_REGISTER_COALESCED_MMIO", errno.ENOMEM, "simulated")
            real_register(vm, address, size)

        def close(vm: Vm) -> None:
            if not vm.closed and id(vm) in tracker.live:
                tracker.left_at_close[id(vm)] = set(tracker.live[id(vm)])
            real_close(vm)

        def ram_init(ram: GuestRam, base: int, size: int) -> None:
            real_ram_init(ram, base, size)
            tracker.rams.append(ram)

        monkeypatch.setattr(Kvm, "create_vm", create_vm)
        monkeypatch.setattr(Vm, "set_memory_region", set_memory_region)
        monkeypatch.setattr(Vm, "register_coalesced_mmio", register)
        monkeypatch.setattr(Vm, "close", close)
        monkeypatch.setattr(GuestRam, "__init__", ram_init)

    def reset(self, *, fail_at: int | None = None, fail_coalesced_at: int | None = None) -> None:
        self.vms.clear()
        self.live.clear()
        self.left_at_close.clear()
        self.rams.clear()
        self.creations = self.coalesced = 0
        self.fail_at = fail_at
        self.fail_coalesced_at = fail_coalesced_at

    def check_nothing_left(self) -> None:
        """Every VM made is closed, holding no slot but its RAM when it was; every guest
        RAM mapping made is unmapped."""
        assert self.vms, "no VM was even created"
        for vm in self.vms:
            assert vm.closed
            assert self.left_at_close.get(id(vm), set()) <= {0}, "slots left to the VM's close"
        assert all(not ram._finalizer.alive for ram in self.rams), "guest RAM still mapped"


@pytest.fixture
def tracker(kvm: Kvm, monkeypatch: pytest.MonkeyPatch) -> Iterator[Tracker]:
    # The process-wide all-ones memory is made once and kept: make it before counting fds.
    shared_hole_memory(Backing.MEMFD, None)
    yield Tracker(monkeypatch)


# -- memslots failing part way ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("strategy", "backing"),
    [("shared", Backing.MEMFD), ("shared", Backing.THP), ("fill", None)],
    ids=["shared-memfd", "shared-thp", "fill"],
)
def test_machine_is_complete_or_absent_whichever_memslot_fails(
    kvm: Kvm, tracker: Tracker, strategy: str, backing: Backing | None
) -> None:
    """Build a machine with the kernel refusing (ENOMEM) its 1st, 2nd, ... memslot: each
    time the build fails, every slot made so far is removed, the VM is closed, its RAM and
    mirror pages are unmapped and no fd stays open. Past the last slot the build works.
    (THP has no window: a run longer than 2 MiB takes several slots, so some failures
    come in the middle of a run.)"""
    if backing is Backing.THP and source_mod.unavailable_reason(backing):
        pytest.skip(str(source_mod.unavailable_reason(backing)))
    options = MachineOptions(buses=BUSES, strategy=strategy, backing=backing)
    tracker.reset()
    with PciMachine(kvm, Topology.default(BUSES), options, "scan", SCAN_PARAMS):
        total = tracker.creations
    # The default 16-bus topology leaves 6 hole runs; THP takes one slot per 2 MiB of
    # them: five runs below 2 MiB, and 0x201000-0x1000000 over seven 2 MiB chunks.
    slots = DEFAULT_HOLE_PIECES_THP if backing is Backing.THP else DEFAULT_HOLE_RUNS
    assert total == 1 + 8 + slots  # RAM, 8 mirrors, holes
    before = open_fds()
    for fail_at in range(1, total + 1):
        tracker.reset(fail_at=fail_at)
        with pytest.raises(Exception, match="simulated") as info:
            PciMachine(kvm, Topology.default(BUSES), options, "scan", SCAN_PARAMS)
        assert "Cannot allocate memory" in str(info.value)
        tracker.check_nothing_left()
        assert open_fds() == before, f"fds leaked when memslot {fail_at} failed"
    tracker.reset(fail_at=total + 1)
    with PciMachine(kvm, Topology.default(BUSES), options, "scan", SCAN_PARAMS) as machine:
        scan_ok(machine)
    tracker.check_nothing_left()
    assert open_fds() == before


def test_coalesced_zone_refused_part_way_leaves_nothing(kvm: Kvm, tracker: Tracker) -> None:
    """The same when the kernel refuses a coalesced zone (one per hole run) part way."""
    options = MachineOptions(buses=BUSES, backing=Backing.MEMFD)
    tracker.reset()
    with PciMachine(kvm, Topology.default(BUSES), options, "scan", SCAN_PARAMS):
        zones = tracker.coalesced
    assert zones >= 3
    before = open_fds()
    for fail_at in range(1, zones + 1):
        tracker.reset(fail_coalesced_at=fail_at)
        with pytest.raises(Exception, match="simulated"):
            PciMachine(kvm, Topology.default(BUSES), options, "scan", SCAN_PARAMS)
        tracker.check_nothing_left()
        assert open_fds() == before


@pytest.mark.parametrize(
    ("what", "fail_at"), [("memslot", 1), ("memslot", 2), ("memslot", 3), ("zone", 1), ("zone", 2)]
)
def test_hot_plug_refused_part_way_leaves_the_machine_as_it_was(
    kvm: Kvm, tracker: Tracker, what: str, fail_at: int
) -> None:
    """A hot-plug whose memslot (or zone) is refused: the window's slots, zones and mirrors
    are exactly as before, the function is not there, and the guest still enumerates."""
    options = MachineOptions(buses=BUSES, backing=Backing.MEMFD)
    function = MODELS["virtio-blk"].build(Bdf.parse("00:03.0"))  # splits the first run
    tracker.reset()
    with PciMachine(kvm, Topology.default(BUSES), options, "scan", SCAN_PARAMS) as machine:
        state = (
            dict(machine.guest.vm.memslots),
            set(machine.guest.vm.coalesced_zones),
            set(machine.window.mirrors),
            machine.guest.slots.used,
        )
        # The plug makes two hole slots and a mirror page, and two zones.
        if what == "memslot":
            tracker.reset(fail_at=fail_at)
        else:
            tracker.reset(fail_coalesced_at=fail_at)
        with pytest.raises(Exception, match="simulated"):
            machine.hot_plug(function)
        assert function.bdf not in machine.topology
        assert (
            dict(machine.guest.vm.memslots),
            set(machine.guest.vm.coalesced_zones),
            set(machine.window.mirrors),
            machine.guest.slots.used,
        ) == state
        tracker.reset()
        scan_ok(machine)


@pytest.mark.parametrize(("what", "fail_at"), [("memslot", 1), ("zone", 1)])
def test_hot_unplug_refused_part_way_puts_back_the_slots_it_removed(
    kvm: Kvm, tracker: Tracker, what: str, fail_at: int
) -> None:
    """An unplug merges the two hole runs around the page into one: it removes their
    slots and zones, then makes the merged run's. When the kernel refuses the new slot
    (or zone), the two runs' slots and zones are put back as they were; the function is
    gone (its page exits and reads all ones) and the guest enumerates without it."""
    options = MachineOptions(buses=BUSES, backing=Backing.MEMFD)
    bdf = Bdf.parse("00:03.0")  # splits the first run, 0x1000+0xdf000
    with PciMachine(kvm, Topology.default(BUSES), options, "scan", SCAN_PARAMS) as machine:
        holes = machine.window.holes
        assert holes is not None
        machine.hot_plug(MODELS["virtio-blk"].build(bdf))
        split = {Run(layout.ECAM_BASE + 0x1000, 0x17000), Run(layout.ECAM_BASE + 0x19000, 0xC7000)}
        assert split <= set(holes.runs) and len(holes.runs) == DEFAULT_HOLE_RUNS + 1
        mirror_slot = machine.window.mirrors[bdf].slot
        slots = {n: (m.guest_address, m.size) for n, m in machine.guest.vm.memslots.items()}
        zones = set(machine.guest.vm.coalesced_zones)
        runs = dict(holes.runs)
        used = machine.guest.slots.used
        if what == "memslot":
            tracker.reset(fail_at=fail_at)
        else:
            tracker.reset(fail_coalesced_at=fail_at)
        with pytest.raises(Exception, match="simulated"):
            machine.hot_unplug(bdf)
        assert bdf not in machine.topology and bdf not in machine.window.mirrors
        del slots[mirror_slot]
        assert {n: (m.guest_address, m.size) for n, m in machine.guest.vm.memslots.items()} == (
            slots
        )
        assert set(machine.guest.vm.coalesced_zones) == zones
        assert {run: [p for _, p in s] for run, s in holes.runs.items()} == {
            run: [p for _, p in s] for run, s in runs.items()
        }
        assert machine.guest.slots.used == used - 1
        assert machine.ecam.read(bdf.ecam_offset, 4) == 0xFFFFFFFF
        tracker.reset()
        scan_ok(machine)


@pytest.mark.parametrize("budget", range(0, 16))
def test_slot_budget_too_small_for_the_holes(
    kvm: Kvm, tracker: Tracker, monkeypatch: pytest.MonkeyPatch, budget: int
) -> None:
    """KVM_CAP_NR_MEMSLOTS shrunk to ``budget``: RAM, 8 mirrors and 6 hole runs need 15.
    Below that the build is refused with the numbers, leaving nothing; at 15 it works."""
    monkeypatch.setattr(guestvm, "SlotAllocator", lambda _kernel_budget: SlotAllocator(budget))
    options = MachineOptions(buses=BUSES, backing=Backing.MEMFD)
    needed = 15
    before = open_fds()
    tracker.reset()
    if budget < needed:
        with pytest.raises(Exception, match=r"memslot") as info:
            PciMachine(kvm, Topology.default(BUSES), options, "scan", SCAN_PARAMS)
        assert str(budget) in str(info.value) or budget == 0
        tracker.check_nothing_left()
    else:
        with PciMachine(kvm, Topology.default(BUSES), options, "scan", SCAN_PARAMS) as machine:
            assert machine.guest.slots.free == budget - needed
            scan_ok(machine)
    assert open_fds() == before


# -- a monitor killed in the middle of a scan -----------------------------------------------

KILLED_MONITOR = """
import json, os, sys
from pcihole import layout
from pcihole.holes.source import Backing
from pcihole.kvm import Kvm
from pcihole.machine import MachineOptions
from pcihole.guest.machine import PciMachine
from pcihole.pci.topology import Topology
buses, backing, socket_path = int(sys.argv[1]), Backing(sys.argv[2]), sys.argv[3] or None
params = [layout.ECAM_BASE, buses, 0, 0]  # brute force until a stop flag never raised
kvm = Kvm()
private = PciMachine(kvm, Topology.default(buses), MachineOptions(buses=buses, backing=backing),
                     "scan", params, name="private")
machines = [private]
if socket_path:
    machines.append(PciMachine(kvm, Topology.default(buses), MachineOptions(
        buses=buses, backing=Backing.MEMFD, socket_path=socket_path), "scan", params,
        name="shared"))
report = {m.guest.name: m.report().detail for m in machines}
report["inode"] = os.fstat(private.strategy.memory.source.fd).st_ino
told = []
def on_sync(value):
    if not told:
        told.append(1)
        print(json.dumps(report), flush=True)
private.guest.on_sync(on_sync)
import threading
for m in machines[1:]:
    threading.Thread(target=m.run, daemon=True).start()
private.run()
"""


def holders_of(inode: int) -> list[str]:
    """Every process that has a memfd with ``inode`` open or mapped."""
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    target = os.readlink(f"/proc/{pid}/fd/{fd}")
                    if target.startswith("/memfd:") and os.stat(f"/proc/{pid}/fd/{fd}").st_ino == (
                        inode
                    ):
                        found.append(f"{pid} fd {fd}")
            with open(f"/proc/{pid}/maps") as maps:
                for line in maps:
                    fields = line.split()
                    memfd = len(fields) >= 6 and fields[5].startswith("/memfd:")
                    if memfd and int(fields[4]) == inode:
                        found.append(f"{pid} maps {fields[0]}")
                        break
    return found


def held_by(pid: int, inode: int) -> tuple[int, list[dict[str, int]]]:
    """How process ``pid`` holds the memfd ``inode``: the links the file has (0: nothing
    but its holders keeps it, so its pages go with them) and each of its mappings' smaps
    counters (kB)."""
    links = [
        os.stat(f"/proc/{pid}/fd/{fd}").st_nlink
        for fd in os.listdir(f"/proc/{pid}/fd")
        if os.readlink(f"/proc/{pid}/fd/{fd}").startswith("/memfd:")
        and os.stat(f"/proc/{pid}/fd/{fd}").st_ino == inode
    ]
    assert links, f"process {pid} has no fd of memfd inode {inode}"
    return max(links), [vma.counters for vma in vmas(pid) if vma.inode == str(inode)]


def settle(condition: Callable[[], bool], seconds: float = HANG_SECONDS) -> bool:
    """Whether ``condition`` holds within ``seconds`` (the kernel frees a dead process's
    memory right after it is reaped; other tests on the host may add noise meanwhile)."""
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


@contextlib.contextmanager
def hole_service(path: str, backing: str = "memfd") -> Iterator[subprocess.Popen[str]]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "pcihole", "serve-holes", "--socket", path, "--backing", backing],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=CHILD_ENV,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("serving"), proc.stderr.read() if proc.stderr else line
        yield proc
    finally:
        if proc.poll() is None:
            proc.terminate()
        proc.communicate(timeout=WAIT)


def memfd_inode_of(pid: int) -> int:
    """The inode of the all-ones memfd a hole service process holds."""
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            if os.readlink(f"/proc/{pid}/fd/{fd}").startswith("/memfd:pcihole-allones"):
                return os.stat(f"/proc/{pid}/fd/{fd}").st_ino
    raise AssertionError(f"process {pid} holds no all-ones memfd")


@pytest.fixture
def sock_dir() -> Iterator[str]:
    with tempfile.TemporaryDirectory(prefix="ph-", dir="/tmp") as path:
        yield path


def start_killable(
    buses: int, backing: str, socket_path: str
) -> tuple[subprocess.Popen[str], dict[str, Any]]:
    proc = subprocess.Popen(
        [sys.executable, "-c", KILLED_MONITOR, str(buses), backing, socket_path],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=CHILD_ENV,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line:
        proc.kill()
        pytest.fail(f"monitor failed: {proc.communicate()[1]}")
    return proc, json.loads(line)


def test_monitor_killed_mid_scan_leaves_nothing_and_the_service_serves_on(sock_dir: str) -> None:
    """SIGKILL a monitor while its guests scan: one with a private memfd, one sharing the
    service's. The private chunk vanishes from the host (an unlinked file no process holds
    any more), the service's stays, and the service goes on serving new monitors."""
    path = os.path.join(sock_dir, "holes.sock")
    chunk = source_mod.DEFAULT_MEMFD_CHUNK
    with hole_service(path) as service:
        service_inode = memfd_inode_of(service.pid)
        monitor, report = start_killable(BUSES, "memfd", path)
        assert "from the hole service" in report["shared"]
        assert "private" in report["private"]
        private_inode = report["inode"]
        links, mapped = held_by(monitor.pid, private_inode)
        assert links == 0 and sum(m["Rss"] for m in mapped) >= chunk >> 10, (links, mapped)
        assert monitor.poll() is None  # it told us after its first pass: inside the scan
        monitor.send_signal(signal.SIGKILL)
        monitor.communicate(timeout=WAIT)
        assert monitor.returncode == -signal.SIGKILL
        # An unlinked file nobody holds is freed by the kernel, pages and all: no need
        # for the host-wide Shmem, which every other process moves too.
        assert settle(lambda: not holders_of(private_inode)), holders_of(private_inode)
        # the service and its chunk are untouched, and it serves the next monitor
        assert service.poll() is None
        assert holders_of(service_inode) and memfd_inode_of(service.pid) == service_inode
        with connect(path) as again:
            assert os.fstat(again.fd or -1).st_ino == service_inode
        scan = subprocess.run(
            [
                sys.executable,
                "-m",
                "pcihole",
                "scan",
                "--buses",
                "4",
                "--backing",
                "memfd",
                "--socket",
                path,
                "--json",
            ],
            capture_output=True,
            text=True,
            env=CHILD_ENV,
            timeout=WAIT,
        )
        assert scan.returncode == 0, scan.stderr
        assert "from the hole service" in json.loads(scan.stdout)["backing_detail"]


def test_monitor_killed_mid_scan_gives_its_huge_page_back(huge_page: int, sock_dir: str) -> None:
    """The same with a hugetlb chunk: the monitor held its own huge page (an unlinked
    hugetlb memfd, mapped with 2 MiB pages), and after the kill no process holds that
    file, so its page is back in the pool. Only the test's own file is checked: the
    host-wide free count moves with every other user of the pool."""
    monitor, report = start_killable(BUSES, "hugetlb", "")
    try:
        assert "hugetlb" in report["private"]
        links, mapped = held_by(monitor.pid, report["inode"])
        assert links == 0, links
        # its own 2 MiB page (the file holds one), however many mappings show it
        assert {m["KernelPageSize"] for m in mapped} == {2048}, mapped
        assert max(m["Shared_Hugetlb"] + m["Private_Hugetlb"] for m in mapped) == 2048
    finally:
        monitor.send_signal(signal.SIGKILL)
        monitor.communicate(timeout=WAIT)
    assert settle(lambda: not holders_of(report["inode"])), holders_of(report["inode"])


# -- the hole service restarted under its clients -------------------------------------------

CLIENT = """
import json, os, sys
from pcihole import layout
from pcihole.holes.source import Backing
from pcihole.kvm import Kvm
from pcihole.machine import MachineOptions
from pcihole.guest.machine import PciMachine
from pcihole.pci.topology import Topology
buses, passes = int(sys.argv[2]), int(sys.argv[3])
options = MachineOptions(buses=buses, backing=Backing.MEMFD, socket_path=sys.argv[1])
with Kvm() as kvm, PciMachine(kvm, Topology.default(buses), options, "scan",
                              [layout.ECAM_BASE, buses, 0, passes]) as machine:
    source = machine.strategy.memory.source
    print(json.dumps({"detail": machine.report().detail,
                      "inode": os.fstat(source.fd).st_ino}), flush=True)
    syncs = []
    def on_sync(value):
        syncs.append(value)
        if len(syncs) % 2 == 0:  # found, probes: one pass done; wait for the host
            source.verify()
            print(json.dumps({"found": syncs[-2], "probes": value,
                              "inode": os.fstat(source.fd).st_ino}), flush=True)
            sys.stdin.readline()
    machine.guest.on_sync(on_sync)
    result = machine.run()
    print(json.dumps({"reason": result.reason.value}), flush=True)
"""


class Client:
    def __init__(self, path: str, passes: int) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", CLIENT, path, str(BUSES), str(passes)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=CHILD_ENV,
        )
        self.hello = self.read()

    def read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            self.proc.kill()
            raise AssertionError(f"client failed: {self.proc.communicate()[1]}")
        data: dict[str, Any] = json.loads(line)
        return data

    def go(self) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write("\n")
        self.proc.stdin.flush()
        return self.read()

    def finish(self) -> None:
        _, err = self.proc.communicate(timeout=WAIT)
        assert self.proc.returncode == 0, err

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.communicate()


def test_service_restarted_while_clients_run(sock_dir: str) -> None:
    """Kill the hole service (SIGKILL, socket file left behind) while a client's guest is
    between passes, start a new one on the same path: the old client keeps its mapping
    (same chunk, still sealed all ones, next passes find the same functions), a new
    client gets the new service's chunk."""
    path = os.path.join(sock_dir, "holes.sock")
    functions = len(expected_functions())
    first_service = subprocess.Popen(
        [sys.executable, "-m", "pcihole", "serve-holes", "--socket", path, "--backing", "memfd"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=CHILD_ENV,
    )
    clients: list[Client] = []
    try:
        assert first_service.stdout is not None
        assert first_service.stdout.readline().startswith("serving")
        old_inode = memfd_inode_of(first_service.pid)
        old = Client(path, passes=3)
        clients.append(old)
        assert "from the hole service" in old.hello["detail"]
        assert old.hello["inode"] == old_inode
        assert old.read() == {"found": functions, "probes": BUSES * 256, "inode": old_inode}
        first_service.send_signal(signal.SIGKILL)
        first_service.communicate(timeout=WAIT)
        assert os.path.exists(path)  # a stale socket file
        with pytest.raises(Exception, match="Connection refused"):
            connect(path, timeout=2)
        assert old.go() == {"found": functions, "probes": BUSES * 256, "inode": old_inode}
        with hole_service(path) as second_service:
            new_inode = memfd_inode_of(second_service.pid)
            assert new_inode != old_inode
            new = Client(path, passes=1)
            clients.append(new)
            assert "from the hole service" in new.hello["detail"]
            assert new.hello["inode"] == new_inode
            assert new.read()["found"] == functions
            assert new.go() == {"reason": "done"}
            assert old.go() == {"found": functions, "probes": BUSES * 256, "inode": old_inode}
            assert old.go() == {"reason": "done"}
            for client in clients:
                client.finish()
        # the old chunk lived on in the old client only; with it gone, it is gone
        assert settle(lambda: not holders_of(old_inode))
    finally:
        for client in clients:
            client.kill()
        if first_service.poll() is None:
            first_service.kill()
            first_service.communicate()


# -- a bad memfd offered to `pcihole scan --socket` -----------------------------------------


def unsealed_memfd() -> int:
    fd = os.memfd_create("fake-allones", os.MFD_ALLOW_SEALING)
    os.pwrite(fd, b"\xff" * source_mod.DEFAULT_MEMFD_CHUNK, 0)
    return fd


def tampered_memfd() -> int:
    fd = os.memfd_create("fake-allones", os.MFD_ALLOW_SEALING)
    os.pwrite(fd, b"\xff" * (source_mod.DEFAULT_MEMFD_CHUNK - 1) + b"\x00", 0)
    add_seals(fd, REQUIRED_SEALS)
    return fd


def writable_memfd() -> int:
    """Sealed against everything but writes: the sender could change it later."""
    fd = os.memfd_create("fake-allones", os.MFD_ALLOW_SEALING)
    os.pwrite(fd, b"\xff" * source_mod.DEFAULT_MEMFD_CHUNK, 0)
    add_seals(fd, Seal.SHRINK | Seal.GROW | Seal.SEAL)
    return fd


FAKES = {
    "unsealed": (unsealed_memfd, "lacks seals WRITE|SHRINK|GROW|SEAL"),
    "writable": (writable_memfd, "lacks seals WRITE"),
    "tampered": (tampered_memfd, "is not all 0xff"),
}


@pytest.mark.parametrize("case", sorted(FAKES))
def test_scan_refuses_a_bad_memfd_from_a_fake_service_and_says_so(sock_dir: str, case: str) -> None:
    """A fake service answers the protocol correctly, announcing every seal, but sends a
    memfd that is unsealed, still writable, or not all ones. ``pcihole scan --socket``
    refuses it, falls back to a private chunk, says why, and finds the right functions."""
    make_fd, reason = FAKES[case]
    path = os.path.join(sock_dir, "fake.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(4)
    listener.settimeout(WAIT)
    served = []

    def fake() -> None:
        with contextlib.suppress(OSError):
            conn, _ = listener.accept()
            with conn:
                request = conn.recv(len(REQUEST))
                fd = make_fd()
                header = {
                    "protocol": 1,
                    "size": source_mod.DEFAULT_MEMFD_CHUNK,
                    "backing": "memfd",
                    "seals": int(REQUIRED_SEALS),
                }
                socket.send_fds(conn, [json.dumps(header).encode() + b"\n"], [fd])
                os.close(fd)
                served.append(request)

    thread = threading.Thread(target=fake, daemon=True)
    thread.start()
    try:
        scan = subprocess.run(
            [sys.executable, "-m", "pcihole", "scan", "--buses", "4", "--socket", path, "--json"],
            capture_output=True,
            text=True,
            env=CHILD_ENV,
            timeout=WAIT,
        )
    finally:
        listener.close()
        join(thread, "the fake service")
    assert served == [REQUEST]
    assert scan.returncode == 0, scan.stderr
    report = json.loads(scan.stdout)
    detail = report["backing_detail"]
    assert f"hole service at {path} sent an unacceptable source" in detail
    assert reason in detail
    assert "using a private" in detail
    assert report["functions_found"] == [str(f.bdf) for f in Topology.default(4)]


def test_shared_strategy_reports_where_its_memory_came_from(kvm: Kvm, sock_dir: str) -> None:
    """In-process, the same fall-back reaches the strategy's note (what the CLI prints)."""
    path = os.path.join(sock_dir, "none.sock")  # nobody listens
    options = MachineOptions(buses=2, backing=Backing.MEMFD, socket_path=path)
    with PciMachine(kvm, Topology.default(2), options, "scan", [layout.ECAM_BASE, 2, 0, 1]) as m:
        strategy = m.strategy
        assert isinstance(strategy, SharedStrategy)
        assert "cannot reach the hole service" in strategy.detail
        assert "private memfd source" in strategy.detail
        m.run().check()
