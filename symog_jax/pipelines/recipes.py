"""Training runs as the command line trains them: recipes, stages, figures when asked.

A *recipe* is a config in sections (:data:`~symog_jax.training.config.SECTIONS`, plus
``method``) and a list of ``stages``, in an ``ml_collections.ConfigDict`` (a Python file with
``get_config()``, see ``experiments/recipes/``) or a JSON file. The sections describe the run;
each stage names what differs from them for that stage and where it starts::

    stages = [{"name": "float-start", "method": {"name": "float"}, "optim": {"epochs": 70}},
              {"name": "symog", "optim": {"lr": 0.02},
               "start_from": "float-start", "taught_by": "float-start"}]

The last stage is the run itself (in ``run.workdir``); an earlier stage trains in
``<run.workdir>/<its name>``. ``start_from`` initialises a stage from an earlier stage's network
(``run.init_from``), ``taught_by`` makes an earlier stage its teacher (``distill.teacher``). No
``stages`` (or an empty list): one run. :func:`recipe_configs` resolves a recipe into one
:class:`~symog_jax.training.config.TrainConfig` per stage, :func:`train_stages` trains them.

:func:`train_run` is :func:`~symog_jax.training.loop.train` plus the figures of
``TrainConfig.plots`` (the trainer itself draws nothing).

:func:`train_from_float` is the SYMOG paper's recipe: train the float network first, then the
quantizing method starting from its weights (``init_from``). Each stage is an ordinary run
directory (config, checkpoints, report), so both stages resume after an interruption and the
second stage's ``config.json`` records where its start came from.
"""

from __future__ import annotations

import importlib.util
import json
import sys
import time
from pathlib import Path
from typing import Callable

import ml_collections

from symog_jax.data import ImageDataset, load_dataset
from symog_jax.pipelines.figures import save_run_figures
from symog_jax.training.checkpoint import has_checkpoints
from symog_jax.training.config import SECTIONS, TrainConfig
from symog_jax.training.interrupt import TrainingInterrupted
from symog_jax.training.loop import TimePlan, check_resumable, smaller_run, train
from symog_jax.training.run import check_method_fits_model
from symog_jax.training.sharding import DataParallel


def smaller_command(config: TrainConfig, stage_epochs: tuple[int, ...],
                    argv: list[str] | None = None) -> Callable[[float], str | None]:
    """For :class:`~symog_jax.training.loop.TimePlan`: given a whole-run estimate in seconds,
    the command of a run that fits in about an hour (:func:`~symog_jax.training.loop.smaller_run`).

    ``stage_epochs``: the epochs of each stage, the float start first when there is one. Run
    from an ``experiments`` command, it is that command with ``--width``, ``--epochs`` (and
    ``--float-start-epochs``) replaced; otherwise the config values in words.

    Example:
      >>> c = TrainConfig(width=1.0, epochs=30)
      >>> smaller_command(c, (70, 30), ["python -m experiments.cifar", "--bits", "2",
      ...                               "--width", "1"])(54 * 3600.0)
      'python -m experiments.cifar --bits 2 --width 0.25 --float-start-epochs 20 --epochs 8'
    """
    def command(estimate_seconds: float) -> str | None:
        width = config.width if config.widths is None else 1.0
        new_width, epochs = smaller_run(estimate_seconds, width, stage_epochs)
        flags = {"--epochs": epochs[-1]}
        if len(epochs) > 1:
            flags = {"--float-start-epochs": epochs[0], **flags}
        if config.widths is None:
            flags = {"--width": f"{new_width:g}", **flags}
        words = argv if argv is not None else _invocation()
        if words is None:
            return ", ".join(f"{k.lstrip('-').replace('-', '_')}={v}" for k, v in flags.items())
        return " ".join([words[0], *_with_flags(list(words[1:]), flags)])
    return command


