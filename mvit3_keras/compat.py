"""The one place for Keras / TensorFlow internals used by this project.

Everything here touches a private Keras name (a ``_``-prefixed attribute or a
``keras.src`` module). Each use is a small function or mixin that first checks
that the name still exists (:func:`require`) and raises :class:`KerasCompatError`
naming the Keras version and the name otherwise; ``tests/test_compat.py``
additionally pins the *source* of every Keras function used or replaced here
(:data:`PINNED`) so that a Keras upgrade that changes one of them fails loudly in
the tests instead of silently changing training. Verified with Keras 3.15.1
(TensorFlow 2.21).

Used or replaced:

* the optimizer's EMA (``use_ema``): ``_model_variables_moving_average`` (the
  averages, created in ``BaseOptimizer.build``), ``_trainable_variables`` (the
  model variables they average) and the hook ``_update_model_variables_moving_average``
  that ``BaseOptimizer._backend_apply_gradients`` calls after every update step
  (:class:`OptimizerHooks`, :func:`ema_pairs`);
* the decoupled weight decay hook ``_apply_weight_decay`` and the exclusion test
  ``_use_weight_decay`` (:class:`OptimizerHooks`, :func:`uses_weight_decay`);
* MultiWorkerMirroredStrategy: ``Trainer._symbolic_build`` / ``_maybe_symbolic_build``
  and ``keras.src.backend.tensorflow.trainer.reduce_per_replica`` /
  ``_collective_all_reduce_multi_worker`` (:func:`prebuild_for_multiworker`);
* the functional graph: a layer's calls and consumers (``_inbound_nodes`` /
  ``_outbound_nodes``), a tensor's producer (``_keras_history``), nested layers
  (``_flatten_layers``), the nodes a model runs (``_nodes_by_depth``) — used by the
  graph passes (:func:`sole_parent`, :func:`sole_consumer`, ...);
* TensorFlow / LiteRT: the converter's calibrate-only switch and ``mlir_quantize``
  step, ``convert_variables_to_constants_v2``, the
  flatbuffer schema module and the op-determinism switch.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect

import keras

VERIFIED_KERAS = "3.15.1"


class KerasCompatError(RuntimeError):
    """This Keras version lacks (or changed) an internal that mvit3_keras relies on."""


def require(obj, name: str, what: str):
    """``getattr(obj, name)``, or a :class:`KerasCompatError` that says what is missing."""
    try:
        return getattr(obj, name)
    except AttributeError:
        raise KerasCompatError(
            f"Keras {keras.__version__} has no {getattr(obj, '__name__', type(obj).__name__)}"
            f".{name} ({what}); mvit3_keras/compat.py was written for Keras {VERIFIED_KERAS}: "
            f"install keras=={VERIFIED_KERAS} or adapt mvit3_keras/compat.py"
        ) from None


def _keras_internals() -> dict:
    """``{qualified name: function}`` of every Keras internal used or replaced here."""
    from keras.src.backend.tensorflow import optimizer as tf_optimizer
    from keras.src.backend.tensorflow import trainer as tf_trainer
    from keras.src.optimizers import base_optimizer
    from keras.src.trainers import trainer

    base = base_optimizer.BaseOptimizer
    return {
        "BaseOptimizer.build": base.build,
        "BaseOptimizer._backend_apply_gradients": base._backend_apply_gradients,
        "BaseOptimizer._update_model_variables_moving_average": (
            base._update_model_variables_moving_average
        ),
        "BaseOptimizer._apply_weight_decay": base._apply_weight_decay,
        "BaseOptimizer._use_weight_decay": base._use_weight_decay,
        "TFOptimizer._apply_weight_decay": tf_optimizer.TFOptimizer._apply_weight_decay,
        "Trainer._symbolic_build": trainer.Trainer._symbolic_build,
        "TensorFlowTrainer._maybe_symbolic_build": tf_trainer.TensorFlowTrainer._maybe_symbolic_build,
        "tensorflow.trainer.reduce_per_replica": tf_trainer.reduce_per_replica,
        "tensorflow.trainer._collective_all_reduce_multi_worker": (
            tf_trainer._collective_all_reduce_multi_worker
        ),
    }


# sha256 (first 16 hex digits) of ``inspect.getsource`` of each internal, Keras 3.15.1
PINNED = {
    "BaseOptimizer.build": "e9d310fddad51ed1",
    "BaseOptimizer._backend_apply_gradients": "48d6e24d58039241",
    "BaseOptimizer._update_model_variables_moving_average": "ae5df2205d65bb21",
    "BaseOptimizer._apply_weight_decay": "0c454013d4ec584b",
    "BaseOptimizer._use_weight_decay": "0e73208c5bf5328d",
    "TFOptimizer._apply_weight_decay": "fee6526b6ad02f94",
    "Trainer._symbolic_build": "96220cc3b88fe768",
    "TensorFlowTrainer._maybe_symbolic_build": "92a504f5eba9b29f",
    "tensorflow.trainer.reduce_per_replica": "2e7d54b1e6edc29a",
    "tensorflow.trainer._collective_all_reduce_multi_worker": "0302369d850e6694",
}


def source_digests() -> dict:
    """``{name: digest}`` of the installed Keras' internals (compare with :data:`PINNED`)."""
    return {
        name: hashlib.sha256(inspect.getsource(fn).encode()).hexdigest()[:16]
        for name, fn in _keras_internals().items()
    }


