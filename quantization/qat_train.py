"""Quantization-aware fine-tuning of a trained float model (``mvit3 qat``).

float ``.keras`` -> :func:`quantization.quantize_model` -> activation ranges
initialised on training images (:func:`quantization.qat.calibrate_ranges`, the
PTQ operating point) -> a few epochs of ``model.fit`` on the training input
pipeline of the recipe (``training.pipeline.classification_train``: same
augmentation as float training) with a small AdamW learning rate on a cosine
schedule -> the QAT model saved as ``.keras`` (atomically), ready for
``export_tflite(..., quant="qat")``.

Resumable: a ``keras.callbacks.BackupAndRestore`` folder next to the output
lets the same command continue after a kill.
"""

from __future__ import annotations

import json
import os
import time
from typing import Optional

import numpy as np

from quantization.qat_config import QuantizeConfig


def qat_finetune(
    model,
    dataset: str,
    output: str,
    *,
    epochs: int = 3,
    learning_rate: float = 5e-5,
    weight_decay: float = 1e-5,
    batch_size: int = 64,
    steps_per_epoch: Optional[int] = None,
    calibration_samples: int = 256,
    recipe: Optional[str] = None,
    model_name: Optional[str] = None,
    config: Optional[QuantizeConfig] = None,
    data_dir: Optional[str] = None,
    seed: int = 0,
    verbose: int = 2,
) -> dict:
    """Fine-tune ``model`` (``keras.Model`` or ``.keras`` path) with QAT on
    ``dataset`` (classification); writes ``output`` (``.keras``) and
    ``output + ".json"`` (summary). Returns the summary dict."""
    import keras

    from mvit3_keras.io_utils import atomic_path, atomic_write_text
    from quantization.data import dataset_arrays
    from quantization.export import _load_model
    from quantization.qat import calibrate_ranges, quantize_model
    from training import pipeline
    from training.datasets import open_dataset

    if not str(output).endswith(".keras"):
        raise ValueError(f"output must end with .keras, got {output!r}")
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    start = time.time()
    model = _load_model(model)
    image_size = int(model.inputs[0].shape[1])
    if model.inputs[0].shape[1] != model.inputs[0].shape[2]:
        raise ValueError("qat_finetune expects a square model input")
    keras.utils.set_random_seed(seed)

    qat = quantize_model(model, config)
    calib, _ = dataset_arrays(
        dataset,
        image_size=image_size,
        split="train",
        limit=calibration_samples,
        model=model_name,
        recipe=recipe,
        data_dir=data_dir,
    )
    calibrate_ranges(qat, calib)

    from quantization.data import _recipe_values

    values = _recipe_values(model_name, "classification", dataset, recipe)
    source = open_dataset(dataset, task="classification", data_dir=data_dir)
    train_ds = pipeline.classification_train(
        source,
        values,
        image_size=image_size,
        per_replica_batch=batch_size,
        replicas=1,
        seed=seed,
    )
    if steps_per_epoch is None:
        steps_per_epoch = pipeline.train_steps_per_epoch(
            values,
            source,
            per_replica_batch=batch_size,
            replicas=1,
            image_size=image_size,
            task="classification",
        )
    val_images, val_labels = dataset_arrays(
        dataset,
        image_size=image_size,
        split="validation",
        model=model_name,
        recipe=recipe,
        data_dir=data_dir,
    )
    val_onehot = keras.utils.to_categorical(val_labels, int(model.outputs[0].shape[-1]))

    schedule = keras.optimizers.schedules.CosineDecay(
        learning_rate, decay_steps=max(1, epochs * steps_per_epoch)
    )
    from training.losses import classification_loss

    qat.compile(
        # EMA of the weights (as the float recipes train): the fine-tuned model
        # is the average of the last ~100 steps, not the last noisy step.
        optimizer=keras.optimizers.AdamW(
            schedule, weight_decay=weight_decay, use_ema=True, ema_momentum=0.99
        ),
        loss=classification_loss(values),  # the recipe's loss (label smoothing)
        metrics=["accuracy"],
        jit_compile=False,
    )
    backup = f"{output}.backup"
    history = qat.fit(
        train_ds,
        epochs=epochs,
        steps_per_epoch=steps_per_epoch,
        validation_data=(val_images, val_onehot),
        callbacks=[keras.callbacks.BackupAndRestore(backup, delete_checkpoint=True)],
        verbose=verbose,
        shuffle=False,  # the tf.data pipeline shuffles (Keras would warn that it ignores True)
    )
    float_logits = model.predict(val_images, batch_size=256, verbose=0)
    qat_logits = qat.predict(val_images, batch_size=256, verbose=0)
    with atomic_path(output) as tmp:
        qat.save(tmp)
    summary = {
        "output": os.fspath(output),
        "dataset": dataset,
        "image_size": image_size,
        "epochs": int(epochs),
        "steps_per_epoch": int(steps_per_epoch),
        "learning_rate": float(learning_rate),
        "calibration_samples": int(len(calib)),
        "val_top1_float": float(np.mean(float_logits.argmax(-1) == val_labels)),
        "val_top1_qat": float(np.mean(qat_logits.argmax(-1) == val_labels)),
        "num_val_images": int(len(val_labels)),
        "history": {k: [float(v) for v in vals] for k, vals in history.history.items()},
        "seconds": round(time.time() - start, 1),
    }
    atomic_write_text(f"{output}.json", json.dumps(summary, indent=2))
    return summary
