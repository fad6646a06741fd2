"""What a model built by this package is: :class:`ModelRecord` and :func:`model_record`.

Every builder (:func:`mvit3_keras.create_model`, :func:`mvit3_keras.create_backbone`,
:func:`mvit3_keras.create_segmenter`, :func:`mvit3_keras.create_detector`) returns a
:class:`MobileViTModel`: a functional ``keras.Model`` whose config holds a
:class:`ModelRecord` (registered variant, task, head, preset, classes, input shape
and the remaining builder arguments). The record is part of ``get_config``, so it
survives ``model.save("x.keras")`` + ``keras.models.load_model`` after
``import mvit3_keras``, and :func:`rebuild_model` builds the same architecture
again. Models saved before the record existed still load: their record is
``None`` (segmenters and detectors derive it from their head configuration).

``keras.models.clone_model`` with a ``clone_function`` (BatchNorm folding,
quantization rewrites) keeps the class but not the constructor arguments; copy
the record onto the clone with :func:`attach_model_record`.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Mapping
from typing import Optional

import keras

TASK_CLASSIFICATION = "classification"
TASK_BACKBONE = "backbone"
TASK_SEGMENTATION = "segmentation"
TASK_DETECTION = "detection"
TASKS = (TASK_CLASSIFICATION, TASK_BACKBONE, TASK_SEGMENTATION, TASK_DETECTION)

RECORD_CONFIG_KEY = "model_record"


def json_like(value, what: str = "value"):
    """``value`` with tuples as lists (what a ``.keras`` config stores); raises on
    anything a JSON config cannot hold (arrays, callables, objects)."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [json_like(v, what) for v in value]
    if isinstance(value, Mapping):
        return {str(k): json_like(v, what) for k, v in value.items()}
    if hasattr(value, "item") and getattr(value, "ndim", None) == 0:  # numpy scalar
        return value.item()
    raise TypeError(
        f"{what}: {value!r} ({type(value).__name__}) cannot be recorded in a saved model; "
        "pass plain numbers, strings, booleans or lists of them"
    )


