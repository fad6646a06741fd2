"""Export paths: formulations, every quant type, Edge TPU target, checks, crashes."""

from __future__ import annotations

import os

import numpy as np
import pytest
import tensorflow as tf
from support.photos import photo_crops
from support.variants import param
from support.weights import recalibrate_batchnorm

import mvit3_keras as m
from quantization import ExportCheckError, export_tflite, inspect_tflite, run_tflite
from quantization.add_ranges import illegal_add_outputs
from quantization.calibration import collect_images
from quantization.edgetpu import edgetpu_report
from quantization.export import cosine_similarity
from quantization.graph_rewrite import max_abs_output_difference, prepare_for_export
from quantization.verify import RuntimeCrashError, locate_crash, verify_in_subprocess


def _model(name, size=64, classes=10, seed=0):
    import keras

    keras.utils.set_random_seed(seed)
    model = m.create_model(name, input_shape=(size, size, 3), num_classes=classes)
    recalibrate_batchnorm(model, photo_crops(8, size, seed=seed), seed=seed)
    return model


@pytest.fixture(scope="module")
def crops64():
    return photo_crops(12, 64, seed=3)


# the generic target for all four kinds; the Edge TPU target for the MobileViTv3 kinds
# by default and for the baselines with -m slow
FORMULATION_CASES = [
    param(name, target, slow=target == "edgetpu" and not name.startswith("mobilevitv3"))
    for target in ("generic", "edgetpu")
    for name in ("mobilevitv3_xxs", "mobilevit_xs", "mobilevitv3_050", "mobilevitv2_075")
]


@pytest.mark.parametrize("name, target", FORMULATION_CASES)
def test_export_formulation_computes_the_same_function(name, target):
    """The swapped layers (norms, unfold/fold, softmax, dense->conv) are numerically
    the same model: float outputs equal up to float32 rounding, at an odd size too."""
    images = photo_crops(2, 96, seed=1)
    model = _model(name, size=96)
    prepared = prepare_for_export(model, target)
    assert prepared.inputs[0].shape[0] == 1  # static batch 1
    scale = float(np.abs(model.predict(images, verbose=0)).max())
    assert max_abs_output_difference(model, prepared, images) <= 2e-5 * max(scale, 1.0)
    kinds = {type(layer).__name__ for layer in prepared.layers}
    assert "LayerNormalization" not in kinds and "GroupNormalization" not in kinds
    # unfold / fold / linear attention carry the export formulation of the target
    switched = [layer for layer in prepared.layers if hasattr(layer, "target")]
    assert any(type(layer).__name__ == "Unfold" for layer in switched)
    assert all(layer.target == target for layer in switched), {
        layer.name: layer.target for layer in switched
    }


def test_every_quant_type_runs_and_keeps_its_promise(tmp_path, crops64):
    model = _model("mobilevitv3_xxs")
    ref = model.predict(crops64[8:], verbose=0)
    expectations = {
        "fp32": ("float32", 0.9999),
        "fp16": ("float32", 0.999),
        "dynamic": ("float32", 0.95),
        "int8": ("float32", 0.9),
        "int8_full": ("int8", 0.9),
    }
    for quant, (io_dtype, min_cos) in expectations.items():
        path = tmp_path / f"xxs_{quant}.tflite"
        # target generic: every op int8 (the cpu target's float islands: test_export_targets)
        report = export_tflite(
            model, path, quant=quant, target="generic", representative_data=crops64[:8]
        )
        assert path.is_file() and report.verify.separate_process
        assert report.file.inputs[0]["shape"] == [1, 64, 64, 3]
        assert report.file.inputs[0]["dtype"] == io_dtype
        assert report.file.outputs[0]["dtype"] == io_dtype
        assert not report.file.custom_ops and not report.file.dynamic_tensors
        hist = report.file.op_histogram
        if quant in ("int8", "int8_full"):
            assert not report.file.float_ops, report.file.float_ops
            assert any(k.startswith("CONV_2D") for k in hist)
        if quant == "fp16":
            assert any(k.startswith("DEQUANTIZE") for k in hist)  # fp16 weights
        if quant == "fp32":
            assert report.file.int8_tensors == 0
        out = run_tflite(path, crops64[8:])
        assert cosine_similarity(out, ref).mean() >= min_cos, quant
    sizes = {q: os.path.getsize(tmp_path / f"xxs_{q}.tflite") for q in expectations}
    assert sizes["int8"] < sizes["fp16"] < sizes["fp32"]


