"""A shared test harness for custom layers and models (the checks of KerasHub's
``keras_hub/src/tests/test_case.py``, written for this project).

* :func:`run_layer_test`: config round trip (``from_config(get_config())`` gives
  the same config and, with the same weights, the same outputs), symbolic call
  (output shape / dtype from a ``keras.Input``), eager call, a training step
  (a gradient reaches every trainable weight; non-trainable weights update, or
  not, as declared), mixed precision (``mixed_float16``: runs, float16 output,
  float32 variables), and a ``.keras`` save / load with identical outputs.
* :func:`run_backbone_test`: the ``{"P1": ..., "P5": ...}`` feature pyramid of a
  backbone (shape of every stage, symbolic and eager).
* :func:`run_model_saving_test`: ``.keras`` round trip of a whole model (same
  class, same config, bit-identical outputs).
* :func:`run_litert_export_test`: float32 LiteRT (TFLite) export compared
  numerically with the Keras model.

Every check names the layer / model and what differs, so a failing case reads
as a bug report.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Sequence
from typing import Any, Optional

import keras
import numpy as np
import tensorflow as tf

MIXED_POLICY = "mixed_float16"
# float32 LiteRT vs Keras: both run the same float32 graph, only the kernels
# (XNNPACK / TFLite reference vs TensorFlow's oneDNN) sum in a different order.
# Rounding errors of ~1e-7 per op accumulated through the ~100 ops of a
# MobileViT give ~1e-6 of the output scale (measured: 2e-6 on MobileViTv3-XXS
# logits); 1e-4 leaves a 50x margin, while a conversion bug (a transposed
# layout, a wrong resize rule, a dropped op) moves outputs by a sizeable
# fraction of their scale.
LITERT_FP32_MAX_REL_ERR = 1e-4
LITERT_FP32_MIN_COSINE = 0.99999


# --------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------
def as_list(x) -> list:
    """``x`` as a flat list of arrays / tensors (dict values in key order)."""
    if isinstance(x, dict):
        return [x[k] for k in sorted(x)]
    if isinstance(x, (list, tuple)):
        return list(x)
    return [x]


def to_numpy_list(x) -> list:
    return [keras.ops.convert_to_numpy(t) for t in as_list(x)]


def symbolic_inputs(input_data) -> Any:
    """``keras.Input`` (batch dimension free) for an array or a list of arrays."""
    arrays = as_list(input_data)
    tensors = [keras.Input(shape=a.shape[1:], dtype=str(a.dtype)) for a in arrays]
    return tensors if isinstance(input_data, (list, tuple)) else tensors[0]


def with_free_batch(shape) -> tuple:
    return (None, *tuple(shape)[1:])


def shapes_of(outputs) -> list:
    return [tuple(t.shape) for t in as_list(outputs)]


def expected_shapes(expected) -> list:
    """A shape or a list of shapes (multi-output layers) as a list of tuples."""
    if expected and isinstance(expected[0], (list, tuple)):
        return [tuple(s) for s in expected]
    return [tuple(expected)]


def assert_same_outputs(actual, expected, what: str, atol: float = 0.0) -> None:
    actual, expected = to_numpy_list(actual), to_numpy_list(expected)
    assert len(actual) == len(expected), f"{what}: {len(actual)} outputs vs {len(expected)}"
    for i, (a, e) in enumerate(zip(actual, expected)):
        assert a.shape == e.shape, f"{what}: output {i} shape {a.shape} vs {e.shape}"
        np.testing.assert_allclose(a, e, rtol=0, atol=atol, err_msg=f"{what}: output {i}")


def normalized_config(config):
    """``config`` with tuples as lists (what a ``.keras`` file's JSON gives back)."""
    if isinstance(config, dict):
        return {k: normalized_config(v) for k, v in config.items()}
    if isinstance(config, (list, tuple)):
        return [normalized_config(v) for v in config]
    return config


def make_layer(layer_cls, init_kwargs, **overrides):
    """A fresh layer; ``init_kwargs`` may be a callable (layers that take layers)."""
    kwargs = init_kwargs() if callable(init_kwargs) else dict(init_kwargs)
    kwargs.update(overrides)
    return layer_cls(**kwargs)


# --------------------------------------------------------------------------------------
# Layer checks
# --------------------------------------------------------------------------------------
def check_config_round_trip(layer, input_data) -> None:
    """``from_config(get_config())``: same config; with the same weights, same outputs.
    The registered-name round trip (``serialize`` / ``deserialize``) too."""
    name = type(layer).__name__
    config = layer.get_config()
    # deep copy: keras.layers.Wrapper.from_config pops "layer" from the dict it gets
    clone = type(layer).from_config(copy.deepcopy(config))
    assert clone.get_config() == config, f"{name}: get_config of from_config(config) differs"
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer))
    assert type(restored) is type(layer), f"{name}: deserialized as {type(restored).__name__}"
    assert restored.get_config() == config, f"{name}: serialize / deserialize changes the config"
    expected = layer(input_data, training=False)
    clone(input_data, training=False)  # build
    clone.set_weights(layer.get_weights())
    assert_same_outputs(clone(input_data, training=False), expected, f"{name} from_config")


