"""``symtransfer compare --config FILE [--out CSV]``: :func:`symtransfer.experiments.compare_transfer`
from a config file."""

from __future__ import annotations

import argparse
from pathlib import Path

from .._validation import check_output_file
from ._common import load_config

__all__ = ["compare_cli", "add_parser", "run"]

EPILOG = """config keys (TOML, or JSON for a .json file):
  method = "gradient_flow"      "equilibrium", "gradient_flow" or "simulation"
  seeds = [0]                   list of integers >= 0
  [task]                        dim, n_source, n_target, n_test, alpha, teacher, target_teacher,
                                noise_source, noise_target, seed, clean_test (true)
  [data]  path = "file.npz"     instead of [task]: arrays X1, y1, X2, y2, X_test, y_test
  [settings]                    activation ("relu"), couplings ([1.0])
  [settings.source], [settings.target]   gamma (1), weight_decay (1), temperature (1 equilibrium, else 0)
  [settings.gradient_flow]      population (2000), dt, t_max (20) and other GradientFlowDMFT arguments
  [settings.simulation]         width (1000), lr, steps (2000), average_from and other WideNetwork arguments
  [settings.equilibrium]        AdaptiveKernel arguments (n_samples, ...)
example: examples/compare.toml"""

_TASK_KEYS = ("dim", "n_source", "n_target", "n_test", "alpha", "teacher", "target_teacher", "noise_source",
              "noise_target", "seed", "clean_test")


def _config_data(cfg, base: Path):
    if ("task" in cfg) == ("data" in cfg):
        raise ValueError("the config needs exactly one of [task] (a synthetic transfer pair) or "
                         "[data] (an .npz file with X1, y1, X2, y2, X_test, y_test)")
    if "data" in cfg:
        from ..datasets import _load_npz

        d = cfg["data"]
        if isinstance(d, dict):
            extra = set(d) - {"path"}
            if extra or "path" not in d:
                raise ValueError(f"[data] takes one key, path (an .npz file); got keys {sorted(d)}")
            d = d["path"]
        if not isinstance(d, str):
            raise ValueError(f"[data] path must be a file name, got {d!r}")
        p = Path(d).expanduser()
        p = p if p.is_absolute() else base / p
        if p.is_dir():
            raise ValueError(f"data file {str(p)!r} is a folder")
        z = _load_npz(p, ("X1", "y1", "X2", "y2", "X_test", "y_test"))
        return (z["X1"], z["y1"]), (z["X2"], z["y2"]), (z["X_test"], z["y_test"])
    from ..tasks import make_transfer_pair

    if not isinstance(cfg["task"], dict):
        raise ValueError(f"[task] must be a table of make_transfer_pair arguments, got {cfg['task']!r}")
    t = dict(cfg["task"])
    bad = set(t) - set(_TASK_KEYS)
    if bad:
        raise ValueError(f"[task] has unknown keys {sorted(bad)}; accepted: {', '.join(_TASK_KEYS)}")
    missing = [k for k in ("dim", "n_source", "n_target", "n_test", "alpha") if k not in t]
    if missing:
        raise ValueError(f"[task] needs {', '.join(missing)} (arguments of make_transfer_pair)")
    clean = t.pop("clean_test", True)
    if not isinstance(clean, bool):
        raise ValueError(f"[task] clean_test must be true or false, got {clean!r}")
    pair = make_transfer_pair(**t)
    yt = pair.target.y_test_clean if clean else pair.target.y_test
    return ((pair.source.X_train, pair.source.y_train), (pair.target.X_train, pair.target.y_train),
            (pair.target.X_test, yt))


def compare_cli(config_path, out_path=None):
    """``symtransfer compare --config FILE [--out CSV]``: run :func:`compare_transfer` from a config.

    The config (TOML, or JSON by extension) has top-level ``method`` and ``seeds``, a ``[settings]``
    table as in :func:`compare_transfer`, and either ``[task]`` -- the arguments of
    :func:`symtransfer.tasks.make_transfer_pair` (``dim``, ``n_source``, ``n_target``, ``n_test``,
    ``alpha``, ``teacher``, ``noise_source``, ``noise_target``, ``seed``; test error against the
    noiseless teacher unless ``clean_test = false``) -- or ``[data] path = "file.npz"`` with arrays
    ``X1, y1, X2, y2, X_test, y_test``. The table is printed; with ``out_path`` it is also written as
    CSV.
    """
    from ..experiments import METHODS, _merge_settings, compare_transfer

    cfg = load_config(config_path)
    unknown = set(cfg) - {"method", "seeds", "settings", "task", "data"}
    if unknown:
        raise ValueError(f"config has unknown keys {sorted(unknown)}; accepted: method, seeds, settings, task, data")
    if out_path is not None:
        check_output_file(out_path, "--out")
    method = cfg.get("method", "gradient_flow")
    if not isinstance(method, str) or method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    _merge_settings(cfg.get("settings"), method)  # every setting checked before any data is made
    source, target, test = _config_data(cfg, Path(config_path).resolve().parent)
    table = compare_transfer(source, target, test, settings=cfg.get("settings"),
                             method=cfg.get("method", "gradient_flow"), seeds=cfg.get("seeds", [0]))
    print(table)
    if out_path is not None:
        table.to_csv(out_path)
    return table


def add_parser(sub):
    p = sub.add_parser("compare", help="table of scratch / finetune / joint target errors and transfer gains",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="TOML or JSON file (keys below)")
    p.add_argument("--out", default=None, help="write the table as CSV to this file")
    return p


def run(args) -> int:
    compare_cli(args.config, args.out)
    return 0
