"""Training tasks: everything that differs between classification and segmentation.

The shape of TF Model Garden's ``official/vision/tasks/image_classification.py`` /
``semantic_segmentation.py``: a task object builds the model, initialises it from a
checkpoint, builds the input pipelines, the loss and the metrics, names the metric
that picks the best checkpoint and evaluates a model. The trainer
(:mod:`training.trainer`), the evaluation of run folders and the QAT fine-tuning
(:mod:`quantization.qat_train`) only call these methods; the task name is looked up
once, in :func:`get_task`.

* :class:`ClassificationTask`: the ImageNet recipes of MobileViT v1/v2/v3
  (ml-cvnets ``cvnets/models/classification/``; loss ``loss_fn/classification``,
  top-1 / top-5 metrics).
* :class:`SegmentationTask`: DeepLabv3 / PSPNet heads
  (ml-cvnets ``cvnets/models/segmentation/``; loss
  ``loss_fn/segmentation/cross_entropy.py``, mIoU metric).
"""

from __future__ import annotations

import os

from training import recipes
from training.config import TrainingConfig, replace_path, training_config

# training.pipeline / losses / metrics (TensorFlow, Keras) are imported where used: the
# task names are read when the ``mvit3`` parser is built

STATE_DICT_SUFFIXES = (".pt", ".pth", ".npz", ".bin", ".ckpt")
RESET_HEAD_FIX = (
    "pass --set runtime.init_reset_head=true to load everything except the "
    "classifier (fine-tuning to a new label set)"
)