def _invocation() -> list[str] | None:
    """``["python -m experiments.X", *args]`` when run as an experiments module, else None."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    name = getattr(spec, "name", "") or ""
    if not name.startswith("experiments."):
        return None
    return [f"python -m {name}", *sys.argv[1:]]


def _with_flags(args: list[str], flags: dict) -> list[str]:
    """``args`` with each of ``flags`` set to its value (replaced where given, else added)."""
    out, skip = [], False
    for word in args:
        if skip:
            skip = False
            continue
        name = word.split("=", 1)[0]
        if name in flags:
            skip = "=" not in word
            continue
        out.append(word)
    return out + [f"{k} {v}" for k, v in flags.items()]


def train_run(config: TrainConfig, dataset: ImageDataset | None = None,
              resume: bool = False, plan: TimePlan | None = None) -> dict:
    """:func:`~symog_jax.training.loop.train`, then (with ``config.plots``) the run's figures.

    The figures (:func:`~symog_jax.pipelines.figures.save_run_figures`) are written next to
    ``report.json`` by the primary host once the run has finished (not after
    ``stop_after_epochs``). Returns the trainer's report. ``plan`` (default: this run alone,
    with :func:`smaller_command`) goes to the trainer's time estimate.
    """
    if plan is None:
        plan = TimePlan(smaller=smaller_command(config, (config.epochs,)))
    if config.plots and dataset is None:   # loaded once, for training and the histograms
        dataset = load_dataset(config.dataset, source=config.data_source,
                               data_dir=config.data_dir, allow_bundled=config.allow_bundled)
    report = train(config, dataset=dataset, resume=resume, plan=plan)
    if config.plots and "stopped_at_epoch" not in report and DataParallel.is_primary():
        figures = save_run_figures(Path(config.workdir).absolute(), dataset=dataset)
        print("figures: " + ", ".join(str(p) for p in figures))
    return report


#: Sub-directory of a run's workdir that holds its float stage.
FLOAT_STAGE_DIR = "float-start"


def float_stage_config(config: TrainConfig, float_epochs: int,
                       float_lr: float | None = None) -> TrainConfig:
    """The float stage of ``config``: same data, model, optimizer and seed; float weights.

    Activation quantization is kept (the second stage trains with it, so the float network
    should already see it). Its workdir is ``<config.workdir>/float-start``. Its peak learning
    rate is ``float_lr``, or ``config.lr`` if None (a quantizing stage that fine-tunes a trained
    float network may want a smaller one than the float network was trained with).

    Example:
      >>> c = TrainConfig(method="ste", method_config={"bits": 2}, epochs=5, lr=0.02,
      ...                 workdir="runs/x")
      >>> f = float_stage_config(c, 3, float_lr=0.05)
      >>> f.method, f.epochs, f.lr, f.workdir
      ('float', 3, 0.05, 'runs/x/float-start')
    """
    if isinstance(float_epochs, bool) or not isinstance(float_epochs, int) or float_epochs < 1:
        raise ValueError(f"float_epochs must be a positive integer, got {float_epochs!r}")
    return config.replace(method="float", epochs=float_epochs, init_from=None,
                          stop_after_epochs=None,
                          lr=config.lr if float_lr is None else float_lr,
                          workdir=str(Path(config.workdir) / FLOAT_STAGE_DIR))


#: Config fields that define the float network; a finished float stage that differs in one of
#: them is not the one asked for.
_FLOAT_NETWORK_FIELDS = ("dataset", "model", "width", "widths", "epochs", "lr", "optimizer",
                         "momentum", "weight_decay", "batch_size", "seed", "augment",
                         "max_train_examples", "act_bits", "act_range", "input_bits", "method",
                         "method_config")


def _check_same_float_stage(saved: dict, wanted: TrainConfig, float_dir: Path) -> None:
    wanted_fields = json.loads(json.dumps(wanted.flat()))     # report["config"] is flat
    differ = [f"{name}: finished {saved[name]!r}, asked {wanted_fields[name]!r}"
              for name in _FLOAT_NETWORK_FIELDS
              if name in saved and saved[name] != wanted_fields[name]]
    if differ:
        raise ValueError(f"the finished float stage in {float_dir} is not the one asked for ("
                         + "; ".join(differ) + "): use another --workdir or remove that folder")


def train_from_float(config: TrainConfig, float_epochs: int, dataset: ImageDataset | None = None,
                     resume: bool = False, float_lr: float | None = None,
                     distill: bool = False) -> dict:
    """Trains a float network for ``float_epochs``, then ``config`` starting from it.

    The float stage is :func:`float_stage_config` (peak learning rate ``float_lr``, or
    ``config.lr`` if None). With ``distill`` the float network also teaches the second stage
    (``distill.teacher``, with ``config.distill``'s weight and temperature).

    The float stage is skipped when its run has finished (its ``report.json`` exists) and
    resumed when it has checkpoints (whatever ``resume`` says: a finished float stage is never
    thrown away). ``config.init_from`` must be unset: this function sets it. Returns the second
    stage's report, with the float stage's errors under ``"float_stage"``.

    Raises:
      ValueError: ``config.init_from`` is already set (or ``config.distill.teacher`` and
        ``distill``), ``float_epochs`` < 1, or a finished float stage in the workdir was trained
        differently (epochs, learning rate, model, seed, ...).
      (and everything :func:`~symog_jax.training.loop.train` raises)
    """
    if config.init_from is not None:
        raise ValueError(f"train_from_float sets init_from itself; this config already starts "
                         f"from {config.init_from}")
    if distill and config.distill.enabled:
        raise ValueError(f"distill=True makes the float stage the teacher; this config is "
                         f"already taught by {config.distill.teacher}")
    float_config = float_stage_config(config, float_epochs, float_lr)
    second = config.replace(init_from=float_config.workdir)
    if distill:
        second = second.replace(distill={"teacher": float_config.workdir})
    report = train_stages([(FLOAT_STAGE_DIR, float_config), (config.method, second)],
                          dataset=dataset, resume=resume)
    if "stages" in report:
        float_stage = report["stages"][0]
        report["float_stage"] = {k: float_stage[k]
                                 for k in ("workdir", "epochs", "test_error_float")}
    return report


# -- recipes ----------------------------------------------------------------------------------

#: Keys of a stage besides the sections it overrides.
STAGE_KEYS = ("name", "start_from", "taught_by")


def load_recipe(path: str | Path) -> ml_collections.ConfigDict:
    """The recipe in ``path``: a Python file's ``get_config()`` or a JSON file's object.

    Raises:
      FileNotFoundError: no such file. ValueError: (one line, naming the file) not a ``.py``
        or ``.json`` file, no ``get_config``, invalid JSON, not an object.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} does not exist")
    if path.suffix == ".py":
        spec = importlib.util.spec_from_file_location(f"_recipe_{path.stem}", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        if not callable(getattr(module, "get_config", None)):
            raise ValueError(f"config file {path} has no get_config() function")
        data = module.get_config()
        data = data.to_dict() if isinstance(data, ml_collections.ConfigDict) else data
    elif path.suffix == ".json":
        try:
            data = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"config file {path} is not valid JSON: {e}") from None
    else:
        raise ValueError(f"config file {path}: expected a .py file with get_config() or a "
                         f".json file")
    if not isinstance(data, dict):
        raise ValueError(f"config file {path} must hold an object (a dict / ConfigDict)")
    return ml_collections.ConfigDict(data)


