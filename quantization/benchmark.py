"""Latency of a ``.tflite`` file in LiteRT (XNNPACK on CPU): ``mvit3 benchmark``.

:func:`benchmark_tflite` times ``invoke()`` after warm-up runs and reports the
median, p90, mean and min in milliseconds. :func:`profile_ops` gives a per-op
profile: every op is cut out into a one-op model
(:func:`quantization.flatbuffer_edit.single_op_model`) and timed alone with the
same interpreter settings, which is what the LiteRT Python API allows (it has
no op-level profiler); the per-op times therefore exclude inter-op cache
effects and their sum is close to, not equal to, the whole-model latency.
"""

from __future__ import annotations

import collections
import os
import time
from typing import Optional

import numpy as np

from quantization.runtime import load_interpreter, quantize_input


def _fill_inputs(interpreter, rng):
    for detail in interpreter.get_input_details():
        shape = tuple(int(v) for v in detail["shape"])
        x = rng.random(shape, dtype=np.float32)
        interpreter.set_tensor(detail["index"], quantize_input(x, detail))


def _time_invokes(interpreter, warmup: int, runs: int, max_seconds: Optional[float]) -> list:
    for _ in range(max(0, warmup)):
        interpreter.invoke()
    times = []
    start = time.perf_counter()
    for _ in range(max(1, runs)):
        t0 = time.perf_counter()
        interpreter.invoke()
        times.append((time.perf_counter() - t0) * 1e3)
        if (
            max_seconds is not None
            and time.perf_counter() - start > max_seconds
            and len(times) >= 5
        ):
            break
    return times


def benchmark_tflite(
    model,
    *,
    num_threads: int = 2,
    warmup: int = 10,
    runs: int = 50,
    max_seconds: Optional[float] = 60.0,
    use_xnnpack: bool = True,
) -> dict:
    """Latency statistics (ms) of ``model`` (path or bytes) on random inputs."""
    interpreter = load_interpreter(model, num_threads=num_threads, use_xnnpack=use_xnnpack)
    _fill_inputs(interpreter, np.random.default_rng(0))
    times = np.asarray(_time_invokes(interpreter, warmup, runs, max_seconds))
    size = len(model) if isinstance(model, (bytes, bytearray)) else os.path.getsize(model)
    return {
        "model": "<bytes>" if isinstance(model, (bytes, bytearray)) else os.fspath(model),
        "size_bytes": int(size),
        "num_threads": int(num_threads),
        "xnnpack": bool(use_xnnpack),
        "runtime": interpreter.mvit3_backend,
        "warmup": int(warmup),
        "runs": int(len(times)),
        "median_ms": float(np.median(times)),
        "p90_ms": float(np.percentile(times, 90)),
        "mean_ms": float(times.mean()),
        "min_ms": float(times.min()),
    }


def profile_ops(
    model,
    *,
    num_threads: int = 2,
    warmup: int = 3,
    runs: int = 10,
    use_xnnpack: bool = True,
) -> dict:
    """Per-op latency (ms, median of ``runs``) of every op, and totals by op type."""
    from quantization.flatbuffer_edit import single_op_model
    from quantization.inspection import inspect_tflite

    report = inspect_tflite(model)
    rng = np.random.default_rng(0)
    rows = []
    for op in report.ops:
        data = single_op_model(model, op["index"])
        try:
            interpreter = load_interpreter(data, num_threads=num_threads, use_xnnpack=use_xnnpack)
            _fill_inputs(interpreter, rng)
            ms = float(np.median(_time_invokes(interpreter, warmup, runs, None)))
        except (RuntimeError, ValueError) as err:  # an op that cannot run alone
            ms, note = float("nan"), str(err)[:80]
        else:
            note = ""
        rows.append(
            {
                "index": op["index"],
                "op": op["op"],
                "ms": ms,
                "macs": op["macs"],
                "output": op["outputs"][0]["name"] if op["outputs"] else "",
                "dtype": op["outputs"][0]["dtype"] if op["outputs"] else "",
                "note": note,
            }
        )
    by_type = collections.defaultdict(lambda: {"count": 0, "ms": 0.0, "macs": 0})
    for r in rows:
        entry = by_type[r["op"]]
        entry["count"] += 1
        entry["ms"] += 0.0 if np.isnan(r["ms"]) else r["ms"]
        entry["macs"] += r["macs"]
    total = sum(v["ms"] for v in by_type.values())
    ordered = dict(sorted(by_type.items(), key=lambda kv: -kv[1]["ms"]))
    for v in ordered.values():
        v["share"] = v["ms"] / total if total else 0.0
    return {"ops": rows, "by_type": ordered, "sum_ms": total}


def format_benchmark(result: dict) -> str:
    return (
        f"{os.path.basename(result['model'])}: median {result['median_ms']:.2f} ms, "
        f"p90 {result['p90_ms']:.2f} ms, min {result['min_ms']:.2f} ms over {result['runs']} "
        f"runs ({result['warmup']} warm-up), {result['num_threads']} thread(s), "
        f"XNNPACK {'on' if result['xnnpack'] else 'off'}, {result['size_bytes'] / 1024:.0f} KiB"
    )


def format_profile(profile: dict, top: int = 12) -> str:
    lines = [f"{'op type':<22s} {'count':>5s} {'ms':>9s} {'share':>6s} {'MMACs':>8s}"]
    for name, v in list(profile["by_type"].items())[:top]:
        lines.append(
            f"{name:<22s} {v['count']:>5d} {v['ms']:>9.3f} {100 * v['share']:>5.1f}% "
            f"{v['macs'] / 1e6:>8.2f}"
        )
    lines.append(f"sum of per-op medians: {profile['sum_ms']:.2f} ms")
    return "\n".join(lines)
