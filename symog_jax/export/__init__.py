"""Finalized (hard-quantized) networks: rounded parameters, integer codes, scales, reports."""

from symog_jax.export.integer import (ExportedNetwork, export_integer, export_run,
                                      load_integer)
from symog_jax.quantizers.hard_quantize import HardQuantized, LayerReport, hard_quantize

__all__ = ["ExportedNetwork", "HardQuantized", "LayerReport", "export_integer", "export_run",
           "hard_quantize", "load_integer"]
