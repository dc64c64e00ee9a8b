"""Training runs as the command line trains them: figures when asked, the float-start recipe.

:func:`train_run` is :func:`~symog_jax.training.loop.train` plus the figures of
``TrainConfig.plots`` (the trainer itself draws nothing).

:func:`train_from_float` is the SYMOG paper's recipe: train the float network first, then the
quantizing method starting from its weights (``init_from``). Each stage is an ordinary run
directory (config, checkpoints, report), so both stages resume after an interruption and the
second stage's ``config.json`` records where its start came from.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Callable

from symog_jax.data import ImageDataset, load_dataset
from symog_jax.pipelines.figures import save_run_figures
from symog_jax.training.config import TrainConfig
from symog_jax.training.interrupt import TrainingInterrupted
from symog_jax.training.loop import TimePlan, smaller_run, train
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
                         "max_train_examples", "act_bits", "act_range", "input_bits")


def _check_same_float_stage(saved: dict, wanted: TrainConfig, float_dir: Path) -> None:
    wanted_fields = json.loads(wanted.to_json())
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
    (``distill_from``, with ``config.distill_weight`` and ``config.distill_temperature``).

    The float stage is skipped when its run has finished (its ``report.json`` exists) and
    resumed when it has checkpoints (whatever ``resume`` says: a finished float stage is never
    thrown away). ``config.init_from`` must be unset: this function sets it. Returns the second
    stage's report, with the float stage's errors under ``"float_stage"``.

    Raises:
      ValueError: ``config.init_from`` is already set (or ``config.distill_from`` and
        ``distill``), ``float_epochs`` < 1, or a finished float stage in the workdir was trained
        differently (epochs, learning rate, model, seed, ...).
      (and everything :func:`~symog_jax.training.loop.train` raises)
    """
    if config.init_from is not None:
        raise ValueError(f"train_from_float sets init_from itself; this config already starts "
                         f"from {config.init_from}")
    if distill and config.distill_from is not None:
        raise ValueError(f"distill=True makes the float stage the teacher; this config is "
                         f"already taught by {config.distill_from}")
    float_config = float_stage_config(config, float_epochs, float_lr)
    if dataset is None:
        dataset = load_dataset(config.dataset, source=config.data_source,
                               data_dir=config.data_dir, allow_bundled=config.allow_bundled)
    float_dir = Path(float_config.workdir)
    report_path = float_dir / "report.json"
    smaller = smaller_command(config, (float_epochs, config.epochs))
    started = time.time()
    if not report_path.is_file():
        print(f"stage 1 of 2: float network, {float_epochs} epochs, in {float_dir}")
        has_checkpoints = (float_dir / "checkpoints").is_dir() and any(
            (float_dir / "checkpoints").iterdir())
        try:
            float_report = train_run(float_config, dataset=dataset, resume=has_checkpoints,
                                     plan=TimePlan(later_epochs=config.epochs,
                                                   stage="stage 1 of 2", smaller=smaller))
        except TrainingInterrupted as e:
            # Resuming the whole recipe (the top workdir) continues the float stage.
            raise TrainingInterrupted(e.checkpointed_epoch, Path(config.workdir)) from None
        if "stopped_at_epoch" in float_report:
            return float_report
    else:
        float_report = json.loads(report_path.read_text())
        _check_same_float_stage(float_report.get("config", {}), float_config, float_dir)
        error = float_report.get("test_error_float")
        print(f"stage 1 of 2: float network already trained in {float_dir}"
              + (f" (test error {100 * error:.2f}%, float weights)" if error is not None
                 else ""))
    print(f"stage 2 of 2: {config.describe()} from the float network, {config.epochs} epochs")
    second = config.replace(init_from=str(float_dir))
    if distill:
        second = second.replace(distill_from=str(float_dir))
    report = train_run(second, dataset=dataset, resume=resume,
                       plan=TimePlan(earlier_seconds=time.time() - started,
                                     stage="stage 2 of 2", smaller=smaller))
    report["float_stage"] = {"workdir": str(float_dir), "epochs": float_epochs,
                             "test_error_float": float_report.get("test_error_float")}
    return report
