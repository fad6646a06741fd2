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


def summarize(directory) -> str:
    rows = []
    for name, label in (("inference", "all cores"), ("inference_1thread", "1 thread each")):
        inf = _load(directory, name)
        if not inf:
            continue
        ratios = [r["ratio_best"] for r in inf["rows"] if r["batch"] >= 32 and r["ratio_best"]]
        met = all(r >= 1.2 for r in ratios) if ratios else None
        rows.append(
            [
                f"Keras float inference >= 1.2x timm, batch 32 ({label})",
                f"{len(ratios)} pairs",
                _fmt_ratio(ratios),
                C.verdict(met),
            ]
        )
        r1 = [r["ratio_best"] for r in inf["rows"] if r["batch"] == 1 and r["ratio_best"]]
        if r1:
            rows.append([f"(batch 1, {label}; no target)", f"{len(r1)} pairs", _fmt_ratio(r1), ""])
    tfl = _load(directory, "tflite_latency")
    if tfl:
        two = [r for r in tfl["rows"] if r.get("threads") == 2 and r.get("latency")]
        v = [r["best_int8_vs_fp32"] for r in two if r.get("best_int8_vs_fp32")]
        rows.append(
            [
                "TFLite int8 (best int8 file) <= 0.5x TFLite fp32 (batch 1, 2 threads)",
                f"{len(v)} variants",
                _fmt_ratio(v),
                C.verdict(all(x <= 0.5 for x in v) if v else None),
            ]
        )
        v = [r["best_int8_vs_ort"] for r in two if r.get("best_int8_vs_ort")]
        rows.append(
            [
                "TFLite int8 <= 0.67x ONNX Runtime fp32 (timm twin)",
                f"{len(v)} variants",
                _fmt_ratio(v),
                C.verdict(all(x <= 0.67 for x in v) if v else None),
            ]
        )
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
    tr = _load(directory, "training_step")
    if tr:
        ratios = [r["ratio"] for r in tr["rows"] if r.get("ratio")]
        rows.append(
            [
                "Training step >= 1.0x PyTorch, batch 32",
                f"{len(ratios)} configs",
                _fmt_ratio(ratios),
                C.verdict(all(x >= 1.0 for x in ratios) if ratios else None),
            ]
        )
        mem = [
            r["ours"]["peak_rss_mib"] / r["peer"]["peak_rss_mib"] for r in tr["rows"] if "peer" in r
        ]
        rows.append(
            [
                "Training peak RSS <= PyTorch's",
                f"{len(mem)} configs",
                _fmt_ratio(mem),
                C.verdict(all(x <= 1.0 for x in mem) if mem else None),
            ]
        )
    ip = _load(directory, "input_pipeline")
    if ip:
        v = [r["pipeline_over_step"] for r in ip.get("rows", []) if r.get("pipeline_over_step")]
        rows.append(
            [
                "Input pipeline >= 3x training step (benchmarks/input_pipeline.py)",
                f"{len(v)} recipes",
                _fmt_ratio(v),
                C.verdict(all(x >= 3 for x in v) if v else None),
            ]
        )
    return C.print_table(
        "Speed targets (ratios: ours / peer; latency ratios: int8 / reference)",
        ["target", "measured on", "measured", "verdict"],
        rows,
    )


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
