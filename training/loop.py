"""The training loop: ``model.fit`` with Keras' own pieces, resumable and distributed.

``train(...)`` does, in order:

1. resolves the recipe (:mod:`training.recipes`) with the command's overrides;
2. creates the ``tf.distribute`` strategy (:mod:`training.distribute`);
3. checks the output folder: a folder holding a *different* run is refused (nothing
   is overwritten); the same command resumes; a finished run just reports;
4. opens the dataset (:mod:`training.datasets`) and builds the ``tf.data``
   pipelines (:mod:`training.pipeline`) with the global batch;
5. builds the model in the strategy scope (``mvit3_keras.create_model`` /
   ``create_segmenter``), optionally initialised from ``--init`` (official
   checkpoint through ``load_cvnets_weights``, a ``.keras`` model or a
   ``.weights.h5`` file), and compiles it with the recipe's optimizer
   (:mod:`training.optimizers`: AdamW / SGD, weight-decay exclusions, warmup +
   cosine, ``use_ema``, ``global_clipnorm``), loss and metrics; mixed precision
   (``mixed_float16`` on GPU, ``mixed_bfloat16`` on TPU) when the recipe asks for it;
6. restores the newest backup (:class:`~training.callbacks.AtomicBackupAndRestore`:
   raw weights + optimizer: LR schedule and EMA warm-up position, moments, EMA
   weights) and runs ``model.fit`` from that epoch with the callbacks, in this order
   (it matters): :class:`~training.callbacks.EpochStats` -> ``EMAEvaluation`` (Keras
   validates the raw weights, this adds the EMA weights': ``val_*`` = EMA,
   ``val_*_raw`` = raw, as ml-cvnets/timm validate both every epoch) -> ``CSVLogger``
   (append) -> the backup (every epoch) -> :class:`~training.callbacks.BestCheckpoint`
   (``best.keras``: the better of the raw and the EMA weights by val top-1 / mIoU,
   which one recorded in ``best.keras.json``) -> ``TensorBoard`` ->
   :class:`~training.callbacks.EpochLine` (one line per epoch; ``--verbose``: Keras'
   progress bar instead);
7. saves ``final.keras`` (EMA weights when EMA is on, the official
   ``checkpoint_ema`` convention: a fixed rule, so ``mvit3 evaluate --weights ema``
   means the same thing for every run; the raw weights stay in the backup and the
   better of the two is ``best.keras``), writes ``summary.json`` (final EMA and raw
   metrics, best, the EMA rule), ``training_curves.png`` and prints a summary table.

Output folder: ``run.json`` (the resolved configuration), ``backup/`` (resume
state), ``history.csv``, ``logs/`` (TensorBoard), ``best.keras`` (+ ``.json``),
``final.keras``, ``summary.json``, ``training_curves.png``. Every file is written
atomically; a SIGKILL at any moment loses at most the running epoch.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from typing import Optional

from training import callbacks as cb
from training import distribute, optimizers, pipeline, recipes
from training.datasets import open_dataset
from training.recipes import get

RUN_FILE = "run.json"
SUMMARY_FILE = "summary.json"
# recipe keys that may change between a run and its resumption
RESUME_FREE_KEYS = ("runtime.verbose", "runtime.tensorboard")


class RunConflictError(ValueError):
    """The output folder holds a different run."""


@dataclasses.dataclass
class TrainConfig:
    model: str
    dataset: str
    task: str = "classification"
    recipe: Optional[str] = None
    overrides: list = dataclasses.field(default_factory=list)  # ["key=value", ...]
    image_size: Optional[int] = None
    batch_size: Optional[int] = None  # per replica
    epochs: Optional[int] = None
    output: Optional[str] = None
    strategy: str = "auto"
    head: Optional[str] = None  # segmentation: deeplabv3 | pspnet
    init: Optional[str] = None
    data_dir: Optional[str] = None
    manual_dir: Optional[str] = None
    verbose: bool = False  # Keras' progress bar instead of one line per epoch


# ---------------------------------------------------------------------------------------
# configuration
# ---------------------------------------------------------------------------------------
def resolve(config: TrainConfig) -> tuple:
    """``(recipe, values, image_size)`` with every override applied and checked."""
    from mvit3_keras.registry import get_spec

    if config.task not in ("classification", "segmentation"):
        raise ValueError(f"--task must be classification or segmentation, got {config.task!r}")
    spec = get_spec(config.model)  # clear error for unknown names
    name = config.recipe or recipes.default_recipe(spec.name, config.task, config.dataset)
    recipe = recipes.get_recipe(name)
    if recipe.task != config.task:
        raise ValueError(
            f"recipe {name!r} is a {recipe.task} recipe but --task is {config.task}; "
            f"pick one of: {', '.join(recipes.list_recipes(config.task))}"
        )
    values = recipe.to_dict()
    # the EMA warm-up (training.optimizers) is recorded with the recipe's values
    values["ema"] = {**optimizers.EMA_WARMUP_DEFAULTS, **values.get("ema", {})}
    values = recipes.merge(values, recipes.parse_overrides(config.overrides, values))
    if config.epochs is not None:
        values["scheduler"]["max_epochs"] = int(config.epochs)
    if config.batch_size is not None:
        values["dataset"]["train_batch_size0"] = int(config.batch_size)
    if config.head is not None:
        if config.task != "segmentation":
            raise ValueError("--head is for --task segmentation")
        if config.head not in ("deeplabv3", "pspnet"):
            raise ValueError(f"--head must be deeplabv3 or pspnet, got {config.head!r}")
        values["model"]["segmentation"]["seg_head"] = config.head
    image_size = config.image_size
    if image_size is None:
        image_size = int(
            get(values, "sampler.vbs.crop_size_width") or get(values, "sampler.bs.crop_size_width")
        )
    if int(image_size) < 32:
        raise ValueError(
            f"--image-size {image_size} is too small: MobileViT downsamples by 32 (five stride-2 "
            "stages), so use at least 32 (the official size is 256 for classification, 512 for "
            "segmentation)"
        )
    if config.task == "segmentation" and int(image_size) % 32:
        raise ValueError(
            f"--image-size {image_size}: segmentation crops must be a multiple of 32 so the "
            f"logits (low-res x output stride) match the mask; use {int(image_size) // 32 * 32 or 32} "
            f"or {(int(image_size) // 32 + 1) * 32}"
        )
    if int(values["scheduler"]["max_epochs"]) < 1:
        raise ValueError("--epochs must be at least 1")
    return recipe, values, int(image_size)


def _run_record(config, recipe, values, image_size, replicas, source) -> dict:
    return {
        "model": config.model,
        "task": config.task,
        "dataset": config.dataset,
        "recipe": recipe.name,
        "image_size": image_size,
        "init": config.init,
        "num_classes": source.num_classes,
        "replicas": replicas,
        "values": values,
    }


def _check_run_folder(output: str, record: dict) -> None:
    path = os.path.join(output, RUN_FILE)
    if not os.path.exists(path):
        return
    try:
        with open(path, encoding="utf-8") as f:
            old = json.load(f)
    except (OSError, ValueError) as err:
        raise RunConflictError(
            f"{path} is unreadable ({err}); it describes the run in {output!r}. Use a new "
            "--output, or move the folder away to start over (nothing was changed)."
        ) from None
    diffs = []
    for key in ("model", "task", "dataset", "recipe", "image_size", "num_classes", "replicas"):
        if old.get(key) != record.get(key):
            diffs.append(f"{key}: {old.get(key)!r} -> {record.get(key)!r}")
    flat_old = recipes.flatten(old.get("values", {}))
    flat_new = recipes.flatten(record["values"])
    for key in sorted(set(flat_old) | set(flat_new)):
        if key in RESUME_FREE_KEYS:
            continue
        if flat_old.get(key) != flat_new.get(key):
            diffs.append(f"{key}: {flat_old.get(key)!r} -> {flat_new.get(key)!r}")
    if diffs:
        raise RunConflictError(
            f"the output folder {output!r} holds a different run ({'; '.join(diffs[:8])}). "
            "Nothing was changed. To resume it, repeat its original command; to start a new "
            "run, pass a new --output."
        )


# ---------------------------------------------------------------------------------------
# model
# ---------------------------------------------------------------------------------------
def model_builder(config: TrainConfig, values: dict, num_classes: int, ignore_index: int):
    """``build(input_shape) -> keras.Model`` (training graph: with the aux head)."""
    import mvit3_keras as m

    if config.task == "classification":
        dropout = get(values, "model.classification.classifier_dropout")

        def build(input_shape):
            return m.create_model(
                config.model,
                num_classes=num_classes,
                input_shape=input_shape,
                classifier_dropout=dropout,
            )

        return build

    from mvit3_keras.segmentation import create_segmenter

    seg = get(values, "model.segmentation", {})
    head = seg.get("seg_head", "deeplabv3")
    preset = "ade20k" if ignore_index == -1 or "ade" in config.dataset else "pascal_voc"
    kwargs = dict(
        head=head,
        preset=preset,
        num_classes=num_classes,
        output_stride=int(seg.get("output_stride", 16)),
        aux_head=bool(seg.get("use_aux_head", False)),
        aux_loss_weight=float(get(values, "loss.segmentation.cross_entropy.aux_weight", 0.4)),
    )
    if head == "deeplabv3" and "deeplabv3" in seg:
        d = seg["deeplabv3"]
        kwargs.update(
            aspp_channels=int(d.get("aspp_out_channels", 256)),
            aspp_rates=tuple(int(r) for r in d.get("aspp_rates", (6, 12, 18))),
            aspp_dropout=float(d.get("aspp_dropout", 0.1)),
        )
        if "aspp_sep_conv" in d:
            kwargs["aspp_separable"] = bool(d["aspp_sep_conv"])
    if head == "pspnet" and "pspnet" in seg:
        p = seg["pspnet"]
        kwargs.update(
            psp_channels=int(p.get("psp_out_channels", 512)),
            psp_pool_sizes=tuple(int(s) for s in p.get("psp_pool_sizes", (1, 2, 3, 6))),
            psp_dropout=float(p.get("psp_dropout", 0.1)),
        )
    if "classifier_dropout" in seg:
        kwargs["classifier_dropout"] = float(seg["classifier_dropout"])

    def build(input_shape):
        return create_segmenter(config.model, input_shape=input_shape, **kwargs)

    return build


def export_model(model, build, input_shape, task, weights: str = "raw"):
    """An inference model (no optimizer, no aux head) carrying ``model``'s raw weights or
    (``weights="ema"``) their EMA averages."""
    clean = build(input_shape)
    clean.set_weights(cb.weights_values(model, weights))
    if task == "segmentation" and hasattr(clean, "inference_model"):
        clean = clean.inference_model()
    return clean


def load_init(model, path: str, *, task: str, num_classes: int, reset_head: bool) -> dict:
    """Initialise ``model`` from ``--init`` (official .pt/.pth/.npz, .keras, .weights.h5)."""
    import keras
    import numpy as np

    import mvit3_keras as m
    from mvit3_keras.variant_guess import checkpoint_num_classes

    if not os.path.exists(path):
        raise FileNotFoundError(f"--init {path!r}: file not found")
    fix = (
        "pass --set runtime.init_reset_head=true to load everything except the "
        "classifier (fine-tuning to a new label set)"
    )
    if path.endswith((".pt", ".pth", ".npz", ".bin", ".ckpt")):
        state = m.read_state_dict(path)
        seg_ckpt = any(k.startswith("encoder.") for k in state)
        found = checkpoint_num_classes(state)
        head_keys = ("classifier.", "seg_head.classifier", "seg_head.aux_head.2")
        if task == "classification":
            if seg_ckpt:
                state = {
                    k[len("encoder.") :]: v for k, v in state.items() if k.startswith("encoder.")
                }
                found = None
            if found is not None and found != num_classes:
                if not reset_head:
                    raise ValueError(
                        f"--init {path}: the checkpoint's classifier has {found} classes but the "
                        f"dataset has {num_classes}; {fix}"
                    )
            if reset_head or seg_ckpt:
                state = {k: v for k, v in state.items() if not k.startswith("classifier.")}
            strict = not (reset_head or seg_ckpt)
            report = m.load_cvnets_weights(model, state, strict=strict)
            if not strict:
                loaded_backbone = [k for k in report["missing"] if not k.startswith("classifier.")]
                if loaded_backbone:
                    raise ValueError(
                        f"--init {path}: {len(loaded_backbone)} backbone weights are not in the "
                        f"checkpoint (e.g. {loaded_backbone[0]}); is it a checkpoint of "
                        "this model variant?"
                    )
            return report
        # segmentation
        if not seg_ckpt:  # ImageNet classification checkpoint -> the encoder
            state = {
                f"encoder.{k}": v
                for k, v in state.items()
                if not k.startswith(("classifier.", "conv_1x1_exp."))
            }
            report = m.load_cvnets_weights(model, state, strict=False)
            enc_missing = [k for k in report["missing"] if k.startswith("encoder.")]
            if enc_missing or report["mismatched"]:
                raise ValueError(
                    f"--init {path}: does not fit the backbone of {model.name} "
                    f"({len(enc_missing)} missing, {len(report['mismatched'])} with another shape, "
                    f"e.g. {(enc_missing + report['mismatched'])[0]})"
                )
            return report
        cls_key = next(
            (
                k
                for k in state
                if k.endswith("seg_head.classifier.block.conv.weight")
                or k.endswith("seg_head.classifier.classifier.block.conv.weight")
            ),
            None,
        )
        found = int(state[cls_key].shape[0]) if cls_key else None
        if found is not None and found != num_classes and not reset_head:
            raise ValueError(
                f"--init {path}: the checkpoint's segmentation head has {found} classes but the "
                f"dataset has {num_classes}; {fix}"
            )
        if reset_head:
            state = {k: v for k, v in state.items() if not k.startswith(head_keys)}
        return m.load_cvnets_weights(model, state, strict=not reset_head)
    if path.endswith(".weights.h5"):
        try:
            model.load_weights(path)
        except Exception as err:
            raise ValueError(
                f"--init {path}: does not fit {model.name} ({type(err).__name__}: "
                f"{str(err)[:300]}); a .weights.h5 file must come from the same variant and "
                f"number of classes; otherwise use a .keras file with "
                f"--set runtime.init_reset_head=true"
            ) from None
        return {"loaded": len(model.weights)}
    if path.endswith(".keras"):
        try:
            source = keras.models.load_model(path, compile=False)
        except Exception as err:
            raise ValueError(f"--init {path}: cannot load ({type(err).__name__}: {err})") from None
        by_name = {}
        for layer in _all_layers(source):
            if layer.weights:
                by_name[layer.name] = layer
        loaded, skipped = 0, []
        for layer in _all_layers(model):
            if not layer.weights:
                continue
            other = by_name.get(layer.name)
            if other is None:
                skipped.append(layer.name)
                continue
            shapes = [tuple(w.shape) for w in layer.weights]
            other_shapes = [tuple(w.shape) for w in other.weights]
            if shapes != other_shapes:
                head = layer.name.startswith(
                    ("classifier", "seg_head.classifier", "seg_head.aux_head.2")
                )
                if head and not reset_head:
                    raise ValueError(
                        f"--init {path}: layer {layer.name} has shape {other_shapes} in the "
                        f"checkpoint but {shapes} here (number of classes differs: dataset has "
                        f"{num_classes}); {fix}"
                    )
                if not head:
                    raise ValueError(
                        f"--init {path}: layer {layer.name} has shape {other_shapes} in the "
                        f"checkpoint but {shapes} in {model.name}: another variant?"
                    )
                skipped.append(layer.name)
                continue
            layer.set_weights([np.asarray(w) for w in other.get_weights()])
            loaded += 1
        if loaded == 0:
            raise ValueError(f"--init {path}: no layer of {model.name} found in the checkpoint")
        return {"loaded": loaded, "skipped": skipped}
    raise ValueError(
        f"--init {path!r}: unsupported file type; use an official .pt/.pth checkpoint, an .npz "
        "state dict, a .keras model or a .weights.h5 file"
    )


def _all_layers(model):
    import keras

    for layer in model.layers:
        if isinstance(layer, keras.Model):
            yield from _all_layers(layer)
        else:
            yield layer


def _mixed_precision(values) -> str | None:
    import keras
    import tensorflow as tf

    if not get(values, "common.mixed_precision", False):
        return None
    if tf.config.list_logical_devices("TPU"):
        policy = "mixed_bfloat16"
    elif tf.config.list_logical_devices("GPU"):
        policy = "mixed_float16"
    elif get(values, "runtime.mixed_precision_on_cpu", False):
        policy = "mixed_bfloat16"
    else:
        return None
    keras.mixed_precision.set_global_policy(policy)
    return policy


def compile_model(model, values, *, task, total_steps, num_classes, ignore_index):
    from training import losses, metrics, optimizers

    jit = get(values, "runtime.jit_compile", False)
    rules = ()
    mult = float(get(values, "model.segmentation.lr_multiplier", 1) or 1)
    if task == "segmentation" and mult != 1.0:
        rules = ((r"^(?!encoder\.)", mult),)
    optimizer = optimizers.make_optimizer(values, total_steps, lr_multiplier_rules=rules)
    if task == "classification":
        model.compile(
            optimizer=optimizer,
            loss=losses.classification_loss(values),
            metrics=metrics.classification_metrics(),
            jit_compile=jit,
        )
    else:
        model.compile(
            optimizer=optimizer,
            loss=losses.segmentation_loss(ignore_index),
            metrics=[metrics.SegmentationMeanIoU(num_classes, ignore_class=ignore_index)],
            jit_compile=jit,
        )
    return optimizer


def _has_tensorboard() -> bool:
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        print("note: TensorBoard is not installed (pip install tensorboard): no TensorBoard logs")
        return False
    return True


def _monitor(task):
    return ("val_top1", "top1") if task == "classification" else ("val_miou", "miou")


# ---------------------------------------------------------------------------------------
# train
# ---------------------------------------------------------------------------------------
@dataclasses.dataclass
class _Run:
    """What the steps of :func:`train` share."""

    config: TrainConfig
    recipe: object
    values: dict
    image_size: int
    strategy: object
    replicas: int
    chief: bool
    output: str
    write_dir: str
    source: object
    epochs: int = 0
    steps: int = 0
    per_replica: int = 0
    policy: Optional[str] = None
    initial_epoch: int = 0
    export_shape: tuple = ()

    def file(self, name: str) -> str:
        return os.path.join(self.write_dir, name)


def train(config: TrainConfig) -> dict:
    """Train as described in the module docstring; returns the summary (``summary.json``)."""
    import keras
    import tensorflow as tf

    if os.environ.get("MVIT3_DEBUG"):
        keras.config.disable_traceback_filtering()
    start = time.time()
    run = _open_run(config)
    if isinstance(run, dict):  # the run in the folder is complete
        return run
    values = run.values
    backup_dir = run.file("backup")
    cb.remove_stale_temporaries(run.write_dir, backup_dir)
    state = cb.read_backup_state(backup_dir)  # raises a clear error when unreadable
    seed = int(get(values, "runtime.seed", 0))
    keras.utils.set_random_seed(seed + (int(state["epoch"]) if state else 0))
    run.policy = _mixed_precision(values)
    run.epochs = int(values["scheduler"]["max_epochs"])
    run.per_replica = int(values["dataset"]["train_batch_size0"])
    run.steps = pipeline.train_steps_per_epoch(
        values,
        run.source,
        per_replica_batch=run.per_replica,
        replicas=run.replicas,
        image_size=run.image_size,
        task=config.task,
    )
    model, build, init_report = _build_model(run, from_init=state is None)
    backup = cb.AtomicBackupAndRestore(
        backup_dir, keep=int(get(values, "runtime.keep_checkpoints", 2))
    )
    backup.set_model(model)
    with run.strategy.scope():
        run.initial_epoch = backup.restore()
    train_ds, val_ds = _datasets(run)
    export_to = _exporter(model, build, run.export_shape, config.task)
    callbacks, keras_verbose = _callbacks(run, model, backup, export_to, val_ds)
    _print_header(run)
    if isinstance(run.strategy, tf.distribute.MultiWorkerMirroredStrategy):
        from mvit3_keras import compat

        compat.prebuild_for_multiworker(model, run.strategy, train_ds)
    fit_start = time.time()
    model.fit(
        train_ds,
        epochs=run.epochs,
        initial_epoch=run.initial_epoch,
        steps_per_epoch=run.steps,
        validation_data=val_ds,
        validation_steps=get(values, "runtime.validation_steps"),
        callbacks=callbacks,
        verbose=keras_verbose,
        shuffle=False,  # the tf.data pipeline shuffles
    )
    fit_time = time.time() - fit_start
    return _finish(run, model, export_to, val_ds, init_report, start, fit_time)


def _open_run(config: TrainConfig):
    """Resolve, check and claim the output folder: a :class:`_Run`, or the summary of a
    complete run."""
    recipe, values, image_size = resolve(config)
    strategy = distribute.make_strategy(config.strategy, get(values, "runtime.tpu"))
    replicas = int(strategy.num_replicas_in_sync)
    chief = distribute.is_chief(strategy)
    output = config.output or os.path.join(
        "runs", f"{config.model}_{os.path.basename(config.dataset.rstrip('/'))}"
    )
    # non-chief workers keep their (identical) backups and logs in a scratch folder
    write_dir = output if chief else os.path.join(output, f".worker-{distribute.worker_index()}")
    source = open_dataset(  # before the folder exists: a bad name leaves nothing behind
        config.dataset,
        config.task,
        data_dir=config.data_dir,
        manual_dir=config.manual_dir,
        image_size=image_size,
    )
    os.makedirs(write_dir, exist_ok=True)
    record = _run_record(config, recipe, values, image_size, replicas, source)
    _check_run_folder(output, record)
    summary_path = os.path.join(output, SUMMARY_FILE)
    done = cb.read_json(summary_path)
    if done.get("status") == "complete":
        print(f"run in {output} is complete; nothing to do (summary: {summary_path})")
        return done
    if chief:
        from mvit3_keras.io_utils import atomic_write_text

        atomic_write_text(os.path.join(output, RUN_FILE), json.dumps(record, indent=2))
    return _Run(
        config, recipe, values, image_size, strategy, replicas, chief, output, write_dir, source
    )


def _build_model(run: _Run, from_init: bool):
    """The training model (in the strategy scope), initialised from ``--init`` on a fresh
    run, compiled with the recipe's optimizer: ``(model, build, init_report)``."""
    config, values, source = run.config, run.values, run.source
    variable = pipeline.uses_variable_batch(values, config.task)
    train_shape = (None, None, 3) if variable else (run.image_size, run.image_size, 3)
    if config.task == "segmentation":
        train_shape = (None, None, 3)  # evaluation size may differ from the crop
    build = model_builder(config, values, source.num_classes, source.ignore_index)
    init_report = None
    with run.strategy.scope():
        model = build(train_shape)
        if config.init and from_init:
            init_report = load_init(
                model,
                config.init,
                task=config.task,
                num_classes=source.num_classes,
                reset_head=bool(get(values, "runtime.init_reset_head", False)),
            )
        compile_model(
            model,
            values,
            task=config.task,
            total_steps=run.steps * run.epochs,
            num_classes=source.num_classes,
            ignore_index=source.ignore_index,
        )
    return model, build, init_report


