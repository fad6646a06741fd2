"""``export_tflite``: a Keras model -> a checked, verified ``.tflite`` / LiteRT file.

Quantization types (TF Model Garden style enumeration):

============  =====================================================================
``fp32``      float kernels (reference for accuracy / latency)
``fp16``      float16 weights, float compute
``dynamic``   int8 weights, activations quantized on the fly (dynamic range)
``int8``      int8 kernels, float input/output (QUANTIZE / DEQUANTIZE at the ends)
``int8_full`` int8 kernels and int8 input/output (uint8 with ``target="edgetpu"``)
``qat``       int8 kernels from a quantization-aware-trained model
              (:func:`quantization.quantize_model`): ranges come from its fake-quant
              layers, no calibration
============  =====================================================================

Every export:

1. rewrites the model into its export formulation at a static shape, batch 1
   by default (:func:`quantization.graph_rewrite.prepare_for_export`);
2. converts a frozen ``tf.function`` with builtin ops only (never TF Select);
3. reads the flatbuffer back and fails loudly on Flex / custom ops, float
   kernels in an integer model or dynamic shapes
   (:func:`quantization.inspection.check_tflite`);
4. loads, allocates and invokes the file in a separate process on
   calibration images and compares it with the float Keras model
   (:mod:`quantization.verify`); a file that aborts the runtime is reported
   with the op that kills it and is never written;
5. writes the file atomically (``mvit3_keras.io_utils.atomic_path``).
"""

from __future__ import annotations

import os
import time
from typing import Optional

import numpy as np

from mvit3_keras import progress
from quantization.add_ranges import illegal_add_outputs, quantize_with_legal_add_ranges
from quantization.calibration import collect_images, representative_dataset
from quantization.inspection import check_tflite, inspect_tflite

QUANT_TYPES = ("fp32", "fp16", "dynamic", "int8", "int8_full", "qat")
TARGETS = ("generic", "edgetpu")
# Parts of the graph that ``keep_float`` may leave in float32 inside an int8 model
# (CPU target): their int8 kernels are not in XNNPACK, so each one splits the
# delegated graph and runs in TFLite's slower builtin kernels.
FLOAT_ISLANDS = {
    "attention": "BATCH_MATMUL + SOFTMAX of the attention cores",
    "normalization": "ADD(eps) + RSQRT of the LayerNorm / GroupNorm statistics",
}


def float_island_nodes(calibrated: bytes, model, keep_float) -> list:
    """Output-tensor names of the ops ``keep_float`` keeps in float32."""
    from mvit3_keras.graph_clone import iter_layers
    from mvit3_keras.layers import MultiHeadSelfAttention
    from quantization.export_layers import LinearSelfAttentionExport, NormalizationExport

    unknown = set(keep_float) - set(FLOAT_ISLANDS)
    if unknown:
        raise ValueError(f"keep_float accepts {sorted(FLOAT_ISLANDS)}, got {sorted(unknown)}")
    attention, norms = [], []
    for layer in iter_layers(model):
        if isinstance(layer, (MultiHeadSelfAttention, LinearSelfAttentionExport)):
            attention.append(layer.name)
        elif isinstance(layer, NormalizationExport):
            norms.append(layer.name)
    report = inspect_tflite(calibrated)
    producer = {}
    for op in report["ops"]:
        for t in op["outputs"]:
            producer[t["index"]] = op

    def inside(op, names):
        out = op["outputs"][0]["name"] if op["outputs"] else ""
        return any(f"/{n}_1/" in out or f"/{n}/" in out for n in names)

    nodes = []
    for op in report["ops"]:
        if (
            "attention" in keep_float
            and op["op"] in ("BATCH_MATMUL", "SOFTMAX")
            and inside(op, attention)
        ):
            nodes.append(op["outputs"][0]["name"])
        if "normalization" in keep_float and op["op"] == "RSQRT" and inside(op, norms):
            nodes.append(op["outputs"][0]["name"])
            src = producer.get(op["inputs"][0]["index"])
            if src is not None and src["op"] == "ADD":
                nodes.append(src["outputs"][0]["name"])
    return nodes


def _load_model(model):
    import keras

    if isinstance(model, (str, os.PathLike)):
        path = os.fspath(model)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"no such model file: {path}")
        import mvit3_keras  # noqa: F401  (registers the custom layers)
        import quantization.qat  # noqa: F401  (registers the QAT layers)

        return keras.models.load_model(path, compile=False)
    if not isinstance(model, keras.Model):
        raise TypeError(f"model must be a keras.Model or a .keras path, got {type(model)!r}")
    return model


