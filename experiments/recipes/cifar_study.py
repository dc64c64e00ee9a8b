"""CIFAR-10 study recipe: VGG7 at width 0.25, 26 float epochs, then 8 SYMOG epochs (2-bit
weights) at peak learning rate 0.02, taught by the float network.

Command::

    python -m experiments.cifar --config experiments/recipes/cifar_study.py --config.data.dir=DIR
    # the same as flags:
    python -m experiments.cifar --width 0.25 --float-start-epochs 26 --epochs 8 --data-dir DIR

Measured (benchmarks/RESULTS.md, "CIFAR-10 at width 0.25: 26 float + 8 epochs at learning rate
0.02, taught", 2026-11-27), on the CIFAR-10 JPEG q75 copy (``../shared/data/cifar10-jpeg.tar.gz``,
not the original images): **13.98 % 2-bit test error** over seeds 0 and 1 (14.11 / 13.84); the
float start 13.60 %; STE trained the same way 14.16 %. Wall time 2.0-2.4 h per seed on a 2-core
CPU running 2-3 jobs (about 1 h alone). Measured with ``benchmarks/symog_recipe.py``, the same
configuration; this file itself has not been run end to end at this budget.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    """The recipe: the run's sections, then the stages (the last one is the run itself)."""
    return ml_collections.ConfigDict({
        "data": {"dataset": "cifar10", "source": "auto", "dir": None, "allow_bundled": False,
                 "augment": True, "max_train_examples": None},
        "model": {"name": "vgg7", "width": 0.25, "widths": None, "precision": "float32"},
        "optim": {"optimizer": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4,
                  "batch_size": 128, "epochs": 8},
        "method": {"name": "symog", "bits": 2, "prior": "mixture", "warmup_epochs": 0.0,
                   "strength_start": 1e-6, "strength_end": 0.01, "anneal_fraction": 1.0,
                   "forward": "quantized", "release_fraction": 0.75},
        "acts": {"bits": None, "range": "calibrated", "skip_last": False,
                 "bits_per_layer": None, "input_bits": None, "range_lr": None},
        "distill": {"teacher": None, "weight": 0.5, "temperature": 4.0},
        "run": {"seed": 0, "init_from": None,
                "workdir": "runs/cifar10-vgg7-w025-symog-2bit-seed0", "keep_checkpoints": 3,
                "eval_every": 1, "stop_after_epochs": None, "progress": True, "plots": False,
                "distributed": False},
        "stages": [
            {"name": "float-start", "method": {"name": "float"}, "optim": {"epochs": 26}},
            {"name": "symog", "optim": {"lr": 0.02}, "start_from": "float-start",
             "taught_by": "float-start"},
        ],
    })
