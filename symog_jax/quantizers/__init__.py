"""Quantizers for parameter pytrees: which leaves (masks), their fixed-point formats (policy),
learned group scales (SYQ) and activation quantization for Flax models."""
