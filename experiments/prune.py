"""Holistic filter pruning to parameter/MAC rates: ``python -m experiments.prune --prune-macs 0.6``.

Three stages, each resumable (run the same command again to continue):

A. ``<workdir>/prune``: a run of the ``hfp`` method (per-channel gates, budget loss) around the
   weight method ``--method`` (default ``float``; e.g. ``--method symog --bits 2``) for
   ``--epochs``. With ``--selection l1`` it is a plain ``--method`` run instead (the per-layer
   L1-norm baseline).
B. ``<workdir>/thin``: channels are selected for the exact rates (from the trained gates, ties
   by L1 norm; or by L1 norm with the same rate in every decision), physically removed
   (``variables.msgpack``: an ordinary registry model with ``--widths``), and the thin
   network is evaluated (error after removal).
C. ``<workdir>/finetune``: an ordinary ``--method`` run of the thin model (``widths``,
   ``init_from`` the thinned variables) for ``--finetune-epochs`` (0: none) at
   ``--finetune-lr`` (default ``--lr``). Only parameters and batch statistics carry over: the
   weight method starts afresh on the thin weights (learned SYQ/GDRQ scales are initialised
   again from them, formats re-chosen, SYMOG's pull ramps again from its start strength), a
   choice, since the thin network's channel counts need not fit the stage-A method's
   per-group variables (GDRQ groups must divide the kept channels).

``--config FILE`` (e.g. ``experiments/recipes/prune_mnist.py``: a run of the ``hfp`` method,
whose inner method becomes ``--method`` and whose rates the ``--prune-*`` defaults; or one run's
settings) and ``--config.SECTION.FIELD=VALUE`` set the run's settings as for
``experiments.mnist``; its ``run.workdir`` is the workdir; flags given as well override them.

Writes ``<workdir>/prune_report.json`` (requested and achieved rates -- exact counts of the
thin model --, kept/total channels per decision, errors before pruning, with the gates applied,
after removal and after fine-tuning), ``kept_channels.png`` and prints a table. The headline
error is the float one for ``--method float``, the quantized one otherwise. Rates out of reach
are refused (one line) before any training.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import warnings
from pathlib import Path

from experiments.cli import (add_config_option, build_parser, config_from_args,
                             single_run_config)
from symog_jax.data import load_dataset
from symog_jax.methods import get_method_class
from symog_jax.methods.hfp import HFP, HFPConfig
from symog_jax.pipelines.flags import nonnegative_int, positive_float
from symog_jax.pipelines.prune import HFP_FLAGS, SELECTIONS, prune
from symog_jax.training import TrainConfig, TrainingInterrupted, initialize_distributed


def _defaults(dataset: str) -> TrainConfig:
    if dataset == "mnist":
        from experiments.mnist import DEFAULTS
    else:
        from experiments.cifar import DEFAULTS
        DEFAULTS = DEFAULTS.replace(dataset=dataset)
    return DEFAULTS


def _weight_method(config: TrainConfig) -> tuple[TrainConfig, dict]:
    """A recipe of the pruning run itself (method ``hfp``, e.g. recipes/prune_mnist.py) as this
    command's settings: the weight method inside it, and the :data:`HFP_FLAGS` it sets."""
    if not isinstance(config.method_config, HFPConfig):
        return config, {}
    hfp = config.method_config
    plain = {f.name: f.default for f in dataclasses.fields(HFPConfig)}
    fields = {name: getattr(hfp, name) for name in HFP_FLAGS if getattr(hfp, name) != plain[name]}
    return config.replace(method=hfp.inner_method, method_config=hfp.inner), fields


def _settings(argv) -> tuple[TrainConfig, dict, list[str], bool]:
    """``(run settings, HFP fields of a recipe, the other args, whether --config gave them)``:
    the defaults of experiments.mnist/cifar for ``--dataset``, or ``--config FILE`` /
    ``--config.a.b=V`` read as the training commands read them."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--dataset", default=None)
    known, _ = pre.parse_known_args([a for a in (argv if argv is not None else sys.argv[1:])
                                     if not a.startswith("--config")])
    defaults = _defaults(known.dataset or "cifar10")
    recipe = defaults.replace(method="float", method_config=None).to_dict()
    config, rest = single_run_config(sys.argv[1:] if argv is None else list(argv), recipe,
                                     f"experiments.prune's {defaults.dataset} defaults",
                                     "experiments.prune")
    if config is None:
        return defaults, {}, rest, False
    config, hfp_fields = _weight_method(config)
    return config, hfp_fields, rest, True


def main(argv=None) -> int:
    try:
        defaults, recipe_hfp, argv, from_config = _settings(argv)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    parser = build_parser(__doc__.splitlines()[0], defaults, __doc__.split("\n\n", 1)[1])
    add_config_option(parser)
    if not from_config:
        parser.set_defaults(method="float")
    parser.add_argument("--finetune-epochs", type=nonnegative_int, default=2,
                        help="epochs of fine-tuning the thin network (0: none; default 2)")
    parser.add_argument("--finetune-lr", type=positive_float, default=None,
                        help="peak learning rate of the fine-tuning (default --lr)")
    parser.add_argument("--selection", choices=tuple(SELECTIONS), default="hfp",
                        help="hfp: trained gates (holistic); l1: per-layer L1 norm with the same "
                             "rate in every decision, after a plain run (default hfp)")
    parser.add_argument("--no-figure", action="store_true", help="skip kept_channels.png")
    args = parser.parse_args(argv)
    try:
        hfp_given = dict(recipe_hfp)
        for name in HFP_FLAGS:
            if getattr(args, name) is not None:
                hfp_given[name] = getattr(args, name)
                setattr(args, name, None)
        if args.inner_method is not None:
            raise ValueError("--inner-method is set by this command (the weight method is "
                             "--method)")
        if issubclass(get_method_class(args.method), HFP):
            raise ValueError("--method is the weight method inside the pruning (e.g. float or "
                             "symog), not hfp")
        rates = {k: hfp_given.pop(k, None) for k in ("prune_params", "prune_macs")}
        if rates["prune_params"] is None and rates["prune_macs"] is None:
            raise ValueError("give --prune-macs and/or --prune-params (fractions to remove)")
        HFPConfig(**rates, **hfp_given)            # one-line errors for bad rates
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            base = config_from_args(args, defaults)
        if args.workdir is None and from_config:
            base = base.replace(workdir=defaults.workdir)
        elif args.workdir is None:
            tag = "-".join(f"{k[6]}{round(100 * v)}" for k, v in rates.items() if v)
            base = base.replace(workdir=f"runs/prune-{base.dataset}-{base.model}-"
                                        f"{args.selection}-{tag}-{base.describe()}-"
                                        f"seed{base.seed}")
        initialize_distributed(base.distributed, timeout=args.distributed_timeout)
        dataset = load_dataset(base.dataset, source=base.data_source, data_dir=base.data_dir,
                               allow_bundled=base.allow_bundled)
        prune(base, dataset, **rates, epochs=base.epochs, finetune_epochs=args.finetune_epochs,
              finetune_lr=args.finetune_lr, selection=args.selection, hfp_fields=hfp_given,
              plots=not args.no_figure)
    except TrainingInterrupted as e:
        print(f"\ninterrupted: continue with the same command (stage "
              f"{Path(e.workdir).name}, epoch {e.checkpointed_epoch} checkpointed)",
              file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    except (ValueError, TypeError, FileNotFoundError, FileExistsError, ImportError,
            RuntimeError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
