"""One export per device (``target``), calibration from an image folder, and the
per-delegate report of every export."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from support.detections import litert_detections
from support.photos import photo_crops, sample_images
from support.variants import param
from support.weights import recalibrate_batchnorm

import mvit3_keras as m
from mvit3_cli import dispatch as cli
from quantization import export_tflite, run_tflite
from quantization.calibration import evaluation_transform, folder_images
from quantization.export import cosine_similarity
from quantization.export_options import TARGETS, ExportOptions, QuantType, export_options

SIZE = 64


def _model(size=SIZE, classes=10, seed=0):
    import keras

    keras.utils.set_random_seed(seed)
    model = m.create_model("mobilevitv3_xxs", input_shape=(size, size, 3), num_classes=classes)
    return recalibrate_batchnorm(model, photo_crops(8, size, seed=seed), seed=seed)


@pytest.fixture(scope="module")
def crops():
    return photo_crops(12, SIZE, seed=3)


@pytest.fixture
def photo_folder(tmp_path):
    """JPEG and PNG files of different sizes (scikit-learn's sample photos), and a
    file that is not an image."""
    from PIL import Image

    folder = tmp_path / "photos"
    (folder / "sub").mkdir(parents=True)
    china, flower = sample_images()
    Image.fromarray(china).save(folder / "a_china.jpg", quality=90)
    Image.fromarray(flower[:300, :200]).save(folder / "b_flower.png")
    Image.fromarray(china[100:, 50:500]).resize((97, 61)).save(folder / "sub" / "c_small.JPEG")
    (folder / "notes.txt").write_text("not an image")
    return folder


# ops the cpu target keeps in float32: attention matmuls / softmax, norm statistics
CPU_FLOAT_OPS = {"BATCH_MATMUL", "SOFTMAX", "MUL", "MEAN", "ADD", "RSQRT"}


def _float_op_names(report) -> set:
    return {o["op"] for o in report.file.float_ops}


def test_every_target_exports_a_file_that_runs(tmp_path, crops):
    """cpu: int8 with float attention cores (fewer XNNPACK partitions than every op
    int8); npu: every op int8, int8 I/O; edgetpu: uint8 I/O; gpu: float16 weights;
    generic: every op int8 with float I/O (the int8 file of earlier releases)."""
    model = _model()
    ref = model.predict(crops[8:], verbose=0)
    reports = {}
    for target in TARGETS:
        path = tmp_path / f"xxs_{target}.tflite"
        report = export_tflite(model, path, target=target, representative_data=crops[:8])
        out = run_tflite(path, crops[8:])
        assert cosine_similarity(out, ref).mean() > 0.9, target
        assert report.delegates is not None and "error" not in report.delegates.xnnpack
        reports[target] = report
    cpu, npu, gpu, generic = (reports[t] for t in ("cpu", "npu", "gpu", "generic"))
    assert cpu.quant is QuantType.INT8 and cpu.keep_float
    assert {"BATCH_MATMUL", "SOFTMAX"} <= _float_op_names(cpu) <= CPU_FLOAT_OPS
    assert cpu.file.inputs[0]["dtype"] == "float32"
    for target in ("cpu", "npu", "gpu", "generic"):  # q, k, v convs: no slicing copies
        assert not any(k.startswith("STRIDED_SLICE") for k in reports[target].file.op_histogram)
    assert npu.quant is QuantType.INT8_FULL and not npu.file.float_ops
    assert npu.file.inputs[0]["dtype"] == "int8" and npu.file.outputs[0]["dtype"] == "int8"
    assert reports["edgetpu"].file.inputs[0]["dtype"] == "uint8"
    assert reports["edgetpu"].edgetpu is not None
    assert gpu.quant is QuantType.FP16 and gpu.delegates.edgetpu is None
    assert any(k.startswith("DEQUANTIZE") for k in gpu.file.op_histogram)  # fp16 weights
    assert gpu.file.int8_tensors == 0 and gpu.delegates.gpu.compatible
    assert not generic.file.float_ops and generic.file.inputs[0]["dtype"] == "float32"
    xnn_cpu, xnn_generic = cpu.delegates.xnnpack, generic.delegates.xnnpack
    assert xnn_cpu["partitions"] < xnn_generic["partitions"]
    assert not any(o["op"] == "BATCH_MATMUL" for o in xnn_cpu["outside"])
    assert any(o["op"] == "BATCH_MATMUL" and o["dtype"] == "int8" for o in xnn_generic["outside"])
    assert gpu.delegates.xnnpack["delegated_ops"] == gpu.delegates.xnnpack["num_ops"]
    assert os.path.getsize(cpu.path) < os.path.getsize(gpu.path)
    assert "delegates" in cpu.to_dict() and "XNNPACK" in cpu.delegates.format()


def test_target_defaults_and_bad_targets(tmp_path):
    assert ExportOptions().target.value == "cpu" and ExportOptions().quant is QuantType.INT8
    assert ExportOptions().keep_float  # the cpu islands
    assert ExportOptions(target="generic").keep_float == ()
    assert ExportOptions(target="npu").quant is QuantType.INT8_FULL
    assert ExportOptions(target="gpu").quant is QuantType.FP16
    assert ExportOptions(quant="int8", keep_float="none").keep_float == ()
    assert ExportOptions(quant="int8_full").keep_float == ()
    assert export_options(ExportOptions(), target="gpu").quant is QuantType.FP16
    model = _model()
    with pytest.raises(ValueError, match="'cpu', 'npu', 'edgetpu', 'gpu', 'generic'"):
        export_tflite(model, tmp_path / "a.tflite", target="phone")
    with pytest.raises(ValueError, match="GPU delegate computes in float"):
        export_tflite(model, tmp_path / "a.tflite", quant="int8", target="gpu")
    with pytest.raises(ValueError, match="every op in int8"):
        export_tflite(model, tmp_path / "a.tflite", target="npu", keep_float="attention")
    assert not list(tmp_path.iterdir())


def test_calibration_from_an_image_folder(tmp_path, photo_folder):
    model = _model()
    transform = evaluation_transform(model, (SIZE, SIZE, 3))
    images = folder_images(photo_folder, transform, num_samples=10)
    assert images.shape == (3, SIZE, SIZE, 3) and images.dtype == np.float32
    assert 0.0 <= images.min() and images.max() <= 1.0 and images.std() > 0.05
    path = tmp_path / "folder.tflite"
    report = export_tflite(model, path, representative_data=str(photo_folder))
    assert report.quant is QuantType.INT8 and path.is_file()
    assert report.verify.cosine_vs_float_mean > 0.9


def test_calibration_folder_without_images_is_a_clear_error(tmp_path):
    model = _model()
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "broken.jpg").write_bytes(b"not a jpeg")
    out = tmp_path / "x.tflite"
    with pytest.raises(ValueError, match=r"empty.*no readable image.*\.jpg, \.jpeg, \.png"):
        export_tflite(model, out, representative_data=str(empty))
    with pytest.raises(ValueError, match="does not exist"):
        export_tflite(model, out, representative_data=str(tmp_path / "missing"))
    assert not out.exists()


DETECTIONS = dict(max_detections=10, detections_per_class=10, score_threshold=0.0)


def _found(reference, got, top=5) -> float:
    """Share of each image's ``top`` reference detections that ``got`` has too (same
    class, IoU >= 0.5)."""
    from mvit3_keras.detection.box_coder import box_iou

    hits = total = 0
    for expected, found in zip(reference, got):
        for cls, box in expected[:top]:
            total += 1
            same_class = [b for c, b in found if c == cls]
            hits += bool(same_class) and float(np.max(box_iou(box, np.stack(same_class)))) >= 0.5
    return hits / total


@pytest.fixture(scope="module")
def fresh_detector(tmp_path_factory):
    """A freshly built SSD detector (BatchNorm statistics of photos, random weights
    otherwise), 8 photo crops and its fp32 file's detections on them."""
    import keras

    keras.utils.set_random_seed(0)
    det = m.create_detector("mobilevitv3_xxs", num_classes=4, input_shape=(SIZE, SIZE, 3))
    recalibrate_batchnorm(det, photo_crops(8, SIZE))
    images = photo_crops(8, SIZE, seed=2)
    path = tmp_path_factory.mktemp("detector") / "fp32.tflite"
    export_tflite(det, path, quant="fp32", detection_postprocess=DETECTIONS)
    return det, images, litert_detections(path, images)


