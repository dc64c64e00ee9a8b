"""What a run directory stores besides its config: ``data.json`` (normalisation, data, version).

A run is evaluated and exported from its directory alone: the input normalisation it trained
with (per-channel ``mean``/``std`` of the training images, as :func:`input_normalisation`
computes it), the class names, a fingerprint of the data
(:func:`~symog_jax.data.fingerprint.data_fingerprint`: source kind, counts, SHA-256 of the
arrays, no path), the package version and git commit, and the machine it trained on
(:func:`machine_environment`: library versions and the CPU's SIMD level, since float results
can differ in their last bits between CPUs and between XLA versions). :func:`write_run_data`
writes it when a run starts; :func:`check_run_data` gives evaluation and export the stored
normalisation and refuses other data (unless ``allow_other_data``). Runs made before
``data.json`` existed keep working: their normalisation is recomputed from the data given, as it
was then.
"""

from __future__ import annotations

import importlib.metadata
import json
import platform
import subprocess
import sys
from pathlib import Path
from typing import Callable, NamedTuple

import numpy as np

from symog_jax.data import ImageDataset
from symog_jax.data.fingerprint import data_fingerprint, fingerprint_differences
from symog_jax.files import write_json_atomic

#: The file in a run directory that holds :func:`run_data_record`.
DATA_FILE = "data.json"


class Normalisation(NamedTuple):
    """Per-channel input normalisation ``(pixel / 255 - mean) / std``: float64 ``(C,)`` each."""
    mean: np.ndarray
    std: np.ndarray


def input_normalisation(dataset: ImageDataset) -> Normalisation:
    """The normalisation a run computes from its data set's (whole) training split.

    Example:
      >>> ds = ImageDataset("toy", np.array([0, 255], np.uint8).reshape(2, 1, 1, 1),
      ...                   np.zeros(2, np.int32), np.zeros((1, 1, 1, 1), np.uint8),
      ...                   np.zeros(1, np.int32), class_names=("a",), source="docstring")
      >>> n = input_normalisation(ds)
      >>> float(n.mean[0]), round(float(n.std[0]), 6)
      (0.5, 0.500001)
    """
    mean = dataset.train_images.mean(axis=(0, 1, 2)) / 255.0
    std = dataset.train_images.std(axis=(0, 1, 2)) / 255.0 + 1e-6
    return Normalisation(mean, std)


def package_provenance() -> dict:
    """``{"package_version": ..., "git_commit": ... or None}`` of the running symog_jax.

    The commit is asked of git for the package's folder (a source checkout); without git, or
    outside a repository, it is ``None``: never an error.
    """
    try:
        version = importlib.metadata.version("symog_jax")
    except importlib.metadata.PackageNotFoundError:
        version = getattr(sys.modules.get("symog_jax"), "__version__", None)
    commit = None
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent,
                             capture_output=True, text=True, timeout=5)
        if out.returncode == 0:
            commit = out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        pass
    return {"package_version": version, "git_commit": commit}


#: Libraries whose version can change a run's numbers (XLA's code, the optimizer, JPEG decoding).
ENVIRONMENT_PACKAGES = ("jax", "jaxlib", "flax", "optax", "numpy", "pillow")
#: CPU features that change XLA's vector code on x86 and ARM, in the order they are listed.
SIMD_FLAGS = ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512_bf16", "amx_tile", "asimd",
              "sve")


