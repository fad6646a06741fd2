"""The recipes reproduce the official yaml values.

The expected values below are copied from the official yaml files (keys as in the
yaml): micronDLA/MobileViTv3 @5e3f490 (``MobileViTv3-v1/config/...``,
``MobileViTv3-v2/config/...``) and apple/ml-cvnets (``config/classification/
mobilevit_*.yaml`` @d38a116, ``config/classification/imagenet/mobilevit_v2.yaml``).
"""

from __future__ import annotations

import pytest

from training import recipes

V1_COMMON = {
    "image_augmentation.random_resized_crop.enable": True,
    "image_augmentation.random_resized_crop.interpolation": "bilinear",
    "image_augmentation.random_horizontal_flip.enable": True,
    "sampler.name": "variable_batch_sampler",
    "sampler.vbs.crop_size_width": 256,
    "sampler.vbs.crop_size_height": 256,
    "sampler.vbs.max_n_scales": 5,
    "sampler.vbs.min_crop_size_width": 160,
    "sampler.vbs.max_crop_size_width": 320,
    "sampler.vbs.min_crop_size_height": 160,
    "sampler.vbs.max_crop_size_height": 320,
    "sampler.vbs.check_scale": 32,
    "loss.category": "classification",
    "loss.classification.name": "label_smoothing",
    "loss.classification.label_smoothing_factor": 0.1,
    "optim.name": "adamw",
    "optim.weight_decay": 0.01,
    "optim.no_decay_bn_filter_bias": False,
    "optim.adamw.beta1": 0.9,
    "optim.adamw.beta2": 0.999,
    "scheduler.name": "cosine",
    "scheduler.is_iteration_based": False,
    "scheduler.max_epochs": 300,
    "scheduler.warmup_iterations": 3000,
    "scheduler.warmup_init_lr": 0.0002,
    "scheduler.cosine.max_lr": 0.002,
    "scheduler.cosine.min_lr": 0.0002,
    "model.classification.classifier_dropout": 0.1,
    "common.mixed_precision": True,
    "ema.enable": True,
    "ema.momentum": 0.0005,
    "stats.checkpoint_metric": "top1",
    "stats.checkpoint_metric_max": True,
}

