"""Every subcommand fed wrong values: one line on stderr naming the option, status 2;
and one case for each other party at fault (``pcihole.errors``): the host's kernel
refusing (1), a guest's fault (70), a bug in pcihole (4), each one line, no traceback.

One case per option and kind of mistake runs ``python -m pcihole ...`` in its own process,
as a user would (side by side: the interpreter's start-up is most of their cost). Their
variants run through ``pcihole.cli.main`` in this process, checked the same way.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import resource
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from pcihole import cli
from pcihole.devices.debugcon import DebugConsole
from pcihole.errors import ENVIRONMENT_STATUS
from pcihole.guest import vm as guestvm
from pcihole.guest.machine import PciMachine
from pcihole.guest.vm import GuestVm
from pcihole.holes import source as source_mod
from pcihole.holes.slots import HoleSlotError
from pcihole.holes.source import Backing
from pcihole.kvm import Kvm
from pcihole.layout import ECAM_BASE
from pcihole.machine import MachineOptions
from pcihole.machine.runloop import RunResult, StopReason
from pcihole.memory import SlotAllocator
from pcihole.pci.topology import Topology
from pcihole.q35 import BootError
from tests.support import CHILD_ENV, HANG_SECONDS

WAIT = HANG_SECONDS
MISSING_DIR = "/nonexistent-pcihole-dir"
LONG_SOCKET = "/tmp/" + "s" * 120 + ".sock"


@dataclass(frozen=True)
class Case:
    args: tuple[str, ...]
    names: str
    """What the one line must mention: the option (or, for --device, the bad text)."""


def case(command: str, names: str) -> Case:
    return Case(tuple(command.split()), names)


CASES: dict[str, Case] = {
    # scan: numbers out of range or not numbers
    "scan-buses-0": case("scan --buses 0", "--buses"),
    "scan-buses-257": case("scan --buses 257", "--buses"),
    "scan-buses-hex-257": case("scan --buses 0x101", "--buses"),
    "scan-buses-negative": case("scan --buses -1", "--buses"),
    "scan-buses-word": case("scan --buses many", "--buses"),
    "scan-vms-0": case("scan --vms 0", "--vms"),
    "scan-vms-257": case("scan --vms 257", "--vms"),
    "scan-vms-huge": case("scan --vms 99999999999999999999999", "--vms"),
    "scan-vms-float": case("scan --vms 1e3", "--vms"),
    "scan-passes-0": case("scan --passes 0", "--passes"),
    "scan-ring-1": case("scan --ring 1", "--ring"),
    # scan: unknown names
    "scan-strategy": case("scan --strategy holes", "--strategy"),
    "scan-backing": case("scan --backing ramdisk", "--backing"),
    "scan-mode": case("scan --mode sideways", "--mode"),
    "scan-present": case("scan --present mirrored", "--present"),
    "scan-writes": case("scan --writes drop", "--writes"),
    "scan-unknown-option": case("scan --holes 3", "--holes"),
    # scan: malformed devices
    "device-no-model": case("scan --buses 4 --device 00:02.0", "--device"),
    "device-bad-address": case("scan --buses 4 --device 00:20.0=nvme", "--device"),
    "device-unknown-model": case("scan --buses 4 --device 00:02.0=gpu", "--device"),
    "device-bad-key": case("scan --buses 4 --device 00:02.0=nvme,bus=1", "--device"),
    "device-bad-number": case("scan --buses 4 --device 00:1c.0=root-port,bus=one", "--device"),
    "device-outside-window": case("scan --buses 4 --device 04:00.0=nvme", "--device"),
    "device-twice": case("scan --buses 4 --device 00:02.0=nvme --device 00:02.0=nvme", "--device"),
    "device-no-function-0": case("scan --buses 4 --device 00:02.3=nvme", "--device"),
    "device-unreachable-bus": case("scan --buses 4 --device 02:00.0=nvme", "--device"),
    # demo and bench
    "demo-vms-0": case("demo --vms 0", "--vms"),
    "demo-vms-huge": case("demo --vms 100000", "--vms"),
    "demo-buses-257": case("demo --buses 257", "--buses"),
    "demo-json-missing-dir": case(f"demo --vms 1 --buses 1 --json {MISSING_DIR}/d.json", "--json"),
    "bench-max-vms-0": case("bench --max-vms 0", "--max-vms"),
    "bench-max-vms-65": case("bench --max-vms 65", "--max-vms"),
    "bench-repeats-0": case("bench --repeats 0", "--repeats"),
    "bench-json-missing-dir": case(f"bench --quick --json {MISSING_DIR}/b.json", "--json"),
    "bench-plot-missing-dir": case(f"bench --quick --plot {MISSING_DIR}/b.png", "--plot"),
    "bench-json-is-a-dir": case("bench --quick --json /tmp", "--json"),
    # lspci
    # boot: a missing image, an image of the wrong size, a bad device
    "boot-timeout": case("boot --timeout 0", "--timeout"),
    "boot-serial": case(f"boot --timeout 1 --serial {MISSING_DIR}/s.txt", "--serial"),
    "boot-missing-bios": case(f"boot --bios {MISSING_DIR}/fw.bin", "--bios"),
    "boot-short-bios": case("boot --bios /proc/self/cmdline", "--bios"),
    "boot-device": case("boot --bios /proc/self/cmdline --device 00:00.0=nope", "--bios"),
    "lspci-buses-0": case("lspci --buses 0", "--buses"),
    "lspci-buses-257": case("lspci --buses 257", "--buses"),
    "lspci-device": case("lspci --buses 2 --device 00:00.0=host-bridge,x=1", "--device"),
    # serve-holes
    "serve-no-socket": case("serve-holes", "--socket"),
    "serve-backing-thp": case("serve-holes --socket /tmp/x.sock --backing thp", "--backing"),
    "serve-socket-missing-dir": case(f"serve-holes --socket {MISSING_DIR}/s.sock", "--socket"),
    "serve-socket-not-a-socket": case("serve-holes --socket /etc/hostname", "--socket"),
    "serve-socket-too-long": case(f"serve-holes --socket {LONG_SOCKET}", "--socket"),
    "serve-group": case(
        "serve-holes --socket /tmp/pcihole-x.sock --group no-such-grp-x", "--group"
    ),
    # no such command
    "no-command": case("", "command"),
    "unknown-command": case("holes", "command"),
}


IN_PROCESS = {
    "scan-buses-hex-257",
    "scan-buses-negative",
    "scan-buses-word",
    "scan-vms-257",
    "scan-vms-float",
    "scan-passes-0",
    "scan-ring-1",
    "scan-present",
    "scan-writes",
    "scan-unknown-option",
    "device-no-model",
    "device-unknown-model",
    "device-bad-key",
    "device-bad-number",
    "device-outside-window",
    "device-no-function-0",
    "device-unreachable-bus",
    "demo-vms-huge",
    "bench-max-vms-65",
    "bench-repeats-0",
    "bench-json-is-a-dir",
    "lspci-buses-257",
    "serve-socket-too-long",
    "no-command",
}
"""Variants of a mistake another case already makes in a process of its own."""


def run_in_process(args: tuple[str, ...]) -> subprocess.CompletedProcess[str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            status = cli.main(list(args))
        except SystemExit as exit:
            status = exit.code if isinstance(exit.code, int) else 1
    return subprocess.CompletedProcess(list(args), status, out.getvalue(), err.getvalue())


def run_case(args: tuple[str, ...], cwd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pcihole", *args],
        capture_output=True,
        text=True,
        env=CHILD_ENV,
        timeout=WAIT,
        cwd=cwd,
    )


@pytest.fixture(scope="module")
def outcomes() -> Iterator[dict[str, subprocess.CompletedProcess[str]]]:
    """Every case's process, run four at a time."""
    assert not os.path.exists(MISSING_DIR)
    with tempfile.TemporaryDirectory(prefix="ph-cli-") as cwd, ThreadPoolExecutor(4) as pool:
        futures = {
            name: pool.submit(run_case, c.args, cwd)
            for name, c in CASES.items()
            if name not in IN_PROCESS
        }
        results = {name: future.result() for name, future in futures.items()}
        results.update({name: run_in_process(CASES[name].args) for name in IN_PROCESS})
        yield results


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_is_one_line_naming_the_option(
    outcomes: dict[str, subprocess.CompletedProcess[str]], name: str
) -> None:
    result = outcomes[name]
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == 2, (result.returncode, result.stderr)
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and result.stderr.endswith("\n"), result.stderr
    assert lines[0].startswith("pcihole"), lines[0]
    assert "error" in lines[0]
    assert CASES[name].names in lines[0], lines[0]


