"""Numba kernels of the target-side image of a source condensate (docs/adaptive.md, eq. (A.7)).

* :func:`line_max` -- the exact maximum of ``F_j`` along a segment or ray (a quadratic between kinks).
* :func:`ascend` -- the monotone ascent of ``F_j`` from one start (ridge pinning and release, unbounded
  rays).
* :func:`ascend_all` -- every start of every source direction of one solve, and which maxima are
  distinct branches.

``F_j(delta) = -|delta|^2 / (2 s2c) + c2 (v . phi_inf(h0_j + L2 delta))^2`` with the piecewise linear
``phi_inf(x) = ap x`` (``x > 0``), ``am x`` (else). Arrays are contiguous float64 (``pinned``: bool).

Bitwise reproducibility: a maximiser that sits on pinned kinks has preactivations ``~1e-17`` there,
whose signs are rounding noise, and the next ascent from it (it is kept as a start) takes its cell
from those signs. Any change in rounding therefore moves some starts to other local maxima, a few
solves later. So every product is formed with the BLAS call NumPy uses for it (``dot``/``gemv``/
``gemm``, ``syrk`` for a Gram matrix ``A A^T``, ``ddot`` for a one-row matrix times a vector), sums
elsewhere in NumPy's order, and the small systems with LAPACK's ``gelsd`` at NumPy's cut-off. Against
the NumPy implementation (kept in tests/test_source_condensate_kernels.py) run on contiguous
preactivations the maxima are the same bit for bit over whole transfers; the NumPy code took them as
a strided column, whose ``ddot`` (another OpenBLAS build than SciPy's here) differs in the last bit,
so from the same state its maxima agree to 1e-13, and along a sequence of solves an archived start
now and then lands on another maximum (issue 15's transfers: one F_j* in 3280 differed, by 40 %).
"""

from __future__ import annotations

import ctypes
import math

import numba as nb
import numpy as np
from llvmlite import binding
from scipy.linalg import cython_blas

# a rise of F_j smaller than this (relative) is rounding, not a step: it ends the ascent
_TOL = 1e-12
# |preactivation| below this (relative to the largest) is on its kink
_ON_KINK = 1e-9
_MAX_STEPS = 200
# NumPy's lstsq(rcond=None) cut-off is eps * max(shape); Numba's default (-1) is eps alone
_EPS = float(np.finfo(np.float64).eps)


def _capsule_address(capsule):
    get_name = ctypes.pythonapi.PyCapsule_GetName
    get_name.restype, get_name.argtypes = ctypes.c_char_p, [ctypes.py_object]
    get_pointer = ctypes.pythonapi.PyCapsule_GetPointer
    get_pointer.restype, get_pointer.argtypes = ctypes.c_void_p, [ctypes.py_object, ctypes.c_char_p]
    return get_pointer(capsule, get_name(capsule))


# Numba has no syrk; an external symbol (not a function pointer) keeps the kernels cacheable: it is
# resolved by name when the cached code is loaded
binding.add_symbol("symtransfer_dsyrk", _capsule_address(cython_blas.__pyx_capi__["dsyrk"]))
_dsyrk = nb.types.ExternalFunction("symtransfer_dsyrk", nb.types.void(*([nb.types.voidptr] * 10)))


@nb.njit(cache=True)
def _gram(Ls):
    """``Ls Ls^T`` as NumPy's ``Ls @ Ls.T`` forms it (``syrk``; ``ddot`` for one row)."""
    n, r = Ls.shape
    if n == 1:
        G = np.empty((1, 1))
        G[0, 0] = np.dot(Ls[0], Ls[0])
        return G
    G = np.zeros((n, n))
    # row-major Ls is column-major Ls^T: the upper triangle of Ls Ls^T is column-major "L", "T"
    ch = np.array([ord("L"), ord("T")], dtype=np.uint8)
    dims = np.array([n, r], dtype=np.int32)
    ab = np.array([1.0, 0.0])
    _dsyrk(ch[0:].ctypes, ch[1:].ctypes, dims[0:].ctypes, dims[1:].ctypes, ab[0:].ctypes, Ls.ctypes,
           dims[1:].ctypes, ab[1:].ctypes, G.ctypes, dims[0:].ctypes)
    for i in range(n):
        for m in range(i + 1, n):
            G[m, i] = G[i, m]
    return G


