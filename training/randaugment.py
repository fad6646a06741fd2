"""RandAugment as ``torchvision.transforms.RandAugment`` computes it, in plain TF ops.

A transcription of torchvision 0.29's ``RandAugment._augmentation_space`` and
``autoaugment._apply_op`` on uint8 tensors (``transforms/_functional_tensor.py``),
the transform of the MobileViTv2/v3 ImageNet recipes (ml-cvnets ``rand_augment``:
torchvision defaults ``num_ops=2, magnitude=9, num_magnitude_bins=31``, NEAREST
interpolation, fill 0). Checked pixel for pixel against torchvision (all 14 ops,
both signs, magnitude bins 0/9/20/30, several image sizes): identical.

* each of the ``num_ops`` steps draws one of the 14 ops uniformly (with replacement,
  like ``torch.randint``) and, for the signed ones, negates the magnitude with
  probability 0.5; only the drawn op is computed (``tf.switch_case``);
* magnitudes are torchvision's float32 ``torch.linspace`` values at bin
  ``magnitude`` (reproduced bit for bit, including the FMA of its CPU kernel);
* ShearX/ShearY/TranslateX/TranslateY/Rotate are ``F.affine``/``F.rotate`` with
  nearest sampling and zero fill: torchvision's ``_get_inverse_affine_matrix`` (shear
  about ``center=[0, 0]``, the top-left corner; translate and rotate about the image
  centre), then its sampling grid with its float32 operations and round-half-even
  (``ImageProjectiveTransformV3`` rounds ties away from zero and computes the
  coordinates differently, which moves a few pixels);
* Brightness/Color/Contrast/Sharpness use ``_blend``: ``ratio * img + (1 - ratio)
  * other`` in float32, clamped to 0..255 and truncated to uint8; the grayscale is
  ``(0.2989 r + 0.587 g + 0.114 b)`` truncated to uint8, the contrast mean is the
  float32 mean of that grayscale, the sharpness blur is the 3x3 (1, 5 centre)/13
  kernel rounded to uint8 on the interior pixels only;
* Posterize masks the low bits, Solarize inverts pixels ``>= threshold``,
  AutoContrast and Equalize work per channel like torchvision's tensor versions.

Images are HxWx3 with values in 0..255; non-uint8 inputs are rounded to uint8 first
(the reference pipeline's images are uint8) and returned in their dtype. ml-cvnets
applies the transform to PIL images, whose code path (PIL ``ImageEnhance``/``affine``)
rounds slightly differently from the tensor path reproduced here.
"""

from __future__ import annotations

import math

import numpy as np
import tensorflow as tf

OPS = (
    "Identity",
    "ShearX",
    "ShearY",
    "TranslateX",
    "TranslateY",
    "Rotate",
    "Brightness",
    "Color",
    "Contrast",
    "Sharpness",
    "Posterize",
    "Solarize",
    "AutoContrast",
    "Equalize",
)
SIGNED = frozenset(
    ("ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate")
    + ("Brightness", "Color", "Contrast", "Sharpness")
)


def torch_linspace(start: float, end: float, steps: int) -> np.ndarray:
    """``torch.linspace(start, end, steps)`` (float32, CPU) bit for bit: the kernel
    computes ``start + step * i`` for the first half and ``end - step * (steps - 1 - i)``
    for the rest, each with one rounding (fused multiply-add)."""
    s, e = np.float32(start), np.float32(end)
    step = np.float32((e - s) / np.float32(max(steps - 1, 1)))
    out = np.empty(steps, np.float32)
    for i in range(steps):
        if i < steps // 2:
            out[i] = np.float32(np.float64(s) + np.float64(step) * i)
        else:
            out[i] = np.float32(np.float64(e) - np.float64(step) * (steps - 1 - i))
    return out


