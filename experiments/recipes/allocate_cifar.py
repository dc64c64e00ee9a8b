"""Per-layer bit allocation on CIFAR-10: the float VGG7 (width 0.125, 8 epochs) it starts from.

Command (``experiments.allocate_bits`` trains the float network of this file in its
``run.workdir`` unless it has finished there, then runs the allocation study on it)::

    python -m experiments.allocate_bits --config experiments/recipes/allocate_cifar.py \\
        --config.data.dir=../shared/data/cifar10-jpeg.tar.gz --finetune-epochs 1 \\
        --finetune-max-examples 20000
    # the float network alone, from this file:
    python -m experiments.cifar --config experiments/recipes/allocate_cifar.py \\
        --config.data.dir=../shared/data/cifar10-jpeg.tar.gz

Measured (benchmarks/RESULTS.md, "Per-layer bit allocation on CIFAR-10 (JPEG q75 copy), VGG7
width 0.125", 2026-11-26, a 2-core CPU partly shared, one seed): the float network **20.90 %**
test error on the CIFAR-10 JPEG q75 copy; allocated bit-widths give 25-45 % smaller weights than
equal bit-widths at the same error without retraining, 26-35 % after one epoch of fine-tuning
(allocations near 2.2-2.6 bits per weight). Wall time not recorded in that section.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    """The float run the allocation study measures, one run."""
    return ml_collections.ConfigDict({
        "data": {"dataset": "cifar10", "source": "auto", "dir": None, "allow_bundled": False,
                 "augment": True, "max_train_examples": None},
        "model": {"name": "vgg7", "width": 0.125, "widths": None, "precision": "float32"},
        "optim": {"optimizer": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4,
                  "batch_size": 128, "epochs": 8},
        "method": {"name": "float"},
        "acts": {"bits": None, "range": "calibrated", "skip_last": False,
                 "bits_per_layer": None, "input_bits": None, "range_lr": None},
        "distill": {"teacher": None, "weight": 0.5, "temperature": 4.0},
        "run": {"seed": 0, "init_from": None, "workdir": "runs/float-vgg7-w0125",
                "keep_checkpoints": 3, "eval_every": 1, "stop_after_epochs": None, "progress": True,
                "plots": False, "distributed": False},
        "stages": [],
    })
