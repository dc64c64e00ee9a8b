"""Per-channel gates: masks on the parameters, kept counts, the complexity budget loss.

Each decision of an :class:`~symog_jax.pruning.complexity.Architecture` has one gate per
channel, a float32 in [0, 1]. A channel is kept while its gate is above 0.5 (the channel with
the largest gate of a decision always is: at least one channel per decision). The mask acts on
the parameters only, where it removes the channel exactly:

* a channel produced by a conv/dense followed by batch norm: the BN's ``scale`` and ``bias``
  (BN would undo a scaling of the kernel), so the channel is ``act(0) = 0`` after it;
* a channel produced by a conv/dense without BN (``Layer.gate_out``): the kernel's output
  column and the bias;
* a channel read by a batch norm over a concatenation (DenseNet's pre-activation BNs): that
  BN's ``scale`` and ``bias`` at the channel's position, so no constant ``act(beta)`` leaks
  through.

A masked-out channel is then exactly 0 everywhere it is read, so removing it
(:mod:`~symog_jax.pruning.thin`) leaves the outputs unchanged. For training, the mask is
straight-through: the forward pass uses the 0/1 mask, the gradient reaches the gates as if
the mask were the gate. The kept count per decision (the sum of the straight-through mask:
its value the current hard count) feeds the complexity model, and :func:`budget_loss`
penalises the relative parameter/MAC excess over the targets.
"""

from __future__ import annotations

from typing import Any, Mapping

import jax
import jax.numpy as jnp

from symog_jax.pruning.complexity import Architecture, Chan, min_widths, relative_complexity

__all__ = ["apply_masks", "budget_loss", "check_budget", "hard_masks", "init_gates",
           "kept_counts", "magnitude_gates", "ste_masks"]

#: Gate value above which a channel is kept.
THRESHOLD = 0.5


def init_gates(arch: Architecture, value: float = 1.0) -> dict[str, jax.Array]:
    """``{decision name: float32 (channels,)}`` gates, all ``value``.

    Example:
      >>> from symog_jax.pruning import architecture
      >>> g = init_gates(architecture("lenet5", 10, (28, 28, 1), width=0.25))
      >>> {k: v.shape for k, v in g.items()}
      {'conv1': (8,), 'conv2': (16,), 'fc1': (128,)}
    """
    return {name: jnp.full((full,), value, jnp.float32)
            for name, full in zip(arch.decisions, arch.full)}


def magnitude_gates(arch: Architecture, params: Any, high: float = 1.0,
                    low: float = 0.55) -> dict[str, jax.Array]:
    """Gates spread by rank of each channel's L1 weight norm within its decision.

    The channel with the smallest norm (summed over every conv/dense writing the channel)
    starts at ``low`` (just above the 0.5 threshold), the largest at ``high``, linearly in
    rank: under the same budget pressure the channels of a decision then leave one after
    the other, so the budget is met without removing a whole decision at once.

    Example:
      >>> from symog_jax.pruning import architecture
      >>> arch = architecture("lenet5", 10, (28, 28, 1), widths=(3, 1, 1))
      >>> from symog_jax.models import init_variables
      >>> p = init_variables(arch.model(), 0, (28, 28, 1))["params"]
      >>> p["conv1"]["kernel"] = p["conv1"]["kernel"] * jnp.array([1.0, 0.1, 5.0])
      >>> [round(v, 3) for v in magnitude_gates(arch, p)["conv1"].tolist()]
      [0.775, 0.55, 1.0]
    """
    norms = [jnp.zeros((f,), jnp.float32) for f in arch.full]
    for layer in arch.layers:
        node = params
        for key in layer.path.split("/"):
            node = node[key]
        k = jnp.abs(jnp.asarray(node["kernel"], jnp.float32))
        per_out = k.reshape(-1, k.shape[-1]).sum(axis=0)
        for d, start, size in arch.chan_offsets(layer.cout):
            if d is not None:
                norms[d] = norms[d] + per_out[start:start + size]
    out = {}
    for name, norm in zip(arch.decisions, norms):
        n = norm.shape[0]
        rank = jnp.argsort(jnp.argsort(norm)).astype(jnp.float32)
        frac = rank / max(n - 1, 1) if n > 1 else jnp.ones((n,), jnp.float32)
        out[name] = (low + (high - low) * frac).astype(jnp.float32)
    return out


