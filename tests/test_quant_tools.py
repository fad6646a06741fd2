"""The ``mvit3`` quantization commands and the report / benchmark helpers."""

from __future__ import annotations

import json

import keras
import pytest
from support.photos import photo_crops
from support.weights import recalibrate_batchnorm

import mvit3_keras as m
from mvit3_cli import dispatch as main
from quantization.edgetpu import parse_compiler_log

COMPILER_LOG = """Edge TPU Compiler version 16.0.384591198
Input: model.tflite
Output: model_edgetpu.tflite

Operator                       Count      Status

CONV_2D                        61         Mapped to Edge TPU
BATCH_MATMUL                   18         Operation not supported
SOFTMAX                        9          More than one subgraph is not supported
Number of operations that will run on Edge TPU: 120
Number of operations that will run on CPU: 300
"""


def test_parse_edgetpu_compiler_log():
    parsed = parse_compiler_log(COMPILER_LOG)
    assert parsed["edgetpu_ops"] == 120 and parsed["cpu_ops"] == 300
    assert parsed["ops"][0] == {"op": "CONV_2D", "count": 61, "status": "Mapped to Edge TPU"}
    assert parsed["ops"][1]["status"] == "Operation not supported"


def mvit3(command, path, **options) -> int:
    """``mvit3 COMMAND PATH --option value ...`` (``some_option`` -> ``--some-option``;
    ``True``: a bare flag), in this process; the exit code."""
    args = [command, str(path)]
    for name, value in options.items():
        args.append("--" + name.replace("_", "-"))
        if value is not True:
            args.append(str(value))
    return main(args)


@pytest.fixture(scope="module")
def demo_model(tmp_path_factory):
    """A MobileViTv3-XXS with 10 classes at 32x32 (the demo data's size)."""
    keras.utils.set_random_seed(0)
    model = m.create_model("mobilevitv3_xxs", input_shape=(32, 32, 3), num_classes=10)
    recalibrate_batchnorm(model, photo_crops(8, 32))
    path = tmp_path_factory.mktemp("cli") / "xxs.keras"
    model.save(path)
    return path


def test_cli_export_evaluate_benchmark_report(demo_model, tmp_path, capsys):
    tfl = tmp_path / "xxs_int8.tflite"
    export_json = tmp_path / "export.json"
    export = dict(quant="int8", output=tfl, dataset="demo", split="train")
    assert mvit3("export", demo_model, **export, calibration_samples=32, json=export_json) == 0
    out = capsys.readouterr().out
    assert "calibration: 32 images of demo/train" in out and "verified in a separate" in out
    report = json.loads(export_json.read_text())
    assert report["quant"] == "int8" and report["inputs"][0]["shape"] == [1, 32, 32, 3]

    eval_json = tmp_path / "eval.json"
    evaluate = dict(dataset="demo", limit=64, keras=demo_model, json=eval_json)
    assert mvit3("evaluate-tflite", tfl, **evaluate) == 0
    result = json.loads(eval_json.read_text())
    assert result["num_images"] == 64
    assert {"top1", "top5"} <= set(result["tflite"]) and {"top1", "top5"} <= set(result["keras"])
    assert 0.0 <= result["agreement"] <= 1.0 and result["cosine_mean"] > 0.5
    assert "agreement" in capsys.readouterr().out

    bench_json = tmp_path / "bench.json"
    assert mvit3("benchmark", tfl, threads=1, runs=3, warmup=1, profile=True, json=bench_json) == 0
    bench = json.loads(bench_json.read_text())
    assert bench["median_ms"] > 0 and bench["p90_ms"] >= bench["median_ms"] * 0.5
    assert "CONV_2D" in bench["profile"]["by_type"]
    assert "sum of per-op medians" in capsys.readouterr().out

    assert mvit3("edgetpu-report", tfl, verbose=True) == 0
    text = capsys.readouterr().out
    assert "first op on the CPU" in text and "edgetpu_compiler not on PATH" in text
    assert mvit3("inspect-tflite", tfl, ops=3) == 0
    assert "CONV_2D" in capsys.readouterr().out


def test_cli_errors_are_clear(demo_model, tmp_path, capsys):
    assert mvit3("export", demo_model, quant="int8", output=tmp_path / "x.tflite") == 2
    assert "needs calibration data" in capsys.readouterr().err
    assert mvit3("edgetpu-report", tmp_path / "missing.tflite") == 2
    assert "no such .tflite file" in capsys.readouterr().err


@pytest.mark.slow
def test_cli_qat_finetune_and_export(demo_model, tmp_path, capsys):
    out = tmp_path / "qat.keras"
    tfl = tmp_path / "qat.tflite"
    qat = dict(dataset="demo", output=out, epochs=1, steps_per_epoch=2, calibration_samples=32)
    assert mvit3("qat", demo_model, **qat, export=tfl) == 0
    text = capsys.readouterr().out
    assert out.is_file() and tfl.is_file() and "QAT" in text
    summary = json.loads((tmp_path / "qat.keras.json").read_text())
    assert summary["epochs"] == 1 and summary["steps_per_epoch"] == 2


def test_commands_read_the_variant_and_task_the_model_records(demo_model):
    """`mvit3 export / evaluate-tflite / qat MODEL.keras` need no --model-name / --task:
    the saved model records them; the command line still wins."""
    import argparse

    import keras

    from mvit3_keras.segmentation import create_segmenter
    from quantization.commands import recorded_identity

    none = argparse.Namespace(model_name=None, task=None)
    classifier = keras.models.load_model(demo_model)
    assert recorded_identity(none, classifier) == ("mobilevitv3_xxs", "classification")
    segmenter = create_segmenter("mobilevitv3_xxs", input_shape=(64, 64, 3), aux_head=False)
    assert recorded_identity(none, segmenter) == ("mobilevitv3_xxs", "segmentation")
    given = argparse.Namespace(model_name="mobilevitv3_s", task="segmentation")
    assert recorded_identity(given, classifier) == ("mobilevitv3_s", "segmentation")
    inputs = keras.Input((8,))
    plain = keras.Model(inputs, keras.layers.Dense(2)(inputs))
    assert recorded_identity(none, plain) == (None, "classification")
    assert recorded_identity(none, None) == (None, "classification")
