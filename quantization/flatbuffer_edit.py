"""Cut a ``.tflite`` flatbuffer into smaller models (same tensors and buffers).

* :func:`truncated_model` keeps the first ``k`` ops (outputs: the last op's
  outputs): used to find the op at which a file crashes the runtime.
* :func:`single_op_model` keeps one op, its non-constant inputs become model
  inputs: used for the per-op latency profile of ``mvit3 benchmark``.

Unused buffers are kept (the files are temporary); the interpreter only
allocates tensors that ops touch.
"""

from __future__ import annotations

from quantization.inspection import is_constant, read_model, schema


def _pack(model) -> bytes:
    import flatbuffers

    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def truncated_model(source, num_ops: int) -> bytes:
    model, _ = read_model(source)
    sg = model.subgraphs[0]
    if not 1 <= num_ops <= len(sg.operators):
        raise ValueError(f"num_ops must be in [1, {len(sg.operators)}], got {num_ops}")
    sg.operators = sg.operators[:num_ops]
    sg.outputs = [t for t in sg.operators[-1].outputs if t >= 0]
    model.signatureDefs = []
    return _pack(model)


def single_op_model(source, index: int) -> bytes:
    model, _ = read_model(source)
    sg = model.subgraphs[0]
    op = sg.operators[index]
    sg.operators = [op]
    sg.inputs = [t for t in op.inputs if t >= 0 and not is_constant(model, sg, t)]
    sg.outputs = [t for t in op.outputs if t >= 0]
    model.signatureDefs = []
    return _pack(model)


def num_ops(source) -> int:
    model, _ = read_model(source)
    return len(model.subgraphs[0].operators)


__all__ = ["num_ops", "schema", "single_op_model", "truncated_model"]