def _datasets(run: _Run):
    """``(train_ds, val_ds)`` (and ``run.export_shape``); the training order continues at the
    resumed epoch."""
    values, classification = run.values, run.config.task == "classification"
    build_ds = pipeline.classification_train if classification else pipeline.segmentation_train
    train_ds = build_ds(
        run.source,
        values,
        image_size=run.image_size,
        per_replica_batch=run.per_replica,
        replicas=run.replicas,
        seed=int(get(values, "runtime.seed", 0)),
        epoch_offset=run.initial_epoch,
    )
    build_val = pipeline.classification_eval if classification else pipeline.segmentation_eval
    val_batch = int(values["dataset"].get("val_batch_size0", run.per_replica)) * run.replicas
    val_ds = build_val(run.source, values, image_size=run.image_size, batch_size=val_batch)
    run.export_shape = (run.image_size, run.image_size, 3)
    if not classification:
        run.export_shape = pipeline.segmentation_eval_size(values, run.image_size) + (3,)
    return train_ds, val_ds


def _exporter(model, build, export_shape, task):
    """``export_to(path or None, which="ema"|"raw")``: save an inference model with the
    raw or the EMA weights (``None``: build it only, for the collective ops of non-chief
    workers)."""

    def export_to(path, which="raw"):
        clean = export_model(model, build, export_shape, task, weights=which)
        if path is not None:
            clean.save(path)

    return export_to


