"""The house rules, checked on the source (shared/design/architecture.md, issue 9).

- lower rooms never import higher ones (kvm knows nothing of pci, holes nothing of
  devices...): every room has a rank and imports only rooms of lower rank;
- no module outside ``pcihole/kvm/`` issues an ioctl;
- no module outside ``pcihole/layout.py`` defines a guest address or an I/O port;
- no function is longer than ``MAX_FUNCTION_LINES``.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "pcihole"

ROOMS = [
    {"errors", "layout", "bits", "closing", "pcihole"},
    {"kvm"},
    {"host"},
    {"memory"},
    {"arch"},
    {"devices"},
    {"pci"},
    {"holes"},
    {"acpi"},
    {"machine"},
    {"q35"},
    {"guest"},
    {"measure"},
    {"commands"},
    {"cli"},
    {"__main__"},
]
"""Rooms from the bottom up; a room may import its own and any earlier room."""
RANK = {room: rank for rank, rooms in enumerate(ROOMS) for room in rooms}

MAX_FUNCTION_LINES = 60
ADDRESS_NAME = re.compile(r"(_ADDR|_ADDRESS|_PORT|_BASE|_TOP|_SEGMENT)$")
NOT_ADDRESSES = {
    "pci/config.py": "config-space register offsets (IO_BASE is register 0x1c)",
    "pci/capabilities.py": "PCIe capability register values (ROOT_PORT is a port type)",
    "devices/ahci.py": "PORT_BASE is the offset of port 0's registers inside ABAR",
    "kvm/abi.py": "ioctl numbers named after the kernel's (KVM_SET_TSS_ADDR)",
}


def modules() -> Iterator[tuple[str, Path, ast.Module]]:
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE).as_posix()
        yield relative, path, ast.parse(path.read_text(), str(path))


def module_name(relative: str) -> str:
    """``holes/slots.py`` -> ``pcihole.holes.slots``; ``kvm/__init__.py`` -> ``pcihole.kvm``."""
    return ".".join(["pcihole", *relative.removesuffix(".py").split("/")]).removesuffix(".__init__")


def room_of(module: str) -> str:
    """``pcihole.holes.slots`` -> ``holes``; ``pcihole.cli`` -> ``cli``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "pcihole"


def test_every_room_has_a_rank() -> None:
    rooms = {room_of(module_name(relative)) for relative, _, _ in modules()}
    assert rooms <= set(RANK), f"rooms without a rank: {sorted(rooms - set(RANK))}"


def test_lower_rooms_never_import_higher_ones() -> None:
    upward = []
    for relative, _, tree in modules():
        importer = room_of(module_name(relative))
        for node in ast.walk(tree):
            targets: list[str] = []
            if isinstance(node, ast.ImportFrom) and node.module == "pcihole":
                targets = [f"pcihole.{alias.name}" for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("pcihole."):
                targets = [node.module or ""]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names if a.name.startswith("pcihole.")]
            for target in targets:
                if RANK[room_of(target)] > RANK[importer]:
                    upward.append(f"{relative}:{node.lineno} imports {target}")
    assert upward == []


def test_only_kvm_issues_ioctls() -> None:
    outside = [
        f"{relative}:{node.lineno}"
        for relative, _, tree in modules()
        if not relative.startswith("kvm/")
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute | ast.Name)
        and (node.attr if isinstance(node, ast.Attribute) else node.id) == "ioctl"
    ]
    assert outside == []


def _literal_int(node: ast.expr) -> bool:
    """A number written here (not taken from ``layout``)."""
    return not any(isinstance(n, ast.Attribute | ast.Name) for n in ast.walk(node)) and any(
        isinstance(n, ast.Constant) and isinstance(n.value, int) for n in ast.walk(node)
    )


def test_only_layout_defines_guest_addresses_and_ports() -> None:
    found = []
    for relative, _, tree in modules():
        if relative == "layout.py" or relative in NOT_ADDRESSES:
            continue
        for node in tree.body:
            if isinstance(node, ast.Assign) and len(node.targets) == 1:
                target, value = node.targets[0], node.value
            elif isinstance(node, ast.AnnAssign) and node.value is not None:
                target, value = node.target, node.value
            else:
                continue
            named = isinstance(target, ast.Name) and ADDRESS_NAME.search(target.id)
            if named and _literal_int(value):
                found.append(f"{relative}:{node.lineno} {target.id}")
    assert found == []


@pytest.mark.parametrize("limit", [MAX_FUNCTION_LINES])
def test_no_function_is_longer_than_the_limit(limit: int) -> None:
    long = [
        f"{relative}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1} lines)"
        for relative, _, tree in modules()
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        and node.end_lineno is not None
        and node.end_lineno - node.lineno + 1 > limit
    ]
    assert long == []
