"""Old import path of the ``symtransfer advise`` command, now :mod:`symtransfer.cli.advise`.

Kept so that ``python -m symtransfer.advise_cli ...`` and ``from symtransfer.advise_cli import ...``
keep working; nothing inside the package imports it.
"""

import sys

from .cli.advise import EPILOG, add_parser, advice_best, advise_cli, main, run

__all__ = ["add_parser", "run", "main", "advise_cli", "advice_best", "EPILOG"]

if __name__ == "__main__":
    sys.exit(main())
