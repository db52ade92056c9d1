"""The host-wide hole service: one sealed all-ones memfd handed to every VM process.

``protocol.py`` (the exchange, its constants and error), ``server.py`` (``serve``),
``client.py`` (``connect``, ``obtain_source``); the ``serve-holes`` command around the
server is ``pcihole.commands.serve_holes``.
"""

from pcihole.holes.service.client import connect, obtain_source
from pcihole.holes.service.protocol import (
    DEFAULT_TIMEOUT,
    MAX_HEADER,
    PROTOCOL_VERSION,
    REQUEST,
    HoleServiceError,
    describe,
)
from pcihole.holes.service.server import ServiceStats, on_stop_signals, serve

__all__ = [
    "DEFAULT_TIMEOUT",
    "MAX_HEADER",
    "PROTOCOL_VERSION",
    "REQUEST",
    "HoleServiceError",
    "ServiceStats",
    "connect",
    "describe",
    "obtain_source",
    "on_stop_signals",
    "serve",
]