def hard_masks(arch: Architecture, gates: Mapping[str, jax.Array],
               min_keep: float = 0.0) -> dict[str, jax.Array]:
    """0/1 float32 masks: gate > 0.5, plus the ``k`` largest gates of each decision (first
    index on ties), ``k = max(1, ceil(min_keep * channels))`` (:func:`min_widths`).

    ``min_keep`` is a floor on every decision's kept fraction: the budget can then not empty
    a layer whose channels are cheap to remove but which the network needs (the first convs).

    Example:
      >>> from symog_jax.pruning import architecture
      >>> arch = architecture("lenet5", 10, (28, 28, 1), widths=(2, 2, 3))
      >>> m = hard_masks(arch, {"conv1": jnp.array([0.9, 0.2]), "conv2": jnp.array([0.1, 0.3]),
      ...                       "fc1": jnp.array([0.6, 0.7, 0.4])})
      >>> [m[k].tolist() for k in arch.decisions]
      [[1.0, 0.0], [0.0, 1.0], [1.0, 1.0, 0.0]]
      >>> m = hard_masks(arch, {"conv1": jnp.array([0.9, 0.2]), "conv2": jnp.array([0.1, 0.3]),
      ...                       "fc1": jnp.array([0.2, 0.1, 0.4])}, min_keep=0.5)
      >>> [m[k].tolist() for k in arch.decisions]
      [[1.0, 0.0], [0.0, 1.0], [1.0, 0.0, 1.0]]
    """
    floors = min_widths(arch, min_keep)
    out = {}
    for name, k in zip(arch.decisions, floors):
        g = gates[name]
        if g.shape[0] == 0:
            out[name] = g
            continue
        # rank 0 = largest gate; stable, so ties go to the first index
        rank = jnp.argsort(jnp.argsort(-g, stable=True), stable=True)
        out[name] = ((g > THRESHOLD) | (rank < k)).astype(jnp.float32)
    return out


def ste_masks(arch: Architecture, gates: Mapping[str, jax.Array],
              min_keep: float = 0.0) -> dict[str, jax.Array]:
    """The hard masks (:func:`hard_masks`, same ``min_keep``) in value, the identity in
    gradient (straight-through to the gates).

    Example:
      >>> from symog_jax.pruning import architecture
      >>> arch = architecture("lenet5", 10, (28, 28, 1), widths=(2, 1, 1))
      >>> gates = {"conv1": jnp.array([0.9, 0.2]), "conv2": jnp.ones(1), "fc1": jnp.ones(1)}
      >>> jax.grad(lambda g: ste_masks(arch, g)["conv1"].sum())(gates)["conv1"].tolist()
      [1.0, 1.0]
    """
    hard = hard_masks(arch, gates, min_keep)
    return {k: gates[k] + jax.lax.stop_gradient(hard[k] - gates[k]) for k in arch.decisions}


def kept_counts(arch: Architecture, masks: Mapping[str, jax.Array]) -> jax.Array:
    """float32 ``(num_decisions,)``: the sum of each decision's mask (kept channels).

    Example:
      >>> from symog_jax.pruning import architecture
      >>> arch = architecture("lenet5", 10, (28, 28, 1), width=0.25)
      >>> kept_counts(arch, init_gates(arch)).tolist()
      [8.0, 16.0, 128.0]
    """
    return jnp.stack([jnp.sum(masks[k]) for k in arch.decisions])


def chan_mask(arch: Architecture, chan: Chan, masks: Mapping[str, jax.Array]) -> jax.Array:
    """The mask along a channel axis: the decisions' masks and ones for fixed parts.

    Example:
      >>> from symog_jax.pruning import architecture
      >>> arch = architecture("lenet5", 10, (28, 28, 1), widths=(2, 1, 1))
      >>> chan_mask(arch, ((0, 0), (None, 2)), {"conv1": jnp.array([1.0, 0.0])}).tolist()
      [1.0, 0.0, 1.0, 1.0]
    """
    parts = [masks[arch.decisions[d]] if d is not None else jnp.ones((fixed,), jnp.float32)
             for d, fixed in chan]
    return jnp.concatenate(parts) if len(parts) > 1 else parts[0]


def _scale(tree: dict, path: str, leaf: str, factor: jax.Array) -> None:
    node = tree
    for key in path.split("/"):
        node = node[key]
    value = node.get(leaf)
    if value is not None:
        node[leaf] = value * factor.astype(value.dtype)


def _copy(tree):
    return {k: _copy(v) for k, v in tree.items()} if isinstance(tree, Mapping) else tree


