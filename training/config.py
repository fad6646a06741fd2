"""Typed training configuration: the sections of an ml-cvnets yaml as frozen dataclasses.

A recipe (:mod:`training.recipes`) stores the values of one official yaml under the
yaml's own key paths; :func:`training_config` turns them (plus the runtime settings
of this package, plus ``--set`` overrides) into one :class:`TrainingConfig` that the
trainer, the data pipeline, the optimizer and the tasks read by attribute
(``config.optim.weight_decay``). Every key has one default here, so a key the yaml
leaves out means the same thing everywhere, and a key that no section has is an
error that names the valid keys of its section (a typo in ``--set`` is caught
before training starts).

Field names are the yaml's (``train_batch_size0``, ``warmup_iterations``, ...).
Sections that a name selects (``optim.adamw`` / ``optim.sgd``, ``scheduler.cosine``
/ ``scheduler.fixed``, ``sampler.bs`` / ``sampler.vbs``, ``deeplabv3`` / ``pspnet``)
are all present with defaults; the ``name`` field says which one is used.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from typing import Optional, Union

Size = Union[int, tuple]  # one side, or (height, width)


class ConfigError(ValueError):
    """A recipe value or ``--set`` override that the configuration cannot hold."""


# ---------------------------------------------------------------------------------------
# sections (field names and defaults follow ml-cvnets' yaml keys and options)
# ---------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Common:
    mixed_precision: bool = False
    grad_clip: Optional[float] = None  # global gradient-norm clip (None: off)


@dataclasses.dataclass(frozen=True)
class Dataset:
    train_batch_size0: int = 32  # per device, as in ml-cvnets
    val_batch_size0: int = 32


@dataclasses.dataclass(frozen=True)
class RandomResizedCrop:
    enable: bool = False
    interpolation: str = "bilinear"
    scale: tuple = (0.08, 1.0)
    ratio: tuple = (3 / 4, 4 / 3)


@dataclasses.dataclass(frozen=True)
class Switch:
    """An augmentation with no parameters of its own."""

    enable: bool = False


@dataclasses.dataclass(frozen=True)
class RandomErase:
    enable: bool = False
    p: float = 0.5


@dataclasses.dataclass(frozen=True)
class Mix:
    """Mixup (``alpha`` of the Beta distribution) or cutmix; applied with probability p."""

    enable: bool = False
    alpha: float = 1.0
    p: float = 0.5


@dataclasses.dataclass(frozen=True)
class Resize:
    enable: bool = False
    size: Optional[Size] = None  # shorter side (int) or (h, w)
    interpolation: str = "bilinear"


@dataclasses.dataclass(frozen=True)
class CenterCrop:
    enable: bool = False
    size: Optional[int] = None


@dataclasses.dataclass(frozen=True)
class RandomResize:
    enable: bool = False
    min_size: int = 256
    max_size: int = 1024


@dataclasses.dataclass(frozen=True)
class RandomCrop:
    enable: bool = False
    mask_fill: int = 255
    resize_if_needed: bool = False
    pad_if_needed: bool = False
    seg_class_max_ratio: Optional[float] = None


@dataclasses.dataclass(frozen=True)
class RandomShortSizeResize:
    enable: bool = False
    interpolation: str = "bicubic"
    short_side_min: int = 256
    short_side_max: int = 768
    max_img_dim: Optional[int] = None


@dataclasses.dataclass(frozen=True)
class RandomRotate:
    enable: bool = False
    angle: float = 10.0
    mask_fill: int = 255


@dataclasses.dataclass(frozen=True)
class ImageAugmentation:
    random_resized_crop: RandomResizedCrop = RandomResizedCrop()
    random_horizontal_flip: Switch = Switch()
    rand_augment: Switch = Switch()
    random_erase: RandomErase = RandomErase()
    mixup: Mix = Mix(alpha=0.2)
    cutmix: Mix = Mix()
    resize: Resize = Resize()
    center_crop: CenterCrop = CenterCrop()
    random_resize: RandomResize = RandomResize()
    random_crop: RandomCrop = RandomCrop()
    random_short_size_resize: RandomShortSizeResize = RandomShortSizeResize()
    photo_metric_distort: Switch = Switch()
    random_rotate: RandomRotate = RandomRotate()
    random_gaussian_noise: Switch = Switch()


@dataclasses.dataclass(frozen=True)
class BatchSampler:
    crop_size_width: int = 256
    crop_size_height: int = 256


@dataclasses.dataclass(frozen=True)
class VariableBatchSampler:
    crop_size_width: int = 256
    crop_size_height: int = 256
    max_n_scales: int = 5
    min_crop_size_width: int = 160
    max_crop_size_width: int = 320
    min_crop_size_height: int = 160
    max_crop_size_height: int = 320
    check_scale: int = 32


@dataclasses.dataclass(frozen=True)
class Sampler:
    name: str = "batch_sampler"  # | "variable_batch_sampler"
    bs: BatchSampler = BatchSampler()
    vbs: VariableBatchSampler = VariableBatchSampler()

    @property
    def crop_size(self) -> int:
        """The training crop width of the sampler that ``name`` selects."""
        chosen = self.vbs if self.name == "variable_batch_sampler" else self.bs
        return int(chosen.crop_size_width)


@dataclasses.dataclass(frozen=True)
class CrossEntropy:
    label_smoothing: float = 0.0
    aux_weight: float = 0.4  # segmentation: weight of the aux head's term


@dataclasses.dataclass(frozen=True)
class ClassificationLoss:
    name: str = "cross_entropy"  # | "label_smoothing" (the v1 yamls)
    label_smoothing_factor: Optional[float] = None  # v1: name label_smoothing
    label_smoothing: Optional[float] = None  # the fine-tuning yaml puts it here
    cross_entropy: CrossEntropy = CrossEntropy()

    @property
    def smoothing(self) -> float:
        """The label smoothing, wherever the yaml put it."""
        for value in (self.label_smoothing_factor, self.label_smoothing):
            if value is not None:
                return float(value)
        return float(self.cross_entropy.label_smoothing)


@dataclasses.dataclass(frozen=True)
class SegmentationLoss:
    name: str = "cross_entropy"
    cross_entropy: CrossEntropy = CrossEntropy()


@dataclasses.dataclass(frozen=True)
class Loss:
    category: str = "classification"
    ignore_idx: int = 255
    classification: ClassificationLoss = ClassificationLoss()
    segmentation: SegmentationLoss = SegmentationLoss()


@dataclasses.dataclass(frozen=True)
class AdamW:
    beta1: float = 0.9
    beta2: float = 0.999


@dataclasses.dataclass(frozen=True)
class SGD:
    momentum: float = 0.9


@dataclasses.dataclass(frozen=True)
class Optim:
    name: str = "adamw"  # | "sgd"
    weight_decay: float = 0.0
    no_decay_bn_filter_bias: bool = False
    adamw: AdamW = AdamW()
    sgd: SGD = SGD()


@dataclasses.dataclass(frozen=True)
class Cosine:
    max_lr: float = 0.002
    min_lr: float = 0.0002


@dataclasses.dataclass(frozen=True)
class Fixed:
    lr: float = 0.001


@dataclasses.dataclass(frozen=True)
class Scheduler:
    name: str = "cosine"  # | "fixed"
    is_iteration_based: bool = False
    max_epochs: int = 300
    warmup_iterations: int = 0
    warmup_init_lr: float = 0.0
    cosine: Cosine = Cosine()
    fixed: Fixed = Fixed()


@dataclasses.dataclass(frozen=True)
class ClassificationModel:
    classifier_dropout: Optional[float] = None  # None: the variant's own


@dataclasses.dataclass(frozen=True)
class DeepLabV3:
    """ASPP head; None: the value of the segmenter preset (``create_segmenter``)."""

    aspp_dropout: Optional[float] = None
    aspp_sep_conv: Optional[bool] = None
    aspp_out_channels: Optional[int] = None
    aspp_rates: Optional[tuple] = None


@dataclasses.dataclass(frozen=True)
class PSPNet:
    """Pyramid pooling head; None: the value of the segmenter preset."""

    psp_dropout: Optional[float] = None
    psp_out_channels: Optional[int] = None
    psp_pool_sizes: Optional[tuple] = None


@dataclasses.dataclass(frozen=True)
class SegmentationModel:
    lr_multiplier: float = 1.0  # of the head, relative to the backbone
    seg_head: str = "deeplabv3"  # | "pspnet"
    output_stride: int = 16
    use_aux_head: bool = False
    classifier_dropout: Optional[float] = None  # None: the builder's default
    deeplabv3: DeepLabV3 = DeepLabV3()
    pspnet: PSPNet = PSPNet()


@dataclasses.dataclass(frozen=True)
class Model:
    classification: ClassificationModel = ClassificationModel()
    segmentation: SegmentationModel = SegmentationModel()


@dataclasses.dataclass(frozen=True)
class EMA:
    """ml-cvnets' EMA (``momentum`` = 1 - decay) with timm's warm-up (ours, see
    :data:`training.optimizers.EMA_RULE`)."""

    enable: bool = False
    momentum: float = 0.0005
    warmup: bool = True
    warmup_gamma: float = 1.0
    warmup_power: float = 2.0 / 3.0


@dataclasses.dataclass(frozen=True)
class Stats:
    checkpoint_metric: str = "top1"
    checkpoint_metric_max: bool = True


@dataclasses.dataclass(frozen=True)
class Runtime:
    """Settings of this package that no yaml has (the same for every recipe)."""

    seed: int = 0
    steps_per_epoch: Optional[int] = None  # None: one pass over the training split
    validation_steps: Optional[int] = None  # None: the whole validation split
    max_train_examples: Optional[int] = None  # e.g. for smoke runs on a subset
    max_val_examples: Optional[int] = None
    shuffle_buffer: int = 10000
    deterministic: bool = False  # True: tf.data deterministic order (slower)
    channel_order: str = "rgb"  # the Keras models take RGB (converted checkpoints too)
    cache: bool = False  # cache the decoded training split in memory
    tensorboard: bool = True
    keep_checkpoints: int = 2  # backups kept for fault tolerance (>= 2: fallback)
    mixed_precision_on_cpu: bool = False  # float16 on CPU is slow: off unless asked
    verbose: Union[int, str] = "auto"  # Keras progress bar: 1 per step, 2 per epoch
    jit_compile: Union[bool, str] = False  # XLA: minutes of compiling on CPU; "auto"
    tpu: Optional[str] = None  # TPU address for --strategy tpu
    init_reset_head: bool = False  # --init: drop the classifier of the checkpoint


@dataclasses.dataclass(frozen=True)
class TrainingConfig:
    """Everything a training run reads: the recipe's yaml sections plus ``runtime``."""

    common: Common = Common()
    dataset: Dataset = Dataset()
    image_augmentation: ImageAugmentation = ImageAugmentation()
    sampler: Sampler = Sampler()
    loss: Loss = Loss()
    optim: Optim = Optim()
    scheduler: Scheduler = Scheduler()
    model: Model = Model()
    ema: EMA = EMA()
    stats: Stats = Stats()
    runtime: Runtime = Runtime()