@nb.njit(cache=True)
def _rows_dot(Ls, u):
    """``Ls @ u`` as NumPy forms it (``gemv``; ``ddot`` for one row)."""
    if Ls.shape[0] == 1:
        out = np.empty(1)
        out[0] = np.dot(Ls[0], u)
        return out
    return np.dot(Ls, u)


@nb.njit(cache=True)
def _slope(pre, ap, am):
    """``phi_inf'``: ``ap`` where ``pre > 0``, else ``am``."""
    d = np.empty(pre.shape[0])
    for i in range(pre.shape[0]):
        d[i] = ap if pre[i] > 0.0 else am
    return d


@nb.njit(cache=True)
def line_max(v, q0, q1, ee, ze, zz, T, ap, am, s2c, c2):
    """``argmax_{0 <= t <= T} F_j(z + t e)`` and its value, exactly (``T`` may be ``inf``), from
    ``q0 = h0 + L2 z``, ``q1 = L2 e``, ``ee = e . e``, ``ze = z . e``, ``zz = z . z``: along the line
    ``F_j`` is a quadratic between the kinks ``t = -q0_i / q1_i``.

    Returns ``(ok, t, F)``; ``ok`` is False when ``T = inf`` and ``F_j`` grows without bound along the
    ray (``tau_e >= 1 - 1e-12``: its pole ~ ``1 / (1 - tau_e)`` is out of reach).
    """
    P = q0.shape[0]
    inf = math.isinf(T)
    tb = np.empty(P)
    ib = np.empty(P, dtype=np.int64)
    pos = np.empty(P, dtype=np.bool_)
    vd = np.empty(P)
    n = 0
    for i in range(P):
        # side of each kink just after t = 0 (on the kink: the side the line goes to)
        pos[i] = q0[i] > 0.0 if q0[i] != 0.0 else q1[i] > 0.0
        vd[i] = v[i] * (ap if pos[i] else am)
        if q1[i] != 0.0:
            t = -q0[i] / q1[i]
            if t > 0.0 and t < T:
                tb[n] = t
                ib[n] = i
                n += 1
    al0 = np.dot(vd, q0)
    be0 = np.dot(vd, q1)
    order = np.argsort(tb[:n], kind="mergesort")
    # segment s runs from lo[s] to hi[s]; F_j = A2 t^2 + A1 t + A0 on it
    lo = np.empty(n + 1)
    hi = np.empty(n + 1)
    A2 = np.empty(n + 1)
    A1 = np.empty(n + 1)
    A0 = np.empty(n + 1)
    cs0 = 0.0
    cs1 = 0.0
    lo[0] = 0.0
    for s in range(n + 1):
        if s > 0:
            i = ib[order[s - 1]]
            flip = ((am - ap) if pos[i] else (ap - am)) * v[i]
            cs0 += flip * q0[i]
            cs1 += flip * q1[i]
            lo[s] = tb[order[s - 1]]
        hi[s] = tb[order[s]] if s < n else T
        al = al0 + cs0
        be = be0 + cs1
        A2[s] = c2 * be * be - ee / (2.0 * s2c)
        A1[s] = 2.0 * c2 * al * be - ze / s2c
        A0[s] = c2 * al * al - zz / (2.0 * s2c)
    if inf and A2[n] >= -1e-12 * ee / (2.0 * s2c):
        return False, 0.0, 0.0
    # candidates in the reference's order (segment starts, interior maxima, segment ends) so that a
    # tie goes to the same one
    n_hi = n if inf else n + 1
    best_t = 0.0
    best = 0.0
    first = True
    for pas in range(3):
        for s in range(n + 1 if pas < 2 else n_hi):
            if pas == 0:
                t = lo[s]
            elif pas == 1:
                t = -A1[s] / (2.0 * A2[s]) if A2[s] < 0.0 else lo[s]
                t = min(max(t, lo[s]), hi[s])
            else:
                t = hi[s]
            val = (A2[s] * t + A1[s]) * t + A0[s]
            # np.argmax: the first maximum, or the first NaN
            if first or val > best or (val != val and best == best):
                best_t, best, first = t, val, False
    return True, best_t, best


@nb.njit(cache=True)
def _line_from(v, h0, L2, z, e, T, ap, am, s2c, c2):
    """:func:`line_max` of ``F_j`` from ``z`` along ``e``."""
    return line_max(v, h0 + np.dot(L2, z), np.dot(L2, e), np.dot(e, e), np.dot(z, e), np.dot(z, z), T,
                    ap, am, s2c, c2)


