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
6. ``model.fit`` with the callbacks, in this order (it matters): ``CSVLogger``
   (append) -> :class:`~training.callbacks.AtomicBackupAndRestore` (raw weights +
   optimizer + EMA, every epoch) -> ``SwapEMAWeights(swap_on_epoch=True)`` (the
   validation and the best checkpoint use the EMA weights) ->
   :class:`~training.callbacks.AtomicModelCheckpoint` (``best.keras`` by val top-1 /
   mIoU) -> ``TensorBoard``; progress bars are Keras' own;
7. saves ``final.keras`` (EMA weights when EMA is on, the official
   ``checkpoint_ema`` convention), evaluates it, writes ``summary.json``,
   ``training_curves.png`` and prints a summary table.

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
from training import distribute, pipeline, recipes
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


def export_model(model, build, input_shape, task):
    """An inference model (no optimizer, no aux head) carrying ``model``'s current weights."""
    clean = build(input_shape)
    clean.set_weights(model.get_weights())
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


def _prebuild_for_multiworker(model, strategy, train_ds) -> None:
    """Work around Keras 3.15 under MultiWorkerMirroredStrategy: ``fit`` builds the
    metrics from the first distributed batch with an eager cross-worker
    ``strategy.reduce`` that fails ("Attempt to convert a value (PerReplica...)").
    Build them here from a local batch's shapes and skip that step."""
    x, y = next(iter(train_ds.take(1)))
    with strategy.scope():
        model._symbolic_build(data_batch=(x, y, None))
    model._maybe_symbolic_build = lambda iterator=None, data_batch=None: None
    # and its step outputs (scalar logs) are reduced with ``reduce("MEAN", v, axis=0)``,
    # which fails on scalars: reduce scalars across replicas with axis=None instead.
    from keras.src import tree
    from keras.src.backend.tensorflow import trainer as tf_trainer

    original = getattr(tf_trainer, "_mvit3_original_reduce", tf_trainer.reduce_per_replica)

    def reduce_per_replica(values, strat, reduction):
        if reduction in ("auto", "mean") and tf_trainer._collective_all_reduce_multi_worker(strat):

            def one(v):
                rank = getattr(v, "shape", None)
                if rank is not None and len(rank) == 0:
                    return strat.reduce("MEAN", v, axis=None)
                return original(v, strat, reduction)

            return tree.map_structure(one, values)
        return original(values, strat, reduction)

    tf_trainer._mvit3_original_reduce = original
    tf_trainer.reduce_per_replica = reduce_per_replica


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
def train(config: TrainConfig) -> dict:
    import keras
    import tensorflow as tf

    if os.environ.get("MVIT3_DEBUG"):
        keras.config.disable_traceback_filtering()
    start = time.time()
    recipe, values, image_size = resolve(config)
    strategy = distribute.make_strategy(config.strategy, get(values, "runtime.tpu"))
    replicas = int(strategy.num_replicas_in_sync)
    chief = distribute.is_chief(strategy)
    output = config.output or os.path.join(
        "runs", f"{config.model}_{os.path.basename(config.dataset.rstrip('/'))}"
    )
    # non-chief workers keep their (identical) backups and logs in a scratch folder
    write_dir = output if chief else os.path.join(output, f".worker-{distribute.worker_index()}")
    os.makedirs(write_dir, exist_ok=True)

    summary_path = os.path.join(output, SUMMARY_FILE)
    source = open_dataset(
        config.dataset,
        config.task,
        data_dir=config.data_dir,
        manual_dir=config.manual_dir,
        image_size=image_size,
    )
    record = _run_record(config, recipe, values, image_size, replicas, source)
    _check_run_folder(output, record)
    if os.path.exists(summary_path):
        with open(summary_path, encoding="utf-8") as f:
            done = json.load(f)
        if done.get("status") == "complete":
            print(f"run in {output} is complete; nothing to do (summary: {summary_path})")
            return done
    if chief:
        from mvit3_keras.io_utils import atomic_write_text

        atomic_write_text(os.path.join(output, RUN_FILE), json.dumps(record, indent=2))

    backup_dir = os.path.join(write_dir, "backup")
    cb.remove_stale_temporaries(write_dir, backup_dir)
    state = cb.read_backup_state(backup_dir)  # raises a clear error when unreadable
    initial_epoch = int(state["epoch"]) if state else 0
    epochs = int(values["scheduler"]["max_epochs"])
    per_replica = int(values["dataset"]["train_batch_size0"])
    val_batch = int(values["dataset"].get("val_batch_size0", per_replica)) * replicas
    seed = int(get(values, "runtime.seed", 0))
    keras.utils.set_random_seed(seed + initial_epoch)
    policy = _mixed_precision(values)

    steps = pipeline.train_steps_per_epoch(
        values,
        source,
        per_replica_batch=per_replica,
        replicas=replicas,
        image_size=image_size,
        task=config.task,
    )
    total_steps = steps * epochs
    build_ds = (
        pipeline.classification_train
        if config.task == "classification"
        else pipeline.segmentation_train
    )
    train_ds = build_ds(
        source,
        values,
        image_size=image_size,
        per_replica_batch=per_replica,
        replicas=replicas,
        seed=seed,
        epoch_offset=initial_epoch,
    )
    build_val = (
        pipeline.classification_eval
        if config.task == "classification"
        else pipeline.segmentation_eval
    )
    val_ds = build_val(source, values, image_size=image_size, batch_size=val_batch)
    vsteps = get(values, "runtime.validation_steps")

    variable = pipeline.uses_variable_batch(values, config.task)
    train_shape = (None, None, 3) if variable else (image_size, image_size, 3)
    export_shape = (image_size, image_size, 3)
    if config.task == "segmentation":
        train_shape = (None, None, 3)  # evaluation size may differ from the crop
        export_shape = pipeline.segmentation_eval_size(values, image_size) + (3,)
    build = model_builder(config, values, source.num_classes, source.ignore_index)
    with strategy.scope():
        model = build(train_shape)
        init_report = None
        if config.init and initial_epoch == 0:
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
            total_steps=total_steps,
            num_classes=source.num_classes,
            ignore_index=source.ignore_index,
        )
    monitor, metric = _monitor(config.task)
    use_ema = bool(get(values, "ema.enable", False))

    def export_to(path):
        clean = export_model(model, build, export_shape, config.task)
        if path is not None:
            clean.save(path)

    history_csv = os.path.join(write_dir, "history.csv")
    cb.repair_csv(history_csv, initial_epoch)
    callbacks = [
        cb.EpochStats(),
        keras.callbacks.CSVLogger(history_csv, append=True),
        cb.AtomicBackupAndRestore(backup_dir, keep=int(get(values, "runtime.keep_checkpoints", 2))),
    ]
    if use_ema:
        callbacks.append(keras.callbacks.SwapEMAWeights(swap_on_epoch=True))
    callbacks.append(
        cb.AtomicModelCheckpoint(
            os.path.join(write_dir, "best.keras"),
            export_to,
            monitor=monitor,
            mode="max",
            write=chief,
        )
    )
    if get(values, "runtime.tensorboard", True) and _has_tensorboard():
        callbacks.append(
            keras.callbacks.TensorBoard(
                os.path.join(write_dir, "logs"), write_graph=False, update_freq="epoch"
            )
        )
    verbose = get(values, "runtime.verbose", 1)
    if verbose == "auto":
        verbose = 1 if sys.stdout.isatty() else 2

    if chief:
        print(
            f"training {config.model} on {source.description} ({source.num_classes} classes): "
            f"recipe {recipe.name}, {epochs} epochs x {steps} steps, batch {per_replica}/replica "
            f"x {replicas} = {per_replica * replicas} global, image {image_size}, "
            f"{distribute.describe(strategy)}"
            + (f", {policy}" if policy else "")
            + (f"; resuming after epoch {initial_epoch}" if initial_epoch else "")
        )
    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        _prebuild_for_multiworker(model, strategy, train_ds)
    fit_start = time.time()
    model.fit(
        train_ds,
        epochs=epochs,
        steps_per_epoch=steps,
        validation_data=val_ds,
        validation_steps=vsteps,
        callbacks=callbacks,
        verbose=verbose,
    )
    fit_time = time.time() - fit_start

    # -- final model (EMA weights after SwapEMAWeights' finalisation), evaluation ---------
    final_path = os.path.join(write_dir, "final.keras")
    if chief:
        from mvit3_keras.io_utils import atomic_path

        with atomic_path(final_path) as tmp:
            export_to(tmp)
    else:
        export_to(None)
    final_metrics = model.evaluate(val_ds, steps=vsteps, verbose=0, return_dict=True)
    rows = cb.read_csv(history_csv)
    best = {}
    info_path = os.path.join(write_dir, "best.keras.json")
    if os.path.exists(info_path):
        with open(info_path, encoding="utf-8") as f:
            best = json.load(f)
    wall = sum(r.get("epoch_time", 0.0) for r in rows)
    summary = {
        "status": "complete",
        "model": config.model,
        "task": config.task,
        "dataset": source.description,
        "recipe": recipe.name,
        "image_size": image_size,
        "num_classes": source.num_classes,
        "epochs": epochs,
        "epochs_run": len(rows),
        "resumed_from_epoch": initial_epoch,
        "steps_per_epoch": steps,
        "batch_per_replica": per_replica,
        "global_batch": per_replica * replicas,
        "replicas": replicas,
        "strategy": distribute.describe(strategy),
        "mixed_precision": policy,
        "weights_evaluated": "ema" if use_ema else "raw",
        "final": {k: float(v) for k, v in final_metrics.items()},
        "best": best,
        "wall_time_s": round(wall, 1),
        "this_invocation_s": round(time.time() - start, 1),
        "fit_time_s": round(fit_time, 1),
        "init": config.init,
        "init_report": {
            k: (len(v) if isinstance(v, list) else v) for k, v in (init_report or {}).items()
        },
        "files": {
            "final_model": final_path,
            "best_model": os.path.join(write_dir, "best.keras"),
            "history": history_csv,
            "curves": os.path.join(write_dir, "training_curves.png"),
            "tensorboard": os.path.join(write_dir, "logs"),
        },
        "eval_split": source.val_split,
        "eval_image_size": list(export_shape[:2]),
    }
    if chief:
        from training import report

        report.plot_curves(rows, summary["files"]["curves"], metric)
        report.write_summary(summary_path, summary)
        table = [
            ("model", config.model),
            ("dataset", source.description),
            ("recipe", recipe.name),
            (
                "epochs",
                f"{len(rows)} (resumed after {initial_epoch})" if initial_epoch else len(rows),
            ),
            ("global batch", per_replica * replicas),
            ("strategy", distribute.describe(strategy)),
            (
                f"final val {metric} ({summary['weights_evaluated']} weights)",
                summary["final"].get(metric, float("nan")),
            ),
            ("final val loss", summary["final"].get("loss", float("nan"))),
            (
                f"best val {metric}",
                f"{best.get('value', float('nan')):.4f} (epoch {best.get('epoch', '-')})",
            ),
            ("wall time (all epochs)", f"{wall:.1f} s"),
            ("output", output),
        ]
        print(report.format_table(table, "training summary"))
    return summary


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
    """Evaluate a run folder (``weights``: ``ema`` | ``raw`` | ``best``) or a ``.keras`` model."""
    import keras

    if os.path.isdir(target):
        run_path = os.path.join(target, RUN_FILE)
        if not os.path.exists(run_path):
            raise FileNotFoundError(f"{target!r} is not a training output folder (no {RUN_FILE})")
        with open(run_path, encoding="utf-8") as f:
            run = json.load(f)
        values = run["values"]
        task = run["task"]
        image_size = image_size or run["image_size"]
        dataset = dataset or run["dataset"]
        config = TrainConfig(model=run["model"], dataset=dataset, task=task)
        source = open_dataset(
            dataset, task, data_dir=data_dir, manual_dir=manual_dir, image_size=image_size
        )
        if weights not in ("ema", "raw", "best"):
            raise ValueError(f"--weights must be ema, raw or best, got {weights!r}")
        build = model_builder(config, values, source.num_classes, source.ignore_index)
        if weights == "best" or (
            weights == "ema" and os.path.exists(os.path.join(target, "final.keras"))
        ):
            path = os.path.join(target, "best.keras" if weights == "best" else "final.keras")
            if not os.path.exists(path):
                raise FileNotFoundError(f"{path} does not exist yet (no epoch finished?)")
            model = keras.models.load_model(path, compile=False)
            model = _compile_for_eval(model, values, task, source)
        else:
            backup = os.path.join(target, "backup")
            state = cb.read_backup_state(backup)
            if state is None:
                raise FileNotFoundError(
                    f"no backup in {backup!r}: the run has not finished an epoch"
                )
            model = build((None, None, 3))
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
                if not model.optimizer.use_ema:
                    raise ValueError(
                        "this run has no EMA weights (ema.enable false): use --weights raw"
                    )
                for var, avg in zip(
                    model.optimizer._trainable_variables,
                    model.optimizer._model_variables_moving_average,
                ):
                    var.assign(avg)
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
        source = open_dataset(
            dataset, task, data_dir=data_dir, manual_dir=manual_dir, image_size=image_size
        )
        model = _compile_for_eval(model, values, task, source)
    batch = int(batch_size or 32)
    if task == "classification":
        ds = pipeline.classification_eval(
            source, values, image_size=image_size, batch_size=batch, split=split, limit=limit
        )
    else:
        ds = pipeline.segmentation_eval(
            source, values, image_size=image_size, batch_size=batch, split=split, limit=limit
        )
    result = model.evaluate(ds, verbose=0, return_dict=True)
    return {
        "split": split or source.val_split,
        "weights": weights,
        **{k: float(v) for k, v in result.items()},
    }


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
