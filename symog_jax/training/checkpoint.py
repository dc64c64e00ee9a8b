"""orbax checkpoints of the train state, one per epoch, the last few kept."""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import logging
import os
import shutil
import time
import warnings
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp

# orbax logs every save at INFO; the progress bar already says what happens.
logging.getLogger("absl").setLevel(logging.WARNING)

__all__ = ["Checkpointer", "CheckpointStructureError", "CheckpointWriteError", "WorkdirLock",
           "has_checkpoints"]

#: What orbax's restore says when the saved tree and the template differ.
_STRUCTURE_MISMATCH = "tree structures do not match"


class CheckpointStructureError(ValueError):
    """A checkpoint that reads but holds a state of another structure than the one asked for
    (written by another version or config); it is not damaged and is left where it is."""


class CheckpointWriteError(OSError):
    """A checkpoint could not be written (disk full, no permission); one line that names the
    epoch, the directory, the cause and the previous checkpoint, which is left intact."""


@contextlib.contextmanager
def _orbax_quiet():
    """Silences orbax's own logging (through absl: a failed save logs a traceback for each of
    its threads) for the duration; the failure itself is raised as one line."""
    loggers = [logging.getLogger(name) for name in ("absl", "orbax")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.CRITICAL + 1)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def _os_error_in(e: BaseException) -> OSError | None:
    """The first :class:`OSError` in ``e`` and its causes/contexts (orbax wraps some)."""
    seen = set()
    while e is not None and id(e) not in seen:
        if isinstance(e, OSError):
            return e
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return None


def has_checkpoints(workdir: str | Path) -> bool:
    """Whether ``<workdir>/checkpoints`` holds a saved epoch (a directory named by a number);
    creates nothing."""
    ckpts = Path(workdir) / "checkpoints"
    try:
        return ckpts.is_dir() and any(p.name.isdigit() for p in ckpts.iterdir())
    except OSError:
        return False


