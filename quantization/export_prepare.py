"""Export stage 1, :func:`prepare`: the model in the form the converter takes.

Classifiers and segmenters are rewritten into their export formulation at a
static shape (:func:`quantization.graph_rewrite.prepare_for_export`) and frozen
into a ``tf.function``; quantization-aware models (:func:`quantization.quantize_model`)
keep their layers with the fake-quant ranges baked in; SSD detectors get the
standard ``TFLite_Detection_PostProcess`` op after the network
(:func:`mvit3_keras.detection.detection_postprocess_module`, as the TensorFlow
Object Detection API's ``export_tflite_graph_lib_tf2`` does).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Optional

import numpy as np

from mvit3_keras.compat import frozen_function
from quantization.export_options import ExportOptions, QuantType


def load_keras_model(model):
    """``model`` itself (a ``keras.Model``) or the model saved at a ``.keras`` path,
    with the custom and QAT layers registered."""
    import keras

    if isinstance(model, (str, os.PathLike)):
        path = os.fspath(model)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"no such model file: {path}")
        import mvit3_keras  # noqa: F401  (registers the custom layers)
        import quantization.qat  # noqa: F401  (registers the QAT layers)

        return keras.models.load_model(path, compile=False)
    if not isinstance(model, keras.Model):
        raise TypeError(f"model must be a keras.Model or a .keras path, got {type(model)!r}")
    return model


@dataclasses.dataclass(frozen=True)
class PreparedModel:
    """What :func:`convert` converts.

    Attributes:
        source: the Keras model as given (float, QAT or detector).
        graph: the Keras model in its export formulation (its layers name the
            ``keep_float`` islands).
        function: the concrete ``tf.function`` that is converted.
        trackable: the object that owns ``function`` (detectors: the converter
            needs it to keep the post-processing composite), else ``None``.
        input_shape: ``(H, W, C)``; batch_size: the static batch.
        allow_float_ops: float kernels accepted in an integer file (QAT layers
            left in float, ``keep_float``, ``allow_float_ops``).
        custom_ops: custom ops the file must contain (registered by every LiteRT
            runtime, so the checks accept them).
        compares_outputs: the TF function computes what the file computes (not
            for detectors: the post-processing is a placeholder in TensorFlow).
        float_outputs: the file's outputs stay float32 with integer I/O (detectors:
            the post-processing op writes float boxes, classes, scores and count, as
            in the TensorFlow Object Detection API's Edge TPU models).
    """

    source: Any
    graph: Any
    function: Any
    trackable: Any
    input_shape: tuple
    batch_size: int
    allow_float_ops: bool = False
    custom_ops: tuple = ()
    compares_outputs: bool = True
    float_outputs: bool = False

    def reference_outputs(self, images: np.ndarray) -> Optional[list]:
        """Outputs of the converted TF function on ``images`` (per output), or ``None``
        when they are not comparable with the file's."""
        if not self.compares_outputs:
            return None
        import tensorflow as tf

        chunks = []
        for start in range(0, len(images), self.batch_size):
            out = self.function(tf.constant(images[start : start + self.batch_size]))
            out = out if isinstance(out, (list, tuple)) else [out]
            chunks.append([np.asarray(o) for o in out])
        return [np.concatenate([c[i] for c in chunks]) for i in range(len(chunks[0]))]


def frozen_concrete_function(model, batch_size: int):
    """``model`` as a frozen concrete function of one ``image`` input at a static batch."""
    import tensorflow as tf

    spec = tf.TensorSpec((batch_size, *model.inputs[0].shape[1:]), tf.float32, name="image")

    @tf.function(input_signature=[spec])
    def serve(image):
        return model(image, training=False)

    return frozen_function(serve.get_concrete_function())


def _static_shape(model, options: ExportOptions) -> tuple:
    own = tuple(model.inputs[0].shape[1:])
    shape = own if options.input_shape is None else options.input_shape
    if any(s is None for s in shape):
        raise ValueError(
            f"the model input {shape} has dynamic sides: pass input_shape=(H, W, 3) (the "
            "export has a static shape)"
        )
    return tuple(int(s) for s in shape)


def _check_qat_pairing(model, options: ExportOptions) -> bool:
    """Whether ``model`` is quantization-aware; raises when it does not fit ``quant``."""
    from quantization.qat import is_qat_model

    qat_model = is_qat_model(model)
    if options.quant is QuantType.QAT and not qat_model:
        raise ValueError(
            "quant='qat' needs a quantization-aware model from quantization.quantize_model "
            "(fine-tuned with model.fit); for a float model use quant='int8'"
        )
    if qat_model and options.quant is not QuantType.QAT:
        raise ValueError(
            f"this is a quantization-aware model: export it with quant='qat', not "
            f"{options.quant.value!r}"
        )
    return qat_model


