"""Exact channel selection for requested rates, and physical removal (a thinner registry model).

:func:`select_channels` turns per-channel scores (the trained gates) into kept channels whose
parameter and MAC reductions reach the requested rates and exceed none of them by more than
``tolerance`` (1 percentage point) where any selection does: channels leave in order of
increasing score until every rate is reached, then a search over the kept counts per decision
(the counts are quadratic in them) trades channels between decisions into the band of every
rate, preferring low-score channels; where it finds none a one-line warning says so.

:func:`thin_variables` slices the parameters and batch statistics of the kept channels;
``create_model(name, num_classes, widths=...)`` builds the thinner network, whose outputs equal
those of the masked network (:func:`masks_for`, :func:`~symog_jax.pruning.gates.apply_masks`).
"""

from __future__ import annotations

import warnings
from typing import Any, Mapping, Sequence

import jax.numpy as jnp
import numpy as np

from symog_jax.pruning.complexity import Architecture, Chan, complexity, min_widths
from symog_jax.pruning.gates import check_budget

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


def _quadratic(arch: Architecture, which: int) -> tuple[np.ndarray, np.ndarray, float]:
    """``(Q, b, c)`` float64 with ``complexity(arch, n)[which] == n @ Q @ n + b @ n + c``.

    ``Q`` is ``(D, D)`` symmetric, ``b`` ``(D,)``, for ``D = len(arch.decisions)``; every entry
    is an integer or a half, so the value is exact in float64 for integer ``n``.
    """
    dims = len(arch.decisions)
    q, b, c = np.zeros((dims, dims)), np.zeros(dims), 0.0

    def affine(chan):
        u, u0 = np.zeros(dims), 0.0
        for d, fixed in chan:
            if d is None:
                u0 += fixed
            else:
                u[d] += 1.0
        return u, u0

    for layer in arch.layers:
        (u, u0), (v, v0) = affine(layer.cin), affine(layer.cout)
        k = 1 if layer.kernel is None else layer.kernel[0] * layer.kernel[1]
        a = float(k * layer.in_positions) * (layer.out_positions if which else 1)
        q += a * 0.5 * (np.outer(u, v) + np.outer(v, u))
        b += a * (u * v0 + v * u0)
        c += a * u0 * v0
        if which == 0 and layer.bias:
            b += v
            c += v0
    if which == 0:
        for norm in arch.norms:
            w, w0 = affine(norm.chan)
            b += 2 * w
            c += 2 * w0
    return q, b, c


#: Channel steps per decision tried in one move of the search.
_STEPS = np.array([0, 1, 2, 4, 8, 16])
#: First moves tried by the two-move lookahead where no single move helps.
_LOOKAHEAD = 64
#: Largest number of count vectors :func:`select_channels` enumerates when its search fails.
EXHAUSTIVE_LIMIT = 2_000_000


