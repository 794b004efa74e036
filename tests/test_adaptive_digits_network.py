"""Issue 15: transfer theory against source-then-target Langevin networks on a digits pair.

Source 3-vs-8 (P1 = 80), target 5-vs-8 (P2 = 40), 40 held-out target images (``digits_transfer``,
split seed 0); tanh, gamma = 1, T = lambda = 1, coupling delta = 2 (jointly rich, interior: no
condensate). Theory: ``AdaptiveKernel(...).fit(X1, y1).transfer(X2, y2, coupling=2)``; networks:
``WideNetwork(N).fit(X1, y1).transfer(X2, y2, coupling=2)``, the target predictor time-averaged over
the last 80 % of its run.

Error model (measured for issue 15): the target network sits on the N hidden weights of one source
network, a quenched sample of the source equilibrium, so its predictor scatters between network
seeds by ``c / sqrt(N)``; the time average adds 0.001-0.004 and no O(1/N) bias was resolved. Seed
scatter (rms over the test images of the per-image sd between seeds): 0.023 at N = 250 (4 seeds),
0.010 at N = 1000 (2 seeds), i.e. ``c = 0.32-0.36``. Per-seed RMS gap to a 262144-sample theory
(MC sd 0.0047): 0.023 (N = 250), 0.011 (N = 1000), 0.0064 (N = 4000), against
``sqrt(sd^2 + c^2/N)`` = 0.023, 0.012, 0.0075. The theory's quenched average has a bias O(1/n_inner)
from its per-group normalisation: at ``n_inner = 8`` (the default before issue 15) the transfer predictor is 0.029 rms
from the 262144-sample ``n_inner = 32`` solution (two seeds; combined Monte Carlo error 0.008; as
large as the N = 250 gap); 32 and 64 agree within Monte
Carlo error (0.007 against 0.008), so the default is now ``n_inner = 32`` (passed explicitly here).
"""

import numpy as np
import pytest

from symtransfer import AdaptiveKernel
from symtransfer.datasets import digits_transfer

HYPER = dict(gamma=1.0, weight_decay=1.0, temperature=1.0)
DELTA = 2.0
# quenched scatter of the network predictor between seeds, c / sqrt(N) (measured at N = 250)
C_QUENCHED = 0.36


def _rms(z):
    return float(np.sqrt(np.mean(np.square(z))))


@pytest.mark.slow
def test_digits_transfer_matches_langevin_networks_gap_shrinking_with_width():
    from symtransfer.sim import WideNetwork

    d = digits_transfer("3-8", "5-8", n_source=80, n_target=40, n_test=40, seed=0)
    src = AdaptiveKernel("tanh", **HYPER, n_samples=65536, seed=1).fit(d.X1, d.y1)
    assert src.condensate_weights_.size == 0
    tgt = src.transfer(d.X2, d.y2, coupling=DELTA, n_samples=65536, n_inner=32)
    assert tgt.converged_ and tgt.condensate_weights_.size == 0
    f, sd = tgt.predict(d.X_test, return_std=True)
    sd_th = _rms(sd)
    scratch = AdaptiveKernel("tanh", **HYPER, n_samples=16384, seed=2).fit(d.X2, d.y2)
    f_scr, sd_scr = scratch.predict(d.X_test, return_std=True)

    # (c) the transfer effect is many Monte Carlo sigmas (measured 0.087 against sd 0.0096 and 0.0051:
    #     8 sigma; a transfer that returned the scratch model, or ignored the source, fails here)
    effect = _rms(f - f_scr)
    assert effect > 5.0 * np.hypot(sd_th, _rms(sd_scr))

    gaps, gaps_scr = {}, {}
    for N in (250, 1000):
        # source seed 3, target seed 4 (symtransfer.protocol); only the source's final hidden weights
        # enter the target run, so the source needs no time average
        net = WideNetwork(N, "tanh", **HYPER, steps=4000, seed=3, progress=False).fit(d.X1, d.y1)
        f_net = net.transfer(d.X2, d.y2, coupling=DELTA, steps=10000, average_from=0.2).predict(d.X_test)
        gaps[N], gaps_scr[N] = _rms(f_net - f), _rms(f_net - f_scr)

    # (a) widest network within 1.5x the expected gap sqrt(sd^2 + (c/sqrt N)^2 + 0.004^2) = 0.0155
    #     (measured 0.0125 at seed 3, 0.0114 at seed 5). The factor covers the scatter of one seed's gap
    #     and of sd; the n_inner = 8 theory (biased by 0.029) gives 0.027-0.032 (seeds 3, 5;
    #     theory seeds 1, 11) against a bound of 0.021 and fails.
    expected = np.sqrt(sd_th**2 + C_QUENCHED**2 / 1000 + 0.004**2)
    assert gaps[1000] < 1.5 * expected
    # (b) the gap shrinks with width: expected gap(1000)/gap(250) = 0.0149/0.0247 = 0.6, measured
    #     0.0125/0.0238 = 0.53. The per-seed gap at N = 250 ranges 0.021-0.029 over 4 seeds and at
    #     N = 1000 0.0114-0.0125 over 2, so the factor 0.8 holds for every pair of measured seeds.
    assert gaps[1000] < 0.8 * gaps[250]
    # (c') the networks follow the transfer theory, not the scratch model (measured 0.0125 vs 0.089)
    assert gaps[1000] < gaps_scr[1000] / 3
