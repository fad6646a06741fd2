"""Shared helpers of the benchmark scripts: model pairs, statistics, tables, JSON.

Measurement rules (all scripts):

* ours and the peer run in separate processes (:mod:`benchmarks.worker`) and are
  timed in interleaved rounds (one side, then the other, in rotating order), so
  load from other processes on the machine hits both alike; the figure of a
  configuration is the median over all its timed calls, and the comparison is
  the ratio of the two medians;
* each result file carries the machine description and the load average at
  the start and end of the run;
* files are written atomically (:func:`mvit3_keras.io_utils.atomic_write_text`).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH_DIR = ROOT / "benchmarks"
RESULTS_DIR = BENCH_DIR / "results"
PEER_VENV = BENCH_DIR / ".peer-venv"

if str(ROOT) not in sys.path:  # scripts run as ``python benchmarks/x.py``
    sys.path.insert(0, str(ROOT))

# timm's exact equivalents of our baselines (same architecture, same parameter count).
TIMM_EXACT = {
    "mobilevit_xxs": "mobilevit_xxs",
    "mobilevit_xs": "mobilevit_xs",
    "mobilevit_s": "mobilevit_s",
    **{
        f"mobilevitv2_{w}": f"mobilevitv2_{w}"
        for w in ("050", "075", "100", "125", "150", "175", "200")
    },
}

# The timm model of the same family for each MobileViTv3 variant (v3 changes the
# block, so parameter counts differ; the v3 paper compares against these).
TIMM_FAMILY = {
    "mobilevitv3_xxs": "mobilevit_xxs",
    "mobilevitv3_xs": "mobilevit_xs",
    "mobilevitv3_s": "mobilevit_s",
    "mobilevitv3_xxs_l2": "mobilevit_xxs",
    "mobilevitv3_xs_l2": "mobilevit_xs",
    "mobilevitv3_s_l2": "mobilevit_s",
    **{
        f"mobilevitv3_{w}": f"mobilevitv2_{w}"
        for w in ("050", "075", "100", "125", "150", "175", "200")
    },
}

V3_VARIANTS = tuple(TIMM_FAMILY)


def timm_peer(ours: str) -> str | None:
    """timm model compared with our variant ``ours`` (exact twin or same family)."""
    return TIMM_EXACT.get(ours) or TIMM_FAMILY.get(ours)


def parse_pairs(text: str) -> list[tuple[str, str | None]]:
    """``"ours[:timm],..."`` -> ``[(ours, timm_or_None)]`` (default peer from the tables)."""
    from mvit3_keras.registry import list_models

    known = set(list_models())
    pairs = []
    for item in filter(None, (s.strip() for s in text.split(","))):
        ours, _, peer = item.partition(":")
        if ours not in known:
            raise SystemExit(
                f"unknown model {ours!r}: choose from {', '.join(sorted(known))} "
                "(mvit3 list shows the table)"
            )
        pairs.append((ours, peer or timm_peer(ours)))
    return pairs


def base_parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument(
        "--smoke",
        action="store_true",
        help="tiny run of our side only (small model, small images, one round): checks the script",
    )
    p.add_argument("--output-dir", type=Path, default=RESULTS_DIR, help="where <name>.json goes")
    p.add_argument(
        "--peer-python",
        default=None,
        help="python of the peer env (timm, torch, onnxruntime); default benchmarks/.peer-venv, "
        "'none' to measure our side only",
    )
    p.add_argument("--rounds", type=int, default=None, help="interleaved rounds per configuration")
    return p


def peer_python(arg: str | None) -> str | None:
    """The peer interpreter, or None (with a printed reason) when there is none."""
    if arg == "none":
        return None
    candidate = arg or os.environ.get("MVIT3_PEER_PYTHON") or str(PEER_VENV / "bin" / "python")
    if not os.path.isfile(candidate):
        print(
            f"[peer] no peer python at {candidate}: measuring our side only "
            "(bash benchmarks/run_all.sh creates benchmarks/.peer-venv)",
            flush=True,
        )
        return None
    return candidate


def keras_worker(smoke: bool, *, label: str = "ours", threads: int | None = None):
    """Our Keras worker: in this process for ``--smoke`` runs, else a child process."""
    from benchmarks.worker import LocalWorker, SubprocessWorker

    if smoke:
        return LocalWorker("keras", label="ours")
    return SubprocessWorker("keras", label=label, threads=threads)


def peer_worker(python: str | None, *, label: str = "peer", **kwargs):
    """The peer's worker (timm / PyTorch / ONNX Runtime) under ``python``; None without one."""
    from benchmarks.worker import SubprocessWorker

    return SubprocessWorker("timm", python, label=label, **kwargs) if python else None


class Workers:
    """The two sides of a run: ``ours`` and ``peer`` (None: our side only).

    ``with Workers(ours, peer) as w:`` closes both at the end, also an ``ours``
    that :meth:`fresh_ours` replaced during the run.
    """

    def __init__(self, ours, peer=None):
        self.ours, self.peer = ours, peer

    def fresh_ours(self, threads: int | None = None):
        """Replace ``ours`` by a new child process (TF keeps freed memory, compiled XLA
        clusters and a crashed runtime's state in its process)."""
        self.ours.close()
        self.ours = keras_worker(False, threads=threads)
        return self.ours

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.ours.close()
        if self.peer is not None:
            self.peer.close()