def select_channels(arch: Architecture, scores: Mapping[str, Any],
                    prune_params: float | None = None, prune_macs: float | None = None,
                    tolerance: float = 0.01, min_keep: float = 0.0) -> dict[str, np.ndarray]:
    """Kept channel indices per decision (sorted int arrays) for the requested rates.

    Within a decision channels leave in order of increasing score; what is chosen is how many
    leave from each decision, ``n`` (kept counts). The parameter and MAC counts are quadratic
    in ``n`` (:func:`_quadratic`), so every candidate move is evaluated in closed form:

    1. channels leave in global score order until every rate is reached;
    2. a descent on the distance of the reductions to the band ``[rate, rate + tolerance]``
       (summed over the rates asked) over moves "restore ``s`` channels of decision ``a``,
       remove ``t`` of decision ``b``" (``s, t`` in 0, 1, 2, 4, 8, 16: decisions that remove
       relatively more parameters are traded against those that remove more MACs), ties
       broken by the scores;
    3. inside the band, such moves are taken while they lower the sum of the removed scores.

    If the descent stops outside the band and there are at most :data:`EXHAUSTIVE_LIMIT`
    count vectors, all of them are tried (the best-scoring one in the band wins). If no
    selection in the band is found, a one-line ``UserWarning`` names the rates reached and
    the smallest step one channel makes, and the selection reaching every rate with the least
    overshoot is returned.

    Args:
      arch: the architecture.
      scores: ``{decision: (channels,) float}``; lower scores leave first (e.g. the gates).
      prune_params, prune_macs: fractions to remove (at least one).
      tolerance: the band above each rate aimed for (fraction, 0.01 = 1 percentage point).
      min_keep: every decision keeps at least this fraction of its channels
        (:func:`~symog_jax.pruning.complexity.min_widths`; 0: at least one).

    Returns:
      ``{decision: int64 indices}``, at least one per decision (where it has any); the
      reductions are at least the rates, and at most ``rate + tolerance`` unless warned.

    Raises:
      ValueError: no rate given, or a rate out of reach (see
        :func:`~symog_jax.pruning.gates.check_budget`).

    Example:
      >>> from symog_jax.pruning import architecture
      >>> arch = architecture("lenet5", 10, (28, 28, 1))
      >>> rng = np.random.default_rng(0)
      >>> scores = {k: rng.random(n) for k, n in zip(arch.decisions, arch.full)}
      >>> keep = select_channels(arch, scores, prune_params=0.4, prune_macs=0.45)
      >>> p, m = achieved_reductions(arch, [len(keep[k]) for k in arch.decisions])
      >>> 0.4 <= p <= 0.41 and 0.45 <= m <= 0.46
      True
    """
    check_budget(arch, prune_params, prune_macs, min_keep)
    if not 0 <= tolerance < 1:
        raise ValueError(f"tolerance must be a fraction in [0, 1), got {tolerance!r}")
    targets = [(i, float(r)) for i, r in enumerate((prune_params, prune_macs)) if r is not None]
    full = np.array([int(v) for v in arch.full], np.int64)
    lo_n = np.array(min_widths(arch, min_keep), np.int64)
    dims = len(full)
    forms = [_quadratic(arch, i) for i, _ in targets]
    base = [float(n0 @ q @ n0 + b @ n0 + c) for (q, b, c), n0 in
            zip(forms, [full.astype(np.float64)] * len(forms))]
    hi = np.array([1.0 - r for _, r in targets])             # kept fraction: at most 1 - rate
    lo = hi - tolerance
    # per decision: removal order (lowest score first, then lowest index) and score prefix sums
    orders, width = [], int(full.max()) + int(_STEPS.max()) + 1
    prefix = np.full((dims, width), np.inf)
    for d, name in enumerate(arch.decisions):
        s = np.asarray(scores[name], np.float64).reshape(-1)
        if s.shape[0] != full[d]:
            raise ValueError(f"scores[{name!r}] has {s.shape[0]} entries, the decision "
                             f"{full[d]} channels")
        o = np.argsort(s, kind="stable")
        orders.append(o)
        prefix[d, :full[d] + 1] = np.concatenate([[0.0], np.cumsum(s[o])])

    def fractions(n):
        nf = np.asarray(n, np.float64)
        return np.array([(nf @ q @ nf + b @ nf + c) / p0 for (q, b, c), p0 in zip(forms, base)])

    def violation(x):
        return np.maximum(x - hi, 0).sum(-1) + np.maximum(lo - x, 0).sum(-1)

    def cost(n):
        return float(prefix[np.arange(dims), full - n].sum())

    # 1. global score order until every rate is reached
    ranked = sorted(((float(s), d, c) for d, o in enumerate(orders)
                     for c, s in enumerate(prefix[d, 1:full[d] + 1] - prefix[d, :full[d]])),
                    key=lambda t: (t[0], t[1], t[2]))
    n = full.copy()
    for _, d, _ in ranked:
        if np.all(fractions(n) <= hi):
            break
        if n[d] > lo_n[d]:
            n[d] -= 1

    # moves (+s on a, -t on b), evaluated for all a != b and steps at once
    st = np.array([(s, t) for s in _STEPS for t in _STEPS if s or t], np.float64)
    grid_s, grid_t = st[:, 0][:, None, None], st[:, 1][:, None, None]
    off = ~np.eye(dims, dtype=bool)[None]

    def moves(n, steps_mask):
        nf = n.astype(np.float64)
        new_x = []
        for (q, b, c), p0 in zip(forms, base):
            g = 2 * q @ nf + b
            dq = np.diag(q)
            delta = (grid_s * g[None, :, None] - grid_t * g[None, None, :]
                     + grid_s ** 2 * dq[None, :, None] + grid_t ** 2 * dq[None, None, :]
                     - 2 * grid_s * grid_t * q[None])
            new_x.append((nf @ q @ nf + b @ nf + c + delta) / p0)
        x = np.stack(new_x, -1)                                  # (steps, a, b, targets)
        r = full - n
        sa, tb = st[:, 0].astype(np.int64), st[:, 1].astype(np.int64)
        ok = ((n[None, :, None] + sa[:, None, None] <= full[None, :, None]) &
              (n[None, None, :] - tb[:, None, None] >= lo_n[None, None, :]) & off &
              steps_mask[:, None, None])
        ra = np.clip(r[None, :] - sa[:, None], 0, None)
        rb = np.clip(r[None, :] + tb[:, None], 0, width - 1)
        rows = np.arange(dims)[None]
        dcost = (prefix[rows, ra] - prefix[rows, r[None]])[:, :, None] + \
                (prefix[rows, rb] - prefix[rows, r[None]])[:, None, :]
        dcost = np.where(ok, np.nan_to_num(dcost, nan=np.inf, posinf=np.inf), np.inf)
        return x, ok, dcost

    def apply(n, k):
        j, a, b = np.unravel_index(k, (len(st), dims, dims))
        n = n.copy()
        n[a] += int(st[j, 0])
        n[b] -= int(st[j, 1])
        return n

    every = np.ones(len(st), bool)
    unit = np.array([max(s, t) <= 1 for s, t in st])
    best_met = (n.copy(), float(np.sum(hi - fractions(n))))
    # 2. descent into the band
    for _ in range(20 * int(full.sum()) + 100):
        x0 = fractions(n)
        v0 = violation(x0)
        if v0 <= 0:
            break
        x, ok, dcost = moves(n, every)
        v = np.where(ok, violation(x), np.inf)
        best = v.min()
        if best < v0 - 1e-15:
            k = int(np.argmin(np.where(v <= best + 1e-12, dcost, np.inf)))
            if not np.isfinite(dcost.reshape(-1)[k]):
                k = int(np.argmin(v))
            n = apply(n, k)
        else:       # stuck: two moves, the first among the _LOOKAHEAD least violating
            found = None
            for k in np.argsort(v, axis=None)[:_LOOKAHEAD]:
                if not np.isfinite(v.reshape(-1)[k]):
                    break
                m = apply(n, k)
                x2, ok2, _ = moves(m, every)
                v2 = np.where(ok2, violation(x2), np.inf)
                if v2.min() < v0 - 1e-15:
                    found = apply(m, int(np.argmin(v2)))
                    break
            if found is None:
                break
            n = found
        xn = fractions(n)
        if np.all(xn <= hi) and np.sum(hi - xn) < best_met[1]:
            best_met = (n.copy(), float(np.sum(hi - xn)))
    exhaustive = False
    if violation(fractions(n)) > 0 and np.prod(full - lo_n + 1, dtype=np.float64) <= \
            EXHAUSTIVE_LIMIT:
        exhaustive = True
        grid = np.stack(np.meshgrid(*[np.arange(lo_n[d], full[d] + 1) for d in range(dims)],
                                    indexing="ij"), -1).reshape(-1, dims)
        gf = grid.astype(np.float64)
        xs = np.stack([(np.einsum("kd,de,ke->k", gf, q, gf) + gf @ b + c) / p0
                       for (q, b, c), p0 in zip(forms, base)], -1)
        costs = prefix[np.arange(dims)[None], full[None] - grid].sum(-1)
        inside = violation(xs) <= 0
        if inside.any():
            n = grid[np.flatnonzero(inside)[np.argmin(costs[inside])]]
        else:
            met = np.all(xs <= hi, -1)
            over = np.where(met, np.sum(hi - xs, -1), np.inf)
            best_met = (grid[int(np.argmin(over))], float(over.min()))
    if violation(fractions(n)) <= 0:
        # 3. inside the band, trade channels while the removed scores' sum falls
        for _ in range(20 * int(full.sum()) + 100):
            x, ok, dcost = moves(n, unit)
            gain = np.where(ok & (violation(x) <= 0), dcost, np.inf)
            k = int(np.argmin(gain))
            if not gain.reshape(-1)[k] < -1e-12:
                break
            n = apply(n, k)
    else:
        n = best_met[0]
        x = fractions(n)
        steps = []
        for i in range(len(targets)):
            one = []
            for d in range(dims):
                for sgn in (-1, 1):
                    m = n.copy()
                    m[d] += sgn
                    if lo_n[d] <= m[d] <= full[d] and m[d] != n[d]:
                        one.append(abs(fractions(m)[i] - x[i]))
            steps.append(100 * min(one) if one else 0.0)
        asked = ", ".join(f"{('prune_params', 'prune_macs')[i]}={r}" for i, r in targets)
        reached = ", ".join(f"{1 - v:.4f}" for v in x)
        which = "exists" if exhaustive else "was found"
        warnings.warn(f"select_channels: no selection of {arch.name} channels within "
                      f"{100 * tolerance:g} pp of {asked} {which}; reached {reached}; one "
                      f"channel changes the reductions by at least "
                      f"{' / '.join(f'{s:.2f}' for s in steps)} pp here", stacklevel=2)
    return {name: np.sort(orders[d][full[d] - n[d]:]).astype(np.int64)
            for d, name in enumerate(arch.decisions)}


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
