"""Per-layer bit-widths from an SQNR model (Lin, Talathi & Annapureddy, 2016, Sec. 4).

Every quantized tensor ``i`` (a layer's weights, or its input activations) has a cost ``c_i``
per bit (its parameter count for model size, or its multiply-accumulates) and an SQNR
``SQNR_i(b)`` in dB at ``b`` bits (:class:`SQNRModel`: ``a_i + s_i b``, by default with
``s_i = 20 log10 2 = 6.02`` dB per bit, or a measured table). The output SQNR follows the additive
noise model (:func:`~symog_jax.quantizers.sqnr.predicted_output_sqnr_db`)::

    n_i(b) = 10**(-SQNR_i(b) / 10),      SQNR_out = -10 log10(sum_i n_i(b_i))

Two problems over integer bits ``min_bits <= b_i <= max_bits``:

* **(a) target**: minimise the size ``sum_i c_i b_i`` subject to ``SQNR_out >= T``;
* **(b) budget**: maximise ``SQNR_out`` subject to ``sum_i c_i b_i <= B``.

**Relaxed optimum** (:func:`relaxed_allocation`). With continuous ``b`` both problems are convex
(``n_i`` is convex and decreasing in ``b``, the cost linear). The Lagrangian of (a),
``sum_i c_i b_i + mu (sum_i n_i(b_i) - 10**(-T/10))``, is stationary where
``c_i = mu (s_i ln 10 / 10) n_i(b_i)``, i.e. every layer's noise is proportional to its cost over
its slope: ``n_i = theta c_i / s_i``. The same holds for (b) (stationarity of
``sum_i n_i + nu (sum_i c_i b_i - B)``). Writing ``W = -10 log10 theta`` (a common "water level"
in dB)::

    SQNR_i = W - 10 log10(c_i / s_i),        b_i(W) = (W - 10 log10(c_i / s_i) - a_i) / s_i

so with equal slopes ``b_i - b_j = (10 log10(c_j / c_i) + a_j - a_i) / s``: a layer with four
times the parameters gets one bit fewer (the paper's result, with ``s = 6.02``). ``W`` makes the
constraint tight: for (a) ``sum_i n_i = 10**(-T/10)`` gives ``W = T + 10 log10(sum_j c_j / s_j)``
(with equal slopes, each layer must beat the target by ``10 log10(C / c_i)``, ``C = sum c``); for
(b) ``sum_i c_i b_i = B`` gives
``W = (B + sum_i c_i (10 log10(c_i / s_i) + a_i) / s_i) / sum_i (c_i / s_i)``.
With the box ``[min_bits, max_bits]`` the KKT conditions give ``b_i = clip(b_i(W))`` with the
same ``W``; the constraint is then monotone in ``W`` and is solved by bisection (the closed form
above when no bound is active).

**Integers** (:func:`allocate_bits`). ``method="greedy"`` is the paper's route: round the relaxed
optimum to the nearest integers, *repair* (a: add the bit with the largest noise reduction per
unit cost until the target holds; b: remove the bit with the smallest noise increase per unit
cost until the budget holds), then *improve* while the constraint holds (a: apply the move that
saves the most cost; b: the move that removes the most noise; moves are one bit up or down, or
one bit moved from one layer to another) until no move helps. This is a local optimum, not
always the global one (the integer problem is a multiple-choice knapsack).
``method="exact"`` (default) finds the global optimum: dynamic programming over the layers that
keeps only Pareto-optimal partial ``(cost, noise)`` pairs, prunes those that cannot be
completed feasibly or cannot beat the greedy solution, and falls back to the greedy result (with
``method="greedy"`` recorded and a warning) if more than :data:`MAX_PARETO_STATES` pairs would
be needed. Ties: (a) the smallest cost, then the largest SQNR; (b) the largest SQNR, then the
smallest cost. Feasibility is checked with a relative tolerance :data:`FEASIBILITY_RTOL` on the
noise (a) or the budget (b).

:func:`equal_bit_allocation` is the baseline: one bit-width for every layer (the smallest that
meets the target, or the largest within the budget). :func:`bits_policy` turns an allocation into
the ``bits`` callable of :class:`~symog_jax.quantizers.policy.FormatPolicy`.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import warnings
from typing import Any, Callable, Mapping, Sequence

import flax.linen as nn
import jax
import numpy as np

from symog_jax.numerics.formats import MAX_BITS
from symog_jax.numerics.optimal_step import DB_PER_BIT
from symog_jax.quantizers.masks import path_str, resolve_mask
from symog_jax.quantizers.sqnr import predicted_output_sqnr_db

__all__ = [
    "FEASIBILITY_RTOL",
    "MAX_PARETO_STATES",
    "Allocation",
    "SQNRModel",
    "allocate_bits",
    "bits_policy",
    "equal_bit_allocation",
    "layer_costs",
    "layer_macs",
    "relaxed_allocation",
]

#: Relative tolerance of the constraints: noise ``<= N_T (1 + rtol)`` for a target (about
#: ``4e-9`` dB), size ``<= B (1 + rtol)`` for a budget.
FEASIBILITY_RTOL = 1e-9
#: Largest Pareto front the exact search keeps before it falls back to the greedy result.
MAX_PARETO_STATES = 200_000

_LN10_OVER_10 = math.log(10.0) / 10.0


# -- the SQNR model ----------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True, eq=False)
class SQNRModel:
    """Per-layer SQNR in dB as a function of the bit-width.

    Build it with :meth:`linear` (``SQNR_i(b) = a_i + s_i b``) or :meth:`from_table` (measured
    values, e.g. rows of :func:`~symog_jax.quantizers.sqnr.measured_sqnr_db`).

    Attributes:
      intercepts_db: ``a_i`` (linear model), else ``None``.
      slopes_db: ``s_i`` (linear model), else ``None``.
      table_db: float64 ``(L, K)`` table, ``table_db[i, j]`` the SQNR of layer ``i`` at
        ``table_min_bits + j`` bits (table model), else ``None``.
      table_min_bits: the bit-width of the table's first column.

    Example:
      >>> m = SQNRModel.linear([-1.0, 2.0])        # 6.02 dB per bit
      >>> np.round(m.sqnr_db([4, 5]), 2)
      array([23.08, 32.1 ])
      >>> SQNRModel.from_table([[10.0, 16.0], [12.0, 18.5]], min_bits=3).sqnr_db([4, 3]).tolist()
      [16.0, 12.0]
    """

    intercepts_db: tuple[float, ...] | None = None
    slopes_db: tuple[float, ...] | None = None
    table_db: np.ndarray | None = None
    table_min_bits: int = 1

    @classmethod
    def linear(cls, intercepts_db: Sequence[float],
               slope_db: float | Sequence[float] = DB_PER_BIT) -> "SQNRModel":
        """``SQNR_i(b) = intercepts_db[i] + slope_db[i] * b`` (``slope_db`` scalar or per layer).

        Raises:
          ValueError: no layers, non-finite values, a slope that is not positive, or lengths
            that differ.
        """
        a = np.asarray(intercepts_db, np.float64).ravel()
        if a.size == 0:
            raise ValueError("SQNRModel.linear: no layers (intercepts_db is empty)")
        s = np.broadcast_to(np.asarray(slope_db, np.float64), a.shape) if np.ndim(slope_db) == 0 \
            else np.asarray(slope_db, np.float64).ravel()
        if s.shape != a.shape:
            raise ValueError(f"SQNRModel.linear: {s.size} slopes for {a.size} layers")
        if not (np.all(np.isfinite(a)) and np.all(np.isfinite(s))):
            raise ValueError("SQNRModel.linear: intercepts and slopes must be finite")
        if np.any(s <= 0):
            raise ValueError(f"SQNRModel.linear: slopes must be positive (dB per bit), got "
                             f"{s.tolist()}")
        return cls(intercepts_db=tuple(a.tolist()), slopes_db=tuple(s.tolist()))

    @classmethod
    def from_table(cls, table_db: Any, min_bits: int) -> "SQNRModel":
        """Measured SQNRs: ``table_db[i][j]`` is layer ``i`` at ``min_bits + j`` bits (dB).

        Raises:
          ValueError: not a non-empty 2-D table, or NaN / ``-inf`` entries (``+inf``, a tensor
            quantized exactly, is allowed).
        """
        t = np.array(table_db, np.float64)
        if t.ndim != 2 or t.size == 0:
            raise ValueError(f"SQNRModel.from_table: need a non-empty (layers, bits) table, got "
                             f"shape {t.shape}")
        if np.any(np.isnan(t)) or np.any(t == -np.inf):
            raise ValueError("SQNRModel.from_table: the table holds NaN or -inf")
        min_bits = _check_int(min_bits, "min_bits")
        t.setflags(write=False)
        return cls(table_db=t, table_min_bits=min_bits)

    @property
    def num_layers(self) -> int:
        """Number of layers ``L``."""
        return len(self.intercepts_db) if self.table_db is None else self.table_db.shape[0]

    def table(self, min_bits: int, max_bits: int) -> np.ndarray:
        """SQNR in dB, float64 ``(L, max_bits - min_bits + 1)``, column ``j`` at ``min_bits + j``.

        Raises:
          ValueError: a table model does not cover ``min_bits..max_bits``.
        """
        bits = np.arange(min_bits, max_bits + 1, dtype=np.float64)
        if self.table_db is None:
            a, s = np.asarray(self.intercepts_db), np.asarray(self.slopes_db)
            return a[:, None] + s[:, None] * bits[None, :]
        lo, hi = self.table_min_bits, self.table_min_bits + self.table_db.shape[1] - 1
        if min_bits < lo or max_bits > hi:
            raise ValueError(f"the SQNR table covers bits {lo}..{hi}, but {min_bits}..{max_bits} "
                             "were asked for")
        return self.table_db[:, min_bits - lo:max_bits - lo + 1]

    def sqnr_db(self, bits: Sequence[int]) -> np.ndarray:
        """Per-layer SQNR in dB (float64 ``(L,)``) at the bit-widths ``bits`` (``L`` ints)."""
        b = np.asarray(bits)
        if b.shape != (self.num_layers,):
            raise ValueError(f"need {self.num_layers} bit-widths, got shape {b.shape}")
        if self.table_db is None:
            return np.asarray(self.intercepts_db) + np.asarray(self.slopes_db) * b
        j = b - self.table_min_bits
        if np.any(j < 0) or np.any(j >= self.table_db.shape[1]):
            top = self.table_min_bits + self.table_db.shape[1] - 1
            raise ValueError(f"bits {b.tolist()} are outside the table's "
                             f"{self.table_min_bits}..{top}")
        return self.table_db[np.arange(b.size), j]

    def line(self, min_bits: int, max_bits: int) -> tuple[np.ndarray, np.ndarray]:
        """``(a, s)``, float64 ``(L,)`` each: the model's line, or for a table the least-squares
        line through its entries in ``min_bits..max_bits`` (``+inf`` entries left out; a single
        column gets the slope :data:`~symog_jax.numerics.optimal_step.DB_PER_BIT`).

        Raises:
          ValueError: a fitted slope is not positive (the SQNR does not grow with the bits).
        """
        if self.table_db is None:
            return np.asarray(self.intercepts_db), np.asarray(self.slopes_db)
        t = self.table(min_bits, max_bits)
        bits = np.arange(min_bits, max_bits + 1, dtype=np.float64)
        a, s = np.empty(t.shape[0]), np.empty(t.shape[0])
        for i, row in enumerate(t):
            ok = np.isfinite(row)
            if ok.sum() >= 2:
                s[i], a[i] = np.polyfit(bits[ok], row[ok], 1)
            elif ok.any():
                s[i], a[i] = DB_PER_BIT, row[ok][0] - DB_PER_BIT * bits[ok][0]
            else:               # quantized exactly at every bit-width: practically noiseless
                s[i], a[i] = DB_PER_BIT, 300.0
        if np.any(s <= 0):
            i = int(np.argmax(s <= 0))
            raise ValueError(f"layer {i}: its measured SQNR does not grow with the bits (fitted "
                             f"slope {s[i]:.3g} dB/bit), so the relaxed allocation is undefined")
        return a, s


# -- results and checks ----------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Allocation:
    """Bit-widths per layer and what they give under the model.

    Attributes:
      bits: one int per layer.
      cost: ``sum_i c_i b_i`` (e.g. bits of weight memory when ``c`` are parameter counts).
      sqnr_db: predicted output SQNR in dB (additive noise model).
      layer_sqnr_db: per-layer SQNR in dB.
      method: ``"exact"``, ``"greedy"`` or ``"equal"``.
      relaxed_bits: the continuous optimum (``None`` for the equal baseline).
      names: layer names (``None`` if not given).
    """

    bits: tuple[int, ...]
    cost: float
    sqnr_db: float
    layer_sqnr_db: tuple[float, ...]
    method: str
    relaxed_bits: tuple[float, ...] | None = None
    names: tuple[str, ...] | None = None

    def as_dict(self) -> dict[str, int]:
        """``{name: bits}`` (for :func:`bits_policy`); needs ``names``."""
        if self.names is None:
            raise ValueError("this allocation has no layer names: pass names= to allocate_bits")
        return dict(zip(self.names, self.bits))


def _check_int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    return int(value)


def _check_problem(costs, model, min_bits, max_bits, names):
    if not isinstance(model, SQNRModel):
        raise TypeError(f"model must be an SQNRModel, got {type(model).__name__}")
    try:
        c = np.asarray(costs, np.float64).ravel()
    except (TypeError, ValueError):
        raise ValueError(f"costs must be a sequence of positive numbers, got {costs!r}") from None
    if c.size == 0:
        raise ValueError("costs is empty: there are no layers to allocate bits to")
    names = None if names is None else tuple(names)
    bad = np.flatnonzero(~(np.isfinite(c) & (c > 0)))
    if bad.size:
        i = int(bad[0])
        label = f" ({names[i]!r})" if names and i < len(names) else ""
        raise ValueError(f"costs[{i}]{label} must be a positive finite number, got {c[i]!r}")
    if model.num_layers != c.size:
        raise ValueError(f"the SQNR model has {model.num_layers} layers but costs has {c.size}")
    if names is not None:
        if len(names) != c.size or not all(isinstance(n, str) for n in names):
            raise ValueError(f"names must be {c.size} strings, one per cost, got {names!r}")
        if len(set(names)) != len(names):
            raise ValueError(f"names must be unique, got {names!r}")
    lo, hi = _check_int(min_bits, "min_bits"), _check_int(max_bits, "max_bits")
    if not 1 <= lo <= hi <= MAX_BITS:
        raise ValueError(f"need 1 <= min_bits <= max_bits <= {MAX_BITS}, got min_bits={lo}, "
                         f"max_bits={hi}")
    return c, lo, hi, names


def _check_goal(target_sqnr_db, budget):
    if (target_sqnr_db is None) == (budget is None):
        raise ValueError("give exactly one of target_sqnr_db (minimise size) and budget "
                         "(maximise SQNR)")
    if target_sqnr_db is not None:
        t = float(target_sqnr_db)
        if not math.isfinite(t):
            raise ValueError(f"target_sqnr_db must be finite, got {target_sqnr_db!r}")
        return t, None
    b = float(budget)
    if not (math.isfinite(b) and b > 0):
        raise ValueError(f"budget must be a positive finite number, got {budget!r}")
    return None, b


def _noise(sqnr_db: np.ndarray) -> np.ndarray:
    return 10.0 ** (-np.asarray(sqnr_db, np.float64) / 10.0)


def _check_feasible(c, table, lo, hi, target, budget):
    """Raises the one-line error for a goal that no allocation in the box can meet."""
    if target is not None:
        best = predicted_output_sqnr_db(table.max(axis=1))   # the last column if SQNR grows
        if best < target - 10.0 * math.log10(1.0 + FEASIBILITY_RTOL):
            where = (f"every layer at max_bits={hi}" if np.all(table.argmax(axis=1) == hi - lo)
                     else "every layer at its best bit-width")
            raise ValueError(f"target output SQNR {target:.6g} dB cannot be met: {where} gives "
                             f"{best:.6g} dB")
    else:
        smallest = float(np.sum(c) * lo)
        if smallest > budget * (1.0 + FEASIBILITY_RTOL):
            raise ValueError(f"budget {budget:.6g} is below the smallest size {smallest:.6g} "
                             f"(every layer at min_bits={lo})")


def _result(c, model, bits, method, relaxed, names) -> Allocation:
    bits = tuple(int(b) for b in bits)
    layer = model.sqnr_db(np.asarray(bits))
    return Allocation(bits=bits, cost=float(np.dot(c, bits)),
                      sqnr_db=predicted_output_sqnr_db(layer),
                      layer_sqnr_db=tuple(float(v) for v in layer), method=method,
                      relaxed_bits=None if relaxed is None else tuple(float(r) for r in relaxed),
                      names=names)


# -- relaxed (continuous) optimum --------------------------------------------------------------

def _relaxed(c, a, s, lo, hi, target, budget) -> np.ndarray:
    shift = 10.0 * np.log10(c / s) + a          # b_i(W) = (W - shift_i) / s_i

    def bits_at(level):
        return np.clip((level - shift) / s, lo, hi)

    if target is not None:
        level = target + 10.0 * math.log10(float(np.sum(c / s)))

        def feasible(w):      # True from some W upwards
            return predicted_output_sqnr_db(a + s * bits_at(w)) >= target
    else:
        level = (budget + float(np.sum(c * shift / s))) / float(np.sum(c / s))

        def feasible(w):      # True up to some W
            return float(np.dot(c, bits_at(w))) <= budget
    unclipped = (level - shift) / s
    if np.all((unclipped >= lo) & (unclipped <= hi)):
        return unclipped                                   # the closed form
    # A bound is active: bisection on the water level W (the constraint is monotone in W).
    w_lo = float(np.min(shift + s * lo)) - 1.0             # every layer at min_bits
    w_hi = float(np.max(shift + s * hi)) + 1.0             # every layer at max_bits
    for _ in range(200):
        mid = 0.5 * (w_lo + w_hi)
        if target is not None:          # the lowest feasible level: the least cost
            w_hi, w_lo = (mid, w_lo) if feasible(mid) else (w_hi, mid)
        else:                           # the highest affordable level: the least noise
            w_lo, w_hi = (mid, w_hi) if feasible(mid) else (w_lo, mid)
        if w_hi - w_lo < 1e-12:
            break
    return bits_at(w_hi if target is not None else w_lo)


def relaxed_allocation(costs: Sequence[float], model: SQNRModel, *,
                       target_sqnr_db: float | None = None, budget: float | None = None,
                       min_bits: int = 2, max_bits: int = 8) -> np.ndarray:
    """The optimum over continuous bit-widths (module docstring: Lagrangian and water level).

    Args:
      costs: ``c_i > 0`` per layer (parameters, or MACs).
      model: the per-layer SQNR model (a table is replaced by its least-squares lines).
      target_sqnr_db: problem (a), minimise ``sum c_i b_i`` with output SQNR ``>=`` this; or
      budget: problem (b), maximise the output SQNR with ``sum c_i b_i <=`` this.
      min_bits, max_bits: the box ``min_bits <= b_i <= max_bits``.

    Returns:
      float64 ``(L,)`` bits, clipped to the box; the constraint holds with equality unless every
      layer is at a bound.

    Raises:
      ValueError: bad costs, bits range, or goal, or a goal that cannot be met in the box.

    Example:
      >>> b = relaxed_allocation([1000, 4000], SQNRModel.linear([0.0, 0.0]), budget=30_000)
      >>> np.round(b, 6).tolist()              # 4x the parameters: one bit fewer
      [6.8, 5.8]
    """
    c, lo, hi, _ = _check_problem(costs, model, min_bits, max_bits, None)
    target, budget = _check_goal(target_sqnr_db, budget)
    a, s = model.line(lo, hi)
    table = a[:, None] + s[:, None] * np.arange(lo, hi + 1)[None, :]
    _check_feasible(c, table, lo, hi, target, budget)
    return _relaxed(c, a, s, lo, hi, target, budget)


# -- integer allocation ----------------------------------------------------------------------

def _greedy(c, noise, lo, start, target_noise, budget) -> np.ndarray:
    """Round, repair and improve (module docstring). ``noise[i, j]``: layer i at lo + j bits."""
    n, k = noise.shape
    rows = np.arange(n)
    j = np.clip(np.rint(np.asarray(start) - lo).astype(int), 0, k - 1)
    padded = np.concatenate([np.full((n, 1), np.inf), noise, np.full((n, 1), np.inf)], axis=1)

    def steps(jj):
        """Noise change of one bit up / down per layer (inf where a bound is hit)."""
        here = noise[rows, jj]
        return padded[rows, jj + 2] - here, padded[rows, jj] - here

    bits = np.arange(k)
    if target_noise is not None:
        limit = target_noise * (1.0 + FEASIBILITY_RTOL)
        while float(np.sum(noise[rows, j])) > limit:
            # repair: the change of one layer's bits with the best noise drop per added cost
            # (+1 bit for an SQNR that grows with the bits; any change for a measured table)
            drop = noise[rows, j][:, None] - noise                       # (n, k)
            added = c[:, None] * (bits[None, :] - j[:, None])
            score = np.where(drop > 0, np.where(added > 0, drop / np.maximum(added, 1e-300),
                                                np.inf), -np.inf)
            i, jj = np.unravel_index(int(np.argmax(score)), score.shape)
            j[i] = jj
    else:
        limit = budget * (1.0 + FEASIBILITY_RTOL)
        while float(np.dot(c, j + lo)) > limit:
            # repair: the change with the least noise rise per saved cost
            saved = c[:, None] * (j[:, None] - bits[None, :])
            rise = noise - noise[rows, j][:, None]
            score = np.where(saved > 0, rise / np.where(saved > 0, saved, 1.0), np.inf)
            i, jj = np.unravel_index(int(np.argmin(score)), score.shape)
            j[i] = jj

    # Improve: one bit up or down in one layer, or one bit moved from layer i2 to layer i.
    single_i = np.concatenate([rows, rows])
    single_d = np.concatenate([np.ones(n, int), -np.ones(n, int)])
    pair_i, pair_i2 = np.nonzero(~np.eye(n, dtype=bool))
    for _ in range(10 * n * k + 10):
        cost, total = float(np.dot(c, j + lo)), float(np.sum(noise[rows, j]))
        up, down = steps(j)
        d_cost = np.concatenate([c, -c, c[pair_i] - c[pair_i2]])
        d_noise = np.concatenate([up, down, up[pair_i] + down[pair_i2]])
        new_cost, new_noise = cost + d_cost, total + d_noise
        valid = np.isfinite(d_noise)
        tiny_c, tiny_n = 1e-12 * max(cost, 1.0), 1e-12 * total
        if target_noise is not None:
            valid &= new_noise <= limit
            better = (d_cost < -tiny_c) | ((np.abs(d_cost) <= tiny_c) & (d_noise < -tiny_n))
            order = (d_cost, d_noise)
        else:
            valid &= new_cost <= limit
            better = (d_noise < -tiny_n) | ((np.abs(d_noise) <= tiny_n) & (d_cost < -tiny_c))
            order = (d_noise, d_cost)
        cand = np.flatnonzero(valid & better)
        if cand.size == 0:
            break
        m = int(cand[np.lexsort((order[1][cand], order[0][cand]))[0]])
        if m < 2 * n:
            j[single_i[m]] += single_d[m]
        else:
            j[pair_i[m - 2 * n]] += 1
            j[pair_i2[m - 2 * n]] -= 1
    return j + lo


def _exact(c, noise, lo, target_noise, budget, incumbent) -> np.ndarray | None:
    """Pareto dynamic programming; ``None`` if the front grows beyond MAX_PARETO_STATES."""
    n, k = noise.shape
    bits = np.arange(k)
    # what the remaining layers can at best achieve
    rest_noise = np.concatenate([np.cumsum(noise.min(axis=1)[::-1])[::-1], [0.0]])
    rest_cost = np.concatenate([np.cumsum((c * lo)[::-1])[::-1], [0.0]])
    inc_j = incumbent - lo
    inc_cost = float(np.dot(c, incumbent))
    inc_noise = float(np.sum(noise[np.arange(n), inc_j]))
    slack = 1.0 + 1e-12
    cost = np.zeros(1)
    nz = np.zeros(1)
    parents, choices = [], []
    for i in range(n):
        new_cost = (cost[:, None] + c[i] * (lo + bits)[None, :]).ravel()
        new_noise = (nz[:, None] + noise[i][None, :]).ravel()
        parent = np.repeat(np.arange(cost.size), k)
        choice = np.tile(bits, cost.size)
        if target_noise is not None:
            keep = ((new_noise + rest_noise[i + 1] <= target_noise * (1.0 + FEASIBILITY_RTOL))
                    & (new_cost + rest_cost[i + 1] <= inc_cost * slack))
        else:
            keep = ((new_cost + rest_cost[i + 1] <= budget * (1.0 + FEASIBILITY_RTOL))
                    & (new_noise + rest_noise[i + 1] <= inc_noise * slack))
        new_cost, new_noise = new_cost[keep], new_noise[keep]
        parent, choice = parent[keep], choice[keep]
        order = np.lexsort((new_noise, new_cost))       # by cost, then noise
        new_cost, new_noise = new_cost[order], new_noise[order]
        parent, choice = parent[order], choice[order]
        # Pareto: keep a state only if its noise is below that of every cheaper state
        prev_min = np.concatenate([[np.inf], np.minimum.accumulate(new_noise)[:-1]])
        front = new_noise < prev_min
        cost, nz = new_cost[front], new_noise[front]
        parents.append(parent[front])
        choices.append(choice[front])
        if cost.size > MAX_PARETO_STATES:
            return None
    if cost.size == 0:             # cannot happen: the incumbent survives the pruning
        return None
    # (a): the cheapest state (the front's noise falls with cost: the cheapest is unique);
    # (b): the least noise, which on the front is the most expensive state.
    idx = 0 if target_noise is not None else cost.size - 1
    out = np.empty(n, int)
    for i in range(n - 1, -1, -1):
        out[i] = choices[i][idx]
        idx = parents[i][idx]
    return out + lo


def allocate_bits(costs: Sequence[float], model: SQNRModel, *,
                  target_sqnr_db: float | None = None, budget: float | None = None,
                  min_bits: int = 2, max_bits: int = 8, names: Sequence[str] | None = None,
                  method: str = "exact") -> Allocation:
    """Integer bit-widths per layer: minimum size for a target SQNR, or best SQNR for a budget.

    Args:
      costs: ``c_i > 0`` per layer: parameter counts (the size is then ``sum c_i b_i`` bits)
        or multiply-accumulates; ints or floats, ``L >= 1`` of them.
      model: :class:`SQNRModel` with ``L`` layers (covering ``min_bits..max_bits`` if a table).
      target_sqnr_db: (a) minimise ``sum c_i b_i`` subject to output SQNR ``>=`` this (dB); or
      budget: (b) maximise the output SQNR subject to ``sum c_i b_i <=`` this (same unit as
        ``costs`` times bits).
      min_bits, max_bits: every ``b_i`` in ``min_bits..max_bits`` (``1 <= min <= max <= 24``).
      names: optional layer names (e.g. parameter paths), kept in the result.
      method: ``"exact"`` (default; Pareto dynamic programming, seeded with the greedy result) or
        ``"greedy"`` (relaxed optimum, rounding, repair, local improvement). See the module
        docstring.

    Returns:
      :class:`Allocation` (``relaxed_bits`` holds the continuous optimum; ``None`` for a table
      whose fitted SQNR line does not grow with the bits, where the greedy search then starts
      from ``min_bits`` everywhere).

    Raises:
      ValueError (one line): empty ``costs``, a cost that is not positive, a model with another
        number of layers, a bad bits range, neither or both goals, a target above what
        ``max_bits`` everywhere gives, or a budget below the size at ``min_bits`` everywhere.

    Example:
      >>> model = SQNRModel.linear([0.0, 0.0, 0.0])       # SQNR_i(b) = 6.02 b
      >>> r = allocate_bits([100, 400, 1600], model, target_sqnr_db=33.0, names=["a", "b", "c"])
      >>> r.as_dict(), r.cost, round(r.sqnr_db, 2)
      ({'a': 7, 'b': 7, 'c': 6}, 13100.0, 34.36)
      >>> np.round(r.relaxed_bits, 2).tolist()    # 4x the parameters: 1 bit fewer
      [7.68, 6.68, 5.68]
      >>> equal_bit_allocation([100, 400, 1600], model, target_sqnr_db=33.0).bits   # 14700 bits
      (7, 7, 7)
      >>> allocate_bits([100, 400], SQNRModel.linear([0.0, 0.0]), budget=100)
      Traceback (most recent call last):
      ...
      ValueError: budget 100 is below the smallest size 1000 (every layer at min_bits=2)
    """
    if method not in ("exact", "greedy"):
        raise ValueError(f"method must be 'exact' or 'greedy', got {method!r}")
    c, lo, hi, names = _check_problem(costs, model, min_bits, max_bits, names)
    target, budget = _check_goal(target_sqnr_db, budget)
    table = model.table(lo, hi)
    _check_feasible(c, table, lo, hi, target, budget)
    noise = _noise(table)
    target_noise = None if target is None else 10.0 ** (-target / 10.0)
    try:
        a, s = model.line(lo, hi)
    except ValueError:      # a measured table that does not grow: no relaxed optimum
        relaxed = None
    else:
        relaxed = _relaxed(c, a, s, lo, hi, target, budget)
    start = np.full(c.size, float(lo)) if relaxed is None else relaxed
    bits = _greedy(c, noise, lo, start, target_noise, budget)
    used = "greedy"
    if method == "exact":
        exact = _exact(c, noise, lo, target_noise, budget, bits)
        if exact is None:
            warnings.warn(f"allocate_bits: the exact search needs more than {MAX_PARETO_STATES} "
                          "Pareto states; returning the greedy allocation", RuntimeWarning,
                          stacklevel=2)
        else:
            bits, used = exact, "exact"
    return _result(c, model, bits, used, relaxed, names)


def equal_bit_allocation(costs: Sequence[float], model: SQNRModel, *,
                         target_sqnr_db: float | None = None, budget: float | None = None,
                         min_bits: int = 2, max_bits: int = 8,
                         names: Sequence[str] | None = None) -> Allocation:
    """The baseline: the same bit-width for every layer.

    The smallest ``b`` in ``min_bits..max_bits`` whose predicted output SQNR meets
    ``target_sqnr_db``, or the largest ``b`` with ``b * sum(costs) <= budget``. Arguments,
    result and errors as for :func:`allocate_bits` (``method="equal"``), and a ``ValueError``
    when a target is reachable only with different bit-widths (a measured table whose SQNR
    does not grow with the bits).

    Example:
      >>> r = equal_bit_allocation([100, 400, 1600], SQNRModel.linear([0.0] * 3), budget=14_000)
      >>> r.bits, r.cost
      ((6, 6, 6), 12600.0)
    """
    c, lo, hi, names = _check_problem(costs, model, min_bits, max_bits, names)
    target, budget = _check_goal(target_sqnr_db, budget)
    table = model.table(lo, hi)
    _check_feasible(c, table, lo, hi, target, budget)
    limit_noise = None if target is None else 10.0 ** (-target / 10.0) * (1 + FEASIBILITY_RTOL)
    chosen = None
    for b in range(lo, hi + 1):
        if target is not None:
            if float(np.sum(_noise(table[:, b - lo]))) <= limit_noise:
                chosen = b
                break
        elif b * float(np.sum(c)) <= budget * (1.0 + FEASIBILITY_RTOL):
            chosen = b
    if chosen is None:      # only for a measured table whose SQNR does not grow with the bits
        sqnrs = [predicted_output_sqnr_db(table[:, j]) for j in range(hi - lo + 1)]
        j = int(np.argmax(sqnrs))
        raise ValueError(f"target output SQNR {target:.6g} dB cannot be met with one bit-width "
                         f"for every layer: the best, {lo + j} bits, gives {sqnrs[j]:.6g} dB")
    return _result(c, model, [chosen] * c.size, "equal", None, names)


# -- from parameters to costs, and from an allocation to a FormatPolicy ----------------------

def layer_costs(params, mask=None) -> dict[str, int]:
    """Parameter count of every leaf the quantization mask selects: ``{path: count}``.

    Args:
      params: a parameter pytree (e.g. ``variables["params"]``).
      mask: as for :func:`~symog_jax.quantizers.masks.resolve_mask` (default: conv and dense
        kernels).

    Returns:
      ``{path: number of entries}`` in tree order; ``list(d)`` and ``list(d.values())`` are the
      ``names`` and ``costs`` of :func:`allocate_bits`.

    Example:
      >>> layer_costs(params)
      {'dense/kernel': 32}
    """
    flags = jax.tree_util.tree_leaves(resolve_mask(mask, params))
    leaves = jax.tree_util.tree_flatten_with_path(params)[0]
    return {path_str(p): int(np.size(leaf)) for (p, leaf), f in zip(leaves, flags) if f}


def layer_macs(apply_fn: Callable[[], Any]) -> dict[str, int]:
    """Multiply-accumulates per example of every ``nn.Conv`` / ``nn.Dense`` kernel.

    Runs ``apply_fn()`` once (eagerly, e.g. on a batch of one) and records each layer's kernel
    and output: a dense layer costs ``kernel.size`` MACs per example, a convolution
    ``kernel.size`` per output position (``prod(output.shape[1:-1])`` positions, so strides and
    padding are accounted for; feature groups are not modelled). A layer called twice counts
    twice.

    Args:
      apply_fn: zero-argument callable running the model, e.g.
        ``lambda: model.apply(variables, x[:1], train=False)``.

    Returns:
      ``{kernel path: MACs per example}`` with paths as :func:`layer_costs` writes them for
      ``variables["params"]`` (``'conv1/kernel'``), in first-call order.

    Example:
      >>> layer_macs(lambda: model.apply({"params": params}, x[:1]))
      {'dense/kernel': 32}
    """
    macs: dict[str, int] = {}

    def interceptor(next_fun, args, kwargs, context):
        out = next_fun(*args, **kwargs)
        module = context.module
        if context.method_name == "__call__" and isinstance(module, (nn.Conv, nn.Dense)):
            kernel = module.variables.get("params", {}).get("kernel")
            if kernel is not None:
                positions = int(np.prod(np.shape(out)[1:-1])) if isinstance(module, nn.Conv) \
                    else 1
                path = "/".join(str(p) for p in module.path) + "/kernel"
                macs[path.lstrip("/")] = macs.get(path.lstrip("/"), 0) + \
                    int(np.size(kernel)) * positions
        return out

    with nn.intercept_methods(interceptor):
        apply_fn()
    return macs


def bits_policy(allocation: Mapping[str, int] | Allocation, params=None, *,
                default: int | None = None) -> Callable[[str, Any], int]:
    """An allocation as the ``bits`` callable of :class:`~symog_jax.quantizers.policy.FormatPolicy`.

    A key matches a leaf path exactly (``'conv1/kernel'``) or as a module prefix (``'conv1'``
    matches ``'conv1/kernel'``); the longest matching key wins. Paths are relative to the
    pytree that ``FormatPolicy.init`` gets (``variables["params"]`` gives ``'conv1/kernel'``).

    Args:
      allocation: ``{path: bits}`` or an :class:`Allocation` with ``names``.
      params: if given, every key must match a leaf of it (checked now, not at ``init``).
      default: bits for leaves no key matches; ``None``: such a leaf is an error.

    Returns:
      ``(path: str, leaf) -> int``.

    Raises:
      ValueError: a bit-width that is not an integer >= 1, a key that matches no leaf of
        ``params`` (the message lists the leaves), or (when called) a path without a key and
        no ``default``.

    Example:
      >>> from symog_jax.quantizers.policy import FormatPolicy
      >>> FormatPolicy(bits_policy({"dense": 3}, params)).init(params)["dense"]["kernel"]
      FixedPointFormat(bits=3, frac_bits=2, symmetric)
      >>> bits_policy({"conv9": 3}, params)
      Traceback (most recent call last):
      ...
      ValueError: allocation key 'conv9' matches no parameter leaf; leaves: dense/bias, dense/kernel
    """
    if isinstance(allocation, Allocation):
        allocation = allocation.as_dict()
    if not isinstance(allocation, Mapping) or not allocation:
        raise ValueError("allocation must be a non-empty dict of path -> bits")
    table = {}
    for key, b in allocation.items():
        if not isinstance(key, str) or not key.strip("/"):
            raise ValueError(f"allocation keys must be non-empty '/'-joined paths, got {key!r}")
        if isinstance(b, bool) or not isinstance(b, numbers.Integral) or b < 1:
            raise ValueError(f"allocation[{key!r}] must be an integer >= 1, got {b!r}")
        table[key.strip("/")] = int(b)
    if default is not None and (isinstance(default, bool) or
                                not isinstance(default, numbers.Integral) or default < 1):
        raise ValueError(f"default must be an integer >= 1 or None, got {default!r}")

    def match(path: str) -> str | None:
        best = None
        for key in table:
            if path == key or path.startswith(key + "/"):
                if best is None or len(key) > len(best):
                    best = key
        return best

    if params is not None:
        paths = [path_str(p) for p, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
        for key in table:
            if not any(path == key or path.startswith(key + "/") for path in paths):
                shown = ", ".join(paths[:20]) + (" ..." if len(paths) > 20 else "")
                raise ValueError(f"allocation key {key!r} matches no parameter leaf; "
                                 f"leaves: {shown}")

    def bits(path: str, leaf=None) -> int:
        key = match(path)
        if key is None:
            if default is None:
                raise ValueError(f"no bit-width for leaf {path!r}: the allocation has "
                                 f"{', '.join(map(repr, table))} (pass default=...)")
            return int(default)
        return table[key]

    return bits
