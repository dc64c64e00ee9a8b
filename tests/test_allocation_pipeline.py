"""Per-layer bit-widths in every fixed-point method, training from a run's weights (init_from),
and the allocation pipeline: float run -> SQNR statistics -> allocation -> formats -> error ->
fine-tuning, and its command line (Lin, Talathi & Annapureddy 2016; issue 8 items 5-7)."""

from __future__ import annotations
from symog_jax.training.config import config_from_file

import json

import jax
import numpy as np
import pytest
from test_training import synthetic_digits, tiny_config

from experiments import allocate_bits as cli
from experiments.cli import build_parser, config_from_args
from symog_jax.pipelines.allocation import (FloatNetwork, allocate, evaluate_bits, finetune,
                                            layer_statistics, quantize_network)
from symog_jax.data import load_bundled_mnist5k
from symog_jax.methods import RunInfo, make_method
from symog_jax.methods.fixed_point import parse_bits_per_layer
from symog_jax.training import TrainConfig, train
from symog_jax.pipelines.allocation_study import compare
from symog_jax.training import build_run, evaluate, restore_run, training_split

LAYERS = ("conv1/kernel", "conv2/kernel", "fc1/kernel", "fc2/kernel")
LAYERS_BY_MODULE = ("conv1", "conv2", "fc1", "fc2")


@pytest.fixture(scope="module")
def dataset():
    return synthetic_digits()


def layer_bits(report) -> dict[str, int]:
    return {r["path"]: r["bits"] for r in report["layers"]}


# -- item 6: per-layer bit-widths in float (its PTQ report), ste and symog ----------------------

@pytest.mark.e2e
@pytest.mark.parametrize("method", ["float", "ste", "symog"])
def test_training_with_bits_per_layer_reports_those_bits(tmp_path, dataset, method):
    mc = {"float": {}, "ste": {}, "symog": dict(warmup_epochs=1.0, strength_start=1e-2,
                                                strength_end=0.5)}[method]
    config = tiny_config(tmp_path, method=method, epochs=2,
                         method_config={**mc, "bits": 3, "bits_per_layer": "conv1=6,fc1=2"})
    assert config.method_config.bits_per_layer == "conv1=6,fc1=2"
    assert config.describe() == f"{method}-mixed2-6bit"
    report = train(config, dataset=dataset)
    assert layer_bits(report) == {"conv1/kernel": 6, "conv2/kernel": 3, "fc1/kernel": 2,
                                  "fc2/kernel": 3}
    if method == "symog":            # the prior pulled every weight to its own layer's levels
        assert all(r["near_level_fraction"] == 1.0 for r in report["layers"])
    n = {r["path"]: int(np.prod(r["shape"])) for r in report["layers"]}
    floats = report["num_params"] - sum(n.values())          # biases stay float32
    assert report["weight_memory_bits"]["quantized"] == \
        6 * n["conv1/kernel"] + 3 * n["conv2/kernel"] + 2 * n["fc1/kernel"] + \
        3 * n["fc2/kernel"] + 32 * floats
    saved = config_from_file(tmp_path / "config.json").flat()
    assert saved["method_config"]["bits_per_layer"] == "conv1=6,fc1=2"


@pytest.mark.e2e
def test_bits_per_layer_from_a_file_and_the_flag(tmp_path, dataset):
    path = tmp_path / "alloc.json"
    path.write_text(json.dumps({"params/conv2/kernel": 5, "fc2": 4}))
    config = tiny_config(tmp_path / "run", method="ste",
                         method_config={"bits": 2, "bits_per_layer": str(path)}, epochs=1)
    # stored inline: config.json does not depend on the file
    assert config.method_config.bits_per_layer == "conv2/kernel=5,fc2=4"
    assert layer_bits(train(config, dataset=dataset)) == {
        "conv1/kernel": 2, "conv2/kernel": 5, "fc1/kernel": 2, "fc2/kernel": 4}
    defaults = TrainConfig(dataset="mnist", model="lenet5", method="ste")
    parser = build_parser("x", defaults, "")
    args = parser.parse_args(["--bits-per-layer", str(path), "--bits", "3"])
    assert config_from_args(args, defaults).method_config.bits_per_layer == \
        "conv2/kernel=5,fc2=4"
    assert parse_bits_per_layer(" conv1 = 3 , ") == {"conv1": 3}


