"""One firmware image, two monitors: QEMU q35 and ``pcihole boot`` scan PCI side by side.

The image is ``pcihole/guest/firmware/enumerate.S``: from the reset vector it enables ECAM
through the host bridge's PCIEXBAR, scans every function page of 256 buses by brute
force at ring 3 (twice: first touch, then warm) and once at ring 0, times each scan with
RDTSC and prints what it found on the debug console; then it leaves through debug-exit.
Both monitors run the very same bytes:

    qemu-system-x86_64 -accel kvm -machine q35 -nodefaults -display none -bios IMAGE \\
        -chardev stdio,id=dbg -device isa-debugcon,iobase=0x402,chardev=dbg \\
        -device isa-debug-exit,iobase=0xf4,iosize=0x04
    python -m pcihole boot --bios IMAGE --strategy shared

Under QEMU every probe is an MMIO exit; under pcihole (``shared``) holes and present
functions are mapped read-only, so the ring-3 scans should make no exit at all. Figures:
the guest's own TSC ticks per scan (the main measure), the same in seconds at the TSC
frequency KVM reports, wall time per scan seen by the host, whole-run wall time, exits.
QEMU is installed with apt-get if it is missing (Debian package qemu-system-x86).

    python benchmarks/vs_qemu.py --json vs_qemu.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import select
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pcihole import __version__
from pcihole.guest.firmware import FirmwareOptions, build_firmware, exit_status, parse_output
from pcihole.measure.qemu import QEMU, QEMU_PACKAGE
from pcihole.measure.qemu import qemu_command as reference_command

TARGET_RATIO = 100.0
"""The goal: the exit-less ring-3 scan at least this many times faster than QEMU's."""


class BenchError(Exception):
    pass


# --- QEMU --------------------------------------------------------------------------------
def ensure_qemu() -> str:
    """The path of qemu-system-x86_64, installing the Debian package if it is missing."""
    path = shutil.which(QEMU)
    if path:
        return path
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        raise BenchError(f"{QEMU} is missing and cannot be installed here (needs root and apt)")
    print(f"{QEMU} missing: apt-get install -y {QEMU_PACKAGE}", file=sys.stderr)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for step in (["apt-get", "update", "-q"], ["apt-get", "install", "-y", "-q", QEMU_PACKAGE]):
        done = subprocess.run(step, capture_output=True, text=True, env=env, check=False)
        if done.returncode != 0:
            raise BenchError(f"{' '.join(step)} failed:\n{done.stderr.strip()[-2000:]}")
    path = shutil.which(QEMU)
    if not path:
        raise BenchError(f"{QEMU_PACKAGE} installed but {QEMU} is still not on PATH")
    return path


def qemu_command(qemu: str, image: Path) -> list[str]:
    exit_device = ["-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"]
    return [qemu, *reference_command(exit_device, bios=image, debugcon=True)[1:]]


# --- pcihole -----------------------------------------------------------------------------
def pcihole_command(image: Path, strategy: str, stats: Path) -> list[str]:
    """``python -m pcihole boot`` on ``image`` with ``strategy``, its account in ``stats``."""
    return [
        sys.executable,
        "-m",
        "pcihole",
        "boot",
        "--bios",
        str(image),
        "--strategy",
        strategy,
        "--stats",
        str(stats),
    ]


# --- running and timing ------------------------------------------------------------------
@dataclass
class TimedLine:
    text: str
    first: float
    """Seconds from the process start to the arrival of the line's first byte."""
    end: float
    """... and of its newline."""


@dataclass
class Run:
    command: list[str]
    status: int
    wall_seconds: float
    lines: list[TimedLine]
    stderr: str

    @property
    def text(self) -> str:
        return "".join(line.text + "\n" for line in self.lines)


def run_timed(command: list[str], timeout: float) -> Run:
    """Run ``command``; timestamp each line of its stdout as it arrives."""
    with tempfile.TemporaryFile() as errors:
        started = time.perf_counter()
        process = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=errors
        )
        assert process.stdout is not None
        fd = process.stdout.fileno()
        lines: list[TimedLine] = []
        pending = bytearray()
        first = 0.0
        deadline = started + timeout
        while True:
            left = deadline - time.perf_counter()
            ready, _, _ = select.select([fd], [], [], max(left, 0))
            if not ready:
                process.kill()
                process.wait()
                raise BenchError(f"{command[0]} ran past {timeout:.0f} s")
            chunk = os.read(fd, 65536)
            now = time.perf_counter() - started
            if not chunk:
                break
            for byte in chunk:
                if not pending:
                    first = now
                if byte == 0x0A:
                    lines.append(TimedLine(pending.decode("utf-8", "replace"), first, now))
                    pending.clear()
                else:
                    pending.append(byte)
        status = process.wait()
        wall = time.perf_counter() - started
        if pending:
            lines.append(TimedLine(pending.decode("utf-8", "replace"), first, wall))
        errors.seek(0)
        stderr = errors.read().decode("utf-8", "replace")
    return Run(command, status, wall, lines, stderr)


