"""Host-side batching: deterministic, resumable epochs over in-memory numpy arrays."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

__all__ = ["num_batches", "epoch_permutation", "epoch_batches"]


def num_batches(n: int, batch_size: int, drop_remainder: bool = True) -> int:
    """Number of batches :func:`epoch_batches` yields for ``n`` examples.

    Example:
        >>> num_batches(10, 4), num_batches(10, 4, drop_remainder=False)
        (2, 3)
    """
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    if n < 0:
        raise ValueError(f"n must be non-negative, got {n}")
    return n // batch_size if drop_remainder else -(-n // batch_size)


def epoch_permutation(n: int, *, seed: int, epoch: int) -> np.ndarray:
    """The example order of one epoch: a permutation of ``range(n)`` fixed by (seed, epoch).

    Seeding a fresh generator with ``[seed, epoch]`` (rather than drawing from one
    long-lived generator) lets a run resumed at epoch ``k`` see exactly the same order.

    Example:
        >>> a = epoch_permutation(5, seed=0, epoch=1)
        >>> sorted(a.tolist()), a.tolist() == epoch_permutation(5, seed=0, epoch=1).tolist()
        ([0, 1, 2, 3, 4], True)
    """
    if seed < 0 or epoch < 0:
        raise ValueError(f"seed and epoch must be non-negative, got seed={seed}, epoch={epoch}")
    return np.random.default_rng([seed, epoch]).permutation(n)


def epoch_batches(
    images: np.ndarray,
    labels: np.ndarray,
    batch_size: int,
    *,
    seed: int,
    epoch: int,
    shuffle: bool = True,
    drop_remainder: bool = True,
    start_batch: int = 0,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Iterate over one epoch in batches, in an order fixed by ``(seed, epoch)``.

    Dropping the remainder (the default) keeps every batch the same shape, so a jitted
    train step compiles once.

    Args:
        images: ``(N, H, W, C)`` array (uint8 from the loaders).
        labels: ``(N,)`` integer labels.
        batch_size: examples per batch.
        seed: run seed (non-negative).
        epoch: epoch number (non-negative); each epoch has its own permutation.
        shuffle: if False, the examples come in stored order.
        drop_remainder: drop the last incomplete batch; if False it is yielded smaller.
        start_batch: skip this many batches (resuming in the middle of an epoch).

    Yields:
        ``(images[idx], labels[idx])``: ``(B, H, W, C)`` with the input dtype and ``(B,)``
        int32, with ``B == batch_size`` except possibly the last batch.

    Example:
        >>> x = np.zeros((10, 2, 2, 1), np.uint8); y = np.arange(10)
        >>> [b[1].shape for b in epoch_batches(x, y, 4, seed=0, epoch=0)]
        [(4,), (4,)]
    """
    if len(images) != len(labels):
        raise ValueError(f"{len(images)} images but {len(labels)} labels")
    n = len(labels)
    count = num_batches(n, batch_size, drop_remainder)
    order = epoch_permutation(n, seed=seed, epoch=epoch) if shuffle else np.arange(n)
    labels = np.asarray(labels, dtype=np.int32)
    for b in range(start_batch, count):
        idx = order[b * batch_size : (b + 1) * batch_size]
        yield images[idx], labels[idx]
