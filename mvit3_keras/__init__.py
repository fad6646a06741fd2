"""mvit3-keras: MobileViTv3 (and MobileViTv1/v2 baselines) in Keras 3 for edge devices."""

__version__ = "0.1.0"

from mvit3_keras import layers  # noqa: F401  (registers the custom layers)
from mvit3_keras.backbone import FEATURE_KEYS, backbone_features, create_backbone, create_model
from mvit3_keras.inference import inference_function, optimize_for_inference
from mvit3_keras.macs import count_macs
from mvit3_keras.recorded_model import (
    MobileViTModel,
    ModelRecord,
    attach_model_record,
    model_record,
    rebuild_model,
)
from mvit3_keras.registry import get_spec, list_models
from mvit3_keras.summary import count_params

__all__ = [
    "FEATURE_KEYS",
    "backbone_features",
    "create_backbone",
    "create_model",
    "count_macs",
    "count_params",
    "get_spec",
    "list_models",
    "MobileViTModel",
    "ModelRecord",
    "attach_model_record",
    "model_record",
    "rebuild_model",
    "optimize_for_inference",
    "inference_function",
]

from mvit3_keras.convert import (  # noqa: E402
    CheckpointMismatchError,
    load_cvnets_weights,
    read_state_dict,
    to_cvnets_state_dict,
)

__all__ += [
    "CheckpointMismatchError",
    "load_cvnets_weights",
    "read_state_dict",
    "to_cvnets_state_dict",
]

# Dense prediction: segmentation (DeepLabv3 / PSPNet) and SSDLite detection heads.
from mvit3_keras.backbone_weights import load_backbone_weights  # noqa: E402
from mvit3_keras.detection import (  # noqa: E402
    SSDDetector,
    SSDMultiBoxLoss,
    create_detector,
    decode_boxes,
    encode_boxes,
    generate_anchors,
    match_anchors,
    postprocess_detections,
)
from mvit3_keras.segmentation import (  # noqa: E402
    SegmentationCrossEntropy,
    Segmenter,
    create_segmenter,
)

__all__ += [
    "SSDDetector",
    "SSDMultiBoxLoss",
    "SegmentationCrossEntropy",
    "Segmenter",
    "create_detector",
    "create_segmenter",
    "decode_boxes",
    "encode_boxes",
    "generate_anchors",
    "load_backbone_weights",
    "match_anchors",
    "postprocess_detections",
]
