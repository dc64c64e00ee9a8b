"""A run directory is self-contained: ``data.json`` holds the input normalisation, the class
names, a fingerprint of the data and the version; evaluation and export use the stored
normalisation and refuse other data unless told (``--allow-other-data``).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from PIL import Image

from symog_jax.data import ImageDataset, load_dataset
from symog_jax.data.fingerprint import array_digest, data_fingerprint, fingerprint_differences
from symog_jax.pipelines.export import export_run
from symog_jax.pipelines.recipes import train_from_float
from symog_jax.training import TrainConfig, evaluate_run, train
from symog_jax.training.config import load_run_config
from symog_jax.training.run_record import (
    DATA_FILE, SIMD_FLAGS, machine_environment, read_run_data)
from tests.test_training import ROOT, synthetic_digits, tiny_config


# -- the fingerprint ---------------------------------------------------------------------------

def _toy(train_images, source="somewhere /a/b") -> ImageDataset:
    n = len(train_images)
    return ImageDataset("toy", train_images, np.arange(n, dtype=np.int32) % 2,
                        np.zeros((2, 2, 2, 1), np.uint8), np.zeros(2, np.int32),
                        ("a", "b"), source)


def test_fingerprint_sees_order_and_bytes_not_the_path():
    images = np.arange(4 * 2 * 2, dtype=np.uint8).reshape(4, 2, 2, 1)
    base = data_fingerprint(_toy(images))
    same_elsewhere = data_fingerprint(_toy(images.copy(), source="somewhere /c/d/e"))
    assert same_elsewhere == base
    assert fingerprint_differences(base, same_elsewhere) == []
    swapped = images[[1, 0, 2, 3]]                     # same pixels, other order
    one_byte = images.copy()
    one_byte[3, 1, 1, 0] ^= 1                          # one bit of one pixel
    for other in (swapped, one_byte):
        fp = data_fingerprint(_toy(other))
        assert fp["sha256"] != base["sha256"]
        assert fingerprint_differences(base, fp) == [
            f"content hash {base['sha256'][:12]}... vs {fp['sha256'][:12]}..."]
    fewer = data_fingerprint(_toy(images[:2]))
    assert "train images 4 vs 2" in fingerprint_differences(base, fewer)


def test_array_digest_is_sha256_of_header_and_bytes():
    import hashlib
    a = np.array([[1, 2], [3, 4]], np.uint8)
    expected = hashlib.sha256(b"|u1(2, 2);" + bytes([1, 2, 3, 4])).hexdigest()
    assert array_digest(a) == expected
    assert array_digest(np.asfortranarray(a)) == expected      # C order, whatever the layout


# -- a run trained on the bundled MNIST subset, exported with other data -----------------------

def _write_other_mnist(root: Path, bundled: ImageDataset, per_class=(20, 10)) -> Path:
    """An image folder of MNIST-shaped digits with other statistics (inverted, fewer)."""
    for split, images, labels, n in (("train", bundled.train_images, bundled.train_labels,
                                      per_class[0]),
                                     ("test", bundled.test_images, bundled.test_labels,
                                      per_class[1])):
        for c in range(10):
            d = root / split / str(c)
            d.mkdir(parents=True)
            for i in np.flatnonzero(labels == c)[:n]:
                Image.fromarray(255 - images[i, ..., 0]).save(d / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def mnist_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("mnist-run")
    cfg = TrainConfig(dataset="mnist", data_source="bundled", model="lenet5", method="symog",
                      method_config={"bits": 2, "warmup_epochs": 0.0}, epochs=1, batch_size=64,
                      optimizer="adam", lr=3e-3, width=0.125, workdir=str(root / "run"),
                      progress=False)
    bundled = load_dataset("mnist", source="bundled")
    train(cfg, dataset=bundled)
    other = load_dataset("mnist", data_dir=_write_other_mnist(root / "other", bundled),
                         cache_dir=False, progress=False)
    return root / "run", bundled, other


def _arrays(path: Path) -> dict:
    """The integer program's arrays and its manifest (the embedded copy names the file)."""
    with np.load(path) as f:
        arrays = {k: f[k] for k in f.files if k != "manifest.json"}
    manifest = json.loads(path.with_suffix(".json").read_text())
    manifest["run"].pop("workdir")      # the run directory's name (and the embedded
    manifest.pop("file_bytes")          # manifest's length and the file's hash with it)
    manifest.pop("npz_sha256")
    arrays["manifest"] = np.frombuffer(json.dumps(manifest, sort_keys=True).encode(), np.uint8)
    return arrays


