"""The built-in end-to-end example behind ``symtransfer demo``.

A linear-activation network is pretrained on a source task, then trained on an aligned target task
from scratch, by readout fine-tuning and with an elastic coupling (:mod:`symtransfer.protocol`: the
scratch network is a fresh one, seed ``seed + 7919``). Each setting is simulated at
finite width (time-averaged Langevin, ``T = lambda = 1``) and solved exactly by the linear theory;
the table puts the two side by side. One more row shows feature learning with a nonlinear
activation: a ``tanh`` network on the source task against the adaptive-kernel theory
(:class:`~symtransfer.theory.adaptive.AdaptiveKernel`, docs/theory.md section 2).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from .protocol import fit_source, protocol_coupling, run_protocols
from .sim import WideNetwork
from .tasks import make_transfer_pair
from .theory.linear import LinearTheory

__all__ = ["DemoRow", "run_demo", "format_table"]


@dataclass
class DemoRow:
    """One line of the demo table; errors ``E_g = mean_x (f(x) - y_clean(x))^2`` on test inputs."""

    setting: str
    coupling: float
    theory_error: float
    simulation_error: float
    prediction_gap: float  # rms over test inputs of f_sim(x) - f_theory(x)
    theory_gain: float = float("nan")
    simulation_gain: float = float("nan")
    activation: str = "linear"

    def as_dict(self) -> dict:
        return asdict(self)


def run_demo(*, dim=20, n_source=60, n_target=20, n_test=200, alpha=0.9, gamma=1.0, width=256, steps=4000,
             lr=0.01, coupling=1.0, seed=0, progress=False, nonlinear=False, n_samples=2048) -> list[DemoRow]:
    """Run the demo and return one row per setting (source, scratch, finetune, joint).

    Test errors are measured against the noiseless teacher. With ``nonlinear=True`` a fifth row
    compares a ``tanh`` network on the source task with :class:`AdaptiveKernel` (``n_samples``
    Monte Carlo samples).
    """
    pair = make_transfer_pair(dim, n_source, n_target, n_test, alpha, noise_source=0.1, noise_target=0.1,
                              seed=seed)
    src, tgt = pair.source, pair.target
    hyper = dict(gamma=gamma, weight_decay=1.0, temperature=1.0)
    sim_kw = dict(activation="linear", lr=lr, steps=steps, average_from=0.25, progress=progress, **hyper)

    theory, network = LinearTheory(**hyper), WideNetwork(width, **sim_kw)
    theory_src = fit_source(theory, src.X_train, src.y_train, seed=seed)
    net_src = fit_source(network, src.X_train, src.y_train, seed=seed)

    def row(name, delta, th, net, Xt, yt):
        ft, fs = th.predict(Xt), net.predict(Xt)
        return DemoRow(name, delta, float(np.mean((ft - yt) ** 2)), float(np.mean((fs - yt) ** 2)),
                       float(np.sqrt(np.mean((fs - ft) ** 2))))

    rows = [row("source", math.nan, theory_src, net_src, src.X_test, src.y_test_clean)]
    # the three settings by the one protocol implementation (scratch: a fresh model, seed + 7919)
    target = (tgt.X_train, tgt.y_train)
    th, net = (run_protocols(m, None, target, couplings=[coupling], target_params=hyper, seed=seed, source_model=s)
               for m, s in ((theory, theory_src), (network, net_src)))
    for name, key in (("scratch", "scratch"), ("finetune", "finetune"), ("joint", ("joint", coupling))):
        rows.append(row(name, protocol_coupling(name, coupling), th[key], net[key], tgt.X_test, tgt.y_test_clean))
    scratch = rows[1]
    for r in rows[1:]:
        r.theory_gain = scratch.theory_error - r.theory_error
        r.simulation_gain = scratch.simulation_error - r.simulation_error
    if nonlinear:
        from .theory.adaptive import AdaptiveKernel

        th = AdaptiveKernel("tanh", n_samples=n_samples, seed=seed, **hyper).fit(src.X_train, src.y_train)
        net = WideNetwork(width, seed=seed, **{**sim_kw, "activation": "tanh"}).fit(src.X_train, src.y_train)
        r = row("source", math.nan, th, net, src.X_test, src.y_test_clean)
        r.activation = "tanh"
        rows.append(r)
    return rows


def format_table(rows: list[DemoRow]) -> str:
    head = (f"{'phi':<6} {'setting':<9} {'delta':>6} {'E_g theory':>11} {'E_g sim':>9} {'gain theory':>12} "
            f"{'gain sim':>9} {'rms(f_sim-f_th)':>16}")
    lines = [head, "-" * len(head)]
    for r in rows:
        gain_t = "" if math.isnan(r.theory_gain) else f"{r.theory_gain:+.4f}"
        gain_s = "" if math.isnan(r.simulation_gain) else f"{r.simulation_gain:+.4f}"
        delta = "" if math.isnan(r.coupling) else ("inf" if math.isinf(r.coupling) else f"{r.coupling:g}")
        lines.append(f"{r.activation:<6} {r.setting:<9} {delta:>6} {r.theory_error:>11.4f} {r.simulation_error:>9.4f} "
                     f"{gain_t:>12} {gain_s:>9} {r.prediction_gap:>16.4f}")
    return "\n".join(lines)
