"""What of a ``.tflite`` file runs on which delegate: :func:`delegate_report`.

* XNNPACK (LiteRT's default CPU delegate), read from the runtime itself: the file
  is loaded with XNNPACK in a separate process (``python -m
  quantization.delegates FILE``, numpy + LiteRT only, so a file that aborts the
  runtime cannot take the caller down) and the interpreter's node list is read.
  Delegating appends one ``DELEGATE`` node per partition, whose inputs / outputs
  are the partition's boundary tensors; the model ops inside a partition are the
  ones reached backwards from its outputs without crossing its inputs. The ops
  left outside run in TFLite's builtin kernels, and each one splits the graph.
* The GPU delegate, static: TF Lite's analyzer
  (``tf.lite.experimental.Analyzer.analyze(gpu_compatibility=True)``) is run and
  its ``GPU COMPATIBILITY WARNING`` lines are read, but since TF 2.18 its check is
  a no-op (tensorflow/tensorflow#77042: every model "looks compatible", Flex ops
  included), so the op rules of ``tensorflow/lite/tools/versioning/
  gpu_compatibility.cc`` (:data:`GPU_OPS` and the type / rank checks of
  :func:`gpu_op_problem`) are applied too. No GPU here: nothing is run.
* The Edge TPU: :class:`quantization.edgetpu.EdgeTPUSummary` of the published
  constraints (integer files only; a float file does not map at all).
"""

from __future__ import annotations

import collections
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
from typing import Optional

# Builtin ops the GPU delegate takes (the switch of CheckGpuDelegateCompatibility in
# tensorflow/lite/tools/versioning/gpu_compatibility.cc).
GPU_OPS = frozenset(
    "ABS ADD ADD_N ATAN2 AVERAGE_POOL_2D BATCH_MATMUL CAST CEIL CONCATENATION CONV_2D COS "
    "CUMSUM DENSIFY DEPTHWISE_CONV_2D DEPTH_TO_SPACE DEQUANTIZE DIV DYNAMIC_UPDATE_SLICE "
    "ELU EMBEDDING_LOOKUP EQUAL EXP FLOOR FLOOR_DIV FLOOR_MOD FULLY_CONNECTED GATHER GELU "
    "GREATER GREATER_EQUAL HARD_SWISH LEAKY_RELU LESS LESS_EQUAL LOG LOGICAL_AND LOGISTIC "
    "LSTM MAXIMUM MAX_POOL_2D MEAN MINIMUM MIRROR_PAD MUL NEG NOT_EQUAL ONE_HOT PACK PAD "
    "PADV2 POW PRELU QUANTIZE REDUCE_MAX REDUCE_MIN REDUCE_PROD RELU RELU6 RELU_N1_TO_1 "
    "RESHAPE RESIZE_BILINEAR RESIZE_NEAREST_NEIGHBOR RSQRT SELECT SELECT_V2 SIGN SIN SLICE "
    "SOFTMAX SPACE_TO_DEPTH SPLIT SPLIT_V SQRT SQUARE SQUARED_DIFFERENCE STABLEHLO_CLAMP "
    "STRIDED_SLICE SUB SUM TANH TILE TRANSPOSE TRANSPOSE_CONV".split()
)
GPU_CUSTOM_OPS = frozenset(
    ("Convolution2DTransposeBias", "MaxPoolingWithArgmax2D", "MaxUnpooling2D", "Resampler")
)
_GPU_CASTS = {
    ("bool", "float16"),
    ("bool", "float32"),
    ("float16", "bool"),
    ("float32", "bool"),
    ("float32", "int32"),
    ("int32", "float32"),
    ("float32", "float32"),
    ("int32", "int32"),
}


