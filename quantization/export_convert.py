"""Export stages 2 and 3: :func:`calibrate` (representative images) and
:func:`convert` (a prepared model -> ``.tflite`` flatbuffer bytes).

The conversion uses builtin ops only (never TF Select). Post-training int8
calibrates with the representative images; int8 ADD / SUB output ranges that
LiteRT's kernel refuses are widened and the model quantized again
(:mod:`quantization.add_ranges`); ``keep_float`` leaves the named ops in float32
through the converter's own ``mlir_quantize`` step with a node denylist.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import numpy as np

from mvit3_keras import progress
from mvit3_keras.compat import calibrate_only, mlir_quantize
from quantization.add_ranges import illegal_add_outputs, quantize_with_legal_add_ranges
from quantization.calibration import (
    collect_images,
    evaluation_transform,
    folder_images,
    is_image_folder,
    representative_dataset,
)
from quantization.export_options import ExportOptions, QuantType, Target, parse_keep_float
from quantization.export_prepare import PreparedModel
from quantization.inspection import inspect_tflite


def calibrate(
    prepared: PreparedModel, options: ExportOptions, representative_data=None
) -> Optional[np.ndarray]:
    """The images that calibrate (``int8`` / ``int8_full``: ``num_calibration_samples``
    of them, required) or, for the other types, verify the export
    (``num_verify_samples``, when data is given; else ``None``).

    ``representative_data`` may be a folder of JPEG / PNG images: they go through the
    model's evaluation transform (:func:`quantization.calibration.evaluation_transform`)."""
    if options.needs_calibration:
        num_samples = options.num_calibration_samples
    elif representative_data is None:
        return None
    else:
        num_samples = options.num_verify_samples
    if is_image_folder(representative_data):
        transform = evaluation_transform(prepared.source, prepared.input_shape)
        representative_data = folder_images(representative_data, transform, num_samples=num_samples)
    return collect_images(
        representative_data, num_samples=num_samples, input_shape=prepared.input_shape
    )


def _inside(op: dict, layer_names: list) -> bool:
    """Whether ``op``'s first output tensor belongs to one of the layers: the converter
    names a tensor ``[scope/]<layer>[_1]/<op>`` (the scope is absent when the graph is
    called statelessly, as in the detector's post-processing module) and joins fused
    names with ``;``."""
    out = op["outputs"][0]["name"] if op["outputs"] else ""
    parts = [f"/{part}" for part in out.split(";")]
    return any(f"/{n}/" in p or f"/{n}_1/" in p for n in layer_names for p in parts)


def _island_layers(graph) -> tuple:
    """``(attention layer names, normalization layer names)`` of an export graph."""
    from mvit3_keras.graph_clone import iter_layers
    from mvit3_keras.layers import LinearSelfAttention, MultiHeadSelfAttention, NormalizationExport

    attention, norms = [], []
    for layer in iter_layers(graph):
        if isinstance(layer, (MultiHeadSelfAttention, LinearSelfAttention)):
            attention.append(layer.name)
        elif isinstance(layer, NormalizationExport):
            norms.append(layer.name)
    return attention, norms


def _norm_island(rsqrt: dict, producer: dict, consumers: dict) -> list:
    r"""The ops of one norm's statistics around its ``rsqrt`` op: the square of the
    centered input (``MUL(c, c)``), the variance ``MEAN``\ (s), ``ADD(eps)``, ``RSQRT`` and
    the ``MUL`` by the centered input that normalizes.

    In float they keep the normalized output within ``sqrt(C - 1)`` of 0, whatever the
    tokens' variances; in int8 a token whose variance is below 1/255 of the largest
    rounds it to 0, ``rsqrt(eps)`` blows it up by ~300x and that token's range swamps
    the next tensors' (an int8 ``RSQRT`` spans the same 255x too)."""
    island = [rsqrt]
    op = producer.get(rsqrt["inputs"][0]["index"])
    if op is not None and op["op"] == "ADD":
        island.append(op)
        op = next(filter(None, (producer.get(t["index"]) for t in op["inputs"])), None)
    while op is not None and op["op"] == "MEAN":
        island.append(op)
        op = producer.get(op["inputs"][0]["index"])
    if op is not None and op["op"] == "MUL" and _is_square(op):
        island.append(op)
        centered = op["inputs"][0]["index"]
        island += [
            c
            for c in consumers.get(rsqrt["outputs"][0]["index"], [])
            if c["op"] == "MUL" and centered in {t["index"] for t in c["inputs"]}
        ]
    return island


