"""Every exception class pcihole defines, with the party at fault and the exit status.

The classes are found by importing every module of the package, so a class added without
a row in ``TABLE`` (or a row left for a class that is gone) fails here. Each one is then
raised from inside a real ``pcihole`` command (``cli.main`` with one handler replaced) and
must end it with its row's status and one line on stderr, no traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import inspect
import io
import pkgutil

import pytest

import pcihole
from pcihole import cli
from pcihole.commands import info
from pcihole.errors import ROOTS, BadInput, Bug, EnvironmentProblem, GuestFault
from pcihole.q35 import GUEST_STOPPED_STATUS

BAD_INPUT, ENVIRONMENT, GUEST, INTERNAL = "bad input", "environment", "guest", "internal"
STATUS = {BAD_INPUT: 2, ENVIRONMENT: 1, GUEST: 70, INTERNAL: 4}
"""The statuses the README promises for each party."""
LABEL = {BAD_INPUT: "error", ENVIRONMENT: "error", GUEST: "guest fault", INTERNAL: "internal error"}

TABLE: dict[str, str] = {
    # the roots
    "pcihole.errors.PciholeError": INTERNAL,  # never raised itself; if it were, a bug
    "pcihole.errors.BadInput": BAD_INPUT,
    "pcihole.errors.EnvironmentProblem": ENVIRONMENT,
    "pcihole.errors.GuestFault": GUEST,
    "pcihole.errors.Bug": INTERNAL,
    # what the user typed or named
    "pcihole.guest.linux.view.GuestViewError": GUEST,  # what Linux printed is no view
    "pcihole.q35.shell.BootError": BAD_INPUT,  # --bios image, --device at 00:00.0
    "pcihole.arch.x86.linux.KernelError": BAD_INPUT,  # --kernel, --initrd, --append
    "pcihole.pci.errors.PciError": BAD_INPUT,
    "pcihole.pci.errors.BdfError": BAD_INPUT,
    "pcihole.pci.errors.DeviceError": BAD_INPUT,
    "pcihole.pci.errors.TopologyError": BAD_INPUT,
    # the host and its kernel
    "pcihole.kvm.errors.KvmError": ENVIRONMENT,
    "pcihole.host.mem.HostMemError": ENVIRONMENT,
    "pcihole.holes.slots.HoleSlotError": ENVIRONMENT,  # the kernel refused hole memslots
    "pcihole.memory.map.MemslotShortage": ENVIRONMENT,  # KVM_CAP_NR_MEMSLOTS too small
    "pcihole.holes.source.HoleSourceError": ENVIRONMENT,
    "pcihole.holes.service.protocol.HoleServiceError": ENVIRONMENT,
    "pcihole.holes.window.HoleWindowError": ENVIRONMENT,
    "pcihole.guest.build.GuestBuildError": ENVIRONMENT,  # gcc/ld missing or failing here
    "pcihole.measure.plot.PlotError": ENVIRONMENT,  # matplotlib missing
    "pcihole.measure.qemu.QemuError": ENVIRONMENT,
    # what a guest did
    "pcihole.machine.runloop.GuestError": GUEST,
    "pcihole.machine.bus.BusAccessError": GUEST,
    "pcihole.memory.map.GuestAddressError": GUEST,
    "pcihole.guest.lspci.LspciError": GUEST,
    "pcihole.measure.scan.ScanError": GUEST,
    # pcihole's own mistakes
    "pcihole.machine.bus.BusError": INTERNAL,
    "pcihole.machine.window.MachineError": INTERNAL,
    "pcihole.memory.map.MemoryMapError": INTERNAL,
    "pcihole.pci.errors.ConfigSpaceError": INTERNAL,
    "pcihole.pci.errors.EcamError": INTERNAL,
    "pcihole.devices.fw_cfg.FwCfgError": INTERNAL,
    "pcihole.arch.x86.e820.E820Error": INTERNAL,
    "pcihole.acpi.aml.AmlError": INTERNAL,  # tables are built from pcihole's own values
    "pcihole.arch.x86.cpuid_probe.CpuidProbeError": ENVIRONMENT,  # the probe guest misreported
    "pcihole.arch.x86.emulate.EmulationError": ENVIRONMENT,  # KVM refused, monitor cannot finish
    "pcihole.arch.x86.emulate.UnknownInstruction": ENVIRONMENT,
    "pcihole.arch.x86.e820.RamLayoutError": INTERNAL,  # boot checks --ram-mib first
    "pcihole.arch.x86.e820.AddressBitsError": ENVIRONMENT,  # the host CPU's address bits
    "pcihole.memory.ram.RamAllocationError": ENVIRONMENT,  # the host refused the mapping
    "pcihole.holes.planner.PlanError": INTERNAL,
    "pcihole.holes.strategy.StrategyError": INTERNAL,
    # control flow inside one module: caught where raised; escaping would be a bug
    "pcihole.machine.runloop.Stop": INTERNAL,
    "pcihole.arch.x86.emulate.GuestException": INTERNAL,  # injected into the guest
    "pcihole.commands.serve_holes._Stopped": INTERNAL,
}
"""Every exception class in pcihole and whose fault it is."""


def defined_classes() -> dict[str, type[BaseException]]:
    """Every exception class defined at the top of a module of the pcihole package."""
    found: dict[str, type[BaseException]] = {}
    for module_info in pkgutil.walk_packages(pcihole.__path__, "pcihole."):
        if module_info.name.rsplit(".", 1)[-1] == "__main__":
            continue  # running it is its only effect
        module = importlib.import_module(module_info.name)
        for value in vars(module).values():
            if (
                inspect.isclass(value)
                and issubclass(value, BaseException)
                and value.__module__ == module.__name__
            ):
                found[f"{value.__module__}.{value.__qualname__}"] = value
    return found


CLASSES = defined_classes()


def test_every_class_has_a_row_and_every_row_a_class() -> None:
    assert sorted(set(CLASSES) - set(TABLE)) == [], "classes without a row in TABLE"
    assert sorted(set(TABLE) - set(CLASSES)) == [], "rows for classes that do not exist"


def test_the_table_walk_finds_classes_in_every_room() -> None:
    """The walk reaches nested packages (a walk that found nothing would pass the above)."""
    rooms = {name.split(".")[1] for name in CLASSES}
    assert {"errors", "kvm", "pci", "holes", "machine", "memory", "devices"} <= rooms


@pytest.mark.parametrize("name", sorted(TABLE))
def test_each_class_has_one_party_at_fault(name: str) -> None:
    cls = CLASSES[name]
    roots = [root for root in ROOTS if issubclass(cls, root)]
    kind = {BadInput: BAD_INPUT, EnvironmentProblem: ENVIRONMENT, GuestFault: GUEST, Bug: INTERNAL}
    if roots:
        assert len(roots) == 1, f"{name} derives from {roots}"
        assert kind[roots[0]] == TABLE[name]
        assert cls.exit_status == STATUS[TABLE[name]]  # type: ignore[attr-defined]
    else:  # the root itself and control flow: a bug if one ever reaches the command line
        assert TABLE[name] == INTERNAL


def planted(cls: type[BaseException]) -> BaseException:
    """An instance of ``cls`` whose message is its name, whatever its constructor wants."""
    error = cls.__new__(cls)
    BaseException.__init__(error, f"planted {cls.__name__}")
    return error


def run_raising(error: BaseException, monkeypatch: pytest.MonkeyPatch) -> tuple[int, str, str]:
    """``pcihole info`` with its handler raising ``error``: (status, stdout, stderr)."""

    def handler(_args: argparse.Namespace) -> int:
        raise error

    monkeypatch.setattr(info, "run", handler)
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = cli.main(["info"])
    return status, out.getvalue(), err.getvalue()


@pytest.mark.parametrize("name", sorted(TABLE))
def test_each_class_ends_the_command_with_its_status_and_one_line(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    kind = TABLE[name]
    status, out, err = run_raising(planted(CLASSES[name]), monkeypatch)
    assert status == STATUS[kind], err
    assert out == ""
    assert "Traceback" not in err
    assert err.count("\n") == 1 and err.endswith("\n"), err
    assert err.startswith(f"pcihole info: {LABEL[kind]}: "), err
    assert f"planted {CLASSES[name].__name__}" in err


@pytest.mark.parametrize(
    ("error", "kind", "names"),
    [
        (KeyError("slot"), INTERNAL, "KeyError: 'slot' at tests/unit/test_errors.py:"),
        (AssertionError("invariant"), INTERNAL, "AssertionError: invariant at tests/unit/"),
        (OSError(28, "No space left on device"), ENVIRONMENT, "No space left on device"),
    ],
    ids=["key-error", "assertion", "os-error"],
)
def test_an_exception_pcihole_did_not_class_is_a_bug_or_the_hosts(
    error: BaseException, kind: str, names: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What escapes unclassed is a bug (named with where it was raised), except an
    ``OSError``: the host said no."""
    status, _, err = run_raising(error, monkeypatch)
    assert status == STATUS[kind]
    assert err.startswith(f"pcihole info: {LABEL[kind]}: ") and err.count("\n") == 1, err
    assert names in err


def test_a_message_of_several_lines_is_printed_as_one(monkeypatch: pytest.MonkeyPatch) -> None:
    error = EnvironmentProblem("gcc failed on scan.S:\nscan.S:3: Error: no such instruction\n")
    status, _, err = run_raising(error, monkeypatch)
    assert status == 1
    assert err == (
        "pcihole info: error: gcc failed on scan.S:; scan.S:3: Error: no such instruction\n"
    )


def test_statuses_tell_the_parties_apart_and_never_look_like_debug_exit() -> None:
    """``pcihole boot`` exits ``(value << 1) | 1`` for a guest's debug-exit ``value``: the
    statuses pcihole picks beyond QEMU's own 1 and argparse's 2 are even, one per root."""
    statuses = [root.exit_status for root in ROOTS]
    assert len(set(statuses)) == len(ROOTS) == len(STATUS)
    assert all(status % 2 == 0 for status in statuses if status > 2)
    assert GuestFault.exit_status == GUEST_STOPPED_STATUS  # boot's guest stopping itself