def _callbacks(run: _Run, model, backup, export_to, val_ds):
    """The callbacks of ``fit``, in order (it matters: each sees the logs the previous ones
    added), and Keras' own ``verbose`` (0 unless ``--verbose`` / ``runtime.verbose`` 1|2)."""
    import keras

    values = run.values
    monitor, metric = _monitor(run.config.task)
    use_ema = bool(get(values, "ema.enable", False))
    history_csv = run.file("history.csv")
    cb.repair_csv(history_csv, run.initial_epoch)
    candidates = {"ema": monitor, "raw": monitor + "_raw"} if use_ema else {"raw": monitor}
    best = cb.BestCheckpoint(run.file("best.keras"), export_to, candidates, write=run.chief)
    callbacks = [cb.EpochStats()]
    if use_ema:
        callbacks.append(cb.EMAEvaluation(val_ds, get(values, "runtime.validation_steps")))
    callbacks += [keras.callbacks.CSVLogger(history_csv, append=True), backup, best]
    if get(values, "runtime.tensorboard", True) and _has_tensorboard():
        callbacks.append(
            keras.callbacks.TensorBoard(run.file("logs"), write_graph=False, update_freq="epoch")
        )
    keras_verbose = _keras_verbose(run.config, values)
    if keras_verbose == 0 and run.chief and get(values, "runtime.verbose", "auto") != 0:
        line = cb.EpochLine(run.epochs, run.steps, metric)
        line.best = best
        callbacks.append(line)
    return callbacks, keras_verbose


