"""Segmentation sources.

* ``scene_parse150`` / ``ade20k``: ADE20K (SceneParsing, 150 classes) through TFDS.
  The annotation PNG holds 0 = "other"/unlabeled and 1..150 = classes; as in the
  official ml-cvnets ADE20K dataset the labels are shifted by -1, so 0 becomes the
  ignore index -1 (recipe ``loss.ignore_idx: -1``) and the classes are 0..149.
  TFDS' ``test`` split is ADE20K's validation set.
* ``voc2012`` / ``voc2012_segmentation``: PASCAL VOC 2012 (+SBD) through the TFDS
  builder of :mod:`training.datasets.voc` (local VOCdevkit in ``manual_dir``);
  255 = ignore.
* a folder of image/mask pairs: ``ROOT/{train,val}/{images,masks}/`` (or
  ``ROOT/{images,masks}``, split 90/10), masks are PNGs of class indices (palette
  PNGs are read as indices), 255 = ignore, same file stem as the image.
* ``demo``: generated shapes with exact masks (:mod:`training.datasets.demo`).
"""

from __future__ import annotations

import glob
import os

from training.datasets import tfds_utils
from training.datasets.base import DatasetError, DatasetSource
from training.datasets.names import ADE_NAMES, SHAPES_NAMES, VOC_NAMES, unknown_dataset

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp")


def open_segmentation(
    name: str,
    *,
    data_dir: str | None = None,
    manual_dir: str | None = None,
    image_size: int = 64,
) -> DatasetSource:
    if name in SHAPES_NAMES:
        from training.datasets.demo import shapes_source

        return shapes_source(image_size)
    if os.path.isdir(name):
        return _pairs_folder(name)
    if name in ADE_NAMES:
        return _ade20k(data_dir, manual_dir)
    if name in VOC_NAMES:
        return _voc(data_dir, manual_dir)
    import tensorflow_datasets as tfds

    if name in tfds.list_builders(with_community_datasets=False):
        raise unknown_dataset(
            name, "segmentation", reason="a TFDS dataset, but not a supported segmentation one"
        )
    raise unknown_dataset(name, "segmentation")


def _ade20k(data_dir, manual_dir) -> DatasetSource:
    import tensorflow as tf

    builder = tfds_utils.open_builder("scene_parse150", data_dir)
    tfds_utils.prepare(builder, data_dir=data_dir, manual_dir=manual_dir)

    def load(split, *, shuffle_files=False, seed=None):
        ds = builder.as_dataset(split=split, shuffle_files=shuffle_files)

        def convert(ex):
            mask = tf.cast(ex["annotation"][..., 0], tf.int32) - 1  # 0 (other) -> -1 (ignore)
            return {"image": tf.cast(ex["image"], tf.uint8), "mask": mask}

        return ds.map(convert, num_parallel_calls=tf.data.AUTOTUNE)

    return DatasetSource(
        name="scene_parse150",
        task="segmentation",
        num_classes=150,
        train_split="train",
        val_split="test",  # TFDS scene_parse150 'test' = ADE20K validation images
        load=load,
        num_examples=lambda split: tfds_utils.num_examples(builder, split),
        ignore_index=-1,
        description="ADE20K (TFDS scene_parse150)",
    )


def _voc(data_dir, manual_dir) -> DatasetSource:
    import tensorflow as tf
    import tensorflow_datasets as tfds

    from training.datasets import voc

    builder = voc.Voc2012Segmentation(data_dir=data_dir)
    if not builder.is_prepared():
        manual_dir = manual_dir or tfds_utils.default_manual_dir(data_dir)
        try:
            voc.find_voc_root(manual_dir)
        except FileNotFoundError as err:
            raise DatasetError(f"{err}; then pass --manual-dir DIR") from None
        builder.download_and_prepare(
            download_config=tfds.download.DownloadConfig(manual_dir=manual_dir)
        )
    train = "train_aug" if "train_aug" in builder.info.splits else "train"

    def load(split, *, shuffle_files=False, seed=None):
        ds = builder.as_dataset(split=split, shuffle_files=shuffle_files)
        return ds.map(
            lambda ex: {
                "image": tf.cast(ex["image"], tf.uint8),
                "mask": tf.cast(ex["segmentation_mask"][..., 0], tf.int32),
            },
            num_parallel_calls=tf.data.AUTOTUNE,
        )

    return DatasetSource(
        name="voc2012",
        task="segmentation",
        num_classes=len(voc.VOC_CLASSES),
        train_split=train,
        val_split="validation",
        load=load,
        num_examples=lambda split: tfds_utils.num_examples(builder, split),
        class_names=list(voc.VOC_CLASSES),
        ignore_index=voc.IGNORE_INDEX,
        description="PASCAL VOC 2012 segmentation" + (" + SBD" if train == "train_aug" else ""),
    )


