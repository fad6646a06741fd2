"""Keras 3 quantization-aware training: structure, training, save/load, export numerics."""

from __future__ import annotations

import keras
import numpy as np
import pytest
from support.photos import photo_crops
from support.weights import recalibrate_batchnorm

import mvit3_keras as m
from mvit3_keras.layers import (
    ActivationQuantizer,
    QuantActivation,
    QuantConv,
    QuantConv2D,
    QuantDense,
    QuantDepthwiseConv2D,
    QuantLinearSelfAttention,
    QuantMultiHeadSelfAttention,
    QuantNormalization,
    SharedRangeQuantizer,
)
from quantization import QuantizeConfig, export_tflite, quantize_annotate_layer, quantize_model
from quantization.edgetpu import edgetpu_report
from quantization.export import cosine_similarity
from quantization.inspection import inspect_tflite
from quantization.qat import calibrate_ranges, is_qat_model, qat_float_islands
from quantization.runtime import run_tflite

SLOW = pytest.mark.slow


def _float_model(name, size=64, seed=0):
    keras.utils.set_random_seed(seed)
    model = m.create_model(name, input_shape=(size, size, 3), num_classes=10)
    recalibrate_batchnorm(model, photo_crops(8, size, seed=seed), seed=seed)
    return model


@pytest.fixture(scope="module")
def crops():
    return photo_crops(16, 64, seed=5)


