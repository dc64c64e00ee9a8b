"""Tests of the data loaders (symog_jax.data): all fixtures are tiny files written here."""

from __future__ import annotations

import gzip
import io
import json
import os
import pickle
import shutil
import struct
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from symog_jax import data
from symog_jax.data import (
    CorruptDataError,
    DataLayoutError,
    DataNotFoundError,
    ImageDataset,
)
from symog_jax.data import folder as folder_mod
from symog_jax.data import (
    load_bundled_mnist5k,
    load_dataset,
    load_image_folder,
    load_original_archive,
    load_tfds,
    tfds_source,
)

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(autouse=True)
def _isolated_dirs(tmp_path, monkeypatch):
    """Keep every test away from the user's real cache and tfds directories."""
    monkeypatch.setenv("SYMOG_JAX_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "no_tfds_here"))


# --------------------------------------------------------------------------- fixtures


def _png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr.squeeze(-1) if arr.shape[-1] == 1 else arr).save(buf, format="PNG")
    return buf.getvalue()


def write_image_folder(
    root: Path,
    *,
    channels: int = 3,
    size: tuple[int, int] = (5, 4),
    classes: tuple[str, ...] = ("ant", "bee", "cat"),
    counts: dict[str, int] | None = None,
    seed: int = 0,
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Write ``root/{train,test}/<class>/<i>.png``; return the expected arrays per split,
    in the documented order (class, then file number)."""
    counts = counts or {"train": 3, "test": 2}
    rng = np.random.default_rng(seed)
    expected = {}
    for split, n in counts.items():
        images, labels = [], []
        for label, cls in enumerate(classes):
            (root / split / cls).mkdir(parents=True)
            # 12 numbers sort as 0, 1, ..., 11 (natural order), not 0, 1, 10, 11, 2.
            for i in range(n if cls != "bee" else n + 10):
                arr = rng.integers(0, 256, (*size, channels), dtype=np.uint8)
                (root / split / cls / f"{i}.png").write_bytes(_png(arr))
                images.append(arr)
                labels.append(label)
        expected[split] = (np.stack(images), np.array(labels, np.int32))
    return expected


def make_tar(src: Path, dest: Path, arcname: str | None) -> Path:
    with tarfile.open(dest, "w:gz") as tar:
        if arcname is None:
            for child in sorted(src.iterdir()):
                tar.add(child, arcname=child.name)
        else:
            tar.add(src, arcname=arcname)
    return dest


def check_dataset(ds: ImageDataset, expected, classes=("ant", "bee", "cat")) -> None:
    for split in ("train", "test"):
        images, labels = getattr(ds, f"{split}_images"), getattr(ds, f"{split}_labels")
        assert images.dtype == np.uint8 and labels.dtype == np.int32
        np.testing.assert_array_equal(images, expected[split][0])
        np.testing.assert_array_equal(labels, expected[split][1])
    assert ds.class_names == classes
    assert ds.num_classes == len(classes)
    assert ds.image_shape == expected["train"][0].shape[1:]


def write_cifar_original(dest: Path, *, hundred: bool = False, n: int = 4) -> dict:
    """A tiny CIFAR archive in the original pickled format (dict with bytes keys, rows of
    3072 uint8 in CHW order). Returns the rows and labels written per split."""
    rng = np.random.default_rng(1)
    folder = "cifar-100-python" if hundred else "cifar-10-batches-py"
    num_classes = 100 if hundred else 10
    members: dict[str, bytes] = {}
    written: dict[str, list] = {"train": [], "test": []}

    def batch(split: str) -> dict:
        rows = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, num_classes, n)]
        written[split].append((rows, labels))
        key = b"fine_labels" if hundred else b"labels"
        return {b"batch_label": b"x", key: labels, b"data": rows, b"filenames": [b"f"] * n}

    if hundred:
        members["train"] = pickle.dumps(batch("train"), protocol=2)
        members["test"] = pickle.dumps(batch("test"), protocol=2)
        names = [f"class{i:03d}".encode() for i in range(100)]
        members["meta"] = pickle.dumps({b"fine_label_names": names, b"coarse_label_names": []})
    else:
        for i in range(1, 6):
            members[f"data_batch_{i}"] = pickle.dumps(batch("train"), protocol=2)
        members["test_batch"] = pickle.dumps(batch("test"), protocol=2)
        names = [
            b"airplane",
            b"automobile",
            b"bird",
            b"cat",
            b"deer",
            b"dog",
            b"frog",
            b"horse",
            b"ship",
            b"truck",
        ]
        members["batches.meta"] = pickle.dumps({b"label_names": names, b"num_vis": 3072})
    if dest.name.endswith(".tar.gz"):
        with tarfile.open(dest, "w:gz") as tar:
            for fname, payload in members.items():
                info = tarfile.TarInfo(f"{folder}/{fname}")
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))
    else:
        dest.mkdir(parents=True)
        for fname, payload in members.items():
            (dest / fname).write_bytes(payload)
    return {
        split: (np.concatenate([r for r, _ in parts]), np.concatenate([l for _, l in parts]))
        for split, parts in written.items()
    }


def _idx(arr: np.ndarray, magic: int) -> bytes:
    return struct.pack(f">I{arr.ndim}I", magic, *arr.shape) + arr.astype(np.uint8).tobytes()


def write_mnist_idx(directory: Path, n_train: int = 6, n_test: int = 3) -> dict:
    rng = np.random.default_rng(2)
    directory.mkdir(parents=True, exist_ok=True)
    out = {}
    for split, prefix, n in (("train", "train", n_train), ("test", "t10k", n_test)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, n).astype(np.uint8)
        (directory / f"{prefix}-images-idx3-ubyte.gz").write_bytes(
            gzip.compress(_idx(images, 2051))
        )
        (directory / f"{prefix}-labels-idx1-ubyte.gz").write_bytes(
            gzip.compress(_idx(labels, 2049))
        )
        out[split] = (images, labels)
    return out


# --------------------------------------------------------------------------- ImageDataset


def _tiny_ds(**overrides) -> ImageDataset:
    kwargs = dict(
        name="t",
        train_images=np.zeros((3, 2, 2, 1), np.uint8),
        train_labels=np.array([0, 1, 1], np.int32),
        test_images=np.zeros((1, 2, 2, 1), np.uint8),
        test_labels=np.array([1], np.int32),
        class_names=("a", "b"),
        source="test",
    )
    kwargs.update(overrides)
    return ImageDataset(**kwargs)


def test_image_dataset_properties_and_summary():
    ds = _tiny_ds()
    assert ds.image_shape == (2, 2, 1) and ds.num_classes == 2
    assert (ds.num_train, ds.num_test) == (3, 1)
    assert "3 train / 1 test" in ds.summary() and "source: test" in ds.summary()


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"train_images": np.zeros((3, 2, 2), np.uint8)}, "train_images must be uint8"),
        ({"train_images": np.zeros((3, 2, 2, 1), np.float32)}, "train_images must be uint8"),
        ({"train_labels": np.array([0, 1, 1], np.int64)}, "train_labels must be int32"),
        ({"train_labels": np.array([0, 1], np.int32)}, "3 train images but 2 labels"),
        ({"test_labels": np.array([2], np.int32)}, r"labels must lie in \[0, 2\)"),
        ({"test_images": np.zeros((1, 3, 2, 1), np.uint8)}, "train images are"),
        ({"class_names": ["a", "b"]}, "tuple of str"),
    ],
)
def test_image_dataset_validation(overrides, message):
    with pytest.raises((ValueError, TypeError), match=message):
        _tiny_ds(**overrides)


# --------------------------------------------------------------------------- image folders


def test_image_folder_directory_rgb(tmp_path):
    expected = write_image_folder(tmp_path / "pets")
    ds = load_image_folder(tmp_path / "pets", progress=False)
    check_dataset(ds, expected)
    assert ds.name == "pets" and ds.image_shape == (5, 4, 3)
    assert ds.source == f"image folder {(tmp_path / 'pets').resolve()}"


def test_image_folder_tar_grayscale_with_top_level_folder(tmp_path):
    expected = write_image_folder(tmp_path / "src", channels=1)
    archive = make_tar(tmp_path / "src", tmp_path / "digits-png.tar.gz", arcname="digits")
    ds = load_image_folder(archive, progress=False)
    check_dataset(ds, expected)
    assert ds.name == "digits" and ds.image_shape == (5, 4, 1)


def test_image_folder_tar_without_top_level_folder_and_jpeg(tmp_path):
    root = tmp_path / "src"
    rng = np.random.default_rng(3)
    encoded = {}
    for split in ("train", "test"):
        for cls in ("x", "y"):
            (root / split / cls).mkdir(parents=True)
            buf = io.BytesIO()
            Image.fromarray(rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)).save(buf, "JPEG")
            (root / split / cls / "0001.jpg").write_bytes(buf.getvalue())
            encoded[(split, cls)] = buf.getvalue()
    archive = make_tar(root, tmp_path / "things.tgz", arcname=None)
    ds = load_image_folder(archive, progress=False, name="custom")
    assert ds.name == "custom" and ds.class_names == ("x", "y")
    assert ds.train_images.shape == (2, 6, 6, 3)
    # JPEG is lossy: compare with Pillow's decoding of the very bytes that were written.
    want = np.asarray(Image.open(io.BytesIO(encoded[("test", "y")])))
    np.testing.assert_array_equal(ds.test_images[1], want)
    np.testing.assert_array_equal(ds.test_labels, [0, 1])


def test_image_folder_mixed_grey_and_rgb_promotes_grey(tmp_path):
    write_image_folder(tmp_path / "d", channels=3, counts={"train": 1, "test": 1})
    grey = np.arange(20, dtype=np.uint8).reshape(5, 4, 1)
    (tmp_path / "d" / "train" / "ant" / "9.png").write_bytes(_png(grey))
    ds = load_image_folder(tmp_path / "d", progress=False, cache_dir=False)
    assert ds.image_shape == (5, 4, 3)
    np.testing.assert_array_equal(ds.train_images[1], np.repeat(grey, 3, axis=-1))


def test_image_folder_size_mismatch_names_file(tmp_path):
    write_image_folder(tmp_path / "d", counts={"train": 1, "test": 1})
    odd = tmp_path / "d" / "test" / "cat" / "7.png"
    odd.write_bytes(_png(np.zeros((9, 9, 3), np.uint8)))
    with pytest.raises(DataLayoutError, match=r"7\.png is 9x9.*same size"):
        load_image_folder(tmp_path / "d", progress=False)


def test_image_folder_class_mismatch(tmp_path):
    write_image_folder(tmp_path / "d", counts={"train": 1, "test": 1})
    (tmp_path / "d" / "test" / "dog").mkdir()
    (tmp_path / "d" / "test" / "dog" / "0.png").write_bytes(_png(np.zeros((5, 4, 3), np.uint8)))
    with pytest.raises(DataLayoutError, match=r"only in test: \['dog'\]"):
        load_image_folder(tmp_path / "d", progress=False)


def test_image_folder_wrong_layout(tmp_path):
    (tmp_path / "d" / "training" / "a").mkdir(parents=True)
    with pytest.raises(DataLayoutError, match=r"expected .*/train/<class>/<image>"):
        load_image_folder(tmp_path / "d", progress=False)
    # A tar whose images are not under train/ and test/ names what it expected, too.
    (tmp_path / "d" / "training" / "a" / "0.png").write_bytes(_png(np.zeros((2, 2, 1), np.uint8)))
    archive = make_tar(tmp_path / "d", tmp_path / "bad.tar.gz", arcname=None)
    with (
        pytest.warns(RuntimeWarning, match="outside"),
        pytest.raises(
            DataLayoutError, match=r"no images under 'train/'.*<root>/train/<class>/<image>"
        ),
    ):
        load_image_folder(archive, progress=False)


def test_tar_with_two_top_level_folders_is_refused(tmp_path):
    write_image_folder(tmp_path / "a", counts={"train": 1, "test": 1})
    archive = tmp_path / "two.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tmp_path / "a", arcname="one")
        tar.add(tmp_path / "a", arcname="two")
    with pytest.raises(DataLayoutError, match=r"several data sets.*\['one', 'two'\]"):
        load_image_folder(archive, progress=False)


def test_missing_path_raises_data_not_found(tmp_path):
    with pytest.raises(DataNotFoundError, match="nope.tar.gz"):
        load_image_folder(tmp_path / "nope.tar.gz")
    with pytest.raises(DataNotFoundError, match="nope"):
        load_original_archive(tmp_path / "nope")
    assert issubclass(DataNotFoundError, FileNotFoundError)
    assert issubclass(CorruptDataError, ValueError)


def test_corrupt_image_in_directory_and_tar_names_member(tmp_path):
    write_image_folder(tmp_path / "d", counts={"train": 1, "test": 1})
    (tmp_path / "d" / "train" / "bee" / "3.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(CorruptDataError, match=r"bee/3\.png.*re-download"):
        load_image_folder(tmp_path / "d", progress=False)
    archive = make_tar(tmp_path / "d", tmp_path / "d.tar.gz", arcname="d")
    with pytest.raises(CorruptDataError, match=r"d/train/bee/3\.png in .*d\.tar\.gz"):
        load_image_folder(archive, progress=False)


def test_truncated_archive_raises_corrupt(tmp_path):
    write_image_folder(tmp_path / "d")
    archive = make_tar(tmp_path / "d", tmp_path / "d.tar.gz", arcname="d")
    cut = tmp_path / "cut.tar.gz"
    cut.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    with pytest.raises(CorruptDataError, match=r"cut\.tar\.gz.*re-download"):
        load_image_folder(cut, progress=False)


def test_unsafe_tar_members_are_skipped_never_written(tmp_path):
    expected = write_image_folder(tmp_path / "d", counts={"train": 1, "test": 1})
    archive = tmp_path / "evil.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tmp_path / "d", arcname="d")
        payload = _png(np.zeros((5, 4, 3), np.uint8))
        for bad in ("../evil.png", "d/train/ant/../../../evil2.png", "/tmp/abs_evil.png"):
            info = tarfile.TarInfo(bad)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
        link = tarfile.TarInfo("d/train/ant/99.png")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(link)
    with pytest.warns(RuntimeWarning, match=r"Skipped 4 unsafe member"):
        ds = load_image_folder(archive, progress=False)
    check_dataset(ds, expected)
    assert not (tmp_path.parent / "evil.png").exists() and not Path("/tmp/abs_evil.png").exists()


# --------------------------------------------------------------------------- cache


def _count_decodes(monkeypatch) -> list[int]:
    calls = [0]
    real = folder_mod._decode_image

    def counting(data, where):
        calls[0] += 1
        return real(data, where)

    monkeypatch.setattr(folder_mod, "_decode_image", counting)
    return calls


def test_cache_hit_skips_decoding_and_rebuilds_corrupt_entry(tmp_path, monkeypatch):
    expected = write_image_folder(tmp_path / "src")
    archive = make_tar(tmp_path / "src", tmp_path / "set.tar.gz", arcname="set")
    cache = tmp_path / "mycache"
    calls = _count_decodes(monkeypatch)
    n_images = len(expected["train"][1]) + len(expected["test"][1])

    first = load_image_folder(archive, cache_dir=cache, progress=False)
    assert calls[0] == n_images
    (entry,) = cache.glob("*.npz")
    assert not list(cache.glob(".tmp-*"))  # nothing half-written left behind

    second = load_image_folder(archive, cache_dir=cache, progress=False, name="renamed")
    assert calls[0] == n_images  # served from the cache
    check_dataset(second, expected)
    assert second.name == "renamed" and first.name == "set"

    entry.write_bytes(entry.read_bytes()[:100])  # truncate the cache file
    with pytest.warns(RuntimeWarning, match="unreadable"):
        third = load_image_folder(archive, cache_dir=cache, progress=False)
    assert calls[0] == 2 * n_images
    check_dataset(third, expected)
    (rebuilt,) = cache.glob("*.npz")
    assert rebuilt.stat().st_size > 100


def test_cache_invalidated_by_change_and_can_be_disabled(tmp_path, monkeypatch):
    write_image_folder(tmp_path / "d")
    calls = _count_decodes(monkeypatch)
    load_image_folder(tmp_path / "d", progress=False)  # default cache: $SYMOG_JAX_CACHE
    assert len(list((tmp_path / "cache").glob("folder-*.npz"))) == 1
    n = calls[0]
    load_image_folder(tmp_path / "d", progress=False)
    assert calls[0] == n
    f = tmp_path / "d" / "test" / "cat" / "0.png"
    f.write_bytes(_png(np.full((5, 4, 3), 7, np.uint8)))
    os.utime(f, ns=(f.stat().st_atime_ns, f.stat().st_mtime_ns + 10**9))
    ds = load_image_folder(tmp_path / "d", progress=False)
    assert calls[0] == 2 * n and (ds.test_images[-2] == 7).all()

    load_image_folder(tmp_path / "d", progress=False, cache_dir=False)
    assert calls[0] == 3 * n
    assert data.default_cache_dir() == tmp_path / "cache"


# --------------------------------------------------------------------------- original archives


@pytest.mark.parametrize("packed", [True, False], ids=["tar.gz", "extracted"])
def test_cifar10_original(tmp_path, packed):
    dest = tmp_path / ("cifar-10-python.tar.gz" if packed else "cifar-10-batches-py")
    written = write_cifar_original(dest)
    ds = load_original_archive(dest)
    assert ds.name == "cifar10" and ds.class_names[0] == "airplane" and ds.num_classes == 10
    assert ds.train_images.shape == (20, 32, 32, 3) and ds.test_images.shape == (4, 32, 32, 3)
    rows, labels = written["train"]
    # Row layout: value of channel c at (y, x) is rows[n, c * 1024 + y * 32 + x].
    n, y, x, c = 13, 5, 30, 2
    assert ds.train_images[n, y, x, c] == rows[n, c * 1024 + y * 32 + x]
    np.testing.assert_array_equal(
        ds.train_images, rows.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    )
    np.testing.assert_array_equal(ds.train_labels, labels)
    np.testing.assert_array_equal(ds.test_labels, written["test"][1])
    assert ds.train_labels.dtype == np.int32


def test_cifar100_original(tmp_path):
    written = write_cifar_original(tmp_path / "cifar-100-python.tar.gz", hundred=True)
    ds = load_original_archive(tmp_path / "cifar-100-python.tar.gz", name="c100")
    assert ds.name == "c100" and ds.num_classes == 100 and ds.class_names[7] == "class007"
    np.testing.assert_array_equal(ds.test_labels, written["test"][1])
    assert ds.test_images[0, 0, 1, 2] == written["test"][0][0, 2 * 1024 + 1]


def _py2_pickle_of_batch(rows: np.ndarray, labels: list[int]) -> bytes:
    """Hand-assembled protocol-2 pickle as Python 2 + numpy 1 wrote the real CIFAR files
    (str as BINSTRING, ``numpy.core.multiarray._reconstruct``), which Python 3 cannot emit."""

    def s(b: bytes) -> bytes:
        return b"T" + struct.pack("<i", len(b)) + b

    def i(n: int) -> bytes:
        return b"J" + struct.pack("<i", n)

    def g(module: bytes, name: bytes) -> bytes:
        return b"c" + module + b"\n" + name + b"\n"

    dtype = g(b"numpy", b"dtype") + b"(" + s(b"u1") + i(0) + i(1) + b"tR"
    dtype += b"(" + i(3) + s(b"|") + b"NNN" + i(-1) + i(-1) + i(0) + b"tb"
    array = g(b"numpy.core.multiarray", b"_reconstruct")
    array += b"(" + g(b"numpy", b"ndarray") + b"(" + i(0) + b"t" + s(b"b") + b"tR"
    shape = b"(" + b"".join(i(d) for d in rows.shape) + b"t"
    array += b"(" + i(1) + shape + dtype + b"\x89" + s(rows.tobytes()) + b"tb"
    label_list = b"](" + b"".join(i(v) for v in labels) + b"e"
    return b"\x80\x02}(" + s(b"data") + array + s(b"labels") + label_list + b"u."


def test_cifar10_python2_pickles(tmp_path):
    dest = tmp_path / "cifar-10-batches-py"
    write_cifar_original(dest)
    rows = np.random.default_rng(5).integers(0, 256, (3, 3072), dtype=np.uint8)
    (dest / "test_batch").write_bytes(_py2_pickle_of_batch(rows, [4, 0, 9]))
    ds = load_original_archive(dest)
    np.testing.assert_array_equal(ds.test_images, rows.reshape(3, 3, 32, 32).transpose(0, 2, 3, 1))
    np.testing.assert_array_equal(ds.test_labels, [4, 0, 9])


def test_original_pickle_with_foreign_globals_is_refused(tmp_path):
    dest = tmp_path / "cifar-10-batches-py"
    write_cifar_original(dest)

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned > " + str(tmp_path / "pwned"),))

    (dest / "test_batch").write_bytes(pickle.dumps({b"data": Evil()}))
    with pytest.raises(CorruptDataError, match=r"refusing to load global .*system"):
        load_original_archive(dest)
    assert not (tmp_path / "pwned").exists()


def test_cifar_incomplete_archive(tmp_path):
    dest = tmp_path / "cifar-10-batches-py"
    write_cifar_original(dest)
    (dest / "data_batch_3").unlink()
    with pytest.raises(CorruptDataError, match=r"lacks \['data_batch_3'\]"):
        load_original_archive(dest)


def test_mnist_idx(tmp_path):
    written = write_mnist_idx(tmp_path / "raw")
    ds = load_original_archive(tmp_path / "raw")
    assert ds.name == "mnist" and ds.class_names == tuple("0123456789")
    assert ds.train_images.shape == (6, 28, 28, 1) and ds.test_images.shape == (3, 28, 28, 1)
    np.testing.assert_array_equal(ds.train_images[..., 0], written["train"][0])
    np.testing.assert_array_equal(ds.test_labels, written["test"][1])
    # Pointing at one of the files works too.
    ds2 = load_original_archive(tmp_path / "raw" / "t10k-labels-idx1-ubyte.gz")
    np.testing.assert_array_equal(ds2.test_images, ds.test_images)


def test_mnist_idx_truncated_and_wrong_magic(tmp_path):
    write_mnist_idx(tmp_path / "raw")
    f = tmp_path / "raw" / "train-images-idx3-ubyte.gz"
    raw = gzip.decompress(f.read_bytes())
    f.write_bytes(gzip.compress(raw[:-10]))
    with pytest.raises(CorruptDataError, match=r"train-images-idx3-ubyte\.gz.*truncated"):
        load_original_archive(tmp_path / "raw")
    f.write_bytes(gzip.compress(struct.pack(">I", 2049) + raw[4:]))
    with pytest.raises(CorruptDataError, match=r"magic number 2049, expected 2051"):
        load_original_archive(tmp_path / "raw")
    f.write_bytes(f.read_bytes()[:20])  # truncated gzip stream
    with pytest.raises(CorruptDataError, match=r"Cannot decompress .*train-images"):
        load_original_archive(tmp_path / "raw")


# --------------------------------------------------------------------------- tfds


def prepare_fake_tfds(data_dir: Path, n_train: int = 7, n_test: int = 3) -> dict:
    """Prepare a fake ``mnist`` in ``data_dir`` with tfds' real MNIST builder, in the
    array_record format, without TensorFlow: random examples replace the download, and
    images are handed over as PNG bytes, which tfds stores as is (encoding numpy images
    is what would need tf.image)."""
    import tensorflow_datasets as tfds

    rng = np.random.default_rng(4)
    written: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def examples(split: str, n: int):
        images = rng.integers(0, 256, (n, 28, 28, 1), dtype=np.uint8)
        labels = rng.integers(0, 10, n)
        written[split] = (images, labels)
        for i in range(n):
            yield i, {"image": _png(images[i]), "label": int(labels[i])}

    mnist_cls = type(tfds.builder("mnist", data_dir=str(data_dir)))

    class FakeMnist(mnist_cls, skip_registration=True):
        name = "mnist"  # same name, features and version as the real builder
        # tfds 4.9.10 resolves its checksum file through `importlib_resources`, which it only
        # declares for Python < 3.9 (tensorflow/datasets#11212); nothing is downloaded here.
        _checksums_path = None

        def _split_generators(self, dl_manager):
            return {"train": examples("train", n_train), "test": examples("test", n_test)}

    FakeMnist(data_dir=str(data_dir), file_format="array_record").download_and_prepare(
        download_config=tfds.download.DownloadConfig(try_download_gcs=False)
    )
    return written


def _check_tfds_mnist(ds: ImageDataset, written: dict) -> None:
    assert ds.name == "mnist" and ds.class_names == tuple("0123456789")
    for split in ("train", "test"):
        # tfds shuffles examples while writing: compare as multisets keyed by the image.
        images, labels = written[split]
        want = {images[i].tobytes(): int(labels[i]) for i in range(len(labels))}
        have = {
            img.tobytes(): int(lbl)
            for img, lbl in zip(getattr(ds, f"{split}_images"), getattr(ds, f"{split}_labels"))
        }
        assert have == want and getattr(ds, f"{split}_images").shape[1:] == (28, 28, 1)


def test_tfds_array_record_without_tensorflow(tmp_path):
    written = prepare_fake_tfds(tmp_path / "tfds")
    ds = load_tfds("mnist", data_dir=tmp_path / "tfds", progress=False)
    _check_tfds_mnist(ds, written)
    assert "array_record" in ds.source
    if not data.tensorflow_available():
        assert "tensorflow" not in sys.modules


def test_crc32c_known_vector():
    assert tfds_source._crc32c(b"123456789") == 0xE3069283  # RFC 3720 check value


def test_tfds_tfrecord_without_tensorflow(tmp_path, monkeypatch):
    """The default tfds format: re-frame the prepared records as TFRecord files."""
    from array_record.python.array_record_module import ArrayRecordReader

    written = prepare_fake_tfds(tmp_path / "tfds")
    (version_dir,) = (tmp_path / "tfds" / "mnist").iterdir()
    for shard in version_dir.glob("*.array_record-*"):
        reader = ArrayRecordReader(str(shard))
        records = reader.read_all()
        reader.close()
        with open(str(shard).replace(".array_record-", ".tfrecord-"), "wb") as f:
            for rec in records:
                header = struct.pack("<Q", len(rec))
                f.write(header + struct.pack("<I", tfds_source._masked_crc32c(header)))
                f.write(rec + struct.pack("<I", tfds_source._masked_crc32c(rec)))
        shard.unlink()
    info_file = version_dir / "dataset_info.json"
    info = json.loads(info_file.read_text())
    info["fileFormat"] = "tfrecord"
    info_file.write_text(json.dumps(info))

    ds = load_tfds("mnist", data_dir=tmp_path / "tfds", progress=False, cache_dir=False)
    _check_tfds_mnist(ds, written)
    assert "tfrecord" in ds.source

    shard = next(version_dir.glob("*-train.tfrecord-*"))
    shard.write_bytes(shard.read_bytes()[:-30])
    with pytest.raises(CorruptDataError, match="truncated"):
        load_tfds("mnist", data_dir=tmp_path / "tfds", progress=False, cache_dir=False)


def test_tfds_not_prepared_and_prepare_needs_tensorflow(tmp_path):
    with pytest.raises(DataNotFoundError, match=r"not prepared in .*prepare_tfds"):
        load_tfds("mnist", data_dir=tmp_path / "empty")
    if data.tensorflow_available():
        pytest.skip("TensorFlow is installed: prepare_tfds would try to download")
    with pytest.raises(
        data.TensorFlowRequiredError, match=r"pip install tensorflow.*load_image_folder"
    ):
        data.prepare_tfds("mnist", tmp_path / "empty")
    with pytest.raises(data.TensorFlowRequiredError):
        load_tfds("mnist", data_dir=tmp_path / "empty", download=True)


# --------------------------------------------------------------------------- load_dataset


# Shaped like CIFAR-10 (10 classes of 32x32x3): load_dataset checks what it finds.
CIFAR10_LIKE = dict(classes=tuple("0123456789"), size=(32, 32))


def _layout_folder_tar(d: Path) -> dict:
    expected = write_image_folder(d / "tmp_src", **CIFAR10_LIKE)
    make_tar(d / "tmp_src", d / "cifar10-jpeg.tar.gz", arcname="cifar10")
    # A CIFAR-100 archive beside it must not be mistaken for CIFAR-10.
    make_tar(d / "tmp_src", d / "cifar100-png.tar.gz", arcname="cifar100")
    shutil.rmtree(d / "tmp_src")
    return expected


@pytest.mark.parametrize(
    "layout, name, expect_source",
    [
        ("folder_tar", "cifar10", "image folder"),
        ("folder_dir", "cifar10", "image folder"),
        ("cifar10_tar", "cifar10", "original CIFAR-10"),
        ("cifar10_dir", "cifar10", "original CIFAR-10"),
        ("cifar100_tar", "cifar100", "original CIFAR-100"),
        ("mnist_idx", "mnist", "MNIST idx"),
        ("mnist_torchvision", "mnist", "MNIST idx"),
        ("tfds", "mnist", "tfds mnist"),
    ],
)
def test_load_dataset_auto_detects_layouts(tmp_path, monkeypatch, layout, name, expect_source):
    d = tmp_path / "data"
    d.mkdir()
    if layout == "folder_tar":
        _layout_folder_tar(d)
    elif layout == "folder_dir":
        write_image_folder(d / "CIFAR-10-images" / "inner", **CIFAR10_LIKE)
    elif layout == "cifar10_tar":
        write_cifar_original(d / "cifar-10-python.tar.gz")
    elif layout == "cifar10_dir":
        write_cifar_original(d / "cifar-10-batches-py")
    elif layout == "cifar100_tar":
        write_cifar_original(d / "cifar-100-python.tar.gz", hundred=True)
    elif layout == "mnist_idx":
        write_mnist_idx(d)
    elif layout == "mnist_torchvision":
        write_mnist_idx(d / "MNIST" / "raw")
    elif layout == "tfds":
        prepare_fake_tfds(d)
    ds = load_dataset(name, data_dir=d, progress=False)
    assert ds.name == name
    assert ds.source.startswith(expect_source), ds.source
    if layout == "folder_tar":
        assert "cifar10-jpeg.tar.gz" in ds.source


@pytest.mark.parametrize(
    "entry, name, match",
    [
        ("cifar10-jpeg.tar.gz", "cifar10", True),
        ("CIFAR-10-images", "cifar10", True),
        ("cifar10.tgz", "cifar10", True),
        ("cifar100-png.tar.gz", "cifar10", False),
        ("cifar-10-python.tar.gz", "cifar10", False),  # an original archive, not a folder
        ("cifar-10-batches-py", "cifar10", False),
        ("mnist_png", "mnist", True),
        ("mnistlike.tar", "mnist", False),
    ],
)
def test_image_folder_name_matching(entry, name, match):
    from symog_jax.data.load import _name_matches

    assert _name_matches(Path(entry), name) is match


def test_load_dataset_data_dir_pointing_at_data(tmp_path):
    expected = write_image_folder(tmp_path / "src", **CIFAR10_LIKE)
    archive = make_tar(tmp_path / "src", tmp_path / "whatever.tar", arcname=None)
    classes = CIFAR10_LIKE["classes"]
    check_dataset(load_dataset("cifar10", data_dir=archive, progress=False), expected, classes)
    check_dataset(load_dataset("cifar10", data_dir=tmp_path / "src", progress=False), expected,
                  classes)
    ds = load_dataset("flowers", source="folder", data_dir=tmp_path / "src", progress=False)
    assert ds.name == "flowers"
    write_cifar_original(tmp_path / "cifar-100-python.tar.gz", hundred=True)
    with pytest.raises(DataLayoutError, match="holds cifar100, but cifar10 was requested"):
        load_dataset("cifar10", data_dir=tmp_path / "cifar-100-python.tar.gz")
    ds = load_dataset("cifar100", source="archive", data_dir=tmp_path, progress=False)
    assert ds.num_classes == 100


def test_load_dataset_nothing_found_lists_places(tmp_path):
    d = tmp_path / "empty"
    d.mkdir()
    with pytest.raises(DataNotFoundError) as err:
        load_dataset("cifar10", data_dir=d)
    msg = str(err.value)
    for place in (
        f"{d} itself",
        "cifar10|cifar-10|cifar_10",
        f"{d}/cifar-10-python.tar.gz",
        f"{d}/cifar-10-batches-py",
        f"{d}/cifar10/<version>/",
        "--data-dir",
        "prepare_tfds",
    ):
        assert place in msg, (place, msg)
    assert "bundled" not in msg  # not an option for CIFAR

    with pytest.raises(DataNotFoundError) as err:
        load_dataset("mnist")  # no data_dir: tfds' default dir ($TFDS_DATA_DIR here)
    msg = str(err.value)
    assert str(tmp_path / "no_tfds_here" / "mnist") in msg and "allow_bundled=True" in msg

    with pytest.raises(ValueError, match="Unknown data set"):
        load_dataset("imagenet")
    with pytest.raises(ValueError, match="source must be one of"):
        load_dataset("mnist", source="web")


def test_load_dataset_bundled_fallback(tmp_path):
    # Only without a data_dir: an explicit one is never replaced (tests/test_failure_modes.py).
    ds = load_dataset("mnist", allow_bundled=True)  # tfds' default dir is empty here
    assert ds.source.startswith("bundled MNIST 5k subset")
    with pytest.raises(DataNotFoundError, match="it is empty"):
        load_dataset("mnist", data_dir=tmp_path, allow_bundled=True)
    assert load_dataset("mnist", source="bundled").num_train == 4000


# --------------------------------------------------------------------------- bundled subset


def test_bundled_mnist5k():
    ds = load_bundled_mnist5k()
    assert ds.name == "mnist" and ds.image_shape == (28, 28, 1) and ds.num_classes == 10
    assert (ds.num_train, ds.num_test) == (4000, 1000)
    all_labels = np.concatenate([ds.train_labels, ds.test_labels])
    assert (np.bincount(all_labels) == 500).all()  # the whole subset, 500 per class
    assert len(np.unique(ds.test_labels)) == 10  # shuffled before splitting, not sorted
    again = load_bundled_mnist5k()
    np.testing.assert_array_equal(again.test_images, ds.test_images)
    other = load_bundled_mnist5k(test_size=500, seed=1)
    assert other.num_test == 500 and not np.array_equal(other.test_labels, ds.test_labels[:500])
    with pytest.raises(ValueError, match="test_size"):
        load_bundled_mnist5k(test_size=5000)


# --------------------------------------------------------------------------- real shared data


@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason=f"{SHARED_DATA} not present")
def test_real_shared_archives_first_members():
    """Only the first members, to stay fast; the full decode is timed in benchmarks."""
    for archive, shape in (("mnist-png.tar.gz", (28, 28, 1)), ("cifar10-jpeg.tar.gz", (32, 32, 3))):
        scan = folder_mod._TarScan(SHARED_DATA / archive)
        for i, (split, cls, _, where, payload) in enumerate(scan):
            assert split in ("train", "test")
            assert folder_mod._decode_image(payload, where).shape == shape
            if i == 200:
                break
        assert len(scan.prefixes) == 1
