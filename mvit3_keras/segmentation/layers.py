"""Weight-free layers of the dense-prediction heads.

* :class:`AdaptiveAveragePooling2D`: ``torch.nn.AdaptiveAvgPool2d`` with
  PyTorch's bins (``start = floor(i * H / s)``, ``end = ceil((i + 1) * H / s)``;
  neighbouring bins overlap when ``H`` is not a multiple of ``s``), as the
  PSPNet pyramid of the official code uses it (docs/semantics.md, section 5).
* :class:`ScaleResize`: ``UpSample(scale_factor=k, mode="bilinear")`` of the
  official segmentation heads (output ``k * H x k * W``) with either
  align_corners rule.
* :class:`ArgmaxMask`: per-pixel class index (``int32``) for export.

All of them lower to builtin TFLite ops (AVERAGE_POOL_2D / MEAN /
STRIDED_SLICE / CONCATENATION, RESIZE_BILINEAR, ARG_MAX) at static shapes.
"""

from __future__ import annotations

import keras
import tensorflow as tf
from keras import ops

from mvit3_keras.layers import bilinear_resize
from mvit3_keras.layers.patches import axis_size


def adaptive_pool_bins(in_size: int, out_size: int) -> list:
    """PyTorch's ``AdaptiveAvgPool`` bins ``[(start, end), ...]`` along one axis."""
    if in_size < 1 or out_size < 1:
        raise ValueError(f"adaptive pooling needs positive sizes, got {in_size} -> {out_size}")
    return [
        ((i * in_size) // out_size, -((-(i + 1) * in_size) // out_size)) for i in range(out_size)
    ]


def _static_int(value):
    return value if isinstance(value, int) else None


@keras.saving.register_keras_serializable(package="mvit3_keras")
class AdaptiveAveragePooling2D(keras.layers.Layer):
    """``torch.nn.AdaptiveAvgPool2d(output_size)`` on channels-last maps.

    Static spatial size: a single ``AveragePooling2D`` when the size is a
    multiple of ``output_size`` (equal, non-overlapping bins), else the exact
    PyTorch bins as static slices + means (separable: rows, then columns).
    Dynamic size: the same bins as a (H x s) averaging matrix.
    """

    def __init__(self, output_size, **kwargs):
        super().__init__(**kwargs)
        if isinstance(output_size, int):
            output_size = (output_size, output_size)
        self.output_size = tuple(int(s) for s in output_size)
        if len(self.output_size) != 2 or min(self.output_size) < 1:
            raise ValueError(f"output_size must be a positive int or (h, w), got {output_size!r}")

    def _pool_axis_static(self, x, axis, in_size, out_size):
        if out_size == 1:
            return ops.mean(x, axis=axis, keepdims=True)
        parts = []
        for start, end in adaptive_pool_bins(in_size, out_size):
            index = [slice(None)] * 4
            index[axis] = slice(start, end)
            parts.append(ops.mean(x[tuple(index)], axis=axis, keepdims=True))
        return ops.concatenate(parts, axis=axis)

    @staticmethod
    def _pool_matrix(in_size, out_size, dtype):
        # [out, in]: row i averages PyTorch bin i.
        i = ops.cast(ops.arange(out_size), "int32")[:, None]
        pos = ops.cast(ops.arange(in_size), "int32")[None, :]
        in_size = ops.cast(in_size, "int32")
        start = (i * in_size) // out_size
        end = -((-(i + 1) * in_size) // out_size)
        inside = ops.cast(ops.logical_and(pos >= start, pos < end), dtype)
        return inside / ops.sum(inside, axis=1, keepdims=True)

    def call(self, x):
        h, w = _static_int(x.shape[1]), _static_int(x.shape[2])
        oh, ow = self.output_size
        if h is not None and w is not None:
            if h % oh == 0 and w % ow == 0:
                if oh == 1 and ow == 1:
                    return ops.mean(x, axis=(1, 2), keepdims=True)
                return ops.average_pool(
                    x, pool_size=(h // oh, w // ow), strides=(h // oh, w // ow), padding="valid"
                )
            x = self._pool_axis_static(x, 1, h, oh)
            return self._pool_axis_static(x, 2, w, ow)
        ph = self._pool_matrix(axis_size(x, 1), oh, x.dtype)
        pw = self._pool_matrix(axis_size(x, 2), ow, x.dtype)
        x = ops.einsum("ih,bhwc->biwc", ph, x)
        return ops.einsum("jw,biwc->bijc", pw, x)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], *self.output_size, input_shape[3])

    def get_config(self):
        config = super().get_config()
        config["output_size"] = list(self.output_size)
        return config


@keras.saving.register_keras_serializable(package="mvit3_keras")
class ScaleResize(keras.layers.Layer):
    """Bilinear upsampling by an integer ``factor`` (``k*H x k*W``).

    ``align_corners=False`` equals PyTorch ``UpSample(scale_factor=k)`` (the
    coordinate scale is ``1/k`` either way since the output is exactly
    ``k`` times the input); ``align_corners=True`` is the v2 family's rule.
    """

    def __init__(self, factor: int, align_corners: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.factor = int(factor)
        self.align_corners = bool(align_corners)
        if self.factor < 1:
            raise ValueError(f"factor must be a positive int, got {factor!r}")

    def call(self, x):
        if self.factor == 1:
            return x
        size = (axis_size(x, 1) * self.factor, axis_size(x, 2) * self.factor)
        return ops.cast(bilinear_resize(x, size, self.align_corners), x.dtype)

    def compute_output_shape(self, input_shape):
        b, h, w, c = input_shape
        scale = self.factor
        return (b, None if h is None else h * scale, None if w is None else w * scale, c)

    def get_config(self):
        config = super().get_config()
        config.update(factor=self.factor, align_corners=self.align_corners)
        return config


@keras.saving.register_keras_serializable(package="mvit3_keras")
class ArgmaxMask(keras.layers.Layer):
    """Per-pixel class index ``[B, H, W]`` (int32) of ``[B, H, W, classes]`` logits."""

    def call(self, logits):
        # tf.argmax, not keras.ops.argmax: the latter adds a -0.0 fix-up
        # (BitwiseAnd) that TFLite has no builtin for.
        return tf.argmax(logits, axis=-1, output_type=tf.int32)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1])

    def compute_output_spec(self, logits):
        return keras.KerasTensor(logits.shape[:-1], dtype="int32")