def changed_internals() -> list:
    """Names in :data:`PINNED` whose source differs in the installed Keras."""
    current = source_digests()
    return [name for name, digest in PINNED.items() if current.get(name) != digest]


# ---------------------------------------------------------------------------------------
# optimizer: EMA and weight decay
# ---------------------------------------------------------------------------------------
def ema_pairs(optimizer) -> list:
    """``[(model variable, its EMA average), ...]`` of a built ``use_ema`` optimizer
    (Keras averages the trainable variables only)."""
    if not getattr(optimizer, "use_ema", False):
        raise ValueError("this optimizer has no EMA weights (use_ema=False)")
    variables = require(optimizer, "_trainable_variables", "the optimizer's variables")
    averages = require(optimizer, "_model_variables_moving_average", "the EMA weights")
    if len(variables) != len(averages):
        raise KerasCompatError(
            f"Keras {keras.__version__}: {len(variables)} optimizer variables but "
            f"{len(averages)} EMA averages; adapt mvit3_keras/compat.py"
        )
    return [(v, a) for v, a in zip(variables, averages) if a is not None]


def uses_weight_decay(optimizer, variable) -> bool:
    """Keras' own test (``exclude_from_weight_decay`` names / patterns) for ``variable``."""
    return bool(require(optimizer, "_use_weight_decay", "the weight-decay exclusions")(variable))


def keras_weight_decay(optimizer, variables) -> None:
    """Keras' own (backend, distribution-aware) decoupled decay ``w -= lr * wd * w``."""
    base = OptimizerHooks._next_in_mro(optimizer, "_apply_weight_decay")
    base(optimizer, variables)


class OptimizerHooks:
    """Mixin (put it first in the bases of a ``keras.optimizers.Optimizer`` subclass)
    that routes two private Keras hooks to public methods of the subclass:

    * ``_update_model_variables_moving_average`` (called by Keras inside the compiled
      train step after each update when ``use_ema``) -> ``self.update_moving_average
      (pairs)``;
    * ``_apply_weight_decay`` (called before each update) -> ``self.apply_weight_decay
      (variables)`` (default: Keras' own).
    """

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        for name in ("_update_model_variables_moving_average", "_apply_weight_decay"):
            require(keras.optimizers.Optimizer, name, "an optimizer hook")

    @staticmethod
    def _next_in_mro(optimizer, name):
        mro = type(optimizer).__mro__
        for klass in mro[mro.index(OptimizerHooks) + 1 :]:
            if name in vars(klass):
                return vars(klass)[name]
        raise KerasCompatError(f"Keras {keras.__version__}: no optimizer defines {name}")

    def _update_model_variables_moving_average(self, trainable_variables):
        if self.use_ema:
            averages = require(self, "_model_variables_moving_average", "the EMA weights")
            pairs = [(v, a) for v, a in zip(trainable_variables, averages) if a is not None]
            self.update_moving_average(pairs)

    def update_moving_average(self, pairs):
        """Keras' rule: ``avg = m * avg + (1 - m) * w`` (``m = 0`` at the first step)."""
        momentum = keras.ops.where(keras.ops.equal(self.iterations, 0), 0.0, self.ema_momentum)
        for var, average in pairs:
            m = keras.ops.cast(momentum, var.dtype)
            average.assign(m * average + (1 - m) * var)

    def _apply_weight_decay(self, variables):
        self.apply_weight_decay(variables)

    def apply_weight_decay(self, variables):
        keras_weight_decay(self, variables)


# ---------------------------------------------------------------------------------------
# MultiWorkerMirroredStrategy
# ---------------------------------------------------------------------------------------
def prebuild_for_multiworker(model, strategy, train_ds) -> None:
    """Work around Keras 3.15 under ``MultiWorkerMirroredStrategy``.

    ``fit`` builds the metrics from the first distributed batch with an eager
    cross-worker ``strategy.reduce`` that fails ("Attempt to convert a value
    (PerReplica...)"): build them here from a local batch's shapes and skip that
    step. And its step outputs (scalar logs) are reduced with ``reduce("MEAN", v,
    axis=0)``, which fails on scalars: reduce scalars across replicas with
    ``axis=None`` instead.
    """
    from keras.src.backend.tensorflow import trainer as tf_trainer

    symbolic_build = require(model, "_symbolic_build", "the metrics/optimizer build")
    require(model, "_maybe_symbolic_build", "fit's build step")
    original = getattr(tf_trainer, "_mvit3_original_reduce", None) or require(
        tf_trainer, "reduce_per_replica", "the step-output reduction"
    )
    is_multi_worker = require(
        tf_trainer, "_collective_all_reduce_multi_worker", "the multi-worker test"
    )
    x, y = next(iter(train_ds.take(1)))
    with strategy.scope():
        symbolic_build(data_batch=(x, y, None))
    model._maybe_symbolic_build = lambda iterator=None, data_batch=None: None

    def reduce_per_replica(values, strat, reduction):
        if reduction in ("auto", "mean") and is_multi_worker(strat):

            def one(v):
                rank = getattr(v, "shape", None)
                if rank is not None and len(rank) == 0:
                    return strat.reduce("MEAN", v, axis=None)
                return original(v, strat, reduction)

            return keras.tree.map_structure(one, values)
        return original(values, strat, reduction)

    tf_trainer._mvit3_original_reduce = original
    tf_trainer.reduce_per_replica = reduce_per_replica


