"""Which file to ship: every export target of every task, side by side.

For each model (official reference weights of ``tests/data/reference``, loaded
like the parity tests) the float file (``fp32``) and one file per target
(:data:`quantization.export_options.TARGETS`) are exported, calibrated on real
photo crops (:func:`tests.support.photos.photo_crops`), and each file gets: its
size, its LiteRT latency (XNNPACK, 2 threads, batch 1; files alternated in one
process, the fastest of ``--rounds`` medians) and its agreement with the float
Keras model on held-out crops (classifiers: top-1 agreement and logit cosine;
segmenters: pixel agreement of the argmax mask; detectors: none, the
post-processing op has no TensorFlow twin).

    python benchmarks/targets.py                       # the two classifiers at 256
    python benchmarks/targets.py --cases cls_xxs,cls_050,seg_xxs,det_xxs

Writes benchmarks/results/targets.json.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import common as C  # noqa: E402

# case -> (task, variant, parity stem, input size)
CASES = {
    "cls_xxs": ("classification", "mobilevitv3_xxs", "cls_xx_small_v3", 256),
    "cls_050": ("classification", "mobilevitv3_050", "cls_w0.5", 256),
    "cls_v2_050": ("classification", "mobilevitv2_050", "cls_mobilevit_v2_w0.5", 256),
    "seg_xxs": ("segmentation", "mobilevitv3_xxs", "seg_deeplabv3_voc_xx_small_v3", 512),
    "det_xxs": ("detection", "mobilevitv3_xxs", "det_ssd_xx_small_v3", 320),
}


def _classifier(variant: str, size: int):
    import mvit3_keras as m

    return m.create_model(variant, input_shape=(size, size, 3))


def _segmenter(variant: str, size: int):
    from mvit3_keras.segmentation import create_segmenter

    return create_segmenter(variant, preset="pascal_voc", input_shape=(size, size, 3))


def _detector(variant: str, size: int):
    import mvit3_keras as m

    return m.create_detector(variant, input_shape=(size, size, 3))


def _mask_agreement(out, ref) -> dict:
    import numpy as np

    return {"mask_agreement": float(np.mean(out.argmax(-1) == ref.argmax(-1)))}


# task -> (model builder(variant, size), agreement(file outputs, Keras outputs) or None: the
# detector's post-processing op has no TensorFlow twin to compare with)
TASKS = {
    "classification": (_classifier, C.logit_agreement),
    "segmentation": (_segmenter, _mask_agreement),
    "detection": (_detector, None),
}


def build_case(case: str):
    """The Keras model of ``case`` with its official reference weights."""
    import mvit3_keras as m
    from mvit3_keras import reference

    task, variant, stem, size = CASES[case]
    model = TASKS[task][0](variant, size)
    m.load_cvnets_weights(model, reference.load_parity(stem), rgb_input=False)
    return model


def export_case(case: str, folder: str, num_calibration: int, num_eval: int) -> list:
    """Rows (one per file) of ``case``: export and agreement, latency still empty."""
    from quantization import export_tflite, run_tflite
    from quantization.export_options import TARGETS
    from tests.support.photos import photo_crops

    task, variant, _, size = CASES[case]
    model = build_case(case)
    images = photo_crops(num_calibration + num_eval, size, seed=1)
    calib, held = images[:num_calibration], images[num_calibration:]
    agreement = TASKS[task][1]
    ref = None if agreement is None else model.predict(held, verbose=0)
    rows = []
    for target in ("fp32", *TARGETS):
        kwargs = {"quant": "fp32"} if target == "fp32" else {"target": target}
        path = os.path.join(folder, f"{case}_{target}.tflite")
        start = time.time()
        report = export_tflite(model, path, representative_data=calib, verify=False, **kwargs)
        row = {
            "case": case,
            "task": task,
            "model": variant,
            "size": size,
            "target": "(float)" if target == "fp32" else target,
            "quant": report.quant.value,
            "keep_float": list(report.keep_float),
            "path": path,
            "size_kib": report.file.size_bytes / 1024,
            "export_seconds": round(time.time() - start, 1),
            "delegates": report.delegates.to_dict(),
            "latency_ms": [],
        }
        if ref is not None:
            row.update(agreement(run_tflite(path, held), ref))
        rows.append(row)
        print(f"{case} {row['target']}: exported in {row['export_seconds']} s", flush=True)
    return rows


def time_rows(rows: list, rounds: int) -> None:
    """Latency of every file, files alternated, ``rounds`` rounds (fastest median)."""
    from quantization.benchmark import benchmark_tflite

    for _ in range(rounds):
        for row in rows:
            result = benchmark_tflite(row["path"], num_threads=2, warmup=5, runs=30)
            row["latency_ms"].append(result["median_ms"])
    for row in rows:
        row["best_ms"] = min(row["latency_ms"])
        base = next(r for r in rows if r["case"] == row["case"] and r["quant"] == "fp32")
        row["vs_fp32"] = row["best_ms"] / min(base["latency_ms"])


def table(rows: list) -> str:
    headers = ["model", "target", "file", "KiB", "ms (2 thr)", "x fp32", "agreement w/ float"]
    cells = []
    for r in rows:
        if "top1_agreement" in r:
            agree = f"top-1 {100 * r['top1_agreement']:.0f}%, cos {r['cosine']:.4f}"
        elif "mask_agreement" in r:
            agree = f"mask {100 * r['mask_agreement']:.1f}%"
        else:
            agree = "-"
        kind = r["quant"] + (f" + float {'/'.join(r['keep_float'])}" if r["keep_float"] else "")
        cells.append(
            [
                f"{r['model']} {r['size']}",
                r["target"],
                kind,
                C.fmt(r["size_kib"], ".0f"),
                C.fmt(r.get("best_ms"), ".1f"),
                C.fmt(r.get("vs_fp32"), ".2f"),
                agree,
            ]
        )
    return C.print_table("Which file to ship", headers, cells)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cases", default="cls_xxs,cls_050", help=f"comma-separated: {list(CASES)}")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--calibration-samples", type=int, default=32)
    p.add_argument("--eval-samples", type=int, default=16)
    p.add_argument("--output-dir", default=str(C.RESULTS_DIR))
    args = p.parse_args(argv)
    cases = args.cases.split(",")
    unknown = sorted(set(cases) - set(CASES))
    if unknown:
        p.error(f"unknown case(s) {unknown}; valid: {list(CASES)}")
    machine = C.machine_info()
    with tempfile.TemporaryDirectory() as folder:
        rows = []
        for case in cases:
            rows += export_case(case, folder, args.calibration_samples, args.eval_samples)
        machine["loadavg_timing"] = [round(v, 2) for v in os.getloadavg()]
        time_rows(rows, args.rounds)
    text = table(rows)
    for row in rows:
        row.pop("path")
    C.write_results(
        args.output_dir,
        "targets",
        {"cases": cases, "rows": rows, "table": text, "machine": machine},
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
