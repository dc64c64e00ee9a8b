"""From a float network to a mixed-precision fixed-point one (Lin, Talathi & Annapureddy, 2016).

The pipeline of the paper, as library functions:

1. :class:`FloatNetwork` -- the float model: from a run directory's newest intact checkpoint
   (:meth:`FloatNetwork.from_run`) or from given parameters (:meth:`FloatNetwork.from_params`).
   The quantized layers are those the run's fixed-point method quantizes (conv/dense kernels,
   minus the first and last with ``float_first_last``).
2. :func:`layer_statistics` -- on a calibration batch, each quantized layer's SQNR at every
   bit-width in ``min_bits..max_bits``: ``"output"`` (default) the SQNR of the logits with only
   that layer's weights quantized (its noise *as it reaches the output*); ``"tensor"`` the SQNR
   of the weights themselves (the paper's per-layer model). Together with the layers' parameter
   counts they are the :class:`~symog_jax.quantizers.bit_allocation.SQNRModel` (a measured
   table) and the costs of the allocation.
3. :func:`allocate` -- integer bits per layer for a target output SQNR or a weight-memory budget
   (:func:`~symog_jax.quantizers.bit_allocation.allocate_bits`).
4. :func:`quantize_network` / :func:`evaluate_bits` -- the fixed-point formats for those bits and
   the test error without retraining. ``formats="search"`` (default) picks each layer's
   power-of-two step by the exact MSE search of
   :class:`~symog_jax.quantizers.policy.FormatPolicy` -- the formats the training methods use, so
   this equals the ``float`` method's post-training report with ``bits_per_layer``; a
   distribution name (``"gaussian"``, ``"laplacian"``, ``"uniform"``, ``"empirical"``) uses the
   paper's model instead (:func:`~symog_jax.numerics.optimal_step.fixed_point_format_for`: the
   SQNR-optimal step for that distribution scaled by the weights' RMS, rounded to a power of two;
   always per tensor).
5. :func:`finetune` -- optional: a short ``ste`` (or ``symog``) run with ``bits_per_layer``,
   started from the float weights (``TrainConfig.init_from``); needs a float run directory.

**Weights only** (default, ``activations=False``): activation quantization is whatever the float
run used (its ``act_bits``), unchanged; the allocation is over weights, whose bits are the
model size.

**Weights and activations** (``activations=True`` in :func:`layer_statistics`): the quantized
tensors are the weights *and* the input of every conv/dense layer except the first (the image,
which the trainer keeps float) and, with the run's ``act_float_last``, the last. The additive
noise model treats both alike: an activation's row of the table is the logits' SQNR with only
that layer input rounded (its format calibrated as the trainer does,
:func:`~symog_jax.quantizers.activations.calibrate_activation_formats` on the first
:data:`~symog_jax.training.run.CALIBRATION_BATCH` training images, at each bit-width), the
weights and every other activation float; the weights' rows are then measured with float
activations too (the run's own activation formats are replaced by the allocation's). **Cost of
an activation tensor**: its number of elements for one image (the bits it takes to hold that
layer input for one inference, e.g. 12x12x32 = 4,608 for LeNet5's ``conv2``), times
``act_cost_weight`` (default 1: an activation element costs as much as a weight; e.g. the batch
size to count the activation memory of a whole batch, or a small number to count mostly the
weights); a weight tensor costs its parameter count. The total cost ``sum_i c_i b_i`` is then
weight memory plus (weighted) activation memory per image, in bits. Activation rows are named
``'<layer>/input'`` (``'conv2/input'``); :func:`split_bits` turns an allocation into the
weights' ``bits_per_layer`` and the activations' ``act_bits_per_layer`` tables, and
:func:`bits_file` writes either as JSON for the training command.

Example (a float run in ``runs/float``)::

    net = FloatNetwork.from_run("runs/float")
    stats = layer_statistics(net)
    alloc = allocate(stats, budget_bits=3.5 * stats.total_params)
    print(evaluate_bits(net, alloc.as_dict())["test_error"])
    report = finetune(net, alloc.as_dict(), "runs/float-ft35", epochs=1)
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from symog_jax.data import ImageDataset, load_dataset
from symog_jax.files import write_json_atomic
from symog_jax.quantizers.hard_quantize import HardQuantized, hard_quantize
from symog_jax.methods import RunInfo, make_method
from symog_jax.methods.fixed_point import FixedPointConfig, format_bits_per_layer
from symog_jax.numerics.calibration import sqnr_db
from symog_jax.numerics.optimal_step import fixed_point_format_for
from symog_jax.numerics.rounding import quantize
from symog_jax.quantizers.activations import (ActivationQuantConfig, activation_format_report,
                                              calibrate_activation_formats,
                                              quantize_activations, record_layer_inputs)
from symog_jax.quantizers.bit_allocation import Allocation, SQNRModel, allocate_bits
from symog_jax.quantizers.masks import path_str
from symog_jax.quantizers.policy import FormatPolicy
from symog_jax.quantizers.sqnr import predicted_output_sqnr_db
from symog_jax.pipelines.recipes import train_run
from symog_jax.training.config import TrainConfig, load_run_config
from symog_jax.training.evaluation import evaluate
from symog_jax.training.run import (CALIBRATION_BATCH, build_run, probe_model, restore_run,
                                    training_split)
from symog_jax.training.steps import make_eval_step

__all__ = ["ACT_SUFFIX", "FORMAT_RULES", "FloatNetwork", "LayerStatistics", "allocate",
           "bits_file", "equal_bits_table", "evaluate_bits", "finetune", "layer_statistics",
           "quantize_network", "split_bits", "weight_formats", "weight_memory_bits"]

#: ``formats=`` values: the exact MSE search, or a distribution model of the weights.
FORMAT_RULES = ("search", "gaussian", "laplacian", "uniform", "empirical")
SQNR_KINDS = ("output", "tensor")
#: Calibration images used by default (the first of the training split).
DEFAULT_CALIBRATION = 512
#: Suffix of an activation tensor's name in statistics and allocations (``'conv2/input'``).
ACT_SUFFIX = "/input"


@dataclasses.dataclass
class FloatNetwork:
    """A float network and what the pipeline needs around it.

    Attributes:
      config: the run's :class:`TrainConfig` (its method config's ``per_channel`` and
        ``float_first_last`` decide the quantized layers and the formats).
      dataset: the data set (test split for the error, training split for calibration).
      model: the Flax module.
      params, batch_stats: the float variables.
      act_formats: the run's activation formats (``{}``: float activations).
      prepare: ``prepare(rng, uint8_images, train) -> float32`` of the run.
      layer_order: conv/dense module paths in call order.
      workdir: the run directory (``None`` for given parameters; fine-tuning needs one).
      epoch: the checkpoint's epoch (``None`` for given parameters).
    """

    config: TrainConfig
    dataset: ImageDataset
    model: Any
    params: Any
    batch_stats: Any
    act_formats: dict
    prepare: Any
    layer_order: tuple[str, ...]
    workdir: Path | None = None
    epoch: int | None = None
    _eval_step: Any = dataclasses.field(default=None, repr=False)
    _act_inputs: Any = dataclasses.field(default=None, repr=False)

    @classmethod
    def from_run(cls, workdir: str | Path, dataset: ImageDataset | None = None, *,
                 data_dir: str | None = None, data_source: str | None = None) -> "FloatNetwork":
        """The newest intact checkpoint of a run directory (any method: its float weights).

        Raises:
          FileNotFoundError: no ``config.json`` or no intact checkpoint.
        """
        workdir = Path(workdir)             # as given: reports name it so (no machine path)
        config = load_run_config(workdir)
        if dataset is None:
            dataset = load_dataset(config.dataset, source=data_source or config.data_source,
                                   data_dir=data_dir if data_dir is not None else config.data_dir,
                                   allow_bundled=config.allow_bundled)
        config, built, state, meta = restore_run(workdir.absolute(), dataset)
        return cls(config, dataset, built.model, state.params, state.batch_stats,
                   dict(state.act_formats), built.prepare, built.method.run.layer_order,
                   workdir, meta["epoch"])

    @classmethod
    def from_params(cls, config: TrainConfig, dataset: ImageDataset, params,
                    batch_stats=None) -> "FloatNetwork":
        """Given float parameters for ``config``'s model (activation formats re-calibrated).

        Raises:
          ValueError: ``params`` do not fit the model of ``config``.
        """
        config = config.replace(init_from=None)
        train_x, _, steps = training_split(config, dataset)
        built = build_run(config, dataset, train_x, steps)
        for name, given, want in (("params", params, built.state.params),
                                  ("batch_stats", batch_stats, built.state.batch_stats)):
            if given is None:
                continue
            if jax.tree_util.tree_map(np.shape, given) != \
                    jax.tree_util.tree_map(np.shape, want):
                shape = f"widths {','.join(map(str, config.widths))}" \
                    if config.widths is not None else f"width {config.width}"
                raise ValueError(f"the given {name} do not fit {config.model} ({shape}) on "
                                 f"{dataset.name}")
        batch_stats = built.state.batch_stats if batch_stats is None else batch_stats
        variables = {"params": params, **({"batch_stats": batch_stats} if batch_stats else {})}
        act = dataclasses.replace(config.acts, bits_per_layer=None)
        order, act_formats = probe_model(built.model, variables, built.prepare,
                                         train_x[:CALIBRATION_BATCH], act)
        return cls(config, dataset, built.model, params, batch_stats, dict(act_formats),
                   built.prepare, order)

    # -- what is quantized -----------------------------------------------------------------
    def fixed_point_config(self) -> FixedPointConfig:
        """The run's fixed-point settings (defaults for a method without them)."""
        mc = self.config.method_config
        return mc if isinstance(mc, FixedPointConfig) else FixedPointConfig()

    def quantized_layers(self) -> dict[str, int]:
        """``{kernel path in params: parameter count}`` of the quantized layers, in tree order."""
        fp = self.fixed_point_config()
        method = make_method("float", {"bits": fp.bits, "per_channel": fp.per_channel,
                                       "float_first_last": fp.float_first_last},
                             RunInfo(1, 1, self.layer_order))
        mask = method.policy().mask
        return {path_str(p): int(np.size(leaf)) for p, leaf in
                jax.tree_util.tree_flatten_with_path(self.params)[0]
                if mask("params/" + path_str(p), leaf)}

    def _calibration_inputs(self) -> list:
        """Every conv/dense input on the trainer's calibration batch, float activations."""
        if self._act_inputs is None:
            train_x = training_split(self.config, self.dataset)[0][:CALIBRATION_BATCH]
            variables = {"params": self.params,
                         **({"batch_stats": self.batch_stats} if self.batch_stats else {})}
            x = self.prepare(None, jnp.asarray(train_x), False)
            _, self._act_inputs = record_layer_inputs(
                lambda: self.model.apply(variables, x, train=False))
        return self._act_inputs

    def activation_layers(self) -> dict[str, int]:
        """``{layer path: elements per image}`` of the layer inputs that can be quantized.

        Every conv/dense layer's input in call order except the first (the image) and, with
        the run's ``act_float_last``, the last. A layer called twice counts both inputs.
        """
        records = self._calibration_inputs()
        skip = {records[0][0]} | ({records[-1][0]} if self.config.acts.skip_last else set())
        out: dict[str, int] = {}
        for path, x in records:
            if path not in skip:
                out[path] = out.get(path, 0) + int(np.prod(np.shape(x)[1:]))
        return out

    def activation_formats(self, act_bits) -> dict:
        """The activation formats for ``act_bits`` (an int for every layer of
        :meth:`activation_layers`, or ``{layer: bits}`` covering some of them), calibrated as
        the trainer does (the run's ``act_range``; unnamed layers stay float).

        Raises:
          ValueError: a layer that is not one of :meth:`activation_layers`, bits outside
            1..16.
        """
        layers = self.activation_layers()
        if isinstance(act_bits, (int, np.integer)) and not isinstance(act_bits, bool):
            act_bits = dict.fromkeys(layers, int(act_bits))
        if not isinstance(act_bits, Mapping):
            raise TypeError(f"act_bits must be an int or a {{layer: bits}} dict, got "
                            f"{type(act_bits).__name__}")
        if not act_bits:
            return {}
        config = ActivationQuantConfig(bits=None, range=self.config.acts.range,
                                       skip_last=self.config.acts.skip_last,
                                       bits_per_layer=dict(act_bits))
        return calibrate_activation_formats(self._calibration_inputs(), config)

    # -- running it ------------------------------------------------------------------------
    def logits(self, params, images: np.ndarray, act_formats=None) -> jax.Array:
        """Logits of ``params`` on uint8 ``images`` (with ``act_formats``, default the run's)."""
        return _logits(self.model, self.prepare, params, self.batch_stats,
                       self.act_formats if act_formats is None else act_formats, images)

    def eval_step(self):
        if self._eval_step is None:
            self._eval_step = make_eval_step(self.model, self.prepare)
        return self._eval_step

    def calibration_images(self, size: int = DEFAULT_CALIBRATION,
                           images: np.ndarray | None = None) -> np.ndarray:
        """``images`` or the first ``size`` training images; refuses an empty set."""
        if images is None:
            if isinstance(size, bool) or not isinstance(size, int) or size < 1:
                raise ValueError(f"calibration size must be a positive integer, got {size!r}")
            images = training_split(self.config, self.dataset)[0][:size]
        if np.shape(images)[:1] == (0,) or np.size(images) == 0:
            raise ValueError("the calibration set is empty")
        return np.asarray(images)


