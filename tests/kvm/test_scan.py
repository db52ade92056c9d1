"""`pcihole scan` on real guests: every strategy finds the same functions; the figures
it reports hang together."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from pcihole import layout
from pcihole.holes.source import Backing
from pcihole.kvm import Kvm
from pcihole.machine import MachineOptions
from pcihole.measure.scan import run_scan
from tests.support import CHILD_ENV, HANG_SECONDS, pcihole_command, run_pcihole

BUSES = 16
EXPECTED = ["00:00.0", "00:1c.0", "00:1c.1", "00:1f.0", "00:1f.2", "00:1f.3", "01:00.0", "02:00.0"]


@pytest.mark.parametrize("strategy", ["shared", "fill", "trap"])
def test_scan_figures_are_consistent(kvm: Kvm, strategy: str) -> None:
    options = MachineOptions(buses=BUSES, strategy=strategy)
    report = run_scan(kvm, options, vms=2, mode="both").as_json()
    assert report["functions_found"] == EXPECTED
    probes = BUSES * 256
    assert report["probes_per_vm"]["brute"] == probes
    window = layout.ecam_size(BUSES)
    hole_pages = probes - len(EXPECTED)
    if strategy == "shared":
        assert report["exits_per_vm"] == {"hole": 0, "device": 0, "device_reads": 0}
        assert report["hole_memory_bytes_per_vm"] == 0
        assert 0 < report["hole_memory_bytes_total"] <= layout.HUGE_PAGE_SIZE
    elif strategy == "fill":
        assert report["exits_per_vm"]["hole"] == 0
        assert report["hole_memory_bytes_per_vm"] == window
        assert report["hole_memory_bytes_total"] == 2 * window
    else:
        # every absent page probed once by brute force, plus the recursive probes
        recursive_holes = report["probes_per_vm"]["recursive"] - len(EXPECTED)
        assert report["exits_per_vm"]["hole"] == hole_pages + recursive_holes
        assert report["hole_memory_bytes_total"] == 0
    assert report["memslots_per_vm"] >= len(EXPECTED)


def test_shared_slots_are_one_per_run_with_a_window(kvm: Kvm) -> None:
    options = MachineOptions(buses=BUSES, strategy="shared", backing=Backing.MEMFD)
    report = run_scan(kvm, options, vms=1).as_json()
    # 16 buses of the default topology: 8 function pages and the 6 hole runs between them
    assert report["memslots_per_vm"] == 6 + 8


def test_ring0_scan_finds_the_same(kvm: Kvm) -> None:
    options = MachineOptions(buses=2, strategy="shared", ring=0)
    report = run_scan(kvm, options, vms=1, mode="recursive").as_json()
    assert report["functions_found"] == [
        "00:00.0",
        "00:1c.0",
        "00:1f.0",
        "00:1f.2",
        "00:1f.3",
        "01:00.0",
    ]


def test_cli_json_and_bad_input() -> None:
    out = run_pcihole("scan", "--buses", "4", "--vms", "2", "--json")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    for key in (
        "strategy",
        "backing",
        "vms",
        "buses",
        "probes_per_vm",
        "functions_found",
        "exits_per_vm",
        "memslots_per_vm",
        "hole_memory_bytes_total",
        "hole_memory_bytes_per_vm",
        "setup_seconds",
        "scan_seconds",
    ):
        assert key in data
    assert data["vms"] == 2
    bad = run_pcihole("scan", "--buses", "0")
    assert bad.returncode == 2
    assert bad.stderr.count("\n") == 1 and "--buses" in bad.stderr


SHARER = """
import sys
from pcihole import layout
from pcihole.host.smaps import resident_bytes
from pcihole.holes.source import Backing
from pcihole.kvm import Kvm
from pcihole.machine import MachineOptions
from pcihole.guest.machine import PciMachine
from pcihole.pci.topology import Topology
options = MachineOptions(buses=8, strategy="shared", backing=Backing.MEMFD, socket_path=sys.argv[1])
with Kvm() as kvm:
    machines = [PciMachine(kvm, Topology.default(8), options, "scan",
                           [layout.ECAM_BASE, 8, 0, 1]) for _ in range(2)]
    for machine in machines:
        machine.run().check()
    chunk = machines[0].strategy.memory.source
    print(machines[0].report().detail, flush=True)
    sys.stdin.readline()  # wait until every sharer has touched the chunk
    print(resident_bytes([(chunk.address, chunk.size)]), flush=True)
    sys.stdin.readline()
"""


def test_processes_running_vms_share_one_copy(kvm: Kvm, tmp_path: object) -> None:
    socket_path = os.path.join(str(tmp_path), "holes.sock")
    service = subprocess.Popen(
        pcihole_command("serve-holes", "--socket", socket_path, "--backing", "memfd"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=CHILD_ENV,
    )
    try:
        assert service.stdout is not None
        assert "serving" in service.stdout.readline()
        sharers = [
            subprocess.Popen(
                [sys.executable, "-c", SHARER, socket_path],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
                env=CHILD_ENV,
            )
            for _ in range(3)
        ]
        details = [p.stdout.readline() for p in sharers if p.stdout]
        assert all("from the hole service" in d for d in details), details
        for p in sharers:
            assert p.stdin is not None
            p.stdin.write("\n")
            p.stdin.flush()
        pss = [int(p.stdout.readline()) for p in sharers if p.stdout]
        chunk = layout.HUGE_PAGE_SIZE
        # each of 3 sharers (plus the service's own mapping) holds a quarter of one copy,
        # not a whole one: smaps Pss splits shared pages among the processes mapping them
        for value in pss:
            assert value <= chunk // 3, pss
        assert sum(pss) <= chunk
        for p in sharers:  # the same from the process-wide rollup: shmem is shared
            rollup = _rollup(p.pid)
            assert rollup["Pss_Shmem"] * 1024 <= chunk // 3, rollup
            assert rollup["Shared_Clean"] * 1024 >= chunk, rollup
        for p in sharers:
            assert p.stdin is not None
            p.stdin.write("\n")
            p.stdin.close()
            assert p.wait(timeout=HANG_SECONDS) == 0
    finally:
        service.terminate()
        service.wait(timeout=HANG_SECONDS)


def _rollup(pid: int) -> dict[str, int]:
    """/proc/PID/smaps_rollup as name -> kB."""
    values = {}
    with open(f"/proc/{pid}/smaps_rollup") as rollup:
        for line in rollup:
            name, _, rest = line.partition(":")
            fields = rest.split()
            if len(fields) == 2 and fields[1] == "kB":
                values[name] = int(fields[0])
    return values


def test_scan_bare_finds_the_host_bridge_and_the_devices_given() -> None:
    out = run_pcihole("scan", "--bare", "--device", "00:03.0=nvme", "--buses", "1")
    assert out.returncode == 0, out.stderr
    assert "found 2 functions:" in out.stdout
    assert "00:00.0  8086:29c0" in out.stdout and "00:03.0  1b36:0010" in out.stdout