@nb.njit(cache=True)
def _pin_ridges(v, pre, pinned, ap, am, p):
    """Pin the kinks that ``pre`` sits on where they are ridges (concave: ``v_i (ap - am) p < 0``,
    ``p = v . a``); the number of pins after."""
    mx = 1.0
    for i in range(pre.shape[0]):
        mx = max(mx, abs(pre[i]))
    n = 0
    for i in range(pre.shape[0]):
        if not pinned[i] and abs(pre[i]) <= _ON_KINK * mx and v[i] * (ap - am) * p < 0.0:
            pinned[i] = True
        n += pinned[i]
    return n


@nb.njit(cache=True)
def ascend(v, h0, L2, z0, ap, am, s2c, c2, k, z, a, pinned, ray):
    """Monotone ascent of ``F_j`` (docs/adaptive.md, eq. (A.7)) from ``z0``.

    Each step goes towards the maximiser of the quadratic that ``F_j`` is on the current cell of sign
    patterns (on the kink hyperplanes pinned so far: a Lagrange system), by an exact line search, so
    ``F_j`` never decreases. A step blocked by a concave kink (a ridge) pins it; a pinned kink is
    released when leaving it increases ``F_j``.

    Writes the maximiser ``z`` (``r``), its features ``a = phi_inf(h0 + L2 z)`` (``P``) and the kinks
    it sits on ``pinned`` (``P``); returns ``(status, F*)``: status 0, or 1 when ``F_j`` is unbounded
    along the unit ray written to ``ray``, or 2 when it rose without bound but no such ray was found.
    ``k = 2 c2 s2c``.
    """
    P, r = L2.shape
    zc = z0.copy()
    for i in range(P):
        pinned[i] = False
    pre = h0 + np.dot(L2, zc)
    val = -np.dot(zc, zc) / (2.0 * s2c) + c2 * np.dot(v, pre * _slope(pre, ap, am)) ** 2
    n_pin = 0
    for _ in range(_MAX_STEPS):
        pre = h0 + np.dot(L2, zc)
        d = _slope(pre, ap, am)
        dv = d * v
        for i in range(P):
            if pinned[i]:
                dv[i] = 0.0
        u = np.dot(L2.T, dv)
        beta = np.dot(dv, h0)
        w = u
        if n_pin > 0:
            Ls = np.empty((n_pin, r))
            idx = np.empty(n_pin, dtype=np.int64)
            m = 0
            for i in range(P):
                if pinned[i]:
                    Ls[m] = L2[i]
                    idx[m] = i
                    m += 1
            Lu = _rows_dot(Ls, u)
            # projection of u off the pinned kinks' normals (their Gram matrix may be singular)
            w = u - np.dot(Ls.T, np.linalg.lstsq(_gram(Ls), Lu, _EPS * n_pin)[0])
        p = np.dot(v, pre * d)
        if 1.0 - k * np.dot(w, w) <= 0.0:
            # the cell's quadratic is unbounded along w: go out along it as far as F_j rises
            e = (1.0 if p >= 0.0 else -1.0) * w
            ok, t, new = _line_from(v, h0, L2, zc, e, np.inf, ap, am, s2c, c2)
            if not ok:
                ray[:] = e / max(math.sqrt(np.dot(e, e)), 1e-300)
                return 1, val
            target_reached = False
        else:
            if n_pin > 0:
                M = np.empty((n_pin + 1, n_pin + 1))
                rhs = np.empty(n_pin + 1)
                M[0, 0] = 1.0 - k * np.dot(u, u)
                M[0, 1:] = -s2c * Lu
                M[1:, 0] = k * Lu
                M[1:, 1:] = (s2c * Ls) @ Ls.T
                rhs[0] = beta
                for m in range(n_pin):
                    rhs[m + 1] = -h0[idx[m]]
                x = np.linalg.lstsq(M, rhs, _EPS * (n_pin + 1))[0]
                target = k * x[0] * u + (s2c * Ls.T) @ x[1:]
            else:
                target = (k * beta / (1.0 - k * np.dot(u, u))) * u
            e = target - zc
            ok, t, new = _line_from(v, h0, L2, zc, e, 1.0, ap, am, s2c, c2)
            target_reached = t >= 1.0 - 1e-12
        if new > val + _TOL * max(abs(val), 1.0):
            zc = zc + t * e
            val = new
            zz = np.dot(zc, zc)
            if zz > 1e16 * s2c:
                # rising without bound through changing cells: F_j is unbounded for all purposes
                ez = zc / math.sqrt(zz)
                Le = np.dot(L2, ez)
                if k * np.dot(v, Le * _slope(Le, ap, am)) ** 2 >= 1.0 - 1e-6:
                    ray[:] = ez
                    return 1, val
                return 2, val
            if not target_reached:
                # stopped at a kink: pin it if it is a ridge
                pre = h0 + np.dot(L2, zc)
                n_pin = _pin_ridges(v, pre, pinned, ap, am, np.dot(v, pre * _slope(pre, ap, am)))
            continue
        # no rise towards the cell's maximiser: z is its maximiser, or a ridge blocks at once
        pre = h0 + np.dot(L2, zc)
        n_new = _pin_ridges(v, pre, pinned, ap, am, p)
        if n_new > n_pin:
            n_pin = n_new
            continue
        if n_pin > 0:
            # release the pins one at a time if a step off the ridge (either side) rises
            released = False
            T = 1e-3 * max(math.sqrt(np.dot(zc, zc)), 1.0)
            for i in range(P):
                if not pinned[i]:
                    continue
                for sg in (1.0, -1.0):
                    e = sg * L2[i]
                    ok, t, new = _line_from(v, h0, L2, zc, e, T, ap, am, s2c, c2)
                    if ok and new > val + _TOL * max(abs(val), 1.0):
                        zc = zc + t * sg * L2[i]
                        val = new
                        pinned[i] = False
                        n_pin -= 1
                        released = True
                        break
                if released:
                    break
            if released:
                continue
        break
    pre = h0 + np.dot(L2, zc)
    z[:] = zc
    a[:] = pre * _slope(pre, ap, am)
    return 0, val