def _logits(model, prepare, params, batch_stats, act_formats, images):
    variables = {"params": params, **({"batch_stats": batch_stats} if batch_stats else {})}
    with quantize_activations(act_formats):
        return model.apply(variables, prepare(None, jnp.asarray(images), False), train=False)


def split_bits(bits) -> tuple[Any, dict[str, int]]:
    """``(weight bits, activation bits)`` of an allocation over weights and activations.

    ``bits``: an :class:`Allocation` with names, a ``{name: bits}`` dict, or an int (returned
    as is, with no activation bits). Names ending in :data:`ACT_SUFFIX` (``'conv2/input'``)
    are activations and lose the suffix (``{'conv2': 4}``, the ``act_bits_per_layer`` table);
    the rest are weights (the ``bits_per_layer`` table).

    Example:
      >>> split_bits({"conv2/kernel": 3, "fc1/kernel": 2, "conv2/input": 8})
      ({'conv2/kernel': 3, 'fc1/kernel': 2}, {'conv2': 8})
    """
    if isinstance(bits, Allocation):
        bits = bits.as_dict()
    if not isinstance(bits, Mapping):
        return bits, {}
    weights = {k: v for k, v in bits.items() if not k.endswith(ACT_SUFFIX)}
    acts = {k[:-len(ACT_SUFFIX)]: v for k, v in bits.items() if k.endswith(ACT_SUFFIX)}
    return weights, acts


