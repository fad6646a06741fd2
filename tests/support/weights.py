"""Realistic random weights for checks that must not download anything.

* :func:`official_like_weights`: weights of the same character as the official
  reference checkpoints, for ANY registered variant, bit-reproducibly:

  1. every convolution / linear layer drawn the way the official code initialises
     it (:func:`official_init`), then randomised like the reference checkpoints
     (weight += 0.1 std(weight) N(0, 1), bias += 0.02 N(0, 1), norm gamma / beta
     += 0.1 N(0, 1); ``docs/semantics.md`` section 7);
  2. every BatchNorm's running statistics measured in ONE forward pass with only
     the BatchNorms in training mode (dropout off), as the reference checkpoints
     were calibrated (:func:`calibrate_batchnorm`), on real photo crops with
     U(-0.5, 0.5) pixel noise (:func:`batchnorm_calibration_batch`), then
     perturbed with gamma / beta compensated, as there
     (:func:`perturb_batchnorm_statistics`);
  3. every value rounded to float16 precision, as in the reference files.

  Each weight's random stream is seeded by ``(seed, variant name, weight path)``
  (CRC32, not Python's salted ``hash``), so the weights do not depend on global
  RNG state, on the order models are built in or on the test worker.
* :func:`recalibrate_batchnorm`: the older recipe (Keras' default initialisers,
  gamma ~ N(1, 0.1), beta ~ N(0, 0.1), BatchNorm statistics from one
  training-mode pass). Kept for the export / QAT unit tests that use it; it is
  much further from the official checkpoints (Keras' Glorot transformer
  projections are ~4x the official N(0, 0.02)) and its int8 cosine is not a
  quality measure.

Why noisy photos for the BatchNorm statistics: the reference statistics were
measured on U(0, 1) noise over a smooth pattern, so on real photos the official
BatchNorms see activations of ~0.57 of their calibration std (median over the
BatchNorms of the four reference files at 256x256). Statistics measured on the
clean photos make every BatchNorm exactly unit-variance on photos, a regime the
official checkpoints never run in and in which random networks amplify int8
errors far more: int8 cosine 0.947 (MobileViTv3-XXS) and 0.901 (MobileViTv1-XXS)
at 256x256 against 0.995 / 0.997 for the official checkpoints. With the noise
the activations on photos are 0.63-0.85 of unit std and the cosines 0.999 /
0.996, i.e. the official values.

What the official code draws (measured on the reference parity files; std x
sqrt(fan) is constant to +-5% over every layer of each file):

================  ====================================  ===================================
layer             v1 tree (MobileViTv1, v3-XXS/XS/S)    v2 tree (MobileViTv2, v3-0.5..2.0)
================  ====================================  ===================================
conv / depthwise  kaiming_normal, fan_out:              PyTorch default: U(+-1/sqrt(fan_in))
                  N(0, sqrt(2 / (C_out k k)))           (std x sqrt(fan_in) = 0.58)
conv bias         (none)                                U(+-1/sqrt(fan_in)) (attention convs)
linear            N(0, 0.02), bias 0 (transformer       classifier: xavier_uniform, bias 0
                  and classifier)                       (std 0.040 for 256 -> 1000)
norms             gamma 1, beta 0                       gamma 1, beta 0
================  ====================================  ===================================

The result, per layer kind, is within 10 % of the reference files (median RMS
ratio of kernels, biases, gamma, beta, running mean and variance) for the four
variants that have one.
"""

from __future__ import annotations

import zlib

import numpy as np

from mvit3_keras.compat import nested_layers, op_determinism


def weight_rng(seed: int, *parts: str) -> np.random.Generator:
    """A generator seeded by ``seed`` and the CRC32 of each string (stable across
    processes, unlike ``hash``)."""
    return np.random.default_rng([int(seed)] + [zlib.crc32(p.encode()) for p in parts])


def round_to_float16_precision(x: np.ndarray) -> np.ndarray:
    """``x`` (float32) with its mantissa rounded to float16's 10 bits, keeping the
    float32 exponent range (tiny BatchNorm variances stay exact in magnitude)."""
    bits = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    rounded = (bits + np.uint32(0x1000)) & np.uint32(0xFFFFE000)
    return rounded.view(np.float32)


