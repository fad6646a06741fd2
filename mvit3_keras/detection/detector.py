"""``create_detector``: SSDLite on any registered backbone (the paper's COCO setup;
``cvnets/models/detection/ssd.py`` of ml-cvnets, docs/semantics.md section 6).

The backbone runs at output stride 32 without ``conv_1x1_exp`` / classifier
(``encoder.*``); the head is :mod:`mvit3_keras.detection.ssd_head`. The model
returns the official raw outputs ``{"confidences": [B, N, classes],
"locations": [B, N, 4]}`` (N = 3232 anchors at 320x320); anchors, decoding,
NMS and the loss are separate (:meth:`SSDDetector.anchors`,
:meth:`SSDDetector.detect`, :class:`SSDMultiBoxLoss`), and
:func:`mvit3_keras.detection.export_detector_tflite` bakes the standard
``TFLite_Detection_PostProcess`` op into a ``.tflite``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Optional

import keras
import numpy as np

from mvit3_keras.backbone import backbone_features, validate_input_shape
from mvit3_keras.detection import box_coder
from mvit3_keras.detection.anchors import AnchorConfig, feature_map_sizes, generate_anchors
from mvit3_keras.detection.loss import SSDMultiBoxLoss
from mvit3_keras.detection.postprocess import postprocess_detections
from mvit3_keras.detection.ssd_head import (
    NUM_COORDINATES,
    PROJ_CHANNELS,
    SliceLastAxis,
    extra_layer,
    ssd_head,
)
from mvit3_keras.recorded_model import TASK_DETECTION, MobileViTModel, ModelRecord
from mvit3_keras.registry import get_spec

COCO_NUM_CLASSES = 81  # 80 COCO classes + background (class 0)


@keras.saving.register_keras_serializable(package="mvit3_keras")
class SSDDetector(MobileViTModel):
    """Functional SSD model with its anchor / box-coder configuration.

    ``compile(loss=SSDMultiBoxLoss())`` trains on ``y = {"box_labels",
    "box_coordinates"}`` (see :func:`mvit3_keras.detection.match_anchors`).
    A model saved without a :class:`~mvit3_keras.recorded_model.ModelRecord` gets
    one derived from ``detection_config``.
    """

    config_attributes = ("detection_config",)

    def __init__(self, *args, detection_config: Optional[dict] = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.detection_config = dict(detection_config or {})
        if self.model_record is None and "backbone" in self.detection_config:
            self.model_record = detection_record(self.detection_config, self.input_shape[1:])

    def _config(self, key):
        if key not in self.detection_config:
            raise ValueError(
                f"{self.name!r} has no detection configuration (a copy made with "
                "keras.models.clone_model drops it): use the model from create_detector, "
                "or keras.models.load_model / SSDDetector.from_config(model.get_config())"
            )
        return self.detection_config[key]

    @property
    def anchor_config(self) -> AnchorConfig:
        return AnchorConfig.from_dict(self._config("anchors"))

    @property
    def num_classes(self) -> int:
        return int(self._config("num_classes"))

    def anchors(self, image_size=None) -> np.ndarray:
        """Center-form anchors ``[N, 4]`` (float32) for the model's (or a given) input size."""
        if image_size is None:
            h, w = self.input_shape[1:3]
            if h is None or w is None:
                raise ValueError(
                    "the detector was built for any input size: pass image_size=(H, W)"
                )
            image_size = (h, w)
        spec = get_spec(self._config("backbone"))
        cfg = self.anchor_config
        return generate_anchors(feature_map_sizes(spec, image_size, cfg.output_strides), cfg)

    def detect(self, images, **postprocess_kwargs) -> dict:
        """Raw outputs -> ``{"boxes", "scores", "classes", "num_detections"}``.

        Keyword arguments go to :func:`postprocess_detections`.
        """
        images = keras.ops.convert_to_tensor(images)
        outputs = self(images, training=False)
        anchors = self.anchors(tuple(int(s) for s in images.shape[1:3]))
        kwargs = dict(
            center_variance=self._config("center_variance"),
            size_variance=self._config("size_variance"),
        )
        kwargs.update(postprocess_kwargs)
        return postprocess_detections(
            outputs["confidences"], outputs["locations"], anchors, **kwargs
        )

    def encode_targets(self, gt_boxes, gt_labels, image_size=None):
        """Training targets of one image (:func:`match_anchors` with this model's anchors)."""
        return box_coder.match_anchors(
            gt_boxes,
            gt_labels,
            self.anchors(image_size),
            iou_threshold=self._config("match_iou_threshold"),
            center_variance=self._config("center_variance"),
            size_variance=self._config("size_variance"),
        )

    def mac_count_scales(self) -> dict:
        """Hook of :func:`mvit3_keras.count_macs` reproducing the official profiler.

        The official ``ConvLayer.profile_module`` takes the output of a
        stride-2 conv as ``in // 2`` (the real, padded conv gives
        ``ceil(in / 2)``), so it counts the extra maps of 320x320 as 5x5, 2x2,
        1x1 instead of 5x5, 3x3, 2x2 (763,504 MACs fewer for every SSD
        variant). The ``official`` count scales the extra layers and their
        heads by that area ratio; the ``real`` count is left as it is.
        """
        h, w = self.input_shape[1:3]
        if h is None or w is None:
            return {}
        spec = get_spec(self._config("backbone"))
        strides = self.anchor_config.output_strides
        real = feature_map_sizes(spec, (h, w), strides)
        profiled = feature_map_sizes(spec, (h, w), (32,))[0]
        scales = {}
        for index, (stride, (rh, rw)) in enumerate(zip(strides, real)):
            if stride <= 32 and stride != -1:
                continue
            if stride != -1:
                profiled = (profiled[0] // 2, profiled[1] // 2)
            else:
                profiled = (1, 1)
            factor = (profiled[0] * profiled[1]) / (rh * rw)
            if factor == 1.0:
                continue
            for layer in self.layers:
                if layer.name.startswith((f"extra_layers.os_{stride}.", f"ssd_heads.{index}.")):
                    scales[layer.name] = (factor, 1.0)
        return scales

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        if isinstance(self.loss, SSDMultiBoxLoss):
            loss = self.loss(y, y_pred)
            if self.losses:
                loss = loss + keras.ops.sum(self.losses)
            return loss
        return super().compute_loss(x, y, y_pred, sample_weight, training=training)


def detection_record(detection_config: dict, input_shape) -> ModelRecord:
    """The :class:`ModelRecord` of a detector from its ``detection_config``."""
    anchors = detection_config["anchors"]
    options = {
        key: detection_config[key]
        for key in ("proj_channels", "center_variance", "size_variance", "match_iou_threshold")
    }
    options.update(
        {key: anchors[key] for key in ("output_strides", "aspect_ratios", "min_scale", "max_scale")}
    )
    return ModelRecord(
        variant=detection_config["backbone"],
        task=TASK_DETECTION,
        input_shape=input_shape,
        num_classes=detection_config["num_classes"],
        head="ssdlite",
        options=options,
    )


def ssd_outputs(features: dict, anchor_cfg: AnchorConfig, proj: list, num_classes: int) -> dict:
    """``{"confidences", "locations"}``: an SSD head per map (layer_3/4/5 by stride,
    extra layers chained from ``P5``; ``cvnets/models/detection/ssd.py``)."""
    by_stride = {8: features["P3"], 16: features["P4"], 32: features["P5"]}
    x = features["P5"]
    head_outputs = []
    per_location = anchor_cfg.anchors_per_location()
    for index, (stride, n_anchors) in enumerate(zip(anchor_cfg.output_strides, per_location)):
        if stride in by_stride:
            feature_map = by_stride[stride]
        else:
            x = extra_layer(x, stride, proj[index])
            feature_map = x
        head_outputs.append(
            ssd_head(
                feature_map,
                index,
                proj_channels=proj[index],
                num_anchors=n_anchors,
                num_classes=num_classes,
                kernel_size=1 if stride == -1 else 3,
            )
        )
    merged = keras.layers.Concatenate(axis=1, name="ssd_heads.concat")(head_outputs)
    locations = SliceLastAxis(0, NUM_COORDINATES, name="locations")(merged)
    confidences = SliceLastAxis(NUM_COORDINATES, name="confidences")(merged)
    return {"confidences": confidences, "locations": locations}


def create_detector(
    backbone,
    *,
    num_classes: int = COCO_NUM_CLASSES,
    input_shape: Sequence[Optional[int]] = (320, 320, 3),
    output_strides: Sequence[int] = (16, 32, 64, 128, 256, -1),
    proj_channels: Sequence[int] = PROJ_CHANNELS,
    aspect_ratios: Sequence[Sequence[float]] = ((2, 3),) * 5 + ((2,),),
    min_scale: float = 0.1,
    max_scale: float = 1.05,
    center_variance: float = box_coder.CENTER_VARIANCE,
    size_variance: float = box_coder.SIZE_VARIANCE,
    match_iou_threshold: float = box_coder.MATCH_IOU_THRESHOLD,
    model_name: Optional[str] = None,
) -> SSDDetector:
    """Build the official SSDLite detector on ``backbone``.

    Args:
        backbone: a registered variant (``mvit3_keras.list_models()``).
        num_classes: including background (COCO: 81).
        input_shape: ``(H, W, 3)``, images in [0, 1]; the official size is
            320x320 (a fixed size gives static anchors and TFLite export).
        output_strides: feature maps (8 = layer_3, 16 = layer_4, 32 = layer_5,
            > 32 = extra separable layers, -1 = global); official default.
        proj_channels: projection channels per map (official 512/256/256/128/128/64).
        aspect_ratios: per map (official ``[2, 3]`` x 5 and ``[2]``).
        min_scale, max_scale, center_variance, size_variance, match_iou_threshold:
            anchor sizes and box coder (official 0.1, 1.05, 0.1, 0.2, 0.5).
    """
    spec = get_spec(backbone)
    if not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(
            f"num_classes must be an int >= 2 including the background class, got {num_classes!r}"
        )
    anchor_cfg = AnchorConfig(
        output_strides=tuple(output_strides),
        aspect_ratios=tuple(aspect_ratios),
        min_scale=float(min_scale),
        max_scale=float(max_scale),
    )
    n_maps = len(anchor_cfg.output_strides)
    proj = list(proj_channels) + [128] * (n_maps - len(proj_channels))  # official padding
    inputs = keras.Input(validate_input_shape(input_shape), name="image")
    features = backbone_features(inputs, spec, output_stride=32, prefix="encoder.")
    config = dict(
        backbone=spec.name,
        num_classes=num_classes,
        anchors=anchor_cfg.to_dict(),
        proj_channels=proj,
        center_variance=float(center_variance),
        size_variance=float(size_variance),
        match_iou_threshold=float(match_iou_threshold),
    )
    return SSDDetector(
        inputs,
        ssd_outputs(features, anchor_cfg, proj, num_classes),
        name=model_name or f"{spec.name}_ssdlite",
        detection_config=config,
        model_record=detection_record(config, inputs.shape[1:]),
    )
