"""TFLite Model Metadata for app runtimes (MediaPipe Tasks, the LiteRT Task Library).

:func:`add_metadata` takes a ``.tflite`` flatbuffer (bytes) and a
:class:`MetadataSpec` and returns new bytes: the model with a
``TFLITE_METADATA`` buffer (the ``metadata_schema.fbs`` FlatBuffer of
``tensorflow/tflite-support``, identifier ``M001``) and the labels file
appended as a zip archive (uncompressed), as the schema's "associated files"
are packed. It describes:

* the model: name, description, version, author, licence;
* the input image: RGB; for a float input the ``NormalizationOptions`` that map
  pixels 0..255 to the model's input range (MobileViT: [0, 1], i.e. pixel / 255
  with no mean/std, the official ``cvnets/data/transforms/image_pil.py``
  ``ToTensor``); for a uint8/int8 input, the tensor's quantization (no
  normalization: runtimes feed uint8 pixels as they are);
* the outputs, per task: classification logits ``[1, classes]`` with the labels
  (``TENSOR_AXIS_LABELS``); segmentation logits ``[1, H, W, classes]`` with the
  labels and a softmax activation (MediaPipe's ``SEGMENTER_METADATA``); SSD
  detection with the ``TFLite_Detection_PostProcess`` op (MobileViT paper,
  Sec. 4.2.2): ``location`` (ymin, xmin, ymax, xmax ratios), ``category``
  (``TENSOR_VALUE_LABELS``), ``score`` and ``number of detections``, the names
  and order MediaPipe's ``ObjectDetector`` looks up.

The writer is this module plus :mod:`quantization.metadata_schema` (the schema
tables written with the ``flatbuffers`` package): MediaPipe's metadata writers
do not import from the wheel (``mediapipe.tasks.cc`` is missing) and
``tflite-support`` needs the system library libusb-1.0 at import.
"""

from __future__ import annotations

import dataclasses
import io
import os
import zipfile
from typing import Optional

import flatbuffers
import numpy as np
from flatbuffers import flexbuffers

from quantization import metadata_schema as schema_md
from quantization.inspection import op_name, read_model, schema, tensor_info

TASKS = ("classification", "segmentation", "detection")
SCORED_TASKS = ("classification", "detection")  # outputs a score threshold applies to
METADATA_BUFFER_NAME = "TFLITE_METADATA"
SEGMENTER_METADATA_NAME = "SEGMENTER_METADATA"
LABELS_FILE = "labels.txt"
DETECTION_OP = "TFLite_Detection_PostProcess"
# MediaPipe's ObjectDetector finds the four outputs of the post-processing op by
# these tensor metadata names (detection_postprocessing_graph.cc).
DETECTION_OUTPUT_NAMES = ("location", "category", "score", "number of detections")
OUTPUT_KINDS = {
    "classification": ("logits",),
    "segmentation": ("mask logits",),
    "detection": DETECTION_OUTPUT_NAMES,
}


class MetadataError(ValueError):
    """The metadata cannot describe this model (nothing is written)."""


