"""What every command shares: reading a TOML/JSON config, one-line errors, JSON output.

Only the command-line package reads config files or prints; the domain modules take Python values
and return objects (docs/architecture.md).
"""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python < 3.11
    import tomli as tomllib

__all__ = ["load_config", "one_line", "report_error", "json_text", "write_text_or_stdout", "EXIT_ERROR",
           "EXIT_POINT_FAILURES", "EXIT_INTERNAL"]

#: Exit status of a bad config, bad input, unwritable output or a solver/run failure.
EXIT_ERROR = 2
#: Exit status of points that failed inside an otherwise finished sweep or experiment.
EXIT_POINT_FAILURES = 1
#: Exit status of an unexpected internal error (a bug: set SYMTRANSFER_DEBUG=1 for the traceback).
EXIT_INTERNAL = 3


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


def one_line(exc) -> str:
    """The message of ``exc`` on one line (multi-line solver messages included)."""
    return " ".join(str(exc).split()) or type(exc).__name__


#: Errors a user can cause (bad config, bad data, unwritable output, a run that fails): exit 2.
EXPECTED_ERRORS = (ValueError, RuntimeError, ArithmeticError, OSError, ImportError)


def report_error(command: str, exc: BaseException, *, expected: bool = True) -> int:
    """Write ``symtransfer COMMAND: error: ...`` on standard error; return the exit status.

    An expected error (bad input, failed run) exits :data:`EXIT_ERROR`; anything else is a bug and
    exits :data:`EXIT_INTERNAL`. With ``SYMTRANSFER_DEBUG`` set the exception is re-raised instead,
    for its traceback.
    """
    if os.environ.get("SYMTRANSFER_DEBUG"):
        raise exc
    if expected:
        # a builtin ValueError/RuntimeError is the message itself; our own error types name themselves
        plain = isinstance(exc, (ValueError, RuntimeError)) and type(exc).__module__ == "builtins"
        what = "" if plain else f"{type(exc).__name__}: "
        print(f"symtransfer {command}: error: {what}{one_line(exc)}", file=sys.stderr)
        return EXIT_ERROR
    print(f"symtransfer {command}: error: unexpected {type(exc).__name__}: {one_line(exc)} "
          f"(set SYMTRANSFER_DEBUG=1 for the traceback and please report it)", file=sys.stderr)
    return EXIT_INTERNAL


def _json_default(obj):
    if isinstance(obj, float) and math.isinf(obj):
        return "inf"
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def json_text(obj) -> str:
    """``obj`` as indented JSON; infinite floats (``coupling = inf``) become the string ``"inf"``."""
    return json.dumps(obj, indent=1, default=_json_default)


def write_text_or_stdout(text: str, out) -> None:
    """Print ``text``, or write it to the file ``out`` (``"-"`` or ``None``: standard output)."""
    if out is None or out == "-":
        print(text)
    else:
        Path(out).write_text(text)
        print(f"wrote {out}", file=sys.stderr)
