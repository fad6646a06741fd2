"""training.randaugment: torchvision's RandAugment (tensor path) in TF ops.

The references below are small NumPy transcriptions of torchvision 0.29's
``transforms/_functional_tensor.py`` / ``autoaugment.py`` formulas on uint8 images
(float32 arithmetic, truncating casts), so the tests need no torch.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

from training import randaugment  # noqa: E402
from training.randaugment import OPS, RandAugment  # noqa: E402

F32 = np.float32

# torchvision RandAugment()._augmentation_space(31, (h, w)) values at magnitude 9
# (float32 torch.linspace, read with .item())
SHEAR, ROTATE, ENHANCE, SOLARIZE, POSTERIZE_BITS = (
    0.09000000357627869,
    9.0,
    0.26999998092651367,
    178.5,
    7,
)


def _images():
    from support.photos import sample_images

    china = sample_images()[0][::8, ::8][:48, :64]  # china.jpg, 48x64x3, no download
    rng = np.random.RandomState(0)
    low = rng.randint(60, 120, (20, 26, 3)).astype(np.uint8)  # narrow range: autocontrast
    low[..., 2] = 90  # a constant channel: autocontrast/equalize leave it
    return {
        "china": np.ascontiguousarray(china),
        "random": rng.randint(0, 256, (17, 23, 3)).astype(np.uint8),
        "low": low,
    }


IMAGES = _images()


# ---------------------------------------------------------------- numpy references
def np_blend(img, other, ratio):
    out = F32(ratio) * img.astype(F32) + F32(1.0 - ratio) * F32(other)
    return np.clip(out, 0, 255).astype(np.uint8)  # truncation, like .to(torch.uint8)


def np_gray(img):
    x = img.astype(F32)
    return (F32(0.2989) * x[..., 0] + F32(0.587) * x[..., 1] + F32(0.114) * x[..., 2]).astype(
        np.uint8
    )


def np_sharpness(img, ratio):
    x = img.astype(np.int64)
    h, w = x.shape[:2]
    window = sum(x[dy : h - 2 + dy, dx : w - 2 + dx] for dy in range(3) for dx in range(3))
    blurred = img.copy()
    blurred[1:-1, 1:-1] = np.rint((window + 4 * x[1:-1, 1:-1]) / 13.0)  # never a tie
    return np_blend(img, blurred.astype(F32), ratio)


def np_autocontrast(img):
    lo = img.min(axis=(0, 1)).astype(F32)
    hi = img.max(axis=(0, 1)).astype(F32)
    with np.errstate(divide="ignore"):
        scale = F32(255.0) / (hi - lo)
    same = ~np.isfinite(scale)
    lo[same], scale[same] = 0, 1
    return np.clip((img.astype(F32) - lo) * scale, 0, 255).astype(np.uint8)


def np_equalize(img):
    out = np.empty_like(img)
    for c in range(img.shape[-1]):
        chan = img[..., c]
        hist = np.bincount(chan.ravel(), minlength=256)
        step = hist[hist != 0][:-1].sum() // 255
        if step == 0:
            out[..., c] = chan
            continue
        lut = (np.cumsum(hist) + step // 2) // step
        lut = np.clip(np.concatenate([[0], lut[:-1]]), 0, 255)
        out[..., c] = lut[chan]
    return out


def np_sample(img, src_x, src_y):
    """Nearest sampling at source pixel indices (round half to even), fill 0."""
    h, w = img.shape[:2]
    ix, iy = np.rint(src_x).astype(int), np.rint(src_y).astype(int)
    ok = (ix >= 0) & (ix < w) & (iy >= 0) & (iy < h)
    out = img[np.clip(iy, 0, h - 1), np.clip(ix, 0, w - 1)]
    return np.where(ok[..., None], out, 0).astype(img.dtype)


def np_affine(img, op, magnitude):
    """F.affine / F.rotate (nearest, fill 0) written out: output pixel (i, j) reads
    torchvision's inverse-mapped pixel centre."""
    h, w = img.shape[:2]
    i, j = np.meshgrid(
        np.arange(h, dtype=np.float64), np.arange(w, dtype=np.float64), indexing="ij"
    )
    if op == "ShearX":  # center=[0, 0]: x' = x + tan(shear) * y about the top-left corner
        return np_sample(img, j + magnitude * (i + 0.5), i)
    if op == "ShearY":
        return np_sample(img, j, i + magnitude * (j + 0.5))
    if op == "TranslateX":
        return np_sample(img, j - int(magnitude), i)
    if op == "TranslateY":
        return np_sample(img, j, i - int(magnitude))
    if op == "Rotate":  # about the image centre, counter-clockwise
        x, y = j + 0.5 - w / 2, i + 0.5 - h / 2
        a = math.radians(-magnitude)
        sx = math.cos(a) * x + math.sin(a) * y
        sy = -math.sin(a) * x + math.cos(a) * y
        return np_sample(img, sx + w / 2 - 0.5, sy + h / 2 - 0.5)
    raise ValueError(op)


