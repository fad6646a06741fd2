"""Accuracy of a ``.tflite`` model side by side with its float Keras model.

Classification: top-1 / top-5 of both, agreement of the top-1 predictions, and
the cosine similarity of the logits. Segmentation: mIoU (and pixel accuracy) of
both and the agreement of the per-pixel predictions. The TFLite model runs in
LiteRT (:class:`quantization.runtime.TFLiteRunner`).
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from mvit3_keras import progress
from quantization.runtime import TFLiteRunner
from quantization.verify import cosine_similarity


def _topk(logits: np.ndarray, labels: np.ndarray, k: int) -> float:
    k = min(k, logits.shape[-1])
    top = np.argsort(-logits, axis=-1)[:, :k]
    return float(np.mean(np.any(top == labels[:, None], axis=1)))


def classification_metrics(logits: np.ndarray, labels: np.ndarray) -> dict:
    return {"top1": _topk(logits, labels, 1), "top5": _topk(logits, labels, 5)}


def confusion_matrix(
    pred: np.ndarray, labels: np.ndarray, num_classes: int, ignore_index: Optional[int] = 255
) -> np.ndarray:
    pred, labels = pred.reshape(-1), labels.reshape(-1)
    keep = labels != ignore_index if ignore_index is not None else np.ones_like(labels, bool)
    keep &= (labels >= 0) & (labels < num_classes)
    idx = labels[keep].astype(np.int64) * num_classes + pred[keep].astype(np.int64)
    return np.bincount(idx, minlength=num_classes**2).reshape(num_classes, num_classes)


def segmentation_metrics(
    pred: np.ndarray, labels: np.ndarray, num_classes: int, ignore_index: Optional[int] = 255
) -> dict:
    cm = confusion_matrix(pred, labels, num_classes, ignore_index)
    inter = np.diag(cm).astype(np.float64)
    union = cm.sum(0) + cm.sum(1) - inter
    present = union > 0
    iou = inter[present] / union[present]
    return {
        "miou": float(iou.mean()) if iou.size else 0.0,
        "pixel_accuracy": float(inter.sum() / max(cm.sum(), 1)),
    }


def _keras_outputs(keras_model, images, batch_size):
    out = keras_model.predict(images, batch_size=batch_size, verbose=0)
    if isinstance(out, dict):
        out = out.get("logits", next(iter(out.values())))
    return np.asarray(out)


def evaluate_tflite(
    tflite_model,
    images: np.ndarray,
    labels: np.ndarray,
    *,
    keras_model=None,
    task: str = "classification",
    num_classes: Optional[int] = None,
    ignore_index: Optional[int] = 255,
    num_threads: Optional[int] = None,
    batch_size: int = 64,
) -> dict:
    """Metrics of the TFLite model (and of ``keras_model`` when given) on the data."""
    score = TASK_METRICS.get(task)
    if score is None:
        raise ValueError(f"task must be one of {', '.join(TASK_METRICS)}, got {task!r}")
    runner = TFLiteRunner(tflite_model, num_threads=num_threads)
    chunks = range(0, len(images), batch_size)
    outs = []
    for start in progress.counted(chunks, len(chunks), f"evaluating in {runner.backend}"):
        out = runner(images[start : start + batch_size])
        outs.append(out[0] if isinstance(out, list) else out)
    out = np.concatenate(outs)
    result = {"num_images": int(len(images)), "runtime": runner.backend}
    ref = None if keras_model is None else _keras_outputs(keras_model, images, batch_size)
    result.update(score(out, ref, labels, num_classes=num_classes, ignore_index=ignore_index))
    return result


def classification_result(out, ref, labels, **_) -> dict:
    """Top-1 / top-5 of the file (and of the Keras model), their agreement and the logit
    cosine."""
    result = {"tflite": classification_metrics(out, labels)}
    if ref is not None:
        result["keras"] = classification_metrics(ref, labels)
        result["agreement"] = float(np.mean(out.argmax(-1) == ref.argmax(-1)))
        cos = cosine_similarity(out, ref)
        result["cosine_mean"] = float(cos.mean())
        result["cosine_min"] = float(cos.min())
    return result


def segmentation_result(out, ref, labels, *, num_classes=None, ignore_index=255) -> dict:
    """mIoU / pixel accuracy of the file's masks (and of the Keras model's), and the
    pixel agreement of the two."""
    pred = out if out.ndim == 3 else out.argmax(-1)
    if num_classes is None:
        num_classes = (
            int(out.shape[-1]) if out.ndim == 4 else int(max(pred.max(), labels.max()) + 1)
        )
    if pred.shape[1:] != labels.shape[1:]:
        raise ValueError(
            f"prediction maps {pred.shape[1:]} and label masks {labels.shape[1:]} differ; export "
            "the segmenter with output_resolution='input'"
        )
    result = {"tflite": segmentation_metrics(pred, labels, num_classes, ignore_index)}
    if ref is not None:
        ref_pred = ref if ref.ndim == 3 else ref.argmax(-1)
        result["keras"] = segmentation_metrics(ref_pred, labels, num_classes, ignore_index)
        result["agreement"] = float(np.mean(pred == ref_pred))
        if out.ndim == 4 and ref.ndim == 4:
            result["cosine_mean"] = float(cosine_similarity(out, ref).mean())
    return result


TASK_METRICS = {"classification": classification_result, "segmentation": segmentation_result}
"""How a file's outputs are scored, per task."""


def format_evaluation(result: dict, name: str = "tflite") -> str:
    t = result["tflite"]
    if "top1" in t:
        line = f"{name}: top-1 {100 * t['top1']:.2f}%  top-5 {100 * t['top5']:.2f}%"
        if "keras" in result:
            k = result["keras"]
            line += (
                f" | keras float: top-1 {100 * k['top1']:.2f}%  top-5 {100 * k['top5']:.2f}%"
                f" | agreement {100 * result['agreement']:.2f}%"
                f" | logit cosine {result['cosine_mean']:.5f} (min {result['cosine_min']:.5f})"
            )
    else:
        line = f"{name}: mIoU {100 * t['miou']:.2f}%  pixel acc {100 * t['pixel_accuracy']:.2f}%"
        if "keras" in result:
            k = result["keras"]
            line += (
                f" | keras float: mIoU {100 * k['miou']:.2f}% | pixel agreement "
                f"{100 * result['agreement']:.2f}%"
            )
    return line + f"  ({result['num_images']} images, {result['runtime']})"
