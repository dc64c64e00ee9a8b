"""Training methods, one module each, found by name in a registry.

>>> from symog_jax.methods import method_names
>>> method_names()
('float', 'ste', 'symog', 'syq', 'gdrq', 'hfp', 'lsq')
"""

from symog_jax.methods.base import (Method, MethodConfig, RunInfo, get_method_class, make_method,
                                    method_names, register)
# Importing a method module registers it.
from symog_jax.methods import float_training, ste, symog, syq  # noqa: F401,E402
from symog_jax.methods import gdrq  # noqa: F401,E402
from symog_jax.methods import hfp  # noqa: F401,E402
from symog_jax.methods import lsq  # noqa: F401,E402

__all__ = ["Method", "MethodConfig", "RunInfo", "get_method_class", "make_method",
           "method_names", "register"]