def reference(img, op, negate):
    """torchvision ``_apply_op`` at magnitude 9 of 31 bins."""
    sign = -1.0 if negate else 1.0
    h, w = img.shape[:2]
    if op == "Identity":
        return img
    if op in ("ShearX", "ShearY"):
        return np_affine(img, op, sign * SHEAR)
    if op == "TranslateX":  # torch.linspace(0, 150/331 * w, 31)[9]
        return np_affine(img, op, sign * float(F32(F32(150 / 331 * w) / F32(30)) * F32(9)))
    if op == "TranslateY":
        return np_affine(img, op, sign * float(F32(F32(150 / 331 * h) / F32(30)) * F32(9)))
    if op == "Rotate":
        return np_affine(img, op, sign * ROTATE)
    ratio = 1.0 + sign * ENHANCE
    if op == "Brightness":
        return np_blend(img, 0.0, ratio)
    if op == "Color":
        return np_blend(img, np_gray(img)[..., None].astype(F32), ratio)
    if op == "Contrast":  # float32 mean of the uint8 grayscale (its sum is exact here)
        gray = np_gray(img)
        return np_blend(img, F32(gray.sum()) / F32(gray.size), ratio)
    if op == "Sharpness":
        return np_sharpness(img, ratio)
    if op == "Posterize":
        return img & np.uint8((-(2 ** (8 - POSTERIZE_BITS))) & 0xFF)
    if op == "Solarize":
        return np.where(img >= SOLARIZE, 255 - img, img).astype(np.uint8)
    if op == "AutoContrast":
        return np_autocontrast(img)
    if op == "Equalize":
        return np_equalize(img)
    raise ValueError(op)


# ---------------------------------------------------------------- helpers
RA = RandAugment()


@tf.function(
    input_signature=[
        tf.TensorSpec([None, None, 3], tf.uint8),
        tf.TensorSpec([], tf.int32),
        tf.TensorSpec([], tf.bool),
    ]
)
def _apply(img, index, negate):  # dynamic shapes, in a graph (Grappler runs)
    return RA.apply_op(img, index, negate)


def apply(img, op, negate):
    return _apply(tf.constant(img), tf.constant(OPS.index(op)), tf.constant(negate)).numpy()


# ---------------------------------------------------------------- tests
def test_magnitudes_are_torchvisions():
    assert (RA.shear, RA.rotate, RA.enhance) == (SHEAR, ROTATE, ENHANCE)
    assert (RA.solarize, RA.posterize_bits) == (SOLARIZE, POSTERIZE_BITS)
    # torch.linspace(0, 150/331 * size, 31)[9], truncated: 34 px at 256, 30 at 224
    pixels = RA.translate_pixels(tf.constant([256, 224, 64, 23]))
    np.testing.assert_array_equal(pixels.numpy(), [34, 30, 8, 3])
    # torchvision's posterize table 8 - round(arange(31) / 7.5)
    bits = [RandAugment(magnitude=m).posterize_bits for m in range(31)]
    assert bits == [8] * 4 + [7] * 8 + [6] * 7 + [5] * 8 + [4] * 4
    # the float32 linspace of torch's CPU kernel (second half: end - step * (n-1-i))
    np.testing.assert_array_equal(
        randaugment.torch_linspace(255.0, 0.0, 31)[[0, 9, 20, 30]], [255.0, 178.5, 85.0, 0.0]
    )


