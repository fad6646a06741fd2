"""The bundled offline datasets behind ``--dataset demo``.

* classification: scikit-learn's handwritten digits (UCI ML hand-written digits,
  1797 real 8x8 grey-scale scans, 10 classes), shipped inside the scikit-learn
  wheel, so it is available everywhere without a download. Grey values 0..16
  are scaled to 0..255 and repeated over 3 channels; a fixed stratified split
  (seeded) gives 1438 training and 359 validation images.
* segmentation: generated "shapes" scenes with exact masks (a textured, noisy
  background with up to three discs, squares and triangles of random colours,
  sizes and positions; classes 0 background, 1 disc, 2 square, 3 triangle).
  Deterministic for a given seed.
"""

from __future__ import annotations

import functools

import numpy as np

from training.datasets.base import DatasetSource

DIGITS_VAL_FRACTION = 0.2
DIGITS_SPLIT_SEED = 0
SHAPES_CLASSES = ("background", "disc", "square", "triangle")


@functools.lru_cache(maxsize=1)
def digits_arrays():
    """``(train_images, train_labels, val_images, val_labels)``: uint8 [N, 8, 8, 3], int64."""
    from sklearn.datasets import load_digits

    data = load_digits()
    images = np.clip(np.round(data.images * (255.0 / 16.0)), 0, 255).astype(np.uint8)
    images = np.repeat(images[..., None], 3, axis=-1)
    labels = data.target.astype(np.int64)
    rng = np.random.RandomState(DIGITS_SPLIT_SEED)
    val_idx = []
    for c in range(10):  # stratified: the same fraction of every class
        idx = np.flatnonzero(labels == c)
        rng.shuffle(idx)
        val_idx.extend(idx[: int(round(len(idx) * DIGITS_VAL_FRACTION))])
    val_mask = np.zeros(len(labels), bool)
    val_mask[val_idx] = True
    return images[~val_mask], labels[~val_mask], images[val_mask], labels[val_mask]


def digits_source() -> DatasetSource:
    import tensorflow as tf

    def load(split, *, shuffle_files=False, seed=None):
        xtr, ytr, xva, yva = digits_arrays()
        x, y = (xtr, ytr) if split == "train" else (xva, yva)
        return tf.data.Dataset.from_tensor_slices({"image": x, "label": y})

    def num_examples(split):
        xtr, _, xva, _ = digits_arrays()
        return len(xtr) if split == "train" else len(xva)

    return DatasetSource(
        name="demo",
        task="classification",
        num_classes=10,
        train_split="train",
        val_split="validation",
        load=load,
        num_examples=num_examples,
        class_names=[str(i) for i in range(10)],
        description="scikit-learn digits (real 8x8 scans), bundled",
    )


def make_shapes(num: int, size: int = 64, seed: int = 0):
    """``(images uint8 [num, size, size, 3], masks uint8 [num, size, size])``."""
    rng = np.random.RandomState(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    images = np.empty((num, size, size, 3), np.uint8)
    masks = np.zeros((num, size, size), np.uint8)
    for i in range(num):
        # background: a smooth colour gradient + a low-frequency pattern + noise
        c0, c1 = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
        t = (xx * rng.uniform(-1, 1) + yy * rng.uniform(-1, 1)) / size
        t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
        img = c0 * (1 - t[..., None]) + c1 * t[..., None]
        f = rng.uniform(0.05, 0.3)
        img += 25 * np.sin(f * xx + rng.uniform(0, 6))[..., None] * np.cos(f * yy)[..., None]
        mask = np.zeros((size, size), np.uint8)
        for _ in range(rng.randint(1, 4)):
            cls = rng.randint(1, 4)
            r = rng.uniform(size * 0.1, size * 0.25)
            cy, cx = rng.uniform(r, size - r, 2)
            if cls == 1:
                inside = (yy - cy) ** 2 + (xx - cx) ** 2 <= r**2
            elif cls == 2:
                inside = (np.abs(yy - cy) <= r * 0.85) & (np.abs(xx - cx) <= r * 0.85)
            else:  # upward triangle
                top = cy - r
                rel = (yy - top) / (2 * r)
                inside = (rel >= 0) & (rel <= 1) & (np.abs(xx - cx) <= rel * r)
            colour = rng.uniform(0, 255, 3)
            img[inside] = colour
            mask[inside] = cls
        img += rng.normal(0, 8, img.shape)
        images[i] = np.clip(img, 0, 255).astype(np.uint8)
        masks[i] = mask
    return images, masks


SHAPES_SPLITS = {"train": (400, 1), "validation": (100, 2)}


def shapes_source(size: int = 64) -> DatasetSource:
    import tensorflow as tf

    @functools.lru_cache(maxsize=2)
    def arrays(split):
        num, seed = SHAPES_SPLITS["train" if split == "train" else "validation"]
        return make_shapes(num, size, seed)

    def load(split, *, shuffle_files=False, seed=None):
        images, masks = arrays(split)
        return tf.data.Dataset.from_tensor_slices({"image": images, "mask": masks.astype(np.int32)})

    return DatasetSource(
        name="demo",
        task="segmentation",
        num_classes=len(SHAPES_CLASSES),
        train_split="train",
        val_split="validation",
        load=load,
        num_examples=lambda split: SHAPES_SPLITS["train" if split == "train" else "validation"][0],
        class_names=list(SHAPES_CLASSES),
        ignore_index=255,
        description="generated shapes scenes with exact masks",
    )
