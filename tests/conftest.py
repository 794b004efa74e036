import numpy as np
import pytest
from hypothesis import HealthCheck, settings

# Property tests draw their examples from a fixed seed, so every run (and CI) checks the same cases:
# reproducible like every other stochastic result of the project, and no wall-clock deadlines.
settings.register_profile(
    "symtransfer", derandomize=True, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile("symtransfer")


@pytest.fixture
def rng():
    return np.random.default_rng(12345)