def recipe_dict(recipe) -> dict:
    """A recipe (``ConfigDict`` or dict) as plain, JSON-ready dicts and lists."""
    data = recipe.to_dict() if isinstance(recipe, ml_collections.ConfigDict) else recipe
    return json.loads(json.dumps(data))


def merge_recipe(base, partial) -> ml_collections.ConfigDict:
    """``base`` with the fields of ``partial`` replacing its own, section by section (a
    ``method`` of another name replaces the whole method section; ``stages`` replace the list).

    Example:
      >>> r = merge_recipe({"optim": {"lr": 0.1, "epochs": 3}, "method": {"name": "ste",
      ...                   "bits": 2}}, {"optim": {"lr": 0.2}, "method": {"bits": 3}})
      >>> r.optim.lr, r.optim.epochs, r.method.bits
      (0.2, 3, 3)
    """
    out = recipe_dict(base)
    for key, value in recipe_dict(partial).items():
        if key == "method" and isinstance(value, dict) and value.get("name", out.get(
                "method", {}).get("name")) != out.get("method", {}).get("name"):
            out[key] = value
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = {**out[key], **value}
        else:
            out[key] = value
    return ml_collections.ConfigDict(out)


def _stage_problems(stages, where: str) -> list[str]:
    problems, names = [], []
    if not isinstance(stages, list):
        return [f"{where}stages must be a list of stages, got {stages!r}"]
    for i, stage in enumerate(stages):
        at = f"{where}stages.{i}"
        if not isinstance(stage, dict):
            problems.append(f"{at} must be an object, got {stage!r}")
            continue
        name = stage.get("name")
        if not isinstance(name, str) or not name or "/" in name or name in names:
            problems.append(f"{at}.name must be a new non-empty name without '/', got {name!r}")
        for key in ("start_from", "taught_by"):
            ref = stage.get(key)
            if ref is not None and ref not in names:
                problems.append(f"{at}.{key} must name an earlier stage {tuple(names)}, "
                                f"got {ref!r}")
        unknown = sorted(set(stage) - set(STAGE_KEYS) - set(SECTIONS) - {"method"})
        if unknown:
            problems.append(f"unknown field(s) {', '.join(f'{at}.{k}' for k in unknown)}")
        names.append(name)
    return problems


