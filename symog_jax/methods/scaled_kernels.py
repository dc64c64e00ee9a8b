"""Shared pieces of the methods that keep learned scales per quantized kernel (SYQ, GDRQ).

Such a method stores its scales under ``trainable["method"]["scales"]`` in a tree shaped like
the selected kernels' paths, and quantizes each selected kernel with its own scales.
"""

from __future__ import annotations

from typing import Any, Callable

import jax

from symog_jax.methods.base import RunInfo, quantized_kernel_mask
from symog_jax.quantizers.masks import path_names, path_str


def selected_kernels(params, run: RunInfo, float_first_last: bool, method: str,
                     check: Callable[[str, Any], None] | None = None) -> dict[str, list[str]]:
    """``{path: names}`` of the model kernels a method quantizes (paths relative to ``params``).

    ``check(path, kernel)`` may refuse a kernel (e.g. GDRQ's groups must divide it).

    Raises:
      ValueError: no conv/dense kernel is selected.
    """
    mask = quantized_kernel_mask(run, float_first_last)
    out = {}
    for p, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        path = path_str(p)
        if mask("params/" + path, leaf):
            if check is not None:
                check(path, leaf)
            out[path] = path_names(p)
    if not out:
        raise ValueError(f"{method} found no conv/dense kernel to quantize")
    return out


def leaf_at(tree, names: list[str]) -> Any:
    """``tree[names[0]][names[1]]...``."""
    for name in names:
        tree = tree[name]
    return tree


def set_leaf(tree: dict, names: list[str], value) -> None:
    """Sets ``tree[names[0]]...[names[-1]] = value``, creating the dicts on the way."""
    for name in names[:-1]:
        tree = tree.setdefault(name, {})
    tree[names[-1]] = value


def map_with_scales(fn: Callable[[jax.Array, Any], jax.Array], params, scales,
                    selected: dict[str, list[str]]):
    """``params`` with each selected kernel ``w`` replaced by ``fn(w, its scales)``."""
    def visit(p, w):
        path = path_str(p)
        return fn(w, leaf_at(scales, selected[path])) if path in selected else w
    return jax.tree_util.tree_map_with_path(visit, params)


def formats_of_selected(make_format: Callable[[jax.Array, Any], Any], params, scales,
                        selected: dict[str, list[str]]):
    """A formats tree shaped like ``params``: ``make_format(w, its scales)`` at each selected
    kernel ``w``, ``None`` elsewhere (what :func:`~symog_jax.quantizers.hard_quantize.
    hard_quantize` takes)."""
    def visit(p, w):
        path = path_str(p)
        return make_format(w, leaf_at(scales, selected[path])) if path in selected else None
    return jax.tree_util.tree_map_with_path(visit, params)