@pytest.mark.e2e
def test_bits_per_layer_on_the_trainable_and_on_a_plain_parameter_tree(dataset):
    params = build_run(tiny_config("unused", method="ste"), dataset, dataset.train_images,
                       4).state.params
    for method in ("float", "ste", "symog"):
        m = make_method(method, {"bits": 3, "bits_per_layer": "conv1=6,fc1/kernel=2"},
                        RunInfo(4, 1, ("conv1", "conv2", "fc1", "fc2")))
        want = {"conv1": 6, "conv2": 3, "fc1": 2, "fc2": 3}
        trainable = m.policy().init({"params": params, "method": {}})["params"]
        plain = m.policy().init(params)        # e.g. the transform inside nnx.Optimizer
        for formats in (trainable, plain):
            assert {k: formats[k]["kernel"].bits for k in want} == want


@pytest.mark.parametrize("spec, match", [
    ("conv1=1", r"'conv1' has 1 bits; each must be an integer in \[2, 24\]"),
    ("conv1=30", r"'conv1' has 30 bits"),
    ("missing.json", "file 'missing.json' does not exist"),
    ("conv1=4,conv1=5", "'conv1' is given twice"),
    ("conv1", "file 'conv1' does not exist"),
    ("conv1=four", "integer bits"),
    ("=4", "not 'layer=bits'"),
    (",", "file ',' does not exist"),
    (4, "must be 'layer=bits,...'"),
])
def test_bad_bits_per_layer_is_a_one_line_error_at_config_creation(spec, match):
    for method in ("float", "ste", "symog"):
        with pytest.raises(ValueError, match=match) as e:
            make_method(method, {"bits_per_layer": spec})
        assert "\n" not in str(e.value)


def test_bad_bits_per_layer_files(tmp_path):
    bad_json = tmp_path / "bad.json"
    bad_json.write_text("{conv1: 3")
    listed = tmp_path / "list.json"
    listed.write_text("[3, 4]")
    big = tmp_path / "big.json"
    big.write_text('{"conv1": 3, "fc1": 99}')
    fraction = tmp_path / "frac.json"
    fraction.write_text('{"conv1": 3.5}')
    empty = tmp_path / "empty.json"
    empty.write_text("{}")
    for path, match in [(bad_json, "cannot read .* as JSON"), (listed, "must hold a JSON object"),
                        (big, "'fc1' has 99 bits"), (fraction, "'conv1' has 3.5 bits"),
                        (empty, "gives no layer")]:
        with pytest.raises(ValueError, match=match):
            TrainConfig(method="ste", method_config={"bits_per_layer": str(path)})


@pytest.mark.parametrize("spec, kw, match", [
    ("conv9=4", {}, "'conv9' is not a conv/dense layer of the model; its layers: conv1, conv2"),
    ("conv1/bias=4", {}, "'conv1/bias' is not a conv/dense layer"),
    ("conv1=4", {"float_first_last": True}, "covers layer 'conv1', which float_first_last keeps"),
])
def test_unknown_layers_fail_before_training(tmp_path, dataset, spec, kw, match):
    config = tiny_config(tmp_path, method="ste",
                         method_config={"bits": 2, "bits_per_layer": spec, **kw}, epochs=1)
    with pytest.raises(ValueError, match=match) as e:
        train(config, dataset=dataset)
    assert "\n" not in str(e.value)
    assert not (tmp_path / "checkpoints").exists() or not any((tmp_path / "checkpoints").iterdir())