def _weights_and_acts(net: FloatNetwork, bits, act_bits):
    """``(weight table, activation bits or None)`` from ``bits`` and ``act_bits``."""
    weights, acts = split_bits(bits)
    if acts and act_bits is not None:
        raise ValueError("give activation bits either inside bits ('<layer>/input' keys) or as "
                         "act_bits, not both")
    if acts:
        act_bits = acts
    if isinstance(act_bits, (int, np.integer)) and not isinstance(act_bits, bool):
        act_bits = dict.fromkeys(net.activation_layers(), int(act_bits))
    if act_bits is not None:
        known = net.activation_layers()
        bad = [k for k in act_bits if k not in known]
        if bad:
            raise ValueError(f"{bad[0]!r} is not a quantizable layer input; those are: "
                             f"{', '.join(known) or 'none'}")
        act_bits = {k: int(v) for k, v in act_bits.items()}
    return _check_bits_table(net, weights), act_bits


def _check_bits_table(net: FloatNetwork, bits) -> dict[str, int]:
    layers = net.quantized_layers()
    if isinstance(bits, Allocation):
        bits = bits.as_dict()
    if isinstance(bits, (int, np.integer)) and not isinstance(bits, bool):
        return {k: int(bits) for k in layers}
    if not isinstance(bits, Mapping):
        raise TypeError(f"bits must be an int, a {{layer: bits}} dict or an Allocation, got "
                        f"{type(bits).__name__}")
    table = {}
    for key, b in bits.items():
        name = key[len("params/"):] if key.startswith("params/") else key
        name = name.strip("/")
        if name in layers:
            table[name] = b
        elif name + "/kernel" in layers:
            table[name + "/kernel"] = b
        else:
            raise ValueError(f"{key!r} is not a quantized layer; quantized: {', '.join(layers)}")
    missing = [k for k in layers if k not in table]
    if missing:
        raise ValueError(f"no bit-width for {', '.join(missing)}")
    for k, b in table.items():
        if isinstance(b, bool) or not isinstance(b, (int, np.integer)) or b < 2:
            raise ValueError(f"bits for {k!r} must be an integer >= 2, got {b!r}")
    return {k: int(table[k]) for k in layers}


