"""Prove that ``.tflite`` files run: load, allocate and invoke them in a SEPARATE process.

A bad int8 formulation does not raise: the LiteRT kernels' ``TFLITE_CHECK``s
abort the whole process in ``allocate_tensors`` (SIGABRT). So files are run by
``python -m quantization._verify_worker`` (numpy + LiteRT only, ~0.1 s start),
many files per process; when the process dies, the file it was on is marked
as crashed, the op that kills it is located by bisection over truncated
copies of the model (:func:`locate_crash`), and the remaining files run in a
fresh process. :func:`verify_tflite` checks one file (or flatbuffer bytes) and
returns a typed :class:`VerifyResult`, compared with reference outputs when given.
"""

from __future__ import annotations

import dataclasses
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


def run_worker(module: str, job: dict, job_path: str, timeout: float):
    """Write ``job`` to ``job_path`` and run ``python -m module job_path`` (numpy + LiteRT
    or an app runtime, with this repository on ``sys.path``); the finished process."""
    with open(job_path, "w", encoding="utf-8") as f:
        json.dump(job, f)
    env = dict(os.environ)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    env.setdefault("GLOG_minloglevel", "2")  # MediaPipe's graph start-up lines
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return subprocess.run(
        [sys.executable, "-m", module, job_path],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


def _run_job(job: dict, job_path: str, timeout: float):
    proc = run_worker("quantization._verify_worker", job, job_path, timeout)
    started, done = None, {}
    for line in proc.stdout.splitlines():
        if line.startswith("START "):
            started = int(line.split()[1])
        elif line.startswith("DONE "):
            _, idx, payload = line.split(" ", 2)
            done[int(idx)] = json.loads(payload)
    return proc, started, done


def _job_specs(files: list, images, keep_outputs: bool, num_threads, tmp: str) -> list:
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
    return specs


def _run_all(files: list, specs: list, tmp: str, timeout: float) -> list:
    """One result per file; a process that dies marks its current file as crashed and
    the remaining files run in a fresh process."""
    results: list = [None] * len(files)
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
    return results


def _load_outputs(result: dict, spec: dict) -> None:
    if result.get("ok") and spec["outputs"] and os.path.exists(spec["outputs"]):
        with np.load(spec["outputs"]) as data:
            result["outputs"] = [data[k] for k in sorted(data.files, key=lambda s: int(s[4:]))]


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
    with tempfile.TemporaryDirectory(prefix="mvit3_verify_") as tmp:
        specs = _job_specs(files, images, keep_outputs, num_threads, tmp)
        results = _run_all(files, specs, tmp, timeout)
        if keep_outputs:
            for result, spec in zip(results, specs):
                _load_outputs(result, spec)
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


def cosine_similarity(a, b) -> np.ndarray:
    """Row-wise cosine of ``[N, ...]`` arrays (flattened per row)."""
    a = np.asarray(a, np.float64).reshape(len(a), -1)
    b = np.asarray(b, np.float64).reshape(len(b), -1)
    denom = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return np.where(denom > 0, (a * b).sum(1) / np.maximum(denom, 1e-30), 1.0)


@dataclasses.dataclass(frozen=True)
class VerifyResult:
    """A file loaded, allocated and invoked in a separate LiteRT process.

    The comparison fields are set when reference outputs were given (the first
    output is compared): float outputs get the cosine and the largest absolute
    difference, integer outputs (an in-model argmax mask) the agreement.
    """

    backend: str
    num_images: int
    invoke_seconds: float
    separate_process: bool = True
    cosine_vs_float_mean: Optional[float] = None
    cosine_vs_float_min: Optional[float] = None
    max_abs_diff_vs_float: Optional[float] = None
    agreement_vs_float: Optional[float] = None
    outputs: tuple = dataclasses.field(default=(), repr=False, compare=False)

    def to_dict(self) -> dict:
        """The set fields, JSON-serialisable (without the output arrays)."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out.pop("outputs")
        return {k: v for k, v in out.items() if v is not None}


def _comparison(output: np.ndarray, reference: np.ndarray) -> dict:
    reference = np.asarray(reference)
    if output.shape != reference.shape:
        raise ValueError(
            f"reference_outputs[0] has shape {reference.shape} but the file outputs "
            f"{output.shape}: pass the reference model's outputs on the same images"
        )
    if np.issubdtype(reference.dtype, np.integer):  # e.g. an in-model argmax mask
        return {"agreement_vs_float": float(np.mean(output == reference))}
    cos = cosine_similarity(output, reference)
    return {
        "cosine_vs_float_mean": float(cos.mean()),
        "cosine_vs_float_min": float(cos.min()),
        "max_abs_diff_vs_float": float(np.max(np.abs(output - reference))),
    }


def _run_source(source, images, kwargs) -> tuple:
    """``(result dict, name)``; bytes run from a temporary file."""
    if not isinstance(source, (bytes, bytearray)):
        (result,) = verify_in_subprocess([source], images=[images], **kwargs)
        return result, os.fspath(source)
    with tempfile.TemporaryDirectory(prefix="mvit3_verify_bytes_") as tmp:
        path = os.path.join(tmp, "model.tflite")
        with open(path, "wb") as f:
            f.write(bytes(source))
        (result,) = verify_in_subprocess([path], images=[images], **kwargs)
    return result, "the model"


def verify_tflite(
    source, images: Optional[np.ndarray] = None, reference_outputs=None, **kwargs
) -> VerifyResult:
    """Run ``source`` (a ``.tflite`` path, e.g. an existing file, or flatbuffer bytes)
    on ``images`` (default: one random image) in a child process.

    ``reference_outputs``: outputs of the reference model on the same images (an
    array or a list per output); the first one is compared. ``kwargs`` go to
    :func:`verify_in_subprocess` (``locate``, ``num_threads``, ``timeout``).
    Raises :class:`RuntimeCrashError` if the file does not load, allocate and run.
    """
    result, name = _run_source(source, images, kwargs)
    if not result.get("ok"):
        detail = describe_crash(result.get("crash_op")) if result.get("crashed") else ""
        raise RuntimeCrashError(
            f"{name} does not run in LiteRT: {result.get('error')}"
            + (f"\n  crashing op: {detail}" if detail else "")
        )
    outputs = tuple(result.get("outputs") or ())
    comparison = {}
    if reference_outputs is not None and outputs:
        if not isinstance(reference_outputs, (list, tuple)):
            reference_outputs = [reference_outputs]
        comparison = _comparison(outputs[0], reference_outputs[0])
    num_images = 1 if images is None else len(images)
    return VerifyResult(
        backend=result["backend"],
        num_images=int(num_images),
        invoke_seconds=result["invoke_seconds"],
        outputs=outputs,
        **comparison,
    )
