"""One config object per experiment run."""

from __future__ import annotations

import dataclasses
import json
from typing import Literal

METHODS = ("float", "symog", "ste", "ptq")
Method = Literal["float", "symog", "ste", "ptq"]
OPTIMIZERS = ("sgd", "adam")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a training run (saved next to its checkpoints).

    Method semantics:
      * ``float``: plain float training; each epoch also reports post-training quantization.
      * ``symog``: SYMOG soft quantization (prior gradient + clipping, annealed), then rounding.
      * ``ste``: weights fake-quantized in the forward pass with straight-through rounding.
      * ``ptq``: float training, then rounding to MSE-optimal formats.
    """

    dataset: str = "cifar10"
    model: str = "vgg7"
    method: Method = "symog"
    bits: int = 2
    epochs: int = 100
    batch_size: int = 128
    optimizer: str = "sgd"
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    #: Apply weight decay to quantized kernels under ``symog`` too (off: it fights the prior).
    decay_quantized: bool = False
    width: float = 1.0
    seed: int = 0
    per_channel: bool = False
    #: Epochs of float training before the prior is switched on (formats re-chosen then).
    warmup_epochs: float = 0.0
    #: Where the SYMOG prior acts. ``decoupled``: after the optimizer, each step removes a
    #: fraction ``strength`` of every quantized weight's distance to its nearest level.
    #: ``coupled``: its gradient ``strength * (w - level)`` is added to the loss gradient
    #: before the optimizer (the paper's loss term, sigma = 1 absorbed into the strength).
    prior_placement: str = "decoupled"
    #: Prior strength, ramped geometrically from ``strength_start`` to ``strength_end`` after
    #: the warm-up (see ``prior_placement`` for its unit).
    strength_start: float = 1e-4
    strength_end: float = 0.1
    #: Fraction of the post-warm-up steps over which the strength ramps (then held at the end).
    anneal_fraction: float = 0.9
    #: STE formats are re-chosen from the weights every this many epochs (0: never).
    ste_reestimate_epochs: int = 1
    augment: bool = True
    data_source: str = "auto"
    data_dir: str | None = None
    allow_bundled: bool = False
    workdir: str = "runs/default"
    keep_checkpoints: int = 3
    #: Stop after this many epochs in this invocation (simulates an interruption; tests).
    stop_after_epochs: int | None = None
    #: Cap on training examples (quick runs; None = all).
    max_train_examples: int | None = None
    progress: bool = True

    def __post_init__(self):
        problems = []
        if self.method not in METHODS:
            problems.append(f"method must be one of {METHODS}, got {self.method!r}")
        if self.optimizer not in OPTIMIZERS:
            problems.append(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        for name in ("epochs", "batch_size", "keep_checkpoints"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                problems.append(f"{name} must be a positive integer, got {v!r}")
        if not (self.lr > 0):
            problems.append(f"lr must be > 0, got {self.lr!r}")
        if not (self.width > 0):
            problems.append(f"width must be > 0, got {self.width!r}")
        if self.weight_decay < 0 or not (0 <= self.momentum < 1):
            problems.append("weight_decay must be >= 0 and momentum in [0, 1)")
        if not (0 <= self.warmup_epochs < self.epochs) and self.method == "symog":
            problems.append(f"warmup_epochs must be in [0, epochs), got {self.warmup_epochs}")
        if self.prior_placement not in ("decoupled", "coupled"):
            problems.append(f"prior_placement must be 'decoupled' or 'coupled', "
                            f"got {self.prior_placement!r}")
        if not (0 < self.strength_start <= self.strength_end):
            problems.append("need 0 < strength_start <= strength_end")
        elif self.prior_placement == "decoupled" and self.strength_end > 1:
            problems.append("decoupled strength_end must be <= 1 (a fraction per step)")
        if not (0 < self.anneal_fraction <= 1):
            problems.append(f"anneal_fraction must be in (0, 1], got {self.anneal_fraction}")
        if problems:
            raise ValueError("; ".join(problems))

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)

    def replace(self, **changes) -> "TrainConfig":
        return dataclasses.replace(self, **changes)
