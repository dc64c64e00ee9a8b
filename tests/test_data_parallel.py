"""Data-parallel training (several devices) and the bf16 precision option.

Several devices are 4 forced host-platform CPU devices in a subprocess (the flag must be set
before jax is imported); the single-device references run in this process.
"""

from __future__ import annotations
from symog_jax.training.config import config_from_file

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from symog_jax.data import ImageDataset
from symog_jax.training import Checkpointer, TrainConfig, train
from symog_jax.training import build_run, training_split
from symog_jax.training.sharding import DataParallel, prefetch
from tests.test_training import ROOT, synthetic_digits, tiny_config

# Multi-device and multi-process runs: the end-to-end tier.
pytestmark = pytest.mark.e2e

DEVICES = 4


def synthetic_colour(n_train=128, n_test=64, seed=0) -> ImageDataset:
    """32x32 RGB images whose class (0..3) is the brightest quadrant (augmentation applies)."""
    rng = np.random.default_rng(seed)

    def make(n):
        labels = rng.integers(0, 4, n).astype(np.int32)
        images = rng.integers(0, 80, (n, 32, 32, 3)).astype(np.uint8)
        for i, c in enumerate(labels):
            r, q = divmod(int(c), 2)
            images[i, r * 16:(r + 1) * 16, q * 16:(q + 1) * 16] += 120
        return images, labels

    (xtr, ytr), (xte, yte) = make(n_train), make(n_test)
    return ImageDataset("colour", xtr, ytr, xte, yte, ("a", "b", "c", "d"), "synthetic colour")


def bn_config(workdir, **kw) -> TrainConfig:
    """VGG7 (batch norm) at width 1/16, SGD, random crop and flip: 4 steps per epoch."""
    base = dict(dataset="colour", model="vgg7", method="float", method_config={"bits": 2},
                epochs=2, batch_size=32, optimizer="sgd", lr=0.05, momentum=0.9,
                weight_decay=5e-4, width=0.0625, augment=True, workdir=str(workdir),
                progress=False)
    base.update(kw)
    return TrainConfig(**base)


_CHILD = """
import json, sys
import jax, numpy as np
sys.path.insert(0, {root!r})
from tests.test_data_parallel import bn_config, synthetic_colour
from symog_jax.training import train
from symog_jax.training.sharding import DataParallel

out = {{"devices": jax.device_count()}}
data = synthetic_colour()
tmp = {tmp!r}
train(bn_config(tmp + "/half", stop_after_epochs=1), dataset=data)    # epoch 1 on 4 devices
# distilled from that float network (the teacher's variables replicated over the mesh)
train(bn_config(tmp + "/kd", method="ste", epochs=1, distill={{"teacher": tmp + "/half"}}),
      dataset=data)
try:
    train(bn_config(tmp + "/odd", batch_size=30), dataset=data)
except ValueError as e:
    out["odd_batch_error"] = str(e)

# Batch-norm statistics of a sharded batch are those of the whole batch: shards with
# different means would give another variance if each device used its own.
import flax.linen as nn
from symog_jax.models import create_model, init_variables
model = create_model("vgg7", 4, width=0.0625)
variables = init_variables(model, jax.random.PRNGKey(0), (32, 32, 3))
x = np.random.default_rng(0).normal(size=(16, 32, 32, 3)).astype(np.float32)
x += np.repeat(np.arange(4, dtype=np.float32), 4)[:, None, None, None]   # shard k: mean k
p = DataParallel()
step = jax.jit(lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"])[1],
               in_shardings=(p.replicated, p.batch), out_shardings=p.replicated)
sharded = step(p.replicate(variables), p.put_batch(16, x)[0])
single = jax.jit(lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"])[1])(
    variables, x)
out["bn_max_diff"] = max(float(np.max(np.abs(np.asarray(a) - np.asarray(b)))) for a, b in zip(
    jax.tree_util.tree_leaves(sharded), jax.tree_util.tree_leaves(single)))
out["bn_var_scale"] = float(np.max(np.abs(np.asarray(
    jax.tree_util.tree_leaves(single["batch_stats"])[-1]))))
print("RESULT " + json.dumps(out))
"""


def _leaves(tree):
    return jax.tree_util.tree_leaves_with_path(tree)


def _assert_close(a, b, rtol=2e-4, atol=2e-5):
    la, lb = _leaves(a), _leaves(b)
    assert [p for p, _ in la] == [p for p, _ in lb] and la
    for (path, x), (_, y) in zip(la, lb):
        np.testing.assert_allclose(np.asarray(x, np.float64), np.asarray(y, np.float64),
                                   rtol=rtol, atol=atol, err_msg=jax.tree_util.keystr(path))