def cosine_similarity(a, b) -> np.ndarray:
    """Row-wise cosine of ``[N, ...]`` arrays (flattened per row)."""
    a = np.asarray(a, np.float64).reshape(len(a), -1)
    b = np.asarray(b, np.float64).reshape(len(b), -1)
    denom = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return np.where(denom > 0, (a * b).sum(1) / np.maximum(denom, 1e-30), 1.0)


def _concrete_function(model, batch_size):
    import tensorflow as tf
    from tensorflow.python.framework.convert_to_constants import (
        convert_variables_to_constants_v2,
    )

    spec = tf.TensorSpec((batch_size, *model.inputs[0].shape[1:]), tf.float32, name="image")

    @tf.function(input_signature=[spec])
    def serve(image):
        return model(image, training=False)

    return convert_variables_to_constants_v2(serve.get_concrete_function())


def _frozen_outputs(frozen, images, batch_size):
    """Outputs of the frozen float (or QAT) graph that was converted, per output."""
    import tensorflow as tf

    chunks = []
    for start in range(0, len(images), batch_size):
        out = frozen(tf.constant(images[start : start + batch_size]))
        out = out if isinstance(out, (list, tuple)) else [out]
        chunks.append([np.asarray(o) for o in out])
    return [np.concatenate([c[i] for c in chunks]) for i in range(len(chunks[0]))]


def run_converter(converter) -> bytes:
    """``converter.convert()`` without the converter's notice that quantized inputs
    have no mean/std: calibration sets the input scale, the statistics are not used."""
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Statistics for quantized inputs were expected")
        return converter.convert()


def _quantize_calibrated(converter, prepared, keep_float, integer_io, target):
    """Post-training int8: calibrate, then the converter's own ``mlir_quantize`` step
    (what ``converter.convert()`` runs), with the ``keep_float`` ops left in float32
    (a node denylist) and int8 ADD ranges that LiteRT accepts
    (:mod:`quantization.add_ranges`). Returns ``(flatbuffer, widened ranges)``."""
    import tensorflow as tf
    from tensorflow.lite.python import convert as tfl_convert

    converter._experimental_calibrate_only = True  # noqa: SLF001 - public in the debugger
    calibrated = run_converter(converter)
    nodes = float_island_nodes(calibrated, prepared, keep_float) if keep_float else None
    io_type = (tf.uint8 if target == "edgetpu" else tf.int8) if integer_io else tf.float32

    def quantize(calibrated_model):
        return tfl_convert.mlir_quantize(
            calibrated_model,
            disable_per_channel=False,
            input_data_type=io_type,
            output_data_type=io_type,
            denylisted_nodes=nodes,
        )

    return quantize_with_legal_add_ranges(calibrated, quantize)


def _converter(frozen, quant, target, calibration, batch_size, integer_io, allow_float):
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_concrete_functions([frozen])
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    if quant == "fp16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif quant == "dynamic":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    elif quant in ("int8", "int8_full", "qat"):
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        if quant != "qat":
            converter.representative_dataset = representative_dataset(calibration, batch_size)
        if quant == "qat":
            # The int8 graph comes from the FakeQuant ops. TF 2.21's
            # conversion-metrics hook builds its QuantizationMode without the
            # graph, misses them and demands a representative dataset whenever
            # TFLITE_BUILTINS_INT8 is requested; every op is checked to be
            # integer afterwards (check_tflite) instead.
            ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
        else:
            ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
            if allow_float:
                ops.append(tf.lite.OpsSet.TFLITE_BUILTINS)
        converter.target_spec.supported_ops = ops
        if integer_io:
            io_type = tf.uint8 if target == "edgetpu" else tf.int8
            converter.inference_input_type = io_type
            converter.inference_output_type = io_type
    return converter