# ---------------------------------------------------------------------------------------
# dict <-> config
# ---------------------------------------------------------------------------------------
def training_config(values) -> TrainingConfig:
    """A :class:`TrainingConfig` from nested yaml-style ``values`` (keys left out take
    the defaults above); a :class:`TrainingConfig` is returned as it is."""
    if isinstance(values, TrainingConfig):
        return values
    return _build(TrainingConfig, values or {}, "")


def config_dict(config: TrainingConfig) -> dict:
    """The nested dict of every value (JSON-ready: tuples become lists)."""
    return _plain(dataclasses.asdict(config))


def replace_path(config: TrainingConfig, path: str, value) -> TrainingConfig:
    """``config`` with the value at dotted ``path`` (e.g. ``scheduler.max_epochs``)
    replaced, type-checked like a recipe value."""
    head, _, rest = path.partition(".")
    _check_key(type(config), head, "")
    if not rest:
        hint = typing.get_type_hints(type(config))[head]
        return dataclasses.replace(config, **{head: _coerce(hint, value, path)})
    return dataclasses.replace(config, **{head: replace_path(getattr(config, head), rest, value)})


def valid_paths(cls=TrainingConfig, prefix: str = "") -> list:
    """Every dotted key a configuration has (``mvit3 recipes NAME`` prints them)."""
    out = []
    for field in dataclasses.fields(cls):
        hint = typing.get_type_hints(cls)[field.name]
        if dataclasses.is_dataclass(hint):
            out += valid_paths(hint, f"{prefix}{field.name}.")
        else:
            out.append(f"{prefix}{field.name}")
    return out


