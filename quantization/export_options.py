"""What an export produces: the quantization type, the target and the other options,
validated once (:class:`ExportOptions`).

Quantization types (the TF Model Garden enumeration of
``official/vision/serving/export_tflite_lib.py``):

=============  =====================================================================
``fp32``       float kernels (reference for accuracy / latency)
``fp16``       float16 weights, float compute
``dynamic``    int8 weights, activations quantized on the fly (dynamic range)
``int8``       int8 kernels, float input/output (QUANTIZE / DEQUANTIZE at the ends)
``int8_full``  int8 kernels and int8 input/output (uint8 with ``target="edgetpu"``)
``qat``        int8 kernels from a quantization-aware-trained model
               (:func:`quantization.quantize_model`): ranges come from its fake-quant
               layers, no calibration
=============  =====================================================================

Targets (:class:`Target`; what each one produces is one row of
:data:`TARGET_PROFILES`):

============  ==========================================================================
``cpu``       phone / desktop CPUs, LiteRT with XNNPACK (the default): ``int8`` keeps
              the float islands of :data:`TARGET_PROFILES` in float32, because
              XNNPACK has no int8 BATCH_MATMUL / SOFTMAX and every int8 one splits
              the delegated graph into slow builtin kernels
``npu``       NPUs / NNAPI: full-integer, every op int8, int8 input / output
``edgetpu``   the Edge TPU: full-integer, uint8 input / output and the Edge TPU
              graph formulations of :mod:`mvit3_keras.layers` (their ``target`` switch)
``gpu``       the GPU delegate: the float16 file (``quant`` ``fp16`` or ``fp32``;
              integer types are an error: the GPU delegate computes in float)
``generic``   every op int8 with float input / output: the ``int8`` file of the
              releases before the per-device targets (kept so that old calls give
              the same file)
============  ==========================================================================

``quant=None`` (the default) picks the target's default type (``int8`` for ``cpu``
and ``generic``, ``int8_full`` for ``npu`` / ``edgetpu``, ``fp16`` for ``gpu``).
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Mapping
from typing import Optional


class Choice(str, enum.Enum):
    """A string enum of command-line choices: prints as its value."""

    def __str__(self) -> str:
        return self.value


class QuantType(Choice):
    """How the exported file computes (see the module docstring)."""

    FP32 = "fp32"
    FP16 = "fp16"
    DYNAMIC = "dynamic"
    INT8 = "int8"
    INT8_FULL = "int8_full"
    QAT = "qat"

    @property
    def is_integer(self) -> bool:
        """int8 kernels throughout (``int8``, ``int8_full``, ``qat``)."""
        return self in (QuantType.INT8, QuantType.INT8_FULL, QuantType.QAT)

    @property
    def is_post_training_int8(self) -> bool:
        """int8 from calibrated ranges (``int8``, ``int8_full``)."""
        return self in (QuantType.INT8, QuantType.INT8_FULL)


class Target(Choice):
    """The device family the file is formulated for (see the module docstring)."""

    CPU = "cpu"
    NPU = "npu"
    EDGETPU = "edgetpu"
    GPU = "gpu"
    GENERIC = "generic"

    @property
    def formulation(self) -> str:
        """The graph formulation of :func:`quantization.graph_rewrite.prepare_for_export`
        and of QAT models (``QuantizeConfig.target``): ``"edgetpu"`` or ``"generic"``."""
        return "edgetpu" if self is Target.EDGETPU else "generic"

    @property
    def full_integer(self) -> bool:
        """Every op in int8 and integer I/O (``npu``, ``edgetpu``)."""
        return self in (Target.NPU, Target.EDGETPU)


def _parse_enum(enum_cls, value, what: str):
    if isinstance(value, enum_cls):
        return value
    try:
        return enum_cls(value)
    except ValueError:
        valid = ", ".join(repr(member.value) for member in enum_cls)
        raise ValueError(f"{what} must be one of {valid}; got {value!r}") from None


def parse_quant_type(value) -> QuantType:
    """``value`` (a :class:`QuantType` or its string) as a :class:`QuantType`."""
    return _parse_enum(QuantType, value, "quant")


def parse_target(value) -> Target:
    """``value`` (a :class:`Target` or its string) as a :class:`Target`."""
    return _parse_enum(Target, value, "target")


QUANT_TYPES = tuple(member.value for member in QuantType)
TARGETS = tuple(member.value for member in Target)

# Parts of the graph that ``keep_float`` may leave in float32 inside an int8 model
# (CPU target): their int8 kernels are not in XNNPACK, so each one splits the
# delegated graph and runs in TFLite's slower builtin kernels.
FLOAT_ISLANDS = {
    "attention": "BATCH_MATMUL + SOFTMAX of the attention cores",
    "normalization": "the LayerNorm / GroupNorm statistics: square, variance MEAN, ADD(eps), "
    "RSQRT and the normalizing MUL",
}


@dataclasses.dataclass(frozen=True)
class TargetProfile:
    """What a :class:`Target` produces.

    Attributes:
        device: the runtime / delegate the file is for.
        default_quant: the type of ``quant=None``.
        quants: the types the target accepts.
        int8_float_islands: the :data:`FLOAT_ISLANDS` an ``int8`` file keeps in
            float32 when ``keep_float`` is not given.
    """

    device: str
    default_quant: QuantType
    quants: tuple
    int8_float_islands: tuple = ()


_ALL_QUANTS = tuple(QuantType)
_INTEGER_QUANTS = (QuantType.INT8, QuantType.INT8_FULL, QuantType.QAT)

# One row per target. The cpu islands: the fastest set on XNNPACK (2 threads, batch 1,
# 256x256, official reference weights, fastest of 4 alternated rounds on a loaded
# machine). MobileViTv3-XXS: both 23.7 ms, attention only 25.1, normalization only
# 53.2, none 53.1 (fp32 24.2); MobileViTv3-0.5: all four within noise (23-26 ms).
# The islands do not cost accuracy (logit cosine vs float 0.9963 vs 0.9961 all-int8;
# 0.9878 for every set of the v2 model). benchmarks/targets.py compares the targets.
# Detectors: the same islands (the SSD score SOFTMAX stays int8: keeping it in float
# changed neither speed nor agreement, 99.4 % of the float file's top-20 detections).
TARGET_PROFILES = {
    Target.CPU: TargetProfile(
        "phone / desktop CPU (LiteRT, XNNPACK)",
        QuantType.INT8,
        _ALL_QUANTS,
        int8_float_islands=("attention", "normalization"),
    ),
    Target.NPU: TargetProfile("NPU / NNAPI (full-integer)", QuantType.INT8_FULL, _INTEGER_QUANTS),
    Target.EDGETPU: TargetProfile("Coral Edge TPU", QuantType.INT8_FULL, _INTEGER_QUANTS),
    Target.GPU: TargetProfile(
        "GPU delegate (OpenCL / OpenGL / Metal)", QuantType.FP16, (QuantType.FP16, QuantType.FP32)
    ),
    Target.GENERIC: TargetProfile("any LiteRT runtime, every op int8", QuantType.INT8, _ALL_QUANTS),
}


def _target_quant(target: Target, quant) -> QuantType:
    """``quant`` (``None``: the target's default) checked against ``target``; ``int8``
    becomes ``int8_full`` on the full-integer targets."""
    profile = TARGET_PROFILES[target]
    if quant is None:
        return profile.default_quant
    quant = parse_quant_type(quant)
    if quant not in profile.quants:
        valid = ", ".join(repr(q.value) for q in profile.quants)
        hint = {
            Target.GPU: "the GPU delegate computes in float: use quant='fp16' (its default) or "
            "'fp32'; for int8 use target='cpu' or 'npu'",
            Target.EDGETPU: "the Edge TPU runs only full-integer models: use quant='int8_full' "
            "or 'qat'",
        }.get(target, "NPUs run full-integer models: use quant='int8_full' or 'qat'")
        raise ValueError(
            f"target={target.value!r} takes quant {valid}, not {quant.value!r}: {hint}"
        )
    if target.full_integer and quant is QuantType.INT8:
        return QuantType.INT8_FULL
    return quant


def parse_keep_float(value) -> tuple:
    """``keep_float`` as a tuple of :data:`FLOAT_ISLANDS` names; accepts a sequence
    or a comma-separated string (``"attention,normalization"``; ``"none"``: no island)."""
    if not value:
        return ()
    if isinstance(value, str):
        value = [] if value.strip().lower() == "none" else value.split(",")
    parts = tuple(str(part).strip() for part in value if str(part).strip())
    unknown = sorted(set(parts) - set(FLOAT_ISLANDS))
    if unknown:
        raise ValueError(f"keep_float accepts {sorted(FLOAT_ISLANDS)}, got {unknown}")
    return parts


def _positive(name: str, value) -> int:
    if int(value) < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")
    return int(value)


@dataclasses.dataclass(frozen=True)
class ExportOptions:
    """Every export option, checked together when the object is built.

    Attributes:
        quant: a :class:`QuantType` (or its string); ``None``: the target's
            default (:data:`TARGET_PROFILES`).
        target: a :class:`Target` (or its string), default ``cpu``; the
            full-integer targets (``npu``, ``edgetpu``) turn ``int8`` into
            ``int8_full``.
        input_shape: ``(H, W, C)`` of the export (default: the model's).
        batch_size: static batch (1 = on-device inference).
        integer_io: integer model I/O; default: ``int8_full`` and the full-integer
            targets.
        allow_float_ops: accept float kernels in an integer model (QAT layers
            skipped with ``quantize_annotate_layer``).
        keep_float: :data:`FLOAT_ISLANDS` left in float32 inside an ``int8`` /
            ``int8_full`` model for CPU speed (not for the full-integer targets);
            ``None``: the target's islands for ``int8`` (:data:`TARGET_PROFILES`),
            ``()`` / ``"none"``: every op int8.
        num_calibration_samples: how many images calibrate the int8 ranges.
        verify: run the file in a separate LiteRT process before writing it.
        num_verify_samples: images the verification runs.
        detection_postprocess: keyword arguments of
            :func:`mvit3_keras.detection.detection_postprocess_module` (detectors only).
    """

    quant: Optional[QuantType] = None
    target: Target = Target.CPU
    input_shape: Optional[tuple] = None
    batch_size: int = 1
    integer_io: Optional[bool] = None
    allow_float_ops: bool = False
    keep_float: Optional[tuple] = None
    num_calibration_samples: int = 100
    verify: bool = True
    num_verify_samples: int = 4
    detection_postprocess: Mapping = dataclasses.field(default_factory=dict)
    # what the caller asked for (quant, keep_float): export_options() re-resolves it
    requested: tuple = dataclasses.field(init=False, repr=False, compare=False)

    def __post_init__(self):
        target = parse_target(self.target)
        quant = _target_quant(target, self.quant)
        keep_float = self._resolved_keep_float(target, quant)
        integer_io = self.integer_io
        if integer_io is None:
            integer_io = quant is QuantType.INT8_FULL or target.full_integer
        if integer_io and target is Target.GPU:
            raise ValueError("target='gpu' files have float input / output: drop integer_io")
        shape = None if self.input_shape is None else tuple(self.input_shape)
        if shape is not None and len(shape) != 3:
            raise ValueError(f"input_shape is (H, W, C), got {self.input_shape!r}")
        fields = dict(
            quant=quant,
            target=target,
            input_shape=shape,
            batch_size=_positive("batch_size", self.batch_size),
            integer_io=bool(integer_io),
            keep_float=keep_float,
            num_calibration_samples=_positive(
                "num_calibration_samples", self.num_calibration_samples
            ),
            num_verify_samples=_positive("num_verify_samples", self.num_verify_samples),
            detection_postprocess=dict(self.detection_postprocess or {}),
            requested=(self.quant, self.keep_float),
        )
        for name, value in fields.items():
            object.__setattr__(self, name, value)

    def _resolved_keep_float(self, target: Target, quant: QuantType) -> tuple:
        if self.keep_float is None:
            if quant is QuantType.INT8:
                return TARGET_PROFILES[target].int8_float_islands
            return ()
        keep_float = parse_keep_float(self.keep_float)
        if keep_float and (target.full_integer or not quant.is_post_training_int8):
            raise ValueError(
                "keep_float applies to int8 / int8_full exports for CPUs; the Edge TPU and "
                f"NPUs need every op in int8 (target={target.value!r}, quant={quant.value!r}; "
                "QAT models: set QuantizeConfig.keep_float instead)"
            )
        return keep_float

    @property
    def profile(self) -> TargetProfile:
        """The :data:`TARGET_PROFILES` row of the target."""
        return TARGET_PROFILES[self.target]

    @property
    def needs_calibration(self) -> bool:
        """Post-training int8: the export needs representative images."""
        return self.quant.is_post_training_int8

    @property
    def checked_mode(self) -> QuantType:
        """The promise the file is checked against (integer I/O makes it ``int8_full``)."""
        if self.integer_io and self.quant is not QuantType.FP32:
            return QuantType.INT8_FULL
        return self.quant

    @property
    def float_ops_allowed(self) -> bool:
        return self.allow_float_ops or bool(self.keep_float)


def export_options(options: Optional[ExportOptions] = None, **overrides) -> ExportOptions:
    """``options`` with ``overrides`` (field names of :class:`ExportOptions`) applied.

    ``quant`` and ``keep_float`` are taken as the caller first gave them, so that a
    new ``target`` picks its own defaults (``ExportOptions()`` then ``target='gpu'``
    gives the float16 file, not an error)."""
    names = {f.name for f in dataclasses.fields(ExportOptions)} - {"requested"}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise TypeError(f"unknown export option(s) {unknown}; valid: {sorted(names)}")
    if options is None:
        return ExportOptions(**overrides)
    if not isinstance(options, ExportOptions):
        raise TypeError(f"options must be an ExportOptions, got {type(options).__name__}")
    if not overrides:
        return options
    fields = {name: getattr(options, name) for name in names}
    fields["quant"], fields["keep_float"] = options.requested
    fields.update(overrides)
    return ExportOptions(**fields)