@dataclasses.dataclass(frozen=True)
class MetadataSpec:
    """What :func:`add_metadata` embeds.

    Attributes:
        task: ``classification``, ``segmentation`` or ``detection``.
        labels: one name per class (optional), or the path of a labels file
            (:func:`read_labels`). Classification and segmentation:
            one per output channel. Detection: one per foreground class (the
            values of the ``category`` output); a list with one more name is
            read as background first (the Keras detector's class 0) and the
            background name is dropped.
        input_range: the float input's value range for pixels 0..255
            (MobileViT: ``(0, 1)``).
        score_threshold: optional default score threshold for runtimes
            (``ScoreThresholdingOptions``; classification and detection).
    """

    task: str
    labels: tuple = ()
    name: str = "MobileViT"
    description: str = ""
    version: str = ""
    author: str = ""
    license: str = ""
    input_range: tuple = (0.0, 1.0)
    score_threshold: Optional[float] = None

    def __post_init__(self):
        if self.task not in TASKS:
            raise MetadataError(f"unknown task {self.task!r}: expected one of {TASKS}")
        if isinstance(self.labels, (str, os.PathLike)):
            object.__setattr__(self, "labels", read_labels(self.labels))
        labels = tuple(self.labels or ())
        for i, label in enumerate(labels):
            if not isinstance(label, str) or not label.strip() or "\n" in label or "\r" in label:
                raise MetadataError(
                    f"label {i} is {label!r}: labels must be non-empty one-line strings"
                )
        object.__setattr__(self, "labels", labels)
        low, high = (float(v) for v in self.input_range)
        if not high > low:
            raise MetadataError(
                f"input_range must be (low, high) with low < high, got {self.input_range}"
            )
        object.__setattr__(self, "input_range", (low, high))
        if self.score_threshold is not None and self.task not in SCORED_TASKS:
            raise MetadataError(
                f"score_threshold applies to {' and '.join(SCORED_TASKS)} only, not {self.task}"
            )

    @property
    def output_kinds(self) -> tuple:
        return OUTPUT_KINDS[self.task]


def read_labels(path) -> list:
    """One label per line of a UTF-8 text file; blank lines are an error."""
    path = os.fspath(path)
    try:
        with open(path, encoding="utf-8-sig") as f:
            text = f.read()
    except UnicodeDecodeError as err:
        raise MetadataError(f"{path}: labels must be UTF-8 text ({err})") from err
    lines = text.splitlines()
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            raise MetadataError(
                f"{path}: line {number} is blank; write one label per line, no blank lines"
            )
    if not lines:
        raise MetadataError(f"{path}: no labels (write one label per line)")
    return [line.strip() for line in lines]


# -- the input ----------------------------------------------------------------------------


def _static_image_input(model, subgraph) -> dict:
    if len(subgraph.inputs) != 1:
        raise MetadataError(
            f"image metadata needs one input tensor, the model has {len(subgraph.inputs)}"
        )
    info = tensor_info(model, subgraph, subgraph.inputs[0])
    dims = info["shape_signature"] or info["shape"]
    if any(d < 0 for d in dims):
        raise MetadataError(
            f"the input {info['name']!r} has a dynamic shape {dims}: app runtimes need a "
            "static [1, H, W, 3] input; export with a static input_shape and batch_size=1"
        )
    if len(dims) != 4 or dims[0] != 1 or dims[3] != 3:
        raise MetadataError(
            f"the input {info['name']!r} has shape {dims}: image metadata needs [1, H, W, 3] "
            "(batch 1, RGB); export with batch_size=1"
        )
    return info


def _float_input_metadata(spec: MetadataSpec) -> dict:
    low, high = spec.input_range
    std = 255.0 / (high - low)
    mean = -low * std + 0.0  # no negative zero
    return {
        "name": "image",
        "description": (
            f"RGB image, float32 in [{low:g}, {high:g}]: (pixel - {mean:g}) / {std:g} "
            "for pixels 0..255"
        ),
        "content": {"content_properties": ("ImageProperties", {"color_space": "RGB"})},
        "process_units": [{"options": ("NormalizationOptions", {"mean": [mean], "std": [std]})}],
        "stats": {"max": [high], "min": [low]},
    }


def _integer_input_metadata(spec: MetadataSpec, info: dict) -> dict:
    """uint8 / int8 input: runtimes feed pixels 0..255 (uint8) or pixel - 128 (int8)
    unchanged, so the tensor's quantization must map them onto ``input_range``."""
    quant = info["quantization"] or {}
    scale, zero = quant.get("scale"), quant.get("zero_point")
    offset = 0 if info["dtype"] == "uint8" else -128
    low, high = spec.input_range
    if not isinstance(scale, float) or not isinstance(zero, int):
        raise MetadataError(f"the {info['dtype']} input has no per-tensor quantization")
    real_low, real_high = scale * (offset - zero), scale * (offset + 255 - zero)
    tolerance = 0.01 * (high - low)
    if abs(real_low - low) > tolerance or abs(real_high - high) > tolerance:
        raise MetadataError(
            f"the {info['dtype']} input's quantization (scale {scale:g}, zero point {zero}) maps "
            f"pixels 0..255 to [{real_low:g}, {real_high:g}], not the input range [{low:g}, "
            f"{high:g}]: calibrate with images in [{low:g}, {high:g}] or pass the right input_range"
        )
    return {
        "name": "image",
        "description": (
            f"RGB image, {info['dtype']} = pixel{'' if offset == 0 else ' - 128'} for pixels "
            f"0..255 (quantization: real = {scale:g} * (q - {zero}))"
        ),
        "content": {"content_properties": ("ImageProperties", {"color_space": "RGB"})},
        "stats": {"max": [float(offset + 255)], "min": [float(offset)]},
    }


