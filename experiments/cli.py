"""Command-line parsing shared by the experiment scripts: flags -> TrainConfig."""

from __future__ import annotations

import argparse
import dataclasses
import sys

from symog_jax.numerics.formats import check_bits
from symog_jax.models import MODEL_NAMES
from symog_jax.training import METHODS, TrainConfig, train


def build_parser(description: str, defaults: TrainConfig, expectations: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description, epilog=expectations,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    d = defaults
    p.add_argument("--dataset", default=d.dataset,
                   help=f"mnist, cifar10, cifar100, or a name for --data-source folder (default {d.dataset})")
    p.add_argument("--model", default=d.model, choices=MODEL_NAMES, help=f"architecture (default {d.model})")
    p.add_argument("--method", default=d.method, choices=METHODS,
                   help="float: float training; symog: SYMOG soft quantization; ste: straight-through "
                        f"fake quantization; ptq: float training then rounding (default {d.method})")
    p.add_argument("--bits", type=int, default=d.bits, help=f"weight bit-width N (default {d.bits})")
    p.add_argument("--epochs", type=int, default=d.epochs, help=f"training epochs (default {d.epochs})")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help=f"(default {d.batch_size})")
    p.add_argument("--optimizer", default=d.optimizer, choices=("sgd", "adam"), help=f"(default {d.optimizer})")
    p.add_argument("--lr", type=float, default=d.lr, help=f"peak learning rate, cosine decay (default {d.lr})")
    p.add_argument("--weight-decay", type=float, default=d.weight_decay,
                   help=f"on kernels; not on quantized kernels under symog (default {d.weight_decay})")
    p.add_argument("--warmup-epochs", type=float, default=d.warmup_epochs,
                   help=f"symog: float epochs before the prior starts (default {d.warmup_epochs})")
    p.add_argument("--prior-placement", default=d.prior_placement, choices=("decoupled", "coupled"),
                   help="symog: prior after the optimizer (a pull per step) or its gradient "
                        f"before it (a loss term) (default {d.prior_placement})")
    p.add_argument("--strength-start", type=float, default=d.strength_start,
                   help=f"symog: initial pull per step toward the nearest level (default {d.strength_start})")
    p.add_argument("--strength-end", type=float, default=d.strength_end,
                   help=f"symog: final pull per step (default {d.strength_end})")
    p.add_argument("--per-channel", action="store_true", help="one step per output channel")
    p.add_argument("--width", type=float, default=d.width, help=f"channel width multiplier (default {d.width})")
    p.add_argument("--seed", type=int, default=d.seed, help=f"(default {d.seed})")
    p.add_argument("--data-dir", default=d.data_dir,
                   help="where the data is: a tfds data dir, an image-folder dir or .tar(.gz), "
                        "or the original archives (default: tfds's default location)")
    p.add_argument("--data-source", default=d.data_source,
                   choices=("auto", "tfds", "folder", "archive", "bundled"), help=f"(default {d.data_source})")
    p.add_argument("--workdir", default=None,
                   help="where checkpoints, metrics.jsonl and report.json go "
                        "(default runs/<dataset>-<model>-<method>-<bits>bit-seed<seed>)")
    p.add_argument("--resume", action="store_true", help="continue the run in --workdir")
    p.add_argument("--max-train-examples", type=int, default=None, help="use only the first N training examples")
    p.add_argument("--stop-after-epochs", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def config_from_args(args: argparse.Namespace, defaults: TrainConfig) -> TrainConfig:
    workdir = args.workdir or (f"runs/{args.dataset}-{args.model}-{args.method}-{args.bits}bit-"
                               f"seed{args.seed}")
    check_bits(args.bits)
    return dataclasses.replace(
        defaults, dataset=args.dataset, model=args.model, method=args.method, bits=args.bits,
        epochs=args.epochs, batch_size=args.batch_size, optimizer=args.optimizer, lr=args.lr,
        weight_decay=args.weight_decay, warmup_epochs=args.warmup_epochs,
        prior_placement=args.prior_placement, strength_start=args.strength_start, strength_end=args.strength_end,
        per_channel=args.per_channel, width=args.width, seed=args.seed, data_dir=args.data_dir,
        data_source=args.data_source, workdir=workdir, max_train_examples=args.max_train_examples,
        stop_after_epochs=args.stop_after_epochs, progress=not args.no_progress)


def main(description: str, defaults: TrainConfig, expectations: str, argv=None) -> int:
    """Parses flags, trains, and turns expected failures into one-line errors (exit code 2)."""
    parser = build_parser(description, defaults, expectations)
    args = parser.parse_args(argv)
    try:
        config = config_from_args(args, defaults)
        train(config, resume=args.resume)
    except (ValueError, TypeError, FileNotFoundError, FileExistsError, ImportError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted: the last finished epoch is checkpointed; continue with --resume",
              file=sys.stderr)
        return 130
    return 0
