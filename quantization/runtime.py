"""Run a ``.tflite`` model on a batch of images in LiteRT.

Interpreter: ``ai_edge_litert`` (the LiteRT package), falling back to
``tflite_runtime`` and then ``tf.lite``. The default op resolver applies the
XNNPACK delegate on CPU (float and int8 kernels).

:func:`run_tflite` feeds float images, quantizing them with the input tensor's
scale / zero point when the model has integer inputs (``int8_full``, Edge TPU),
and returns float outputs (dequantized when the outputs are integer), so every
export mode is called the same way.
"""

from __future__ import annotations

import os
from typing import Optional

import numpy as np


def interpreter_class():
    """``(Interpreter, backend_name)`` of the first available runtime."""
    try:
        from ai_edge_litert.interpreter import Interpreter

        return Interpreter, "ai_edge_litert"
    except ImportError:
        pass
    try:  # pragma: no cover - depends on what is installed
        from tflite_runtime.interpreter import Interpreter

        return Interpreter, "tflite_runtime"
    except ImportError:
        pass
    try:  # pragma: no cover
        import tensorflow as tf

        return tf.lite.Interpreter, "tf.lite"
    except ImportError as err:  # pragma: no cover
        raise ImportError(
            "no TFLite runtime found: pip install ai-edge-litert (or tflite-runtime, tensorflow)"
        ) from err


def load_interpreter(model, *, num_threads: Optional[int] = None, use_xnnpack: bool = True):
    """An allocated interpreter for ``model`` (path or flatbuffer bytes)."""
    Interpreter, backend = interpreter_class()
    kwargs = {}
    if num_threads is not None:
        kwargs["num_threads"] = int(num_threads)
    if not use_xnnpack and backend == "ai_edge_litert":
        from ai_edge_litert.interpreter import OpResolverType

        kwargs["experimental_op_resolver_type"] = OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    elif not use_xnnpack and backend == "tf.lite":  # pragma: no cover
        import tensorflow as tf

        kwargs["experimental_op_resolver_type"] = (
            tf.lite.experimental.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
        )
    if isinstance(model, (bytes, bytearray)):
        interpreter = Interpreter(model_content=bytes(model), **kwargs)
    else:
        path = os.fspath(model)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"no such .tflite file: {path}")
        interpreter = Interpreter(model_path=path, **kwargs)
    interpreter.allocate_tensors()
    interpreter.mvit3_backend = backend  # which runtime loaded it, for reports
    return interpreter


def interpreter_ops(interpreter) -> list:
    """``[{"index", "op_name", "inputs", "outputs", ...}, ...]`` of a LiteRT
    interpreter's nodes (delegate nodes included). LiteRT exposes the list only as the
    private ``_get_ops_details`` (verified with ai-edge-litert 2.3.0); this module stays
    numpy + LiteRT only, so a child process that reads it starts in ~0.1 s."""
    get = getattr(interpreter, "_get_ops_details", None)
    if get is None:
        raise RuntimeError(
            f"this LiteRT interpreter ({type(interpreter).__module__}) has no _get_ops_details "
            "(its node list, read for the XNNPACK report); install ai-edge-litert==2.3.0 or "
            "adapt quantization/runtime.py interpreter_ops"
        )
    return list(get())


def quantize_input(x: np.ndarray, detail: dict) -> np.ndarray:
    dtype = np.dtype(detail["dtype"])
    if dtype.kind == "f":
        return x.astype(dtype)
    scale, zero = detail["quantization"]
    if not scale:
        raise ValueError(f"integer input {detail['name']!r} without quantization parameters")
    info = np.iinfo(dtype)
    q = np.round(x / scale + zero)
    return np.clip(q, info.min, info.max).astype(dtype)


def dequantize_output(y: np.ndarray, detail: dict) -> np.ndarray:
    if np.dtype(detail["dtype"]).kind == "f":
        return y.astype(np.float32)
    scale, zero = detail["quantization"]
    if not scale:
        return y.astype(np.float32)
    return ((y.astype(np.float32) - zero) * scale).astype(np.float32)


class TFLiteRunner:
    """A loaded model; ``runner(images)`` -> float outputs (batched over the images)."""

    def __init__(self, model, *, num_threads: Optional[int] = None, use_xnnpack: bool = True):
        self.interpreter = load_interpreter(model, num_threads=num_threads, use_xnnpack=use_xnnpack)
        self.inputs = self.interpreter.get_input_details()
        self.outputs = self.interpreter.get_output_details()
        if len(self.inputs) != 1:
            raise ValueError(f"expected a single-input model, got {len(self.inputs)} inputs")
        self.input_shape = tuple(int(v) for v in self.inputs[0]["shape"])
        self.backend = self.interpreter.mvit3_backend

    @property
    def batch_size(self) -> int:
        return self.input_shape[0]

    def invoke(self, batch: np.ndarray):
        detail = self.inputs[0]
        self.interpreter.set_tensor(detail["index"], quantize_input(batch, detail))
        self.interpreter.invoke()
        return [dequantize_output(self.interpreter.get_tensor(o["index"]), o) for o in self.outputs]

    def __call__(self, images: np.ndarray):
        images = np.asarray(images, dtype=np.float32)
        expected = self.input_shape[1:]
        if images.ndim != len(self.input_shape) or tuple(images.shape[1:]) != expected:
            raise ValueError(
                f"images of shape {images.shape[1:]} do not fit the model input {expected} "
                "(the export has a static shape: resize the images, or re-export with "
                "--image-size)"
            )
        b = self.batch_size
        results = []
        for start in range(0, len(images), b):
            chunk = images[start : start + b]
            pad = b - len(chunk)
            if pad:
                chunk = np.concatenate([chunk, np.repeat(chunk[-1:], pad, axis=0)])
            outs = self.invoke(chunk)
            results.append([o[: b - pad] for o in outs])
        merged = [np.concatenate([r[i] for r in results]) for i in range(len(self.outputs))]
        return merged[0] if len(merged) == 1 else merged


def run_tflite(model, images, *, num_threads: Optional[int] = None, use_xnnpack: bool = True):
    """Run ``model`` (path or bytes) on ``images`` ``[N, H, W, C]`` (float, as the
    Keras model takes them); returns float outputs ``[N, ...]`` (a list for
    multi-output models)."""
    return TFLiteRunner(model, num_threads=num_threads, use_xnnpack=use_xnnpack)(images)
