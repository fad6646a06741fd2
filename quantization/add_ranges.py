"""int8 ADD / SUB output ranges that LiteRT's kernels accept.

LiteRT's int8 ADD (``tensorflow/lite/kernels/add.cc``, ``PrepareGeneralSubOp`` for
SUB) rescales both inputs to ``2 * max(input scales)`` with a left shift of 20
bits and then needs ``2 * max_input_scale / (2**20 * output_scale) < 1``: an
output scale below ``max_input_scale * 2**-19`` fails a check and aborts the
process.

The converter can produce exactly that. Its quantizer gives ops that move data
without computing (CONCATENATION, RESHAPE, TRANSPOSE, SPACE_TO_DEPTH, ...) one
scale for inputs and output. In a MobileViTv3 block the local features feed both
the fusion concatenation and, unfolded, the residual stream of the global
representation, so the residual input of ``x + attention(norm(x))`` takes the
concatenation's scale. In a freshly initialised model the residual stream is
~1e-6 while the concatenation spans ~+-6: the ADD's own calibrated output range
is ~1e-6 wide, its input scale 0.04, and the kernel aborts (MobileViTv3-0.5 /
0.75 for the Edge TPU: ``layer_3.1.global_rep.0.pre_norm_attn`` ADD, scales
0.0447 and 1.8e-8 -> 1.8e-8).

:func:`quantize_with_legal_add_ranges` quantizes a calibrated model, finds such
ADD / SUB ops in the result, widens their outputs' calibrated ranges to a legal
scale (with a margin of 8x) and quantizes again. Models whose ranges are already
legal (trained ones, in practice) are quantized once and come out unchanged.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from quantization.inspection import schema

KERNEL_LIMIT = 2.0**-19  # out_scale must exceed max_input_scale * 2**-19 (add.cc, 20-bit shift)
MARGIN = 8.0  # widen to 8x the limit, so re-quantization rounding never lands on it
RESCALING_OPS = ("ADD", "SUB")


def _load(flatbuffer: bytes):
    s = schema()
    return s, s.ModelT.InitFromObj(s.Model.GetRootAsModel(flatbuffer, 0))


def _op_name(s, model, op) -> str:
    code = model.operatorCodes[op.opcodeIndex]
    builtin = max(code.builtinCode, code.deprecatedBuiltinCode)
    names = {v: k for k, v in vars(s.BuiltinOperator).items() if isinstance(v, int)}
    return names.get(builtin, str(builtin))


def _scale(tensor) -> float | None:
    q = tensor.quantization
    if q is None or q.scale is None or len(q.scale) != 1:
        return None
    return float(q.scale[0])


def illegal_add_outputs(flatbuffer: bytes) -> dict:
    """``{output tensor name: smallest legal scale x MARGIN}`` for each int8 ADD / SUB
    whose output scale LiteRT's kernel refuses."""
    s, model = _load(flatbuffer)
    illegal = {}
    for sg in model.subgraphs:
        for op in sg.operators:
            if _op_name(s, model, op) not in RESCALING_OPS:
                continue
            inputs = [_scale(sg.tensors[i]) for i in op.inputs if i >= 0]
            out = sg.tensors[op.outputs[0]]
            out_scale = _scale(out)
            if out_scale is None or None in inputs:
                continue
            needed = max(inputs) * KERNEL_LIMIT
            if out_scale <= needed:
                illegal[out.name.decode()] = needed * MARGIN
    return illegal


def widen_calibrated_ranges(calibrated: bytes, min_scales: dict) -> bytes:
    """The calibrated model with each named tensor's ``[min, max]`` widened (about
    its centre, keeping 0 inside) so that its int8 scale is at least ``min_scales[name]``."""
    import flatbuffers

    s, model = _load(calibrated)
    for sg in model.subgraphs:
        for tensor in sg.tensors:
            scale = min_scales.get(tensor.name.decode())
            q = tensor.quantization
            if scale is None or q is None or q.min is None or q.max is None:
                continue
            lo, hi = float(np.min(q.min)), float(np.max(q.max))
            half = 255.0 * scale / 2.0
            centre = (lo + hi) / 2.0
            q.min = [min(lo, centre - half, 0.0)]
            q.max = [max(hi, centre + half, 0.0)]
    builder = flatbuffers.Builder(len(calibrated) + 1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def quantize_with_legal_add_ranges(
    calibrated: bytes, quantize: Callable[[bytes], bytes], max_rounds: int = 4
) -> tuple:
    """``(quantized flatbuffer, [{tensor: new min scale}, ...] per widening round)``.

    Widening one ADD's output raises the input scale of the next residual ADD, so
    the check repeats (a few rounds at most: one per chained residual).
    """
    rounds = []
    quantized = quantize(calibrated)
    for _ in range(max_rounds):
        illegal = illegal_add_outputs(quantized)
        if not illegal:
            return quantized, rounds
        rounds.append(illegal)
        calibrated = widen_calibrated_ranges(calibrated, illegal)
        quantized = quantize(calibrated)
    if illegal_add_outputs(quantized):
        raise RuntimeError(
            f"int8 ADD/SUB output ranges still out of LiteRT's limits after {max_rounds} "
            f"widening rounds: {sorted(illegal_add_outputs(quantized))[:3]}"
        )
    return quantized, rounds
