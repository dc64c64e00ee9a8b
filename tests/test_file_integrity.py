"""Nothing lost, nothing trusted as it is (issue 32): atomic writes and validated export files.

Ground truths: the bytes of the previous file (a failed write must leave them unchanged), and
hand-tampered copies of a small real export (untrained LeNet5, built in the test): each broken
field must give a one-line ``ValueError`` naming the file and the field, from both loaders.
"""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest

from symog_jax import files
from symog_jax.export import integer as integer_mod
from symog_jax.export import integer_inference as ii
from symog_jax.export.integer import export_integer, load_integer
from symog_jax.training import TrainConfig, build_run, finalize, training_split
from tests.test_training import synthetic_digits


# -- the helper ---------------------------------------------------------------------------------

def test_failure_inside_the_write_keeps_the_previous_file(tmp_path):
    p = files.write_bytes_atomic(tmp_path / "a.bin", b"good")

    def half_then_fail(f):
        f.write(b"half a fi")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space left"):
        files.atomic_write(p, half_then_fail)
    assert p.read_bytes() == b"good"
    assert sorted(x.name for x in tmp_path.iterdir()) == ["a.bin"]      # no temporary left


def test_failed_rename_keeps_the_previous_file(tmp_path, monkeypatch):
    p = files.write_json_atomic(tmp_path / "r.json", {"acc": 0.5})
    before = p.read_bytes()

    def no_rename(src, dst):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(files.os, "replace", no_rename)
    with pytest.raises(OSError):
        files.write_json_atomic(p, {"acc": 0.9})
    assert p.read_bytes() == before and json.loads(before) == {"acc": 0.5}
    assert sorted(x.name for x in tmp_path.iterdir()) == ["r.json"]


def test_non_finite_json_is_refused_before_anything_is_written(tmp_path):
    p = files.write_json_atomic(tmp_path / "report.json", {"error": 0.1})
    before = p.read_bytes()
    for bad in (float("nan"), float("inf"), -float("inf")):
        with pytest.raises(ValueError, match=r"report\.json: cannot write non-finite"):
            files.write_json_atomic(p, {"error": bad})
    assert p.read_bytes() == before
    assert sorted(x.name for x in tmp_path.iterdir()) == ["report.json"]


def test_append_line_writes_whole_lines(tmp_path):
    p = tmp_path / "metrics.jsonl"
    files.append_line(p, '{"epoch": 1}')
    files.append_line(p, '{"epoch": 2}')
    assert p.read_text() == '{"epoch": 1}\n{"epoch": 2}\n'
    with pytest.raises(ValueError, match="newline"):
        files.append_line(p, '{"epoch": 3}\n{"epoch": 4}')
    assert p.read_text().count("\n") == 2


# -- a small real export ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def dataset():
    return synthetic_digits(n_train=64, n_test=32)


def _export(dataset, tmp_path, bits, name):
    cfg = TrainConfig(dataset="synthetic", model="lenet5", method="ste",
                      method_config={"bits": bits}, epochs=1, batch_size=32, width=0.125,
                      acts={"bits": 4}, workdir=str(tmp_path / f"run{bits}"), progress=False)
    train_x, _, spe = training_split(cfg, dataset)
    built = build_run(cfg, dataset, train_x, spe)
    hq = finalize(built.method, built.state)
    path = tmp_path / name
    export_integer(hq, built.state.batch_stats, built.state.act_formats, "lenet5", path,
                   num_classes=4, width=cfg.width, image_shape=dataset.image_shape)
    return hq, built, path


@pytest.fixture(scope="module")
def export5(dataset, tmp_path_factory):
    """A 5-bit export: codes stored plainly as int8."""
    return _export(dataset, tmp_path_factory.mktemp("e5"), 5, "x5.npz")


@pytest.fixture(scope="module")
def export2(dataset, tmp_path_factory):
    """A 2-bit export: codes packed four per byte."""
    return _export(dataset, tmp_path_factory.mktemp("e2"), 2, "x2.npz")


