"""Classification sources: any TFDS image-classification dataset (``imagenet2012``
included, a manual download), a folder of images (``tfds.folder_dataset.ImageFolder``)
and the bundled ``demo`` digits."""

from __future__ import annotations

import os

from training.datasets import tfds_utils
from training.datasets.base import DatasetError, DatasetSource
from training.datasets.names import DEMO_NAMES


def open_classification(
    name: str, *, data_dir: str | None = None, manual_dir: str | None = None
) -> DatasetSource:
    if name in DEMO_NAMES:
        from training.datasets.demo import digits_source

        return digits_source()
    if os.path.isdir(name):
        return _image_folder(name)
    if os.sep in name or name.startswith("."):
        raise DatasetError(
            f"dataset folder {name!r} does not exist; pass an existing folder with one "
            "sub-folder per split (train/, val/ or test/) and one sub-folder per class in each"
        )
    return _tfds_classification(name, data_dir=data_dir, manual_dir=manual_dir)


def _tfds_classification(name, *, data_dir, manual_dir) -> DatasetSource:
    import tensorflow_datasets as tfds

    builder = tfds_utils.open_builder(name, data_dir)
    features = builder.info.features
    image_key = "image" if "image" in features else None
    label_key = "label" if "label" in features else None
    if (
        image_key is None
        or label_key is None
        or not isinstance(features[label_key], tfds.features.ClassLabel)
    ):
        raise DatasetError(
            f"TFDS dataset {name!r} is not an image-classification dataset (it needs an "
            f"'image' and a ClassLabel 'label' feature; it has {list(features.keys())}). "
            "For segmentation pass --task segmentation."
        )
    tfds_utils.prepare(builder, data_dir=data_dir, manual_dir=manual_dir)
    train, val = tfds_utils.pick_splits(builder)
    return _builder_source(builder, name, train, val, f"TFDS {name}")


def _builder_source(builder, name, train, val, description) -> DatasetSource:
    """A :class:`DatasetSource` over a TFDS builder with ``image`` / ``label`` features;
    images are decoded in the (parallel) map, not by TFDS."""
    import tensorflow as tf
    import tensorflow_datasets as tfds

    def load(split, *, shuffle_files=False, seed=None):
        read_config = tfds.ReadConfig(shuffle_seed=seed) if seed is not None else None
        ds = builder.as_dataset(
            split=split,
            shuffle_files=shuffle_files,
            decoders={"image": tfds.decode.SkipDecoding()},
            read_config=read_config,
        )
        return ds.map(
            lambda ex: {"image": _decode_rgb(ex["image"]), "label": tf.cast(ex["label"], tf.int64)},
            num_parallel_calls=tf.data.AUTOTUNE,
        )

    label_feature = builder.info.features["label"]
    return DatasetSource(
        name=name,
        task="classification",
        num_classes=int(label_feature.num_classes),
        train_split=train,
        val_split=val,
        load=load,
        num_examples=lambda split: tfds_utils.num_examples(builder, split),
        class_names=list(label_feature.names),
        description=description,
    )


def _decode_rgb(encoded):
    """Decode (parallel, in the tf.data map) to uint8 RGB; grey images get 3 channels."""
    import tensorflow as tf

    if encoded.dtype != tf.string:  # already decoded (e.g. mocked data)
        image = encoded
    else:
        image = tf.io.decode_image(encoded, channels=3, expand_animations=False)
    image = tf.cast(image, tf.uint8)
    if image.shape.rank == 3 and image.shape[-1] == 1:
        image = tf.image.grayscale_to_rgb(image)
    return image


def _image_folder(root: str) -> DatasetSource:
    import tensorflow_datasets as tfds

    try:
        builder = tfds.folder_dataset.ImageFolder(root)
    except Exception as err:
        raise DatasetError(
            f"cannot read image folder {root!r} ({err}): the layout must be "
            "ROOT/<split>/<class>/<image> with splits such as train/ and val/"
        ) from err
    splits = list(builder.info.splits.keys())
    if not splits:
        raise DatasetError(
            f"image folder {root!r} has no split sub-folders: use ROOT/train/<class>/*.jpg "
            "and ROOT/val/<class>/*.jpg"
        )
    train = "train" if "train" in splits else splits[0]
    val = next((s for s in ("val", "validation", "test") if s in splits), None)
    if val is None:
        train, val = f"{train}[:90%]", f"{train}[90%:]"
    return _builder_source(builder, root, train, val, f"image folder {root}")
