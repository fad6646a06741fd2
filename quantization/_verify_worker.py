"""Subprocess side of :mod:`quantization.verify` (imports numpy + LiteRT only).

``python -m quantization._verify_worker JOB.json``: JOB lists ``files`` (each
``{"path", "inputs": NPZ or null, "outputs": NPZ or null}``). For each file it
prints ``START i`` before loading and ``DONE i {json}`` after load, allocate and
invoke, flushing stdout, so the parent knows which file killed the process
if the runtime aborts (SIGABRT is not a Python exception).
"""

from __future__ import annotations

import json
import sys
import time

import numpy as np


def _run_one(spec: dict) -> dict:
    from quantization.runtime import TFLiteRunner

    start = time.perf_counter()
    runner = TFLiteRunner(spec["path"], num_threads=spec.get("num_threads"))
    loaded = time.perf_counter()
    if spec.get("inputs"):
        images = np.load(spec["inputs"])["images"]
    else:
        rng = np.random.default_rng(0)
        images = rng.random((1, *runner.input_shape[1:]), dtype=np.float32)
    outputs = runner(images)
    outputs = outputs if isinstance(outputs, list) else [outputs]
    if spec.get("outputs"):
        np.savez(spec["outputs"], *outputs)
    finite = all(bool(np.all(np.isfinite(o))) for o in outputs)
    return {
        "backend": runner.backend,
        "input": {
            "shape": list(runner.input_shape),
            "dtype": str(runner.inputs[0]["dtype"].__name__),
        },
        "output_shapes": [list(o.shape) for o in outputs],
        "finite": finite,
        "load_seconds": round(loaded - start, 4),
        "invoke_seconds": round(time.perf_counter() - loaded, 4),
    }


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    with open(argv[0], encoding="utf-8") as f:
        job = json.load(f)
    first = int(job.get("start", 0))
    for i, spec in enumerate(job["files"]):
        if i < first:
            continue
        print(f"START {i}", flush=True)
        try:
            result = {"ok": True, **_run_one(spec)}
        except Exception as err:  # noqa: BLE001 - reported to the parent
            result = {"ok": False, "error": f"{type(err).__name__}: {err}"}
        print(f"DONE {i} {json.dumps(result)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
