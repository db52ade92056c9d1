"""``python -m pcihole``: the same as the ``pcihole`` command."""

import sys

from pcihole.cli import main

sys.exit(main())
