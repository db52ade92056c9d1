"""``pcihole info``: what this host's KVM offers pcihole."""

from __future__ import annotations

import argparse
import json
from typing import Any

from pcihole.holes.source import Backing, unavailable_reason
from pcihole.host import info as hostinfo

NAME = "info"


def add_parser(commands: Any) -> None:
    parser = commands.add_parser(NAME, help="what this host's KVM offers pcihole")
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.set_defaults(handler=run)


def _hole_backings() -> dict[str, Any]:
    """Which all-ones backing `shared` would pick here, and why not the others."""
    why_not = {b.value: unavailable_reason(b) for b in Backing}
    choice = next(name for name, reason in why_not.items() if reason is None)
    return {"choice": choice, "unavailable": {k: v for k, v in why_not.items() if v}}


def run(args: argparse.Namespace) -> int:
    facts = hostinfo.collect()
    facts["hole_backing"] = _hole_backings()
    if args.json:
        print(json.dumps(facts, indent=2, sort_keys=True))
        return 0
    print(f"KVM API version      {facts['api_version']}")
    print("capabilities")
    for name, value in facts["capabilities"].items():
        print(f"  {name:<18} {value}")
    print(f"vm.max_map_count     {facts['max_map_count']}")
    huge = facts["huge_pages"]
    print("huge pages")
    print(f"  THP, anonymous     {huge['thp_anonymous']}")
    print(f"  THP, shmem         {huge['thp_shmem']}")
    print(
        f"  hugetlb            {huge['hugetlb_free']} free of {huge['hugetlb_total']}"
        f" ({huge['hugetlb_page_kib']} KiB each)"
    )
    backing = facts["hole_backing"]
    print(f"hole backing         {backing['choice']} (best available now)")
    for name, reason in backing["unavailable"].items():
        print(f"  not {name}: {reason}")
    if not huge["hugetlb_free"]:
        print(
            "  hint: one reserved 2 MiB huge page lets one all-ones page serve every VM on"
            " the host with 2 MiB mappings; as root: sysctl vm.nr_hugepages=1"
        )
    return 0
