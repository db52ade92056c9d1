"""The host-wide hole service: one sealed all-ones memfd handed to every VM process.

Protocol (Unix stream socket, one exchange per connection):

- client sends exactly ``PCIHOLE-GET-ALLONES 1\\n``;
- service answers one JSON line ``{"protocol": 1, "size": N, "backing": "memfd",
  "seals": S}`` with the memfd attached (SCM_RIGHTS), then closes;
- anything else gets ``ERROR <reason>\\n`` and the connection is closed.

The client trusts nothing it is told: it checks the fd's real seals, size and kind before
mapping it, and every byte after mapping it read-only (:meth:`AllOnesSource.adopt_fd`).
Because the memfd is sealed, one host copy of the chunk then backs the holes of every VM
on the host. THP sources have no fd and are never served.
"""

from __future__ import annotations

from pcihole.errors import EnvironmentProblem
from pcihole.holes.source import AllOnesSource

PROTOCOL_VERSION = 1
REQUEST = b"PCIHOLE-GET-ALLONES 1\n"
"""The one request the service answers."""
MAX_HEADER = 4096
"""Longest reply line a client accepts."""
DEFAULT_TIMEOUT = 2.0
"""Seconds a client waits for the service (and the service for a client's request)."""


class HoleServiceError(EnvironmentProblem):
    """The hole service could not be started, reached, or sent something unacceptable."""


def describe(source: AllOnesSource, *, reason: bool = True) -> str:
    size = source.size
    text = f"{size >> 20} MiB" if size % (1 << 20) == 0 else f"{size >> 10} KiB"
    why = f"; {source.reason}" if reason else ""
    return f"{source.backing.value} source ({text}{why})"