class Task:
    """What a task gives the trainer (subclasses fill in the task-specific parts)."""

    name = ""
    metric = ""  # the validation metric that picks best.keras, e.g. "top1"
    eval_recipe = ""  # the recipe whose evaluation transform a bare .keras file gets
    center_crop_eval = False  # evaluation of a file: shorter side + center crop (True) or resize
    head_prefixes: tuple = ()  # layer / checkpoint key prefixes of the class-count head

    @property
    def monitor(self) -> str:
        """The ``fit`` log key of :attr:`metric` on the validation split."""
        return "val_" + self.metric

    # ---------------------------------------------------------------- configuration
    def apply_options(self, values: TrainingConfig, *, head=None) -> TrainingConfig:
        """``values`` with the command-line options that only this task has (``--head``)."""
        if head is not None:
            raise ValueError(f"--head is for --task segmentation (this is --task {self.name})")
        return values

    def check_image_size(self, image_size: int) -> None:
        """Raise when ``image_size`` cannot be trained by this task."""

    def open_dataset(self, name: str, **kwargs):
        from training.datasets import open_dataset

        return open_dataset(name, self.name, **kwargs)

    # ---------------------------------------------------------------- model
    def model_builder(self, model_name: str, values: dict, source, dataset: str):
        """``build(input_shape) -> keras.Model`` (the training graph)."""
        raise NotImplementedError

    def train_input_shape(self, values: dict, image_size: int) -> tuple:
        return (None, None, 3)

    def export_shape(self, values: dict, image_size: int) -> tuple:
        """Input shape of the exported inference model (``final.keras``, ``best.keras``)."""
        return (image_size, image_size, 3)

    def inference_model(self, model):
        """The inference graph of a training model (e.g. without an aux head)."""
        return model

    def initialize(self, model, path: str, *, num_classes: int, reset_head: bool) -> dict:
        """Initialise ``model`` from ``--init`` ``path`` (official ``.pt``/``.pth``/``.npz``
        state dict, ``.keras`` model or ``.weights.h5`` file); returns a load report."""
        if not os.path.exists(path):
            raise FileNotFoundError(f"--init {path!r}: file not found")
        if path.endswith(STATE_DICT_SUFFIXES):
            from mvit3_keras.convert import read_state_dict

            try:
                return self.load_state_dict(
                    model, read_state_dict(path), num_classes=num_classes, reset_head=reset_head
                )
            except ValueError as err:  # name the file (CheckpointMismatchError too)
                raise type(err)(f"--init {path}: {err}") from None
        if path.endswith(".weights.h5"):
            return init_from_weights_file(model, path)
        if path.endswith(".keras"):
            return init_from_keras_file(
                model, path, self.head_prefixes, num_classes=num_classes, reset_head=reset_head
            )
        raise ValueError(
            f"--init {path!r}: unsupported file type; use an official .pt/.pth checkpoint, an "
            ".npz state dict, a .keras model or a .weights.h5 file"
        )

    def load_state_dict(self, model, state, *, num_classes: int, reset_head: bool) -> dict:
        raise NotImplementedError

    def load_whole_checkpoint(self, model, state, found, num_classes, reset_head) -> dict:
        """A checkpoint of this task whose head has ``found`` classes: everything
        (strict), or (``reset_head``) everything but the head."""
        from mvit3_keras.backbone_weights import load_weights_except
        from mvit3_keras.convert import load_cvnets_weights

        if found is not None and found != num_classes and not reset_head:
            raise ValueError(
                f"the checkpoint's {self.name} head has {found} classes but the dataset has "
                f"{num_classes}; {RESET_HEAD_FIX}"
            )
        if reset_head:
            return load_weights_except(model, state, head_prefixes=self.head_prefixes)
        return load_cvnets_weights(model, state, strict=True)

    # ---------------------------------------------------------------- inputs
    def uses_variable_batch(self, values: dict) -> bool:
        """Multi-scale variable batches (ml-cvnets ``data/sampler/variable_batch_sampler.py``)."""
        return False

    def steps_per_epoch(self, values, source, *, per_replica_batch, replicas, image_size) -> int:
        from training import pipeline

        return pipeline.train_steps_per_epoch(
            values,
            source,
            per_replica_batch=per_replica_batch,
            replicas=replicas,
            image_size=image_size,
            variable_batch=self.uses_variable_batch(values),
        )

    def build_inputs(
        self,
        source,
        values,
        *,
        training: bool,
        image_size: int,
        batch_size: int,
        replicas: int = 1,
        seed: int = 0,
        epoch_offset: int = 0,
        split=None,
        limit=None,
    ):
        """The ``tf.data`` pipeline: training (``batch_size`` per replica, infinite,
        augmented) or evaluation (``batch_size`` global, one pass)."""
        from training import pipeline

        train_pipeline, eval_pipeline = (getattr(pipeline, name) for name in self.pipelines)
        if training:
            return train_pipeline(
                source,
                values,
                image_size=image_size,
                per_replica_batch=batch_size,
                replicas=replicas,
                seed=seed,
                epoch_offset=epoch_offset,
            )
        return eval_pipeline(
            source, values, image_size=image_size, batch_size=batch_size, split=split, limit=limit
        )

    pipelines = ("classification_train", "classification_eval")  # in training.pipeline

    def labels(self, y):
        """Labels of an evaluation batch as arrays (class indices / masks)."""
        import numpy as np

        return np.asarray(y)

    # ---------------------------------------------------------------- loss, metrics
    def build_losses(self, values: dict, source):
        raise NotImplementedError

    def build_metrics(self, source) -> list:
        raise NotImplementedError

    def lr_multiplier_rules(self, values: dict) -> tuple:
        return ()

    def compile(self, model, values: dict, source, *, optimizer=None, jit_compile=False):
        """Compile ``model`` with the task's loss and metrics (and ``optimizer`` if given).

        A given optimizer is built here, before ``fit``: Keras would otherwise create
        its slot and EMA variables inside the first call of the train function, and
        ``tf.function`` traces a function that creates variables twice. Building first
        takes MobileViTv3-XXS (64x64, AdamW) from 42 s to 25 s before its first step on
        2 cores. The EMA averages still start from the weights of the first step.
        """
        kwargs = {} if optimizer is None else {"optimizer": optimizer}
        model.compile(
            loss=self.build_losses(values, source),
            metrics=self.build_metrics(source),
            jit_compile=jit_compile,
            **kwargs,
        )
        if optimizer is not None and model.built and not optimizer.built:
            optimizer.build(model.trainable_variables)
        return model

    def evaluate(
        self,
        model,
        source,
        values,
        *,
        image_size,
        batch_size=32,
        split=None,
        limit=None,
        progress=None,
    ):
        """``{metric: value}`` of the compiled ``model`` on ``split`` (default validation);
        ``progress``: a title for batches reported to the ``"mvit3"`` logger."""
        ds = self.build_inputs(
            source,
            values,
            training=False,
            image_size=image_size,
            batch_size=int(batch_size),
            split=split,
            limit=limit,
        )
        callbacks = []
        if progress:
            from training.callbacks import ProgressReport

            callbacks.append(ProgressReport(max(int(ds.cardinality()), 0), progress))
        result = model.evaluate(ds, verbose=0, return_dict=True, callbacks=callbacks)
        return {k: float(v) for k, v in result.items()}

    def eval_values(self) -> TrainingConfig:
        """Recipe values for evaluating a bare ``.keras`` file: the task's evaluation
        transform without the resize / center crop (the model fixes the size)."""
        values = recipes.get_recipe(self.eval_recipe).config()
        values = replace_path(values, "image_augmentation.resize.enable", False)
        return replace_path(values, "image_augmentation.center_crop.enable", False)