def gpu_op_problem(op: dict) -> Optional[str]:
    """Why the GPU delegate refuses ``op`` (an op of
    :func:`quantization.inspection.inspect_tflite`), or ``None``."""
    name = op["op"]
    if name.startswith("CUSTOM:"):
        custom = name.split(":", 1)[1]
        return None if custom in GPU_CUSTOM_OPS else f"Not supported custom op {custom}"
    if name not in GPU_OPS:
        return f"Not supported op {name}"
    inputs, outputs = op["inputs"], op["outputs"]
    if name == "CAST" and (inputs[0]["dtype"], outputs[0]["dtype"]) not in _GPU_CASTS:
        return f"Not supported Cast case: {inputs[0]['dtype']} -> {outputs[0]['dtype']}"
    if name in ("SLICE", "STRIDED_SLICE", "PAD", "PADV2", "MIRROR_PAD"):
        if len(inputs[0]["shape"] or []) not in (3, 4):
            return f"{name} supports 3- or 4-dimensional tensors only"
    if name == "GATHER" and (inputs[0]["dtype"] == "int32" or len(inputs[1]["shape"]) != 1):
        return "GATHER takes non-int32 data and 1-D indices only"
    if name == "DEQUANTIZE" and inputs[0]["dtype"] == "int16":
        return "Unsupported dequantization type int16"
    if name == "FULLY_CONNECTED" and inputs[0]["constant"]:
        return "FullyConnected doesn't support constant input"
    return None


def analyzer_gpu_warnings(flatbuffer: bytes) -> dict:
    """``{op index: message}`` of the ``GPU COMPATIBILITY WARNING`` lines of TF Lite's
    analyzer (empty with TensorFlow >= 2.18, whose check is a no-op)."""
    import contextlib
    import io

    import tensorflow as tf

    text = io.StringIO()
    with contextlib.redirect_stdout(text):
        tf.lite.experimental.Analyzer.analyze(model_content=flatbuffer, gpu_compatibility=True)
    warnings, current = {}, None
    for line in text.getvalue().splitlines():
        stripped = line.strip()
        if stripped.startswith("Op#"):
            current = int(stripped[3:].split(" ", 1)[0])
        elif stripped.startswith("GPU COMPATIBILITY WARNING: ") and "Subgraph#" not in stripped:
            if current is not None:
                warnings[current] = stripped.split(": ", 1)[1]
        elif stripped.startswith("Tensors of"):
            current = None
    return warnings


@dataclasses.dataclass(frozen=True)
class GpuReport:
    """GPU delegate compatibility: ``num_ops`` ops, ``incompatible`` ones as
    ``{"index", "op", "reason"}`` (they and what follows run on the CPU)."""

    num_ops: int
    incompatible: tuple
    method: str

    @property
    def compatible(self) -> bool:
        return not self.incompatible

    def to_dict(self) -> dict:
        return {
            "num_ops": self.num_ops,
            "num_incompatible": len(self.incompatible),
            "incompatible": list(self.incompatible),
            "method": self.method,
        }


def gpu_report(flatbuffer: bytes, ops: Optional[list] = None) -> GpuReport:
    """:class:`GpuReport` of ``flatbuffer`` (``ops``: its op list, when inspected)."""
    if ops is None:
        from quantization.inspection import inspect_tflite

        ops = inspect_tflite(flatbuffer).ops
    reasons = analyzer_gpu_warnings(flatbuffer)
    incompatible = []
    for op in ops:
        reason = reasons.get(op["index"]) or gpu_op_problem(op)
        if reason:
            incompatible.append({"index": op["index"], "op": op["op"], "reason": reason})
    method = (
        "TF Lite analyzer (gpu_compatibility=True)"
        if reasons
        else "op rules of tensorflow/lite/tools/versioning/gpu_compatibility.cc (the "
        "installed analyzer's GPU check is a no-op)"
    )
    return GpuReport(num_ops=len(ops), incompatible=tuple(incompatible), method=method)


def xnnpack_partitions(model, *, num_threads: int = 2) -> dict:
    """XNNPACK's partitioning of ``model`` (path or bytes), read from the LiteRT
    interpreter in this process: ``num_ops``, ``delegated_ops``, ``partitions`` and
    ``outside`` (``[{"op", "dtype", "count"}]`` of the ops left to builtin kernels)."""
    from quantization.runtime import interpreter_ops, load_interpreter

    interpreter = load_interpreter(model, num_threads=num_threads)
    nodes = interpreter_ops(interpreter)
    delegates = [n for n in nodes if n["op_name"] == "DELEGATE"]
    ops = {n["index"]: n for n in nodes if n["op_name"] != "DELEGATE"}
    producer = {int(t): i for i, n in ops.items() for t in n["outputs"]}
    inside = set()
    for node in delegates:
        boundary = {int(t) for t in node["inputs"]}
        stack = [int(t) for t in node["outputs"]]
        while stack:
            tensor = stack.pop()
            index = producer.get(tensor)
            if tensor in boundary or index is None or index in inside:
                continue
            inside.add(index)
            stack.extend(int(t) for t in ops[index]["inputs"] if t >= 0)
    outside = collections.Counter(
        (n["op_name"], n["result_types"][0].__name__ if n["result_types"] else "")
        for i, n in ops.items()
        if i not in inside
    )
    return {
        "num_ops": len(ops),
        "delegated_ops": len(inside),
        "partitions": len(delegates),
        "outside": [
            {"op": op, "dtype": dtype, "count": count}
            for (op, dtype), count in outside.most_common()
        ],
    }


