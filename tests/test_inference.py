"""``mvit3_keras.optimize_for_inference``: BatchNorm folded, same function.

Every registry variant (random BatchNorm statistics, so the fold is not a no-op),
the official parity references at their own tolerances (classification,
segmentation, detection), and the saved / reloaded folded model.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest
from conftest import assert_close_to_reference, load_parity
from support.variants import by_default_for

import mvit3_keras as m
from mvit3_keras.compat import graph_layer_types
from mvit3_keras.folding import affine_fold_plan, batch_norm_fold_plan, is_pointwise_linear
from mvit3_keras.graph_clone import iter_layers


def _randomize_batch_norms(model, seed=0):
    rng = np.random.default_rng(seed)
    for layer in iter_layers(model):
        if isinstance(layer, keras.layers.BatchNormalization):
            n = layer.moving_mean.shape
            layer.moving_mean.assign(rng.normal(0.0, 0.5, n).astype(np.float32))
            layer.moving_variance.assign(rng.uniform(0.3, 2.0, n).astype(np.float32))
            layer.gamma.assign(rng.normal(1.0, 0.3, n).astype(np.float32))
            layer.beta.assign(rng.normal(0.0, 0.3, n).astype(np.float32))
        elif isinstance(layer, (keras.layers.LayerNormalization, keras.layers.GroupNormalization)):
            n = layer.gamma.shape  # non-trivial affines, so folding them is tested
            layer.gamma.assign(rng.normal(1.0, 0.3, n).astype(np.float32))
            layer.beta.assign(rng.normal(0.0, 0.3, n).astype(np.float32))


def _graph_layer_types(model):
    """Types of the layers that the functional graph actually runs."""
    return graph_layer_types(model)


@pytest.mark.parametrize("name", by_default_for())
def test_every_variant_folds_to_the_same_function(name):
    model = m.create_model(name, input_shape=(64, 64, 3))
    _randomize_batch_norms(model)
    n_bn = sum(isinstance(x, keras.layers.BatchNormalization) for x in model.layers)
    assert len(batch_norm_fold_plan(model)) == n_bn, "every BatchNorm follows a conv"
    fast = m.optimize_for_inference(model)
    kinds = _graph_layer_types(fast)
    assert "BatchNormalization" not in kinds and "BatchNorm" not in kinds
    # every attention core owns its q / k / v 1x1 convs (the ``dim`` formulation)
    cores = [x for x in iter_layers(fast) if isinstance(x, m.layers.AttentionCore)]
    assert cores and all(core.projection_dim is not None for core in cores)
    x = np.random.default_rng(1).random((2, 64, 64, 3), np.float32)
    ref = model(x, training=False).numpy()
    got = fast(x, training=False).numpy()
    err = float(np.abs(got - ref).max())
    assert err <= 2e-5 * max(float(ref.std()), 1e-3) + 1e-6, f"{name}: max |diff| {err:.2e}"
    assert np.array_equal(got.argmax(-1), ref.argmax(-1))
    # BN params (4 per channel) and the folded norm affines (2 per channel) are gone,
    # one bias per BN-folded conv channel appears.
    removed = sum(
        int(np.prod(w.shape))
        for x in model.layers
        if isinstance(x, keras.layers.BatchNormalization)
        for w in x.weights
    )
    removed += sum(
        int(np.prod(w.shape))
        for norm in affine_fold_plan(model).values()
        if not is_pointwise_linear(norm)
        for w in norm.weights
    )
    added = sum(bn.moving_mean.shape[0] for bn in batch_norm_fold_plan(model).values())
    assert fast.count_params() == model.count_params() - removed + added
    keras.backend.clear_session()


@pytest.mark.parametrize(
    "stem,name",
    [
        ("cls_xx_small_v3", "mobilevitv3_xxs"),
        ("cls_w0.5", "mobilevitv3_050"),
        ("cls_mobilevit_xx_small", "mobilevit_xxs"),
        ("cls_mobilevit_v2_w0.5", "mobilevitv2_050"),
    ],
)
def test_folded_model_keeps_official_parity(reference, stem, name):
    data = load_parity(reference, stem)
    model = m.create_model(name, input_shape=(None, None, 3))
    m.load_cvnets_weights(model, data, rgb_input=False)
    fast = m.optimize_for_inference(model)
    for i in range(3):
        x = data[f"ref__input{i}"].astype(np.float32)
        assert_close_to_reference(
            fast(x, training=False), data[f"ref__output{i}"], what=f"{stem} folded, input {i}"
        )


@pytest.mark.parametrize(
    "stem,name",
    [("cls_xx_small_v3", "mobilevitv3_xxs"), ("cls_mobilevit_v2_w0.5", "mobilevitv2_050")],
)
def test_inference_function_keeps_official_parity(reference, stem, name):
    """The frozen serving function: the same logits as the official code, one traced shape."""
    data = load_parity(reference, stem)
    x = data["ref__input0"].astype(np.float32)
    model = m.create_model(name, input_shape=(None, None, 3))
    m.load_cvnets_weights(model, data, rgb_input=False)
    serve = m.inference_function(model, batch_size=x.shape[0], input_shape=x.shape[1:])
    assert_close_to_reference(serve(x), data["ref__output0"], what=f"{stem} frozen")
    with pytest.raises(ValueError, match="traced for images of shape"):
        serve(np.concatenate([x, x]))
    with pytest.raises(ValueError, match="static input shape"):
        m.inference_function(model)


def test_inference_function_keeps_the_output_structure():
    det = m.create_detector("mobilevitv3_xxs", input_shape=(128, 128, 3))
    x = np.random.default_rng(0).random((1, 128, 128, 3), np.float32)
    out = m.inference_function(det)(x)
    ref = det(x, training=False)
    assert set(out) == set(ref) == {"confidences", "locations"}
    for key in ref:
        np.testing.assert_allclose(out[key], ref[key], rtol=1e-4, atol=1e-4)


def test_folded_segmenter_and_detector_keep_parity(reference):
    data = load_parity(reference, "seg_deeplabv3_voc_xx_small_v3")
    x = data["ref__input0"].astype(np.float32)
    seg = m.create_segmenter("mobilevitv3_xxs", preset="pascal_voc", input_shape=x.shape[1:])
    m.load_cvnets_weights(seg, data, rgb_input=False)
    fast = m.optimize_for_inference(seg.inference_model("logits"))
    full = np.asarray(fast(x, training=False))
    key = "ref__output0_rows1step3_cols1step3"
    assert_close_to_reference(
        data.like_stored(key, full[:, 1::3, 1::3]), data[key], what="seg logits"
    )

    data = load_parity(reference, "det_ssd_xx_small_v3")
    det = m.create_detector("mobilevitv3_xxs")
    m.load_cvnets_weights(det, data, rgb_input=False)
    fast = m.optimize_for_inference(det)
    out = fast(data["ref__input0"].astype(np.float32), training=False)
    for key in ("confidences", "locations"):
        assert_close_to_reference(out[key], data[f"ref__output0_{key}"], what=f"det {key}")


@pytest.mark.parametrize("name", ["mobilevit_xxs", "mobilevitv3_050"])
def test_folded_model_saves_and_reloads(tmp_path, name):
    model = m.create_model(name, input_shape=(64, 64, 3), num_classes=10)
    _randomize_batch_norms(model)
    fast = m.optimize_for_inference(model)
    path = tmp_path / "folded.keras"
    fast.save(path)
    again = keras.models.load_model(path)
    x = np.random.default_rng(2).random((1, 64, 64, 3), np.float32)
    np.testing.assert_array_equal(again(x).numpy(), fast(x).numpy())


def test_rejects_non_functional_models():
    class Sub(keras.Model):
        def call(self, x):
            return x

    with pytest.raises(TypeError, match="functional"):
        m.optimize_for_inference(Sub())
