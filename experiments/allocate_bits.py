"""Per-layer bit allocation of a float run: ``python -m experiments.allocate_bits --workdir RUN``.

Lin, Talathi & Annapureddy (2016): measure each layer's SQNR at every bit-width on a calibration
batch, allocate bits per layer for several weight-memory budgets (average bits per quantized
weight), and compare test error vs weight memory with equal bit-widths for every layer, without
retraining and (``--finetune-epochs N``) after a short straight-through fine-tuning from the
float weights. Prints a table and writes to ``--out`` (default ``RUN/allocation``):

    allocation.json   every row, the SQNR table and the comparison
    allocation.md     the table in markdown
    bits/*.json       each optimized allocation, usable as --bits-per-layer FILE
                      (with --allocate-activations also bits/*-act.json, usable as
                      --act-bits-per-layer FILE)
    finetune/b*/      the fine-tuning runs, one per distinct allocation (reused when the
                      command runs again)
    error_vs_memory.png   if matplotlib is installed

--allocate-activations: the input of every conv/dense layer but the first (and, with the run's
act_float_last, the last) is allocated bits too. Its cost is its number of elements for one
image times --act-cost-weight (default 1: the memory of one inference's activations, in the
same bits as the weights), so the memory of a row is weights + activations per image; equal
rows give weights and activations the same bits (W/A equal), budgets are average bits per unit
of cost. See symog_jax.pipelines.allocation and symog_jax.pipelines.allocation_study.

--config FILE (e.g. experiments/recipes/allocate_cifar.py) gives the float run's settings
(--config.SECTION.FIELD=VALUE one of them), its run.workdir the --workdir and its optim.epochs
the --float-epochs: the run is trained there first unless it has finished.

With no run in --workdir, --float-epochs N first trains the float network there (the data and
model flags below, with the defaults of experiments.mnist / experiments.cifar for that data
set; an interrupted one is resumed; a finished one is reused).

    python -m experiments.allocate_bits --workdir runs/float --float-epochs 3 \\
        --dataset mnist --model lenet5 --data-dir ../shared/data/mnist-png.tar.gz
    python -m experiments.allocate_bits --workdir runs/float --finetune-epochs 1
    python -m experiments.allocate_bits --workdir runs/float --allocate-activations
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from experiments import cifar, mnist
from experiments.cli import add_config_flag, add_config_option, single_run_config
from symog_jax.pipelines.allocation import FORMAT_RULES, FloatNetwork
from symog_jax.pipelines.flags import (finite_float, int_in, nonnegative_float, nonnegative_int,
                                       positive_float, positive_int)
from symog_jax.pipelines.allocation_study import (DEFAULT_BUDGETS, DEFAULT_EQUAL,
                                                  FLOAT_RUN_FIELDS, StudySettings, run_study,
                                                  train_float_run)
from symog_jax.training import TrainConfig


def experiment_defaults(dataset: str) -> TrainConfig:
    """The training command's defaults for ``dataset`` (experiments.mnist / .cifar)."""
    if dataset == "mnist":
        return mnist.DEFAULTS
    if dataset in ("cifar10", "cifar100"):
        return cifar.DEFAULTS.replace(dataset=dataset)
    return TrainConfig(dataset=dataset)


def run(args: argparse.Namespace, recipe: TrainConfig | None = None) -> dict:
    """Trains the float run if asked (``recipe``: the float run's settings from ``--config``,
    else the training command's for ``--dataset``), then runs the study on it."""
    if recipe is not None and recipe.method != "float":
        raise ValueError(f"--config: the run the study measures is a float run, got method "
                         f"{recipe.method!r}")
    train_float_run(args.workdir, args.float_epochs,
                    defaults_for=experiment_defaults if recipe is None else lambda _: recipe,
                    fields={k: getattr(args, k) for k in FLOAT_RUN_FIELDS
                            if getattr(args, k) is not None},
                    progress=args.progress, data_dir=args.data_dir,
                    data_source=args.data_source)
    net = FloatNetwork.from_run(args.workdir, data_dir=args.data_dir,
                                data_source=args.data_source)
    settings = StudySettings(**{f.name: getattr(args, f.name)
                                for f in dataclasses.fields(StudySettings)})
    out = Path(args.out) if args.out else Path(args.workdir) / "allocation"
    return run_study(net, out, settings, record=vars(args))


