"""Latency vs input size: how the cost of each attention family grows with the image.

MobileViTv1-family attention (multi-head self-attention over the N patches of each
of the P pixel positions, ``cvnets/layers/multi_head_attention.py``) costs
O(N^2 d) per layer, MobileViTv2-family separable attention
(``cvnets/layers/linear_attention.py``, MobileViTv2 paper section 3.2) O(N d): as
the image grows, a v1-family model's cost tends to quadratic in the number of
pixels, a v2-family model's stays linear. This script measures it, batch 1,
``--threads`` threads, for one variant of each family (``--models``) at each
``--sizes``:

- ``keras``: :func:`mvit3_keras.inference_function` (the inference formulation,
  traced once, variables frozen);
- ``litert``: the fp32 file of :func:`quantization.export_tflite` (XNNPACK);
- MACs (:func:`mvit3_keras.count_macs`, real) and the attention cores' share of them.

Both runtimes run in one worker process, interleaved per size. The growth exponent
``k`` of ``latency ~ pixels^k`` is the least-squares slope of log latency over log
pixels, over all sizes and over the two largest (the asymptotic slope); the MACs get
the same fit, so a latency exponent above the MACs one says the runtime gets less
efficient as tensors grow.

    python benchmarks/scaling.py                                   # 128, 256, 512, 1024
    python benchmarks/scaling.py --models mobilevitv3_xxs --sizes 128,256 --rounds 1

Writes benchmarks/results/scaling.json (the plot: benchmarks/plot.py).
"""

from __future__ import annotations

import math
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import common as C  # noqa: E402

RUNTIMES = ("keras", "litert")
SECONDS_PER_ROUND = 2.0  # timed invocations per round: about this long, 2 to 20 of them


def parse_args(argv=None):
    p = C.base_parser(__doc__.split("\n\n")[0])
    p.add_argument("--models", default="mobilevitv3_xxs,mobilevitv3_050")
    p.add_argument("--sizes", default="128,256,512,1024")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    if args.smoke:
        args.models, args.sizes = "mobilevitv3_xxs", "64,128"
    args.rounds = args.rounds or (1 if args.smoke else 3)
    return args


def growth_exponent(pixels, values) -> float:
    """Least-squares slope of ``log(values)`` over ``log(pixels)``."""
    xs = [math.log(p) for p in pixels]
    ys = [math.log(v) for v in values]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx


def model_costs(name: str, size: int, path: str) -> dict:
    """Real MACs, the attention cores' MACs, and the fp32 LiteRT file at ``path``."""
    import keras

    import mvit3_keras as m
    from mvit3_keras.graph_clone import iter_layers
    from mvit3_keras.layers import AttentionCore
    from quantization import export_tflite

    keras.utils.set_random_seed(0)
    model = m.create_model(name, input_shape=(size, size, 3))
    macs = m.count_macs(model)
    cores = {layer.name for layer in iter_layers(model) if isinstance(layer, AttentionCore)}
    attention = sum(real for layer, (_, real) in macs["by_layer"].items() if layer in cores)
    export_tflite(model, path, quant="fp32", verify=False)
    del model
    keras.backend.clear_session()
    return {"macs_real": int(macs["real"]), "attention_macs": int(attention)}


def time_size(worker, name: str, size: int, path: str, args) -> dict:
    """``{runtime: fastest per-round median, ms}`` for one model and size, interleaved."""
    warm = {
        "keras": worker.call(
            "build_infer", key="keras", model=name, batch=1, size=size, variant="frozen"
        ),
        "litert": worker.call("build_tflite", key="litert", path=path, threads=args.threads),
    }
    iters = {
        key: max(2, min(20, int(SECONDS_PER_ROUND / max(w["warmup_s"] / 2, 1e-4))))
        for key, w in warm.items()
    }

    def runner(key):
        return [C.median(worker.call("time", key=key, iters=iters[key])["seconds"])]

    rounds = C.interleave(dict.fromkeys(RUNTIMES), args.rounds, runner)
    for key in RUNTIMES:
        worker.call("free", key=key)
    worker.call("reset")
    return {key: 1000 * min(values) for key, values in rounds.items()}


def fits(rows: list) -> dict:
    """Growth exponents of latency (per runtime) and MACs over all sizes and the top two."""
    pixels = [r["size"] ** 2 for r in rows]
    series = {f"{k}_ms": [r[f"{k}_ms"] for r in rows] for k in RUNTIMES}
    series["macs_real"] = [r["macs_real"] for r in rows]
    return {
        key: {
            "all_sizes": growth_exponent(pixels, values),
            "largest_two": growth_exponent(pixels[-2:], values[-2:]),
        }
        for key, values in series.items()
    }


def table(results: dict, args) -> str:
    headers = ["model", "size", "MMACs", "attention share", "Keras ms", "LiteRT ms"]
    headers += ["Keras GMAC/s", "LiteRT GMAC/s"]
    body = []
    for name, entry in results.items():
        for r in entry["rows"]:
            gmacs = {k: r["macs_real"] / r[f"{k}_ms"] / 1e6 for k in RUNTIMES}
            body.append(
                [name, r["size"], f"{r['macs_real'] / 1e6:.0f}"]
                + [C.percent(r["attention_macs"], r["macs_real"])]
                + [C.fmt(r["keras_ms"], ".2f"), C.fmt(r["litert_ms"], ".2f")]
                + [C.fmt(gmacs["keras"], ".1f"), C.fmt(gmacs["litert"], ".1f")]
            )
        f = entry["fits"]
        body.append(
            [name, "exponent k (all / top two)", "", ""]
            + [
                f"{f[k + '_ms']['all_sizes']:.2f} / {f[k + '_ms']['largest_two']:.2f}"
                for k in RUNTIMES
            ]
            + [f"MACs: {f['macs_real']['all_sizes']:.2f} / {f['macs_real']['largest_two']:.2f}", ""]
        )
    title = (
        f"Latency vs input size, batch 1, {args.threads} threads: latency ~ pixels^k "
        "(k = 1 linear in pixels, 2 quadratic)"
    )
    return C.print_table(title, headers, body)


def main(argv=None) -> int:
    args = parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    payload = {
        "benchmark": "scaling",
        "machine": C.machine_info(),
        "config": {k: str(v) for k, v in vars(args).items()},
    }
    results = {}
    with (
        tempfile.TemporaryDirectory(prefix="mvit3_scaling_") as tmp,
        C.keras_worker(args.smoke, threads=args.threads) as worker,
    ):
        for name in args.models.split(","):
            rows = []
            for size in sizes:
                path = str(Path(tmp) / f"{name}_{size}.tflite")
                row = {"size": size, **model_costs(name, size, path)}
                row.update(
                    {f"{k}_ms": v for k, v in time_size(worker, name, size, path, args).items()}
                )
                rows.append(row)
                print(
                    f"[scaling] {name} {size}: "
                    + ", ".join(f"{k} {row[k + '_ms']:.2f} ms" for k in RUNTIMES),
                    flush=True,
                )
            results[name] = {"rows": rows, "fits": fits(rows)}
    payload["results"] = results
    C.write_tables(args.output_dir, "scaling", payload, [table(results, args)])
    return 0


if __name__ == "__main__":
    sys.exit(main())
