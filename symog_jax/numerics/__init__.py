"""Numerics: fixed-point formats, rounding, step calibration and the SYMOG mixture prior.

Pure functions of arrays; nothing here knows about parameter pytrees or optimizers.
"""