@pytest.mark.e2e
@pytest.mark.parametrize("method", ["ste", "symog"])
def test_first_last_bits_sets_the_first_and_last_layer_in_call_order(tmp_path, dataset, method):
    mc = {"ste": {}, "symog": dict(warmup_epochs=1.0, strength_start=1e-2,
                                   strength_end=0.5)}[method]
    config = tiny_config(tmp_path, method=method, epochs=2,
                         method_config={**mc, "bits": 2, "first_last_bits": 6})
    assert config.describe() == f"{method}-2bit-fl6"
    assert layer_bits(train(config, dataset=dataset)) == {
        "conv1/kernel": 6, "conv2/kernel": 2, "fc1/kernel": 2, "fc2/kernel": 6}
    # The layers are found by call order, not by name; bits_per_layer sets the others.
    params = build_run(tiny_config("unused", method="ste"), dataset, dataset.train_images,
                       4).state.params
    m = make_method(method, {**mc, "bits": 2, "first_last_bits": 8, "bits_per_layer": "conv1=3"},
                    RunInfo(4, 1, ("conv2", "conv1", "fc1", "fc2")))
    assert m.describe() == f"{method}-mixed3-8bit"
    formats = m.policy().init(params)
    assert {k: formats[k]["kernel"].bits for k in LAYERS_BY_MODULE} == {
        "conv2": 8, "conv1": 3, "fc1": 2, "fc2": 8}
    parser = build_parser("x", TrainConfig(method="ste"), "")
    args = parser.parse_args(["--first-last-bits", "8"])
    assert config_from_args(args, TrainConfig(method="ste")).method_config.first_last_bits == 8


@pytest.mark.parametrize("fields, run_layers, match", [
    ({"first_last_bits": 1}, None, r"first_last_bits must be in \[2, 24\], got 1"),
    ({"first_last_bits": 8.0}, None, "first_last_bits must be an integer"),
    ({"first_last_bits": 8, "float_first_last": True}, None, "both set the first and last"),
    ({"first_last_bits": 8, "bits_per_layer": "fc2=4"}, ("conv1", "conv2", "fc1", "fc2"),
     "'fc2' covers layer 'fc2', which first_last_bits sets to 8 bits"),
    ({"first_last_bits": 8}, ("conv1", "fc1"), "at least 3 conv/dense layers"),
    ({"first_last_bits": 8}, (), r"the run's layers: none known"),
])
def test_bad_first_last_bits_is_a_one_line_error(fields, run_layers, match):
    for method in ("ste", "symog"):
        with pytest.raises(ValueError, match=match) as e:
            m = make_method(method, fields, None if run_layers is None
                            else RunInfo(4, 1, run_layers))
            m.policy()
        assert "\n" not in str(e.value)


# -- init_from ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def float_run(tmp_path_factory, dataset):
    workdir = tmp_path_factory.mktemp("float")
    train(tiny_config(workdir, method="float", epochs=2), dataset=dataset)
    return workdir


@pytest.mark.e2e
def test_init_from_starts_from_the_runs_weights(tmp_path, dataset, float_run):
    _, _, state, _ = restore_run(float_run, dataset)
    config = tiny_config(tmp_path, method="ste", init_from=str(float_run), epochs=1,
                         method_config={"bits": 4, "bits_per_layer": "fc1=3"})
    train_x, _, steps = training_split(config, dataset)
    built = build_run(config, dataset, train_x, steps)
    jax.tree_util.tree_map(np.testing.assert_array_equal, built.state.params, state.params)
    # the formats of the straight-through run are chosen from the float weights
    fresh = build_run(config.replace(init_from=None), dataset, train_x, steps)
    assert not all(np.array_equal(a, b) for a, b in zip(
        jax.tree_util.tree_leaves(fresh.state.params), jax.tree_util.tree_leaves(state.params)))
    report = train(config, dataset=dataset)
    assert report["config"]["init_from"] == str(float_run)
    assert layer_bits(report)["fc1/kernel"] == 3


@pytest.mark.e2e
def test_init_from_errors(tmp_path, dataset, float_run):
    with pytest.raises(FileNotFoundError, match="not a run directory"):
        train(tiny_config(tmp_path / "a", init_from=str(tmp_path / "nowhere")), dataset=dataset)
    with pytest.raises(ValueError, match="do not fit this model"):
        train(tiny_config(tmp_path / "b", init_from=str(float_run), width=0.25), dataset=dataset)
    with pytest.raises(ValueError, match="init_from must be a run directory"):
        tiny_config(tmp_path / "c", init_from="  ")


