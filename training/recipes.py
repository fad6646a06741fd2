"""The official training recipes as named, printable, overridable configurations.

Every recipe holds the values of one official yaml file, under the yaml's own key
paths (``optim.weight_decay``, ``scheduler.cosine.max_lr``, ...), so anyone who
knows ml-cvnets recognises them and ``--set scheduler.max_epochs=10`` overrides
them. Only the keys the Keras loop uses are kept (dataset roots, worker counts
and model-building keys that ``mvit3_keras`` already encodes are left out).

Sources (public repositories; commits as named in the MobileViTv3 README):

* MobileViTv3-S/XS/XXS (and their L2 versions, which have no yaml of their own):
  micronDLA/MobileViTv3 ``MobileViTv3-v1/config/classification/
  mobilevitv3_{xx_small,x_small,small}_oneserver.yaml``.
* MobileViTv1 baselines: apple/ml-cvnets @d38a116
  ``config/classification/mobilevit_{xx_small,x_small,small}.yaml``.
* MobileViTv3-0.5 ... 2.0 and the MobileViTv2 baselines: the MobileViTv3-v2 tree
  trains with ml-cvnets' MobileViTv2 recipe, apple/ml-cvnets
  ``config/classification/imagenet/mobilevit_v2.yaml``; the higher-resolution
  fine-tuning: micronDLA/MobileViTv3
  ``MobileViTv3-v2/config/classification/finetune_higher_res_in1k/mobilevit_v3.yaml``.
* Segmentation: micronDLA/MobileViTv3 ``MobileViTv3-v1/config/segmentation/
  deeplabv3_mobilevitv3_{xx_small,x_small,small}.yaml`` (PASCAL VOC) and
  ``MobileViTv3-v2/config/segmentation/{pascal_voc,ade20k}/{deeplabv3,pspnet}_mobilevitv3.yaml``.

Batch sizes are the official *per-device* ``train_batch_size0`` (ml-cvnets runs one
process per GPU); the global batch is ``train_batch_size0 x replicas`` (see
:mod:`training.distribute`).

Where Keras' own piece differs in a detail from ml-cvnets, the Keras piece is
used and the difference is documented in :mod:`training.loop`.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import fnmatch
import json
from typing import Any

from mvit3_keras import specs as S
from mvit3_keras.registry import get_spec, lookup
from training.config import TrainingConfig, config_dict, training_config, valid_paths

MICRON = "micronDLA/MobileViTv3@5e3f490"
CVNETS_V1 = "apple/ml-cvnets@d38a116"
CVNETS = "apple/ml-cvnets"

# Settings of this package that have no yaml counterpart (same for every recipe).
RUNTIME_DEFAULTS: dict = {"runtime": config_dict(TrainingConfig())["runtime"]}


# -- sections shared by the yamls --------------------------------------------------------
def _adamw(weight_decay: float, no_decay_bn_filter_bias: bool) -> dict:
    return {
        "name": "adamw",
        "weight_decay": weight_decay,
        "no_decay_bn_filter_bias": no_decay_bn_filter_bias,
        "adamw": {"beta1": 0.9, "beta2": 0.999},
    }


def _sgd(weight_decay: float) -> dict:
    return {
        "name": "sgd",
        "weight_decay": weight_decay,
        "no_decay_bn_filter_bias": True,
        "sgd": {"momentum": 0.9},
    }


def _cosine(max_epochs: int, max_lr: float, min_lr: float, warmup=None, warmup_init_lr=None):
    sched = {"name": "cosine", "is_iteration_based": False, "max_epochs": max_epochs}
    if warmup is not None:
        sched.update(warmup_iterations=warmup, warmup_init_lr=warmup_init_lr)
    sched["cosine"] = {"max_lr": max_lr, "min_lr": min_lr}
    return sched


def _batch_sampler(size: int) -> dict:
    return {"name": "batch_sampler", "bs": {"crop_size_width": size, "crop_size_height": size}}


def _stats(metric: str) -> dict:
    return {"checkpoint_metric": metric, "checkpoint_metric_max": True}


EMA = {"enable": True, "momentum": 0.0005}


# -- classification ---------------------------------------------------------------------
_V1_CLS = {
    "common": {"mixed_precision": True, "grad_clip": None},
    "dataset": {"train_batch_size0": 128, "val_batch_size0": 100},
    "image_augmentation": {
        "random_resized_crop": {"enable": True, "interpolation": "bilinear"},
        "random_horizontal_flip": {"enable": True},
        # not in the v1 yamls: the ImageNet dataset class of the v1 tree evaluates at
        # shorter side 288 (bilinear) + center crop 256 (docs/semantics.md section 1)
        "resize": {"enable": True, "size": 288, "interpolation": "bilinear"},
        "center_crop": {"enable": True, "size": 256},
    },
    "sampler": {
        "name": "variable_batch_sampler",
        "vbs": {
            "crop_size_width": 256,
            "crop_size_height": 256,
            "max_n_scales": 5,
            "min_crop_size_width": 160,
            "max_crop_size_width": 320,
            "min_crop_size_height": 160,
            "max_crop_size_height": 320,
            "check_scale": 32,
        },
    },
    "loss": {
        "category": "classification",
        "classification": {"name": "label_smoothing", "label_smoothing_factor": 0.1},
    },
    "optim": _adamw(0.01, False),
    "scheduler": _cosine(300, 0.002, 0.0002, warmup=3000, warmup_init_lr=0.0002),
    "model": {"classification": {"classifier_dropout": 0.1}},
    "ema": EMA,
    "stats": _stats("top1"),
}

_V2_CLS = {
    "common": {"mixed_precision": True, "grad_clip": 10.0},
    "dataset": {"train_batch_size0": 128, "val_batch_size0": 100},
    "image_augmentation": {
        "random_resized_crop": {"enable": True, "interpolation": "bicubic"},
        "random_horizontal_flip": {"enable": True},
        "rand_augment": {"enable": True},
        "random_erase": {"enable": True, "p": 0.25},
        "mixup": {"enable": True, "alpha": 0.2},
        "cutmix": {"enable": True, "alpha": 1.0},
        "resize": {"enable": True, "size": 288, "interpolation": "bicubic"},
        "center_crop": {"enable": True, "size": 256},
    },
    "sampler": _batch_sampler(256),
    "loss": {
        "category": "classification",
        "classification": {"name": "cross_entropy", "cross_entropy": {"label_smoothing": 0.1}},
    },
    "optim": _adamw(0.05, True),
    "scheduler": _cosine(300, 0.002, 0.0002, warmup=20000, warmup_init_lr=1.0e-6),
    "ema": EMA,
    "stats": _stats("top1"),
}

_V2_FT384 = {
    "common": {"mixed_precision": True, "grad_clip": 10.0},
    "dataset": {"train_batch_size0": 64, "val_batch_size0": 50},
    "image_augmentation": {
        "random_resized_crop": {"enable": True, "interpolation": "bicubic"},
        "random_horizontal_flip": {"enable": True},
        "resize": {"enable": True, "size": 384, "interpolation": "bicubic"},
        "center_crop": {"enable": True, "size": 384},
    },
    "sampler": _batch_sampler(384),
    "loss": {
        "category": "classification",
        "classification": {"name": "cross_entropy", "label_smoothing": 0.1},
    },
    "optim": _sgd(4.0e-5),
    "scheduler": {"name": "fixed", "max_epochs": 10, "fixed": {"lr": 1.0e-3}},
    "ema": {"enable": True, "momentum": 0.00005},
    "stats": _stats("top1"),
}

# -- segmentation -------------------------------------------------------------------------
_V1_VOC = {
    "common": {"mixed_precision": True, "grad_clip": None},
    "dataset": {"train_batch_size0": 16, "val_batch_size0": 16},
    "image_augmentation": {
        "random_resize": {"enable": True, "min_size": 256, "max_size": 1024},
        "random_crop": {"enable": True, "mask_fill": 255, "resize_if_needed": True},
        "random_horizontal_flip": {"enable": True},
        # evaluation size of the PASCAL VOC dataset class (crop size of the sampler)
        "resize": {"enable": True, "size": [512, 512], "interpolation": "bilinear"},
    },
    "sampler": _batch_sampler(512),
    "loss": {
        "category": "segmentation",
        "ignore_idx": 255,
        "segmentation": {"name": "cross_entropy"},
    },
    "optim": _adamw(0.01, False),
    "scheduler": _cosine(50, 0.0009, 1.0e-6, warmup=500, warmup_init_lr=0.00009),
    "model": {
        "segmentation": {
            "lr_multiplier": 10,
            "seg_head": "deeplabv3",
            "output_stride": 16,
            "use_aux_head": False,
            "classifier_dropout": 0.1,
            "deeplabv3": {
                "aspp_dropout": 0.1,
                "aspp_sep_conv": False,
                "aspp_out_channels": 256,
                "aspp_rates": [6, 12, 18],
            },
        }
    },
    "ema": EMA,
    "stats": _stats("iou"),
}

_V2_SEG_AUG = {
    "random_crop": {"enable": True, "seg_class_max_ratio": 0.75, "pad_if_needed": True},
    "random_horizontal_flip": {"enable": True},
    "resize": {"enable": True, "size": [512, 512], "interpolation": "bicubic"},
    "random_short_size_resize": {
        "enable": True,
        "interpolation": "bicubic",
        "short_side_min": 256,
        "short_side_max": 768,
        "max_img_dim": 1024,
    },
    "photo_metric_distort": {"enable": True},
    "random_rotate": {"enable": True, "angle": 10},
    "random_gaussian_noise": {"enable": True},
}


def _v2_seg(dataset: str, head: str) -> dict:
    ade = dataset == "ade20k"
    aug = copy.deepcopy(_V2_SEG_AUG)
    # ADE20K: background 0 is the fill, then the labels are shifted by -1 (0 -> -1 = ignore)
    fill = 0 if ade else 255
    aug["random_crop"]["mask_fill"] = fill
    aug["random_rotate"]["mask_fill"] = fill
    recipe = {
        "common": {"mixed_precision": True, "grad_clip": 10.0},
        "dataset": {"train_batch_size0": 4 if ade else 32, "val_batch_size0": 4 if ade else 16},
        "image_augmentation": aug,
        "sampler": _batch_sampler(512),
        "loss": {
            "category": "segmentation",
            "ignore_idx": -1 if ade else 255,
            "segmentation": {"name": "cross_entropy", "cross_entropy": {"aux_weight": 0.4}},
        },
        "model": {
            "segmentation": {
                "lr_multiplier": 1,
                "seg_head": head,
                "output_stride": 8 if ade else 16,
                "use_aux_head": True,
            }
        },
        "ema": EMA,
        "stats": _stats("iou"),
    }
    if ade:
        recipe["optim"] = _sgd(1.0e-4)
        recipe["scheduler"] = _cosine(120, 0.02, 0.0002)
    else:
        recipe["optim"] = _adamw(0.05, True)
        recipe["scheduler"] = _cosine(50, 0.0005, 1.0e-6, warmup=500, warmup_init_lr=0.00005)
    if head == "deeplabv3":
        recipe["model"]["segmentation"]["deeplabv3"] = {
            "aspp_dropout": 0.1,
            "aspp_out_channels": 512,
            "aspp_rates": [12, 24, 36] if ade else [6, 12, 18],
        }
    else:
        recipe["model"]["segmentation"]["pspnet"] = {
            "psp_dropout": 0.1,
            "psp_out_channels": 512,
            "psp_pool_sizes": [1, 2, 3, 6],
        }
    return recipe


# -- the demo recipe (ours, not official) --------------------------------------------------
_DEMO = {
    "common": {"mixed_precision": False, "grad_clip": 10.0},
    "dataset": {"train_batch_size0": 32, "val_batch_size0": 128},
    "image_augmentation": {
        # small real images: mild geometric augmentation only (digits must not be flipped)
        "random_resized_crop": {"enable": True, "interpolation": "bilinear", "scale": [0.7, 1.0]},
        "random_horizontal_flip": {"enable": False},
        "resize": {"enable": True, "size": 32, "interpolation": "bilinear"},
        "center_crop": {"enable": True, "size": 32},
    },
    "sampler": _batch_sampler(32),
    "loss": {
        "category": "classification",
        "classification": {"name": "cross_entropy", "cross_entropy": {"label_smoothing": 0.1}},
    },
    "optim": _adamw(0.05, True),
    "scheduler": _cosine(30, 0.003, 0.0001, warmup=100, warmup_init_lr=1.0e-4),
    "model": {"classification": {"classifier_dropout": 0.1}},
    "ema": {"enable": True, "momentum": 0.01},
    "stats": _stats("top1"),
}

_DEMO_SEG = {
    "common": {"mixed_precision": False, "grad_clip": 10.0},
    "dataset": {"train_batch_size0": 16, "val_batch_size0": 32},
    "image_augmentation": {
        "random_horizontal_flip": {"enable": True},
        "random_crop": {"enable": True, "mask_fill": 255, "pad_if_needed": True},
        "resize": {"enable": False},
    },
    "sampler": _batch_sampler(64),
    "loss": {
        "category": "segmentation",
        "ignore_idx": 255,
        "segmentation": {"name": "cross_entropy"},
    },
    "optim": _adamw(0.01, True),
    "scheduler": _cosine(30, 0.004, 1.0e-5, warmup=50, warmup_init_lr=1.0e-4),
    "model": {
        "segmentation": {
            "lr_multiplier": 1,
            "seg_head": "deeplabv3",
            "output_stride": 8,
            "use_aux_head": False,
            "deeplabv3": {"aspp_dropout": 0.1, "aspp_out_channels": 64, "aspp_rates": [1, 2, 3]},
        }
    },
    "ema": {"enable": False, "momentum": 0.0005},
    "stats": _stats("iou"),
}


@dataclasses.dataclass(frozen=True)
class Recipe:
    """A named training configuration (values under official yaml key paths)."""

    name: str
    task: str  # "classification" | "segmentation"
    description: str
    source: str  # official yaml the values come from
    models: tuple  # shell patterns of the variants it was written for
    dataset: str  # the dataset it was written for
    values: dict

    def to_dict(self) -> dict:
        """The yaml values (plus this package's runtime settings) as a nested dict."""
        return merge(RUNTIME_DEFAULTS, self.values)

    def config(self, overrides: dict | None = None) -> TrainingConfig:
        """The typed configuration of the recipe (keys the yaml leaves out take the
        defaults of :mod:`training.config`), with nested ``overrides`` applied."""
        return training_config(merge(self.to_dict(), overrides or {}))

    def format(self, overrides: dict | None = None) -> str:
        values = merge(self.to_dict(), overrides or {})
        lines = [
            f"recipe {self.name} ({self.task}): {self.description}",
            f"  source: {self.source}",
            f"  written for: models {', '.join(self.models)}; dataset {self.dataset}",
        ]
        lines += [f"  {k} = {json.dumps(v)}" for k, v in flatten(values).items()]
        return "\n".join(lines)


_RECIPES: dict = {}


def _register(recipe: Recipe) -> None:
    _RECIPES[recipe.name] = recipe


for _size, _yaml, _bs, _models in (
    ("xxs", "xx_small", 64, ("mobilevitv3_xxs", "mobilevitv3_xxs_l2")),
    ("xs", "x_small", 32, ("mobilevitv3_xs", "mobilevitv3_xs_l2")),
    ("s", "small", 32, ("mobilevitv3_s", "mobilevitv3_s_l2")),
):
    _v = copy.deepcopy(_V1_CLS)
    _v["dataset"] = {"train_batch_size0": _bs, "val_batch_size0": _bs}
    _register(
        Recipe(
            f"mobilevitv3_{_size}_in1k",
            "classification",
            f"MobileViTv3-{_size.upper()} (and -L2) on ImageNet-1k, 300 epochs, one server",
            f"{MICRON} MobileViTv3-v1/config/classification/mobilevitv3_{_yaml}_oneserver.yaml",
            _models,
            "imagenet2012",
            _v,
        )
    )
    _v = copy.deepcopy(_V1_CLS)
    _register(
        Recipe(
            f"mobilevit_{_size}_in1k",
            "classification",
            f"MobileViTv1-{_size.upper()} baseline on ImageNet-1k, 300 epochs",
            f"{CVNETS_V1} config/classification/mobilevit_{_yaml}.yaml",
            (f"mobilevit_{_size}",),
            "imagenet2012",
            _v,
        )
    )

_register(
    Recipe(
        "mobilevitv2_in1k",
        "classification",
        "MobileViTv3-0.5..2.0 and MobileViTv2 on ImageNet-1k, 300 epochs (8 GPUs x 128)",
        f"{CVNETS} config/classification/imagenet/mobilevit_v2.yaml (the MobileViTv3-v2 "
        "tree trains with it, README of micronDLA/MobileViTv3)",
        ("mobilevitv3_0*", "mobilevitv3_1*", "mobilevitv3_2*", "mobilevitv2_*"),
        "imagenet2012",
        _V2_CLS,
    )
)
_register(
    Recipe(
        "mobilevitv3_v2_in1k_ft384",
        "classification",
        "MobileViTv3-0.5..1.0: fine-tune at 384x384 for 10 epochs (SGD, fixed lr)",
        f"{MICRON} MobileViTv3-v2/config/classification/finetune_higher_res_in1k/mobilevit_v3.yaml",
        ("mobilevitv3_0*", "mobilevitv3_1*"),
        "imagenet2012",
        _V2_FT384,
    )
)
for _size, _yaml, _bs in (("xxs", "xx_small", 16), ("xs", "x_small", 12), ("s", "small", 12)):
    _v = copy.deepcopy(_V1_VOC)
    _v["dataset"] = {"train_batch_size0": _bs, "val_batch_size0": _bs}
    _register(
        Recipe(
            f"deeplabv3_voc_mobilevitv3_{_size}",
            "segmentation",
            f"DeepLabv3 + MobileViTv3-{_size.upper()} on PASCAL VOC 2012 (+SBD), 50 epochs",
            f"{MICRON} MobileViTv3-v1/config/segmentation/deeplabv3_mobilevitv3_{_yaml}.yaml",
            (f"mobilevitv3_{_size}", f"mobilevitv3_{_size}_l2", f"mobilevit_{_size}"),
            "voc2012",
            _v,
        )
    )
for _head in ("deeplabv3", "pspnet"):
    for _ds, _tfds in (("voc", "voc2012"), ("ade20k", "scene_parse150")):
        _folder = "pascal_voc" if _ds == "voc" else "ade20k"
        _register(
            Recipe(
                f"{_head}_{_ds}_mobilevitv3_v2",
                "segmentation",
                f"{_head} + MobileViTv3-0.5/0.75/1.0 on {'PASCAL VOC 2012' if _ds == 'voc' else 'ADE20K'}",
                f"{MICRON} MobileViTv3-v2/config/segmentation/{_folder}/{_head}_mobilevitv3.yaml",
                ("mobilevitv3_0*", "mobilevitv3_1*", "mobilevitv3_2*", "mobilevitv2_*"),
                _tfds,
                _v2_seg(_ds, _head),
            )
        )
_register(
    Recipe(
        "demo",
        "classification",
        "this package's recipe for the bundled digits (CPU, minutes); not an official recipe",
        "mvit3-keras (AdamW + cosine + EMA as in the official v2 recipe, small-data values)",
        ("*",),
        "demo",
        _DEMO,
    )
)
_register(
    Recipe(
        "demo_segmentation",
        "segmentation",
        "this package's recipe for the generated shapes dataset (CPU, minutes); not official",
        "mvit3-keras",
        ("*",),
        "demo",
        _DEMO_SEG,
    )
)


# -- public API --------------------------------------------------------------------------------
def list_recipes(task: str | None = None) -> list:
    return [n for n, r in _RECIPES.items() if task is None or r.task == task]


def get_recipe(name: str) -> Recipe:
    return lookup(_RECIPES, name, what="recipe", known="Known recipes (`mvit3 recipes`)")


def default_recipe(model: str, task: str, dataset: str) -> str:
    """The official recipe written for ``model`` (+ ``dataset`` for segmentation)."""
    spec = get_spec(model)
    if dataset in ("demo", "digits", "demo_shapes"):
        return DEMO_RECIPES[task]
    return DEFAULT_RECIPE_RULES[task](spec, dataset)


def _default_classification_recipe(spec, dataset: str) -> str:
    for name in list_recipes("classification"):
        r = _RECIPES[name]
        if name == "mobilevitv3_v2_in1k_ft384" or r.dataset == "demo":
            continue
        if any(fnmatch.fnmatch(spec.name, p) for p in r.models):
            return name
    return "mobilevitv2_in1k"


def _default_segmentation_recipe(spec, dataset: str) -> str:
    ade = "ade" in dataset or "scene_parse" in dataset
    if spec.family == S.V1_FAMILY and not ade:
        size = spec.name.split("_")[1]
        return f"deeplabv3_voc_mobilevitv3_{size}"
    return f"deeplabv3_{'ade20k' if ade else 'voc'}_mobilevitv3_v2"


DEMO_RECIPES = {"classification": "demo", "segmentation": "demo_segmentation"}
DEFAULT_RECIPE_RULES = {
    "classification": _default_classification_recipe,
    "segmentation": _default_segmentation_recipe,
}


def flatten(values: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in values.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, path + "."))
        else:
            out[path] = value
    return out


def merge(base: dict, update: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def parse_overrides(items, base: dict | None = None) -> dict:
    """``["optim.weight_decay=0.01", ...]`` -> nested dict (values parsed as JSON).

    With ``base`` (the values being overridden), every key must be a key of the typed configuration
    (:func:`training.config.valid_paths`): a typo is an error that suggests the
    closest keys. Values are type-checked when the configuration is built.
    """
    nested: dict = {}
    known = valid_paths() if base is not None else None
    for item in items or ():
        if "=" not in item:
            raise ValueError(
                f"--set {item!r}: expected key=value, e.g. --set optim.weight_decay=0.01"
            )
        key, raw = item.split("=", 1)
        key = key.strip()
        try:
            value: Any = json.loads(raw)
        except json.JSONDecodeError:
            value = {"none": None, "true": True, "false": False}.get(raw.lower(), raw)
        section = known is not None and any(k.startswith(key + ".") for k in known)
        if known is not None and key not in known and not section:
            close = difflib.get_close_matches(key, known, n=3)
            hint = f" Did you mean {', '.join(close)}?" if close else ""
            raise ValueError(
                f"--set {key}: no such recipe key.{hint} `mvit3 recipes NAME` prints the keys."
            )
        node = nested
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return nested
