"""Calibration (representative) data for post-training quantization.

``representative_data`` may be a NumPy array ``(N, H, W, C)``, a
``tf.data.Dataset`` (of images, ``(image, label)`` pairs or dicts with an
``"image"`` key; batched or not) or any iterable / generator / zero-argument
callable yielding the same. The images must be preprocessed exactly as the
model sees them in training (TF Model Garden rule: calibrate with the training
input pipeline) - for these models float images in [0, 1], channels last.

It may also be a folder (``str`` / ``os.PathLike``) of JPEG / PNG files of any
size (:func:`folder_images`): each image goes through the evaluation transform of
the model's official recipe (:func:`evaluation_transform`, built from
:mod:`training.augment`: ml-cvnets' ``data/transforms/image_pil.py`` resize +
center crop for classifiers, a plain resize for segmenters and detectors).
"""

from __future__ import annotations

import os
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


IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")


def is_image_folder(data) -> bool:
    """Whether ``representative_data`` names a folder (a ``str`` / path)."""
    return isinstance(data, (str, os.PathLike))


def _image_files(folder: str) -> list:
    if not os.path.isdir(folder):
        raise ValueError(f"calibration image folder {folder!r} does not exist (or is not a folder)")
    files = []
    for root, dirs, names in os.walk(folder):
        dirs.sort()
        files += [
            os.path.join(root, n) for n in sorted(names) if n.lower().endswith(IMAGE_EXTENSIONS)
        ]
    return files


def _recipe_values(model):
    """The typed configuration of the official recipe of ``model``'s variant (the
    defaults when the model carries no :class:`mvit3_keras.ModelRecord`; detectors
    use their backbone's classification recipe)."""
    from mvit3_keras import model_record
    from training import recipes
    from training.config import TrainingConfig

    record = model_record(model) if model is not None else None
    if record is None:
        return TrainingConfig()
    task = record.task if record.task in recipes.DEFAULT_RECIPE_RULES else "classification"
    name = recipes.default_recipe(record.variant, task, "imagenet")
    return recipes.get_recipe(name).config()


def evaluation_transform(model, input_shape: tuple):
    """``uint8 [h, w, 3]`` image -> float32 ``input_shape`` in [0, 1]: the evaluation
    transform of ``model``'s official recipe (``training.augment``): classifiers
    resize the shorter side and center crop (the recipe's 288 / 256 ratio and
    interpolation), segmenters and detectors resize to the input size."""
    import tensorflow as tf

    from mvit3_keras import model_record
    from training import augment
    from training.tasks import TASKS

    values = _recipe_values(model)
    height, width = int(input_shape[0]), int(input_shape[1])
    interpolation = values.image_augmentation.resize.interpolation
    channel_order = values.runtime.channel_order
    record = model_record(model) if model is not None else None
    task = TASKS.get(record.task) if record is not None else None  # detectors: none
    crops = (record is None or (task is not None and task.center_crop_eval)) and height == width

    def transform(image):
        if crops:
            short, crop = augment.eval_sizes(values, height)
            image = augment.resize_shorter_side(image, short, interpolation)
            image = augment.center_crop(image, crop)
        else:
            image = augment.resize(image, (height, width), interpolation)
        return augment.to_model_input(image, channel_order).numpy()

    return lambda image: transform(tf.convert_to_tensor(image))


def folder_images(folder, transform, *, num_samples: int = 100) -> np.ndarray:
    """Up to ``num_samples`` images of ``folder`` (JPEG / PNG, sorted paths, sub-folders
    included) through ``transform`` (:func:`evaluation_transform`). Files that do not
    decode are skipped; a folder without a readable image raises ``ValueError``."""
    import tensorflow as tf

    folder = os.fspath(folder)
    files = _image_files(folder)
    images, unreadable = [], []
    for path in files:
        if len(images) >= num_samples:
            break
        try:
            data = tf.io.read_file(path)
            image = tf.io.decode_image(data, channels=3, expand_animations=False)
        except (tf.errors.OpError, ValueError):
            unreadable.append(os.path.basename(path))
            continue
        images.append(transform(image))
    if not images:
        found = f"{len(files)} unreadable file(s), e.g. {unreadable[0]}" if files else "no file"
        raise ValueError(
            f"calibration image folder {folder!r} has no readable image ({found}): it needs "
            f"JPEG / PNG files ({', '.join(IMAGE_EXTENSIONS)}), in it or in sub-folders"
        )
    progress.stage(
        f"calibration: {len(images)} images of {folder} (evaluation transform)"
        + (f"; {len(unreadable)} unreadable skipped" if unreadable else "")
    )
    return np.stack(images).astype(np.float32)