@pytest.mark.parametrize("name", sorted(IMAGES))
@pytest.mark.parametrize("op", OPS)
def test_each_op_matches_the_torchvision_formula(op, name):
    img = IMAGES[name]
    for negate in (False, True) if op in randaugment.SIGNED else (False,):
        out = apply(img, op, negate)
        assert out.dtype == np.uint8 and out.shape == img.shape
        np.testing.assert_array_equal(out, reference(img, op, negate), err_msg=f"{op} {negate}")


def test_ops_change_the_image_as_expected():
    img = IMAGES["china"]
    # the references are not trivially the input: the ops do something (this image
    # already spans 0..255 per channel, AutoContrast is checked on "low" below)
    for op in OPS[1:]:
        if op != "AutoContrast":
            assert not np.array_equal(apply(img, op, False), img), op
    # shear about the top-left corner: row 0 moves by round(0.045) = 0 px, the last row
    # by round(0.09 * 47.5) = 4 px (left for +shear: the source is to the right)
    sheared = apply(img, "ShearX", False)
    np.testing.assert_array_equal(sheared[0], img[0])
    np.testing.assert_array_equal(sheared[-1, :-4], img[-1, 4:])
    assert not sheared[-1, -4:].any()  # filled with 0
    # translate by int(150/331 * 64 * 9/30) = 8 px: content moves right by 8
    moved = apply(img, "TranslateX", False)
    np.testing.assert_array_equal(moved[:, 8:], img[:, :-8])
    assert not moved[:, :8].any()
    np.testing.assert_array_equal(apply(img, "TranslateY", True)[:-6], img[6:])  # up 6 px
    # solarize inverts exactly the pixels >= 178.5
    sol = apply(img, "Solarize", False)
    np.testing.assert_array_equal(sol[img >= 179], 255 - img[img >= 179])
    np.testing.assert_array_equal(sol[img < 179], img[img < 179])
    # autocontrast stretches each channel to 0..255
    auto = apply(IMAGES["low"], "AutoContrast", False)
    assert auto[..., :2].min(axis=(0, 1)).tolist() == [0, 0]
    assert auto[..., :2].max(axis=(0, 1)).tolist() == [255, 255]
    np.testing.assert_array_equal(auto[..., 2], 90)  # constant channel unchanged


def test_uint8_blend_truncates():
    # 1.27 * 102 = 129.54: torchvision's .to(uint8) truncates to 129 (not 130)
    img = np.full((4, 4, 3), 102, np.uint8)
    assert int(apply(img, "Brightness", False)[0, 0, 0]) == 129
    assert int(apply(img, "Brightness", True)[0, 0, 0]) == 74  # 0.73 * 102 = 74.46
    # clamped at 255: 1.27 * 250
    assert int(apply(np.full((3, 3, 3), 250, np.uint8), "Brightness", False)[0, 0, 0]) == 255
    # contrast towards the grayscale mean: the mean of a uniform image is its gray value
    img = np.zeros((4, 4, 3), np.uint8)
    img[..., 0] = 200  # gray = int(0.2989 * 200) = 59
    out = apply(img, "Contrast", True)  # 0.73 * x + 0.27 * 59: 161.93 and 15.93, truncated
    np.testing.assert_array_equal(out[0, 0], [161, 15, 15])


def test_sharpness_keeps_tiny_images():
    # torchvision returns images with a side <= 2 unchanged (no blend)
    tiny = IMAGES["random"][:2]
    for negate in (False, True):
        np.testing.assert_array_equal(apply(tiny, "Sharpness", negate), tiny)
    # otherwise only the interior is blurred (ratio 0 gives the blurred image)
    img = IMAGES["random"]
    blurred = np_sharpness(img, 0.0)
    np.testing.assert_array_equal(blurred[0], img[0])
    assert not np.array_equal(blurred[1:-1, 1:-1], img[1:-1, 1:-1])


def test_dtype_and_shape_are_preserved():
    img = IMAGES["china"]
    seed = tf.constant([3, 4])
    out = RA(tf.constant(img), seed=seed)
    assert out.dtype == tf.uint8 and out.shape == img.shape
    # float input (the training pipeline's): rounded to uint8 values, returned as float32
    noisy = img.astype(np.float32) + np.float32(0.3)
    outf = RA(tf.constant(noisy), seed=seed)
    assert outf.dtype == tf.float32 and outf.shape == img.shape
    np.testing.assert_array_equal(outf.numpy(), out.numpy().astype(np.float32))
    # static shapes survive a graph
    graph = tf.function(lambda x: RA(x, seed=seed))
    assert graph(tf.constant(noisy)).shape == img.shape
    spec = graph.get_concrete_function(tf.TensorSpec([48, 64, 3], tf.float32))
    assert spec.output_shapes.as_list() == [48, 64, 3]


