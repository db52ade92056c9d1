"""``layout.py`` stays true: each name is assigned once, and every constant is used.

A constant counts as used when another statement of ``layout.py`` reads it (a derived
value or an assertion), or when its name appears in the package, the guest assembly
(which receives every constant through ``asm_symbols``), the tests or the benchmarks.
"""

from __future__ import annotations

import ast
import re
from collections import Counter
from pathlib import Path

from pcihole import layout

ROOT = Path(__file__).resolve().parents[2]
LAYOUT = ROOT / "pcihole" / "layout.py"
SOURCES = ("*.py", "*.S", "*.inc")


def assignments(tree: ast.Module) -> list[tuple[str, ast.stmt]]:
    found = []
    for node in tree.body:
        targets = node.targets if isinstance(node, ast.Assign) else []
        if isinstance(node, ast.AnnAssign):
            targets = [node.target]
        found += [(t.id, node) for t in targets if isinstance(t, ast.Name)]
    return found


def test_no_name_is_assigned_twice() -> None:
    names = Counter(name for name, _ in assignments(ast.parse(LAYOUT.read_text())))
    assert [name for name, count in names.items() if count > 1] == []


def read_in_layout(tree: ast.Module) -> set[str]:
    """Names some statement of layout.py reads, other than the one assigning them."""
    read: set[str] = set()
    for node in tree.body:
        assigned = {name for name, stmt in assignments(tree) if stmt is node}
        read |= {
            sub.id
            for sub in ast.walk(node)
            if isinstance(sub, ast.Name) and isinstance(sub.ctx, ast.Load)
        } - assigned
    return read


def words_elsewhere() -> set[str]:
    words: set[str] = set()
    for folder in ("pcihole", "tests", "benchmarks"):
        for pattern in SOURCES:
            for path in (ROOT / folder).rglob(pattern):
                if path not in (LAYOUT, Path(__file__).resolve()):
                    words |= set(re.findall(r"\b[A-Z][A-Z0-9_]*\b", path.read_text()))
    return words


def test_every_constant_is_used() -> None:
    tree = ast.parse(LAYOUT.read_text())
    used = read_in_layout(tree) | words_elsewhere()
    assert sorted(set(layout.asm_symbols()) - used) == []


def test_the_two_checks_can_fail() -> None:
    twice = ast.parse("A = 1\nB = A\nA = 2\n")
    assert Counter(name for name, _ in assignments(twice))["A"] == 2
    assert read_in_layout(ast.parse("A = 1\nB = 2 * A\n")) == {"A"}
