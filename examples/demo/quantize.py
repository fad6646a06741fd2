"""Demo step 3, int8 export: fp32 / PTQ int8 / QAT int8 evaluated in LiteRT.

Takes the model trained by :mod:`mvit3_examples.demo.train` (MobileViTv3-XXS on
the bundled digits), exports it as fp32, post-training-quantized int8 (all int8
kernels, and the CPU variant with float attention / norm statistics) and
quantization-aware int8 (a short QAT fine-tune with
:func:`quantization.qat_train.qat_finetune`), runs every file in LiteRT on the
held-out split and prints + writes one table: top-1, agreement with the float
model, size, latency (2 threads, XNNPACK) and the share of ops / MACs that meet
the Edge TPU constraints.
"""

from __future__ import annotations

import json
import os

from mvit3_examples.demo.train import train_result

QUANTIZE_TITLE = "int8 export: fp32 / PTQ int8 / QAT int8 evaluated in LiteRT"
PTQ_TOLERANCE = 0.010  # top-1 within 1.0 point of float
QAT_TOLERANCE = 0.003  # top-1 within 0.3 points of float
NUM_CALIBRATION_IMAGES = 200


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


def _export_file_name(name: str) -> str:
    """``"PTQ int8 (CPU: ...)"`` -> ``ptq_int8_cpu.tflite``, ``"fp32"`` -> ``fp32.tflite``."""
    stem = name.split(" (")[0].replace(" ", "_").lower()
    return stem + ("_cpu" if "CPU" in name else "") + ".tflite"


def export_post_training(model, out: str, images, calib) -> dict:
    """fp32 and the two PTQ int8 files of ``model``: ``{row name: (path, export report)}``."""
    from quantization.export import export_tflite

    exports = [
        ("fp32", dict(quant="fp32", representative_data=images[:8])),
        (
            "PTQ int8 (all int8 kernels)",
            dict(quant="int8", target="generic", representative_data=calib),
        ),
        (
            "PTQ int8 (CPU: float attention+norm)",
            dict(
                quant="int8", representative_data=calib, keep_float=("attention", "normalization")
            ),
        ),
    ]
    files = {}
    for name, kwargs in exports:
        path = os.path.join(out, _export_file_name(name))
        report = export_tflite(model, path, **kwargs)
        files[name] = (path, report)
        print(
            f"  exported {name}: {path} ({report.file.size_bytes / 1024:.0f} KiB, verified in a "
            f"separate LiteRT process)"
        )
    return files


def export_quantization_aware(train: dict, out: str, quick: bool):
    """A short QAT fine-tune of the trained model, exported as int8:
    ``(qat summary, (path, export report))``."""
    import keras

    from quantization.export import export_tflite
    from quantization.qat_train import qat_finetune

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
    return qat_summary, (path, export_tflite(qat_model, path, quant="qat"))


def evaluate_row(name, path, report, *, model, images, labels, float_top1, quick) -> dict:
    """One table row: LiteRT top-1 / agreement with ``model``, latency and Edge TPU shares."""
    from quantization.benchmark import benchmark_tflite
    from quantization.edgetpu import edgetpu_report
    from quantization.evaluate import evaluate_tflite

    ev = evaluate_tflite(path, images, labels, keras_model=model, num_threads=2)
    bench = benchmark_tflite(path, num_threads=2, warmup=5, runs=30 if quick else 100)
    et = edgetpu_report(path)
    first_cpu_op = et["first_cpu_op"]
    return {
        "name": name,
        "file": path,
        "top1": ev["tflite"]["top1"],
        "delta_top1": ev["tflite"]["top1"] - float_top1,
        "agreement": ev["agreement"],
        "cosine": ev["cosine_mean"],
        "size_bytes": report.file.size_bytes,
        "median_ms": bench["median_ms"],
        "p90_ms": bench["p90_ms"],
        "edgetpu_op_share": et["mapped_op_share"],
        "edgetpu_mac_share": et["mapped_mac_share"],
        "edgetpu_first_cpu_op": None
        if first_cpu_op is None
        else f"#{first_cpu_op['index']} {first_cpu_op['op']}",
    }


def accuracy_checks(rows: list) -> dict:
    """The demo's targets: PTQ int8 within 1.0 point of float, QAT int8 within 0.3 point."""
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
    return checks


def _demo_data(size: int):
    """``(calibration images, held-out images, held-out labels)`` of the bundled digits."""
    import numpy as np

    from mvit3_examples.demo.train import demo_eval_arrays

    calib, _ = demo_eval_arrays(size, split="train")
    rng = np.random.default_rng(0)
    calib = calib[rng.permutation(len(calib))[:NUM_CALIBRATION_IMAGES]]
    images, labels = demo_eval_arrays(size, split="validation")
    return calib, images, labels


def _write_results(out: str, table: str, result: dict) -> None:
    from mvit3_keras.io_utils import atomic_write_text

    atomic_write_text(os.path.join(out, "quantization_table.txt"), table + "\n")
    atomic_write_text(
        os.path.join(out, "quantization_results.json"), json.dumps(result, indent=2, default=str)
    )
    print(f"  table: {os.path.join(out, 'quantization_table.txt')}")


def step_quantize(context: dict) -> dict:
    """Export the trained model (fp32, PTQ int8, QAT int8), evaluate every file in LiteRT,
    print and write the table (``quantization/quantization_table.txt``, ``..._results.json``)."""
    import keras
    import numpy as np

    quick = bool(context.get("quick"))
    train = train_result(context, "int8 export")
    out = os.path.join(context["output"], "quantization")
    os.makedirs(out, exist_ok=True)
    size = int(train["image_size"])
    model = keras.models.load_model(train["keras_model"])
    calib, images, labels = _demo_data(size)

    files = export_post_training(model, out, images, calib)
    qat_summary, files["QAT int8 (all int8 kernels)"] = export_quantization_aware(train, out, quick)
    float_logits = model.predict(images, batch_size=256, verbose=0)
    float_top1 = float(np.mean(float_logits.argmax(-1) == labels))
    rows = [
        evaluate_row(
            name,
            path,
            report,
            model=model,
            images=images,
            labels=labels,
            float_top1=float_top1,
            quick=quick,
        )
        for name, (path, report) in files.items()
    ]
    table = format_table(rows)
    print(
        f"  float Keras model: top-1 {100 * float_top1:.2f}% on {len(labels)} held-out images "
        f"({size}x{size})"
    )
    for line in table.splitlines():
        print("  " + line)
    result = {
        "float_top1": float_top1,
        "num_images": int(len(labels)),
        "image_size": size,
        "rows": rows,
        "checks": accuracy_checks(rows),
        "qat": qat_summary,
    }
    _write_results(out, table, result)
    return result
