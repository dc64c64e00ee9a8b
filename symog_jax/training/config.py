"""One config object per training run: its fields, in sections in a file, plus the method's own
config."""

from __future__ import annotations

import dataclasses
import json
import math
import os
from pathlib import Path
from typing import Any

from symog_jax.methods import get_method_class, make_method, method_names
from symog_jax.methods.base import MethodConfig, field
from symog_jax.numerics.checks import (check_bool, check_choice, check_int, check_number,
                                       check_str)
from symog_jax.models import create_model
from symog_jax.quantizers.activations import (ACTIVATION_RANGES, ActivationQuantConfig,
                                              format_layer_bits)

OPTIMIZERS = ("sgd", "adam")
ACT_RANGES = ACTIVATION_RANGES
DATA_SOURCES = ("auto", "tfds", "folder", "archive", "bundled")
PRECISIONS = ("float32", "bf16")
#: Largest bit-width whose levels bfloat16 (8 significant bits) holds exactly.
BF16_MAX_BITS = 8


def parse_widths(text) -> tuple[int, ...]:
    """``'16,32,64'`` (or a sequence of ints) -> ``(16, 32, 64)``: per-decision channel counts.

    Raises:
      ValueError: (one line) not a comma-separated list of integers >= 0 (whether a count
        may be 0 is for the model to say: :func:`~symog_jax.models.create_model`).

    Example:
      >>> parse_widths("16, 32,64")
      (16, 32, 64)
      >>> parse_widths([8, 4])
      (8, 4)
    """
    items = text.split(",") if isinstance(text, str) else text
    try:
        values = tuple(items)
        ok = len(values) > 0 and all(not isinstance(v, bool) and float(v) == int(float(v))
                                     and int(float(v)) >= 0 for v in values)
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ValueError(f"widths must be comma-separated non-negative channel counts (e.g. "
                         f"16,32,64), got {text!r}")
    return tuple(int(float(v)) for v in values)


def _method_config(method: str, value) -> MethodConfig:
    cls = get_method_class(method)
    if value is None:
        return cls.Config()
    if isinstance(value, dict):
        return make_method(method, value).config
    if not isinstance(value, cls.Config):
        raise ValueError(f"method_config for {method!r} must be a {cls.Config.__name__}, "
                         f"got {type(value).__name__}")
    return value


@dataclasses.dataclass(frozen=True)
class DistillConfig:
    """Knowledge distillation of a run (the ``distill`` section): its teacher and the loss.

    ``teacher``: a float run directory or a variables file, ``None``: labels only. The loss
    is ``(1 - weight) * cross-entropy + weight * temperature**2 * KL`` of the softened
    predictions (:mod:`symog_jax.training.distill`).

    Raises:
      ValueError: one line naming the field (``DistillConfig.weight`` ...).

    Example:
      >>> DistillConfig(teacher="runs/f").enabled, DistillConfig().enabled
      (True, False)
      >>> DistillConfig(weight=0)
      Traceback (most recent call last):
      ...
      ValueError: DistillConfig.weight must be in (0, 1], got 0
    """

    teacher: str | None = field(None, "a float run directory (any architecture, same data set) "
                                      "or a variables file (this model) whose network teaches "
                                      "this one: the loss adds the KL divergence from its "
                                      "softened predictions (knowledge distillation); unset: "
                                      "labels only", type=str, flag="distill_from")
    weight: float = field(0.5, "weight alpha of the distillation term: (1 - alpha) * "
                               "cross-entropy + alpha * T^2 * KL, in (0, 1]",
                          flag="distill_weight")
    temperature: float = field(4.0, "softmax temperature T of the distillation term",
                               flag="distill_temperature")

    def __post_init__(self):
        problems = []
        if self.teacher is not None and (not isinstance(self.teacher, str)
                                         or not self.teacher.strip()):
            problems.append(f"DistillConfig.teacher must be a run directory, a variables file "
                            f"or None, got {self.teacher!r}")
        if isinstance(self.weight, bool) or not isinstance(self.weight, (int, float)) \
                or not 0 < self.weight <= 1:
            problems.append(f"DistillConfig.weight must be in (0, 1], got {self.weight!r}")
        if isinstance(self.temperature, bool) or not isinstance(
                self.temperature, (int, float)) or not (math.isfinite(self.temperature)
                                                        and self.temperature > 0):
            problems.append(f"DistillConfig.temperature must be a finite number > 0, got "
                            f"{self.temperature!r}")
        if problems:
            raise ValueError("; ".join(problems))

    @property
    def enabled(self) -> bool:
        """Whether the run has a teacher."""
        return self.teacher is not None


