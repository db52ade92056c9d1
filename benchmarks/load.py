"""Load: many VMs scanning a full ECAM window at once, all sharing one all-ones chunk.

Two phases, each against one ``pcihole serve-holes`` service started for the run:

- one process with ``--one-process-vms`` VMs (default 64);
- ``--processes`` processes with ``--vms`` VMs each (default 8 x 8).

Every VM enumerates the whole window (``--buses``, default 256) by brute force at ring 3
with the shared strategy, all of them released at the same moment. Checked: every VM
finds exactly the configured functions; the chunk's Pss summed over every process (the
workers and the service) is at most one chunk, and only one chunk file exists. Reported:
durations, each process's peak RSS (VmHWM), the host's MemAvailable low-water mark and
how far Shmem rose (host-wide: other work on the host shows there too).

    python benchmarks/load.py --json load.json
    python benchmarks/load.py --backing hugetlb --json load-hugetlb.json   # root

Exit status 0 when every check passed, 1 otherwise.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pcihole import layout
from pcihole.holes import source as source_mod
from pcihole.holes.source import Backing, HoleSourceError
from pcihole.host import info as hostinfo
from pcihole.host.info import meminfo

REPO_ROOT = Path(__file__).resolve().parent.parent
CHUNK_NAME = "/memfd:pcihole-allones"
SAMPLE_SECONDS = 0.02
WAIT_SECONDS = 600.0


# -- the worker: VMs in one process ------------------------------------------------------------


def worker(buses: int, vms: int, socket_path: str, backing: str) -> int:
    """Build ``vms`` machines, say so, scan on "go", report, close on "exit"."""
    from pcihole.guest.machine import PciMachine
    from pcihole.guest.vm import run_all
    from pcihole.kvm import Kvm
    from pcihole.machine import MachineOptions
    from pcihole.measure.scan import RECORD
    from pcihole.pci.topology import Topology

    def say(data: dict[str, Any]) -> None:
        print(json.dumps(data), flush=True)

    expected = sorted(
        (
            f.bdf.bus << 8 | f.bdf.devfn,
            f.config.read(0, 4),
            f.config.read(8, 4),
            f.config.read(12, 4),
        )
        for f in Topology.default(buses)
    )
    options = MachineOptions(
        buses=buses, strategy="shared", backing=Backing(backing), socket_path=socket_path, ring=3
    )
    params = [layout.ECAM_BASE, buses, 0, 1]  # brute force, one pass
    started = time.perf_counter()
    machines: list[PciMachine] = []
    with Kvm() as kvm:
        try:
            for index in range(vms):
                machines.append(
                    PciMachine(
                        kvm, Topology.default(buses), options, "scan", params, name=f"vm{index}"
                    )
                )
            setup = time.perf_counter() - started
            say(
                {
                    "ready": True,
                    "setup_seconds": setup,
                    "detail": machines[0].report().detail,
                    "memslots_per_vm": machines[0].memslots,
                }
            )
            if sys.stdin.readline().strip() != "go":
                return 1
            started = time.perf_counter()
            results = run_all([m.guest for m in machines])
            scan = time.perf_counter() - started
            errors = []
            for machine, result in zip(machines, results, strict=True):
                name = machine.guest.name
                if not result.ok:
                    errors.append(f"{name}: {result.reason.value}: {result.detail}")
                    continue
                found, probes = result.syncs
                raw = machine.guest.results(RECORD.size * found)
                records = sorted(RECORD.unpack_from(raw, i * RECORD.size) for i in range(found))
                if probes != buses * 256:
                    errors.append(f"{name}: {probes} probes, want {buses * 256}")
                if records != expected:
                    errors.append(
                        f"{name}: found {len(records)} functions, not the "
                        f"{len(expected)} configured (or not as configured)"
                    )
            say(
                {
                    "done": True,
                    "scan_seconds": scan,
                    "vms": len(results),
                    "vms_found_exactly": len(results) - len(errors),
                    "errors": errors[:10],
                    "functions": len(expected),
                }
            )
            sys.stdin.readline()  # "exit": the parent has measured us
        finally:
            for machine in machines:
                machine.close()
    return 0


# -- measuring processes ----------------------------------------------------------------------


def status_kib(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def rollup_kib(pid: int, field: str) -> int:
    """One counter of /proc/PID/smaps_rollup (summed before rounding, unlike per-VMA Pss)."""
    with open(f"/proc/{pid}/smaps_rollup") as rollup:
        for line in rollup:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def chunk_usage(pid: int) -> dict[str, Any]:
    """Pss of the all-ones chunk's mappings in ``pid``, and the chunk files' inodes."""
    pss = hugetlb = mappings = size = 0
    inodes: set[int] = set()
    inside = False
    with open(f"/proc/{pid}/smaps") as smaps:
        for line in smaps:
            head = line.split(maxsplit=1)[0]
            if "-" in head and not head.endswith(":"):
                fields = line.split()
                inside = len(fields) >= 6 and fields[5].startswith(CHUNK_NAME)
                if inside:
                    mappings += 1
                    inodes.add(int(fields[4]))
                    start, _, end = fields[0].partition("-")
                    size += int(end, 16) - int(start, 16)
            elif inside:
                name, _, rest = line.partition(":")
                if name == "Pss":
                    pss += int(rest.split()[0])
                elif name in ("Shared_Hugetlb", "Private_Hugetlb"):
                    hugetlb = max(hugetlb, int(rest.split()[0]))
    return {
        "pss_kib": pss,
        "hugetlb_kib": hugetlb,
        "mappings": mappings,
        "inodes": inodes,
        "mapped_kib": size >> 10,
    }


class HostSampler:
    """Samples /proc/meminfo until stopped: MemAvailable low-water, Shmem high-water."""

    def __init__(self) -> None:
        self.low_available = self.high_shmem = self.low_huge_free = -1
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while True:
            info = meminfo()
            available, shmem = info["MemAvailable"], info["Shmem"]
            huge_free = info.get("HugePages_Free", 0)
            if self.low_available < 0 or available < self.low_available:
                self.low_available = available
            self.high_shmem = max(self.high_shmem, shmem)
            if self.low_huge_free < 0 or huge_free < self.low_huge_free:
                self.low_huge_free = huge_free
            if self._stop.wait(SAMPLE_SECONDS):
                return

    def __enter__(self) -> HostSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


# -- the parent -------------------------------------------------------------------------------


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    return env


@contextlib.contextmanager
def hole_service(socket_path: str, backing: str) -> Iterator[subprocess.Popen[str]]:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pcihole",
            "serve-holes",
            "--socket",
            socket_path,
            "--backing",
            backing,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=child_env(),
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line.startswith("serving"):
            raise SystemExit(f"serve-holes did not start: {proc.communicate()[1].strip()}")
        yield proc
    finally:
        proc.terminate()
        proc.communicate(timeout=WAIT_SECONDS)


def read_json(proc: subprocess.Popen[str]) -> dict[str, Any]:
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line:
        proc.kill()
        raise SystemExit(f"worker {proc.pid} failed: {proc.communicate()[1].strip()[-2000:]}")
    data: dict[str, Any] = json.loads(line)
    return data


def tell(proc: subprocess.Popen[str], word: str) -> None:
    assert proc.stdin is not None
    proc.stdin.write(word + "\n")
    proc.stdin.flush()


def run_phase(
    name: str,
    processes: int,
    vms: int,
    buses: int,
    socket_path: str,
    backing: str,
    service: subprocess.Popen[str],
    shmem_baseline: int,
    chunk_kib: int,
) -> dict[str, Any]:
    print(f"{name}: {processes} process(es) x {vms} VM(s), {buses} buses", file=sys.stderr)
    huge_free_at_start = meminfo().get("HugePages_Free", 0)
    started = time.perf_counter()
    workers = [
        subprocess.Popen(
            [
                sys.executable,
                str(Path(__file__).resolve()),
                "--worker",
                str(buses),
                str(vms),
                socket_path,
                backing,
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=child_env(),
        )
        for _ in range(processes)
    ]
    try:
        with HostSampler() as sampler:
            ready = [read_json(proc) for proc in workers]
            built = time.perf_counter()
            for proc in workers:
                tell(proc, "go")
            done = [read_json(proc) for proc in workers]
            scanned = time.perf_counter()
            usage = {proc.pid: chunk_usage(proc.pid) for proc in [*workers, service]}
            pss_shmem = {
                proc.pid: rollup_kib(proc.pid, "Pss_Shmem") for proc in [*workers, service]
            }
            hwm = {proc.pid: status_kib(proc.pid, "VmHWM") for proc in workers}
            rss = {
                proc.pid: {f: status_kib(proc.pid, f) for f in ("RssAnon", "RssFile", "RssShmem")}
                for proc in workers
            }
            for proc in workers:
                tell(proc, "exit")
            for proc in workers:
                _, err = proc.communicate(timeout=WAIT_SECONDS)
                if proc.returncode:
                    raise SystemExit(f"worker {proc.pid} exited {proc.returncode}: {err[-2000:]}")
    finally:
        for proc in workers:
            if proc.poll() is None:
                proc.kill()
    inodes = set().union(*(u["inodes"] for u in usage.values()))
    pss_total = sum(u["pss_kib"] for u in usage.values())
    hugetlb_total = max((u["hugetlb_kib"] for u in usage.values()), default=0)
    total_vms = sum(d["vms"] for d in done)
    exact = sum(d["vms_found_exactly"] for d in done)
    errors = [e for d in done for e in d["errors"]]
    shmem_rise = sampler.high_shmem - shmem_baseline
    checks = {
        "every_vm_found_exactly_the_configured_functions": exact == total_vms == processes * vms,
        "one_chunk_file": len(inodes) == 1,
        "chunk_pss_sum_within_one_chunk": pss_total <= chunk_kib,
        "shmem_pss_sum_within_one_chunk": sum(pss_shmem.values()) <= chunk_kib + len(pss_shmem),
        "no_huge_page_taken_by_the_vms": sampler.low_huge_free == huge_free_at_start,
        "every_vm_shared_the_service_chunk": all(
            "from the hole service" in r["detail"] for r in ready
        ),
    }
    phase = {
        "phase": name,
        "processes": processes,
        "vms_per_process": vms,
        "vms": total_vms,
        "buses": buses,
        "functions_per_vm": done[0]["functions"],
        "vms_found_exactly": exact,
        "errors": errors[:10],
        "hole_memory_detail": ready[0]["detail"],
        "memslots_per_vm": ready[0]["memslots_per_vm"],
        "duration_seconds": round(scanned - started, 3),
        "setup_seconds_max": round(max(r["setup_seconds"] for r in ready), 3),
        "startup_and_setup_seconds": round(built - started, 3),
        "scan_seconds": round(scanned - built, 3),
        "scan_seconds_per_process": [round(d["scan_seconds"], 3) for d in done],
        "chunk_kib": chunk_kib,
        "chunk_pss_kib_sum": pss_total,
        "chunk_pss_kib_by_process": {str(pid): u["pss_kib"] for pid, u in usage.items()},
        "chunk_pss_note": "per-VMA Pss is rounded down to 1 KiB in smaps, so with hundreds of "
        "mappings the sum undercounts; pss_shmem_kib_sum (smaps_rollup) does not",
        "pss_shmem_kib_sum": sum(pss_shmem.values()),
        "pss_shmem_kib_by_process": {str(pid): kib for pid, kib in pss_shmem.items()},
        "chunk_hugetlb_kib": hugetlb_total,
        "chunk_mappings_by_process": {str(pid): u["mappings"] for pid, u in usage.items()},
        "chunk_files": len(inodes),
        "vmhwm_kib_by_worker": {str(pid): kib for pid, kib in hwm.items()},
        "vmhwm_kib_max": max(hwm.values()),
        "vmhwm_note": "VmHWM counts the shared chunk once per mapping that touched it (a "
        "256 MiB window of one 2 MiB memfd shows as up to 256 MiB of RssShmem); RssAnon is "
        "what the process owns",
        "rss_kib_by_worker_after_scan": {str(pid): kib for pid, kib in rss.items()},
        "vmhwm_kib_service": status_kib(service.pid, "VmHWM"),
        "mem_available_low_kib": sampler.low_available,
        "shmem_rise_kib": shmem_rise,
        "huge_pages_free_low": sampler.low_huge_free,
        "checks": checks,
        "ok": all(checks.values()),
    }
    print(
        f"{name}: {exact}/{total_vms} VMs found all {phase['functions_per_vm']} functions; "
        f"scan {phase['scan_seconds']} s, run {phase['duration_seconds']} s; chunk Pss "
        f"{pss_total} KiB in all ({len(inodes)} file), Pss_Shmem {sum(pss_shmem.values())} KiB; "
        f"peak RSS {phase['vmhwm_kib_max']} KiB; "
        f"MemAvailable low {sampler.low_available} KiB; Shmem +{shmem_rise} KiB",
        file=sys.stderr,
    )
    return phase


@contextlib.contextmanager
def huge_page_for(backing: str) -> Iterator[str]:
    """One 2 MiB huge page for a hugetlb run: reserved here (root) if none is free."""
    if backing != "hugetlb" or source_mod.free_huge_pages() > 0:
        yield "none reserved"
        return
    try:
        with source_mod.extra_huge_pages(1):
            yield "reserved one 2 MiB page for the run"
    except HoleSourceError as error:
        raise SystemExit(f"--backing hugetlb: {error}") from None


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        buses, vms, socket_path, backing = sys.argv[2:6]
        return worker(int(buses), int(vms), socket_path, backing)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--one-process-vms", type=int, default=64)
    parser.add_argument("--processes", type=int, default=8)
    parser.add_argument("--vms", type=int, default=8, help="VMs per process (second phase)")
    parser.add_argument("--buses", type=int, default=layout.ECAM_MAX_BUSES)
    parser.add_argument("--backing", choices=["memfd", "hugetlb"], default="memfd")
    parser.add_argument("--json", metavar="FILE")
    args = parser.parse_args()
    for name, value, low, high in (
        ("--one-process-vms", args.one_process_vms, 0, 256),
        ("--processes", args.processes, 0, 64),
        ("--vms", args.vms, 1, 256),
        ("--buses", args.buses, 1, layout.ECAM_MAX_BUSES),
    ):
        if not low <= value <= high:
            parser.error(f"{name} must be {low} to {high}, got {value}")
    if args.json and not os.path.isdir(os.path.dirname(os.path.abspath(args.json))):
        parser.error(f"--json: directory of {args.json} does not exist")
    started = time.perf_counter()
    shmem_baseline = meminfo()["Shmem"]
    phases = []
    with (
        huge_page_for(args.backing) as reserved,
        tempfile.TemporaryDirectory(prefix="pcihole-load-") as work,
    ):
        socket_path = os.path.join(work, "holes.sock")
        with hole_service(socket_path, args.backing) as service:
            chunk = chunk_usage(service.pid)
            chunk_kib = chunk["mapped_kib"]  # the service maps its chunk once
            common = (args.buses, socket_path, args.backing, service, shmem_baseline, chunk_kib)
            if args.one_process_vms:
                phases.append(run_phase("one process", 1, args.one_process_vms, *common))
            if args.processes:
                phases.append(run_phase("processes", args.processes, args.vms, *common))
    result = {
        "benchmark": "load",
        "command": " ".join([os.path.basename(sys.executable), *sys.argv]),
        "backing": args.backing,
        "huge_page": reserved,
        "service_chunk_mappings": chunk["mappings"],
        "ring": 3,
        "strategy": "shared",
        "mode": "brute",
        "phases": phases,
        "ok": all(phase["ok"] for phase in phases),
        "duration_seconds": round(time.perf_counter() - started, 3),
        "host": hostinfo.collect(),
    }
    if args.json:
        with open(args.json, "w") as out:
            json.dump(result, out, indent=2)
    print(json.dumps({"ok": result["ok"], "duration_seconds": result["duration_seconds"]}))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