def base_config(recipe) -> TrainConfig:
    """The run settings of a recipe without its stages (every field must be given)."""
    data = recipe_dict(recipe)
    data.pop("stages", None)
    return TrainConfig.from_dict(data)


def recipe_configs(recipe, source: str = "recipe",
                   defaults: TrainConfig | None = None) -> list[tuple[str, TrainConfig]]:
    """``[(stage name, its TrainConfig)]`` of a recipe, the run itself last.

    ``defaults`` fills fields the recipe leaves out (None: every field must be given).
    ``source`` names the recipe in errors (a file's path).

    Raises:
      ValueError: one line naming ``source`` and the field (dotted, e.g. ``optim.lr`` or
        ``stages.0.optim.epochs``).

    Example:
      >>> r = TrainConfig(method="ste", method_config={"bits": 2}, epochs=3,
      ...                 workdir="runs/x").to_dict()
      >>> r["stages"] = [{"name": "float-start", "method": {"name": "float"},
      ...                 "optim": {"epochs": 2}}, {"name": "ste", "start_from": "float-start"}]
      >>> for name, c in recipe_configs(r):
      ...     print(name, c.method, c.epochs, c.workdir, c.init_from)
      float-start float 2 runs/x/float-start None
      ste ste 3 runs/x runs/x/float-start
    """
    data = recipe_dict(recipe)
    stages = data.pop("stages", None) or []
    problems = _stage_problems(stages, "")
    if problems:
        raise ValueError(f"{source}: " + "; ".join(problems))
    try:
        base = TrainConfig.from_dict(data, defaults)
    except ValueError as e:
        raise ValueError(f"{source}: {e}") from None
    if not stages:
        return [("run", base)]
    out: list[tuple[str, TrainConfig]] = []
    dirs: dict[str, str] = {}
    for i, stage in enumerate(stages):
        last = i == len(stages) - 1
        sections = {k: v for k, v in stage.items() if k not in STAGE_KEYS}
        try:
            config = TrainConfig.from_dict(sections, base)
        except ValueError as e:
            raise ValueError(f"{source}: stages.{i}: {e}") from None
        changes = {"workdir": base.workdir if last else str(Path(base.workdir) / stage["name"])}
        if not last:
            changes["stop_after_epochs"] = None
        if stage.get("start_from"):
            changes["init_from"] = dirs[stage["start_from"]]
        if stage.get("taught_by"):
            changes["distill"] = {"teacher": dirs[stage["taught_by"]]}
        config = config.replace(**changes)
        dirs[stage["name"]] = config.workdir
        out.append((stage["name"], config))
    return out