def _keras_verbose(config: TrainConfig, values: dict) -> int:
    """Keras' progress output: ``--verbose`` -> its progress bar (one line per epoch
    when not on a terminal); ``runtime.verbose`` 1 or 2 -> that; else 0 (our one line per
    epoch, :class:`training.callbacks.EpochLine`)."""
    if config.verbose:
        return 1 if sys.stdout.isatty() else 2
    wanted = get(values, "runtime.verbose", "auto")
    return int(wanted) if wanted in (1, 2, "1", "2") else 0


def _print_header(run: _Run) -> None:
    if not run.chief:
        return
    config, source = run.config, run.source
    print(
        f"training {config.model} on {source.description} ({source.num_classes} classes): "
        f"recipe {run.recipe.name}, {run.epochs} epochs x {run.steps} steps, batch "
        f"{run.per_replica}/replica x {run.replicas} = {run.per_replica * run.replicas} global, "
        f"image {run.image_size}, {distribute.describe(run.strategy)}"
        + (f", {run.policy}" if run.policy else "")
        + (f"; resuming after epoch {run.initial_epoch}" if run.initial_epoch else ""),
        flush=True,
    )


def _finish(run: _Run, model, export_to, val_ds, init_report, start, fit_time) -> dict:
    """Save ``final.keras`` (the EMA weights when EMA is on: the official ``checkpoint_ema``
    convention; the raw ones stay in the backup), write ``summary.json`` and the curves,
    print the summary."""
    use_ema = cb.uses_ema(model)
    final_path = run.file("final.keras")
    which = "ema" if use_ema else "raw"
    if run.chief:
        from mvit3_keras.io_utils import atomic_path

        with atomic_path(final_path) as tmp:
            export_to(tmp, which)
    else:
        export_to(None, which)
    rows = cb.read_csv(run.file("history.csv"))
    final, final_raw = _final_metrics(run, model, val_ds, rows, use_ema)
    summary = _summary(run, model, rows, final, final_raw, init_report)
    summary.update(this_invocation_s=round(time.time() - start, 1), fit_time_s=round(fit_time, 1))
    if run.chief:
        from training import report

        _, metric = _monitor(run.config.task)
        report.plot_curves(rows, summary["files"]["curves"], metric)
        report.write_summary(os.path.join(run.output, SUMMARY_FILE), summary)
        print(report.format_table(report.summary_rows(summary, metric), "training summary"))
    return summary