def test_int8_full_io_quantization_and_runtime_helper(tmp_path, crops64):
    model = _model("mobilevit_xxs")
    path = tmp_path / "full.tflite"
    report = export_tflite(model, path, quant="int8_full", representative_data=crops64[:8])
    q = report.file.inputs[0]["quantization"]
    assert report.file.inputs[0]["dtype"] == "int8" and q["scale"] > 0
    float_out = run_tflite(path, crops64[8:])  # float images in, dequantized logits out
    assert float_out.dtype == np.float32 and float_out.shape == (4, 10)
    with pytest.raises(ValueError, match="do not fit the model input"):
        run_tflite(path, photo_crops(1, 32))


def test_edgetpu_target_v2_family_maps_entirely(tmp_path):
    """MobileViTv3-0.5 (separable linear attention): uint8 I/O and every op meets
    the documented Edge TPU constraints."""
    images = photo_crops(10, 96, seed=2)
    model = _model("mobilevitv3_050", size=96)
    path = tmp_path / "v3_050_edgetpu.tflite"
    report = export_tflite(
        model, path, quant="int8_full", target="edgetpu", representative_data=images[:8]
    )
    assert report.file.inputs[0]["dtype"] == "uint8" and report.file.outputs[0]["dtype"] == "uint8"
    assert not any(
        k.startswith(("BATCH_MATMUL", "DEPTH_TO_SPACE", "FULLY_CONNECTED v5"))
        for k in report.file.op_histogram
    )
    et = edgetpu_report(path)
    assert et["first_cpu_op"] is None, et["first_cpu_op"]
    assert et["mapped_op_share"] == 1.0 and et["mapped_mac_share"] == 1.0
    out = run_tflite(path, images[8:])
    assert cosine_similarity(out, model.predict(images[8:], verbose=0)).mean() > 0.8


def test_edgetpu_target_v1_family_reports_first_cpu_op(tmp_path):
    images = photo_crops(8, 96, seed=2)
    model = _model("mobilevitv3_xxs", size=96)
    path = tmp_path / "xxs_edgetpu.tflite"
    report = export_tflite(model, path, target="edgetpu", quant="int8", representative_data=images)
    assert report.quant == "int8_full" and report.file.inputs[0]["dtype"] == "uint8"
    et = edgetpu_report(path)
    first = et["first_cpu_op"]
    assert first is not None and "attn" in first["output"]  # the v1 attention core
    assert 0.0 < et["mapped_op_share"] < 1.0
    assert not any(o["op"] == "FULLY_CONNECTED" and not o["supported"] for o in et["ops"])


def test_keep_float_islands_for_cpu(tmp_path, crops64):
    model = _model("mobilevitv3_xxs")
    path = tmp_path / "mixed.tflite"
    report = export_tflite(
        model,
        path,
        quant="int8",
        representative_data=crops64[:8],
        keep_float=("attention", "normalization"),
    )
    float_ops = {o["op"] for o in report.file.float_ops}
    assert float_ops == {"BATCH_MATMUL", "SOFTMAX", "MUL", "MEAN", "ADD", "RSQRT"}, float_ops
    with pytest.raises(ValueError, match="Edge TPU"):
        export_tflite(
            model,
            tmp_path / "x.tflite",
            quant="int8_full",
            target="edgetpu",
            representative_data=crops64[:8],
            keep_float=("attention",),
        )