@pytest.mark.parametrize(
    "target", [param("cpu"), param("npu", slow=True), param("edgetpu", slow=True)]
)
def test_detector_exports_to_every_integer_target(tmp_path, fresh_detector, target):
    """An SSD detector goes through the same export formulation as a classifier (the
    int8 range fixes of the norms and residual adds; float islands on ``cpu``), so a
    freshly built one exports to each integer target and runs in LiteRT (the export's
    verification, in a separate process). Only ``TFLite_Detection_PostProcess`` stays
    float, with float32 outputs: it decodes boxes on the CPU, as in the Edge TPU SSD
    models of the TensorFlow Object Detection API.

    Agreement: the int8 file finds the fp32 file's top-5 detections per image (same
    class, IoU >= 0.5): measured cpu 65%, npu 72%, edgetpu 65% (random weights score
    many anchors alike; bound 50%)."""
    det, images, fp32_detections = fresh_detector
    path = tmp_path / f"{target}.tflite"
    report = export_tflite(
        det,
        path,
        target=target,
        representative_data=photo_crops(8, SIZE, seed=1),
        detection_postprocess=DETECTIONS,
    )
    assert report.quant.is_integer and report.verify is not None
    float_ops = _float_op_names(report) - {"CUSTOM:TFLite_Detection_PostProcess"}
    if target == "cpu":  # the islands were found in the detector's graph too
        assert {"BATCH_MATMUL", "SOFTMAX", "RSQRT"} <= float_ops <= CPU_FLOAT_OPS
        assert not any(o["op"] == "BATCH_MATMUL" for o in report.delegates.xnnpack["outside"])
    else:
        assert not float_ops
    expected_input = {"cpu": "float32", "npu": "int8", "edgetpu": "uint8"}[target]
    assert report.file.inputs[0]["dtype"] == expected_input
    assert {t["dtype"] for t in report.file.outputs} == {"float32"}
    found = _found(fp32_detections, litert_detections(path, images))
    print(f"{target}: the int8 file finds {found:.0%} of the fp32 file's top-5 detections")
    assert found >= 0.5