def _final_metrics(run: _Run, model, val_ds, rows, use_ema):
    """Validation metrics of the final EMA and raw weights: those of the last epoch in the
    history (the weights have not changed since); evaluated when the history lacks them."""
    last = rows[-1] if rows and int(rows[-1]["epoch"]) == run.epochs - 1 else {}
    final = {k[4:]: v for k, v in last.items() if k.startswith("val_") and not k.endswith("_raw")}
    final_raw = {k[4:-4]: v for k, v in last.items() if k.startswith("val_") and k.endswith("_raw")}
    steps = get(run.values, "runtime.validation_steps")
    if not final:  # e.g. a history lost with its folder: evaluate (the model holds `which`)
        result = model.evaluate(val_ds, steps=steps, verbose=0, return_dict=True)
        final = {k: float(v) for k, v in result.items()}
    if not use_ema:
        return final, None
    return final, final_raw or None


def _summary(run: _Run, model, rows, final, final_raw, init_report) -> dict:
    from training import optimizers

    values, config = run.values, run.config
    use_ema = cb.uses_ema(model)
    wall = sum(r.get("epoch_time", 0.0) for r in rows)
    ema = {"enable": use_ema}
    if use_ema:
        decay = 1.0 - float(get(values, "ema.momentum", 0.0005))
        warmup = optimizers.ema_warmup_config(values)
        last_step = run.epochs * run.steps - 1
        ema.update(
            decay=decay,
            warmup=warmup,
            rule=optimizers.EMA_RULE if warmup else "Keras: 0 at step 0, then `decay`",
            decay_at_last_step=round(optimizers.ema_decay_at(last_step, decay, warmup), 6),
            averages="trainable variables (BatchNorm moving statistics: the raw model's)",
        )
    return {
        "status": "complete",
        "model": config.model,
        "task": config.task,
        "dataset": run.source.description,
        "recipe": run.recipe.name,
        "image_size": run.image_size,
        "num_classes": run.source.num_classes,
        "epochs": run.epochs,
        "epochs_run": len(rows),
        "resumed_from_epoch": run.initial_epoch,
        "steps_per_epoch": run.steps,
        "batch_per_replica": run.per_replica,
        "global_batch": run.per_replica * run.replicas,
        "replicas": run.replicas,
        "strategy": distribute.describe(run.strategy),
        "mixed_precision": run.policy,
        "weights_evaluated": "ema" if use_ema else "raw",  # final.keras / "final"
        "final": final,
        "final_raw": final_raw,
        "best": cb.read_json(run.file("best.keras.json")),
        "ema": ema,
        "wall_time_s": round(wall, 1),
        "init": config.init,
        "init_report": {
            k: (len(v) if isinstance(v, list) else v) for k, v in (init_report or {}).items()
        },
        "files": {
            "final_model": run.file("final.keras"),
            "best_model": run.file("best.keras"),
            "history": run.file("history.csv"),
            "curves": run.file("training_curves.png"),
            "tensorboard": run.file("logs"),
        },
        "eval_split": run.source.val_split,
        "eval_image_size": list(run.export_shape[:2]),
    }


