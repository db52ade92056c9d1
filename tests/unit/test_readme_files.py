"""The README's "How it works" names every file of the package, in its own room's entry.

A file added without a word there (or an entry left for a file that is gone) fails here.
``__init__.py`` files are named only where they do more than gather a room's names.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "pcihole"
SKIPPED = {"__init__.py"}
"""Gathering a room's names; the README names those that do more (guest/firmware, linux)."""
SUFFIXES = {".py", ".S", ".inc", ".typed", ""}


def how_it_works() -> str:
    """The fenced file tree under "## How it works"."""
    text = (ROOT / "README.md").read_text()
    section = text.split("## How it works", 1)[1]
    return section.split("```", 2)[1]


def entries(tree: str) -> dict[str, str]:
    """Each room's (or top-level file's) entry, by its label: ``guest/``, ``cli.py``, ..."""
    found: dict[str, str] = {}
    label = None
    for line in tree.splitlines():
        match = re.match(r"  (\S.*?)(?:\s{2,}|$)", line)
        if match and not line.startswith("   "):
            label = match[1]
            found[label] = line[match.end() :]
        elif label is not None:
            found[label] += " " + line.strip()
    return found


def package_files() -> list[Path]:
    return sorted(
        path.relative_to(PACKAGE)
        for path in PACKAGE.rglob("*")
        if path.is_file()
        and "__pycache__" not in path.parts
        and path.suffix in SUFFIXES
        and path.name not in SKIPPED
    )


def unnamed(tree: str, files: list[Path]) -> list[str]:
    """Files the entry of their room (or, at the top, any label) does not name."""
    found = entries(tree)
    missing = []
    for path in files:
        if len(path.parts) == 1:
            if not any(path.name in label.split(", ") for label in found):
                missing.append(str(path))
            continue
        room = "/".join(path.parts[:2]) + "/" if path.parts[0] == "arch" else path.parts[0] + "/"
        if not re.search(rf"(?<![\w.]){re.escape(path.name)}(?![\w])", found.get(room, "")):
            missing.append(str(path))
    return missing


def test_every_file_of_the_package_is_named_in_its_room() -> None:
    assert unnamed(how_it_works(), package_files()) == []


def test_the_check_can_fail() -> None:
    tree = "\n  cli.py       the parser\n  q35/         machine.py the recipe\n"
    files = [Path("cli.py"), Path("bits.py"), Path("q35/machine.py"), Path("q35/shell.py")]
    assert unnamed(tree, files) == ["bits.py", "q35/shell.py"]