def test_cpu_target_runs_v2_attention_in_one_xnnpack_partition(tmp_path, crops64):
    """The export formulation splits ``qkv_proj`` into the attention core (q, k, v 1x1
    convs, as ``optimize_for_inference``), so MobileViTv2's ``relu(v)`` is the v conv's
    fused activation: no int8 RELU is left outside XNNPACK (there were 9 in 10
    partitions for mobilevitv2_050) and no STRIDED_SLICE copies the projection."""
    model = _model("mobilevitv2_050")
    report = export_tflite(model, tmp_path / "v2.tflite", representative_data=crops64[:8])
    ops = {k.split()[0] for k in report.file.op_histogram}
    assert report.target.value == "cpu" and not ops & {"RELU", "STRIDED_SLICE"}, ops
    xnnpack = report.delegates.xnnpack
    assert xnnpack["partitions"] == 1 and not xnnpack["outside"], xnnpack


def test_stock_formulation_abort_is_caught_and_located(tmp_path):
    """The stock Keras LayerNormalization lowers to SQUARED_DIFFERENCE, whose int8
    Prepare aborts the process when the squared deviations are tiny compared with
    the input range (default Keras init). The runtime check survives the abort,
    names the op, and the export formulation of the same model runs."""
    import keras

    from quantization.export_prepare import frozen_concrete_function

    keras.utils.set_random_seed(0)
    model = m.create_model("mobilevitv3_xxs", input_shape=(64, 64, 3), num_classes=10)
    images = photo_crops(8, 64)
    converter = tf.lite.TFLiteConverter.from_concrete_functions(
        [frozen_concrete_function(model, 1)]
    )
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = lambda: ([images[i : i + 1]] for i in range(8))
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    stock = tmp_path / "stock.tflite"
    stock.write_bytes(converter.convert())
    (result,) = verify_in_subprocess([stock], images=[images[:1]])
    assert result["crashed"] and not result["ok"]
    assert result["crash_op"]["op"] == "SQUARED_DIFFERENCE"
    assert locate_crash(stock)["index"] == result["crash_op"]["index"]
    fixed = export_tflite(
        model, tmp_path / "fixed.tflite", quant="int8", representative_data=images
    )
    assert "SQUARED_DIFFERENCE v2" not in fixed.file.op_histogram
    assert fixed.verify.separate_process


@pytest.mark.parametrize("quant, target", [("int8", "generic"), ("int8_full", "edgetpu")])
def test_fresh_model_residual_add_gets_a_legal_range(quant, target, tmp_path):
    """A freshly initialised MobileViTv3-0.5 aborted LiteRT: the residual ADD after
    ``layer_3.1...pre_norm_attn`` took the fusion concatenation's input scale (~0.04)
    while its own calibrated output range was ~1e-6 (kernel limit: 2**-19 of the
    input scale). The export widens that output range and the file runs."""
    import keras

    keras.utils.set_random_seed(0)
    model = m.create_model("mobilevitv3_050", input_shape=(96, 96, 3))
    images = np.random.default_rng(0).random((8, 96, 96, 3), dtype=np.float32)
    path = tmp_path / f"fresh_{quant}_{target}.tflite"
    report = export_tflite(model, path, quant=quant, target=target, representative_data=images)
    assert report.verify.separate_process and path.is_file()
    widened = [name for r in report.widened_add_ranges for name in r]
    assert any("layer_3.1.global_rep.0.pre_norm_attn.add" in name for name in widened), widened
    assert illegal_add_outputs(path.read_bytes()) == {}


def test_runtime_crash_error_names_the_op(tmp_path):
    from quantization.verify import verify_tflite

    bad = tmp_path / "bad.tflite"
    bad.write_bytes(b"\x00\x00\x00\x00TFL3" + b"\x00" * 64)
    with pytest.raises(RuntimeCrashError, match="does not run in LiteRT"):
        verify_tflite(bad, locate=False)


