"""The training command of the experiment scripts: flags generated from the config dataclasses.

Every field of :class:`~symog_jax.training.TrainConfig` and of every registered method's
``Config`` is a flag (``--field-name``), with the help text kept next to the field. A method
flag applies to the selected ``--method``; giving one that the method does not have is an error.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
import warnings

import jax
import jax.numpy as jnp

from symog_jax.methods import get_method_class, method_names
from symog_jax.models import MODEL_NAMES, create_model
from symog_jax.quantizers.masks import path_str
from symog_jax.pipelines.recipes import train_from_float, train_run
from symog_jax.training.config import TrainConfig, config_from_file
from symog_jax.training.interrupt import TrainingInterrupted

_RUN_ONLY = {"workdir"}          # given a computed default below


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _type_of(f: dataclasses.Field, default):
    declared = f.metadata.get("type")
    if declared is not None:
        return declared
    hint = f.type if not isinstance(f.type, str) else {"int": int, "float": float, "str": str,
                                                       "bool": bool}.get(f.type)
    if hint is None:
        hint = type(default) if default is not None else str
    return hint


def _argparse_type(kind):
    """``kind`` for argparse; a parser function's one-line ``ValueError`` becomes the message
    (e.g. ``--widths 16,x``: "widths must be comma-separated channel counts ...")."""
    if kind in (int, float, str):
        return kind

    def parse(text):
        try:
            return kind(text)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
    parse.__name__ = getattr(kind, "__name__", "value")
    return parse


def add_config_flag(group, f: dataclasses.Field, default, help_text: str,
                    suppress_default: bool, choices=None) -> None:
    """Adds the flag ``--field-name`` of config field ``f`` to an argparse (group).

    The type, choices and boolean ``--x/--no-x`` come from the field; ``suppress_default``
    leaves the parsed value ``None`` when the flag is not given (and the help without it);
    ``choices`` overrides the field's own (a flag shared by several methods accepts them all).
    """
    kw = {"help": help_text + ("" if suppress_default else f" (default {default})")}
    kind = _type_of(f, default)
    dest = f.name
    if kind is bool:
        group.add_argument(_flag(f.name), dest=dest, action=argparse.BooleanOptionalAction,
                           default=None if suppress_default else default, **kw)
        return
    if choices or "choices" in f.metadata:
        kw["choices"] = choices or f.metadata["choices"]
    if default is not None and not isinstance(default, (int, float, str)):
        kw["help"] = kw["help"].replace(f"(default {default})",
                                        f"(default {','.join(map(str, default))})")
    group.add_argument(_flag(f.name), dest=dest, type=_argparse_type(kind),
                       default=None if suppress_default else default, **kw)


def build_parser(description: str, defaults: TrainConfig,
                 expectations: str) -> argparse.ArgumentParser:
    """The parser: run flags with the experiment's defaults, then one group per method."""
    p = argparse.ArgumentParser(description=description, epilog=expectations,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    for f in dataclasses.fields(TrainConfig):
        if not f.metadata.get("cli", True) or f.name in _RUN_ONLY:
            continue
        default = getattr(defaults, f.name)
        if f.name == "model":
            p.add_argument("--model", default=default, choices=MODEL_NAMES,
                           help=f"{f.metadata['help']} (default {default})")
        elif f.name == "method":
            p.add_argument("--method", default=default, choices=method_names(),
                           help=f"{f.metadata['help']} (default {default})")
        else:
            add_config_flag(p, f, default, f.metadata.get("help", ""), suppress_default=False)
    p.add_argument("--workdir", default=None,
                   help="where checkpoints, metrics.jsonl and report.json go "
                        "(default runs/<dataset>-<model>-<method tag>-seed<seed>)")
    p.add_argument("--resume", action="store_true", help="continue the run in --workdir")

    # One flag per method field name; a name shared by several methods is one flag.
    seen: dict[str, list[str]] = {}
    fields: dict[str, dataclasses.Field] = {}
    choices: dict[str, list] = {}      # a shared flag accepts every method's choices
    for name in method_names():
        for f in dataclasses.fields(get_method_class(name).Config):
            if not f.metadata.get("cli", True):
                continue
            seen.setdefault(f.name, []).append(name)
            fields.setdefault(f.name, f)
            choices.setdefault(f.name, []).append(f.metadata.get("choices"))
    group = p.add_argument_group(
        "method parameters", "each applies to the methods named in brackets; the default is the "
        "experiment's setting for its default method, else the method's own default")
    own = dataclasses.asdict(defaults.method_config)
    for name, f in fields.items():
        shown = own.get(name, f.default)
        merged = (None if None in choices[name] else
                  list(dict.fromkeys(c for own_choices in choices[name] for c in own_choices)))
        add_config_flag(group, f, shown, f"[{', '.join(seen[name])}] {f.metadata.get('help', '')}"
                        f" (default {shown})", suppress_default=True, choices=merged)
    p.set_defaults(_method_fields=tuple(fields))
    return p


def check_model_width(model: str, width: float) -> None:
    """Refuses a width multiplier that leaves a hidden layer with fewer than 2 channels.

    Traced abstractly (``jax.eval_shape``): no weights are computed.
    """
    net = create_model(model, 10, width=width)
    shapes = jax.eval_shape(lambda: net.init(jax.random.PRNGKey(0),
                                             jnp.zeros((1, 32, 32, 3)), train=False))
    kernels = [(path_str(p), leaf.shape[-1]) for p, leaf in
               jax.tree_util.tree_flatten_with_path(shapes["params"])[0]
               if path_str(p).endswith("kernel")]
    thin = [(p, c) for p, c in kernels if c < 2]
    if thin:
        raise ValueError(f"--width {width} leaves {model} layer {thin[0][0].rsplit('/', 1)[0]} "
                         f"with {thin[0][1]} channel(s); use a larger width")


def config_from_args(args: argparse.Namespace, defaults: TrainConfig) -> TrainConfig:
    """A :class:`TrainConfig` from parsed flags (errors name the flag)."""
    method_cls = get_method_class(args.method)
    given = {name: getattr(args, name) for name in args._method_fields
             if getattr(args, name) is not None}
    own_fields = method_cls.Config.flag_fields(given)
    foreign = sorted(set(given) - own_fields)
    if foreign:
        raise ValueError(f"{', '.join(_flag(n) for n in foreign)} is not a parameter of method "
                         f"{args.method!r} (its parameters: "
                         f"{', '.join(_flag(n) for n in sorted(own_fields)) or 'none'})")
    # Start from the experiment's method settings; for another method, only those the experiment
    # chose (not its method's defaults: a field both methods have may default differently).
    base = dataclasses.asdict(defaults.method_config)
    if args.method != defaults.method:
        plain = dataclasses.asdict(type(defaults.method_config)())
        base = {k: v for k, v in base.items() if k in own_fields and v != plain[k]}
    method_config = method_cls.Config.from_flags({**base, **given})
    run = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)
           if f.metadata.get("cli", True) and f.name not in _RUN_ONLY | {"method"}}
    config = TrainConfig(**run, method=args.method, method_config=method_config,
                         workdir="runs/pending")
    if config.widths is None:             # per-decision widths were checked by the config
        check_model_width(config.model, config.width)
    workdir = args.workdir or (f"runs/{config.dataset}-{config.model}-{config.describe()}-"
                               f"seed{config.seed}")
    return config.replace(workdir=workdir)