OFFICIAL = {
    # MobileViTv3-v1/config/classification/mobilevitv3_xx_small_oneserver.yaml
    "mobilevitv3_xxs_in1k": {
        **V1_COMMON,
        "dataset.train_batch_size0": 64,
        "dataset.val_batch_size0": 64,
    },
    # .../mobilevitv3_x_small_oneserver.yaml, .../mobilevitv3_small_oneserver.yaml
    "mobilevitv3_xs_in1k": {**V1_COMMON, "dataset.train_batch_size0": 32},
    "mobilevitv3_s_in1k": {**V1_COMMON, "dataset.train_batch_size0": 32},
    # ml-cvnets @d38a116 config/classification/mobilevit_{xx_small,small}.yaml
    "mobilevit_xxs_in1k": {
        **V1_COMMON,
        "dataset.train_batch_size0": 128,
        "dataset.val_batch_size0": 100,
    },
    "mobilevit_s_in1k": {**V1_COMMON, "dataset.train_batch_size0": 128},
    # ml-cvnets config/classification/imagenet/mobilevit_v2.yaml
    "mobilevitv2_in1k": {
        "common.mixed_precision": True,
        "common.grad_clip": 10.0,
        "dataset.train_batch_size0": 128,
        "dataset.val_batch_size0": 100,
        "image_augmentation.random_resized_crop.interpolation": "bicubic",
        "image_augmentation.random_horizontal_flip.enable": True,
        "image_augmentation.rand_augment.enable": True,
        "image_augmentation.random_erase.enable": True,
        "image_augmentation.random_erase.p": 0.25,
        "image_augmentation.mixup.enable": True,
        "image_augmentation.mixup.alpha": 0.2,
        "image_augmentation.cutmix.enable": True,
        "image_augmentation.cutmix.alpha": 1.0,
        "image_augmentation.resize.size": 288,
        "image_augmentation.resize.interpolation": "bicubic",
        "image_augmentation.center_crop.size": 256,
        "sampler.name": "batch_sampler",
        "sampler.bs.crop_size_width": 256,
        "loss.classification.name": "cross_entropy",
        "loss.classification.cross_entropy.label_smoothing": 0.1,
        "optim.name": "adamw",
        "optim.weight_decay": 0.05,
        "optim.no_decay_bn_filter_bias": True,
        "optim.adamw.beta1": 0.9,
        "optim.adamw.beta2": 0.999,
        "scheduler.max_epochs": 300,
        "scheduler.warmup_iterations": 20000,
        "scheduler.warmup_init_lr": 1.0e-6,
        "scheduler.cosine.max_lr": 0.002,
        "scheduler.cosine.min_lr": 0.0002,
        "ema.enable": True,
        "ema.momentum": 0.0005,
    },
    # MobileViTv3-v2/config/classification/finetune_higher_res_in1k/mobilevit_v3.yaml
    "mobilevitv3_v2_in1k_ft384": {
        "common.grad_clip": 10.0,
        "dataset.train_batch_size0": 64,
        "image_augmentation.resize.size": 384,
        "image_augmentation.center_crop.size": 384,
        "loss.classification.label_smoothing": 0.1,
        "optim.name": "sgd",
        "optim.weight_decay": 4.0e-5,
        "optim.no_decay_bn_filter_bias": True,
        "optim.sgd.momentum": 0.9,
        "scheduler.name": "fixed",
        "scheduler.max_epochs": 10,
        "scheduler.fixed.lr": 1.0e-3,
        "ema.momentum": 0.00005,
    },
    # MobileViTv3-v1/config/segmentation/deeplabv3_mobilevitv3_xx_small.yaml
    "deeplabv3_voc_mobilevitv3_xxs": {
        "dataset.train_batch_size0": 16,
        "image_augmentation.random_resize.min_size": 256,
        "image_augmentation.random_resize.max_size": 1024,
        "image_augmentation.random_crop.mask_fill": 255,
        "image_augmentation.random_crop.resize_if_needed": True,
        "image_augmentation.random_horizontal_flip.enable": True,
        "sampler.bs.crop_size_width": 512,
        "sampler.bs.crop_size_height": 512,
        "loss.ignore_idx": 255,
        "optim.name": "adamw",
        "optim.weight_decay": 0.01,
        "optim.no_decay_bn_filter_bias": False,
        "scheduler.max_epochs": 50,
        "scheduler.warmup_iterations": 500,
        "scheduler.warmup_init_lr": 0.00009,
        "scheduler.cosine.max_lr": 0.0009,
        "scheduler.cosine.min_lr": 1.0e-6,
        "model.segmentation.lr_multiplier": 10,
        "model.segmentation.seg_head": "deeplabv3",
        "model.segmentation.output_stride": 16,
        "model.segmentation.classifier_dropout": 0.1,
        "model.segmentation.deeplabv3.aspp_dropout": 0.1,
        "model.segmentation.deeplabv3.aspp_sep_conv": False,
        "model.segmentation.deeplabv3.aspp_out_channels": 256,
        "model.segmentation.deeplabv3.aspp_rates": [6, 12, 18],
        "ema.momentum": 0.0005,
        "stats.checkpoint_metric": "iou",
    },
    "deeplabv3_voc_mobilevitv3_s": {"dataset.train_batch_size0": 12},
    # MobileViTv3-v2/config/segmentation/pascal_voc/deeplabv3_mobilevitv3.yaml
    "deeplabv3_voc_mobilevitv3_v2": {
        "common.grad_clip": 10.0,
        "dataset.train_batch_size0": 32,
        "dataset.val_batch_size0": 16,
        "image_augmentation.random_crop.seg_class_max_ratio": 0.75,
        "image_augmentation.random_crop.pad_if_needed": True,
        "image_augmentation.random_crop.mask_fill": 255,
        "image_augmentation.resize.size": [512, 512],
        "image_augmentation.resize.interpolation": "bicubic",
        "image_augmentation.random_short_size_resize.interpolation": "bicubic",
        "image_augmentation.random_short_size_resize.short_side_min": 256,
        "image_augmentation.random_short_size_resize.short_side_max": 768,
        "image_augmentation.random_short_size_resize.max_img_dim": 1024,
        "image_augmentation.photo_metric_distort.enable": True,
        "image_augmentation.random_rotate.angle": 10,
        "image_augmentation.random_rotate.mask_fill": 255,
        "image_augmentation.random_gaussian_noise.enable": True,
        "loss.ignore_idx": 255,
        "loss.segmentation.cross_entropy.aux_weight": 0.4,
        "optim.name": "adamw",
        "optim.weight_decay": 0.05,
        "optim.no_decay_bn_filter_bias": True,
        "scheduler.max_epochs": 50,
        "scheduler.warmup_iterations": 500,
        "scheduler.warmup_init_lr": 0.00005,
        "scheduler.cosine.max_lr": 0.0005,
        "scheduler.cosine.min_lr": 1.0e-6,
        "model.segmentation.lr_multiplier": 1,
        "model.segmentation.output_stride": 16,
        "model.segmentation.use_aux_head": True,
        "model.segmentation.deeplabv3.aspp_out_channels": 512,
        "model.segmentation.deeplabv3.aspp_rates": [6, 12, 18],
    },
    # MobileViTv3-v2/config/segmentation/ade20k/deeplabv3_mobilevitv3.yaml
    "deeplabv3_ade20k_mobilevitv3_v2": {
        "dataset.train_batch_size0": 4,
        "image_augmentation.random_crop.mask_fill": 0,
        "image_augmentation.random_rotate.mask_fill": 0,
        "loss.ignore_idx": -1,
        "loss.segmentation.cross_entropy.aux_weight": 0.4,
        "optim.name": "sgd",
        "optim.weight_decay": 1.0e-4,
        "optim.no_decay_bn_filter_bias": True,
        "optim.sgd.momentum": 0.9,
        "scheduler.max_epochs": 120,
        "scheduler.cosine.max_lr": 0.02,
        "scheduler.cosine.min_lr": 0.0002,
        "model.segmentation.output_stride": 8,
        "model.segmentation.use_aux_head": True,
        "model.segmentation.deeplabv3.aspp_rates": [12, 24, 36],
        "model.segmentation.deeplabv3.aspp_out_channels": 512,
    },
    # .../ade20k/pspnet_mobilevitv3.yaml
    "pspnet_ade20k_mobilevitv3_v2": {
        "model.segmentation.seg_head": "pspnet",
        "model.segmentation.pspnet.psp_dropout": 0.1,
        "model.segmentation.pspnet.psp_out_channels": 512,
        "model.segmentation.pspnet.psp_pool_sizes": [1, 2, 3, 6],
        "optim.name": "sgd",
    },
    # .../pascal_voc/pspnet_mobilevitv3.yaml
    "pspnet_voc_mobilevitv3_v2": {
        "model.segmentation.seg_head": "pspnet",
        "model.segmentation.output_stride": 16,
        "optim.weight_decay": 0.05,
        "scheduler.warmup_init_lr": 0.00005,
    },
}


