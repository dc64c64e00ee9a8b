"""Choosing which leaves of a parameter pytree are quantized.

Works on any pytree: Flax linen variables (``{'params': {'Conv_0': {'kernel': ...}}}``), Flax NNX
``State`` (paths end in ``.value``), or plain dicts. The default keeps weight matrices and conv
kernels and never biases or batch-norm parameters.
"""

from __future__ import annotations

import re
from typing import Any, Callable, Union

import jax
import numpy as np

PyTree = Any
#: A mask: ``None`` (default rule), a regex matched against the ``/``-joined path, a callable
#: ``(path: str, leaf) -> bool``, or a pytree of bools shaped like the parameters.
Mask = Union[None, str, Callable[[str, Any], bool], PyTree]

#: Leaf names the default mask treats as weights.
WEIGHT_NAMES = frozenset({"kernel", "weight", "weights", "w"})
# NNX wraps values in Variables whose path ends with this attribute.
_WRAPPER_KEYS = frozenset({"value", "raw_value"})


def path_names(path) -> list[str]:
    """The names along a ``jax.tree_util`` key path, e.g. ``['params', 'Conv_0', 'kernel']``."""
    names = []
    for key in path:
        for attr in ("key", "name", "idx"):
            if hasattr(key, attr):
                names.append(str(getattr(key, attr)))
                break
        else:
            names.append(str(key))
    return names


def path_str(path) -> str:
    """``/``-joined path without NNX's trailing ``value``: ``'params/Conv_0/kernel'``."""
    names = path_names(path)
    while names and names[-1] in _WRAPPER_KEYS:
        names.pop()
    return "/".join(names)


def is_weight(path: str, leaf) -> bool:
    """The default rule: last path name in :data:`WEIGHT_NAMES` and at least 2-D."""
    return path.rsplit("/", 1)[-1] in WEIGHT_NAMES and np.ndim(leaf) >= 2


def resolve_mask(mask: Mask, params: PyTree) -> PyTree:
    """Evaluates ``mask`` on ``params``: a pytree of Python bools shaped like ``params``.

    Raises:
      ValueError: the mask selects no leaf (the message lists the available paths), or a
        bool pytree does not match the parameters' structure.

    Example:
      >>> resolve_mask(None, {'dense': {'kernel': jnp.ones((3, 2)), 'bias': jnp.ones(2)}})
      {'dense': {'bias': False, 'kernel': True}}
    """
    leaves_with_path, treedef = jax.tree_util.tree_flatten_with_path(params)
    if not leaves_with_path:
        raise ValueError("the parameter pytree has no leaves")
    paths = [path_str(p) for p, _ in leaves_with_path]
    leaves = [leaf for _, leaf in leaves_with_path]
    if mask is None:
        flags = [is_weight(p, leaf) for p, leaf in zip(paths, leaves)]
    elif isinstance(mask, str):
        pattern = re.compile(mask)
        flags = [bool(pattern.search(p)) for p in paths]
    elif callable(mask):
        flags = [bool(mask(p, leaf)) for p, leaf in zip(paths, leaves)]
    else:
        flat = jax.tree_util.tree_flatten_with_path(mask)[0]
        if len(flat) != len(leaves):
            raise ValueError(f"mask pytree has {len(flat)} leaves but the parameters have "
                             f"{len(leaves)}; give one bool per parameter leaf")
        # Same count is not enough: a bool must not silently land on another leaf.
        for (mask_path, _), path in zip(flat, paths):
            if path_str(mask_path) != path:
                raise ValueError(f"mask pytree does not match the parameters: its leaf "
                                 f"'{path_str(mask_path)}' is where the parameters have '{path}'")
        flags = [bool(f) for _, f in flat]
    if not any(flags):
        shown = ", ".join(paths[:12]) + (" ..." if len(paths) > 12 else "")
        raise ValueError(f"the quantization mask {mask!r} selects no parameter. Paths: {shown}")
    return jax.tree_util.tree_unflatten(treedef, flags)


def selected_paths(mask: Mask, params: PyTree) -> list[str]:
    """Paths of the leaves ``mask`` selects, in tree order."""
    flags = jax.tree_util.tree_leaves(resolve_mask(mask, params))
    paths = [path_str(p) for p, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
    return [p for p, f in zip(paths, flags) if f]
