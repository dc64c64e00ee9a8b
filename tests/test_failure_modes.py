"""What symog_jax does on bad input, interruptions and faults: the promises, one section each.

No mistake may end in a normal-looking result about the wrong thing. Each promise below is
kept by the tests in the section of the same name (sections for promises whose tests have not
landed yet are listed here so the list is complete).

Data (``symog_jax.data.load_dataset`` and the ``--data-dir`` flag)
  * An explicit ``data_dir`` is the only place looked at. If it holds no usable data set (an
    empty directory, unrelated files, an image folder with only ``train/``), loading fails
    with a message naming the directory and what it holds; it never falls back to the
    bundled MNIST subset, tfds' default directory or anything else.
  * The data set named and the data found agree. For ``mnist``, ``cifar10`` and ``cifar100``
    the class count and the image shape are checked (``mnist`` named for a CIFAR-10 archive
    fails with "found 10 classes of 32x32x3 images ... expected 10 classes of 28x28x1
    images"), and image folders of these data sets must be class-balanced within reason.
  * A class folder without images is an error naming the folder, never a class dropped.
  * A truncated archive is neither loaded nor cached: a tar cut at a member boundary lacks
    the end-of-archive marker and is refused; every cache entry records how many images it
    holds and an entry that disagrees is rebuilt.
  * Temporary cache files left by a killed run are removed by the next run; those of live
    processes are left alone.

Numerics (``symog_jax.numerics``)
  * ``to_codes`` never turns NaN into a valid code: concrete input raises; under ``jit`` NaN
    becomes :data:`~symog_jax.numerics.rounding.NAN_CODE` (outside every format's range, so
    ``from_codes`` refuses it). ``+-inf`` saturate, as in ``quantize``.
  * ``best_frac_bits`` and ``sqnr_db`` reject NaN/inf like ``choose_format``; under ``jit``
    they flag it (:data:`~symog_jax.numerics.calibration.NONFINITE_FRAC_BITS`, which no
    format accepts; NaN dB).
  * ``from_codes`` range-checks codes in their own dtype (int64, uint64, Python ints) before
    any cast, so out-of-range codes cannot wrap into valid ones.
  * A floating dtype that cannot hold every level of a format exactly (float16 with many
    fractional bits, bfloat16 or float8 with too many bits) is a one-line error from
    ``quantize``, ``quantize_ste`` and ``from_codes``, not silently rounded levels.

Training, checkpoints and flags (tested in ``tests/test_failure_modes_training.py``)
  * Divergence stops the run at the first fetched loss that is non-finite or above
    ``DIVERGED_LOSS`` (a SYMOG run with clipped weights can sit at a finite 1e36), naming step,
    epoch and likely causes; no report or JSON file ever holds a non-finite number.
  * The config is compared before any restore; a damaged latest checkpoint is reported and the
    newest intact one is used; a workdir is locked while a run uses it; Ctrl-C ends cleanly
    with a true last message; an unwritable workdir gives one line naming the path.
  * Numeric flags are validated at parse time (non-finite values; a width that leaves a layer
    with fewer than 2 channels).

Errors are one line (the first line, for "not found", which then lists where it looked)
naming the problem and the path. Every test builds its own tiny data in a temporary directory;
only the last test reads ``../shared/data`` and is skipped where it is absent.
"""

from __future__ import annotations

import gzip
import io
import os
import re
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from symog_jax.data import (
    CorruptDataError,
    DataLayoutError,
    DataNotFoundError,
    load_dataset,
    load_image_folder,
)
from symog_jax.data import cache as cache_mod
from symog_jax.data import folder as folder_mod
from symog_jax.numerics import calibration, rounding
from symog_jax.numerics.calibration import best_frac_bits, choose_format, sqnr_db
from symog_jax.numerics.formats import FixedPointFormat
from symog_jax.numerics.rounding import from_codes, quantize, quantize_ste, to_codes

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"


@pytest.fixture(autouse=True)
def _isolated_dirs(tmp_path, monkeypatch):
    """Never touch the user's cache or tfds directory."""
    monkeypatch.setenv("SYMOG_JAX_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "no_tfds_here"))


def _png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr[..., 0] if arr.shape[-1] == 1 else arr).save(buf, format="PNG")
    return buf.getvalue()


