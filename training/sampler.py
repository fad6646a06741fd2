"""The v1 recipe's multi-scale variable-batch sampler (MobileViT paper, section 3.2).

ml-cvnets ``data/sampler/utils.py::_image_batch_pairs`` (@d38a116) builds the
(height, width, batch) table: ``max_n_scales`` sizes evenly spaced from 160 to 320
plus the base crop 256, each rounded with ``make_divisible(., check_scale=32)``
(-> 160, 192, 256, 288, 320), and for each the batch that keeps the pixels per
batch of the base ``256 x 256 x train_batch_size0``, but never fewer than the base
batch: ``max(bs0, int(round(256*256*bs0 / (h*w), 2)))`` then ``make_divisible(.,
n_gpus)``. ``VariableBatchSampler.__iter__`` then picks one (h, w, batch) row
uniformly at random for every batch.

Here the same table drives a ``tf.data`` pipeline that streams any dataset: a
seeded stream of table rows is expanded to one (h, w) target per example, zipped
with the examples (each is cropped straight to its target by the random resized
crop) and regrouped into batches with ``group_by_window`` (the window size of a
batch is its row's batch size).

Per-replica vs global batch: the table is per device, like ml-cvnets (one process
per GPU, ``n_gpus`` only rounds); with ``tf.distribute`` the pipeline is built with
the table's batch multiplied by the number of replicas, so each replica sees the
official per-device batch.
"""

from __future__ import annotations

import numpy as np

from mvit3_keras.specs import make_divisible
from training.config import training_config


def image_batch_pairs(
    crop_size_w: int = 256,
    crop_size_h: int = 256,
    batch_size_gpu0: int = 128,
    n_gpus: int = 1,
    max_scales: int = 5,
    check_scale_div_factor: int = 32,
    min_crop_size_w: int = 160,
    max_crop_size_w: int = 320,
    min_crop_size_h: int = 160,
    max_crop_size_h: int = 320,
) -> list:
    """Sorted ``[(h, w, batch_size), ...]`` exactly as ml-cvnets computes it."""
    width_dims = list(np.linspace(min_crop_size_w, max_crop_size_w, max_scales))
    if crop_size_w not in width_dims:
        width_dims.append(crop_size_w)
    height_dims = list(np.linspace(min_crop_size_h, max_crop_size_h, max_scales))
    if crop_size_h not in height_dims:
        height_dims.append(crop_size_h)
    scales = set()
    for h, w in zip(height_dims, width_dims):
        scales.add(
            (make_divisible(h, check_scale_div_factor), make_divisible(w, check_scale_div_factor))
        )
    n_elements = crop_size_w * crop_size_h * batch_size_gpu0
    pairs = set()
    for crop_h, crop_w in scales:
        bsz = max(batch_size_gpu0, int(round(n_elements / (crop_h * crop_w), 2)))
        pairs.add((crop_h, crop_w, make_divisible(bsz, n_gpus)))
    return sorted(pairs)


def pairs_from_recipe(
    values, batch_size: int | None = None, n_gpus: int = 1, base_size: int | None = None
) -> list:
    """The ``(crop_h, crop_w, batch)`` scales of the recipe's ``sampler.vbs``."""
    values = training_config(values)
    vbs = values.sampler.vbs
    bs = int(batch_size or values.dataset.train_batch_size0)
    base_w = int(base_size or vbs.crop_size_width)
    base_h = int(base_size or vbs.crop_size_height)
    lo_w, hi_w = vbs.min_crop_size_width, vbs.max_crop_size_width
    lo_h, hi_h = vbs.min_crop_size_height, vbs.max_crop_size_height
    if base_size is not None and base_size != vbs.crop_size_width:
        # keep the official range relative to the base size (160..320 around 256)
        f = base_size / vbs.crop_size_width
        lo_w, hi_w, lo_h, hi_h = (int(round(v * f)) for v in (lo_w, hi_w, lo_h, hi_h))
    return image_batch_pairs(
        crop_size_w=base_w,
        crop_size_h=base_h,
        batch_size_gpu0=bs,
        n_gpus=n_gpus,
        max_scales=vbs.max_n_scales,
        check_scale_div_factor=vbs.check_scale,
        min_crop_size_w=int(lo_w),
        max_crop_size_w=int(hi_w),
        min_crop_size_h=int(lo_h),
        max_crop_size_h=int(hi_h),
    )


def expected_batches(num_examples: int, pairs: list, replicas: int = 1) -> int:
    """Expected number of batches per epoch (rows drawn uniformly)."""
    mean_bs = float(np.mean([b for _, _, b in pairs])) * replicas
    return max(1, int(np.ceil(num_examples / mean_bs)))


def variable_batch(dataset, transform, pairs: list, *, seed: int, replicas: int = 1):
    """Batch ``dataset`` with the multi-scale table.

    ``transform(example, size_hw) -> (image, label)`` crops each example to its
    batch's size. Returns a dataset of variable-shape batches.
    """
    import tensorflow as tf

    table = tf.constant([[h, w, b * replicas] for h, w, b in pairs], tf.int64)
    n = len(pairs)
    # row stream: batch index k uses row r_k (seeded, stateless)
    rows = tf.data.Dataset.random(seed=seed).map(lambda x: x % n)
    targets = rows.enumerate().flat_map(
        lambda k, r: tf.data.Dataset.from_tensors(
            tf.stack([k, table[r][0], table[r][1], r])
        ).repeat(table[r][2])
    )

    def crop(example, target):
        image, label = transform(example, tf.cast(target[1:3], tf.int32))
        return {"image": image, "label": label, "key": target[0] * n + target[3]}

    mapped = tf.data.Dataset.zip((dataset, targets)).map(crop, num_parallel_calls=tf.data.AUTOTUNE)
    batch_of_row = tf.constant([b * replicas for _, _, b in pairs], tf.int64)
    grouped = mapped.group_by_window(
        key_func=lambda ex: ex["key"],
        reduce_func=lambda key, window: window.batch(batch_of_row[key % n]),
        window_size_func=lambda key: batch_of_row[key % n],
    )
    return grouped.map(lambda b: (b["image"], b["label"]))