def _epoch_state(workdir: Path, epoch: int | None = None):
    """A saved train state as a raw pytree on this process's first device (whatever the
    device count it was written with)."""
    import orbax.checkpoint as ocp
    ckpt = Checkpointer(workdir / "checkpoints")
    path = ckpt.directory / str(ckpt.latest_epoch() if epoch is None else epoch) / "state"
    ckpt.close()
    reader = ocp.StandardCheckpointer()
    one = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    abstract = jax.tree_util.tree_map(
        lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=one),
        reader.metadata(path).item_metadata.tree)
    return reader.restore(path, abstract)


@pytest.fixture(scope="module")
def four_devices(tmp_path_factory):
    """Runs the 4-device part once; returns (tmp dir, the child's results)."""
    tmp = tmp_path_factory.mktemp("dp")
    env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu",
               XLA_FLAGS=(os.environ.get("XLA_FLAGS", "")
                          + f" --xla_force_host_platform_device_count={DEVICES}").strip())
    res = subprocess.run([sys.executable, "-c", textwrap.dedent(_CHILD).format(
        root=str(ROOT), tmp=str(tmp))], env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    line = [ln for ln in res.stdout.splitlines() if ln.startswith("RESULT ")][-1]
    return tmp, json.loads(line[len("RESULT "):]), res.stdout


@pytest.fixture(scope="module")
def one_device(four_devices):
    """The same run, 2 epochs, on the 1 device of this process."""
    tmp = four_devices[0]
    report = train(bn_config(tmp / "one"), dataset=synthetic_colour())
    return tmp, report


def test_four_devices_end_with_the_parameters_and_bn_statistics_of_one(four_devices,
                                                                       one_device):
    tmp, out, stdout = four_devices
    assert out["devices"] == DEVICES and "4 cpu devices" in stdout
    one, four = _epoch_state(tmp / "one", 1), _epoch_state(tmp / "half", 1)
    assert int(one["step"]) == int(four["step"]) == 4
    assert jax.tree_util.tree_leaves(one["batch_stats"])                # BN model
    for part in ("params", "batch_stats", "opt_state"):
        _assert_close(one[part], four[part])
    # Training moved the parameters far more than the tolerance (the comparison means it).
    data = synthetic_colour()
    init = build_run(bn_config(tmp / "x"), data, data.train_images, 4).state
    moved = max(float(np.max(np.abs(np.asarray(a) - np.asarray(b)))) for a, b in zip(
        jax.tree_util.tree_leaves(init.params), jax.tree_util.tree_leaves(one["params"])))
    assert moved > 1e-2
    assert one_device[1]["devices"] == 1


def test_distillation_on_four_devices_ends_as_on_one(four_devices):
    tmp = four_devices[0]
    train(bn_config(tmp / "kd-one", method="ste", epochs=1,
                    distill={"teacher": str(tmp / "half")}),
          dataset=synthetic_colour())
    one, four = _epoch_state(tmp / "kd-one", 1), _epoch_state(tmp / "kd", 1)
    for part in ("params", "batch_stats"):
        _assert_close(one[part], four[part])
    # ... and the teacher did change the training (the comparison means it).
    train(bn_config(tmp / "plain-one", method="ste", epochs=1), dataset=synthetic_colour())
    plain = _epoch_state(tmp / "plain-one", 1)
    leaves = jax.tree_util.tree_leaves
    assert max(float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
               for a, b in zip(leaves(plain["params"]), leaves(one["params"]))) > 1e-3


def test_batch_norm_statistics_are_those_of_the_global_batch(four_devices):
    _, out, _ = four_devices
    assert out["bn_var_scale"] > 0.1          # shards differ: per-device statistics would too
    assert out["bn_max_diff"] < 1e-5


def test_checkpoint_written_on_four_devices_resumes_on_one(four_devices, one_device):
    tmp = four_devices[0]
    resumed = train(bn_config(tmp / "half"), dataset=synthetic_colour(), resume=True)
    assert resumed["devices"] == 1
    half, one = _epoch_state(tmp / "half"), _epoch_state(tmp / "one")
    assert int(half["step"]) == int(one["step"]) == 8
    for part in ("params", "batch_stats", "opt_state"):
        _assert_close(half[part], one[part])
    epochs = [json.loads(line)["epoch"]
              for line in (tmp / "half" / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [1, 2]


def test_batch_not_divisible_by_the_devices_is_one_line(four_devices):
    _, out, _ = four_devices
    msg = out["odd_batch_error"]
    assert "\n" not in msg
    assert msg.startswith("batch size 30 is not divisible by the 4 devices")
    assert "multiple of 4" in msg


def test_one_device_batches_are_the_epoch_batches(tmp_path):
    """The per-host batch reader and the prefetcher give the single-device order exactly."""
    from symog_jax.data import epoch_batches
    from symog_jax.training.loop import _host_batches

    data = synthetic_digits(n_train=70, n_test=8)
    p = DataParallel()
    want = list(epoch_batches(data.train_images, data.train_labels, 16, seed=3, epoch=2))
    got = list(prefetch(_host_batches(data.train_images, data.train_labels, 16, 3, 2,
                                      p.local_rows(16)),
                        lambda b: p.put_batch(16, *b), size=2))
    assert len(got) == len(want) == 4
    for (gx, gy), (wx, wy) in zip(got, want):
        np.testing.assert_array_equal(np.asarray(gx), wx)
        np.testing.assert_array_equal(np.asarray(gy), wy)
        assert gy.dtype == jnp.int32 and gy.sharding.is_equivalent_to(p.batch, 1)

    def failing():
        yield 1
        raise OSError("disk gone")
    with pytest.raises(OSError, match="disk gone"):
        list(prefetch(failing(), lambda b: b))


def test_bf16_trains_with_float32_weights_and_bf16_products(tmp_path):
    data = synthetic_digits(n_train=256, n_test=64)
    cfg = tiny_config(tmp_path, method="symog", epochs=3, precision="bf16")
    report = train(cfg, dataset=data)
    losses = [json.loads(line)["train_loss"]
              for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert losses[-1] < 0.7 * losses[0], losses
    assert report["test_error_float"] < 0.5
    state = _epoch_state(tmp_path)
    for part in ("params", "opt_state", "batch_stats"):
        for leaf in jax.tree_util.tree_leaves(state[part]):
            if np.issubdtype(np.asarray(leaf).dtype, np.floating):
                assert np.asarray(leaf).dtype == np.float32, part
    assert config_from_file(tmp_path / "config.json").flat()["precision"] == "bf16"

    # The products are bf16 (and float32 without the option).
    def hlo(precision):
        c = cfg.replace(precision=precision, workdir=str(tmp_path / precision))
        x, y, steps = training_split(c, data)
        built = build_run(c, data, x, steps)
        return built.train_step.lower(built.state, x[:32], y[:32]).as_text()
    conv = [line for line in hlo("bf16").splitlines() if "convolution" in line]
    assert conv and all("bf16" in line for line in conv)
    assert not any("bf16" in line for line in hlo("float32").splitlines())


def test_precision_and_bits_are_checked():
    with pytest.raises(ValueError, match="precision must be one of"):
        TrainConfig(precision="fp16")
    with pytest.raises(ValueError, match="acts.bits 12 needs precision float32"):
        TrainConfig(precision="bf16", acts={"bits": 12})
    with pytest.raises(ValueError, match="bits 10 needs precision float32"):
        TrainConfig(precision="bf16", method="ste", method_config={"bits": 10})


def _free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def test_two_processes_train_like_one_process_and_resume_on_one(tmp_path):
    """Multi-host path (jax.distributed over 2 local processes, 1 CPU device each, gloo): one
    epoch ends with the parameters of 1 process x 2 devices bit for bit, and the 2-process
    checkpoint resumes on 1 process to the same result as the uninterrupted run."""
    cmd = [sys.executable, "-m", "experiments.mnist", "--float-start-epochs", "0",
           "--method", "ste", "--bits", "2", "--epochs", "2", "--width", "0.125",
           "--batch-size", "32", "--max-train-examples", "256", "--allow-bundled",
           "--no-progress"]
    base = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu")
    base.pop("XLA_FLAGS", None)
    port = _free_port()
    procs = [subprocess.Popen(
        cmd + ["--distributed", "--stop-after-epochs", "1", "--workdir", str(tmp_path / "two")],
        env=dict(base, JAX_COORDINATOR_ADDRESS=f"localhost:{port}", JAX_NUM_PROCESSES="2",
                 JAX_PROCESS_ID=str(i)), cwd=ROOT, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True) for i in range(2)]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs[0][-2000:] + outs[1][-2000:]
    assert "2 cpu devices on 2 hosts" in outs[0] and "stopped after epoch 1" in outs[0]
    ref = subprocess.run(cmd + ["--workdir", str(tmp_path / "ref")], cwd=ROOT, text=True,
                         env=dict(base, XLA_FLAGS="--xla_force_host_platform_device_count=2"),
                         capture_output=True, timeout=300)
    assert ref.returncode == 0, ref.stderr[-3000:]
    two, one = _epoch_state(tmp_path / "two", 1), _epoch_state(tmp_path / "ref", 1)
    for part in ("params", "opt_state"):             # LeNet5: no batch norm
        _assert_close(two[part], one[part], rtol=0, atol=0)
    res = subprocess.run(cmd + ["--resume", "--workdir", str(tmp_path / "two")], cwd=ROOT,
                         env=base, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0 and "1 cpu device," in res.stdout, res.stderr[-3000:]
    two, one = _epoch_state(tmp_path / "two"), _epoch_state(tmp_path / "ref")
    assert int(two["step"]) == int(one["step"]) == 16
    _assert_close(two["params"], one["params"])
    reports = [json.loads((tmp_path / d / "report.json").read_text()) for d in ("two", "ref")]
    assert reports[0]["test_error_quantized"] == pytest.approx(
        reports[1]["test_error_quantized"], abs=2e-3)
