"""``symtransfer simulate --config FILE [--out JSON]``: wide-network simulations from a config.

Pretrains a :class:`~symtransfer.sim.WideNetwork` on the source task and runs every listed transfer
(docs/cli.md). Each transfer runs through :mod:`symtransfer.protocol` -- ``setting = "scratch"`` is
:func:`~symtransfer.protocol.fit_scratch` (a fresh network, seed + 7919), ``readout_only`` or an
infinite coupling the ``"finetune"`` and a finite coupling the ``"joint"`` setting of
:func:`~symtransfer.protocol.transfer_setting` -- so the command and the library train the same
models.
"""

from __future__ import annotations

import argparse
import math

from .._validation import check_int, check_output_file, check_real
from ._common import json_text, load_config, write_text_or_stdout

__all__ = ["simulate_from_config", "add_parser", "run"]

EPILOG = """config keys (TOML, or JSON for a .json file):
  seed = 0                      top level
  [task]                        dim (20), n_source (60), n_target (20), n_test (200), alpha (1.0),
                                teacher ("linear" or {degree = coefficient}), target_teacher,
                                noise_source (0), noise_target (0)
  [network]                     width (512), activation ("relu"), gamma (1), weight_decay (1),
                                temperature (0), lr (automatic), steps (2000), batch_size (full),
                                init_scale (1), average_from, max_snapshots (200), log_every
  [[transfer]]                  any number: name, setting ("scratch": a fresh network on the target;
                                "finetune"; "joint"), coupling (required for joint, the default
                                without setting and readout_only), readout_only (false), gamma,
                                weight_decay, temperature, lr, steps, batch_size, average_from
example: examples/simulate.toml"""

_TASK_KEYS = {"dim", "n_source", "n_target", "n_test", "alpha", "teacher", "target_teacher", "noise_source",
              "noise_target"}
_NET_KEYS = {"width", "activation", "gamma", "weight_decay", "temperature", "lr", "steps", "batch_size",
             "init_scale", "average_from", "max_snapshots", "log_every"}
_TRANSFER_KEYS = {"name", "setting", "gamma", "weight_decay", "temperature", "coupling", "readout_only", "lr",
                  "steps", "batch_size", "average_from"}
_HYPER = ("gamma", "weight_decay", "temperature")


def _only(section: dict, allowed: set, where: str) -> dict:
    if not isinstance(section, dict):
        raise ValueError(f"config section {where!r} must be a table/object")
    unknown = set(section) - allowed
    if unknown:
        raise ValueError(f"unknown keys in config section {where!r}: {sorted(unknown)}; allowed: {sorted(allowed)}")
    return dict(section)


def _checked_simulate_config(config: dict):
    """``(seed, task_kw, net_kw, transfers)`` with every value checked, before anything is trained."""
    from ..sim import WideNetwork
    from ..tasks import make_transfer_pair

    if not isinstance(config, dict):
        raise ValueError("the config must be a table/object")
    unknown = set(config) - {"seed", "task", "network", "transfer"}
    if unknown:
        raise ValueError(f"unknown top-level config keys {sorted(unknown)}; allowed: seed, task, network, transfer")
    seed = check_int("seed", config.get("seed", 0), low=0)
    task_kw = _only(config.get("task", {}), _TASK_KEYS, "task")
    task_kw.setdefault("dim", 20)
    task_kw.setdefault("n_source", 60)
    task_kw.setdefault("n_target", 20)
    task_kw.setdefault("n_test", 200)
    task_kw.setdefault("alpha", 1.0)
    net_kw = _only(config.get("network", {}), _NET_KEYS, "network")
    net_kw.setdefault("width", 512)
    transfers = config.get("transfer", [])
    if isinstance(transfers, dict):
        transfers = [transfers]
    if not isinstance(transfers, list):
        raise ValueError(f"config key 'transfer' must be a table or a list of tables ([[transfer]]), got {transfers!r}")
    make_transfer_pair(**{**task_kw, "n_source": 1, "n_target": 1, "n_test": 1}, seed=seed)  # checks the values
    for k in ("n_source", "n_target"):
        check_int(f"task.{k}", task_kw[k], low=1)
    check_int("task.n_test", task_kw["n_test"], low=1)
    source = WideNetwork(seed=seed, **net_kw)
    source._validated()
    checked = []
    for i, tr in enumerate(transfers):
        kw = _only(tr, _TRANSFER_KEYS, f"transfer[{i}]")
        name = kw.pop("name", f"transfer{i}")
        if not isinstance(name, str):
            raise ValueError(f"transfer[{i}].name must be a string, got {name!r}")
        readout_only = kw.get("readout_only", False)
        if not isinstance(readout_only, bool):
            raise ValueError(f"transfer[{i}].readout_only must be true or false, got {readout_only!r}")
        setting = kw.get("setting")
        if setting is not None and setting not in ("scratch", "finetune", "joint"):
            raise ValueError(f"transfer[{i}].setting must be 'scratch', 'finetune' or 'joint', got {setting!r}")
        if setting == "scratch" and ("coupling" in kw or readout_only):
            raise ValueError(f"transfer[{i}]: setting 'scratch' trains a fresh network on the target; it takes "
                             "no coupling or readout_only")
        if setting == "finetune" and "coupling" in kw:
            raise ValueError(f"transfer[{i}]: setting 'finetune' is coupling = inf; give no coupling")
        if setting == "joint" and readout_only:
            raise ValueError(f"transfer[{i}]: setting 'joint' contradicts readout_only = true")
        if setting in (None, "joint") and not readout_only:
            if "coupling" not in kw:
                raise ValueError(f"transfer[{i}] needs coupling (>= 0) unless readout_only = true or a setting "
                                 "'scratch' / 'finetune'")
            check_real(f"transfer[{i}].coupling", kw["coupling"], low=0.0, allow_inf=setting is None)
        params = source.get_params()
        params.update({k: v for k, v in kw.items() if k not in ("coupling", "readout_only", "setting")})
        try:
            WideNetwork(**params)._validated()
        except ValueError as exc:
            raise ValueError(f"transfer[{i}]: {exc}") from None
        checked.append((name, kw))
    return seed, task_kw, net_kw, checked


