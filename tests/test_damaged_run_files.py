"""Damaged run files read by the plots, evaluation and export are one-line errors naming the
file (not a JSONDecodeError traceback or a bare numpy message)."""

from __future__ import annotations

import json

import pytest

from experiments import plots as plots_cli
from symog_jax.pipelines.figures import load_metrics, load_report
from symog_jax.training.run_record import DATA_FILE, read_run_data


def test_a_damaged_report_or_metrics_line_names_the_file(tmp_path):
    (tmp_path / "report.json").write_text('{"test_error_float": 0.1, "la')
    with pytest.raises(ValueError, match=r"report\.json is damaged \(JSONDecodeError"):
        load_report(tmp_path)
    (tmp_path / "report.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match=r"report\.json must hold a JSON object"):
        load_report(tmp_path)
    (tmp_path / "metrics.jsonl").write_text('{"epoch": 1}\n{not json\n')
    with pytest.raises(ValueError, match=r"metrics\.jsonl line 2 is damaged"):
        load_metrics(tmp_path)
    (tmp_path / "metrics.jsonl").write_text('{"epoch": 1}\n3\n')
    with pytest.raises(ValueError, match=r"metrics\.jsonl line 2 must hold a JSON object"):
        load_metrics(tmp_path)


def test_plots_cli_damaged_metrics_is_one_line(tmp_path, capsys):
    (tmp_path / "metrics.jsonl").write_text("{not json\n")
    rc = plots_cli.main(["--workdir", str(tmp_path), "--no-histograms"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1
    assert len(err) == 1 and err[0].startswith("error: ") and "metrics.jsonl line 1" in err[0]
    assert (tmp_path / "metrics.jsonl").read_text() == "{not json\n"     # left as it was


@pytest.mark.parametrize("normalisation", [
    {"mean": "x", "std": [1.0]}, {"mean": [0.1], "std": [0.0]}, {"mean": [0.1, 0.2], "std": [1.0]},
    {"mean": [], "std": []}, {"mean": [float("nan")], "std": [1.0]}])
def test_a_tampered_data_json_names_the_file(tmp_path, normalisation):
    record = {"normalisation": normalisation, "fingerprint": {"sha256": "0" * 64}}
    (tmp_path / DATA_FILE).write_text(json.dumps(record))
    with pytest.raises(ValueError, match=r"data\.json is damaged .*normalisation cannot be "
                                         r"read$") as e:
        read_run_data(tmp_path)
    assert "\n" not in str(e.value)