def check_symbolic_call(layer, input_data, expected_output_shape, expected_dtype) -> None:
    """Output shapes / dtypes of a call on ``keras.Input`` (and ``compute_output_shape``)."""
    name = type(layer).__name__
    outputs = layer(symbolic_inputs(input_data))
    want = [with_free_batch(s) for s in expected_shapes(expected_output_shape)]
    assert shapes_of(outputs) == want, f"{name}: symbolic output shapes {shapes_of(outputs)}"
    for t in as_list(outputs):
        assert t.dtype == expected_dtype, f"{name}: symbolic output dtype {t.dtype}"
    if type(layer).compute_output_shape is keras.layers.Layer.compute_output_shape:
        return  # no override: Keras traces ``call`` (checked above)
    in_shapes = [with_free_batch(a.shape) for a in as_list(input_data)]
    computed = layer.compute_output_shape(
        in_shapes if isinstance(input_data, (list, tuple)) else in_shapes[0]
    )
    computed = expected_shapes(computed)
    assert computed == want, f"{name}: compute_output_shape {computed} vs {want}"


def check_eager_call(layer, input_data, expected_output_shape, expected_dtype) -> None:
    name = type(layer).__name__
    for training in (False, True):
        outputs = layer(input_data, training=training)
        got = shapes_of(outputs)
        assert got == expected_shapes(expected_output_shape), f"{name}: eager shapes {got}"
        for t in as_list(outputs):
            assert t.dtype == expected_dtype, f"{name}: eager output dtype {t.dtype}"
            assert np.all(np.isfinite(keras.ops.convert_to_numpy(t))), f"{name}: non-finite"


def float_loss(outputs):
    """A scalar that depends on every float output element."""
    terms = [
        keras.ops.mean(
            keras.ops.square(keras.ops.cast(t, "float32")) + keras.ops.cast(t, "float32")
        )
        for t in as_list(outputs)
        if "float" in str(t.dtype)
    ]
    assert terms, "the layer has no float output to train through"
    return sum(terms)


def check_training_step(
    layer, input_data, *, updated_weights: Optional[Sequence[str]], input_gradient: bool
) -> None:
    """One training-mode forward / backward pass.

    Every trainable weight gets a finite gradient (and the first input, when
    ``input_gradient``). ``updated_weights``: substrings of the paths of the
    non-trainable weights a training call may change (at least one of them must;
    e.g. a range minimum stays 0 on non-negative inputs); every other
    non-trainable weight must stay as it was (``None``: not checked).
    """
    name = type(layer).__name__
    layer(input_data, training=False)  # build
    before = {v.path: np.array(v.numpy()) for v in layer.non_trainable_weights}
    inputs = [tf.convert_to_tensor(a) for a in as_list(input_data)]
    with tf.GradientTape() as tape:
        tape.watch(inputs)
        call_input = inputs if isinstance(input_data, (list, tuple)) else inputs[0]
        loss = float_loss(layer(call_input, training=True))
    grads = tape.gradient(loss, [*layer.trainable_weights, inputs[0]])
    for weight, grad in zip(layer.trainable_weights, grads):
        assert grad is not None, f"{name}: no gradient reaches trainable weight {weight.path}"
        assert np.all(np.isfinite(grad)), f"{name}: non-finite gradient of {weight.path}"
    if input_gradient:
        assert grads[-1] is not None, f"{name}: no gradient reaches the input"
        assert np.all(np.isfinite(grads[-1])), f"{name}: non-finite input gradient"
    if updated_weights is None:
        return
    changed = {v.path for v in layer.non_trainable_weights if not np.array_equal(before[v.path], v)}
    allowed = {
        v.path
        for v in layer.non_trainable_weights
        if any(part in v.path for part in updated_weights)
    }
    assert not changed - allowed, f"{name}: changed in a training step: {sorted(changed - allowed)}"
    if allowed:
        assert changed, f"{name}: none of {sorted(allowed)} updated in a training step"


