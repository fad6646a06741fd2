"""The speed targets, read from ``benchmarks/results/*.json``: measured ratio and verdict.

python benchmarks/summary.py            # Markdown, also written to results/summary.md
"""

from __future__ import annotations

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import common as C  # noqa: E402


def _load(directory, name):
    path = os.path.join(directory, f"{name}.json")
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _fmt_ratio(values):
    if not values:
        return "-"
    lo, hi = min(values), max(values)
    return f"{lo:.2f}x" if abs(hi - lo) < 0.005 else f"{lo:.2f}x .. {hi:.2f}x"


def _target_row(target, values, unit, met, data=None) -> list:
    """A table row: the target, how many ``unit`` were measured (and when: the date of
    ``data``, the benchmark's JSON), the range, the verdict (``met(value)`` for every
    value; n/a without values)."""
    when = ((data or {}).get("machine") or {}).get("time_start", "")[:10]
    return [
        target,
        f"{len(values)} {unit}" + (f", {when}" if when else ""),
        _fmt_ratio(values),
        C.verdict(all(met(x) for x in values) if values else None),
    ]


def summarize(directory) -> str:
    rows = [
        *_inference_rows(directory),
        *_tflite_rows(_load(directory, "tflite_latency")),
        *_variant_rows(_load(directory, "variant_latency")),
        *_onnx_rows(_load(directory, "litert_vs_onnx")),
        *_training_rows(_load(directory, "training_step")),
        *_pipeline_rows(_load(directory, "input_pipeline")),
    ]
    return C.print_table(
        "Speed targets (ratios: ours / peer; latency ratios: int8 / reference)",
        ["target", "measured on", "measured", "verdict"],
        rows,
    )


def _inference_rows(directory) -> list:
    rows = []
    runs = (
        ("inference", "all cores"),
        ("inference_1thread", "1 thread each"),
        ("inference_batch1", "all cores"),  # --batches 1 runs, --output-dir renamed
        ("inference_batch1_1thread", "1 thread each"),
    )
    for name, label in runs:
        inf = _load(directory, name)
        if not inf:
            continue
        ratios = [r["ratio_best"] for r in inf["rows"] if r["batch"] >= 32 and r["ratio_best"]]
        target = f"Keras float inference >= 1.2x timm, batch 32 ({label})"
        if ratios:
            rows.append(_target_row(target, ratios, "pairs", lambda x: x >= 1.2, data=inf))
        r1 = [r["ratio_best"] for r in inf["rows"] if r["batch"] == 1 and r["ratio_best"]]
        target = f"Keras float batch-1 speed >= timm's ({label})"
        rows.append(_target_row(target, r1, "pairs", lambda x: x >= 1.0, data=inf))
    return rows


def _tflite_rows(tfl) -> list:
    if not tfl:
        return []
    two = [r for r in tfl["rows"] if r.get("threads") == 2 and r.get("latency")]
    vs_fp32 = [r["best_int8_vs_fp32"] for r in two if r.get("best_int8_vs_fp32")]
    vs_ort = [r["best_int8_vs_ort"] for r in two if r.get("best_int8_vs_ort")]
    rows = [
        _target_row(
            "TFLite int8 (best int8 file) <= 0.5x TFLite fp32 (batch 1, 2 threads)",
            vs_fp32,
            "variants",
            lambda x: x <= 0.5,
            data=tfl,
        ),
        _target_row(
            "TFLite int8 <= 0.67x ONNX Runtime fp32 (timm twin)",
            vs_ort,
            "variants",
            lambda x: x <= 0.67,
            data=tfl,
        ),
    ]
    failed = sorted(
        {
            f"{r['model']} {q}"
            for r in tfl["rows"]
            for q, info in (r.get("files") or {}).items()
            if "error" in info
        }
    )
    if failed:
        rows.append(["(exports that failed)", ", ".join(failed), "", ""])
    return rows


def _variant_rows(vl) -> list:
    """benchmarks/variant_latency.py: default int8 vs fp32 for every variant, % of peak."""
    if not vl:
        return []
    rows = vl["rows"]
    peak = vl["peak"]["macs_per_s"]
    v3 = [r for r in rows if r["model"].startswith("mobilevitv3")]
    isa = ",".join(vl["machine"].get("cpu_isa") or ["?"])
    return [
        _target_row(
            f"Default int8 (target cpu) <= 0.5x fp32, LiteRT (CPU: {isa}; int8 / fp32 "
            f"conv peak {peak['int8'] / peak['fp32']:.2f})",
            [r["cpu_vs_fp32"] for r in rows],
            "variants",
            lambda x: x <= 0.5,
            data=vl,
        ),
        [
            "(full-integer file, target npu, on the CPU; no target)",
            f"{len(rows)} variants",
            _fmt_ratio([r["npu_vs_fp32"] for r in rows]),
            "",
        ],
        *(
            _target_row(
                f"LiteRT {kernel} >= 40% of the LiteRT {kernel} peak (MobileViTv3)",
                [r[f"{kind}_fraction_of_peak"] for r in v3],
                "variants",
                lambda x: x >= 0.4,
                data=vl,
            )
            for kernel, kind in (("fp32", "fp32"), ("int8", "cpu"))
        ),
    ]


def _onnx_rows(lo) -> list:
    """tflite_latency.py --baselines: LiteRT fp32 / ONNX Runtime fp32, same network."""
    if not lo:
        return []
    rows = []
    for threads in (2, 1):
        ratios = [
            r["fp32_vs_ort"]
            for r in lo["rows"]
            if r.get("threads") == threads and r.get("same_network") and r.get("fp32_vs_ort")
        ]
        rows.append(
            _target_row(
                f"LiteRT fp32 latency <= ONNX Runtime fp32, same network ({threads} thr)",
                ratios,
                "baselines",
                lambda x: x <= 1.0,
                data=lo,
            )
        )
    return rows


def _training_rows(tr) -> list:
    if not tr:
        return []
    ratios = [r["ratio"] for r in tr["rows"] if r.get("ratio")]
    mem = [r["ours"]["peak_rss_mib"] / r["peer"]["peak_rss_mib"] for r in tr["rows"] if "peer" in r]
    return [
        _target_row(
            "Training step >= 1.0x PyTorch, batch 32",
            ratios,
            "configs",
            lambda x: x >= 1.0,
            data=tr,
        ),
        _target_row("Training peak RSS <= PyTorch's", mem, "configs", lambda x: x <= 1.0, data=tr),
    ]


def _pipeline_rows(ip) -> list:
    if not ip:
        return []
    v = [r["pipeline_over_step"] for r in ip.get("rows", []) if r.get("pipeline_over_step")]
    target = "Input pipeline >= 3x training step (benchmarks/input_pipeline.py)"
    return [_target_row(target, v, "recipes", lambda x: x >= 3, data=ip)]


def main(argv=None) -> int:
    import argparse

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--output-dir", default=str(C.RESULTS_DIR))
    args = p.parse_args(argv)
    text = summarize(args.output_dir)
    from mvit3_keras.io_utils import atomic_write_text

    atomic_write_text(os.path.join(args.output_dir, "summary.md"), text.strip() + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
