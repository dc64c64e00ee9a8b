"""symog_jax: low-bit fixed-point quantization for JAX/Flax as optax transforms.

Core pieces (each a small module):

* :mod:`symog_jax.numerics.formats` -- :class:`FixedPointFormat` (N bits, power-of-two step).
* :mod:`symog_jax.numerics.rounding` -- :func:`quantize`, :func:`quantize_ste`, :func:`to_codes`.
* :mod:`symog_jax.numerics.calibration` -- MSE-optimal step search, :func:`sqnr_db`.
* :mod:`symog_jax.numerics.priors` -- the SYMOG mixture prior :func:`mixture_prior_nll`.
* :mod:`symog_jax.quantizers.policy` -- per-leaf formats for parameter pytrees.
* :mod:`symog_jax.transforms` -- optax transforms, :func:`symog`.
* :mod:`symog_jax.numerics.levels` -- :class:`Levels`, the interface of every kind of levels.
* :mod:`symog_jax.quantizers.hard_quantize` -- :func:`hard_quantize` and its report.
"""

from symog_jax.numerics.calibration import (
    best_frac_bits,
    choose_format,
    quantization_sqnr_db,
    sqnr_db,
)
from symog_jax.numerics.formats import (
    MAX_BITS,
    FixedPointFormat,
    code_range,
    symmetric_format,
    twos_complement_format,
    unsigned_format,
)
from symog_jax.numerics.levels import Levels
import symog_jax.quantizers  # noqa: F401  (sj.quantizers.*; registers the kinds of levels)
from symog_jax.quantizers.hard_quantize import HardQuantized, LayerReport, hard_quantize
from symog_jax.quantizers.masks import resolve_mask, selected_paths
from symog_jax.quantizers.policy import (
    FormatPolicy,
    QuantizationState,
    find_formats,
    init_formats,
    map_quantized,
)
from symog_jax.numerics.priors import mixture_prior_grad, mixture_prior_nll
from symog_jax.numerics.rounding import from_codes, quantize, quantize_ste, to_codes
from symog_jax.transforms import (
    ClipState,
    MixturePriorState,
    SharedFormatsState,
    SymogState,
    add_mixture_prior_gradient,
    add_prior_gradients,
    annealing_schedule,
    annealing_schedule_for_run,
    clip_to_representable_range,
    default_pull,
    fake_quantize,
    project_updates,
    pull_to_levels,
    share_formats,
    symog,
    track_formats,
)

__version__ = "0.1.0"

__all__ = [
    "MAX_BITS", "FixedPointFormat", "FormatPolicy", "HardQuantized", "LayerReport", "Levels",
    "ClipState", "MixturePriorState", "annealing_schedule_for_run", "default_pull",
    "pull_to_levels", "SharedFormatsState", "share_formats", "QuantizationState", "SymogState",
    "add_mixture_prior_gradient",
    "add_prior_gradients", "annealing_schedule", "best_frac_bits", "choose_format",
    "clip_to_representable_range", "code_range", "fake_quantize", "find_formats", "from_codes",
    "hard_quantize", "init_formats", "map_quantized", "mixture_prior_grad", "mixture_prior_nll",
    "project_updates", "quantization_sqnr_db", "quantize", "quantize_ste", "resolve_mask",
    "selected_paths", "sqnr_db", "symmetric_format", "symog", "to_codes", "track_formats",
    "twos_complement_format",
    "unsigned_format",
]