# ---------------------------------------------------------------------------------------
# The Keras functional graph (read only)
# ---------------------------------------------------------------------------------------
def call_count(layer) -> int:
    """How many times ``layer`` is called in the functional graph(s) it belongs to."""
    return len(require(layer, "_inbound_nodes", "the layer's calls"))


def consumer_count(layer) -> int:
    """How many calls consume the outputs of ``layer``."""
    return len(require(layer, "_outbound_nodes", "the layer's consumers"))


def layer_calls(layer) -> list:
    """The graph nodes of ``layer``'s calls (each has ``input_tensors`` /
    ``output_tensors``)."""
    return list(require(layer, "_inbound_nodes", "the layer's calls"))


def sole_parent(layer):
    """The one layer whose output feeds ``layer``'s one call, or None (several calls,
    several inputs)."""
    nodes = require(layer, "_inbound_nodes", "the layer's calls")
    if len(nodes) != 1 or len(nodes[0].parent_nodes) != 1:
        return None
    return nodes[0].parent_nodes[0].operation


def sole_consumer(layer):
    """The one layer that consumes ``layer``'s output, or None."""
    nodes = require(layer, "_outbound_nodes", "the layer's consumers")
    return nodes[0].operation if len(nodes) == 1 else None


def producer(tensor):
    """The layer (``InputLayer`` for a model input) that made a symbolic ``tensor``,
    or None for a tensor outside a functional graph."""
    history = getattr(tensor, "_keras_history", None)
    return None if history is None else history.operation


def nested_layers(layer, include_self: bool = True) -> list:
    """``layer`` (when ``include_self``) and every layer tracked inside it, recursively."""
    flatten = require(layer, "_flatten_layers", "the nested-layer walk")
    return list(flatten(include_self=include_self, recursive=True))


def graph_layer_types(model) -> set:
    """Class names of the layers that ``model``'s functional graph actually runs."""
    by_depth = require(model, "_nodes_by_depth", "the model's graph nodes")
    return {type(node.operation).__name__ for nodes in by_depth.values() for node in nodes}


# ---------------------------------------------------------------------------------------
# TensorFlow / LiteRT
# ---------------------------------------------------------------------------------------
def calibrate_only(converter) -> None:
    """Make ``converter.convert()`` return the calibrated float model (the switch the
    TFLite quantization debugger uses), to be quantized by :func:`mlir_quantize`."""
    require(converter, "_experimental_calibrate_only", "the calibrate-only switch")
    converter._experimental_calibrate_only = True


def mlir_quantize(calibrated: bytes, **kwargs) -> bytes:
    """The converter's own int8 step on a calibrated model (``tf.lite`` private API)."""
    from tensorflow.lite.python import convert as tfl_convert

    return require(tfl_convert, "mlir_quantize", "the TFLite quantize step")(calibrated, **kwargs)


def frozen_function(concrete_function):
    """``concrete_function`` with its variables turned into constants."""
    from tensorflow.python.framework import convert_to_constants

    freeze = require(convert_to_constants, "convert_variables_to_constants_v2", "variable freezing")
    return freeze(concrete_function)


def tflite_schema():
    """The generated flatbuffer schema module (LiteRT's, else TensorFlow's copy)."""
    try:
        from ai_edge_litert import schema_py_generated as schema
    except ImportError:  # pragma: no cover - tensorflow's copy of the same file
        from tensorflow.lite.python import schema_py_generated as schema
    return schema


def xplane_op_stats(paths: list) -> tuple:
    """``(json text, ok)`` of the TF profiler's ``framework_op_stats`` tool on the
    ``*.xplane.pb`` traces in ``paths`` (the tool is reachable only privately)."""
    from tensorflow.python.profiler.internal import _pywrap_profiler_plugin as plugin

    convert = require(plugin, "xspace_to_tools_data", "the profiler's trace converter")
    return convert(paths, "framework_op_stats", {})


@contextlib.contextmanager
def op_determinism():
    """TensorFlow op determinism inside the block, restored afterwards (TF exports only
    the switch on; the switch back is in ``tensorflow.python.framework.config``)."""
    from tensorflow.python.framework import config

    was_enabled = config.is_op_determinism_enabled()
    if not was_enabled:
        config.enable_op_determinism()
    try:
        yield
    finally:
        if not was_enabled:
            config.disable_op_determinism()
