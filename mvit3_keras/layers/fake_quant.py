"""Fake quantization for quantization-aware training, built on ``keras.quantizers.fake_quant_with_min_max_vars``.

With the TensorFlow backend that function emits ``FakeQuantWithMinMaxVars``
(``...PerChannel``) ops, which the TFLite converter turns into int8 tensors
with exactly these ranges (straight-through gradients inside the range).

* :func:`quantize_weights_per_channel`: symmetric narrow-range int8 with
  ``max |w|`` per output channel (the TFLite int8 weight spec; TFMOT's
  ``LastValueQuantizer`` with ``per_axis=True``, ``symmetric=True``).
* :class:`ActivationQuantizer`: per-tensor asymmetric int8 whose range is the
  moving average of batch min / max while training (TFMOT
  ``MovingAverageQuantizer``), initialised by the first batch seen, frozen at
  inference; or a fixed range.
"""

from __future__ import annotations

import keras
from keras import ops

# Output range of the TFLite int8 LOGISTIC and SOFTMAX kernels: scale 1/256,
# zero point -128, i.e. [0, 255/256].
UNIT_INTERVAL_RANGE = (0.0, 255.0 / 256.0)


def fake_quant(x, lo, hi, *, narrow_range=False, axis=None):
    return keras.quantizers.fake_quant_with_min_max_vars(
        x, lo, hi, num_bits=8, narrow_range=narrow_range, axis=axis
    )


def snap_range_numpy(lo: float, hi: float):
    """Nudge ``[lo, hi]`` (which contains 0) onto an int8 grid whose scale has 15
    significant bits, so ``scale``, ``-zero_point * scale`` and
    ``(255 - zero_point) * scale`` are exact in float32 and float64 alike.

    The TFLite converter derives a tensor's scale from the FakeQuant range in
    double precision on some paths and in float32 on others; for "same scale"
    ops (DEPTH_TO_SPACE, STRIDED_SLICE after a fake-quantized tensor) it then
    rejects scales that differ in the last float32 bit. On this grid both
    computations agree. The range moves by < 2^-14 relative.
    """
    import numpy as np

    f = np.float32
    lo, hi = f(lo), f(max(float(hi), float(lo) + 1e-6))
    scale = max(f((hi - lo) / f(255.0)), f(1e-12))
    exponent = np.floor(np.log(scale) / np.log(f(2.0))) - f(14.0)
    unit = f(2.0) ** f(exponent)
    scale = f(np.round(scale / unit) * unit)
    zero_point = f(np.clip(np.round(-lo / scale), 0.0, 255.0))
    return float(f(-zero_point * scale)), float(f((f(255.0) - zero_point) * scale))


def snap_range(lo, hi):
    """:func:`snap_range_numpy` in ``keras.ops`` (float32), for the training and
    inference graph: the QAT model quantizes with the ranges that the exported file
    gets, not with ranges up to 2^-14 apart (which moved the grid by up to 0.008 of
    a step at the ends of the range and flipped the rounding of ~0.5 % of the values
    at every quantizer)."""
    f32 = "float32"
    lo = ops.cast(lo, f32)
    hi = ops.maximum(ops.cast(hi, f32), lo + 1e-6)
    scale = ops.maximum((hi - lo) / 255.0, 1e-12)
    exponent = ops.floor(ops.log(scale) / ops.log(ops.cast(2.0, f32))) - 14.0
    unit = ops.power(ops.cast(2.0, f32), exponent)
    scale = ops.round(scale / unit) * unit
    zero_point = ops.clip(ops.round(-lo / scale), 0.0, 255.0)
    return -zero_point * scale, (255.0 - zero_point) * scale


def quantize_weights_per_channel(kernel, per_channel: bool = True):
    """Symmetric int8 fake quantization of ``kernel`` along its last axis."""
    if per_channel:
        axes = tuple(range(len(kernel.shape) - 1))
        bound = ops.maximum(ops.max(ops.abs(kernel), axis=axes), 1e-8)
        return fake_quant(kernel, -bound, bound, narrow_range=True, axis=-1)
    bound = ops.maximum(ops.max(ops.abs(kernel)), 1e-8)
    return fake_quant(kernel, -bound, bound, narrow_range=True)