def xnnpack_report(flatbuffer: bytes, *, timeout: float = 300.0) -> dict:
    """:func:`xnnpack_partitions` run in a separate process; a runtime abort gives
    ``{"error": ...}`` instead of killing the caller."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "model.tflite")
        with open(path, "wb") as f:
            f.write(flatbuffer)
        proc = subprocess.run(
            [sys.executable, "-m", "quantization.delegates", path],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode < 0:
        return {"error": f"LiteRT died (signal {-proc.returncode}) loading the file with XNNPACK"}
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or "").strip().splitlines()[-1:] or [f"exit code {proc.returncode}"]
        return {"error": f"the XNNPACK run failed: {tail[0]}"}
    return json.loads(lines[-1])


@dataclasses.dataclass(frozen=True)
class DelegateReport:
    """Per delegate, what of the file runs there: ``xnnpack`` (:func:`xnnpack_report`),
    ``gpu`` (:class:`GpuReport`), ``edgetpu``
    (:class:`quantization.edgetpu.EdgeTPUSummary`; ``None`` for a float file)."""

    xnnpack: dict
    gpu: GpuReport
    edgetpu: Optional[object] = None

    def to_dict(self) -> dict:
        return {
            "xnnpack": dict(self.xnnpack),
            "gpu": self.gpu.to_dict(),
            "edgetpu": None if self.edgetpu is None else self.edgetpu.to_dict(),
        }

    def format(self) -> str:
        """Three lines: XNNPACK, GPU delegate, Edge TPU."""
        x = self.xnnpack
        if "error" in x:
            lines = [f"XNNPACK: {x['error']}"]
        else:
            rest = ", ".join(f"{o['op']} {o['dtype']} x{o['count']}" for o in x["outside"][:6])
            lines = [
                f"XNNPACK: {x['delegated_ops']}/{x['num_ops']} ops in {x['partitions']} "
                f"partition(s)" + (f"; builtin kernels: {rest}" if rest else "")
            ]
        g = self.gpu
        bad = collections.Counter(o["op"] for o in g.incompatible)
        lines.append(
            f"GPU delegate: {g.num_ops - len(g.incompatible)}/{g.num_ops} ops compatible"
            + (f"; not: {', '.join(f'{k} x{v}' for k, v in bad.items())}" if bad else "")
        )
        e = self.edgetpu
        if e is None:
            lines.append("Edge TPU: float file, nothing maps (it runs 8-bit models only)")
        else:
            first = e.first_cpu_op
            lines.append(
                f"Edge TPU: {100 * e.mapped_op_share:.1f}% of ops, "
                f"{100 * e.mapped_mac_share:.1f}% of MACs mappable"
                + ("" if first is None else f"; first CPU op: #{first['index']} {first['op']}")
            )
        return "\n".join(lines)


def delegate_report(flatbuffer: bytes, *, integer: bool, ops: Optional[list] = None):
    """The :class:`DelegateReport` of ``flatbuffer`` (``integer``: an int8 file, for
    which the Edge TPU view is computed)."""
    edgetpu = None
    if integer:
        from quantization.edgetpu import EdgeTPUSummary, edgetpu_report

        edgetpu = EdgeTPUSummary.from_report(edgetpu_report(flatbuffer))
    return DelegateReport(
        xnnpack=xnnpack_report(flatbuffer), gpu=gpu_report(flatbuffer, ops), edgetpu=edgetpu
    )


def main(argv=None) -> int:
    """``python -m quantization.delegates FILE.tflite``: the XNNPACK partitioning as JSON."""
    argv = sys.argv[1:] if argv is None else argv
    print(json.dumps(xnnpack_partitions(argv[0])), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