class ClassificationTask(Task):
    """Image classification (ml-cvnets ``cvnets/models/classification/``)."""

    name = "classification"
    metric = "top1"
    eval_recipe = "demo"
    center_crop_eval = True  # evaluation: resize the shorter side, then center crop
    head_prefixes = ("classifier",)

    def model_builder(self, model_name, values, source, dataset):
        import mvit3_keras as m

        dropout = training_config(values).model.classification.classifier_dropout

        def build(input_shape):
            return m.create_model(
                model_name,
                num_classes=source.num_classes,
                input_shape=input_shape,
                classifier_dropout=dropout,
            )

        return build

    def train_input_shape(self, values, image_size):
        if self.uses_variable_batch(values):
            return (None, None, 3)
        return (image_size, image_size, 3)

    def load_state_dict(self, model, state, *, num_classes, reset_head):
        """A classification checkpoint (or a segmentation checkpoint's ``encoder.*``)."""
        from mvit3_keras.backbone_weights import ENCODER_PREFIX, load_weights_except
        from mvit3_keras.variant_guess import checkpoint_num_classes

        if any(k.startswith(ENCODER_PREFIX) for k in state):  # a dense model's backbone
            state = {
                k[len(ENCODER_PREFIX) :]: v
                for k, v in state.items()
                if k.startswith(ENCODER_PREFIX)
            }
            return load_weights_except(model, state, head_prefixes=self.head_prefixes)
        found = checkpoint_num_classes(state)
        return self.load_whole_checkpoint(model, state, found, num_classes, reset_head)

    def uses_variable_batch(self, values):
        from training import pipeline

        return pipeline.uses_variable_batch(values)

    def labels(self, y):
        import numpy as np

        y = np.asarray(y)
        return np.argmax(y, axis=-1) if y.ndim == 2 else y  # one-hot -> class index

    def build_losses(self, values, source):
        from training import losses

        return losses.classification_loss(values)

    def build_metrics(self, source):
        from training import metrics

        return metrics.classification_metrics()


class SegmentationTask(Task):
    """Semantic segmentation (ml-cvnets ``cvnets/models/segmentation/``)."""

    name = "segmentation"
    metric = "miou"
    eval_recipe = "demo_segmentation"
    center_crop_eval = False  # evaluation: resize the whole image
    head_prefixes = ("seg_head.classifier", "seg_head.aux_head.2")
    pipelines = ("segmentation_train", "segmentation_eval")
    HEADS = ("deeplabv3", "pspnet")

    def apply_options(self, values, *, head=None):
        if head is None:
            return values
        if head not in self.HEADS:
            raise ValueError(f"--head must be {' or '.join(self.HEADS)}, got {head!r}")
        return replace_path(values, "model.segmentation.seg_head", head)

    def check_image_size(self, image_size):
        if int(image_size) % 32:
            size = int(image_size)
            raise ValueError(
                f"--image-size {size}: segmentation crops must be a multiple of 32 so the "
                f"logits (low-res x output stride) match the mask; use {size // 32 * 32 or 32} "
                f"or {(size // 32 + 1) * 32}"
            )

    def model_builder(self, model_name, values, source, dataset):
        from mvit3_keras.segmentation import create_segmenter

        kwargs = segmenter_options(values, source, dataset)

        def build(input_shape):
            return create_segmenter(model_name, input_shape=input_shape, **kwargs)

        return build

    def export_shape(self, values, image_size):
        from training import pipeline

        # the evaluation size may differ from the training crop
        return pipeline.segmentation_eval_size(values, image_size) + (3,)

    def inference_model(self, model):
        return model.inference_model() if hasattr(model, "inference_model") else model

    def load_state_dict(self, model, state, *, num_classes, reset_head):
        """A classification checkpoint -> the backbone (ml-cvnets fine-tunes a segmenter
        from ``model.classification.pretrained``); a segmentation checkpoint -> all."""
        from mvit3_keras.backbone_weights import (
            ENCODER_PREFIX,
            load_backbone_weights,
        )

        if not any(k.startswith(ENCODER_PREFIX) for k in state):
            return load_backbone_weights(model, state)
        cls_key = next(
            (
                k
                for k in state
                if k.endswith(
                    (
                        "seg_head.classifier.block.conv.weight",
                        "seg_head.classifier.classifier.block.conv.weight",
                    )
                )
            ),
            None,
        )
        found = int(state[cls_key].shape[0]) if cls_key else None
        return self.load_whole_checkpoint(model, state, found, num_classes, reset_head)

    def build_losses(self, values, source):
        from training import losses

        return losses.segmentation_loss(source.ignore_index)

    def build_metrics(self, source):
        from training import metrics

        return [metrics.SegmentationMeanIoU(source.num_classes, ignore_class=source.ignore_index)]

    def lr_multiplier_rules(self, values):
        """The head learns ``model.segmentation.lr_multiplier`` x faster (ml-cvnets
        ``cvnets/models/segmentation/base_seg.py`` ``get_trainable_parameters``)."""
        mult = training_config(values).model.segmentation.lr_multiplier or 1.0
        return ((r"^(?!encoder\.)", mult),) if mult != 1.0 else ()