def quantize_constant(values, bake: bool = False):
    """Per-tensor asymmetric fake quantization of a constant (how the converter
    quantizes constant operands of MUL / ADD): range ``[min(v, 0), max(v, 0)]``.
    ``bake``: read the values once and trace them as constants (export)."""
    if bake:
        import numpy as np
        import tensorflow as tf

        with tf.init_scope():
            v = np.asarray(values, dtype=np.float32)
        lo, hi = min(float(v.min()), 0.0), max(float(v.max()), 0.0)
        return fake_quant(ops.convert_to_tensor(v), lo, max(hi, lo + 1e-8))
    lo = ops.minimum(ops.min(values), 0.0)
    hi = ops.maximum(ops.max(values), 0.0)
    hi = ops.maximum(hi, lo + 1e-8)
    return fake_quant(values, lo, hi)


@keras.saving.register_keras_serializable(package="mvit3_keras")
class ActivationQuantizer(keras.layers.Layer):
    """Per-tensor int8 fake quantization of an activation.

    ``fixed_range=(lo, hi)``: constant range (input images, logistic / softmax
    outputs). Otherwise the range variables follow
    ``r <- decay * r + (1 - decay) * batch_r`` in training (the first batch
    initialises them) and stay frozen at inference. The range always contains
    0, so zero padding and ReLU zeros are exact.
    """

    def __init__(self, ema_decay: float = 0.999, fixed_range=None, **kwargs):
        super().__init__(**kwargs)
        self.ema_decay = float(ema_decay)
        self.fixed_range = None if fixed_range is None else tuple(float(v) for v in fixed_range)
        self.force_update = False  # set by quantization.qat.calibrate_ranges
        # Set on the model being exported: the ranges are read once and traced
        # as constants (a much smaller graph for the converter, same values).
        self.bake_ranges = False

    def build(self, input_shape):
        if self.fixed_range is None:
            self.range_min = self.add_weight(
                name="range_min", shape=(), initializer="zeros", trainable=False
            )
            self.range_max = self.add_weight(
                name="range_max", shape=(), initializer="zeros", trainable=False
            )
            self.initialized = self.add_weight(
                name="initialized", shape=(), initializer="zeros", trainable=False
            )
        self.built = True

    def baked_range(self):
        import tensorflow as tf

        if self.fixed_range is not None:
            return snap_range_numpy(*self.fixed_range)
        with tf.init_scope():
            lo, hi = float(self.range_min.numpy()), float(self.range_max.numpy())
        return snap_range_numpy(lo, hi)

    def call(self, x, training=None):
        if self.bake_ranges and not training:
            lo, hi = self.baked_range()
            return fake_quant(x, lo, hi)
        if self.fixed_range is not None:
            return fake_quant(x, *snap_range_numpy(*self.fixed_range))
        if training or self.force_update:
            batch_min, batch_max = self.batch_range(x)
            first = ops.equal(self.initialized, 0.0)
            lo, hi = self.next_range(self.range_min, self.range_max, first, batch_min, batch_max)
            self.range_min.assign(lo)
            self.range_max.assign(hi)
            self.initialized.assign(1.0)
        else:
            lo, hi = self.range_min, self.range_max
        # the export graph bakes the same snapped range (snap_range_numpy)
        return fake_quant(x, *snap_range(lo, hi))

    @staticmethod
    def batch_range(x):
        """``(min, max)`` of ``x`` widened to contain 0. Non-finite values (rsqrt of a
        variance quantized to 0) saturate to the range, as the int8 kernels do, and do
        not widen it."""
        xs = ops.stop_gradient(x)
        xs = ops.where(ops.isfinite(xs), xs, ops.zeros_like(xs))
        return ops.minimum(ops.min(xs), 0.0), ops.maximum(ops.max(xs), 0.0)

    def next_range(self, range_min, range_max, first, batch_min, batch_max):
        """The range after one batch: the moving average in training, the running
        min / max while calibrating (``force_update``: PTQ's MinMax rule); the first
        batch sets it."""
        if self.force_update:
            new_min, new_max = ops.minimum(range_min, batch_min), ops.maximum(range_max, batch_max)
        else:
            d = self.ema_decay
            new_min = d * range_min + (1 - d) * batch_min
            new_max = d * range_max + (1 - d) * batch_max
        return ops.where(first, batch_min, new_min), ops.where(first, batch_max, new_max)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(
            ema_decay=self.ema_decay,
            fixed_range=None if self.fixed_range is None else list(self.fixed_range),
        )
        return config