def test_failed_reexport_keeps_the_previous_export(export5, tmp_path, monkeypatch):
    hq, built, src = export5
    path = tmp_path / "export.npz"
    shutil.copy(src, path)
    shutil.copy(src.with_suffix(".json"), path.with_suffix(".json"))
    before = path.read_bytes(), path.with_suffix(".json").read_bytes()
    load_integer(path)

    def dying_savez(f, **arrays):       # the disk fills up halfway through the npz
        f.write(b"PK\x03\x04 half an npz")
        raise OSError(28, "No space left on device")

    def again():
        export_integer(hq, built.state.batch_stats, built.state.act_formats, "lenet5", path,
                       num_classes=4, width=0.125, image_shape=(28, 28, 1))

    with monkeypatch.context() as m:
        m.setattr(integer_mod.np, "savez_compressed", dying_savez)
        with pytest.raises(OSError, match="No space left"):
            again()
    assert (path.read_bytes(), path.with_suffix(".json").read_bytes()) == before
    assert np.array_equal(load_integer(path).hq.codes["conv1"]["kernel"],
                          np.asarray(hq.codes["conv1"]["kernel"]))
    with monkeypatch.context() as m:       # the npz's temporary is written, then the disk fails
        def no_fsync(fd):
            raise OSError(28, "No space left on device")
        m.setattr(files.os, "fsync", no_fsync)
        with pytest.raises(OSError, match="No space left"):
            again()
    assert (path.read_bytes(), path.with_suffix(".json").read_bytes()) == before
    with monkeypatch.context() as m:       # the first rename fails: nothing changes
        m.setattr(files.os, "replace", lambda a, b: (_ for _ in ()).throw(OSError(5, "EIO")))
        with pytest.raises(OSError):
            again()
    assert (path.read_bytes(), path.with_suffix(".json").read_bytes()) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export.json", "export.npz"]


def test_npz_and_manifest_that_do_not_belong_together_are_refused(export5, export2, tmp_path):
    path = tmp_path / "e.npz"
    shutil.copy(export5[2], path)
    shutil.copy(export2[2].with_suffix(".json"), path.with_suffix(".json"))
    for loader in (load_integer, ii.load_program):
        with pytest.raises(ValueError, match=r"e\.npz and its manifest e\.json do not belong "
                                             r"together") as e:
            loader(path)
        assert "\n" not in str(e.value)
    shutil.copy(export5[2].with_suffix(".json"), path.with_suffix(".json"))
    load_integer(path)


# -- tampered copies ----------------------------------------------------------------------------

def _tampered(src, dst, change):
    """Copy of export ``src`` at ``dst`` after ``change(manifest, arrays)``; no side manifest."""
    with np.load(src) as z:
        arrays = {k: z[k] for k in z.files}
    manifest = json.loads(arrays.pop("manifest.json").tobytes().decode())
    change(manifest, arrays)
    arrays["manifest.json"] = np.frombuffer(json.dumps(manifest).encode(), np.uint8)
    np.savez_compressed(dst, **arrays)
    return dst


def _rec(manifest, path):
    return next(r for r in manifest["params"] if r["path"] == path)


def _float_codes(m, a):
    a["codes/conv2/kernel"] = a["codes/conv2/kernel"].astype(np.float32)


def _out_of_range(m, a):
    a["codes/conv2/kernel"].reshape(-1)[0] = 100


def _code_min(m, a):
    _rec(m, "conv2/kernel")["code_min"] = -14


def _nan_step(m, a):
    a["step/conv2/kernel"] = np.full_like(a["step/conv2/kernel"], np.nan)


def _permuted_kernel(m, a):
    r = _rec(m, "conv2/kernel")
    r["shape"] = r["shape"][::-1]
    a["codes/conv2/kernel"] = np.ascontiguousarray(a["codes/conv2/kernel"].transpose())


def _missing_array(m, a):
    del a["step/conv2/kernel"]


