"""The TFLite Model Metadata FlatBuffer schema: the tables ``quantization.metadata`` writes.

A small, table-driven encoder/decoder written from the schema definition
``metadata_schema.fbs`` (``tensorflow/tflite-support``:
``tensorflow_lite_support/metadata/metadata_schema.fbs``, also shipped by
MediaPipe as ``mediapipe/tasks/metadata/metadata_schema.fbs``; file identifier
``M001``) and MediaPipe's ``image_segmenter_metadata_schema.fbs`` (``V001``).
Only the tables used for image classification, segmentation and detection are
declared; their field order is the schema's (a FlatBuffer field's slot is its
position in the table, a union takes two slots: its type, then its value).

Values are plain dicts (field name -> value); enums are written and read by
name, unions as ``(member table name, dict)``.
"""

from __future__ import annotations

import flatbuffers
import numpy as np
from flatbuffers import number_types
from flatbuffers.table import Table

MODEL_METADATA_IDENTIFIER = b"M001"
SEGMENTER_METADATA_IDENTIFIER = b"V001"

ENUMS = {
    "AssociatedFileType": (
        "UNKNOWN",
        "DESCRIPTIONS",
        "TENSOR_AXIS_LABELS",
        "TENSOR_VALUE_LABELS",
        "TENSOR_AXIS_SCORE_CALIBRATION",
        "VOCABULARY",
        "SCANN_INDEX_FILE",
    ),
    "ColorSpaceType": ("UNKNOWN", "RGB", "GRAYSCALE"),
    "BoundingBoxType": ("UNKNOWN", "BOUNDARIES", "UPPER_LEFT", "CENTER"),
    "CoordinateType": ("RATIO", "PIXEL"),
    "Activation": ("NONE", "SIGMOID", "SOFTMAX"),
}

# union name -> member tables, in declaration order (type value = position + 1)
UNIONS = {
    "ContentProperties": (
        "FeatureProperties",
        "ImageProperties",
        "BoundingBoxProperties",
        "AudioProperties",
    ),
    "ProcessUnitOptions": (
        "NormalizationOptions",
        "ScoreCalibrationOptions",
        "ScoreThresholdingOptions",
    ),
}

# table -> fields in schema order: (name, kind). Kinds: str, u32, i32, f32,
# enum:E, T (a table), [T] / [str] / [f32] / [u32] / [u8a16] (vectors;
# u8a16 = bytes aligned to 16), union:U (two slots).
TABLES = {
    "AssociatedFile": (
        ("name", "str"),
        ("description", "str"),
        ("type", "enum:AssociatedFileType"),
        ("locale", "str"),
        ("version", "str"),
    ),
    "FeatureProperties": (),
    "ImageSize": (("width", "u32"), ("height", "u32")),
    "ImageProperties": (("color_space", "enum:ColorSpaceType"), ("default_size", "ImageSize")),
    "BoundingBoxProperties": (
        ("index", "[u32]"),
        ("type", "enum:BoundingBoxType"),
        ("coordinate_type", "enum:CoordinateType"),
    ),
    "AudioProperties": (("sample_rate", "u32"), ("channels", "u32")),
    "ValueRange": (("min", "i32"), ("max", "i32")),
    "Content": (("content_properties", "union:ContentProperties"), ("range", "ValueRange")),
    "NormalizationOptions": (("mean", "[f32]"), ("std", "[f32]")),
    "ScoreCalibrationOptions": (("score_transformation", "u8"), ("default_score", "f32")),
    "ScoreThresholdingOptions": (("global_score_threshold", "f32"),),
    "ProcessUnit": (("options", "union:ProcessUnitOptions"),),
    "Stats": (("max", "[f32]"), ("min", "[f32]")),
    "TensorMetadata": (
        ("name", "str"),
        ("description", "str"),
        ("dimension_names", "[str]"),
        ("content", "Content"),
        ("process_units", "[ProcessUnit]"),
        ("stats", "Stats"),
        ("associated_files", "[AssociatedFile]"),
    ),
    "CustomMetadata": (("name", "str"), ("data", "[u8a16]")),
    "SubGraphMetadata": (
        ("name", "str"),
        ("description", "str"),
        ("input_tensor_metadata", "[TensorMetadata]"),
        ("output_tensor_metadata", "[TensorMetadata]"),
        ("associated_files", "[AssociatedFile]"),
        ("input_process_units", "[ProcessUnit]"),
        ("output_process_units", "[ProcessUnit]"),
        ("input_tensor_groups", "[TensorGroup]"),
        ("output_tensor_groups", "[TensorGroup]"),
        ("custom_metadata", "[CustomMetadata]"),
    ),
    "TensorGroup": (("name", "str"), ("tensor_names", "[str]")),
    "ModelMetadata": (
        ("name", "str"),
        ("description", "str"),
        ("version", "str"),
        ("subgraph_metadata", "[SubGraphMetadata]"),
        ("author", "str"),
        ("license", "str"),
        ("associated_files", "[AssociatedFile]"),
        ("min_parser_version", "str"),
    ),
    # image_segmenter_metadata_schema.fbs (root of SEGMENTER_METADATA custom metadata)
    "ImageSegmenterOptions": (("activation", "enum:Activation"), ("min_parser_version", "str")),
}

