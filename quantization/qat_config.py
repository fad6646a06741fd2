"""Configuration of quantization-aware training (the TFMOT default 8-bit scheme).

* weights: int8, symmetric, narrow range ``[-127, 127]``, one scale per output
  channel (convolutions, depthwise convolutions and dense layers), as the
  TFLite int8 spec requires for weights;
* activations: int8, asymmetric, one range per tensor, tracked during training
  as a moving average of the batch min / max (TFMOT ``MovingAverageQuantizer``,
  decay 0.999) and frozen at inference;
* BatchNormalization folded into the preceding convolution (Krishnamoorthi,
  "Quantizing deep convolutional networks for efficient inference", 2018,
  section 3.2), here with frozen statistics: fine-tuning starts from a trained
  float model, so the folded weights are exactly the ones the TFLite converter
  produces;
* fixed output ranges where the TFLite int8 kernels fix them: ``LOGISTIC`` and
  ``SOFTMAX`` outputs use scale 1/256, zero point -128;
* the model input is quantized with the fixed range [0, 1] of the images these
  models take (scale 1/255: uint8 pixels map exactly).
"""

from __future__ import annotations

import dataclasses
import fnmatch
from collections.abc import Sequence
from typing import Optional

SKIP_ATTRIBUTE = "_mvit3_quantize_skip"
TARGETS = ("generic", "edgetpu")
KEEP_FLOAT_PARTS = ("attention", "normalization")


@dataclasses.dataclass(frozen=True)
class QuantizeConfig:
    """Settings of :func:`quantization.quantize_model`.

    Attributes:
        target: ``"generic"`` or ``"edgetpu"`` - which export formulation the
            QAT model instruments (export with the same target).
        ema_decay: decay of the moving-average activation ranges.
        input_range: fixed ``(min, max)`` of the model input, or ``None`` to
            track it like any activation.
        per_channel: per-output-channel weight scales (else one per tensor).
        fold_batch_norm: fold BatchNormalization into the preceding convolution.
        skip: layer-name patterns (``fnmatch``) left without fake quantization,
            like layers annotated with :func:`quantization.quantize_annotate_layer`.
        keep_float: parts left in float32 inside the int8 model for CPU speed
            (``"attention"``: the attention cores' matmuls and softmax;
            ``"normalization"``: the norms' statistics, from the squared centered input
            to the normalized output), as
            ``export_tflite(..., keep_float=...)`` does for PTQ. Generic target only.
    """

    target: str = "generic"
    ema_decay: float = 0.999
    input_range: Optional[tuple] = (0.0, 1.0)
    per_channel: bool = True
    fold_batch_norm: bool = True
    skip: Sequence[str] = ()
    keep_float: Sequence[str] = ()

    def __post_init__(self):
        if self.target not in TARGETS:
            raise ValueError(f"target must be one of {TARGETS}, got {self.target!r}")
        if not 0.0 < self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in (0, 1), got {self.ema_decay}")
        if self.input_range is not None:
            lo, hi = self.input_range
            if not lo <= 0.0 < hi:
                raise ValueError(f"input_range {self.input_range} must contain 0 and have max > 0")
        for name in ("skip", "keep_float"):  # frozen: normalised once, here
            value = getattr(self, name)
            object.__setattr__(self, name, (value,) if isinstance(value, str) else tuple(value))
        unknown = set(self.keep_float) - set(KEEP_FLOAT_PARTS)
        if unknown:
            raise ValueError(f"keep_float accepts {KEEP_FLOAT_PARTS}; got {sorted(unknown)}")
        if self.keep_float and self.target == "edgetpu":
            raise ValueError("keep_float is for CPUs: the Edge TPU needs every op in int8")

    def skips(self, layer) -> bool:
        if getattr(layer, SKIP_ATTRIBUTE, False):
            return True
        return any(fnmatch.fnmatchcase(layer.name, pattern) for pattern in self.skip)


def quantize_annotate_layer(layer, quantize: bool = False):
    """Mark ``layer`` to be left without fake quantization by :func:`quantize_model`
    (the counterpart of TFMOT's per-layer annotation; TFMOT annotates what to
    quantize, here everything is quantized unless annotated).

    The layer trains in float (its weights and output see no fake
    quantization; its output is re-quantized for the next layer). At export
    the converter still quantizes a skipped layer whose neighbours are int8,
    post-training style (weights from their own min / max), so skip layers
    that must not constrain training, not layers that must run in float;
    those need a float export (``quant="fp16"`` / ``"fp32"``) or the CPU
    ``keep_float`` parts. Returns the layer.
    """
    setattr(layer, SKIP_ATTRIBUTE, not quantize)
    return layer
