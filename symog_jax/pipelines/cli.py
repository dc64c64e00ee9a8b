"""The training command of the experiment scripts: flags generated from the config dataclasses.

Every field of :class:`~symog_jax.training.TrainConfig` and of every registered method's
``Config`` is a flag (``--field-name``), with the help text kept next to the field; the fields of
the ``acts`` and ``distill`` sections by their flat names (``--act-bits``, ``--distill-from``
...: :func:`~symog_jax.training.config.flat_fields`). A method flag applies to the selected
``--method``; giving one that the method does not have is an error.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shlex
import sys
import warnings
from pathlib import Path

import jax
import jax.numpy as jnp

from symog_jax.methods import get_method_class, method_names
from symog_jax.models import MODEL_NAMES, create_model
from symog_jax.quantizers.masks import path_str
from symog_jax.pipelines.flags import finite_float, nonnegative_int, positive_float
from symog_jax.pipelines.recipes import (FLOAT_STAGE_DIR, STAGE_KEYS, load_recipe, merge_recipe,
                                         recipe_configs, recipe_dict, train_stages)
from symog_jax.training.config import (FLAT_RUN_FIELDS, SECTIONS, TrainConfig, check_field_type,
                                       flat_field_names, flat_fields, flat_to_sections,
                                       is_flat_form, resolve_file_paths)
from symog_jax.training.interrupt import TrainingInterrupted
from symog_jax.training.sharding import DEFAULT_DISTRIBUTED_TIMEOUT, initialize_distributed

#: The methods of the quantization experiments (pruning, hfp, has its own command:
#: ``python -m experiments.prune``).
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
    if kind is float:
        return finite_float           # nan/inf refused while parsing, naming the flag
    if kind in (int, str):
        return kind

    def parse(text):
        try:
            return kind(text)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
    parse.__name__ = getattr(kind, "__name__", "value")
    return parse


def add_config_flag(group, f: dataclasses.Field, default, help_text: str,
                    suppress_default: bool, choices=None, name: str | None = None) -> None:
    """Adds the flag ``--field-name`` of config field ``f`` to an argparse (group).

    The type, choices and boolean ``--x/--no-x`` come from the field; ``suppress_default``
    leaves the parsed value ``None`` when the flag is not given (and the help without it);
    ``choices`` overrides the field's own (a flag shared by several methods accepts them all);
    ``name`` (default the field's) names the flag and the parsed value (a section's field by
    its flat name: ``act_bits``).
    """
    kw = {"help": help_text + ("" if suppress_default else f" (default {default})")}
    kind = _type_of(f, default)
    dest = name or f.name
    if kind is bool:
        group.add_argument(_flag(dest), dest=dest, action=argparse.BooleanOptionalAction,
                           default=None if suppress_default else default, **kw)
        return
    if choices or "choices" in f.metadata:
        kw["choices"] = choices or f.metadata["choices"]
    if default is not None and not isinstance(default, (int, float, str)):
        kw["help"] = kw["help"].replace(f"(default {default})",
                                        f"(default {','.join(map(str, default))})")
    group.add_argument(_flag(dest), dest=dest, type=_argparse_type(kind),
                       default=None if suppress_default else default, **kw)


def build_parser(description: str, defaults: TrainConfig, expectations: str,
                 methods: tuple[str, ...] | None = None,
                 prog: str | None = None) -> argparse.ArgumentParser:
    """The parser: run flags with the experiment's defaults, then the parameters of
    ``methods`` (None: every registered method; a method's flag appears only when one of
    ``methods`` has it). ``prog`` is the usage's command (e.g. ``python -m experiments.cifar``).
    """
    methods = method_names() if methods is None else tuple(methods)
    p = argparse.ArgumentParser(description=description, epilog=expectations, prog=prog,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    flat = defaults.flat()
    for name, f in flat_fields().items():
        if not f.metadata.get("cli", True) or name in _RUN_ONLY:
            continue
        default = flat[name]
        if name == "model":
            p.add_argument("--model", default=default, choices=MODEL_NAMES,
                           help=f"{f.metadata['help']} (default {default})")
        elif name == "method":
            p.add_argument("--method", default=default, choices=methods,
                           help=f"{f.metadata['help']} (default {default})")
        else:
            add_config_flag(p, f, default, f.metadata.get("help", ""), suppress_default=False,
                            name=name)
    p.add_argument("--workdir", default=None,
                   help="where checkpoints, metrics.jsonl and report.json go "
                        "(default runs/<dataset>-<model>-<method tag>-seed<seed>)")
    p.add_argument("--resume", action="store_true", help="continue the run in --workdir")
    p.add_argument("--distributed-timeout", type=positive_float,
                   default=DEFAULT_DISTRIBUTED_TIMEOUT, metavar="SECONDS",
                   help="with --distributed: how long to wait for the coordinator and the other "
                        f"processes before giving up (default {DEFAULT_DISTRIBUTED_TIMEOUT:g})")

    # One flag per method field name; a name shared by several methods is one flag.
    seen: dict[str, list[str]] = {}
    fields: dict[str, dataclasses.Field] = {}
    choices: dict[str, list] = {}      # a shared flag accepts every method's choices
    for name in methods:
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
    run = {name: getattr(args, name) for name, f in flat_fields().items()
           if f.metadata.get("cli", True) and name not in _RUN_ONLY | {"method"}}
    try:
        config = TrainConfig.from_flat({**run, "method": args.method,
                                        "method_config": method_config,
                                        "workdir": "runs/pending"})
    except ValueError as e:      # a section's own checks name its class, the flags are flat
        raise ValueError(flat_field_names(str(e))) from None
    if config.widths is None:             # per-decision widths were checked by the config
        check_model_width(config.model, config.width)
    workdir = args.workdir or (f"runs/{config.dataset}-{config.model}-{config.describe()}-"
                               f"seed{config.seed}")
    return config.replace(workdir=workdir)


#: The stage that the short recipe flags (``--float-start-epochs`` ...) describe.
FLOAT_STAGE = FLOAT_STAGE_DIR


def legacy_recipe(defaults: TrainConfig, float_start_epochs: int = 0,
                  fine_tune_lr: float | None = None,
                  distill_from_float_start: bool = False) -> dict:
    """A recipe (dict) from a config and the float-start settings of the older API: a float
    stage of ``float_start_epochs`` (none if 0), then ``defaults`` at ``fine_tune_lr`` (None:
    its ``lr``), taught by the float network if ``distill_from_float_start``."""
    recipe = defaults.to_dict()
    if float_start_epochs:
        last = {"name": defaults.method, "start_from": FLOAT_STAGE}
        if fine_tune_lr is not None:
            last["optim"] = {"lr": fine_tune_lr}
        if distill_from_float_start:
            last["taught_by"] = FLOAT_STAGE
        recipe["stages"] = [{"name": FLOAT_STAGE, "method": {"name": "float"},
                             "optim": {"epochs": float_start_epochs}}, last]
    return recipe


def _float_start_shape(stages: list) -> dict | None:
    """The float-start settings of ``stages`` if they are the two-stage recipe the short flags
    describe (``{"epochs", "lr", "fine_tune_lr", "distill"}``, or ``{}`` for no stages), else
    None (other stages: the short recipe flags do not apply)."""
    if not stages:
        return {}
    if len(stages) != 2 or stages[0].get("name") != FLOAT_STAGE or \
            stages[1].get("start_from") != FLOAT_STAGE:
        return None
    first, last = stages
    if set(first) - {"name", "method", "optim"} or set(first.get("optim", {})) - {"epochs", "lr"} \
            or first.get("method") != {"name": "float"} or \
            set(last) - {"name", "start_from", "taught_by", "optim"} or \
            set(last.get("optim", {})) - {"lr"}:
        return None
    return {"epochs": first.get("optim", {}).get("epochs"),
            "lr": first.get("optim", {}).get("lr"),
            "fine_tune_lr": last.get("optim", {}).get("lr"),
            "distill": last.get("taught_by") == FLOAT_STAGE}


def split_config_args(argv: list[str]) -> tuple[str | None, list[tuple[str, str]], list[str]]:
    """``(--config FILE, [(dotted path, value text)] of --config.a.b=V, the other args)``.

    Example:
      >>> split_config_args(["--bits", "2", "--config", "r.py", "--config.optim.lr=0.1",
      ...                    "--config.run.seed", "3"])
      ('r.py', [('optim.lr', '0.1'), ('run.seed', '3')], ['--bits', '2'])
    """
    path, overrides, rest = None, [], []
    args = list(argv)
    while args:
        arg = args.pop(0)
        name, eq, value = arg.partition("=")
        if name == "--config" or name.startswith("--config."):
            if not eq:
                if not args:
                    raise ValueError(f"{name} needs a value")
                value = args.pop(0)
            if name == "--config":
                path = value
            else:
                overrides.append((name[len("--config."):], value))
        else:
            rest.append(arg)
    return path, overrides, rest


def _schema_field(path: list[str], recipe: dict):
    """The dataclass field of a dotted path in a recipe (``None`` for a stage's own keys)."""
    if len(path) >= 2 and path[0] == "stages" and path[1].isdigit():
        stages = recipe.get("stages") or []
        if int(path[1]) >= len(stages):
            raise ValueError(f"stages has {len(stages)} entries")
        stage = stages[int(path[1])]
        inner = path[2:]
        if len(inner) == 1 and inner[0] in STAGE_KEYS:
            return None
        if inner[:1] == ["method"] and inner[1:] != ["name"]:
            method = stage.get("method", {}).get("name", recipe["method"]["name"])
            return _method_field(method, inner)
        return _schema_field(inner, recipe)
    if len(path) != 2:
        raise ValueError("expected section.field (e.g. optim.lr, method.bits, "
                         "stages.1.optim.lr)")
    section, key = path
    own = flat_fields()
    if section == "method":
        if key == "name":
            return own["method"]
        return _method_field(recipe["method"]["name"], path)
    if section not in SECTIONS or key not in SECTIONS[section]:
        raise ValueError(f"unknown field {'.'.join(path)}")
    return own[SECTIONS[section][key]]


def _method_field(method: str, path: list[str]):
    fields = {f.name: f for f in dataclasses.fields(get_method_class(method).Config)}
    if len(path) != 2 or path[1] not in fields:
        raise ValueError(f"method {method!r} has no parameter {'.'.join(path[1:])!r} (its "
                         f"parameters: {', '.join(sorted(fields))})")
    return fields[path[1]]


def _parse_value(text: str, f) -> object:
    """The value of ``text`` for field ``f``: JSON literals for bools, numbers and null; a
    string field takes the text as it is."""
    if text.lower() in ("null", "none"):
        return None
    kind = "str" if f is None else _field_kind(f)
    if kind == "str":
        return text
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _field_kind(f) -> str:
    declared = f.metadata.get("type")
    if declared is not None:
        return getattr(declared, "__name__", "str") if declared in (int, float, str) else "other"
    annotation = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", "")
    return annotation.replace(" ", "").split("|")[0]


def apply_override(recipe: dict, dotted: str, text: str) -> None:
    """Sets ``recipe``'s field ``dotted`` (``optim.lr``, ``method.bits``, ``stages.1.optim.lr``)
    to ``text`` parsed and type-checked for that field.

    Raises:
      ValueError: one line naming ``--config.<dotted>``: unknown field, wrong type.

    Example:
      >>> r = TrainConfig().to_dict()
      >>> apply_override(r, "optim.lr", "0.1"); r["optim"]["lr"]
      0.1
      >>> apply_override(r, "data.augment", "no")
      Traceback (most recent call last):
      ...
      ValueError: --config.data.augment=no: data.augment must be true or false (a JSON boolean), ...
    """
    path = dotted.split(".")
    try:
        f = _schema_field(path, recipe)
    except ValueError as e:
        raise ValueError(f"--config.{dotted}: {e}") from None
    value = _parse_value(text, f)
    if f is not None:
        problems: list[str] = []
        check_field_type(problems, dotted, value, f)
        if problems:
            raise ValueError(f"--config.{dotted}={text}: " + "; ".join(problems))
    node = recipe
    for key in path[:-1]:
        node = node[int(key)] if isinstance(node, list) else node.setdefault(key, {})
    node[path[-1]] = value


def _is_complete_run(data: dict) -> bool:
    """A file that gives every field of one run (a run's ``config.json``, either form)."""
    if "stages" in data:
        return False
    if is_flat_form(data):
        return all(name in data for name in FLAT_RUN_FIELDS)
    return all(isinstance(data.get(s), dict) and set(keys) <= set(data[s])
               for s, keys in SECTIONS.items()) and "name" in data.get("method", {})


def resolve_recipe(recipe, config_path: str | None, overrides: list[tuple[str, str]],
                   recipe_name: str) -> tuple[dict, str]:
    """The recipe a command line asks for: ``recipe`` (the experiment's), or the file
    ``config_path`` (a complete run's config alone; a partial one on top of ``recipe``, said
    on stderr), then the dotted ``overrides``. Returns ``(recipe dict, source for errors)``."""
    data = recipe_dict(recipe)
    source = recipe_name
    if config_path is not None:
        # A relative path in the file (e.g. a run's init_from) is relative to the file.
        given = resolve_file_paths(recipe_dict(load_recipe(config_path)), Path(config_path).parent)
        source = str(config_path)
        if _is_complete_run(given):
            data = given if not is_flat_form(given) else \
                TrainConfig.from_dict(given).to_dict()
        else:
            if is_flat_form(given):
                given = flat_to_sections(given)
            data = recipe_dict(merge_recipe(data, given))
            if not _is_complete_run({k: v for k, v in given.items() if k != "stages"}):
                print(f"note: {config_path} gives {_count_fields(given)} field(s); the others "
                      f"are {recipe_name}'s", file=sys.stderr)
    for dotted, text in overrides:
        apply_override(data, dotted, text)
    if overrides:
        source += " with " + " ".join(f"--config.{d}={t}" for d, t in overrides)
    return data, source


def single_run_config(argv: list[str], recipe, recipe_name: str,
                      command: str) -> tuple[TrainConfig | None, list[str]]:
    """For a command that trains its own stages (``experiments.prune``,
    ``experiments.allocate_bits``): the run settings that ``--config FILE`` and
    ``--config.a.b=V`` in ``argv`` give (read as :func:`main` reads them, on top of ``recipe``,
    the command's defaults), or None when neither is given; and the other args.

    Raises:
      FileNotFoundError: no such file. ValueError: (one line naming the file or flag and the
        field) a wrong value, or a recipe with ``stages`` (``command`` trains its own).
    """
    config_path, overrides, rest = split_config_args(argv)
    if config_path is None and not overrides:
        return None, rest
    data, source = resolve_recipe(recipe, config_path, overrides, recipe_name)
    if data.pop("stages", None):
        raise ValueError(f"{source}: {command} trains its own stages; give a config of one "
                         f"run (no stages)")
    try:
        return TrainConfig.from_dict(data), rest
    except ValueError as e:
        raise ValueError(f"{source}: {e}") from None


def add_config_option(parser: argparse.ArgumentParser) -> None:
    """``--config`` (with ``--config.SECTION.FIELD=VALUE``) in ``parser``'s help; the values
    are taken out of the command line before parsing (:func:`split_config_args`)."""
    parser.add_argument("--config", default=None,
                        help="a recipe (experiments/recipes/*.py with get_config(), or JSON, e.g. "
                             "runs/X/config.json: re-runs X exactly); a partial file changes "
                             "only the fields it gives. --config.SECTION.FIELD=VALUE sets one "
                             "field (e.g. --config.method.bits=3, --config.optim.lr=0.01); "
                             "flags given as well override both")


def _count_fields(d: dict) -> int:
    return sum(_count_fields(v) if isinstance(v, dict) else 1 for v in d.values())


def main(description: str, recipe, expectations: str, argv=None,
         float_start_epochs: int = 0, distill_from_float_start: bool = False,
         fine_tune_lr: float | None = None, methods: tuple[str, ...] | None = None,
         prog: str | None = None, recipe_name: str = "the experiment's recipe") -> int:
    """Parses the command line, trains the recipe's stages, and turns expected failures into
    one-line errors (exit code 2).

    ``recipe``: the experiment's recipe (a ``ConfigDict``/dict with ``stages``, or a recipe
    file's path), or a :class:`TrainConfig` with the float-start settings
    (``float_start_epochs``, ``fine_tune_lr``, ``distill_from_float_start``:
    :func:`legacy_recipe`). The command line:

    * ``--config FILE`` (a recipe ``.py`` with ``get_config()`` or a ``.json``, e.g. a run's
      ``config.json``): a file that gives every field of one run is that run (no stages); a
      partial file replaces only the fields it gives, the rest are the experiment's recipe.
      Relative paths in the file (``run.init_from``, ``distill.teacher``) are relative to its
      directory, so a run's ``config.json`` re-runs from any working directory.
    * ``--config.a.b=V``: sets one field of the recipe, type-checked (``--config.method.bits=3``,
      ``--config.stages.1.optim.lr=0.01``).
    * the short flags (``--bits 2``, ``--lr``, ``--epochs`` ...) set the same fields; the float
      start's flags (``--float-start-epochs``, ``--float-start-lr``, ``--fine-tune-lr``,
      ``--distill-from-float-start``) edit the recipe's two stages.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    command = list(argv)
    if isinstance(recipe, TrainConfig):
        recipe = legacy_recipe(recipe, float_start_epochs, fine_tune_lr, distill_from_float_start)
    elif isinstance(recipe, (str, Path)):
        recipe_name = recipe_name if recipe_name != "the experiment's recipe" else str(recipe)
        recipe = load_recipe(recipe)
    try:
        config_path, overrides, argv = split_config_args(argv)
        data, source = resolve_recipe(recipe, config_path, overrides, recipe_name)
        stages = data.pop("stages", None) or []
        base = TrainConfig.from_dict(data)
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except ValueError as e:
        msg = str(e)
        named = msg if msg.startswith(("--config", "config file")) else f"{source}: {msg}"
        print(f"error: {named}",
              file=sys.stderr)
        return 2
    shape = _float_start_shape(stages)
    parser = build_parser(description, base, expectations, methods=methods, prog=prog)
    _add_recipe_flags(parser, shape)
    args = parser.parse_args(argv)
    given = set(argv)
    if args.workdir is None and (config_path is not None or any(
            d == "run.workdir" for d, _ in overrides)):
        args.workdir = base.workdir
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            config = config_from_args(args, base)
        stages = _stages(config, stages, shape, args, given)
        configs = recipe_configs({**config.to_dict(), "stages": stages}, source)
        initialize_distributed(configs[-1][1].distributed, timeout=args.distributed_timeout)
        train_stages(configs, resume=args.resume)
    except TrainingInterrupted as e:
        if e.checkpointed_epoch is None:
            print("\ninterrupted before the first epoch finished: nothing is checkpointed",
                  file=sys.stderr)
        else:
            # the same command: a bare --resume --workdir would rebuild the experiment's
            # default config, which the run's own is not (and is refused as such)
            again = [*parser.prog.split(), *command]
            if "--resume" not in command:
                again.append("--resume")
            if "--workdir" not in command and not any(a.startswith("--workdir=")
                                                      for a in command):
                again += ["--workdir", str(e.workdir)]
            print(f"\ninterrupted: epoch {e.checkpointed_epoch} is checkpointed; continue with "
                  f"--resume: {shlex.join(again)}", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print("\ninterrupted before training started: nothing is checkpointed", file=sys.stderr)
        return 130
    except (ValueError, TypeError, FileNotFoundError, FileExistsError, ImportError,
            RuntimeError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


_STAGE_FLAGS = ("--float-start-epochs", "--float-start-lr", "--fine-tune-lr",
                "--distill-from-float-start", "--no-distill-from-float-start")


def _stages(config: TrainConfig, stages: list, shape: dict | None,
            args: argparse.Namespace, given: set[str]) -> list:
    """The recipe's stages after the float-start flags (and an explicit ``--init-from``, which
    skips the float start; an explicit ``--distill-from``, which replaces its teacher)."""
    flags = {a.split("=")[0] for a in given} & set(_STAGE_FLAGS)
    if shape is None:                      # other stages: as the recipe says
        if flags:
            raise ValueError(f"{', '.join(sorted(flags))} edit the two-stage float-start "
                             f"recipe; this config has other stages (edit them with "
                             f"--config.stages.N...)")
        return stages
    explicit_distill = "--distill-from-float-start" in flags
    if not (args.float_start_epochs and config.init_from is None
            and get_method_class(config.method).trains_quantized):
        if args.distill_from_float_start and explicit_distill:
            raise ValueError("--distill-from-float-start needs the two-stage recipe "
                             "(--float-start-epochs > 0, no --init-from, a quantizing --method); "
                             "or name the teacher with --distill-from")
        return []
    first = {"name": FLOAT_STAGE, "method": {"name": "float"},
             "optim": {"epochs": args.float_start_epochs}}
    if args.float_start_lr is not None:
        first["optim"]["lr"] = args.float_start_lr
    last = {"name": config.method, "start_from": FLOAT_STAGE}
    if args.fine_tune_lr is not None:
        last["optim"] = {"lr": args.fine_tune_lr}
    # A default-on teacher yields to an explicit --distill-from.
    if args.distill_from_float_start and (explicit_distill or not config.distill.enabled):
        last["taught_by"] = FLOAT_STAGE
    return [first, last]


def _add_recipe_flags(parser: argparse.ArgumentParser, shape: dict | None) -> None:
    """``--config`` and the flags of the float-start recipe, with the recipe's values."""
    add_config_option(parser)
    shape = shape or {}
    epochs = shape.get("epochs") or 0
    fine_tune_lr = shape.get("fine_tune_lr")
    distill = shape.get("distill", False)
    parser.add_argument("--float-start-epochs", type=nonnegative_int, default=epochs,
                        help="train a float network for this many epochs first (in "
                             "<workdir>/float-start), then the method from its weights for "
                             "--epochs; 0: start from random weights; ignored with --init-from "
                             f"(default {epochs})")
    parser.add_argument("--float-start-lr", type=positive_float, default=shape.get("lr"),
                        help="peak learning rate of the float stage of --float-start-epochs "
                             "(default: the same as --lr)")
    parser.add_argument("--fine-tune-lr", type=positive_float, default=fine_tune_lr,
                        help="peak learning rate of the method's stage when it starts from the "
                             "float network of --float-start-epochs (default: " +
                             ("the same as --lr" if fine_tune_lr is None else f"{fine_tune_lr:g}") +
                             "); a run from random weights uses --lr")
    parser.add_argument("--distill-from-float-start", action=argparse.BooleanOptionalAction,
                        default=distill,
                        help="the float network of --float-start-epochs also teaches the method "
                             "(knowledge distillation: --distill-weight, --distill-temperature; "
                             f"default {'on' if distill else 'off'})")
    for action in parser._actions:
        if action.dest == "epochs":
            action.help = (f"epochs of the method's stage; with --float-start-epochs N the N "
                           f"float epochs come first (default {action.default})")
