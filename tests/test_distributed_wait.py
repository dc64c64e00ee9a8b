"""``--distributed`` says what it waits for and gives up after ``--distributed-timeout`` with one
line naming the coordinator's address and the timeout (instead of minutes of silence)."""

from __future__ import annotations

import jax
import pytest

from experiments.mnist import EXPECTATIONS, RECIPE
from symog_jax.pipelines import cli as train_cli
from symog_jax.training import sharding
from symog_jax.training.sharding import initialize_distributed

ADDRESS = "10.255.255.1:12391"


@pytest.fixture
def unreachable(monkeypatch, capsys):
    """``jax.distributed.initialize`` that fails as JAX does when the coordinator never
    answers; records its arguments and what was printed before it was called."""
    calls = []

    def initialize(**kwargs):
        calls.append((kwargs, capsys.readouterr()))
        raise RuntimeError("DEADLINE_EXCEEDED: Barrier timed out. Id: PjRT_Client_Connect.\n"
                           "Additional GRPC error information from remote target ...")

    monkeypatch.setattr(jax.distributed, "initialize", initialize)
    monkeypatch.setattr(jax.distributed, "is_initialized", lambda: False)
    monkeypatch.setenv("JAX_COORDINATOR_ADDRESS", ADDRESS)
    monkeypatch.setenv("JAX_NUM_PROCESSES", "2")
    monkeypatch.setenv("JAX_PROCESS_ID", "1")
    return calls


def _mnist_main(argv):
    return train_cli.main("mnist", RECIPE, EXPECTATIONS, argv=argv, prog="mnist")


def test_the_wait_is_announced_bounded_and_ends_in_one_line(unreachable):
    with pytest.raises(RuntimeError) as e:
        initialize_distributed(True, timeout=7)
    (kwargs, before), = unreachable
    assert kwargs == {"initialization_timeout": 7, "num_processes": 2, "process_id": 1}
    assert before.err.splitlines() == [
        f"distributed: waiting up to 7 s for the coordinator {ADDRESS} and the other processes "
        "(process 1 of 2)"]
    message = str(e.value)
    assert "\n" not in message
    assert message.startswith(f"no answer from the coordinator {ADDRESS} (process 1 of 2) "
                              "within 7 s (--distributed-timeout)")


def test_the_default_timeout_and_bad_timeouts(unreachable):
    with pytest.raises(RuntimeError, match="within 300 s"):
        initialize_distributed(True)
    assert unreachable[0][0]["initialization_timeout"] == \
        sharding.DEFAULT_DISTRIBUTED_TIMEOUT == 300
    for bad in (0, -1.0, float("nan"), float("inf"), True, "10"):
        with pytest.raises(ValueError, match="distributed timeout must be"):
            initialize_distributed(True, timeout=bad)
    assert len(unreachable) == 1              # refused before waiting


def test_cli_unreachable_coordinator_is_one_line_before_any_data(unreachable, tmp_path, capsys,
                                                                 monkeypatch):
    monkeypatch.setattr(train_cli, "train_stages", lambda *a, **k: pytest.fail("trained"))
    rc = _mnist_main(["--distributed", "--distributed-timeout", "2.5", "--epochs", "1",
                     "--workdir", str(tmp_path / "run"), "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert unreachable[0][0]["initialization_timeout"] == 3
    assert "waiting up to 2.5 s" in unreachable[0][1].err
    assert len(err) == 1 and err[0].startswith(f"error: no answer from the coordinator {ADDRESS}")
    assert "within 2.5 s" in err[0]
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("value", ["0", "-3", "nan", "soon"])
def test_cli_bad_distributed_timeout_is_refused_while_parsing(value, capsys):
    with pytest.raises(SystemExit) as e:
        _mnist_main(["--distributed-timeout", value])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert f"argument --distributed-timeout: must be a finite number > 0, got '{value}'" in err
