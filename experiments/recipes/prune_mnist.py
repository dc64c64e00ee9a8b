"""Holistic filter pruning on MNIST: LeNet5, 60 % of the multiply-accumulates removed.

Command (``experiments.prune`` reads this file: the gates' run below, whose inner method is
the weight method; thinning and fine-tuning follow in ``<run.workdir>/thin``, ``/finetune``)::

    python -m experiments.prune --config experiments/recipes/prune_mnist.py \\
        --finetune-epochs 2 --config.data.dir=../shared/data/mnist-png.tar.gz
    # with flags instead:
    python -m experiments.prune --dataset mnist --model lenet5 --prune-macs 0.6 --epochs 3 \\
        --finetune-epochs 2 --optimizer adam --lr 1e-3 --weight-decay 0 \\
        --data-dir ../shared/data/mnist-png.tar.gz --workdir runs/prune-mnist-lenet5
    # stage A alone, from this file:
    python -m experiments.mnist --config experiments/recipes/prune_mnist.py \\
        --workdir runs/prune-mnist-lenet5/prune

Measured (benchmarks/RESULTS.md, "A floor on the kept fraction per layer", 2026-11-26, with
``benchmarks/pruning.py --epochs 3 --finetune-epochs 2 --rates 0.6``, the same settings): on
complete MNIST, float weights, **0.83 % test error** after 3 epochs of gates, thinning and 2
epochs of fine-tuning (uniform width 0.95 %, L1 norm 0.84 %, unpruned 0.77 %); 3.2 min on a
shared 2-core CPU. ``experiments.prune`` itself with this file has not been timed.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    """The pruning run (stage A, the gates; its workdir is the workflow's), one run."""
    return ml_collections.ConfigDict({
        "data": {"dataset": "mnist", "source": "auto", "dir": None, "allow_bundled": False,
                 "augment": True, "max_train_examples": None},
        "model": {"name": "lenet5", "width": 1.0, "widths": None, "precision": "float32"},
        "optim": {"optimizer": "adam", "lr": 1e-3, "momentum": 0.9, "weight_decay": 0.0,
                  "batch_size": 128, "epochs": 3},
        "method": {"name": "hfp", "arch": "lenet5", "input_shape": "28x28x1",
                   "prune_macs": 0.6, "inner_method": "float"},
        "acts": {"bits": None, "range": "calibrated", "skip_last": False,
                 "bits_per_layer": None, "input_bits": None, "range_lr": None},
        "distill": {"teacher": None, "weight": 0.5, "temperature": 4.0},
        "run": {"seed": 0, "init_from": None, "workdir": "runs/prune-mnist-lenet5",
                "keep_checkpoints": 3, "eval_every": 1, "stop_after_epochs": None, "progress": True,
                "plots": False, "distributed": False},
        "stages": [],
    })
