"""Demo step 2, training on real data: MobileViTv3-XXS on the bundled digits (CPU).

Trains MobileViTv3-XXS from scratch on the bundled real digits (scikit-learn's
8x8 handwritten digit scans, upsampled to 32x32, :mod:`training.datasets.demo`)
with the ``demo`` recipe (AdamW, warmup + cosine, EMA with timm's warm-up, label
smoothing, random resized crops) on the CPU, then evaluates the saved model
(``final.keras``: the EMA weights) on the 359 held-out images. Measured on the
2-core CPU of the development machine: 30 epochs in about 6 minutes, 98-99 %
validation top-1 (``--quick``: 8 epochs, about 2 minutes, ~90 %). The result dict
gives the int8 step (:mod:`mvit3_examples.demo.quantize`) the saved ``.keras``
model and how to rebuild its evaluation data.
"""

from __future__ import annotations

import os

TRAIN_TITLE = "train on real data: MobileViTv3-XXS on the bundled digits (CPU)"


def train_result(context: dict, step: str) -> dict:
    """The training step's result in the demo ``context`` (``step`` names the step that
    needs it, for the error when the demo was not run as a whole)."""
    result = context.get("results", {}).get(TRAIN_TITLE)
    if result is None:
        raise RuntimeError(
            f"the {step} step needs the training step's model (run the whole `mvit3 demo`)"
        )
    return result


DEMO_MODEL = "mobilevitv3_xxs"
DEMO_IMAGE_SIZE = 32


def demo_eval_arrays(image_size: int = DEMO_IMAGE_SIZE, split: str = "validation"):
    """``(images float32 [N, S, S, 3] in [0, 1] RGB, labels int [N])`` exactly as the
    training pipeline evaluates them (shared with the int8 step)."""
    import numpy as np

    from training import augment, recipes
    from training.datasets.demo import digits_source

    values = recipes.get_recipe("demo").config()
    source = digits_source()
    fn = augment.classification_eval_fn(values, image_size, source.num_classes)
    ds = source.load("train" if split == "train" else "validation").map(fn).batch(512)
    images, labels = [], []
    for x, y in ds:
        images.append(x.numpy())
        labels.append(np.argmax(y.numpy(), axis=-1))
    return np.concatenate(images).astype(np.float32), np.concatenate(labels)


def step_train(context: dict) -> dict:
    import keras
    import numpy as np

    from training.loop import TrainConfig, train

    quick = bool(context.get("quick"))
    out = os.path.join(context["output"], "train_digits")
    epochs = 8 if quick else 30
    config = TrainConfig(
        model=DEMO_MODEL,
        dataset="demo",
        recipe="demo",
        epochs=epochs,
        output=out,
        image_size=DEMO_IMAGE_SIZE,
    )  # default output: one line per epoch (raw and EMA validation top-1) and a summary
    summary = train(config)
    model_path = summary["files"]["final_model"]
    model = keras.models.load_model(model_path)  # the saved inference model, reloaded
    images, labels = demo_eval_arrays(DEMO_IMAGE_SIZE)
    logits = model.predict(images, batch_size=256, verbose=0)
    accuracy = float(np.mean(np.argmax(logits, axis=-1) == labels))
    print(f"  reloaded {model_path}: validation top-1 {accuracy:.4f} on {len(labels)} real images")
    return {
        "keras_model": model_path,
        "model": DEMO_MODEL,
        "dataset": "demo",
        "image_size": DEMO_IMAGE_SIZE,
        "eval_split": "validation",
        "eval_arrays": "mvit3_examples.demo.train.demo_eval_arrays",
        "calibration_split": "train",
        "val_top1": accuracy,
        "epochs": summary["epochs_run"],
        "train_wall_time_s": summary["wall_time_s"],
        "summary": os.path.join(out, "summary.json"),
    }
