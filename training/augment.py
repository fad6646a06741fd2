"""Augmentations of the official recipes, as ``tf.data`` map functions.

Classification (ml-cvnets ``data/transforms/image_pil.py`` / torchvision semantics):

* training: random resized crop (area 0.08..1, aspect 3/4..4/3, the recipe's
  interpolation: bilinear in the v1 recipe, bicubic in v2; ``tf.image.
  sample_distorted_bounding_box`` draws the box, falling back to the whole image
  where torchvision falls back to a centre crop), horizontal flip (p 0.5),
  RandAugment (:class:`training.randaugment.RandAugment`: torchvision's
  ``RandAugment()`` tensor code path reproduced exactly, 2 ops, magnitude 9 of 31
  bins, nearest, fill 0, on the image rounded to uint8), random erasing
  (``keras.layers.RandomErasing``, p 0.25, area 0.02..0.33, fill 0), and per batch
  one of mixup (alpha 0.2) / cutmix (alpha 1.0) chosen at random and applied with
  p 0.5 (``keras.layers.MixUp`` / ``keras.layers.CutMix``; ml-cvnets'
  ``RandomChoice([RandomMixup, RandomCutmix])`` with their default p 0.5).
* evaluation: resize the shorter side to 288 then centre crop 256, bilinear
  (v1 recipe) or bicubic (v2 recipe), docs/semantics.md section 1.

Segmentation (ml-cvnets segmentation transforms): random short-side resize
(v2: 256..768, longest side <= 1024, bicubic; v1 ``random_resize``: 256..1024),
random crop 512 with padding (image 0, mask = ignore) or up-scaling when the image
is smaller (v1 ``resize_if_needed``), re-drawn up to 10 times while one class covers
more than ``seg_class_max_ratio`` of the crop, horizontal flip, photometric
distortion (brightness, contrast, saturation, hue; each p 0.5), rotation (+-10
degrees, p 0.5, mask nearest with ignore fill) and gaussian noise (p 0.5). Masks
are always resized with nearest neighbour. Evaluation resizes image and mask to
the recipe's ``resize.size`` (512x512).

Images leave the pipeline as float32 RGB in [0, 1] (the official models take [0, 1]
with no mean/std normalisation); ``runtime.channel_order = "bgr"`` reverses the
channels for models that keep the v1 checkpoints' BGR order.
"""

from __future__ import annotations

import math

import tensorflow as tf

from training.config import training_config
from training.randaugment import RandAugment


def _method(interpolation: str) -> str:
    if interpolation not in ("bilinear", "bicubic", "nearest", "area"):
        raise ValueError(f"unsupported interpolation {interpolation!r}")
    return interpolation


def resize(image, size_hw, interpolation="bilinear"):
    """float32 [0, 255] resize (no antialias, like torchvision/cv2 on up-scaling)."""
    out = tf.image.resize(tf.cast(image, tf.float32), size_hw, method=_method(interpolation))
    return tf.clip_by_value(out, 0.0, 255.0)


def random_resized_crop(
    image, size_hw, *, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), interpolation="bilinear"
):
    shape = tf.shape(image)
    begin, size, _ = tf.image.sample_distorted_bounding_box(
        shape,
        bounding_boxes=tf.constant([[[0.0, 0.0, 1.0, 1.0]]]),
        min_object_covered=0.0,
        aspect_ratio_range=tuple(ratio),
        area_range=tuple(scale),
        max_attempts=10,
        use_image_if_no_bounding_boxes=True,
    )
    crop = tf.slice(image, begin, size)
    crop = tf.ensure_shape(crop, [None, None, 3])  # tf.slice drops the static channel count
    return resize(crop, size_hw, interpolation)


def resize_shorter_side(image, size, interpolation="bilinear"):
    shape = tf.cast(tf.shape(image)[:2], tf.float32)
    scale = tf.cast(size, tf.float32) / tf.reduce_min(shape)
    new = tf.cast(tf.round(shape * scale), tf.int32)
    new = tf.maximum(new, size)
    return resize(image, new, interpolation)


def center_crop(image, size):
    shape = tf.shape(image)
    top = (shape[0] - size) // 2
    left = (shape[1] - size) // 2
    return image[top : top + size, left : left + size, :]


def to_model_input(image, channel_order="rgb"):
    image = tf.cast(image, tf.float32) / 255.0
    if channel_order == "bgr":
        image = image[..., ::-1]
    return image


