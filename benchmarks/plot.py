"""Plot latency vs MACs of every measured variant (``results/latency_vs_macs.png``) and
how close to this machine's limits they run (``results/limits_and_scaling.png``).

Left: float inference at batch 32 (filled) and 1 (hollow), ms per image, from ``inference.json`` - our
``tf.function`` of ``optimize_for_inference(model)`` for every variant measured, and the timm models (best
PyTorch layout) at the MACs of their twin. Right: LiteRT batch-1 latency at 2
threads from ``tflite_latency.json`` (fp32, int8, QAT-int8, ONNX Runtime fp32 on
the timm equivalent). MACs: our counter's official figure (ml-cvnets rules).

``limits_and_scaling.png``, left: each variant's LiteRT MAC rate as a fraction of
this machine's measured fp32 and int8 peaks (``variant_latency.json``); right: batch-1
latency vs input size, log-log, Keras and LiteRT, with the fitted growth exponents
(``scaling.json``).

    python benchmarks/plot.py [--output-dir benchmarks/results]
"""

from __future__ import annotations

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import common as C  # noqa: E402

# (marker, colour, legend label) of each series
FAMILY_STYLES = {
    "v3": ("o", "tab:blue", "ours MobileViTv3"),
    "baseline": ("s", "tab:green", "ours v1/v2 baselines"),
}
TFLITE_STYLES = {
    "fp32": ("o", "tab:blue", "LiteRT fp32"),
    "int8": ("^", "tab:orange", "LiteRT int8 (PTQ)"),
    "int8_cpu": ("d", "tab:olive", "LiteRT int8, float attention/norm"),
    "qat": ("v", "tab:purple", "LiteRT QAT-int8"),
    "ort_fp32": ("x", "tab:red", "ONNX Runtime fp32 (timm)"),
}


def _load(path):
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def series_inference(data, batch=1):
    ours, peer = {}, {}
    for r in (data or {}).get("rows", []):
        if r["batch"] != batch:
            continue
        res = r["results"]
        family = "v3" if r["model"].startswith("mobilevitv3") else "baseline"
        variant = "optimized" if "optimized" in res else "graph"
        if variant in res:
            ours.setdefault(family, []).append(
                (r["macs_official"], res[variant]["ms_per_image"], r["model"])
            )
        best = [res[v]["ms_per_image"] for v in ("nchw", "channels_last") if v in res]
        if best and r.get("timm"):
            peer[r["timm"]] = (
                r["macs_official"] if r.get("same_network") else None,
                min(best),
                r["timm"],
            )
    # timm points sit at their own MACs: the twin's (exact pairs) only.
    return ours, [v for v in peer.values() if v[0] is not None]


def series_tflite(data, threads=2):
    out = {}
    for r in (data or {}).get("rows", []):
        if r["threads"] != threads:
            continue
        for q, lat in r["latency"].items():
            out.setdefault(q, []).append((r["macs_official"], lat["median_ms"], r["model"]))
    return out


