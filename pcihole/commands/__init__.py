"""One module per subcommand, each ``add_parser(commands)`` and ``run(args) -> int``.

``COMMANDS`` is the table ``pcihole.cli`` builds its parser from, in help order.
"""

from __future__ import annotations

from pcihole.commands import bench, boot, demo, info, lspci, scan, serve_holes

COMMANDS = (info, scan, lspci, demo, bench, boot, serve_holes)
