"""TFLite / LiteRT latency: fp32 vs int8 (PTQ) vs QAT-int8, and ONNX Runtime fp32 on the timm twin.

Batch 1 at 256x256, 1 and 2 threads, LiteRT with its default XNNPACK delegate
(float and int8 kernels), for every MobileViTv3 variant. The peer is ONNX
Runtime (CPU provider, all graph optimisations, ``intra_op_num_threads`` =
threads) on the timm model of the same family exported from PyTorch (opset 17).

The files come from :func:`quantization.export_tflite` (``quant="fp32"``,
``"int8"`` with real-photo calibration, ``"qat"`` on
:func:`quantization.quantize_model`'s model after a short QAT fit); when that
API is missing, a plain ``tf.lite.TFLiteConverter`` conversion is used and the
JSON says so. Every file is checked against the float Keras model (cosine of
the logits on held-out photos) before it is timed.

    python benchmarks/tflite_latency.py                         # all v3 variants
    python benchmarks/tflite_latency.py --models mobilevitv3_xxs,mobilevitv3_050
    python benchmarks/tflite_latency.py --smoke --peer-python none

The 10 baselines (MobileViTv1 / v2) are the SAME networks as their timm twins
(:data:`benchmarks.common.TIMM_EXACT`; ``benchmarks/timm_equivalence.py`` proves
it): for them ``fp32/ORT`` compares two runtimes on one network (the performance
target is <= 1.0). For the v3 variants the ORT column is the v3 paper's
comparison model (another network); read it per MAC only.

    python benchmarks/tflite_latency.py --baselines --quants fp32 --no-qat   # litert_vs_onnx.json
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import common as C  # noqa: E402
from tests.support.photos import photo_crops  # noqa: E402

CACHE_DIR = C.BENCH_DIR / ".cache"
# int8: every kernel int8 (also what the Edge TPU needs); int8_cpu: int8 with the attention
# matmuls / softmax and the norm statistics kept in float32 (export_tflite(keep_float=...)),
# whose int8 kernels XNNPACK lacks; qat: a QAT model's full-int8 file.
QUANTS = ("fp32", "int8", "int8_cpu", "qat")
INT8_KINDS = ("int8", "int8_cpu", "qat")
KEEP_FLOAT = ("attention", "normalization")
TARGET_VS_FP32 = 0.5
TARGET_VS_ORT = 0.67


def parse_args(argv=None):
    p = C.base_parser(__doc__.split("\n\n")[0])
    p.add_argument("--models", default=",".join(C.V3_VARIANTS))
    p.add_argument("--threads", default="1,2")
    p.add_argument("--image-size", type=int, default=256)
    p.add_argument("--iters", type=int, default=10, help="invocations per timed call")
    p.add_argument("--calibration-samples", type=int, default=32)
    p.add_argument("--qat-steps", type=int, default=8, help="QAT fit steps before the QAT export")
    p.add_argument("--quants", default=",".join(QUANTS), help="subset of %(default)s")
    p.add_argument("--no-qat", action="store_true")
    p.add_argument("--cache-dir", type=Path, default=CACHE_DIR)
    p.add_argument("--reconvert", action="store_true", help="ignore cached .tflite / .onnx files")
    p.add_argument(
        "--convert-only", action="store_true", help="only convert / export and check the files"
    )
    p.add_argument(
        "--baselines",
        action="store_true",
        help="the 10 MobileViTv1/v2 baselines against the same timm network "
        "(writes litert_vs_onnx.json)",
    )
    args = p.parse_args(argv)
    if args.smoke:
        args.models, args.threads, args.image_size = "mobilevitv3_xxs", "1", 64
        args.iters, args.calibration_samples, args.qat_steps = 2, 4, 1
        args.rounds = args.rounds or 1
        args.peer_python = "none"
        args.reconvert, args.no_qat, args.quants = True, True, "fp32,int8"
        args.cache_dir = args.output_dir / ".cache"
    if args.baselines:
        args.models = ",".join(C.TIMM_EXACT)
    args.rounds = args.rounds or 5
    return args


# ----------------------------------------------------------------- conversion


def _fallback_convert(model, path, quant, calib):
    """Minimal ``tf.lite.TFLiteConverter`` conversion (used only without quantization/)."""
    import tensorflow as tf

    from mvit3_keras.io_utils import atomic_write_bytes

    spec = tf.TensorSpec((1, *model.inputs[0].shape[1:]), tf.float32)
    fn = tf.function(lambda x: model(x, training=False), input_signature=[spec])
    conv = tf.lite.TFLiteConverter.from_concrete_functions([fn.get_concrete_function()], model)
    if quant in ("int8", "qat"):
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
        if quant == "int8":
            conv.representative_dataset = lambda: ([c[None]] for c in calib)
            conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    atomic_write_bytes(path, conv.convert())


def quant_api():
    """``(export_tflite, quantize_model)`` from the quantization package; None where missing."""
    export = quantize = None
    try:
        from quantization.export import export_tflite as export
    except Exception as err:  # noqa: BLE001 - report and fall back
        print(
            f"[tflite] quantization.export_tflite unavailable ({err}); using TFLiteConverter",
            flush=True,
        )
    try:
        from quantization.qat import quantize_model as quantize
    except Exception as err:  # noqa: BLE001
        print(
            f"[tflite] quantization.quantize_model unavailable ({err}): no QAT-int8 rows",
            flush=True,
        )
    return export, quantize


def qat_model(quantize, model, calib, steps):
    """QAT model after ``steps`` short fit steps (labels: the float model's top-1)."""
    import keras
    import numpy as np

    q = quantize(model)
    labels = np.asarray(model.predict(calib, batch_size=8, verbose=0)).argmax(-1)
    q.compile(
        optimizer=keras.optimizers.AdamW(1e-5),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    batch = max(1, min(8, len(calib)))
    q.fit(
        calib,
        labels,
        batch_size=batch,
        epochs=1,
        steps_per_epoch=min(steps, len(calib) // batch),
        verbose=0,
    )
    return q


def convert_all(name, size, calib, args, export, quantize, log) -> dict:
    """Convert ``name`` to every quant type (cached); return per-quant file info."""
    import keras

    import mvit3_keras as m
    from benchmarks.timm_equivalence import randomize_weights

    os.makedirs(args.cache_dir, exist_ok=True)
    # Weights: seeded random weights with non-trivial normalisation statistics (no checkpoint
    # can be fetched here). Keras' fresh initialisation is not a usable stand-in for a trained
    # network: its activations shrink to ~1e-7 through the v2-family blocks, which gives
    # degenerate int8 ranges. Latency does not depend on the values; the cosine check compares
    # every file with this model.
    keras.utils.set_random_seed(0)
    model = m.create_model(name, input_shape=(size, size, 3))
    randomize_weights(model, seed=0)
    files = {}
    for quant in [q for q in QUANTS if q in args.quants.split(",")]:
        if quant == "qat" and (args.no_qat or quantize is None):
            continue
        path = os.path.join(args.cache_dir, f"{name}_{size}_{quant}_rw.tflite")
        info = {
            "path": path,
            "converter": "quantization.export_tflite" if export else "tf.lite.TFLiteConverter",
        }
        if args.reconvert or not os.path.isfile(path):
            start = time.time()
            try:
                src = model
                if quant == "qat":
                    src = qat_model(quantize, model, calib, args.qat_steps)
                if export:
                    extra = {"keep_float": KEEP_FLOAT} if quant == "int8_cpu" else {}
                    export(
                        src,
                        path,
                        quant="int8" if quant == "int8_cpu" else quant,
                        **extra,
                        representative_data=calib if quant.startswith("int8") else None,
                        num_calibration_samples=len(calib),
                        verify=quant != "fp32" and not args.smoke,
                    )
                elif quant == "int8_cpu":
                    raise RuntimeError("keep_float needs quantization.export_tflite")
                else:
                    _fallback_convert(src, path, quant, calib)
            except Exception as err:  # noqa: BLE001 - one failed export must not stop the table
                info["error"] = f"{type(err).__name__}: {str(err)[-400:]}"
                log(f"[tflite] {name} {quant}: conversion failed: {info['error']}")
                files[quant] = info
                continue
            info["convert_s"] = round(time.time() - start, 1)
            log(f"[tflite] {name} {quant}: converted in {info['convert_s']} s")
        info["bytes"] = os.path.getsize(path)
        files[quant] = info
    return model, files


def _clear_keras():
    import gc

    import keras

    keras.backend.clear_session()
    gc.collect()


def check_outputs(worker, model, files, held_out, workdir) -> None:
    """Cosine of each file's logits vs the Keras model on held-out photos (in the worker
    process: a file that aborts LiteRT is recorded, not fatal)."""
    import numpy as np

    reference = np.asarray(model.predict(held_out, batch_size=4, verbose=0), np.float64)
    x_path = os.path.join(workdir, "held_out.npy")
    np.save(x_path, held_out)
    for quant, info in files.items():
        if "error" in info:
            continue
        y_path = os.path.join(workdir, f"{quant}.npy")
        try:
            worker.call("tflite_outputs", path=info["path"], input_npy=x_path, output_npy=y_path)
        except Exception as err:  # noqa: BLE001 - WorkerError incl. a crashed runtime
            info["error"] = f"runtime: {str(err)[:300]}"
            continue
        out = np.load(y_path).astype(np.float64).reshape(len(held_out), -1)
        ref = reference.reshape(len(held_out), -1)
        cos = (out * ref).sum(1) / np.maximum(
            np.linalg.norm(out, axis=1) * np.linalg.norm(ref, axis=1), 1e-30
        )
        info["cosine_vs_keras_min"] = float(cos.min())
        info["top1_agree_vs_keras"] = float((out.argmax(1) == ref.argmax(1)).mean())


# ---------------------------------------------------------------------- main


def main(argv=None) -> int:
    args = parse_args(argv)
    peer_py = C.peer_python(args.peer_python)
    models = [n for n, _ in C.parse_pairs(args.models)]
    payload = {
        "benchmark": "tflite_latency",
        "machine": C.machine_info(),
        "config": {k: str(v) for k, v in vars(args).items()},
    }
    export, quantize = quant_api()
    payload["converter"] = (
        "quantization.export_tflite" if export else "tf.lite.TFLiteConverter (fallback)"
    )
    payload["qat_available"] = quantize is not None and not args.no_qat

    n_cal = args.calibration_samples
    crops = photo_crops(n_cal + 4, args.image_size, seed=0)  # the crops the int8 tests calibrate on
    calib, held_out = crops[:n_cal], crops[n_cal:]
    rows = []
    with C.Workers(C.keras_worker(args.smoke), C.peer_worker(peer_py)) as workers:
        payload["versions"] = {"ours": workers.ours.call("hello")["versions"]}
        if workers.peer:
            payload["versions"]["peer"] = workers.peer.call("hello")["versions"]
        for name in models:
            files = convert_and_check(workers, args, name, calib, held_out, export, quantize)
            rows += measure_model(workers, args, name, files)
        payload["rows"] = rows
        payload["table"] = _table(rows)
        out_name = "tflite_files" if args.convert_only else "tflite_latency"
        out_name = "litert_vs_onnx" if args.baselines else out_name
        C.write_results(args.output_dir, out_name, payload)
    return 0


def convert_and_check(workers, args, name, calib, held_out, export, quantize) -> dict:
    """``name``'s files (:func:`convert_all`), each checked against the Keras model."""
    model, files = convert_all(name, args.image_size, calib, args, export, quantize, print)
    with tempfile.TemporaryDirectory(prefix="mvit3-tflite-") as workdir:
        check_outputs(workers.ours, model, files, held_out, workdir)
    del model
    _clear_keras()
    if not args.smoke and workers.ours.proc.poll() is not None:  # the runtime aborted the worker
        workers.fresh_ours()
    return files


def export_onnx(peer, args, timm_name) -> dict | None:
    """The timm twin as ONNX (None without a peer), checked against PyTorch."""
    if not (peer and timm_name):
        return None
    size = args.image_size
    onnx_path = os.path.join(args.cache_dir, f"timm_{timm_name}_{size}.onnx")
    # Exported every run (seconds): the file then holds this process's weights,
    # which the ONNX Runtime vs PyTorch check below needs.
    peer.call("export_onnx", model=timm_name, path=onnx_path, size=size)
    return {
        "path": onnx_path,
        "timm": timm_name,
        **peer.call("describe", model=timm_name),
        "vs_pytorch": peer.call("onnx_check", model=timm_name, path=onnx_path, size=size),
    }


def measure_model(workers, args, name, files) -> list:
    """The rows of ``name``: one per thread count (one without latencies with --convert-only)."""
    timm_name = C.timm_peer(name)
    desc = workers.ours.call("describe", model=name, size=args.image_size)
    onnx = export_onnx(workers.peer, args, timm_name)
    if args.convert_only:
        return [{"model": name, "files": files, "onnx": onnx, "latency": {}}]
    rows = []
    for t in [int(t) for t in args.threads.split(",")]:
        lat = time_files(workers, args, name, files, onnx, t)
        rows.append(latency_row(name, desc, t, args.image_size, lat, files, onnx))
        print(
            f"[{name} t{t}] " + ", ".join(f"{k} {v['median_ms']:.1f} ms" for k, v in lat.items()),
            flush=True,
        )
    return rows


def time_files(workers, args, name, files, onnx, t) -> dict:
    """Median latency (ms) of every file and of the ONNX model at ``t`` threads, interleaved."""
    ours, peer = workers.ours, workers.peer
    entries = {}
    for quant, info in files.items():
        if "error" in info:
            continue
        key = f"tflite/{name}/{quant}/{t}"
        ours.call("build_tflite", key=key, path=info["path"], threads=t)
        entries[key] = (ours, quant)
    if onnx:
        key = f"ort/{onnx['timm']}/{t}"
        peer.call("build_ort", key=key, path=onnx["path"], threads=t)
        entries[key] = (peer, "ort_fp32")

    def runner(key):
        return entries[key][0].call("time", key=key, iters=args.iters)["seconds"]

    times = C.interleave(entries, args.rounds, runner)
    lat = {}
    for key, (worker, label) in entries.items():
        worker.call("free", key=key)
        lat[label] = {
            "median_ms": 1000 * C.median(times[key]),
            "spread": C.spread(times[key]),
            "n": len(times[key]),
        }
    return lat


def latency_row(name, desc, t, size, lat, files, onnx) -> dict:
    """The JSON row of ``name`` at ``t`` threads: latencies, int8 ratios and the targets."""
    fp32 = lat.get("fp32", {}).get("median_ms")
    ort = lat.get("ort_fp32", {}).get("median_ms")
    row = {
        "model": name,
        "params": desc["params"],
        "macs_official": desc["macs_official"],
        "macs_real": desc["macs_real"],
        "threads": t,
        "image_size": size,
        "latency": lat,
        "files": files,
        "onnx": onnx,
    }
    if fp32 and ort:
        row["fp32_vs_ort"] = fp32 / ort
        row["same_network"] = name in C.TIMM_EXACT
        row["fp32_vs_ort_met"] = fp32 <= ort if row["same_network"] else None
    for q in INT8_KINDS:
        if q in lat:
            ms = lat[q]["median_ms"]
            row[f"{q}_vs_fp32"] = ms / fp32 if fp32 else None
            row[f"{q}_vs_ort"] = ms / ort if ort else None
    present = [q for q in INT8_KINDS if q in lat]
    if present:
        best_ms, best_q = min((lat[q]["median_ms"], q) for q in present)
        row["best_int8"] = best_q
        row["best_int8_vs_fp32"] = best_ms / fp32 if fp32 else None
        row["best_int8_vs_ort"] = best_ms / ort if ort else None
        if t == 2:  # the targets: batch 1, 2 threads, best int8 file
            row["target_vs_fp32_met"] = best_ms <= TARGET_VS_FP32 * fp32 if fp32 else None
            row["target_vs_ort_met"] = best_ms <= TARGET_VS_ORT * ort if ort else None
    return row


def _table(rows):
    headers = [
        "model",
        "params",
        "MACs",
        "thr",
        "fp32",
        "int8",
        "int8 (float attn/norm)",
        "QAT-int8",
        "timm ORT fp32",
        "fp32/ORT",
        "best int8/fp32",
        "best int8/ORT",
        "cos (int8, int8_cpu)",
        "<=0.5x fp32",
        "<=0.67x ORT",
    ]
    body = []
    for r in rows:
        lat = r["latency"]
        if not lat:  # --convert-only
            continue

        def ms(k, lat=lat):
            return C.fmt(lat[k]["median_ms"], ".1f") if k in lat else "-"

        cos = ", ".join(
            C.fmt(r["files"].get(q, {}).get("cosine_vs_keras_min"), ".3f")
            for q in ("int8", "int8_cpu")
        )
        body.append(
            [
                r["model"],
                f"{r['params'] / 1e6:.2f}M",
                f"{r['macs_official'] / 1e6:.0f}M",
                r["threads"],
                ms("fp32"),
                ms("int8"),
                ms("int8_cpu"),
                ms("qat"),
                (ms("ort_fp32") + f" ({r['onnx']['timm']})") if r.get("onnx") else "-",
                C.fmt(r.get("fp32_vs_ort"), ".2f")
                + ("" if r.get("same_network", True) else " (other net)"),
                C.fmt(r.get("best_int8_vs_fp32"), ".2f")
                + (f" ({r['best_int8']})" if r.get("best_int8") else ""),
                C.fmt(r.get("best_int8_vs_ort"), ".2f"),
                cos,
                C.verdict(r.get("target_vs_fp32_met")) if r["threads"] == 2 else "",
                C.verdict(r.get("target_vs_ort_met")) if r["threads"] == 2 else "",
            ]
        )
    return C.print_table(
        "TFLite / LiteRT latency, batch 1, ms (median of interleaved rounds, XNNPACK)",
        headers,
        body,
    )


if __name__ == "__main__":
    sys.exit(main())
