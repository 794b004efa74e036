"""The shipped examples/ configs are valid as shipped and run end to end in a shrunk form."""

from __future__ import annotations

import json
import math
import runpy
import shlex
from pathlib import Path

import numpy as np
import pytest

from symtransfer.cli import load_config
from symtransfer.cli import build_parser, main

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def _toml(obj) -> str:
    """Minimal TOML writer for the example configs (tables, arrays of tables, scalars, inline dicts)."""
    def val(v):
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, str):
            return json.dumps(v)
        if isinstance(v, dict):
            return "{ " + ", ".join(f"{json.dumps(str(k))} = {val(x)}" for k, x in v.items()) + " }"
        if isinstance(v, list):
            return "[" + ", ".join(val(x) for x in v) + "]"
        return repr(v)

    def emit(prefix, table, lines):
        for k, v in table.items():
            if not isinstance(v, dict) and not (isinstance(v, list) and v and isinstance(v[0], dict)):
                lines.append(f"{json.dumps(k)} = {val(v)}")
        for k, v in table.items():
            name = f"{prefix}.{json.dumps(k)}" if prefix else json.dumps(k)
            if isinstance(v, dict):
                lines.append(f"[{name}]")
                emit(name, v, lines)
            elif isinstance(v, list) and v and isinstance(v[0], dict):
                for item in v:
                    lines.append(f"[[{name}]]")
                    emit(name, item, lines)
        return lines

    return "\n".join(emit("", obj, [])) + "\n"


def _shrunk(tmp_path, name, change):
    cfg = load_config(EXAMPLES / name)
    change(cfg)
    path = tmp_path / name
    path.write_text(_toml(cfg))
    return path


def test_readme_commands_parse():
    parser = build_parser()
    text = (EXAMPLES / "README.md").read_text()
    cmds = [ln.strip() for ln in text.splitlines() if ln.strip().startswith("symtransfer ")]
    assert {c.split()[1] for c in cmds} == {"simulate", "compare", "phase-diagram", "sweep", "experiment"}
    for c in cmds:
        args = parser.parse_args(shlex.split(c)[1:])
        if getattr(args, "config", None):
            assert (EXAMPLES.parent / args.config).is_file(), c


def test_simulate_example(tmp_path):
    from symtransfer.cli import _checked_simulate_config

    _checked_simulate_config(load_config(EXAMPLES / "simulate.toml"))  # valid as shipped

    def shrink(c):
        c["network"].update(width=16, steps=40)
        c["task"]["n_test"] = 20

    out = tmp_path / "r.json"
    assert main(["simulate", "--config", str(_shrunk(tmp_path, "simulate.toml", shrink)), "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert [t["name"] for t in res["transfer"]] == ["scratch", "finetune", "joint"]
    assert all(math.isfinite(t["test_error"]) for t in res["transfer"])


def test_compare_example(tmp_path, capsys):
    from symtransfer.cli.compare import _config_data
    from symtransfer.experiments import _merge_settings

    cfg = load_config(EXAMPLES / "compare.toml")
    _merge_settings(cfg["settings"], cfg["method"])  # valid as shipped (tanh, AdaptiveKernel options)
    _config_data(cfg, EXAMPLES)

    def shrink(c):
        c["settings"]["activation"] = "linear"  # exact and compiled-free: the run, not the physics, is tested
        c["settings"].pop("equilibrium")
        c["seeds"] = [0]
        c["task"]["n_test"] = 50

    out = tmp_path / "t.csv"
    assert main(["compare", "--config", str(_shrunk(tmp_path, "compare.toml", shrink)), "--out", str(out)]) == 0
    lines = out.read_text().splitlines()
    assert lines[0].startswith("setting,coupling,method,test_error") and len(lines) == 1 + 2 + 3


def test_phase_diagram_example(tmp_path):
    def shrink(c):
        c["x_values"]["num"] = 5
        c["y_values"]["num"] = 4

    out = tmp_path / "pd.png"
    assert main(["phase-diagram", "--config", str(_shrunk(tmp_path, "phase-diagram.toml", shrink)), "--out",
                 str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    z = np.load(tmp_path / "phase.npz")
    assert z["gain"].shape == (4, 5) and np.all(np.isfinite(z["gain"]))


def test_sweep_example_points_evaluate():
    from symtransfer.sweep import evaluate_point, expand_config

    cfg = load_config(EXAMPLES / "sweep.toml")
    points = expand_config(cfg, EXAMPLES)
    # proportional is deterministic and data-free (one point per grid cell); equilibrium per seed
    assert sum(p["method"] == "proportional" for p in points) == 9
    assert sum(p["method"] == "equilibrium" for p in points) == 27
    for method in ("proportional", "equilibrium"):
        p = next(q for q in points if q["method"] == method and q["alpha"] == 1.0 and q["n_target"] == 80)
        r = evaluate_point(p)
        assert 0.0 < r["test_error_finetune"] < r["test_error_scratch"] < 1.0, (method, r)


@pytest.mark.slow
def test_experiment_example_runs_fast(tmp_path):
    mod = runpy.run_path(str(EXAMPLES / "experiment.py"))
    run = mod["main"](["phase-diagram", "--out", str(tmp_path / "out")])
    assert run.png.is_file() and run.n_points > 0 and not run.failures


def test_experiment_example_parses():
    mod = runpy.run_path(str(EXAMPLES / "experiment.py"))
    with pytest.raises(SystemExit):
        mod["main"](["no-such-figure"])