def weight_formats(net: FloatNetwork, bits: Mapping[str, int], formats: str = "search"):
    """The formats tree over ``net.params`` for ``{kernel path: bits}`` (other leaves ``None``).

    ``formats="search"``: :class:`FormatPolicy` (exact MSE search, per channel if the run's
    method is); a distribution name: :func:`fixed_point_format_for` per tensor.
    """
    if formats not in FORMAT_RULES:
        raise ValueError(f"formats must be one of {FORMAT_RULES}, got {formats!r}")
    table = dict(bits)
    if formats == "search":
        policy = FormatPolicy(lambda p, leaf: table[p],
                              per_channel=net.fixed_point_config().per_channel,
                              mask=lambda p, leaf: p in table)
        return policy.init(net.params)

    def visit(path, leaf):
        name = path_str(path)
        if name not in table:
            return None
        return fixed_point_format_for(np.asarray(leaf), table[name], formats)

    return jax.tree_util.tree_map_with_path(visit, net.params)


def quantize_network(net: FloatNetwork, bits, formats: str = "search") -> HardQuantized:
    """The hard-quantized network for ``bits`` (an int for every quantized layer, a
    ``{layer or kernel path: bits}`` dict covering them all, or an :class:`Allocation`).

    Raises:
      ValueError: a key that is no quantized layer, a quantized layer without bits, bits < 2,
        or an unknown ``formats`` rule.
    """
    return hard_quantize(net.params, weight_formats(net, _check_bits_table(net, bits), formats))