def parser(recipe: TrainConfig | None = None) -> argparse.ArgumentParser:
    """The command's flags: the study's settings, then the float run's training flags.

    ``recipe`` (the float run of ``--config``) gives the defaults of ``--workdir`` (its
    ``run.workdir``) and ``--float-epochs`` (its ``optim.epochs``)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n".join(__doc__.splitlines()[2:]))
    p.add_argument("--workdir", required=recipe is None,
                   default=None if recipe is None else recipe.workdir,
                   help="a float run directory (holds config.json and checkpoints), or where "
                        "--float-epochs trains one (default with --config: its run.workdir)")
    add_config_option(p)
    p.add_argument("--out", default=None, help="output directory (default WORKDIR/allocation)")
    p.add_argument("--data-dir", default=None, help="where the data is now, if it moved")
    p.add_argument("--data-source", default=None,
                   choices=("auto", "tfds", "folder", "archive", "bundled"))
    p.add_argument("--budgets", type=positive_float, nargs="*", default=list(DEFAULT_BUDGETS),
                   help="weight-memory budgets in average bits per quantized weight (default "
                        f"{' '.join(map(str, DEFAULT_BUDGETS))})")
    p.add_argument("--targets", type=finite_float, nargs="*", default=[],
                   help="target output SQNRs in dB (least memory meeting each)")
    p.add_argument("--match-equal", action=argparse.BooleanOptionalAction, default=True,
                   help="also allocate for the predicted SQNR of every equal bit-width below "
                        "--max-bits (default on)")
    p.add_argument("--equal-bits", type=int_in(1, 32), nargs="*", default=list(DEFAULT_EQUAL),
                   help=f"equal bit-widths to compare with (default "
                        f"{' '.join(map(str, DEFAULT_EQUAL))})")
    p.add_argument("--min-bits", type=int_in(1, 32), default=2, help="fewest bits a layer may get")
    p.add_argument("--max-bits", type=int_in(1, 32), default=8, help="most bits a layer may get")
    p.add_argument("--sqnr", choices=("output", "tensor"), default="output",
                   help="per-layer SQNR: of the logits with only that layer quantized, or of "
                        "the weights themselves (default output)")
    p.add_argument("--formats", choices=FORMAT_RULES, default="search",
                   help="power-of-two steps: exact MSE search (as training does) or a "
                        "distribution model (default search)")
    p.add_argument("--calibration-size", type=positive_int, default=512,
                   help="training images for the SQNR measurement (default 512)")
    p.add_argument("--finetune-epochs", type=nonnegative_int, default=0,
                   help="fine-tune every row this many epochs (0: no fine-tuning)")
    p.add_argument("--finetune-lr", type=positive_float, default=None,
                   help="fine-tuning learning rate (default a tenth of the float run's)")
    p.add_argument("--finetune-method", choices=("ste", "symog"), default="ste")
    p.add_argument("--finetune-max-examples", type=positive_int, default=None,
                   help="fine-tune on a seeded subset of this many training images")
    p.add_argument("--tolerance", type=nonnegative_float, default=0.1,
                   help="error tolerance in points for 'the same error' (default 0.1)")
    p.add_argument("--allocate-activations", action="store_true",
                   help="allocate bits to the layer inputs too (cost: elements per image x "
                        "--act-cost-weight); equal rows are W/A equal")
    p.add_argument("--act-cost-weight", type=positive_float, default=1.0,
                   help="cost of one activation element relative to one weight (default 1: "
                        "the activations of one image; e.g. the batch size for a batch's)")
    float_group = p.add_argument_group(
        "float run", "with no run in --workdir, --float-epochs N trains a float network there "
        "first; the flags below are the training command's (defaults: experiments.mnist or "
        "experiments.cifar for --dataset)")
    float_group.add_argument("--float-epochs", type=positive_int,
                             default=None if recipe is None else recipe.epochs,
                             help="train (or finish) the float run in --workdir for N epochs "
                                  "(default with --config: its optim.epochs)")
    float_group.add_argument("--progress", action=argparse.BooleanOptionalAction,
                             default=False, help="progress bar while training (default off)")
    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    for name in FLOAT_RUN_FIELDS:
        f = fields[name]
        add_config_flag(float_group, f, f.default, f.metadata.get("help", ""),
                        suppress_default=True)
    return p


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        recipe, argv = single_run_config(argv, TrainConfig(method="float").to_dict(),
                                         "the library defaults", "experiments.allocate_bits")
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    p = parser(recipe)
    args = p.parse_args(argv)
    if args.min_bits > args.max_bits:
        p.error(f"argument --min-bits: {args.min_bits} is more than --max-bits {args.max_bits}")
    try:
        run(args, recipe)
    except (ValueError, TypeError, FileNotFoundError, FileExistsError, ImportError,
            RuntimeError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
