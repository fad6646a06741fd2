"""Detections of an exported SSD detector, as LiteRT gives them to an app."""

from __future__ import annotations

from quantization.app_clients import litert_signature_outputs


def litert_detections(path, images) -> list:
    """Per image: ``[(class index, box (ymin, xmin, ymax, xmax) in [0, 1])]`` of the
    ``TFLite_Detection_PostProcess`` outputs of ``path``, run by LiteRT through its
    signature in a separate process (integer inputs quantized as the file says)."""
    out = []
    for result in litert_signature_outputs(path, images):
        count = int(result["num_detections"])
        classes = result["detection_classes"][:count].astype(int)
        out.append(list(zip(classes, result["detection_boxes"][:count])))
    return out
