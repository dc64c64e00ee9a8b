"""GDRQ on one budget: W4A4, and W2A4 with/without Scale-Clip and with 1 vs 4 groups.

The runs use the same budget as ``benchmarks/methods.py`` (the "Methods on one budget" rows of
RESULTS.md: complete MNIST, LeNet5, 5 epochs, Adam 1e-3 with cosine decay, batch 128, seed 0,
no weight decay) and the same run syntax, ``name=method[:field=value,...][@aN]``. GDRQ keeps
the first and last layer in float (``float_first_last=true``): LeNet5's last layer has 10
outputs, which 4 groups do not divide; the G=1 rows do the same so that the rows compare only
what they vary. ``ste-w2a4-ffl`` is the straight-through baseline with the same float layers.
Results are appended to ``<out>/results.jsonl`` after every run (``--skip-done`` continues an
interrupted benchmark) and printed as a markdown table at the end.

Usage (about 6 min per run on 2 CPU cores)::

    nice -n 10 python benchmarks/gdrq.py --data-dir ../shared/data/mnist-png.tar.gz \\
        --epochs 5 --out runs/bench-gdrq --skip-done
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

_spec = importlib.util.spec_from_file_location("_bench_methods",
                                               Path(__file__).with_name("methods.py"))
_methods = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_methods)

FFL = "float_first_last=true"
DEFAULT_RUNS = [
    f"gdrq-w2a4-g4-clip=gdrq:bits=2,groups=4,clip_k=2.0,{FFL}@a4",
    f"gdrq-w2a4-g4-noclip=gdrq:bits=2,groups=4,scale_clip=false,{FFL}@a4",
    f"gdrq-w2a4-g1-clip=gdrq:bits=2,groups=1,clip_k=2.0,{FFL}@a4",
    f"gdrq-w4a4-g4-clip=gdrq:bits=4,groups=4,clip_k=3.0,{FFL}@a4",
    f"ste-w2a4-ffl=ste:bits=2,{FFL}@a4",
]


def main(argv=None) -> None:
    _methods.main(argv, default_runs=DEFAULT_RUNS, default_out="runs/bench-gdrq",
                  description=__doc__.splitlines()[0], layer_details=True)


if __name__ == "__main__":
    main()
