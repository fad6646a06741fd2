"""Custom layers against NumPy transcriptions of the official PyTorch operations."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from mvit3_keras.layers import (
    Fold,
    LinearSelfAttention,
    MultiHeadSelfAttention,
    NormalizationExport,
    QuantLinearSelfAttention,
    QuantMultiHeadSelfAttention,
    QuantNormalization,
    ResizeLike,
    ResizeToEven,
    Unfold,
)

RNG = np.random.default_rng(0)


def official_unfold(x):
    """``MobileViTBlock.unfolding`` (cvnets/modules/mobilevit_block.py) in NCHW, as [B, P, N, C]."""
    b, h, w, c = x.shape
    nchw = x.transpose(0, 3, 1, 2)
    patches = nchw.reshape(b, c, h // 2, 2, w // 2, 2)  # [B, C, iy, py, ix, px]
    patches = patches.transpose(0, 3, 5, 2, 4, 1)  # [B, py, px, iy, ix, C]
    return patches.reshape(b, 4, (h // 2) * (w // 2), c)


def test_unfold_order_and_fold_inverse():
    x = RNG.normal(size=(2, 6, 10, 5)).astype("float32")
    patches = Unfold()(x)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(patches), official_unfold(x))
    back = Fold()([patches, x])
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(back), x)


def torch_bilinear(x, out_h, out_w, align_corners):
    """PyTorch F.interpolate(mode="bilinear") for NHWC arrays (float64)."""

    def coords(n_out, n_in):
        d = np.arange(n_out, dtype=np.float64)
        if align_corners:
            src = d * ((n_in - 1) / (n_out - 1)) if n_out > 1 else np.zeros_like(d)
        else:
            src = np.maximum((d + 0.5) * (n_in / n_out) - 0.5, 0.0)
        i0 = np.minimum(np.floor(src).astype(int), n_in - 1)
        i1 = np.minimum(i0 + 1, n_in - 1)
        return i0, i1, src - i0

    y0, y1, fy = coords(out_h, x.shape[1])
    x0, x1, fx = coords(out_w, x.shape[2])
    top = x[:, y0] * (1 - fy)[None, :, None, None] + x[:, y1] * fy[None, :, None, None]
    return top[:, :, x0] * (1 - fx)[None, None, :, None] + top[:, :, x1] * fx[None, None, :, None]


@pytest.mark.parametrize("align_corners", [False, True])
def test_resize_to_even_matches_pytorch(align_corners):
    x = RNG.normal(size=(1, 7, 9, 3)).astype("float32")
    y = keras.ops.convert_to_numpy(ResizeToEven(align_corners=align_corners)(x))
    assert y.shape == (1, 8, 10, 3)
    np.testing.assert_allclose(
        y, torch_bilinear(x.astype(np.float64), 8, 10, align_corners), atol=1e-5
    )
    even = RNG.normal(size=(1, 8, 10, 3)).astype("float32")
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(ResizeToEven(align_corners=align_corners)(even)), even, atol=1e-6
    )


def test_resize_like():
    x = RNG.normal(size=(1, 8, 10, 3)).astype("float32")
    ref = np.zeros((1, 7, 9, 1), "float32")
    y = keras.ops.convert_to_numpy(ResizeLike()([x, ref]))
    np.testing.assert_allclose(y, torch_bilinear(x.astype(np.float64), 7, 9, False), atol=1e-5)


def test_multi_head_attention_matches_reference():
    b, p, n, d, h = 1, 4, 6, 8, 4
    qkv = RNG.normal(size=(b, p, n, 3 * d)).astype("float32")
    got = keras.ops.convert_to_numpy(MultiHeadSelfAttention(h)(qkv))
    q, k, v = (qkv[..., i * d : (i + 1) * d].reshape(b, p, n, h, d // h) for i in range(3))
    q = q * (d // h) ** -0.5
    scores = np.einsum("bpnhe,bpmhe->bphnm", q, k)
    weights = np.exp(scores - scores.max(-1, keepdims=True))
    weights /= weights.sum(-1, keepdims=True)
    out = np.einsum("bphnm,bpmhe->bpnhe", weights, v).reshape(b, p, n, d)
    np.testing.assert_allclose(got, out, atol=1e-5)


def test_linear_attention_matches_reference():
    b, p, n, d = 2, 4, 5, 6
    qkv = RNG.normal(size=(b, p, n, 1 + 2 * d)).astype("float32")
    got = keras.ops.convert_to_numpy(LinearSelfAttention()(qkv))
    q, k, v = qkv[..., :1], qkv[..., 1 : 1 + d], qkv[..., 1 + d :]
    s = np.exp(q - q.max(2, keepdims=True))
    s /= s.sum(2, keepdims=True)
    ctx = (k * s).sum(2, keepdims=True)
    np.testing.assert_allclose(got, np.maximum(v, 0) * ctx, atol=1e-5)


@pytest.mark.parametrize("target", ["generic", "edgetpu"])
def test_patch_formulations_are_bit_identical(target):
    """The export formulations of Unfold / Fold move the same values (pure data movement)."""
    x = RNG.normal(size=(2, 6, 10, 5)).astype("float32")
    patches = Unfold(target=target)(x)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(patches), official_unfold(x))
    back = Fold(target=target)([patches, x])
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(back), x)


@pytest.mark.parametrize("target", ["generic", "edgetpu"])
def test_linear_attention_softmax_formulations_agree(target):
    qkv = RNG.normal(size=(2, 4, 9, 1 + 2 * 6)).astype("float32")
    ref = keras.ops.convert_to_numpy(LinearSelfAttention()(qkv))
    got = keras.ops.convert_to_numpy(LinearSelfAttention(target=target)(qkv))
    np.testing.assert_allclose(got, ref, rtol=1e-6, atol=1e-7)
    with pytest.raises(ValueError, match="target must be one of"):
        LinearSelfAttention(target="tpu")


@pytest.mark.parametrize("core", ["mhsa", "linear"])
def test_split_projection_formulation_equals_projection_then_core(core):
    """``dim`` set: the core owns ``qkv_proj`` as 1x1 convs (q scale / relu folded in)."""
    c, d = 5, 8
    x = RNG.normal(size=(1, 4, 6, c)).astype("float32")
    width = 3 * d if core == "mhsa" else 1 + 2 * d
    kernel = RNG.normal(size=(c, width)).astype("float32")
    bias = RNG.normal(size=(width,)).astype("float32")
    plain = MultiHeadSelfAttention(2) if core == "mhsa" else LinearSelfAttention()
    ref = keras.ops.convert_to_numpy(plain(x @ kernel + bias))
    split = MultiHeadSelfAttention(2, dim=d) if core == "mhsa" else LinearSelfAttention(dim=d)
    split.build(x.shape)
    q_width, q_scale = (d, (d // 2) ** -0.5) if core == "mhsa" else (1, 1.0)
    kernel, bias = kernel.copy(), bias.copy()
    kernel[:, :q_width] *= q_scale
    bias[:q_width] *= q_scale
    split.qkv.set_split_weights(kernel, bias)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(split(x)), ref, rtol=1e-5, atol=1e-5)


def test_quantized_twins_override_only_quantization_points():
    """With every quantizer as identity, a twin computes its float layer exactly."""
    x = RNG.normal(size=(2, 4, 6, 3 * 8)).astype("float32")
    twin = QuantMultiHeadSelfAttention(num_heads=2)
    twin.build(x.shape)
    twin.quantize_point = lambda name, t, training=None: t
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(twin(x)),
        keras.ops.convert_to_numpy(MultiHeadSelfAttention(2)(x)),
    )
    # build / build_quantizers: create the quantizers; quantize_point: apply them
    points = {"build", "build_quantizers", "quantize_point", "affine_constant"}
    for base, cls in [
        (MultiHeadSelfAttention, QuantMultiHeadSelfAttention),
        (LinearSelfAttention, QuantLinearSelfAttention),
        (NormalizationExport, QuantNormalization),
    ]:
        own = {k for k, v in vars(cls).items() if callable(v) and not k.startswith("__")}
        assert issubclass(cls, base) and own <= points, own - points


def test_attention_rejects_bad_widths():
    with pytest.raises(ValueError, match="num_heads"):
        MultiHeadSelfAttention(3)(np.zeros((1, 4, 2, 24), "float32"))
    with pytest.raises(ValueError, match="1 \\+ 2 \\* d"):
        LinearSelfAttention()(np.zeros((1, 4, 2, 8), "float32"))


# --------------------------------------------------------------------------------------
# BatchNorm: fused TF training kernel, PyTorch running statistics
# --------------------------------------------------------------------------------------
def test_batch_norm_trains_like_torch_batchnorm2d():
    """Training output / gradients equal Keras' BatchNormalization; the running
    variance is updated with the unbiased batch variance (torch.nn.BatchNorm2d)."""
    import tensorflow as tf

    from mvit3_keras.layers import BatchNorm

    rng = np.random.default_rng(0)
    x = tf.constant(rng.normal(1.0, 2.0, (8, 5, 6, 16)).astype(np.float32))
    ref = keras.layers.BatchNormalization(epsilon=1e-5, momentum=0.9)
    ours = BatchNorm(epsilon=1e-5, momentum=0.9)
    for layer in (ref, ours):
        layer.build(x.shape)
    ref.gamma.assign(rng.normal(1.0, 0.2, 16).astype(np.float32))
    ref.beta.assign(rng.normal(0.0, 0.2, 16).astype(np.float32))
    ours.set_weights(ref.get_weights())
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(x)
        y_ref, y_ours = ref(x, training=True), ours(x, training=True)
        loss_ref = tf.reduce_sum(y_ref * y_ref * 0.3 + y_ref)
        loss_ours = tf.reduce_sum(y_ours * y_ours * 0.3 + y_ours)
    np.testing.assert_allclose(y_ours, y_ref, atol=5e-6)
    np.testing.assert_allclose(tape.gradient(loss_ours, x), tape.gradient(loss_ref, x), atol=5e-6)
    g_ref, g_ours = tape.gradient(loss_ref, ref.gamma), tape.gradient(loss_ours, ours.gamma)
    np.testing.assert_allclose(g_ours, g_ref, rtol=1e-5, atol=1e-3)
    flat = x.numpy().reshape(-1, 16)
    n = flat.shape[0]
    np.testing.assert_allclose(ours.moving_mean, 0.1 * flat.mean(0), atol=1e-6)
    np.testing.assert_allclose(
        ours.moving_variance, 0.9 + 0.1 * flat.var(0) * n / (n - 1), rtol=1e-5
    )
    # Inference is Keras' own path on the moving statistics.
    mm, mv = ours.moving_mean.numpy(), ours.moving_variance.numpy()
    expected = (flat - mm) / np.sqrt(mv + 1e-5) * ours.gamma.numpy() + ours.beta.numpy()
    np.testing.assert_allclose(
        np.asarray(ours(x, training=False)).reshape(-1, 16), expected, atol=1e-5
    )


def test_batch_norm_falls_back_for_other_axes_and_mixed_precision():
    from mvit3_keras.layers import BatchNorm

    x = np.random.default_rng(1).normal(size=(4, 3, 3, 8)).astype(np.float32)
    bn = BatchNorm(axis=1)  # not the channels-last axis: Keras' unfused path
    y = bn(x, training=True)
    assert y.shape == x.shape
    half = BatchNorm(dtype="mixed_float16")
    y16 = half(x.astype(np.float16), training=True)
    assert y16.dtype == "float16"
    np.testing.assert_allclose(
        np.asarray(y16, np.float32).mean(axis=(0, 1, 2)), np.zeros(8), atol=2e-3
    )
    cfg = half.get_config()
    assert BatchNorm.from_config(cfg).get_config() == cfg