# -- item 5: the pipeline -------------------------------------------------------------------------

@pytest.mark.e2e
def test_pipeline_statistics_allocation_and_evaluation(dataset, float_run):
    net = FloatNetwork.from_run(float_run, dataset)
    assert net.epoch == 2 and tuple(net.quantized_layers()) == LAYERS
    stats = layer_statistics(net, min_bits=2, max_bits=6, calibration_size=64)
    assert stats.table_db.shape == (4, 5) and stats.names == LAYERS
    # more bits, (nearly) never less SQNR; about 6 dB per bit over the range
    assert np.all(np.diff(stats.table_db, axis=1) > -1.0)
    assert np.all((stats.table_db[:, -1] - stats.table_db[:, 0]) / 4 > 3.0)
    tensor = layer_statistics(net, min_bits=2, max_bits=6, kind="tensor")
    np.testing.assert_allclose(tensor.table_db[:, 0],
                               [r["sqnr_db"] for r in evaluate_bits(net, 2)["layers"]],
                               rtol=1e-4)

    alloc = allocate(stats, budget_bits=3.5 * stats.total_params)
    bits = alloc.as_dict()
    assert sum(c * bits[n] for n, c in zip(stats.names, stats.costs)) <= 3.5 * stats.total_params
    # the evaluation is the float method's post-training report with bits_per_layer
    method = make_method("float", {"bits_per_layer": ",".join(f"{k}={v}" for k, v in bits.items())},
                         net_run(net))
    hq_method = method.finalize({"params": net.params, "method": {}}, None)
    hq = quantize_network(net, alloc)
    jax.tree_util.tree_map(np.testing.assert_array_equal, hq.params, hq_method.params)
    ev = evaluate_bits(net, bits, calibration_images=dataset.train_images[:64])
    direct = evaluate(net.eval_step(), hq.params, net.batch_stats, net.act_formats,
                      dataset.test_images, dataset.test_labels)
    assert ev["test_error"] == direct["error"] and ev["bits"] == bits
    assert ev["weight_memory_bits"] == alloc.cost
    # the additive model from one-layer-at-a-time output SQNRs predicts the measured one
    assert abs(stats.predicted_sqnr_db(bits) - ev["output_sqnr_db"]) < 3.0
    # equal bits: an int; more bits never hurt the SQNR much
    assert evaluate_bits(net, 8)["test_error"] <= evaluate_bits(net, 2)["test_error"] + 0.02
    gauss = evaluate_bits(net, 4, formats="gaussian")
    assert {r["path"]: r["bits"] for r in gauss["layers"]} == dict.fromkeys(LAYERS, 4)


def net_run(net):
    return RunInfo(1, 1, net.layer_order)


@pytest.mark.e2e
def test_pipeline_bad_input(dataset, float_run):
    net = FloatNetwork.from_run(float_run, dataset)
    with pytest.raises(ValueError, match="calibration set is empty"):
        layer_statistics(net, calibration_images=dataset.train_images[:0])
    with pytest.raises(ValueError, match="min_bits"):
        layer_statistics(net, min_bits=1)
    stats = layer_statistics(net, min_bits=2, max_bits=4, kind="tensor")
    with pytest.raises(ValueError, match="budget .* is below the smallest size"):
        allocate(stats, budget_bits=stats.total_params)
    with pytest.raises(ValueError, match="exactly one of"):
        allocate(stats)
    with pytest.raises(ValueError, match="target output SQNR 200 dB cannot be met"):
        allocate(stats, target_sqnr_db=200.0)
    with pytest.raises(ValueError, match="no bit-width for conv2/kernel"):
        evaluate_bits(net, {"conv1": 4, "fc1": 4, "fc2": 4})
    with pytest.raises(ValueError, match="'conv7' is not a quantized layer"):
        evaluate_bits(net, {"conv7": 4})
    with pytest.raises(ValueError, match="formats must be one of"):
        evaluate_bits(net, 4, formats="cauchy")
    given = FloatNetwork.from_params(net.config, dataset, net.params)
    assert evaluate_bits(given, 4)["test_error"] == evaluate_bits(net, 4)["test_error"]
    with pytest.raises(ValueError, match="starts from a run directory"):
        finetune(given, 4, "unused")


