"""MSE-optimal uniform quantizer steps and the fixed-point formats derived from them.

Lin, Talathi & Annapureddy (2016, "Fixed point quantization of deep convolutional networks",
Sec. 3) design a layer's fixed-point format in two steps: the step ``Delta`` of a uniform
quantizer that minimises the mean squared error ``E[(x - Q(x))**2]`` for the layer's input
distribution (unit variance, then scaled by the tensor's standard deviation), and the nearest
power of two to it, which fixes the fractional bits. This module computes the first step
numerically for any bit-width (:func:`optimal_uniform_step`) and does the second
(:func:`fixed_point_format_for`). It is design-time math in numpy ``float64``; nothing here is
traced by JAX.

**Quantizers** (``quantizer=``), all uniform with step ``Delta`` and round-to-nearest:

* ``"symmetric"`` -- this library's symmetric formats: ``2**N - 1`` levels ``k * Delta``,
  ``k = -(2**(N-1) - 1) .. 2**(N-1) - 1`` (mid-tread, 0 is a level). Needs ``N >= 2``: with one
  bit only the level 0 is left, so ``N = 1`` is refused with a message pointing to
  ``"midrise"``.
* ``"twos"`` -- two's complement: ``2**N`` levels ``k * Delta``, ``k = -2**(N-1) .. 2**(N-1) - 1``.
* ``"unsigned"`` -- ``2**N`` levels ``k * Delta``, ``k = 0 .. 2**N - 1``, for non-negative inputs
  (e.g. activations after ReLU). For the named distributions the input is then the
  *half-distribution* ``|X|`` of the unit-variance ``X`` (so ``E[|X|**2] = 1`` still). Its error
  equals that of the symmetric quantizer with ``N + 1`` bits on ``X``: the positive half of that
  quantizer is exactly this one.
* ``"midrise"`` -- ``2**N`` levels ``(k + 1/2) * Delta``, ``k = -2**(N-1) .. 2**(N-1) - 1``, the
  classic quantizer of Max (1960) and of the paper's Table 1. With ``N = 1`` it is the binary
  quantizer ``+-Delta/2``. Its levels are not a :class:`FixedPointFormat` (0 is no level).

**Distributions** (``distribution=``), each with zero mean and unit variance: ``"gaussian"``,
``"laplacian"`` (density ``exp(-sqrt(2)|x|) / sqrt(2)``), ``"uniform"`` (on
``[-sqrt(3), sqrt(3)]``), or an empirical sample (an array of values, used as they are, in their
own units).

**How the error is computed.** For a symmetric density the error is twice the error on
``x >= 0``, where the cells of a mid-tread quantizer with ``M`` positive levels are
``[0, Delta/2)`` (level 0), ``[(k - 1/2) Delta, (k + 1/2) Delta)`` (level ``k Delta``,
``k = 1 .. M-1``) and the overload cell ``[(M - 1/2) Delta, inf)`` (level ``M Delta``). Each cell
contributes ``int (x - c)**2 f(x) dx`` over the cell, ``c`` its level:

* overload cell, Gaussian: ``(1 + c**2) Q(t) + (t - 2c) phi(t)`` with ``t`` the cell's lower edge,
  ``phi`` the density and ``Q = 1 - Phi`` (``math.erfc``); Laplacian:
  ``exp(-l t) ((t - c + 1/l)**2 + 1/l**2) / 2`` with ``l = sqrt(2)``; uniform: a cubic.
* inner cells in the offset ``u = x - c`` (``|u| <= h = Delta/2``): the erf closed form
  ``(1 + c**2)(Q(c-h) - Q(c+h)) - (h - c) phi(c+h) - (h + c) phi(c-h)`` has terms of size
  ``O(h)`` that cancel to a result of size ``O(h**3)`` and loses all accuracy at 16 bits, so it is
  used only for ``h >= 1/4``; narrower Gaussian cells use a 12-point Gauss-Legendre rule in ``u``
  (the integrand is analytic: the rule is exact to rounding for ``h < 1/4``). Laplacian cells are
  ``l exp(-l c) int_0^h u**2 cosh(l u) du``, in closed form (series for ``l h < 1``); uniform
  cells are cubics.

The mid-rise quantizer has cells ``[k Delta, (k+1) Delta)`` with level ``(k + 1/2) Delta`` and its
overload cell from ``(K - 1) Delta`` (``K = 2**(N-1)``).

**Minimisation.** The error is minimised over ``log(Delta)``: a log-spaced grid of candidate
clipping points (largest level plus ``Delta/2``) from 0.05 to 80 standard deviations brackets
the best grid point, and golden-section search refines it to a relative step tolerance of
``1e-10``. For the three named distributions the error is unimodal in ``Delta`` for every
bit-width and quantizer here (checked in ``tests/test_optimal_step.py`` on dense grids; for the
uniform distribution it is provably so, with the optimum ``Delta = 2 sqrt(3) / L`` for ``L`` levels
from the mid-rise or ``2 sqrt(3) / (2**N - 1)`` for the symmetric quantizer). For an empirical
sample the error is piecewise quadratic in ``Delta`` and may have local minima: 256 grid points
between 0.01 RMS and twice ``max|x|`` are searched before refining, so the result is the best of
those brackets, not a certified global minimum.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import numbers
from typing import Any

import numpy as np

from symog_jax.numerics.formats import FixedPointFormat

__all__ = [
    "DB_PER_BIT",
    "DISTRIBUTIONS",
    "MAX_STEP_BITS",
    "QUANTIZERS",
    "OptimalStep",
    "fixed_point_format_for",
    "optimal_uniform_step",
    "quantizer_mse",
]

#: SQNR gained per bit by a uniform quantizer at high resolution: ``20 log10(2)`` dB.
DB_PER_BIT = 20.0 * math.log10(2.0)
#: Named unit-variance distributions.
DISTRIBUTIONS = ("gaussian", "laplacian", "uniform")
#: Quantizer kinds (see the module docstring).
QUANTIZERS = ("symmetric", "twos", "unsigned", "midrise")
#: Largest bit-width :func:`optimal_uniform_step` accepts.
MAX_STEP_BITS = 16

_SQRT2 = math.sqrt(2.0)
_SQRT3 = math.sqrt(3.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
_LAPLACE_RATE = _SQRT2            # unit variance: 2 / rate**2 = 1
#: Inner cells starting beyond this many standard deviations are skipped: their error is at
#: most ``P(|X| > 40) * step**2 / 4`` (below ``1e-24`` times a cell's ``step**2 / 12`` for the
#: Laplacian, far less for the Gaussian; the uniform density is 0 beyond ``sqrt(3)``). The
#: overload cell is always computed.
_NEGLIGIBLE = {"gaussian": 40.0, "laplacian": 40.0, "uniform": _SQRT3}
#: Gaussian cells narrower than this (half-width) use Gauss-Legendre instead of erf.
_GAUSS_CLOSED_FORM_MIN_HALF_WIDTH = 0.25
_GL_NODES, _GL_WEIGHTS = np.polynomial.legendre.leggauss(12)
#: Search range of the clipping point for the named distributions, in standard deviations.
_CLIP_RANGE = (0.05, 80.0)
_GRID_POINTS = 80
_EMPIRICAL_GRID_POINTS = 256
_STEP_RTOL = 1e-10

# int_0^h u^2 cosh(l u) du = h^3 sum_k z^(2k) / ((2k)! (2k + 3)), z = l h
_COSH_POWERS = 2.0 * np.arange(12)
_COSH_COEFFS = np.array([1.0 / (math.factorial(2 * k) * (2 * k + 3)) for k in range(12)])

_erfc = np.frompyfunc(math.erfc, 1, 1)


def _q(t):
    """Gaussian upper tail ``P(X > t)``, float64 array, accurate relative to its size."""
    return np.asarray(_erfc(np.asarray(t, np.float64) / _SQRT2), np.float64) * 0.5


def _phi(x):
    return _INV_SQRT_2PI * np.exp(-0.5 * np.square(x))


# -- per-density pieces on x >= 0: inner cells, the zero cell and the overload cell ----------

def _gauss_cells(c: np.ndarray, h: float) -> np.ndarray:
    """``int_{c-h}^{c+h} (x - c)**2 phi(x) dx`` for each centre ``c >= h``."""
    if h >= _GAUSS_CLOSED_FORM_MIN_HALF_WIDTH:
        a, b = c - h, c + h
        return (1.0 + c * c) * (_q(a) - _q(b)) - (h - c) * _phi(b) - (h + c) * _phi(a)
    u = h * _GL_NODES
    return (_phi(c[:, None] + u[None, :]) * (u * u * h * _GL_WEIGHTS)[None, :]).sum(axis=1)


def _gauss_zero(h: float) -> float:
    """``int_0^h x**2 phi(x) dx``."""
    if h >= _GAUSS_CLOSED_FORM_MIN_HALF_WIDTH:
        return 0.5 * math.erf(h / _SQRT2) - h * float(_phi(h))
    u = 0.5 * h * (_GL_NODES + 1.0)
    return float(np.sum(0.5 * h * _GL_WEIGHTS * u * u * _phi(u)))


def _gauss_tail(c: float, t: float) -> float:
    """``int_t^inf (x - c)**2 phi(x) dx``."""
    return float((1.0 + c * c) * _q(t) + (t - 2.0 * c) * _phi(t))


def _laplace_cells(c: np.ndarray, h: float) -> np.ndarray:
    """``int_{c-h}^{c+h} (x - c)**2 f(x) dx`` for ``f = (l/2) exp(-l x)``, ``c >= h``."""
    lam = _LAPLACE_RATE
    z = lam * h
    if z < 1.0:
        series = float(np.sum(z ** _COSH_POWERS * _COSH_COEFFS))
        return lam * np.exp(-lam * c) * h**3 * series
    up, down = np.exp(-lam * (c - h)), np.exp(-lam * (c + h))   # e^{-lc} (cosh +- sinh)(z)
    sinh, cosh = 0.5 * (up - down), 0.5 * (up + down)
    return lam * (h * h * sinh / lam - 2.0 * h * cosh / lam**2 + 2.0 * sinh / lam**3)


def _laplace_zero(h: float) -> float:
    """``int_0^h x**2 (l/2) exp(-l x) dx = gamma(3, l h) / (2 l**2)``."""
    lam = _LAPLACE_RATE
    z = lam * h
    if z < 1.0:
        gamma3 = z**3 * sum((-z) ** k / (math.factorial(k) * (k + 3)) for k in range(20))
    else:
        gamma3 = 2.0 * (1.0 - math.exp(-z) * (1.0 + z + 0.5 * z * z))
    return gamma3 / (2.0 * lam * lam)


def _laplace_tail(c: float, t: float) -> float:
    lam = _LAPLACE_RATE
    d = t - c
    return 0.5 * math.exp(-lam * t) * ((d + 1.0 / lam) ** 2 + 1.0 / lam**2)


def _uniform_cells(c: np.ndarray, h: float) -> np.ndarray:
    hi = np.clip(_SQRT3 - c, -h, h)
    return (hi**3 + h**3) / (6.0 * _SQRT3)


def _uniform_zero(h: float) -> float:
    return min(h, _SQRT3) ** 3 / (6.0 * _SQRT3)


def _uniform_tail(c: float, t: float) -> float:
    if t >= _SQRT3:
        return 0.0
    return ((_SQRT3 - c) ** 3 - (t - c) ** 3) / (6.0 * _SQRT3)


_PIECES = {name: pieces + (_NEGLIGIBLE[name],) for name, pieces in {
    "gaussian": (_gauss_cells, _gauss_zero, _gauss_tail),
    "laplacian": (_laplace_cells, _laplace_zero, _laplace_tail),
    "uniform": (_uniform_cells, _uniform_zero, _uniform_tail),
}.items()}


def _inner_cells(pieces, first_centre: float, count: int, step: float) -> float:
    """Sum of ``count`` inner cells with centres ``first_centre + i * step``."""
    cells, negligible = pieces[0], pieces[3]
    reach = int(min(count, max(0.0, math.ceil((negligible - first_centre) / step + 1.5))))
    if reach <= 0:
        return 0.0
    centres = first_centre + step * np.arange(reach, dtype=np.float64)
    return float(np.sum(cells(centres, 0.5 * step)))


def _half_mse_midtread(pieces, top: int, step: float) -> float:
    """Error on ``x >= 0`` of levels ``0, step, ..., top * step``."""
    _, zero, tail, _ = pieces
    if top == 0:
        return tail(0.0, 0.0)
    return (zero(0.5 * step) + _inner_cells(pieces, step, top - 1, step)
            + tail(top * step, (top - 0.5) * step))


def _half_mse_midrise(pieces, count: int, step: float) -> float:
    """Error on ``x >= 0`` of levels ``step/2, 3 step/2, ..., (count - 1/2) step``."""
    tail = pieces[2]
    return (_inner_cells(pieces, 0.5 * step, count - 1, step)
            + tail((count - 0.5) * step, (count - 1) * step))


# -- argument checks -------------------------------------------------------------------------

def _check_quantizer(quantizer: Any) -> str:
    if quantizer not in QUANTIZERS:
        raise ValueError(f"quantizer must be one of {', '.join(map(repr, QUANTIZERS))}, "
                         f"got {quantizer!r}")
    return quantizer


def _check_step_bits(bits: Any, quantizer: str) -> int:
    if isinstance(bits, bool) or not isinstance(bits, numbers.Integral):
        raise TypeError(f"bits must be an integer, got {bits!r} of type {type(bits).__name__}")
    bits = int(bits)
    if quantizer == "symmetric" and bits == 1:
        raise ValueError("bits=1: a 1-bit symmetric quantizer has only the level 0; use "
                         "quantizer='midrise' for the binary quantizer +-step/2 (or 'unsigned')")
    if not 1 <= bits <= MAX_STEP_BITS:
        raise ValueError(f"bits must be in 1..{MAX_STEP_BITS} "
                         f"({'2' if quantizer == 'symmetric' else '1'}..{MAX_STEP_BITS} for "
                         f"quantizer={quantizer!r}), got {bits}")
    return bits


def _check_distribution(distribution: Any) -> str | np.ndarray:
    """A distribution name, or the sample as a 1-D float64 array (other shapes are flattened)."""
    if isinstance(distribution, str):
        if distribution not in DISTRIBUTIONS:
            raise ValueError(f"distribution must be one of {', '.join(map(repr, DISTRIBUTIONS))} "
                             f"or an array of samples, got {distribution!r}")
        return distribution
    try:
        sample = np.asarray(distribution, np.float64).ravel()
    except (TypeError, ValueError):
        raise TypeError(f"distribution must be a name or an array of samples, got "
                        f"{type(distribution).__name__}") from None
    if sample.size == 0:
        raise ValueError("the empirical sample is empty")
    if not np.all(np.isfinite(sample)):
        raise ValueError("the empirical sample contains NaN or inf")
    if not np.any(sample):
        raise ValueError("the empirical sample is all zeros: its signal power is 0")
    return sample


def _codes(bits: int, quantizer: str) -> tuple[int, int]:
    """Smallest and largest integer ``k`` of the levels ``k * step`` (mid-tread quantizers)."""
    if quantizer == "symmetric":
        top = 2 ** (bits - 1) - 1
        return -top, top
    if quantizer == "twos":
        return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    if quantizer == "unsigned":
        return 0, 2**bits - 1
    raise AssertionError(quantizer)


def _empirical_quantize(x: np.ndarray, step: float, bits: int, quantizer: str) -> np.ndarray:
    if quantizer == "midrise":
        half = 2 ** (bits - 1)
        return (np.clip(np.floor(x / step), -half, half - 1) + 0.5) * step
    lo, hi = _codes(bits, quantizer)
    return np.clip(np.round(x / step), lo, hi) * step


def _mse(step: float, bits: int, dist, quantizer: str) -> float:
    if not isinstance(dist, str):
        return float(np.mean(np.square(dist - _empirical_quantize(dist, step, bits, quantizer))))
    pieces = _PIECES[dist]
    if quantizer == "midrise":
        return 2.0 * _half_mse_midrise(pieces, 2 ** (bits - 1), step)
    lo, hi = _codes(bits, quantizer)
    if quantizer == "unsigned":          # |X| has density 2 f on x >= 0
        return 2.0 * _half_mse_midtread(pieces, hi, step)
    return _half_mse_midtread(pieces, hi, step) + _half_mse_midtread(pieces, -lo, step)


def _clip_levels(bits: int, quantizer: str) -> float:
    """``L`` with the clipping point (largest level + step/2) at ``L * step``."""
    if quantizer == "midrise":
        return float(2 ** (bits - 1))
    return _codes(bits, quantizer)[1] + 0.5


# -- public API ------------------------------------------------------------------------------

def quantizer_mse(step: float, bits: int, distribution: Any = "gaussian",
                  quantizer: str = "symmetric") -> float:
    """Mean squared error ``E[(x - Q(x))**2]`` of a uniform quantizer with a given step.

    Args:
      step: the quantizer step ``Delta > 0`` (in standard deviations for a named distribution,
        in the sample's units for a sample).
      bits: bit-width ``N``, 1..16 (2..16 for ``"symmetric"``).
      distribution: ``"gaussian"``, ``"laplacian"``, ``"uniform"`` (unit variance), or an array
        of samples (any shape, flattened; float64 internally).
      quantizer: ``"symmetric"``, ``"twos"``, ``"unsigned"`` or ``"midrise"`` (module docstring).

    Returns:
      The error as a Python float (computed in float64 from the closed-form and quadrature
      pieces of the module docstring; for a sample, the mean over the sample).

    Example:
      >>> round(quantizer_mse(2 * 3**0.5 / 3, 2, "uniform"), 12)   # 3 levels fit exactly
      0.111111111111
      >>> round(quantizer_mse(1.0, 2, [0.4, -1.2]), 6)   # levels -1, 0, 1: (0.16 + 0.04) / 2
      0.1
    """
    quantizer = _check_quantizer(quantizer)
    bits = _check_step_bits(bits, quantizer)
    dist = _check_distribution(distribution)
    if not isinstance(dist, str) and quantizer == "unsigned" and dist.min() < 0:
        raise ValueError("quantizer='unsigned' needs a non-negative sample, got a minimum of "
                         f"{dist.min():.6g}")
    step = float(step)
    if not (math.isfinite(step) and step > 0):
        raise ValueError(f"step must be a positive finite number, got {step!r}")
    return _mse(step, bits, dist, quantizer)


@dataclasses.dataclass(frozen=True)
class OptimalStep:
    """The result of :func:`optimal_uniform_step`.

    Attributes:
      bits: the bit-width ``N``.
      quantizer: the quantizer kind.
      distribution: the distribution's name, or ``"empirical"`` for a sample.
      step: the MSE-optimal step (in standard deviations, or in the sample's units).
      mse: the mean squared error at ``step``.
      signal_power: ``E[x**2]`` (1 for the named distributions; the sample's mean square).
      sqnr_db: ``10 log10(signal_power / mse)`` (``inf`` if ``mse`` is 0).
      num_levels: number of quantizer levels.
    """

    bits: int
    quantizer: str
    distribution: str
    step: float
    mse: float
    signal_power: float
    sqnr_db: float
    num_levels: int


def _golden(fun, lo: float, hi: float, tol: float) -> tuple[float, float]:
    """Minimum of a unimodal ``fun`` on ``[lo, hi]`` by golden-section search: ``(x, fun(x))``."""
    inv = (math.sqrt(5.0) - 1.0) / 2.0
    a, b = lo, hi
    c, d = b - inv * (b - a), a + inv * (b - a)
    fc, fd = fun(c), fun(d)
    while b - a > tol:
        if fc <= fd:
            b, d, fd = d, c, fc
            c = b - inv * (b - a)
            fc = fun(c)
        else:
            a, c, fc = c, d, fd
            d = a + inv * (b - a)
            fd = fun(d)
    return (c, fc) if fc <= fd else (d, fd)


@functools.lru_cache(maxsize=512)
def _optimal_named(bits: int, distribution: str, quantizer: str) -> tuple[float, float]:
    return _minimise(bits, distribution, quantizer, _CLIP_RANGE, _GRID_POINTS)


def _minimise(bits: int, dist, quantizer: str, clip_range, points: int) -> tuple[float, float]:
    levels = _clip_levels(bits, quantizer)
    log_steps = np.linspace(math.log(clip_range[0] / levels), math.log(clip_range[1] / levels),
                            points)

    def fun(log_step):
        return _mse(math.exp(log_step), bits, dist, quantizer)

    values = np.array([fun(s) for s in log_steps])
    i = int(np.argmin(values))
    lo, hi = log_steps[max(i - 1, 0)], log_steps[min(i + 1, points - 1)]
    log_step, mse = _golden(fun, lo, hi, _STEP_RTOL)
    if values[i] < mse:                  # never worse than the grid (a sample's local minima)
        log_step, mse = log_steps[i], float(values[i])
    return math.exp(log_step), mse


def optimal_uniform_step(bits: int, distribution: Any = "gaussian",
                         quantizer: str = "symmetric") -> OptimalStep:
    """The step of an N-bit uniform quantizer that minimises ``E[(x - Q(x))**2]``.

    Computed, not tabulated: the error of a step is integrated from the distribution (closed
    forms per cell and for the tail, Gauss-Legendre for narrow Gaussian cells) and minimised over
    ``log(step)`` by a grid bracket and golden-section search (module docstring). Results for
    the named distributions are cached.

    Args:
      bits: bit-width ``N``, 1..16. ``"symmetric"`` (this library's symmetric formats,
        ``2**N - 1`` levels ``k * step``) needs ``N >= 2``; its 1-bit case holds only 0 and is
        refused -- use ``"midrise"`` (levels ``+-step/2``) or ``"unsigned"`` for one bit.
      distribution: ``"gaussian"``, ``"laplacian"`` or ``"uniform"`` with zero mean and unit
        variance (for ``"unsigned"``, the half-distribution ``|X|``), or an array of samples (any
        shape, flattened, float64; non-negative for ``"unsigned"``).
      quantizer: ``"symmetric"`` (default), ``"twos"``, ``"unsigned"`` or ``"midrise"``.

    Returns:
      :class:`OptimalStep` with the step (relative tolerance ``1e-10`` for the named
      distributions), its error and ``sqnr_db = 10 log10(E[x**2] / mse)``.

    Raises:
      ValueError: bits out of range, an unknown distribution or quantizer, or a sample that is
        empty, all zeros, non-finite, or negative for ``"unsigned"``.
      TypeError: ``bits`` is not an integer.

    Example:
      >>> r = optimal_uniform_step(2, "uniform")      # 3 levels on [-sqrt 3, sqrt 3]
      >>> round(r.step, 6), round(r.sqnr_db, 4)      # 2 sqrt(3) / 3 and 20 log10(3)
      (1.154701, 9.5424)
      >>> r = optimal_uniform_step(1, "gaussian", "midrise")   # levels +-E|X| (Max, 1960)
      >>> round(r.step / 2, 6), round(r.mse, 6)      # sqrt(2/pi) and 1 - 2/pi
      (0.797885, 0.36338)
    """
    quantizer = _check_quantizer(quantizer)
    bits = _check_step_bits(bits, quantizer)
    dist = _check_distribution(distribution)
    if isinstance(dist, str):
        step, mse = _optimal_named(bits, dist, quantizer)
        power, name = 1.0, dist
    else:
        if quantizer == "unsigned" and dist.min() < 0:
            raise ValueError("quantizer='unsigned' needs a non-negative sample, got a minimum of "
                             f"{dist.min():.6g}")
        power, name = float(np.mean(dist * dist)), "empirical"
        rms, peak = math.sqrt(power), float(np.max(np.abs(dist)))
        step, mse = _minimise(bits, dist, quantizer, (0.01 * rms, 2.0 * peak),
                              _EMPIRICAL_GRID_POINTS)
    sqnr = 10.0 * math.log10(power / mse) if mse > 0 else math.inf
    num_levels = 2**bits - 1 if quantizer == "symmetric" else 2**bits
    return OptimalStep(bits=bits, quantizer=quantizer, distribution=name, step=step, mse=mse,
                       signal_power=power, sqnr_db=sqnr, num_levels=num_levels)


def fixed_point_format_for(x: Any, bits: int, distribution: str = "gaussian", *,
                           signed: bool | None = None, rounding: str = "log"
                           ) -> FixedPointFormat:
    """A per-tensor fixed-point format whose power-of-two step is near the optimal step.

    The tensor is modelled as ``scale * X``, ``X`` unit-variance from ``distribution``; the
    optimal step of ``X`` (:func:`optimal_uniform_step`) times ``scale`` is rounded to a power of
    two ``2**-frac_bits``.

    * **signed** (weights; any tensor with a negative value): signed symmetric format,
      ``scale = sqrt(mean(x**2))``, the RMS about zero. The quantizer is centred at 0, so the
      second moment about 0, not the variance about the mean, is what sets the error; for a
      zero-mean tensor both are its standard deviation.
    * **unsigned** (activations after ReLU: a calibration batch with no negative value):
      unsigned format. Zeros are levels and cost nothing, so the positive entries are modelled as
      the half-distribution ``scale * |X|`` with ``scale = sqrt(mean(x**2 | x > 0))`` (for ReLU of
      a zero-mean ``N(0, s**2)`` pre-activation, ``scale = s``), and the optimal unsigned step of
      ``|X|`` (the symmetric step of ``N + 1`` bits) is used.

    With ``distribution="empirical"`` the step is optimised on the values of ``x`` themselves
    (the positive values when unsigned) instead of a model.

    Args:
      x: the tensor (weights, or the activations of a calibration batch; any shape, float), or
        a positive number: the scale itself (then ``signed`` defaults to ``True``).
      bits: bit-width, 2..16 signed, 1..16 unsigned.
      distribution: ``"gaussian"``, ``"laplacian"``, ``"uniform"`` or ``"empirical"``.
      signed: ``None``: unsigned exactly when ``x`` is an array with no negative entry.
      rounding: ``"log"``: ``frac_bits = floor(-log2(step) + 1/2)``, the nearest power of two in
        the log domain (the paper's choice); ``"mse"``: whichever of the two neighbouring powers
        of two has the smaller modelled (or, for ``"empirical"``, measured) error.

    Returns:
      :class:`FixedPointFormat` with a scalar ``frac_bits`` (symmetric when signed).

    Raises:
      ValueError: ``x`` is empty, all zeros (no scale; for unsigned: no positive entry), holds
        NaN/inf, is negative with ``signed=False``, or a scalar ``x`` with
        ``distribution="empirical"``; bad ``bits``, ``distribution`` or ``rounding``.

    Example:
      >>> w = np.random.default_rng(0).normal(0.0, 0.05, 10_000)
      >>> fixed_point_format_for(w, 4)   # step 0.3534 * 0.05 = 2**-5.82 -> 2**-6
      FixedPointFormat(bits=4, frac_bits=6, symmetric)
      >>> fixed_point_format_for(np.maximum(w, 0.0), 4)   # half-Gaussian: 0.1933 * 0.05 = 2**-6.69
      FixedPointFormat(bits=4, frac_bits=7, unsigned)
      >>> fixed_point_format_for(0.04, 8, "laplacian")    # from a scale: 0.0550 * 0.04 = 2**-8.83
      FixedPointFormat(bits=8, frac_bits=9, symmetric)
    """
    if rounding not in ("log", "mse"):
        raise ValueError(f"rounding must be 'log' or 'mse', got {rounding!r}")
    if distribution != "empirical" and distribution not in DISTRIBUTIONS:
        raise ValueError(f"distribution must be one of "
                         f"{', '.join(map(repr, DISTRIBUTIONS + ('empirical',)))}, "
                         f"got {distribution!r}")
    arr = np.asarray(x, np.float64)
    if arr.ndim == 0:
        scale = float(arr)
        if distribution == "empirical":
            raise ValueError("distribution='empirical' needs the tensor's values, got a scalar "
                             "scale")
        if not (math.isfinite(scale) and scale > 0):
            raise ValueError(f"the scale must be a positive finite number, got {x!r}")
        signed = True if signed is None else bool(signed)
        values = None
    else:
        values = arr.ravel()
        if values.size == 0:
            raise ValueError("fixed_point_format_for: the tensor (calibration set) is empty")
        if not np.all(np.isfinite(values)):
            raise ValueError("fixed_point_format_for: the tensor contains NaN or inf")
        if signed is None:
            signed = bool(values.min() < 0)
        signed = bool(signed)
        if not signed:
            if values.min() < 0:
                raise ValueError(f"signed=False but the tensor has negative values (min "
                                 f"{values.min():.6g})")
            values = values[values > 0]
            if values.size == 0:
                raise ValueError("fixed_point_format_for: the tensor has no positive value, so "
                                 "an unsigned format has no scale")
        elif not np.any(values):
            raise ValueError("fixed_point_format_for: the tensor is all zeros, so it has no "
                             "scale")
        scale = math.sqrt(float(np.mean(values * values)))
    quantizer = "symmetric" if signed else "unsigned"
    if signed and bits == 1 and not isinstance(bits, bool):
        raise ValueError("bits=1: a signed symmetric format needs at least 2 bits (1 bit holds "
                         "only the level 0); use an unsigned format or more bits")
    if distribution == "empirical":
        best = optimal_uniform_step(bits, values, quantizer)
        step = best.step

        def error(s):
            return _mse(s, best.bits, values, quantizer)
    else:
        best = optimal_uniform_step(bits, distribution, quantizer)
        step = best.step * scale

        def error(s):
            return _mse(s / scale, best.bits, distribution, quantizer)

    exact = -math.log2(step)
    if rounding == "log":
        frac_bits = math.floor(exact + 0.5)
    else:
        lo, hi = math.floor(exact), math.ceil(exact)
        frac_bits = lo if error(2.0**-lo) <= error(2.0**-hi) else hi
    if signed:
        return FixedPointFormat(bits, frac_bits, signed=True, symmetric=True)
    return FixedPointFormat(bits, frac_bits, signed=False, symmetric=False)