@dataclasses.dataclass(frozen=True)
class ActsSection:
    """The keys of the ``acts`` section of a config file (and their command-line flags): the
    fields of :class:`~symog_jax.quantizers.activations.ActivationQuantConfig` that a run sets
    (a run always keeps the image float unless ``input_bits`` is set: ``skip_first``).
    Only a schema: :attr:`TrainConfig.acts` holds the ``ActivationQuantConfig``."""

    bits: Any = field(None, "activation bits 1..16 (inputs of every conv/dense layer, "
                            "straight-through); unset: float activations", type=int,
                      flag="act_bits")
    input_bits: Any = field(None, "quantize the normalised image (the first layer's input) to "
                                  "this many bits, 2..16, calibrated power-of-two step: the "
                                  "first layer's products become exact, so an integer-only "
                                  "export reproduces it bit for bit (8 is near-lossless); "
                                  "unset: the image stays float", type=int, flag="input_bits")
    range: str = field("calibrated", "activation range: calibrated (MSE-optimal power-of-two "
                                     "step per layer on a training batch), unit ([0, 1), as in "
                                     "SYQ/DoReFa), pact (a learned clip per layer, PACT), "
                                     "pact-pow2 (a learned clip on a power-of-two step: exports "
                                     "as fixed point) or lsq-pow2 (the same trained with LSQ's "
                                     "step gradient, which can also shrink a clip)",
                       choices=ACT_RANGES, flag="act_range")
    range_lr: Any = field(None, "learning rate of learned activation ranges (pact, pact-pow2, "
                                "lsq-pow2; peak of the cosine schedule); unset: pact trains "
                                "with --lr and the run's optimizer, the pow2 kinds with Adam on "
                                "log2 of the clip at 0.01", type=float, flag="act_range_lr")
    skip_last: bool = field(False, "keep the input of the last layer in float too (the first "
                                   "layer's input, the image, always is)",
                            flag="act_float_last")
    bits_per_layer: Any = field(
        None, "per-layer activation bits 1..16 overriding --act-bits for the input of the "
              "layers named: 'conv2=4,fc1=8' or a JSON file {layer path: bits} (as "
              "experiments.allocate_bits --allocate-activations writes); layers not named keep "
              "--act-bits; stored inline in config.json", type=str, flag="act_bits_per_layer")


