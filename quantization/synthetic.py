"""Real images and realistic random weights for checks that must not download anything.

* :func:`photo_crops`: random crops / flips of scikit-learn's two sample photos
  (real RGB images that ship with the package), resized to ``size``.
* :func:`recalibrate_batchnorm`: gives a freshly initialised model the kind of
  BatchNorm statistics a trained one has. With Keras' default initialisation
  (moving mean 0, variance 1) activations shrink by orders of magnitude over
  the depth of these networks, which no trained model does; setting every
  BN's moving statistics to its batch statistics on real images (and drawing
  gamma / beta like trained values) keeps every layer's output at unit scale,
  so int8-vs-float comparisons on random weights are meaningful. (The official
  reference checkpoints in /work/shared/reference have such statistics too.)
"""

from __future__ import annotations

import numpy as np


def photo_crops(num: int, size: int, *, seed: int = 0) -> np.ndarray:
    """``num`` float32 crops ``[num, size, size, 3]`` in [0, 1] of the sample photos."""
    import tensorflow as tf
    from sklearn.datasets import load_sample_images

    photos = [np.asarray(p, dtype=np.float32) / 255.0 for p in load_sample_images().images]
    rng = np.random.default_rng(seed)
    out = []
    for i in range(num):
        photo = photos[i % len(photos)]
        h, w = photo.shape[:2]
        side = int(rng.integers(min(h, w) // 3, min(h, w) + 1))
        top = int(rng.integers(0, h - side + 1))
        left = int(rng.integers(0, w - side + 1))
        crop = tf.image.resize(photo[top : top + side, left : left + side], (size, size)).numpy()
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
        out.append(crop)
    return np.clip(np.stack(out), 0.0, 1.0).astype(np.float32)


def recalibrate_batchnorm(model, images: np.ndarray, *, seed: int = 0):
    """Give a freshly initialised model trained-looking parameters: every
    BatchNorm / LayerNorm / GroupNorm gets gamma ~ N(1, 0.1) and beta ~ N(0, 0.1),
    every convolution / dense layer with a bias a bias ~ N(0, 0.05) (the spread
    of the official reference checkpoints), and every BatchNorm's moving
    statistics become its batch statistics on ``images`` (one forward pass)."""
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
