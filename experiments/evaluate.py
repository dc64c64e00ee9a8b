"""Evaluate a finished (or interrupted) run without training: ``python -m experiments.evaluate``.

Loads the newest intact checkpoint of ``--workdir`` with the run's own ``config.json``, reports
the float and hard-quantized test error and the per-layer table, and writes ``eval.json``.

    python -m experiments.evaluate --workdir runs/mnist-lenet5-symog-2bit-seed0
    python -m experiments.evaluate --workdir RUN --data-dir ../shared/data/mnist-png.tar.gz
"""

from __future__ import annotations

import argparse
import sys

from symog_jax.training.loop import evaluate_run


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n".join(__doc__.splitlines()[2:]))
    p.add_argument("--workdir", required=True, help="the run directory (holds config.json)")
    p.add_argument("--data-dir", default=None, help="where the data is now, if it moved")
    p.add_argument("--data-source", default=None,
                   choices=("auto", "tfds", "folder", "archive", "bundled"),
                   help="override the run's data source")
    args = p.parse_args(argv)
    try:
        evaluate_run(args.workdir, data_dir=args.data_dir, data_source=args.data_source)
    except (ValueError, TypeError, FileNotFoundError, ImportError, RuntimeError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
