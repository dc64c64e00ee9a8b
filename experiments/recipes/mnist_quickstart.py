"""MNIST quick start: LeNet5, 10 float epochs, then 10 SYMOG epochs with 2-bit weights.

Command (this recipe is the default of ``experiments.mnist``)::

    python -m experiments.mnist --bits 2
    python -m experiments.mnist --config experiments/recipes/mnist_quickstart.py \\
        --config.method.bits=3

Measured (benchmarks/RESULTS.md, "MNIST quick start on the bundled 5k subset", 2026-12-06):
with no MNIST found, on the bundled 5k subset (4,000 train / 1,000 test images), 6.1 min wall on
a busy 2-core CPU, **2.80 % 2-bit test error** (the float start 3.20 %), one seed. On complete
MNIST (``--data-dir ../shared/data/mnist-png.tar.gz``) the same recipe gave 0.66 % (seeds 0 and
1: 0.71 / 0.60; float start 0.69 %), 16 min per seed on the 2-core CPU (2026-11-26).

Adam with cosine decay from 1e-3, batch 128; the annealed exact mixture prior (sigma 0.4 -> 0.05
steps) pulling with a strength ramped from 1e-4 to 0.1 per step; the loss on the rounded weights
(``forward: quantized``, straight-through; ``float`` is SYMOG as published).
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    """The recipe: the run's sections, then the stages (the last one is the run itself)."""
    return ml_collections.ConfigDict({
        "data": {"dataset": "mnist", "source": "auto", "dir": None, "allow_bundled": True,
                 "augment": True, "max_train_examples": None},
        "model": {"name": "lenet5", "width": 1.0, "widths": None, "precision": "float32"},
        "optim": {"optimizer": "adam", "lr": 1e-3, "momentum": 0.9, "weight_decay": 0.0,
                  "batch_size": 128, "epochs": 10},
        "method": {"name": "symog", "bits": 2, "prior": "mixture", "warmup_epochs": 0.0,
                   "strength_start": 1e-4, "strength_end": 0.1, "forward": "quantized"},
        "acts": {"bits": None, "range": "calibrated", "skip_last": False,
                 "bits_per_layer": None, "input_bits": None, "range_lr": None},
        "distill": {"teacher": None, "weight": 0.5, "temperature": 4.0},
        "run": {"seed": 0, "init_from": None, "workdir": "runs/mnist-lenet5-symog-2bit-seed0",
                "keep_checkpoints": 3, "eval_every": 1, "stop_after_epochs": None, "progress": True,
                "plots": False, "distributed": False},
        "stages": [
            {"name": "float-start", "method": {"name": "float"}, "optim": {"epochs": 10}},
            {"name": "symog", "start_from": "float-start"},
        ],
    })
