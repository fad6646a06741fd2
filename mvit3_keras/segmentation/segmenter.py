"""``create_segmenter``: DeepLabv3 / PSPNet on any registered backbone.

Graph (the official ``encoder_decoder`` model: ``cvnets/models/segmentation/enc_dec.py``
with ``cvnets/models/segmentation/heads/{deeplabv3,pspnet}.py``; docs/semantics.md
sections 4-5): the backbone (``encoder.*``, dilated to the output stride by each
family's rule, no ``conv_1x1_exp`` / classifier) -> ASPP (``seg_head.aspp.aspp_layer``) or
PSP (``seg_head.psp_layer``) on layer_5 -> 1x1 classifier -> bilinear
upsampling by the output stride (v1 tree align_corners=False, v2 tree
align_corners=True). Every weight-bearing layer carries its official
``state_dict`` name, so :func:`mvit3_keras.load_cvnets_weights` loads the
official segmentation checkpoints directly.

Aux head: like the official model, it runs only in training. The model is a
functional :class:`Segmenter` whose graph has the outputs ``"logits"`` and
``"aux_logits"`` (and ``"mask"`` with ``include_argmax``); calling it in
inference mode (``predict``, ``model(x)``, TFLite / SavedModel export)
returns only the main output, so the aux ops are pruned from exported
graphs; in training mode (``fit``) it returns ``{"logits", "aux_logits"}``
and :meth:`Segmenter.compute_loss` adds ``aux_loss_weight`` x the compiled
loss of the (upsampled) aux logits.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Optional

import keras

from mvit3_keras import specs as S
from mvit3_keras.backbone import backbone_features, validate_input_shape
from mvit3_keras.layers import ResizeLike
from mvit3_keras.recorded_model import TASK_SEGMENTATION, MobileViTModel, ModelRecord
from mvit3_keras.registry import get_spec
from mvit3_keras.segmentation import heads
from mvit3_keras.segmentation.aspp import aspp
from mvit3_keras.segmentation.layers import ArgmaxMask, ScaleResize
from mvit3_keras.segmentation.losses import SegmentationCrossEntropy, resize_logits_to_labels
from mvit3_keras.segmentation.presets import (
    OVERRIDABLE_FIELDS,
    SegmentationConfig,
    resolve_config,
)
from mvit3_keras.segmentation.pspnet import pyramid_pooling

OUTPUT_RESOLUTIONS = ("official", "input", "low")


@keras.saving.register_keras_serializable(package="mvit3_keras")
class Segmenter(MobileViTModel):
    """Functional segmentation model with a training-only aux output.

    Inference (``training`` false / unset) returns ``inference_output``
    (``"logits"`` or ``"mask"``); training returns ``"logits"`` alone or
    ``{"logits", "aux_logits"}`` when the model has an aux head.
    ``segmentation_config`` holds the resolved head configuration; a model
    saved without a :class:`~mvit3_keras.recorded_model.ModelRecord` gets one
    derived from it.
    """

    config_attributes = ("aux_loss_weight", "inference_output", "segmentation_config")

    def __init__(
        self,
        *args,
        aux_loss_weight: float = 0.4,
        inference_output: Optional[str] = None,
        segmentation_config: Optional[dict] = None,
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        self.aux_loss_weight = float(aux_loss_weight)
        outputs = self.output if isinstance(self.output, dict) else {}
        if inference_output is None:  # e.g. after keras.models.clone_model
            inference_output = "mask" if "mask" in outputs else "logits"
        if outputs and inference_output not in outputs:
            raise ValueError(
                f"inference_output {inference_output!r} is not an output of the graph "
                f"({', '.join(outputs)})"
            )
        self.inference_output = inference_output
        self.segmentation_config = dict(segmentation_config or {})
        if self.model_record is None and "backbone" in self.segmentation_config:
            self.model_record = segmentation_record(
                self.segmentation_config, self.input_shape[1:], inference_output == "mask"
            )

    @property
    def has_aux_head(self) -> bool:
        return isinstance(self.output, dict) and "aux_logits" in self.output

    def _select(self, outputs, training):
        if not isinstance(outputs, dict):
            return outputs
        if training:
            if "aux_logits" in outputs:
                return {"logits": outputs["logits"], "aux_logits": outputs["aux_logits"]}
            return outputs["logits"]
        return outputs[self.inference_output]

    def call(self, inputs, training=None, mask=None, **kwargs):
        outputs = super().call(inputs, training=training, mask=mask, **kwargs)
        return self._select(outputs, training)

    def compute_output_spec(self, inputs, training=None, mask=None):
        return self._select(super().compute_output_spec(inputs), training)

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        if not isinstance(y_pred, dict):
            return super().compute_loss(x, y, y_pred, sample_weight, training=training)
        loss = super().compute_loss(x, y, y_pred["logits"], sample_weight, training=training)
        if self.aux_loss_weight and "aux_logits" in y_pred and self.loss is not None:
            loss_fn = keras.losses.get(self.loss) if isinstance(self.loss, str) else self.loss
            if not callable(loss_fn):
                raise TypeError(
                    "the aux head needs a single compiled loss, e.g. "
                    "compile(loss=mvit3_keras.SegmentationCrossEntropy(ignore_index=255)); "
                    f"got {self.loss!r} (or build with aux_head=False)"
                )
            aux = resize_logits_to_labels(y_pred["aux_logits"], y)
            loss = loss + self.aux_loss_weight * loss_fn(y, aux, sample_weight)
        return loss

    def compute_metrics(self, x, y, y_pred, sample_weight=None):
        if isinstance(y_pred, dict):
            y_pred = y_pred["logits"]
        return super().compute_metrics(x, y, y_pred, sample_weight)

    def official_loss(self) -> SegmentationCrossEntropy:
        """The official training loss of this configuration (ignore label 255 for
        the PASCAL VOC presets, -1 for ADE20K); the aux term is added by
        :meth:`compute_loss`."""
        return SegmentationCrossEntropy(
            ignore_index=self.segmentation_config.get("ignore_index", 255)
        )

    def mac_count_scales(self) -> dict:
        """Hook of :func:`mvit3_keras.count_macs`: the aux head does not run at
        inference and the official profiler does not count it."""
        return {
            layer.name: (0.0, 0.0)
            for layer in self.layers
            if layer.name.startswith("seg_head.aux_head.")
        }

    def inference_model(self, output: Optional[str] = None) -> keras.Model:
        """A plain functional model with only the inference output (weights shared).

        Its parameter count is the official one without the aux head.
        """
        output = output or self.inference_output
        return keras.Model(self.input, self.output[output], name=f"{self.name}_{output}")


def segmentation_record(head_config: dict, input_shape, include_argmax: bool) -> ModelRecord:
    """The :class:`ModelRecord` of a segmenter from its ``segmentation_config``
    (the resolved head values, so a rebuild does not depend on preset defaults)."""
    options = {key: head_config[key] for key in OVERRIDABLE_FIELDS if key != "num_classes"}
    options.update(
        output_resolution=head_config.get("output_resolution", "official"),
        include_argmax=bool(include_argmax),
    )
    return ModelRecord(
        variant=head_config["backbone"],
        task=TASK_SEGMENTATION,
        input_shape=input_shape,
        num_classes=head_config["num_classes"],
        head=head_config["head"],
        preset=head_config.get("preset"),
        options=options,
    )


def segmentation_head(features: dict, cfg: SegmentationConfig):
    """Low-resolution logits: ASPP (DeepLabv3) or the pyramid (PSPNet) on ``P5``,
    then the 1x1 classifier (``cvnets/models/segmentation/heads/``)."""
    x = features["P5"]
    if cfg.head == "deeplabv3":
        x = aspp(
            x,
            channels=cfg.aspp_channels,
            rates=cfg.aspp_rates,
            name="seg_head.aspp.aspp_layer",
            dropout=cfg.aspp_dropout,
            separable=cfg.aspp_separable,
            head_style=cfg.head_style,
        )
    else:
        x = pyramid_pooling(
            x,
            channels=cfg.psp_channels,
            pool_sizes=cfg.psp_pool_sizes,
            name="seg_head.psp_layer",
            dropout=cfg.psp_dropout,
        )
    return heads.classifier(
        x, cfg.num_classes, head_style=cfg.head_style, dropout=cfg.classifier_dropout
    )


def check_output_resolution(output_resolution: str) -> None:
    if output_resolution not in OUTPUT_RESOLUTIONS:
        raise ValueError(
            f"output_resolution must be one of {', '.join(OUTPUT_RESOLUTIONS)}, "
            f"got {output_resolution!r}"
        )


def upsample_logits(low, inputs, cfg: SegmentationConfig, output_resolution: str):
    """The logits at ``output_resolution`` (see :func:`create_segmenter`); the v2
    heads resize with ``align_corners=True``, the v1 heads with ``False``."""
    check_output_resolution(output_resolution)
    align_corners = cfg.head_style == S.V2_FAMILY
    if output_resolution == "official":
        return ScaleResize(
            cfg.output_stride,
            align_corners=align_corners,
            name=heads.upsample_name(cfg.head_style, cfg.output_stride),
        )(low)
    if output_resolution == "input":
        return ResizeLike(align_corners=align_corners, name="seg_head.resize_to_input")(
            [low, inputs]
        )
    return low


def segmenter_outputs(inputs, spec: S.ModelSpec, cfg, output_resolution, include_argmax):
    """``{"logits", ["aux_logits"], ["mask"]}`` of the segmentation graph on ``inputs``."""
    features = backbone_features(inputs, spec, output_stride=cfg.output_stride, prefix="encoder.")
    logits = upsample_logits(segmentation_head(features, cfg), inputs, cfg, output_resolution)
    outputs = {"logits": logits}
    if cfg.aux_head:
        outputs["aux_logits"] = heads.aux_head(
            features["P4"], cfg.num_classes, head_style=cfg.head_style, dropout=cfg.aux_dropout
        )
    if include_argmax:
        outputs["mask"] = ArgmaxMask(name="mask")(logits)
    return outputs


def create_segmenter(
    backbone,
    *,
    head: str = "deeplabv3",
    preset: Optional[str] = "pascal_voc",
    num_classes: Optional[int] = None,
    output_stride: Optional[int] = None,
    input_shape: Sequence[Optional[int]] = (512, 512, 3),
    aspp_channels: Optional[int] = None,
    aspp_rates: Optional[Sequence[int]] = None,
    aspp_dropout: Optional[float] = None,
    aspp_separable: Optional[bool] = None,
    psp_channels: Optional[int] = None,
    psp_pool_sizes: Optional[Sequence[int]] = None,
    psp_dropout: Optional[float] = None,
    classifier_dropout: Optional[float] = None,
    aux_head: Optional[bool] = None,
    aux_dropout: Optional[float] = None,
    aux_loss_weight: Optional[float] = None,
    output_resolution: str = "official",
    include_argmax: bool = False,
    model_name: Optional[str] = None,
) -> Segmenter:
    """Build a segmentation model identical to the official one.

    Args:
        backbone: a registered variant (``mvit3_keras.list_models()``), v3 or baseline.
        head: ``"deeplabv3"`` or ``"pspnet"``.
        preset: ``"pascal_voc"`` (default) or ``"ade20k"``: the official
            configuration of the backbone's family (:mod:`mvit3_keras.segmentation.presets`).
        num_classes, output_stride, aspp_channels, aspp_rates, aspp_dropout,
            aspp_separable, psp_channels, psp_pool_sizes, psp_dropout,
            classifier_dropout, aux_head, aux_dropout, aux_loss_weight: override
            the preset (``None`` keeps it); see :class:`SegmentationConfig`.
        input_shape: ``(H, W, 3)``, images in [0, 1]; ``None`` sides for any size.
        output_resolution: ``"official"``: low-resolution logits x output stride
            (the official output; the input size when it is divisible by the
            network stride); ``"input"``: resized to exactly the input size;
            ``"low"``: the low-resolution logits.
        include_argmax: inference returns the per-pixel class map (int32
            ``[B, H, W]``) instead of logits (for export).
    """
    arguments = dict(locals())  # the call's arguments by name (no other local exists yet)
    spec = get_spec(backbone)
    check_output_resolution(output_resolution)
    cfg = resolve_config(spec, head, preset, {k: arguments[k] for k in OVERRIDABLE_FIELDS})
    inputs = keras.Input(validate_input_shape(input_shape), name="image")
    outputs = segmenter_outputs(inputs, spec, cfg, output_resolution, include_argmax)
    head_config = cfg.to_dict()
    head_config.update(backbone=spec.name, output_resolution=output_resolution, preset=preset)
    return Segmenter(
        inputs,
        outputs,
        name=model_name or f"{spec.name}_{cfg.head}",
        aux_loss_weight=cfg.aux_loss_weight,
        inference_output="mask" if include_argmax else "logits",
        segmentation_config=head_config,
        model_record=segmentation_record(head_config, inputs.shape[1:], include_argmax),
    )
