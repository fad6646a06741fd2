"""Detections from the raw SSD outputs: decode, score threshold, per-class NMS, top-k.

Default settings are those of the official COCO evaluation
(``SingleShotMaskDetector.postprocess_detections``, ml-cvnets 84d992f):
class probabilities = softmax over the logits, background (class 0) dropped;
per class the ``pre_nms_top_k`` (400) best anchors above ``score_threshold``
(0.01); per-class NMS at IoU 0.5; the ``max_detections`` (200) best of all
classes. The older v1 tree (d38a116) used ``score_threshold=0.05``,
no pre-NMS top-k and up to 200 detections per class:
``postprocess_detections(..., score_threshold=0.05, pre_nms_top_k=None,
max_detections_per_class=200, max_detections=200 * (num_classes - 1))``.
"""

from __future__ import annotations

from typing import Optional

import tensorflow as tf

from mvit3_keras.detection.box_coder import (
    CENTER_VARIANCE,
    SIZE_VARIANCE,
    center_to_corner,
    decode_boxes,
)

SCORE_THRESHOLD = 0.01
NMS_IOU_THRESHOLD = 0.5
PRE_NMS_TOP_K = 400
MAX_DETECTIONS = 200


def postprocess_detections(
    confidences,
    locations,
    anchors,
    *,
    score_threshold: float = SCORE_THRESHOLD,
    iou_threshold: float = NMS_IOU_THRESHOLD,
    pre_nms_top_k: Optional[int] = PRE_NMS_TOP_K,
    max_detections_per_class: Optional[int] = None,
    max_detections: int = MAX_DETECTIONS,
    center_variance: float = CENTER_VARIANCE,
    size_variance: float = SIZE_VARIANCE,
) -> dict:
    """Final detections of a batch (padded to ``max_detections``).

    Args:
        confidences: ``[B, N, C]`` class logits (class 0 = background).
        locations: ``[B, N, 4]`` encoded boxes.
        anchors: ``[N, 4]`` center-form anchors.

    Returns:
        ``{"boxes": [B, K, 4] (x1, y1, x2, y2), image-normalised,
        "scores": [B, K], "classes": [B, K] int32 (official labels, 1..C-1),
        "num_detections": [B] int32}``; entries past ``num_detections`` are 0.
    """
    confidences = tf.convert_to_tensor(confidences, tf.float32)
    scores = tf.nn.softmax(confidences, axis=-1)[..., 1:]  # [B, N, C-1]
    boxes = center_to_corner(decode_boxes(locations, anchors, center_variance, size_variance))
    num_anchors = confidences.shape[1]
    if pre_nms_top_k and (num_anchors is None or pre_nms_top_k < num_anchors):
        top_scores, top_index = tf.math.top_k(tf.transpose(scores, [0, 2, 1]), pre_nms_top_k)
        class_boxes = tf.gather(boxes, top_index, batch_dims=1)  # [B, C-1, k, 4]
        nms_boxes = tf.transpose(class_boxes, [0, 2, 1, 3])  # [B, k, C-1, 4]
        nms_scores = tf.transpose(top_scores, [0, 2, 1])  # [B, k, C-1]
        candidates = pre_nms_top_k
    else:
        nms_boxes, nms_scores = boxes[:, :, None, :], scores
        candidates = num_anchors or max_detections
    per_class = max_detections_per_class or candidates
    result = tf.image.combined_non_max_suppression(
        nms_boxes,
        nms_scores,
        max_output_size_per_class=per_class,
        max_total_size=max_detections,
        iou_threshold=iou_threshold,
        score_threshold=score_threshold,
        pad_per_class=False,
        clip_boxes=False,
    )
    valid = tf.sequence_mask(result.valid_detections, max_detections)
    classes = tf.where(valid, tf.cast(result.nmsed_classes, tf.int32) + 1, 0)
    return {
        "boxes": result.nmsed_boxes,
        "scores": result.nmsed_scores,
        "classes": classes,
        "num_detections": tf.cast(result.valid_detections, tf.int32),
    }