def _missing_field(m, a):
    del _rec(m, "conv2/kernel")["code_max"]


def _missing_params(m, a):
    del m["params"]


def _program_key(m, a):
    del a[m["integer_program"]["layers"][0]["m_key"]]


TAMPERED = {
    "float codes": (_float_codes, r"params\[\d+\] \(conv2/kernel\)\.codes: codes stored as "
                                  r"float32, expected int8"),
    "codes outside the range": (_out_of_range, r"conv2/kernel\)\.codes: codes in \[-?\d+, "
                                               r"100\] lie outside the format's range"),
    "changed code_min": (_code_min, r"conv2/kernel\): code range \[-14, 15\] is not its "
                                    r"format's \[-15, 15\]"),
    "NaN step": (_nan_step, r"conv2/kernel\)\.step: must be finite"),
    "permuted kernel": (_permuted_kernel, r"conv2/kernel\)\.shape: .* (does not match|is not)"),
    "missing array": (_missing_array, r"conv2/kernel\)\.step: array 'step/conv2/kernel' is "
                                      r"missing"),
    "missing field": (_missing_field, r"conv2/kernel\): missing field 'code_max'"),
    "missing params": (_missing_params, r"manifest: missing field 'params'"),
    "missing program array": (_program_key, r"integer_program\.layers\[0\]\.m: array .* is "
                                            r"missing"),
}


@pytest.mark.parametrize("case", sorted(TAMPERED))
def test_tampered_export_is_a_one_line_error_naming_file_and_field(case, export5, tmp_path):
    change, message = TAMPERED[case]
    path = _tampered(export5[2], tmp_path / "t.npz", change)
    for loader in (load_integer, ii.load_program):
        with pytest.raises(ValueError, match=message) as e:
            loader(path)
        assert str(e.value).startswith(str(path)) and "\n" not in str(e.value)


def test_packed_codes_outside_a_ternary_range_are_refused(export2, tmp_path):
    def u3(m, a):               # u = 3 is code 2, outside the 2-bit symmetric [-1, 1]
        r = _rec(m, "conv2/kernel")
        assert r["storage"] == "packed2" and (r["code_min"], r["code_max"]) == (-1, 1)
        a["codes/conv2/kernel"][0] = 0xFF
    path = _tampered(export2[2], tmp_path / "t.npz", u3)
    for loader in (load_integer, ii.load_program):
        with pytest.raises(ValueError, match=r"t\.npz: .*conv2/kernel\)\.codes: codes in "
                                             r"\[-?\d, 2\] lie outside"):
            loader(path)


@pytest.mark.parametrize("damage", ["truncated", "corrupt member", "not a zip", "empty"])
def test_broken_export_file_is_a_one_line_value_error(damage, export5, tmp_path):
    data = export5[2].read_bytes()
    if damage == "truncated":
        data = data[:len(data) // 2]
    elif damage == "corrupt member":            # flip bytes inside the compressed data
        data = bytearray(data)
        for i in range(200, 260):
            data[i] ^= 0x5A
        data = bytes(data)
    elif damage == "not a zip":
        data = b"not a zip at all" * 10
    else:
        data = b""
    path = tmp_path / "b.npz"
    path.write_bytes(data)
    for loader in (load_integer, ii.load_program):
        with pytest.raises(ValueError, match=r"b\.npz") as e:
            loader(path)
        assert "\n" not in str(e.value)


def test_untampered_exports_still_load(export5, export2, tmp_path):
    for hq, _, path in (export5, export2):
        net = load_integer(path)
        for name in ("conv1", "conv2", "fc1", "fc2"):
            assert np.array_equal(net.hq.codes[name]["kernel"],
                                  np.asarray(hq.codes[name]["kernel"]))
        ii.load_program(path)
        side = json.loads(path.with_suffix(".json").read_text())
        assert side["file_bytes"] == os.path.getsize(path) and len(side["npz_sha256"]) == 64
