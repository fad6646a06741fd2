"""Object detection: the official SSDLite head, anchors, box coder, NMS, loss, TFLite export."""

from mvit3_keras.detection.anchors import AnchorConfig, feature_map_sizes, generate_anchors
from mvit3_keras.detection.box_coder import (
    box_iou,
    center_to_corner,
    corner_to_center,
    decode_boxes,
    encode_boxes,
    match_anchors,
)
from mvit3_keras.detection.detector import COCO_NUM_CLASSES, SSDDetector, create_detector
from mvit3_keras.detection.export import detection_postprocess_module
from mvit3_keras.detection.loss import SSDMultiBoxLoss, hard_negative_mining
from mvit3_keras.detection.postprocess import postprocess_detections

__all__ = [
    "AnchorConfig",
    "COCO_NUM_CLASSES",
    "SSDDetector",
    "SSDMultiBoxLoss",
    "box_iou",
    "center_to_corner",
    "corner_to_center",
    "create_detector",
    "decode_boxes",
    "detection_postprocess_module",
    "encode_boxes",
    "feature_map_sizes",
    "generate_anchors",
    "hard_negative_mining",
    "match_anchors",
    "postprocess_detections",
]
