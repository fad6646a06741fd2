"""Dataset sources: the bundled demo data, TFDS (mocked), folders, the VOC builder."""

from __future__ import annotations

import os

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")
tfds = pytest.importorskip("tensorflow_datasets")

from training import pipeline, recipes  # noqa: E402
from training.datasets import DatasetError, open_dataset  # noqa: E402


def _values(name, **runtime):
    values = recipes.get_recipe(name).to_dict()
    values["runtime"].update(runtime)
    return values


def test_demo_digits_are_real_and_split_stratified():
    source = open_dataset("demo", "classification")
    assert (
        source.num_classes,
        source.num_examples("train"),
        source.num_examples("validation"),
    ) == (10, 1438, 359)
    val = list(source.load("validation").as_numpy_iterator())
    labels = np.array([ex["label"] for ex in val])
    assert np.all(np.bincount(labels) >= 34)  # every digit ~20 % of its class
    image = val[0]["image"]
    assert image.shape == (8, 8, 3) and image.dtype == np.uint8 and image.max() > 100


def test_demo_shapes_masks_match_images():
    source = open_dataset("demo", "segmentation", image_size=64)
    ex = next(source.load("train").as_numpy_iterator())
    assert ex["image"].shape == (64, 64, 3) and ex["mask"].shape == (64, 64)
    assert set(np.unique(ex["mask"])) <= {0, 1, 2, 3} and len(np.unique(ex["mask"])) >= 2


def test_imagenet2012_pipeline_with_mocked_tfds(tmp_path):
    values = _values("mobilevitv3_xxs_in1k", max_train_examples=12)
    values["dataset"]["train_batch_size0"] = 2
    with tfds.testing.mock_data(num_examples=12, data_dir=str(tmp_path)):
        source = open_dataset("imagenet2012", "classification", data_dir=str(tmp_path))
        assert source.num_classes == 1000 and source.val_split == "validation"
        train = pipeline.classification_train(
            source, values, image_size=64, per_replica_batch=2, replicas=1, seed=0
        )
        x, y = next(iter(train))
        # multi-scale sampler around 64: crops 40..80 (+64) made divisible by 32 -> 64 / 96
        assert x.shape[1] in (64, 96) and x.shape[-1] == 3 and y.shape[-1] == 1000
        val = pipeline.classification_eval(source, values, image_size=64, batch_size=4)
        x, y = next(iter(val))
        assert tuple(x.shape) == (4, 64, 64, 3)


def test_scene_parse150_pipeline_with_mocked_tfds(tmp_path):
    values = _values("deeplabv3_ade20k_mobilevitv3_v2")
    with tfds.testing.mock_data(num_examples=4, data_dir=str(tmp_path)):
        source = open_dataset("scene_parse150", "segmentation", data_dir=str(tmp_path))
        assert (source.num_classes, source.ignore_index, source.val_split) == (150, -1, "test")
        ex = next(source.load("train").as_numpy_iterator())
        raw = next(
            tfds.load("scene_parse150", split="train", data_dir=str(tmp_path)).as_numpy_iterator()
        )["annotation"][..., 0]
        np.testing.assert_array_equal(ex["mask"], raw.astype(np.int32) - 1)  # 0 (other) -> -1
        train = pipeline.segmentation_train(
            source, values, image_size=64, per_replica_batch=2, replicas=1, seed=0
        )
        x, m = next(iter(train))
        assert tuple(x.shape) == (2, 64, 64, 3) and tuple(m.shape) == (2, 64, 64)
        val = pipeline.segmentation_eval(source, values, image_size=64, batch_size=2)
        x, m = next(iter(val))
        assert tuple(x.shape) == (2, 64, 64, 3)


def test_imagenet2012_without_manual_files_names_files_and_dir(tmp_path):
    with pytest.raises(DatasetError) as info:
        open_dataset("imagenet2012", "classification", data_dir=str(tmp_path / "tfds"))
    message = str(info.value)
    assert "ILSVRC2012_img_train.tar" in message and "ILSVRC2012_img_val.tar" in message
    assert str(tmp_path / "tfds" / "downloads" / "manual") in message and "--manual-dir" in message


def test_unknown_dataset_name():
    with pytest.raises(DatasetError, match="Unknown dataset 'imagenet2021'.*Did you mean"):
        open_dataset("imagenet2021", "classification")
    with pytest.raises(DatasetError, match="not an image-classification dataset"):
        open_dataset("scene_parse150", "classification")
    with pytest.raises(DatasetError, match="Unknown segmentation dataset"):
        open_dataset("no_such_seg_data", "segmentation")


def _write_png(path, array):
    from PIL import Image

    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(array).save(path)