def _is_square(op: dict) -> bool:
    return len(op["inputs"]) == 2 and op["inputs"][0]["index"] == op["inputs"][1]["index"]


def _island_ops(report, attention: list, norms: list) -> dict:
    """``{island: [op, ...]}`` of ``report`` (a calibrated float graph's inspection)."""
    producer = {t["index"]: op for op in report.ops for t in op["outputs"]}
    consumers = {}
    for op in report.ops:
        for t in op["inputs"]:
            consumers.setdefault(t["index"], []).append(op)
    found = {"attention": [], "normalization": []}
    for op in report.ops:
        if op["op"] in ("BATCH_MATMUL", "SOFTMAX") and _inside(op, attention):
            found["attention"].append(op)
        if op["op"] == "RSQRT" and _inside(op, norms):
            found["normalization"] += _norm_island(op, producer, consumers)
    return found


def float_island_nodes(calibrated: bytes, graph, keep_float) -> list:
    """Output-tensor names of the ops ``keep_float`` keeps in float32: the attention
    cores' BATCH_MATMUL / SOFTMAX and the norms' statistics (:func:`_norm_island`).

    Raises ``RuntimeError`` when the graph has attention or norm layers but none of
    their ops is found: the file would silently be all-int8 (slow on CPUs)."""
    keep_float = parse_keep_float(keep_float)
    attention, norms = _island_layers(graph)
    found = _island_ops(inspect_tflite(calibrated), attention, norms)
    for island, layers in (("attention", attention), ("normalization", norms)):
        if island in keep_float and layers and not found[island]:
            raise RuntimeError(
                f"keep_float={island!r}: no op of the {len(layers)} {island} layers "
                f"(e.g. {layers[0]!r}) was found in the converted graph; the converter's "
                "tensor names changed? (quantization.export_convert._inside)"
            )
    names = [op["outputs"][0]["name"] for island in keep_float for op in found[island]]
    return list(dict.fromkeys(names))


def run_converter(converter) -> bytes:
    """``converter.convert()`` without the converter's notice that quantized inputs
    have no mean/std: calibration sets the input scale, the statistics are not used."""
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Statistics for quantized inputs were expected")
        return converter.convert()


def _io_type(options: ExportOptions):
    import tensorflow as tf

    if not options.integer_io:
        return tf.float32
    return tf.uint8 if options.target is Target.EDGETPU else tf.int8


def _output_type(prepared: PreparedModel, options: ExportOptions):
    """The file's output type: :func:`_io_type`, but float32 where the outputs are float
    by definition (``prepared.float_outputs``: the detection post-processing op)."""
    import tensorflow as tf

    return tf.float32 if prepared.float_outputs else _io_type(options)


def _integer_ops(prepared: PreparedModel, options: ExportOptions) -> list:
    import tensorflow as tf

    if options.quant is QuantType.QAT:
        # The int8 graph comes from the FakeQuant ops. TF 2.21's conversion-metrics
        # hook builds its QuantizationMode without the graph, misses them and demands
        # a representative dataset whenever TFLITE_BUILTINS_INT8 is requested; every
        # op is checked to be integer afterwards (check_tflite) instead.
        return [tf.lite.OpsSet.TFLITE_BUILTINS]
    ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    if prepared.allow_float_ops:
        ops.append(tf.lite.OpsSet.TFLITE_BUILTINS)
    return ops