def _two_panels(output_dir, sources: tuple, panels: tuple, filename: str) -> str | None:
    """One figure of two panels: ``panels[i](axis, data of sources[i])`` (a JSON of
    ``output_dir``, ``None`` when absent), written as ``filename``; ``None`` when no
    source exists."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = [_load(os.path.join(output_dir, name)) for name in sources]
    if all(d is None for d in data):
        print(f"[plot] no {' / '.join(sources)} in {output_dir}: no {filename}")
        return None
    fig, axes = plt.subplots(1, 2, figsize=(14, 5.5))
    for axis, draw, values in zip(axes, panels, data):
        draw(axis, values)
    machine = next(d for d in data if d is not None).get("machine", {})
    fig.suptitle(
        f"mvit3-keras benchmarks - {machine.get('processor', '')}, "
        f"{machine.get('cpu_count', '?')} cores",
        fontsize=10,
    )
    fig.tight_layout()
    return _save(fig, output_dir, filename)


def plot(output_dir) -> str | None:
    """``latency_vs_macs.png`` from ``inference.json`` and ``tflite_latency.json``."""
    sources = ("inference.json", "tflite_latency.json")
    panels = (_plot_inference, _plot_tflite)
    return _two_panels(output_dir, sources, panels, "latency_vs_macs.png")


def plot_limits(output_dir) -> str | None:
    """``limits_and_scaling.png`` from ``variant_latency.json`` and ``scaling.json``."""
    sources = ("variant_latency.json", "scaling.json")
    panels = (_plot_peak_fractions, _plot_scaling)
    return _two_panels(output_dir, sources, panels, "limits_and_scaling.png")


def _plot_peak_fractions(ax, variants) -> None:
    """Left: % of the measured fp32 / int8 LiteRT peak per variant and file."""
    rows = (variants or {}).get("rows", [])
    kinds = (("fp32", "fp32 file / fp32 peak"), ("cpu", "default int8 / int8 peak"))
    kinds += (("npu", "full-integer / int8 peak"),)
    width = 0.8 / len(kinds)
    for i, (kind, label) in enumerate(kinds):
        xs = [j + (i - 1) * width for j in range(len(rows))]
        ax.bar(xs, [100 * r[f"{kind}_fraction_of_peak"] for r in rows], width, label=label)
    ax.set_xticks(range(len(rows)))
    ax.set_xticklabels([r["model"].replace("mobilevit", "mv") for r in rows], rotation=60)
    ax.axhline(40, color="gray", linestyle="--", linewidth=1)
    peak = (variants or {}).get("peak", {}).get("macs_per_s", {})
    ax.set_ylabel("% of this machine's measured LiteRT peak")
    ax.set_title(
        "LiteRT batch 1: MAC rate vs peak "
        f"(fp32 {peak.get('fp32', 0) / 1e9:.0f}, int8 {peak.get('int8', 0) / 1e9:.0f} GMAC/s)"
    )
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=8)


def _plot_scaling(ax, scaling) -> None:
    """Right: latency vs pixels (log-log) per model and runtime, exponents in the legend."""
    for name, entry in (scaling or {}).get("results", {}).items():
        pixels = [r["size"] ** 2 for r in entry["rows"]]
        for runtime, marker in (("keras", "o-"), ("litert", "s--")):
            k = entry["fits"][f"{runtime}_ms"]
            ax.loglog(
                pixels,
                [r[f"{runtime}_ms"] for r in entry["rows"]],
                marker,
                label=f"{name} {runtime}: k={k['all_sizes']:.2f} (top two {k['largest_two']:.2f})",
            )
    _decorate(ax, "pixels (input size squared)", "ms, batch 1, 2 threads")
    ax.set_title("Latency ~ pixels^k (v1-family attention: quadratic in patches)")


def _plot_inference(ax, inf) -> None:
    """Left: float inference, ours per family and the timm twins, batch 32 and 1."""
    for batch, fill in ((32, "full"), (1, "none")):
        ours, peer = series_inference(inf, batch)
        for family, pts in ours.items():
            marker, color, label = FAMILY_STYLES[family]
            pts.sort()
            ax.plot(
                [p[0] / 1e6 for p in pts],
                [p[1] for p in pts],
                marker,
                color=color,
                fillstyle=fill,
                label=f"{label}, optimize_for_inference, batch {batch}",
            )
            if batch == 32:
                for x, y, name in pts:
                    ax.annotate(
                        name.replace("mobilevit", "mv"),
                        (x / 1e6, y),
                        fontsize=7,
                        xytext=(3, 3),
                        textcoords="offset points",
                    )
        if peer:
            ax.plot(
                [p[0] / 1e6 for p in peer],
                [p[1] for p in peer],
                "x" if batch == 32 else "+",
                color="tab:red",
                markersize=9,
                label=f"timm twin (PyTorch eager, best layout), batch {batch}",
            )
    _decorate(ax, "MACs per image (official count), M", "ms per image", legend_size=7)
    ax.set_title("Float inference on this CPU")


def _plot_tflite(ax, tfl) -> None:
    """Right: LiteRT batch-1 latency at 2 threads per file type, and ONNX Runtime."""
    for q, pts in series_tflite(tfl).items():
        marker, color, label = TFLITE_STYLES.get(q, ("d", "gray", q))
        pts.sort()
        ax.plot([p[0] / 1e6 for p in pts], [p[1] for p in pts], marker, color=color, label=label)
    _decorate(ax, "MACs per image (official count, our variant), M", "ms, batch 1, 2 threads")
    ax.set_title("TFLite / LiteRT (XNNPACK) vs ONNX Runtime")


def _decorate(ax, xlabel, ylabel, legend_size=8) -> None:
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=legend_size)


def _save(fig, output_dir, filename: str) -> str:
    """Write ``filename`` atomically and close the figure."""
    import matplotlib.pyplot as plt

    from mvit3_keras.io_utils import atomic_path

    path = os.path.join(output_dir, filename)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)
    print(f"wrote {path}")
    return path


def main(argv=None) -> int:
    import argparse

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--output-dir", default=str(C.RESULTS_DIR))
    args = p.parse_args(argv)
    plot(args.output_dir)
    plot_limits(args.output_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
