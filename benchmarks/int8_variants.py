"""int8 PTQ of every registered variant, run in LiteRT: int8 vs float logit cosine.

The procedure of tests/test_quant_variants.py, imported from the test support
(:mod:`tests.support.sweep`: weights like the official reference checkpoints,
static input, real-photo calibration, all files run by one separate process),
so the benchmark and the test measure the same thing, at any size. Bit-reproducible: the rows carry CRC32 digests of the weights, the
``.tflite`` bytes and the LiteRT outputs.

    python benchmarks/int8_variants.py                 # 23 variants at 96x96
    python benchmarks/int8_variants.py --image-size 256 --models mobilevitv3_xxs,mobilevitv3_050
    python benchmarks/int8_variants.py --calibration zeros   # a deliberately broken export

Writes benchmarks/results/int8_variants.json.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import common as C  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="all", help="comma-separated names, or 'all'")
    p.add_argument("--image-size", type=int, default=96)
    p.add_argument("--quant", default="int8", choices=("int8", "int8_full"))
    p.add_argument("--target", default="generic", choices=("generic", "edgetpu"))
    p.add_argument(
        "--calibration",
        default="photos",
        choices=("photos", "zeros", "tiny"),
        help="int8 calibration data; zeros / tiny are broken on purpose (negative controls)",
    )
    p.add_argument("--output-dir", default=str(C.RESULTS_DIR))
    args = p.parse_args(argv)

    import mvit3_keras as m
    from tests.support.sweep import format_sweep, int8_variant_sweep

    names = m.list_models() if args.models == "all" else args.models.split(",")
    machine = C.machine_info()
    rows = int8_variant_sweep(
        names,
        image_size=args.image_size,
        quant=args.quant,
        target=args.target,
        calibration=args.calibration,
    )
    print(
        format_sweep(
            rows,
            f"{args.quant} ({args.target}) vs float, {args.image_size}x"
            f"{args.image_size}, official-like weights, calibration: {args.calibration}",
        )
    )
    C.write_results(
        args.output_dir,
        "int8_variants",
        {
            "image_size": args.image_size,
            "quant": args.quant,
            "target": args.target,
            "calibration": args.calibration,
            "rows": rows,
            "machine": machine,
        },
    )
    return 0 if all(r.get("runs") for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
