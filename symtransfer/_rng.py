"""Counter-based random numbers for Numba kernels (a leaf shared by the simulator and the samplers).

``mix64`` is the splitmix64 finaliser, a bijective hash of a 64-bit word: hashing
``(seed, step, index, counter)`` gives streams that do not depend on how work is split across threads.
"""

import numba as nb
import numpy as np

GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_S30, _S27, _S31 = np.uint64(30), np.uint64(27), np.uint64(31)


@nb.njit(inline="always")
def mix64(z):
    """splitmix64 finaliser: a bijective hash of a 64-bit word."""
    z = (z ^ (z >> _S30)) * _M1
    z = (z ^ (z >> _S27)) * _M2
    return z ^ (z >> _S31)
