"""The names ``--dataset`` accepts besides TFDS names and folders, and the error for a name
that is none of them (it names the dataset, close matches, the known names, how to list the
TFDS datasets and how to bring one's own data)."""

from __future__ import annotations

import difflib

from training.datasets.base import DatasetError

DEMO_NAMES = ("demo", "digits")  # classification: scikit-learn's digits
SHAPES_NAMES = ("demo", "demo_shapes", "shapes")  # segmentation: generated shapes
ADE_NAMES = ("scene_parse150", "ade20k")
VOC_NAMES = ("voc2012", "voc2012_segmentation", "pascal_voc")

LIST_TFDS = "python -c 'import tensorflow_datasets as tfds; print(tfds.list_builders())'"

# task -> (the names, what they are, how to use one's own data)
KNOWN = {
    "classification": (
        DEMO_NAMES,
        {
            "demo or digits": "scikit-learn's handwritten digits, bundled",
            "a TFDS image-classification dataset name": f"list them with `{LIST_TFDS}`",
        },
        "a folder ROOT/{train,val}/<class>/<image>, or a TFDS dataset of your own "
        "(`tfds new NAME` writes a builder, `tfds build --data_dir DIR` prepares it; then pass "
        "--dataset NAME --data-dir DIR)",
    ),
    "segmentation": (
        SHAPES_NAMES + ADE_NAMES + VOC_NAMES,
        {
            " or ".join(ADE_NAMES): "ADE20K through TFDS",
            " or ".join(VOC_NAMES): "PASCAL VOC 2012 from a local VOCdevkit, --manual-dir DIR",
            "demo": "generated shapes with exact masks",
        },
        "a folder ROOT/{train,val}/{images,masks}/ (masks: PNGs of class indices, 255 = ignore)",
    ),
}


DATASET_LABEL = {"classification": "dataset"}
"""How an error names a dataset of each task (default: "<task> dataset")."""


def unknown_dataset(name: str, task: str, *, candidates=(), reason: str = "") -> DatasetError:
    """The :class:`DatasetError` for ``--dataset name``: ``candidates`` are further names to
    suggest from (e.g. the TFDS names); ``reason`` says why the name is none of the known ones."""
    names, known, own_data = KNOWN[task]
    close = difflib.get_close_matches(name, dict.fromkeys((*names, *candidates)), n=3)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    listed = "; ".join(f"{key} ({what})" for key, what in known.items())
    label = DATASET_LABEL.get(task, f"{task} dataset")
    reason = reason or "not a known dataset name and not an existing folder"
    return DatasetError(
        f"Unknown {label} {name!r}: {reason}.{hint} Known for --task {task}: {listed}. "
        f"Your own data: {own_data}."
    )