# ----------------------------------------------------------------------------------------
# classification
# ----------------------------------------------------------------------------------------
class ClassificationAugment:
    """Per-example training transform; ``__call__(example, size_hw)``."""

    def __init__(self, values, num_classes: int, seed: int = 0):
        import keras

        values = training_config(values)
        aug = values.image_augmentation
        self.num_classes = num_classes
        self.channel_order = values.runtime.channel_order
        rrc = aug.random_resized_crop
        self.rrc = rrc.enable
        self.rrc_interp = rrc.interpolation
        self.rrc_scale = tuple(rrc.scale)
        self.rrc_ratio = tuple(rrc.ratio)
        self.flip = aug.random_horizontal_flip.enable
        self.randaugment = None
        if aug.rand_augment.enable:
            # torchvision defaults (ml-cvnets rand_augment): 2 ops, magnitude 9 of 31 bins
            self.randaugment = RandAugment(num_ops=2, magnitude=9, num_magnitude_bins=31, seed=seed)
        self.erase = None
        if aug.random_erase.enable:
            p = aug.random_erase.p
            self.erase = keras.layers.RandomErasing(
                factor=(p, p), scale=(0.02, 0.33), fill_value=0.0, value_range=(0, 1), seed=seed
            )

    def __call__(self, example, size_hw):
        image = tf.ensure_shape(example["image"], [None, None, 3])
        if self.rrc:
            image = random_resized_crop(
                image,
                size_hw,
                scale=self.rrc_scale,
                ratio=self.rrc_ratio,
                interpolation=self.rrc_interp,
            )
        else:
            image = resize(image, size_hw, self.rrc_interp)
        if self.flip:
            image = tf.image.random_flip_left_right(image)
        if self.randaugment is not None:
            image = self.randaugment(image)
        image = to_model_input(image, self.channel_order)
        if self.erase is not None:
            image = self.erase(image, training=True)
        label = tf.one_hot(tf.cast(example["label"], tf.int32), self.num_classes)
        return image, label


class BatchMix:
    """Mixup / cutmix on a batch (one of the enabled ones, applied with probability p)."""

    def __init__(self, values, seed: int = 0):
        import keras

        aug = training_config(values).image_augmentation
        self.ops = []
        if aug.mixup.enable:
            self.ops.append((keras.layers.MixUp(alpha=aug.mixup.alpha, seed=seed), aug.mixup.p))
        if aug.cutmix.enable:
            self.ops.append((keras.layers.CutMix(factor=aug.cutmix.alpha, seed=seed), aug.cutmix.p))

    @property
    def enabled(self) -> bool:
        return bool(self.ops)

    def __call__(self, images, labels):
        if not self.ops:
            return images, labels
        choice = tf.random.uniform([], 0, len(self.ops), dtype=tf.int32)
        apply = tf.random.uniform([]) < 1.0

        def branch(i):
            layer, p = self.ops[i]

            def run():
                out = layer({"images": images, "labels": labels}, training=True)
                return tf.cast(out["images"], images.dtype), tf.cast(out["labels"], labels.dtype)

            def skip():
                return images, labels

            return lambda: tf.cond(tf.logical_and(apply, tf.random.uniform([]) < p), run, skip)

        if len(self.ops) == 1:
            return branch(0)()
        return tf.switch_case(choice, [branch(i) for i in range(len(self.ops))])


def eval_sizes(values, image_size: int):
    """``(resize shorter side, crop)`` for evaluation at ``image_size``, keeping the
    recipe's resize/crop ratio (288/256 officially)."""
    aug = training_config(values).image_augmentation
    crop = int(image_size if aug.center_crop.size is None else aug.center_crop.size)
    short = int(crop if aug.resize.size is None else aug.resize.size)
    if not aug.resize.enable:
        short = crop
    if crop != image_size:
        short = int(round(image_size * short / crop))
        crop = image_size
    return short, crop


def classification_eval_fn(values, image_size: int, num_classes: int):
    """``example -> (image, one-hot label)``: resize the shorter side, center crop."""
    values = training_config(values)
    interp = values.image_augmentation.resize.interpolation
    short, crop = eval_sizes(values, image_size)
    channel_order = values.runtime.channel_order

    def fn(example):
        image = resize_shorter_side(example["image"], short, interp)
        image = center_crop(image, crop)
        image = tf.ensure_shape(to_model_input(image, channel_order), (crop, crop, 3))
        label = tf.one_hot(tf.cast(example["label"], tf.int32), num_classes)
        return image, label

    return fn