def _plain(value):
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _check_key(cls, key: str, prefix: str) -> None:
    names = [f.name for f in dataclasses.fields(cls)]
    if key not in names:
        close = difflib.get_close_matches(key, names, n=3)
        hint = f" Did you mean {', '.join(prefix + c for c in close)}?" if close else ""
        raise ConfigError(
            f"{prefix}{key}: no such recipe key.{hint} Keys of {prefix.rstrip('.') or 'a recipe'}"
            f": {', '.join(names)} (`mvit3 recipes NAME` prints all keys)"
        )


def _build(cls, data, prefix: str):
    if not isinstance(data, dict):
        raise ConfigError(
            f"{prefix.rstrip('.')}: expected a section (key: value, ...), got {data!r}"
        )
    hints = typing.get_type_hints(cls)
    for key in data:
        _check_key(cls, key, prefix)
    kwargs = {key: _coerce(hints[key], value, prefix + key) for key, value in data.items()}
    return cls(**kwargs)


def _coerce(hint, value, path: str):
    """``value`` checked against the type ``hint`` (ints widen to float; lists become
    tuples); a :class:`ConfigError` naming ``path`` otherwise."""
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, path + ".")
    options = typing.get_args(hint) if _is_union(hint) else (hint,)
    if value is None:
        if type(None) in options:
            return None
        raise ConfigError(f"{path}: a value is required (got null)")
    for option in options:
        accepted = _accept(option, value)
        if accepted is not None:
            return accepted
    names = " or ".join(getattr(o, "__name__", str(o)) for o in options if o is not type(None))
    raise ConfigError(f"{path}: expected {names}, got {value!r}")


def _is_union(hint) -> bool:
    return typing.get_origin(hint) is Union or isinstance(hint, types.UnionType)


def _accept(option, value):
    """``value`` as an ``option`` (a plain type), or None when it is not one."""
    if option is bool:
        return value if isinstance(value, bool) else None
    if option is int:
        return value if isinstance(value, int) and not isinstance(value, bool) else None
    if option is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        return float(value) if ok else None
    if option is str:
        return value if isinstance(value, str) else None
    if option is tuple:
        return tuple(value) if isinstance(value, (list, tuple)) else None
    return None