def train_stages(stages: list[tuple[str, TrainConfig]], dataset: ImageDataset | None = None,
                 resume: bool = False) -> dict:
    """Trains the stages of a recipe (:func:`recipe_configs`) in order; returns the last's
    report with ``"stages"``: the earlier stages' workdir, epochs and float error.

    An earlier stage is skipped when its run has finished (its ``report.json`` exists; it must
    have been trained as asked: same data, model, method, epochs, learning rate, seed, ...) and
    resumed when it has checkpoints, whatever ``resume`` says (a finished stage is never thrown
    away); ``resume`` applies to the last stage (and, where none of the stages holds a
    checkpoint or report, is a ``FileNotFoundError`` that says to drop it).

    Raises:
      ValueError: a finished earlier stage was trained differently, a later stage's method
        refuses the model (:func:`~symog_jax.training.run.check_method_fits_model`), or a
        stage with checkpoints was trained with another config or data
        (:func:`~symog_jax.training.loop.check_resumable`): before anything trains.
      FileExistsError: the last stage's workdir holds checkpoints and ``resume`` is False
        (before anything trains).
      (and everything :func:`~symog_jax.training.loop.train` raises)
    """
    if not stages:
        raise ValueError("train_stages needs at least one stage")
    final_dir = Path(stages[-1][1].workdir)
    if resume and not any(has_checkpoints(c.workdir) or (Path(c.workdir) / "report.json").is_file()
                          for _, c in stages):
        what = "there is no such run directory" if not final_dir.is_dir() else \
            "no stage of it holds a checkpoint"
        raise FileNotFoundError(f"cannot resume {final_dir}: {what}; drop --resume to start "
                                "the run anew")
    if dataset is None:
        first = stages[-1][1]
        dataset = load_dataset(first.dataset, source=first.data_source,
                               data_dir=first.data_dir, allow_bundled=first.allow_bundled)
    for _, config in stages[1:]:        # before the first stage trains (it checks its own)
        check_method_fits_model(config, dataset.image_shape, dataset.num_classes)
    if not resume and has_checkpoints(final_dir):
        raise FileExistsError(f"{final_dir} already holds checkpoints; pass --resume to continue "
                              "that run or choose a new --workdir")
    # Every stage that will resume, up front: an unfinished earlier stage always resumes its
    # checkpoints, the last stage only with ``resume``.
    for _, config in stages[:-1]:
        if not (Path(config.workdir) / "report.json").is_file():
            check_resumable(config, dataset)
    if resume:
        check_resumable(stages[-1][1], dataset)
    done = []
    n = len(stages)
    epochs = tuple(c.epochs for _, c in stages)
    smaller = smaller_command(stages[-1][1], epochs)
    started = time.time()
    for i, (name, config) in enumerate(stages[:-1], start=1):
        stage_dir = Path(config.workdir)
        report_path = stage_dir / "report.json"
        if report_path.is_file():
            report = json.loads(report_path.read_text())
            _check_same_float_stage(report.get("config", {}), config, stage_dir)
            print(f"stage {i} of {n}: {name} already trained in {stage_dir}")
        else:
            print(f"stage {i} of {n}: {name}, {config.describe()}, {config.epochs} epochs, "
                  f"in {stage_dir}")
            try:
                report = train_run(config, dataset=dataset, resume=has_checkpoints(stage_dir),
                                   plan=TimePlan(later_epochs=sum(epochs[i:]),
                                                 earlier_seconds=time.time() - started,
                                                 stage=f"stage {i} of {n}", smaller=smaller))
            except TrainingInterrupted as e:
                # Resuming the whole recipe (the last stage's workdir) continues this stage.
                raise TrainingInterrupted(e.checkpointed_epoch, final_dir) from None
            if "stopped_at_epoch" in report:
                return report
        done.append({"name": name, "workdir": str(stage_dir), "epochs": config.epochs,
                     "test_error_float": report.get("test_error_float")})
    name, config = stages[-1]
    if n > 1:
        print(f"stage {n} of {n}: {name}, {config.describe()}, {config.epochs} epochs")
    # --resume of a recipe interrupted in an earlier stage starts its last stage afresh.
    report = train_run(config, dataset=dataset, resume=resume and has_checkpoints(config.workdir),
                       plan=TimePlan(earlier_seconds=time.time() - started,
                                     stage=f"stage {n} of {n}" if n > 1 else "", smaller=smaller))
    if done:
        report["stages"] = done
    return report
