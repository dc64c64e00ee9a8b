"""Evaluate a finished (or interrupted) run without training: ``python -m experiments.evaluate``.

Loads the newest intact checkpoint of ``--workdir`` with the run's own ``config.json``, reports
the float and hard-quantized test error and the per-layer table, and writes ``eval.json``.

    python -m experiments.evaluate --workdir runs/mnist-lenet5-symog-2bit-seed0
    python -m experiments.evaluate --workdir RUN --data-dir ../shared/data/mnist-png.tar.gz
    python -m experiments.evaluate --workdir RUN --recalibrate-bn 100   # batch norm re-estimated
    python -m experiments.evaluate --workdir RUN --recalibrate-bn 100 --save-recalibrated RUN-bn
        # ... and saved as the new run RUN-bn (export it with experiments.export; RUN unchanged)
"""

from __future__ import annotations

import argparse
import sys

from symog_jax.pipelines.flags import nonnegative_int
from symog_jax.training import evaluate_run


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n".join(__doc__.splitlines()[2:]))
    p.add_argument("--workdir", required=True, help="the run directory (holds config.json)")
    p.add_argument("--data-dir", default=None, help="where the data is now, if it moved")
    p.add_argument("--allow-other-data", action="store_true",
                   help="use data that is not what the run was trained on (its stored "
                        "fingerprint differs): say what differs and go on with the run's "
                        "stored input normalisation (default: refuse it)")
    p.add_argument("--data-source", default=None,
                   choices=("auto", "tfds", "folder", "archive", "bundled"),
                   help="override the run's data source")
    p.add_argument("--recalibrate-bn", type=nonnegative_int, default=0, metavar="N",
                   help="also report the hard-quantized error with batch-norm statistics "
                        "re-estimated for the rounded weights on N training batches (useful "
                        "after post-training rounding; default 0: off)")
    p.add_argument("--recalibrate-no-augment", action="store_true",
                   help="recalibrate on un-augmented images (default: the training crop/flip)")
    p.add_argument("--save-recalibrated", default=None, metavar="DIR",
                   help="with --recalibrate-bn: also save the recalibrated network as a new run "
                        "directory DIR (new or empty), which experiments.export deploys; the "
                        "run itself is not changed")
    args = p.parse_args(argv)
    if args.save_recalibrated is not None and not args.recalibrate_bn:
        p.error("--save-recalibrated needs --recalibrate-bn N (N >= 1)")
    try:
        evaluate_run(args.workdir, data_dir=args.data_dir, data_source=args.data_source,
                     recalibrate_batches=args.recalibrate_bn,
                     recalibrate_augment=not args.recalibrate_no_augment,
                     allow_other_data=args.allow_other_data,
                     save_recalibrated=args.save_recalibrated)
    except (ValueError, TypeError, FileNotFoundError, ImportError, RuntimeError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