def apply_masks(arch: Architecture, params: Any, masks: Mapping[str, jax.Array]) -> Any:
    """``params`` (a linen ``params`` dict) with every gated site multiplied by its mask.

    Works on integer code trees too (``None`` leaves, e.g. unquantized biases, stay ``None``).

    Example:
      >>> from symog_jax.pruning import architecture
      >>> from symog_jax.models import init_variables
      >>> arch = architecture("lenet5", 10, (28, 28, 1), widths=(2, 1, 1))
      >>> p = init_variables(arch.model(), 0, (28, 28, 1))["params"]
      >>> q = apply_masks(arch, p, {"conv1": jnp.array([1.0, 0.0]), "conv2": jnp.ones(1),
      ...                           "fc1": jnp.ones(1)})
      >>> float(abs(q["conv1"]["kernel"][..., 1]).max()), q["conv2"] is not p["conv2"]
      (0.0, True)
    """
    out = _copy(params)
    for layer in arch.layers:
        if layer.gate_out:
            m = chan_mask(arch, layer.cout, masks)
            _scale(out, layer.path, "kernel", m)
            _scale(out, layer.path, "bias", m)
    for norm in arch.norms:
        if any(d is not None for d, _ in norm.chan):
            m = chan_mask(arch, norm.chan, masks)
            _scale(out, norm.path, "scale", m)
            _scale(out, norm.path, "bias", m)
    return out


def budget_loss(arch: Architecture, counts: jax.Array, prune_params: float | None = None,
                prune_macs: float | None = None, two_sided: bool = False) -> jax.Array:
    """``sum_t relu(C_t(counts) / C_t(full) - (1 - rate_t))`` over the requested targets
    (``two_sided``: ``|C_t / C_t(full) - (1 - rate_t)|``, the gap either way).

    One-sided, it is zero once every requested reduction is reached; two-sided, pruning more
    than asked is penalised too, so the gates settle at the target instead of overshooting it.
    Its gradient (through the counts) is each decision's marginal relative cost, the same
    scale for parameters and MACs.

    Example:
      >>> from symog_jax.pruning import architecture
      >>> arch = architecture("lenet5", 10, (28, 28, 1), width=0.25)
      >>> full = jnp.asarray(arch.full, jnp.float32)
      >>> round(float(budget_loss(arch, full, prune_params=0.3, prune_macs=0.5)), 6)
      0.8
      >>> half = jnp.asarray([max(w // 4, 1) for w in arch.full], jnp.float32)
      >>> [round(float(budget_loss(arch, half, prune_macs=0.5, two_sided=t)), 4)
      ...  for t in (False, True)]                     # MACs -88 % where -50 % was asked
      [0.0, 0.3758]
    """
    rel_p, rel_m = relative_complexity(arch, counts)
    gap = jnp.abs if two_sided else jax.nn.relu
    loss = jnp.zeros((), jnp.float32)
    if prune_params is not None:
        loss = loss + gap(rel_p - (1.0 - prune_params))
    if prune_macs is not None:
        loss = loss + gap(rel_m - (1.0 - prune_macs))
    return loss


def check_budget(arch: Architecture, prune_params: float | None = None,
                 prune_macs: float | None = None, min_keep: float = 0.0) -> None:
    """Raise a one-line ``ValueError`` for rates that are not in (0, 1) or out of reach.

    Out of reach: even the smallest widths (:func:`min_widths`: one channel per decision, or
    ``ceil(min_keep * channels)``) keep more than ``1 - rate`` of the count.

    Example:
      >>> from symog_jax.pruning import architecture
      >>> check_budget(architecture("resnet20", 10), prune_macs=0.999)
      Traceback (most recent call last):
      ...
      ValueError: prune_macs=0.999 is out of reach for resnet20: one channel per decision still keeps 0.29% of its MACs (largest possible rate 0.9971)
    """  # noqa: E501
    if prune_params is None and prune_macs is None:
        raise ValueError("give prune_params and/or prune_macs (fractions to remove, in (0, 1))")
    lo_p, lo_m = relative_complexity(arch, min_widths(arch, min_keep))
    floor_text = (f"keeping {100 * min_keep:g}% of the channels of every decision" if min_keep
                  else "one channel per decision")
    for what, rate, floor in (("params", prune_params, lo_p), ("macs", prune_macs, lo_m)):
        if rate is None:
            continue
        if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 < rate < 1:
            raise ValueError(f"prune_{what} must be a fraction in (0, 1), got {rate!r}")
        if 1 - rate < floor:
            label = "parameters" if what == "params" else "MACs"
            raise ValueError(f"prune_{what}={rate} is out of reach for {arch.name}: {floor_text} "
                             f"still keeps {100 * floor:.2f}% of its {label} "
                             f"(largest possible rate {1 - floor:.4f})")