def test_flex_ops_are_rejected(tmp_path):
    @tf.function(input_signature=[tf.TensorSpec((1, 3, 3), tf.float32)])
    def det(x):
        return tf.linalg.det(x)

    converter = tf.lite.TFLiteConverter.from_concrete_functions([det.get_concrete_function()])
    converter.target_spec.supported_ops = [
        tf.lite.OpsSet.TFLITE_BUILTINS,
        tf.lite.OpsSet.SELECT_TF_OPS,
    ]
    report = inspect_tflite(converter.convert())
    assert report.custom_ops[0]["op"] == "CUSTOM:FlexMatrixDeterminant"
    from quantization.inspection import check_tflite

    with pytest.raises(ExportCheckError, match="Flex"):
        check_tflite(report, "fp32")


def test_representative_data_forms(crops64):
    arr = collect_images(crops64, num_samples=5, input_shape=(64, 64, 3))
    assert arr.shape == (5, 64, 64, 3)
    ds = tf.data.Dataset.from_tensor_slices((crops64, np.arange(12))).batch(4)
    assert collect_images(ds, num_samples=6).shape == (6, 64, 64, 3)
    gen = ({"image": crops64[i]} for i in range(12))
    assert collect_images(gen, num_samples=3).shape == (3, 64, 64, 3)
    assert collect_images(lambda: iter(crops64), num_samples=2).shape == (2, 64, 64, 3)
    with pytest.raises(ValueError, match="0-255|divide"):
        collect_images(crops64 * 255.0)
    with pytest.raises(ValueError, match="resize them"):
        collect_images(crops64, input_shape=(96, 96, 3))
    with pytest.raises(ValueError, match="representative_data"):
        collect_images(None)


def test_export_argument_errors(tmp_path, crops64):
    model = _model("mobilevitv3_xxs")
    with pytest.raises(ValueError, match="quant must be"):
        export_tflite(model, tmp_path / "a.tflite", quant="int4")
    with pytest.raises(ValueError, match="full-integer"):
        export_tflite(model, tmp_path / "a.tflite", quant="fp32", target="edgetpu")
    with pytest.raises(ValueError, match=".tflite"):
        export_tflite(model, tmp_path / "a.bin", quant="fp32")
    with pytest.raises(ValueError, match="quantization-aware"):
        export_tflite(model, tmp_path / "a.tflite", quant="qat")
    with pytest.raises(ValueError, match="representative_data"):
        export_tflite(model, tmp_path / "a.tflite", quant="int8")
    dynamic = m.create_model("mobilevitv3_xxs", input_shape=(None, None, 3), num_classes=10)
    with pytest.raises(ValueError, match="input_shape"):
        export_tflite(dynamic, tmp_path / "a.tflite", quant="fp32")
    report = export_tflite(dynamic, tmp_path / "b.tflite", quant="fp32", input_shape=(64, 64, 3))
    assert report.file.inputs[0]["shape"] == [1, 64, 64, 3]
    assert not (tmp_path / "a.tflite").exists()  # nothing half-written on failure
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".")]


def test_segmentation_int8_export_with_argmax(tmp_path):
    """DeepLabv3 on MobileViTv3-XXS: int8 logits and an in-model argmax mask, static
    output size equal to the input, run in LiteRT."""
    seg = pytest.importorskip("mvit3_keras.segmentation")
    images = photo_crops(10, 96, seed=4)
    outputs = {}
    for argmax in (False, True):
        import keras

        keras.utils.set_random_seed(0)
        model = seg.create_segmenter(
            "mobilevitv3_xxs",
            input_shape=(96, 96, 3),
            output_resolution="input",
            include_argmax=argmax,
            aux_head=False,
        )
        recalibrate_batchnorm(model, images[:8])
        path = tmp_path / f"seg_{argmax}.tflite"
        report = export_tflite(
            model, path, quant="int8", target="generic", representative_data=images[:8]
        )
        outputs[argmax] = (
            run_tflite(path, images[8:]),
            model.predict(images[8:], verbose=0),
            report,
        )
    logits, ref_logits, report = outputs[False]
    assert logits.shape == (2, 96, 96, 21) and not report.file.float_ops
    assert cosine_similarity(logits, ref_logits).mean() > 0.9
    mask, ref_mask, report = outputs[True]
    assert report.file.outputs[0]["dtype"] == "int32" and mask.shape == (2, 96, 96)
    assert any(k.startswith("ARG_MAX") for k in report.file.op_histogram)
    # the in-model argmax of the int8 graph == argmax of the int8 logits export
    assert np.mean(mask == logits.argmax(-1)) > 0.95
    # random weights: 21 nearly tied logits per pixel, so only a loose bound vs float
    assert np.mean(mask == ref_mask) > 0.4


