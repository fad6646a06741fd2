"""Every registered variant in LiteRT: fp32, the default int8 file and the full-integer
file side by side, and how close each runs to this machine's LiteRT peak.

For each of the 23 variants (``mvit3_keras.list_models()``) at 256x256, with weights
like the official checkpoints (:func:`tests.support.sweep.build_variant`: the
official initialisation, BatchNorm statistics measured on real photos), three
files are exported by :func:`quantization.export_tflite`:

- ``fp32``: the float file;
- ``cpu``: ``target="cpu"``, the default ``quant="int8"`` file for phone and
  desktop CPUs (XNNPACK);
- ``npu``: ``target="npu"``, the full-integer file (every op int8), timed on the
  CPU as well.

A separate process (the benchmark worker) times the three files of a variant in
interleaved rounds (batch 1, ``--threads``, XNNPACK): a file's figure is the
fastest of its per-round medians, and the ratios are taken within the variant's
rounds. The same process measures this machine's LiteRT peak: one-op CONV_2D files
(1x1 and 3x3, 16x16 to 64x64, fp32 and int8, from ``tf.lite.TFLiteConverter``),
their best MAC/s per type. ``% of peak`` is a file's real MACs per second
(:func:`mvit3_keras.count_macs`) over the peak of its kernel type. The int8 files'
logits are compared with the Keras model's on held-out photo crops (cosine, top-1).

    python benchmarks/variant_latency.py                        # all 23 variants (~45 min)
    python benchmarks/variant_latency.py --models mobilevitv3_xxs,mobilevit_xxs --rounds 3

Writes benchmarks/results/variant_latency.json.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import common as C  # noqa: E402

CACHE_DIR = C.BENCH_DIR / ".cache"
KINDS = {"fp32": {"quant": "fp32"}, "cpu": {"target": "cpu"}, "npu": {"target": "npu"}}
TARGET_INT8_VS_FP32 = 0.5  # the performance issue's aim for the default int8 file
# one-op CONV_2D shapes of the peak: (spatial size, channels, kernel size)
PEAK_SHAPES = ((64, 128, 1), (32, 256, 1), (16, 512, 1), (32, 128, 3))


def parse_args(argv=None):
    p = C.base_parser(__doc__.split("\n\n")[0])
    p.add_argument("--models", default="all", help="comma-separated names, or 'all'")
    p.add_argument("--image-size", type=int, default=256)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--runs", type=int, default=20, help="timed invocations per round")
    p.add_argument("--calibration-samples", type=int, default=32)
    p.add_argument("--cache-dir", type=Path, default=CACHE_DIR)
    p.add_argument("--reconvert", action="store_true", help="ignore cached .tflite files")
    args = p.parse_args(argv)
    args.rounds = args.rounds or (1 if args.smoke else 3)
    return args


def peak_files(folder: Path) -> dict:
    """One-op CONV_2D ``.tflite`` files, fp32 and int8: ``{key: (path, kind, macs)}``."""
    import keras
    import numpy as np
    import tensorflow as tf

    from quantization.export_convert import run_converter

    files = {}
    rng = np.random.default_rng(0)
    for size, channels, kernel in PEAK_SHAPES:
        inputs = keras.Input((size, size, channels), batch_size=1)
        model = keras.Model(inputs, keras.layers.Conv2D(channels, kernel, padding="same")(inputs))
        macs = size * size * channels * channels * kernel * kernel
        for kind in ("fp32", "int8"):
            converter = tf.lite.TFLiteConverter.from_keras_model(model)
            if kind == "int8":
                sample = rng.random((8, 1, size, size, channels), np.float32)
                converter.optimizations = [tf.lite.Optimize.DEFAULT]
                converter.representative_dataset = lambda s=sample: ([x] for x in s)
            path = folder / f"peak_conv{kernel}x{kernel}_{size}x{size}x{channels}_{kind}.tflite"
            path.write_bytes(run_converter(converter))
            files[path.stem] = (str(path), kind, macs)
        keras.backend.clear_session()
    return files


def export_variant(name: str, args, calib, held) -> dict:
    """The variant's three files (cached), its real MACs and its Keras logits on ``held``."""
    import keras

    from mvit3_keras import count_macs
    from quantization import export_tflite
    from tests.support.sweep import build_variant

    size = args.image_size
    files = {k: args.cache_dir / f"variant_{name}_{size}_{k}.tflite" for k in KINDS}
    model = build_variant(name, size)
    seconds = {}
    for kind, options in KINDS.items():
        if files[kind].exists() and not args.reconvert:
            continue
        start = time.time()
        export_tflite(model, str(files[kind]), representative_data=calib, verify=False, **options)
        seconds[kind] = round(time.time() - start, 1)
    entry = {
        "files": {k: str(v) for k, v in files.items()},
        "macs": int(count_macs(model)["real"]),
        "reference": model.predict(held, verbose=0, batch_size=len(held)),
        "export_seconds": seconds,
    }
    del model
    keras.backend.clear_session()
    return entry


def agreement(worker, path: str, held, reference, workdir: str) -> dict:
    """Cosine / top-1 agreement of ``path``'s logits (run by ``worker``) with Keras'."""
    import numpy as np

    inputs, outputs = os.path.join(workdir, "in.npy"), os.path.join(workdir, "out.npy")
    np.save(inputs, held)
    worker.call("tflite_outputs", path=path, input_npy=inputs, output_npy=outputs)
    return C.logit_agreement(np.load(outputs), reference)


