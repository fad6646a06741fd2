"""Every registered custom layer through the shared harness (``support.test_case``).

The layers are discovered from Keras' registry (``keras.saving.get_custom_objects``,
package ``mvit3_keras``) after importing ``mvit3_keras`` and ``quantization``:
a registered layer without an entry in :data:`LAYER_CASES` fails
:func:`test_every_registered_layer_has_a_case`, so a new layer cannot go untested.
The numerics of each layer against the official PyTorch operations
(``cvnets/layers``, ``cvnets/modules``) are checked in ``tests/test_layers.py`` and
the parity tests; here every layer gets the generic checks.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional

import keras
import numpy as np
import pytest
from support.test_case import LAYER_CHECKS, run_layer_test

import mvit3_keras  # noqa: F401  (registers the model layers)
import quantization.qat  # noqa: F401  (registers the QAT / export layers)

PACKAGE = "mvit3_keras"


@dataclasses.dataclass(frozen=True)
class LayerCase:
    """One harness run of the registered layer ``name`` (a formulation of it)."""

    name: str
    init_kwargs: Any  # dict, or a callable returning one (arguments that are layers)
    input_shapes: Any  # one shape, or a list of shapes (multi-input layers)
    output_shape: Any  # one shape, or a list of shapes (list outputs)
    variant: str = ""
    output_dtype: str = "float32"
    updated_weights: Optional[tuple] = ()  # non-trainable weights a training step changes
    input_gradient: bool = True
    training: bool = True  # False: no gradient check (integer outputs)
    known_bugs: tuple = ()  # ((check, reason), ...): strict xfails until the layer is fixed
    # QAT layers compute in float32: under mixed_float16 they raise a clear error
    # (mvit3_keras.layers.quantized.require_float32_policy) instead of running
    rejects_mixed_precision: bool = False

    @property
    def case_id(self) -> str:
        return f"{self.name}-{self.variant}" if self.variant else self.name


def conv_quant_kwargs():
    """A ``QuantConv2D`` replacing Conv2D(8, 3) + BatchNorm (folded, frozen statistics)."""
    return dict(
        filters=8,
        kernel_size=3,
        padding="same",
        batch_norm=keras.layers.BatchNormalization(name="bn").get_config(),
    )


def depthwise_quant_kwargs():
    """A ``QuantDepthwiseConv2D`` (multiplier 2, stride 2) + folded BatchNorm."""
    return dict(
        kernel_size=3,
        strides=2,
        depth_multiplier=2,
        batch_norm=keras.layers.BatchNormalization(name="bn").get_config(),
    )


def quantize_wrapper_kwargs():
    """``QuantizeWrapper`` needs the layer it wraps: a residual ``Add``."""
    return dict(layer=keras.layers.Add(name="add"))


OUTPUT_STATE = ("output_quantizer",)  # the int8 range of a QAT layer's output
QUANTIZER_STATE = ("quantizer",)  # QuantNormalization, quantized attention


def qat_case(name, init_kwargs, input_shapes, output_shape, variant="", *, state=OUTPUT_STATE):
    """A QAT layer's case: a training step updates its quantizer ``state``, and under
    ``mixed_float16`` it refuses to build (QAT layers compute in float32)."""
    return LayerCase(
        name,
        init_kwargs,
        input_shapes,
        output_shape,
        variant,
        updated_weights=state,
        rejects_mixed_precision=True,
    )


# Known bugs the harness found (strict xfails: fixing the layer turns them into failures
# that ask for the mark to be removed).
QUANT_RANGES = ("range_min", "range_max", "initialized")  # ActivationQuantizer EMA state
MAP = (2, 8, 6, 5)  # [B, H, W, C]
TOKENS = (2, 4, 12, 5)  # Unfold(MAP): [B, P, N, C]
QKV_V1 = (2, 4, 6, 24)  # qkv_proj output of d = 8: [q | k | v]
QKV_V2 = (2, 4, 6, 17)  # qkv_proj output of d = 8: [q (1) | k | v]
ATTENDED = (2, 4, 6, 8)
LAYER_CASES = (
    LayerCase("Unfold", {}, MAP, TOKENS),
    LayerCase("Unfold", {"target": "generic"}, MAP, TOKENS, "generic"),
    LayerCase("Unfold", {"target": "edgetpu"}, MAP, TOKENS, "edgetpu"),
    LayerCase("Fold", {}, [TOKENS, MAP], MAP),
    LayerCase("Fold", {"target": "generic"}, [TOKENS, MAP], MAP, "generic"),
    LayerCase("Fold", {"target": "edgetpu"}, [TOKENS, MAP], MAP, "edgetpu"),
    LayerCase(
        "MultiHeadSelfAttention",
        {"num_heads": 2, "attention_dropout": 0.1},
        QKV_V1,
        ATTENDED,
    ),
    LayerCase(
        "MultiHeadSelfAttention",
        {"num_heads": 2, "dim": 8},
        TOKENS,
        (2, 4, 12, 8),
        "split",
    ),
    LayerCase(
        "LinearSelfAttention",
        {"attention_dropout": 0.1},
        QKV_V2,
        ATTENDED,
    ),
    LayerCase(
        "LinearSelfAttention",
        {"dim": 8},
        TOKENS,
        (2, 4, 12, 8),
        "split",
    ),
    LayerCase(
        "LinearSelfAttention",
        {"target": "edgetpu"},
        QKV_V2,
        ATTENDED,
        "edgetpu",
    ),
    LayerCase(
        "LinearSelfAttention",
        {"dim": 8, "target": "generic"},
        TOKENS,
        (2, 4, 12, 8),
        "split-generic",
    ),
    LayerCase(
        "SplitPointwiseConv",
        {"splits": [1, 4, 4], "activations": [None, None, "relu"]},
        TOKENS,
        [(2, 4, 12, 1), (2, 4, 12, 4), (2, 4, 12, 4)],
    ),
    LayerCase(
        "BatchNorm", {}, (4, 5, 6, 8), (4, 5, 6, 8), updated_weights=("moving_mean", "moving_var")
    ),
    LayerCase("ResizeToEven", {"align_corners": True}, (2, 7, 9, 3), (2, 8, 10, 3)),
    LayerCase("ResizeToEven", {}, (2, 7, 9, 3), (2, 8, 10, 3), "half_pixel"),
    LayerCase("ResizeLike", {}, [(2, 8, 10, 3), (2, 7, 9, 1)], (2, 7, 9, 3)),
    LayerCase("AdaptiveAveragePooling2D", {"output_size": 3}, (2, 7, 8, 4), (2, 3, 3, 4)),
    LayerCase("ScaleResize", {"factor": 2, "align_corners": True}, (2, 5, 6, 3), (2, 10, 12, 3)),
    LayerCase("ArgmaxMask", {}, (2, 5, 6, 7), (2, 5, 6), output_dtype="int32", training=False),
    LayerCase("SliceLastAxis", {"start": 1, "stop": 5}, (2, 10, 8), (2, 10, 4)),
    LayerCase("NormalizationExport", {"axes": [1, 2, 3]}, TOKENS, TOKENS),
    LayerCase("NormalizationExport", {"axes": [-1]}, TOKENS, TOKENS, "layer_norm"),
    LayerCase(
        "NormalizationExport",
        {"axes": [1, 2, 3], "epsilon": 1e-6, "center": False},
        TOKENS,
        TOKENS,
        "no_center",
    ),
    LayerCase("ActivationQuantizer", {}, (2, 4, 4, 3), (2, 4, 4, 3), updated_weights=QUANT_RANGES),
    LayerCase(
        "ActivationQuantizer", {"fixed_range": [0.0, 1.0]}, (2, 4, 4, 3), (2, 4, 4, 3), "fixed"
    ),
    LayerCase(
        "SharedRangeQuantizer",
        {"num_sites": 3},
        (2, 4, 4, 3),
        (2, 4, 4, 3),
        updated_weights=QUANT_RANGES,
    ),
    qat_case("QuantConv2D", conv_quant_kwargs, (2, 6, 6, 4), (2, 6, 6, 8)),
    LayerCase(  # output range left to a SharedRangeQuantizer: no state of its own
        "QuantConv2D",
        lambda: dict(conv_quant_kwargs(), quantize_output=False),
        (2, 6, 6, 4),
        (2, 6, 6, 8),
        "shared_range",
        rejects_mixed_precision=True,
    ),
    qat_case("QuantDepthwiseConv2D", depthwise_quant_kwargs, (2, 7, 7, 4), (2, 3, 3, 8)),
    qat_case("QuantDense", {"units": 6}, (2, 4, 12, 5), (2, 4, 12, 6)),
    qat_case("QuantActivation", {}, (2, 4, 4, 3), (2, 4, 4, 3)),
    qat_case("QuantActivation", {"activation": "relu6"}, (2, 4, 4, 3), (2, 4, 4, 3), "relu6"),
    qat_case(
        "QuantizeWrapper", quantize_wrapper_kwargs, [(2, 4, 4, 3), (2, 4, 4, 3)], (2, 4, 4, 3)
    ),
    qat_case("QuantNormalization", {"axes": [-1]}, TOKENS, TOKENS, state=QUANTIZER_STATE),
    qat_case(
        "QuantNormalization",
        {"axes": [-1], "quantize_output": False},
        TOKENS,
        TOKENS,
        "shared_range",
        state=QUANTIZER_STATE,
    ),
    qat_case(
        "QuantNormalization",
        {"axes": [-1], "ema_decay": 0.99, "float_statistics": True},
        TOKENS,
        TOKENS,
        "float_statistics",
        state=QUANTIZER_STATE,
    ),
    qat_case(
        "QuantMultiHeadSelfAttention",
        {"num_heads": 2, "float_core": True},
        QKV_V1,
        ATTENDED,
        "float_core",
        state=QUANTIZER_STATE,
    ),
    qat_case(
        "QuantLinearSelfAttention",
        {"target": "edgetpu"},
        QKV_V2,
        ATTENDED,
        "edgetpu",
        state=QUANTIZER_STATE,
    ),
    qat_case(
        "QuantMultiHeadSelfAttention", {"num_heads": 2}, QKV_V1, ATTENDED, state=QUANTIZER_STATE
    ),
    qat_case("QuantLinearSelfAttention", {}, QKV_V2, ATTENDED, state=QUANTIZER_STATE),
    # Old class names kept so that earlier saved .keras files load (same layers).
    LayerCase("UnfoldExport", {"target": "generic"}, MAP, TOKENS),
    LayerCase("FoldExport", {"target": "edgetpu"}, [TOKENS, MAP], MAP),
    LayerCase(
        "MultiHeadSelfAttentionSplit",
        {"num_heads": 2, "dim": 8},
        TOKENS,
        (2, 4, 12, 8),
    ),
    LayerCase(
        "LinearSelfAttentionSplit",
        {"dim": 8},
        TOKENS,
        (2, 4, 12, 8),
    ),
    LayerCase(
        "LinearSelfAttentionExport",
        {"target": "edgetpu"},
        QKV_V2,
        ATTENDED,
    ),
)

# Registered objects that are not layers, and where the harness covers them.
NON_LAYER_OBJECTS = {
    "MobileViTModel": "tests/test_harness_models.py (classifiers, backbones)",
    "Segmenter": "tests/test_harness_models.py (deeplabv3, pspnet)",
    "SSDDetector": "tests/test_harness_models.py (SSDLite)",
    "SegmentationCrossEntropy": "test_registered_losses_round_trip",
    "SSDMultiBoxLoss": "test_registered_losses_round_trip",
    "silu_inference": "test_registered_functions_round_trip",
    "QuantConv": "tests/test_quant_qat.py::test_older_quant_conv_file_is_a_clear_error",
}


def registered_objects() -> dict:
    """``{name: object}`` of the package's registrations (aliases of a renamed
    class, registered under an older name, are left out: they are the same class)."""
    objects = {}
    for key, obj in keras.saving.get_custom_objects().items():
        package, _, name = key.partition(">")
        if package != PACKAGE:
            continue
        if keras.saving.get_registered_name(obj) != key:
            continue  # an alias
        objects[name] = obj
    return objects


def registered_layers() -> dict:
    return {
        name: obj
        for name, obj in registered_objects().items()
        if isinstance(obj, type)
        and issubclass(obj, keras.layers.Layer)
        and not issubclass(obj, keras.Model)
    }


def test_every_registered_layer_has_a_case():
    covered = {case.name for case in LAYER_CASES}
    missing = sorted(set(registered_layers()) - covered)
    assert not missing, (
        f"registered layers without a harness case: {missing}; add a LayerCase to "
        "tests/test_harness_layers.py (constructor arguments, input shape, output shape)"
    )


def test_every_registered_object_is_covered():
    objects = registered_objects()
    uncovered = sorted(set(objects) - set(registered_layers()) - set(NON_LAYER_OBJECTS))
    assert not uncovered, f"registered objects not covered by the harness: {uncovered}"
    stale = sorted(({c.name for c in LAYER_CASES} | set(NON_LAYER_OBJECTS)) - set(objects))
    assert not stale, f"harness cases for names that are no longer registered: {stale}"


def random_inputs(shapes, seed: int):
    rng = np.random.default_rng(seed)
    if isinstance(shapes, list):
        return [rng.normal(size=s).astype("float32") for s in shapes]
    return rng.normal(size=shapes).astype("float32")


def harness_params():
    """One test per (case, check); a known bug is a strict xfail of that check only."""
    params = []
    for case in LAYER_CASES:
        bugs = dict(case.known_bugs)
        for check in LAYER_CHECKS:
            if check == "training" and not case.training:
                continue
            marks = ()
            if check in bugs:
                marks = (pytest.mark.xfail(strict=True, reason=bugs[check]),)
            params.append(pytest.param(case, check, id=f"{case.case_id}-{check}", marks=marks))
    return params


@pytest.mark.parametrize("case, check", harness_params())
def test_layer_harness(case, check, tmp_path):
    layer_cls = registered_objects().get(case.name)
    if layer_cls is None:
        pytest.fail(f"{case.name} is not registered under {PACKAGE!r}")
    if check == "mixed_precision" and case.rejects_mixed_precision:
        check_rejects_mixed_precision(layer_cls, case)
        return
    run_layer_test(
        layer_cls,
        case.init_kwargs,
        random_inputs(case.input_shapes, seed=len(case.case_id)),
        case.output_shape,
        tmp_dir=tmp_path,
        expected_output_dtype=case.output_dtype,
        updated_weights=case.updated_weights,
        input_gradient=case.input_gradient,
        checks=(check,),
    )


def check_rejects_mixed_precision(layer_cls, case) -> None:
    """Building the layer under ``mixed_float16`` raises the float32-policy error."""
    init_kwargs = case.init_kwargs() if callable(case.init_kwargs) else dict(case.init_kwargs)
    layer = layer_cls(**init_kwargs, dtype="mixed_float16")
    with pytest.raises(ValueError, match="compute in float32.*mixed_float16"):
        layer(random_inputs(case.input_shapes, seed=0))


def loss_cases():
    """Registered losses with an input pair: (loss, y_true, y_pred)."""
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, size=(2, 4, 4)).astype("int32")
    labels[0, 0, 0] = 255  # the ignore label
    logits = rng.normal(size=(2, 4, 4, 3)).astype("float32")
    boxes = {
        "box_labels": rng.integers(0, 3, size=(2, 6)).astype("int32"),
        "box_coordinates": rng.normal(size=(2, 6, 4)).astype("float32"),
    }
    outputs = {
        "confidences": rng.normal(size=(2, 6, 3)).astype("float32"),
        "locations": rng.normal(size=(2, 6, 4)).astype("float32"),
    }
    objects = registered_objects()
    return {
        "SegmentationCrossEntropy": (
            objects["SegmentationCrossEntropy"](ignore_index=255, label_smoothing=0.1),
            labels,
            logits,
        ),
        "SSDMultiBoxLoss": (objects["SSDMultiBoxLoss"](neg_pos_ratio=2), boxes, outputs),
    }


@pytest.mark.parametrize("name", ["SegmentationCrossEntropy", "SSDMultiBoxLoss"])
def test_registered_losses_round_trip(name):
    """Registered losses: serialize / deserialize gives the same class, config and value."""
    loss, y_true, y_pred = loss_cases()[name]
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(loss))
    assert type(restored) is type(loss)
    assert restored.get_config() == loss.get_config()
    value = float(loss(y_true, y_pred))
    assert np.isfinite(value)
    assert float(restored(y_true, y_pred)) == value


def test_registered_functions_round_trip():
    """Registered functions (activations of the inference graph) deserialize to themselves."""
    functions = {n: f for n, f in registered_objects().items() if not isinstance(f, type)}
    assert functions, "no registered function found"
    for name, function in functions.items():
        serialized = keras.saving.serialize_keras_object(function)
        assert keras.saving.deserialize_keras_object(serialized) is function, name