def test_no_socket_file_was_left_by_refused_services() -> None:
    assert not os.path.exists("/tmp/x.sock")
    assert not os.path.exists("/tmp/pcihole-x.sock")
    assert not os.path.exists(LONG_SOCKET)


def test_unavailable_forced_backing_names_the_option() -> None:
    """``--backing hugetlb`` without a free huge page: the host cannot give what the
    (valid) command line asks, so status 1, and the line names the option."""
    if source_mod.unavailable_reason(source_mod.Backing.HUGETLB) is None:
        pytest.skip("a huge page is free here: hugetlb is available")
    result = run_case(("scan", "--buses", "1", "--backing", "hugetlb"), "/tmp")
    assert "Traceback" not in result.stderr
    assert result.returncode == ENVIRONMENT_STATUS
    assert result.stderr.count("\n") == 1
    assert "--backing hugetlb" in result.stderr and "no free 2 MiB huge pages" in result.stderr


def test_an_unreachable_service_is_not_an_error_but_is_said() -> None:
    """``scan --socket`` with nobody there falls back to a private chunk, saying so."""
    result = run_case(
        ("scan", "--buses", "2", "--backing", "memfd", "--socket", f"{MISSING_DIR}/s.sock"),
        "/tmp",
    )
    assert result.returncode == 0, result.stderr
    assert f"cannot reach the hole service at {MISSING_DIR}/s.sock" in result.stdout
    assert "using a private memfd source" in result.stdout


