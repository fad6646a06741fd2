"""A TFDS builder for PASCAL VOC 2012 semantic segmentation from a local VOCdevkit.

TFDS' own ``voc`` dataset is the detection task; the segmentation masks are not in
it. This builder reads what users already have on disk (``manual_dir``):

* ``VOCdevkit/VOC2012/JPEGImages/*.jpg``, ``VOCdevkit/VOC2012/SegmentationClass/*.png``
  (palette PNGs: class index 0..20, 255 = object boundary / "void" = ignore) and
  ``VOCdevkit/VOC2012/ImageSets/Segmentation/{train,val}.txt``;
* optionally the Semantic Boundaries Dataset (Hariharan et al. 2011), as released:
  ``benchmark_RELEASE/dataset/{img/*.jpg, cls/*.mat, train.txt, val.txt}``. With it
  the builder adds the split ``train_aug`` = VOC train + SBD train + SBD val minus
  every VOC val image (the usual 10,582-image "trainaug" set the official
  MobileViT/MobileViTv3 recipes train on, besides COCO which is not included here).

Splits: ``train`` (1,464), ``validation`` (1,449), ``train_aug`` (with SBD).
Masks are stored as single-channel PNGs of class indices, 255 = ignore.
"""

from __future__ import annotations

import os

import numpy as np
import tensorflow_datasets as tfds

VOC_CLASSES = (
    "background",
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
)
IGNORE_INDEX = 255


def find_voc_root(manual_dir: str) -> str:
    for candidate in (
        os.path.join(manual_dir, "VOCdevkit", "VOC2012"),
        os.path.join(manual_dir, "VOC2012"),
        manual_dir,
    ):
        if os.path.isdir(os.path.join(candidate, "SegmentationClass")):
            return candidate
    raise FileNotFoundError(
        f"no PASCAL VOC 2012 found under manual_dir {manual_dir!r}: it must contain "
        "VOCdevkit/VOC2012/{JPEGImages, SegmentationClass, ImageSets/Segmentation} "
        "(extract VOCtrainval_11-May-2012.tar there)"
    )


def find_sbd_root(manual_dir: str):
    for candidate in (
        os.path.join(manual_dir, "benchmark_RELEASE", "dataset"),
        os.path.join(manual_dir, "SBD", "dataset"),
        os.path.join(manual_dir, "SBD"),
    ):
        if os.path.isdir(os.path.join(candidate, "cls")):
            return candidate
    return None


def _read_ids(path):
    with open(path, encoding="utf-8") as f:
        return [line.strip() for line in f if line.strip()]


def read_palette_mask(path) -> np.ndarray:
    """Class indices of a VOC palette PNG (not its RGB colours)."""
    from PIL import Image

    with Image.open(path) as img:
        return np.array(img, dtype=np.uint8)


def read_sbd_mask(path) -> np.ndarray:
    from scipy.io import loadmat

    return np.asarray(loadmat(path)["GTcls"]["Segmentation"][0][0], dtype=np.uint8)


class Voc2012Segmentation(tfds.core.GeneratorBasedBuilder):
    """PASCAL VOC 2012 segmentation (+ optional SBD) from a local copy."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "VOC 2012 segmentation from a local VOCdevkit, optional SBD."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Put the extracted VOCtrainval_11-May-2012.tar (the folder VOCdevkit/) in manual_dir; "
        "optionally also the extracted SBD benchmark.tgz (the folder benchmark_RELEASE/) to get "
        "the train_aug split."
    )

    def _info(self):
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=(None, None, 3)),
                    "segmentation_mask": tfds.features.Image(shape=(None, None, 1)),
                    "file_name": tfds.features.Text(),
                }
            ),
            description=__doc__,
        )

    def _split_generators(self, dl_manager):
        manual = os.fspath(dl_manager.manual_dir)
        voc = find_voc_root(manual)
        sets = os.path.join(voc, "ImageSets", "Segmentation")
        train_ids = _read_ids(os.path.join(sets, "train.txt"))
        val_ids = _read_ids(os.path.join(sets, "val.txt"))
        voc_items = lambda ids: [  # noqa: E731
            (
                i,
                os.path.join(voc, "JPEGImages", f"{i}.jpg"),
                os.path.join(voc, "SegmentationClass", f"{i}.png"),
            )
            for i in ids
        ]
        splits = {
            "train": self._generate_examples(voc_items(train_ids)),
            "validation": self._generate_examples(voc_items(val_ids)),
        }
        sbd = find_sbd_root(manual)
        if sbd is not None:
            seen = set(train_ids)
            excluded = set(val_ids)
            items = voc_items(train_ids)
            for list_name in ("train.txt", "val.txt"):
                for i in _read_ids(os.path.join(sbd, list_name)):
                    if i in seen or i in excluded:
                        continue
                    seen.add(i)
                    items.append(
                        (
                            i,
                            os.path.join(sbd, "img", f"{i}.jpg"),
                            os.path.join(sbd, "cls", f"{i}.mat"),
                        )
                    )
            splits["train_aug"] = self._generate_examples(items)
        return splits

    def _generate_examples(self, items):
        for image_id, image_path, mask_path in items:
            if mask_path.endswith(".mat"):
                mask = read_sbd_mask(mask_path)
            else:
                mask = read_palette_mask(mask_path)
            yield (
                image_id,
                {
                    "image": image_path,
                    "segmentation_mask": mask[..., None],
                    "file_name": image_id,
                },
            )