@pytest.mark.e2e
def test_finetune_from_the_float_run(tmp_path, dataset, float_run):
    net = FloatNetwork.from_run(float_run, dataset)
    bits = {"conv1/kernel": 5, "conv2/kernel": 3, "fc1/kernel": 2, "fc2/kernel": 4}
    report = finetune(net, bits, tmp_path / "ft", epochs=1, max_train_examples=128)
    assert layer_bits(report) == bits
    assert report["config"]["method"] == "ste" and report["config"]["init_from"] == str(float_run)
    assert report["config"]["lr"] == pytest.approx(net.config.lr / 10)
    # a second call with the same settings reuses the finished run
    assert finetune(net, bits, tmp_path / "ft", epochs=1, max_train_examples=128) == report
    equal = finetune(net, 3, tmp_path / "ft3", epochs=1, max_train_examples=128)
    assert equal["config"]["method_config"]["bits_per_layer"] is None
    assert set(layer_bits(equal).values()) == {3}


# -- item 7: the command --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def mnist_float_run(tmp_path_factory):
    """A float LeNet-5 (width 1/8) on the bundled MNIST subset: loadable by the command."""
    workdir = tmp_path_factory.mktemp("mnist-float")
    config = TrainConfig(dataset="mnist", model="lenet5", method="float", epochs=1,
                         batch_size=64, optimizer="adam", lr=3e-3, weight_decay=0.0, width=0.125,
                         data_source="bundled", max_train_examples=1024, workdir=str(workdir),
                         progress=False)
    train(config, dataset=load_bundled_mnist5k(test_size=1000, seed=0))
    return workdir


@pytest.mark.e2e
def test_allocate_bits_command(tmp_path, mnist_float_run, capsys):
    out = tmp_path / "out"
    assert cli.main(["--workdir", str(mnist_float_run), "--out", str(out),
                     "--budgets", "3", "4.5", "--equal-bits", "2", "4", "--targets", "20",
                     "--max-bits", "6", "--calibration-size", "64",
                     "--finetune-epochs", "1", "--finetune-max-examples", "128"]) == 0
    printed = capsys.readouterr().out
    result = json.loads((out / "allocation.json").read_text())
    rows = {r["label"]: r for r in result["rows"]}
    assert list(rows) == ["equal 2 bit", "equal 4 bit", "budget 3 b/w", "budget 4.5 b/w",
                          "target 20 dB", "SQNR of 2 bit", "SQNR of 4 bit"]
    for b in (2, 4):       # as good as the equal bit-width by the model, never larger
        assert rows[f"SQNR of {b} bit"]["predicted_sqnr_db"] >= \
            rows[f"equal {b} bit"]["predicted_sqnr_db"] - 1e-9
        assert rows[f"SQNR of {b} bit"]["weight_memory_bits"] <= \
            rows[f"equal {b} bit"]["weight_memory_bits"]
    assert rows["budget 3 b/w"]["avg_bits"] <= 3.0 and rows["equal 4 bit"]["avg_bits"] == 4.0
    for r in rows.values():
        assert 0.0 <= r["test_error"] <= 1.0 and 0.0 <= r["test_error_finetuned"] <= 1.0
    # each optimized allocation is a file that --bits-per-layer takes
    spec = str(out / rows["budget 3 b/w"]["bits_file"])    # relative to allocation.json's directory
    assert make_method("ste", {"bits_per_layer": spec}).config.layer_bits() == \
        rows["budget 3 b/w"]["bits"]
    md = (out / "allocation.md").read_text()
    assert "| budget 4.5 b/w |" in md and "after fine-tuning" in md and "budget 3 b/w" in printed
    assert set(result["comparisons"]) == {"no_retraining", "finetuned"}
    assert ("matplotlib is not installed" in printed) != (out / "error_vs_memory.png").exists()
    # run again: the fine-tuning runs are reused, the numbers are the same
    assert cli.main(["--workdir", str(mnist_float_run), "--out", str(out),
                     "--budgets", "3", "4.5", "--equal-bits", "2", "4", "--targets", "20",
                     "--max-bits", "6", "--calibration-size", "64",
                     "--finetune-epochs", "1", "--finetune-max-examples", "128"]) == 0
    again = json.loads((out / "allocation.json").read_text())
    assert [r["test_error_finetuned"] for r in again["rows"]] == \
        [r["test_error_finetuned"] for r in result["rows"]]