def _input_metadata(spec: MetadataSpec, info: dict) -> dict:
    if info["dtype"] == "float32":
        return _float_input_metadata(spec)
    if info["dtype"] in ("uint8", "int8"):
        return _integer_input_metadata(spec, info)
    raise MetadataError(f"image metadata needs a float32, uint8 or int8 input, not {info['dtype']}")


# -- the outputs ----------------------------------------------------------------------------


def _labels_file(file_type: str) -> dict:
    return {
        "name": LABELS_FILE,
        "description": "one class name per line, in the order of the class index",
        "type": file_type,
    }


def _check_label_count(labels: tuple, num_classes: int, what: str) -> None:
    if labels and len(labels) != num_classes:
        raise MetadataError(
            f"{len(labels)} labels for a model with {num_classes} {what}: give one label per "
            "class, in class-index order"
        )


def _single_output(model, subgraph, rank: int, layout: str) -> dict:
    if len(subgraph.outputs) != 1:
        raise MetadataError(f"expected one output tensor, the model has {len(subgraph.outputs)}")
    info = tensor_info(model, subgraph, subgraph.outputs[0])
    if len(info["shape"]) != rank or info["shape"][0] != 1:
        raise MetadataError(f"expected an output {layout}, got {info['shape']} ({info['name']!r})")
    return info


def _thresholding(spec: MetadataSpec) -> list:
    if spec.score_threshold is None:
        return []
    threshold = float(spec.score_threshold)
    return [{"options": ("ScoreThresholdingOptions", {"global_score_threshold": threshold})}]


def _class_axis_tensor(model, subgraph, spec: MetadataSpec, shape: str, **fields) -> dict:
    """The metadata of the one output whose last axis is the classes (``shape``: its
    layout, e.g. ``"[1, classes]"``), labelled by ``spec.labels`` when given."""
    info = _single_output(model, subgraph, shape.count(",") + 1, shape)
    _check_label_count(spec.labels, info["shape"][-1], "classes (output channels)")
    labels = [_labels_file("TENSOR_AXIS_LABELS")] if spec.labels else None
    return {**fields, "associated_files": labels}


LOGITS_TENSOR = {
    "name": "logits",
    "description": "class logits (softmax gives the probabilities; the top-1 is the argmax)",
    "content": {"content_properties": ("FeatureProperties", {})},
}
MASKS_TENSOR = {
    "name": "segmentation_masks",
    "description": "per-pixel class logits; the category mask is their argmax",
    "content": {"content_properties": ("ImageProperties", {"color_space": "GRAYSCALE"})},
}


def _classification_outputs(model, subgraph, spec: MetadataSpec):
    thresholds = _thresholding(spec) or None
    tensor = _class_axis_tensor(
        model, subgraph, spec, "[1, classes]", **LOGITS_TENSOR, process_units=thresholds
    )
    return [tensor], None, spec.labels


def _segmentation_outputs(model, subgraph, spec: MetadataSpec):
    tensor = _class_axis_tensor(model, subgraph, spec, "[1, H, W, classes]", **MASKS_TENSOR)
    # MediaPipe's image_segmenter_metadata_schema.fbs: the output activation.
    options = {"activation": "SOFTMAX", "min_parser_version": "1.0.0"}
    custom = {
        "name": SEGMENTER_METADATA_NAME,
        "data": schema_md.encode(
            "ImageSegmenterOptions", options, schema_md.SEGMENTER_METADATA_IDENTIFIER
        ),
    }
    return [tensor], [custom], spec.labels