def write_folder(root: Path, classes, shape=(4, 4, 3), counts=None, skip=()) -> Path:
    """``root/{train,test}/<class>/<i>.png``; ``counts`` maps (split, class) to a count
    (default 2); ``skip`` lists (split, class) folders created empty."""
    rng = np.random.default_rng(0)
    counts = counts or {}
    for split in ("train", "test"):
        for cls in classes:
            folder = root / split / cls
            folder.mkdir(parents=True)
            if (split, cls) in skip:
                continue
            for i in range(counts.get((split, cls), 2)):
                arr = rng.integers(0, 256, shape, dtype=np.uint8)
                (folder / f"{i}.png").write_bytes(_png(arr))
    return root


def tar_of(src: Path, dest: Path, arcname: str) -> Path:
    with tarfile.open(dest, "w:gz") as tar:
        tar.add(src, arcname=arcname)
    return dest


def fake_cifar10_tar(tmp: Path, file_name: str = "cifar10-jpeg.tar.gz") -> Path:
    """``tmp/data/<file_name>``: a tiny image folder shaped like CIFAR-10 (10 classes of
    32x32 RGB)."""
    names = ("airplane automobile bird cat deer dog frog horse ship truck").split()
    write_folder(tmp / "src_cifar", names, shape=(32, 32, 3))
    (tmp / "data").mkdir(exist_ok=True)
    return tar_of(tmp / "src_cifar", tmp / "data" / file_name, "cifar10")


def fake_mnist_folder(root: Path, classes=tuple("0123456789"), **kw) -> Path:
    return write_folder(root, classes, shape=(28, 28, 1), **kw)