# ----------------------------------------------------------------------------------------
# segmentation
# ----------------------------------------------------------------------------------------
def _resize_pair(image, mask, size_hw, interpolation):
    image = resize(image, size_hw, interpolation)
    mask = tf.image.resize(mask[..., None], size_hw, method="nearest")[..., 0]
    return image, mask


def random_short_side_resize(
    image, mask, short_min, short_max, max_dim=None, interpolation="bicubic"
):
    shape = tf.cast(tf.shape(image)[:2], tf.float32)
    short = tf.random.uniform([], short_min, short_max + 1, dtype=tf.int32)
    scale = tf.cast(short, tf.float32) / tf.reduce_min(shape)
    if max_dim:
        scale = tf.minimum(scale, float(max_dim) / tf.reduce_max(shape))
    new = tf.maximum(tf.cast(tf.round(shape * scale), tf.int32), 1)
    return _resize_pair(image, mask, new, interpolation)


def pad_to_at_least(image, mask, size_hw, ignore_index):
    shape = tf.shape(image)
    pad_h = tf.maximum(size_hw[0] - shape[0], 0)
    pad_w = tf.maximum(size_hw[1] - shape[1], 0)
    paddings = [[0, pad_h], [0, pad_w]]
    image = tf.pad(image, paddings + [[0, 0]], constant_values=0.0)
    mask = tf.pad(mask, paddings, constant_values=ignore_index)
    return image, mask


def upscale_to_at_least(image, mask, size_hw, interpolation="bilinear"):
    shape = tf.cast(tf.shape(image)[:2], tf.float32)
    target = tf.cast(tf.stack(size_hw), tf.float32)
    scale = tf.maximum(tf.reduce_max(target / shape), 1.0)
    new = tf.cast(tf.math.ceil(shape * scale), tf.int32)
    return _resize_pair(image, mask, new, interpolation)


def random_crop_pair(image, mask, size_hw, ignore_index, *, max_class_ratio=None, attempts=10):
    """Random crop; with ``max_class_ratio`` re-drawn (up to ``attempts``) while a single
    class covers more than that fraction of the labelled crop pixels."""
    shape = tf.shape(image)
    h, w = size_hw

    def draw():
        top = tf.random.uniform([], 0, shape[0] - h + 1, dtype=tf.int32)
        left = tf.random.uniform([], 0, shape[1] - w + 1, dtype=tf.int32)
        return top, left

    def ratio(top, left):
        crop = mask[top : top + h, left : left + w]
        labels = tf.boolean_mask(crop, tf.not_equal(crop, ignore_index))
        labels = tf.boolean_mask(labels, labels >= 0)
        counts = tf.math.bincount(labels)
        total = tf.maximum(tf.reduce_sum(counts), 1)
        return tf.cast(tf.reduce_max(tf.concat([counts, [0]], 0)), tf.float32) / tf.cast(
            total, tf.float32
        )

    top, left = draw()
    if max_class_ratio is not None and max_class_ratio < 1.0:

        def cond(i, t, lft):
            return tf.logical_and(i < attempts - 1, ratio(t, lft) >= max_class_ratio)

        def body(i, t, lft):
            t2, l2 = draw()
            return i + 1, t2, l2

        _, top, left = tf.while_loop(cond, body, [tf.constant(0), top, left])
    return image[top : top + h, left : left + w, :], mask[top : top + h, left : left + w]


def photometric_distort(image):
    """Brightness, contrast, saturation and hue, each with p 0.5 (float32 [0, 255])."""
    x = image / 255.0

    def maybe(fn, x):
        return tf.cond(tf.random.uniform([]) < 0.5, lambda: fn(x), lambda: x)

    x = maybe(lambda v: tf.image.random_brightness(v, 32.0 / 255.0), x)
    x = maybe(lambda v: tf.image.random_contrast(v, 0.5, 1.5), x)
    x = maybe(lambda v: tf.image.random_saturation(v, 0.5, 1.5), x)
    x = maybe(lambda v: tf.image.random_hue(v, 18.0 / 360.0), x)
    return tf.clip_by_value(x, 0.0, 1.0) * 255.0