def _detection_op(model, subgraph):
    ops = [op for op in subgraph.operators if op_name(model, op) == f"CUSTOM:{DETECTION_OP}"]
    if len(ops) != 1:
        raise MetadataError(
            f"task 'detection' needs one {DETECTION_OP} op, the model has {len(ops)}: export the "
            "detector with its post-processing (export_detector_tflite)"
        )
    op = ops[0]
    if sorted(subgraph.outputs) != sorted(op.outputs):
        raise MetadataError(f"the model's outputs are not the four outputs of {DETECTION_OP}")
    return op


def _detection_labels(labels: tuple, num_classes: int) -> tuple:
    if len(labels) == num_classes + 1:
        return labels[1:]  # background first, as the Keras detector's class 0
    _check_label_count(
        labels, num_classes, "foreground classes (or one more with background first)"
    )
    return labels


def _detection_outputs(model, subgraph, spec: MetadataSpec):
    op = _detection_op(model, subgraph)
    num_classes = int(flexbuffers.Loads(bytes(op.customOptions))["num_classes"])
    labels = _detection_labels(spec.labels, num_classes)
    per_box = {"min": 2, "max": 2}
    box_properties = {"index": [1, 0, 3, 2], "type": "BOUNDARIES", "coordinate_type": "RATIO"}
    feature = ("FeatureProperties", {})
    location, category, score, count = (
        {
            "name": "location",
            "description": "boxes (ymin, xmin, ymax, xmax) as fractions of the image size",
            "content": {
                "content_properties": ("BoundingBoxProperties", box_properties),
                "range": per_box,
            },
        },
        {
            "name": "category",
            "description": "class index of each box (0 = the first foreground class)",
            "content": {"content_properties": feature, "range": per_box},
            "associated_files": [_labels_file("TENSOR_VALUE_LABELS")] if labels else None,
        },
        {
            "name": "score",
            "description": "score of each box (sigmoid or softmax of the class logits)",
            "content": {"content_properties": feature, "range": per_box},
            "process_units": _thresholding(spec) or None,
        },
        {
            "name": "number of detections",
            "description": "number of valid boxes",
            "content": {"content_properties": feature},
        },
    )
    by_tensor = dict(zip(op.outputs, (location, category, score, count)))
    return [by_tensor[index] for index in subgraph.outputs], None, labels


_OUTPUTS = {
    "classification": _classification_outputs,
    "segmentation": _segmentation_outputs,
    "detection": _detection_outputs,
}

_DESCRIPTIONS = {
    "classification": "MobileViT image classifier",
    "segmentation": "MobileViT semantic segmentation",
    "detection": "MobileViT SSDLite object detector",
}


# -- the file ---------------------------------------------------------------------------------


def _model_metadata(spec: MetadataSpec, subgraph_metadata: dict) -> dict:
    metadata = {
        "name": spec.name,
        "description": spec.description or _DESCRIPTIONS[spec.task],
        "version": spec.version or None,
        "author": spec.author or None,
        "license": spec.license or None,
        "subgraph_metadata": [subgraph_metadata],
    }
    metadata = {key: value for key, value in metadata.items() if value is not None}
    metadata["min_parser_version"] = schema_md.min_parser_version(metadata)
    return metadata