# create_segmenter argument -> key of the recipe's model.segmentation.<head> section
HEAD_OPTIONS = {
    "deeplabv3": {
        "aspp_channels": "aspp_out_channels",
        "aspp_rates": "aspp_rates",
        "aspp_dropout": "aspp_dropout",
        "aspp_separable": "aspp_sep_conv",
    },
    "pspnet": {
        "psp_channels": "psp_out_channels",
        "psp_pool_sizes": "psp_pool_sizes",
        "psp_dropout": "psp_dropout",
    },
}


def segmenter_options(values, source, dataset: str) -> dict:
    """Keyword arguments of :func:`mvit3_keras.segmentation.create_segmenter` from the
    recipe's ``model.segmentation`` section (ml-cvnets option names); head options the
    recipe leaves out take the segmenter preset's values."""
    values = training_config(values)
    seg = values.model.segmentation
    ignore_index = source.ignore_index
    kwargs = dict(
        head=seg.seg_head,
        preset="ade20k" if ignore_index == -1 or "ade" in dataset else "pascal_voc",
        num_classes=source.num_classes,
        output_stride=seg.output_stride,
        aux_head=seg.use_aux_head,
        aux_loss_weight=values.loss.segmentation.cross_entropy.aux_weight,
        classifier_dropout=seg.classifier_dropout,
    )
    head_section = getattr(seg, seg.seg_head, None)
    for argument, key in HEAD_OPTIONS.get(seg.seg_head, {}).items():
        kwargs[argument] = getattr(head_section, key)
    return {key: value for key, value in kwargs.items() if value is not None}


# ---------------------------------------------------------------------------------------
# --init file formats shared by the tasks
# ---------------------------------------------------------------------------------------
def init_from_weights_file(model, path: str) -> dict:
    """A Keras ``.weights.h5`` file of the same variant and number of classes."""
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


def init_from_keras_file(model, path: str, head_prefixes, *, num_classes, reset_head) -> dict:
    """A ``.keras`` model: every layer copied by name; a head with another number of
    classes is skipped only with ``reset_head``."""
    import keras
    import numpy as np

    from mvit3_keras.graph_clone import iter_layers

    try:
        source = keras.models.load_model(path, compile=False)
    except Exception as err:
        raise ValueError(f"--init {path}: cannot load ({type(err).__name__}: {err})") from None

    def weighted_layers(m):
        return [lay for lay in iter_layers(m) if lay.weights and not isinstance(lay, keras.Model)]

    by_name = {layer.name: layer for layer in weighted_layers(source)}
    loaded, skipped = 0, []
    for layer in weighted_layers(model):
        other = by_name.get(layer.name)
        shapes = [tuple(w.shape) for w in layer.weights]
        other_shapes = None if other is None else [tuple(w.shape) for w in other.weights]
        if other is not None and shapes != other_shapes:
            if not layer.name.startswith(head_prefixes):
                raise ValueError(
                    f"--init {path}: layer {layer.name} has shape {other_shapes} in the "
                    f"checkpoint but {shapes} in {model.name}: another variant?"
                )
            if not reset_head:
                raise ValueError(
                    f"--init {path}: layer {layer.name} has shape {other_shapes} in the "
                    f"checkpoint but {shapes} here (number of classes differs: dataset has "
                    f"{num_classes}); {RESET_HEAD_FIX}"
                )
        if other is None or shapes != other_shapes:
            skipped.append(layer.name)
            continue
        layer.set_weights([np.asarray(w) for w in other.get_weights()])
        loaded += 1
    if loaded == 0:
        raise ValueError(f"--init {path}: no layer of {model.name} found in the checkpoint")
    return {"loaded": loaded, "skipped": skipped}


# ---------------------------------------------------------------------------------------
# registry
# ---------------------------------------------------------------------------------------
TASKS = {each.name: each for each in (ClassificationTask(), SegmentationTask())}


def task_names() -> tuple:
    return tuple(TASKS)


def get_task(name) -> Task:
    """The task called ``name`` (a :class:`Task` passes through)."""
    if isinstance(name, Task):
        return name
    try:
        return TASKS[name]
    except KeyError:
        raise ValueError(
            f"unknown task {name!r}: use one of {', '.join(TASKS)} (--task NAME)"
        ) from None