# -- the largest values every bounded option allows -------------------------------------------

MAXIMUMS = [
    ("scan", "--buses", 256),
    ("scan", "--vms", 256),
    ("scan", "--passes", 100),
    ("lspci", "--buses", 256),
    ("demo", "--buses", 256),
    ("demo", "--vms", 256),
    ("boot", "--buses", 256),
    ("boot", "--ram-mib", 16384),
    ("bench", "--repeats", 20),
    ("bench", "--max-vms", 64),
]
"""Each bounded option and the largest value it must accept (one more is refused)."""
REQUIRED = {"boot": ["--bios", "firmware.bin"]}


@pytest.mark.parametrize(("command", "option", "maximum"), MAXIMUMS)
def test_every_bounded_option_takes_its_largest_value(
    command: str, option: str, maximum: int
) -> None:
    parser = cli.build_parser()
    attribute = option.lstrip("-").replace("-", "_")
    for text in (str(maximum), hex(maximum)):
        args = parser.parse_args([command, *REQUIRED.get(command, []), option, text])
        assert getattr(args, attribute) == maximum
    refused = run_in_process((command, *REQUIRED.get(command, []), option, str(maximum + 1)))
    assert refused.returncode == 2 and option in refused.stderr, refused.stderr


@pytest.mark.parametrize(
    "args",
    [("--buses", "256"), ("--vms", "256", "--buses", "1", "--strategy", "trap")],
    ids=["buses-256", "vms-256"],
)
def test_scan_runs_at_the_largest_window_and_vm_count(args: tuple[str, ...]) -> None:
    result = run_case(("scan", *args, "--json"), "/tmp")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    given = dict(zip(args[::2], args[1::2], strict=True))
    assert report["buses"] == int(given["--buses"])
    assert report["vms"] == int(given.get("--vms", "1"))
    found = ["00:00.0", "00:1f.0", "00:1f.2", "00:1f.3"]  # one bus: the root bus only
    if report["buses"] == 256:
        found = [
            "00:00.0",
            "00:1c.0",
            "00:1c.1",
            "00:1f.0",
            "00:1f.2",
            "00:1f.3",
            "01:00.0",
            "02:00.0",
        ]
    assert report["functions_found"] == found


