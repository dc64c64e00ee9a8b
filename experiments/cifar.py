"""CIFAR experiments: ``python -m experiments.cifar --bits 2``.

The default is the recipe ``experiments/recipes/cifar_symog.py`` (read it: the config, the
command, what it costs, what to expect): CIFAR-10, VGG7, a float network for 70 epochs at peak
learning rate 0.05 (``--float-start-epochs 70``, ``--lr``; in ``<workdir>/float-start``), then
SYMOG with 2-bit weights for 30 epochs (``--epochs``) at 0.02 (``--fine-tune-lr``), taught by
the float network (``--distill-from-float-start``). Every flag sets a field of that recipe;
``--config FILE`` gives another recipe (e.g. ``experiments/recipes/cifar_study.py``, the
measured width-0.25 version) or a run's ``config.json``, ``--config.SECTION.FIELD=VALUE`` sets
one field.
"""

import sys
from pathlib import Path

from symog_jax.pipelines.cli import main
from symog_jax.pipelines.recipes import base_config, load_recipe

#: The recipe of ``python -m experiments.cifar`` without ``--config``.
RECIPE = Path(__file__).resolve().parent / "recipes" / "cifar_symog.py"
#: The recipe's run settings (without its stages), e.g. for experiments.prune.
DEFAULTS = base_config(load_recipe(RECIPE))
#: Epochs of the float network the default recipe starts from (``--float-start-epochs``).
FLOAT_START_EPOCHS = load_recipe(RECIPE).stages[0]["optim"]["epochs"]
#: Peak learning rate of the SYMOG stage that fine-tunes it (``--fine-tune-lr``).
FINE_TUNE_LR = load_recipe(RECIPE).stages[1]["optim"]["lr"]

EXPECTATIONS = """\
expected (experiments/recipes/*.py say more; dated measurements: benchmarks/RESULTS.md):
  the default (full-width VGG7, 70 + 30 epochs) has not been measured: on a 2-core CPU one epoch
  takes 27-44 min (2-3 days in all); experiments/recipes/cifar_study.py (width 0.25, 26 float
  + 8 SYMOG epochs) gave 13.98 % 2-bit error over two seeds on the CIFAR-10 JPEG copy (STE
  14.16 %, the float start 13.60 %), about 1 h on 2 idle cores.
examples:
  python -m experiments.cifar --bits 2 --data-dir DIR
  python -m experiments.cifar --config experiments/recipes/cifar_study.py --config.data.dir=DIR
  python -m experiments.cifar --width 0.25 --float-start-epochs 26 --epochs 8 --data-dir DIR
  python -m experiments.cifar --resume --workdir runs/cifar10-vgg7-symog-2bit-seed0
"""

if __name__ == "__main__":
    sys.exit(main(__doc__.splitlines()[0], RECIPE, EXPECTATIONS,
                  prog="python -m experiments.cifar",
                  recipe_name="experiments/recipes/cifar_symog.py"))
