"""Quantization-aware twins of the layers the MobileViT models use.

They live in ``mvit3_keras`` (not in the ``quantization`` package that builds QAT
models) so that a saved QAT model loads after ``import mvit3_keras``. Each layer
computes what its float counterpart computes, with fake quantization exactly where
the TFLite int8 graph of that layer has a quantized tensor (output of every
kernel; weights per channel), so the converted int8 model reproduces the QAT
model's numerics (Jacob et al., "Quantization and Training of Neural Networks for
Efficient Integer-Arithmetic-Only Inference", CVPR 2018):

* :class:`QuantConv2D`, :class:`QuantDepthwiseConv2D`, :class:`QuantDense` -
  subclasses of the stock layers with the following ``BatchNormalization`` folded
  in (frozen statistics) -> one ``CONV_2D`` / ``DEPTHWISE_CONV_2D`` / 1x1
  ``CONV_2D`` with int32 bias (their shared quantization points:
  :class:`QuantConv`);
* :class:`QuantActivation` - a subclass of ``Activation``: swish as ``LOGISTIC``
  (fixed range) + ``MUL``; ReLU / ReLU6 / linear;
* :class:`QuantizeWrapper` - output quantization for ``Add``, ``Concatenate``,
  ``Multiply``, pooling;
* :class:`QuantNormalization`, :class:`QuantMultiHeadSelfAttention`,
  :class:`QuantLinearSelfAttention` - subclasses of the float layers
  (:class:`~mvit3_keras.layers.NormalizationExport`,
  :class:`~mvit3_keras.layers.MultiHeadSelfAttention`,
  :class:`~mvit3_keras.layers.LinearSelfAttention`) that override only
  ``quantize_point`` (softmax / logistic outputs at the fixed int8 range).

Data-movement layers (padding, reshape, unfold / fold, resize, slicing) keep
their input's quantization, as the TFLite kernels do, and need no twin.
"""

from __future__ import annotations

import keras
from keras import ops

from mvit3_keras.layers.attention import LinearSelfAttention, MultiHeadSelfAttention
from mvit3_keras.layers.fake_quant import (
    UNIT_INTERVAL_RANGE,
    ActivationQuantizer,
    SharedRangeQuantizer,
    fake_quant,
    quantize_constant,
    quantize_weights_per_channel,
)
from mvit3_keras.layers.normalization import NormalizationExport


def require_float32_policy(layer) -> None:
    """Quantization-aware layers compute in float32: the int8 file's ranges and rounding
    are those of float32 values, which a float16 compute dtype would not reproduce."""
    compute = layer.dtype_policy.compute_dtype
    if compute != "float32":
        raise ValueError(
            f"{type(layer).__name__} {layer.name!r}: quantization-aware layers compute in "
            f"float32, but its dtype policy is {layer.dtype_policy.name!r} (compute "
            f"{compute}); create it with dtype='float32' (quantization.quantize_model "
            "makes every twin float32 from a float32 model)"
        )


def _output_quantizer(layer, shape):
    """The output's :class:`ActivationQuantizer`, or ``None`` when ``layer`` leaves
    its output to a :class:`SharedRangeQuantizer` (``quantize_output=False``)."""
    if not layer.quantize_output:
        return None
    quantizer = ActivationQuantizer(layer.ema_decay, name="output_quantizer")
    quantizer.build(shape)
    return quantizer


def _quantized_output(layer, y, training):
    quantizer = layer.output_quantizer
    return y if quantizer is None else quantizer(y, training=training)


