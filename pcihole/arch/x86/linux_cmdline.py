"""What a Linux guest must be told on a host whose CPUID leaks (pure decisions).

On some KVMs (``kvm_pvm``: ring 0 emulated, CPUID not under the monitor's control)
``KVM_SET_CPUID2`` governs only the bits ``KVM_GET_SUPPORTED_CPUID`` reports: the host's
other bits (ssse3, sse4.x, avx, xsave, smap, fsgsbase, ...) reach the guest whatever the
monitor clears, and KVM's instruction emulator refuses their instructions in guest ring 0.
The only way to keep Linux off them is its command line: ``noxsave`` and
``clearcpuid=NAME,...`` (Linux 6.1 takes the names of /proc/cpuinfo).

``CpuidLeaks.from_answers`` decides, from what a guest read after the monitor cleared
every ``FEATURES`` bit, which features leak; ``linux_command_line`` adds what Linux then
needs to the user's command line. A host whose CPUID obeys the monitor leaks nothing and
nothing is added. The probe that asks a real guest is ``arch.x86.cpuid_probe``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

CpuidRegister = tuple[int, int, str]
"""(leaf, subleaf, register name): ``(1, 0, "ecx")``."""

FEATURES_LEAF = 1
EXTENDED_FEATURES_LEAF = 7


@dataclass(frozen=True)
class Feature:
    """One CPUID feature bit and how Linux is told to leave it alone."""

    name: str
    """Linux's name for it (/proc/cpuinfo, ``clearcpuid=``)."""
    register: CpuidRegister
    bit: int
    option: str | None = None
    """A command-line word that does it instead of ``clearcpuid=`` (``noxsave``)."""

    def seen(self, answers: Mapping[CpuidRegister, int]) -> bool:
        return bool(answers.get(self.register, 0) >> self.bit & 1)


_ECX1 = (FEATURES_LEAF, 0, "ecx")
_EBX7 = (EXTENDED_FEATURES_LEAF, 0, "ebx")
FEATURES = (
    Feature("xsave", _ECX1, 26, option="noxsave"),
    Feature("smap", _EBX7, 20),
    Feature("fsgsbase", _EBX7, 0),
    Feature("ssse3", _ECX1, 9),
    Feature("sse4_1", _ECX1, 19),
    Feature("sse4_2", _ECX1, 20),
    Feature("avx", _ECX1, 28),
    Feature("avx2", _EBX7, 5),
    Feature("avx512f", _EBX7, 16),
    Feature("pclmulqdq", _ECX1, 1),
    Feature("aes", _ECX1, 25),
)
"""Features whose instructions KVM's emulator refuses in guest ring 0 (or that Linux turns
on through them: xsave), in the order Linux is told. popcnt is left out on purpose: it
stays visible and the monitor finishes the instruction itself."""
PROBED_REGISTERS = tuple(dict.fromkeys(feature.register for feature in FEATURES))
"""What a probe guest must read: leaf 1 ECX, leaf 7.0 EBX."""

CLEARCPUID = "clearcpuid="
_CLEARCPUID = re.compile(r"(?<!\S)clearcpuid=(\S*)")


@dataclass(frozen=True)
class CpuidLeaks:
    """Features a guest sees although the monitor's CPUID cleared them."""

    leaked: tuple[str, ...] = ()
    """Names from ``FEATURES``, in its order."""

    @classmethod
    def from_answers(cls, answers: Mapping[CpuidRegister, int], max_leaf: int) -> CpuidLeaks:
        """``answers``: what the guest's CPUID returned for ``PROBED_REGISTERS`` after the
        monitor cleared every ``FEATURES`` bit; leaves above ``max_leaf`` (the guest's
        leaf 0 EAX) do not exist and are not read."""
        return cls(
            tuple(
                feature.name
                for feature in FEATURES
                if feature.register[0] <= max_leaf and feature.seen(answers)
            )
        )

    @property
    def any(self) -> bool:
        return bool(self.leaked)


def linux_command_line(user_append: str, host: CpuidLeaks) -> tuple[str, list[str]]:
    """The command line to give Linux: the user's, plus what ``host`` needs; and one note
    saying what was added and why (none when nothing was). The user's text is kept as
    written; words it already has are not repeated, and its ``clearcpuid=`` list is
    extended rather than given twice (Linux reads one)."""
    features = [feature for feature in FEATURES if feature.name in host.leaked]
    words = user_append.split()
    options = [f.option for f in features if f.option is not None and f.option not in words]
    names = [feature.name for feature in features if feature.option is None]
    given = _CLEARCPUID.search(user_append)
    have = given.group(1).split(",") if given else []
    missing = [name for name in names if name not in have]
    line = user_append
    if missing and given is not None:
        merged = CLEARCPUID + ",".join([*(name for name in have if name), *missing])
        line = line[: given.start()] + merged + line[given.end() :]
    extra = [*options, *([CLEARCPUID + ",".join(missing)] if missing and given is None else [])]
    line = " ".join(part for part in (line, *extra) if part)
    added = [*options, *([CLEARCPUID + ",".join(missing)] if missing else [])]
    if not added:
        return user_append, []
    note = (
        f"added '{' '.join(added)}' to the kernel command line: this host's KVM lets a guest "
        f"see CPU features its CPUID cleared ({', '.join(host.leaked)}) and refuses their "
        "instructions in guest ring 0"
    )
    return line, [note]