def _run_cli(*args, cwd):
    env = dict(os.environ, PYTHONPATH=str(ROOT), SYMOG_JAX_CACHE=str(Path(cwd) / "cache"))
    return subprocess.run([sys.executable, "-m", "experiments.mnist", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def _one_line_error(res) -> str:
    assert res.returncode == 2, (res.returncode, res.stdout[-2000:], res.stderr[-2000:])
    assert "Traceback" not in res.stderr
    assert "final:" not in res.stdout  # nothing was trained
    return res.stderr


# --------------------------------------------------------------------------------------------
# Data: an explicit data_dir is the only source
# --------------------------------------------------------------------------------------------

def test_empty_data_dir_never_falls_back_to_bundled(tmp_path):
    d = tmp_path / "empty"
    d.mkdir()
    with pytest.raises(DataNotFoundError) as err:
        load_dataset("mnist", data_dir=d, allow_bundled=True, progress=False)
    first = str(err.value).splitlines()[0]
    assert str(d) in first and "empty" in first, first


def test_data_dir_of_unrelated_files_never_falls_back(tmp_path):
    d = tmp_path / "stuff"
    d.mkdir()
    (d / "notes.txt").write_text("hello")
    (d / "weights.ckpt").write_bytes(b"\0" * 10)
    with pytest.raises(DataNotFoundError) as err:
        load_dataset("mnist", data_dir=d, allow_bundled=True, progress=False)
    first = str(err.value).splitlines()[0]
    assert str(d) in first and "notes.txt" in first and "weights.ckpt" in first, first


def test_data_dir_with_only_train_is_an_error_naming_what_is_missing(tmp_path):
    d = tmp_path / "half"
    fake_mnist_folder(d)
    for f in sorted((d / "test").rglob("*"), reverse=True):
        f.rmdir() if f.is_dir() else f.unlink()
    (d / "test").rmdir()
    with pytest.raises(DataLayoutError) as err:
        load_dataset("mnist", data_dir=d, allow_bundled=True, progress=False)
    msg = str(err.value)
    assert "\n" not in msg and str(d) in msg and "test/" in msg and "train/" in msg, msg


def test_source_bundled_with_a_data_dir_is_contradictory(tmp_path):
    with pytest.raises(ValueError, match="bundled.*data_dir"):
        load_dataset("mnist", source="bundled", data_dir=tmp_path)


def test_cli_empty_data_dir_is_a_one_line_error(tmp_path):
    (tmp_path / "empty").mkdir()
    res = _run_cli("--data-dir", str(tmp_path / "empty"), "--epochs", "1", "--width", "0.125",
                   "--batch-size", "16", "--workdir", str(tmp_path / "run"), "--no-progress",
                   cwd=tmp_path)
    err = _one_line_error(res)
    assert str(tmp_path / "empty") in err.splitlines()[0] and "bundled" not in res.stdout


# --------------------------------------------------------------------------------------------
# Data: the data set named and the data found agree
# --------------------------------------------------------------------------------------------

def test_mnist_named_for_a_cifar10_archive_says_what_it_found(tmp_path):
    archive = fake_cifar10_tar(tmp_path)
    with pytest.raises(DataLayoutError) as err:
        load_dataset("mnist", data_dir=archive, progress=False)
    msg = str(err.value)
    assert "\n" not in msg and str(archive) in msg, msg
    assert "found 10 classes of 32x32x3 images" in msg and "cifar10" in msg, msg
    assert "expected 10 classes of 28x28x1 images for mnist" in msg, msg


def test_wrong_class_count_is_an_error(tmp_path):
    d = fake_mnist_folder(tmp_path / "mnist", classes=tuple("012345678"))  # no 9
    with pytest.raises(DataLayoutError, match="found 9 classes of 28x28x1 images.*expected 10 "
                                              "classes of 28x28x1 images for mnist"):
        load_dataset("mnist", data_dir=d, progress=False)
    # Under its own name the same folder is fine: only known names have a shape to check.
    ds = load_dataset("digits9", source="folder", data_dir=d, progress=False)
    assert ds.num_classes == 9


def test_data_named_like_the_set_but_holding_another_is_an_error(tmp_path):
    # cifar10 images in a file named like MNIST, found by the search inside data_dir.
    archive = fake_cifar10_tar(tmp_path, "mnist-png.tar.gz")
    with pytest.raises(DataLayoutError, match=r"mnist-png\.tar\.gz.*found 10 classes of 32x32x3"):
        load_dataset("mnist", data_dir=archive.parent, progress=False)


def test_known_image_folder_must_be_class_balanced(tmp_path):
    d = fake_mnist_folder(tmp_path / "mnist", counts={("test", "9"): 1,
                                                      **{("test", c): 4 for c in "012345678"}})
    with pytest.raises(DataLayoutError) as err:
        load_dataset("mnist", data_dir=d, progress=False)
    msg = str(err.value)
    assert "\n" not in msg and str(d) in msg and "test" in msg and "'9'" in msg, msg


def test_cli_mnist_on_a_cifar10_archive_is_a_one_line_error(tmp_path):
    archive = fake_cifar10_tar(tmp_path)
    res = _run_cli("--data-dir", str(archive), "--epochs", "1", "--width", "0.125",
                   "--batch-size", "16", "--workdir", str(tmp_path / "run"), "--no-progress",
                   cwd=tmp_path)
    err = _one_line_error(res)
    assert "found 10 classes of 32x32x3 images" in err and "28x28x1" in err, err


# --------------------------------------------------------------------------------------------
# Data: a class folder without images is an error
# --------------------------------------------------------------------------------------------

def test_empty_class_folder_in_a_directory_is_an_error(tmp_path):
    d = write_folder(tmp_path / "toys", ("a", "b", "c"),
                     skip={("train", "c"), ("test", "c")})
    with pytest.raises(DataLayoutError) as err:
        load_image_folder(d, progress=False)
    msg = str(err.value)
    assert "\n" not in msg and str(d / "train" / "c") in msg and "no images" in msg, msg


def test_class_folder_without_images_in_a_tar_is_an_error(tmp_path):
    d = write_folder(tmp_path / "toys", ("a", "b", "c"),
                     skip={("train", "c"), ("test", "c")})
    (d / "train" / "c" / "README.txt").write_text("no pictures here")
    archive = tar_of(d, tmp_path / "toys.tar.gz", "toys")
    with pytest.raises(DataLayoutError) as err:
        load_image_folder(archive, progress=False)
    msg = str(err.value)
    assert "\n" not in msg and "toys/train/c" in msg and str(archive) in msg, msg


# --------------------------------------------------------------------------------------------
# Data: a truncated archive is neither loaded nor cached
# --------------------------------------------------------------------------------------------

def _cut_at_member_boundary(src_dir: Path, dest: Path, keep_all_but: int) -> Path:
    """A .tar.gz of ``src_dir`` cut right after a member: the gzip stream is intact, the tar
    inside ends without its end-of-archive marker (as when a copy of the .tar was killed)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        tar.add(src_dir, arcname=src_dir.name)
    raw = buf.getvalue()
    with tarfile.open(fileobj=io.BytesIO(raw), mode="r") as tar:
        files = [m for m in tar.getmembers() if m.isfile()]
    last = files[len(files) - 1 - keep_all_but] if keep_all_but else files[-1]
    end = last.offset_data + -(-last.size // 512) * 512
    dest.write_bytes(gzip.compress(raw[:end]))
    return dest


@pytest.mark.parametrize("dropped", [0, 1], ids=["only-end-marker-lost", "last-image-lost"])
def test_tar_cut_at_a_member_boundary_is_refused_and_not_cached(tmp_path, dropped):
    src = write_folder(tmp_path / "toys", ("a", "b", "c"), counts={("train", "c"): 3})
    cut = _cut_at_member_boundary(src, tmp_path / "toys.tar.gz", keep_all_but=dropped)
    cache = tmp_path / "mycache"
    with pytest.raises(CorruptDataError) as err:
        load_image_folder(cut, cache_dir=cache, progress=False)
    msg = str(err.value)
    assert "\n" not in msg and str(cut) in msg and "end-of-archive" in msg, msg
    assert not list(cache.glob("*.npz")), "a truncated archive must not be cached"


def test_cache_entry_records_its_image_count_and_a_mismatch_is_rebuilt(tmp_path):
    src = write_folder(tmp_path / "toys", ("a", "b"))
    cache = tmp_path / "mycache"
    ds = load_image_folder(src, cache_dir=cache, progress=False)
    (entry,) = cache.glob("*.npz")
    with np.load(entry) as z:
        assert int(z["num_files"]) == ds.num_train + ds.num_test == 8
        arrays = dict(z)
    arrays["num_files"] = np.asarray(9)  # an entry that does not hold what it promises
    with open(entry, "wb") as f:
        np.savez(f, **arrays)
    with pytest.warns(RuntimeWarning, match="unreadable.*9"):
        again = load_image_folder(src, cache_dir=cache, progress=False)
    assert again.num_train + again.num_test == 8


# --------------------------------------------------------------------------------------------
# Data: temporary cache files of killed runs are removed
# --------------------------------------------------------------------------------------------

_KILLED_WRITER = """
import os, signal, sys
import numpy as np
from symog_jax.data import load_image_folder

def dying_savez(f, **arrays):
    f.write(b"PK half an npz")
    f.flush()
    os.kill(os.getpid(), signal.SIGKILL)  # killed in the middle of writing the cache entry

np.savez = dying_savez
load_image_folder(sys.argv[1], cache_dir=sys.argv[2], progress=False)
"""


def test_temp_cache_file_of_a_killed_run_is_removed_by_the_next_run(tmp_path):
    src = write_folder(tmp_path / "toys", ("a", "b"))
    cache = tmp_path / "mycache"
    res = subprocess.run([sys.executable, "-c", _KILLED_WRITER, str(src), str(cache)],
                         env=dict(os.environ, PYTHONPATH=str(ROOT)), capture_output=True)
    assert res.returncode == -signal.SIGKILL, res.stderr[-2000:]
    (left,) = cache.glob(".tmp-*")
    load_image_folder(src, cache_dir=cache, progress=False)
    assert not left.exists()
    assert len(list(cache.glob("*.npz"))) == 1 and not list(cache.glob(".tmp-*"))


def test_only_stale_temp_cache_files_are_removed(tmp_path):
    src = write_folder(tmp_path / "toys", ("a", "b"))
    cache = tmp_path / "mycache"
    cache.mkdir()
    host = cache_mod._host()  # as the cache spells this host in its temporary file names
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale_pid = cache / f".tmp-{host}-{dead.pid}-x1.npz"
    live_pid = cache / f".tmp-{host}-{os.getpid()}-x2.npz"  # this process is alive
    old_unknown = cache / ".tmp-abcdef.npz"                 # no owner recorded, days old
    new_unknown = cache / ".tmp-ghijkl.npz"                 # no owner recorded, just written
    for f in (stale_pid, live_pid, old_unknown, new_unknown):
        f.write_bytes(b"partial")
    two_days_ago = time.time() - 2 * 86400
    os.utime(old_unknown, (two_days_ago, two_days_ago))
    load_image_folder(src, cache_dir=cache, progress=False)
    assert not stale_pid.exists() and not old_unknown.exists()
    assert live_pid.exists() and new_unknown.exists()
    assert cache_mod.CACHE_FORMAT_VERSION >= 2  # entries written before these checks: ignored


# --------------------------------------------------------------------------------------------
# Numerics: NaN never becomes a valid code
# --------------------------------------------------------------------------------------------

FMT = FixedPointFormat(bits=2, frac_bits=1)


def test_to_codes_of_nan_raises_for_concrete_input():
    with pytest.raises(ValueError, match=r"to_codes: .*1 NaN"):
        to_codes(jnp.array([0.3, jnp.nan, -0.9]), FMT)
    with pytest.raises(ValueError, match="NaN"):
        to_codes(np.array([np.nan], np.float32), FMT)
    # inf saturates, as quantize does: it has a nearest level.
    assert to_codes(jnp.array([jnp.inf, -jnp.inf]), FMT).tolist() == [1, -1]


def test_to_codes_of_nan_under_jit_is_the_documented_sentinel():
    codes = jax.jit(lambda x: to_codes(x, FMT))(jnp.array([0.3, jnp.nan, -0.9]))
    assert codes.tolist() == [1, rounding.NAN_CODE, -1]
    assert not FMT.code_min <= rounding.NAN_CODE <= FMT.code_max
    with pytest.raises(ValueError, match="codes must lie in"):
        from_codes(codes, FMT)  # the sentinel cannot silently turn back into a value
    fmt8 = FixedPointFormat(bits=8, frac_bits=0, symmetric=False)  # codes fill all of int8
    with pytest.raises(ValueError, match="int8.*NaN"):
        jax.jit(lambda x: to_codes(x, fmt8, dtype=jnp.int8))(jnp.array([1.0]))


# --------------------------------------------------------------------------------------------
# Numerics: best_frac_bits and sqnr_db reject or flag NaN, as choose_format does
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_best_frac_bits_rejects_non_finite_input(bad):
    x = jnp.array([0.1, bad, 0.24])
    with pytest.raises(ValueError, match="NaN or inf"):
        choose_format(x, bits=2)
    with pytest.raises(ValueError, match="best_frac_bits: .*NaN or inf"):
        best_frac_bits(x, bits=2)
    w = jnp.ones((3, 4)).at[1, 2].set(bad)
    with pytest.raises(ValueError, match="channel"):
        best_frac_bits(w, bits=2, channel_axis=-1)


def test_best_frac_bits_under_jit_flags_non_finite_input():
    w = jnp.full((3, 4), 0.3).at[1, 2].set(jnp.nan).at[0, 0].set(jnp.inf)
    fb = jax.jit(lambda v: best_frac_bits(v, 2, channel_axis=-1))(w)
    assert fb.tolist() == [calibration.NONFINITE_FRAC_BITS, 2, calibration.NONFINITE_FRAC_BITS, 2]
    assert int(jax.jit(lambda v: best_frac_bits(v, 2))(w)) == calibration.NONFINITE_FRAC_BITS
    with pytest.raises(ValueError, match="NaN or inf"):
        FixedPointFormat(2, fb)  # the flag cannot become a format unnoticed


def test_sqnr_db_rejects_or_flags_nan():
    x, good = jnp.array([1.0, jnp.nan]), jnp.array([1.0, 0.5])
    with pytest.raises(ValueError, match="sqnr_db: .*NaN or inf"):
        sqnr_db(x, good)
    with pytest.raises(ValueError, match="sqnr_db: .*NaN or inf"):
        sqnr_db(good, x)
    assert np.isnan(jax.jit(sqnr_db)(x, good))  # was +inf: "no noise at all"
    assert float(sqnr_db(good, good)) == np.inf  # identical finite tensors still give inf


# --------------------------------------------------------------------------------------------
# Numerics: from_codes range-checks before any cast
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("codes", [
    np.array([2**32 + 1], np.int64),      # would wrap to 1 in int32
    np.array([-(2**32) - 1], np.int64),   # would wrap to -1
    np.array([2**63 + 1], np.uint64),
    [2**40],
])
def test_from_codes_checks_wide_codes_before_casting(codes):
    with pytest.raises(ValueError, match=r"codes must lie in \[-1, 1\]"):
        from_codes(codes, FMT)


def test_from_codes_accepts_in_range_int64():
    assert from_codes(np.array([1, 0, -1], np.int64), FMT).tolist() == [0.5, 0.0, -0.5]


# --------------------------------------------------------------------------------------------
# Numerics: dtypes that cannot hold the format's levels
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype, fmt, why", [
    (jnp.float16, FixedPointFormat(8, 30), "2\\*\\*-30 is below"),        # step underflows
    (jnp.float16, FixedPointFormat(8, -10), "above"),                     # 127 * 1024 > 65504
    (jnp.float16, FixedPointFormat(16, 4), "32767"),                      # 11-bit significand
    (jnp.bfloat16, FixedPointFormat(12, 5), "2047"),                      # 8-bit significand
    (jnp.float8_e4m3fn, FixedPointFormat(8, 4), "127"),                   # 4-bit significand
])
def test_dtype_that_cannot_hold_the_levels_is_an_error(dtype, fmt, why):
    x = jnp.linspace(-1, 1, 8).astype(dtype)
    for fn in (quantize, quantize_ste):
        with pytest.raises(ValueError) as err:
            fn(x, fmt)
        msg = str(err.value)
        assert "\n" not in msg and jnp.dtype(dtype).name in msg and repr(fmt) in msg, msg
        assert re.search(why, msg), msg
    with pytest.raises(ValueError, match=jnp.dtype(dtype).name):
        from_codes(np.zeros(3, np.int32), fmt, dtype=dtype)


def test_dtypes_that_can_hold_the_levels_still_work():
    x = jnp.linspace(-1, 1, 9)
    for dtype, fmt in ((jnp.float8_e4m3fn, FixedPointFormat(4, 3)),
                       (jnp.float16, FixedPointFormat(8, 20)),     # subnormal levels: exact
                       (jnp.bfloat16, FixedPointFormat(8, 7))):
        q = quantize(x.astype(dtype), fmt)
        assert q.dtype == dtype
        np.testing.assert_array_equal(np.asarray(q, np.float32),
                                      np.asarray(quantize(x.astype(dtype).astype(jnp.float32),
                                                          fmt)))
        np.testing.assert_array_equal(to_codes(x.astype(dtype), fmt),
                                      to_codes(x.astype(dtype).astype(jnp.float32), fmt))


# --------------------------------------------------------------------------------------------
# Data: the real archives (optional; skipped where ../shared/data is absent)
# --------------------------------------------------------------------------------------------

@pytest.mark.e2e
@pytest.mark.skipif(not (SHARED_DATA / "cifar10-jpeg.tar.gz").is_file(),
                    reason=f"{SHARED_DATA} not present")
def test_real_cifar10_archive_named_mnist_fails_fast(tmp_path, monkeypatch):
    # Count decoded images rather than time the call: CPU time also counts other threads of
    # the test process, which made a time limit flaky on a busy machine.
    decoded = []
    decode = folder_mod._decode_image
    monkeypatch.setattr(folder_mod, "_decode_image",
                        lambda data, where: decoded.append(where) or decode(data, where))
    with pytest.raises(DataLayoutError, match="found 10 classes of 32x32x3 images"):
        load_dataset("mnist", data_dir=SHARED_DATA / "cifar10-jpeg.tar.gz", progress=False)
    assert len(decoded) == 1, f"must fail at the first image, decoded {len(decoded)} of 60,000"
    assert not list((tmp_path / "cache").glob("*.npz"))