def check_mixed_precision(
    layer_cls, init_kwargs, input_data, expected_output_shape, expected_dtype
) -> None:
    """Under ``mixed_float16``: runs, float16 outputs (float32 for float32-only
    outputs is a failure), float32 variables, finite values."""
    layer = make_layer(layer_cls, init_kwargs, dtype=MIXED_POLICY)
    name = layer_cls.__name__
    for training in (False, True):
        outputs = layer(input_data, training=training)
        assert shapes_of(outputs) == expected_shapes(expected_output_shape), name
        for t in as_list(outputs):
            assert t.dtype == expected_dtype, f"{name}: {MIXED_POLICY} output dtype {t.dtype}"
            values = keras.ops.convert_to_numpy(t)
            assert np.all(np.isfinite(values)), f"{name}: non-finite {MIXED_POLICY} output"
    for weight in layer.weights:
        assert weight.dtype == "float32", f"{name}: {MIXED_POLICY} variable {weight.path} dtype"


def check_keras_saving(layer, input_data, tmp_dir) -> None:
    """The layer inside a functional model saved as ``.keras`` and loaded back:
    same class, same config, identical outputs."""
    name = type(layer).__name__
    inputs = symbolic_inputs(input_data)
    model = keras.Model(inputs, layer(inputs))
    expected = model(input_data, training=False)
    path = os.path.join(os.fspath(tmp_dir), f"{name}.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    twin = [lay for lay in loaded.layers if type(lay) is type(layer)]
    assert len(twin) == 1, f"{name}: the loaded model has {len(twin)} {name} layers"
    assert normalized_config(twin[0].get_config()) == normalized_config(layer.get_config()), (
        f"{name}: config changes in .keras"
    )
    assert_same_outputs(loaded(input_data, training=False), expected, f"{name} .keras load")


LAYER_CHECKS = ("config", "symbolic", "eager", "training", "mixed_precision", "saving")


def run_layer_test(
    layer_cls,
    init_kwargs,
    input_data,
    expected_output_shape,
    *,
    tmp_dir,
    expected_output_dtype: str = "float32",
    expected_mixed_dtype: Optional[str] = None,
    updated_weights: Optional[Sequence[str]] = (),
    input_gradient: bool = True,
    checks: Sequence[str] = LAYER_CHECKS,
) -> None:
    """The generic checks of one custom layer (see the module docstring).

    ``init_kwargs``: constructor arguments (or a callable returning them, for
    arguments that are layers); ``input_data``: an array or a list of arrays;
    ``expected_output_shape``: a shape (or a list, for list outputs) with the
    batch dimension; ``expected_mixed_dtype``: output dtype under
    ``mixed_float16`` (default float16 for float outputs); ``checks``: a subset
    of :data:`LAYER_CHECKS` (e.g. without ``"training"`` for integer outputs).
    """
    unknown = sorted(set(checks) - set(LAYER_CHECKS))
    if unknown:
        raise ValueError(f"unknown checks {unknown}; choose from {LAYER_CHECKS}")
    if expected_mixed_dtype is None:
        floating = "float" in expected_output_dtype
        expected_mixed_dtype = "float16" if floating else expected_output_dtype
    shape, dtype = expected_output_shape, expected_output_dtype
    runs = {
        "config": lambda layer: check_config_round_trip(layer, input_data),
        "symbolic": lambda layer: check_symbolic_call(layer, input_data, shape, dtype),
        "eager": lambda layer: check_eager_call(layer, input_data, shape, dtype),
        "training": lambda layer: check_training_step(
            layer, input_data, updated_weights=updated_weights, input_gradient=input_gradient
        ),
        "mixed_precision": lambda layer: check_mixed_precision(
            layer_cls, init_kwargs, input_data, shape, expected_mixed_dtype
        ),
        "saving": lambda layer: check_keras_saving(layer, input_data, tmp_dir),
    }
    for check in LAYER_CHECKS:
        if check in checks:
            runs[check](make_layer(layer_cls, init_kwargs))


# --------------------------------------------------------------------------------------
# Model checks
# --------------------------------------------------------------------------------------
def run_backbone_test(backbone, input_data, expected_feature_shapes: dict) -> None:
    """The feature pyramid of ``backbone``: the same keys (in order) and shapes from
    the symbolic graph and from an eager call, float32, finite.

    ``expected_feature_shapes``: ``{"P1": (B, H/2, W/2, C1), ...}`` with the batch.
    """
    name = backbone.name
    keys = list(expected_feature_shapes)
    symbolic = backbone.output
    assert isinstance(symbolic, dict), f"{name}: outputs {type(symbolic).__name__}, not a dict"
    assert sorted(symbolic) == sorted(keys), f"{name}: feature keys {sorted(symbolic)}"
    features = backbone(input_data, training=False)
    for key in keys:
        want = tuple(expected_feature_shapes[key])
        got_symbolic = tuple(symbolic[key].shape)
        assert got_symbolic == with_free_batch(want), f"{name} {key}: symbolic {got_symbolic}"
        value = keras.ops.convert_to_numpy(features[key])
        assert value.shape == want, f"{name} {key}: eager shape {value.shape} vs {want}"
        assert value.dtype == np.float32, f"{name} {key}: dtype {value.dtype}"
        assert np.all(np.isfinite(value)), f"{name} {key}: non-finite features"


def run_model_saving_test(model, input_data, tmp_dir) -> keras.Model:
    """``.keras`` round trip: same class, same config, bit-identical outputs.
    Returns the loaded model."""
    name = model.name
    expected = model(input_data, training=False)
    path = os.path.join(os.fspath(tmp_dir), f"{name}.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert type(loaded) is type(model), f"{name}: loaded as {type(loaded).__name__}"
    assert normalized_config(loaded.get_config()) == normalized_config(model.get_config()), (
        f"{name}: config changes in .keras"
    )
    assert len(loaded.weights) == len(model.weights), f"{name}: weight count changes"
    assert_same_outputs(loaded(input_data, training=False), expected, f"{name} .keras load")
    return loaded


def export_litert(model, path, exporter: str) -> None:
    """float32 ``.tflite`` of ``model``: ``"quantization"`` = this project's
    :func:`quantization.export_tflite` (export graph rewrites + converter checks),
    ``"keras"`` = Keras' own ``model.export(format="litert")``."""
    if exporter == "quantization":
        from quantization import export_tflite

        export_tflite(model, path, quant="fp32", verify=False)
    elif exporter == "keras":
        model.export(path, format="litert", verbose=False)
    else:
        raise ValueError(f"exporter must be 'quantization' or 'keras', got {exporter!r}")


def match_outputs_by_shape(keras_outputs: list, litert_outputs: list, name: str) -> list:
    """Pairs ``(keras, litert)``: the converter does not keep output names or order,
    so outputs are matched by their (distinct) shapes."""
    assert len(keras_outputs) == len(litert_outputs), (
        f"{name}: {len(litert_outputs)} LiteRT outputs vs {len(keras_outputs)} Keras outputs"
    )
    shapes = [k.shape for k in keras_outputs]
    assert len(set(shapes)) == len(shapes), f"{name}: outputs of equal shapes {shapes}"
    by_shape = {out.shape: out for out in litert_outputs}
    missing = [s for s in shapes if s not in by_shape]
    assert not missing, f"{name}: LiteRT has no output of shape {missing[0]}"
    return [(k, by_shape[k.shape]) for k in keras_outputs]


def run_litert_export_test(
    model,
    input_data,
    tmp_dir,
    *,
    exporter: str = "quantization",
    max_rel_err: float = LITERT_FP32_MAX_REL_ERR,
    min_cosine: float = LITERT_FP32_MIN_COSINE,
) -> dict:
    """float32 LiteRT export run by LiteRT and compared with the Keras model.

    Per output: ``max |litert - keras| <= max_rel_err * max |keras|`` and the
    per-image cosine >= ``min_cosine`` (see :data:`LITERT_FP32_MAX_REL_ERR`).
    Returns ``{output index: relative error}``.
    """
    from quantization import cosine_similarity, run_tflite

    name = model.name
    path = os.path.join(os.fspath(tmp_dir), f"{name}_{exporter}.tflite")
    export_litert(model, path, exporter)
    expected = to_numpy_list(model(input_data, training=False))
    got = [np.asarray(o) for o in as_list(run_tflite(path, input_data))]
    errors = {}
    for i, (ref, out) in enumerate(match_outputs_by_shape(expected, got, name)):
        scale = float(np.abs(ref).max())
        assert scale > 0, f"{name}: output {i} is all zeros, nothing to compare"
        rel = float(np.abs(out.astype(np.float64) - ref).max()) / scale
        assert rel <= max_rel_err, (
            f"{name} ({exporter}): output {i} max |LiteRT - Keras| = {rel:.2e} x max |Keras| "
            f"> {max_rel_err:.0e}"
        )
        cosine = float(cosine_similarity(out, ref).min())
        assert cosine >= min_cosine, f"{name} ({exporter}): output {i} cosine {cosine:.7f}"
        errors[i] = rel
    return errors