_SCALARS = {
    "u8": (number_types.Uint8Flags, "PrependUint8Slot", np.uint8),
    "u32": (number_types.Uint32Flags, "PrependUint32Slot", np.uint32),
    "i32": (number_types.Int32Flags, "PrependInt32Slot", np.int32),
    "f32": (number_types.Float32Flags, "PrependFloat32Slot", np.float32),
}


def _slots(table: str):
    """``(name, kind, slot)`` per field; a union uses two slots (type, value)."""
    slot = 0
    for name, kind in TABLES[table]:
        yield name, kind, slot
        slot += 2 if kind.startswith("union:") else 1


def _num_slots(table: str) -> int:
    return sum(2 if kind.startswith("union:") else 1 for _, kind in TABLES[table])


# -- writing ---------------------------------------------------------------------------


def _encode_vector(builder, kind: str, values):
    element = kind[1:-1]
    if element in ("f32", "u32"):
        return builder.CreateNumpyVector(np.asarray(values, dtype=_SCALARS[element][2]))
    if element == "u8a16":
        data = bytes(values)
        builder.StartVector(1, len(data), 16)
        for byte in reversed(data):
            builder.PrependUint8(byte)
        return builder.EndVector()
    if element == "str":
        offsets = [builder.CreateString(v) for v in values]
    else:
        offsets = [encode_table(builder, element, v) for v in values]
    builder.StartVector(4, len(offsets), 4)
    for offset in reversed(offsets):
        builder.PrependUOffsetTRelative(offset)
    return builder.EndVector()


def _encode_field(builder, kind: str, value):
    """The offset of a non-scalar field (created before its table starts)."""
    if kind == "str":
        return builder.CreateString(value)
    if kind.startswith("["):
        return _encode_vector(builder, kind, value)
    if kind.startswith("union:"):
        member, fields = value
        return encode_table(builder, member, fields)
    return encode_table(builder, kind, value)


def _enum_value(kind: str, value) -> int:
    names = ENUMS[kind.split(":", 1)[1]]
    if value not in names:
        raise ValueError(f"{value!r} is not a {kind[5:]}; expected one of {names}")
    return names.index(value)


def encode_table(builder, table: str, value: dict) -> int:
    """Write the table ``table`` holding ``value`` (field name -> value); its offset."""
    unknown = set(value) - {name for name, _ in TABLES[table]}
    if unknown:
        raise ValueError(f"{table} has no field(s) {sorted(unknown)}")
    fields = [
        (name, kind, slot) for name, kind, slot in _slots(table) if value.get(name) is not None
    ]
    offsets = {
        name: _encode_field(builder, kind, value[name])
        for name, kind, _ in fields
        if kind not in _SCALARS and not kind.startswith("enum:")
    }
    builder.StartObject(_num_slots(table))
    for name, kind, slot in fields:
        if kind.startswith("enum:"):
            builder.PrependInt8Slot(slot, _enum_value(kind, value[name]), 0)
        elif kind in _SCALARS:
            getattr(builder, _SCALARS[kind][1])(slot, value[name], 0)
        elif kind.startswith("union:"):
            member = value[name][0]
            builder.PrependUint8Slot(slot, UNIONS[kind[6:]].index(member) + 1, 0)
            builder.PrependUOffsetTRelativeSlot(slot + 1, offsets[name], 0)
        else:
            builder.PrependUOffsetTRelativeSlot(slot, offsets[name], 0)
    return builder.EndObject()


def encode(table: str, value: dict, file_identifier: bytes) -> bytes:
    """A finished FlatBuffer whose root is ``table``."""
    builder = flatbuffers.Builder(1024)
    builder.Finish(encode_table(builder, table, value), file_identifier=file_identifier)
    return bytes(builder.Output())


# -- versions ---------------------------------------------------------------------------

