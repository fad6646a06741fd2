"""int8 export of many variants, proven in one LiteRT process: ``int8_variant_sweep``.

Each variant is built at a small static size with realistic random weights
(:func:`quantization.synthetic.recalibrate_batchnorm`), exported with
``quant`` (calibration on real photo crops), and all files are then loaded,
allocated and invoked by ONE child process
(:func:`quantization.verify.verify_in_subprocess`; a file that aborts the
runtime is reported with its crashing op and the others still run). The rows
give int8-vs-float logit cosine similarity and top-1 agreement on held-out
crops. Used by ``tests/test_quant_variants.py`` and
``benchmarks/int8_variants.py``.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Sequence
from typing import Optional

import numpy as np


def int8_variant_sweep(
    names: Sequence[str],
    *,
    image_size: int = 96,
    num_classes: int = 10,
    num_calibration: int = 8,
    num_eval: int = 8,
    quant: str = "int8",
    target: str = "generic",
    output_dir: Optional[str] = None,
    seed: int = 0,
) -> list:
    import keras

    import mvit3_keras as m
    from quantization.export import cosine_similarity, export_tflite
    from quantization.synthetic import photo_crops, recalibrate_batchnorm
    from quantization.verify import describe_crash, verify_in_subprocess

    images = photo_crops(num_calibration + num_eval, image_size, seed=seed)
    calib, held_out = images[:num_calibration], images[num_calibration:]
    tmp = None
    if output_dir is None:
        tmp = tempfile.TemporaryDirectory(prefix="mvit3_sweep_")
        output_dir = tmp.name
    rows, files, refs = [], [], []
    try:
        for name in names:
            start = time.time()
            keras.utils.set_random_seed(seed)
            model = m.create_model(
                name, input_shape=(image_size, image_size, 3), num_classes=num_classes
            )
            recalibrate_batchnorm(model, calib, seed=seed)
            path = os.path.join(output_dir, f"{name}_{quant}_{target}.tflite")
            report = export_tflite(
                model, path, quant=quant, representative_data=calib, target=target, verify=False
            )
            refs.append(np.asarray(model.predict(held_out, verbose=0)))
            files.append(path)
            rows.append(
                {
                    "model": name,
                    "size_bytes": report["size_bytes"],
                    "num_ops": report["num_ops"],
                    "export_seconds": round(time.time() - start, 1),
                    "op_histogram": report["op_histogram"],
                }
            )
            del model
            keras.backend.clear_session()
        start = time.time()
        results = verify_in_subprocess(files, images=[held_out] * len(files))
        verify_seconds = time.time() - start
        for row, result, ref in zip(rows, results, refs):
            row["runs"] = bool(result.get("ok"))
            row["verify_seconds_total"] = round(verify_seconds, 2)
            if result.get("ok"):
                out = result["outputs"][0]
                row["cosine"] = float(cosine_similarity(out, ref).mean())
                row["cosine_min"] = float(cosine_similarity(out, ref).min())
                row["top1_agreement"] = float(np.mean(out.argmax(-1) == ref.argmax(-1)))
                row["backend"] = result["backend"]
            else:
                row["error"] = result.get("error")
                if result.get("crashed"):
                    row["crash_op"] = describe_crash(result.get("crash_op"))
    finally:
        if tmp is not None:
            tmp.cleanup()
    return rows


def format_sweep(rows: list, title: str = "") -> str:
    lines = [title] if title else []
    lines.append(
        f"{'variant':<20s} {'runs':>4s} {'cosine':>8s} {'min':>8s} {'top-1 agree':>11s} "
        f"{'KiB':>7s} {'ops':>5s} {'export s':>8s}"
    )
    for r in rows:
        if r.get("runs"):
            lines.append(
                f"{r['model']:<20s} {'yes':>4s} {r['cosine']:>8.4f} {r['cosine_min']:>8.4f} "
                f"{100 * r['top1_agreement']:>10.1f}% {r['size_bytes'] / 1024:>7.0f} "
                f"{r['num_ops']:>5d} {r['export_seconds']:>8.1f}"
            )
        else:
            lines.append(f"{r['model']:<20s} {'NO':>4s} {r.get('crash_op') or r.get('error')}")
    return "\n".join(lines)