def main(description: str, defaults: TrainConfig, expectations: str, argv=None,
         float_start_epochs: int = 0, distill_from_float_start: bool = False,
         fine_tune_lr: float | None = None) -> int:
    """Parses flags, trains, and turns expected failures into one-line errors (exit code 2).

    ``--config FILE`` (a JSON config, e.g. a run's ``config.json``) replaces the experiment's
    defaults; flags given as well override it. ``float_start_epochs`` is the experiment's
    default of ``--float-start-epochs`` (the two-stage recipe: a float network first, in
    ``<workdir>/float-start``, then the method from it); an explicit ``--init-from`` skips it.
    ``--float-start-lr`` gives the float stage its own peak learning rate (default: ``--lr``);
    ``fine_tune_lr`` is the default of ``--fine-tune-lr``, the peak learning rate of the method's
    stage after the float start (None: ``--lr``; runs from random weights always use ``--lr``).
    ``distill_from_float_start`` is the default of ``--distill-from-float-start`` (the float
    network also teaches the second stage).
    """
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config", default=None)
    known, _ = pre.parse_known_args(argv)
    if known.config is not None:
        try:
            defaults = config_from_file(known.config)
        except (ValueError, FileNotFoundError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        # The file describes the whole run (a 2nd stage has init_from): no experiment recipe.
        float_start_epochs, fine_tune_lr, distill_from_float_start = 0, None, False
    parser = build_parser(description, defaults, expectations)
    _add_recipe_flags(parser, float_start_epochs, fine_tune_lr, distill_from_float_start)
    args = parser.parse_args(argv)
    explicit_distill = "--distill-from-float-start" in (sys.argv[1:] if argv is None else argv)
    if args.float_start_epochs < 0:
        parser.error(f"--float-start-epochs must be >= 0, got {args.float_start_epochs}")
    for flag, rate in (("--float-start-lr", args.float_start_lr),
                       ("--fine-tune-lr", args.fine_tune_lr)):
        if rate is not None and not (math.isfinite(rate) and rate > 0):
            parser.error(f"{flag} must be a finite number > 0, got {rate}")
    if known.config is not None and args.workdir is None:
        args.workdir = defaults.workdir
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            config = config_from_args(args, defaults)
        _train(config, args, explicit_distill)
    except TrainingInterrupted as e:
        if e.checkpointed_epoch is None:
            print("\ninterrupted before the first epoch finished: nothing is checkpointed",
                  file=sys.stderr)
        else:
            print(f"\ninterrupted: epoch {e.checkpointed_epoch} is checkpointed; continue with "
                  f"--resume --workdir {e.workdir}", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print("\ninterrupted before training started: nothing is checkpointed", file=sys.stderr)
        return 130
    except (ValueError, TypeError, FileNotFoundError, FileExistsError, ImportError,
            RuntimeError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


def _add_recipe_flags(parser: argparse.ArgumentParser, float_start_epochs: int,
                      fine_tune_lr: float | None, distill_from_float_start: bool) -> None:
    """``--config`` and the flags of the float-start recipe, with the experiment's defaults."""
    parser.add_argument("--config", default=None,
                        help="a JSON config file (e.g. runs/X/config.json: re-runs X exactly); "
                             "flags given as well override it")
    parser.add_argument("--float-start-epochs", type=int, default=float_start_epochs,
                        help="train a float network for this many epochs first (in "
                             "<workdir>/float-start), then the method from its weights; 0: start "
                             "from random weights; ignored with --init-from "
                             f"(default {float_start_epochs})")
    parser.add_argument("--float-start-lr", type=float, default=None,
                        help="peak learning rate of the float stage of --float-start-epochs "
                             "(default: the same as --lr)")
    parser.add_argument("--fine-tune-lr", type=float, default=fine_tune_lr,
                        help="peak learning rate of the method's stage when it starts from the "
                             "float network of --float-start-epochs (default: " +
                             ("the same as --lr" if fine_tune_lr is None else f"{fine_tune_lr:g}") +
                             "); a run from random weights uses --lr")
    parser.add_argument("--distill-from-float-start", action=argparse.BooleanOptionalAction,
                        default=distill_from_float_start,
                        help="the float network of --float-start-epochs also teaches the method "
                             "(knowledge distillation: --distill-weight, --distill-temperature; "
                             f"default {'on' if distill_from_float_start else 'off'})")


def _train(config: TrainConfig, args: argparse.Namespace, explicit_distill: bool) -> None:
    """Trains ``config`` as the recipe flags in ``args`` say (float start or not)."""
    if args.float_start_epochs and config.init_from is None and \
            get_method_class(config.method).trains_quantized:
        # The float stage takes --lr (or --float-start-lr) before the method's rate changes.
        float_lr = config.lr if args.float_start_lr is None else args.float_start_lr
        if args.fine_tune_lr is not None:
            config = config.replace(lr=args.fine_tune_lr)
        train_from_float(config, args.float_start_epochs, resume=args.resume,
                         float_lr=float_lr,
                         # A default-on teacher yields to an explicit --distill-from.
                         distill=args.distill_from_float_start and (
                             explicit_distill or config.distill_from is None))
    elif args.distill_from_float_start and explicit_distill:
        raise ValueError("--distill-from-float-start needs the two-stage recipe "
                         "(--float-start-epochs > 0, no --init-from, a quantizing --method); "
                         "or name the teacher with --distill-from")
    else:
        train_run(config, resume=args.resume)