# -- statistics ---------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class LayerStatistics:
    """Per-layer SQNR tables of a float network (what :func:`allocate` needs).

    Attributes:
      names: kernel paths of the quantized layers (``'conv1/kernel'``), in tree order, then
        (with activations) the quantized layer inputs (``'conv2/input'``) in call order.
      costs: parameter counts of the weights; ``act_cost_weight`` x elements per image of the
        activations.
      min_bits, max_bits: the bit range of the table.
      table_db: float64 ``(L, max_bits - min_bits + 1)``, SQNR in dB of layer ``i`` at
        ``min_bits + j`` bits.
      kind: ``"output"`` or ``"tensor"`` (see the module docstring).
      formats: the format rule used.
      calibration_size: images in the calibration batch (``0`` for ``"tensor"``).
      act_cost_weight: the weight of an activation element in the cost (``None``: weights
        only).
    """

    names: tuple[str, ...]
    costs: tuple[float, ...]
    min_bits: int
    max_bits: int
    table_db: np.ndarray
    kind: str
    formats: str
    calibration_size: int
    act_cost_weight: float | None = None

    @property
    def weight_names(self) -> tuple[str, ...]:
        return tuple(n for n in self.names if not n.endswith(ACT_SUFFIX))

    @property
    def activation_names(self) -> tuple[str, ...]:
        return tuple(n for n in self.names if n.endswith(ACT_SUFFIX))

    @property
    def total_params(self) -> int:
        """Parameters of the quantized weights."""
        return int(sum(c for n, c in zip(self.names, self.costs) if not n.endswith(ACT_SUFFIX)))

    @property
    def total_cost(self) -> float:
        """``sum_i c_i``: the cost of one bit on every tensor (``total_params`` without
        activations)."""
        return float(sum(self.costs))

    def cost_bits(self, bits: Mapping[str, int]) -> float:
        """``sum_i c_i b_i`` for ``{name: bits}`` covering every tensor."""
        return float(sum(c * bits[n] for n, c in zip(self.names, self.costs)))

    def model(self) -> SQNRModel:
        return SQNRModel.from_table(self.table_db, self.min_bits)

    def predicted_sqnr_db(self, bits: Mapping[str, int]) -> float:
        """The additive noise model's output SQNR for ``{kernel path: bits}``."""
        return predicted_output_sqnr_db(self.model().sqnr_db([bits[n] for n in self.names]))

    def as_dict(self) -> dict:
        return {"names": list(self.names), "costs": list(self.costs),
                "min_bits": self.min_bits, "max_bits": self.max_bits,
                "table_db": [[_finite(v) for v in row] for row in self.table_db],
                "kind": self.kind, "formats": self.formats,
                "calibration_size": self.calibration_size,
                "act_cost_weight": self.act_cost_weight}


