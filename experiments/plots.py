"""Figures of run directories: ``python -m experiments.plots --workdir runs/X [runs/Y ...]``.

Writes, next to each run's ``report.json``: ``error_curves.png`` (float and hard-quantized test
error per epoch), ``weight_histograms.png`` (the quantized layers' weights from the newest intact
checkpoint, with the fixed-point levels marked) and, for runs with pruning information,
``kept_channels.png``. See :func:`symog_jax.pipelines.figures.save_run_figures`.

    python -m experiments.mnist --bits 2 --epochs 5 --workdir runs/mnist-symog
    python -m experiments.plots --workdir runs/mnist-symog
"""

from __future__ import annotations

import argparse
import sys

from symog_jax.data import load_dataset
from symog_jax.pipelines.figures import save_run_figures
from symog_jax.pipelines.flags import positive_int
from symog_jax.training import load_run_config


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n".join(__doc__.splitlines()[2:]))
    p.add_argument("--workdir", nargs="+", required=True, help="run directories")
    p.add_argument("--data-dir", default=None,
                   help="the run's data (default: as in its config.json); only needed to "
                        "restore the checkpoint for the weight histograms")
    p.add_argument("--no-histograms", action="store_true",
                   help="skip the weight histograms (no checkpoint restore, no data loading)")
    p.add_argument("--dpi", type=positive_int, default=110)
    args = p.parse_args(argv)
    status = 0
    for workdir in args.workdir:
        dataset = None
        try:
            if args.data_dir is not None and not args.no_histograms:
                config = load_run_config(workdir)
                dataset = load_dataset(config.dataset, data_dir=args.data_dir)
            paths = save_run_figures(workdir, dataset, histograms=not args.no_histograms,
                                     dpi=args.dpi)
        except (FileNotFoundError, ValueError) as e:
            print(f"error: {e}", file=sys.stderr)
            status = 1
            continue
        for path in paths:
            print(path)
    return status


if __name__ == "__main__":
    sys.exit(main())
