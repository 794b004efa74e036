"""``python -m symtransfer <command>``: the same as the ``symtransfer`` command."""

import sys

from .cli import main

sys.exit(main())
