"""CIFAR-10 default: VGG7, 70 float epochs, then 30 SYMOG epochs (2-bit weights) at peak
learning rate 0.02, taught by the float network.

Command (this recipe is the default of ``experiments.cifar``)::

    python -m experiments.cifar --bits 2 --data-dir DIR
    python -m experiments.cifar --config experiments/recipes/cifar_symog.py --config.method.bits=2

Never measured: at full width this takes 27-44 min per epoch on a 2-core CPU (about 2-3 days
for 70 + 30 epochs; a GPU job). No error of this recipe is known yet. For scale: VGG7 in float
reaches about 7 % error on CIFAR-10 (reported by the Relaxed Quantization paper, Louizos et al.
2019, not by the SYMOG paper). The measured reduced version is
``experiments/recipes/cifar_study.py``.

SGD (Nesterov, momentum 0.9) with cosine decay per stage, batch 128, weight decay 5e-4 on float
kernels only. The SYMOG stage: the annealed exact mixture prior (sigma 0.4 -> 0.05 steps)
pulling with a strength ramped geometrically from 1e-6 per step, the loss on the rounded weights
(straight-through), the pull released at 3/4 of the stage (``release_fraction: 0.75``); half the
loss is the temperature-4 KL divergence from the float network's predictions. The two-stage
recipe (float start, then fine-tuning) is this project's choice, not the SYMOG paper's.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    """The recipe: the run's sections, then the stages (the last one is the run itself)."""
    return ml_collections.ConfigDict({
        "data": {"dataset": "cifar10", "source": "auto", "dir": None, "allow_bundled": False,
                 "augment": True, "max_train_examples": None},
        "model": {"name": "vgg7", "width": 1.0, "widths": None, "precision": "float32"},
        "optim": {"optimizer": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4,
                  "batch_size": 128, "epochs": 30},
        "method": {"name": "symog", "bits": 2, "prior": "mixture", "warmup_epochs": 0.0,
                   "strength_start": 1e-6, "strength_end": 0.01, "anneal_fraction": 1.0,
                   "forward": "quantized", "release_fraction": 0.75},
        "acts": {"bits": None, "range": "calibrated", "skip_last": False,
                 "bits_per_layer": None, "input_bits": None, "range_lr": None},
        "distill": {"teacher": None, "weight": 0.5, "temperature": 4.0},
        "run": {"seed": 0, "init_from": None, "workdir": "runs/cifar10-vgg7-symog-2bit-seed0",
                "keep_checkpoints": 3, "eval_every": 1, "stop_after_epochs": None, "progress": True,
                "plots": False, "distributed": False},
        "stages": [
            {"name": "float-start", "method": {"name": "float"}, "optim": {"epochs": 70}},
            {"name": "symog", "optim": {"lr": 0.02}, "start_from": "float-start",
             "taught_by": "float-start"},
        ],
    })
