"""What one VM exit costs: pcihole's run loop against a bare KVM_RUN loop, in one run.

For port OUT, port IN, MMIO read and MMIO write, at ring 0 and ring 3, a guest makes
``--exits`` exits of that kind. The baseline runs the same guest with nothing but the
KVM_RUN ioctl in a Python loop (no decoding, no dispatch); the difference is the run
loop's own cost per exit.

    python benchmarks/exit_cost.py --json exit_cost.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from typing import Any

from pcihole import layout
from pcihole.guest.vm import GuestVm
from pcihole.host import info as hostinfo
from pcihole.kvm import Kvm, system

KINDS = {"port-out": 0, "mmio-read": 1, "mmio-write": 2, "port-in": 3}
EXIT_LOOP_PORT = 0x510


class Sink:
    """A device that answers zero and forgets writes."""

    def read(self, offset: int, size: int) -> int:
        return 0

    def write(self, offset: int, size: int, value: int) -> None:
        return None


def _guest(kvm: Kvm, kind: int, ring: int, exits: int) -> GuestVm:
    guest = GuestVm(kvm, "exit_loop", ring=ring, params=[kind, exits])
    guest.ports.add(EXIT_LOOP_PORT, 4, Sink(), "sink")
    guest.mmio.add(layout.TEST_MMIO_BASE, 0x1000, Sink(), "sink")
    return guest


def bare_loop(kvm: Kvm, kind: int, ring: int, exits: int) -> float:
    """Seconds per exit with only the ioctl in the loop (the baseline)."""
    with _guest(kvm, kind, ring, exits) as guest:
        ioctl = system._libc.ioctl
        fd = guest.vcpu.fd
        request = system.abi.KVM_RUN
        ioctl(fd, request, 0)  # the first exit enters ring 3 and warms up
        started = time.perf_counter()
        for _ in range(exits - 1):
            ioctl(fd, request, 0)
        return (time.perf_counter() - started) / (exits - 1)


def run_loop(kvm: Kvm, kind: int, ring: int, exits: int) -> float:
    """Seconds per exit through pcihole's run loop (decode, count, dispatch)."""
    with _guest(kvm, kind, ring, exits) as guest:
        guest.run(max_exits=1)
        started = time.perf_counter()
        result = guest.run(max_exits=exits - 1)
        elapsed = time.perf_counter() - started
        return elapsed / (exits - 1) if result.reason.value == "exit-limit" else float("nan")


def measure(exits: int, repeats: int) -> dict[str, Any]:
    rows: list[dict[str, Any]] = []
    with Kvm() as kvm:
        for ring in (0, 3):
            for name, kind in KINDS.items():
                bare, loop = [], []
                for _ in range(repeats):  # interleaved, so drift hits both alike
                    bare.append(bare_loop(kvm, kind, ring, exits))
                    loop.append(run_loop(kvm, kind, ring, exits))
                bare_us = statistics.median(bare) * 1e6
                loop_us = statistics.median(loop) * 1e6
                rows.append(
                    {
                        "exit": name,
                        "ring": ring,
                        "bare_kvm_run_us": round(bare_us, 2),
                        "run_loop_us": round(loop_us, 2),
                        "overhead_us": round(loop_us - bare_us, 2),
                        "samples_bare_us": [round(x * 1e6, 2) for x in bare],
                        "samples_run_loop_us": [round(x * 1e6, 2) for x in loop],
                    }
                )
    return {
        "benchmark": "exit_cost",
        "exits_per_sample": exits,
        "repeats": repeats,
        "target_overhead_us": 1.0,
        "results": rows,
        "host": hostinfo.collect(),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--exits", type=int, default=20000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", metavar="FILE", help="write the results here")
    args = parser.parse_args()
    report = measure(args.exits, args.repeats)
    print(f"{'exit':<11} {'ring':>4} {'bare µs':>8} {'loop µs':>8} {'overhead':>8}")
    for row in report["results"]:
        print(
            f"{row['exit']:<11} {row['ring']:>4} {row['bare_kvm_run_us']:>8.2f} "
            f"{row['run_loop_us']:>8.2f} {row['overhead_us']:>8.2f}"
        )
    if args.json:
        with open(args.json, "w") as out:
            json.dump(report, out, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