class Checkpointer:
    """Saves ``(train_state, metadata)`` after each epoch under ``<workdir>/checkpoints``.

    Saves are synchronous and atomic (orbax writes to a temporary directory and renames), so a
    run killed at any moment leaves the previous epoch's checkpoint intact.
    """

    def __init__(self, directory: str | Path, keep: int = 3):
        self.directory = Path(directory).absolute()
        options = ocp.CheckpointManagerOptions(
            preservation_policy=ocp.checkpoint_managers.LatestN(keep), create=True,
            enable_async_checkpointing=False)
        self._manager = ocp.CheckpointManager(self.directory, options=options)

    def latest_epoch(self) -> int | None:
        """The last saved epoch, or ``None``."""
        return self._manager.latest_step()

    def epochs(self) -> list[int]:
        """All saved epochs, oldest first."""
        return sorted(self._manager.all_steps())

    def path(self, epoch: int) -> Path:
        return self.directory / str(epoch)

    def read_metadata(self, epoch: int) -> dict:
        """The metadata of ``epoch`` alone (the state is not read)."""
        return self._manager.restore(epoch, args=ocp.args.Composite(
            metadata=ocp.args.JsonRestore())).metadata

    def restore_latest_intact(self, template: Any, check=None) -> tuple[Any, dict]:
        """The newest checkpoint that restores, trying older ones when the newest is damaged.

        ``check(metadata)`` runs before the state is read (e.g. comparing configs); its errors
        propagate. Each damaged checkpoint is reported by path in a warning.

        Raises:
          FileNotFoundError: no checkpoint, or none of them is intact.
        """
        epochs = self.epochs()
        if not epochs:
            raise FileNotFoundError(f"no checkpoint in {self.directory}")
        damaged = []
        for epoch in reversed(epochs):
            try:
                metadata = self.read_metadata(epoch)
            except Exception as e:  # noqa: BLE001 - orbax raises many types for damaged files
                damaged.append(f"{self.path(epoch)} ({type(e).__name__})")
                warnings.warn(f"checkpoint {self.path(epoch)} is damaged ({type(e).__name__}: "
                              f"{str(e).splitlines()[0][:200]}); trying the previous one",
                              stacklevel=2)
                continue
            if check is not None:
                check(metadata)
            try:
                state, metadata = self.restore(template, epoch)
            except CheckpointStructureError:
                raise                                    # intact, only not this state's
            except Exception as e:  # noqa: BLE001
                damaged.append(f"{self.path(epoch)} ({type(e).__name__})")
                warnings.warn(f"checkpoint {self.path(epoch)} is damaged ({type(e).__name__}: "
                              f"{str(e).splitlines()[0][:200]}); trying the previous one",
                              stacklevel=2)
                continue
            self._set_aside(e for e in epochs if e > epoch)
            return state, metadata
        raise FileNotFoundError(f"no intact checkpoint in {self.directory}: damaged "
                                + ", ".join(damaged))

    def save(self, epoch: int, state: Any, metadata: dict) -> None:
        """Saves ``epoch`` (synchronously); the checkpoints before it stay as they were.

        Raises:
          CheckpointWriteError: the file system refused the write (e.g. no space left); one
            line naming the epoch, the directory and the previous checkpoint. The partial
            files of the failed save are removed; orbax's own logging is kept quiet.
        """
        try:
            with _orbax_quiet():
                self._manager.save(epoch, args=ocp.args.Composite(
                    state=ocp.args.StandardSave(state), metadata=ocp.args.JsonSave(metadata)))
                self._manager.wait_until_finished()
        except Exception as e:  # noqa: BLE001 - orbax raises the OSError itself or wrapped
            cause = _os_error_in(e)
            if cause is None:
                raise
            self._discard_partial(epoch)
            previous = [s for s in self.epochs() if s < epoch]
            kept = (f"the previous checkpoint (epoch {previous[-1]}) is intact" if previous
                    else "no earlier checkpoint exists")
            reason = cause.strerror or str(cause) or type(cause).__name__
            error = CheckpointWriteError(f"cannot write checkpoint epoch {epoch} to "
                                         f"{self.directory}: {reason}; {kept}")
            error.errno = cause.errno
            raise error from None

    def _discard_partial(self, epoch: int) -> None:
        """Removes what a failed save of ``epoch`` left (orbax's temporary directory)."""
        with contextlib.suppress(Exception), _orbax_quiet():
            self._manager.wait_until_finished()     # its threads may still be writing
        # A writer thread of the failed save can still create files after the wait above
        # (seen once in a loaded test run), so remove until the directory stays clean.
        deadline, clean_checks = time.monotonic() + 5.0, 0
        while clean_checks < 2 and time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                partial = list(self.directory.glob(f"{epoch}.orbax-checkpoint-tmp*"))
                for p in partial:
                    shutil.rmtree(p, ignore_errors=True)
                clean_checks = clean_checks + 1 if not partial else 0
            time.sleep(0.02)
        with contextlib.suppress(Exception), _orbax_quiet():
            self._manager.reload()

    def restore(self, template: Any, epoch: int | None = None) -> tuple[Any, dict]:
        """Restores into the structure (and static fields) of ``template``.

        Raises:
          CheckpointStructureError: the checkpoint holds a state of another structure (one
            line naming it and the first difference orbax reports).
        """
        epoch = self.latest_epoch() if epoch is None else epoch
        if epoch is None:
            raise FileNotFoundError(f"no checkpoint in {self.directory}")
        try:
            restored = self._restore_into(epoch, template)
            return restored.state, restored.metadata
        except ValueError as e:
            if _STRUCTURE_MISMATCH not in str(e):
                raise
            empty = _empty_fields(template)
            if not empty:
                raise self._structure_error(epoch, e) from None
        # Written before the template's empty defaulted fields existed (``act_opt_state``,
        # added for learned activation ranges): restore the others, keep the template's.
        others = {f.name: getattr(template, f.name) for f in dataclasses.fields(template)
                  if f.name not in empty}
        try:
            restored = self._restore_into(epoch, others)
        except ValueError as e:
            if _STRUCTURE_MISMATCH not in str(e):
                raise
            raise self._structure_error(epoch, e) from None
        return template.replace(**restored.state), restored.metadata

    def _structure_error(self, epoch: int, e: Exception) -> CheckpointStructureError:
        detail = " ".join(str(e).split())[:300]
        return CheckpointStructureError(
            f"checkpoint {self.path(epoch)} holds a training state of another structure than "
            f"this run builds (written by another version of symog_jax or another config; e.g. "
            f"act_range pact-pow2 runs before 2026-12-06 kept another optimizer state for "
            f"their clips): it cannot be resumed or read here; it is left as it is. "
            f"orbax: {detail}")

    def _restore_into(self, epoch: int, template: Any):
        abstract = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, template)
        return self._manager.restore(epoch, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract), metadata=ocp.args.JsonRestore()))

    def _set_aside(self, epochs) -> None:
        """Moves damaged checkpoints to ``<workdir>/damaged-checkpoints`` (kept for a look), so
        that the resumed run can save those epochs again."""
        aside = self.directory.parent / "damaged-checkpoints"
        moved = False
        for epoch in epochs:
            aside.mkdir(exist_ok=True)
            target = aside / f"{epoch}-{os.getpid()}"
            os.replace(self.path(epoch), target)
            warnings.warn(f"moved the damaged checkpoint of epoch {epoch} to {target}",
                          stacklevel=3)
            moved = True
        if moved:
            self._manager.reload()

    def close(self) -> None:
        self._manager.close()


def _empty_fields(template: Any) -> set[str]:
    """Fields of a dataclass ``template`` that have a default (fields added after checkpoints
    were written carry one) and hold no array here (e.g. ``()``); ``set()`` otherwise."""
    if not dataclasses.is_dataclass(template):
        return set()
    return {f.name for f in dataclasses.fields(template)
            if f.default is not dataclasses.MISSING
            and not jax.tree_util.tree_leaves(getattr(template, f.name))}


class WorkdirLock:
    """An exclusive lock on a run directory (``<workdir>/.lock``), released when the process
    ends, however it ends, so a killed run never leaves a stale lock.

    Raises (on entering):
      RuntimeError: another process holds the lock.
    """

    def __init__(self, workdir: Path):
        self.path = Path(workdir) / ".lock"
        self._fd = None

    def __enter__(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise RuntimeError(f"another run is using {self.path.parent} (it holds "
                                   f"{self.path}); wait for it or choose another --workdir"
                                   ) from None
            raise
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return self

    def __exit__(self, *exc):
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
        return False