def test_quant_type_and_target_parse_once_and_list_the_valid_values():
    from quantization.export import ExportOptions, QuantType, Target, parse_quant_type, parse_target

    assert parse_quant_type("int8_full") is QuantType.INT8_FULL
    assert parse_quant_type(QuantType.QAT) is QuantType.QAT
    assert parse_target("edgetpu") is Target.EDGETPU
    with pytest.raises(ValueError, match="'fp32', 'fp16', 'dynamic', 'int8', 'int8_full', 'qat'"):
        parse_quant_type("int4")
    with pytest.raises(ValueError, match="'cpu', 'npu', 'edgetpu', 'gpu', 'generic'"):
        parse_target("tpu")
    options = ExportOptions(quant="int8", target="edgetpu")
    assert options.quant is QuantType.INT8_FULL and options.integer_io  # uint8 I/O
    assert ExportOptions(quant="fp16").integer_io is False
    with pytest.raises(ValueError, match="keep_float accepts"):
        ExportOptions(keep_float=("softmax",))
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        ExportOptions(batch_size=0)
    with pytest.raises(TypeError, match="unknown export option"):
        export_tflite(None, "x.tflite", quantization="int8")


def test_export_stages_alone_and_verify_an_existing_file(tmp_path, crops64):
    """prepare -> calibrate -> convert (bytes) -> inspect -> verify -> write, each on
    its own; verify also runs a file that is already on disk."""
    import json

    from quantization.export import (
        ExportOptions,
        calibrate,
        convert,
        inspect,
        prepare,
        verify,
        write,
    )

    model = _model("mobilevitv3_xxs")
    options = ExportOptions(quant="int8", target="generic")
    prepared = prepare(model, options)
    assert prepared.input_shape == (64, 64, 3) and prepared.batch_size == 1
    calibration = calibrate(prepared, options, crops64[:8])
    assert calibration.shape == (8, 64, 64, 3)
    flatbuffer = convert(prepared, options, calibration)
    assert isinstance(flatbuffer, bytes) and flatbuffer[4:8] == b"TFL3"
    file_report = inspect(flatbuffer, options, prepared)
    assert file_report.ops is None and not file_report.float_ops
    images = crops64[8:10]
    result = verify(flatbuffer, images, prepared.reference_outputs(images))
    assert result.separate_process and result.num_images == 2
    assert result.cosine_vs_float_mean > 0.9 and result.agreement_vs_float is None
    path = write(flatbuffer, tmp_path / "stages.tflite")
    on_disk = verify(path, images, model.predict(images, verbose=0))
    assert on_disk.cosine_vs_float_mean > 0.9 and len(on_disk.outputs) == 1
    with pytest.raises(ValueError, match=".tflite"):
        write(flatbuffer, tmp_path / "stages.bin")

    report = export_tflite(model, tmp_path / "whole.tflite", options, representative_data=crops64)
    assert report.quant is options.quant and report.file.size_bytes == len(flatbuffer)
    flat = json.loads(report.to_json())
    assert flat["quant"] == "int8" and flat["input_shape"] == [1, 64, 64, 3]
    assert flat["verify"]["separate_process"] and "ops" not in flat