# The schema version that added a field, enum value or union member (the
# "Added in" history of metadata_schema.fbs); everything else is 1.0.0.
FIELD_VERSIONS = {
    ("SubGraphMetadata", "input_process_units"): (1, 1, 0),
    ("SubGraphMetadata", "output_process_units"): (1, 1, 0),
    ("SubGraphMetadata", "input_tensor_groups"): (1, 2, 0),
    ("SubGraphMetadata", "output_tensor_groups"): (1, 2, 0),
    ("SubGraphMetadata", "custom_metadata"): (1, 5, 0),
    ("AssociatedFile", "version"): (1, 4, 1),
}
VALUE_VERSIONS = {
    "VOCABULARY": (1, 0, 1),
    "SCANN_INDEX_FILE": (1, 4, 0),
    "AudioProperties": (1, 3, 0),
}


def min_parser_version(value: dict, table: str = "ModelMetadata") -> str:
    """The oldest metadata parser that understands every field set in ``value``:
    the newest "Added in" version among them (``ModelMetadata.min_parser_version``)."""
    return ".".join(str(v) for v in _newest_version(value, table))


def _newest_version(value: dict, table: str) -> tuple:
    newest = (1, 0, 0)
    for name, kind in TABLES[table]:
        field = value.get(name)
        if field is None:
            continue
        newest = max(newest, FIELD_VERSIONS.get((table, name), newest))
        if kind.startswith("enum:"):
            newest = max(newest, VALUE_VERSIONS.get(field, newest))
        elif kind.startswith("union:"):
            newest = max(newest, VALUE_VERSIONS.get(field[0], newest))
            newest = max(newest, _newest_version(field[1], field[0]))
        elif kind.startswith("[") and kind[1:-1] in TABLES:
            for item in field:
                newest = max(newest, _newest_version(item, kind[1:-1]))
        elif kind in TABLES:
            newest = max(newest, _newest_version(field, kind))
    return newest


# -- reading ---------------------------------------------------------------------------


def _decode_vector(tab: Table, offset: int, kind: str):
    element = kind[1:-1]
    start, length = tab.Vector(offset), tab.VectorLen(offset)
    if element in ("f32", "u32", "u8a16"):
        dtype = np.uint8 if element == "u8a16" else _SCALARS[element][2]
        values = np.frombuffer(bytes(tab.Bytes), dtype=dtype, count=length, offset=start)
        return bytes(values) if element == "u8a16" else values.tolist()
    if element == "str":
        return [tab.String(start + 4 * i).decode("utf-8") for i in range(length)]
    return [decode_table(tab.Bytes, tab.Indirect(start + 4 * i), element) for i in range(length)]


def _decode_field(tab: Table, slot: int, kind: str):
    offset = tab.Offset(4 + 2 * slot)
    if kind.startswith("union:"):
        type_offset, offset = offset, tab.Offset(4 + 2 * (slot + 1))
        if not type_offset or not offset:
            return None
        member = UNIONS[kind[6:]][tab.Get(number_types.Uint8Flags, type_offset + tab.Pos) - 1]
        return member, decode_table(tab.Bytes, tab.Indirect(offset + tab.Pos), member)
    if kind.startswith("enum:"):
        raw = tab.Get(number_types.Int8Flags, offset + tab.Pos) if offset else 0
        return ENUMS[kind[5:]][raw]
    if not offset:
        return None
    if kind in _SCALARS:
        return tab.Get(_SCALARS[kind][0], offset + tab.Pos)
    if kind == "str":
        return tab.String(offset + tab.Pos).decode("utf-8")
    if kind.startswith("["):
        return _decode_vector(tab, offset, kind)
    return decode_table(tab.Bytes, tab.Indirect(offset + tab.Pos), kind)


def decode_table(buf, pos: int, table: str) -> dict:
    """The fields of ``table`` at ``pos`` that are set (enums: also their default)."""
    tab = Table(buf, pos)
    values = {name: _decode_field(tab, slot, kind) for name, kind, slot in _slots(table)}
    return {name: v for name, v in values.items() if v is not None}


def decode(data: bytes, table: str, file_identifier: bytes) -> dict:
    """The root ``table`` of a FlatBuffer with ``file_identifier``."""
    data = bytes(data)
    if len(data) < 8 or data[4:8] != file_identifier:
        raise ValueError(
            f"not a {table} FlatBuffer (file identifier {file_identifier.decode()} missing)"
        )
    root = flatbuffers.encode.Get(flatbuffers.packer.uoffset, data, 0)
    return decode_table(bytearray(data), root, table)


__all__ = [
    "ENUMS",
    "MODEL_METADATA_IDENTIFIER",
    "SEGMENTER_METADATA_IDENTIFIER",
    "TABLES",
    "UNIONS",
    "decode",
    "decode_table",
    "encode",
    "encode_table",
    "min_parser_version",
]