def best_ms(worker, files: dict, args) -> dict:
    """``{key: fastest per-round median, ms}`` of ``files`` (``{key: path}``), interleaved."""
    for key, path in files.items():
        worker.call("build_tflite", key=key, path=path, threads=args.threads)

    def runner(key):
        return [C.median(worker.call("time", key=key, iters=args.runs)["seconds"])]

    rounds = C.interleave(files, args.rounds, runner)
    for key in files:
        worker.call("free", key=key)
    return {key: 1000 * min(values) for key, values in rounds.items()}


def measure_peak(worker, folder: Path, args) -> dict:
    """This machine's LiteRT MAC/s per kernel type (best one-op CONV_2D) and every shape's."""
    files = peak_files(folder)
    ms = best_ms(worker, {k: v[0] for k, v in files.items()}, args)
    shapes = {
        k: {"kind": kind, "ms": ms[k], "macs_per_s": macs / ms[k] * 1e3}
        for k, (_, kind, macs) in files.items()
    }
    peak = {
        kind: max(s["macs_per_s"] for s in shapes.values() if s["kind"] == kind)
        for kind in ("fp32", "int8")
    }
    return {"macs_per_s": peak, "shapes": shapes}


def variant_row(name: str, entry: dict, ms: dict, peak: dict, scores: dict) -> dict:
    macs = entry["macs"]
    row = {"model": name, "macs_real": macs, "export_seconds": entry["export_seconds"]}
    for kind in KINDS:
        row[f"{kind}_ms"] = ms[kind]
        kernel = "fp32" if kind == "fp32" else "int8"
        row[f"{kind}_fraction_of_peak"] = macs / (ms[kind] / 1e3) / peak[kernel]
    for kind in ("cpu", "npu"):
        row[f"{kind}_vs_fp32"] = ms[kind] / ms["fp32"]
        row.update({f"{kind}_{k}": v for k, v in scores[kind].items()})
    row["target_met"] = row["cpu_vs_fp32"] <= TARGET_INT8_VS_FP32
    return row


def table(rows: list, peak: dict, args) -> str:
    headers = [
        "model",
        "MMACs",
        "fp32 ms",
        "int8 ms",
        "int8/fp32",
        "full-int ms",
        "full/fp32",
        "fp32 % peak",
        "int8 % peak",
        "int8 cos",
        "full cos",
    ]
    body = [
        [
            r["model"],
            f"{r['macs_real'] / 1e6:.0f}",
            C.fmt(r["fp32_ms"], ".2f"),
            C.fmt(r["cpu_ms"], ".2f"),
            C.fmt(r["cpu_vs_fp32"], ".2f"),
            C.fmt(r["npu_ms"], ".2f"),
            C.fmt(r["npu_vs_fp32"], ".2f"),
            C.fmt(100 * r["fp32_fraction_of_peak"], ".0f"),
            C.fmt(100 * r["cpu_fraction_of_peak"], ".0f"),
            C.fmt(r["cpu_cosine"], ".4f"),
            C.fmt(r["npu_cosine"], ".4f"),
        ]
        for r in rows
    ]
    title = (
        f"LiteRT, batch 1, {args.threads} threads, {args.image_size}x{args.image_size}: "
        f"fp32 vs int8 (target cpu) vs full-integer (target npu); peak fp32 "
        f"{peak['fp32'] / 1e9:.1f} GMAC/s, int8 {peak['int8'] / 1e9:.1f} GMAC/s"
    )
    return C.print_table(title, headers, body)


def main(argv=None) -> int:
    args = parse_args(argv)
    import mvit3_keras as m
    from tests.support.photos import photo_crops

    names = m.list_models() if args.models == "all" else args.models.split(",")
    if args.smoke:
        names, args.image_size = names[:1], 64
    args.cache_dir.mkdir(parents=True, exist_ok=True)
    crops = photo_crops(args.calibration_samples + 16, args.image_size, seed=0)
    calib, held = crops[: args.calibration_samples], crops[args.calibration_samples :]
    payload = {
        "benchmark": "variant_latency",
        "machine": C.machine_info(),
        "config": {k: str(v) for k, v in vars(args).items()},
    }
    rows = []
    with (
        tempfile.TemporaryDirectory(prefix="mvit3_peak_") as tmp,
        C.keras_worker(args.smoke, threads=args.threads) as worker,
    ):
        payload["peak"] = measure_peak(worker, Path(tmp), args)
        peak = payload["peak"]["macs_per_s"]
        for name in names:
            entry = export_variant(name, args, calib, held)
            scores = {
                k: agreement(worker, entry["files"][k], held, entry["reference"], tmp)
                for k in ("cpu", "npu")
            }
            rows.append(
                variant_row(name, entry, best_ms(worker, entry["files"], args), peak, scores)
            )
            print(
                f"[variant] {name}: "
                + ", ".join(f"{k} {rows[-1][k + '_ms']:.2f} ms" for k in KINDS),
                flush=True,
            )
        payload["peak_end"] = measure_peak(worker, Path(tmp), args)
    payload["rows"] = rows
    payload["target_int8_vs_fp32"] = TARGET_INT8_VS_FP32
    payload["targets_met"] = sum(r["target_met"] for r in rows)
    C.write_tables(args.output_dir, "variant_latency", payload, [table(rows, peak, args)])
    return 0


if __name__ == "__main__":
    sys.exit(main())
