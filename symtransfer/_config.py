"""Old import path of :func:`symtransfer.cli.load_config` (config files are read only by the CLI).

Kept for ``from symtransfer._config import load_config``; nothing inside the package imports it.
"""

from .cli._common import load_config

__all__ = ["load_config"]
