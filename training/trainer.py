"""One trainer: ``model.fit`` with Keras' own pieces, resumable and distributed.

The task (:mod:`training.tasks`) says what is trained (model, inputs, loss, metrics);
:class:`Trainer` owns the run, as TF Model Garden's ``official/core/base_trainer.py``
does for its tasks. :meth:`Trainer.run` does, in order:

1. resolves the recipe (:mod:`training.recipes`) with the command's overrides;
2. creates the ``tf.distribute`` strategy (:mod:`training.distribute`);
3. checks the output folder (:mod:`training.run_folder`): a folder holding a
   *different* run is refused (nothing is overwritten); the same command resumes; a
   finished run just reports;
4. opens the dataset and builds the ``tf.data`` pipelines (the task's
   ``build_inputs``) with the global batch;
5. builds the task's model in the strategy scope, optionally transformed
   (``model_transform``: e.g. :func:`quantization.quantize_model` for QAT) and
   initialised on a fresh run (``--init``: :meth:`training.tasks.Task.initialize`, or
   the ``initialize`` hook), and compiles it with the recipe's optimizer
   (:mod:`training.optimizers`: AdamW / SGD, weight-decay exclusions, warmup + cosine,
   ``use_ema``, ``global_clipnorm``) and the task's loss and metrics; mixed precision
   (``mixed_float16`` on GPU, ``mixed_bfloat16`` on TPU) when the recipe asks for it;
6. restores the newest backup (:class:`~training.callbacks.AtomicBackupAndRestore`:
   raw weights + optimizer: LR schedule and EMA warm-up position, moments, EMA
   weights) and runs ``model.fit`` from that epoch with the callbacks, in this order
   (it matters): :class:`~training.callbacks.EpochStats` -> ``EMAEvaluation`` (Keras
   validates the raw weights, this adds the EMA weights': ``val_*`` = EMA,
   ``val_*_raw`` = raw, as ml-cvnets/timm validate both every epoch) -> ``CSVLogger``
   (append) -> the backup (every epoch) -> :class:`~training.callbacks.BestCheckpoint`
   (``best.keras``: the better of the raw and the EMA weights by the task's metric,
   which one recorded in ``best.keras.json``) -> ``TensorBoard`` ->
   :class:`~training.callbacks.EpochLine` (one line per epoch; ``--verbose``: Keras'
   progress bar instead);
7. saves ``final.keras`` (EMA weights when EMA is on, the official
   ``checkpoint_ema`` convention: a fixed rule, so ``mvit3 evaluate --weights ema``
   means the same thing for every run; the raw weights stay in the backup and the
   better of the two is ``best.keras``), writes ``summary.json`` (final EMA and raw
   metrics, best, the EMA rule), ``training_curves.png`` and prints a summary table.

Every file is written atomically; a SIGKILL at any moment loses at most the running
epoch.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from collections.abc import Callable
from typing import Optional

from training import callbacks as cb
from training import distribute, optimizers, recipes
from training.config import TrainingConfig, replace_path, training_config
from training.run_folder import (
    LABELS_FILE,
    RUN_FILE,
    SUMMARY_FILE,
    check_run_folder,
    run_record,
)
from training.tasks import get_task


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
def resolve(config: TrainConfig, values_update: dict | None = None, check_model: bool = True):
    """``(recipe, values, image_size)`` with every override applied and checked;
    ``values`` is the typed :class:`training.config.TrainingConfig` of the run.

    ``values_update``: recipe values merged over the overrides (e.g. the QAT fine-tuning
    schedule); ``check_model=False``: ``config.model`` need not be a registered variant
    when ``config.recipe`` is given (the model comes from elsewhere)."""
    from mvit3_keras.registry import get_spec

    task = get_task(config.task)
    spec_name = config.model
    if check_model or not config.recipe:
        spec_name = get_spec(config.model).name  # clear error for unknown names
    name = config.recipe or recipes.default_recipe(spec_name, task.name, config.dataset)
    recipe = recipes.get_recipe(name)
    if recipe.task != task.name:
        raise ValueError(
            f"recipe {name!r} is a {recipe.task} recipe but --task is {task.name}; "
            f"pick one of: {', '.join(recipes.list_recipes(task.name))}"
        )
    values = recipe.to_dict()
    values = recipes.merge(values, recipes.parse_overrides(config.overrides, base=values))
    values = training_config(recipes.merge(values, values_update or {}))
    if config.epochs is not None:
        values = replace_path(values, "scheduler.max_epochs", int(config.epochs))
    if config.batch_size is not None:
        values = replace_path(values, "dataset.train_batch_size0", int(config.batch_size))
    values = task.apply_options(values, head=config.head)
    image_size = values.sampler.crop_size if config.image_size is None else config.image_size
    if int(image_size) < 32:
        raise ValueError(
            f"--image-size {image_size} is too small: MobileViT downsamples by 32 (five stride-2 "
            "stages), so use at least 32 (the official size is 256 for classification, 512 for "
            "segmentation)"
        )
    task.check_image_size(int(image_size))
    if values.scheduler.max_epochs < 1:
        raise ValueError("--epochs must be at least 1")
    return recipe, values, int(image_size)


def mixed_precision(values: TrainingConfig) -> str | None:
    """Set the global mixed-precision policy the recipe asks for on this hardware."""
    import keras
    import tensorflow as tf

    if not values.common.mixed_precision:
        return None
    if tf.config.list_logical_devices("TPU"):
        policy = "mixed_bfloat16"
    elif tf.config.list_logical_devices("GPU"):
        policy = "mixed_float16"
    elif values.runtime.mixed_precision_on_cpu:
        policy = "mixed_bfloat16"
    else:
        return None
    keras.mixed_precision.set_global_policy(policy)
    return policy


def compile_model(model, values, *, task, source, total_steps):
    """Compile ``model`` with the recipe's optimizer and the task's loss and metrics."""
    task = get_task(task)
    optimizer = optimizers.make_optimizer(
        values, total_steps, lr_multiplier_rules=task.lr_multiplier_rules(values)
    )
    jit = values.runtime.jit_compile
    task.compile(model, values, source, optimizer=optimizer, jit_compile=jit)
    return optimizer


def has_tensorboard() -> bool:
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        print("note: TensorBoard is not installed (pip install tensorboard): no TensorBoard logs")
        return False
    return True


def keras_verbose(config: TrainConfig, values: TrainingConfig) -> int:
    """Keras' progress output: ``--verbose`` -> its progress bar (one line per epoch
    when not on a terminal); ``runtime.verbose`` 1 or 2 -> that; else 0 (our one line per
    epoch, :class:`training.callbacks.EpochLine`)."""
    if config.verbose:
        return 1 if sys.stdout.isatty() else 2
    wanted = values.runtime.verbose
    return int(wanted) if wanted in (1, 2, "1", "2") else 0


# ---------------------------------------------------------------------------------------
# the run
# ---------------------------------------------------------------------------------------
@dataclasses.dataclass
class Run:
    """What the steps of :meth:`Trainer.run` share."""

    config: TrainConfig
    task: object
    recipe: object
    values: TrainingConfig
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


class Trainer:
    """Train ``config`` (its task from :func:`training.tasks.get_task`).

    Hooks (all optional):

    * ``build_model(input_shape) -> keras.Model``: the model before the transform
      (default: the task's builder for ``config.model``); it may return the same
      model every time when ``model_transform`` copies it;
    * ``model_transform(model) -> keras.Model``: applied to every model built (the
      training model and the exported ones), e.g. :func:`quantization.quantize_model`;
    * ``initialize(model, run) -> dict``: initialises the training model of a fresh
      run (default: :meth:`training.tasks.Task.initialize` from ``config.init``);
    * ``values_update``: recipe values merged over the overrides.
    """

    def __init__(
        self,
        config: TrainConfig,
        *,
        build_model: Optional[Callable] = None,
        model_transform: Optional[Callable] = None,
        initialize: Optional[Callable] = None,
        values_update: Optional[dict] = None,
    ):
        self.config = config
        self.task = get_task(config.task)
        self.build_model = build_model
        self.model_transform = model_transform
        self.initialize = initialize
        self.values_update = values_update

    def run(self) -> dict:
        """Train as described in the module docstring; returns the summary
        (``summary.json``)."""
        import keras
        import tensorflow as tf

        if os.environ.get("MVIT3_DEBUG"):
            keras.config.disable_traceback_filtering()
        start = time.time()
        run = self.open_run()
        if isinstance(run, dict):  # the run in the folder is complete
            return run
        backup_dir = run.file("backup")
        cb.remove_stale_temporaries(run.write_dir, backup_dir)
        state = cb.read_backup_state(backup_dir)  # raises a clear error when unreadable
        self._plan(run, state)
        model, init_report = self._model(run, from_init=state is None)
        backup = cb.AtomicBackupAndRestore(backup_dir, keep=run.values.runtime.keep_checkpoints)
        backup.set_model(model)
        with run.strategy.scope():
            run.initial_epoch = backup.restore()
        train_ds, val_ds = self._datasets(run)
        export_to = self.exporter(model, run)
        callbacks, verbose = self._callbacks(run, model, backup, export_to, val_ds)
        self._print_header(run)
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
            validation_steps=run.values.runtime.validation_steps,
            callbacks=callbacks,
            verbose=verbose,
            shuffle=False,  # the tf.data pipeline shuffles
        )
        fit_time = time.time() - fit_start
        return self._finish(run, model, export_to, val_ds, init_report, start, fit_time)

    def open_run(self):
        """Resolve, check and claim the output folder: a :class:`Run`, or the summary of a
        complete run."""
        config = self.config
        recipe, values, image_size = resolve(
            config, self.values_update, check_model=self.build_model is None
        )
        strategy = distribute.make_strategy(config.strategy, values.runtime.tpu)
        replicas = int(strategy.num_replicas_in_sync)
        chief = distribute.is_chief(strategy)
        output = config.output or os.path.join(
            "runs", f"{config.model}_{os.path.basename(config.dataset.rstrip('/'))}"
        )
        # non-chief workers keep their (identical) backups and logs in a scratch folder
        write_dir = (
            output if chief else os.path.join(output, f".worker-{distribute.worker_index()}")
        )
        source = self.task.open_dataset(  # before the folder exists: a bad name leaves nothing
            config.dataset,
            data_dir=config.data_dir,
            manual_dir=config.manual_dir,
            image_size=image_size,
        )
        os.makedirs(write_dir, exist_ok=True)
        record = run_record(config, recipe, values, image_size, replicas, source)
        check_run_folder(output, record)
        summary_path = os.path.join(output, SUMMARY_FILE)
        done = cb.read_json(summary_path)
        if done.get("status") == "complete":
            print(f"run in {output} is complete; nothing to do (summary: {summary_path})")
            return done
        if chief:
            from mvit3_keras.io_utils import atomic_write_text

            atomic_write_text(os.path.join(output, RUN_FILE), json.dumps(record, indent=2))
            if source.class_names:  # `mvit3 export` embeds them as the file's labels
                labels = "".join(f"{name}\n" for name in source.class_names)
                atomic_write_text(os.path.join(output, LABELS_FILE), labels)
        return Run(
            config,
            self.task,
            recipe,
            values,
            image_size,
            strategy,
            replicas,
            chief,
            output,
            write_dir,
            source,
        )

    def _plan(self, run: Run, state) -> None:
        """Seed, precision, epochs and steps of ``run``."""
        import keras

        values = run.values
        keras.utils.set_random_seed(values.runtime.seed + (int(state["epoch"]) if state else 0))
        run.policy = mixed_precision(values)
        run.epochs = values.scheduler.max_epochs
        run.per_replica = values.dataset.train_batch_size0
        run.steps = self.task.steps_per_epoch(
            values,
            run.source,
            per_replica_batch=run.per_replica,
            replicas=run.replicas,
            image_size=run.image_size,
        )

    # ------------------------------------------------------------------- model
    def make_model(self, run: Run, input_shape):
        """A model of this run (the transform applied), not compiled."""
        if self.build_model is not None:
            model = self.build_model(input_shape)
        else:
            build = self.task.model_builder(
                run.config.model, run.values, run.source, run.config.dataset
            )
            model = build(input_shape)
        return self.model_transform(model) if self.model_transform else model

    def _model(self, run: Run, from_init: bool):
        """The training model (in the strategy scope), initialised on a fresh run, compiled
        with the recipe's optimizer: ``(model, init_report)``."""
        config, values, source = run.config, run.values, run.source
        init_report = None
        with run.strategy.scope():
            model = self.make_model(run, self.task.train_input_shape(values, run.image_size))
            if from_init and self.initialize is not None:
                init_report = self.initialize(model, run)
            elif from_init and config.init:
                init_report = self.task.initialize(
                    model,
                    config.init,
                    num_classes=source.num_classes,
                    reset_head=values.runtime.init_reset_head,
                )
            compile_model(
                model, values, task=self.task, source=source, total_steps=run.steps * run.epochs
            )
        return model, init_report

    def export_model(self, model, run: Run, weights: str = "raw"):
        """An inference model (no optimizer, no aux head; input ``run.export_shape``)
        carrying ``model``'s raw weights or (``weights="ema"``) their EMA averages."""
        clean = self.make_model(run, run.export_shape)
        clean.set_weights(cb.weights_values(model, weights))
        return self.task.inference_model(clean)

    def exporter(self, model, run: Run):
        """``export_to(path or None, which="ema"|"raw")``: save an inference model with the
        raw or the EMA weights (``None``: build it only, for the collective ops of non-chief
        workers)."""

        def export_to(path, which="raw"):
            clean = self.export_model(model, run, weights=which)
            if path is not None:
                clean.save(path)

        return export_to

    # ------------------------------------------------------------------- fit
    def _datasets(self, run: Run):
        """``(train_ds, val_ds)`` (and ``run.export_shape``); the training order continues
        at the resumed epoch."""
        values = run.values
        common = dict(image_size=run.image_size)
        train_ds = self.task.build_inputs(
            run.source,
            values,
            training=True,
            batch_size=run.per_replica,
            replicas=run.replicas,
            seed=values.runtime.seed,
            epoch_offset=run.initial_epoch,
            **common,
        )
        val_batch = values.dataset.val_batch_size0 * run.replicas
        val_ds = self.task.build_inputs(
            run.source, values, training=False, batch_size=val_batch, **common
        )
        run.export_shape = self.task.export_shape(values, run.image_size)
        return train_ds, val_ds

    def _callbacks(self, run: Run, model, backup, export_to, val_ds):
        """The callbacks of ``fit``, in order (it matters: each sees the logs the previous
        ones added), and Keras' own ``verbose`` (0 unless ``--verbose`` /
        ``runtime.verbose`` 1|2)."""
        import keras

        values, monitor = run.values, self.task.monitor
        use_ema = values.ema.enable
        history_csv = run.file("history.csv")
        cb.repair_csv(history_csv, run.initial_epoch)
        candidates = {"ema": monitor, "raw": monitor + "_raw"} if use_ema else {"raw": monitor}
        best = cb.BestCheckpoint(run.file("best.keras"), export_to, candidates, write=run.chief)
        callbacks = [cb.EpochStats()]
        if use_ema:
            callbacks.append(cb.EMAEvaluation(val_ds, values.runtime.validation_steps))
        callbacks += [keras.callbacks.CSVLogger(history_csv, append=True), backup, best]
        if values.runtime.tensorboard and has_tensorboard():
            callbacks.append(
                keras.callbacks.TensorBoard(
                    run.file("logs"), write_graph=False, update_freq="epoch"
                )
            )
        verbose = keras_verbose(run.config, values)
        if verbose == 0 and run.chief and values.runtime.verbose != 0:
            line = cb.EpochLine(run.epochs, run.steps, self.task.metric)
            line.best = best
            callbacks.append(line)
        return callbacks, verbose

    def _print_header(self, run: Run) -> None:
        if not run.chief:
            return
        config, source = run.config, run.source
        print(
            f"training {config.model} on {source.description} ({source.num_classes} classes): "
            f"recipe {run.recipe.name}, {run.epochs} epochs x {run.steps} steps, batch "
            f"{run.per_replica}/replica x {run.replicas} = {run.per_replica * run.replicas} "
            f"global, image {run.image_size}, {distribute.describe(run.strategy)}"
            + (f", {run.policy}" if run.policy else "")
            + (f"; resuming after epoch {run.initial_epoch}" if run.initial_epoch else ""),
            flush=True,
        )

    # ------------------------------------------------------------------- finish
    def _finish(self, run: Run, model, export_to, val_ds, init_report, start, fit_time) -> dict:
        """Save ``final.keras`` (the EMA weights when EMA is on: the official
        ``checkpoint_ema`` convention; the raw ones stay in the backup), write
        ``summary.json`` and the curves, print the summary."""
        use_ema = cb.uses_ema(model)
        which = "ema" if use_ema else "raw"
        if run.chief:
            from mvit3_keras.io_utils import atomic_path

            with atomic_path(run.file("final.keras")) as tmp:
                export_to(tmp, which)
        else:
            export_to(None, which)
        rows = cb.read_csv(run.file("history.csv"))
        final, final_raw = final_metrics(run, model, val_ds, rows, use_ema)
        summary = run_summary(run, model, rows, final, final_raw, init_report)
        summary.update(
            this_invocation_s=round(time.time() - start, 1), fit_time_s=round(fit_time, 1)
        )
        if run.chief:
            from training import report

            metric = self.task.metric
            report.plot_curves(rows, summary["files"]["curves"], metric)
            report.write_summary(os.path.join(run.output, SUMMARY_FILE), summary)
            print(report.format_table(report.summary_rows(summary, metric), "training summary"))
        return summary


def final_metrics(run: Run, model, val_ds, rows, use_ema):
    """Validation metrics of the final EMA and raw weights: those of the last epoch in the
    history (the weights have not changed since); evaluated when the history lacks them."""
    last = rows[-1] if rows and int(rows[-1]["epoch"]) == run.epochs - 1 else {}
    final = {k[4:]: v for k, v in last.items() if k.startswith("val_") and not k.endswith("_raw")}
    final_raw = {k[4:-4]: v for k, v in last.items() if k.startswith("val_") and k.endswith("_raw")}
    steps = run.values.runtime.validation_steps
    if not final:  # e.g. a history lost with its folder: evaluate (the model holds `which`)
        result = model.evaluate(val_ds, steps=steps, verbose=0, return_dict=True)
        final = {k: float(v) for k, v in result.items()}
    if not use_ema:
        return final, None
    return final, final_raw or None


def ema_summary(run: Run, use_ema: bool) -> dict:
    """The EMA rule of the run, for ``summary.json``."""
    ema = {"enable": use_ema}
    if use_ema:
        decay = 1.0 - run.values.ema.momentum
        warmup = optimizers.ema_warmup_config(run.values)
        last_step = run.epochs * run.steps - 1
        ema.update(
            decay=decay,
            warmup=warmup,
            rule=optimizers.EMA_RULE if warmup else "Keras: 0 at step 0, then `decay`",
            decay_at_last_step=round(optimizers.ema_decay_at(last_step, decay, warmup), 6),
            averages="trainable variables (BatchNorm moving statistics: the raw model's)",
        )
    return ema


def run_summary(run: Run, model, rows, final, final_raw, init_report) -> dict:
    """``summary.json``."""
    config = run.config
    use_ema = cb.uses_ema(model)
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
        "ema": ema_summary(run, use_ema),
        "wall_time_s": round(sum(r.get("epoch_time", 0.0) for r in rows), 1),
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


def train(config: TrainConfig, **hooks) -> dict:
    """``Trainer(config, **hooks).run()``: train, resumably; returns the summary."""
    return Trainer(config, **hooks).run()