@nb.njit(cache=True)
def _distinct(A, keep, s):
    """Whether the features ``A[s]`` differ from those of every kept maximum before it (by 1e-3
    relative): maxima with the same ``a`` (a flat ridge of ``F_j``) are one branch of the potential."""
    for q in range(s):
        if keep[q]:
            dif = A[s] - A[q]
            if not math.sqrt(np.dot(dif, dif)) > 1e-3 * max(math.sqrt(np.dot(A[q], A[q])), 1e-12):
                return False
    return True


@nb.njit(cache=True)
def ascend_all(v, H0, L2, Z0, n0, E, ap, am, s2c, c2, k, F, A, Z, pinned, keep, n_start, status, ray):
    """All ascents of one :meth:`_SourceCondensate.solve` (docs/adaptive.md, eq. (A.7)).

    Direction ``j`` (preactivations ``H0[j]`` of ``m u_j``) starts from its ``n0[j]`` given starts
    ``Z0[j, :n0[j]]`` and then from the exact maxima along the rays ``E`` (those with ``t > 0``, written
    to ``Z0``). Written per direction: ``F``, ``A``, ``Z``, ``pinned`` of each start's maximum,
    ``keep`` (a distinct branch), ``n_start``, and ``status`` (zeros on entry) 1 when ``F_j`` is
    unbounded along ``ray[j]``, 2 when it is unbounded without a ray. The search stops at the first
    unbounded direction, as the solve does. One direction after another: a ``prange`` over them was
    slower on the two shared cores (one busy) than one thread.
    """
    J = H0.shape[0]
    r = L2.shape[1]
    for j in range(J):
        h0 = H0[j]
        zero = np.zeros(r)
        S = n0[j]
        for c in range(E.shape[0]):
            ok, t, _ = _line_from(v, h0, L2, zero, E[c], np.inf, ap, am, s2c, c2)
            if not ok:
                status[j] = 1
                ray[j] = E[c]
                break
            if t > 0.0:
                Z0[j, S] = t * E[c]
                S += 1
        n_start[j] = S
        for s in range(S if status[j] == 0 else 0):
            st, val = ascend(v, h0, L2, Z0[j, s], ap, am, s2c, c2, k, Z[j, s], A[j, s], pinned[j, s], ray[j])
            F[j, s] = val
            if st != 0:
                status[j] = st
                break
            keep[j, s] = _distinct(A[j], keep[j], s)
        if status[j] != 0:
            return
