"""Build guest programs from the assembly sources in ``asm/`` with GNU binutils, cached.

Each program ``asm/NAME.S`` is run through the C preprocessor (for ``#include``, the
layout constants as ``-D`` macros and ``__LINE__`` in asserts), assembled by GNU ``as``
and linked flat at ``layout.CODE_ADDR``. The result is cached under a hash of everything
that went into it, so a program is built once per change.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from pcihole import layout
from pcihole.errors import Bug, EnvironmentProblem

ASM_DIR = Path(__file__).parent / "asm"
EXCEPTION_STUBS_OFFSET = 0x40
"""Where the runtime puts its exception stubs (``.org 0x40`` in runtime.inc), 16 bytes each."""
EXCEPTION_STUB_SIZE = 16
TOOLS = ("gcc", "ld")
"""gcc drives cpp and GNU as; ld links. Debian packages: gcc (cpp) and binutils."""


class GuestBuildError(EnvironmentProblem):
    """A guest program could not be built here (a tool missing or failing on this host);
    the message holds the tool's own output."""


@dataclass(frozen=True)
class GuestProgram:
    """A built guest program: flat code linked to run at ``load_address``."""

    name: str
    code: bytes
    load_address: int = layout.CODE_ADDR

    def exception_stub(self, vector: int) -> int:
        """Guest address of the stub that reports exception ``vector``."""
        return self.load_address + EXCEPTION_STUBS_OFFSET + EXCEPTION_STUB_SIZE * vector


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "pcihole" / "guest"


def _defines(extra: dict[str, int]) -> list[str]:
    symbols = {**layout.asm_symbols(), **extra}
    return [f"-D{name}={value:#x}" for name, value in sorted(symbols.items())]


def _tool_versions() -> str:
    versions = []
    for tool in TOOLS:
        path = shutil.which(tool)
        if path is None:
            raise GuestBuildError(
                f"{tool} not found: install GNU binutils and gcc (apt-get install binutils gcc)"
            )
        out = subprocess.run([path, "--version"], capture_output=True, text=True, check=False)
        versions.append(out.stdout.splitlines()[0] if out.stdout else path)
    return "\n".join(versions)


_versions_cache: str | None = None


def build_flat(source: Path, flags: list[str], *, base: int, entry: str, cache_name: str) -> bytes:
    """``assemble_flat``, cached under a hash of the tools, flags, includes and source."""
    global _versions_cache
    if _versions_cache is None:
        _versions_cache = _tool_versions()
    digest = hashlib.sha256()
    digest.update(_versions_cache.encode())
    digest.update("\0".join(flags).encode())
    for part in [*sorted(source.parent.glob("*.inc")), source]:
        digest.update(part.name.encode() + b"\0" + part.read_bytes())
    cached = cache_dir() / f"{cache_name}-{digest.hexdigest()[:20]}.bin"
    if cached.is_file():
        return cached.read_bytes()
    code = assemble_flat(source, flags, base=base, entry=entry)
    cached.parent.mkdir(parents=True, exist_ok=True)
    # Write then rename, so a concurrent build never reads half a file.
    with tempfile.NamedTemporaryFile(dir=cached.parent, delete=False) as tmp:
        tmp.write(code)
    os.replace(tmp.name, cached)
    return code


def build(name: str, *, defines: dict[str, int] | None = None) -> GuestProgram:
    """Build ``asm/NAME.S`` (cached) and return the program."""
    source = ASM_DIR / f"{name}.S"
    if not source.is_file():
        known = sorted(p.stem for p in ASM_DIR.glob("*.S"))
        raise Bug(f"no guest program {name!r}; known: {', '.join(known)}")
    flags = _defines(defines or {})
    code = build_flat(source, flags, base=layout.CODE_ADDR, entry="_start", cache_name=name)
    if len(code) > layout.CODE_MAX:
        raise Bug(f"{name}: {len(code)} bytes of code, room for {layout.CODE_MAX}")
    return GuestProgram(name, code)


def assemble_flat(source: Path, flags: list[str], *, base: int, entry: str) -> bytes:
    """Preprocess, assemble and link ``source`` into flat binary code that runs at ``base``."""
    with tempfile.TemporaryDirectory(prefix="pcihole-guest-") as work:
        obj = Path(work) / "prog.o"
        binary = Path(work) / "prog.bin"
        steps = [
            [
                "gcc",
                "-c",
                "-x",
                "assembler-with-cpp",
                f"-I{source.parent}",
                *flags,
                "-o",
                str(obj),
                str(source),
            ],
            [
                "ld",
                "-m",
                "elf_x86_64",
                "-nostdlib",
                f"-Ttext={base:#x}",
                "-e",
                entry,
                "--oformat",
                "binary",
                "-o",
                str(binary),
                str(obj),
            ],
        ]
        for step in steps:
            result = subprocess.run(step, capture_output=True, text=True, check=False)
            if result.returncode != 0:
                raise GuestBuildError(
                    f"{step[0]} failed on {source.name}:\n{result.stderr.strip()}"
                )
        return binary.read_bytes()
