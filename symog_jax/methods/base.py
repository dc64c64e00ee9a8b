"""The method interface: what a quantization (or pruning) method provides to the trainer.

A method is one module with a validated, frozen config dataclass and a :class:`Method`
subclass registered by name (:func:`register`). The trainer only calls the hooks below, so a
new method never needs a trainer edit:

======================  ==========================================================================
hook                    what it does
======================  ==========================================================================
``init_variables``      its own trainable variables (e.g. SYQ's scales), a pytree (``{}``: none)
``decay_mask``          which trainable leaves get weight decay
``transform``           the optax transform for the trainable tree, built around the base optimizer
``train_params``        the model parameters the training forward pass uses (e.g. fake-quantized)
``extra_loss``          terms added to the task loss (``0.0``: none)
``quantized_params``    the hard-quantized parameters, traceable (what ``finalize`` must equal)
``finalize``            rounded parameters, integer codes, scales/formats and a per-layer report
======================  ==========================================================================

Every hook receives the *trainable tree* ``{"params": model_params, "method": method_vars}``
(the tree the optimizer updates) and the optimizer state, and must be a pure function of them
(jit-compatible) except ``finalize``, which runs eagerly on concrete values.
"""

from __future__ import annotations

import abc
import dataclasses
from typing import Any, ClassVar, Mapping

import jax
import optax

# The validation helpers of every config (the methods import them from here).
from symog_jax.numerics.checks import (check_bool, check_choice, check_int,  # noqa: F401
                                       check_number)
from symog_jax.quantizers.hard_quantize import HardQuantized
from symog_jax.quantizers.masks import is_weight, path_str

PyTree = Any

_REGISTRY: dict[str, type["Method"]] = {}


@dataclasses.dataclass(frozen=True)
class RunInfo:
    """What the trainer knows about a run that a method may need to build its transform.

    Attributes:
      steps_per_epoch: optimizer steps per epoch.
      epochs: epochs of the whole run.
      layer_order: ``/``-joined module paths of the Conv/Dense layers in call order (from one
        forward pass), used e.g. to keep the first and last layer in float.
      model: the registry name of the run's model (``""``: not known, e.g. outside the
        trainer), used e.g. by pruning to find the architecture's channel decisions.
      input_shape: ``(H, W, C)`` of one input image (``()``: not known); MACs depend on it.
      module: the run's Flax model (``None``: not known); pruning reads its structure.
    """
    steps_per_epoch: int
    epochs: int
    layer_order: tuple[str, ...] = ()
    model: str = ""
    input_shape: tuple[int, ...] = ()
    module: Any = None

    @property
    def total_steps(self) -> int:
        return self.steps_per_epoch * self.epochs


def field(default, help: str, **metadata):
    """A config field with its command-line help (``metadata['help']``); ``choices`` optional."""
    return dataclasses.field(default=default, metadata={"help": help, **metadata})


@dataclasses.dataclass(frozen=True)
class MethodConfig:
    """Base of every method's hyper-parameters: a frozen dataclass validated on creation.

    Subclasses implement :meth:`problems` (a list of one-line messages, empty when valid).
    """

    def __post_init__(self):
        problems = self.problems()
        if problems:
            raise ValueError(f"{type(self).__name__}: " + "; ".join(problems))

    def problems(self) -> list[str]:
        return []

    @classmethod
    def flag_fields(cls, given: Mapping[str, Any]) -> set[str]:
        """Names the command line may set for this method, given the flags set so far
        (default: its own fields; a method wrapping another adds the inner one's)."""
        return {f.name for f in dataclasses.fields(cls)}

    @classmethod
    def from_flags(cls, fields: Mapping[str, Any]) -> "MethodConfig":
        """The config from command-line fields (names from :meth:`flag_fields`)."""
        return cls(**fields)

    def max_weight_bits(self) -> int | None:
        """Largest bit-width of the fixed integer weight levels this method trains on (``None``:
        none, e.g. float weights or levels that are a sign times a scale). The trainer checks
        it against the forward pass's precision (bf16 holds at most 8-bit levels exactly)."""
        return None


