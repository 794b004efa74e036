"""The built-in end-to-end example behind ``symtransfer demo``.

A linear-activation network is pretrained on a source task, then trained on an aligned target task
from scratch, by readout fine-tuning and with an elastic coupling. Each setting is simulated at
finite width (time-averaged Langevin, ``T = lambda = 1``) and solved exactly by the linear theory;
the table puts the two side by side.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass

import numpy as np

from .sim import WideNetwork
from .tasks import make_transfer_pair
from .theory.linear import LinearTheory

__all__ = ["DemoRow", "run_demo", "format_table"]


@dataclass
class DemoRow:
    setting: str
    coupling: float
    theory_error: float
    simulation_error: float
    prediction_gap: float  # rms difference between simulated and theoretical predictors on test inputs
    theory_gain: float = float("nan")
    simulation_gain: float = float("nan")

    def as_dict(self) -> dict:
        return asdict(self)


def run_demo(*, dim=20, n_source=60, n_target=20, n_test=200, alpha=0.9, gamma=1.0, width=256, steps=4000,
             lr=0.01, coupling=1.0, seed=0, progress=False) -> list[DemoRow]:
    """Run the demo and return one row per setting (source, scratch, finetune, joint).

    Test errors are measured against the noiseless teacher.
    """
    pair = make_transfer_pair(dim, n_source, n_target, n_test, alpha, noise_source=0.1, noise_target=0.1,
                              seed=seed)
    src, tgt = pair.source, pair.target
    hyper = dict(gamma=gamma, weight_decay=1.0, temperature=1.0)
    sim_kw = dict(activation="linear", lr=lr, steps=steps, average_from=0.25, progress=progress, **hyper)

    theory_src = LinearTheory(**hyper).fit(src.X_train, src.y_train)
    net_src = WideNetwork(width, seed=seed, **sim_kw).fit(src.X_train, src.y_train)

    def row(name, delta, th, net, Xt, yt):
        ft, fs = th.predict(Xt), net.predict(Xt)
        return DemoRow(name, delta, float(np.mean((ft - yt) ** 2)), float(np.mean((fs - yt) ** 2)),
                       float(np.sqrt(np.mean((fs - ft) ** 2))))

    rows = [row("source", math.nan, theory_src, net_src, src.X_test, src.y_test_clean)]
    settings = [("scratch", 0.0), ("finetune", math.inf), ("joint", coupling)]
    for name, delta in settings:
        th = theory_src.transfer(tgt.X_train, tgt.y_train, coupling=delta, **hyper)
        net = net_src.transfer(tgt.X_train, tgt.y_train, coupling=None if math.isinf(delta) else delta,
                               readout_only=math.isinf(delta), **hyper)
        rows.append(row(name, delta, th, net, tgt.X_test, tgt.y_test_clean))
    scratch = rows[1]
    for r in rows[1:]:
        r.theory_gain = scratch.theory_error - r.theory_error
        r.simulation_gain = scratch.simulation_error - r.simulation_error
    return rows


def format_table(rows: list[DemoRow]) -> str:
    head = f"{'setting':<9} {'delta':>6} {'E_g theory':>11} {'E_g sim':>9} {'gain theory':>12} {'gain sim':>9} {'|f_sim-f_th|':>13}"
    lines = [head, "-" * len(head)]
    for r in rows:
        gain_t = "" if math.isnan(r.theory_gain) else f"{r.theory_gain:+.4f}"
        gain_s = "" if math.isnan(r.simulation_gain) else f"{r.simulation_gain:+.4f}"
        delta = "" if math.isnan(r.coupling) else ("inf" if math.isinf(r.coupling) else f"{r.coupling:g}")
        lines.append(f"{r.setting:<9} {delta:>6} {r.theory_error:>11.4f} {r.simulation_error:>9.4f} "
                     f"{gain_t:>12} {gain_s:>9} {r.prediction_gap:>13.4f}")
    return "\n".join(lines)


def main_demo(fast: bool = False) -> str:
    t0 = time.perf_counter()
    kw = dict(width=128, steps=2000) if fast else {}
    rows = run_demo(progress=True, **kw)
    text = (
        "symtransfer demo: linear network, T = lambda = gamma = 1, alpha = 0.9, D = 20, P1 = 60, P2 = 20\n"
        "simulation: width-N Langevin, time-averaged predictor; theory: exact N -> infinity (docs/theory.md 2-3)\n\n"
        + format_table(rows)
        + f"\n\n(gain = scratch error - transfer error; errors against the noiseless teacher; "
        f"{time.perf_counter() - t0:.1f} s)"
    )
    return text
