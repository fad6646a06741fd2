"""``tf.data`` input pipelines: parallel decode, augmentation on the fly, prefetch.

Training: shuffle (seeded) -> repeat -> per-example augmentation
(``num_parallel_calls=AUTOTUNE``) -> batch with the **global** batch (or the
multi-scale variable batches of :mod:`training.sampler`) -> batch mixup/cutmix ->
prefetch. The dataset is infinite; ``fit`` runs a fixed ``steps_per_epoch``.
``runtime.deterministic`` makes the element order reproducible for a seed
(``tf.data.Options.deterministic``). Auto-sharding is by DATA so every worker of
a multi-worker run sees a different part of each global batch.
"""

from __future__ import annotations

import math

import tensorflow as tf

from training import augment, sampler
from training.config import training_config


def _options(values):
    options = tf.data.Options()
    options.deterministic = values.runtime.deterministic
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return options


def _limit(ds, n):
    return ds.take(int(n)) if n else ds


def count_examples(source, split, limit=None):
    n = source.num_examples(split)
    if n is None:
        n = int(source.load(split).reduce(0, lambda c, _: c + 1))
    return min(n, int(limit)) if limit else n


def uses_variable_batch(values) -> bool:
    """The recipe asks for ml-cvnets' multi-scale ``variable_batch_sampler``
    (``data/sampler/variable_batch_sampler.py``; classification recipes only)."""
    return training_config(values).sampler.name == "variable_batch_sampler"


def train_steps_per_epoch(
    values, source, *, per_replica_batch, replicas, image_size, variable_batch=False
):
    """Optimizer steps per epoch: ``runtime.steps_per_epoch``, else one pass over the
    training split (``variable_batch``: the expected number of multi-scale batches)."""
    runtime = training_config(values).runtime
    if runtime.steps_per_epoch:
        return runtime.steps_per_epoch
    n = count_examples(source, source.train_split, runtime.max_train_examples)
    if variable_batch:
        pairs = sampler.pairs_from_recipe(values, per_replica_batch, 1, image_size)
        return sampler.expected_batches(n, pairs, replicas)
    return max(1, n // (per_replica_batch * replicas))


def _train_examples(source, values, seed, max_buffer=None):
    """The training split, limited / cached as the recipe says, shuffled and repeated.

    ``max_buffer`` caps the shuffle buffer (segmentation examples are large)."""
    ds = source.load(source.train_split, shuffle_files=True, seed=seed)
    ds = _limit(ds, values.runtime.max_train_examples)
    if values.runtime.cache:
        ds = ds.cache()
    buffer = values.runtime.shuffle_buffer
    if max_buffer is not None:
        buffer = min(buffer, max_buffer)
    return ds.shuffle(buffer, seed=seed, reshuffle_each_iteration=True).repeat()


def classification_train(
    source, values, *, image_size, per_replica_batch, replicas, seed, epoch_offset=0
):
    values = training_config(values)
    ds = _train_examples(source, values, seed + epoch_offset)
    transform = augment.ClassificationAugment(values, source.num_classes, seed=seed)
    if uses_variable_batch(values):
        pairs = sampler.pairs_from_recipe(values, per_replica_batch, 1, image_size)
        ds = sampler.variable_batch(
            ds, transform, pairs, seed=seed + epoch_offset, replicas=replicas
        )
    else:
        size = tf.constant([image_size, image_size], tf.int32)
        ds = ds.map(lambda ex: transform(ex, size), num_parallel_calls=tf.data.AUTOTUNE)
        ds = ds.batch(per_replica_batch * replicas, drop_remainder=True)
    mix = augment.BatchMix(values, seed=seed)
    if mix.enabled:
        ds = ds.map(mix, num_parallel_calls=tf.data.AUTOTUNE)
    return ds.with_options(_options(values)).prefetch(tf.data.AUTOTUNE)


def classification_eval(source, values, *, image_size, batch_size, split=None, limit=None):
    values = training_config(values)
    ds = source.load(split or source.val_split, shuffle_files=False)
    ds = _limit(ds, limit if limit is not None else values.runtime.max_val_examples)
    fn = augment.classification_eval_fn(values, image_size, source.num_classes)
    ds = ds.map(fn, num_parallel_calls=tf.data.AUTOTUNE).batch(batch_size)
    return ds.with_options(_options(values)).prefetch(tf.data.AUTOTUNE)


def segmentation_train(
    source, values, *, image_size, per_replica_batch, replicas, seed, epoch_offset=0
):
    values = training_config(values)
    ds = _train_examples(source, values, seed + epoch_offset, max_buffer=2000)
    transform = augment.SegmentationAugment(values, (image_size, image_size), source.ignore_index)
    ds = ds.map(transform, num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.batch(per_replica_batch * replicas, drop_remainder=True)
    return ds.with_options(_options(values)).prefetch(tf.data.AUTOTUNE)


def segmentation_eval_size(values, image_size):
    """``(h, w)`` of the evaluation resize: the recipe's, scaled to ``image_size``."""
    values = training_config(values)
    resize = values.image_augmentation.resize
    if resize.enable:
        size = image_size if resize.size is None else resize.size
        size = size if isinstance(size, (list, tuple)) else [size, size]
        crop = values.sampler.bs.crop_size_height
        if image_size != crop:  # keep the recipe's eval/crop ratio (512/512 officially)
            size = [int(math.ceil(s * image_size / crop / 32) * 32) for s in size]
        return tuple(int(s) for s in size)
    return (image_size, image_size)


def segmentation_eval(source, values, *, image_size, batch_size, split=None, limit=None):
    values = training_config(values)
    ds = source.load(split or source.val_split, shuffle_files=False)
    ds = _limit(ds, limit if limit is not None else values.runtime.max_val_examples)
    fn = augment.segmentation_eval_fn(
        values, segmentation_eval_size(values, image_size), source.ignore_index
    )
    ds = ds.map(fn, num_parallel_calls=tf.data.AUTOTUNE).batch(batch_size)
    return ds.with_options(_options(values)).prefetch(tf.data.AUTOTUNE)
