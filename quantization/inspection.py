"""Read a ``.tflite`` flatbuffer: ops (with versions), tensors, quantization, size.

Uses the flatbuffer schema that ships with ``ai_edge_litert``
(``schema_py_generated``; falls back to TensorFlow's copy), so reading a model
does not need TensorFlow. :func:`inspect_tflite` returns a typed
:class:`TFLiteReport` (``to_dict()`` for JSON); :func:`check_tflite` fails loudly when a file contains
TF Select (Flex) / custom ops, float kernels in an integer model, or dynamic
shapes.
"""

from __future__ import annotations

import collections
import dataclasses
import os
from typing import Optional

import numpy as np

from mvit3_keras.compat import tflite_schema


def schema():
    """The generated TFLite flatbuffer schema module."""
    return tflite_schema()


def _enum_names(enum_cls) -> dict:
    return {v: k for k, v in vars(enum_cls).items() if not k.startswith("_") and isinstance(v, int)}


class ExportCheckError(RuntimeError):
    """An exported model does not meet what its export mode promises."""


def read_model(source):
    """``(ModelT, raw_bytes)`` from a path or bytes."""
    if isinstance(source, (bytes, bytearray)):
        data = bytes(source)
    else:
        path = os.fspath(source)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"no such .tflite file: {path}")
        with open(path, "rb") as f:
            data = f.read()
    if len(data) < 8 or data[4:8] != b"TFL3":
        raise ValueError("not a TFLite flatbuffer (file identifier 'TFL3' missing)")
    return schema().ModelT.InitFromPackedBuf(data, 0), data


def op_name(model, op) -> str:
    s = schema()
    code = model.operatorCodes[op.opcodeIndex]
    builtin = max(code.builtinCode, code.deprecatedBuiltinCode)
    if builtin == s.BuiltinOperator.CUSTOM:
        custom = code.customCode.decode() if code.customCode else "?"
        return f"CUSTOM:{custom}"
    return _enum_names(s.BuiltinOperator)[builtin]


def op_version(model, op) -> int:
    return int(model.operatorCodes[op.opcodeIndex].version)


def _decode(name) -> str:
    return name.decode("utf-8", "replace") if isinstance(name, (bytes, bytearray)) else str(name)


def is_constant(model, subgraph, index: int) -> bool:
    tensor = subgraph.tensors[index]
    buf = model.buffers[tensor.buffer] if tensor.buffer < len(model.buffers) else None
    return buf is not None and (buf.data is not None and len(buf.data) > 0 or bool(buf.size))


def tensor_info(model, subgraph, index: int) -> dict:
    s = schema()
    t = subgraph.tensors[index]
    q = t.quantization
    quant = None
    if q is not None and q.scale is not None and len(q.scale):
        scale = np.asarray(q.scale, dtype=np.float64)
        zero = np.asarray(q.zeroPoint if q.zeroPoint is not None else np.zeros_like(scale))
        quant = {
            "scale": float(scale[0]) if scale.size == 1 else [float(v) for v in scale],
            "zero_point": int(zero[0]) if zero.size == 1 else [int(v) for v in zero],
            "axis": int(q.quantizedDimension) if scale.size > 1 else None,
        }
    sig = t.shapeSignature
    return {
        "index": int(index),
        "name": _decode(t.name),
        "shape": [int(v) for v in (t.shape if t.shape is not None else [])],
        "shape_signature": None if sig is None else [int(v) for v in sig],
        "dtype": _enum_names(s.TensorType)[t.type].lower(),
        "constant": is_constant(model, subgraph, index),
        "quantization": quant,
    }


def _prod(values) -> int:
    out = 1
    for v in values:
        out *= int(v)
    return out


def op_macs(model, subgraph, op) -> int:
    """Multiply-accumulates of one op (conv, depthwise, fully connected, batch matmul)."""
    name = op_name(model, op)
    ins = [subgraph.tensors[i] for i in op.inputs if i >= 0]
    outs = [subgraph.tensors[i] for i in op.outputs]
    if not ins or not outs or outs[0].shape is None:  # unranked (a custom op's output)
        return 0
    out_elems = _prod(outs[0].shape)
    if name == "CONV_2D" and len(ins) > 1:
        kh, kw, cin = ins[1].shape[1], ins[1].shape[2], ins[1].shape[3]
        return out_elems * int(kh) * int(kw) * int(cin)
    if name == "DEPTHWISE_CONV_2D" and len(ins) > 1:
        return out_elems * int(ins[1].shape[1]) * int(ins[1].shape[2])
    if name == "FULLY_CONNECTED" and len(ins) > 1:
        return out_elems * int(ins[1].shape[-1])
    if name == "BATCH_MATMUL" and len(ins) > 1:
        a = ins[0].shape
        options = op.builtinOptions
        k = a[-2] if getattr(options, "adjX", False) else a[-1]
        return out_elems * int(k)
    if name == "TRANSPOSE_CONV" and len(ins) > 1:
        w = ins[1].shape  # [out, kh, kw, in]
        return _prod(ins[2].shape) * int(w[1]) * int(w[2]) * int(w[0])
    return 0