def inverse_affine_matrix(center, angle, translate, scale, shear):
    """torchvision ``transforms.functional._get_inverse_affine_matrix`` (inverted)."""
    rot = math.radians(angle)
    sx, sy = math.radians(shear[0]), math.radians(shear[1])
    cx, cy = center
    tx, ty = translate
    a = math.cos(rot - sy) / math.cos(sy)
    b = -math.cos(rot - sy) * math.tan(sx) / math.cos(sy) - math.sin(rot)
    c = math.sin(rot - sy) / math.cos(sy)
    d = -math.sin(rot - sy) * math.tan(sx) / math.cos(sy) + math.cos(rot)
    m = [x / scale for x in (d, -b, 0.0, -c, a, 0.0)]
    m[2] += m[0] * (-cx - tx) + m[1] * (-cy - ty)
    m[5] += m[3] * (-cx - tx) + m[4] * (-cy - ty)
    m[2] += cx
    m[5] += cy
    return m


def _f32(values):
    return tf.constant(np.asarray(values, np.float32))


def to_uint8(image):
    image = tf.convert_to_tensor(image)
    if image.dtype == tf.uint8:
        return image
    if image.dtype.is_floating:
        image = tf.round(image)
    return tf.cast(tf.clip_by_value(tf.cast(image, tf.float32), 0.0, 255.0), tf.uint8)


def _add32(a, b):
    """float32 ``a + b`` computed as the exact float64 sum rounded once to float32,
    i.e. the same value. Used for the second add of ``(a + b) + c`` chains: Grappler's
    arithmetic optimiser would re-associate two float32 adds (e.g. to minimise
    broadcasts), which changes the rounding."""
    return tf.cast(tf.cast(a, tf.float64) + tf.cast(b, tf.float64), tf.float32)


def _blend(img, other, r1, r2):
    """torchvision ``_blend`` on uint8: float32 ``r1 * img + r2 * other``, clamped and
    truncated (``Tensor.to(torch.uint8)``)."""
    out = r1 * tf.cast(img, tf.float32)
    if other is not None:
        out = out + r2 * other
    return tf.cast(tf.clip_by_value(out, 0.0, 255.0), tf.uint8)


def grayscale(img):
    """``rgb_to_grayscale`` on uint8, ``(0.2989 r + 0.587 g + 0.114 b).to(uint8)``
    (HxWx1 float32)."""
    r, g, b = tf.unstack(tf.cast(img, tf.float32), axis=-1)
    gray = _add32(0.2989 * r + 0.587 * g, 0.114 * b)
    return tf.expand_dims(tf.cast(tf.cast(gray, tf.uint8), tf.float32), -1)


def posterize(img, bits: int):
    return tf.bitwise.bitwise_and(img, tf.constant((-int(2 ** (8 - bits))) & 0xFF, tf.uint8))


def solarize(img, threshold):
    # where(img >= threshold, 255 - img, img), in float32 arithmetic (exact integers;
    # SelectV2 is several times slower than the arithmetic on CPU)
    x = tf.cast(img, tf.float32)
    flip = tf.cast(x >= threshold, tf.float32)
    return tf.cast(x + flip * (255.0 - 2.0 * x), tf.uint8)


def autocontrast(img):
    flat = tf.reshape(img, [-1, 3])
    lo = tf.cast(tf.reduce_min(flat, axis=0), tf.float32)
    hi = tf.cast(tf.reduce_max(flat, axis=0), tf.float32)
    scale = 255.0 / (hi - lo)
    finite = tf.math.is_finite(scale)
    lo = tf.where(finite, lo, 0.0)
    scale = tf.where(finite, scale, 1.0)
    x = tf.cast(img, tf.float32)
    return tf.cast(tf.clip_by_value((x - lo) * scale, 0.0, 255.0), tf.uint8)