@pytest.mark.e2e
def test_data_json_holds_what_the_run_was_trained_with(mnist_run):
    run, bundled, _ = mnist_run
    record = json.loads((run / DATA_FILE).read_text())
    pixels = bundled.train_images.astype(np.float64) / 255.0
    np.testing.assert_allclose(record["normalisation"]["mean"], [pixels.mean()], rtol=1e-12)
    np.testing.assert_allclose(record["normalisation"]["std"], [pixels.std() + 1e-6],
                               rtol=1e-12)
    assert record["class_names"] == [str(d) for d in range(10)]
    fp = record["fingerprint"]
    assert (fp["num_train"], fp["num_test"]) == (4000, 1000)
    assert fp["source_kind"] == "bundled MNIST 5k subset"
    assert "package_version" in record and "git_commit" in record
    env = record["environment"]                 # the machine: versions and CPU level
    assert env["packages"]["jax"] == jax.__version__ and env["python"].count(".") == 2
    assert set(env["cpu_simd"]) <= set(SIMD_FLAGS)
    assert not any(str(v).startswith("/") for v in fp.values())     # no machine path
    assert load_run_config(run).data_dir is None


@pytest.mark.e2e
def test_export_with_other_data_uses_the_stored_normalisation(mnist_run, tmp_path):
    run, bundled, other = mnist_run
    export_run(run, tmp_path / "original.npz", dataset=bundled)
    with pytest.raises(ValueError, match=r"^the data given is not the data the run .*train "
                                         r"images 4000 vs 200.*--allow-other-data") as e:
        export_run(run, tmp_path / "refused.npz", dataset=other)
    assert "\n" not in str(e.value)
    assert not (tmp_path / "refused.npz").exists()
    export_run(run, tmp_path / "other.npz", dataset=other, allow_other_data=True)
    original, with_other = _arrays(tmp_path / "original.npz"), _arrays(tmp_path / "other.npz")
    assert original.keys() == with_other.keys()
    for k in original:
        np.testing.assert_array_equal(original[k], with_other[k], err_msg=k)

    # Ground truth for the test's power: recomputing the normalisation from the other data (what
    # runs without data.json do) gives another program.
    legacy = tmp_path / "legacy"
    shutil.copytree(run, legacy)
    (legacy / DATA_FILE).unlink()
    export_run(legacy, tmp_path / "legacy.npz", dataset=other)
    recomputed = _arrays(tmp_path / "legacy.npz")
    assert any(not np.array_equal(original[k], recomputed[k]) for k in original)
    # and a run without data.json, given its own data, exports as before
    export_run(legacy, tmp_path / "legacy-own.npz", dataset=bundled)
    for k, v in _arrays(tmp_path / "legacy-own.npz").items():
        np.testing.assert_array_equal(v, original[k], err_msg=k)


@pytest.mark.e2e
def test_evaluate_refuses_other_data_unless_allowed(mnist_run, capsys):
    run, bundled, other = mnist_run
    report = json.loads((run / "report.json").read_text())
    with pytest.raises(ValueError, match="^the data given is not the data the run"):
        evaluate_run(run, dataset=other)
    result = evaluate_run(run, dataset=other, allow_other_data=True)
    out = capsys.readouterr().out
    assert "note: other data than the run was trained on" in out
    assert "train images 4000 vs 200" in out
    assert result["test_error_quantized"] != report["test_error_quantized"]   # other test set
    assert evaluate_run(run, dataset=bundled)["test_error_quantized"] == \
        report["test_error_quantized"]