def describe(run: Run, tsc_khz: int | None, stats: dict[str, Any] | None) -> dict[str, Any]:
    """One run's figures: per scan ticks, seconds, wall time between its lines, exits."""
    out = parse_output(run.text)
    if out.exception:
        raise BenchError(f"firmware exception: {out.exception}")
    scans: dict[str, Any] = {}
    for scan in out.scans:
        start, end = run.lines[scan.start_line], run.lines[scan.end_line]
        entry: dict[str, Any] = {
            "ring": scan.ring,
            "buses": scan.buses,
            "probes": scan.probes,
            "found": scan.found,
            "ticks": scan.ticks,
            "tsc_seconds": scan.ticks / (tsc_khz * 1e3) if tsc_khz else None,
            "pipe_seconds": end.first - start.end,
        }
        if stats is not None:
            lines = stats["lines"]
            before, after = lines[scan.start_line], lines[scan.end_line]
            entry["host_seconds"] = after["first_seconds"] - before["seconds"]
            entry["exits"] = after["first_exits"] - before["exits"] - 1
            entry["config_exits"] = after["first_config_exits"] - before["config_exits"]
        scans[scan.name] = entry
    functions = [
        [f"{bdf} {vendor:04x}:{device:04x}" for bdf, vendor, device in scan.functions]
        for scan in out.scans
    ]
    if any(found != functions[0] for found in functions):
        raise BenchError(f"scans of one run disagree: {functions}")
    return {
        "status": run.status,
        "wall_seconds": run.wall_seconds,
        "exit_value": out.exit_value,
        "host_bridge": f"{out.host_bridge:#010x}" if out.host_bridge is not None else None,
        "ecam_before_pciexbar": out.ecam_before,
        "pciexbar": out.pciexbar,
        "cpuid": out.cpuid,
        "scans": scans,
        "functions": functions[0] if functions else [],
        "stderr": run.stderr.strip(),
        "exit_counts": stats["exit_counts"] if stats else None,
        "config_exits_total": stats["config_exits"] if stats else None,
        "backing": stats["backing"] if stats else None,
    }


def median_of(runs: list[dict[str, Any]], scan: str, key: str) -> float | None:
    values = [r["scans"][scan][key] for r in runs if r["scans"][scan].get(key) is not None]
    return statistics.median(values) if values else None


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    names = list(runs[0]["scans"])
    summary: dict[str, Any] = {
        "wall_seconds_median": statistics.median(r["wall_seconds"] for r in runs),
        "statuses": sorted({r["status"] for r in runs}),
        "functions": runs[0]["functions"],
        "scans": {},
    }
    for name in names:
        entry: dict[str, Any] = {
            key: median_of(runs, name, key)
            for key in (
                "ticks",
                "tsc_seconds",
                "pipe_seconds",
                "host_seconds",
                "exits",
                "config_exits",
            )
        }
        entry["ticks_all"] = [r["scans"][name]["ticks"] for r in runs]
        entry = {key: value for key, value in entry.items() if value is not None}
        summary["scans"][name] = entry
    return summary