@dataclasses.dataclass(frozen=True)
class ModelRecord:
    """The architecture of a model built by this package.

    ``variant`` is a name of :func:`mvit3_keras.list_models`; ``task`` one of
    :data:`TASKS`; ``head`` ``"deeplabv3"`` / ``"pspnet"`` (segmentation),
    ``"ssdlite"`` (detection) or ``None``; ``preset`` the segmentation preset
    (``"pascal_voc"`` / ``"ade20k"``) or ``None``; ``num_classes`` the classifier
    width (detection: including the background class; ``None`` without a
    classifier); ``input_shape`` ``(H, W, C)`` with ``None`` for any size;
    ``options`` the other keyword arguments of the builder (JSON-like).
    """

    variant: str
    task: str
    input_shape: tuple
    num_classes: Optional[int] = None
    head: Optional[str] = None
    preset: Optional[str] = None
    options: dict = dataclasses.field(default_factory=dict, hash=False)

    def __post_init__(self):
        if not isinstance(self.variant, str) or not self.variant:
            raise ValueError(
                f"ModelRecord.variant must be a registered variant name, got {self.variant!r}"
            )
        if self.task not in TASKS:
            raise ValueError(
                f"ModelRecord.task must be one of {', '.join(TASKS)}, got {self.task!r}"
            )
        shape = tuple(None if s is None else int(s) for s in self.input_shape)
        if len(shape) != 3:
            raise ValueError(f"ModelRecord.input_shape must be (H, W, C), got {shape!r}")
        object.__setattr__(self, "input_shape", shape)
        if self.num_classes is not None:
            object.__setattr__(self, "num_classes", int(self.num_classes))
        object.__setattr__(self, "options", json_like(dict(self.options), "ModelRecord.options"))

    def to_config(self) -> dict:
        """JSON-like dict (lists, not tuples), as stored in the model config."""
        return json_like(dataclasses.asdict(self), "ModelRecord")

    @classmethod
    def from_config(cls, config: Mapping) -> ModelRecord:
        """Inverse of :meth:`to_config`; fields unknown to this version are dropped
        with a warning (a record written by a newer mvit3_keras)."""
        if not isinstance(config, Mapping):
            raise TypeError(f"a model record config is a dict, got {type(config).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(config) - known)
        if unknown:
            warnings.warn(
                f"model record fields {', '.join(unknown)} are unknown to this mvit3_keras "
                "version and are ignored",
                stacklevel=2,
            )
        return cls(**{k: v for k, v in config.items() if k in known})

    def builder_kwargs(self) -> dict:
        """Keyword arguments that rebuild the model with its builder (:func:`rebuild_model`)."""
        kwargs = dict(self.options, input_shape=self.input_shape)
        if self.num_classes is not None:
            kwargs["num_classes"] = self.num_classes
        if self.task == TASK_SEGMENTATION:
            kwargs.update(head=self.head, preset=self.preset)
        return kwargs


def _coerce_record(record) -> Optional[ModelRecord]:
    if record is None or isinstance(record, ModelRecord):
        return record
    return ModelRecord.from_config(record)


@keras.saving.register_keras_serializable(package="mvit3_keras")
class MobileViTModel(keras.Model):
    """Functional ``keras.Model`` that records what it is (:class:`ModelRecord`).

    Built like any functional model, ``MobileViTModel(inputs, outputs, name=...,
    model_record=record)``; the record is saved in the config. Subclasses list
    their other constructor arguments in ``config_attributes`` (saved from the
    attributes of the same names).
    """

    config_attributes: tuple = ()

    def __init__(self, *args, model_record=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.model_record = _coerce_record(model_record)

    def get_config(self):
        config = super().get_config()
        config.update({name: getattr(self, name) for name in self.config_attributes})
        if self.model_record is not None:
            config[RECORD_CONFIG_KEY] = self.model_record.to_config()
        return config


def model_record(model, *, required: bool = False) -> Optional[ModelRecord]:
    """The :class:`ModelRecord` of ``model`` (a ``keras.Model`` or a loaded ``.keras`` file).

    ``None`` for a Keras model without a record (saved by an older version,
    or a plain ``keras.Model`` around our layers), or :class:`ValueError` with
    ``required=True``.
    """
    if not isinstance(model, keras.Model):
        raise TypeError(
            f"model_record expects a keras.Model (e.g. keras.models.load_model(path) after "
            f"import mvit3_keras), got {type(model).__name__}"
        )
    record = model.model_record if isinstance(model, MobileViTModel) else None
    if record is None and required:
        raise ValueError(
            f"model {model.name!r} ({type(model).__name__}) records no variant: it was not "
            "built by mvit3_keras.create_model / create_backbone / create_segmenter / "
            "create_detector of this version (older saves and clones lack it); name the "
            "variant explicitly (e.g. --model-name) or attach one with attach_model_record"
        )
    return record


def attach_model_record(model, record) -> keras.Model:
    """Set the record of ``model`` (e.g. a clone of a recorded model) and return it."""
    if not isinstance(model, MobileViTModel):
        raise TypeError(
            f"only models built by mvit3_keras (MobileViTModel and its subclasses) hold a "
            f"record; {model.name!r} is a {type(model).__name__}: rebuild it with "
            "mvit3_keras.rebuild_model(record) and copy the weights"
        )
    model.model_record = _coerce_record(record)
    return model


def rebuild_model(record, **overrides) -> keras.Model:
    """A new model (fresh weights) with the architecture of ``record``;
    ``overrides`` replace builder arguments (e.g. ``input_shape``)."""
    from mvit3_keras.backbone import create_backbone, create_model
    from mvit3_keras.detection.detector import create_detector
    from mvit3_keras.segmentation.segmenter import create_segmenter

    record = _coerce_record(record)
    if record is None:
        raise ValueError("rebuild_model needs a ModelRecord, got None")
    builder = {
        TASK_CLASSIFICATION: create_model,
        TASK_BACKBONE: create_backbone,
        TASK_SEGMENTATION: create_segmenter,
        TASK_DETECTION: create_detector,
    }[record.task]
    kwargs = record.builder_kwargs()
    kwargs.update(overrides)
    return builder(record.variant, **kwargs)
