"""Quantization-aware fine-tuning of a trained float model (``mvit3 qat``).

The float trainer with the model wrapped, as TF Model Garden's
``official/projects/qat/vision/tasks/`` wraps its vision tasks: the run is a
:class:`training.trainer.Trainer` run of the task (classification or segmentation,
:mod:`training.tasks`) whose model is the float ``.keras`` model passed through
:func:`quantization.qat.quantize_model` (``model_transform``), with activation ranges
initialised on training images on a fresh run (:func:`quantization.qat.calibrate_ranges`,
the PTQ operating point; the ``initialize`` hook). Everything else is the float
training's: the recipe's input pipeline and augmentation, loss, metrics (``top1`` /
``miou``), EMA evaluation, ``best.keras``, the atomic backup (the same command resumes
after a kill), ``summary.json``.

The schedule (:func:`qat_schedule`) replaces the recipe's: a few epochs of AdamW with a
small learning rate on a cosine schedule without warm-up, and an EMA of the weights
(decay 0.99, Keras' rule: the fine-tuned model is the average of the last ~100 steps).

Outputs: the run folder ``OUTPUT.run/`` (:mod:`training.run_folder`), the QAT model
``OUTPUT`` (``.keras``, the EMA weights, ready for ``export_tflite(..., quant="qat")``)
and ``OUTPUT.json`` (summary: the float and QAT validation metrics).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from typing import Optional

from quantization.qat_config import QuantizeConfig

EMA_DECAY = 0.99
# layers of a task's inference model left without fake quantization: the segmenter's
# final bilinear upsampling of the logits (ml-cvnets ``cvnets/models/segmentation/heads/``
# resizes the logits to the image) has no quantized version
TASK_SKIPS = {"segmentation": ("seg_head.classifier.up_*",)}


def qat_schedule(*, learning_rate, weight_decay, image_size, seed, verbose, steps_per_epoch):
    """Recipe values of the QAT fine-tuning (merged over the float recipe's)."""
    runtime = {"seed": int(seed), "verbose": int(verbose), "jit_compile": False}
    if steps_per_epoch is not None:
        runtime["steps_per_epoch"] = int(steps_per_epoch)
    size = int(image_size)
    return {
        "optim": {
            "name": "adamw",
            "weight_decay": float(weight_decay),
            "adamw": {"beta1": 0.9, "beta2": 0.999},
        },
        "scheduler": {
            "name": "cosine",
            "warmup_iterations": 0,
            "cosine": {"max_lr": float(learning_rate), "min_lr": 0.0},
        },
        "ema": {"enable": True, "momentum": round(1.0 - EMA_DECAY, 6), "warmup": False},
        # the quantized graph has a static input size: one crop size, no multi-scale batches
        "sampler": {
            "name": "batch_sampler",
            "bs": {"crop_size_width": size, "crop_size_height": size},
        },
        "common": {"mixed_precision": False},
        "runtime": runtime,
    }


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
    task: Optional[str] = None,
) -> dict:
    """Fine-tune ``model`` (``keras.Model`` or ``.keras`` path) with QAT on ``dataset``;
    writes ``output`` (``.keras``), ``output + ".json"`` (summary) and the run folder
    ``output + ".run"``. Returns the summary dict."""
    from quantization.data import recipe_name
    from quantization.export import load_keras_model
    from training.trainer import TrainConfig, Trainer

    _check_arguments(output, epochs)
    start = time.time()
    float_model = load_keras_model(model)
    model_name, task = _identity(float_model, model_name, task)
    image_size = square_input_size(float_model)
    train_config = TrainConfig(
        model=model_name or float_model.name,
        dataset=dataset,
        task=task,
        recipe=recipe_name(model_name, task, dataset, recipe),
        image_size=image_size,
        batch_size=batch_size,
        epochs=epochs,
        output=f"{output}.run",
        data_dir=data_dir,
    )
    schedule = qat_schedule(
        learning_rate=learning_rate, weight_decay=weight_decay, image_size=image_size,
        seed=seed, verbose=verbose, steps_per_epoch=steps_per_epoch,
    )  # fmt: skip
    trainer = Trainer(
        train_config,
        build_model=lambda input_shape: float_model,  # quantize_model copies it
        model_transform=quantizer(config, task),
        initialize=calibrator(calibration_samples),
        values_update=schedule,
    )
    run_summary = trainer.run()
    summary = _write_outputs(trainer, float_model, run_summary, output)
    summary.update(learning_rate=float(learning_rate), seconds=round(time.time() - start, 1))
    summary.setdefault("calibration_samples", int(calibration_samples))
    _write_summary(output, summary)
    return summary


