"""The model side of the TFLite detector export: the standard
``TFLite_Detection_PostProcess`` custom op after the SSD network.

As the TensorFlow Object Detection API does (``export_tflite_graph_lib_tf2``),
the post-processing is an empty ``tf.function`` whose
``experimental_implements`` signature names the op and its attributes; the
TFLite converter legalises it into the custom op that every TFLite / LiteRT
runtime ships (no Flex ops). The op inputs are:

* box encodings ``[1, N, 4]`` in the op's ``(ty, tx, th, tw)`` order (the
  official locations are ``(tx, ty, tw, th)``: reordered in the graph), with
  ``y_scale = x_scale = 1 / center_variance`` (10) and ``h_scale = w_scale =
  1 / size_variance`` (5), which is exactly the official decoding;
* class scores ``[1, N, classes]`` = softmax of the logits, background first;
* anchors ``[N, 4]`` as ``(cy, cx, h, w)`` constants.

Outputs (signature names; ``interpreter.get_signature_runner()`` returns them
by name): ``detection_boxes [1, K, 4]`` as ``(ymin, xmin, ymax, xmax)``
normalised, ``detection_classes [1, K]`` (float, **0-based without the
background**, i.e. official label - 1), ``detection_scores [1, K]``,
``num_detections [1]``. ``use_regular_nms=True`` (default) is per-class NMS
like the official code; ``False`` is the faster class-agnostic variant.

The conversion itself (LiteRT converter, checks, verification, atomic write)
is ``quantization.export_tflite``, the same path as every other model.
"""

from __future__ import annotations

import tensorflow as tf

OP_NAME = "TFLite_Detection_PostProcess"


def _implements_signature(
    *,
    num_classes,
    max_detections,
    max_classes_per_detection,
    detections_per_class,
    use_regular_nms,
    score_threshold,
    iou_threshold,
    center_variance,
    size_variance,
) -> str:
    attrs = [
        ("max_detections", "i", int(max_detections)),
        ("max_classes_per_detection", "i", int(max_classes_per_detection)),
        ("detections_per_class", "i", int(detections_per_class)),
        ("use_regular_nms", "b", "true" if use_regular_nms else "false"),
        ("nms_score_threshold", "f", float(score_threshold)),
        ("nms_iou_threshold", "f", float(iou_threshold)),
        ("y_scale", "f", 1.0 / center_variance),
        ("x_scale", "f", 1.0 / center_variance),
        ("h_scale", "f", 1.0 / size_variance),
        ("w_scale", "f", 1.0 / size_variance),
        ("num_classes", "i", int(num_classes)),
    ]
    parts = [f'name: "{OP_NAME}"']
    for key, kind, value in attrs:
        if kind == "f":
            value = repr(float(value))
        parts.append(f'attr {{ key: "{key}" value {{ {kind}: {value} }} }}')
    return " ".join(parts)


def _serving_module(network, postprocess, anchors_yxhw) -> tf.Module:
    """The ``tf.Module`` whose ``serve(image)`` runs ``network`` (outputs
    ``{"confidences", "locations"}``) and ``postprocess``."""
    h, w, c = network.input_shape[1:]
    # The weights enter the graph as constants (a stateless call), so the
    # converter folds them; freezing a traced graph afterwards would inline the
    # composite function and lose the custom op.
    trainable = [tf.constant(v.numpy()) for v in network.trainable_variables]
    non_trainable = [tf.constant(v.numpy()) for v in network.non_trainable_variables]

    class DetectionModule(tf.Module):
        def __init__(self):
            super().__init__(name="detection_postprocess")

        @tf.function(input_signature=[tf.TensorSpec([1, h, w, c], tf.float32, name="image")])
        def serve(self, image):
            outputs, _ = network.stateless_call(trainable, non_trainable, image, training=False)
            scores = tf.nn.softmax(outputs["confidences"], axis=-1)
            encodings = tf.gather(outputs["locations"], [1, 0, 3, 2], axis=-1)
            boxes, classes, det_scores, num = postprocess(encodings, scores, anchors_yxhw)
            return {
                "detection_boxes": boxes,
                "detection_classes": classes,
                "detection_scores": det_scores,
                "num_detections": num,
            }

    return DetectionModule()


def detection_postprocess_module(
    detector,
    *,
    max_detections: int = 100,
    detections_per_class: int = 100,
    score_threshold: float = 0.01,
    iou_threshold: float = 0.5,
    use_regular_nms: bool = True,
    max_classes_per_detection: int = 1,
    network=None,
) -> tf.Module:
    """A ``tf.Module`` whose ``serve(image)`` (batch 1, the detector's static size)
    runs the detector and the ``TFLite_Detection_PostProcess`` composite.

    ``network``: the functional graph to run in place of ``detector`` (the same
    outputs), e.g. its export formulation from
    ``quantization.graph_rewrite.prepare_for_export``; anchors and decoding come from
    ``detector``.

    In TensorFlow the composite is a placeholder (returns zeros); only the
    converted model computes detections. Convert
    ``module.serve.get_concrete_function()`` together with ``module`` (the
    trackable keeps the composite for legalisation), as
    ``quantization.export_tflite`` does for a detector.
    """
    h, w, _ = detector.input_shape[1:]
    if h is None or w is None:
        raise ValueError(
            "TFLite detection export needs a fixed input size: build the detector with "
            "create_detector(..., input_shape=(320, 320, 3))"
        )
    cfg = detector.detection_config
    anchors_yxhw = tf.constant(detector.anchors()[:, [1, 0, 3, 2]], tf.float32)
    signature = _implements_signature(
        num_classes=detector.num_classes - 1,
        max_detections=max_detections,
        max_classes_per_detection=max_classes_per_detection,
        detections_per_class=detections_per_class,
        use_regular_nms=use_regular_nms,
        score_threshold=score_threshold,
        iou_threshold=iou_threshold,
        center_variance=cfg["center_variance"],
        size_variance=cfg["size_variance"],
    )

    @tf.function(experimental_implements=signature)
    def postprocess(box_encodings, class_predictions, anchors):  # noqa: ARG001
        zero = tf.constant(0.0, tf.float32)
        return zero, zero, zero, zero

    return _serving_module(detector if network is None else network, postprocess, anchors_yxhw)
