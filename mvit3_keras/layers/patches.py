"""Unfold / fold between feature maps and patch sequences (MobileViT, 2x2 patches).

Official order (``MobileViTBlock.unfolding`` / ``folding`` in
``cvnets/modules/mobilevit_block.py`` and, for the v2 family, ``F.unfold`` in
``MobileViTBlockv2.unfolding_pytorch``): one sequence per intra-patch pixel
``p = py * 2 + px``; the tokens of a sequence are the ``N = (H/2) * (W/2)``
patches in row-major order. Here a map ``[B, H, W, C]`` becomes ``[B, P, N, C]``
(P = 4), which is also the v2 family's ``[B, C, P, N]`` tensor in channels-last
order.

One layer per direction, with the formulation as a switch (``target``):

* ``None`` (the model): reshapes and transposes of rank <= 4, static or dynamic
  spatial size;
* ``"generic"`` / ``"edgetpu"`` (the export formulation, static spatial size):
  ``SPACE_TO_DEPTH`` / ``DEPTH_TO_SPACE`` (generic), or for the Edge TPU slices +
  concatenations for the fold (no ``DEPTH_TO_SPACE`` on the Edge TPU, and the
  rank-4 ``[2, N, 2, C]`` intermediate of the reshape formulation has four
  non-unit dimensions, which the Edge TPU does not allow). Pure data movement:
  every formulation is bit-identical.
"""

from __future__ import annotations

import keras
import tensorflow as tf
from keras import ops

EXPORT_TARGETS = ("generic", "edgetpu")


def check_target(target, allow_none: bool = False):
    """``target`` if it names an export formulation (or is ``None`` when allowed)."""
    if target is None and allow_none:
        return None
    if target not in EXPORT_TARGETS:
        valid = EXPORT_TARGETS + ((None,) if allow_none else ())
        raise ValueError(f"target must be one of {valid}, got {target!r}")
    return target


def axis_size(x, axis):
    """Static size of ``x`` along ``axis`` when known, else the dynamic one."""
    static = x.shape[axis]
    return static if static is not None else ops.shape(x)[axis]


def static_hw(x, reference=None):
    """Static ``(H, W)`` of ``reference`` (default ``x``); raises if dynamic."""
    ref = x if reference is None else reference
    h, w = ref.shape[1], ref.shape[2]
    if h is None or w is None:
        raise ValueError(
            "the export formulation needs a static spatial size; export with a fixed "
            "input_shape (export_tflite(..., input_shape=(H, W, 3)))"
        )
    return int(h), int(w)


class _PatchLayer(keras.layers.Layer):
    """Config shared by :class:`Unfold` and :class:`Fold`: ``patch_size`` and ``target``."""

    def __init__(self, patch_size: int = 2, target=None, **kwargs):
        super().__init__(**kwargs)
        if patch_size != 2:
            raise ValueError("MobileViT uses 2x2 patches; patch_size must be 2")
        self.patch_size = patch_size
        self.target = check_target(target, allow_none=True)

    def get_config(self):
        config = super().get_config()
        config.update(patch_size=self.patch_size, target=self.target)
        return config


@keras.saving.register_keras_serializable(package="mvit3_keras")
class Unfold(_PatchLayer):
    """``[B, H, W, C]`` -> ``[B, P, N, C]`` with P = patch_size**2 (H, W even)."""

    def call(self, x):
        if self.target is not None:
            return self._space_to_depth_unfold(x)
        h, w, c = axis_size(x, 1), axis_size(x, 2), axis_size(x, 3)
        nh, nw = h // 2, w // 2
        # [B, nh, py, (ix, px, c)] -> [B, py, nh, (ix, px, c)]
        x = ops.reshape(x, (-1, nh, 2, w * c))
        x = ops.transpose(x, (0, 2, 1, 3))
        # [(B, py), N, px, c] -> [(B, py), px, N, c] -> [B, P, N, C]
        x = ops.reshape(x, (-1, nh * nw, 2, c))
        x = ops.transpose(x, (0, 2, 1, 3))
        return ops.reshape(x, (-1, 4, nh * nw, c))

    @staticmethod
    def _space_to_depth_unfold(x):
        """``SPACE_TO_DEPTH(2)`` puts pixel ``(py, px)`` of every 2x2 patch at channel
        block ``py * 2 + px``: ``[B, H/2, W/2, 4C]`` -> reshape ``[B, N, 4, C]`` ->
        transpose ``[B, 4, N, C]``. TFLite int8, XNNPACK and the Edge TPU run it as is."""
        h, w = static_hw(x)
        c = x.shape[-1]
        y = tf.nn.space_to_depth(x, 2)
        y = ops.reshape(y, (-1, (h // 2) * (w // 2), 4, c))
        return ops.transpose(y, (0, 2, 1, 3))

    def compute_output_shape(self, input_shape):
        b, h, w, c = input_shape
        n = None if h is None or w is None else (h // 2) * (w // 2)
        return (b, 4, n, c)


@keras.saving.register_keras_serializable(package="mvit3_keras")
class Fold(_PatchLayer):
    """Inverse of :class:`Unfold`; ``call([patches, reference])``.

    The spatial size is taken from ``reference`` (the map that was unfolded),
    so the layer works for static and dynamic input sizes alike.
    """

    def call(self, inputs):
        x, reference = inputs
        if self.target == "generic":
            return self._depth_to_space_fold(x, reference)
        if self.target == "edgetpu":
            return self._concatenation_fold(x, reference)
        h, w = axis_size(reference, 1), axis_size(reference, 2)
        c = axis_size(x, 3)
        nh, nw = h // 2, w // 2
        x = ops.reshape(x, (-1, 2, nh * nw, c))  # [(B, py), px, N, c]
        x = ops.transpose(x, (0, 2, 1, 3))  # [(B, py), N, px, c]
        x = ops.reshape(x, (-1, 2, nh, nw * 2 * c))  # [B, py, iy, (ix, px, c)]
        x = ops.transpose(x, (0, 2, 1, 3))  # [B, iy, py, (ix, px, c)]
        return ops.reshape(x, (-1, h, w, c))

    @staticmethod
    def _depth_to_space_fold(x, reference):
        """Transpose ``[B, N, 4, C]`` -> reshape ``[B, H/2, W/2, 4C]`` -> ``DEPTH_TO_SPACE(2)``."""
        h, w = static_hw(x, reference)
        y = ops.transpose(x, (0, 2, 1, 3))  # [B, N, 4, C]
        y = ops.reshape(y, (-1, h // 2, w // 2, 4 * x.shape[-1]))
        return tf.nn.depth_to_space(y, 2)

    @staticmethod
    def _concatenation_fold(x, reference):
        """The four ``[B, H/2, W/2, C]`` sub-images interleaved by concatenation +
        reshape (``px`` along the channels, then ``py`` along the width)."""
        h, w = static_hw(x, reference)
        c = x.shape[-1]
        nh, nw = h // 2, w // 2
        maps = [ops.reshape(x[:, p : p + 1], (-1, nh, nw, c)) for p in range(4)]
        rows = []
        for py in range(2):
            pair = ops.concatenate([maps[2 * py], maps[2 * py + 1]], axis=-1)  # [.., nw, 2C]
            rows.append(ops.reshape(pair, (-1, nh, 2 * nw, c)))  # col = ix * 2 + px
        y = ops.concatenate(rows, axis=2)  # [B, nh, (py, 2nw), C]
        return ops.reshape(y, (-1, h, w, c))  # row = iy * 2 + py

    def compute_output_shape(self, input_shapes):
        patches, reference = input_shapes
        return (patches[0], reference[1], reference[2], patches[3])
