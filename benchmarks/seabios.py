"""Debian's SeaBIOS to ``No bootable device.``: pcihole (shared, fill, trap) beside QEMU q35.

Each run is a fresh process started from here, timed from its launch to the moment the
marker comes out of its debug console (read from a pipe, as the test suite does), so both
monitors pay their own start-up:

    qemu-system-x86_64 -accel kvm -machine q35 -nodefaults -bios bios.bin ... \\
        -chardev stdio,id=dbg -device isa-debugcon,iobase=0x402,chardev=dbg
    python -m pcihole boot --strategy S --until 'No bootable device.' --stats FILE

Runs are interleaved (one of each, then again) so load on the shared machine spreads
evenly; figures are medians of ``--repeats``. From pcihole's ``--stats``: exits by kind
and by device (ECAM reads and writes, CF8, fw_cfg, RTC/CMOS, console, ...), and how many
configuration accesses went through ECAM without an exit: the total comes from one more
run where every ECAM access exits (``--strategy trap --present trap``; SeaBIOS's config
accesses are the same every run for one topology), less each strategy's ECAM exits.
QEMU's exits are not visible from userspace; its wall time is. The PIT lives in the
kernel in both monitors (KVM_CREATE_PIT2), so it makes no userspace exits in either.

    python benchmarks/seabios.py --json docs/seabios.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pcihole.measure.qemu import QEMU, ROOT_PORTS_QEMU, SEABIOS
from pcihole.measure.qemu import qemu_command as reference_command

REPO = Path(__file__).resolve().parents[1]
MARKER = b"No bootable device."
STRATEGIES = ("shared", "fill", "trap")
TARGET_RATIO = 1.2
"""Goal: pcihole's wall time at most this times QEMU's."""
HANG_SECONDS = 300.0
TOPOLOGIES = {
    "q35-builtins": ([], []),
    "root-ports": (
        [
            "00:1c.0=root-port,bus=1,chassis=1",
            "00:1c.1=root-port,bus=2,chassis=2",
            "00:1c.2=root-port,bus=3,chassis=3",
            "01:00.0=virtio-net",
            "02:00.0=virtio-blk",
            "03:00.0=nvme",
        ],
        list(ROOT_PORTS_QEMU),
    ),
}
DEVICE_GROUPS = {
    "fw_cfg": ("fw_cfg", "fw_cfg-dma"),
    "rtc_cmos": ("cmos",),
    "console": ("debugcon", "uart"),
    "acpi_pm": ("acpi-pm",),
    "reset_ports": ("port92",),
}


def timed_until_marker(command: Sequence[str]) -> float:
    """Seconds from launching ``command`` to ``MARKER`` on its stdout; then it is ended."""
    started = time.perf_counter()
    process = subprocess.Popen(
        command,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert process.stdout is not None
    guard = threading.Timer(HANG_SECONDS, process.kill)
    guard.start()
    seen = bytearray()
    try:
        while MARKER not in seen:
            chunk = os.read(process.stdout.fileno(), 65536)
            if not chunk:
                errors = process.communicate()[1].decode(errors="replace")
                raise SystemExit(f"{command[0]} ended before the marker: {errors[-1500:]}")
            seen += chunk
        return time.perf_counter() - started
    finally:
        guard.cancel()
        if process.poll() is None and command[0] == QEMU:
            process.kill()  # QEMU waits forever after the marker; pcihole stops by itself
        process.communicate(timeout=HANG_SECONDS)


def qemu_command(args: Sequence[str]) -> list[str]:
    return reference_command(["-no-reboot", *args], bios=SEABIOS, debugcon=True)


def pcihole_command(devices: Sequence[str], stats: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "pcihole",
        "boot",
        "--until",
        MARKER.decode(),
        "--stats",
        str(stats),
        "--timeout",
        str(HANG_SECONDS),
        *extra,
        *(f"--device={device}" for device in devices),
    ]


def summarize_stats(stats: dict[str, Any]) -> dict[str, Any]:
    """Exits by kind and by device group from one ``--stats`` file."""
    config = stats["config_exits"]
    ports, mmio = stats["exits_by_device"]["ports"], stats["exits_by_device"]["mmio"]
    grouped = {
        group: sum(ports.get(name, 0) for name in names) for group, names in DEVICE_GROUPS.items()
    }
    named = {name for names in DEVICE_GROUPS.values() for name in names} | {"pci-config"}
    return {
        "in_guest_seconds": stats["seconds"],
        "exits_by_kind": stats["exit_counts"],
        "exits_by_device": {
            "ecam_reads": config["hole_reads"] + config["device_reads"],
            "ecam_hole_reads": config["hole_reads"],
            "ecam_present_reads": config["device_reads"],
            "ecam_writes": config["hole_writes"] + config["device_writes"],
            "cf8": config["legacy_ports"],
            "pit": 0,
            **grouped,
            "other_ports": {k: v for k, v in ports.items() if k not in named},
            "mmio_bars_and_shadow": {k: v for k, v in mmio.items() if k != "ecam"},
            "unclaimed": stats["unclaimed"],
        },
        "hole_writes_absorbed": stats["hole_writes"],
        "memslots": stats["memslots"],
        "backing": stats["backing"],
    }


def host_facts() -> dict[str, Any]:
    flags = Path("/proc/cpuinfo").read_text().split()
    virt = "vmx" if "vmx" in flags else "svm" if "svm" in flags else None
    modules = sorted(p.name for p in Path("/sys/module").glob("kvm*"))
    return {
        "cpus": os.cpu_count(),
        "kernel": platform.release(),
        "kvm_modules": modules,
        "hardware_virtualization": virt,
        "ring0_note": None
        if virt
        else (
            "no vmx/svm in /proc/cpuinfo: this KVM emulates guest ring-0 code (SeaBIOS runs "
            "at ring 0 throughout), in QEMU and pcihole alike"
        ),
        "load_average_at_start": os.getloadavg(),
    }


def run_topology(name: str, repeats: int, work: Path) -> dict[str, Any]:
    devices, qemu_args = TOPOLOGIES[name]
    walls: dict[str, list[float]] = {key: [] for key in ("qemu", *STRATEGIES)}
    stats: dict[str, list[dict[str, Any]]] = {key: [] for key in STRATEGIES}
    for repeat in range(repeats):
        walls["qemu"].append(timed_until_marker(qemu_command(qemu_args)))
        for strategy in STRATEGIES:
            path = work / f"{name}-{strategy}-{repeat}.json"
            command = pcihole_command(devices, path, "--strategy", strategy)
            walls[strategy].append(timed_until_marker(command))
            stats[strategy].append(json.loads(path.read_text()))
        print(f"{name}: repeat {repeat + 1}/{repeats} done", file=sys.stderr)
    everything = work / f"{name}-all-trapped.json"
    timed_until_marker(
        pcihole_command(devices, everything, "--strategy", "trap", "--present", "trap")
    )
    trapped = summarize_stats(json.loads(everything.read_text()))["exits_by_device"]
    total = {"reads": trapped["ecam_reads"], "writes": trapped["ecam_writes"]}
    qemu_median = statistics.median(walls["qemu"])
    result: dict[str, Any] = {
        "qemu": {"wall_seconds": _spread(walls["qemu"])},
        "ecam_accesses_total": total,
    }
    for strategy in STRATEGIES:
        middle = sorted(stats[strategy], key=lambda s: s["seconds"])[len(stats[strategy]) // 2]
        summary = summarize_stats(middle)
        exits = summary["exits_by_device"]
        wall = statistics.median(walls[strategy])
        result[strategy] = {
            "wall_seconds": _spread(walls[strategy]),
            "vs_qemu": round(wall / qemu_median, 3),
            "target_wall_met": wall <= TARGET_RATIO * qemu_median,
            "ecam_without_exit": {
                "reads": total["reads"] - exits["ecam_reads"],
                "writes": total["writes"] - exits["ecam_writes"],
            },
            "target_zero_ecam_read_exits_met": exits["ecam_reads"] == 0,
            **summary,
        }
    return result


def _spread(values: list[float]) -> dict[str, Any]:
    return {
        "median": round(statistics.median(values), 3),
        "min": round(min(values), 3),
        "max": round(max(values), 3),
        "runs": [round(v, 3) for v in values],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", metavar="FILE", help="write the results here too")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--topology", choices=sorted(TOPOLOGIES), action="append")
    args = parser.parse_args()
    if not SEABIOS.exists():
        raise SystemExit(f"{SEABIOS} is absent: apt-get install seabios")
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="pcihole-seabios-") as work:
        results = {
            name: run_topology(name, args.repeats, Path(work))
            for name in args.topology or sorted(TOPOLOGIES)
        }
    report = {
        "benchmark": "seabios",
        "command": " ".join(["python", "benchmarks/seabios.py", *sys.argv[1:]]),
        "repeats": args.repeats,
        "target_wall_ratio": TARGET_RATIO,
        "host": host_facts(),
        "topologies": results,
        "seconds": round(time.perf_counter() - started, 1),
    }
    text = json.dumps(report, indent=2)
    if args.json:
        Path(args.json).write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
