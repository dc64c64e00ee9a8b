"""Finalized (hard-quantized) networks: rounded parameters, integer codes, scales, reports."""

from symog_jax.export.report import HardQuantized, LayerReport, hard_quantize

__all__ = ["HardQuantized", "LayerReport", "hard_quantize"]
