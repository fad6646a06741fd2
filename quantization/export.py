"""``export_tflite``: a Keras model -> a checked, verified ``.tflite`` / LiteRT file.

The export runs in stages, each usable alone and each with a typed result (the
shape of ai-edge-quantizer's ``Quantizer`` calibrate / quantize / validate /
export and of TF Model Garden's ``official/vision/serving/export_tflite_lib.py``):

1. :func:`prepare` -> :class:`PreparedModel`: loads a ``.keras`` path, checks a
   QAT model against the options, rewrites the model into its export
   formulation at a static shape, batch 1 by default
   (:func:`quantization.graph_rewrite.prepare_for_export`); a detector gets the
   ``TFLite_Detection_PostProcess`` op;
2. :func:`calibrate` -> representative images (``int8`` / ``int8_full``);
3. :func:`convert` -> flatbuffer ``bytes``: builtin ops only (never TF Select),
   illegal int8 ADD ranges widened (:mod:`quantization.add_ranges`);
4. :func:`inspect` -> :class:`~quantization.inspection.TFLiteReport`, checked
   against the promise of the quantization type (Flex / custom ops, float
   kernels in an integer model, dynamic shapes fail loudly);
5. :func:`verify` -> :class:`~quantization.verify.VerifyResult`: loads,
   allocates and invokes the file in a separate LiteRT process and compares
   it with the converted float (or QAT) graph; a file that aborts the runtime
   is reported with the op that kills it. Works on an existing file too;
   then :func:`quantization.delegates.delegate_report`: per delegate (XNNPACK,
   GPU, Edge TPU) what of the file runs there;
6. :func:`write`: atomic (``mvit3_keras.io_utils.atomic_path``), last, so that
   nothing is written when a stage fails.

:func:`export_tflite` composes them and returns an :class:`ExportReport`.
Options (quantization type, target, ...) are validated once, in
:class:`~quantization.export_options.ExportOptions`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Optional

import numpy as np

from mvit3_keras import progress
from quantization.delegates import DelegateReport, delegate_report
from quantization.edgetpu import EdgeTPUSummary
from quantization.export_convert import calibrate, convert, convert_with_repairs
from quantization.export_options import (
    FLOAT_ISLANDS,
    QUANT_TYPES,
    TARGET_PROFILES,
    TARGETS,
    ExportOptions,
    QuantType,
    Target,
    export_options,
    parse_quant_type,
    parse_target,
)
from quantization.export_prepare import PreparedModel, load_keras_model, prepare
from quantization.inspection import TFLiteReport, check_tflite, inspect_tflite
from quantization.verify import (
    RuntimeCrashError,
    VerifyResult,
    cosine_similarity,
    verify_tflite,
)

__all__ = [
    "FLOAT_ISLANDS",
    "QUANT_TYPES",
    "TARGETS",
    "TARGET_PROFILES",
    "DelegateReport",
    "ExportOptions",
    "ExportReport",
    "PreparedModel",
    "QuantType",
    "Target",
    "calibrate",
    "convert",
    "cosine_similarity",
    "export_detector_tflite",
    "export_tflite",
    "inspect",
    "load_keras_model",
    "parse_quant_type",
    "parse_target",
    "prepare",
    "verify",
    "write",
]

verify = verify_tflite  # stage 5: path or bytes, images, reference outputs -> VerifyResult


def inspect(
    source, options: Optional[ExportOptions] = None, prepared: Optional[PreparedModel] = None
) -> TFLiteReport:
    """Stage 4: the :class:`TFLiteReport` of ``source`` (bytes or path); with
    ``options``, checked against what ``options.quant`` promises (raises
    :class:`~quantization.inspection.ExportCheckError`)."""
    report = inspect_tflite(source, include_ops=False)
    if options is not None:
        progress.stage("checking the file's ops and tensor types")
        check_tflite(
            report,
            options.checked_mode,
            allow_float_ops=(prepared.allow_float_ops if prepared else options.float_ops_allowed),
            allowed_custom_ops=prepared.custom_ops if prepared else (),
        )
    return report


def write(flatbuffer: bytes, path) -> str:
    """Stage 6: write ``flatbuffer`` to ``path`` (``.tflite``) atomically."""
    from mvit3_keras.io_utils import atomic_write_bytes

    path = _tflite_path(path)
    atomic_write_bytes(path, flatbuffer)
    return path


def _tflite_path(path) -> str:
    path = os.fspath(path)
    if not path.endswith(".tflite"):
        raise ValueError(f"output path must end with .tflite, got {path!r}")
    return path


@dataclasses.dataclass(frozen=True)
class ExportReport:
    """What :func:`export_tflite` wrote.

    ``file``: the inspection of the written file (without the op list);
    ``verify``: the LiteRT run (``None`` with ``verify=False``); ``delegates``:
    per delegate what runs there (:class:`~quantization.delegates.DelegateReport`:
    XNNPACK partitions from the runtime, GPU delegate compatibility, Edge TPU
    mappability of integer files); ``edgetpu``: the Edge TPU mappability (Edge TPU
    target only, also in ``delegates``); ``widened_add_ranges``: the int8 ADD / SUB
    outputs whose range was widened, per round.
    """

    path: str
    quant: QuantType
    target: Target
    input_shape: tuple  # (batch, H, W, C)
    integer_io: bool
    keep_float: tuple
    widened_add_ranges: tuple
    seconds: float
    file: TFLiteReport
    verify: Optional[VerifyResult] = None
    edgetpu: Optional[EdgeTPUSummary] = None
    delegates: Optional[DelegateReport] = None

    def to_dict(self) -> dict:
        """The flat JSON form (the file report's keys next to the export's)."""
        out = self.file.to_dict(include_ops=False)
        out.update(
            quant=self.quant.value,
            target=self.target.value,
            path=self.path,
            integer_io=self.integer_io,
            keep_float=list(self.keep_float),
            widened_add_ranges=[sorted(r) for r in self.widened_add_ranges],
            input_shape=list(self.input_shape),
            seconds=self.seconds,
        )
        if self.verify is not None:
            out["verify"] = self.verify.to_dict()
        if self.edgetpu is not None:
            out["edgetpu"] = self.edgetpu.to_dict()
        if self.delegates is not None:
            out["delegates"] = self.delegates.to_dict()
        return out

    def to_json(self, **kwargs) -> str:
        return json.dumps(self.to_dict(), default=str, **kwargs)


def verification_images(prepared: PreparedModel, options: ExportOptions, calibration):
    """The images the export verifies on: the first calibration images, else random
    ones; a whole number of static batches."""
    if calibration is not None:
        images = calibration[: max(1, min(options.num_verify_samples, len(calibration)))]
    else:
        rng = np.random.default_rng(0)
        shape = (max(1, options.num_verify_samples), *prepared.input_shape)
        images = rng.random(shape, dtype=np.float32)
    batch = prepared.batch_size
    if len(images) % batch:
        images = images[: max(batch, len(images) // batch * batch)]
    return images


def _verify_stage(flatbuffer: bytes, prepared, options, calibration) -> VerifyResult:
    progress.stage("verifying: load, allocate and invoke in a separate LiteRT process")
    images = verification_images(prepared, options, calibration)
    try:
        return verify(flatbuffer, images, prepared.reference_outputs(images))
    except RuntimeCrashError as err:
        raise RuntimeCrashError(
            f"the exported {options.quant.value} model: {err}; nothing was written"
        ) from err


def metadata_spec(prepared: PreparedModel, labels=None, metadata=None):
    """The :class:`quantization.metadata.MetadataSpec` an export embeds: ``metadata`` as
    given, else one made from ``labels`` (a list or a labels file) and the model's record
    (task, variant name); ``None`` when neither is given."""
    from mvit3_keras import model_record
    from quantization.metadata import TASKS, MetadataSpec

    if metadata is not None:
        if labels is not None:
            raise ValueError("pass labels= or metadata= (whose labels field holds them), not both")
        return metadata
    if labels is None:
        return None
    record = model_record(prepared.source) if prepared.source is not None else None
    # a backbone (no head of its own) is described like a classifier's outputs
    task = record.task if record is not None and record.task in TASKS else "classification"
    name = f"mvit3_keras {record.variant}" if record is not None else "mvit3_keras model"
    return MetadataSpec(task=task, labels=labels, name=name, description=f"{name} ({task})")


def with_metadata(flatbuffer: bytes, spec) -> bytes:
    """``flatbuffer`` with the TFLite Model Metadata of ``spec`` (unchanged for None)."""
    if spec is None:
        return flatbuffer
    from quantization.metadata import add_metadata

    return add_metadata(flatbuffer, spec)


def export_tflite(
    model,
    path,
    options: Optional[ExportOptions] = None,
    *,
    representative_data=None,
    labels=None,
    metadata=None,
    **kwargs,
) -> ExportReport:
    """Convert ``model`` (``keras.Model`` or ``.keras`` path: classifier, segmenter,
    SSD detector or QAT model), check and verify the file, then write ``path``.

    Args:
        options: an :class:`ExportOptions`; ``kwargs`` are its fields (``quant``,
            ``target``, ``input_shape``, ``batch_size``, ``integer_io``,
            ``allow_float_ops``, ``keep_float``, ``num_calibration_samples``,
            ``verify``, ``num_verify_samples``, ``detection_postprocess``) and
            override it.
        representative_data: calibration images for ``int8`` / ``int8_full``
            (array, ``tf.data.Dataset``, generator, or a folder of JPEG / PNG
            files that the model's evaluation transform preprocesses; see
            :mod:`quantization.calibration`). Also used, when given, to verify
            every other type against the float model.
        labels: class names (a list or a labels file, one per line): embeds TFLite
            Model Metadata (:mod:`quantization.metadata`: input normalization, labels,
            output semantics) so MediaPipe Tasks and the LiteRT Task Library load the
            file as it is; a count that does not match the classes is an error.
        metadata: a :class:`quantization.metadata.MetadataSpec` (instead of ``labels``).
    """
    start = time.time()
    options = export_options(options, **kwargs)
    path = _tflite_path(path)
    prepared = prepare(model, options)
    calibration = calibrate(prepared, options, representative_data)
    conversion = convert_with_repairs(prepared, options, calibration)
    flatbuffer = with_metadata(conversion.flatbuffer, metadata_spec(prepared, labels, metadata))
    file_report = inspect(flatbuffer, options, prepared)
    verified = _verify_stage(flatbuffer, prepared, options, calibration) if options.verify else None
    progress.stage("per-delegate report: XNNPACK partitions, GPU delegate, Edge TPU")
    delegates = delegate_report(flatbuffer, integer=options.quant.is_integer)
    edgetpu = delegates.edgetpu if options.target is Target.EDGETPU else None
    write(flatbuffer, path)
    return ExportReport(
        path=path,
        quant=options.quant,
        target=options.target,
        input_shape=(prepared.batch_size, *prepared.input_shape),
        integer_io=options.integer_io,
        keep_float=options.keep_float,
        widened_add_ranges=conversion.widened_add_ranges,
        seconds=round(time.time() - start, 1),
        file=file_report,
        verify=verified,
        edgetpu=edgetpu,
        delegates=delegates,
    )


def export_detector_tflite(detector, path, *, quant="fp32", verify=True, **postprocess_kwargs):
    """An SSD detector with the ``TFLite_Detection_PostProcess`` op:
    ``export_tflite(detector, path, quant=quant, detection_postprocess=postprocess_kwargs)``
    (see :func:`mvit3_keras.detection.detection_postprocess_module` for the keywords)."""
    return export_tflite(
        detector, path, quant=quant, verify=verify, detection_postprocess=postprocess_kwargs
    )
