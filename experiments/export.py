"""Export a finished run as integer codes + manifest: ``python -m experiments.export``.

Writes ``--out`` (default ``<workdir>/export.npz``, manifest beside it as ``.json``) and prints
its size against float32. ``--check`` also runs the integer-only reference inference
(:mod:`symog_jax.export.integer_inference`) on the run's test set and compares it with the
fake-quantized Flax model (the network ``finalize`` returns, with the run's activation
formats): the fraction of identical predicted classes, the max |logit difference|, and per
layer the accumulator bits (worst case from the formats, and the largest |accumulator| seen).

    python -m experiments.export --workdir runs/export-symog-lenet5 --check \\
        --data-dir ../shared/data/mnist-png.tar.gz
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np


def flax_logits(run: dict, images: np.ndarray, batch: int = 500) -> np.ndarray:
    """Logits of the fake-quantized Flax model (finalized params, the run's activation formats).

    Args:
      run: the dict :func:`symog_jax.export.integer.export_run` returns.
      images: uint8 ``(N, H, W, C)``.

    Returns:
      float32 ``(N, num_classes)``.
    """
    import jax

    from symog_jax.quantizers.activations import quantize_activations

    model, prepare, hq = run["model"], run["prepare"], run["hq"]
    stats = run["state"].batch_stats
    variables = {"params": hq.params, **({"batch_stats": stats} if stats else {})}

    @jax.jit
    def apply(x):
        with quantize_activations(run["act_formats"]):
            return model.apply(variables, prepare(None, x, False), train=False)

    return np.concatenate([np.asarray(apply(images[i:i + batch]))
                           for i in range(0, len(images), batch)])


def check(run: dict, out: Path, limit: int | None = None, batch_size: int = 100) -> dict:
    """Integer inference vs the Flax model on the test split; prints and returns the summary."""
    from symog_jax.export import integer_inference as ii

    program = ii.load_program(out)
    ds = run["dataset"]
    images, labels = ds.test_images[:limit], ds.test_labels[:limit]
    t0 = time.time()
    ref = flax_logits(run, images)
    t1 = time.time()
    _, logits, max_acc = ii.run_integer(program, images, batch_size=batch_size)
    t2 = time.time()
    agree = ref.argmax(1) == logits.argmax(1)
    diff = np.abs(ref - logits).max(1)
    table = ii.accumulator_table(program, max_acc)
    result = {"test_images": int(len(labels)),
              "agreement": float(agree.mean()), "disagreeing": int((~agree).sum()),
              "max_abs_logit_diff": float(np.abs(ref - logits).max()),
              "max_abs_logit": float(np.abs(ref).max()),
              # images whose logits differ by more than float32 rounding and the fine step
              # explain (some activation code differs there)
              "images_logit_diff_over_1e-4": int((diff > 1e-4).sum()),
              "error_flax": float(np.mean(ref.argmax(1) != labels)),
              "error_integer": float(np.mean(logits.argmax(1) != labels)),
              "seconds_flax": round(t1 - t0, 1), "seconds_integer": round(t2 - t1, 1),
              "fine_frac_bits": program.fine_frac_bits, "accumulators": table}
    print(f"{'layer':<24} {'fan-in':>7} {'worst case':>14} {'bits':>5} {'max seen':>12} "
          f"{'bits':>5} {'acc':>6}")
    for r in table:
        print(f"{r['layer']:<24} {r['fan_in']:>7} {r['worst_case']:>14} "
              f"{r['worst_case_bits']:>5} {r['max_seen']:>12} {r['max_seen_bits']:>5} "
              f"{r['acc_dtype']:>6}")
    print(f"integer vs Flax on {len(labels)} test images: same class for "
          f"{100 * result['agreement']:.2f}% ({result['disagreeing']} differ), max |logit diff| "
          f"{result['max_abs_logit_diff']:.3g} (|logits| up to {result['max_abs_logit']:.3g}; "
          f"{result['images_logit_diff_over_1e-4']} images differ by more than 1e-4); "
          f"test error Flax {100 * result['error_flax']:.2f}%, integer "
          f"{100 * result['error_integer']:.2f}%; {result['seconds_integer']} s integer")
    return result


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n".join(__doc__.splitlines()[2:]))
    p.add_argument("--workdir", required=True, help="a finished run directory")
    p.add_argument("--out", default=None, help="the .npz to write (default <workdir>/export.npz)")
    p.add_argument("--check", action="store_true",
                   help="run the integer inference on the test set and compare with Flax")
    p.add_argument("--data-dir", default=None, help="where the data is now, if it moved")
    p.add_argument("--limit", type=int, default=None, help="check only the first N test images")
    p.add_argument("--fine-frac-bits", type=int, default=20,
                   help="step 2**-F of the tensors the model keeps in float (default 20: the "
                        "smallest measured F at which no code differs from Flax; F=12 changed "
                        "2 of 10k MNIST classes)")
    p.add_argument("--fine-bits", type=int, default=31,
                   help="signed bits of those fine codes, saturating (default 31: |value| < "
                        "2**(30-F))")
    p.add_argument("--json", default=None, help="also write the check's summary to this file")
    args = p.parse_args(argv)
    from symog_jax.export.integer import export_run

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            manifest, run = export_run(args.workdir, args.out, data_dir=args.data_dir,
                                       fine_frac_bits=args.fine_frac_bits,
                                       fine_bits=args.fine_bits)
        out = Path(args.out) if args.out else Path(args.workdir).absolute() / "export.npz"
        size, f32 = manifest["file_bytes"], manifest["float32_bytes"]
        print(f"wrote {out}: {size} bytes vs {f32} bytes float32 ({f32 / size:.1f}x smaller); "
              f"{manifest['quantized_leaves']} quantized leaves; "
              f"manifest {out.with_suffix('.json')}")
        if manifest["integer_program"] is None:
            print(f"no integer program: {manifest['integer_program_error']}")
            if args.check:
                raise ValueError(f"--check: {manifest['integer_program_error']}")
            return 0
        if args.check:
            result = check(run, out, args.limit)
            result.update(file_bytes=size, float32_bytes=f32, workdir=str(args.workdir))
            if args.json:
                Path(args.json).write_text(json.dumps(result, indent=1))
    except (ValueError, TypeError, FileNotFoundError, ImportError, RuntimeError, OSError) as e:
        print(f"error: {str(e).splitlines()[0] if str(e) else type(e).__name__}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