def _prepare_qat(model, options: ExportOptions, shape: tuple) -> PreparedModel:
    from mvit3_keras.graph_clone import clone_with
    from quantization.qat import (
        bake_ranges,
        float_layers,
        qat_float_islands,
        qat_target,
        uncalibrated_quantizers,
    )

    missing = uncalibrated_quantizers(model)
    if missing:
        raise ValueError(
            f"{len(missing)} activation ranges of this QAT model were never set (e.g. "
            f"{missing[0]}): run quantization.qat.calibrate_ranges(model, images) or "
            "fine-tune it with fit() before exporting"
        )
    target = options.target.formulation
    if qat_target(model) != target:
        raise ValueError(
            f"this QAT model was built for target={qat_target(model)!r}; use "
            f"quantize_model(..., config=QuantizeConfig(target={target!r})) for {target!r}"
        )
    detector = _is_detector(model)
    if detector:
        _check_detector_shape(model, options, shape)
    graph = clone_with(model, lambda layer: None, input_shape=shape, batch_size=options.batch_size)
    bake_ranges(graph)
    allow_float = options.allow_float_ops or bool(float_layers(model))
    allow_float = allow_float or bool(qat_float_islands(model))
    if detector:
        return _with_postprocess(model, graph, options, allow_float)
    return prepared_graph(model, graph, options, shape, allow_float)


def prepared_graph(model, graph, options: ExportOptions, shape: tuple, allow_float: bool):
    """The :class:`PreparedModel` of a Keras ``graph`` (export or QAT formulation of
    ``model``) converted through its frozen concrete function."""
    return PreparedModel(
        source=model,
        graph=graph,
        function=frozen_concrete_function(graph, options.batch_size),
        trackable=None,
        input_shape=shape,
        batch_size=options.batch_size,
        allow_float_ops=allow_float,
    )


def _check_detector_shape(detector, options: ExportOptions, shape: tuple) -> None:
    own = tuple(int(s) for s in detector.input_shape[1:])
    if shape != own or options.batch_size != 1:
        raise ValueError(
            f"a detector exports at its own input size {own} and batch 1 (its anchors are "
            f"fixed); got input_shape={shape}, batch_size={options.batch_size}: build it with "
            "create_detector(..., input_shape=(H, W, 3)) instead"
        )


def _with_postprocess(detector, graph, options: ExportOptions, allow_float: bool):
    """The SSD network ``graph`` (export or QAT formulation of ``detector``) followed by
    the ``TFLite_Detection_PostProcess`` composite."""
    from mvit3_keras.detection.export import OP_NAME, detection_postprocess_module

    module = detection_postprocess_module(detector, network=graph, **options.detection_postprocess)
    return PreparedModel(
        source=detector,
        graph=graph,
        function=module.serve.get_concrete_function(),
        trackable=module,
        input_shape=tuple(int(s) for s in detector.input_shape[1:]),
        batch_size=1,
        allow_float_ops=allow_float,
        custom_ops=(OP_NAME,),
        compares_outputs=False,
        float_outputs=True,
    )


def _prepare_detector(detector, options: ExportOptions, shape: tuple) -> PreparedModel:
    """The SSD network in its export formulation for ``options.target`` (as a classifier
    gets it: the int8 range fixes and float islands of the target) followed by the
    ``TFLite_Detection_PostProcess`` composite."""
    from quantization.graph_rewrite import prepare_for_export

    _check_detector_shape(detector, options, shape)
    graph = prepare_for_export(
        detector, options.target.formulation, input_shape=shape, batch_size=1
    )
    return _with_postprocess(detector, graph, options, options.float_ops_allowed)


def _is_detector(model) -> bool:
    from mvit3_keras.detection import SSDDetector

    return isinstance(model, SSDDetector)


def prepare(model, options: Optional[ExportOptions] = None) -> PreparedModel:
    """Load (``.keras`` path) and formulate ``model`` for conversion under ``options``.

    Raises ``ValueError`` when the model does not fit the options (a float model
    with ``quant='qat'`` and the reverse, an uncalibrated QAT model, a QAT model
    built for another target, a dynamic input without ``input_shape``).
    """
    from quantization.graph_rewrite import prepare_for_export

    options = options or ExportOptions()
    model = load_keras_model(model)
    qat_model = _check_qat_pairing(model, options)
    shape = _static_shape(model, options)
    detector = _is_detector(model)
    if options.detection_postprocess and not detector:
        raise ValueError(
            "detection_postprocess applies to SSD detectors (mvit3_keras.create_detector); "
            f"this is a {type(model).__name__}"
        )
    if qat_model:
        return _prepare_qat(model, options, shape)
    if detector:
        return _prepare_detector(model, options, shape)
    graph = prepare_for_export(
        model, options.target.formulation, input_shape=shape, batch_size=options.batch_size
    )
    return prepared_graph(model, graph, options, shape, options.float_ops_allowed)
