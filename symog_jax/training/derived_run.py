"""A new run directory made from a finished one without training (e.g. batch norm recalibrated).

:func:`write_derived_run` writes everything the run's tools read -- ``config.json``,
``data.json``, a checkpoint, ``report.json`` (and the source's ``metrics.jsonl``, the training
that made the weights) -- into a temporary sibling directory and renames it into place only when
all of it is written, so a failed write leaves neither a half-made run nor any change to the
source. ``python -m experiments.evaluate``, ``experiments.export`` and ``--init-from`` then take
the new directory like any run.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from symog_jax.files import write_json_atomic
from symog_jax.training.checkpoint import Checkpointer
from symog_jax.training.config import TrainConfig, paths_for_run_dir
from symog_jax.training.run_record import DATA_FILE
from symog_jax.training.steps import TrainState

#: The source's files a derived run takes over as they are (when the source has them).
COPIED_FILES = (DATA_FILE, "metrics.jsonl")


def check_new_run_dir(out: str | Path, source: str | Path) -> Path:
    """``out`` as an absolute path, after checking a derived run can be written there.

    Raises:
      ValueError: ``out`` is ``source`` itself, a file, or a directory that is not empty
        (nothing a user has is overwritten).

    Example:
      >>> check_new_run_dir("runs/a-recal", "runs/a").name
      'a-recal'
    """
    path, src = Path(out).absolute(), Path(source).absolute()
    if path == src:
        raise ValueError(f"{out} is the source run itself: name a new directory for the "
                         "derived run")
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise ValueError(f"{out} exists and is not an empty directory: the derived run needs "
                         "a new one (nothing there is overwritten)")
    return path


def write_derived_run(source: str | Path, out: str | Path, config: TrainConfig,
                      state: TrainState, metadata: dict, report: dict | None) -> Path:
    """Writes the run directory ``out`` holding ``state`` as its only checkpoint.

    Args:
      source: the run ``state`` was derived from (its ``data.json`` and ``metrics.jsonl`` are
        copied).
      out: the new directory (:func:`check_new_run_dir`); its parent is created if missing.
      config: the source's config (paths usable from the working directory, as
        :func:`~symog_jax.training.config.load_run_config` gives them); stored with its paths
        relative to ``out`` and ``run.workdir`` set to ``out``.
      state: a host-local :class:`~symog_jax.training.steps.TrainState` of the source's
        structure.
      metadata: the checkpoint's metadata; must hold ``"epoch"``.
      report: ``report.json``'s contents (its ``config``, if any, replaced by the stored
        one), or ``None`` to write none (the source had none: an unfinished run stays
        unfinished).

    Returns:
      ``out`` as an absolute path.

    Raises:
      ValueError: see :func:`check_new_run_dir`; ``OSError`` / ``CheckpointWriteError``: the
        write failed (then the temporary directory is removed and ``out`` is untouched).
    """
    source, path = Path(source).absolute(), check_new_run_dir(out, source)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.partial-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)      # what a killed earlier attempt left
    try:
        tmp.mkdir()
        stored = paths_for_run_dir(config.replace(workdir=os.fspath(out)), path)
        write_json_atomic(tmp / "config.json", stored.to_json())
        for name in COPIED_FILES:
            if (source / name).is_file():
                shutil.copy2(source / name, tmp / name)
        ckpt = Checkpointer(tmp / "checkpoints", keep=config.keep_checkpoints)
        try:
            ckpt.save(int(metadata["epoch"]),
                      state, {**metadata, "config": stored.flat()})
        finally:
            ckpt.close()
        if report is not None:
            write_json_atomic(tmp / "report.json",
                              {**report, "config": stored.flat()} if "config" in report
                              else report)
        os.rename(tmp, path)     # POSIX rename replaces an empty directory (checked above)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path
