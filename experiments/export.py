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
import sys
import warnings
from pathlib import Path

from symog_jax.export.integer_inference import check_program_settings
from symog_jax.files import write_json_atomic
from symog_jax.pipelines.export import check_export, export_run, print_check
from symog_jax.pipelines.flags import int_in, positive_int
from symog_jax.pipelines.onnx_export import check_onnx, print_onnx_check, write_onnx

#: ``--onnx-kernels`` -> :func:`symog_jax.export.onnx.program_to_onnx`'s ``qlinear``.
ONNX_KERNELS = {"qlinear": True, "exact": "exact", "integer": False}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n".join(__doc__.splitlines()[2:]))
    p.add_argument("--workdir", required=True, help="a finished run directory")
    p.add_argument("--out", default=None, help="the .npz to write (default <workdir>/export.npz)")
    p.add_argument("--check", action="store_true",
                   help="run the integer inference on the test set and compare with Flax")
    p.add_argument("--data-dir", default=None, help="where the data is now, if it moved")
    p.add_argument("--allow-other-data", action="store_true",
                   help="use data that is not what the run was trained on (its stored "
                        "fingerprint differs): say what differs and go on with the run's "
                        "stored input normalisation (default: refuse it)")
    p.add_argument("--limit", type=positive_int, default=None,
                   help="check only the first N test images")
    p.add_argument("--fine-frac-bits", type=int_in(0, 54), default=20,
                   help="step 2**-F of the tensors the model keeps in float (default 20; up to "
                        "fine-bits - 2; see docs/export.md, 'Exactness')")
    p.add_argument("--fine-bits", type=int_in(2, 56), default=31,
                   help="signed bits of those fine codes, saturating (default 31: int32, "
                        "|value| < 2**(30-F); up to 56 in int64)")
    p.add_argument("--mult-bits", type=int_in(2, 62), default=31,
                   help="bits of the requantization multipliers (default 31: 32-bit signed "
                        "multipliers, as integer-only hardware has; up to 62 in int64). "
                        "--fine-frac-bits 36 --fine-bits 48 --mult-bits 46 reproduces the "
                        "float64 Flax model's classes (docs/export.md)")
    p.add_argument("--onnx-kernels", choices=tuple(ONNX_KERNELS), default="exact",
                   help="with --format onnx: exact (default; QLinearConv for every channel "
                        "whose requantization it is proven to reproduce, the few others on "
                        "ConvInteger with the exact integer requantization), qlinear "
                        "(QLinearConv wherever a layer writes 8-bit codes: fastest; channels "
                        "without a proven-exact "
                        "fit can flip codes near a rounding boundary, the export names them "
                        "and --check counts them), integer (every layer ConvInteger/"
                        "MatMulInteger: bit-identical, slowest)")
    p.add_argument("--json", default=None, help="also write the check's summary to this file")
    p.add_argument("--format", choices=("npz", "onnx"), default="npz",
                   help="onnx: also write <workdir>/model.onnx (integer kernels, see "
                        "symog_jax.export.onnx); --check then runs it in onnxruntime vs the "
                        "numpy integer program and Flax")
    args = p.parse_args(argv)
    try:
        check_program_settings(args.fine_frac_bits, args.fine_bits, args.mult_bits)
    except ValueError as e:
        p.error(str(e))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            manifest, run = export_run(args.workdir, args.out, data_dir=args.data_dir,
                                       fine_frac_bits=args.fine_frac_bits,
                                       fine_bits=args.fine_bits,
                                       mult_bits=args.mult_bits,
                                       allow_other_data=args.allow_other_data)
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
        if args.format == "onnx":
            return _onnx(args, run, out)
        if args.check:
            result = check_export(run, out, args.limit)
            print_check(result)
            result.update(file_bytes=size, float32_bytes=f32, workdir=str(args.workdir))
            if args.json:
                write_json_atomic(args.json, result, indent=1)
    except (ValueError, TypeError, FileNotFoundError, ImportError, RuntimeError, OSError) as e:
        print(f"error: {str(e).splitlines()[0] if str(e) else type(e).__name__}", file=sys.stderr)
        return 2
    return 0


def _onnx(args, run, npz: Path) -> int:
    """``--format onnx``: writes ``<workdir>/model.onnx`` and, with ``--check``, compares it."""
    written = write_onnx(npz, Path(args.workdir).absolute() / "model.onnx",
                         qlinear=ONNX_KERNELS[args.onnx_kernels])
    print(f"wrote {written['path']}: {written['bytes']} bytes; ops {written['ops']}")
    if written["inexact_channels"]:
        print(f"QLinearConv requantization not proven exact in {written['inexact_channels']} "
              "output channels (codes can differ near a rounding boundary; --check counts them)")
    if args.check:
        result = check_onnx(run, npz, written["path"], args.limit)
        print_onnx_check(result)
        if args.json:
            write_json_atomic(args.json, {**result, **written}, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
