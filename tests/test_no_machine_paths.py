"""Files that travel name no absolute path of the machine they were made on: a run directory's
JSON files store paths relative to the run directory (or as the user gave them), and the
committed benchmark results hold no ``/tmp/``, ``/work/``, ``/root/`` or ``/home/`` paths.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from symog_jax.data import load_image_folder
from symog_jax.files import path_in_dir, resolve_in_dir
from symog_jax.pipelines.export import export_run
from symog_jax.training import evaluate_run, train
from tests.test_training import ROOT, synthetic_digits, tiny_config

MACHINE_PREFIXES = ("/tmp/", "/work/", "/root/", "/home/")


def _files_naming(directory: Path, needles: set[str]) -> dict[str, list[str]]:
    """``{file: [lines]}`` of the JSON/JSONL files under ``directory`` that contain a needle."""
    found: dict[str, list[str]] = {}
    for path in sorted(directory.rglob("*.json*")):
        if not path.is_file():
            continue
        lines = [line.strip() for line in path.read_text(errors="replace").splitlines()
                 if any(n in line for n in needles)]
        if lines:
            found[str(path.relative_to(directory))] = lines[:3]
    return found


def test_path_in_dir_and_back():
    assert path_in_dir("/a/run/checkpoints", "/a/run") == "checkpoints"
    assert path_in_dir("/a/run", "/a/run") == "."
    assert path_in_dir("../data/x.tar.gz", "/a/run") == "../data/x.tar.gz"   # as given
    assert path_in_dir("/b/x", "/a/run") == "/b/x"
    assert resolve_in_dir("checkpoints", "/a/run") == Path("/a/run/checkpoints")
    assert resolve_in_dir("/b/x", "/a/run") == Path("/b/x")


def test_an_image_folder_source_names_the_path_as_given(tmp_path, monkeypatch):
    for split in ("train", "test"):
        for c in ("a", "b"):
            d = tmp_path / "toy" / split / c
            d.mkdir(parents=True)
            for i in range(2):
                Image.fromarray(np.full((4, 4), 40 + 100 * i, np.uint8)).save(d / f"{i}.png")
    monkeypatch.chdir(tmp_path)
    ds = load_image_folder("toy", cache_dir=False, progress=False)
    assert ds.source == "image folder toy"
    # the same files named absolutely stay absolute (as given), and the cache hit too
    ds = load_image_folder(tmp_path / "toy", cache_dir=tmp_path / "cache", progress=False)
    assert ds.source == f"image folder {tmp_path / 'toy'}"
    ds = load_image_folder("./toy", cache_dir=tmp_path / "cache", progress=False)
    assert ds.source == "image folder ./toy"


@pytest.mark.e2e
def test_a_run_directory_names_no_machine_path(tmp_path, monkeypatch):
    """Train, evaluate and export a tiny run given as a relative path: no JSON file in the
    run directory contains the temporary directory's path; the report's files resolve
    against the run directory, not the working directory."""
    monkeypatch.chdir(tmp_path)
    data = synthetic_digits(n_train=64, n_test=32)
    train(tiny_config(Path("run"), epochs=1), dataset=data)
    evaluate_run("run", dataset=data)
    export_run("run", Path("run") / "export.npz", dataset=data)
    run = tmp_path / "run"
    needles = {str(tmp_path), str(tmp_path.resolve())}
    assert {p.name for p in run.glob("*.json")} >= {"config.json", "data.json", "report.json",
                                                    "eval.json", "export.json"}
    assert _files_naming(run, needles) == {}
    with np.load(run / "export.npz") as z:            # the manifest embedded in the npz
        assert not any(n in bytes(z["manifest.json"]).decode() for n in needles)

    report = json.loads((run / "report.json").read_text())
    monkeypatch.chdir(ROOT)                           # elsewhere: resolve against the run
    for key in ("metrics", "checkpoints", "report"):
        assert not Path(report["files"][key]).is_absolute(), key
        assert resolve_in_dir(report["files"][key], run).exists(), key


_MACHINE_PATH = re.compile("|".join(re.escape(p) for p in MACHINE_PREFIXES))


def test_committed_results_name_no_machine_path():
    results = ROOT / "benchmarks"
    files = sorted((results / "results").glob("*.json*")) + [results / "RESULTS.md"]
    assert len(files) > 10
    offending = {}
    for path in files:
        hits = [line.strip()[:120] for line in path.read_text().splitlines()
                if _MACHINE_PATH.search(line)]
        if hits:
            offending[path.name] = hits[:2]
    assert offending == {}