def versions(qemu: str) -> dict[str, str]:
    def first_line(command: list[str]) -> str:
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        return (done.stdout or done.stderr).splitlines()[0] if done.returncode == 0 else "?"

    return {
        "pcihole": __version__,
        "qemu": first_line([qemu, "--version"]),
        "python": platform.python_version(),
        "kernel": platform.release(),
        "gcc": first_line(["gcc", "--version"]),
        "ld": first_line(["ld", "--version"]),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", metavar="FILE", help="write the results here")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each monitor")
    parser.add_argument(
        "--strategies", default="shared,fill,trap", help="pcihole hole strategies to run"
    )
    parser.add_argument("--ring3-passes", type=int, default=2)
    parser.add_argument(
        "--ring0-buses", type=int, default=256, help="buses of the ring-0 scan (emulated: slow)"
    )
    parser.add_argument("--image", metavar="FILE", help="keep the built image here")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per run")
    args = parser.parse_args()
    strategies = [s for s in args.strategies.split(",") if s]
    try:
        qemu = ensure_qemu()
    except BenchError as error:
        print(f"vs_qemu: {error}", file=sys.stderr)
        return 1
    options = FirmwareOptions(ring3_passes=args.ring3_passes, ring0_buses=args.ring0_buses)
    image_bytes = build_firmware("enumerate", options)
    with tempfile.TemporaryDirectory(prefix="vs-qemu-") as work:
        image = Path(args.image or Path(work) / "enumerate.bin")
        image.write_bytes(image_bytes)
        stats_path = Path(work) / "stats.json"
        monitors: dict[str, list[dict[str, Any]]] = {"qemu": []}
        monitors.update({f"pcihole-{s}": [] for s in strategies})
        tsc_khz: int | None = None
        commands: dict[str, list[str]] = {"qemu": qemu_command(qemu, image)}
        for strategy in strategies:
            commands[f"pcihole-{strategy}"] = pcihole_command(image, strategy, stats_path)
        try:
            for repeat in range(args.repeats):  # interleaved, so drift hits every monitor
                for name, command in commands.items():
                    print(f"run {repeat + 1}/{args.repeats}: {name}", file=sys.stderr)
                    run = run_timed(command, args.timeout)
                    stats = None
                    if name != "qemu":
                        stats = json.loads(stats_path.read_text())
                        stats_path.unlink()
                        tsc_khz = tsc_khz or stats.get("tsc_khz")
                    monitors[name].append({"run": run, "stats": stats})
        except BenchError as error:
            print(f"vs_qemu: {error}", file=sys.stderr)
            return 1
    try:
        described = {
            name: [describe(r["run"], tsc_khz, r["stats"]) for r in runs]
            for name, runs in monitors.items()
        }
    except BenchError as error:
        print(f"vs_qemu: {error}", file=sys.stderr)
        return 1
    expected_status = exit_status(options.exit_value)
    summaries = {name: summarize(runs) for name, runs in described.items()}
    ratios: dict[str, dict[str, float]] = {}
    qemu_scans = summaries["qemu"]["scans"]
    for name, summary in summaries.items():
        if name == "qemu":
            continue
        ratios[name] = {
            scan: round(qemu_scans[scan]["ticks"] / entry["ticks"], 2)
            for scan, entry in summary["scans"].items()
            if entry.get("ticks")
        }
    best_ring3 = {
        name: max(v for k, v in r.items() if k.startswith("ring3")) for name, r in ratios.items()
    }
    first_ring3 = {name: r.get("ring3-pass1") for name, r in ratios.items()}
    notes = [
        "ticks are the guest's own RDTSC deltas around each scan (lfence; rdtsc); the same "
        "host TSC runs both guests, so their ratio needs no frequency",
        f"tsc_khz is KVM_GET_TSC_KHZ of pcihole's vCPU ({tsc_khz}); QEMU's guest runs at the "
        "host rate too (no TSC scaling asked for)",
        "ring3-pass1 includes first touch of every page (pcihole: its hole slots and mirror "
        "pages); ring3-pass2 is warm",
        f"the ring-0 scan covers {options.ring0_buses} buses once: ring-0 guest code is "
        "emulated by this host's KVM (~1-2 M instructions/s), for both monitors alike",
        "pipe_seconds: from the newline of a scan's start line to the first byte of its "
        "result line, as read from the monitor's stdout (pcihole writes whole lines); "
        "host_seconds/exits/config_exits: the same interval inside pcihole (--stats)",
        "wall_seconds: the whole process, start-up included",
    ]
    result = {
        "benchmark": "vs_qemu",
        "command": " ".join([sys.executable, *sys.argv]),
        "commands": {name: " ".join(command) for name, command in commands.items()},
        "image": {
            "bytes": len(image_bytes),
            "sha256": hashlib.sha256(image_bytes).hexdigest(),
            "options": asdict(options),
        },
        "versions": versions(qemu),
        "tsc_khz": tsc_khz,
        "repeats": args.repeats,
        "expected_status": expected_status,
        "all_statuses_expected": all(
            r["status"] == expected_status for runs in described.values() for r in runs
        ),
        "functions_agree": len({tuple(s["functions"]) for s in summaries.values()}) == 1,
        "summary": summaries,
        "ratios_qemu_over_pcihole_ticks": ratios,
        "target": {
            "ring3_ratio_at_least": TARGET_RATIO,
            "first_pass_ratio": first_ring3,
            "best_ring3_ratio": best_ring3,
            "met_first_pass": {
                name: bool(v and v >= TARGET_RATIO) for name, v in first_ring3.items()
            },
        },
        "notes": notes,
        "runs": described,
    }
    text = json.dumps(result, indent=2)
    if args.json:
        Path(args.json).write_text(text + "\n")
    brief = {
        "ticks": {n: {k: v["ticks"] for k, v in s["scans"].items()} for n, s in summaries.items()},
        "ratios": ratios,
        "functions_agree": result["functions_agree"],
        "all_statuses_expected": result["all_statuses_expected"],
    }
    print(json.dumps(brief, indent=1))
    ok = result["functions_agree"] and result["all_statuses_expected"]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