def export_tflite(
    model,
    path,
    *,
    quant: str = "int8",
    representative_data=None,
    num_calibration_samples: int = 100,
    target: str = "generic",
    input_shape=None,
    batch_size: int = 1,
    integer_io: Optional[bool] = None,
    allow_float_ops: bool = False,
    keep_float=(),
    verify: bool = True,
    num_verify_samples: int = 4,
) -> dict:
    """Convert ``model`` (``keras.Model`` or ``.keras`` path) and write ``path``.

    Args:
        quant: one of :data:`QUANT_TYPES`.
        representative_data: calibration images for ``int8`` / ``int8_full``
            (array, ``tf.data.Dataset`` or generator; see
            :mod:`quantization.calibration`). Also used, when given, to verify
            every other mode against the float model.
        num_calibration_samples: how many images calibrate the ranges.
        target: ``"generic"`` or ``"edgetpu"`` (full-integer uint8 I/O and
            Edge TPU graph formulations; needs ``int8`` / ``int8_full`` / ``qat``).
        input_shape: ``(H, W, C)`` of the export (default: the model's).
        batch_size: static batch (1 = on-device inference).
        integer_io: override integer model I/O (default: ``int8_full`` and
            the Edge TPU target).
        allow_float_ops: accept float kernels in an integer model (needed when
            QAT layers were skipped with ``quantize_annotate_layer``).
        keep_float: parts left in float32 inside an ``int8`` / ``int8_full``
            model for CPU speed, from :data:`FLOAT_ISLANDS` (``"attention"``,
            ``"normalization"``); QAT models get this from their
            ``QuantizeConfig.keep_float``. Not for the Edge TPU.
        verify: run the file in a child process before writing it.

    Returns:
        the :func:`quantization.inspection.inspect_tflite` report (without
        the op list) plus ``quant``, ``target``, ``seconds``, ``verify``
        (runtime, cosine of the outputs vs the float Keras model) and, for the
        Edge TPU target, ``edgetpu`` (mappable share, first CPU op).
    """
    from mvit3_keras.graph_clone import clone_with
    from mvit3_keras.io_utils import atomic_path
    from quantization.graph_rewrite import prepare_for_export
    from quantization.verify import RuntimeCrashError, describe_crash, verify_in_subprocess

    if quant not in QUANT_TYPES:
        raise ValueError(f"quant must be one of {QUANT_TYPES}, got {quant!r}")
    if target not in TARGETS:
        raise ValueError(f"target must be one of {TARGETS}, got {target!r}")
    if target == "edgetpu" and quant not in ("int8", "int8_full", "qat"):
        raise ValueError(
            f"the Edge TPU runs only full-integer models: use quant='int8_full' or 'qat', "
            f"not {quant!r}"
        )
    path = os.fspath(path)
    if not path.endswith(".tflite"):
        raise ValueError(f"output path must end with .tflite, got {path!r}")
    keep_float = tuple(keep_float or ())
    if keep_float and (target == "edgetpu" or quant not in ("int8", "int8_full")):
        raise ValueError(
            "keep_float applies to int8 / int8_full exports for CPUs; the Edge TPU needs every "
            "op in int8 (QAT models: set QuantizeConfig.keep_float instead)"
        )
    if integer_io is None:
        integer_io = quant == "int8_full" or target == "edgetpu"
    if target == "edgetpu" and quant == "int8":
        quant = "int8_full"
    start = time.time()
    model = _load_model(model)

    from quantization.qat import (
        bake_ranges,
        float_layers,
        is_qat_model,
        qat_float_islands,
        qat_target,
        uncalibrated_quantizers,
    )

    qat_model = is_qat_model(model)
    if quant == "qat" and not qat_model:
        raise ValueError(
            "quant='qat' needs a quantization-aware model from quantization.quantize_model "
            "(fine-tuned with model.fit); for a float model use quant='int8'"
        )
    if qat_model and quant != "qat":
        raise ValueError(
            f"this is a quantization-aware model: export it with quant='qat', not {quant!r}"
        )
    shape = tuple(model.inputs[0].shape[1:]) if input_shape is None else tuple(input_shape)
    if any(s is None for s in shape):
        raise ValueError(
            f"the model input {shape} has dynamic sides: pass input_shape=(H, W, 3) (the "
            "export has a static shape)"
        )
    if qat_model:
        missing = uncalibrated_quantizers(model)
        if missing:
            raise ValueError(
                f"{len(missing)} activation ranges of this QAT model were never set (e.g. "
                f"{missing[0]}): run quantization.qat.calibrate_ranges(model, images) or "
                "fine-tune it with fit() before exporting"
            )
        if qat_target(model) != target:
            raise ValueError(
                f"this QAT model was built for target={qat_target(model)!r}; use "
                f"quantize_model(..., config=QuantizeConfig(target={target!r})) for {target!r}"
            )
        prepared = clone_with(model, lambda layer: None, input_shape=shape, batch_size=batch_size)
        bake_ranges(prepared)
        allow_float_ops = allow_float_ops or bool(float_layers(model))
        allow_float_ops = allow_float_ops or bool(qat_float_islands(model))
    else:
        prepared = prepare_for_export(model, target, input_shape=shape, batch_size=batch_size)

    calibration = None
    if quant in ("int8", "int8_full"):
        calibration = collect_images(
            representative_data, num_samples=num_calibration_samples, input_shape=shape
        )
    elif representative_data is not None:
        calibration = collect_images(
            representative_data, num_samples=num_verify_samples, input_shape=shape
        )

    progress.stage(f"converting to {quant} (target {target})")
    frozen = _concrete_function(prepared, batch_size)
    converter = _converter(
        frozen,
        quant,
        target,
        calibration,
        batch_size,
        integer_io,
        allow_float_ops or bool(keep_float),
    )
    widened = []
    if keep_float and quant in ("int8", "int8_full"):
        flatbuffer, widened = _quantize_calibrated(
            converter, prepared, keep_float, integer_io, target
        )
    else:
        flatbuffer = run_converter(converter)
        if quant in ("int8", "int8_full") and illegal_add_outputs(flatbuffer):
            # an ADD range LiteRT would abort on: calibrate again and widen it
            converter = _converter(
                frozen, quant, target, calibration, batch_size, integer_io, allow_float_ops
            )
            flatbuffer, widened = _quantize_calibrated(
                converter, prepared, keep_float, integer_io, target
            )
    progress.stage("checking the file's ops and tensor types")
    report = inspect_tflite(flatbuffer, include_ops=target == "edgetpu")
    check_tflite(
        report,
        "int8_full" if integer_io and quant != "fp32" else quant,
        allow_float_ops=allow_float_ops or bool(keep_float),
    )

    verify_images = None
    if calibration is not None:
        verify_images = calibration[: max(1, min(num_verify_samples, len(calibration)))]
    else:
        rng = np.random.default_rng(0)
        verify_images = rng.random((max(1, num_verify_samples), *shape), dtype=np.float32)
    if len(verify_images) % batch_size:
        verify_images = verify_images[
            : max(batch_size, len(verify_images) // batch_size * batch_size)
        ]

    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(flatbuffer)
        if verify:
            progress.stage("verifying: load, allocate and invoke in a separate LiteRT process")
            (result,) = verify_in_subprocess([tmp], images=[verify_images])
            if not result.get("ok"):
                detail = describe_crash(result.get("crash_op")) if result.get("crashed") else ""
                raise RuntimeCrashError(
                    f"the exported {quant} model does not run in LiteRT ({result.get('error')})"
                    + (f"; crashing op: {detail}" if detail else "")
                    + "; nothing was written"
                )
            reference = _frozen_outputs(frozen, verify_images, batch_size)
            out0, ref0 = result["outputs"][0], reference[0]
            report["verify"] = {
                "backend": result["backend"],
                "separate_process": True,
                "num_images": int(len(verify_images)),
            }
            if np.issubdtype(ref0.dtype, np.integer):  # e.g. an in-model argmax mask
                report["verify"]["agreement_vs_float"] = float(np.mean(out0 == ref0))
            else:
                cos = cosine_similarity(out0, ref0)
                report["verify"].update(
                    cosine_vs_float_mean=float(cos.mean()),
                    cosine_vs_float_min=float(cos.min()),
                    max_abs_diff_vs_float=float(np.max(np.abs(out0 - ref0))),
                )
            report["verify"]["invoke_seconds"] = result["invoke_seconds"]
    if target == "edgetpu":
        from quantization.edgetpu import edgetpu_report

        et = edgetpu_report(flatbuffer)
        report["edgetpu"] = {
            k: et[k] for k in ("mapped_op_share", "mapped_mac_share", "first_cpu_op", "num_ops")
        }
    report.pop("ops", None)
    report.update(
        quant=quant,
        target=target,
        path=path,
        integer_io=bool(integer_io),
        keep_float=list(keep_float),
        widened_add_ranges=[sorted(r) for r in widened],
        input_shape=[batch_size, *shape],
        seconds=round(time.time() - start, 1),
    )
    return report