def _section_config(value, cls, name: str):
    """``value`` of section field ``name`` as ``cls`` (its config class): an instance as it is,
    a dict of its fields, ``None``: its defaults."""
    if value is None:
        return cls()
    if isinstance(value, dict):
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(value) - known)
        if unknown:
            raise ValueError(f"unknown field {name}.{unknown[0]} (known: "
                             f"{', '.join(sorted(known))})")
        return cls(**value)
    if not isinstance(value, cls):
        raise ValueError(f"{name} must be a {cls.__name__} (or a dict of its fields), got "
                         f"{type(value).__name__}")
    return value


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a training run (saved as ``config.json`` next to its checkpoints).

    ``method`` names a registered method (:func:`symog_jax.methods.method_names`) and
    ``method_config`` holds its hyper-parameters (its ``Config`` dataclass; a dict of its fields
    is accepted and converted; ``None`` means its defaults). Activation quantization, for every
    method, is ``acts`` (an :class:`~symog_jax.quantizers.activations.ActivationQuantConfig`;
    keys of :class:`ActsSection`), knowledge distillation ``distill`` (a
    :class:`DistillConfig`); each also accepts a dict of its fields.

    In a file the fields are in sections (:data:`SECTIONS`: ``data``, ``model``, ``optim``,
    ``method`` -- its ``name`` and its ``Config``'s fields --, ``acts``, ``distill``, ``run``;
    :meth:`to_dict`, :meth:`from_dict`), every value type-checked on reading, errors naming
    the field dotted (``optim.lr``). The other Python names are flat (``config.lr``);
    :meth:`flat` gives the flat form of older runs' files (``act_bits``, ``distill_from`` ...,
    the command-line flags' names), which :meth:`from_flat` reads.

    Raises:
      TypeError: an argument of the flat form that moved into a section (``act_bits=``: use
        ``acts=ActivationQuantConfig(bits=...)``).
      ValueError: one line naming the fields that are wrong.

    Example:
      >>> c = TrainConfig(method="ste", method_config={"bits": 3}, epochs=1,
      ...                 acts=ActivationQuantConfig(bits=4))
      >>> c.method_config.bits, c.acts.bits, c.describe()
      (3, 4, 'ste-3bit-a4')
      >>> TrainConfig(act_bits=4)
      Traceback (most recent call last):
      ...
      TypeError: TrainConfig: act_bits moved: use acts=ActivationQuantConfig(bits=...)
    """

    dataset: str = field("cifar10", "mnist, cifar10, cifar100, or a name for an image folder")
    model: str = field("vgg7", "architecture")
    method: str = field("symog", "training method (see the method flags below)")
    method_config: Any = dataclasses.field(default=None, metadata={"cli": False})
    epochs: int = field(100, "training epochs")
    batch_size: int = field(128, "training batch size")
    optimizer: str = field("sgd", "sgd (Nesterov momentum) or adam(w)", choices=OPTIMIZERS)
    lr: float = field(0.05, "peak learning rate (cosine decay to 0)")
    momentum: float = field(0.9, "sgd momentum (0: plain sgd)")
    weight_decay: float = field(5e-4, "weight decay on kernels (each method says which)")
    width: float = field(1.0, "channel width multiplier")
    widths: Any = field(None, "channels of each prunable decision of the model, comma-separated "
                              "(e.g. 16,32,64 for lenet5; a pruned network, see "
                              "symog_jax.pruning.architecture for the decisions); overrides "
                              "--width; unset: from --width", type=parse_widths)
    seed: int = field(0, "seed of initialisation and batch order")
    init_from: Any = field(None, "a run directory whose newest intact checkpoint's parameters "
                                 "(and batch statistics) initialise the model, e.g. a float run "
                                 "to fine-tune, or a variables file (.msgpack, written by "
                                 "symog_jax.training.save_variables, e.g. a thinned network); "
                                 "unset: random initialisation", type=str)
    distill: DistillConfig = dataclasses.field(default_factory=DistillConfig,
                                               metadata={"section": DistillConfig})
    acts: ActivationQuantConfig = dataclasses.field(default_factory=ActivationQuantConfig,
                                                    metadata={"section": ActsSection})
    augment: bool = field(True, "random crop and flip for 3-channel images")
    data_source: str = field("auto", "where to read the data set from", choices=DATA_SOURCES)
    data_dir: Any = field(None, "a tfds data dir, an image-folder dir or .tar(.gz), or the "
                                "original archives (default: tfds's default location)", type=str)
    allow_bundled: bool = field(False, "fall back to the bundled 5k MNIST subset when no MNIST "
                                       "is found")
    workdir: str = field("runs/default", "where checkpoints, metrics.jsonl and report.json go")
    keep_checkpoints: int = field(3, "checkpoints kept (the newest)")
    eval_every: int = field(1, "evaluate on the test split every N epochs (and always after an "
                               "invocation's last epoch); on a CPU an evaluation of 10,000 "
                               "images can cost half an epoch of a small training set")
    stop_after_epochs: Any = field(None, "stop after this many epochs in this invocation "
                                         "(continue later with --resume)", type=int)
    max_train_examples: Any = field(None, "use only the first N training examples", type=int)
    progress: bool = field(True, "show a progress bar")
    plots: bool = field(False, "at the end, write figures (PNG) next to report.json: weight "
                               "histograms per quantized layer with the levels marked, error "
                               "curves (float and quantized), kept channels of a pruned net; "
                               "needs matplotlib")
    precision: str = field("float32", "arithmetic of the forward/backward pass: float32, or bf16 "
                                      "(bfloat16 activations and conv/dense products; weights, "
                                      "optimizer state, the SYMOG prior, rounding and batch-norm "
                                      "statistics stay float32)", choices=PRECISIONS)
    distributed: bool = field(False, "several hosts: call jax.distributed.initialize() first "
                                     "(also on with SYMOG_JAX_DISTRIBUTED=1; TPU pods, SLURM, "
                                     "Open MPI are detected, elsewhere set "
                                     "JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, "
                                     "JAX_PROCESS_ID); one host uses all its devices either way")

    def __new__(cls, *args, **kwargs):
        moved = [name for name in kwargs if name in MOVED_FIELDS]
        if moved:
            raise TypeError("; ".join(f"{cls.__name__}: {name} moved: use {MOVED_FIELDS[name]}"
                                      for name in moved))
        return super().__new__(cls)

    def __post_init__(self):
        if self.method not in method_names():
            raise ValueError(f"unknown method {self.method!r}; registered methods: "
                             f"{', '.join(method_names())}")
        object.__setattr__(self, "method_config",
                           _method_config(self.method, self.method_config))
        object.__setattr__(self, "acts", _section_config(self.acts, ActivationQuantConfig,
                                                         "acts"))
        object.__setattr__(self, "distill", _section_config(self.distill, DistillConfig,
                                                            "distill"))
        act_table = dict(self.acts.bits_per_layer or ())
        problems = (self._run_problems() + self._activation_problems()
                    + self._source_problems() + self._precision_problems(act_table))
        if problems:
            raise ValueError("; ".join(problems))

    def _run_problems(self) -> list[str]:
        """Problems of the optimizer, schedule and model fields."""
        problems = []
        if self.optimizer not in OPTIMIZERS:
            problems.append(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        for name in ("epochs", "batch_size", "keep_checkpoints", "eval_every"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                problems.append(f"{name} must be a positive integer, got {v!r}")
        for name in ("stop_after_epochs", "max_train_examples"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                problems.append(f"{name} must be a positive integer or unset, got {v!r}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            problems.append(f"lr must be a finite number > 0, got {self.lr!r}")
        if not (math.isfinite(self.width) and self.width > 0):
            problems.append(f"width must be a finite number > 0, got {self.width!r}")
        if self.widths is not None:
            try:
                widths = parse_widths(self.widths)
                object.__setattr__(self, "widths", widths)
                create_model(self.model, 10, widths=widths).channel_widths()
            except ValueError as e:
                problems.append(str(e) if "widths" in str(e) else f"widths: {e}")
        if not (self.weight_decay >= 0 and math.isfinite(self.weight_decay)):
            problems.append(f"weight_decay must be >= 0, got {self.weight_decay!r}")
        if not (0 <= self.momentum < 1):
            problems.append(f"momentum must be in [0, 1), got {self.momentum!r}")
        return problems

    def _activation_problems(self) -> list[str]:
        """Problems of the activation settings that a run cannot store (the rest are
        :class:`~symog_jax.quantizers.activations.ActivationQuantConfig`'s own checks)."""
        if not self.acts.skip_first:
            return ["acts.skip_first must be True (a run keeps the image float; quantize it with "
                    "acts.input_bits), got False"]
        return []

    def _source_problems(self) -> list[str]:
        """Problems of the start and data fields."""
        problems = []
        if self.init_from is not None and (not isinstance(self.init_from, str)
                                           or not self.init_from.strip()):
            problems.append(f"init_from must be a run directory, a variables file or unset, "
                            f"got {self.init_from!r}")
        if self.data_source not in DATA_SOURCES:
            problems.append(f"data_source must be one of {DATA_SOURCES}, got "
                            f"{self.data_source!r}")
        return problems

    def _precision_problems(self, act_table: dict) -> list[str]:
        """Problems of ``precision`` with the bits asked for."""
        problems = []
        if self.precision not in PRECISIONS:
            problems.append(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        elif self.precision == "bf16":
            if self.acts.bits is not None and self.acts.bits > BF16_MAX_BITS:
                problems.append(f"acts.bits {self.acts.bits} needs precision float32: bf16 "
                                f"holds at most {BF16_MAX_BITS}-bit activation levels exactly")
            if self.acts.input_bits is not None and self.acts.input_bits > BF16_MAX_BITS:
                problems.append(f"acts.input_bits {self.acts.input_bits} needs precision "
                                f"float32: bf16 holds at most {BF16_MAX_BITS}-bit image codes "
                                f"exactly")
            if act_table and max(act_table.values()) > BF16_MAX_BITS:
                problems.append(f"acts.bits_per_layer {max(act_table.values())} bits needs "
                                f"precision float32: bf16 holds at most {BF16_MAX_BITS}-bit "
                                "activation levels exactly")
            bits = self.method_config.max_weight_bits()
            if bits is not None and bits > BF16_MAX_BITS:
                problems.append(f"bits {bits} needs precision float32: bf16 holds at most "
                                f"{BF16_MAX_BITS}-bit weight levels exactly")
        return problems

    def describe(self) -> str:
        """Method tag plus activation bits, e.g. ``'symog-2bit'``, ``'ste-2bit-a4'``, or with
        ``acts.bits_per_layer`` the range of the bits given, ``'ste-2bit-amixed4-8'``."""
        tag = make_method(self.method, self.method_config).describe()
        bits = self.acts.bits
        if self.acts.bits_per_layer:
            given = [b for _, b in self.acts.bits_per_layer] + ([] if bits is None else [bits])
            lo, hi = min(given), max(given)
            if bits is not None and lo == hi:
                return tag + f"-a{lo}"
            return tag + (f"-amixed{lo}-{hi}" if lo != hi else f"-amixed{lo}")
        return tag + (f"-a{bits}" if bits is not None else "")

    def flat(self) -> dict:
        """The fields by their flat names (``method_config`` a dict; the ``acts`` and
        ``distill`` sections as ``act_bits``, ``distill_from`` ...: :data:`SECTIONS`): the
        form of older runs' ``config.json``, of reports and of checkpoint metadata.

        Example:
          >>> f = TrainConfig(acts={"bits": 4, "bits_per_layer": "fc1=8"}).flat()
          >>> f["act_bits"], f["act_bits_per_layer"], f["distill_from"], "acts" in f
          (4, 'fc1=8', None, False)
        """
        out = {}
        for name, value in dataclasses.asdict(self).items():
            if name not in _SECTION_FIELDS:
                out[name] = value
                continue
            for key, flat_name in SECTIONS[name].items():
                v = value[key]
                if key == "bits_per_layer" and v is not None:    # canonical inline text
                    v = format_layer_bits(dict(v))
                out[flat_name] = v
        return out

    @classmethod
    def from_flat(cls, d: dict) -> "TrainConfig":
        """The config of the flat form (:meth:`flat`; names missing: their defaults).

        Example:
          >>> TrainConfig.from_flat({"act_bits": 4, "distill_from": "runs/f"}).acts.bits
          4
        """
        kwargs = dict(d)
        for name, keys in _SECTION_FIELDS.items():
            given = {key: kwargs.pop(flat_name) for key, flat_name in keys.items()
                     if flat_name in kwargs}
            if given:
                kwargs[name] = given
        return cls(**kwargs)

    def to_dict(self) -> dict:
        """The config in sections, as ``config.json`` holds it (see :data:`SECTIONS`).

        Example:
          >>> d = TrainConfig(method="ste", method_config={"bits": 3}, lr=0.1).to_dict()
          >>> d["optim"]["lr"], d["method"]["name"], d["method"]["bits"], sorted(d)
          (0.1, 'ste', 3, ['acts', 'data', 'distill', 'method', 'model', 'optim', 'run'])
        """
        flat = self.flat()
        out = {section: {key: flat[name] for key, name in fields.items()}
               for section, fields in SECTIONS.items()}
        out["method"] = {"name": self.method, **flat["method_config"]}
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict, defaults: "TrainConfig | None" = None) -> "TrainConfig":
        """The inverse of :meth:`to_dict`; also reads the flat form of older runs' files.

        Every value is type-checked (a bool is a JSON ``true``/``false``, a number is a number,
        an enum one of its choices); unknown fields are refused. Fields missing from a file in
        sections are taken from ``defaults`` (an experiment's recipe); without ``defaults`` a
        file in sections must be complete. A flat file (written before sections) may lack
        fields added later: they had the library default then.

        Raises:
          ValueError: one line naming the field, dotted (``optim.lr``).
        """
        if not isinstance(d, dict):
            raise ValueError(f"a config must be a JSON object, got {type(d).__name__}")
        if is_flat_form(d):
            if all(name in d for name in FLAT_RUN_FIELDS):     # a run's file
                try:
                    return cls.from_flat(_checked_flat(d))
                except ValueError as e:  # a section's own checks name its class
                    raise ValueError(flat_field_names(str(e))) from None
            d = flat_to_sections(d)                             # a partial one
        try:
            return cls.from_flat(_flat_from_sections(d, defaults))
        except ValueError as e:          # the range checks name fields as Python does
            raise ValueError(_dotted_names(str(e))) from None

    def replace(self, **changes) -> "TrainConfig":
        """A copy with ``changes``; another ``method`` without ``method_config`` takes that
        method's defaults; a dict for ``acts`` or ``distill`` changes only the fields it gives.

        Example:
          >>> c = TrainConfig(acts={"bits": 4}).replace(acts={"input_bits": 8})
          >>> c.acts.bits, c.acts.input_bits
          (4, 8)
        """
        if "method" in changes and "method_config" not in changes \
                and changes["method"] != self.method:
            changes["method_config"] = None
        for name in _SECTION_FIELDS:
            if isinstance(changes.get(name), dict):
                changes[name] = dataclasses.replace(getattr(self, name), **changes[name])
        return dataclasses.replace(self, **changes)


#: ``{TrainConfig field: {key in its section: flat name}}`` of the fields that are sections.
_SECTION_FIELDS = {f.name: {g.name: g.metadata["flag"]
                            for g in dataclasses.fields(f.metadata["section"])}
                   for f in dataclasses.fields(TrainConfig) if "section" in f.metadata}
#: ``{flat name: what to write instead}`` of the arguments that moved into a section.
MOVED_FIELDS = {flat_name: f"{name}={cls.__name__}({key}=...)"
                for name, cls in (("acts", ActivationQuantConfig), ("distill", DistillConfig))
                for key, flat_name in _SECTION_FIELDS[name].items()}

#: The sections of a config file: ``{section: {key in the file: flat name}}``; a flat name is
#: a :class:`TrainConfig` field, or for the ``acts`` and ``distill`` sections (themselves
#: fields) the name in the flat form (:meth:`TrainConfig.flat`) and of the command-line flag.
#: The method is its own section, ``"method": {"name": ..., <its Config's fields>}``.
SECTIONS = {
    "data": {"dataset": "dataset", "source": "data_source", "dir": "data_dir",
             "allow_bundled": "allow_bundled", "augment": "augment",
             "max_train_examples": "max_train_examples"},
    "model": {"name": "model", "width": "width", "widths": "widths", "precision": "precision"},
    "optim": {"optimizer": "optimizer", "lr": "lr", "momentum": "momentum",
              "weight_decay": "weight_decay", "batch_size": "batch_size", "epochs": "epochs"},
    "acts": _SECTION_FIELDS["acts"],
    "distill": _SECTION_FIELDS["distill"],
    "run": {"seed": "seed", "init_from": "init_from", "workdir": "workdir",
            "keep_checkpoints": "keep_checkpoints", "eval_every": "eval_every",
            "stop_after_epochs": "stop_after_epochs",
            "progress": "progress", "plots": "plots", "distributed": "distributed"},
}
#: ``{TrainConfig field: dotted name in a config file}``, e.g. ``{"lr": "optim.lr", ...}``.
DOTTED = {name: f"{section}.{key}" for section, fields in SECTIONS.items()
          for key, name in fields.items()}
DOTTED.update(method="method.name")


#: ``{config class: its section}`` of the sections' own checks (``DistillConfig.weight ...``).
_SECTION_CLASSES = {"ActivationQuantConfig": "acts", "DistillConfig": "distill"}


def _dotted_names(message: str, flat: bool = False) -> str:
    """``message`` (problems joined by ``; ``) with each leading field name in its dotted
    form: ``'lr must be > 0'`` -> ``'optim.lr must be > 0'``, ``'DistillConfig.weight ...'``
    -> ``'distill.weight ...'`` (with ``flat``, a flat file's: ``'distill_weight ...'``)."""
    out = []
    prefix = ""
    for problem in message.split("; "):
        cls, dot, rest = problem.partition(".")
        if dot and cls in _SECTION_CLASSES:
            section = _SECTION_CLASSES[cls]
            key = rest.split(" ")[0].split(":")[0]
            if flat and key in SECTIONS[section]:
                out.append(SECTIONS[section][key] + rest[len(key):])
            else:
                out.append(f"{section}.{rest}")
            continue
        if flat:
            out.append(problem)
            continue
        head, colon, tail = problem.partition(": ")
        if colon and head.endswith("Config") and " " not in head:   # the method's own checks
            prefix, problem = "method.", tail
        name, space, rest = problem.partition(" ")
        out.append(DOTTED[name] + space + rest if not prefix and name in DOTTED
                   else prefix + problem)
    return "; ".join(out)


def flat_field_names(message: str) -> str:
    """``message`` with a section's own field names in the flat form (the command line's):
    ``'DistillConfig.weight must be ...'`` -> ``'distill_weight must be ...'``.

    Example:
      >>> flat_field_names("ActivationQuantConfig.bits must be None or ..., got 0")
      'act_bits must be None or ..., got 0'
    """
    return _dotted_names(message, flat=True)


def flat_fields() -> dict[str, dataclasses.Field]:
    """The fields of the flat form (:meth:`TrainConfig.flat`), in order: ``{flat name: dataclass
    Field}``, the ``acts`` and ``distill`` sections' keys by their flat names (each Field
    holds the type, help and choices of its file key and command-line flag).

    Example:
      >>> fields = flat_fields()
      >>> fields["act_bits"].name, fields["distill_from"].name, fields["lr"].name
      ('bits', 'teacher', 'lr')
    """
    out = {}
    for f in dataclasses.fields(TrainConfig):
        if "section" in f.metadata:
            out.update({g.metadata["flag"]: g for g in dataclasses.fields(f.metadata["section"])})
        else:
            out[f.name] = f
    return out


#: Fields added after config files got sections, ``{dotted name: value}``: a complete file
#: written before a field existed reads as this value, which is what its run did.
#: ``acts.range_lr`` (2026-12-06): None. Before it, ``pact-pow2`` clips trained like ``pact``
#: ones (the run's optimizer); such a run's checkpoints do not resume (the clips' optimizer
#: state differs), its evaluation and export are unchanged.
FIELDS_ADDED_LATER = {"acts.range_lr": None, "run.eval_every": 1}

#: Fields every run's flat ``config.json`` has had since the first version; a flat file without
#: one of them is a partial config, not a run's.
FLAT_RUN_FIELDS = ("dataset", "model", "method", "method_config", "epochs", "batch_size",
                   "optimizer", "lr", "seed", "workdir")


def flat_to_sections(d: dict) -> dict:
    """A (possibly partial) flat config as sections; unknown names are kept at the top level
    (reading it refuses them, naming them).

    Example:
      >>> flat_to_sections({"lr": 0.1, "act_bits": 4, "method": "ste",
      ...                   "method_config": {"bits": 3}})
      {'optim': {'lr': 0.1}, 'acts': {'bits': 4}, 'method': {'name': 'ste', 'bits': 3}}
    """
    where = {name: (section, key) for section, fields in SECTIONS.items()
             for key, name in fields.items()}
    out: dict = {}
    for name, value in d.items():
        if name in where:
            section, key = where[name]
            out.setdefault(section, {})[key] = value
        elif name == "method":
            out.setdefault("method", {})["name"] = value
        elif name == "method_config" and isinstance(value, dict):
            out.setdefault("method", {}).update(value)
        else:
            out[name] = value
    return out


def is_flat_form(d: dict) -> bool:
    """Whether ``d`` is the flat form of a config (runs written before sections)."""
    return "method_config" in d or (bool(d) and not set(d) & (set(SECTIONS) | {"method"})
                                    ) or isinstance(d.get("method"), str)


def _kind(f) -> tuple[str, bool]:
    """``(kind, may be None)`` of a config dataclass field: kind is bool, int, float, str or
    widths (its annotation, or for ``Any`` its declared ``type``)."""
    declared = f.metadata.get("type")
    if declared is parse_widths:
        return "widths", True
    if declared is not None:
        return declared.__name__, True
    annotation = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", "Any")
    return annotation.replace(" ", "").split("|")[0], f.default is None or "None" in annotation


def check_field_type(problems: list[str], dotted: str, value, f) -> None:
    """Type check of ``value`` for dataclass field ``f`` (choices included), before the
    config's own range checks: a JSON string is never a bool or a number."""
    kind, optional = _kind(f)
    if value is None and optional:
        return
    if kind == "bool":
        check_bool(problems, dotted, value)
    elif kind == "int":
        check_int(problems, dotted, value)
    elif kind == "float":
        check_number(problems, dotted, value)
    elif kind == "str":
        check_str(problems, dotted, value)
    elif kind == "widths" and not (isinstance(value, str) or isinstance(value, (list, tuple))):
        problems.append(f"{dotted} must be a list of channel counts or a string like "
                        f"'16,32,64', got {value!r}")
    # The field's own default means "unset" (e.g. HFP's arch ""), even outside its choices.
    if not problems and "choices" in f.metadata and value != f.default:
        check_choice(problems, dotted, value, f.metadata["choices"])


def _check_fields(values: dict, fields: dict, where: str, problems: list[str]) -> None:
    """Unknown keys and wrong types of ``values`` (keys of ``fields``: ``{key: Field}``)."""
    for key in values:
        if key not in fields:
            problems.append(f"unknown field {where}{key} (known: {', '.join(sorted(fields))})")
    for key, value in values.items():
        if key in fields:
            one: list[str] = []
            check_field_type(one, where + key, value, fields[key])
            problems += one


def _method_fields(method) -> dict:
    return {f.name: f for f in dataclasses.fields(get_method_class(method).Config)}


def _checked_flat(d: dict) -> dict:
    """The flat form, type-checked (names as in :class:`TrainConfig`)."""
    problems: list[str] = []
    own = flat_fields()
    _check_fields({k: v for k, v in d.items() if k != "method_config"}, own, "", problems)
    method = d.get("method", "symog")
    if method not in method_names():
        problems.append(f"method must be one of {method_names()}, got {method!r}")
    elif isinstance(d.get("method_config"), dict):
        _check_fields(d["method_config"], _method_fields(method), "method_config.", problems)
    if problems:
        raise ValueError("; ".join(problems))
    return dict(d)


def _flat_from_sections(d: dict, defaults: "TrainConfig | None") -> dict:
    """The flat form (:meth:`TrainConfig.from_flat`) of the sectioned form (type-checked,
    dotted errors); missing fields from ``defaults`` or, without it, an error naming them."""
    problems: list[str] = []
    own = flat_fields()
    given_defaults = None if defaults is None else defaults.flat()
    for section in d:
        if section not in SECTIONS and section != "method":
            problems.append(f"unknown section {section!r} (sections: "
                            f"{', '.join(list(SECTIONS) + ['method'])})")
    flat: dict = {}
    missing: list[str] = []
    for section, keys in SECTIONS.items():
        given = d.get(section, {})
        if not isinstance(given, dict):
            problems.append(f"{section} must be an object of fields, got {given!r}")
            continue
        _check_fields(given, {k: own[name] for k, name in keys.items()}, section + ".", problems)
        for key, name in keys.items():
            if key in given:
                flat[name] = given[key]
            elif given_defaults is not None:
                flat[name] = given_defaults[name]
            elif f"{section}.{key}" in FIELDS_ADDED_LATER:
                flat[name] = FIELDS_ADDED_LATER[f"{section}.{key}"]
            else:
                missing.append(f"{section}.{key}")
    method = dict(d.get("method", {})) if isinstance(d.get("method", {}), dict) else None
    if method is None:
        problems.append(f"method must be an object (name and the method's fields), got "
                        f"{d['method']!r}")
        method = {}
    name = method.pop("name", None if defaults is None else defaults.method)
    if name is None:
        missing.append("method.name")
    elif name not in method_names():
        problems.append(f"method.name must be one of {method_names()}, got {name!r}")
    else:
        _check_fields(method, _method_fields(name), "method.", problems)
        if defaults is not None and name == defaults.method:   # the recipe's method settings
            method = {**dataclasses.asdict(defaults.method_config), **method}
        flat["method"], flat["method_config"] = name, method
    if missing and not problems:
        problems.append(f"missing field(s) {', '.join(missing)} (a partial config needs an "
                        f"experiment's recipe to fill them in)")
    if problems:
        raise ValueError("; ".join(problems))
    if isinstance(flat.get("widths"), list):
        flat["widths"] = tuple(flat["widths"])
    return flat


#: The fields that name another run directory or a variables file, ``{flat name: their place
#: in a config file}``. In a config file a relative one is relative to the file's directory
#: (in a run's ``config.json``: the run directory), so a run re-runs from any working directory.
PATH_FIELDS = {"init_from": ("run", "init_from"), "distill_from": ("distill", "teacher")}


def paths_for_run_dir(config: TrainConfig, run_dir: str | Path) -> TrainConfig:
    """``config`` with its path fields (:data:`PATH_FIELDS`) as ``<run_dir>/config.json`` stores
    them: relative to ``run_dir`` when they were given relative (to the working directory) or
    point inside or next to ``run_dir`` (e.g. the recipe's float stage ``float-start`` or a
    sibling stage ``../a``); an absolute path elsewhere stays absolute.

    Example:
      >>> c = TrainConfig(init_from="runs/x/float-start", distill={"teacher": "/data/teacher"})
      >>> s = paths_for_run_dir(c, "runs/x")
      >>> s.init_from, s.distill.teacher
      ('float-start', '/data/teacher')
    """
    run_dir = os.path.abspath(run_dir)
    flat = config.flat()
    changes = {}
    for name in PATH_FIELDS:
        value = flat[name]
        if value is None:
            continue
        target = os.path.abspath(value)
        near = os.path.commonpath([target, os.path.dirname(run_dir)]) == os.path.dirname(run_dir)
        if not os.path.isabs(value) or near:
            changes[name] = os.path.relpath(target, run_dir)
    return TrainConfig.from_flat({**flat, **changes}) if changes else config


def resolve_file_paths(data: dict, directory: str | Path) -> dict:
    """A config file's dict (sections, flat form or a recipe with ``stages``) with its relative
    path fields (:data:`PATH_FIELDS`) resolved against ``directory`` (the file's), as paths
    usable from the working directory. A file written before paths were stored relative to
    the run (relative to the working directory then) keeps a path that exists only that way;
    a file in the flat form (runs written before sections) is left as it is.

    Example:
      >>> resolve_file_paths({"run": {"init_from": "float-start"}}, "runs/x")
      {'run': {'init_from': 'runs/x/float-start'}}
    """
    def resolve(value):
        if not isinstance(value, str) or not value.strip() or os.path.isabs(value):
            return value
        here = os.path.normpath(os.path.join(str(directory), value))
        return value if not os.path.exists(here) and os.path.exists(value) else here

    def fix(node: dict) -> dict:
        node = dict(node)
        for section, key in PATH_FIELDS.values():
            if isinstance(node.get(section), dict) and key in node[section]:
                node[section] = {**node[section], key: resolve(node[section][key])}
        return node

    if is_flat_form(data):
        return data
    out = fix(data)
    if isinstance(out.get("stages"), list):
        out["stages"] = [fix(s) if isinstance(s, dict) else s for s in out["stages"]]
    return out


def config_from_file(path: str | Path, defaults: TrainConfig | None = None) -> TrainConfig:
    """A :class:`TrainConfig` from a JSON file (e.g. a run's ``config.json``), in sections
    (:data:`SECTIONS`) or the flat form of older runs.

    Fields missing from a file in sections come from ``defaults`` (an experiment's recipe);
    without ``defaults`` the file must be complete. A relative path in it (``run.init_from``,
    ``distill.teacher``) is relative to the file's directory (:func:`resolve_file_paths`).

    Raises:
      FileNotFoundError / ValueError: missing file, invalid JSON, unknown fields or bad values;
        the message names the file and the field (dotted, e.g. ``optim.lr``).
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"config file {path} does not exist") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"config file {path} is not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise ValueError(f"config file {path} must hold a JSON object")
    try:
        return TrainConfig.from_dict(resolve_file_paths(data, path.parent), defaults)
    except (TypeError, ValueError) as e:
        raise ValueError(f"config file {path}: {e}") from None


def load_run_config(workdir: str | Path) -> TrainConfig:
    """The :class:`TrainConfig` a run directory was trained with (its ``config.json``).

    Raises:
      FileNotFoundError: ``workdir`` has no ``config.json`` (not a run directory).
      ValueError: the file is not a valid config (the message names the problem).
    """
    path = Path(workdir) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: {workdir} is not a run directory")
    return config_from_file(path)