def _finite(v: float):
    """JSON-safe float (``inf`` as the string ``'inf'``)."""
    return float(v) if math.isfinite(v) else str(float(v))


def layer_statistics(net: FloatNetwork, *, min_bits: int = 2, max_bits: int = 8,
                     kind: str = "output", formats: str = "search",
                     calibration_size: int = DEFAULT_CALIBRATION,
                     calibration_images: np.ndarray | None = None,
                     activations: bool = False,
                     act_cost_weight: float = 1.0) -> LayerStatistics:
    """Each quantized tensor's SQNR at ``min_bits..max_bits`` bits.

    ``kind="output"``: the logits' SQNR on the calibration batch with only that tensor
    quantized (``calibration_images``, uint8 like the data set, or the first
    ``calibration_size`` training images); ``"tensor"``: the tensor's own SQNR (for an
    activation: of the layer input on the calibration batch).

    ``activations=True`` adds the quantizable layer inputs (``'<layer>/input'``, cost
    ``act_cost_weight`` x elements per image; see the module docstring), and every row is then
    measured against the network with float activations (``max_bits <= 16``).

    Raises:
      ValueError: an empty calibration set, a bad bit range (``2 <= min <= max <= 24``, 16
        with activations), a bad ``act_cost_weight`` (finite, > 0), or an unknown ``kind`` /
        ``formats``.
    """
    if kind not in SQNR_KINDS:
        raise ValueError(f"kind must be one of {SQNR_KINDS}, got {kind!r}")
    if formats not in FORMAT_RULES:
        raise ValueError(f"formats must be one of {FORMAT_RULES}, got {formats!r}")
    for name, v in (("min_bits", min_bits), ("max_bits", max_bits)):
        if isinstance(v, bool) or not isinstance(v, int):
            raise ValueError(f"{name} must be an integer, got {v!r}")
    if not 2 <= min_bits <= max_bits <= 24:
        raise ValueError(f"need 2 <= min_bits <= max_bits <= 24, got {min_bits}..{max_bits}")
    if activations:
        if max_bits > 16:
            raise ValueError(f"activations have at most 16 bits: max_bits {max_bits} is too "
                             "large")
        if isinstance(act_cost_weight, bool) or not isinstance(
                act_cost_weight, (int, float, np.floating, np.integer)) or \
                not (math.isfinite(act_cost_weight) and act_cost_weight > 0):
            raise ValueError(f"act_cost_weight must be a finite number > 0, got "
                             f"{act_cost_weight!r}")
    layers = net.quantized_layers()
    leaves = {path_str(p): leaf for p, leaf in
              jax.tree_util.tree_flatten_with_path(net.params)[0]}
    bit_range = range(min_bits, max_bits + 1)
    acts = net.activation_layers() if activations else {}
    table = np.empty((len(layers) + len(acts), len(bit_range)))
    size = 0
    base_formats = {} if activations else net.act_formats
    if kind == "output":
        x = net.calibration_images(calibration_size, calibration_images)
        size = len(x)
        apply = jax.jit(lambda p, act_formats, images: _logits(
            net.model, net.prepare, p, net.batch_stats, act_formats, images))
        reference = apply(net.params, base_formats, x)
    elif acts:
        records = net._calibration_inputs()
    for i, layer in enumerate(acts):
        for j, b in enumerate(bit_range):
            fmts = net.activation_formats({layer: b})
            if kind == "output":
                value = sqnr_db(reference, apply(net.params, fmts, x))
            else:
                xs = jnp.concatenate([jnp.ravel(a) for p, a in records if p == layer])
                value = sqnr_db(xs, quantize(xs, fmts[layer]))
            table[len(layers) + i, j] = float(value)
    for i, name in enumerate(layers):
        for j, b in enumerate(bit_range):
            hq = hard_quantize(net.params, weight_formats(net, {name: b}, formats))
            if kind == "output":
                table[i, j] = float(sqnr_db(reference, apply(hq.params, base_formats, x)))
            else:
                w = jnp.asarray(leaves[name], jnp.float32)
                table[i, j] = float(sqnr_db(w, jnp.asarray(_leaf(hq.params, name))))
    weight = float(act_cost_weight)
    names = tuple(layers) + tuple(a + ACT_SUFFIX for a in acts)
    costs = tuple(layers.values()) + tuple(weight * n for n in acts.values())
    return LayerStatistics(names, costs, min_bits, max_bits, table, kind, formats, size,
                           weight if activations else None)