def rotate_pair(image, mask, max_degrees, ignore_index):
    angle = tf.random.uniform([], -max_degrees, max_degrees) * math.pi / 180.0
    shape = tf.cast(tf.shape(image)[:2], tf.float32)
    h, w = shape[0], shape[1]
    cos, sin = tf.cos(angle), tf.sin(angle)
    # output (x, y) -> input: rotation about the image centre
    cx, cy = (w - 1) / 2.0, (h - 1) / 2.0
    a0, a1 = cos, -sin
    a2 = cx - cx * cos + cy * sin
    b0, b1 = sin, cos
    b2 = cy - cx * sin - cy * cos
    transform = tf.reshape(tf.stack([a0, a1, a2, b0, b1, b2, 0.0, 0.0]), [1, 8])
    size = tf.shape(image)[:2]

    def warp(x, interpolation, fill):
        return tf.raw_ops.ImageProjectiveTransformV3(
            images=x[None],
            transforms=transform,
            output_shape=size,
            fill_value=tf.cast(fill, tf.float32),
            interpolation=interpolation,
            fill_mode="CONSTANT",
        )[0]

    image = warp(tf.cast(image, tf.float32), "BILINEAR", 0.0)
    mask = warp(tf.cast(mask[..., None], tf.float32), "NEAREST", ignore_index)[..., 0]
    return image, tf.cast(tf.round(mask), tf.int32)


class SegmentationAugment:
    """Per-example training transform ``(example) -> (image [0,1], mask int32)``."""

    def __init__(self, values, crop_hw, ignore_index: int):
        values = training_config(values)
        self.aug = values.image_augmentation
        self.crop_hw = tuple(int(v) for v in crop_hw)
        self.ignore = int(ignore_index)
        self.channel_order = values.runtime.channel_order

    def __call__(self, example):
        a = self.aug
        image = tf.cast(example["image"], tf.float32)
        mask = tf.cast(example["mask"], tf.int32)
        image, mask = self._rescale(image, mask)
        if a.random_crop.enable:
            if a.random_crop.resize_if_needed:
                image, mask = upscale_to_at_least(image, mask, self.crop_hw)
            else:
                image, mask = pad_to_at_least(image, mask, self.crop_hw, self.ignore)
            ratio = a.random_crop.seg_class_max_ratio
            image, mask = random_crop_pair(
                image, mask, self.crop_hw, self.ignore, max_class_ratio=ratio
            )
        else:
            image, mask = _resize_pair(image, mask, self.crop_hw, "bilinear")
        if a.random_horizontal_flip.enable:
            flip = tf.random.uniform([]) < 0.5
            image = tf.cond(flip, lambda: image[:, ::-1, :], lambda: image)
            mask = tf.cond(flip, lambda: mask[:, ::-1], lambda: mask)
        if a.photo_metric_distort.enable:
            image = photometric_distort(image)
        if a.random_rotate.enable:
            deg = a.random_rotate.angle
            rot = tf.random.uniform([]) < 0.5
            image, mask = tf.cond(
                rot, lambda: rotate_pair(image, mask, deg, self.ignore), lambda: (image, mask)
            )
        if a.random_gaussian_noise.enable:
            noisy = tf.random.uniform([]) < 0.5
            sigma = tf.random.uniform([], 0.0, 0.03) * 255.0
            noise = tf.random.normal(tf.shape(image)) * sigma
            image = tf.cond(
                noisy, lambda: tf.clip_by_value(image + noise, 0.0, 255.0), lambda: image
            )
        image = tf.ensure_shape(to_model_input(image, self.channel_order), self.crop_hw + (3,))
        mask = tf.ensure_shape(mask, self.crop_hw)
        return image, mask

    def _rescale(self, image, mask):
        """The random shorter-side resize of the v2 recipes, or the v1 random resize."""
        short = self.aug.random_short_size_resize
        if short.enable:
            return random_short_side_resize(
                image,
                mask,
                short.short_side_min,
                short.short_side_max,
                short.max_img_dim,
                short.interpolation,
            )
        if self.aug.random_resize.enable:
            r = self.aug.random_resize
            return random_short_side_resize(image, mask, r.min_size, r.max_size, None, "bilinear")
        return image, mask


def segmentation_eval_fn(values, eval_hw, ignore_index: int):
    """``example -> (image, mask)`` resized to ``eval_hw``."""
    values = training_config(values)
    channel_order = values.runtime.channel_order
    interp = values.image_augmentation.resize.interpolation
    eval_hw = tuple(int(v) for v in eval_hw)

    def fn(example):
        image, mask = _resize_pair(
            tf.cast(example["image"], tf.float32),
            tf.cast(example["mask"], tf.int32),
            eval_hw,
            interp,
        )
        return tf.ensure_shape(to_model_input(image, channel_order), eval_hw + (3,)), mask

    return fn
