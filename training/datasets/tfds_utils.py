"""Opening TFDS builders with errors a user can act on."""

from __future__ import annotations

import os

from training.datasets.base import DatasetError
from training.datasets.names import unknown_dataset

# Files a manual-download dataset needs in ``manual_dir`` (TFDS instructions).
MANUAL_FILES = {
    "imagenet2012": ("ILSVRC2012_img_train.tar", "ILSVRC2012_img_val.tar"),
    "imagenet2012_subset": ("ILSVRC2012_img_train.tar", "ILSVRC2012_img_val.tar"),
}


def default_manual_dir(data_dir: str | None) -> str:
    import tensorflow_datasets as tfds

    root = data_dir or os.environ.get("TFDS_DATA_DIR") or tfds.core.constants.DATA_DIR
    return os.path.join(os.path.expanduser(root), "downloads", "manual")


def open_builder(name: str, data_dir: str | None = None):
    """``tfds.builder(name)``; a name TFDS does not know (only ``--dataset`` of a classification
    run can be one) raises :func:`training.datasets.names.unknown_dataset`."""
    import tensorflow_datasets as tfds

    try:
        return tfds.builder(name, data_dir=data_dir)
    except Exception as err:  # DatasetNotFoundError and friends
        if "not found" not in str(err).lower() and type(err).__name__ != "DatasetNotFoundError":
            raise
        known = tfds.list_builders(with_community_datasets=False)
        raise unknown_dataset(
            name,
            "classification",
            candidates=known,
            reason="not a TFDS dataset (nor one prepared in --data-dir), not an existing "
            "folder and not a bundled dataset",
        ) from None


def prepare(builder, *, data_dir: str | None = None, manual_dir: str | None = None) -> None:
    """``download_and_prepare`` with a clear message for manual downloads and offline machines."""
    import tensorflow_datasets as tfds

    name = builder.name
    if builder.is_prepared():
        return
    manual_dir = manual_dir or default_manual_dir(data_dir)
    config = tfds.download.DownloadConfig(manual_dir=manual_dir)
    try:
        builder.download_and_prepare(download_config=config)
    except Exception as err:
        needed = MANUAL_FILES.get(name)
        if needed is not None or getattr(builder, "MANUAL_DOWNLOAD_INSTRUCTIONS", None):
            missing = [f for f in (needed or ()) if not os.path.exists(os.path.join(manual_dir, f))]
            files = ", ".join(missing or needed or ()) or "the files its instructions name"
            raise DatasetError(
                f"dataset {name!r} needs a manual download: put {files} into the manual_dir "
                f"{manual_dir!r} (or pass --manual-dir DIR), then run the same command again; "
                f"TFDS prepares it once into {builder.data_dir!r}. Instructions: "
                + " ".join((builder.MANUAL_DOWNLOAD_INSTRUCTIONS or "").split())
                + f" (TFDS said: {type(err).__name__}: {str(err)[:300]})"
            ) from None
        raise DatasetError(
            f"could not prepare TFDS dataset {name!r} ({type(err).__name__}: {str(err)[:300]}). "
            "Machines without internet access need the prepared dataset: run "
            f"`tfds build {name}` on a connected machine and copy its data_dir here "
            "(--data-dir DIR)."
        ) from err


def split_names(builder) -> list:
    return list(builder.info.splits.keys()) if builder.info.splits else []


# splits of well-known datasets, for builders whose metadata is not available locally
# (e.g. under ``tfds.testing.mock_data``)
KNOWN_SPLITS = {"imagenet2012": ("train", "validation"), "scene_parse150": ("train", "test")}


def pick_splits(builder) -> tuple:
    """``(train split, validation split)``; slices of ``train`` when there is no held-out split."""
    names = split_names(builder)
    if not names and builder.name in KNOWN_SPLITS:
        return KNOWN_SPLITS[builder.name]
    train = "train" if "train" in names or not names else names[0]
    for val in ("validation", "val", "test"):
        if val in names:
            return train, val
    return f"{train}[:90%]", f"{train}[90%:]"


def num_examples(builder, split: str):
    try:
        return int(builder.info.splits[split].num_examples)
    except Exception:
        return None