@pytest.mark.e2e
def test_allocate_bits_command_errors(tmp_path, mnist_float_run, capsys):
    assert cli.main(["--workdir", str(tmp_path / "none")]) == 2
    assert "not a run directory" in capsys.readouterr().err
    assert cli.main(["--workdir", str(mnist_float_run), "--out", str(tmp_path / "o"),
                     "--budgets", "1.5"]) == 2
    assert "below --min-bits 2" in capsys.readouterr().err


def test_compare_picks_the_smallest_equal_model_within_tolerance():
    rows = [{"kind": "equal", "label": f"equal {b}", "weight_memory_bits": 100 * b, "e": e}
            for b, e in [(2, 0.05), (3, 0.012), (4, 0.0105), (5, 0.010)]]
    rows.append({"kind": "optimized", "label": "opt", "weight_memory_bits": 280, "e": 0.0102})
    rows.append({"kind": "optimized", "label": "best", "weight_memory_bits": 500, "e": 0.001})
    c = {x["row"]: x for x in compare(rows, "e", 0.001)}
    assert c["opt"]["equal_row"] == "equal 4" and c["opt"]["smaller_by"] == pytest.approx(0.3)
    assert c["best"]["equal_row"] is None and c["best"]["smaller_by"] is None


# -- allocation over weights and activations (issue 8, what is left, 2 and 3) -------------------

ACTS = ("conv2/input", "fc1/input", "fc2/input")


@pytest.mark.e2e
def test_activation_statistics_costs_and_rows_by_hand(dataset, float_run):
    from test_activations import np_best_frac_bits

    from symog_jax.numerics.formats import unsigned_format
    from symog_jax.quantizers.activations import quantize_activations, record_layer_inputs
    from symog_jax.training import CALIBRATION_BATCH
    net = FloatNetwork.from_run(float_run, dataset)
    p = net.params
    # elements per image from the kernels' shapes: conv2 sees 12x12 maps of conv1's channels
    # (28 -5+1 = 24, pooled to 12), fc1 and fc2 their kernels' input size
    want = {"conv2": 12 * 12 * p["conv1"]["kernel"].shape[-1],
            "fc1": p["fc1"]["kernel"].shape[0], "fc2": p["fc2"]["kernel"].shape[0]}
    assert net.activation_layers() == want
    stats = layer_statistics(net, min_bits=2, max_bits=4, calibration_size=64,
                             activations=True, act_cost_weight=2.0)
    assert stats.names == LAYERS + ACTS and stats.weight_names == LAYERS
    assert stats.costs[4:] == tuple(2.0 * want[a.split("/")[0]] for a in ACTS)
    assert stats.total_params == sum(stats.costs[:4])
    # fc1's input at 3 bits: the step by brute force on the trainer's calibration batch, the
    # SQNR of the logits computed here
    variables = {"params": p, "batch_stats": net.batch_stats} if net.batch_stats else {"params": p}
    xc = net.prepare(None, training_split(net.config, dataset)[0][:CALIBRATION_BATCH], False)
    _, rec = record_layer_inputs(lambda: net.model.apply(variables, xc, train=False))
    fc1_in = np.concatenate([np.asarray(a).ravel() for k, a in rec if k == "fc1"])
    fmt = unsigned_format(3, np_best_frac_bits(fc1_in, 3, signed=False))
    x = net.prepare(None, dataset.train_images[:64], False)
    ref = np.asarray(net.model.apply(variables, x, train=False), np.float64)
    with quantize_activations({"fc1": fmt}):
        q = np.asarray(net.model.apply(variables, x, train=False), np.float64)
    by_hand = 10 * np.log10(np.sum(ref ** 2) / np.sum((ref - q) ** 2))
    assert stats.table_db[LAYERS.__len__() + 1, 1] == pytest.approx(by_hand, abs=1e-3)


