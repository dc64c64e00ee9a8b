"""Model variables on disk (one msgpack file) and fitting loaded variables into a model's.

A variables file holds ``{"params": ..., "batch_stats": ...}`` as nested dicts of arrays:
what ``TrainConfig(init_from=FILE)`` starts a run from and
``TrainConfig(distill=DistillConfig(teacher=FILE))`` takes its teacher from (e.g. a thinned
network, :func:`symog_jax.pruning.thin_variables`).
"""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import serialization

from symog_jax.files import write_bytes_atomic


def save_variables(path: str | Path, variables: dict) -> Path:
    """Writes model variables (``{"params": ..., "batch_stats": ...}``) as one msgpack file.

    ``TrainConfig(init_from=path)`` then starts a run from them, e.g. a thinned network
    (:func:`symog_jax.pruning.thin_variables`) built with ``TrainConfig.widths``. The file is
    written to a temporary name and renamed, so it is never half written.

    Example:
      >>> import tempfile, numpy as np
      >>> p = save_variables(Path(tempfile.mkdtemp()) / "v.msgpack",
      ...                    {"params": {"fc": {"kernel": np.ones((2, 3), np.float32)}}})
      >>> load_variables(p)["params"]["fc"]["kernel"].shape
      (2, 3)
    """
    path = Path(path)
    tree = jax.tree_util.tree_map(np.asarray, jax.device_get(dict(variables)))
    write_bytes_atomic(path, serialization.msgpack_serialize(tree))
    return path


def load_variables(path: str | Path) -> dict:
    """The variables written by :func:`save_variables` (nested dicts of numpy arrays).

    Raises:
      FileNotFoundError: no such file. ValueError: not a variables file (one line).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"variables file {path} does not exist")
    try:
        tree = serialization.msgpack_restore(path.read_bytes())
    except Exception as e:  # noqa: BLE001 - msgpack raises several types
        raise ValueError(f"{path} is not a variables file ({type(e).__name__})") from None
    if not isinstance(tree, dict) or "params" not in tree:
        raise ValueError(f"{path} is not a variables file (no 'params')")
    return tree


def fit_variables(variables: dict, source: dict, where: str, option: str) -> dict:
    """``variables`` with each collection of ``source`` that it has, after checking that the
    shapes match (a one-line ValueError naming ``option`` and ``where`` if not).

    Example:
      >>> want = {"params": {"w": np.zeros((2, 3))}}
      >>> fit_variables(want, {"params": {"w": np.ones((2, 3))}}, "f", "init_from")[
      ...     "params"]["w"].sum()
      Array(6., dtype=float32)
      >>> fit_variables(want, {"params": {"w": np.ones(3)}}, "f", "init_from")  # doctest: +ELLIPSIS
      Traceback (most recent call last):
      ValueError: init_from: the params of f do not fit this model (another model, width(s) ...)
    """
    out = dict(variables)
    for name, tree in source.items():
        if name not in variables:
            continue
        want = jax.tree_util.tree_map(np.shape, variables[name])
        got = jax.tree_util.tree_map(np.shape, tree)
        if jax.tree_util.tree_structure(want) != jax.tree_util.tree_structure(got) or \
                jax.tree_util.tree_leaves(want) != jax.tree_util.tree_leaves(got):
            raise ValueError(f"{option}: the {name} of {where} do not fit this model (another "
                             "model, width(s) or data set)")
        out[name] = jax.tree_util.tree_map(jnp.asarray, tree)
    return out
