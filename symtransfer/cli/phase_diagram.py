"""``symtransfer phase-diagram --config FILE --out FIG``: a proportional-limit phase diagram
(:func:`symtransfer.theory.proportional.phase_diagram`) from a config, drawn and optionally saved as arrays."""

from __future__ import annotations

import argparse
import pathlib

import numpy as np

from .._validation import check_output_file
from ._common import load_config

__all__ = ["phase_diagram_cli", "add_parser", "run"]

EPILOG = """config keys (TOML, or JSON for a .json file), all optional:
  setting = "finetune"          or "joint"
  x = "alpha", y = "nu2"        axis parameters: nu1, nu2, alpha, g1, g2, weight_decay1, weight_decay2,
                                temperature1, temperature2, coupling, sigma1, sigma2 (g = gamma sqrt(P) is
                                the scaled strength; lam1, lam2, T1, T2 are accepted old names)
  n = 100                       points per axis of the default grids
  x_values = [...]              or x_grid = {start, stop, num, scale = "linear" | "log"};
  y_values = [...]              or y_grid = {...}
  xscale, yscale                "auto", "linear" or "log"
  title = "..."
  arrays = "diagram.npz"        also save the arrays (relative to the figure's folder)
  [params]                      fixed values of the other parameters (coupling may be "inf")
example: examples/phase-diagram.toml"""


def _join_lines(lines):
    """Polylines as one ``(k, 2)`` array with rows of nan between pieces (loadable without pickle)."""
    if not lines:
        return np.empty((0, 2))
    sep = np.full((1, 2), np.nan)
    parts = []
    for i, seg in enumerate(lines):
        if i:
            parts.append(sep)
        parts.append(seg)
    return np.concatenate(parts)


def _grid_from_config(spec, name):
    if spec is None:
        return None
    if isinstance(spec, (list, tuple)):
        return np.asarray(spec, dtype=np.float64)
    if isinstance(spec, dict):
        allowed = {"start", "stop", "num", "scale"}
        extra = set(spec) - allowed
        if extra:
            raise ValueError(f"{name}: unknown keys {sorted(extra)}; accepted {sorted(allowed)}")
        try:
            start, stop = float(spec["start"]), float(spec["stop"])
        except KeyError:
            raise ValueError(f"{name} needs 'start' and 'stop'") from None
        num = spec.get("num", 100)
        if not isinstance(num, int) or num < 2:
            raise ValueError(f"{name}.num must be an integer >= 2, got {num!r}")
        scale = spec.get("scale", "linear")
        if scale == "linear":
            return np.linspace(start, stop, num)
        if scale == "log":
            if not (start > 0 and stop > 0):
                raise ValueError(f"{name}: a log grid needs start, stop > 0")
            return np.geomspace(start, stop, num)
        raise ValueError(f"{name}.scale must be 'linear' or 'log', got {scale!r}")
    raise ValueError(f"{name} must be a list of values or a table {{start, stop, num, scale}}, got {spec!r}")


def phase_diagram_cli(config_path, out_path):
    """Compute a phase diagram from a TOML/JSON config and save the figure (format from the suffix).

    Backs ``symtransfer phase-diagram --config FILE --out FIG``. Config keys (all optional)::

        setting = "finetune"            # or "joint"
        x = "alpha"                      # axis parameter names
        y = "nu2"
        n = 100                          # points per axis for default grids
        x_values = [0.0, 0.5, 1.0]       # or a table:  [x_grid] start=0 stop=1 num=100 scale="linear"
        y_grid = {start = 0.1, stop = 10.0, num = 100, scale = "log"}
        arrays = "diagram.npz"           # also save x, y, gain, errors, boundary
        title = "..."
        [params]                         # fixed values of the other parameters
        nu1 = 4.0

    Returns
    -------
    PhaseDiagram
    """
    from ..theory.proportional import phase_diagram

    out = check_output_file(out_path, "--out")
    if out.suffix.lower().lstrip(".") not in ("png", "pdf", "svg"):
        raise ValueError(f"--out must end in .png, .pdf or .svg, got {str(out)!r}")
    cfg = load_config(config_path)
    if not isinstance(cfg, dict):
        raise ValueError("config must be a table/object at top level")
    allowed = {"setting", "x", "y", "n", "x_values", "y_values", "x_grid", "y_grid", "params", "arrays",
               "title", "xscale", "yscale"}
    extra = set(cfg) - allowed
    if extra:
        raise ValueError(f"unknown config keys {sorted(extra)}; accepted {sorted(allowed)}")
    xv = _grid_from_config(cfg.get("x_values", cfg.get("x_grid")), "x_values")
    yv = _grid_from_config(cfg.get("y_values", cfg.get("y_grid")), "y_values")
    params = cfg.get("params", {})
    if not isinstance(params, dict):
        raise ValueError("params must be a table of parameter values")
    if isinstance(params.get("coupling"), str):
        try:
            params["coupling"] = float(params["coupling"])  # JSON has no inf literal: allow "inf"
        except ValueError:
            raise ValueError(f"params.coupling must be a number or \"inf\", got {params['coupling']!r}") from None
    for key in ("setting", "x", "y", "title", "xscale", "yscale", "arrays"):
        if key in cfg and not isinstance(cfg[key], str):
            raise ValueError(f"config key {key!r} must be a string, got {cfg[key]!r}")
    arrays_path = None
    if "arrays" in cfg:
        arrays_path = pathlib.Path(cfg["arrays"])
        if not arrays_path.is_absolute():
            arrays_path = out.parent / arrays_path
        check_output_file(arrays_path, "arrays")
    diag = phase_diagram(cfg.get("x", "alpha"), cfg.get("y", "nu2"), x_values=xv, y_values=yv,
                         n=cfg.get("n", 100), setting=cfg.get("setting", "finetune"), **params)
    diag.plot(out, xscale=cfg.get("xscale", "auto"), yscale=cfg.get("yscale", "auto"), title=cfg.get("title"))
    if arrays_path is not None:
        np.savez(arrays_path, x=diag.x, y=diag.y, gain=diag.gain, transfer_error=diag.transfer_error,
                 scratch_error=diag.scratch_error, boundary=_join_lines(diag.boundary))
    g = diag.gain
    print(f"phase diagram ({diag.setting} vs scratch): {diag.y_name} x {diag.x_name} = {g.shape[0]} x {g.shape[1]}, "
          f"gain in [{g.min():.4g}, {g.max():.4g}], positive transfer on {np.mean(g > 0):.0%} of the grid, "
          f"{len(diag.boundary)} gain = 0 line(s); figure written to {out}")
    return diag


def add_parser(sub):
    p = sub.add_parser("phase-diagram", help="proportional-limit transfer gain over a grid, with gain = 0 boundary",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="TOML or JSON file (keys below)")
    p.add_argument("--out", required=True, help="figure file (.png, .pdf or .svg)")
    return p


def run(args) -> int:
    phase_diagram_cli(args.config, args.out)
    return 0
