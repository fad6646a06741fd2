"""Every registered variant, and the dense heads, through the shared model harness.

For each name of ``mvit3_keras.list_models()`` (MobileViTv3 and the v1 / v2
baselines): the backbone's feature pyramid (``P1`` .. ``P5`` at strides 2 .. 32,
channels of ``cvnets/models/classification/config/mobilevit*.py`` as recorded in
the registry specs), the classifier's ``.keras`` round trip and its float32 LiteRT
export against the Keras outputs.

Budget (2 CPU cores): the backbone check (~2 s CPU a variant) runs for every
variant; the ``.keras`` round trip (~8 s) and the LiteRT export (~15-25 s) run by
default for one representative of each architecture kind (family x block: the
variants of a kind differ only in widths and depths) and for every variant with
``-m slow``. Small inputs (64x64) keep each check short.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest
from support.test_case import (
    run_backbone_test,
    run_litert_export_test,
    run_model_saving_test,
)
from support.variants import REPRESENTATIVES, by_default_for, representatives

import mvit3_keras
from mvit3_keras import get_spec, specs

IMAGE_SIZE = 64  # the smallest multiple of 32 at which every stage has >= 2x2 pixels
BATCH = 2


# LiteRT by default: the v2-family baseline as a classifier; the three other kinds are
# exported in the default run as backbones of the dense heads below (DeepLabv3 on
# MobileViTv3-0.5, PSPNet on MobileViT-XXS, SSDLite on MobileViTv3-XXS).
DEFAULT_LITERT_VARIANTS = ("mobilevitv2_050",)
DETECTOR_BACKBONE = "mobilevitv3_xxs"


def images(size=IMAGE_SIZE, batch=BATCH, seed=0):
    """Images in [0, 1], as the models take them."""
    return np.random.default_rng(seed).uniform(0, 1, (batch, size, size, 3)).astype("float32")


def expected_feature_shapes(name, size=IMAGE_SIZE, batch=BATCH) -> dict:
    """``{"P1": (B, H/2, W/2, C1), ..., "P5": (B, H/32, W/32, C5)}`` from the spec:
    the stem (``conv_1``) halves the image, then each ``layer_i`` divides by its stride."""
    spec = mvit3_keras.get_spec(name)
    stride, shapes = 2, {}
    for key, stage in zip(mvit3_keras.FEATURE_KEYS, spec.stages):
        stride *= stage.stride
        side = -(-size // stride)
        shapes[key] = (batch, side, side, stage.out_channels)
    return shapes


def test_feature_strides_are_two_to_thirty_two():
    """The spec-derived expectation itself: P_k at stride 2**k for every variant."""
    for name in mvit3_keras.list_models():
        shapes = expected_feature_shapes(name)
        assert [IMAGE_SIZE // s[1] for s in shapes.values()] == [2, 4, 8, 16, 32], name


@pytest.mark.parametrize("name", mvit3_keras.list_models())
def test_backbone(name):
    backbone = mvit3_keras.create_backbone(name, input_shape=(IMAGE_SIZE, IMAGE_SIZE, 3))
    run_backbone_test(backbone, images(), expected_feature_shapes(name))


@pytest.mark.parametrize("name", by_default_for(REPRESENTATIVES))
def test_classifier_saving(name, tmp_path):
    model = mvit3_keras.create_model(name, input_shape=(IMAGE_SIZE, IMAGE_SIZE, 3), num_classes=10)
    loaded = run_model_saving_test(model, images(), tmp_path)
    assert loaded.output.shape == (None, 10)


@pytest.mark.parametrize("name", by_default_for(DEFAULT_LITERT_VARIANTS))
def test_classifier_litert_export(name, tmp_path):
    model = mvit3_keras.create_model(name, input_shape=(IMAGE_SIZE, IMAGE_SIZE, 3), num_classes=10)
    run_litert_export_test(model, images(), tmp_path)


KERAS_EXPORT_CASES = ("classifier", "segmenter", "detector")


@pytest.mark.slow
@pytest.mark.parametrize("kind", KERAS_EXPORT_CASES)
def test_keras_native_litert_export(kind, tmp_path):
    """Keras' own ``model.export(format="litert")`` (no project rewrites) of a classifier,
    a segmenter and a detector's raw outputs gives a builtin-op file with the same
    numbers as the Keras model (~40-90 s each: slow)."""
    if kind == "classifier":
        model = mvit3_keras.create_model(
            "mobilevitv3_xxs", input_shape=(IMAGE_SIZE, IMAGE_SIZE, 3), num_classes=10
        )
        data = images()
    elif kind == "segmenter":
        model, data = make_segmenter("deeplabv3"), images()
    else:
        detector = make_detector()
        model = keras.Model(detector.input, detector.output, name="ssdlite_raw")
        data = images(128)
    run_litert_export_test(model, data, tmp_path, exporter="keras")


# --------------------------------------------------------------------------------------
# Dense heads: one segmenter per head, one detector
# --------------------------------------------------------------------------------------
SEGMENTER_CASES = {
    "deeplabv3": dict(backbone="mobilevitv3_050", head="deeplabv3"),
    "pspnet": dict(backbone="mobilevit_xxs", head="pspnet"),
}


def make_segmenter(case):
    return mvit3_keras.create_segmenter(
        **SEGMENTER_CASES[case], num_classes=5, input_shape=(IMAGE_SIZE, IMAGE_SIZE, 3)
    )


def make_detector():
    """SSDLite on MobileViTv3-XXS at 128x128 (maps of stride 16 .. 128 and the global one)."""
    return mvit3_keras.create_detector(
        DETECTOR_BACKBONE,
        num_classes=5,
        input_shape=(128, 128, 3),
        output_strides=(16, 32, 64, 128, -1),
        proj_channels=(512, 256, 256, 128, 64),
        aspect_ratios=((2, 3),) * 4 + ((2,),),
    )


@pytest.mark.parametrize("case", sorted(SEGMENTER_CASES))
def test_segmenter_saving_and_litert_export(case, tmp_path):
    model = make_segmenter(case)
    loaded = run_model_saving_test(model, images(), tmp_path)
    assert loaded.output.shape[-1] == 5 if not isinstance(loaded.output, dict) else True
    run_litert_export_test(model, images(), tmp_path)


def test_detector_saving_and_litert_export(tmp_path):
    model = make_detector()
    loaded = run_model_saving_test(model, images(128), tmp_path)
    assert loaded.detection_config == model.detection_config
    # The raw outputs {"confidences", "locations"}: export_tflite gives an SSDDetector
    # the TFLite_Detection_PostProcess op (NMS), checked in tests/test_detection.py.
    raw = keras.Model(model.input, model.output, name=f"{model.name}_raw")
    run_litert_export_test(raw, images(128), tmp_path)


def test_default_run_covers_every_architecture_kind():
    """Every (family, block) kind is saved, and exported to LiteRT, in the default run."""
    kinds = representatives()
    assert {specs.V1_FAMILY, specs.V2_FAMILY} == {family for family, _ in kinds}
    assert len(kinds) == 4, sorted(kinds)
    exported = {
        *DEFAULT_LITERT_VARIANTS,
        DETECTOR_BACKBONE,
        *(c["backbone"] for c in SEGMENTER_CASES.values()),
    }
    exported_kinds = {(get_spec(n).family, get_spec(n).block) for n in exported}
    assert set(kinds) <= exported_kinds, (
        f"no default LiteRT export of {set(kinds) - exported_kinds}"
    )
