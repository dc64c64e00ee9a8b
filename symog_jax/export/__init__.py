"""Finalized (hard-quantized) networks: rounded parameters, integer codes, scales, reports.

Everything here takes data (params, formats, batch statistics, activation formats, the input
normalisation); exporting a run directory is :func:`symog_jax.pipelines.export.export_run`.
"""

from symog_jax.export.integer import ExportedNetwork, export_integer, load_integer
from symog_jax.quantizers.hard_quantize import HardQuantized, LayerReport, hard_quantize

__all__ = ["ExportedNetwork", "HardQuantized", "LayerReport", "export_integer",
           "hard_quantize", "load_integer"]
