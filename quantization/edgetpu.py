"""Edge TPU mappability of a ``.tflite`` file, op by op (``mvit3 edgetpu-report``).

The Edge TPU compiler cannot be installed here, so this module checks a file
against the published constraints of "TensorFlow models on the Edge TPU"
(coral.ai/docs/edgetpu/models-intro, "Model requirements" and "Supported
operations", compiler / runtime version 14+):

* tensors are 8-bit quantized (int8 / uint8), sizes are constant at compile time,
  parameters (e.g. biases) are constant;
* tensors are 1-, 2- or 3-dimensional; a tensor with more dimensions may have
  size > 1 only in its 3 innermost dimensions;
* only the listed operations, with their "known limitations" (see
  :data:`SUPPORTED_OPS`);
* the compiler partitions the graph once: the first op that cannot run on the
  Edge TPU and everything after it run on the CPU, even supported ops
  (documented behaviour).

Op versions: the last compiler release (16.0) is built on TensorFlow Lite 2.5
(an assumption stated here, not a documented fact); op versions that TensorFlow
Lite introduced after 2.5 (``tensorflow/lite/tools/versioning/runtime_version.cc``)
are reported as "operation version not supported", the message the compiler
prints for them.

If ``edgetpu_compiler`` is on PATH, :func:`run_edgetpu_compiler` runs it and its
log is parsed; the report then carries both views.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import subprocess
import tempfile
from typing import Optional

from quantization.inspection import iter_ops, op_macs, op_name, op_version, read_model, tensor_info

MAX_TFLITE_RUNTIME = (2, 5, 0)

# Op -> (first TFLite runtime version of each op version) for the versions that
# int8 exports produce; from runtime_version.cc. Versions after MAX_TFLITE_RUNTIME
# are rejected.
OP_VERSION_RUNTIME = {
    "ADD": {1: "1.5.0", 2: "1.14.0", 3: "2.4.0", 4: "2.6.0"},
    "AVERAGE_POOL_2D": {1: "1.5.0", 2: "1.14.0", 3: "2.3.0"},
    "CONCATENATION": {1: "1.5.0", 2: "1.14.0", 3: "2.3.0"},
    "CONV_2D": {1: "1.5.0", 2: "1.14.0", 3: "1.14.0", 4: "2.3.0", 5: "2.4.0", 6: "2.9.0"},
    "DEPTHWISE_CONV_2D": {1: "1.5.0", 2: "1.12.0", 3: "1.14.0", 4: "2.2.0", 5: "2.3.0", 6: "2.3.0"},
    "FULLY_CONNECTED": {
        1: "1.5.0",
        2: "1.10.0",
        3: "1.14.0",
        4: "1.14.0",
        5: "2.0.0",
        6: "2.1.0",
        7: "2.3.0",
        8: "2.3.0",
        9: "2.3.0",
    },
    "LOGISTIC": {1: "1.14.0", 2: "1.14.0", 3: "2.3.0"},
    "MAX_POOL_2D": {1: "1.5.0", 2: "1.14.0", 3: "2.3.0"},
    "MEAN": {1: "1.6.0", 2: "1.14.0", 3: "2.4.0"},
    "MUL": {1: "1.5.0", 2: "1.14.0", 3: "1.15.0", 4: "2.3.0", 5: "2.6.0"},
    "PAD": {1: "1.5.0", 2: "1.14.0", 3: "2.4.0", 4: "2.6.0"},
    "QUANTIZE": {1: "1.14.0", 2: "1.15.0", 3: "2.7.0"},
    "RELU": {1: "1.5.0", 2: "2.1.0", 3: "2.5.0"},
    "RESHAPE": {1: "1.5.0"},
    "RESIZE_BILINEAR": {1: "1.7.0", 2: "1.14.0", 3: "2.2.0", 4: "2.5.0"},
    "RSQRT": {1: "1.10.0", 2: "2.5.0"},
    "SOFTMAX": {1: "1.5.0", 2: "1.14.0", 3: "2.3.0"},
    "SPACE_TO_DEPTH": {1: "1.5.0", 2: "1.14.0"},
    "STRIDED_SLICE": {1: "1.6.0", 2: "1.14.0", 3: "2.1.0", 4: "2.2.0", 5: "2.5.0", 6: "2.6.0"},
    "SUB": {1: "1.6.0", 2: "1.14.0", 3: "2.3.0", 4: "2.4.0", 5: "2.4.0"},
    "SUM": {1: "1.10.0", 2: "1.15.0"},
    "TRANSPOSE": {1: "1.6.0", 2: "1.14.0", 3: "1.15.0", 4: "2.3.0", 5: "2.4.0"},
    "SQUARED_DIFFERENCE": {1: "1.13.1", 2: "2.5.0"},
}


def _non_unit(shape) -> list:
    return [d for d in shape if d != 1]


def _fused_activation(op) -> int:
    return int(getattr(op.builtinOptions, "fusedActivationFunction", 0) or 0)


def _reduction_axes(model, sg, op) -> list:
    axes_tensor = sg.tensors[op.inputs[1]]
    data = model.buffers[axes_tensor.buffer].data
    if data is None:
        return []
    import numpy as np

    axes = np.frombuffer(bytes(np.asarray(data, dtype=np.uint8)), dtype=np.int32)
    rank = len(sg.tensors[op.inputs[0]].shape)
    return sorted({int(a) % rank for a in axes})


def _check_reduction(model, sg, op, *, z_multiple_of_4: bool) -> Optional[str]:
    axes = _reduction_axes(model, sg, op)
    shape = [int(d) for d in sg.tensors[op.inputs[0]].shape]
    if 0 in axes and shape[0] != 1:
        return "reduction over the batch dimension"
    if z_multiple_of_4 and len(shape) - 1 in axes and shape[-1] % 4:
        return f"z-reduction over {shape[-1]} channels (must be a multiple of 4)"
    return None


def _check_fc(model, sg, op) -> Optional[str]:
    out = [int(d) for d in sg.tensors[op.outputs[0]].shape]
    if len(_non_unit(out)) > 1:
        return f"output {out} is not one-dimensional (use a 1x1 CONV_2D)"
    return None


def _check_softmax(model, sg, op) -> Optional[str]:
    shape = [int(d) for d in sg.tensors[op.inputs[0]].shape]
    if len(_non_unit(shape)) > 1:
        return f"input {shape} is not a 1-D tensor"
    n = 1
    for d in shape:
        n *= int(d)
    if n > 16000:
        return f"input has {n} elements (max 16,000)"
    return None


def _check_no_fused(model, sg, op) -> Optional[str]:
    return "fused activation function" if _fused_activation(op) else None


def _check_concat(model, sg, op) -> Optional[str]:
    if _fused_activation(op):
        return "fused activation function"
    from quantization.inspection import is_constant

    consts = [t for t in op.inputs if t >= 0 and is_constant(model, sg, t)]
    if consts and len(op.inputs) != 2:
        return "constant input with more than 2 inputs"
    return None


def _check_pad(model, sg, op) -> Optional[str]:
    import numpy as np

    data = model.buffers[sg.tensors[op.inputs[1]].buffer].data
    if data is not None:
        pads = np.frombuffer(bytes(np.asarray(data, np.uint8)), dtype=np.int32).reshape(-1, 2)
        if pads[0].any():
            return "padding in the batch dimension"
    return None


def _check_resize(model, sg, op) -> Optional[str]:
    for t in (op.inputs[0], op.outputs[0]):
        shape = [int(d) for d in sg.tensors[t].shape]
        if len(shape) == 4 and shape[0] != 1:
            return f"tensor {shape} is not 3-dimensional (batch > 1)"
    return None


def _check_strided_slice(model, sg, op) -> Optional[str]:
    import numpy as np

    options = op.builtinOptions
    if getattr(options, "ellipsisMask", 0) or getattr(options, "newAxisMask", 0):
        return "ellipsis / new-axis mask"
    data = model.buffers[sg.tensors[op.inputs[3]].buffer].data
    if data is not None:
        strides = np.frombuffer(bytes(np.asarray(data, np.uint8)), dtype=np.int32)
        if np.any(strides != 1):
            return f"strides {strides.tolist()} (all strides must be 1)"
    return None


def _check_conv(model, sg, op) -> Optional[str]:
    options = op.builtinOptions
    dh = getattr(options, "dilationHFactor", 1)
    dw = getattr(options, "dilationWFactor", 1)
    if dh != dw:
        return f"different dilation in y and x ({dh}, {dw})"
    return None


def _check_batch_axis_op(model, sg, op) -> Optional[str]:
    options = op.builtinOptions
    axis = getattr(options, "axis", None)
    if axis == 0:
        return "operates on the batch dimension"
    return None


# name -> (documented limitation, checker or None)
SUPPORTED_OPS = {
    "ADD": ("", None),
    "AVERAGE_POOL_2D": ("No fused activation function.", _check_no_fused),
    "CONCATENATION": (
        "No fused activation function. A compile-time constant input must be the only other "
        "input and all zeroes.",
        _check_concat,
    ),
    "CONV_2D": ("Must use the same dilation in x and y dimensions.", _check_conv),
    "DEPTHWISE_CONV_2D": ("Must use the same dilation in x and y dimensions.", _check_conv),
    "EXPAND_DIMS": ("", None),
    "FULLY_CONNECTED": (
        "Only the default format is supported for fully-connected weights. Output tensor is "
        "one-dimensional.",
        _check_fc,
    ),
    "L2_NORMALIZATION": ("", None),
    "LOGISTIC": ("", None),
    "LSTM": ("Unidirectional LSTM only.", None),
    "MAXIMUM": ("", None),
    "MAX_POOL_2D": ("No fused activation function.", _check_no_fused),
    "MEAN": (
        "No reduction in batch dimension. If a z-reduction, the z-dimension must be multiple of 4.",
        lambda m, s, o: _check_reduction(m, s, o, z_multiple_of_4=True),
    ),
    "MINIMUM": ("", None),
    "MUL": ("", None),
    "PACK": ("No packing in batch dimension.", _check_batch_axis_op),
    "PAD": ("No padding in batch dimension.", _check_pad),
    "PRELU": ("Alpha must be 1-dimensional.", None),
    "QUANTIZE": ("", None),
    "REDUCE_MAX": (
        "Cannot operate on the batch dimension.",
        lambda m, s, o: _check_reduction(m, s, o, z_multiple_of_4=False),
    ),
    "REDUCE_MIN": (
        "Cannot operate on the batch dimension.",
        lambda m, s, o: _check_reduction(m, s, o, z_multiple_of_4=False),
    ),
    "RELU": ("", None),
    "RELU6": ("", None),
    "RELU_N1_TO_1": ("", None),
    "RESHAPE": ("Certain reshapes might not be mapped for large tensor sizes.", None),
    "RESIZE_BILINEAR": (
        "Input/output is a 3-dimensional tensor. Depending on input/output size, this "
        "operation may not be mapped to the Edge TPU to avoid loss in precision.",
        _check_resize,
    ),
    "RESIZE_NEAREST_NEIGHBOR": (
        "Input/output is a 3-dimensional tensor. Depending on input/output size, this "
        "operation may not be mapped to the Edge TPU to avoid loss in precision.",
        _check_resize,
    ),
    "RSQRT": ("", None),
    "SLICE": ("", None),
    "SOFTMAX": ("Supports only 1-D input tensor with a max of 16,000 elements.", _check_softmax),
    "SPACE_TO_DEPTH": ("", None),
    "SPLIT": ("No splitting in batch dimension.", None),
    "SQUARED_DIFFERENCE": ("", None),
    "SQUEEZE": ("", None),
    "STRIDED_SLICE": (
        "Supported only when all strides are equal to 1, with ellipsis-axis-mask == 0 and "
        "new-axis-mask == 0.",
        _check_strided_slice,
    ),
    "SUB": ("", None),
    "SUM": (
        "Cannot operate on the batch dimension.",
        lambda m, s, o: _check_reduction(m, s, o, z_multiple_of_4=False),
    ),
    "TANH": ("", None),
    "TRANSPOSE": ("", None),
    "TRANSPOSE_CONV": ("", None),
}

# Ops whose mapping depends on sizes the documentation does not quantify.
CONDITIONAL_OPS = ("RESHAPE", "RESIZE_BILINEAR", "RESIZE_NEAREST_NEIGHBOR")


def _version_tuple(text: str) -> tuple:
    return tuple(int(v) for v in text.split("."))


def check_op(model, sg, op) -> list:
    """Reasons why ``op`` cannot run on the Edge TPU (empty list: it can)."""
    name = op_name(model, op)
    reasons = []
    if name not in SUPPORTED_OPS:
        return [f"{name} is not a supported Edge TPU operation"]
    version = op_version(model, op)
    introduced = OP_VERSION_RUNTIME.get(name, {}).get(version)
    if introduced and _version_tuple(introduced) > MAX_TFLITE_RUNTIME:
        reasons.append(f"operation version {version} not supported (TFLite {introduced})")
    for t in list(op.inputs) + list(op.outputs):
        if t < 0:
            continue
        info = tensor_info(model, sg, t)
        if info["constant"]:
            if info["dtype"] in ("float32", "float16"):
                reasons.append(f"float constant {info['name']!r}")
            continue
        if info["dtype"] not in ("int8", "uint8") and not (name == "QUANTIZE" and t in op.inputs):
            reasons.append(f"tensor {info['name']!r} is {info['dtype']}, not 8-bit quantized")
        if info["shape_signature"] and any(v < 0 for v in info["shape_signature"]):
            reasons.append(f"tensor {info['name']!r} has a dynamic shape")
        shape = info["shape"]
        if len(shape) > 3 and any(d != 1 for d in shape[:-3]):
            reasons.append(f"tensor {info['name']!r} {shape}: more than 3 dimensions with size > 1")
    checker = SUPPORTED_OPS[name][1]
    if checker is not None:
        problem = checker(model, sg, op)
        if problem:
            reasons.append(problem)
    return reasons


def edgetpu_report(source) -> dict:
    """Op-by-op Edge TPU check of a ``.tflite`` (path or bytes).

    Returns ``ops`` (index, op, version, supported, reasons, on_edgetpu, macs),
    ``first_cpu_op`` (the op where the compiler's single partition ends),
    ``mapped_op_share`` / ``mapped_mac_share`` (ops and MACs before it),
    ``supported_op_share`` (ops meeting the constraints anywhere in the graph),
    ``conditional_ops`` and, when ``edgetpu_compiler`` is on PATH, ``compiler``.
    """
    model, _ = read_model(source)
    ops, first_cpu = [], None
    total_macs = mapped_macs = 0
    for i, sg, op in iter_ops(model):
        reasons = check_op(model, sg, op)
        name = op_name(model, op)
        macs = op_macs(model, sg, op)
        total_macs += macs
        supported = not reasons
        if not supported and first_cpu is None:
            first_cpu = {
                "index": i,
                "op": name,
                "version": op_version(model, op),
                "output": tensor_info(model, sg, op.outputs[0])["name"],
                "reasons": reasons,
            }
        on_tpu = supported and first_cpu is None
        if on_tpu:
            mapped_macs += macs
        ops.append(
            {
                "index": i,
                "op": name,
                "version": op_version(model, op),
                "supported": supported,
                "on_edgetpu": on_tpu,
                "reasons": reasons,
                "macs": macs,
                "conditional": supported and name in CONDITIONAL_OPS,
            }
        )
    n = len(ops)
    report = {
        "num_ops": n,
        "num_mapped_ops": sum(o["on_edgetpu"] for o in ops),
        "mapped_op_share": (sum(o["on_edgetpu"] for o in ops) / n) if n else 0.0,
        "supported_op_share": (sum(o["supported"] for o in ops) / n) if n else 0.0,
        "total_macs": int(total_macs),
        "mapped_mac_share": (mapped_macs / total_macs) if total_macs else 0.0,
        "first_cpu_op": first_cpu,
        "conditional_ops": sum(o["conditional"] and o["on_edgetpu"] for o in ops),
        "ops": ops,
        "constraints": "coral.ai/docs/edgetpu/models-intro (runtime 14+), TFLite op versions <= 2.5",
    }
    if not isinstance(source, (bytes, bytearray)) and shutil.which("edgetpu_compiler"):
        report["compiler"] = run_edgetpu_compiler(source)
    return report


@dataclasses.dataclass(frozen=True)
class EdgeTPUSummary:
    """The headline of :func:`edgetpu_report`: share of ops / MACs before the first
    op the compiler leaves on the CPU, and that op (``None``: everything maps)."""

    mapped_op_share: float
    mapped_mac_share: float
    first_cpu_op: Optional[dict]
    num_ops: int

    @classmethod
    def from_report(cls, report: dict) -> EdgeTPUSummary:
        return cls(**{f.name: report[f.name] for f in dataclasses.fields(cls)})

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


_LOG_LINE = re.compile(r"^\s*([A-Z_0-9]+)\s+(\d+)\s+(.+?)\s*$")


def parse_compiler_log(text: str) -> dict:
    """Parse ``edgetpu_compiler -s`` output: op table and the on-TPU / on-CPU counts."""
    result = {"ops": [], "edgetpu_ops": None, "cpu_ops": None}
    in_table = False
    for line in text.splitlines():
        m = re.search(r"Number of operations that will run on Edge TPU:\s*(\d+)", line)
        if m:
            result["edgetpu_ops"] = int(m.group(1))
        m = re.search(r"Number of operations that will run on CPU:\s*(\d+)", line)
        if m:
            result["cpu_ops"] = int(m.group(1))
        if re.match(r"^\s*Operator\s+Count\s+Status", line):
            in_table = True
            continue
        if in_table:
            m = _LOG_LINE.match(line)
            if m:
                result["ops"].append(
                    {"op": m.group(1), "count": int(m.group(2)), "status": m.group(3)}
                )
            elif line.strip() and not line.strip().startswith("-"):
                in_table = False
    return result


def run_edgetpu_compiler(path, *, timeout: float = 600.0) -> dict:
    with tempfile.TemporaryDirectory(prefix="mvit3_edgetpu_") as out:
        proc = subprocess.run(
            ["edgetpu_compiler", "-s", "-o", out, os.fspath(path)],
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    parsed = parse_compiler_log(proc.stdout + "\n" + proc.stderr)
    parsed["returncode"] = proc.returncode
    return parsed


def format_edgetpu_report(report: dict, *, verbose: bool = False) -> str:
    lines = []
    if verbose:
        for o in report["ops"]:
            where = "TPU" if o["on_edgetpu"] else "CPU"
            why = "" if o["supported"] else "  <- " + "; ".join(o["reasons"])
            if o["supported"] and not o["on_edgetpu"]:
                why = "  (supported, but after the first CPU op)"
            lines.append(f"#{o['index']:<4d} {o['op']:<20s} v{o['version']:<2d} {where}{why}")
    first = report["first_cpu_op"]
    lines.append(
        f"Edge TPU: {report['num_mapped_ops']}/{report['num_ops']} ops "
        f"({100 * report['mapped_op_share']:.1f}%), "
        f"{100 * report['mapped_mac_share']:.1f}% of {report['total_macs'] / 1e6:.1f}M MACs "
        f"before the first CPU op; ops meeting the constraints anywhere: "
        f"{100 * report['supported_op_share']:.1f}%"
    )
    if first is None:
        lines.append("every op meets the published Edge TPU constraints")
    else:
        lines.append(
            f"first op on the CPU: #{first['index']} {first['op']} v{first['version']} "
            f"({first['output']}): {'; '.join(first['reasons'])}"
        )
    if report["conditional_ops"]:
        lines.append(
            f"{report['conditional_ops']} mapped op(s) are RESHAPE / RESIZE ops the compiler "
            "may still keep on the CPU depending on tensor sizes"
        )
    if "compiler" in report:
        c = report["compiler"]
        lines.append(
            f"edgetpu_compiler: {c['edgetpu_ops']} ops on the Edge TPU, {c['cpu_ops']} on the CPU"
        )
    else:
        lines.append("edgetpu_compiler not on PATH: report from the documented constraints only")
    return "\n".join(lines)
