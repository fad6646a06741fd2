"""Unfold / fold between feature maps and patch sequences (MobileViT, 2x2 patches).

Official order (NOTES.md section 2, ``MobileViTBlock.unfolding`` and, for the
v2 family, ``F.unfold``): one sequence per intra-patch pixel ``p = py * 2 + px``;
the tokens of a sequence are the ``N = (H/2) * (W/2)`` patches in row-major
order. Here a map ``[B, H, W, C]`` becomes ``[B, P, N, C]`` (P = 4), which is
also the v2 family's ``[B, C, P, N]`` tensor in channels-last order.

Only reshapes and transposes of rank <= 4 are used, so the graph maps to
TFLite (and the Edge TPU compiler, which rejects higher-rank TRANSPOSE ops).
"""

from __future__ import annotations

import keras
from keras import ops


def _dim(x, axis):
    static = x.shape[axis]
    return static if static is not None else ops.shape(x)[axis]


@keras.saving.register_keras_serializable(package="mvit3_keras")
class Unfold(keras.layers.Layer):
    """``[B, H, W, C]`` -> ``[B, P, N, C]`` with P = patch_size**2 (H, W even)."""

    def __init__(self, patch_size: int = 2, **kwargs):
        super().__init__(**kwargs)
        if patch_size != 2:
            raise ValueError("MobileViT uses 2x2 patches; patch_size must be 2")
        self.patch_size = patch_size

    def call(self, x):
        h, w, c = _dim(x, 1), _dim(x, 2), _dim(x, 3)
        nh, nw = h // 2, w // 2
        # [B, nh, py, (ix, px, c)] -> [B, py, nh, (ix, px, c)]
        x = ops.reshape(x, (-1, nh, 2, w * c))
        x = ops.transpose(x, (0, 2, 1, 3))
        # [(B, py), N, px, c] -> [(B, py), px, N, c] -> [B, P, N, C]
        x = ops.reshape(x, (-1, nh * nw, 2, c))
        x = ops.transpose(x, (0, 2, 1, 3))
        return ops.reshape(x, (-1, 4, nh * nw, c))

    def compute_output_shape(self, input_shape):
        b, h, w, c = input_shape
        n = None if h is None or w is None else (h // 2) * (w // 2)
        return (b, 4, n, c)

    def get_config(self):
        config = super().get_config()
        config["patch_size"] = self.patch_size
        return config


@keras.saving.register_keras_serializable(package="mvit3_keras")
class Fold(keras.layers.Layer):
    """Inverse of :class:`Unfold`; ``call([patches, reference])``.

    The spatial size is taken from ``reference`` (the map that was unfolded),
    so the layer works for static and dynamic input sizes alike.
    """

    def __init__(self, patch_size: int = 2, **kwargs):
        super().__init__(**kwargs)
        if patch_size != 2:
            raise ValueError("MobileViT uses 2x2 patches; patch_size must be 2")
        self.patch_size = patch_size

    def call(self, inputs):
        x, reference = inputs
        h, w = _dim(reference, 1), _dim(reference, 2)
        c = _dim(x, 3)
        nh, nw = h // 2, w // 2
        x = ops.reshape(x, (-1, 2, nh * nw, c))  # [(B, py), px, N, c]
        x = ops.transpose(x, (0, 2, 1, 3))  # [(B, py), N, px, c]
        x = ops.reshape(x, (-1, 2, nh, nw * 2 * c))  # [B, py, iy, (ix, px, c)]
        x = ops.transpose(x, (0, 2, 1, 3))  # [B, iy, py, (ix, px, c)]
        return ops.reshape(x, (-1, h, w, c))

    def compute_output_shape(self, input_shapes):
        patches, reference = input_shapes
        return (patches[0], reference[1], reference[2], patches[3])

    def get_config(self):
        config = super().get_config()
        config["patch_size"] = self.patch_size
        return config