def test_quantize_model_structure_train_and_reload(tmp_path, crops):
    model = _float_model("mobilevitv3_xxs")
    qat = quantize_model(model)
    assert is_qat_model(qat) and not is_qat_model(model)
    kinds = {type(layer) for layer in qat.layers}
    twins = {QuantConv2D, QuantDepthwiseConv2D, QuantDense, QuantActivation, QuantNormalization}
    assert twins | {QuantMultiHeadSelfAttention} <= kinds
    assert not any(issubclass(k, keras.layers.BatchNormalization) for k in kinds)  # folded
    stock = {keras.layers.Dense, keras.layers.Conv2D, keras.layers.DepthwiseConv2D}
    assert not stock & kinds  # every conv replaced by its twin (a subclass of it)
    assert issubclass(QuantDepthwiseConv2D, keras.layers.DepthwiseConv2D)
    folded = [layer for layer in qat.layers if isinstance(layer, QuantConv) and layer.batch_norm]
    assert len(folded) == sum(isinstance(x, keras.layers.BatchNormalization) for x in model.layers)
    # before calibration ranges are uninitialised; calibration sets them from data
    calibrate_ranges(qat, crops[:8])
    quantizer = next(q for q in qat.layers if isinstance(q, QuantConv)).output_quantizer
    assert float(quantizer.initialized.numpy()) == 1.0
    assert float(quantizer.range_max.numpy()) > float(quantizer.range_min.numpy())
    np.testing.assert_allclose(
        qat.get_layer("classifier.fc").kernel.numpy(),
        model.get_layer("classifier.fc").kernel.numpy(),
    )
    # the calibrated QAT model is the PTQ operating point: close to the float model
    cos = cosine_similarity(qat.predict(crops[8:], verbose=0), model.predict(crops[8:], verbose=0))
    assert cos.mean() > 0.85
    # trainable with fit; ranges move as moving averages
    before = float(quantizer.range_max.numpy())
    qat.compile(
        optimizer=keras.optimizers.SGD(1e-3),
        loss=keras.losses.CategoricalCrossentropy(from_logits=True),
        jit_compile=False,
    )
    y = keras.utils.to_categorical(np.arange(8) % 10, 10)
    history = qat.fit(crops[:8], y, batch_size=4, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    assert float(quantizer.range_max.numpy()) != before
    # .keras round trip
    path = tmp_path / "qat.keras"
    qat.save(path)
    np.testing.assert_allclose(
        _predict_in_fresh_process(path, crops[8:], tmp_path),
        qat.predict(crops[8:], verbose=0),
        rtol=1e-5,
        atol=1e-5,
    )


def _predict_in_fresh_process(path, images, tmp_path):
    """``keras.models.load_model(path)`` in a new interpreter that imports only keras
    and mvit3_keras (every custom object of a saved QAT model is registered there)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    np.save(tmp_path / "images.npy", images)
    script = (
        "import sys, keras, numpy as np, mvit3_keras\n"
        "model = keras.models.load_model(sys.argv[1])\n"
        "assert 'quantization' not in sys.modules, 'loading imported quantization'\n"
        "np.save(sys.argv[3], model.predict(np.load(sys.argv[2]), verbose=0))\n"
    )
    root = str(Path(__file__).resolve().parents[1])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]))
    out = tmp_path / "reloaded.npy"
    subprocess.run(
        [sys.executable, "-c", script, str(path), str(tmp_path / "images.npy"), str(out)],
        check=True,
        env=env,
        cwd=tmp_path,
    )
    return np.load(out)


@pytest.mark.parametrize(
    "name, target, min_cosine",
    [
        ("mobilevitv3_xxs", "generic", 0.97),
        pytest.param("mobilevitv3_050", "edgetpu", 0.90, marks=pytest.mark.slow),
    ],
)
def test_qat_export_reproduces_the_qat_model(name, target, min_cosine, tmp_path, crops):
    """The int8 file computes what the QAT model computes: the converter takes every
    range from the fake-quant ops (no calibration) and each kernel matches the QAT
    layer to <= 1 quantization step on < 2 % of the elements (checked layer by
    layer during development); on these random networks the 1-step differences
    still grow with depth (random v2-family networks most), so the end-to-end
    bound is loose. On the trained demo model the QAT Keras model and its int8
    file have the same top-1 (see the demo)."""
    model = _float_model(name)
    qat = quantize_model(model, QuantizeConfig(target=target))
    calibrate_ranges(qat, crops[:8])
    path = tmp_path / f"{name}_qat.tflite"
    report = export_tflite(qat, path, quant="qat", target=target)
    assert not report.file.float_ops, report.file.float_ops
    assert not any(k.startswith("CUSTOM") for k in report.file.op_histogram)
    out = run_tflite(path, crops[8:])
    ref = qat.predict(crops[8:], verbose=0)
    cos = cosine_similarity(out, ref)
    agreement = np.mean(out.argmax(-1) == ref.argmax(-1))
    print(
        f"\n{name} ({target}) QAT model vs its int8 file: cosine {cos.mean():.4f}, "
        f"top-1 agreement {100 * agreement:.0f}%"
    )
    assert cos.mean() > min_cosine
    if target == "edgetpu":
        assert report.file.inputs[0]["dtype"] == "uint8"
        assert edgetpu_report(path)["first_cpu_op"] is None


def test_shared_range_is_the_union_of_its_sites():
    quantizer = SharedRangeQuantizer(num_sites=2, ema_decay=0.9)
    quantizer.build(None)
    low, high = np.full((1, 4), -1.0, np.float32), np.full((1, 4), 5.0, np.float32)
    quantizer.force_update = True  # calibration: running min / max per site
    quantizer(np.linspace(-1.0, 2.0, 8, dtype=np.float32), site=0)
    quantizer(np.linspace(0.5, 5.0, 8, dtype=np.float32), site=1)
    quantizer.force_update = False
    np.testing.assert_allclose(quantizer.range_min.numpy(), [-1.0, 0.0])
    np.testing.assert_allclose(quantizer.range_max.numpy(), [2.0, 5.0])
    lo, hi = (float(v) for v in quantizer.union_range())
    assert (lo, hi) == (-1.0, 5.0)
    # both sites are quantized on the union's grid: site 0 does not clip 5 to its own 2
    step = (hi - lo) / 255.0
    np.testing.assert_allclose(quantizer(low, site=0), low, atol=step)
    np.testing.assert_allclose(quantizer(high, site=0), high, atol=step)
    with pytest.raises(ValueError, match="site 2 outside"):
        quantizer(low, site=2)


@pytest.mark.parametrize(
    "name", ["mobilevitv3_xxs", "mobilevit_xxs", pytest.param("mobilevitv3_050", marks=SLOW)]
)
def test_concatenated_tensors_share_one_int8_range(name, tmp_path, crops):
    """TFLite's int8 CONCATENATION takes its inputs at the output's scale. A tensor
    with a range of its own gets a requantize op (QUANTIZE int8 -> int8): a second
    rounding the QAT model never trained with, rounded differently by XNNPACK and
    the builtin kernels (MediaPipe Tasks and LiteRT disagreed by up to 1 logit on a
    QAT classifier because of it). Every tensor a concatenation joins shares one
    range (its producer's output quantizer is a SharedRangeQuantizer site), so the
    only QUANTIZE of the file is the input's."""
    model = _float_model(name)
    qat = quantize_model(model)
    calibrate_ranges(qat, crops[:8])
    concats = [x for x in model.layers if isinstance(x, keras.layers.Concatenate)]
    shared = [x for x in qat.layers if isinstance(x, SharedRangeQuantizer)]
    assert concats and len(shared) == len(concats)
    for quantizer in shared:
        assert quantizer.num_sites == 2 and np.all(quantizer.initialized.numpy() == 1.0)
    report = export_tflite(qat, tmp_path / "qat.tflite", quant="qat")
    ops = inspect_tflite(tmp_path / "qat.tflite").ops
    assert report.file.op_histogram["QUANTIZE v1"] == 1, report.file.op_histogram
    assert [op["index"] for op in ops if op["op"] == "QUANTIZE"] == [0]
    joins = [op for op in ops if op["op"] == "CONCATENATION"]
    assert len(joins) == len(concats)
    for op in joins:
        ranges = {
            (t["quantization"]["scale"], t["quantization"]["zero_point"])
            for t in op["inputs"] + op["outputs"]
        }
        assert len(ranges) == 1, (op["outputs"][0]["name"], ranges)
    assert report.verify.separate_process and report.verify.num_images  # it ran in LiteRT


def test_annotated_layer_trains_without_fake_quant(tmp_path, crops):
    model = _float_model("mobilevitv3_xxs")
    quantize_annotate_layer(model.get_layer("classifier.fc"))
    qat = quantize_model(model, QuantizeConfig(skip=("layer_5.1.fusion.block.act",)))
    assert type(qat.get_layer("classifier.fc")) is keras.layers.Dense  # plain float layer
    assert type(qat.get_layer("layer_5.1.fusion.block.act")) is keras.layers.Activation
    assert isinstance(qat.get_layer("classifier.fc.requantize"), ActivationQuantizer)
    calibrate_ranges(qat, crops[:8])
    # float weights in the QAT graph: the output equals the float Dense on the
    # (fake-quantized) features
    feats = keras.Model(qat.input, qat.get_layer("classifier.fc").input)(crops[8:])
    np.testing.assert_allclose(
        qat.get_layer("classifier.fc")(feats), model.get_layer("classifier.fc")(feats), rtol=1e-5
    )
    report = export_tflite(qat, tmp_path / "skip.tflite", quant="qat")
    assert report.verify.cosine_vs_float_mean > 0.95


def test_keep_float_and_config_errors(tmp_path, crops):
    model = _float_model("mobilevitv3_050")
    qat = quantize_model(model, QuantizeConfig(keep_float=("attention", "normalization")))
    assert qat_float_islands(qat) == ("attention", "normalization")
    assert all(
        layer.float_core for layer in qat.layers if isinstance(layer, QuantLinearSelfAttention)
    )
    calibrate_ranges(qat, crops[:8])
    report = export_tflite(qat, tmp_path / "mixed.tflite", quant="qat")
    assert {o["op"] for o in report.file.float_ops} <= {
        "SOFTMAX",
        "MUL",
        "SUM",
        "ADD",
        "RSQRT",
        "MEAN",
        "RESHAPE",
    }
    with pytest.raises(ValueError, match="never set"):
        export_tflite(quantize_model(model), tmp_path / "fresh.tflite", quant="qat")
    with pytest.raises(ValueError, match="Edge TPU"):
        QuantizeConfig(target="edgetpu", keep_float=("attention",))
    with pytest.raises(ValueError, match="already quantization-aware"):
        quantize_model(qat)
    with pytest.raises(ValueError, match="quant='qat'"):
        export_tflite(qat, tmp_path / "x.tflite", quant="int8", representative_data=crops)


def _demo_float_model(task):
    keras.utils.set_random_seed(0)
    if task == "classification":
        return m.create_model("mobilevitv3_xxs", input_shape=(32, 32, 3), num_classes=10)
    from mvit3_keras.segmentation import create_segmenter

    segmenter = create_segmenter(
        "mobilevitv3_xxs", input_shape=(64, 64, 3), num_classes=4, preset="pascal_voc",
        aspp_channels=32,
    )  # fmt: skip
    return segmenter.inference_model()


@pytest.mark.slow(minutes=8)
@pytest.mark.parametrize("task, metric", [("classification", "top1"), ("segmentation", "miou")])
def test_qat_finetune_is_the_trainer_with_a_quantized_model(task, metric, tmp_path):
    """``qat_finetune`` = :class:`training.trainer.Trainer` with ``quantize_model`` as the
    model transform: the run folder, metric names and resume of float training."""
    import json

    from quantization.qat_train import qat_finetune

    out = tmp_path / "qat.keras"
    kwargs = dict(epochs=1, steps_per_epoch=2, batch_size=4, calibration_samples=8, verbose=0)
    summary = qat_finetune(_demo_float_model(task), "demo", str(out), task=task, **kwargs)
    run = tmp_path / "qat.keras.run"
    for name in ("run.json", "summary.json", "best.keras", "history.csv", "backup/state.json"):
        assert (run / name).exists(), name
    assert summary["epochs"] == 1 and summary["steps_per_epoch"] == 2
    assert summary["calibration_samples"] == 8 and summary["metric"] == metric
    assert 0.0 <= summary[f"val_{metric}_float"] <= 1.0
    assert 0.0 <= summary[f"val_{metric}_qat"] <= 1.0
    assert {metric, f"val_{metric}", f"val_{metric}_raw"} <= set(summary["history"])
    assert json.loads((tmp_path / "qat.keras.json").read_text())["epochs"] == 1
    import quantization.qat  # noqa: F401  (registers the layers)

    assert is_qat_model(keras.models.load_model(out))
    # the same command again: the run is complete, nothing is trained twice
    again = qat_finetune(_demo_float_model(task), "demo", str(out), task=task, **kwargs)
    assert again[f"val_{metric}_qat"] == pytest.approx(summary[f"val_{metric}_qat"])


def test_older_quant_conv_file_is_a_clear_error(tmp_path):
    """A QAT file saved when ``QuantConv`` wrapped a stock layer (``layer_class`` /
    ``layer_config``, weights in an ``inner`` sublayer) names the change and the fix
    instead of failing on a weight layout that no longer exists."""
    import json
    import zipfile

    inputs = keras.Input((8, 8, 3))
    outputs = QuantConv2D(4, 3, padding="same", name="conv")(inputs)
    path = tmp_path / "new.keras"
    keras.Model(inputs, outputs).save(path)
    with zipfile.ZipFile(path) as archive:
        files = {name: archive.read(name) for name in archive.namelist()}
    config = json.loads(files["config.json"])
    layer = next(x for x in config["config"]["layers"] if x["name"] == "conv")
    stock = keras.layers.Conv2D(4, 3, padding="same", name="conv").get_config()
    layer.update(class_name="QuantConv", registered_name="mvit3_keras>QuantConv")
    layer["config"] = {"name": "conv", "layer_class": "Conv2D", "layer_config": stock}
    files["config.json"] = json.dumps(config).encode()
    old = tmp_path / "old.keras"
    with zipfile.ZipFile(old, "w") as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    with pytest.raises(ValueError, match="older mvit3-keras.*QuantConv2D.*quantize_model"):
        keras.models.load_model(old)


def test_float_statistics_keep_the_normalized_output_bounded():
    """``(x - mean) / std`` over C values lies within ``sqrt(C - 1)`` of 0. With float
    statistics a quiet token beside a loud one (centered values a few int8 steps wide)
    keeps its variance; an int8 squared input would round it to 0 and ``rsqrt(eps)``
    scale it ~300x (the normalized range was +-2018 here before the fix)."""
    channels = 16
    x = np.random.default_rng(0).normal(size=(8, 6, channels)).astype("float32")
    x[:, 0] *= 100.0  # one loud token per sequence
    x[:, 1:] *= 2.0
    layer = QuantNormalization(axes=[-1], float_statistics=True, center=False, scale=False)
    layer.build(x.shape)
    for quantizer in layer.quantizers.values():
        quantizer.force_update = True
    layer(x, training=False)
    normalized = layer.quantizers["normalized"]
    bound = np.sqrt(channels - 1)
    assert -bound <= float(normalized.range_min) and float(normalized.range_max) <= bound
    assert set(layer.quantizers) == {"mean", "centered", "normalized"}


def test_keep_float_normalization_exports_a_random_network(tmp_path, crops):
    """The seed whose QAT model collapsed to a constant output (its normalized ranges
    blown up by zero int8 variances) and whose file LiteRT refused to run."""
    model = _float_model("mobilevitv3_xxs", seed=1)
    qat = quantize_model(model, QuantizeConfig(keep_float=("normalization",)))
    calibrate_ranges(qat, crops[:8])
    ref = qat.predict(crops[8:], verbose=0)
    assert np.std(ref) > 0.1 * np.std(model.predict(crops[8:], verbose=0))
    path = tmp_path / "norm_float.tflite"
    export_tflite(qat, path, quant="qat")
    cos = cosine_similarity(run_tflite(path, crops[8:]), ref).mean()
    assert cos > 0.95, cos


def test_mixed_precision_model_gets_a_fix_that_works():
    """A model built under ``mixed_float16`` is refused in one place with a recipe, and
    the recipe (rebuild under float32, copy the weights) gives a model that quantizes."""
    keras.config.set_dtype_policy("mixed_float16")
    try:
        model = m.create_model("mobilevitv3_xxs", input_shape=(32, 32, 3), num_classes=10)
    finally:
        keras.config.set_dtype_policy("float32")
    with pytest.raises(ValueError, match="compute in float16.*rebuild_model"):
        quantize_model(model)
    float32_model = m.rebuild_model(m.model_record(model))
    float32_model.set_weights(model.get_weights())
    assert is_qat_model(quantize_model(float32_model))
