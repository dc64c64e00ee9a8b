"""orbax checkpoints of the train state, one per epoch, the last few kept."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp

# orbax logs every save at INFO; the progress bar already says what happens.
logging.getLogger("absl").setLevel(logging.WARNING)


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

    def save(self, epoch: int, state: Any, metadata: dict) -> None:
        self._manager.save(epoch, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), metadata=ocp.args.JsonSave(metadata)))
        self._manager.wait_until_finished()

    def restore(self, template: Any, epoch: int | None = None) -> tuple[Any, dict]:
        """Restores into the structure (and static fields) of ``template``."""
        epoch = self.latest_epoch() if epoch is None else epoch
        if epoch is None:
            raise FileNotFoundError(f"no checkpoint in {self.directory}")
        abstract = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, template)
        restored = self._manager.restore(epoch, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract), metadata=ocp.args.JsonRestore()))
        return restored.state, restored.metadata

    def close(self) -> None:
        self._manager.close()
