"""Augmentations and the multi-scale variable-batch sampler."""

from __future__ import annotations

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

from training import augment, recipes, sampler  # noqa: E402


def _values(name):
    return recipes.get_recipe(name).to_dict()


def test_vbs_table_is_the_official_one():
    # ml-cvnets _image_batch_pairs(256, 256, 128, 1) (@d38a116 data/sampler/utils.py)
    assert sampler.image_batch_pairs(256, 256, 128, 1) == [
        (160, 160, 327),
        (192, 192, 227),
        (256, 256, 128),
        (288, 288, 128),
        (320, 320, 128),
    ]
    # the MobileViTv3-XXS oneserver recipe: 64 images per GPU
    pairs = sampler.pairs_from_recipe(_values("mobilevitv3_xxs_in1k"))
    assert [p[:2] for p in pairs] == [(160, 160), (192, 192), (256, 256), (288, 288), (320, 320)]
    assert [p[2] for p in pairs] == [163, 113, 64, 64, 64]
    # pixels per batch never exceed the base batch's for the small crops
    assert all(h * w * b <= 256 * 256 * 64 * 1.01 for h, w, b in pairs if h <= 256)


def test_variable_batch_pipeline_streams_the_table():
    pairs = [(32, 32, 6), (64, 64, 2)]
    images = np.random.RandomState(0).randint(0, 255, (40, 48, 48, 3), np.uint8)
    ds = tf.data.Dataset.from_tensor_slices({"image": images, "label": np.arange(40) % 3})
    transform = augment.ClassificationAugment(_values("mobilevitv3_xxs_in1k"), 3)
    out = sampler.variable_batch(ds, transform, pairs, seed=1)
    shapes = [(tuple(x.shape), tuple(y.shape)) for x, y in out]
    allowed = {(6, 32, 32, 3), (2, 64, 64, 3)}
    assert all(s[0] in allowed or s[0][1:] in {(32, 32, 3), (64, 64, 3)} for s in shapes)
    full = [s for s in shapes if s[0] in allowed]
    assert len(full) >= len(shapes) - 2  # only the end-of-data remainders are partial
    assert sum(s[0][0] for s in shapes) == 40  # every example exactly once
    assert {s[0][1] for s in full} == {32, 64}


def test_classification_eval_is_resize_288_center_crop_256():
    short, crop = augment.eval_sizes(_values("mobilevitv2_in1k"), 256)
    assert (short, crop) == (288, 256)
    assert augment.eval_sizes(_values("mobilevitv2_in1k"), 224) == (252, 224)
    fn = augment.classification_eval_fn(_values("mobilevitv2_in1k"), 256, 10)
    image = tf.constant(np.random.RandomState(0).randint(0, 255, (300, 400, 3), np.uint8))
    x, y = fn({"image": image, "label": tf.constant(3, tf.int64)})
    assert (
        x.shape == (256, 256, 3) and float(tf.reduce_min(x)) >= 0 and float(tf.reduce_max(x)) <= 1
    )
    assert int(tf.argmax(y)) == 3
    # the resize is the recipe's interpolation (bicubic for v2, bilinear for v1)
    ref = augment.center_crop(
        tf.image.resize(tf.cast(image, tf.float32), (288, 384), "bicubic"), 256
    )
    np.testing.assert_allclose(x.numpy() * 255, np.clip(ref.numpy(), 0, 255), atol=1e-3)


def test_classification_train_augment_v2_full_chain():
    values = _values("mobilevitv2_in1k")
    transform = augment.ClassificationAugment(values, 5, seed=0)
    image = tf.constant(np.random.RandomState(0).randint(0, 255, (80, 100, 3), np.uint8))
    x, y = transform({"image": image, "label": tf.constant(1, tf.int64)}, tf.constant([64, 64]))
    assert x.shape == (64, 64, 3) and x.dtype == tf.float32
    assert 0.0 <= float(tf.reduce_min(x)) and float(tf.reduce_max(x)) <= 1.0
    mix = augment.BatchMix(values, seed=0)
    assert mix.enabled and len(mix.ops) == 2
    xs = tf.random.uniform((8, 64, 64, 3))
    ys = tf.one_hot(tf.range(8) % 5, 5)
    for _ in range(4):
        mx, my = mix(xs, ys)
        assert mx.shape == xs.shape
        np.testing.assert_allclose(tf.reduce_sum(my, -1).numpy(), 1.0, atol=1e-5)


def test_bgr_channel_order_option():
    values = recipes.merge(_values("demo"), {"runtime": {"channel_order": "bgr"}})
    fn = augment.classification_eval_fn(values, 32, 10)
    image = np.zeros((32, 32, 3), np.uint8)
    image[..., 0] = 255  # red
    x, _ = fn({"image": tf.constant(image), "label": tf.constant(0, tf.int64)})
    assert float(x[0, 0, 2]) == pytest.approx(1.0) and float(x[0, 0, 0]) == 0.0


@pytest.mark.parametrize("name", ["deeplabv3_voc_mobilevitv3_v2", "deeplabv3_voc_mobilevitv3_xxs"])
def test_segmentation_train_augment(name):
    values = _values(name)
    rng = np.random.RandomState(0)
    image = tf.constant(rng.randint(0, 255, (120, 90, 3), np.uint8))
    mask = np.zeros((120, 90), np.int32)
    mask[30:90, 20:70] = 7
    mask[0:5] = 255
    transform = augment.SegmentationAugment(values, (64, 64), 255)
    for _ in range(3):
        x, m = transform({"image": image, "mask": tf.constant(mask)})
        assert x.shape == (64, 64, 3) and m.shape == (64, 64)
        assert set(np.unique(m.numpy())) <= {0, 7, 255}  # nearest: no new labels


def test_crop_padding_and_rotation_fill_with_ignore():
    image = tf.ones((20, 20, 3)) * 100.0
    mask = tf.ones((20, 20), tf.int32) * 3
    x, m = augment.pad_to_at_least(image, mask, (32, 32), 255)
    assert x.shape == (32, 32, 3) and int(m[31, 31]) == 255 and float(x[31, 31, 0]) == 0.0
    x, m = augment.rotate_pair(tf.ones((40, 40, 3)), tf.ones((40, 40), tf.int32) * 2, 45.0, -1)
    values = set(np.unique(m.numpy()))
    assert values <= {2, -1}
    assert int(m[20, 20]) == 2


def test_random_crop_rejects_single_class_crops():
    mask = np.zeros((64, 64), np.int32)
    mask[:, 32:] = 1  # the crop must contain both halves to stay below 0.75
    image = tf.zeros((64, 64, 3))
    tf.random.set_seed(0)
    ratios = []
    for _ in range(10):
        _, m = augment.random_crop_pair(
            image, tf.constant(mask), (32, 32), 255, max_class_ratio=0.75
        )
        counts = np.bincount(m.numpy().ravel(), minlength=2)
        ratios.append(counts.max() / counts.sum())
    assert np.mean(np.array(ratios) < 0.75) >= 0.8


def test_segmentation_eval_resizes_image_and_mask():
    fn = augment.segmentation_eval_fn(_values("deeplabv3_voc_mobilevitv3_v2"), (64, 64), 255)
    x, m = fn({"image": tf.zeros((100, 80, 3), tf.uint8), "mask": tf.zeros((100, 80), tf.int32)})
    assert x.shape == (64, 64, 3) and m.shape == (64, 64)
