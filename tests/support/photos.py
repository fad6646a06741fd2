"""Real photos without a download: scikit-learn's two sample images (``china.jpg``,
``flower.jpg``, 427x640 RGB), the one loader of the tests and the benchmarks."""

from __future__ import annotations

import functools

import numpy as np

SAMPLE_PHOTO_NAMES = ("china.jpg", "flower.jpg")


@functools.lru_cache(maxsize=1)
def sample_images() -> tuple:
    """The sample photos as read-only uint8 ``[H, W, 3]`` arrays (RGB), in the order
    of :data:`SAMPLE_PHOTO_NAMES`."""
    from sklearn.datasets import load_sample_image

    images = []
    for name in SAMPLE_PHOTO_NAMES:
        image = np.asarray(load_sample_image(name), dtype=np.uint8)
        image.setflags(write=False)
        images.append(image)
    return tuple(images)


@functools.lru_cache(maxsize=1)
def sample_photos() -> tuple:
    """:func:`sample_images` as read-only float32 arrays in [0, 1]."""
    photos = []
    for image in sample_images():
        photo = image.astype(np.float32) / 255.0
        photo.setflags(write=False)
        photos.append(photo)
    return tuple(photos)


def photo_crops(num: int, size: int, *, seed: int = 0) -> np.ndarray:
    """``num`` float32 crops ``[num, size, size, 3]`` in [0, 1] of :func:`sample_photos`:
    square crops of a random side (a third of the short side up to all of it),
    resized bilinearly to ``size``, half of them flipped left-right."""
    import tensorflow as tf

    photos = sample_photos()
    rng = np.random.default_rng(seed)
    out = []
    for i in range(num):
        photo = photos[i % len(photos)]
        h, w = photo.shape[:2]
        side = int(rng.integers(min(h, w) // 3, min(h, w) + 1))
        top = int(rng.integers(0, h - side + 1))
        left = int(rng.integers(0, w - side + 1))
        crop = tf.image.resize(photo[top : top + side, left : left + side], (size, size)).numpy()
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
        out.append(crop)
    return np.clip(np.stack(out), 0.0, 1.0).astype(np.float32)