def _brute_force(stats, target=None, budget=None):
    """Exhaustive search over every combination of the table's bit-widths."""
    import itertools
    noise = 10.0 ** (-stats.table_db / 10.0)
    c = np.asarray(stats.costs, np.float64)
    best = None
    for combo in itertools.product(range(stats.table_db.shape[1]), repeat=len(c)):
        n = float(sum(noise[i, j] for i, j in enumerate(combo)))
        cost = float(np.dot(c, np.asarray(combo) + stats.min_bits))
        if target is not None and n > 10.0 ** (-target / 10.0) * (1 + 1e-9):
            continue
        if budget is not None and cost > budget * (1 + 1e-9):
            continue
        key = (cost, n) if target is not None else (n, cost)
        if best is None or key < best[0]:
            best = (key, combo)
    return tuple(j + stats.min_bits for j in best[1]), best[0]


@pytest.mark.e2e
def test_allocation_with_activations_equals_exhaustive_search(dataset, float_run):
    net = FloatNetwork.from_run(float_run, dataset)
    stats = layer_statistics(net, min_bits=2, max_bits=4, calibration_size=64,
                             activations=True, act_cost_weight=20.0)
    assert stats.table_db.shape == (7, 3)                    # 3**7 = 2187 combinations
    for goal in ({"target": stats.predicted_sqnr_db(dict.fromkeys(stats.names, 3))},
                 {"target": stats.predicted_sqnr_db(dict.fromkeys(stats.names, 2)) + 2.0},
                 {"budget": 2.6 * stats.total_cost}, {"budget": 3.3 * stats.total_cost}):
        alloc = allocate(stats, target_sqnr_db=goal.get("target"),
                         budget_bits=goal.get("budget"))
        bits, key = _brute_force(stats, **goal)
        if "target" in goal:
            assert alloc.cost == pytest.approx(key[0])
        else:
            assert 10 ** (-alloc.sqnr_db / 10) == pytest.approx(key[0], rel=1e-9)
        assert alloc.bits == bits


@pytest.mark.e2e
def test_evaluating_and_finetuning_an_allocation_with_activations(tmp_path, dataset, float_run):
    from symog_jax.pipelines.allocation import bits_file, split_bits
    net = FloatNetwork.from_run(float_run, dataset)
    stats = layer_statistics(net, min_bits=2, max_bits=5, calibration_size=64, activations=True)
    alloc = allocate(stats, budget_bits=3.0 * stats.total_cost)
    weights, acts = split_bits(alloc)
    assert set(acts) == {"conv2", "fc1", "fc2"} and tuple(weights) == LAYERS
    ev = evaluate_bits(net, alloc, calibration_images=dataset.train_images[:64])
    assert ev["act_bits"] == acts and {r["path"]: r["bits"] for r in ev["activations"]} == acts
    elements = net.activation_layers()
    assert ev["activation_memory_bits"] == sum(elements[k] * b for k, b in acts.items())
    assert ev["weight_memory_bits"] + ev["activation_memory_bits"] == alloc.cost
    assert abs(stats.predicted_sqnr_db(alloc.as_dict()) - ev["output_sqnr_db"]) < 3.0
    # the same as giving the two tables separately
    assert evaluate_bits(net, weights, act_bits=acts)["test_error"] == ev["test_error"]
    # W/A equal 8: about the float network
    float_error = evaluate(net.eval_step(), net.params, net.batch_stats, {},
                           dataset.test_images, dataset.test_labels)["error"]
    assert abs(evaluate_bits(net, 8, act_bits=8)["test_error"] - float_error) <= 0.02
    # the files the training command takes, and a fine-tuning run with both tables
    wfile, afile = bits_file(weights, tmp_path / "w.json"), bits_file(acts, tmp_path / "a.json")
    config = TrainConfig(method="ste", method_config={"bits_per_layer": str(wfile)},
                         acts={"bits_per_layer": str(afile)})
    assert parse_bits_per_layer(config.method_config.bits_per_layer) == weights
    report = finetune(net, weights, tmp_path / "ft", act_bits=acts, epochs=1,
                      max_train_examples=128)
    assert layer_bits(report) == weights
    assert {r["path"]: r["bits"] for r in report["activations"]} == acts
    with pytest.raises(ValueError, match="'conv1' is not a quantizable layer input"):
        evaluate_bits(net, 4, act_bits={"conv1": 4})
    with pytest.raises(ValueError, match="not both"):
        evaluate_bits(net, alloc, act_bits=4)
    with pytest.raises(ValueError, match="act_cost_weight must be a finite number > 0"):
        layer_statistics(net, activations=True, act_cost_weight=0.0)


