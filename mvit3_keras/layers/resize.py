"""Bilinear resizes with PyTorch's two conventions.

* ``align_corners=False`` (half-pixel centres, no antialias): what the v1
  family's MobileViT block uses for odd feature maps (``MobileViTBlock.unfolding``
  in ``cvnets/modules/mobilevit_block.py``); identical to
  ``tf.image.resize(..., "bilinear", antialias=False)``.
* ``align_corners=True`` (``src = dst * (in - 1) / (out - 1)``): the v2 family
  block input resize (``MobileViTBlockv2.resize_input_if_needed``) and the v2
  segmentation upsampling (``cvnets/models/segmentation/heads/deeplabv3.py``).
  Keras 3 has no such op, so the TF backend's ``ResizeBilinear`` with
  ``align_corners=True`` is used; it converts to one TFLite RESIZE_BILINEAR.
"""

from __future__ import annotations

import keras
import tensorflow as tf
from keras import ops

from mvit3_keras.layers.patches import axis_size


def bilinear_resize(x, size, align_corners: bool):
    if align_corners:
        return tf.compat.v1.image.resize_bilinear(
            x, size, align_corners=True, half_pixel_centers=False
        )
    if all(isinstance(s, int) for s in size):
        return ops.image.resize(x, size, interpolation="bilinear", antialias=False)
    return tf.image.resize(x, size, method="bilinear", antialias=False)


def _even(size):
    return ((size + 1) // 2) * 2


@keras.saving.register_keras_serializable(package="mvit3_keras")
class ResizeToEven(keras.layers.Layer):
    """Bilinear resize to ``(ceil(H/2)*2, ceil(W/2)*2)`` (identity for even maps)."""

    def __init__(self, align_corners: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.align_corners = bool(align_corners)

    def call(self, x):
        size = (_even(axis_size(x, 1)), _even(axis_size(x, 2)))
        y = bilinear_resize(x, size, self.align_corners)
        return ops.cast(y, x.dtype)

    def compute_output_shape(self, input_shape):
        b, h, w, c = input_shape
        return (b, None if h is None else _even(h), None if w is None else _even(w), c)

    def get_config(self):
        config = super().get_config()
        config["align_corners"] = self.align_corners
        return config


@keras.saving.register_keras_serializable(package="mvit3_keras")
class ResizeLike(keras.layers.Layer):
    """``call([x, reference])``: bilinear resize of ``x`` to ``reference``'s H, W."""

    def __init__(self, align_corners: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.align_corners = bool(align_corners)

    def call(self, inputs):
        x, reference = inputs
        size = (axis_size(reference, 1), axis_size(reference, 2))
        return ops.cast(bilinear_resize(x, size, self.align_corners), x.dtype)

    def compute_output_shape(self, input_shapes):
        x, reference = input_shapes
        return (x[0], reference[1], reference[2], x[3])

    def get_config(self):
        config = super().get_config()
        config["align_corners"] = self.align_corners
        return config