def _identity(float_model, model_name, task) -> tuple:
    """``(variant, task)``: the arguments, else what the saved model records
    (:func:`mvit3_keras.model_record`), else the model's name and classification."""
    from mvit3_keras import model_record

    record = model_record(float_model)
    model_name = model_name or (record.variant if record else None)
    if task is None:
        recorded = record.task if record else None
        task = recorded if recorded in ("classification", "segmentation") else "classification"
    return model_name, task


def _check_arguments(output, epochs) -> None:
    if not str(output).endswith(".keras"):
        raise ValueError(f"output must end with .keras, got {output!r}")
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")


def square_input_size(model) -> int:
    shape = model.inputs[0].shape
    if shape[1] is None or shape[1] != shape[2]:
        raise ValueError(
            f"QAT fine-tuning needs a model with a square, static input size (got "
            f"{tuple(shape)}); save the float model with input_shape=(S, S, 3)"
        )
    return int(shape[1])


def quantizer(config: Optional[QuantizeConfig], task: str = "classification"):
    """The ``model_transform`` of the trainer: :func:`quantization.qat.quantize_model` with
    ``config`` plus the task's :data:`TASK_SKIPS`."""
    import dataclasses

    from training.tasks import get_task

    config = config or QuantizeConfig()
    skips = tuple(TASK_SKIPS.get(get_task(task).name, ()))
    config = dataclasses.replace(config, skip=tuple(config.skip) + skips)

    def transform(model):
        from quantization.qat import quantize_model

        return quantize_model(model, config)

    return transform


def calibrator(samples: int):
    """The ``initialize`` hook of the trainer: activation ranges from ``samples`` training
    images through the evaluation transform (fresh runs only; a resumed run restores the
    trained ranges from its backup)."""

    def initialize(qat_model, run) -> dict:
        from quantization.data import pipeline_arrays
        from quantization.qat import calibrate_ranges

        images, _ = pipeline_arrays(
            run.task,
            run.source,
            run.values,
            image_size=run.image_size,
            split=run.source.train_split,
            limit=int(samples),
        )
        calibrate_ranges(qat_model, images)
        return {"calibration_samples": int(len(images))}

    return initialize


def _write_outputs(trainer, float_model, run_summary: dict, output: str) -> dict:
    """Copy the run's ``final.keras`` to ``output`` and compare it with the float model
    on the validation split (the task's metrics)."""
    from mvit3_keras.io_utils import atomic_path
    from training import pipeline
    from training.trainer import resolve

    with atomic_path(output) as tmp:
        shutil.copyfile(run_summary["files"]["final_model"], tmp)
    config, task = trainer.config, trainer.task
    _, values, image_size = resolve(config, trainer.values_update, check_model=False)
    source = task.open_dataset(config.dataset, data_dir=config.data_dir, image_size=image_size)
    # the QAT model (final.keras) was validated by the trainer: only the float one here
    float_result = task.evaluate(
        task.compile(float_model, values, source), source, values, image_size=image_size,
        batch_size=256,
    )  # fmt: skip
    compared = {
        f"val_{task.metric}_float": float_result[task.metric],
        f"val_{task.metric}_qat": float(run_summary["final"][task.metric]),
    }
    limit = values.runtime.max_val_examples
    init_report = run_summary.get("init_report") or {}
    history = {}
    for row in _history_rows(run_summary):
        for key, value in row.items():
            history.setdefault(key, []).append(float(value))
    return {
        "output": os.fspath(output),
        "run_folder": os.fspath(config.output),
        "task": task.name,
        "metric": task.metric,
        "dataset": config.dataset,
        "image_size": image_size,
        "epochs": int(run_summary["epochs"]),
        "steps_per_epoch": int(run_summary["steps_per_epoch"]),
        **({"calibration_samples": init_report["calibration_samples"]} if init_report else {}),
        **compared,
        "num_val_images": int(pipeline.count_examples(source, source.val_split, limit)),
        "best": run_summary.get("best"),
        "history": history,
    }


def _history_rows(run_summary: dict) -> list:
    from training.callbacks import read_csv

    return read_csv(run_summary["files"]["history"])


def _write_summary(output: str, summary: dict) -> None:
    from mvit3_keras.io_utils import atomic_write_text

    atomic_write_text(f"{output}.json", json.dumps(summary, indent=2, default=str))