def _list_pairs(folder):
    images_dir, masks_dir = os.path.join(folder, "images"), os.path.join(folder, "masks")
    if not (os.path.isdir(images_dir) and os.path.isdir(masks_dir)):
        return None
    pairs, missing = [], []
    for path in sorted(glob.glob(os.path.join(images_dir, "*"))):
        if not path.lower().endswith(IMAGE_EXTS):
            continue
        stem = os.path.splitext(os.path.basename(path))[0]
        mask = os.path.join(masks_dir, stem + ".png")
        (pairs if os.path.exists(mask) else missing).append((path, mask))
    if missing:
        raise DatasetError(
            f"{len(missing)} image(s) in {images_dir!r} have no mask {masks_dir}/<stem>.png, "
            f"e.g. {missing[0][0]!r}: add the masks or remove the images"
        )
    if not pairs:
        raise DatasetError(f"no images found in {images_dir!r} ({', '.join(IMAGE_EXTS)})")
    return pairs


def _read_mask_indices(path):
    import numpy as np

    from training.datasets.voc import read_palette_mask

    mask = read_palette_mask(path.decode() if isinstance(path, bytes) else path)
    if mask.ndim == 3:
        mask = mask[..., 0]
    return mask.astype(np.int32)


def _pairs_folder(root: str) -> DatasetSource:
    import numpy as np
    import tensorflow as tf

    splits = {}
    for split, sub in (("train", "train"), ("validation", "val")):
        pairs = _list_pairs(os.path.join(root, sub))
        if pairs:
            splits[split] = pairs
    if not splits:
        pairs = _list_pairs(root)
        if not pairs:
            raise DatasetError(
                f"segmentation folder {root!r} must hold images/ and masks/ (or train/ and val/ "
                "each with images/ and masks/)"
            )
        cut = max(1, int(len(pairs) * 0.9))
        splits = {"train": pairs[:cut], "validation": pairs[cut:] or pairs[-1:]}
    elif "validation" not in splits:
        raise DatasetError(f"{root!r} has train/ but no val/ with images/ and masks/")
    max_label = 0
    for _, mask_path in splits["train"][:200]:  # class count from the masks (255 = ignore)
        m = _read_mask_indices(mask_path)
        valid = m[m != 255]
        if valid.size:
            max_label = max(max_label, int(valid.max()))
    num_classes = max_label + 1

    def load(split, *, shuffle_files=False, seed=None):
        pairs = splits["train" if split == "train" else "validation"]
        images = [p for p, _ in pairs]
        masks = [m for _, m in pairs]
        ds = tf.data.Dataset.from_tensor_slices((images, masks))

        def read(image_path, mask_path):
            image = tf.io.decode_image(
                tf.io.read_file(image_path), channels=3, expand_animations=False
            )
            mask = tf.numpy_function(_read_mask_indices, [mask_path], tf.int32)
            mask = tf.reshape(mask, tf.shape(image)[:2])
            return {"image": tf.cast(image, tf.uint8), "mask": mask}

        return ds.map(read, num_parallel_calls=tf.data.AUTOTUNE)

    return DatasetSource(
        name=root,
        task="segmentation",
        num_classes=int(np.maximum(num_classes, 2)),
        train_split="train",
        val_split="validation",
        load=load,
        num_examples=lambda split: len(splits["train" if split == "train" else "validation"]),
        ignore_index=255,
        description=f"image/mask folder {root}",
    )