def iter_ops(model, subgraph_index: int = 0):
    sg = model.subgraphs[subgraph_index]
    for i, op in enumerate(sg.operators):
        yield i, sg, op


@dataclasses.dataclass(frozen=True)
class TFLiteReport:
    """What a ``.tflite`` file contains (:func:`inspect_tflite`).

    Tensors (``inputs``, ``outputs``, the ops' tensors) are the dicts of
    :func:`tensor_info` (``index, name, shape, shape_signature, dtype, constant,
    quantization``). ``ops`` is ``None`` unless asked for.
    """

    size_bytes: int
    num_subgraphs: int
    num_ops: int
    op_histogram: dict  # "CONV_2D v3" -> count
    activation_dtypes: dict  # dtype -> number of non-constant tensors
    int8_tensors: int
    num_tensors: int
    float_ops: list  # {"index", "op", "output"}: ops computing on float activations
    custom_ops: list  # {"index", "op", "outputs": [tensor names]}
    dynamic_tensors: list  # names of tensors with a dynamic shape signature
    inputs: list
    outputs: list
    macs: int
    min_runtime_version: Optional[str]
    ops: Optional[list] = None  # {"index", "op", "version", "inputs", "outputs", "macs"}

    def to_dict(self, *, include_ops: bool = True) -> dict:
        """JSON-serialisable dict (``ops`` only when present and asked for)."""
        out = dataclasses.asdict(self)
        if not include_ops or self.ops is None:
            out.pop("ops")
        return out

    def without_ops(self) -> TFLiteReport:
        return dataclasses.replace(self, ops=None)


def _op_rows(model, include_ops: bool) -> tuple:
    """``(histogram, float_ops, custom_ops, ops, total_macs)`` over subgraph 0."""
    sg = model.subgraphs[0]
    histogram = collections.Counter()
    float_ops, custom_ops, ops = [], [], []
    total_macs = 0
    for i, _, op in iter_ops(model):
        name, version = op_name(model, op), op_version(model, op)
        histogram[f"{name} v{version}"] += 1
        ins = [tensor_info(model, sg, t) for t in op.inputs if t >= 0]
        outs = [tensor_info(model, sg, t) for t in op.outputs]
        macs = op_macs(model, sg, op)
        total_macs += macs
        if name.startswith("CUSTOM:"):
            custom_ops.append({"index": i, "op": name, "outputs": [t["name"] for t in outs]})
        act = [t for t in ins if not t["constant"]] + outs
        if name not in ("QUANTIZE", "DEQUANTIZE") and any(
            t["dtype"] in ("float32", "float16") for t in act
        ):
            float_ops.append({"index": i, "op": name, "output": outs[0]["name"] if outs else ""})
        if include_ops:
            ops.append(
                {
                    "index": i,
                    "op": name,
                    "version": version,
                    "inputs": ins,
                    "outputs": outs,
                    "macs": macs,
                }
            )
    return dict(sorted(histogram.items())), float_ops, custom_ops, ops, int(total_macs)


def _tensor_census(model) -> tuple:
    """``(activation dtypes, number of int8/uint8 tensors, dynamic tensor names)``."""
    sg = model.subgraphs[0]
    activation_dtypes = collections.Counter()
    dynamic, int8_tensors = [], 0
    for idx in range(len(sg.tensors)):
        info = tensor_info(model, sg, idx)
        if info["dtype"] in ("int8", "uint8"):
            int8_tensors += 1
        if not info["constant"]:
            activation_dtypes[info["dtype"]] += 1
        if info["shape_signature"] is not None and any(v < 0 for v in info["shape_signature"]):
            dynamic.append(info["name"])
    return dict(activation_dtypes), int8_tensors, dynamic


def _min_runtime_version(model) -> Optional[str]:
    for meta in model.metadata or []:
        if _decode(meta.name) == "min_runtime_version":
            raw = model.buffers[meta.buffer].data
            if raw is not None:
                return bytes(np.asarray(raw, dtype=np.uint8)).split(b"\0")[0].decode()
    return None


def inspect_tflite(source, *, include_ops: bool = True) -> TFLiteReport:
    """:class:`TFLiteReport` of a ``.tflite`` file (path or bytes); with
    ``include_ops`` its ``ops`` list too."""
    model, data = read_model(source)
    sg = model.subgraphs[0]
    histogram, float_ops, custom_ops, ops, macs = _op_rows(model, include_ops)
    activation_dtypes, int8_tensors, dynamic = _tensor_census(model)
    return TFLiteReport(
        size_bytes=len(data),
        num_subgraphs=len(model.subgraphs),
        num_ops=len(sg.operators),
        op_histogram=histogram,
        activation_dtypes=activation_dtypes,
        int8_tensors=int8_tensors,
        num_tensors=len(sg.tensors),
        float_ops=float_ops,
        custom_ops=custom_ops,
        dynamic_tensors=dynamic,
        inputs=[tensor_info(model, sg, i) for i in sg.inputs],
        outputs=[tensor_info(model, sg, i) for i in sg.outputs],
        macs=macs,
        min_runtime_version=_min_runtime_version(model),
        ops=ops if include_ops else None,
    )