class Method(abc.ABC):
    """Base class of a registered method; see the module docstring for the hooks.

    Subclasses set ``name`` and ``Config`` (a :class:`MethodConfig` subclass).
    """

    name: ClassVar[str]
    Config: ClassVar[type[MethodConfig]]
    #: Whether training already sees quantized weights (``False`` for plain float training,
    #: whose quantized result is post-training rounding): workflows pick their headline error
    #: and decide whether a float start adds anything from this, never from the name.
    trains_quantized: ClassVar[bool] = True

    def __init__(self, config: MethodConfig | None = None, run: RunInfo | None = None):
        config = self.Config() if config is None else config
        if not isinstance(config, self.Config):
            raise TypeError(f"method {self.name!r} needs a {self.Config.__name__}, "
                            f"got {type(config).__name__}")
        self.config = config
        #: The run this method trains in (``None`` outside the trainer: one-layer defaults).
        self.run = run if run is not None else RunInfo(steps_per_epoch=1, epochs=1)

    # -- training ---------------------------------------------------------------------------
    def init_variables(self, params: PyTree) -> PyTree:
        """Trainable variables of the method itself (``{}``: none)."""
        return {}

    def decay_mask(self, trainable: PyTree) -> PyTree:
        """Weight decay on the model's kernels only (not biases, BN, or method variables)."""
        return bool_tree(lambda path, leaf: is_model_kernel(path, leaf), trainable)

    @abc.abstractmethod
    def transform(self, base: optax.GradientTransformation,
                  run: RunInfo) -> optax.GradientTransformation:
        """The optax transform over the trainable tree; ``base`` is the run's optimizer."""

    def train_params(self, trainable: PyTree, opt_state: PyTree) -> PyTree:
        """Model parameters of the training forward pass (default: the float parameters)."""
        return trainable["params"]

    def extra_loss(self, trainable: PyTree, opt_state: PyTree) -> jax.Array | float:
        """Added to the task loss (default: nothing)."""
        return 0.0

    def epoch_metrics(self, trainable: PyTree, opt_state: PyTree) -> dict[str, float]:
        """Scalars the trainer logs after each epoch next to the errors (default: none), e.g.
        a pruning method's current parameter and MAC fractions. Runs eagerly on this host's
        copy of the state; values must be finite floats."""
        return {}

    def runs_latent_weights(self) -> bool:
        """Whether the training forward pass runs the latent (float) weights themselves, so that
        their test error means something (default: when ``train_params`` is not overridden)."""
        return type(self).train_params is Method.train_params

    # -- result -----------------------------------------------------------------------------
    @abc.abstractmethod
    def quantized_params(self, trainable: PyTree, opt_state: PyTree) -> PyTree:
        """The hard-quantized model parameters (traceable; ``finalize(...).params`` equals it)."""

    @abc.abstractmethod
    def finalize(self, trainable: PyTree, opt_state: PyTree) -> HardQuantized:
        """Rounded parameters, integer codes, formats/scales and the per-layer report."""

    def describe(self) -> str:
        """Short tag for run names and logs, e.g. ``'symog-2bit'``."""
        bits = getattr(self.config, "bits", None)
        return f"{self.name}-{bits}bit" if bits is not None else self.name


def quantized_kernel_mask(run: RunInfo, float_first_last: bool):
    """Mask over the trainable tree: model kernels, minus the first/last layer if asked.

    Returns a callable ``(path, leaf) -> bool`` for
    :class:`~symog_jax.quantizers.policy.FormatPolicy`.
    """
    skipped = set()
    if float_first_last:
        if len(run.layer_order) < 3:
            raise ValueError(f"float_first_last needs at least 3 conv/dense layers, the model "
                             f"has {len(run.layer_order)}")
        skipped = {f"{run.layer_order[0]}/kernel", f"{run.layer_order[-1]}/kernel"}

    def mask(path: str, leaf) -> bool:
        return is_model_kernel(path, leaf) and model_path(path) not in skipped
    return mask


def model_path(path: str) -> str | None:
    """The path inside the model of a leaf of the trainable tree (``params/conv1/kernel`` ->
    ``conv1/kernel``), ``None`` for a method variable (``method/...``). Paths of a plain
    parameter tree (linen ``params``, NNX state, a dict) are returned unchanged, so a method's
    transform also works on those (e.g. inside ``nnx.Optimizer``)."""
    head, _, rest = path.partition("/")
    if head == "params":
        return rest
    if head == "method":
        return None
    return path


def is_model_kernel(path: str, leaf) -> bool:
    """A conv/dense kernel of the model (not a method variable)."""
    inner = model_path(path)
    return inner is not None and is_weight(inner, leaf)


def register(cls: type[Method]) -> type[Method]:
    """Class decorator: makes a method available by ``cls.name`` (to the trainer and CLI)."""
    if not (isinstance(getattr(cls, "name", None), str) and isinstance(
            getattr(cls, "Config", None), type) and issubclass(cls.Config, MethodConfig)):
        raise TypeError(f"{cls.__name__} needs a str `name` and a MethodConfig `Config`")
    if cls.name in _REGISTRY and _REGISTRY[cls.name] is not cls:
        raise ValueError(f"a method named {cls.name!r} is already registered")
    _REGISTRY[cls.name] = cls
    return cls


def method_names() -> tuple[str, ...]:
    """Registered method names, in registration order."""
    return tuple(_REGISTRY)


def get_method_class(name: str) -> type[Method]:
    """The registered class for ``name``.

    Raises:
      ValueError: ``name`` is not registered (the message lists the registered names).
    """
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown method {name!r}; registered methods: "
                         f"{', '.join(method_names())}") from None


def make_method(name: str, config: MethodConfig | dict | None = None,
                run: RunInfo | None = None) -> Method:
    """The method ``name`` with ``config`` (a config instance, a dict of its fields, or None).

    Example:
      >>> make_method("ste", {"bits": 3}).describe()
      'ste-3bit'
    """
    cls = get_method_class(name)
    if isinstance(config, dict):
        known = {f.name for f in dataclasses.fields(cls.Config)}
        unknown = sorted(set(config) - known)
        if unknown:
            raise ValueError(f"method {name!r} has no parameter(s) {unknown}; its parameters: "
                             f"{sorted(known)}")
        config = cls.Config(**config)
    return cls(config, run)


def bool_tree(fn, tree: PyTree) -> PyTree:
    """``fn(path, leaf)`` as a bool pytree shaped like ``tree`` (may select nothing)."""
    return jax.tree_util.tree_map_with_path(lambda p, leaf: bool(fn(path_str(p), leaf)), tree)


def leaves_by_path(tree: PyTree) -> dict[str, Any]:
    """``{'/'-joined path: leaf}`` of a pytree."""
    return {path_str(p): v for p, v in jax.tree_util.tree_flatten_with_path(tree)[0]}
