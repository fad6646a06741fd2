"""SSDLite head of the official detector (``cvnets/models/detection/ssd.py``,
``cvnets/modules/ssd.py``; docs/semantics.md section 6).

* Feature maps: layer_4 (output stride 16), layer_5 (32), then
  ``extra_layers.os_64/128/256`` = separable convs (``dw_conv`` 3x3 stride 2
  DW + BN, ``pw_conv`` 1x1 + BN + ReLU) chained from layer_5, and
  ``extra_layers.os_-1`` = global average pool + 1x1 conv (no BN, no bias) +
  ReLU.
* ``ssd_heads.i``: a ``proj_layer`` (1x1 conv + BN + ReLU to the projection
  channels 512/256/256/128/128/64) when those differ from the map's channels
  and the head is 3x3; then ``loc_cls_layer`` = separable 3x3 conv (the pw
  conv has a bias and no BN / activation), or a plain 1x1 conv with bias for
  the global map. Output ``[B, H, W, A * (4 + classes)]`` viewed as
  ``[B, H*W*A, 4 + classes]`` (anchor-major within a location) and split into
  4 box locations and the class logits.
"""

from __future__ import annotations

import keras

from mvit3_keras.blocks import conv_layer
from mvit3_keras.segmentation.aspp import separable_conv

ACTIVATION = "relu"  # model.activation.name of the detection yamls
PROJ_CHANNELS = (512, 256, 256, 128, 128, 64)
NUM_COORDINATES = 4


def extra_layer(x, stride: int, out_channels: int):
    """``extra_layers.os_<stride>``."""
    name = f"extra_layers.os_{stride}"
    if stride == -1:
        x = keras.layers.GlobalAveragePooling2D(keepdims=True, name=f"{name}.0")(x)
        return conv_layer(x, out_channels, 1, f"{name}.1", use_norm=False, activation=ACTIVATION)
    return separable_conv(x, out_channels, 3, name, strides=2, activation=ACTIVATION)


def ssd_head(
    x, index: int, *, proj_channels: int, num_anchors: int, num_classes: int, kernel_size: int
):
    """``ssd_heads.<index>``: returns ``[B, H*W*A, 4 + num_classes]``."""
    name = f"ssd_heads.{index}"
    if proj_channels != -1 and proj_channels != x.shape[-1] and kernel_size > 1:
        x = conv_layer(x, proj_channels, 1, f"{name}.proj_layer", activation=ACTIVATION)
    width = NUM_COORDINATES + num_classes
    out_channels = num_anchors * width
    if kernel_size == 1:
        x = conv_layer(
            x,
            out_channels,
            1,
            f"{name}.loc_cls_layer",
            use_norm=False,
            activation=None,
            use_bias=True,
        )
    else:
        x = separable_conv(
            x,
            out_channels,
            kernel_size,
            f"{name}.loc_cls_layer",
            use_norm=False,
            activation=None,
            use_bias=True,
        )
    return keras.layers.Reshape((-1, width), name=f"{name}.reshape")(x)


@keras.saving.register_keras_serializable(package="mvit3_keras")
class SliceLastAxis(keras.layers.Layer):
    """``x[..., start:stop]`` (the official ``torch.split`` into locations / logits)."""

    def __init__(self, start: int, stop=None, **kwargs):
        super().__init__(**kwargs)
        self.start = int(start)
        self.stop = None if stop is None else int(stop)

    def call(self, x):
        return x[..., self.start : self.stop]

    def compute_output_shape(self, input_shape):
        width = input_shape[-1]
        stop = width if self.stop is None else self.stop
        return (*input_shape[:-1], None if width is None else stop - self.start)

    def get_config(self):
        config = super().get_config()
        config.update(start=self.start, stop=self.stop)
        return config