@pytest.mark.parametrize("name", sorted(OFFICIAL))
def test_recipe_matches_official_yaml(name):
    flat = recipes.flatten(recipes.get_recipe(name).to_dict())
    for key, expected in OFFICIAL[name].items():
        assert key in flat, f"{name}: missing {key}"
        assert flat[key] == expected, f"{name}: {key} = {flat[key]!r}, official {expected!r}"


def test_no_warmup_in_the_ade20k_sgd_recipe():
    values = recipes.get_recipe("deeplabv3_ade20k_mobilevitv3_v2").values
    assert "warmup_iterations" not in values["scheduler"]


def test_every_recipe_is_printable_and_cites_its_source():
    for name in recipes.list_recipes():
        recipe = recipes.get_recipe(name)
        text = recipe.format()
        assert name in text and "optim.name" in text
        if not name.startswith("demo"):
            assert recipe.source.endswith(".yaml") or ".yaml " in recipe.source


@pytest.mark.parametrize(
    "model, task, dataset, expected",
    [
        ("mobilevitv3_xxs", "classification", "imagenet2012", "mobilevitv3_xxs_in1k"),
        ("mobilevitv3_s_l2", "classification", "imagenet2012", "mobilevitv3_s_in1k"),
        ("mobilevit_xs", "classification", "imagenet2012", "mobilevit_xs_in1k"),
        ("mobilevitv3_050", "classification", "imagenet2012", "mobilevitv2_in1k"),
        ("mobilevitv2_100", "classification", "imagenet2012", "mobilevitv2_in1k"),
        ("mobilevitv3_xs", "segmentation", "voc2012", "deeplabv3_voc_mobilevitv3_xs"),
        ("mobilevitv3_100", "segmentation", "scene_parse150", "deeplabv3_ade20k_mobilevitv3_v2"),
        ("mobilevitv3_xxs", "classification", "demo", "demo"),
    ],
)
def test_default_recipes_per_model(model, task, dataset, expected):
    assert recipes.default_recipe(model, task, dataset) == expected


def test_overrides_are_parsed_and_checked():
    base = recipes.get_recipe("mobilevitv2_in1k").to_dict()
    o = recipes.parse_overrides(
        [
            "optim.weight_decay=0.01",
            "scheduler.max_epochs=5",
            "common.grad_clip=none",
            "image_augmentation.rand_augment.enable=false",
        ],
        base,
    )
    merged = recipes.merge(base, o)
    assert merged["optim"]["weight_decay"] == 0.01
    assert merged["scheduler"]["max_epochs"] == 5
    assert merged["common"]["grad_clip"] is None
    assert merged["image_augmentation"]["rand_augment"]["enable"] is False
    assert base["optim"]["weight_decay"] == 0.05  # the registry is not modified
    with pytest.raises(ValueError, match="no such recipe key.*optim.weight_decay"):
        recipes.parse_overrides(["optim.weight_decy=0.1"], base)
    with pytest.raises(ValueError, match="key=value"):
        recipes.parse_overrides(["optim.weight_decay"], base)


def test_unknown_recipe_names_the_known_ones():
    with pytest.raises(ValueError, match="Did you mean mobilevitv2_in1k"):
        recipes.get_recipe("mobilevitv2_in1")


def test_recipes_command(capsys):
    from mvit3_cli import dispatch as main

    assert main(["recipes"]) == 0
    out = capsys.readouterr().out
    assert "mobilevitv3_xxs_in1k" in out and "deeplabv3_ade20k_mobilevitv3_v2" in out
    assert main(["recipes", "mobilevitv3_xxs_in1k", "--set", "scheduler.max_epochs=7"]) == 0
    out = capsys.readouterr().out
    assert "scheduler.max_epochs = 7" in out and "ema.momentum = 0.0005" in out