def _layer_init(layer, family: str, rng: np.random.Generator) -> dict:
    """Official initial values of one layer's kernel / bias / gamma / beta (see the
    module docstring); ``{}`` for layers without such weights."""
    import keras

    norms = (
        keras.layers.BatchNormalization,
        keras.layers.LayerNormalization,
        keras.layers.GroupNormalization,
    )
    values = {}
    if isinstance(layer, norms):
        if getattr(layer, "scale", False):
            values["gamma"] = np.ones(layer.gamma.shape)
        if getattr(layer, "center", False):
            values["beta"] = np.zeros(layer.beta.shape)
        return values
    kernel = getattr(layer, "kernel", None)
    kinds = (keras.layers.Conv2D, keras.layers.DepthwiseConv2D, keras.layers.Dense)
    if kernel is None or not isinstance(layer, kinds):
        return values
    shape = tuple(kernel.shape)
    if isinstance(layer, keras.layers.Dense):
        fan_in, fan_out = shape
        if family == "v1":
            values["kernel"] = rng.normal(0.0, 0.02, shape)
        else:
            bound = np.sqrt(6.0 / (fan_in + fan_out))
            values["kernel"] = rng.uniform(-bound, bound, shape)
        bias_bound = 0.0
    else:
        depthwise = isinstance(layer, keras.layers.DepthwiseConv2D)
        kh, kw = shape[:2]
        fan_in = kh * kw * (1 if depthwise else shape[2])
        fan_out = kh * kw * (shape[2] * shape[3] if depthwise else shape[3])
        if family == "v1":
            values["kernel"] = rng.normal(0.0, np.sqrt(2.0 / fan_out), shape)
        else:
            values["kernel"] = rng.uniform(-1.0, 1.0, shape) / np.sqrt(fan_in)
        bias_bound = 0.0 if family == "v1" else 1.0 / np.sqrt(fan_in)
    bias = getattr(layer, "bias", None)
    if getattr(layer, "use_bias", False) and bias is not None:
        values["bias"] = rng.uniform(-bias_bound, bias_bound, tuple(bias.shape))
    return values


def official_init(model, family: str, *, seed: int = 0, name: str = ""):
    """Draw every kernel / bias / norm parameter of ``model`` as the official code
    initialises it, then randomise them as the reference checkpoints were
    (``docs/semantics.md`` section 7: weight += 0.1 std(weight) N(0, 1), bias += 0.02 N(0, 1),
    gamma and beta += 0.1 N(0, 1)). ``family``: ``"v1"`` or ``"v2"`` (the code tree,
    :attr:`mvit3_keras.specs.ModelSpec.family`). BatchNorm statistics are left for
    :func:`calibrate_batchnorm`."""
    from mvit3_keras.graph_clone import iter_layers

    if family not in ("v1", "v2"):
        raise ValueError(f"family must be 'v1' or 'v2', got {family!r}")
    for layer in iter_layers(model):
        rng = weight_rng(seed, name, layer.name)
        for attr, value in _layer_init(layer, family, rng).items():
            if attr == "kernel":
                value = value + 0.1 * value.std() * rng.standard_normal(value.shape)
            elif attr in ("gamma", "beta"):
                value = value + 0.1 * rng.standard_normal(value.shape)
            else:
                value = value + 0.02 * rng.standard_normal(value.shape)
            getattr(layer, attr).assign(value.astype("float32"))
    return model


def _sublayers(model):
    return nested_layers(model, include_self=False)


def calibrate_batchnorm(model, images: np.ndarray):
    """Set every BatchNorm's moving statistics to its batch statistics on
    ``images`` in ONE forward pass with only the BatchNorms in training mode (all
    dropout rates are 0 during the pass), like the reference checkpoints
    (``momentum=None``, one batch). Runs with TF op determinism."""
    import keras

    bns = [la for la in _sublayers(model) if isinstance(la, keras.layers.BatchNormalization)]
    drops = [la for la in _sublayers(model) if isinstance(la, keras.layers.Dropout)]
    saved = [bn.momentum for bn in bns], [d.rate for d in drops]
    for bn in bns:
        bn.momentum = 0.0
    for d in drops:
        d.rate = 0.0
    try:
        with op_determinism():
            model(np.asarray(images, np.float32), training=True)
    finally:
        for bn, momentum in zip(bns, saved[0]):
            bn.momentum = momentum
        for d, rate in zip(drops, saved[1]):
            d.rate = rate
    return model


