"""``python -m proxy.discover discover DSN …`` until the lead wires it into ``pgveil``."""

import sys

from .cli import main

sys.exit(main())
