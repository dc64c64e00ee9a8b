"""Exact channel selection for requested rates, and physical removal (a thinner registry model).

:func:`select_channels` turns per-channel scores (the trained gates) into kept channels whose
parameter and MAC reductions reach the requested rates and exceed none of them by more than
``tolerance`` (1 percentage point) where the channel sizes allow: channels leave in order of
increasing score until every rate is reached, then removed channels are put back, best score
first, while every rate stays reached, to come down into the band.

:func:`thin_variables` slices the parameters and batch statistics of the kept channels;
``create_model(name, num_classes, widths=...)`` builds the thinner network, whose outputs equal
those of the masked network (:func:`masks_for`, :func:`~symog_jax.pruning.gates.apply_masks`).
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import jax.numpy as jnp
import numpy as np

from symog_jax.pruning.complexity import Architecture, Chan, complexity

__all__ = ["achieved_reductions", "masks_for", "select_channels", "thin_variables"]


def achieved_reductions(arch: Architecture, widths: Sequence[int]) -> tuple[float, float]:
    """``(parameter reduction, MAC reduction)`` of ``widths`` against :attr:`~Architecture.full`.

    Example:
      >>> from symog_jax.pruning import architecture
      >>> arch = architecture("lenet5", 10, (28, 28, 1))
      >>> [round(v, 3) for v in achieved_reductions(arch, (16, 32, 256))]
      [0.747, 0.723]
    """
    p0, m0 = complexity(arch, tuple(int(v) for v in arch.full))
    p, m = complexity(arch, tuple(int(v) for v in widths))
    return 1.0 - p / p0, 1.0 - m / m0


def select_channels(arch: Architecture, scores: Mapping[str, Any],
                    prune_params: float | None = None, prune_macs: float | None = None,
                    tolerance: float = 0.01) -> dict[str, np.ndarray]:
    """Kept channel indices per decision (sorted int arrays) for the requested rates.

    Args:
      arch: the architecture.
      scores: ``{decision: (channels,) float}``; lower scores leave first (e.g. the gates).
      prune_params, prune_macs: fractions to remove (at least one).
      tolerance: the band above each rate aimed for.

    Returns:
      ``{decision: int64 indices}``, at least one per decision (where it has any).

    Raises:
      ValueError: no rate given, or a rate out of reach (see
        :func:`~symog_jax.pruning.gates.check_budget`).

    Example:
      >>> from symog_jax.pruning import architecture
      >>> arch = architecture("lenet5", 10, (28, 28, 1))
      >>> rng = np.random.default_rng(0)
      >>> scores = {k: rng.random(n) for k, n in zip(arch.decisions, arch.full)}
      >>> keep = select_channels(arch, scores, prune_macs=0.5)
      >>> p, m = achieved_reductions(arch, [len(keep[k]) for k in arch.decisions])
      >>> 0.5 <= m <= 0.51
      True
    """
    from symog_jax.pruning.gates import check_budget
    check_budget(arch, prune_params, prune_macs)
    targets = [(i, r) for i, r in enumerate((prune_params, prune_macs)) if r is not None]
    full = [int(v) for v in arch.full]
    base = complexity(arch, tuple(full))
    n = list(full)
    kept = [np.ones(f, bool) for f in full]

    def reductions():
        c = complexity(arch, tuple(n))
        return [1.0 - c[i] / base[i] for i in range(2)]

    def met(red):
        return all(red[i] >= r for i, r in targets)

    order = sorted(((float(s), d, c) for d, name in enumerate(arch.decisions)
                    for c, s in enumerate(np.asarray(scores[name], np.float64).reshape(-1))),
                   key=lambda t: (t[0], t[1], t[2]))
    removed = []
    red = reductions()
    for s, d, c in order:
        if met(red):
            break
        if n[d] <= 1:
            continue
        kept[d][c] = False
        n[d] -= 1
        removed.append((s, d, c))
        red = reductions()
    if not met(red):                      # only reachable with the last channel of a decision
        raise ValueError("the requested rates cannot be reached with one channel per decision")
    # Come back down into the band: restore the best removed channels that keep every rate.
    for s, d, c in sorted(removed, key=lambda t: (-t[0], t[1], t[2])):
        if all(red[i] <= r + tolerance for i, r in targets):
            break
        n[d] += 1
        trial = reductions()
        if met(trial):
            kept[d][c] = True
            red = trial
        else:
            n[d] -= 1
    # Two rates, one far over its band, the other binding: trade channels between decisions,
    # restoring where the over-reached count grows most per unit of the binding one and
    # removing where it grows least, while both rates stay reached.
    if len(targets) == 2:
        for _ in range(4 * sum(full)):
            over = [i for i, r in targets if red[i] > r + tolerance]
            if not over:
                break
            i = over[0]
            j = 1 - i
            r_of = dict(targets).get

            def delta(d, sign):
                trial = list(n)
                trial[d] += sign
                c = complexity(arch, tuple(trial))
                c0 = complexity(arch, tuple(n))
                return abs(c[i] - c0[i]) / base[i], abs(c[j] - c0[j]) / base[j] + 1e-15
            before = (list(n), [k.copy() for k in kept], list(red))
            shrink = [d for d in range(len(full)) if n[d] > 1]
            if not shrink:
                break
            b = min(shrink, key=lambda d: delta(d, -1)[0] / delta(d, -1)[1])
            sb = np.asarray(scores[arch.decisions[b]], np.float64).reshape(-1)
            c = min(np.flatnonzero(kept[b]), key=lambda c: sb[c])
            kept[b][c] = False
            n[b] -= 1
            removed.append((float(sb[c]), b, int(c)))
            red = reductions()
            while True:      # restore where the over-reached count grows most per binding unit
                grow = [d for d in range(len(full)) if n[d] < full[d] and d != b]
                if not grow:
                    break
                a = max(grow, key=lambda d: delta(d, +1)[0] / delta(d, +1)[1])
                n[a] += 1
                trial = reductions()
                if not met(trial) or trial[i] < r_of(i):
                    n[a] -= 1
                    break
                best = max((t for t in removed if t[1] == a and not kept[a][t[2]]),
                           key=lambda t: t[0])
                kept[a][best[2]] = True
                red = trial
            if not met(red) or red[i] >= before[2][i]:
                n, kept, red = before
                break
    return {name: np.flatnonzero(k).astype(np.int64) for name, k in zip(arch.decisions, kept)}


def masks_for(arch: Architecture, keep: Mapping[str, Any]) -> dict[str, jnp.ndarray]:
    """0/1 float32 masks (for :func:`~symog_jax.pruning.gates.apply_masks`) of kept indices.

    Example:
      >>> from symog_jax.pruning import architecture
      >>> arch = architecture("lenet5", 10, (28, 28, 1), widths=(3, 1, 1))
      >>> masks_for(arch, {"conv1": [0, 2], "conv2": [0], "fc1": [0]})["conv1"].tolist()
      [1.0, 0.0, 1.0]
    """
    out = {}
    for name, f in zip(arch.decisions, arch.full):
        m = np.zeros(f, np.float32)
        m[np.asarray(keep[name], np.int64)] = 1.0
        out[name] = jnp.asarray(m)
    return out


def _index(arch: Architecture, chan: Chan, keep: Mapping[str, Any]) -> np.ndarray:
    parts = []
    for d, start, size in arch.chan_offsets(chan):
        if d is None:
            parts.append(start + np.arange(size))
        else:
            parts.append(start + np.asarray(keep[arch.decisions[d]], np.int64))
    return np.concatenate(parts).astype(np.int64)


def _node(tree: dict, path: str) -> dict | None:
    for key in path.split("/"):
        if not isinstance(tree, Mapping) or key not in tree:
            return None
        tree = tree[key]
    return tree


def thin_variables(arch: Architecture, variables: Mapping[str, Any],
                   keep: Mapping[str, Any]) -> tuple[tuple[int, ...], dict]:
    """``(widths, variables)`` of the network without the removed channels.

    Args:
      arch: the architecture of ``variables`` (full widths).
      variables: ``{"params": ..., ["batch_stats": ...]}`` of the full network.
      keep: ``{decision: kept indices}`` (:func:`select_channels`).

    Returns:
      The kept channels per decision and new variables (numpy arrays) for
      ``arch.model(widths)``; every kernel, bias, BN scale/bias/mean/var is sliced along
      its channel axes.

    Example:
      >>> from symog_jax.pruning import architecture
      >>> from symog_jax.models import init_variables
      >>> arch = architecture("lenet5", 10, (28, 28, 1), widths=(3, 2, 4))
      >>> v = init_variables(arch.model(), 0, (28, 28, 1))
      >>> widths, thin = thin_variables(arch, v, {"conv1": [0, 2], "conv2": [1], "fc1": [3]})
      >>> widths, thin["params"]["fc1"]["kernel"].shape
      ((2, 1, 1), (16, 1))
    """
    out = {k: _copy_np(v) for k, v in variables.items()}
    params = out["params"]
    stats = out.get("batch_stats", {})
    for layer in arch.layers:
        node = _node(params, layer.path)
        i_in, i_out = _index(arch, layer.cin, keep), _index(arch, layer.cout, keep)
        k = node["kernel"]
        if layer.kernel is None and layer.in_positions > 1:
            p = layer.in_positions
            k = k.reshape(p, -1, k.shape[-1])[:, i_in, :].reshape(p * len(i_in), k.shape[-1])
        else:
            k = np.take(k, i_in, axis=-2)
        node["kernel"] = np.take(k, i_out, axis=-1)
        if "bias" in node:
            node["bias"] = node["bias"][i_out]
    for norm in arch.norms:
        idx = _index(arch, norm.chan, keep)
        for tree, leaves in ((params, ("scale", "bias")), (stats, ("mean", "var"))):
            node = _node(tree, norm.path)
            if node is None:
                continue
            for leaf in leaves:
                if leaf in node:
                    node[leaf] = node[leaf][idx]
    widths = tuple(len(np.asarray(keep[name])) for name in arch.decisions)
    return widths, out


def _copy_np(tree):
    if isinstance(tree, Mapping):
        return {k: _copy_np(v) for k, v in tree.items()}
    return np.asarray(tree)