def _leaf(tree, name: str):
    for p, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        if path_str(p) == name:
            return leaf
    raise KeyError(name)


# -- allocation and evaluation ------------------------------------------------------------------

def allocate(stats: LayerStatistics, *, target_sqnr_db: float | None = None,
             budget_bits: float | None = None, min_bits: int | None = None,
             max_bits: int | None = None, method: str = "exact") -> Allocation:
    """Bits per layer from the statistics: least weight memory for a target output SQNR (dB),
    or best predicted SQNR within ``budget_bits`` bits of quantized weights.

    Raises:
      ValueError: neither or both goals, or one that cannot be met in the bit range (see
        :func:`~symog_jax.quantizers.bit_allocation.allocate_bits`).
    """
    lo = stats.min_bits if min_bits is None else min_bits
    hi = stats.max_bits if max_bits is None else max_bits
    return allocate_bits(list(stats.costs), stats.model(), target_sqnr_db=target_sqnr_db,
                         budget=budget_bits, min_bits=lo, max_bits=hi, names=list(stats.names),
                         method=method)


def evaluate_bits(net: FloatNetwork, bits, *, act_bits=None, formats: str = "search",
                  calibration_images: np.ndarray | None = None) -> dict:
    """Test error of the network quantized to ``bits`` without retraining.

    Args:
      bits: weight bits (see :func:`quantize_network`); a dict or :class:`Allocation` may also
        hold activation bits under ``'<layer>/input'`` keys.
      act_bits: activation bits, an int for every quantizable layer input or ``{layer: bits}``
        (the others float); ``None`` (and no ``/input`` keys): the run's own activation
        formats.

    Returns:
      ``{"bits": {kernel path: bits}, "test_error", "test_loss", "weight_memory_bits"
      (quantized kernels: sum of params x bits), "model_memory_bits" (every parameter, float
      ones at 32 bits), "output_sqnr_db" (logits vs float on the calibration images, if
      given; float activations as the reference when activation bits are given), "layers"
      (the per-layer report)}``, and with activation bits ``"act_bits"`` (``{layer: bits}``),
      ``"activation_memory_bits"`` (elements per image x bits, summed) and ``"activations"``
      (the formats' report).
    """
    table, act_table = _weights_and_acts(net, bits, act_bits)
    act_formats = net.act_formats if act_table is None else net.activation_formats(act_table)
    hq = hard_quantize(net.params, weight_formats(net, table, formats))
    result = evaluate(net.eval_step(), hq.params, net.batch_stats, act_formats,
                      net.dataset.test_images, net.dataset.test_labels)
    costs = net.quantized_layers()
    model_bits, _ = hq.weight_bits()
    out = {"bits": table, "test_error": result["error"], "test_loss": result["loss"],
           "weight_memory_bits": int(sum(costs[k] * b for k, b in table.items())),
           "model_memory_bits": int(model_bits)}
    if act_table is not None:
        elements = net.activation_layers()
        out["act_bits"] = act_table
        out["activation_memory_bits"] = int(sum(elements[k] * b for k, b in act_table.items()))
        out["activations"] = activation_format_report(act_formats)
    if calibration_images is not None:
        x = net.calibration_images(images=calibration_images)
        reference = net.logits(net.params, x, None if act_table is None else {})
        out["output_sqnr_db"] = _finite(float(sqnr_db(reference,
                                                      net.logits(hq.params, x, act_formats))))
    out["layers"] = [r.as_dict() for r in hq.report]
    return out


