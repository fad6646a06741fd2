"""Steps this package adds to the README demo (``mvit3 demo``), registered with
``mvit3_keras.demo.demo_step``.

``int8 export``: takes the model trained by the training step (MobileViTv3-XXS
on the bundled digits), exports it as fp32, post-training-quantized int8 (all
int8 kernels, and the CPU variant with float attention / norm statistics) and
quantization-aware int8 (a short QAT fine-tune with
:func:`quantization.qat_train.qat_finetune`), runs every file in LiteRT on the
held-out split and prints + writes one table: top-1, agreement with the float
model, size, latency (2 threads, XNNPACK) and the share of ops / MACs that meet
the Edge TPU constraints.
"""

from __future__ import annotations

import json
import os

from mvit3_keras.demo import demo_step

TRAIN_STEP_PREFIX = "train on real data"
PTQ_TOLERANCE = 0.010  # top-1 within 1.0 point of float (issue 5)
QAT_TOLERANCE = 0.003  # top-1 within 0.3 points of float


def _train_result(context: dict) -> dict:
    for title, result in context.get("results", {}).items():
        if title.startswith(TRAIN_STEP_PREFIX):
            return result
    raise RuntimeError(
        "the int8 export step needs the training step's model (run the whole `mvit3 demo`)"
    )


def format_table(rows: list) -> str:
    head = (
        f"{'model':<38s} {'top-1':>7s} {'d top-1':>8s} {'agree':>7s} {'size KiB':>9s} "
        f"{'ms (2 thr)':>10s} {'EdgeTPU ops':>11s} {'EdgeTPU MACs':>12s}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r['name']:<38s} {100 * r['top1']:>6.2f}% {100 * r['delta_top1']:>+7.2f} "
            f"{100 * r['agreement']:>6.2f}% {r['size_bytes'] / 1024:>9.0f} {r['median_ms']:>10.2f} "
            f"{100 * r['edgetpu_op_share']:>10.1f}% {100 * r['edgetpu_mac_share']:>11.1f}%"
        )
    return "\n".join(lines)


@demo_step("int8 export: fp32 / PTQ int8 / QAT int8 evaluated in LiteRT")
def step_quantize(context: dict) -> dict:
    import keras
    import numpy as np

    from mvit3_keras.io_utils import atomic_write_text
    from quantization.benchmark import benchmark_tflite
    from quantization.edgetpu import edgetpu_report
    from quantization.evaluate import evaluate_tflite
    from quantization.export import export_tflite
    from quantization.qat_train import qat_finetune
    from training.demo_steps import demo_eval_arrays

    quick = bool(context.get("quick"))
    train = _train_result(context)
    out = os.path.join(context["output"], "quantization")
    os.makedirs(out, exist_ok=True)
    size = int(train["image_size"])
    model = keras.models.load_model(train["keras_model"])
    calib, _ = demo_eval_arrays(size, split="train")
    rng = np.random.default_rng(0)
    calib = calib[rng.permutation(len(calib))[:200]]
    images, labels = demo_eval_arrays(size, split="validation")

    exports = [
        ("fp32", dict(quant="fp32", representative_data=images[:8])),
        ("PTQ int8 (all int8 kernels)", dict(quant="int8", representative_data=calib)),
        (
            "PTQ int8 (CPU: float attention+norm)",
            dict(
                quant="int8", representative_data=calib, keep_float=("attention", "normalization")
            ),
        ),
    ]
    files = {}
    for name, kwargs in exports:
        path = os.path.join(
            out,
            name.split(" (")[0].replace(" ", "_").lower()
            + ("_cpu" if "CPU" in name else "")
            + ".tflite",
        )
        report = export_tflite(model, path, **kwargs)
        files[name] = (path, report)
        print(
            f"  exported {name}: {path} ({report['size_bytes'] / 1024:.0f} KiB, verified in a "
            f"separate LiteRT process)"
        )

    qat_path = os.path.join(out, "qat.keras")
    qat_summary = qat_finetune(
        train["keras_model"],
        train.get("dataset", "demo"),
        qat_path,
        epochs=1 if quick else 3,
        recipe="demo",
        verbose=0,
    )
    print(
        f"  QAT fine-tune: {qat_summary['epochs']} epoch(s), validation top-1 of the QAT Keras "
        f"model {100 * qat_summary['val_top1_qat']:.2f}% ({qat_summary['seconds']} s)"
    )
    qat_model = keras.models.load_model(qat_path)
    path = os.path.join(out, "qat_int8.tflite")
    files["QAT int8 (all int8 kernels)"] = (path, export_tflite(qat_model, path, quant="qat"))

    float_logits = model.predict(images, batch_size=256, verbose=0)
    float_top1 = float(np.mean(float_logits.argmax(-1) == labels))
    rows = []
    for name, (path, report) in files.items():
        ev = evaluate_tflite(path, images, labels, keras_model=model, num_threads=2)
        bench = benchmark_tflite(path, num_threads=2, warmup=5, runs=30 if quick else 100)
        et = edgetpu_report(path)
        rows.append(
            {
                "name": name,
                "file": path,
                "top1": ev["tflite"]["top1"],
                "delta_top1": ev["tflite"]["top1"] - float_top1,
                "agreement": ev["agreement"],
                "cosine": ev["cosine_mean"],
                "size_bytes": report["size_bytes"],
                "median_ms": bench["median_ms"],
                "p90_ms": bench["p90_ms"],
                "edgetpu_op_share": et["mapped_op_share"],
                "edgetpu_mac_share": et["mapped_mac_share"],
                "edgetpu_first_cpu_op": None
                if et["first_cpu_op"] is None
                else f"#{et['first_cpu_op']['index']} {et['first_cpu_op']['op']}",
            }
        )
    table = format_table(rows)
    print(
        f"  float Keras model: top-1 {100 * float_top1:.2f}% on {len(labels)} held-out images "
        f"({size}x{size})"
    )
    for line in table.splitlines():
        print("  " + line)
    ptq = next(r for r in rows if r["name"].startswith("PTQ int8 (all"))
    qat = next(r for r in rows if r["name"].startswith("QAT"))
    checks = {
        "ptq_within_1.0pt": bool(ptq["delta_top1"] >= -PTQ_TOLERANCE),
        "qat_within_0.3pt": bool(qat["delta_top1"] >= -QAT_TOLERANCE),
    }
    print(
        f"  targets: PTQ int8 within 1.0 point: {checks['ptq_within_1.0pt']}, "
        f"QAT int8 within 0.3 point: {checks['qat_within_0.3pt']}"
    )
    result = {
        "float_top1": float_top1,
        "num_images": int(len(labels)),
        "image_size": size,
        "rows": rows,
        "checks": checks,
        "qat": qat_summary,
    }
    atomic_write_text(os.path.join(out, "quantization_table.txt"), table + "\n")
    atomic_write_text(
        os.path.join(out, "quantization_results.json"), json.dumps(result, indent=2, default=str)
    )
    print(f"  table: {os.path.join(out, 'quantization_table.txt')}")
    return result