def equalize(img):
    """Per-channel histogram equalisation (torchvision ``_scale_channel``)."""
    index = tf.cast(img, tf.int32) + tf.constant([0, 256, 512])
    hist = tf.raw_ops.Bincount(
        arr=tf.reshape(index, [-1]), size=768, weights=tf.zeros([0], tf.int32)
    )
    hist = tf.reshape(hist, [3, 256])
    # torchvision's lut is the cumulative histogram shifted by one bin: exclusive
    below = tf.cumsum(hist, axis=1, exclusive=True)
    # step = (count of all but the last non-zero bin) // 255 = pixels below the max // 255
    step = tf.reduce_max(tf.where(hist > 0, below, 0), axis=1) // 255
    safe = tf.maximum(step, 1)[:, None]
    lut = tf.minimum((below + safe // 2) // safe, 255)
    lut = tf.where(step[:, None] == 0, tf.range(256), lut)
    return tf.gather(tf.cast(tf.reshape(lut, [-1]), tf.uint8), index)


_SHARP_KERNEL = np.ones((3, 3, 4, 1), np.float32)
_SHARP_KERNEL[1, 1, :3] = 5.0


def sharpness_blur(img):
    """torchvision ``_blurred_degenerate_image`` (float32 HxWx3): the (1 1 1 / 1 5 1 /
    1 1 1) / 13 kernel rounded to uint8 on interior pixels, border pixels unchanged.
    The integer numerator is exact in float32 and never a tie over 13."""
    x = tf.cast(img, tf.float32)
    # a 4th channel of ones, zero padded: its 3x3 sum is 9 exactly on interior pixels
    x4 = tf.pad(tf.pad(x, [[0, 0], [0, 0], [0, 1]], constant_values=1.0), [[1, 1], [1, 1], [0, 0]])
    num = tf.squeeze(tf.nn.depthwise_conv2d(x4[None], _SHARP_KERNEL, [1, 1, 1, 1], "VALID"), 0)
    num, count = tf.split(num, [3, 1], axis=-1)
    interior = tf.cast(count == 9.0, tf.float32)
    return x + interior * (tf.math.floor((2.0 * num + 13.0) / 26.0) - x)


def affine_nearest(img, linear, center, translate):
    """``F.affine``/``F.rotate`` on a uint8 tensor with nearest sampling and fill 0.

    ``linear`` ([2, 2]) is the linear part of torchvision's inverse matrix,
    ``center``/``translate`` ([2], x then y) its centred centre and translation, all
    float64 (torchvision computes the matrix in Python floats). The sampling grid is
    computed with torchvision's float32 operations in its order (``_gen_affine_grid``:
    ``[x, y, 1] @ (theta.T / [w/2, h/2])`` with ``x = j + 0.5 - w/2``;
    ``grid_sample``: ``(g + 1) * size/2 - 0.5`` rounded half to even), so even exact
    ties (e.g. of a 0.2 shear) pick torchvision's pixels.
    """
    h, w, _ = tf.unstack(tf.shape(img))
    size = tf.stack([w, h])
    # _get_inverse_affine_matrix: m[2], m[5] = L @ (-c - t) + c
    shift = tf.reduce_sum(linear * (-center - translate), axis=1) + center
    theta = tf.cast(tf.concat([linear, tf.expand_dims(shift, 1)], axis=1), tf.float32)
    half = 0.5 * tf.cast(size, tf.float32)  # [w/2, h/2]
    offset_x, offset_y = tf.unstack(0.5 - half)  # pixel centres, exact (half-)integers
    xs = tf.reshape(tf.cast(tf.range(w), tf.float32) + offset_x, [1, 1, -1])
    ys = tf.reshape(tf.cast(tf.range(h), tf.float32) + offset_y, [1, -1, 1])
    half = tf.reshape(half, [2, 1, 1])
    theta = tf.reshape(theta, [2, 3, 1, 1]) / tf.expand_dims(half, 1)
    r0, r1, r2 = tf.unstack(theta, axis=1)
    grid = _add32(xs * r0 + ys * r1, r2)  # float32, in torch's order
    index = tf.cast(tf.round((grid + 1.0) * half - 0.5), tf.int32)  # [2, H, W]: x, y
    valid = tf.reduce_all((index >= 0) & (index < tf.reshape(size, [2, 1, 1])), axis=0)
    valid = tf.cast(valid, tf.int32)
    ix, iy = tf.unstack(index)
    # outside samples read the appended zero pixel h * w
    flat = (iy * w + ix - h * w) * valid + h * w
    pixels = tf.pad(tf.reshape(img, [h * w, 3]), [[0, 1], [0, 0]])
    return tf.gather(pixels, flat)


# branch of ``RandAugment.apply_op`` per op
_BRANCH = {
    "Identity": 0,
    "Brightness": 1,
    "Posterize": 2,
    "Solarize": 3,
    "Contrast": 4,
    "AutoContrast": 5,
    "Equalize": 6,
    "Color": 7,
    "Sharpness": 8,
    "ShearX": 9,
    "ShearY": 9,
    "TranslateX": 9,
    "TranslateY": 9,
    "Rotate": 9,
}


class RandAugment:
    """torchvision-exact ``RandAugment`` for one HxWx3 image (uint8, or float 0..255).

    ``seed`` is the op-level seed of the per-image draw of a stateless seed;
    ``__call__(image, seed=...)`` takes an explicit stateless seed (shape [2] int)
    instead. Each step is one ``tf.switch_case`` over 10 small branches (the affine
    ops share one), since every node of the untaken branches still costs executor
    time inside ``tf.data`` functions.
    """

    def __init__(self, num_ops=2, magnitude=9, num_magnitude_bins=31, seed=None):
        if num_magnitude_bins < 2 or not 0 <= magnitude < num_magnitude_bins:
            raise ValueError(f"magnitude {magnitude} not in [0, {num_magnitude_bins})")
        self.num_ops = int(num_ops)
        self.magnitude = int(magnitude)
        self.num_magnitude_bins = int(num_magnitude_bins)
        self.seed = seed
        bins, m = self.num_magnitude_bins, self.magnitude

        def mag(end):
            return float(torch_linspace(0.0, end, bins)[m])

        self.shear = mag(0.3)
        self.rotate = mag(30.0)
        self.enhance = mag(0.9)
        self.solarize = float(torch_linspace(255.0, 0.0, bins)[m])
        q = np.round(np.arange(bins, dtype=np.float32) / np.float32((bins - 1) / 4))
        self.posterize_bits = int(8 - q.astype(np.int32)[m])

        # per (op, sign) rows, sign 0 = +magnitude, 1 = -magnitude:
        # blend ratios as torch uses them (python float -> float32) ...
        ratio = [1.0 + s * self.enhance for s in (1.0, -1.0)]
        self._r1 = _f32(ratio)
        self._r2 = _f32([1.0 - r for r in ratio])
        # ... and the affine parameters: linear part (m0, m1, m3, m4), centre / size,
        # translation / translate_pixels
        rows = []
        for op in OPS:
            for s in (1.0, -1.0):
                angle, shear, kc, fx, fy = 0.0, (0.0, 0.0), 0.0, 0.0, 0.0
                if op in ("ShearX", "ShearY"):
                    deg = math.degrees(math.atan(s * self.shear))
                    shear = (deg, 0.0) if op == "ShearX" else (0.0, deg)
                    kc = -0.5  # center=[0, 0]: the top-left corner, centred
                elif op == "TranslateX":
                    fx = s
                elif op == "TranslateY":
                    fy = s
                elif op == "Rotate":
                    angle = -s * self.rotate  # F.rotate passes -angle
                mat = inverse_affine_matrix([0.0, 0.0], angle, [0.0, 0.0], 1.0, list(shear))
                rows.append([mat[0], mat[1], mat[3], mat[4], kc, kc, fx, fy])
        self._affine = tf.constant(rows, tf.float64)
        self._branch = tf.constant([_BRANCH[op] for op in OPS], tf.int32)

    # -- magnitudes that depend on the image size -----------------------------------
    def translate_pixels(self, size):
        """``int(torch.linspace(0, 150 / 331 * size, bins)[magnitude])`` for (dynamic)
        sizes."""
        end = tf.cast(tf.cast(size, tf.float64) * (150.0 / 331.0), tf.float32)
        step = tf.cast(end / float(self.num_magnitude_bins - 1), tf.float64)
        m, n = self.magnitude, self.num_magnitude_bins
        if m < n // 2:  # torch's kernel: start + step * i (one rounding)
            value = step * m
        else:  # end - step * (n - 1 - i) (one rounding)
            value = tf.cast(end, tf.float64) - step * (n - 1 - m)
        value = tf.cast(tf.cast(value, tf.float32), tf.float64)
        return tf.math.floor(value)  # non-negative: int() truncation

    # -- the ops ---------------------------------------------------------------------
    def apply_op(self, img, index, negate):
        """Op ``OPS[index]`` (scalar int tensor) on a uint8 HxWx3 image, with the
        magnitude negated where ``negate`` (scalar bool tensor) for the signed ops."""
        sign = tf.cast(negate, tf.int32)

        def ratios():
            return tf.gather(self._r1, sign), tf.gather(self._r2, sign)

        def brightness():
            r1, r2 = ratios()
            return _blend(img, None, r1, r2)

        def contrast():
            r1, r2 = ratios()
            gray = grayscale(img)
            mean = tf.reduce_sum(tf.cast(gray, tf.int32))  # exact, then torch's mean
            mean = tf.cast(mean, tf.float32) / tf.cast(tf.size(gray), tf.float32)
            return _blend(img, mean, r1, r2)

        def color():
            r1, r2 = ratios()
            return _blend(img, grayscale(img), r1, r2)

        def sharpness():
            r1, r2 = ratios()
            # torchvision returns images of height or width <= 2 unchanged
            small = tf.reduce_any(tf.shape(img)[:2] <= 2)
            r1, r2 = tf.where(small, 1.0, r1), tf.where(small, 0.0, r2)
            return _blend(img, sharpness_blur(img), r1, r2)

        def affine():
            linear, center, factor = tf.split(tf.gather(self._affine, 2 * index + sign), [4, 2, 2])
            size = tf.cast(tf.shape(img)[1::-1], tf.float64)  # (w, h)
            return affine_nearest(
                img,
                tf.reshape(linear, [2, 2]),
                center * size,
                factor * self.translate_pixels(size),
            )

        branches = [
            lambda: img,
            brightness,
            lambda: posterize(img, self.posterize_bits),
            lambda: solarize(img, self.solarize),
            contrast,
            lambda: autocontrast(img),
            lambda: equalize(img),
            color,
            sharpness,
            affine,
        ]
        out = tf.switch_case(tf.gather(self._branch, index), branches)
        return tf.ensure_shape(out, img.shape)

    def draw(self, seed):
        """``(op indices, negate flags)`` of the ``num_ops`` steps for a stateless seed."""
        seed = tf.cast(seed, tf.int32)
        ops = tf.random.stateless_uniform(
            [self.num_ops], seed, minval=0, maxval=len(OPS), dtype=tf.int32
        )
        sign_seed = tf.random.experimental.stateless_fold_in(seed, 1)
        neg = tf.random.stateless_uniform([self.num_ops], sign_seed, 0, 2, dtype=tf.int32)
        return ops, tf.equal(neg, 1)

    def __call__(self, image, seed=None):
        image = tf.convert_to_tensor(image)
        dtype = image.dtype
        img = to_uint8(image)
        if seed is None:
            seed = tf.random.uniform(
                [2], minval=0, maxval=2**31 - 1, dtype=tf.int32, seed=self.seed
            )
        ops, negate = self.draw(seed)
        for k in range(self.num_ops):
            img = self.apply_op(img, ops[k], negate[k])
        return img if dtype == tf.uint8 else tf.cast(img, dtype)
