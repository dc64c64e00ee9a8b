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
from pathlib import Path

from symog_jax.data import ImageDataset, load_dataset
from symog_jax.pipelines.figures import save_run_figures
from symog_jax.training.config import TrainConfig
from symog_jax.training.interrupt import TrainingInterrupted
from symog_jax.training.loop import train
from symog_jax.training.sharding import DataParallel


def train_run(config: TrainConfig, dataset: ImageDataset | None = None,
              resume: bool = False) -> dict:
    """:func:`~symog_jax.training.loop.train`, then (with ``config.plots``) the run's figures.

    The figures (:func:`~symog_jax.pipelines.figures.save_run_figures`) are written next to
    ``report.json`` by the primary host once the run has finished (not after
    ``stop_after_epochs``). Returns the trainer's report.
    """
    if config.plots and dataset is None:   # loaded once, for training and the histograms
        dataset = load_dataset(config.dataset, source=config.data_source,
                               data_dir=config.data_dir, allow_bundled=config.allow_bundled)
    report = train(config, dataset=dataset, resume=resume)
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
    if not report_path.is_file():
        print(f"stage 1 of 2: float network, {float_epochs} epochs, in {float_dir}")
        has_checkpoints = (float_dir / "checkpoints").is_dir() and any(
            (float_dir / "checkpoints").iterdir())
        try:
            float_report = train_run(float_config, dataset=dataset, resume=has_checkpoints)
        except TrainingInterrupted as e:
            # Resuming the whole recipe (the top workdir) continues the float stage.
            raise TrainingInterrupted(e.checkpointed_epoch, Path(config.workdir)) from None
        if "stopped_at_epoch" in float_report:
            return float_report
    else:
        float_report = json.loads(report_path.read_text())
        _check_same_float_stage(float_report.get("config", {}), float_config, float_dir)
        print(f"stage 1 of 2: float network already trained in {float_dir}")
    print(f"stage 2 of 2: {config.describe()} from the float network, {config.epochs} epochs")
    second = config.replace(init_from=str(float_dir))
    if distill:
        second = second.replace(distill_from=str(float_dir))
    report = train_run(second, dataset=dataset, resume=resume)
    report["float_stage"] = {"workdir": str(float_dir), "epochs": float_epochs,
                             "test_error_float": float_report.get("test_error_float")}
    return report