def perturb_batchnorm_statistics(model, *, seed: int = 0, name: str = ""):
    """The reference checkpoints' last step (``docs/semantics.md`` section 7): ``running_var *=
    U(0.5, 1.5)``, ``running_mean += 0.1 N(0, 1) std``, with gamma / beta
    compensated so that every BatchNorm computes the same function as before."""
    import keras

    for bn in _sublayers(model):
        if not (isinstance(bn, keras.layers.BatchNormalization) and bn.scale and bn.center):
            continue
        rng = weight_rng(seed, name, bn.name, "statistics")
        mean, var = bn.moving_mean.numpy(), bn.moving_variance.numpy()
        gamma, beta = bn.gamma.numpy(), bn.beta.numpy()
        new_var = var * rng.uniform(0.5, 1.5, var.shape)
        new_mean = mean + 0.1 * rng.standard_normal(mean.shape) * np.sqrt(var)
        new_gamma = gamma * np.sqrt((new_var + bn.epsilon) / (var + bn.epsilon))
        new_beta = beta + gamma * (new_mean - mean) / np.sqrt(var + bn.epsilon)
        for weight, value in zip(
            (bn.moving_mean, bn.moving_variance, bn.gamma, bn.beta),
            (new_mean, new_var, new_gamma, new_beta),
        ):
            weight.assign(value.astype("float32"))
    return model


def batchnorm_calibration_batch(images: np.ndarray, *, seed: int = 0) -> np.ndarray:
    """``images`` + U(-0.5, 0.5) pixel noise, clipped to [0, 1]: the kind of batch
    the reference checkpoints' BatchNorm statistics were measured on (U(0, 1)
    noise over a smooth pattern, ``docs/semantics.md`` section 7), with real photos as the pattern."""
    images = np.asarray(images, np.float32)
    noise = weight_rng(seed, "batchnorm calibration").random(images.shape, dtype=np.float32)
    return np.clip(images + noise - 0.5, 0.0, 1.0)


def official_like_weights(model, images: np.ndarray, *, family: str, name: str, seed: int = 0):
    """:func:`official_init`, :func:`calibrate_batchnorm` on
    :func:`batchnorm_calibration_batch` of ``images`` (real photos),
    :func:`perturb_batchnorm_statistics`, every weight rounded to float16
    precision (module docstring). Bit-reproducible: the same ``(name, seed,
    images)`` give the same weights in every process."""
    official_init(model, family, seed=seed, name=name)
    calibrate_batchnorm(model, batchnorm_calibration_batch(images, seed=seed))
    perturb_batchnorm_statistics(model, seed=seed, name=name)
    for weight in model.weights:
        if np.dtype(weight.dtype) == np.float32:
            weight.assign(round_to_float16_precision(weight.numpy()))
    return model


def weights_digest(model) -> str:
    """CRC32 (hex) of all weights in order: equal digests = bit-identical weights."""
    crc = 0
    for weight in model.weights:
        crc = zlib.crc32(np.ascontiguousarray(weight.numpy()).tobytes(), crc)
    return f"{crc:08x}"


def recalibrate_batchnorm(model, images: np.ndarray, *, seed: int = 0):
    """Older recipe on Keras' default initialisation: every BatchNorm / LayerNorm /
    GroupNorm gets gamma ~ N(1, 0.1) and beta ~ N(0, 0.1), every convolution /
    dense layer with a bias a bias ~ N(0, 0.05), and every BatchNorm's moving
    statistics become its batch statistics on ``images`` (one forward pass in
    training mode, dropout included). See :func:`official_like_weights` for
    weights like the official checkpoints."""
    import keras

    from mvit3_keras.graph_clone import iter_layers

    rng = np.random.default_rng(seed)
    norms = (
        keras.layers.BatchNormalization,
        keras.layers.LayerNormalization,
        keras.layers.GroupNormalization,
    )
    bns, saved = [], []
    for layer in iter_layers(model):
        if isinstance(layer, norms):
            if getattr(layer, "scale", False):
                layer.gamma.assign(rng.normal(1.0, 0.1, layer.gamma.shape).astype("float32"))
            if getattr(layer, "center", False):
                layer.beta.assign(rng.normal(0.0, 0.1, layer.beta.shape).astype("float32"))
            if isinstance(layer, keras.layers.BatchNormalization):
                bns.append(layer)
                saved.append(layer.momentum)
                layer.momentum = 0.0
        elif getattr(layer, "use_bias", False) and getattr(layer, "bias", None) is not None:
            layer.bias.assign(rng.normal(0.0, 0.05, layer.bias.shape).astype("float32"))
    try:
        model(images, training=True)
    finally:
        for bn, momentum in zip(bns, saved):
            bn.momentum = momentum
    return model