# ---------------------------------------------------------------------------------------
# evaluate
# ---------------------------------------------------------------------------------------
def evaluate(
    target: str,
    *,
    dataset: str | None = None,
    split: str | None = None,
    weights: str = "ema",
    task: str | None = None,
    image_size: int | None = None,
    batch_size: int | None = None,
    data_dir=None,
    manual_dir=None,
    limit: int | None = None,
) -> dict:
    """Evaluate a run folder (``weights``: ``ema`` = ``final.keras``, or the EMA weights of
    the last backup while the run is unfinished | ``raw`` = the last backup | ``best`` =
    ``best.keras``, raw or EMA as recorded in ``best.keras.json``) or a ``.keras`` model.
    Progress goes to the ``"mvit3"`` logger (:mod:`mvit3_keras.progress`; the CLI shows
    it)."""
    import keras

    opened = dict(data_dir=data_dir, manual_dir=manual_dir)
    if os.path.isdir(target):
        model, values, task, source, image_size = _load_run_model(
            target, weights, dataset, image_size, opened
        )
    else:
        if not os.path.exists(target):
            raise FileNotFoundError(f"{target!r}: no such model file or run folder")
        if not dataset:
            raise ValueError("evaluating a model file needs --dataset NAME")
        task = task or "classification"
        model = keras.models.load_model(target, compile=False)
        values = recipes.get_recipe(
            "demo" if task == "classification" else "demo_segmentation"
        ).to_dict()
        values["image_augmentation"]["resize"] = {"enable": False}
        values["image_augmentation"]["center_crop"] = {"enable": False}
        shape = model.input_shape
        image_size = image_size or (shape[1] if shape[1] else 256)
        source = open_dataset(dataset, task, image_size=image_size, **opened)
        model = _compile_for_eval(model, values, task, source)
    make_ds = (
        pipeline.classification_eval if task == "classification" else pipeline.segmentation_eval
    )
    ds = make_ds(
        source,
        values,
        image_size=image_size,
        batch_size=int(batch_size or 32),
        split=split,
        limit=limit,
    )
    batches = int(ds.cardinality())
    report = cb.ProgressReport(max(batches, 0), f"evaluating {weights} weights")
    result = model.evaluate(ds, verbose=0, return_dict=True, callbacks=[report])
    return {
        "split": split or source.val_split,
        "weights": weights,
        **{k: float(v) for k, v in result.items()},
    }