def test_image_folder(tmp_path):
    rng = np.random.RandomState(0)
    for split in ("train", "val"):
        for cls in ("cat", "dog"):
            for i in range(3):
                _write_png(
                    str(tmp_path / split / cls / f"{i}.png"),
                    rng.randint(0, 255, (40, 50, 3), np.uint8),
                )
    source = open_dataset(str(tmp_path), "classification")
    assert source.num_classes == 2 and source.val_split == "val"
    assert source.class_names == ["cat", "dog"]
    values = _values("demo")
    ds = pipeline.classification_eval(source, values, image_size=32, batch_size=6)
    x, y = next(iter(ds))
    assert tuple(x.shape) == (6, 32, 32, 3)


def test_segmentation_pairs_folder(tmp_path):
    rng = np.random.RandomState(0)
    for split in ("train", "val"):
        for i in range(3):
            _write_png(
                str(tmp_path / split / "images" / f"{i}.png"),
                rng.randint(0, 255, (40, 48, 3), np.uint8),
            )
            mask = rng.randint(0, 5, (40, 48)).astype(np.uint8)
            mask[0] = 255
            _write_png(str(tmp_path / split / "masks" / f"{i}.png"), mask)
    source = open_dataset(str(tmp_path), "segmentation")
    assert source.num_classes == 5 and source.ignore_index == 255
    ex = next(source.load("train").as_numpy_iterator())
    assert ex["mask"].shape == (40, 48) and ex["mask"][0, 0] == 255
    os.remove(str(tmp_path / "val" / "masks" / "2.png"))
    with pytest.raises(DatasetError, match="have no mask"):
        open_dataset(str(tmp_path), "segmentation")


def _fake_vocdevkit(root, rng, with_sbd=True):
    from PIL import Image
    from scipy.io import savemat

    voc = root / "VOCdevkit" / "VOC2012"
    ids = {"train": ["2007_000001", "2007_000002"], "val": ["2007_000003"]}
    for i in ids["train"] + ids["val"]:
        _write_png(str(voc / "JPEGImages" / f"{i}.jpg"), rng.randint(0, 255, (30, 40, 3), np.uint8))
        mask = rng.randint(0, 21, (30, 40)).astype(np.uint8)
        mask[:2] = 255
        img = Image.fromarray(mask, mode="P")
        img.putpalette([v for c in range(256) for v in (c, 255 - c, (7 * c) % 256)])
        os.makedirs(voc / "SegmentationClass", exist_ok=True)
        img.save(str(voc / "SegmentationClass" / f"{i}.png"))
    os.makedirs(voc / "ImageSets" / "Segmentation", exist_ok=True)
    for split, names in ids.items():
        (voc / "ImageSets" / "Segmentation" / f"{split}.txt").write_text("\n".join(names) + "\n")
    if with_sbd:
        sbd = root / "benchmark_RELEASE" / "dataset"
        os.makedirs(sbd / "cls", exist_ok=True)
        for i in ("2008_000010", "2007_000003"):  # the second is a VOC val image: excluded
            _write_png(str(sbd / "img" / f"{i}.jpg"), rng.randint(0, 255, (30, 40, 3), np.uint8))
            seg = rng.randint(0, 21, (30, 40)).astype(np.uint8)
            savemat(
                str(sbd / "cls" / f"{i}.mat"),
                {"GTcls": {"Segmentation": seg, "Boundaries": 0, "CategoriesPresent": 0}},
            )
        (sbd / "train.txt").write_text("2008_000010\n2007_000003\n")
        (sbd / "val.txt").write_text("")


def test_voc_builder_reads_a_local_vocdevkit_with_sbd(tmp_path):
    rng = np.random.RandomState(0)
    manual = tmp_path / "manual"
    _fake_vocdevkit(manual, rng)
    source = open_dataset(
        "voc2012", "segmentation", data_dir=str(tmp_path / "tfds"), manual_dir=str(manual)
    )
    assert source.num_classes == 21 and source.ignore_index == 255
    assert source.train_split == "train_aug"
    assert source.num_examples("train_aug") == 3  # VOC train 2 + SBD 1 (VOC val excluded)
    assert source.num_examples("validation") == 1
    ex = next(source.load("validation").as_numpy_iterator())
    assert ex["mask"].shape == (30, 40) and (ex["mask"][:2] == 255).all()
    assert ex["mask"][2:].max() <= 20  # class indices, not palette colours


def test_voc_without_vocdevkit_says_what_to_extract(tmp_path):
    with pytest.raises(DatasetError, match="VOCdevkit/VOC2012.*--manual-dir"):
        open_dataset(
            "voc2012",
            "segmentation",
            data_dir=str(tmp_path / "tfds"),
            manual_dir=str(tmp_path / "empty"),
        )