@pytest.mark.e2e
def test_allocate_bits_command_with_activations(tmp_path, mnist_float_run, capsys):
    out = tmp_path / "out"
    assert cli.main(["--workdir", str(mnist_float_run), "--out", str(out),
                     "--allocate-activations", "--budgets", "3", "--equal-bits", "2", "4",
                     "--max-bits", "6", "--calibration-size", "64"]) == 0
    printed = capsys.readouterr().out
    result = json.loads((out / "allocation.json").read_text())
    rows = {r["label"]: r for r in result["rows"]}
    assert list(rows) == ["equal 2 bit", "equal 4 bit", "budget 3 b/e", "SQNR of 2 bit",
                          "SQNR of 4 bit"]
    assert set(rows["equal 4 bit"]["bits"].values()) == {4}
    assert set(rows["equal 4 bit"]["bits"]) == set(LAYERS + ACTS)
    for r in rows.values():
        assert r["cost_bits"] == r["weight_memory_bits"] + r["activation_memory_bits"]
    assert rows["budget 3 b/e"]["cost_bits"] <= 3 * result["total_cost"] + 1e-6
    spec = rows["budget 3 b/e"]
    config = TrainConfig(method="ste",
                         method_config={"bits_per_layer": str(out / spec["bits_file"])},
                         acts={"bits_per_layer": str(out / spec["act_bits_file"])})
    assert config.flat()["act_bits_per_layer"] == ",".join(
        f"{a.split('/')[0]}={spec['bits'][a]}" for a in ACTS)
    assert "act. bits conv2/fc1/fc2" in (out / "allocation.md").read_text()
    assert (out / "error_vs_memory.png").stat().st_size > 1000 and "plot:" in printed


@pytest.mark.e2e
def test_allocate_bits_command_trains_the_float_run(tmp_path, capsys):
    workdir = tmp_path / "float"
    args = ["--workdir", str(workdir), "--out", str(tmp_path / "out"), "--budgets", "3",
            "--equal-bits", "2", "4", "--max-bits", "4", "--calibration-size", "32",
            "--no-match-equal"]
    assert cli.main(args) == 2
    assert "pass --float-epochs N" in capsys.readouterr().err
    train_flags = ["--float-epochs", "1", "--dataset", "mnist", "--model", "lenet5",
                   "--width", "0.125", "--data-source", "bundled", "--max-train-examples",
                   "256", "--batch-size", "64"]
    assert cli.main(args + train_flags) == 0
    printed = capsys.readouterr().out
    assert "training the float network" in printed
    report = json.loads((workdir / "report.json").read_text())
    assert report["config"]["method"] == "float" and report["config"]["epochs"] == 1
    assert report["config"]["optimizer"] == "adam"           # experiments.mnist's defaults
    assert report["config"]["width"] == 0.125
    assert (tmp_path / "out" / "error_vs_memory.png").is_file()
    # a second call reuses the finished float run
    assert cli.main(args + train_flags) == 0
    assert "training the float network" not in capsys.readouterr().out