def check_tflite(
    report: TFLiteReport,
    quant,
    *,
    allow_float_ops: bool = False,
    expect_static: bool = True,
    allowed_custom_ops: tuple = (),
) -> TFLiteReport:
    """Raise :class:`ExportCheckError` if ``report`` breaks the promise of ``quant``
    (a :class:`quantization.export_options.QuantType` or its string).

    * every mode: no TF Select (Flex) or other custom ops except
      ``allowed_custom_ops`` (e.g. ``TFLite_Detection_PostProcess``, which every
      LiteRT runtime registers); static shapes;
    * ``int8`` / ``qat``: every compute op has integer activations (only the
      input ``QUANTIZE`` and output ``DEQUANTIZE`` touch floats);
    * ``int8_full``: additionally integer model inputs and outputs;
    * an allowed custom op is post-processing with float outputs by definition (the
      detection op decodes boxes in float32 on the CPU, as in Coral's SSD models): it
      and the model outputs it makes are exempt from the integer checks;
    * ``fp32``: no integer activations; ``dynamic`` / ``fp16``: float activations.
    """
    from quantization.export_options import QuantType, parse_quant_type

    quant = parse_quant_type(quant)
    allowed = {f"CUSTOM:{name}" for name in allowed_custom_ops}
    problems = _custom_op_problems(report, allowed)
    post_outputs = {t for c in report.custom_ops if c["op"] in allowed for t in c["outputs"]}
    float_ops = [o for o in report.float_ops if o["op"] not in allowed]
    if report.num_subgraphs != 1:
        problems.append(f"{report.num_subgraphs} subgraphs (control flow); expected 1")
    if expect_static and report.dynamic_tensors:
        names = report.dynamic_tensors[:3]
        problems.append(f"dynamic tensor shapes (e.g. {names}); export with a static input shape")
    if quant.is_integer and not allow_float_ops and float_ops:
        ops = [f"{o['op']}#{o['index']} ({o['output']})" for o in float_ops[:5]]
        problems.append(f"{len(float_ops)} op(s) run in float inside an integer model: {ops}")
    if quant is QuantType.INT8_FULL:
        for t in report.inputs + report.outputs:
            if t["dtype"] not in ("int8", "uint8") and t["name"] not in post_outputs:
                problems.append(
                    f"model I/O tensor {t['name']!r} is {t['dtype']}, expected int8/uint8"
                )
    if quant is QuantType.FP32 and report.int8_tensors:
        problems.append(f"{report.int8_tensors} int8 tensors in an fp32 export")
    if problems:
        raise ExportCheckError(
            f"exported model fails the '{quant.value}' checks:\n  - " + "\n  - ".join(problems)
        )
    return report


def _custom_op_problems(report: TFLiteReport, allowed: set) -> list:
    """``allowed``: op names as the report writes them (``"CUSTOM:<name>"``)."""
    custom = sorted({c["op"] for c in report.custom_ops} - allowed)
    if not custom:
        return []
    return [
        f"custom / TF Select (Flex) ops {custom}: they need the Flex delegate (not in LiteRT "
        "builtins, not on Android without the select-ops AAR, never on the Edge TPU)"
    ]


def format_report(report: TFLiteReport, *, max_ops: Optional[int] = 0) -> str:
    """Human-readable summary (op histogram, I/O quantization, size)."""
    lines = [
        f"size: {report.size_bytes / 1024:.1f} KiB, ops: {report.num_ops}, "
        f"MACs: {report.macs / 1e6:.1f}M, int8 tensors: {report.int8_tensors}/"
        f"{report.num_tensors}, activation dtypes: {report.activation_dtypes}",
    ]
    for kind, tensors in (("input", report.inputs), ("output", report.outputs)):
        for t in tensors:
            q = t["quantization"]
            qs = "" if q is None else f" scale={q['scale']:.6g} zero_point={q['zero_point']}"
            lines.append(f"{kind}: {t['name']} {t['shape']} {t['dtype']}{qs}")
    lines.append("ops: " + ", ".join(f"{k} x{v}" for k, v in report.op_histogram.items()))
    if report.float_ops:
        lines.append(f"float ops: {len(report.float_ops)}")
    if max_ops and report.ops:
        for op in report.ops[:max_ops]:
            lines.append(
                f"  #{op['index']:<4d} {op['op']} v{op['version']} -> "
                f"{op['outputs'][0]['shape'] if op['outputs'] else ''}"
            )
    return "\n".join(lines)
