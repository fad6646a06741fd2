"""int8 vs fp32 latency in LiteRT (XNNPACK): the int8 file must run at least 2x fp32.

MobileViTv3-XXS at 256x256, batch 1, 2 threads (configurable): the same model
exported as fp32, int8 (every kernel int8), int8 for CPUs (attention cores
and norm statistics kept in float32, ``keep_float``) and QAT int8 (a
calibrated QAT model; fine-tuning does not change the graph, so latency is that
of the deployed file). Files are timed in interleaved rounds (load from other
processes hits all alike) by the benchmark worker's LiteRT side, the one
protocol of :mod:`benchmarks.worker`; the figure of a file is the median of
its per-round medians, the ratio is fp32 median / int8 median. A per-op profile (one-op
models, :func:`quantization.benchmark.profile_ops`) says which ops dominate.

    python benchmarks/quant_speed.py                       # XXS, 256, 2 threads
    python benchmarks/quant_speed.py --model mobilevitv3_050 --threads 1 --rounds 4

Writes benchmarks/results/quant_speed.json.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import common as C  # noqa: E402
from benchmarks.worker import LocalWorker  # noqa: E402

TARGET_SPEEDUP = 2.0
REFERENCE = {
    "mobilevitv3_xxs": "cls_xx_small_v3",
    "mobilevitv3_050": "cls_w0.5",
    "mobilevit_xxs": "cls_mobilevit_xx_small",
    "mobilevitv2_050": "cls_mobilevit_v2_w0.5",
}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="mobilevitv3_xxs")
    p.add_argument("--image-size", type=int, default=256)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=8)
    p.add_argument("--runs", type=int, default=25, help="timed invokes per file per round")
    p.add_argument("--no-profile", action="store_true")
    p.add_argument("--output-dir", default=str(C.RESULTS_DIR))
    return p.parse_args(argv)


def build_files(args, workdir):
    import mvit3_keras as m
    from mvit3_keras.reference import load_parity, reference_dir
    from quantization import export_tflite, quantize_model
    from quantization.qat import calibrate_ranges
    from tests.support.photos import photo_crops
    from tests.support.weights import recalibrate_batchnorm

    size = args.image_size
    model = m.create_model(args.model, input_shape=(size, size, 3))
    ref = reference_dir()
    stem = REFERENCE.get(args.model)
    images = photo_crops(40, size, seed=1)
    if ref is not None and stem:
        m.load_cvnets_weights(model, load_parity(stem).state_dict(), rgb_input=False)
        weights = f"official reference checkpoint {stem}"
    else:
        recalibrate_batchnorm(model, images[:8])
        weights = "random (BatchNorm recalibrated)"
    calib = images[:32]
    specs = {
        "fp32": dict(quant="fp32"),
        "int8 (all int8 kernels)": dict(quant="int8", target="generic"),
        "int8 CPU (float attention+norm)": dict(
            quant="int8", keep_float=("attention", "normalization")
        ),
    }
    files, reports = {}, {}
    for name, kwargs in specs.items():
        path = os.path.join(workdir, name.split(" ")[0] + str(len(files)) + ".tflite")
        reports[name] = export_tflite(model, path, representative_data=calib, **kwargs)
        files[name] = path
    qat = quantize_model(model)
    calibrate_ranges(qat, calib)
    files["QAT int8 (all int8 kernels)"] = os.path.join(workdir, "qat.tflite")
    reports["QAT int8 (all int8 kernels)"] = export_tflite(
        qat, files["QAT int8 (all int8 kernels)"], quant="qat"
    )
    return files, reports, weights


def time_files(files: dict, args) -> dict:
    """``{file label: [median ms of each round]}``: every file timed by the LiteRT side of
    the benchmark worker (:meth:`benchmarks.worker.KerasBackend.build_tflite`), in
    interleaved rounds of ``args.runs`` invokes."""
    with LocalWorker("keras", label="ours") as worker:
        for name, path in files.items():
            worker.call("build_tflite", key=name, path=path, threads=args.threads, warmup=5)

        def run(name):
            seconds = worker.call("time", key=name, iters=args.runs)["seconds"]
            return [1000 * C.median(seconds)]  # one value per round

        return C.interleave(files, args.rounds, run)


def summarize(timings: dict, reports: dict, args, weights: str) -> dict:
    """Per file: median, best round, spread, speed-up vs fp32, size and cosine; prints the table."""
    fp32 = C.median(timings["fp32"])
    rows, table_rows = {}, []
    for name, values in timings.items():
        med = C.median(values)
        rows[name] = {
            "median_ms": med,
            "min_round_ms": min(values),
            "spread": C.spread(values),
            "speedup_vs_fp32": fp32 / med,
            "size_bytes": reports[name].file.size_bytes,
            "cosine_vs_float": reports[name].verify and reports[name].verify.cosine_vs_float_mean,
        }
        table_rows.append(
            [
                name,
                C.fmt(med, ".2f"),
                C.fmt(min(values), ".2f"),
                C.fmt(fp32 / med, ".2f") + "x",
                f"{reports[name].file.size_bytes / 1024:.0f}",
                C.fmt(rows[name]["cosine_vs_float"], ".4f"),
            ]
        )
    C.print_table(
        f"{args.model} {args.image_size}x{args.image_size}, batch 1, {args.threads} threads, "
        f"LiteRT + XNNPACK ({weights})",
        ["file", "median ms", "best round ms", "speed vs fp32", "KiB", "cosine vs float"],
        table_rows,
    )
    return rows


def main(argv=None) -> int:
    args = parse_args(argv)
    from quantization.benchmark import profile_ops

    machine = C.machine_info()
    with tempfile.TemporaryDirectory(prefix="mvit3_speed_") as workdir:
        files, reports, weights = build_files(args, workdir)
        timings = time_files(files, args)
        profiles = {}
        if not args.no_profile:
            for name in ("int8 (all int8 kernels)", "int8 CPU (float attention+norm)", "fp32"):
                p = profile_ops(files[name], num_threads=args.threads)
                profiles[name] = {"by_type": p["by_type"], "sum_ms": p["sum_ms"]}
    rows = summarize(timings, reports, args, weights)
    for name, p in profiles.items():
        top = list(p["by_type"].items())[:6]
        C.print_table(
            f"per-op profile: {name} (sum of one-op medians {p['sum_ms']:.2f} ms)",
            ["op", "count", "ms", "share"],
            [
                [k, v["count"], C.fmt(v["ms"], ".3f"), C.fmt(100 * v["share"], ".1f") + "%"]
                for k, v in top
            ],
        )
    best = max(rows[n]["speedup_vs_fp32"] for n in rows if n != "fp32")
    print(
        f"target int8 >= {TARGET_SPEEDUP}x fp32: {C.verdict(best >= TARGET_SPEEDUP)} "
        f"(best int8 file {best:.2f}x)"
    )
    C.write_results(
        args.output_dir,
        "quant_speed",
        {
            "model": args.model,
            "image_size": args.image_size,
            "threads": args.threads,
            "weights": weights,
            "rounds": args.rounds,
            "runs_per_round": args.runs,
            "results": rows,
            "profiles": profiles,
            "target_speedup": TARGET_SPEEDUP,
            "target_met": best >= TARGET_SPEEDUP,
            "machine": machine,
        },
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
