"""``--resume`` never starts a fresh run silently, and a fresh run never mixes an earlier
attempt's metrics rows with its own (issue 32).

Before: ``resume=True`` where no checkpoint exists trained anew with rc 0, skipped the config
check and kept the killed attempt's ``metrics.jsonl`` rows (epochs ``[1, 1, 2, 3]`` from two
configs); a mistyped ``--resume --workdir`` trained anew.
"""

from __future__ import annotations

import json

import pytest

import symog_jax.pipelines.cli as train_cli
from symog_jax.training import train
from tests.test_training import synthetic_digits, tiny_config


@pytest.fixture(scope="module")
def dataset():
    return synthetic_digits(n_train=64, n_test=32)


def _stale(workdir):
    """What a run killed before its first checkpoint leaves: config and metrics rows."""
    workdir.mkdir(parents=True)
    (workdir / "config.json").write_text("{}")
    rows = [{"epoch": 1, "loss": 1.0, "lr": 0.001}]
    (workdir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return (workdir / "metrics.jsonl").read_bytes()


def test_resume_of_a_missing_run_directory_is_refused(tmp_path, dataset):
    with pytest.raises(FileNotFoundError, match=r"cannot resume .*typo: there is no such run "
                                                r"directory; drop --resume") as e:
        train(tiny_config(tmp_path / "typo", epochs=1), dataset=dataset, resume=True)
    assert "\n" not in str(e.value)
    assert not (tmp_path / "typo").exists()                   # nothing was created


def test_resume_without_a_checkpoint_is_refused_and_touches_nothing(tmp_path, dataset):
    before = _stale(tmp_path / "run")
    with pytest.raises(FileNotFoundError, match=r"holds no checkpoint .*drop --resume"):
        train(tiny_config(tmp_path / "run", epochs=1), dataset=dataset, resume=True)
    assert (tmp_path / "run" / "metrics.jsonl").read_bytes() == before
    assert not (tmp_path / "run" / "checkpoints").exists()


@pytest.mark.e2e
def test_fresh_run_moves_an_earlier_attempts_metrics_aside(tmp_path, dataset, capsys):
    before = _stale(tmp_path / "run")
    train(tiny_config(tmp_path / "run", epochs=1), dataset=dataset)
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1] and "lr" not in rows[0]     # only this run's row
    assert (tmp_path / "run" / "metrics.jsonl.prev").read_bytes() == before
    assert "moved to metrics.jsonl.prev" in capsys.readouterr().out


def test_cli_resume_without_a_run_is_rc_2_before_any_data(tmp_path, capsys, monkeypatch):
    from experiments.mnist import EXPECTATIONS, RECIPE
    import symog_jax.pipelines.recipes as recipes

    def no_data(*a, **k):
        raise AssertionError("data loaded although --resume cannot succeed")

    monkeypatch.setattr(recipes, "load_dataset", no_data)
    for argv in (["--resume", "--workdir", str(tmp_path / "typo")],
                 ["--resume", "--float-start-epochs", "0", "--workdir", str(tmp_path / "t2")]):
        rc = train_cli.main("mnist", RECIPE, EXPECTATIONS, argv=argv, prog="mnist")
        err = capsys.readouterr().err.strip().splitlines()
        assert rc == 2 and err[-1].startswith("error: cannot resume") and "drop --resume" in err[-1]


@pytest.mark.e2e
@pytest.mark.parametrize("damage", ["tampered", "deleted", "truncated"])
def test_resume_says_when_it_rewrites_a_damaged_config_file(tmp_path, dataset, capsys, damage):
    """The checkpoint's stored config is what a resume is checked against; a damaged
    ``config.json`` beside it is rewritten from that, and the run says so."""
    config = tiny_config(tmp_path / "run", epochs=2)
    train(config.replace(stop_after_epochs=1), dataset=dataset)
    path = tmp_path / "run" / "config.json"
    if damage == "tampered":
        data = json.loads(path.read_text())
        data["optim"]["lr"] = "fast"
        path.write_text(json.dumps(data))
    elif damage == "deleted":
        path.unlink()
    else:
        path.write_text(path.read_text()[:20])
    capsys.readouterr()
    train(config, dataset=dataset, resume=True)
    out = capsys.readouterr().out
    assert f"note: {path} was unreadable" in out, out
    assert "rewritten from the config the checkpoint was trained with" in out
    assert json.loads(path.read_text())["optim"]["lr"] == config.lr


@pytest.mark.e2e
def test_resume_of_an_intact_run_says_nothing_about_its_config_file(tmp_path, dataset, capsys):
    config = tiny_config(tmp_path / "run", epochs=2)
    train(config.replace(stop_after_epochs=1), dataset=dataset)
    capsys.readouterr()
    train(config, dataset=dataset, resume=True)
    assert "note:" not in capsys.readouterr().out
