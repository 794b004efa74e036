"""Reading TOML/JSON configuration files for the command-line tools."""

from __future__ import annotations

import json
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python < 3.11
    import tomli as tomllib

__all__ = ["load_config"]


def load_config(path) -> dict:
    """Read ``path`` into a dict: JSON for a ``.json`` suffix, TOML otherwise.

    Raises ``ValueError`` naming the file for a missing file or a parse error.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"config file {str(path)!r} does not exist")
    text = path.read_text()
    if path.suffix.lower() == ".json":
        try:
            cfg = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"config file {str(path)!r} is not valid JSON: {exc}") from None
    else:
        try:
            cfg = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ValueError(f"config file {str(path)!r} is not valid TOML: {exc}") from None
    if not isinstance(cfg, dict):
        raise ValueError(f"config file {str(path)!r} must hold a table/object at the top level")
    return cfg
