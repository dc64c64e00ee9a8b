"""Building a run from its config, and restoring one from its run directory.

A *run* is what :func:`~symog_jax.training.loop.train` trains: the model, the method, the
initial (replicated) train state and the jitted train step of a :class:`TrainConfig`, on a
data set (:func:`build_run`). A finished or interrupted run lives in its run directory
(``config.json``, ``data.json``, ``checkpoints/``); :func:`restore_run` builds it again from
there, with the input normalisation the run stored
(:mod:`~symog_jax.training.run_record`), and loads its newest intact checkpoint. A run may
start from another run or a variables file (``init_from``) and be taught by one
(``distill_from``): both are read here, so distillation itself
(:mod:`~symog_jax.training.distill`) needs nothing from run directories.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from symog_jax.data import ImageDataset, load_dataset, normalize, random_crop_flip
from symog_jax.methods import Method, RunInfo, make_method
from symog_jax.models import create_model, init_variables
from symog_jax.quantizers.activations import (POW2_RANGE_LR, POWER_OF_TWO_RANGES,
                                              ActivationQuantConfig,
                                              calibrate_activation_formats,
                                              record_layer_inputs)
from symog_jax.quantizers.pact import log2_domain
from symog_jax.training.checkpoint import Checkpointer
from symog_jax.training.config import TrainConfig, load_run_config
from symog_jax.training.distill import Teacher
from symog_jax.training.run_record import (Normalisation, check_run_data, input_normalisation,
                                           read_run_data, stored_normalisation)
from symog_jax.training.sharding import DataParallel
from symog_jax.training.steps import (TrainState, base_optimizer, learned_alphas,
                                      make_train_step)
from symog_jax.training.variables_io import fit_variables, load_variables

#: Training images in the forward pass that finds the layer order and calibrates activations.
CALIBRATION_BATCH = 256


def make_prepare(dataset: ImageDataset, augment: bool,
                 normalisation: Normalisation | None = None):
    """``prepare(rng, uint8_images, train) -> float32``: device-side augmentation and scaling.

    ``normalisation``: the per-channel mean/std (a run's stored one); ``None`` computes it from
    ``dataset``'s training split (:func:`~symog_jax.training.run_record.input_normalisation`).
    """
    mean, std = input_normalisation(dataset) if normalisation is None else normalisation
    # Crop and flip suit natural images (CIFAR); digits (1 channel) are left alone.
    use_augment = augment and dataset.image_shape[-1] == 3

    def prepare(rng, images, train):
        if train and use_augment:
            images = random_crop_flip(rng, images, padding=4, flip=True)
        return normalize(images, mean, std)

    return prepare


def check_method_fits_model(config: TrainConfig, image_shape, num_classes: int) -> None:
    """Runs the method's own checks against the model's parameter *shapes* -- e.g. GDRQ's
    ``groups`` dividing every quantized layer's output channels -- without data, training or
    parameter values (everything under ``jax.eval_shape``), so a recipe whose last stage
    cannot start fails before its first stage trains.

    Raises:
      ValueError: the method refuses the model (its one-line message). Checks that need
        parameter values are left to the run itself.

    Example::

      >>> from symog_jax.training import TrainConfig
      >>> check_method_fits_model(TrainConfig(model="lenet5", method="gdrq", width=0.125,
      ...     method_config={"bits": 2, "groups": 3}), (28, 28, 1), 10)
      Traceback (most recent call last):
      ...
      ValueError: ...
    """
    model = create_model(config.model, num_classes, width=config.width, widths=config.widths)
    x = jax.ShapeDtypeStruct((1, *image_shape), jnp.float32)
    shapes = jax.eval_shape(lambda x: model.init(jax.random.PRNGKey(0), x, train=False), x)
    paths: list[str] = []

    def forward(variables, x):          # records the conv/dense call order while tracing
        _, inputs = record_layer_inputs(lambda: model.apply(variables, x, train=False))
        paths.extend(path for path, _ in inputs)
        return jnp.zeros(())

    jax.eval_shape(forward, shapes, x)
    run = RunInfo(steps_per_epoch=1, epochs=max(int(config.epochs), 1),
                  layer_order=tuple(dict.fromkeys(paths)), model=config.model,
                  input_shape=tuple(image_shape), module=model)
    method = make_method(config.method, config.method_config, run)
    try:
        jax.eval_shape(method.init_variables, shapes["params"])
    except (jax.errors.ConcretizationTypeError, jax.errors.TracerArrayConversionError,
            jax.errors.TracerBoolConversionError, jax.errors.TracerIntegerConversionError):
        pass                            # needs values: the run checks it when it starts


def probe_model(model, variables, prepare, images: np.ndarray, act: ActivationQuantConfig):
    """One forward pass on ``images``: the conv/dense layer order and the activation formats."""
    x = prepare(None, images, False)
    _, inputs = record_layer_inputs(lambda: model.apply(variables, x, train=False))
    order = tuple(dict.fromkeys(path for path, _ in inputs))
    return order, calibrate_activation_formats(inputs, act)


def load_run_dataset(config: TrainConfig, data_dir: str | None = None,
                     data_source: str | None = None) -> ImageDataset:
    """The data set of a run's ``config``, or of ``data_dir`` / ``data_source`` where given.

    A ``data_dir`` given for a run trained on the bundled MNIST subset (which takes no
    ``data_dir``) is searched as ``source="auto"`` would, unless ``data_source`` says otherwise.
    """
    source = data_source or config.data_source
    if data_dir is not None and data_source is None and source == "bundled":
        source = "auto"
    return load_dataset(config.dataset, source=source,
                        data_dir=data_dir if data_dir is not None else config.data_dir,
                        allow_bundled=config.allow_bundled)


def training_split(config: TrainConfig, dataset: ImageDataset):
    """``(images, labels, steps_per_epoch)`` the run trains on (a seeded subset if asked)."""
    train_x, train_y = dataset.train_images, dataset.train_labels
    if config.max_train_examples is not None and config.max_train_examples < len(train_y):
        # A seeded random subset: files are often stored in class order.
        keep = np.sort(np.random.default_rng(config.seed).permutation(len(train_y))[
            :config.max_train_examples])
        train_x, train_y = train_x[keep], train_y[keep]
    steps_per_epoch = len(train_y) // config.batch_size
    if steps_per_epoch < 1:
        raise ValueError(f"batch size {config.batch_size} exceeds the {len(train_y)} training "
                         "examples")
    return train_x, train_y, steps_per_epoch


class BuiltRun(NamedTuple):
    """Everything :func:`build_run` makes for a run, before any step."""
    model: Any
    method: Method
    state: TrainState
    train_step: Callable
    prepare: Callable
    parallel: DataParallel | None = None
    normalisation: Normalisation | None = None


def act_range_optimizer(config: TrainConfig, total_steps: int, alphas: dict
                        ) -> optax.GradientTransformation | None:
    """The optimizer of learned activation clips, or ``None`` when the run learns none.

    ``pact``: the run's own optimizer and schedule at ``acts.range_lr`` (default: the run's
    learning rate), with weight decay on every clip (PACT regularises ``alpha`` with L2, paper
    section 2.1). ``pact-pow2`` and ``lsq-pow2``: Adam on ``log2(alpha)``
    (:func:`~symog_jax.quantizers.pact.log2_domain`) with a cosine schedule from
    ``acts.range_lr`` (default :data:`~symog_jax.quantizers.activations.POW2_RANGE_LR`), no
    decay: a clip on a power-of-two step changes only when its latent moves by ``sqrt(2)``.
    """
    if not alphas:
        return None
    acts = config.acts
    if acts.range in POWER_OF_TWO_RANGES:
        lr = POW2_RANGE_LR if acts.range_lr is None else acts.range_lr
        return log2_domain(optax.adam(optax.cosine_decay_schedule(lr, total_steps)))
    lr = config.lr if acts.range_lr is None else acts.range_lr
    return base_optimizer(config.optimizer, lr, total_steps, momentum=config.momentum,
                          weight_decay=config.weight_decay, decay_mask=lambda a: jax.tree.map(
                              lambda _: True, a))


def build_run(config: TrainConfig, dataset: ImageDataset, train_images: np.ndarray,
              steps_per_epoch: int, parallel: DataParallel | None = None,
              normalisation: Normalisation | None = None) -> BuiltRun:
    """Model, method, initial state and jitted train step of ``config`` (what ``train`` runs).

    One forward pass over the first :data:`CALIBRATION_BATCH` of ``train_images`` finds the
    conv/dense layer order and calibrates the activation formats. The state is replicated over
    ``parallel``'s mesh (default: all devices) and the train step (in ``config.precision``)
    shards its batch over it and donates the state it is given. ``config.init_from`` gives the
    starting variables and ``config.distill.teacher`` the teacher (:func:`load_teacher`).
    ``normalisation`` is the input mean/std (default: computed from ``dataset``).
    """
    parallel = DataParallel() if parallel is None else parallel
    model = create_model(config.model, dataset.num_classes, width=config.width,
                         widths=config.widths)
    init_rng, data_rng = jax.random.split(jax.random.PRNGKey(config.seed))
    variables = init_variables(model, init_rng, dataset.image_shape)
    if config.init_from is not None:
        variables = variables_from_run(config.init_from, variables, dataset)
    params = variables["params"]
    if normalisation is None:
        normalisation = input_normalisation(dataset)
    prepare = make_prepare(dataset, config.augment, normalisation)
    layer_order, act_formats = probe_model(model, variables, prepare,
                                           train_images[:CALIBRATION_BATCH], config.acts)
    run = RunInfo(steps_per_epoch=steps_per_epoch, epochs=config.epochs, layer_order=layer_order,
                  model=config.model, input_shape=tuple(dataset.image_shape), module=model)
    method = make_method(config.method, config.method_config, run)
    method_vars = method.init_variables(params)
    trainable = {"params": params, "method": method_vars}
    base = base_optimizer(config.optimizer, config.lr, run.total_steps, momentum=config.momentum,
                          weight_decay=config.weight_decay,
                          decay_mask=method.decay_mask(trainable))
    tx = method.transform(base, run)
    act_tx = act_range_optimizer(config, run.total_steps, learned_alphas(act_formats))
    state = TrainState(step=jnp.zeros([], jnp.int32), params=params, method_vars=method_vars,
                       batch_stats=variables.get("batch_stats", {}),
                       opt_state=tx.init(trainable), act_formats=act_formats, rng=data_rng,
                       act_opt_state=act_tx.init(learned_alphas(act_formats)) if act_tx else ())
    teacher = None
    if config.distill.enabled:
        teacher = load_teacher(config.distill.teacher, dataset, model,
                               weight=config.distill.weight,
                               temperature=config.distill.temperature)
    step = make_train_step(model, tx, method, prepare, parallel=parallel,
                           precision=config.precision, donate=True, teacher=teacher,
                           act_tx=act_tx)
    return BuiltRun(model, method, parallel.replicate(state), step, prepare, parallel,
                    normalisation)


def run_normalisation(workdir: str | Path, dataset: ImageDataset, *, check_data: bool = True,
                      allow_other_data: bool = False) -> Normalisation:
    """The input normalisation to rebuild the run in ``workdir`` with (see
    :func:`~symog_jax.training.run_record.check_run_data`). ``check_data=False`` takes the
    stored one (or recomputes it for an old run) without comparing the data: for uses that
    take only the parameters (``init_from``, a teacher)."""
    if check_data:
        return check_run_data(workdir, dataset, allow_other_data=allow_other_data)
    record = read_run_data(workdir)
    return input_normalisation(dataset) if record is None else stored_normalisation(record)


def restore_run(workdir: str | Path, dataset: ImageDataset, *, check_data: bool = True,
                allow_other_data: bool = False):
    """``(config, built, state, metadata)`` of a run directory's newest intact checkpoint.

    The run is rebuilt with its stored input normalisation (``data.json``); ``dataset`` must be
    the data it was trained on unless ``allow_other_data`` (or ``check_data=False``, see
    :func:`run_normalisation`). Neither the run's start (``init_from``) nor its teacher is
    needed: the checkpoint holds the state.

    Raises:
      FileNotFoundError: no ``config.json`` or no (intact) checkpoint in ``workdir``.
      ValueError: other data than the run's (one line saying what differs).
    """
    workdir = Path(workdir).absolute()
    config = load_run_config(workdir)
    ckpt = Checkpointer(workdir / "checkpoints", keep=config.keep_checkpoints)
    try:
        if ckpt.latest_epoch() is None:
            raise FileNotFoundError(f"no checkpoint in {ckpt.directory}: the run in {workdir} "
                                    "has not finished an epoch")
        normalisation = run_normalisation(workdir, dataset, check_data=check_data,
                                          allow_other_data=allow_other_data)
        train_x, _, steps_per_epoch = training_split(config, dataset)
        # Neither the start nor the teacher shapes the state: restoring needs neither run.
        built = build_run(config.replace(distill={"teacher": None}, init_from=None), dataset,
                          train_x, steps_per_epoch, normalisation=normalisation)
        state, meta = ckpt.restore_latest_intact(built.state)
    finally:
        ckpt.close()
    return config, built, state, meta


def variables_from_run(run_dir: str, variables: dict, dataset: ImageDataset) -> dict:
    """``variables`` with the params (and batch stats) of ``run_dir``'s newest checkpoint, or
    of a variables file (:func:`~symog_jax.training.variables_io.save_variables`).

    Raises:
      FileNotFoundError: ``run_dir`` is neither. ValueError: the shapes do not fit.
    """
    if Path(run_dir).is_file():
        source = load_variables(run_dir)
    elif not (Path(run_dir) / "config.json").is_file():
        raise FileNotFoundError(f"init_from: {run_dir} is not a run directory (no config.json) "
                                "or a variables file")
    else:
        _, _, state, _ = restore_run(run_dir, dataset, check_data=False)
        source = {"params": state.params, "batch_stats": state.batch_stats}
    return fit_variables(variables, source, run_dir, "init_from")


def load_teacher(source: str, dataset: ImageDataset, student_model, *, weight: float,
                 temperature: float) -> Teacher:
    """The teacher of ``TrainConfig.distill.teacher``: a float run directory or a variables file.

    A run directory gives its own architecture (its ``config.json``: model, width(s)) and the
    parameters and batch statistics of its newest intact checkpoint; it must be a ``float``
    run (the latent weights of a quantizing run are not the network it deploys). A variables
    file (:func:`~symog_jax.training.variables_io.save_variables`) must fit ``student_model``.

    Raises:
      FileNotFoundError: ``source`` is neither. ValueError: not a float run, another data set,
        or variables that do not fit.
    """
    path = Path(source)
    if path.is_file():
        model = student_model
        template = init_variables(model, jax.random.PRNGKey(0), dataset.image_shape)
        loaded = load_variables(path)
        missing = sorted(set(template) - set(loaded))
        if missing:   # e.g. a batch-norm model without its statistics: never initial ones
            raise ValueError(f"distill_from: {source} has no {', '.join(missing)} for this model")
        variables = fit_variables(template, loaded, source, "distill_from")
    elif (path / "config.json").is_file():
        config = load_run_config(path)
        if config.method != "float":
            raise ValueError(f"distill_from: {source} is a {config.method!r} run; the teacher "
                             "must be a float run")
        if config.dataset != dataset.name:
            raise ValueError(f"distill_from: {source} was trained on {config.dataset!r}, this "
                             f"run uses {dataset.name!r}")
        # built from the teacher's own config; it sees the student's inputs
        _, built, state, _ = restore_run(path, dataset, check_data=False)
        model = built.model
        variables = {"params": state.params,
                     **({"batch_stats": state.batch_stats} if state.batch_stats else {})}
    else:
        raise FileNotFoundError(f"distill_from: {source} is not a run directory (no "
                                "config.json) or a variables file")
    variables = jax.device_get(variables)
    return Teacher(model, variables, float(weight), float(temperature))
