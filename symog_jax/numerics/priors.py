"""The SYMOG prior: a symmetric mixture of Gaussians with one mode per fixed-point level.

For a weight ``w`` and a format with levels ``mu_k = k * step`` the prior density is

    p(w) = sum_k pi_k N(w; mu_k, sigma^2),

so its negative log-likelihood is ``-logsumexp_k(log pi_k - (w - mu_k)^2 / (2 sigma^2))
+ log sigma + log(2 pi) / 2`` (the *exact* form). As ``sigma -> 0`` the closest mode dominates
and the NLL tends to the *nearest-mode* form ``(w - mu_*)^2 / (2 sigma^2) - log pi_* + log sigma
+ log(2 pi) / 2`` with ``mu_*`` the level nearest ``w`` (Enderich et al., 2020).
"""

from __future__ import annotations

import math
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np

from symog_jax.numerics.formats import FixedPointFormat

PriorForm = Literal["exact", "nearest"]
_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)


def check_sigma(sigma) -> None:
    """Raises ``ValueError`` if a concrete ``sigma`` is not finite and positive."""
    if isinstance(sigma, jax.core.Tracer):
        return
    s = np.asarray(sigma, dtype=np.float64)
    if not np.all(np.isfinite(s)) or np.any(s <= 0):
        raise ValueError(f"sigma must be finite and > 0, got {sigma!r}")


def _log_mixing(fmt: FixedPointFormat, mixing) -> jax.Array | None:
    """``log pi_k`` as float32 ``(num_levels,)``, or ``None`` for equal weights."""
    if mixing is None:
        return None
    pi = jnp.asarray(mixing, jnp.float32)
    if pi.shape != (fmt.num_levels,):
        raise ValueError(f"mixing must have shape ({fmt.num_levels},) (one weight per level), "
                         f"got {pi.shape}")
    if not isinstance(pi, jax.core.Tracer):
        p = np.asarray(pi)
        if np.any(p < 0) or not np.isclose(p.sum(), 1.0, atol=1e-5):
            raise ValueError(f"mixing weights must be >= 0 and sum to 1, got {p.tolist()}")
    return jnp.log(pi)


def mixture_prior_nll(w, fmt: FixedPointFormat, sigma, *, mixing=None,
                      form: PriorForm = "exact") -> jax.Array:
    """Elementwise negative log-likelihood of ``w`` under the symmetric mixture prior.

    Args:
      w: floating array, any shape.
      fmt: the format whose levels are the modes (per-tensor or per-channel).
      sigma: standard deviation shared by all modes; a positive scalar or an array
        broadcastable to ``w`` (e.g. per channel).
      mixing: optional mixing weights ``pi``, shape ``(fmt.num_levels,)``, summing to 1; equal
        weights ``1 / num_levels`` by default.
      form: ``"exact"`` (logsumexp over all modes; memory ``O(w.size * num_levels)``) or
        ``"nearest"`` (only the closest level; ``O(w.size)``, the sigma -> 0 limit).

    Returns:
      float32 array of ``w``'s shape. Sum it for the log-prior of a tensor.

    Example:
      >>> fmt = FixedPointFormat(bits=2, frac_bits=0)            # levels -1, 0, 1
      >>> nll = mixture_prior_nll(jnp.array([0.0, 0.375, 1.0]), fmt, sigma=0.5, form="nearest")
      >>> [round(v, 4) for v in nll.tolist()]      # on a level: log(3 * sigma * sqrt(2 pi))
      [1.3244, 1.6057, 1.3244]
      >>> float(nll[1] - nll[0])                   # (w - 0)^2 / (2 sigma^2)
      0.28125
      >>> jax.grad(lambda w: mixture_prior_nll(w, fmt, 0.5, form="nearest").sum())(
      ...     jnp.array([0.375])).tolist()   # (w - 0) / sigma^2
      [1.5]
    """
    check_sigma(sigma)
    w = jnp.asarray(w)
    if not jnp.issubdtype(w.dtype, jnp.floating):
        raise TypeError(f"w must be floating point, got dtype {w.dtype}")
    w = w.astype(jnp.float32)
    sigma = jnp.asarray(sigma, jnp.float32)
    log_pi = _log_mixing(fmt, mixing)
    step = fmt.step_for(w.ndim)
    log_norm = jnp.log(sigma) + _HALF_LOG_2PI

    if form == "nearest":
        # round() has zero derivative, so the gradient is (w - mu_*) / sigma^2 as it should be.
        code = jnp.clip(jnp.round(w / step), fmt.code_min, fmt.code_max)
        nll = (w - code * step) ** 2 / (2.0 * sigma**2) + log_norm
        if log_pi is None:
            return nll + math.log(fmt.num_levels)
        return nll - log_pi[(code - fmt.code_min).astype(jnp.int32)]
    if form == "exact":
        codes = jnp.arange(fmt.code_min, fmt.code_max + 1, dtype=jnp.float32)
        mu = codes * step[..., None]                       # broadcasts to (..., K)
        logits = -((w[..., None] - mu) ** 2) / (2.0 * sigma[..., None] ** 2)
        logits = logits + (log_pi if log_pi is not None else -math.log(fmt.num_levels))
        return -jax.nn.logsumexp(logits, axis=-1) + log_norm
    raise ValueError(f"form must be 'exact' or 'nearest', got {form!r}")


def mixture_prior_grad(w, fmt: FixedPointFormat, sigma, *, mixing=None,
                       form: PriorForm = "nearest") -> jax.Array:
    """Gradient of ``mixture_prior_nll(w, ...).sum()`` with respect to ``w``
    (float32, ``w``'s shape).

    For the nearest-mode form this is ``(w - mu_*) / sigma^2``: the pull toward the closest level.

    Example:
      >>> fmt = FixedPointFormat(bits=2, frac_bits=0)            # levels -1, 0, 1
      >>> mixture_prior_grad(jnp.array([0.375, -0.75, 2.0]), fmt, sigma=0.5).tolist()
      [1.5, 1.0, 4.0]
    """
    return jax.grad(lambda v: jnp.sum(mixture_prior_nll(v, fmt, sigma, mixing=mixing,
                                                        form=form)))(jnp.asarray(w, jnp.float32))
