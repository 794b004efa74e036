"""``symtransfer simulate --config FILE [--out JSON]``: wide-network simulations from a config.

Pretrains a :class:`~symtransfer.sim.WideNetwork` on the source task and runs every listed transfer
(docs/cli.md). The scratch / fine-tune / joint protocol is written here on ``WideNetwork.transfer``
directly: the config names each transfer's own hyper-parameters.
"""

from __future__ import annotations

import argparse

from .._validation import check_int, check_output_file
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
  [[transfer]]                  any number: name, coupling (required unless readout_only),
                                readout_only (false), gamma, weight_decay, temperature, lr, steps,
                                batch_size, average_from
example: examples/simulate.toml"""

_TASK_KEYS = {"dim", "n_source", "n_target", "n_test", "alpha", "teacher", "target_teacher", "noise_source",
              "noise_target"}
_NET_KEYS = {"width", "activation", "gamma", "weight_decay", "temperature", "lr", "steps", "batch_size",
             "init_scale", "average_from", "max_snapshots", "log_every"}
_TRANSFER_KEYS = {"name", "gamma", "weight_decay", "temperature", "coupling", "readout_only", "lr", "steps",
                  "batch_size", "average_from"}


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
        if not readout_only:
            if "coupling" not in kw:
                raise ValueError(f"transfer[{i}] needs coupling (>= 0) unless readout_only = true")
            from .._validation import check_real

            check_real(f"transfer[{i}].coupling", kw["coupling"], low=0.0)
        params = source.get_params()
        params.update({k: v for k, v in kw.items() if k not in ("coupling", "readout_only")})
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
        [[transfer]]  # any number; WideNetwork.transfer arguments plus a name
        name = "joint"
        coupling = 1.0
    """
    import numpy as np

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
    for name, kw in transfers:
        kw = dict(kw)
        tgt = src.transfer(pair.target.X_train, pair.target.y_train,
                           eval_set=(pair.target.X_test, pair.target.y_test_clean), **kw)
        row = summary(tgt, pair.target)
        row.update(name=name, coupling=kw.get("coupling"), readout_only=bool(kw.get("readout_only", False)))
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