def machine_environment(cpuinfo: str | Path = "/proc/cpuinfo") -> dict:
    r"""The machine a run is made on: ``{"python", "packages": {name: version or None}, "cpu",
    "cpu_simd": [flags]}``; never an error (unknown parts are ``None`` / empty).

    ``cpu`` is the first ``model name`` of ``cpuinfo`` (Linux), else ``platform.processor()``;
    ``cpu_simd`` the :data:`SIMD_FLAGS` its first ``flags`` (or ``Features``) line lists.

    Example:
      >>> import tempfile
      >>> with tempfile.TemporaryDirectory() as d:
      ...     info = Path(d) / "cpuinfo"
      ...     _ = info.write_text("model name\t: Some CPU\nflags\t\t: fpu avx2 fma sse4_2\n")
      ...     env = machine_environment(info)
      >>> env["cpu"], env["cpu_simd"]
      ('Some CPU', ['sse4_2', 'avx2', 'fma'])
      >>> sorted(env["packages"]) == sorted(ENVIRONMENT_PACKAGES)
      True
    """
    packages = {}
    for name in ENVIRONMENT_PACKAGES:
        try:
            packages[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            packages[name] = None
    cpu, flags = None, set()
    try:
        lines = Path(cpuinfo).read_text(errors="replace").splitlines()
    except OSError:
        lines = []
    for line in lines:
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if cpu is None and key == "model name":
            cpu = value.strip() or None
        elif not flags and key in ("flags", "features"):
            flags = set(value.split())
    return {"python": platform.python_version(), "packages": packages,
            "cpu": cpu or platform.processor() or None,
            "cpu_simd": [f for f in SIMD_FLAGS if f in flags]}


def run_data_record(dataset: ImageDataset, normalisation: Normalisation) -> dict:
    """The contents of ``data.json`` for a run on ``dataset`` (JSON-ready, no machine path)."""
    return {"normalisation": {"mean": [float(v) for v in normalisation.mean],
                              "std": [float(v) for v in normalisation.std]},
            "class_names": list(dataset.class_names),
            "fingerprint": data_fingerprint(dataset),
            **package_provenance(), "environment": machine_environment()}


def write_run_data(workdir: Path, dataset: ImageDataset, normalisation: Normalisation) -> dict:
    """Writes ``<workdir>/data.json`` (atomically) and returns what it wrote."""
    record = run_data_record(dataset, normalisation)
    write_json_atomic(Path(workdir) / DATA_FILE, record)
    return record


def read_run_data(workdir: str | Path) -> dict | None:
    """``<workdir>/data.json`` as a dict, or ``None`` for a run made before it existed.

    Raises:
      ValueError: the file exists but is not valid JSON with a normalisation and fingerprint.
    """
    path = Path(workdir) / DATA_FILE
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
        mean = np.asarray(record["normalisation"]["mean"], np.float64)
        std = np.asarray(record["normalisation"]["std"], np.float64)
        if mean.ndim != 1 or mean.shape != std.shape or not mean.size \
                or not np.all(np.isfinite(mean)) or not np.all(np.isfinite(std)) \
                or np.any(std <= 0):
            raise ValueError("normalisation.mean and .std must be lists of finite numbers of "
                             "one length, std > 0")
        record["fingerprint"]["sha256"]
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{path} is damaged ({type(e).__name__}: {e}); the run's input "
                         "normalisation cannot be read") from None
    return record


def stored_normalisation(record: dict) -> Normalisation:
    """The :class:`Normalisation` of a ``data.json`` record (float64, as the run used it)."""
    n = record["normalisation"]
    return Normalisation(np.asarray(n["mean"], np.float64), np.asarray(n["std"], np.float64))


def check_run_data(workdir: str | Path, dataset: ImageDataset, *, allow_other_data: bool = False,
                   say: Callable[[str], None] = print) -> Normalisation:
    """The normalisation to evaluate or export the run in ``workdir`` with, on ``dataset``.

    With a ``data.json``: its stored normalisation, after checking ``dataset`` against the
    stored fingerprint. Without one (a run made before it existed): said once, and the
    normalisation recomputed from ``dataset`` as those runs did.

    Raises:
      ValueError: ``dataset`` is not the data the run was trained on (one line saying what
        differs) and ``allow_other_data`` is False, or ``data.json`` is damaged.
    """
    record = read_run_data(workdir)
    if record is None:
        say(f"note: {workdir} has no {DATA_FILE} (a run made before runs stored their input "
            "normalisation): recomputing it from the data given")
        return input_normalisation(dataset)
    stored = record["fingerprint"]
    diffs = fingerprint_differences(stored, data_fingerprint(dataset))
    if diffs:
        trained = f"{stored.get('name')} ({stored.get('source_kind')}, " \
                  f"{stored.get('num_train')} train / {stored.get('num_test')} test)"
        if not allow_other_data:
            raise ValueError(f"the data given is not the data the run in {workdir} was trained "
                             f"on, {trained}: {'; '.join(diffs)}. Pass --allow-other-data "
                             "(allow_other_data=True) to use it with the run's stored "
                             "normalisation")
        say(f"note: other data than the run was trained on ({trained}): {'; '.join(diffs)}; "
            "going on with the run's stored normalisation")
    return stored_normalisation(record)
