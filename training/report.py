"""Run outputs for people: the final summary table, ``summary.json`` and the
training-curve plot (``training_curves.png``)."""

from __future__ import annotations

import json
import os

from mvit3_keras.io_utils import atomic_path, atomic_write_text


def format_table(rows: list, title: str = "") -> str:
    width = max(len(str(k)) for k, _ in rows) if rows else 10
    lines = [title, "-" * max(len(title), width + 20)] if title else []
    for key, value in rows:
        if isinstance(value, float):
            value = f"{value:.4f}" if abs(value) < 1000 else f"{value:,.1f}"
        lines.append(f"{str(key):<{width}}  {value}")
    return "\n".join(lines)


def summary_rows(summary: dict, metric: str) -> list:
    """The rows of the final table printed by ``mvit3 train``."""
    nan = float("nan")
    epochs = summary["epochs_run"]
    if summary.get("resumed_from_epoch"):
        epochs = f"{epochs} (resumed after {summary['resumed_from_epoch']})"
    best = summary.get("best") or {}
    rows = [
        ("model", summary["model"]),
        ("dataset", summary["dataset"]),
        ("recipe", summary["recipe"]),
        ("epochs", epochs),
        ("global batch", summary["global_batch"]),
        ("strategy", summary["strategy"]),
        (
            f"final val {metric} ({summary['weights_evaluated']} weights, final.keras)",
            summary["final"].get(metric, nan),
        ),
    ]
    if summary.get("final_raw"):
        rows.append(
            (f"final val {metric} (raw weights, backup)", summary["final_raw"].get(metric, nan))
        )
    rows.append(("final val loss", summary["final"].get("loss", nan)))
    rows.append(
        (
            f"best val {metric} (best.keras)",
            f"{best.get('value', nan):.4f} ({best.get('weights', '-')} weights, "
            f"epoch {best.get('epoch', '-')})",
        )
    )
    ema = summary.get("ema") or {}
    if ema.get("enable"):
        warm = "timm warm-up" if ema.get("warmup") else "no warm-up"
        rows.append(
            (
                "EMA decay",
                f"{ema['decay']:g} ({warm}; {ema['decay_at_last_step']:.4f} at the last step)",
            )
        )
    rows += [
        ("wall time (all epochs)", f"{summary['wall_time_s']:.1f} s"),
        ("output", summary["files"]["final_model"].rsplit("/", 1)[0]),
    ]
    return rows


def write_summary(path: str, summary: dict) -> None:
    atomic_write_text(path, json.dumps(summary, indent=2, default=str))


def plot_curves(rows: list, path: str, metric: str) -> str | None:
    """Loss, the checkpoint metric and the learning rate per epoch -> PNG."""
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [int(r["epoch"]) + 1 for r in rows]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for key, style in (("loss", "-"), ("val_loss", "--")):
        if any(key in r for r in rows):
            axes[0].plot(epochs, [r.get(key, float("nan")) for r in rows], style, label=key)
    axes[0].set_title("loss")
    for key, style in ((metric, "-"), (f"val_{metric}", "--"), (f"val_{metric}_raw", ":")):
        if any(key in r for r in rows):
            axes[1].plot(epochs, [r.get(key, float("nan")) for r in rows], style, label=key)
    axes[1].set_title(metric + " (val: EMA weights; val_*_raw: raw weights)")
    if any("learning_rate" in r for r in rows):
        axes[2].plot(epochs, [r.get("learning_rate", float("nan")) for r in rows])
    axes[2].set_title("learning rate (end of epoch)")
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=90)
    plt.close(fig)
    return path
