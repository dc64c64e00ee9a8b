"""SYMOG recipe study (issue 10): start (scratch / float) x prior (nearest / mixture) vs STE.

Every variant gets the same total number of epochs ``E`` per seed:

==================  =========================================================================
variant             what it trains
==================  =========================================================================
ste                 straight-through 2-bit weights from scratch, ``E`` epochs
symog-scratch       SYMOG from scratch (the former default: 1 float warm-up epoch, then the
                    nearest-level pull ramped 1e-5 -> 0.1), ``E`` epochs
ste-float-start     float for ``E/2`` epochs, then straight-through for ``E/2``
symog-nearest       float for ``E/2``, then SYMOG (nearest-level pull) for ``E/2``
symog-mixture       float for ``E/2``, then SYMOG (annealed exact mixture) for ``E/2``
symog-mixture-qfwd  as symog-mixture, with the loss on the rounded weights
                    (``forward="quantized"``: straight-through forward, prior on the latents)
symog-mixture-weak  as symog-mixture, with a 10x weaker final pull (strength 1e-4 -> 0.01 over
                    the whole stage), so weights keep moving longer
symog-mixture-      both: the loss on the rounded weights and the weak final pull (the
qfwd-weak           rounding the loss sees is the deployed network, so weights need not be
                    pinned to the levels long before the end)
symog-mixture-      as symog-mixture-qfwd-weak, with weight decay on the latent kernels too
qfwd-weak-decay     (``decay_quantized``: ste decays them, SYMOG by default does not)
symog-mixture-      as symog-mixture-qfwd-weak, re-choosing the formats every epoch
qfwd-weak-reest     (``reestimate_epochs=1``, as ste does)
symog-mixture-      the loss on the rounded weights and a 100x weaker final pull (1e-4 ->
qfwd-weaker         0.001 over the stage)
symog-mixture-      as symog-mixture-qfwd-weak, the ramp from 1e-6 (not 1e-4): the pull
qfwd-late           reaches 1e-3 per step at 3/4 of the stage (not half-way), so weights train
                    longer before they are pinned
symog-mixture-      as symog-mixture-qfwd-late until the pull reaches 1e-3 per step (3/4 of the
qfwd-late-hold      stage), then held there instead of growing to 0.01: the weights are pinned
                    gradually while the learning rate decays, not within one epoch
symog-mixture-      as symog-mixture-qfwd-late until 3/4 of the stage (pull 1e-3 per step),
qfwd-late-release   then no pull at all: straight-through training of the rounded network
                    from the weights SYMOG shaped
float               float weights for ``E`` epochs (the reference; its error is the float one)
float-continued     float for ``E/2``, then float again for ``E/2`` from those weights (the
                    float reference with the same two-stage schedule as the float-start rows)
==================  =========================================================================

The float stage (``float-half``) is trained once per seed and shared by the float-start
variants (its epochs are counted in theirs). ``--float-epochs F`` makes it ``F`` epochs long
instead of ``E/2`` (the second stage is then ``E - F``): a long float start and a short
quantizing stage is the paper's recipe (fine-tuning a trained float network). ``--stage-lr``
gives the second stage (every variant that starts from the float start, ``float-continued``
included) its own peak learning rate instead of the preset's. ``--method-field KEY=VALUE``
(repeatable) sets a method-config field of every quantizing variant (``ste*`` and ``symog*``),
e.g. ``per_channel=true`` or ``bits_per_layer=conv1=8,fc2=8``; the float variants keep theirs, so
the float reference stays the same network. ``--distill`` makes the float start also the
*teacher* of every quantizing variant that starts from it (knowledge distillation,
``TrainConfig.distill``; ``--distill-weight``, ``--distill-temperature``); those runs are
named ``<variant>-kd-s<seed>``. Results are
appended to ``<out>/results.jsonl`` after every run (``--skip-done`` continues a killed study)
and printed as a markdown table with the mean and per-seed error of the finalized
(hard-quantized) network.

Usage (the budget recorded in RESULTS.md)::

    python benchmarks/symog_recipe.py --dataset mnist --data-dir ../shared/data/mnist-png.tar.gz \\
        --total-epochs 10 --seeds 0 1 --out runs/study-mnist --skip-done
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import jax

from symog_jax.files import append_line, json_text, write_text_atomic
from symog_jax.data import load_dataset
from symog_jax.training import TrainConfig, train

PRESETS = {
    "mnist": dict(model="lenet5", optimizer="adam", lr=1e-3, weight_decay=0.0, batch_size=128),
    "cifar10": dict(model="vgg7", optimizer="sgd", lr=0.05, weight_decay=5e-4, batch_size=128),
}
SCRATCH = dict(warmup_epochs=1.0, strength_start=1e-5, strength_end=0.1)
FROM_FLOAT = dict(warmup_epochs=0.0, strength_start=1e-4, strength_end=0.1)
MIXTURE = dict(prior="mixture", forward="float")
QFWD = dict(MIXTURE, forward="quantized")
WEAK = dict(strength_end=0.01, anneal_fraction=1.0)
# SYMOG from the float start: SymogConfig fields over FROM_FLOAT, one row per variant.
SYMOG_FROM_FLOAT = {
    "symog-nearest": {},
    "symog-mixture": MIXTURE,
    "symog-mixture-qfwd": QFWD,
    "symog-mixture-weak": dict(MIXTURE, **WEAK),
    "symog-mixture-qfwd-weak": dict(QFWD, **WEAK),
    "symog-mixture-qfwd-weak-decay": dict(QFWD, **WEAK, decay_quantized=True),
    "symog-mixture-qfwd-weak-reest": dict(QFWD, **WEAK, reestimate_epochs=1),
    "symog-mixture-qfwd-weaker": dict(QFWD, strength_end=0.001, anneal_fraction=1.0),
    "symog-mixture-qfwd-late": dict(QFWD, **WEAK, strength_start=1e-6),
    "symog-mixture-qfwd-late-hold": dict(QFWD, strength_start=1e-6, strength_end=1e-3,
                                         anneal_fraction=0.75),
    "symog-mixture-qfwd-late-release": dict(QFWD, **WEAK, strength_start=1e-6,
                                            release_fraction=0.75),
}
VARIANTS = ("ste", "ste-float-start", "symog-scratch", "float", "float-continued",
            *SYMOG_FROM_FLOAT)


def float_start_epochs(total: int, float_epochs: int | None = None) -> int:
    """Epochs of the shared float start: ``float_epochs``, or half of ``total`` if None."""
    half = total // 2 if float_epochs is None else float_epochs
    if not 1 <= half < total:
        raise ValueError(f"float_epochs must be in [1, {total - 1}], got {half}")
    return half


def parse_method_field(text: str) -> tuple[str, object]:
    """``"KEY=VALUE"`` -> ``(KEY, VALUE)``, VALUE read as JSON where it is JSON, else a string.

    Example:
      >>> parse_method_field("per_channel=true")
      ('per_channel', True)
      >>> parse_method_field("bits_per_layer=conv1=8,fc2=8")
      ('bits_per_layer', 'conv1=8,fc2=8')
    """
    key, sep, value = text.partition("=")
    if not sep or not key.strip() or not value.strip():
        raise ValueError(f"--method-field wants KEY=VALUE, got {text!r}")
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError:
        parsed = value.strip()
    return key.strip(), parsed


def variant_config(variant: str, bits: int, total: int, float_dir: str,
                   float_epochs: int | None = None, stage_lr: float | None = None,
                   method_fields: dict | None = None, distill: dict | None = None) -> dict:
    """TrainConfig fields of one variant in the flat form (:meth:`TrainConfig.from_flat`; the
    float-start ones, those with ``init_from``, train the epochs after the
    :func:`float_start_epochs` of the shared float start, with peak learning rate ``stage_lr``
    if given; the quantizing ones get ``method_fields`` on top of their method config, and with
    ``distill`` (``{"distill_weight": .., "distill_temperature": ..}``) the float start as their
    teacher if they start from it)."""
    fields = _variant_fields(variant, bits, total, float_dir, float_epochs)
    if stage_lr is not None and "init_from" in fields:
        fields["lr"] = stage_lr
    if method_fields and fields["method"] != "float":
        fields["method_config"] = {**fields["method_config"], **method_fields}
    if distill is not None and fields["method"] != "float" and "init_from" in fields:
        fields.update(distill, distill_from=float_dir)
    return fields


def variant_label(variant: str, fields: dict) -> str:
    """The variant's name in results: ``<variant>``, or ``<variant>-kd`` if distilled (its run
    of seed ``s`` is ``<label>-s<s>``)."""
    return variant + ("-kd" if fields.get("distill_from") else "")


def _variant_fields(variant, bits, total, float_dir, float_epochs):
    half = float_start_epochs(total, float_epochs)
    if variant == "float":
        return dict(method="float", epochs=total)
    if variant == "ste":
        return dict(method="ste", method_config={"bits": bits}, epochs=total)
    if variant == "symog-scratch":
        return dict(method="symog", method_config={"bits": bits, **SCRATCH}, epochs=total)
    if variant == "float-continued":
        return dict(method="float", epochs=total - half, init_from=float_dir)
    if variant == "ste-float-start":
        return dict(method="ste", method_config={"bits": bits}, epochs=total - half,
                    init_from=float_dir)
    if variant in SYMOG_FROM_FLOAT:
        return dict(method="symog", method_config={"bits": bits, **FROM_FLOAT,
                                                   **SYMOG_FROM_FLOAT[variant]},
                    epochs=total - half, init_from=float_dir)
    raise ValueError(f"unknown variant {variant!r}; known: {VARIANTS}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="mnist", choices=sorted(PRESETS))
    p.add_argument("--data-dir", default=None)
    p.add_argument("--width", type=float, default=1.0)
    p.add_argument("--bits", type=int, default=2)
    p.add_argument("--total-epochs", type=int, default=10)
    p.add_argument("--float-epochs", type=int, default=None,
                   help="epochs of the shared float start (default: half of --total-epochs)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    p.add_argument("--stage-lr", type=float, default=None,
                   help="peak learning rate of the stage after the float start (default: the "
                        "preset's, the same as the float start's)")
    p.add_argument("--method-field", action="append", default=[], metavar="KEY=VALUE",
                   help="method-config field for every ste/symog variant (repeatable), e.g. "
                        "per_channel=true or bits_per_layer=conv1=8,fc2=8")
    p.add_argument("--distill", action="store_true",
                   help="the float start also teaches the quantizing variants that start from it "
                        "(knowledge distillation; runs named <variant>-kd-s<seed>)")
    p.add_argument("--distill-weight", type=float, default=0.5)
    p.add_argument("--distill-temperature", type=float, default=4.0)
    p.add_argument("--out", default="runs/study")
    p.add_argument("--skip-done", action="store_true", help="skip runs already in results.jsonl")
    args = p.parse_args()
    if args.total_epochs < 2:
        p.error("--total-epochs must be >= 2 (a float half and a quantized half)")
    if args.stage_lr is not None and not args.stage_lr > 0:
        p.error(f"--stage-lr must be > 0, got {args.stage_lr}")
    try:
        method_fields = dict(map(parse_method_field, args.method_field))
    except ValueError as e:
        p.error(str(e))
    distill = None
    if args.distill:
        distill = {"distill_weight": args.distill_weight,
                   "distill_temperature": args.distill_temperature}
    try:
        half = float_start_epochs(args.total_epochs, args.float_epochs)
    except ValueError as e:
        p.error(f"--{e} (a float start and a quantizing stage of --total-epochs "
                f"{args.total_epochs} in all)".replace("float_epochs", "float-epochs"))

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results_path = out / "results.jsonl"
    done = {}
    if results_path.exists():
        done = {r["name"]: r for r in map(json.loads, results_path.read_text().splitlines())}
    dataset = load_dataset(args.dataset, data_dir=args.data_dir)
    print(dataset.summary())
    common = dict(dataset=args.dataset, width=args.width, progress=False, **PRESETS[args.dataset])

    def run(name: str, **fields) -> dict:
        if args.skip_done and name in done:
            return done[name]
        config = TrainConfig.from_flat({"workdir": str(out / name), **common, **fields})
        t0 = time.time()
        report = train(config, dataset=dataset)
        entry = {"name": name, "seed": fields["seed"], "method": config.method,
                 "config": json.loads(config.to_json()),
                 "float": report["test_error_float"], "quantized": report["test_error_quantized"],
                 "seconds": time.time() - t0, "device": str(jax.devices()[0]),
                 "host": platform.node()}
        done[name] = entry
        append_line(results_path, json_text(entry, indent=None))
        return entry

    labels = {}
    for seed in args.seeds:
        float_name = f"float-half-s{seed}"
        float_dir = str(out / float_name)
        configs = {v: variant_config(v, args.bits, args.total_epochs, float_dir, half,
                                     args.stage_lr, method_fields, distill)
                   for v in args.variants}
        if any("init_from" in fields for fields in configs.values()):
            run(float_name, method="float", epochs=half, seed=seed)
        for variant, fields in configs.items():
            labels[variant] = variant_label(variant, fields)
            run(f"{labels[variant]}-s{seed}", seed=seed, **fields)

    lines = [f"| variant ({args.total_epochs} epochs in total, float start {half}) "
             "| mean error | per seed |", "|---|---|---|"]
    for variant in ["float-half"] + [labels[v] for v in args.variants]:
        errors = [done[f"{variant}-s{s}"]["float" if variant.startswith("float") else "quantized"]
                  for s in args.seeds if f"{variant}-s{s}" in done]
        if errors:
            lines.append(f"| {variant} | {100 * statistics.mean(errors):.2f} % | "
                         + " / ".join(f"{100 * e:.2f}" for e in errors) + " |")
    print("\n".join(lines))
    write_text_atomic(out / "table.md", "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