# glibc malloc settings that keep PyTorch's large activation buffers in the heap instead of
# mmap/munmap-ing them on every call (page-fault storms at batch 32: ~2x slower eager
# inference on this machine). The inference benchmark gives the peer these by default
# (the stricter comparison); ``--peer-malloc default`` measures stock PyTorch.
TUNED_MALLOC_ENV = {
    "MALLOC_MMAP_THRESHOLD_": "17179869184",
    "MALLOC_TRIM_THRESHOLD_": "17179869184",
}


def median(values) -> float:
    values = [float(v) for v in values]
    return statistics.median(values) if values else float("nan")


def spread(values) -> float:
    """Relative interquartile spread of the timings (noise indicator)."""
    values = sorted(float(v) for v in values)
    if len(values) < 4:
        return float("nan") if not values else (values[-1] - values[0]) / max(median(values), 1e-12)
    q = statistics.quantiles(values, n=4)
    return (q[2] - q[0]) / max(median(values), 1e-12)


def interleave(entries: dict, rounds: int, runner) -> dict:
    """Run ``runner(key)`` -> list of seconds for each key, ``rounds`` times, rotating order.

    Returns ``{key: [seconds, ...]}`` with all timed calls of all rounds.
    """
    keys = list(entries)
    out = {k: [] for k in keys}
    for r in range(rounds):
        order = keys[r % len(keys) :] + keys[: r % len(keys)] if keys else []
        for key in order:
            out[key].extend(runner(key))
    return out


def logit_agreement(out, ref) -> dict:
    """Agreement of a file's logits ``out`` with the float model's ``ref``: mean cosine
    similarity and top-1 agreement."""
    import numpy as np

    from quantization.verify import cosine_similarity

    return {
        "top1_agreement": float(np.mean(out.argmax(-1) == ref.argmax(-1))),
        "cosine": float(cosine_similarity(out, ref).mean()),
    }


def machine_info() -> dict:
    info = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "processor": _cpu_model(),
        "cpu_isa": cpu_isa(),
        "loadavg_start": _loadavg(),
        "time_start": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    try:
        import psutil

        info["memory_gib"] = round(psutil.virtual_memory().total / 2**30, 1)
    except ImportError:  # pragma: no cover
        pass
    return info


# The instruction sets that decide XNNPACK's kernels: int8 GEMMs are only faster than
# float ones where the CPU has an int8 dot product (VNNI on x86, dotprod / i8mm on Arm).
ISA_FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "amx_int8")
ARM_ISA_FLAGS = ("asimddp", "i8mm", "sve", "sve2")


def cpu_isa() -> list:
    """The :data:`ISA_FLAGS` / :data:`ARM_ISA_FLAGS` this CPU reports in /proc/cpuinfo."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    flags = set(line.split(":", 1)[1].split())
                    return [f for f in (*ISA_FLAGS, *ARM_ISA_FLAGS) if f in flags]
    except OSError:  # pragma: no cover
        pass
    return []


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:  # pragma: no cover
        pass
    return platform.processor()


def _loadavg():
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:  # pragma: no cover
        return None


def write_results(output_dir: Path, name: str, payload: dict, *, quiet: bool = False) -> Path:
    """Write ``<output_dir>/<name>.json`` atomically and return its path."""
    from mvit3_keras.io_utils import atomic_write_text

    payload = dict(payload)
    meta = dict(payload.get("machine") or {})
    meta["loadavg_end"] = _loadavg()
    meta["time_end"] = time.strftime("%Y-%m-%dT%H:%M:%S")
    payload["machine"] = meta
    path = Path(output_dir) / f"{name}.json"
    atomic_write_text(
        path, json.dumps(payload, indent=2, sort_keys=False, default=_json_default) + "\n"
    )
    if not quiet:
        print(f"wrote {path}", flush=True)
    return path


def _json_default(value):
    try:
        import numpy as np

        if isinstance(value, np.generic):
            return value.item()
        if isinstance(value, np.ndarray):
            return value.tolist()
    except ImportError:  # pragma: no cover
        pass
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value)!r}")


def fmt(value, spec: str = ".1f", missing: str = "-") -> str:
    if value is None or (isinstance(value, float) and value != value):
        return missing
    return format(value, spec)


def print_table(title: str, headers: list[str], rows: list[list]) -> str:
    """Print (and return) a Markdown table."""
    cells = [[str(c) for c in row] for row in rows]
    widths = [
        max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)
    ]
    lines = [f"\n### {title}", ""]
    lines.append("| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths)) + " |")
    lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in cells:
        lines.append("| " + " | ".join(c.rjust(w) for c, w in zip(row, widths)) + " |")
    text = "\n".join(lines)
    print(text, flush=True)
    return text


def percent(part: float, whole: float) -> str:
    return f"{100 * part / whole:.1f}%"


def write_tables(output_dir: Path, name: str, payload: dict, tables: list[str]) -> Path:
    """Write ``payload`` with its printed ``tables`` (``payload["table"]``) as ``<name>.json``."""
    payload["table"] = "\n".join(tables)
    return write_results(output_dir, name, payload)


def verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("MET" if ok else "MISSED")
