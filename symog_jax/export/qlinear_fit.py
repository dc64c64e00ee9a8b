"""``QLinearConv`` parameters that reproduce the integer program's requantization exactly.

onnxruntime's ``QLinearConv`` (the fast integer kernel, issue 30) ends every output channel
with a *float* requantization::

    out = clip(rint(float32(acc * c + beta) * s), lo, hi)

(``acc`` the int32 accumulator of the weight codes, here scaled by an integer ``c`` per channel;
``beta`` the int32 bias; ``s`` the float32 scale; ``rint`` rounds half to even). The integer
program requantizes with integers, ``clip(round_half_even((acc * m + b) / 2**k), lo, hi)``
(:func:`~symog_jax.export.integer_inference.requantize`). Rounding ``b / m`` to the int32 bias
moves every rounding boundary a little, and a code flips wherever an accumulator lies closer to
a boundary than that: with batch norm folded in, a few codes in 10,000 per layer, enough to
change 0.9-6 % of the classes of a VGG7 (issue 30's measurement).

Why an exact fit usually exists. Both maps are non-decreasing step functions of the integer
``acc`` (for ``m > 0``; a negative ``m`` is handled by negating the channel's weights). They are
equal on the reachable range ``[acc_lo, acc_hi]`` (from the weights and the input codes' range)
iff they switch at the same integers: for each output level ``n`` whose switch point ``a_n``
(the least ``acc`` with ``out >= n + 1``) lies inside the range, the kernel gives ``>= n + 1``
at ``a_n`` and ``<= n`` at ``a_n - 1``, plus one condition at each end of the range. Tie-free,
these are linear in ``(beta, u = 1/s)``: a convex polygon containing the exact real solution
``(c b / m, c / M)``, whose strips are ``c`` wide in ``beta``; the weights times ``c`` (up to
7 bits) make it likely to hold an integer ``beta``. Per ``c`` (the largest power of two first,
then every ``c`` from the largest down to half of it) two candidates are tried: the program's
own offset and multiplier rounded (where the float product is exact its ties round half to even
like the program's -- power-of-two multipliers -- which no strict inequality expresses), and the
middle of the polygon's ``u`` interval at the best integer ``beta``. A candidate is accepted only
after *verification*: the kernel's float32 arithmetic emulated at every switch point and both
ends; the emulated map is non-decreasing too, so agreement there is agreement on the whole
reachable range (a proof, not a sample). Measured: every channel of trained 2-bit-weight
networks with batch norm fits, with 4-bit and with 8-bit outputs (255 switch points); 8-bit
weights leave ``c = 1`` and most of their channels do not. A channel without an exact fit gets
the fit meeting the most switch points from the lowest code up (``exact_below``), or the nearest
bias; the ONNX export names such channels.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from symog_jax.export import integer_inference as ii

__all__ = ["QLinearFit", "fit_qlinear", "emulate_qlinear"]

#: |weight code * c| stays <= 63: 7-bit weights keep onnxruntime's u8s8 kernels free of int16
#: saturation on AVX2 machines without VNNI.
WEIGHT_LIMIT = 63
_INT32 = 2 ** 31


@dataclasses.dataclass(frozen=True)
class QLinearFit:
    """Per output channel: ``w`` the scaled int weight codes (last axis = channel, the layer's
    layout), ``scale`` float32 ``s``, ``bias`` int64 ``beta``, ``exact`` bool (verified equal
    to the program on the whole reachable range), ``exact_below`` int64 (where not exact: the
    output code below which every accumulator is still verified equal); ``peak_accumulator``:
    the largest ``|acc * c + beta|`` any input can give."""
    w: np.ndarray
    scale: np.ndarray
    bias: np.ndarray
    exact: np.ndarray
    exact_below: np.ndarray
    peak_accumulator: int

    @property
    def int32_ok(self) -> bool:
        """Whether every accumulator plus bias fits int32 (else the layer cannot be a
        ``QLinearConv``)."""
        return self.peak_accumulator < _INT32


def emulate_qlinear(acc, c, bias, scale, lo: int, hi: int) -> np.ndarray:
    """What ``QLinearConv`` computes from int accumulators ``acc`` (``(..., C)``): ``clip(rint(
    float32(acc * c + bias) * float32 scale), lo, hi)``, in numpy's IEEE float32.

    Example::

      >>> emulate_qlinear(np.array([[0, 1, 2, 3]]).T, 1, 0, np.float32(0.5), 0, 15).ravel()
      array([0, 0, 1, 2])
    """
    v = (np.asarray(acc, np.int64) * c + bias).astype(np.float32) * np.float32(scale)
    return np.clip(np.rint(v), lo, hi).astype(np.int64)


def _acc_range(w: np.ndarray, in_lo: int, in_hi: int) -> tuple[np.ndarray, np.ndarray]:
    """Per channel, the least and largest accumulator over inputs in ``[in_lo, in_hi]`` (and 0,
    the padding value)."""
    w = w.reshape(-1, w.shape[-1]).astype(np.int64)
    lo, hi = min(in_lo, 0), max(in_hi, 0)
    return (np.minimum(w * lo, w * hi).sum(0), np.maximum(w * lo, w * hi).sum(0))


def _switch_points(m, k, b, lo, hi, acc_lo, acc_hi) -> np.ndarray:
    """``a[n, ch]``: least ``acc`` in ``[acc_lo, acc_hi + 1]`` with ``out >= lo + n + 1`` (``m >
    0``); ``acc_hi + 1`` where none is in range. Exact: a float estimate, then the program's
    own integer requantization decides between neighbours."""
    levels = np.arange(lo, hi, dtype=np.float64)[:, None]            # n
    M, B = m * 2.0 ** -k.astype(np.float64), b * 2.0 ** -k.astype(np.float64)
    est = np.clip(np.ceil((levels + 0.5 - B) / M), acc_lo - 4.0, acc_hi + 4.0)
    a = np.clip(est.astype(np.int64) - 3, acc_lo, acc_hi + 1)
    for _ in range(7):                      # advance while out(a) <= n (at most a few steps)
        inside = a <= acc_hi
        out = ii.requantize(np.where(inside, a, acc_hi), m, k, b, lo, hi)
        a = np.where(inside & (out <= levels.astype(np.int64)), a + 1, a)
    inside = a <= acc_hi
    below = ii.requantize(np.clip(a - 1, acc_lo, acc_hi), m, k, b, lo, hi)
    at = ii.requantize(np.where(inside, a, acc_hi), m, k, b, lo, hi)
    n = levels.astype(np.int64)
    ok = ((a == acc_lo) | (below <= n)) & (~inside | (at >= n + 1))
    if not np.all(ok):
        raise AssertionError("qlinear_fit: switch point search did not converge")
    return a


class _Channel:
    """One output channel's switch points and the search for ``(beta, s)`` at a given ``c``.

    The constraints are ordered from the lowest output level up: ``n_points`` = the number of
    switch points inside the reachable range, and a fit that satisfies the first ``P`` of them
    (both sides) and the lower side of the next gives the program's code for every
    accumulator below that next switch point (:meth:`exact_below`).
    """

    def __init__(self, m, k, b, lo, hi, acc_lo, acc_hi, a, levels, out_at_lo, out_at_hi):
        self.mkb = (np.array([m]), np.array([k]), np.array([b]))
        self.lo, self.hi, self.acc_lo, self.acc_hi = lo, hi, int(acc_lo), int(acc_hi)
        inside = (a > acc_lo) & (a <= acc_hi)
        self.a, self.n = a[inside], levels[inside]
        self.n_points = len(self.a)
        self.low_end = (acc_lo, out_at_lo - 0.5) if out_at_lo > lo else None
        self.high_end = (acc_hi, out_at_hi + 0.5) if out_at_hi < hi else None

    def exact_below(self, points: int) -> int:
        """Every accumulator whose program code is below this is reproduced (``hi + 1``: all).

        The first ``points`` switch points and the lower side of the next (level ``n``) hold,
        so every accumulator below that next switch point, i.e. with code ``<= n``, is right.
        """
        return self.hi + 1 if points >= self.n_points else int(self.n[points]) + 1

    def _rows(self, points: int):
        """Constraint rows ``(acc, t, sign)``: ``sign * ((acc c + beta) / u - t) > 0``."""
        a, t = self.a[:points], self.n[:points] + 0.5
        rows = [np.stack([a, t, np.ones(points)], 1), np.stack([a - 1, t, -np.ones(points)], 1)]
        if points < self.n_points:          # the next switch point's lower side
            rows.append(np.array([[self.a[points] - 1, self.n[points] + 0.5, -1.0]]))
        elif self.high_end is not None:
            rows.append(np.array([[self.high_end[0], self.high_end[1], -1.0]]))
        if self.low_end is not None:
            rows.append(np.array([[self.low_end[0], self.low_end[1], 1.0]]))
        return np.concatenate(rows).astype(np.float64)

    def _solve(self, rows, c, beta_star, u_star):
        """Best integer ``beta`` near ``beta_star`` and a ``u`` inside its interval, or None."""
        val = rows[None, :, 0] * c + np.arange(np.floor(beta_star) - c - 2,
                                               np.ceil(beta_star) + c + 3)[:, None]
        t, sgn = rows[None, :, 1], rows[None, :, 2]
        # u > 0; a row bounds u from above where sign * t > 0, from below where sign * t < 0
        bound = val / np.where(t != 0, t, 1.0)
        hi_u = np.where(sgn * t > 0, bound, np.inf).min(1)
        lo_u = np.maximum(np.where(sgn * t < 0, bound, 0.0).max(1), 0.0)
        ok = np.all(np.where(t == 0, sgn * val > 0, True), 1)
        mid = np.where(np.isfinite(hi_u), (hi_u + lo_u) / 2, u_star)
        rel = np.where(np.isfinite(hi_u), hi_u - lo_u, np.inf) / np.maximum(mid, 1e-300)
        good = ok & (rel > 0)
        if not np.any(good):
            return None
        i = int(np.argmax(np.where(good, rel, -1.0)))
        lo, hi = lo_u[i], hi_u[i]
        u = float(np.clip(u_star, lo + 0.25 * (hi - lo), hi - 0.25 * (hi - lo))) \
            if np.isfinite(hi) else max(u_star, 2 * lo)
        return int(np.floor(beta_star) - c - 2 + i), np.float32(1.0 / u)

    def _verified(self, rows, c, beta, s) -> bool:
        """The float32 emulation agrees with the program at every constrained point (and the
        int32 accumulator cannot overflow)."""
        if max(abs(self.acc_lo), abs(self.acc_hi)) * c + abs(beta) >= _INT32:
            return False
        pts = rows[:, 0].astype(np.int64)
        want = ii.requantize(pts[:, None], *self.mkb, self.lo, self.hi)[:, 0]
        got = emulate_qlinear(pts, c, beta, s, self.lo, self.hi)
        return bool(np.array_equal(got, want))

    def _try(self, points, c, beta_star, u_star):
        """A verified ``(beta, s)`` for the first ``points`` switch points, or None. Two
        candidates: the program's own offset and multiplier rounded (exact where ``M / c`` and
        ``c B / M`` are representable: the float product is then exact and its ties round
        half to even like the program's, which no strict inequality can express), and the best
        point of the constraint polygon (no ties)."""
        rows = self._rows(points)
        natural = (int(np.rint(beta_star)), np.float32(1.0 / u_star))
        if self._verified(rows, c, *natural):
            return natural
        fit = self._solve(rows, c, beta_star, u_star)
        return fit if fit is not None and self._verified(rows, c, *fit) else None

    def fit(self, c, beta_star, u_star, at_least: int = 0, full_only: bool = False):
        """``(points, beta, s)`` meeting all switch points at multiplier ``c``; else (unless
        ``full_only``) the most of them, more than ``at_least``, by bisection (feasibility
        shrinks as points are added); None if neither."""
        full = self._try(self.n_points, c, beta_star, u_star)
        if full is not None:
            return (self.n_points,) + full
        if full_only or self._try(at_least + 1, c, beta_star, u_star) is None:
            return None
        lo, hi, best = at_least + 1, self.n_points - 1, None
        while lo <= hi:
            mid = (lo + hi) // 2
            found = self._try(mid, c, beta_star, u_star)
            if found is not None:
                best, lo = (mid,) + found, mid + 1
            else:
                hi = mid - 1
        return best


def fit_qlinear(L: ii.IntLayer) -> QLinearFit:
    """Per-channel ``(c, beta, s)`` for layer ``L`` (see the module docstring).

    Args:
      L: a conv (``w`` HWIO) or dense (``w`` IO) layer of the integer program whose output
        codes fit 8 bits.

    Returns:
      :class:`QLinearFit`: ``w`` int64 like ``L.w`` (each channel negated where ``m < 0``,
      times its ``c``), float32 ``scale``, int64 ``bias``, bool ``exact``. Where ``m == 0``
      the channel's weights are 0 and ``bias`` is its constant code (``scale`` 1).

    Example (``out = round(acc * 0.75 + 0.2)`` on 4-bit codes; the fit is exact)::

      >>> L = ii.IntLayer("fc", "dense", np.array([[1, -1]]).T, 1, "VALID", 0, 0, 15,
      ...                 np.array([3 * 2**28]), np.array([30]), np.array([2**29 // 5 * 2]),
      ...                 0, 0, 15, 15, "int32")
      >>> bool(fit_qlinear(L).exact.all())
      True
    """
    cout = L.w.shape[-1]
    m, k, b = (np.asarray(v, np.int64) for v in (L.m, L.k, L.b))
    flip = np.where(m < 0, -1, 1)
    w = L.w.astype(np.int64) * flip
    m = m * flip
    acc_lo, acc_hi = _acc_range(w, L.in_lo, L.in_hi)
    w_max = np.abs(w.reshape(-1, cout)).max(0)
    live = m > 0
    mm = np.where(live, m, 1)
    a = _switch_points(mm, k, b, L.out_lo, L.out_hi, acc_lo, acc_hi)
    out_lo = ii.requantize(acc_lo, mm, k, b, L.out_lo, L.out_hi)
    out_hi = ii.requantize(acc_hi, mm, k, b, L.out_lo, L.out_hi)
    M = mm * 2.0 ** -k.astype(np.float64)
    scale, bias = np.ones(cout, np.float32), np.zeros(cout, np.int64)
    mult, exact = np.ones(cout, np.int64), np.zeros(cout, bool)
    levels = np.arange(L.out_lo, L.out_hi, dtype=np.int64)
    exact_below = np.full(cout, L.out_hi + 1, np.int64)
    for ch in range(cout):
        if not live[ch]:
            const = int(ii.requantize(np.zeros(1, np.int64), np.ones(1, np.int64), k[ch:ch + 1],
                                      b[ch:ch + 1], L.out_lo, L.out_hi)[0])
            mult[ch], bias[ch], exact[ch] = 0, const, True
            continue
        prog = _Channel(mm[ch], k[ch], b[ch], L.out_lo, L.out_hi, acc_lo[ch], acc_hi[ch],
                        a[:, ch], levels, out_lo[ch], out_hi[ch])
        c_max = max(WEIGHT_LIMIT // max(int(w_max[ch]), 1), 1)
        best = None
        pow2 = [1 << e for e in range(c_max.bit_length() - 1, -1, -1)]
        for c in pow2[:1] + [c for c in range(c_max, max(c_max // 2, 1) - 1, -1)
                             if c != pow2[0]]:      # an exact fit, any c
            found = prog.fit(c, c * b[ch] / m[ch], c / M[ch], full_only=True)
            if found is not None:
                best = (found[0], c) + found[1:]
                break
        for c in range(c_max, max(c_max - 8, 0), -1) if best is None else ():
            found = prog.fit(c, c * b[ch] / m[ch], c / M[ch], at_least=best[0] if best else 0)
            if found is not None:           # else: the most switch points met, c near c_max
                best = (found[0], c) + found[1:]
        if best is None:        # nearest bias at the largest c: nothing verified
            mult[ch], bias[ch] = c_max, int(np.rint(c_max * b[ch] / m[ch]))
            scale[ch], exact_below[ch] = np.float32(M[ch] / c_max), L.out_lo
            continue
        points, mult[ch], bias[ch], scale[ch] = best
        exact[ch] = points == prog.n_points
        exact_below[ch] = prog.exact_below(points)
    wc = w * mult
    peak = int((np.abs(wc.reshape(-1, cout)).sum(0) * max(abs(L.in_lo), abs(L.in_hi))
                + np.abs(bias)).max(initial=0))
    return QLinearFit(w=wc, scale=scale, bias=bias, exact=exact, exact_below=exact_below,
                      peak_accumulator=peak)