@keras.saving.register_keras_serializable(package="mvit3_keras")
class QuantConv:
    """The quantization points of a convolution / dense layer with the following
    ``BatchNormalization`` folded in (frozen statistics), shared by
    :class:`QuantConv2D`, :class:`QuantDepthwiseConv2D` and :class:`QuantDense`: each
    is the stock Keras layer (its own ``kernel`` / ``bias``, its config) plus

    * ``batch_norm``: config of the folded ``BatchNormalization`` (weights in
      ``self.batch_norm``) or ``None``. Folding: ``w' = w * gamma / sqrt(var + eps)``
      per output channel, ``b' = (b - mean) * gamma / sqrt(var + eps) + beta``;
    * ``w'`` fake-quantized per output channel (symmetric, narrow range: TFLite's
      int8 weights), the output per tensor (``quantize_output=False``: left to a
      :class:`~mvit3_keras.layers.SharedRangeQuantizer`).

    A subclass says how its kernel is laid out (``channels_last_kernel``: the kernel
    as ``[..., output channels]``) and how it is applied (``convolve``, or
    ``apply_kernel``).
    """

    def __init__(
        self,
        *args,
        batch_norm=None,
        ema_decay: float = 0.999,
        per_channel: bool = True,
        quantize_output: bool = True,
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        self.batch_norm_config = None if batch_norm is None else dict(batch_norm)
        self.ema_decay = float(ema_decay)
        self.per_channel = bool(per_channel)
        self.quantize_output = bool(quantize_output)

    @classmethod
    def from_config(cls, config):
        if "layer_class" in config:  # a QuantConv layer of an older saved file
            raise ValueError(
                f"layer {config.get('name')!r} is a QuantConv wrapping a "
                f"{config['layer_class']}, saved by an older mvit3-keras: quantization-aware "
                "convolutions are now QuantConv2D / QuantDepthwiseConv2D / QuantDense "
                "(subclasses of the stock layers) and that file's weights do not load into "
                "them. Re-create the QAT model from its float model "
                "(quantization.quantize_model) and fine-tune it again"
            )
        return super().from_config(config)

    def build(self, input_shape):
        require_float32_policy(self)
        super().build(input_shape)
        out_shape = self.compute_output_shape(input_shape)
        self.batch_norm = None
        if self.batch_norm_config is not None:
            self.batch_norm = keras.layers.BatchNormalization.from_config(
                dict(self.batch_norm_config, name="batch_norm")
            )
            self.batch_norm.build(out_shape)
        self.output_quantizer = _output_quantizer(self, out_shape)

    @staticmethod
    def channels_last_kernel(kernel):
        """``kernel`` as ``[..., output channels]`` (a view for per-channel ranges)."""
        return kernel

    def folded_weights(self):
        """``(kernel, bias or None)`` with the BatchNorm folded in (float)."""
        kernel = self.kernel
        bias = self.bias if self.use_bias else None
        bn = self.batch_norm
        if bn is None:
            return kernel, bias
        scale = ops.rsqrt(bn.moving_variance + bn.epsilon)
        if bn.scale:
            scale = scale * bn.gamma
        shift = -bn.moving_mean * scale
        if bn.center:
            shift = shift + bn.beta
        if bias is not None:
            shift = shift + bias * scale
        return ops.reshape(self.channels_last_kernel(kernel) * scale, kernel.shape), shift

    def quantized_kernel(self, kernel):
        flat = self.channels_last_kernel(kernel)
        return ops.reshape(quantize_weights_per_channel(flat, self.per_channel), kernel.shape)

    def baked_weights(self):
        """Folded kernel and bias as NumPy constants, with the per-channel
        symmetric ranges as constants (export graph: one FakeQuant per weight)."""
        import numpy as np
        import tensorflow as tf

        with tf.init_scope():
            kernel, bias = self.folded_weights()
            kernel = np.asarray(kernel, dtype=np.float32)
            bias = None if bias is None else np.asarray(bias, dtype=np.float32)
            flat = np.asarray(self.channels_last_kernel(kernel))  # eager: NumPy
        axes = tuple(range(flat.ndim - 1)) if self.per_channel else None
        bound = np.maximum(np.abs(flat).max(axis=axes), 1e-8).astype(np.float32)
        q = fake_quant(
            ops.convert_to_tensor(flat),
            -bound,
            bound,
            narrow_range=True,
            axis=-1 if self.per_channel else None,
        )
        return ops.reshape(q, kernel.shape), bias

    def apply_kernel(self, x, kernel):
        """The float layer's product with ``kernel`` (``convolve``: its op)."""
        return self.convolve(
            x,
            kernel,
            strides=self.strides,
            padding=self.padding,
            data_format=self.data_format,
            dilation_rate=self.dilation_rate,
        )

    def call(self, x, training=None):
        if getattr(self, "bake", False) and not training:
            kernel, bias = self.baked_weights()
        else:
            kernel, bias = self.folded_weights()
            kernel = self.quantized_kernel(kernel)
        y = self.apply_kernel(x, kernel)
        if bias is not None:
            y = y + bias
        if self.activation is not None:
            y = self.activation(y)
        return _quantized_output(self, y, training)

    def get_config(self):
        config = super().get_config()
        config.update(
            batch_norm=self.batch_norm_config,
            ema_decay=self.ema_decay,
            per_channel=self.per_channel,
            quantize_output=self.quantize_output,
        )
        return config


@keras.saving.register_keras_serializable(package="mvit3_keras")
class QuantConv2D(QuantConv, keras.layers.Conv2D):
    """``Conv2D`` (+ folded BatchNorm) -> one int8 ``CONV_2D`` with int32 bias."""

    convolve = staticmethod(ops.conv)


@keras.saving.register_keras_serializable(package="mvit3_keras")
class QuantDepthwiseConv2D(QuantConv, keras.layers.DepthwiseConv2D):
    """``DepthwiseConv2D`` (+ folded BatchNorm) -> one int8 ``DEPTHWISE_CONV_2D``; its
    kernel ``[kh, kw, C, multiplier]`` has output channel ``c * multiplier + m``."""

    convolve = staticmethod(ops.depthwise_conv)

    @staticmethod
    def channels_last_kernel(kernel):
        kh, kw, cin, mult = kernel.shape
        return ops.reshape(kernel, (kh, kw, 1, cin * mult))


@keras.saving.register_keras_serializable(package="mvit3_keras")
class QuantDense(QuantConv, keras.layers.Dense):
    """``Dense`` -> an int8 1x1 ``CONV_2D``: TFLite's FULLY_CONNECTED takes its weights
    as ``[out, in]``, and the converter cannot transpose a per-channel fake-quantized
    ``[in, out]`` kernel; CONV_2D keeps one scale per output channel."""

    @staticmethod
    def channels_last_kernel(kernel):
        return ops.reshape(kernel, (1, 1, *kernel.shape))

    def apply_kernel(self, x, kernel):
        cin, cout = kernel.shape
        kernel = self.channels_last_kernel(kernel)  # [1, 1, in, out]
        shape = x.shape
        if len(shape) == 4:
            return ops.conv(x, kernel, padding="valid")
        middle = 1
        for d in shape[1:-1]:
            middle *= int(d)
        y = ops.conv(ops.reshape(x, (-1, 1, middle, cin)), kernel, padding="valid")
        return ops.reshape(y, (-1, *shape[1:-1], cout))


QUANT_CONV_TWINS = {
    keras.layers.Conv2D: QuantConv2D,
    keras.layers.DepthwiseConv2D: QuantDepthwiseConv2D,
    keras.layers.Dense: QuantDense,
}
"""The quantized twin of each stock convolution class (exact type)."""


_ACTIVATIONS = ("swish", "silu", "relu", "relu6", "linear", "sigmoid")


@keras.saving.register_keras_serializable(package="mvit3_keras")
class QuantActivation(keras.layers.Activation):
    """``Activation`` with int8 fake quantization: swish = ``x * sigmoid(x)`` as
    TFLite's ``LOGISTIC`` (fixed output range) + ``MUL``; ReLU / ReLU6 / linear; a
    sigmoid alone is the ``LOGISTIC`` with its fixed range."""

    def __init__(
        self,
        activation: str = "swish",
        ema_decay: float = 0.999,
        quantize_output: bool = True,
        **kwargs,
    ):
        if activation not in _ACTIVATIONS:
            raise ValueError(
                f"QAT supports activations {_ACTIVATIONS}, got {activation!r}; annotate the "
                "layer with quantization.quantize_annotate_layer to keep it in float"
            )
        if activation == "sigmoid" and not quantize_output:
            raise ValueError("a sigmoid's output range is fixed (the int8 LOGISTIC kernel's)")
        super().__init__(activation, **kwargs)
        self.activation_name = activation
        self.ema_decay = float(ema_decay)
        self.quantize_output = bool(quantize_output)

    def build(self, input_shape):
        require_float32_policy(self)
        if self.activation_name in ("swish", "silu", "sigmoid"):
            self.sigmoid_quantizer = ActivationQuantizer(
                fixed_range=UNIT_INTERVAL_RANGE, name="sigmoid_quantizer"
            )
        if self.activation_name != "sigmoid":
            self.output_quantizer = _output_quantizer(self, input_shape)

    def call(self, x, training=None):
        if self.activation_name == "sigmoid":
            return self.sigmoid_quantizer(ops.sigmoid(x))
        if self.activation_name in ("swish", "silu"):
            y = x * self.sigmoid_quantizer(ops.sigmoid(x))
        else:
            y = self.activation(x)
        return _quantized_output(self, y, training)

    def get_config(self):
        config = super().get_config()
        config.update(
            activation=self.activation_name,
            ema_decay=self.ema_decay,
            quantize_output=self.quantize_output,
        )
        return config


@keras.saving.register_keras_serializable(package="mvit3_keras")
class QuantizeWrapper(keras.layers.Wrapper):
    """Runs ``layer`` (no weights to quantize) and fake-quantizes its output
    (``quantize_output=False``: a concatenation of inputs that already share one
    range, see :class:`~mvit3_keras.layers.SharedRangeQuantizer`)."""

    def __init__(self, layer, ema_decay: float = 0.999, quantize_output: bool = True, **kwargs):
        super().__init__(layer, **kwargs)
        self.ema_decay = float(ema_decay)
        self.quantize_output = bool(quantize_output)

    def build(self, input_shape=None):
        require_float32_policy(self)
        if not self.layer.built:
            self.layer.build(input_shape)
        self.output_quantizer = _output_quantizer(self, None)
        self.built = True

    def call(self, inputs, training=None):
        return _quantized_output(self, self.layer(inputs), training)

    def compute_output_shape(self, input_shape):
        return self.layer.compute_output_shape(input_shape)

    def get_config(self):
        config = super().get_config()
        config.update(ema_decay=self.ema_decay, quantize_output=self.quantize_output)
        return config


def _built_quantizer(name: str, ema_decay: float = 0.999, fixed_range=None):
    quantizer = ActivationQuantizer(ema_decay, fixed_range=fixed_range, name=name)
    quantizer.build(None)
    return quantizer


class _QuantizedTwin:
    """Config shared by the twins: ``ema_decay`` and the switch (``FLOAT_SWITCH``)
    that leaves the layer's inner computation in float (``QuantizeConfig.keep_float``)."""

    FLOAT_SWITCH = "float_core"

    def _init_twin(self, ema_decay: float, keep_float: bool):
        self.ema_decay = float(ema_decay)
        setattr(self, self.FLOAT_SWITCH, bool(keep_float))

    def get_config(self):
        config = super().get_config()
        config.update(ema_decay=self.ema_decay)
        config[self.FLOAT_SWITCH] = getattr(self, self.FLOAT_SWITCH)
        if hasattr(self, "quantize_output"):  # twins whose output range can be shared
            config["quantize_output"] = self.quantize_output
        return config


@keras.saving.register_keras_serializable(package="mvit3_keras")
class QuantNormalization(_QuantizedTwin, NormalizationExport):
    """:class:`NormalizationExport` with every intermediate tensor quantized and gamma /
    beta as quantized constants (``float_statistics``: from the squared centered input to
    the normalized output in float: an int8 variance rounds a token whose variance is
    below 1/255 of the largest to 0 and ``rsqrt(eps)`` blows it up ~300x).
    One MEAN over all ``axes`` by default (``stepwise_statistics=False``).
    ``quantize_output=False``: the output's range is a
    :class:`~mvit3_keras.layers.SharedRangeQuantizer`'s."""

    FLOAT_SWITCH = "float_statistics"
    _STEPS = (
        "mean",
        "centered",
        "squared",
        "variance",
        "variance_eps",
        "rsqrt",
        "normalized",
        "scaled",
        "output",
    )

    def __init__(
        self,
        ema_decay: float = 0.999,
        float_statistics: bool = False,
        stepwise_statistics: bool = False,
        quantize_output: bool = True,
        **kwargs,
    ):
        super().__init__(stepwise_statistics=stepwise_statistics, **kwargs)
        self._init_twin(ema_decay, float_statistics)
        self.quantize_output = bool(quantize_output)

    def build(self, input_shape):
        require_float32_policy(self)
        super().build(input_shape)
        unused = set()
        if self.float_statistics:
            unused |= {"squared", "variance", "variance_eps", "rsqrt"}
        if not self.scale:
            unused.add("scaled")
        if not self.center:
            unused.add("output")
        if not self.quantize_output:
            unused.add("output" if self.center else "scaled" if self.scale else "normalized")
        self.quantizers = {
            step: _built_quantizer(f"{step}_quantizer", self.ema_decay)
            for step in self._STEPS
            if step not in unused
        }

    def quantize_point(self, name, x, training=None):
        quantizer = self.quantizers.get(name)
        return x if quantizer is None else quantizer(x, training=training)

    def affine_constant(self, weight, training=None):
        return quantize_constant(weight, bake=getattr(self, "bake", False) and not training)


class _QuantizedAttention(_QuantizedTwin):
    """An attention core's twin: the float layer's build, then its quantizers
    (``build_quantizers``); ``float_core`` leaves the inner products in float."""

    def __init__(self, ema_decay: float = 0.999, float_core: bool = False, **kwargs):
        super().__init__(**kwargs)
        self._init_twin(ema_decay, float_core)

    def build(self, input_shape):
        require_float32_policy(self)
        super().build(input_shape)
        self.build_quantizers()


@keras.saving.register_keras_serializable(package="mvit3_keras")
class QuantMultiHeadSelfAttention(_QuantizedAttention, MultiHeadSelfAttention):
    """v1-family attention core with quantized q-scaling, scores, softmax, output
    (``float_core``: only the output is quantized; matmuls and softmax run in float)."""

    def build_quantizers(self):
        self.output_quantizer = _built_quantizer("output_quantizer", self.ema_decay)
        self.query_quantizer = self.scores_quantizer = self.softmax_quantizer = None
        if not self.float_core:
            self.query_quantizer = _built_quantizer("query_quantizer", self.ema_decay)
            self.scores_quantizer = _built_quantizer("scores_quantizer", self.ema_decay)
            self.softmax_quantizer = ActivationQuantizer(
                fixed_range=UNIT_INTERVAL_RANGE, name="softmax_quantizer"
            )

    def quantize_point(self, name, x, training=None):
        quantizer = getattr(self, f"{name}_quantizer", None)
        return x if quantizer is None else quantizer(x, training=training)


@keras.saving.register_keras_serializable(package="mvit3_keras")
class QuantLinearSelfAttention(_QuantizedAttention, LinearSelfAttention):
    """v2-family separable attention with every product / sum quantized
    (``float_core``: softmax and the weighted sum over patches run in float)."""

    def build_quantizers(self):
        self.softmax_quantizer = ActivationQuantizer(
            fixed_range=UNIT_INTERVAL_RANGE, name="softmax_quantizer"
        )
        names = ("relu_values", "output")
        if not self.float_core:
            names = ("weighted_keys", "context", *names)
        self.quantizers = {n: _built_quantizer(f"{n}_quantizer", self.ema_decay) for n in names}

    def quantize_point(self, name, x, training=None):
        if name == "softmax":
            return x if self.float_core else self.softmax_quantizer(x)
        quantizer = self.quantizers.get(name)
        return x if quantizer is None else quantizer(x, training=training)


QAT_LAYER_CLASSES = (
    ActivationQuantizer,
    SharedRangeQuantizer,
    QuantConv,  # QuantConv2D, QuantDepthwiseConv2D, QuantDense
    QuantActivation,
    QuantizeWrapper,
    QuantNormalization,
    QuantMultiHeadSelfAttention,
    QuantLinearSelfAttention,
)
"""Every layer class a quantization-aware model adds (``quantization.quantize_model``)."""
