"""A full disk during a checkpoint is one line (epoch, directory, cause, the previous checkpoint
intact), not orbax's tracebacks from each of its threads; the previous checkpoint restores."""

from __future__ import annotations

import errno

import jax.numpy as jnp
import numpy as np
import pytest
import tensorstore

from symog_jax.training import train
from symog_jax.training.checkpoint import (Checkpointer, CheckpointStructureError,
                                           CheckpointWriteError)
from tests.test_training import synthetic_digits, tiny_config


def _disk_full(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def _assert_quiet(captured) -> None:
    text = captured.out + captured.err
    assert "Traceback" not in text and "ERROR:absl" not in text, text[:2000]


def test_a_full_disk_during_a_save_is_one_line_and_keeps_the_previous(tmp_path, capfd,
                                                                      monkeypatch):
    ckpt = Checkpointer(tmp_path / "checkpoints")
    state = {"w": jnp.arange(6.0)}
    ckpt.save(1, state, {"epoch": 1})
    capfd.readouterr()
    monkeypatch.setattr(tensorstore, "open", _disk_full)
    with pytest.raises(CheckpointWriteError) as e:
        ckpt.save(2, {"w": jnp.zeros(6)}, {"epoch": 2})
    _assert_quiet(capfd.readouterr())
    assert str(e.value) == (f"cannot write checkpoint epoch 2 to {tmp_path / 'checkpoints'}: "
                            "No space left on device; the previous checkpoint (epoch 1) is "
                            "intact")
    assert isinstance(e.value, OSError) and e.value.errno == errno.ENOSPC
    monkeypatch.undo()
    assert ckpt.epochs() == [1]
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["1"]  # no partial
    restored, meta = ckpt.restore(state)
    np.testing.assert_array_equal(restored["w"], np.arange(6.0))
    assert meta == {"epoch": 1}
    ckpt.save(2, {"w": jnp.zeros(6)}, {"epoch": 2})     # with space again, epoch 2 saves
    assert ckpt.epochs() == [1, 2]
    ckpt.close()


def test_a_first_checkpoint_that_fails_says_there_is_none_before(tmp_path, monkeypatch):
    ckpt = Checkpointer(tmp_path / "checkpoints")
    monkeypatch.setattr(tensorstore, "open", _disk_full)
    with pytest.raises(CheckpointWriteError, match=r"epoch 1 .*: No space left on device; no "
                                                   r"earlier checkpoint exists$"):
        ckpt.save(1, {"w": jnp.arange(3.0)}, {"epoch": 1})
    ckpt.close()


def test_other_failures_are_not_disguised(tmp_path, monkeypatch):
    ckpt = Checkpointer(tmp_path / "checkpoints")

    def broken(*args, **kwargs):
        raise KeyError("not a file-system problem")

    monkeypatch.setattr(tensorstore, "open", broken)
    with pytest.raises(KeyError):
        ckpt.save(1, {"w": jnp.arange(3.0)}, {"epoch": 1})
    ckpt.close()


@pytest.mark.e2e
def test_training_stops_with_one_line_when_the_disk_fills(tmp_path, capfd, monkeypatch):
    """Epoch 2's checkpoint fails: train raises the one-line error (a CLI prints it as
    ``error: ...`` with rc 2), nothing else is printed, and epoch 1 still restores."""
    original = Checkpointer.save

    def save(self, epoch, state, metadata):
        if epoch == 2:
            with monkeypatch.context() as m:
                m.setattr(tensorstore, "open", _disk_full)
                return original(self, epoch, state, metadata)
        return original(self, epoch, state, metadata)

    monkeypatch.setattr(Checkpointer, "save", save)
    data = synthetic_digits(n_train=64, n_test=32)
    with pytest.raises(CheckpointWriteError) as e:
        train(tiny_config(tmp_path / "run", epochs=2), dataset=data)
    _assert_quiet(capfd.readouterr())
    assert "\n" not in str(e.value)
    assert str(e.value).startswith("cannot write checkpoint epoch 2 to ")
    assert str(e.value).endswith("No space left on device; the previous checkpoint (epoch 1) "
                                 "is intact")
    monkeypatch.undo()
    ckpt = Checkpointer(tmp_path / "run" / "checkpoints")
    assert ckpt.epochs() == [1]
    assert ckpt.read_metadata(1)["epoch"] == 1
    ckpt.close()


def test_a_checkpoint_of_another_structure_is_refused_in_one_line_and_left_in_place(tmp_path):
    """Not damage: an intact checkpoint whose state differs in structure from the template
    (another version's optimizer state) raises CheckpointStructureError naming it, and neither
    it nor an older one is moved aside or restored in its place."""
    ckpt = Checkpointer(tmp_path / "checkpoints")
    for epoch in (1, 2):
        ckpt.save(epoch, {"w": jnp.arange(6.0), "opt": [jnp.zeros(2), jnp.zeros(2)]},
                  {"epoch": epoch})
    template = {"w": jnp.zeros(6), "opt": [jnp.zeros(2), jnp.zeros(2), jnp.zeros(2)]}
    with pytest.raises(CheckpointStructureError, match=r"checkpoint .*checkpoints/2 holds a "
                                                       r"training state of another structure"):
        ckpt.restore(template)
    with pytest.raises(CheckpointStructureError, match="checkpoints/2 .*left as it is"):
        ckpt.restore_latest_intact(template)
    assert ckpt.epochs() == [1, 2]
    assert not (tmp_path / "damaged-checkpoints").exists()
    state, meta = ckpt.restore({"w": jnp.zeros(6), "opt": [jnp.zeros(2), jnp.zeros(2)]})
    np.testing.assert_array_equal(state["w"], np.arange(6.0))
    assert meta == {"epoch": 2}
