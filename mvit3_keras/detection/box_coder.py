"""SSD box encoding, decoding and anchor matching (official ``box_utils`` / ``SSDMatcher``).

Boxes are image-normalised. Center form ``(cx, cy, w, h)``, corner form
``(x1, y1, x2, y2)``. Encoding (SSD paper eq. 2, ``convert_boxes_to_locations``)::

    t_cx = (g_cx - a_cx) / a_w / center_variance      t_w = log(g_w / a_w) / size_variance
    t_cy = (g_cy - a_cy) / a_h / center_variance      t_h = log(g_h / a_h) / size_variance

with center variance 0.1 and size variance 0.2 (official yamls). Matching
(``assign_priors``): every anchor takes the ground-truth box of highest IoU
(IoU with ``eps=1e-5`` in the denominator); every ground-truth box claims its
best anchor (the last box wins a shared anchor); anchors whose IoU is below
``iou_threshold`` (0.5) get label 0 (background). An image without boxes
yields all-background targets. All functions are TensorFlow ops, usable in a
``tf.data`` pipeline.
"""

from __future__ import annotations

import tensorflow as tf

CENTER_VARIANCE = 0.1
SIZE_VARIANCE = 0.2
MATCH_IOU_THRESHOLD = 0.5


def center_to_corner(boxes):
    """``(cx, cy, w, h)`` -> ``(x1, y1, x2, y2)``."""
    boxes = tf.convert_to_tensor(boxes)
    return tf.concat(
        [boxes[..., :2] - boxes[..., 2:] * 0.5, boxes[..., :2] + boxes[..., 2:] * 0.5], axis=-1
    )


def corner_to_center(boxes):
    """``(x1, y1, x2, y2)`` -> ``(cx, cy, w, h)``."""
    boxes = tf.convert_to_tensor(boxes)
    return tf.concat(
        [(boxes[..., :2] + boxes[..., 2:]) * 0.5, boxes[..., 2:] - boxes[..., :2]], axis=-1
    )


def encode_boxes(
    boxes_center, anchors, center_variance=CENTER_VARIANCE, size_variance=SIZE_VARIANCE
):
    """Regression targets of center-form boxes w.r.t. center-form anchors."""
    boxes_center = tf.convert_to_tensor(boxes_center, tf.float32)
    anchors = tf.convert_to_tensor(anchors, tf.float32)
    centers = (boxes_center[..., :2] - anchors[..., :2]) / anchors[..., 2:] / center_variance
    sizes = tf.math.log(boxes_center[..., 2:] / anchors[..., 2:]) / size_variance
    return tf.concat([centers, sizes], axis=-1)


def decode_boxes(locations, anchors, center_variance=CENTER_VARIANCE, size_variance=SIZE_VARIANCE):
    """Inverse of :func:`encode_boxes` (``convert_locations_to_boxes``): center form."""
    locations = tf.convert_to_tensor(locations, tf.float32)
    anchors = tf.convert_to_tensor(anchors, tf.float32)
    sizes = tf.exp(locations[..., 2:] * size_variance) * anchors[..., 2:]
    centers = locations[..., :2] * center_variance * anchors[..., 2:] + anchors[..., :2]
    return tf.concat([centers, sizes], axis=-1)


def box_iou(boxes0, boxes1, eps: float = 1e-5):
    """IoU of corner-form boxes (broadcasting), as the official ``box_iou``."""
    boxes0 = tf.convert_to_tensor(boxes0, tf.float32)
    boxes1 = tf.convert_to_tensor(boxes1, tf.float32)

    def area(lt, rb):
        hw = tf.maximum(rb - lt, 0.0)
        return hw[..., 0] * hw[..., 1]

    overlap = area(
        tf.maximum(boxes0[..., :2], boxes1[..., :2]), tf.minimum(boxes0[..., 2:], boxes1[..., 2:])
    )
    area0 = area(boxes0[..., :2], boxes0[..., 2:])
    area1 = area(boxes1[..., :2], boxes1[..., 2:])
    return overlap / (area0 + area1 - overlap + eps)


def match_anchors(
    gt_boxes,
    gt_labels,
    anchors,
    *,
    iou_threshold=MATCH_IOU_THRESHOLD,
    center_variance=CENTER_VARIANCE,
    size_variance=SIZE_VARIANCE,
):
    """Training targets of one image (the official ``SSDMatcher``).

    Args:
        gt_boxes: ``[M, 4]`` corner-form ground-truth boxes (normalised).
        gt_labels: ``[M]`` int labels in ``1..num_classes-1`` (0 = background).
        anchors: ``[N, 4]`` center-form anchors (:func:`generate_anchors`).

    Returns:
        ``(box_coordinates [N, 4] float32 encoded, box_labels [N] int32)``:
        the ``y`` of :class:`SSDMultiBoxLoss` (``{"box_coordinates",
        "box_labels"}``).
    """
    gt_boxes = tf.reshape(tf.convert_to_tensor(gt_boxes, tf.float32), [-1, 4])
    gt_labels = tf.reshape(tf.cast(gt_labels, tf.int32), [-1])
    anchors = tf.convert_to_tensor(anchors, tf.float32)
    empty = tf.equal(tf.size(gt_labels), 0)
    gt_boxes = tf.cond(empty, lambda: tf.zeros([1, 4], tf.float32), lambda: gt_boxes)
    gt_labels = tf.cond(empty, lambda: tf.zeros([1], tf.int32), lambda: gt_labels)

    anchors_corner = center_to_corner(anchors)
    ious = box_iou(gt_boxes[None, :, :], anchors_corner[:, None, :])  # [N, M]
    best_target = tf.argmax(ious, axis=1, output_type=tf.int32)  # per anchor
    best_iou = tf.reduce_max(ious, axis=1)
    best_anchor = tf.argmax(ious, axis=0, output_type=tf.int32)  # per target [M]
    num_anchors = tf.shape(anchors)[0]
    num_targets = tf.shape(gt_labels)[0]
    # Each target claims its best anchor; for an anchor claimed twice the last target wins.
    claims = tf.one_hot(best_anchor, num_anchors, dtype=tf.int32)  # [M, N]
    claimant = tf.reduce_max(claims * (tf.range(num_targets)[:, None] + 1), axis=0) - 1
    claimed = claimant >= 0
    best_target = tf.where(claimed, claimant, best_target)
    best_iou = tf.where(claimed, tf.fill(tf.shape(best_iou), 2.0), best_iou)

    labels = tf.gather(gt_labels, best_target)
    labels = tf.where(best_iou < iou_threshold, tf.zeros_like(labels), labels)
    matched = corner_to_center(tf.gather(gt_boxes, best_target))
    coordinates = encode_boxes(matched, anchors, center_variance, size_variance)
    return coordinates, labels