def _cli(module, *args, cwd):
    env = dict(os.environ, PYTHONPATH=str(ROOT), SYMOG_JAX_CACHE=str(Path(cwd) / "cache"))
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.e2e
def test_cli_other_data_is_one_line_or_explicit(mnist_run, tmp_path):
    run, _, _ = mnist_run
    other_dir = run.parent / "other"
    for module in ("experiments.export", "experiments.evaluate"):
        extra = ["--out", str(tmp_path / "x.npz")] if module == "experiments.export" else []
        refused = _cli(module, "--workdir", str(run), "--data-dir", str(other_dir), *extra,
                       cwd=tmp_path)
        assert refused.returncode == 2, refused.stderr[-2000:]
        lines = [line for line in refused.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("error: the data given is not the data")
        allowed = _cli(module, "--workdir", str(run), "--data-dir", str(other_dir),
                       "--allow-other-data", *extra, cwd=tmp_path)
        assert allowed.returncode == 0, allowed.stderr[-2000:]
        assert "train images 4000 vs 200" in allowed.stdout


# -- no machine path needed --------------------------------------------------------------------

@pytest.mark.e2e
def test_a_moved_two_stage_run_evaluates_without_its_float_start(tmp_path):
    """The second stage's config names its start (init_from, relative to the run);
    evaluating the moved run needs neither that path nor the float stage."""
    data = synthetic_digits(n_train=128, n_test=64)
    cwd = Path.cwd()
    os.chdir(tmp_path)
    try:
        report = train_from_float(tiny_config(Path("run"), epochs=1), 1, dataset=data)
    finally:
        os.chdir(cwd)
    moved = tmp_path / "elsewhere" / "moved"
    shutil.copytree(tmp_path / "run", moved)
    shutil.rmtree(tmp_path / "run")
    # Stored relative to the run, resolved against where the run is now.
    assert json.loads((moved / "config.json").read_text())["run"]["init_from"] == "float-start"
    assert load_run_config(moved).init_from == str(moved / "float-start")
    result = evaluate_run(moved, dataset=data)
    assert result["test_error_quantized"] == report["test_error_quantized"]
    assert read_run_data(moved)["fingerprint"]["num_train"] == 128


def _strings(node):
    if isinstance(node, dict):
        return [s for v in node.values() for s in _strings(v)]
    if isinstance(node, list):
        return [s for v in node for s in _strings(v)]
    return [node] if isinstance(node, str) else []


def test_stage_paths_are_stored_relative_to_the_run_and_read_from_any_directory(
        tmp_path, monkeypatch):
    """No training: a second stage's config as the trainer writes it, read back (by the
    reader and by ``--config RUN/config.json``) from another working directory."""
    import symog_jax.pipelines.cli as cli
    from symog_jax.training.config import paths_for_run_dir
    run = tmp_path / "runs" / "x"
    (run / "float-start").mkdir(parents=True)
    (tmp_path / "runs" / "a").mkdir()
    second = tiny_config(run, init_from=str(run / "float-start"),
                         distill={"teacher": str(tmp_path / "runs" / "a")})
    (run / "config.json").write_text(paths_for_run_dir(second, run).to_json())
    stored = json.loads((run / "config.json").read_text())
    assert (stored["run"]["init_from"], stored["distill"]["teacher"]) == ("float-start", "../a")
    absolute = [s for s in _strings(stored) if s.startswith("/") and s != str(run)]
    assert absolute == []                        # (the workdir is as given: tmp_path here)
    elsewhere = tmp_path / "b" / "c"
    elsewhere.mkdir(parents=True)
    monkeypatch.chdir(elsewhere)
    config = load_run_config(os.path.relpath(run))
    assert os.path.abspath(config.init_from) == str(run / "float-start")
    assert os.path.abspath(config.distill.teacher) == str(tmp_path / "runs" / "a")
    data, _ = cli.resolve_recipe({}, os.path.relpath(run / "config.json"), [], "r")
    again = TrainConfig.from_dict(data)
    assert again == config == second.replace(init_from=config.init_from,
                                             distill=config.distill)
    # A file written before (paths relative to the directory the run was started in) keeps
    # a path that only exists that way.
    monkeypatch.chdir(tmp_path)
    old = json.loads(second.to_json())
    old["run"]["init_from"] = "runs/x/float-start"
    (run / "config.json").write_text(json.dumps(old))
    assert load_run_config(run).init_from == "runs/x/float-start"


@pytest.mark.e2e
def test_a_two_stage_run_re_runs_from_its_config_in_another_directory(tmp_path, monkeypatch):
    """A float stage then a distilled SYMOG stage (absolute workdir); the second stage's
    config.json holds no absolute path and, read from another directory, starts from and is
    taught by the same float network: the re-run's errors are bit-identical."""
    data = synthetic_digits(n_train=128, n_test=64)
    run = tmp_path / "a" / "run"
    monkeypatch.chdir(tmp_path)
    report = train_from_float(tiny_config(run, epochs=1), 1, dataset=data, distill=True)
    stored = json.loads((run / "config.json").read_text())
    assert (stored["run"]["init_from"], stored["distill"]["teacher"]) == \
        ("float-start", "float-start")
    assert [s for s in _strings(stored) if s.startswith("/")] == [str(run)]   # the workdir
    elsewhere = tmp_path / "b"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    config = load_run_config(Path("..") / "a" / "run")
    assert os.path.abspath(config.init_from) == os.path.abspath(config.distill.teacher) == \
        str(run / "float-start")
    again = train(config.replace(workdir="again"), dataset=data)
    keys = [k for k in report if k.startswith("test_error")]
    assert keys and all(again[k] == report[k] for k in keys)
    rerun = json.loads((elsewhere / "again" / "config.json").read_text())
    assert rerun["run"]["init_from"] == "../../a/run/float-start"
    assert not any(s.startswith("/") for s in _strings(rerun))


def test_machine_environment_reads_the_cpu_and_its_simd_level(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nmodel name\t: Test CPU 9000\n"
                       "flags\t\t: fpu sse4_2 avx avx2 avx512f avx512bw\n\n"
                       "processor\t: 1\nmodel name\t: Other\nflags\t\t: fpu\n")
    env = machine_environment(cpuinfo)
    assert env["cpu"] == "Test CPU 9000"            # the first processor's
    assert env["cpu_simd"] == ["sse4_2", "avx", "avx2", "avx512f"]
    arm = tmp_path / "arm"
    arm.write_text("Features\t: fp asimd sve\n")
    assert machine_environment(arm)["cpu_simd"] == ["asimd", "sve"]
    missing = machine_environment(tmp_path / "absent")     # not Linux: no error
    assert missing["cpu_simd"] == [] and missing["packages"]["numpy"] == np.__version__
