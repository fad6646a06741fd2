"""Prove that ``.tflite`` files run: load, allocate and invoke them in a SEPARATE process.

A bad int8 formulation does not raise: the LiteRT kernels' ``TFLITE_CHECK``s
abort the whole process in ``allocate_tensors`` (SIGABRT). So files are run by
``python -m quantization._verify_worker`` (numpy + LiteRT only, ~0.1 s start),
many files per process; when the process dies, the file it was on is marked
as crashed, the op that kills it is located by bisection over truncated
copies of the model (:func:`locate_crash`), and the remaining files run in a
fresh process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from typing import Optional

import numpy as np

from quantization.flatbuffer_edit import num_ops, truncated_model
from quantization.inspection import op_name, op_version, read_model, tensor_info


class RuntimeCrashError(RuntimeError):
    """A ``.tflite`` file aborts (or fails in) the LiteRT runtime."""


def _worker_env() -> dict:
    env = dict(os.environ)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def _run_job(job: dict, job_path: str, timeout: float):
    with open(job_path, "w", encoding="utf-8") as f:
        json.dump(job, f)
    proc = subprocess.run(
        [sys.executable, "-m", "quantization._verify_worker", job_path],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=_worker_env(),
    )
    started, done = None, {}
    for line in proc.stdout.splitlines():
        if line.startswith("START "):
            started = int(line.split()[1])
        elif line.startswith("DONE "):
            _, idx, payload = line.split(" ", 2)
            done[int(idx)] = json.loads(payload)
    return proc, started, done


def verify_in_subprocess(
    files: Sequence,
    *,
    images: Optional[Sequence[Optional[np.ndarray]]] = None,
    keep_outputs: bool = True,
    locate: bool = True,
    num_threads: Optional[int] = None,
    timeout: float = 900.0,
) -> list:
    """Run every file in a child process; one result dict per file.

    ``images[i]`` (float ``[N, H, W, C]``) is fed to file i (default: one random
    image). Result keys: ``ok``, ``crashed`` (process killed), ``error``,
    ``outputs`` (list of float arrays, with ``keep_outputs``), ``crash_op`` (the
    op at which a crashing file dies, with ``locate``), load / invoke seconds.
    """
    files = [os.fspath(f) for f in files]
    results: list = [None] * len(files)
    with tempfile.TemporaryDirectory(prefix="mvit3_verify_") as tmp:
        specs = []
        for i, path in enumerate(files):
            spec = {
                "path": os.path.abspath(path),
                "inputs": None,
                "outputs": None,
                "num_threads": num_threads,
            }
            if images is not None and images[i] is not None:
                spec["inputs"] = os.path.join(tmp, f"in{i}.npz")
                np.savez(spec["inputs"], images=np.asarray(images[i], dtype=np.float32))
            if keep_outputs:
                spec["outputs"] = os.path.join(tmp, f"out{i}.npz")
            specs.append(spec)
        start = 0
        while start < len(files):
            proc, started, done = _run_job(
                {"files": specs, "start": start}, os.path.join(tmp, "job.json"), timeout
            )
            for idx, res in done.items():
                results[idx] = dict(res, crashed=False)
            if proc.returncode == 0 and len(done) == len(files) - start:
                break
            crashed = started if started is not None and started not in done else start
            code = proc.returncode
            reason = f"signal {-code}" if code < 0 else f"exit code {code}"
            results[crashed] = {
                "ok": False,
                "crashed": True,
                "error": f"the runtime process died ({reason}) on {files[crashed]}; "
                f"stderr tail: {proc.stderr.strip()[-300:]}",
            }
            start = crashed + 1
        for i, spec in enumerate(specs):
            res = results[i]
            if (
                keep_outputs
                and res.get("ok")
                and spec["outputs"]
                and os.path.exists(spec["outputs"])
            ):
                with np.load(spec["outputs"]) as data:
                    res["outputs"] = [data[k] for k in sorted(data.files, key=lambda s: int(s[4:]))]
    if locate:
        for i, res in enumerate(results):
            if res.get("crashed"):
                res["crash_op"] = locate_crash(files[i], timeout=timeout)
    return results


def _runs(model_bytes: bytes, tmp: str, timeout: float) -> bool:
    path = os.path.join(tmp, "probe.tflite")
    with open(path, "wb") as f:
        f.write(model_bytes)
    proc, _, done = _run_job({"files": [{"path": path}]}, os.path.join(tmp, "probe.json"), timeout)
    return proc.returncode == 0 and bool(done.get(0, {}).get("ok"))


def locate_crash(path, *, timeout: float = 300.0) -> Optional[dict]:
    """The first op whose prefix model does not run (bisection), with its tensors'
    quantization parameters; ``None`` if the whole model runs."""
    total = num_ops(path)
    with tempfile.TemporaryDirectory(prefix="mvit3_bisect_") as tmp:
        if _runs(truncated_model(path, total), tmp, timeout):
            return None
        lo, hi = 0, total  # prefix of lo ops runs (0: trivially), prefix of hi ops fails
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if _runs(truncated_model(path, mid), tmp, timeout):
                lo = mid
            else:
                hi = mid
    model, _ = read_model(path)
    sg = model.subgraphs[0]
    op = sg.operators[hi - 1]
    return {
        "index": hi - 1,
        "op": op_name(model, op),
        "version": op_version(model, op),
        "inputs": [tensor_info(model, sg, t) for t in op.inputs if t >= 0],
        "outputs": [tensor_info(model, sg, t) for t in op.outputs],
    }


def describe_crash(crash_op: Optional[dict]) -> str:
    if not crash_op:
        return "the crashing op could not be isolated"

    def q(t):
        qp = t["quantization"]
        scale = qp["scale"] if qp and not isinstance(qp["scale"], list) else (qp or {}).get("scale")
        return f"{t['name']} {t['dtype']}{t['shape']} scale={scale}"

    ins = "; ".join(q(t) for t in crash_op["inputs"] if not t["constant"])
    outs = "; ".join(q(t) for t in crash_op["outputs"])
    return (
        f"op #{crash_op['index']} {crash_op['op']} v{crash_op['version']} "
        f"(inputs: {ins} -> outputs: {outs})"
    )


def verify_tflite(path, images: Optional[np.ndarray] = None, **kwargs) -> dict:
    """Run one file in a child process; raise :class:`RuntimeCrashError` if it fails."""
    (result,) = verify_in_subprocess([path], images=[images], **kwargs)
    if not result.get("ok"):
        detail = describe_crash(result.get("crash_op")) if result.get("crashed") else ""
        raise RuntimeCrashError(
            f"{os.fspath(path)} does not run in LiteRT: {result.get('error')}"
            + (f"\n  crashing op: {detail}" if detail else "")
        )
    return result
