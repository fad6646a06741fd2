"""Calibration (representative) data for post-training quantization.

``representative_data`` may be a NumPy array ``(N, H, W, C)``, a
``tf.data.Dataset`` (of images, ``(image, label)`` pairs or dicts with an
``"image"`` key; batched or not) or any iterable / generator / zero-argument
callable yielding the same. The images must be preprocessed exactly as the
model sees them in training (TF Model Garden rule: calibrate with the training
input pipeline) - for these models float images in [0, 1], channels last.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from mvit3_keras import progress


def _element_images(element):
    """The image array of one dataset / generator element."""
    if isinstance(element, dict):
        for key in ("image", "images", "inputs", "input"):
            if key in element:
                return _element_images(element[key])
        raise ValueError(
            f"calibration element is a dict without an 'image' key (keys: {sorted(element)})"
        )
    if isinstance(element, (tuple, list)):
        if not element:
            raise ValueError("empty calibration element")
        return _element_images(element[0])
    if hasattr(element, "numpy"):
        element = element.numpy()
    return np.asarray(element)


def _iterate(data):
    if callable(data) and not hasattr(data, "__iter__"):
        data = data()
    try:
        import tensorflow as tf

        if isinstance(data, tf.data.Dataset):
            return data.as_numpy_iterator()
    except ImportError:  # pragma: no cover
        pass
    return iter(data)


def collect_images(
    data,
    *,
    num_samples: int = 100,
    input_shape: Optional[tuple] = None,
) -> np.ndarray:
    """Up to ``num_samples`` float32 images ``(n, H, W, C)`` from ``data``.

    Raises a ``ValueError`` naming the problem when the data is empty, has the
    wrong shape for the model input, or looks like 0-255 pixel values.
    """
    if data is None:
        raise ValueError(
            "int8 quantization needs representative_data: a few hundred training images "
            "preprocessed like the model's input pipeline (NumPy array (N, H, W, 3), "
            "tf.data.Dataset or generator); the CLI draws them from --dataset"
        )
    if num_samples < 1:
        raise ValueError(f"num_calibration_samples must be >= 1, got {num_samples}")
    if isinstance(data, np.ndarray):
        arrays = [data[None] if data.ndim == 3 else data]
    else:
        arrays, count = [], 0
        for element in _iterate(data):
            images = _element_images(element)
            if images.ndim == 3:
                images = images[None]
            arrays.append(images)
            count += len(images)
            if count >= num_samples:
                break
    if not arrays:
        raise ValueError("representative_data yielded no images")
    images = np.concatenate(arrays)[:num_samples].astype(np.float32)
    if images.ndim != 4:
        raise ValueError(
            f"calibration images must be (N, H, W, C), got an array of shape {images.shape}"
        )
    if input_shape is not None:
        expected = tuple(int(s) for s in input_shape)
        if tuple(images.shape[1:]) != expected:
            raise ValueError(
                f"calibration images are {tuple(images.shape[1:])} but the export input is "
                f"{expected}: resize them in the input pipeline (or export with "
                f"input_shape={tuple(images.shape[1:])})"
            )
    if not np.all(np.isfinite(images)):
        raise ValueError("calibration images contain NaN or inf")
    if float(images.max()) > 2.0:
        raise ValueError(
            f"calibration images reach {float(images.max()):.1f}: these models take images "
            "in [0, 1] (divide 0-255 pixels by 255, as the training pipeline does)"
        )
    return images


def representative_dataset(images: np.ndarray, batch_size: int = 1):
    """The converter's ``representative_dataset`` callable over ``images``."""

    def generator():
        starts = range(0, len(images) - batch_size + 1, batch_size)
        for start in progress.counted(starts, len(starts), "calibrating"):
            yield [images[start : start + batch_size]]

    return generator