def build_converter(prepared: PreparedModel, options: ExportOptions, calibration):
    """The ``TFLiteConverter`` for ``prepared`` with the settings of ``options.quant``."""
    import tensorflow as tf

    trackable = [prepared.trackable] if prepared.trackable is not None else []
    converter = tf.lite.TFLiteConverter.from_concrete_functions([prepared.function], *trackable)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    quant = options.quant
    if quant is QuantType.FP32:
        return converter
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if quant is QuantType.FP16:
        converter.target_spec.supported_types = [tf.float16]
    if not quant.is_integer:
        return converter
    if quant.is_post_training_int8:
        if calibration is None:
            raise ValueError(
                f"quant={quant.value!r} needs calibration images: pass the result of "
                "calibrate(prepared, options, representative_data)"
            )
        converter.representative_dataset = representative_dataset(calibration, prepared.batch_size)
    converter.target_spec.supported_ops = _integer_ops(prepared, options)
    if options.integer_io:
        converter.inference_input_type = _io_type(options)
        converter.inference_output_type = _output_type(prepared, options)
    return converter


def _quantize_calibrated(converter, prepared: PreparedModel, options: ExportOptions) -> tuple:
    """Post-training int8: calibrate, then the converter's own ``mlir_quantize`` step
    (what ``converter.convert()`` runs), with the ``keep_float`` ops left in float32
    (a node denylist) and int8 ADD ranges that LiteRT accepts. Returns
    ``(flatbuffer, widened ranges per round)``."""
    calibrate_only(converter)
    calibrated = run_converter(converter)
    keep_float = options.keep_float
    nodes = float_island_nodes(calibrated, prepared.graph, keep_float) if keep_float else None
    io_type = _io_type(options)

    def quantize(calibrated_model):
        return mlir_quantize(
            calibrated_model,
            disable_per_channel=False,
            input_data_type=io_type,
            output_data_type=_output_type(prepared, options),
            denylisted_nodes=nodes,
        )

    return quantize_with_legal_add_ranges(calibrated, quantize)


@dataclasses.dataclass(frozen=True)
class Conversion:
    """A converted model: the flatbuffer and, per widening round, the int8 ADD / SUB
    outputs whose ranges were widened to a legal scale (``{tensor: min scale}``)."""

    flatbuffer: bytes
    widened_add_ranges: tuple = ()


def convert_with_repairs(
    prepared: PreparedModel, options: ExportOptions, calibration=None
) -> Conversion:
    """:func:`convert` that also reports the ADD ranges it widened."""
    return _check_custom_ops(prepared, _converted(prepared, options, calibration))


def _converted(prepared: PreparedModel, options: ExportOptions, calibration) -> Conversion:
    progress.stage(f"converting to {options.quant.value} (target {options.target.value})")
    converter = build_converter(prepared, options, calibration)
    if options.keep_float:
        flatbuffer, widened = _quantize_calibrated(converter, prepared, options)
        return Conversion(flatbuffer, tuple(widened))
    flatbuffer = run_converter(converter)
    if options.quant.is_post_training_int8 and illegal_add_outputs(flatbuffer):
        # an ADD range LiteRT would abort on: calibrate again and widen it
        converter = build_converter(prepared, options, calibration)
        flatbuffer, widened = _quantize_calibrated(converter, prepared, options)
        return Conversion(flatbuffer, tuple(widened))
    return Conversion(flatbuffer)


def _check_custom_ops(prepared: PreparedModel, conversion: Conversion) -> Conversion:
    for name in prepared.custom_ops:
        if name.encode() not in conversion.flatbuffer:
            raise RuntimeError(f"the converter did not emit {name}; TensorFlow too old?")
    return conversion


def convert(prepared: PreparedModel, options: ExportOptions, calibration=None) -> bytes:
    """The ``.tflite`` flatbuffer of ``prepared`` under ``options`` (``calibration``:
    the images of :func:`calibrate`, required for ``int8`` / ``int8_full``)."""
    return convert_with_repairs(prepared, options, calibration).flatbuffer