def test_exactly_num_ops_drawn_ops_are_applied():
    img = IMAGES["china"]
    seen = set()
    for s in range(40):
        seed = tf.constant([s, 7])
        ops, negate = RA.draw(seed)
        ops, negate = ops.numpy(), negate.numpy()
        assert ops.shape == (2,)
        seen.update(ops.tolist())
        expected = img
        for k in range(2):
            expected = reference(expected, OPS[ops[k]], bool(negate[k]))
        np.testing.assert_array_equal(RA(tf.constant(img), seed=seed).numpy(), expected)
    assert len(seen) >= 12  # uniform over the 14 ops (with replacement)
    # num_ops=0 and magnitude 0 are identities (except AutoContrast/Equalize, and
    # Solarize at threshold 255, which an image without 255 does not meet)
    assert np.array_equal(RandAugment(num_ops=0)(tf.constant(img)).numpy(), img)
    zero = RandAugment(num_ops=3, magnitude=0)
    clipped = np.clip(img, 0, 254)
    checked = 0
    for s in range(12):
        ops, _ = zero.draw(tf.constant([s, 1]))
        out = zero(tf.constant(clipped), seed=tf.constant([s, 1])).numpy()
        if not {"AutoContrast", "Equalize"} & {OPS[k] for k in ops.numpy()}:
            np.testing.assert_array_equal(out, clipped)
            checked += 1
    assert checked >= 4


def test_draws_are_uniform_and_signs_balanced():
    draws = [RA.draw(tf.constant([s, 11])) for s in range(300)]
    ops = np.concatenate([d[0].numpy() for d in draws])
    signs = np.concatenate([d[1].numpy() for d in draws])
    counts = np.bincount(ops, minlength=14)
    assert counts.min() > 20 and counts.max() < 70  # expected 600 / 14 = 43
    assert 0.4 < signs.mean() < 0.6


def test_tf_data_map_with_dynamic_shapes():
    sizes = [(17, 23), (40, 31), (48, 64), (9, 50)]
    china = IMAGES["china"]

    def gen():
        for i, (h, w) in enumerate(sizes):
            yield china[:h, :w].astype(np.float32), i

    ds = tf.data.Dataset.from_generator(
        gen,
        output_signature=(
            tf.TensorSpec([None, None, 3], tf.float32),
            tf.TensorSpec([], tf.int32),
        ),
    )
    seeded = ds.map(
        lambda x, i: (RA(x, seed=tf.stack([i, 5])), i), num_parallel_calls=tf.data.AUTOTUNE
    )
    for out, i in seeded:
        h, w = sizes[int(i)]
        assert out.dtype == tf.float32 and out.shape == (h, w, 3)
        eager = RA(tf.constant(china[:h, :w]), seed=tf.constant([int(i), 5]))
        np.testing.assert_array_equal(out.numpy(), eager.numpy().astype(np.float32))
    # without explicit seeds: the op-level seeded draw; a fresh iterator repeats it
    drawn = ds.map(lambda x, i: RandAugment(seed=1)(x), num_parallel_calls=tf.data.AUTOTUNE)
    outs = [x.numpy() for x in drawn]
    assert [x.shape[:2] for x in outs] == sizes
    values = np.concatenate([x.ravel() for x in outs])
    assert values.min() >= 0 and values.max() <= 255 and np.all(values == np.round(values))
    fixed = ds.map(lambda x, i: RandAugment(seed=1)(x))
    first, second = ([x.numpy() for x in fixed] for _ in range(2))
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a, b)


def test_classification_augment_uses_it():
    from training import augment, recipes

    values = recipes.get_recipe("mobilevitv2_in1k").to_dict()
    transform = augment.ClassificationAugment(values, 5, seed=0)
    assert isinstance(transform.randaugment, RandAugment)
    assert (transform.randaugment.num_ops, transform.randaugment.magnitude) == (2, 9)
    assert not hasattr(augment, "RANDAUGMENT_MAGNITUDE")
