"""Quantization and export: int8 PTQ, Keras 3 QAT, TFLite/LiteRT export and Edge TPU checks.

Public API (imported lazily, so ``import quantization`` stays light for the
subprocess runtime checks)::

    from quantization import export_tflite, quantize_model, run_tflite
"""

from __future__ import annotations

import importlib

_API = {
    "export_tflite": "quantization.export",
    "ExportOptions": "quantization.export_options",
    "ExportReport": "quantization.export",
    "QuantType": "quantization.export_options",
    "Target": "quantization.export_options",
    "TFLiteReport": "quantization.inspection",
    "VerifyResult": "quantization.verify",
    "QUANT_TYPES": "quantization.export",
    "cosine_similarity": "quantization.verify",
    "prepare_for_export": "quantization.graph_rewrite",
    "inspect_tflite": "quantization.inspection",
    "check_tflite": "quantization.inspection",
    "ExportCheckError": "quantization.inspection",
    "run_tflite": "quantization.runtime",
    "TFLiteRunner": "quantization.runtime",
    "verify_tflite": "quantization.verify",
    "verify_in_subprocess": "quantization.verify",
    "RuntimeCrashError": "quantization.verify",
    "quantize_model": "quantization.qat",
    "quantize_annotate_layer": "quantization.qat",
    "is_qat_model": "quantization.qat",
    "QuantizeConfig": "quantization.qat_config",
    "edgetpu_report": "quantization.edgetpu",
}

__all__ = sorted(_API)


def __getattr__(name):
    module = _API.get(name)
    if module is None:
        raise AttributeError(f"module 'quantization' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