# -- one case per party at fault ----------------------------------------------------------

BOOT_GUARD = ("--timeout", "60")
"""Each image below ends its run at once; the limit only bounds a broken monitor."""


def one_line(result: subprocess.CompletedProcess[str], status: int, start: str) -> str:
    """Check ``result`` ended with ``status`` and one line starting ``start``; return it."""
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == status, (result.returncode, result.stderr)
    assert result.stderr.count("\n") == 1 and result.stderr.endswith("\n"), result.stderr
    assert result.stderr.startswith(start), result.stderr
    return result.stderr


def real_mode_image(code: bytes, data: bytes = b"") -> bytes:
    """64 KiB of HLT ending at 4 GiB: ``code`` at CS:0xffc0, ``data`` at CS:0xffe0 and a
    jump to the code at the reset vector (CS:0xfff0)."""
    image = bytearray(b"\xf4" * 0x10000)
    image[0xFFC0 : 0xFFC0 + len(code)] = code
    image[0xFFE0 : 0xFFE0 + len(data)] = data
    image[0xFFF0:0xFFF2] = bytes([0xEB, (0xFFC0 - 0xFFF2) & 0xFF])  # jmp short 0xffc0
    return bytes(image)


JUMP_TO_NO_MEMORY = real_mode_image(bytes([0xEA, 0x00, 0x00, 0x00, 0xA0]))  # jmp 0xa000:0
"""Code fetched from the legacy VGA range, where nothing is: KVM cannot run it."""
WORD_TO_DEBUGCON = real_mode_image(
    bytes([0xBA, 0x02, 0x04, 0xB8, 0x41, 0x41, 0xEF])  # mov dx, 0x402; mov ax, 'AA'; out dx, ax
)
"""A 2-byte OUT to the debug console, a 1-byte device: the access runs past it."""
BYTE_TO_DEBUGCON = real_mode_image(
    bytes([0xBA, 0x02, 0x04, 0xB0, 0x41, 0xEE])  # mov dx, 0x402; mov al, 'A'; out dx, al
)


@pytest.mark.parametrize(
    ("image", "says"),
    [
        (JUMP_TO_NO_MEMORY, "the guest stopped: "),
        (
            WORD_TO_DEBUGCON,
            "the guest stopped: device-error: BusAccessError: port bus: "
            "access [0x402, 0x404) runs past debugcon",
        ),
    ],
    ids=["code-where-no-memory-is", "access-past-a-device"],
)
def test_a_guest_fault_ends_its_run_with_the_guest_status(
    image: bytes, says: str, tmp_path: Path
) -> None:
    """What the firmware did ends its run with ``GUEST_FAULT_STATUS`` and one line saying
    what; ``--stats`` still tells the story."""
    bios, stats = tmp_path / "bad.bin", tmp_path / "stats.json"
    bios.write_bytes(image)
    result = run_case(
        ("boot", "--bios", str(bios), "--stats", str(stats), *BOOT_GUARD), str(tmp_path)
    )
    line = one_line(result, 70, "pcihole boot: ")
    assert says in line
    assert json.loads(stats.read_text())["status"] == 70


def test_a_kernel_refusal_is_the_hosts_problem(tmp_path: Path) -> None:
    """RLIMIT_NOFILE too small for 16 VMs' fds: the kernel refuses one of KVM's calls,
    the line names which (``errno 24``), status 1."""

    def few_fds() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (24, 24))

    result = subprocess.run(
        [sys.executable, "-m", "pcihole", "scan", "--buses", "4", "--vms", "16"],
        capture_output=True,
        text=True,
        env=CHILD_ENV,
        timeout=WAIT,
        cwd=tmp_path,
        preexec_fn=few_fds,
    )
    line = one_line(result, ENVIRONMENT_STATUS, "pcihole scan: error: ")
    assert "Too many open files (errno 24)" in line