def simulate_from_config(config: dict, progress: bool = False) -> dict:
    """Pretrain on the source task and run every listed transfer; return JSON-ready results.

    Config layout (TOML shown)::

        seed = 0
        [task]        # make_transfer_pair arguments
        dim = 20
        n_source = 60
        n_target = 20
        n_test = 200
        alpha = 0.9
        [network]     # WideNetwork arguments
        width = 512
        activation = "relu"
        temperature = 1.0
        [[transfer]]  # any number: a name, a setting or coupling, target hyper-parameters
        name = "joint"
        coupling = 1.0
        [[transfer]]
        name = "scratch"
        setting = "scratch"  # a fresh network on the target (seed + 7919, symtransfer.protocol)

    Returns ``{"config", "source", "transfer"}``; every transfer row has ``name``, ``setting``,
    ``coupling`` (``None`` unless joint), ``readout_only`` (true for fine-tuning), ``test_error``
    (against the noiseless target teacher), ``lr`` and ``history``.
    """
    import numpy as np

    from ..protocol import fit_scratch, transfer_setting
    from ..sim import WideNetwork
    from ..tasks import make_transfer_pair

    seed, task_kw, net_kw, transfers = _checked_simulate_config(config)
    pair = make_transfer_pair(seed=seed, **task_kw)

    def summary(net, task):
        out = {"test_error": float(np.mean((net.predict(task.X_test) - task.y_test_clean) ** 2)),
               "lr": net.lr_,
               "history": {k: v.tolist() for k, v in net.history_.items()}}
        return out

    src = WideNetwork(seed=seed, progress=progress, **net_kw).fit(
        pair.source.X_train, pair.source.y_train, eval_set=(pair.source.X_test, pair.source.y_test_clean))
    results = {"config": config, "source": summary(src, pair.source), "transfer": []}
    X2, y2 = pair.target.X_train, pair.target.y_train
    eval_set = (pair.target.X_test, pair.target.y_test_clean)
    for name, kw in transfers:
        kw = dict(kw)
        setting = kw.pop("setting", None)
        readout_only = kw.pop("readout_only", False)
        coupling = kw.pop("coupling", None)
        hyper = {k: kw.pop(k) for k in _HYPER if k in kw}
        if setting == "scratch":
            tgt = fit_scratch(src, X2, y2, seed=seed, target_params={**hyper, **kw}, eval_set=eval_set)
        else:
            if setting is None:
                setting = "finetune" if readout_only or math.isinf(coupling) else "joint"
            tgt = transfer_setting(src, setting, X2, y2, coupling=coupling if setting == "joint" else None,
                                   target_params=hyper, eval_set=eval_set, transfer_params=kw)
        row = summary(tgt, pair.target)
        # JSON has no infinity: the fine-tuning row says readout_only instead of coupling = inf
        row.update(name=name, setting=setting, coupling=coupling if setting == "joint" else None,
                   readout_only=setting == "finetune")
        results["transfer"].append(row)
    return results


def add_parser(sub):
    p = sub.add_parser("simulate", help="simulations from a TOML/JSON config, results as JSON", epilog=EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="TOML or JSON file (keys below)")
    p.add_argument("--out", default="-", help="output JSON file (default: standard output)")
    p.add_argument("--progress", action="store_true", help="show progress bars")
    return p


def run(args) -> int:
    config = load_config(args.config)
    _checked_simulate_config(config)  # every value checked before anything is trained
    if args.out != "-":
        check_output_file(args.out, "--out")
    results = simulate_from_config(config, progress=args.progress)
    write_text_or_stdout(json_text(results), args.out)
    return 0