def _with_metadata_buffer(model, metadata: bytes) -> bytes:
    """``model`` packed with ``metadata`` in its ``TFLITE_METADATA`` buffer (replaced
    if present), as tflite-support's ``MetadataPopulator`` stores it."""
    s = schema()
    if any(getattr(b, "offset", 0) > 1 for b in model.buffers):
        raise MetadataError("models with external buffers (> 2 GB) are not supported")
    buffer = s.BufferT()
    buffer.data = np.frombuffer(metadata, dtype=np.uint8)
    model.metadata = list(model.metadata or [])
    existing = [m for m in model.metadata if m.name == METADATA_BUFFER_NAME.encode()]
    if existing:
        model.buffers[existing[0].buffer] = buffer
    else:
        model.buffers.append(buffer)
        entry = s.MetadataT()
        entry.name = METADATA_BUFFER_NAME
        entry.buffer = len(model.buffers) - 1
        model.metadata.append(entry)
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def _append_files(flatbuffer: bytes, files: dict) -> bytes:
    """``flatbuffer`` followed by a zip archive (stored, fixed dates) of ``files``."""
    out = io.BytesIO(flatbuffer)
    out.seek(0, io.SEEK_END)
    if files:
        with zipfile.ZipFile(out, "a", compression=zipfile.ZIP_STORED) as archive:
            for name, data in files.items():
                archive.writestr(zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0)), data)
    return out.getvalue()


def add_metadata(flatbuffer: bytes, spec: MetadataSpec) -> bytes:
    """``flatbuffer`` (a ``.tflite`` model) with TFLite Model Metadata and its labels file.

    Raises :class:`MetadataError` (nothing to write) for a dynamic or batched
    input, a label count that does not match the model's classes, or outputs
    that do not fit ``spec.task``. Any metadata and files already in
    ``flatbuffer`` are replaced.
    """
    if not isinstance(spec, MetadataSpec):
        raise TypeError(f"spec must be a MetadataSpec, got {type(spec).__name__}")
    model, _ = read_model(flatbuffer)
    if len(model.subgraphs) != 1:
        raise MetadataError(
            f"image metadata needs one subgraph, the model has {len(model.subgraphs)}"
        )
    subgraph = model.subgraphs[0]
    input_metadata = _input_metadata(spec, _static_image_input(model, subgraph))
    outputs, custom, labels = _OUTPUTS[spec.task](model, subgraph, spec)
    subgraph_metadata = {
        "name": spec.name,
        "input_tensor_metadata": [input_metadata],
        "output_tensor_metadata": outputs,
        "custom_metadata": custom,
    }
    metadata = _model_metadata(spec, subgraph_metadata)
    encoded = schema_md.encode("ModelMetadata", metadata, schema_md.MODEL_METADATA_IDENTIFIER)
    packed = _with_metadata_buffer(model, encoded)
    files = (
        {LABELS_FILE: "".join(f"{label}\n" for label in labels).encode("utf-8")} if labels else {}
    )
    return _append_files(packed, files)


# -- reading ------------------------------------------------------------------------------------


def read_metadata(source) -> dict:
    """The ``ModelMetadata`` of a ``.tflite`` (bytes or path) as a dict; a known custom
    metadata (``SEGMENTER_METADATA``) decoded under ``"options"``. Empty dict: none."""
    model, _ = read_model(source)
    entries = [m for m in (model.metadata or []) if m.name == METADATA_BUFFER_NAME.encode()]
    if not entries:
        return {}
    data = bytes(model.buffers[entries[0].buffer].data)
    metadata = schema_md.decode(data, "ModelMetadata", schema_md.MODEL_METADATA_IDENTIFIER)
    for subgraph in metadata.get("subgraph_metadata", []):
        for custom in subgraph.get("custom_metadata", []):
            if custom.get("name") == SEGMENTER_METADATA_NAME:
                custom["options"] = schema_md.decode(
                    custom.pop("data"),
                    "ImageSegmenterOptions",
                    schema_md.SEGMENTER_METADATA_IDENTIFIER,
                )
    return metadata


def read_associated_files(source) -> dict:
    """``{name: bytes}`` of the files packed after the flatbuffer (empty: none)."""
    if isinstance(source, (bytes, bytearray)):
        data = bytes(source)
    else:
        with open(os.fspath(source), "rb") as f:
            data = f.read()
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            return {name: archive.read(name) for name in archive.namelist()}
    except zipfile.BadZipFile:
        return {}


__all__ = [
    "DETECTION_OUTPUT_NAMES",
    "LABELS_FILE",
    "MetadataError",
    "MetadataSpec",
    "OUTPUT_KINDS",
    "TASKS",
    "add_metadata",
    "read_associated_files",
    "read_labels",
    "read_metadata",
]