def finetune(net: FloatNetwork, bits, workdir: str | Path, *, act_bits=None, epochs: int = 1,
             lr: float | None = None, method: str = "ste",
             max_train_examples: int | None = None, progress: bool = False,
             reuse: bool = True, **method_fields) -> dict:
    """A short ``method`` run (``ste`` or ``symog``) from the float weights with these bits.

    Args:
      net: from :meth:`FloatNetwork.from_run` (the run directory is ``init_from``).
      bits: as for :func:`quantize_network` (or with ``'<layer>/input'`` activation keys).
      workdir: the fine-tuning run's directory.
      act_bits: activation bits as for :func:`evaluate_bits` (the run is then trained with
        ``act_bits_per_layer``; ``None``: the float run's activation settings).
      epochs: its epochs; lr: its peak learning rate (default a tenth of the float run's).
      max_train_examples: train on a seeded subset (faster).
      reuse: if ``workdir`` holds a finished run of exactly this config, return its report.
      method_fields: more fields of the method's config (e.g. ``reestimate_epochs``).

    Returns:
      The run's report (``test_error_quantized`` is the fine-tuned fixed-point error).

    Raises:
      ValueError: ``net`` has no run directory, or a bad config.
      FileExistsError: ``workdir`` holds another run's checkpoints.
    """
    if net.workdir is None:
        raise ValueError("fine-tuning starts from a run directory (TrainConfig.init_from); "
                         "this network was given as parameters")
    if method not in ("ste", "symog"):
        raise ValueError(f"fine-tuning method must be 'ste' or 'symog', got {method!r}")
    table, act_table = _weights_and_acts(net, bits, act_bits)
    fp = net.fixed_point_config()
    mc = {"bits": min(table.values()), "per_channel": fp.per_channel,
          "float_first_last": fp.float_first_last, **method_fields}
    if len(set(table.values())) > 1:
        mc["bits_per_layer"] = format_bits_per_layer(table)
    config = net.config.replace(
        method=method, method_config=mc, epochs=epochs,
        lr=net.config.lr / 10 if lr is None else lr, init_from=str(net.workdir),
        workdir=str(workdir), max_train_examples=max_train_examples,
        stop_after_epochs=None, progress=progress)
    if act_table is not None:
        config = config.replace(acts={"bits": None, "bits_per_layer": act_table or None})
    report_path = Path(config.workdir) / "report.json"
    if reuse and report_path.is_file():
        try:
            report = json.loads(report_path.read_text())
        except (OSError, json.JSONDecodeError):
            report = None
        if report is not None and report.get("config") == json.loads(json.dumps(config.flat())):
            return report
    return train_run(config, dataset=net.dataset)


def bits_file(allocation: Allocation | Mapping[str, int], path: str | Path) -> Path:
    """Writes ``{path: bits}`` as JSON; returns the path.

    ``{kernel path: bits}`` is a ``--bits-per-layer`` file, ``{layer: bits}`` (the second
    table of :func:`split_bits`) an ``--act-bits-per-layer`` file.
    """
    table = allocation.as_dict() if isinstance(allocation, Allocation) else dict(allocation)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, table)
    return path


def equal_bits_table(net: FloatNetwork, bits: int) -> dict[str, int]:
    """``{kernel path: bits}`` with the same bits for every quantized layer."""
    return {k: int(bits) for k in net.quantized_layers()}


def weight_memory_bits(stats: LayerStatistics, bits: Mapping[str, int]) -> int:
    """Bits of the quantized weights (``sum params x bits``; activation rows left out)."""
    return int(sum(c * bits[n] for n, c in zip(stats.names, stats.costs)
                   if not n.endswith(ACT_SUFFIX)))