def test_hole_memslots_the_kernel_cannot_hold_are_the_hosts_problem(
    kvm: Kvm, monkeypatch: pytest.MonkeyPatch
) -> None:
    """KVM_CAP_NR_MEMSLOTS one short of what the scan's holes need: ``HoleSlotError``,
    status 1 (it was 2, "bad input", while a refused mirror memslot was 1)."""
    args = ("scan", "--buses", "4", "--backing", "memfd")
    options = MachineOptions(buses=4, backing=Backing.MEMFD)
    with PciMachine(kvm, Topology.default(4), options, "scan", [ECAM_BASE, 4, 0, 1]) as machine:
        needed, holes = machine.guest.slots.used, machine.window.hole_memslots
    assert holes > 0
    monkeypatch.setattr(guestvm, "SlotAllocator", lambda _kernel: SlotAllocator(needed - 1))
    parsed = cli.build_parser().parse_args(list(args))
    with pytest.raises(HoleSlotError, match=f"holes need {holes} memslots"):
        parsed.handler(parsed)
    line = one_line(run_in_process(args), HoleSlotError.exit_status, "pcihole scan: error: ")
    assert HoleSlotError.exit_status == ENVIRONMENT_STATUS
    assert f"holes need {holes} memslots ({holes} runs), {holes - 1} free" in line


def test_a_bad_image_is_a_boot_error_and_bad_input() -> None:
    parsed = cli.build_parser().parse_args(["boot", "--bios", "/proc/self/cmdline"])
    with pytest.raises(BootError, match="--bios: a firmware image must be a multiple of 64 KiB"):
        parsed.handler(parsed)
    result = run_in_process(("boot", "--bios", "/proc/self/cmdline"))
    one_line(result, BootError.exit_status, "pcihole boot: error: --bios")
    assert BootError.exit_status == 2


def test_a_bug_in_a_device_is_an_internal_error_not_the_guests(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A device model failing on a good access (planted: the debug console's write
    raising) ends ``boot`` as a bug, named with where it was raised, status 4."""

    def broken_write(_self: DebugConsole, _offset: int, _size: int, _value: int) -> None:
        raise KeyError("planted")

    bios = tmp_path / "byte.bin"
    bios.write_bytes(BYTE_TO_DEBUGCON)
    monkeypatch.setattr(DebugConsole, "write", broken_write)
    console = str(tmp_path / "console.txt")
    result = run_in_process(("boot", "--bios", str(bios), "--debugcon", console, *BOOT_GUARD))
    line = one_line(result, 4, "pcihole boot: internal error: KeyError: 'planted' at ")
    assert "tests/kvm/test_cli_errors.py:" in line


def test_a_guest_fault_in_one_vm_stops_that_vm_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    """``scan --vms 3`` where vm1's guest meets UD2 at its first instruction (planted in
    its RAM): vm0 and vm2 finish their scans, the command ends with the guest status and
    one line naming vm1 and what it did."""
    results: dict[str, RunResult] = {}
    run = GuestVm.run

    def planted(self: GuestVm, max_exits: int | None = None) -> RunResult:
        if self.name == "vm1":
            assert self.ram is not None
            self.ram.write(self.vcpu.get_regs().rip, b"\x0f\x0b")  # ud2
        results[self.name] = run(self, max_exits)
        return results[self.name]

    monkeypatch.setattr(GuestVm, "run", planted)
    result = run_in_process(("scan", "--buses", "4", "--vms", "3"))
    line = one_line(result, 70, "pcihole scan: guest fault: vm1: guest-exception: #UD")
    assert result.stdout == "", line
    assert {name: r.reason for name, r in results.items()} == {
        "vm0": StopReason.DONE,
        "vm1": StopReason.GUEST_EXCEPTION,
        "vm2": StopReason.DONE,
    }