def test_cli_exports_a_segmenter_and_a_detector(tmp_path, photo_folder, capsys):
    """``mvit3 export`` on .keras files of the other model kinds, with a folder of
    images: DeepLabv3 (int8, cpu target, calibrated on it) and SSDLite with its
    post-processing op (fp32, verified on it; the detector's int8 files:
    :func:`test_detector_exports_to_every_integer_target`)."""
    import keras

    from mvit3_keras.segmentation import create_segmenter

    keras.utils.set_random_seed(0)
    seg = create_segmenter("mobilevitv3_xxs", input_shape=(SIZE, SIZE, 3), aux_head=False)
    recalibrate_batchnorm(seg, photo_crops(4, SIZE))
    det = m.create_detector("mobilevitv3_xxs", num_classes=4, input_shape=(SIZE, SIZE, 3))
    seg.save(tmp_path / "seg.keras")
    det.save(tmp_path / "det.keras")
    folder = str(photo_folder)
    for kind in ("seg", "det"):
        args = [
            "export",
            str(tmp_path / f"{kind}.keras"),
            "--output",
            str(tmp_path / f"{kind}.tflite"),
        ]
        args += ["--calibration-images", folder, "--json", str(tmp_path / f"{kind}.json")]
        args += ["--quant", "fp32"] if kind == "det" else []
        assert cli(args) == 0, kind
    printed = capsys.readouterr().out
    assert printed.count("XNNPACK:") == 2 and printed.count("GPU delegate:") == 2
    seg_report = json.loads((tmp_path / "seg.json").read_text())
    det_report = json.loads((tmp_path / "det.json").read_text())
    assert seg_report["quant"] == "int8" and seg_report["target"] == "cpu"
    assert det_report["custom_ops"][0]["op"] == "CUSTOM:TFLite_Detection_PostProcess"
    gpu_bad = det_report["delegates"]["gpu"]["incompatible"]
    assert any(o["op"] == "CUSTOM:TFLite_Detection_PostProcess" for o in gpu_bad)
    with pytest.raises(SystemExit):  # argparse lists the valid targets
        cli(["export", str(tmp_path / "seg.keras"), "--output", "x.tflite", "--target", "tpu"])