@keras.saving.register_keras_serializable(package="mvit3_keras")
class SharedRangeQuantizer(ActivationQuantizer):
    """One int8 range for several tensors (``num_sites``; call with ``site=i``).

    TFLite's int8 ``CONCATENATION`` requires every input to have the output's scale
    and zero point. Inputs quantized with ranges of their own each get a requantize
    op (``QUANTIZE`` int8 -> int8) in the converted file: a second rounding that the
    QAT model did not train with, an op XNNPACK and the builtin kernels round
    differently (MediaPipe Tasks and LiteRT disagreed by up to 1 logit on a QAT
    classifier because of it), and an extra op. The post-training converter gives
    the concatenated tensors one scale; this layer does the same for QAT: it is
    called once on each tensor that a concatenation joins (at its producer, so the
    producer's other consumers see the same int8 tensor), each site keeps the
    :class:`ActivationQuantizer` range of its own tensor, and every site is
    quantized with the union of the sites' ranges, i.e. the range of the
    concatenation's output.
    """

    def __init__(self, num_sites: int = 2, ema_decay: float = 0.999, **kwargs):
        super().__init__(ema_decay, fixed_range=None, **kwargs)  # a shared range is tracked
        if int(num_sites) < 1:
            raise ValueError(f"num_sites must be >= 1, got {num_sites}")
        self.num_sites = int(num_sites)

    def build(self, input_shape):
        for name in ("range_min", "range_max", "initialized"):
            weight = self.add_weight(
                name=name, shape=(self.num_sites,), initializer="zeros", trainable=False
            )
            setattr(self, name, weight)
        self.built = True

    def union_range(self):
        """``(min, max)`` over the sites seen so far (the range always contains 0)."""
        seen = ops.greater(self.initialized, 0.0)
        lo = ops.min(ops.where(seen, self.range_min, 0.0))
        hi = ops.max(ops.where(seen, self.range_max, 0.0))
        return lo, hi

    def baked_range(self):
        import tensorflow as tf

        with tf.init_scope():
            lo, hi = (float(ops.convert_to_numpy(v)) for v in self.union_range())
        return snap_range_numpy(lo, hi)

    def call(self, x, site: int = 0, training=None):
        if not 0 <= int(site) < self.num_sites:
            raise ValueError(f"{self.name}: site {site} outside [0, {self.num_sites})")
        if self.bake_ranges and not training:
            return fake_quant(x, *self.baked_range())
        if training or self.force_update:
            batch_min, batch_max = self.batch_range(x)
            at_site = ops.equal(ops.arange(self.num_sites), int(site))
            first = ops.equal(self.initialized[site], 0.0)
            old_min, old_max = self.range_min[site], self.range_max[site]
            lo, hi = self.next_range(old_min, old_max, first, batch_min, batch_max)
            self.range_min.assign(ops.where(at_site, lo, self.range_min))
            self.range_max.assign(ops.where(at_site, hi, self.range_max))
            self.initialized.assign(ops.where(at_site, 1.0, self.initialized))
        return fake_quant(x, *snap_range(*self.union_range()))

    def get_config(self):
        config = super().get_config()
        config.pop("fixed_range", None)
        config["num_sites"] = self.num_sites
        return config
