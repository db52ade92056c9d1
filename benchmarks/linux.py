"""Debian's cloud kernel, unchanged, through ``pcihole boot --linux``; QEMU 7.2 beside it.

Matrix: pcihole's hole strategies (shared, fill, trap) x config ports (``always``: CF8/CFC
for everyone, as QEMU; ``firmware``: withdrawn when the firmware fetches the kernel, so
Linux configures PCI through ECAM alone), each run to the end of Linux's PCI phase
(``PCI: CLS``, the last line of it), on a machine with root ports and devices behind and
beside them; trap with ``firmware`` also on the default q35 machine; one more run, shared
with ``firmware``, as far as the kernel gets (to power-off, or to the reset after init dies
where guest user space cannot make system calls: see the README). Every run's PCI view,
read from the kernel's log, is compared with the machine pcihole built. Times are wall
seconds from the monitor's launch to the first serial line holding each milestone
(``--stats`` times every serial line). The PCI phase's exits are the difference of the
counters ``--mark`` records at ``PCI: MMCONFIG for`` and at ``PCI: CLS``; trap's hole reads
are the ECAM reads of holes that phase made.

QEMU cannot boot this kernel on hosts whose KVM emulates guest ring 0 (it stops at the
``int3`` self-test): it runs the bzImage as ``-kernel`` to where it stops, and pcihole runs
the same bzImage the same way, to the last line QEMU prints (``x86/fpu: x87 FPU will use``),
so the two are compared like for like. Two runs go at a time (the host has two cores); the
QEMU and pcihole runs of the comparison run side by side so they share the load.

    python benchmarks/linux.py --json docs/linux.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from pcihole.arch.x86.cpuid_probe import host_cpuid_leaks
from pcihole.arch.x86.linux_cmdline import linux_command_line
from pcihole.guest.linux import (
    BZIMAGE_NAME,
    KERNEL_PACKAGE_NAME,
    ROOT_PORT_DEVICES,
    VMLINUX_NAME,
    cache_dir,
)
from pcihole.guest.linux.klog import INIT_KILLED, PCI_PHASE_END, RUN_INIT
from pcihole.kvm import Kvm
from pcihole.measure.qemu import qemu_command

REPO = Path(__file__).resolve().parents[1]
STRATEGIES = ("shared", "fill", "trap")
CONFIG_PORTS = ("always", "firmware")
DEVICES = ROOT_PORT_DEVICES
MACHINES: dict[str, Sequence[str]] = {"root ports": DEVICES, "default": ()}
"""The matrix runs on the root-port machine; trap with ``firmware`` also on QEMU's
default q35 machine (the 2020 proposal's), where no bridge shortens the peer-bus loop."""
MILESTONES = {
    "linux_version": "Linux version",
    "fpu": "x86/fpu: x87 FPU will use",
    "mmconfig": "PCI: MMCONFIG for",
    "first_pci": "pci 0000:00:00.0: [",
    "pci_end": PCI_PHASE_END,
    "init": RUN_INIT,
    "init_died": INIT_KILLED,
    "power_off": "reboot: Power down",
}
PCI_START, PCI_END = MILESTONES["mmconfig"], MILESTONES["pci_end"]
QEMU_LAST = MILESTONES["fpu"]
RUN_SECONDS = 1800.0
"""Where a run gives up: a full boot takes ~15 minutes here with both cores busy."""
QEMU_STOPPED = b"KVM internal error"
QEMU_QUIET_SECONDS = 5.0
"""QEMU has stopped for good once it reported KVM's internal error and its serial output
has been quiet this long."""
QEMU_CPU = "qemu64,-cx16"
"""Without cx16 (which QEMU's vCPU gets from KVM's supported set and Linux then uses):
KVM's emulator refuses ``cmpxchg16b`` too, and QEMU would stop at it, before the line it
is compared at (pcihole finishes cmpxchg16b itself)."""
CONSOLE = "console=ttyS0 earlyprintk=serial,ttyS0,115200 panic=-1"


def pcihole(stats: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "pcihole",
        "boot",
        "--stats",
        str(stats),
        "--serial",
        os.devnull,
        "--timeout",
        str(RUN_SECONDS),
        "--mark",
        PCI_START,
        "--mark",
        PCI_END,
        *extra,
    ]


def run_pcihole(stats: Path, *extra: str) -> dict[str, Any]:
    done = subprocess.run(
        pcihole(stats, *extra),
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        check=False,
    )
    if not stats.exists():
        raise SystemExit(f"pcihole {' '.join(extra)} wrote no stats: {done.stderr[-1500:]}")
    result: dict[str, Any] = json.loads(stats.read_text())
    result["exit_status"] = done.returncode
    return result


def milestones(serial_lines: Sequence[dict[str, Any]]) -> dict[str, float | None]:
    """Wall seconds of the first serial line holding each milestone's text."""
    found: dict[str, float | None] = dict.fromkeys(MILESTONES)
    for line in serial_lines:
        for name, text in MILESTONES.items():
            if found[name] is None and text in line["text"]:
                found[name] = round(line["seconds"], 1)
    return found


def pci_phase(stats: dict[str, Any]) -> dict[str, Any] | None:
    """Exits by kind and config exits between the two marks; None if one is missing."""
    marks = {mark["mark"]: mark for mark in stats.get("marks", [])}
    if PCI_START not in marks or PCI_END not in marks:
        return None
    start, end = marks[PCI_START], marks[PCI_END]
    kinds = set(start["exit_counts"]) | set(end["exit_counts"])
    exits = {k: end["exit_counts"].get(k, 0) - start["exit_counts"].get(k, 0) for k in kinds}
    config = {k: end["config_exits"][k] - start["config_exits"][k] for k in end["config_exits"]}
    return {
        "seconds": round(end["seconds"] - start["seconds"], 1),
        "exits_by_kind": {k: v for k, v in sorted(exits.items()) if v},
        "config_exits": config,
        "hole_reads": config["hole_reads"],
        "config_port_exits": config["legacy_ports"],
    }


def summarize(stats: dict[str, Any]) -> dict[str, Any]:
    """The figures of one run, with how the guest's PCI view differs from the machine
    pcihole built (``boot``'s own comparison; empty: the same; None: no view)."""
    seen = stats.get("guest_pci_view")
    return {
        "view_differences": None if seen is None else seen["differences"],
        "exit_status": stats["exit_status"],
        "reason": stats["reason"],
        "wall_seconds": round(stats["seconds"], 1),
        "milestones": milestones(stats["serial_lines"]),
        "pci_phase": pci_phase(stats),
        "emulated_instructions": stats.get("emulated_instructions"),
        "config_ports": stats.get("config_ports"),
        "hole_memory": stats.get("hole_memory"),
        "memslots": stats["memslots"],
        "backing": stats["backing"],
        "notes": stats["notes"],
    }


def targets(matrix: dict[str, dict[str, Any]], default: dict[str, Any]) -> dict[str, Any]:
    """The issue's targets, judged from the firmware-mode runs' PCI phase. Trap's 8,192
    is the 2020 proposal's figure, from the default machine: Linux's peer-bridge loop reads
    devfn 0, 8, ..., 248 of every bus it does not know yet, so each bus a bridge brings
    takes 32 probes off it (the root-port machine knows 3 buses: 253 x 32 = 8,096)."""

    def phase(run: dict[str, Any]) -> dict[str, Any]:
        return run["pci_phase"] or {}

    shared, fill, trap = (matrix[f"{s}/firmware"] for s in STRATEGIES)
    runs = [*matrix.values(), default]
    return {
        "trap_hole_reads_at_least_8192": phase(default).get("hole_reads", 0) >= 8192,
        "trap_hole_reads": {
            "default machine": phase(default).get("hole_reads"),
            "root ports": phase(trap).get("hole_reads"),
        },
        "shared_zero_hole_exits": phase(shared).get("hole_reads") == 0,
        "shared_zero_config_port_exits": phase(shared).get("config_port_exits") == 0,
        "fill_zero_hole_exits": phase(fill).get("hole_reads") == 0,
        "fill_per_vm_bytes": (fill["hole_memory"] or {}).get("per_vm_bytes"),
        "shared_per_vm_bytes": (shared["hole_memory"] or {}).get("per_vm_bytes"),
        "every_view_equals_the_topology": all(run["view_differences"] == [] for run in runs),
    }


def qemu_until_stopped(kernel: Path, append: str, serial: Path) -> dict[str, Any]:
    """QEMU with the bzImage as -kernel, to where it stops (KVM's emulation failure, which
    leaves QEMU paused for good): the time of each serial line, read as it comes."""
    command = qemu_command(
        ["-cpu", QEMU_CPU, "-serial", "stdio", "-no-reboot"],
        memory="512",
        kernel=kernel,
        append=append,
    )
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert process.stdout is not None and process.stderr is not None
    for stream in (process.stdout, process.stderr):
        os.set_blocking(stream.fileno(), False)
    lines: list[dict[str, Any]] = []
    pending, errors, quiet_since = b"", b"", started
    try:
        while time.perf_counter() - started < RUN_SECONDS and process.poll() is None:
            chunk, now = process.stdout.read() or b"", time.perf_counter()
            errors += process.stderr.read() or b""
            if chunk:
                quiet_since, pending = now, pending + chunk
                *complete, pending = pending.split(b"\n")
                lines += [
                    {"text": raw.decode(errors="replace"), "seconds": now - started}
                    for raw in complete
                ]
            if QEMU_STOPPED in errors and now - quiet_since > QEMU_QUIET_SECONDS:
                break
            time.sleep(0.05)
    finally:
        process.kill()
        errors += process.communicate()[1]
    serial.write_text("".join(line["text"] + "\n" for line in lines))
    return {
        "command": command,
        "milestones": milestones(lines),
        "last_line": lines[-1]["text"].strip() if lines else None,
        "last_line_seconds": round(lines[-1]["seconds"], 1) if lines else None,
        "stopped_because": [
            line
            for line in errors.decode(errors="replace").splitlines()
            if "error" in line.lower() or line.startswith("Code=")
        ][:3],
    }


def same_command_line() -> str:
    """The console, plus what this host needs Linux to be told (as pcihole adds it), so
    QEMU and pcihole boot the kernel with the same command line."""
    with Kvm() as kvm:
        line, _ = linux_command_line(CONSOLE, host_cpuid_leaks(kvm))
    return line


def compare_with_qemu(work: Path) -> dict[str, Any]:
    kernel, append = cache_dir() / BZIMAGE_NAME, same_command_line()
    stats = work / "pcihole-bzimage.json"
    with ThreadPoolExecutor(max_workers=2) as pool:
        qemu = pool.submit(qemu_until_stopped, kernel, append, work / "qemu.serial")
        ours = pool.submit(
            run_pcihole,
            stats,
            "--kernel",
            str(kernel),
            "--append",
            append,
            "--ram-mib",
            "512",
            "--until",
            QEMU_LAST,
        )
        qemu_result, pcihole_result = qemu.result(), summarize(ours.result())
    qemu_fpu = qemu_result["milestones"]["fpu"]
    our_fpu = pcihole_result["milestones"]["fpu"]
    ratio = round(our_fpu / qemu_fpu, 3) if qemu_fpu and our_fpu else None
    return {
        "qemu": qemu_result,
        "pcihole": pcihole_result,
        "fpu_line_ratio": ratio,
        "target_fpu_within_1_1x": ratio is not None and ratio <= 1.1,
    }


def device_options(devices: Sequence[str]) -> list[str]:
    return [f"--device={device}" for device in devices]


def to_pci_end(work: Path, strategy: str, ports: str, machine: str) -> dict[str, Any]:
    """One run to the end of the PCI phase on one of ``MACHINES``."""
    devices = MACHINES[machine]
    stats = work / f"{strategy}-{ports}-{machine.replace(' ', '-')}.json"
    extra = ("--strategy", strategy, "--config-ports", ports, "--until", PCI_END)
    result = summarize(run_pcihole(stats, "--linux", *extra, *device_options(devices)))
    print(f"{strategy}/{ports} ({machine}): {result['milestones']}", file=sys.stderr)
    return result


def as_far_as_it_goes(work: Path) -> dict[str, Any]:
    """Shared with ``firmware`` on the root-port machine, as far as the kernel gets."""
    options = ("--linux", "--config-ports", "firmware", *device_options(DEVICES))
    return summarize(run_pcihole(work / "full.json", *options))


def run_matrix(work: Path) -> dict[str, dict[str, Any]]:
    jobs = [(s, c) for c in CONFIG_PORTS for s in STRATEGIES]
    with ThreadPoolExecutor(max_workers=2) as pool:
        runs = [pool.submit(to_pci_end, work, s, c, "root ports") for s, c in jobs]
        results = [run.result() for run in runs]
    return {f"{s}/{c}": result for (s, c), result in zip(jobs, results, strict=True)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", metavar="FILE", help="write the results here too")
    parser.add_argument("--skip-qemu", action="store_true", help="no QEMU comparison")
    parser.add_argument("--skip-full", action="store_true", help="no run past the PCI phase")
    args = parser.parse_args()
    missing = [n for n in (VMLINUX_NAME, BZIMAGE_NAME) if not (cache_dir() / n).is_file()]
    if missing:
        raise SystemExit(f"no {', '.join(missing)} in {cache_dir()}: run bash scripts/setup")
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="pcihole-linux-") as name:
        work = Path(name)
        report: dict[str, Any] = {
            "benchmark": "linux",
            "command": " ".join(["python", "benchmarks/linux.py", *sys.argv[1:]]),
            "machines": {name: list(devices) for name, devices in MACHINES.items()},
            "kernel_package": _kernel_package(),
            "load_average_at_start": os.getloadavg(),
        }
        report["to_end_of_pci_phase"] = matrix = run_matrix(work)
        _save(report, args.json)
        if not args.skip_qemu:
            report["vs_qemu"] = compare_with_qemu(work)
            _save(report, args.json)
        with ThreadPoolExecutor(max_workers=2) as pool:  # the long run beside the short
            default = pool.submit(to_pci_end, work, "trap", "firmware", "default")
            full = None if args.skip_full else pool.submit(as_far_as_it_goes, work)
            report["default_machine"] = {"trap/firmware": default.result()}
            if full is not None:
                report["as_far_as_it_goes"] = full.result()
        report["targets"] = targets(matrix, default.result())
    report["seconds"] = round(time.perf_counter() - started, 1)
    print(_save(report, args.json))
    return 0


def _save(report: dict[str, Any], path: str | None) -> str:
    """Writes what is measured so far: a long run that fails late keeps its first parts."""
    text = json.dumps(report, indent=2)
    if path:
        Path(path).write_text(text + "\n")
    return text


def _kernel_package() -> str | None:
    path = cache_dir() / KERNEL_PACKAGE_NAME
    return path.read_text().strip() if path.exists() else None


if __name__ == "__main__":
    sys.exit(main())
