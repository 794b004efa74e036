"""The one implementation of scratch / fine-tuning / joint training (symtransfer.protocol)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from symtransfer.protocol import (
    PROTOCOLS,
    SCRATCH_SEED_OFFSET,
    fit_scratch,
    fit_source,
    protocol_coupling,
    run_protocols,
    scratch_seed,
    target_seed,
    transfer_setting,
)
from symtransfer.sim import WideNetwork
from symtransfer.tasks import make_transfer_pair
from symtransfer.theory.linear import LinearTheory


def _data(seed=0):
    pair = make_transfer_pair(6, 12, 8, 20, 0.7, noise_target=0.1, seed=seed)
    return ((pair.source.X_train, pair.source.y_train), (pair.target.X_train, pair.target.y_train),
            (pair.target.X_test, pair.target.y_test_clean))


def test_seed_convention_is_documented_numbers():
    # the convention behind the committed figures (docs/figures): scratch seed + 7919, transfers seed + 1
    assert PROTOCOLS == ("scratch", "finetune", "joint")
    assert SCRATCH_SEED_OFFSET == 7919
    assert [target_seed(s) for s in (0, 1, 5)] == [1, 2, 6]
    assert [scratch_seed(s) for s in (0, 1, 5)] == [7919, 7920, 7924]
    with pytest.raises(ValueError, match="seed"):
        scratch_seed(-1)
    with pytest.raises(ValueError, match="seed"):
        target_seed(1.5)


def test_protocol_coupling():
    assert protocol_coupling("scratch") == 0.0
    assert protocol_coupling("finetune", 3.0) == math.inf
    assert protocol_coupling("joint", 0.5) == 0.5
    with pytest.raises(ValueError, match="needs a coupling"):
        protocol_coupling("joint")
    with pytest.raises(ValueError, match="coupling"):
        protocol_coupling("joint", -1.0)
    with pytest.raises(ValueError, match="setting must be one of scratch, finetune, joint"):
        protocol_coupling("single")


def test_linear_theory_protocols_are_the_direct_calls():
    src, tgt, (Xt, yt) = _data()
    hp1 = dict(gamma=1.0, weight_decay=1.0, temperature=0.5)
    hp2 = dict(gamma=2.0, weight_decay=0.5, temperature=0.5)
    template = LinearTheory(**hp1)
    out = run_protocols(template, src, tgt, couplings=[0.3, 3.0], target_params=hp2, seed=4)
    assert set(out) == {"source", "scratch", "finetune", ("joint", 0.3), ("joint", 3.0)}
    s = LinearTheory(**hp1).fit(*src)
    direct = {"scratch": LinearTheory(**hp2).fit(*tgt), "finetune": s.transfer(*tgt, coupling=math.inf, **hp2),
              ("joint", 0.3): s.transfer(*tgt, coupling=0.3, **hp2), ("joint", 3.0): s.transfer(*tgt, coupling=3.0, **hp2)}
    for k, m in direct.items():
        np.testing.assert_allclose(out[k].predict(Xt), m.predict(Xt), rtol=1e-12, atol=1e-14)
    assert template.get_params()["gamma"] == 1.0 and not hasattr(template, "Phi_")  # the template is untouched
    # omitted target hyper-parameters are the source's
    same = run_protocols(template, src, tgt, protocols=["finetune"], seed=4)
    np.testing.assert_allclose(same["finetune"].predict(Xt), s.transfer(*tgt, coupling=math.inf, **hp1).predict(Xt),
                               rtol=1e-12)


def test_network_protocols_follow_the_seed_convention():
    src, tgt, (Xt, yt) = _data(1)
    kw = dict(activation="linear", gamma=1.0, weight_decay=1.0, temperature=0.1, steps=40, lr=0.02, progress=False)
    template = WideNetwork(16, seed=99, **kw)
    out = run_protocols(template, src, tgt, couplings=[1.0], target_params={"gamma": 1.5}, seed=3)
    assert out["source"].seed == 3
    assert out["scratch"].seed == 3 + 7919 and out["scratch"].gamma == 1.5
    assert out["finetune"].seed == out[("joint", 1.0)].seed == 4
    # the scratch network is a fresh network with the scratch seed, nothing of the source
    fresh = WideNetwork(16, seed=3 + 7919, **{**kw, "gamma": 1.5}).fit(*tgt)
    np.testing.assert_array_equal(out["scratch"].predict(Xt), fresh.predict(Xt))
    # fine-tuning is readout-only: the hidden weights stay the source's
    np.testing.assert_array_equal(out["finetune"].W_, out["source"].W_)
    assert out["finetune"].readout_only_ and out[("joint", 1.0)].coupling_ == 1.0
    # the pieces give the same models (a cached source, as the figures use it)
    s = fit_source(template, *src, seed=3)
    np.testing.assert_array_equal(s.W_, out["source"].W_)
    j = transfer_setting(s, "joint", *tgt, coupling=1.0, target_params={"gamma": 1.5})
    np.testing.assert_array_equal(j.predict(Xt), out[("joint", 1.0)].predict(Xt))
    again = run_protocols(template, None, tgt, protocols=["finetune"], target_params={"gamma": 1.5}, seed=3,
                          source_model=s)
    np.testing.assert_array_equal(again["finetune"].predict(Xt), out["finetune"].predict(Xt))
    sc = fit_scratch(template, *tgt, seed=3, target_params={"gamma": 1.5}, eval_set=(Xt, yt))
    np.testing.assert_array_equal(sc.predict(Xt), out["scratch"].predict(Xt))
    assert len(sc.history_["test_loss"]) > 0


def test_bad_protocol_arguments_are_refused():
    src, tgt, _ = _data()
    template = LinearTheory()
    with pytest.raises(ValueError, match="setting must be one of"):
        run_protocols(template, src, tgt, protocols=["scratch", "lazy"])
    with pytest.raises(ValueError, match="coupling"):
        run_protocols(template, src, tgt, couplings=[math.inf])  # inf is fine-tuning, not a joint row
    with pytest.raises(ValueError, match="source data"):
        run_protocols(template, None, tgt, protocols=["finetune"])
    with pytest.raises(ValueError, match="no parameter"):
        fit_scratch(template, *tgt, target_params={"width": 3})
    with pytest.raises(ValueError, match="not a transfer"):
        transfer_setting(LinearTheory().fit(*src), "scratch", *tgt)