def _load_run_model(target, weights, dataset, image_size, opened):
    """The compiled model of a run folder with the ``weights`` asked for:
    ``(model, values, task, source, image_size)``."""
    import keras

    run_path = os.path.join(target, RUN_FILE)
    if not os.path.exists(run_path):
        raise FileNotFoundError(f"{target!r} is not a training output folder (no {RUN_FILE})")
    if weights not in ("ema", "raw", "best"):
        raise ValueError(f"--weights must be ema, raw or best, got {weights!r}")
    with open(run_path, encoding="utf-8") as f:
        run = json.load(f)
    values, task = run["values"], run["task"]
    image_size = image_size or run["image_size"]
    dataset = dataset or run["dataset"]
    source = open_dataset(dataset, task, image_size=image_size, **opened)
    saved = os.path.join(target, "best.keras" if weights == "best" else "final.keras")
    if weights == "best" or (weights == "ema" and os.path.exists(saved)):
        if not os.path.exists(saved):
            raise FileNotFoundError(f"{saved} does not exist yet (no epoch finished?)")
        model = keras.models.load_model(saved, compile=False)
        return _compile_for_eval(model, values, task, source), values, task, source, image_size
    backup = os.path.join(target, "backup")
    state = cb.read_backup_state(backup)
    if state is None:
        raise FileNotFoundError(f"no backup in {backup!r}: the run has not finished an epoch")
    config = TrainConfig(model=run["model"], dataset=dataset, task=task)
    model = model_builder(config, values, source.num_classes, source.ignore_index)((None, None, 3))
    compile_model(
        model,
        values,
        task=task,
        total_steps=1,
        num_classes=source.num_classes,
        ignore_index=source.ignore_index,
    )
    model.optimizer.build(model.trainable_variables)
    model.load_weights(os.path.join(backup, state["weights"]))
    if weights == "ema":
        if not cb.uses_ema(model):
            raise ValueError("this run has no EMA weights (ema.enable false): use --weights raw")
        model.set_weights(cb.weights_values(model, "ema"))
    return model, values, task, source, image_size


def _compile_for_eval(model, values, task, source):
    from training import losses, metrics

    if task == "classification":
        model.compile(
            loss=losses.classification_loss(values), metrics=metrics.classification_metrics()
        )
    else:
        model.compile(
            loss=losses.segmentation_loss(source.ignore_index),
            metrics=[
                metrics.SegmentationMeanIoU(source.num_classes, ignore_class=source.ignore_index)
            ],
        )
    return model
