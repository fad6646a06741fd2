"""SSDLite detectors: official sizes and names, parity, anchors, box coder, NMS, loss, export."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import (
    assert_close_to_reference,
    assert_official_state_dict,
    load_parity,
    save_and_reload,
)

import mvit3_keras as m
from mvit3_keras.detection import (
    AnchorConfig,
    SSDDetector,
    SSDMultiBoxLoss,
    box_iou,
    center_to_corner,
    corner_to_center,
    create_detector,
    decode_boxes,
    encode_boxes,
    feature_map_sizes,
    generate_anchors,
    hard_negative_mining,
    match_anchors,
    postprocess_detections,
)
from mvit3_keras.registry import spec_for_cvnets_name
from quantization.export import export_tflite

DET_ENTRIES = [
    "det_ssd_small_v3",
    "det_ssd_w0.5",
    "det_ssd_w0.75",
    "det_ssd_w1.0",
    "det_ssd_x_small_v3",
    "det_ssd_xx_small_v3",
]


pytestmark = pytest.mark.usefixtures("fresh_keras_session")


@pytest.mark.parametrize("entry", DET_ENTRIES)
def test_official_params_macs_and_keys(reference, summary, entry):
    ref = summary[entry]
    backbone = spec_for_cvnets_name(entry[len("det_ssd_") :]).name
    det = create_detector(backbone)  # 320x320, 81 classes
    assert m.count_params(det) == ref["params"]
    # summary.json rounds the official profiler's MACs to 1e3.
    assert abs(m.count_macs(det)["official"] - ref["macs"]) <= 500
    assert_official_state_dict(reference, entry, det)
    assert det.output["confidences"].shape == (None, 3232, 81)
    assert det.anchors().shape == (3232, 4)


def test_detection_parity(reference):
    data = load_parity(reference, "det_ssd_xx_small_v3")
    det = create_detector("mobilevitv3_xxs")
    m.load_cvnets_weights(det, data, rgb_input=False)
    out = det(data["ref__input0"].astype(np.float32), training=False)
    for key in ("confidences", "locations"):
        assert_close_to_reference(out[key], data[f"ref__output0_{key}"], what=key)


# --------------------------------------------------------------------------------------
# Anchors
# --------------------------------------------------------------------------------------
def _official_anchors(sizes, strides, ratios, min_ratio=0.1, max_ratio=1.05):
    """Transcription of cvnets ``SSDAnchorGenerator.generate_anchors_center_form``."""
    scales = np.linspace(min_ratio, max_ratio, len(strides) + 1)
    out = []
    for i, ((h, w), ar) in enumerate(zip(sizes, ratios)):
        smin, smax = scales[i], math.sqrt(scales[i] * scales[i + 1])
        for y in range(h):
            for x in range(w):
                cx, cy = (x + 0.5) / w, (y + 0.5) / h
                out += [[cx, cy, smin, smin], [cx, cy, smax, smax]]
                for r in list(set(ar)):
                    r = math.sqrt(r)
                    out += [[cx, cy, smin * r, smin / r], [cx, cy, smin / r, smin * r]]
    return np.clip(np.asarray(out, np.float32), 0.0, 1.0)


def test_anchors_match_official_generator():
    cfg = AnchorConfig()
    sizes = feature_map_sizes(m.get_spec("mobilevitv3_xxs"), (320, 320), cfg.output_strides)
    assert sizes == [(20, 20), (10, 10), (5, 5), (3, 3), (2, 2), (1, 1)]
    anchors = generate_anchors(sizes, cfg)
    assert anchors.shape == (3232, 4) and anchors.dtype == np.float32
    expected = _official_anchors(sizes, cfg.output_strides, cfg.aspect_ratios)
    np.testing.assert_allclose(anchors, expected, atol=1e-7)
    assert cfg.anchors_per_location() == [6, 6, 6, 6, 6, 4]


@pytest.mark.parametrize("backbone", ["mobilevitv3_xxs", "mobilevitv3_050"])
def test_anchor_count_matches_head_outputs_at_odd_sizes(backbone):
    """Feature map sizes without a model == the real ones (v2 blocks round odd maps up)."""
    det = create_detector(backbone, input_shape=(200, 266, 3), num_classes=5)
    assert det.output["locations"].shape[1] == det.anchors().shape[0]


# --------------------------------------------------------------------------------------
# Box coder, matching
# --------------------------------------------------------------------------------------
def test_encode_decode_round_trip_and_iou():
    anchors = np.array([[0.5, 0.5, 0.2, 0.4], [0.2, 0.3, 0.1, 0.1]], np.float32)
    boxes = np.array([[0.55, 0.45, 0.3, 0.2], [0.2, 0.3, 0.1, 0.1]], np.float32)
    codes = np.asarray(encode_boxes(boxes, anchors))
    np.testing.assert_allclose(
        codes[0],
        [0.05 / 0.2 / 0.1, -0.05 / 0.4 / 0.1, np.log(1.5) / 0.2, np.log(0.5) / 0.2],
        rtol=1e-5,
    )
    np.testing.assert_allclose(codes[1], 0.0, atol=1e-6)
    np.testing.assert_allclose(np.asarray(decode_boxes(codes, anchors)), boxes, atol=1e-6)
    corner = np.asarray(center_to_corner(boxes))
    np.testing.assert_allclose(corner[1], [0.15, 0.25, 0.25, 0.35], atol=1e-7)
    np.testing.assert_allclose(np.asarray(corner_to_center(corner)), boxes, atol=1e-7)
    iou = float(box_iou([0.0, 0.0, 2.0, 2.0], [1.0, 1.0, 3.0, 3.0]))
    assert abs(iou - 1.0 / (4 + 4 - 1 + 1e-5)) < 1e-7


def test_match_anchors_hand_made():
    # Corner form anchors: A0 [0,0,.4,.4], A1 [.5,.5,.9,.9], A2 [.05,.05,.45,.45], A3 [.6,0,1,.4]
    corners = np.array(
        [[0, 0, 0.4, 0.4], [0.5, 0.5, 0.9, 0.9], [0.05, 0.05, 0.45, 0.45], [0.6, 0, 1, 0.4]],
        np.float32,
    )
    anchors = np.asarray(corner_to_center(corners))
    gt = np.array(
        [[0.0, 0.0, 0.42, 0.42], [0.55, 0.5, 0.95, 0.95], [0.7, 0.2, 0.75, 0.25]], np.float32
    )
    labels = np.array([3, 5, 7])
    coords, lab = match_anchors(gt, labels, anchors)
    # A0, A2 overlap gt0 (IoU > .5); A1 overlaps gt1; A3 is gt2's best anchor (IoU
    # 0.016 < 0.5) and is still assigned because every target claims its best anchor.
    np.testing.assert_array_equal(np.asarray(lab), [3, 5, 3, 7])
    decoded = np.asarray(center_to_corner(decode_boxes(coords, anchors)))
    np.testing.assert_allclose(decoded, gt[[0, 1, 0, 2]], atol=1e-5)

    _, lab = match_anchors(gt[:1], labels[:1], anchors, iou_threshold=0.9)
    np.testing.assert_array_equal(np.asarray(lab), [3, 0, 0, 0])  # only the forced match
    _, lab = match_anchors(np.zeros((0, 4), np.float32), np.zeros((0,), np.int32), anchors)
    np.testing.assert_array_equal(np.asarray(lab), [0, 0, 0, 0])  # no objects: background


# --------------------------------------------------------------------------------------
# Post-processing
# --------------------------------------------------------------------------------------
def _logits_for(probs):
    probs = np.asarray(probs, np.float64)
    return np.log(probs / probs.sum(-1, keepdims=True)).astype(np.float32)


def test_postprocess_per_class_nms_threshold_and_top_k():
    corners = np.array(
        [
            [0.10, 0.10, 0.50, 0.50],  # 0
            [0.12, 0.12, 0.52, 0.52],  # 1: IoU(0, 1) = 0.82
            [0.60, 0.60, 0.90, 0.90],  # 2
            [0.61, 0.10, 0.90, 0.40],  # 3
        ],
        np.float32,
    )
    anchors = np.asarray(corner_to_center(corners))
    # classes: background, 1, 2
    probs = [
        [0.07, 0.90, 0.03],  # anchor 0: class 1 (best)
        [0.10, 0.50, 0.40],  # anchor 1: class 1 suppressed by 0; class 2 kept
        [0.28, 0.70, 0.02],  # anchor 2: class 1
        [0.985, 0.005, 0.01],  # anchor 3: below the score threshold
    ]
    conf = _logits_for(probs)[None]
    loc = np.zeros((1, 4, 4), np.float32)
    out = postprocess_detections(conf, loc, anchors, score_threshold=0.05, max_detections=10)
    n = int(out["num_detections"][0])
    assert n == 3
    np.testing.assert_array_equal(np.asarray(out["classes"][0, :n]), [1, 1, 2])
    np.testing.assert_allclose(np.asarray(out["scores"][0, :n]), [0.9, 0.7, 0.4], atol=1e-6)
    np.testing.assert_allclose(np.asarray(out["boxes"][0, :n]), corners[[0, 2, 1]], atol=1e-6)
    assert np.all(np.asarray(out["classes"][0, n:]) == 0)

    top1 = postprocess_detections(conf, loc, anchors, score_threshold=0.05, max_detections=1)
    assert int(top1["num_detections"][0]) == 1 and float(top1["scores"][0, 0]) == pytest.approx(0.9)
    strict = postprocess_detections(conf, loc, anchors, score_threshold=0.75)
    assert int(strict["num_detections"][0]) == 1
    loose_iou = postprocess_detections(conf, loc, anchors, score_threshold=0.05, iou_threshold=0.9)
    assert int(loose_iou["num_detections"][0]) == 4  # 0 and 1 no longer suppress each other
    # pre-NMS top-k per class keeps only the best anchor of each class
    topk = postprocess_detections(conf, loc, anchors, score_threshold=0.05, pre_nms_top_k=1)
    np.testing.assert_array_equal(np.asarray(topk["classes"][0, :2]), [1, 2])
    assert int(topk["num_detections"][0]) == 2


# --------------------------------------------------------------------------------------
# Loss
# --------------------------------------------------------------------------------------
def test_hard_negative_mining_count():
    bg_loss = np.array([[0.1, 0.9, 0.5, 0.3, 0.8, 0.2, 0.7, 0.6, 0.4, 0.05]], np.float32)
    labels = np.array([[0, 2, 0, 0, 0, 0, 0, 0, 1, 0]])
    mask = np.asarray(hard_negative_mining(bg_loss, labels, 3))
    # 2 positives (1, 8) + the 6 negatives of highest background loss (4, 6, 7, 2, 3, 5)
    np.testing.assert_array_equal(np.flatnonzero(mask[0]), [1, 2, 3, 4, 5, 6, 7, 8])
    none = np.asarray(hard_negative_mining(bg_loss, np.zeros_like(labels), 3))
    assert not none.any()


def test_ssd_loss_value():
    rng = np.random.RandomState(0)
    conf = rng.randn(2, 12, 4).astype(np.float32)
    loc = rng.randn(2, 12, 4).astype(np.float32)
    labels = np.zeros((2, 12), np.int32)
    labels[0, [1, 5]] = [2, 3]
    labels[1, 7] = 1
    targets = rng.randn(2, 12, 4).astype(np.float32)
    y_true = {"box_labels": labels, "box_coordinates": targets}
    y_pred = {"confidences": conf, "locations": loc}
    got = float(SSDMultiBoxLoss()(y_true, y_pred))
    assert float(tf.function(SSDMultiBoxLoss())(y_true, y_pred)) == pytest.approx(got, rel=1e-6)
    # numpy transcription of the official SSDLoss.forward
    logp = conf - np.log(np.exp(conf).sum(-1, keepdims=True))
    total_ce = 0.0
    for b in range(2):
        pos = labels[b] > 0
        bg = np.where(pos, -np.inf, -logp[b, :, 0])
        neg = np.argsort(-bg, kind="stable")[: 3 * pos.sum()]
        keep = pos.copy()
        keep[neg] = True
        total_ce += -logp[b][keep, labels[b][keep]].sum()
    d = np.abs(loc - targets)[labels > 0]
    sl1 = np.where(d < 1, 0.5 * d * d, d - 0.5).sum()
    assert got == pytest.approx((total_ce + sl1) / 3, rel=1e-5)


# --------------------------------------------------------------------------------------
# Training, saving, export
# --------------------------------------------------------------------------------------
def test_fit_step_and_keras_round_trip(tmp_path):
    det = create_detector("mobilevitv3_xxs", num_classes=4, input_shape=(64, 64, 3))
    # One eager step (tracing the training graph of the whole detector costs ~20 s on
    # 2 cores); the loss itself is checked in graph mode in test_ssd_loss_value.
    det.compile(optimizer=keras.optimizers.Adam(1e-3), loss=SSDMultiBoxLoss(), run_eagerly=True)
    boxes = np.array([[0.1, 0.1, 0.5, 0.6], [0.5, 0.4, 0.9, 0.8]], np.float32)
    coords, labels = det.encode_targets(boxes, np.array([1, 3]))
    y = {
        "box_labels": np.stack([labels, labels]).astype(np.int32),
        "box_coordinates": np.stack([coords, coords]),
    }
    x = np.random.RandomState(0).rand(2, 64, 64, 3).astype(np.float32)
    history = det.fit(x, y, epochs=1, batch_size=2, verbose=0)
    assert np.all(np.isfinite(history.history["loss"]))

    loaded, record = save_and_reload(det, tmp_path / "det.keras")
    assert type(loaded).__name__ == "SSDDetector"
    for key, value in det(x[:1]).items():
        np.testing.assert_array_equal(np.asarray(loaded(x[:1])[key]), np.asarray(value))
    np.testing.assert_array_equal(loaded.anchors(), det.anchors())
    result = loaded.detect(x[:1], score_threshold=0.0, max_detections=5)
    assert result["boxes"].shape == (1, 5, 4)
    assert (record.variant, record.task, record.head, record.num_classes) == (
        "mobilevitv3_xxs",
        "detection",
        "ssdlite",
        4,
    )
    assert record.input_shape == (64, 64, 3)
    assert record.options["output_strides"] == [16, 32, 64, 128, 256, -1]
    rebuilt = m.rebuild_model(record)
    assert rebuilt.detection_config == det.detection_config
    # A detector saved before records existed: the record comes from detection_config.
    config = det.get_config()
    del config["model_record"]
    assert m.model_record(SSDDetector.from_config(config)) == record


_RUN_TFLITE = textwrap.dedent(
    """
    import sys, numpy as np
    from ai_edge_litert.interpreter import Interpreter
    from quantization.runtime import interpreter_ops
    interpreter = Interpreter(model_path=sys.argv[1])
    ops = {op["op_name"] for op in interpreter_ops(interpreter)}
    assert "TFLite_Detection_PostProcess" in ops, ops
    assert not any(op.startswith("Flex") for op in ops), ops
    out = interpreter.get_signature_runner()(image=np.load(sys.argv[2]))
    np.savez(sys.argv[3], **out)
    """
)


def test_tflite_export_with_detection_postprocess_op(reference, tmp_path):
    pytest.importorskip("ai_edge_litert")
    data = load_parity(reference, "det_ssd_xx_small_v3")
    det = create_detector("mobilevitv3_xxs")
    m.load_cvnets_weights(det, data, rgb_input=False)
    settings = dict(score_threshold=0.02, max_detections=20, detections_per_class=20)
    # the same export path as every model: checked, verified in LiteRT, atomic write
    report = export_tflite(
        det, tmp_path / "det.tflite", quant="fp32", detection_postprocess=settings
    )
    assert det.anchors().shape[0] == 3232
    assert os.path.getsize(report.path) == report.file.size_bytes
    assert report.file.custom_ops[0]["op"] == "CUSTOM:TFLite_Detection_PostProcess"
    assert report.verify.separate_process and report.verify.cosine_vs_float_mean is None
    info = {"path": report.path}

    x = data["ref__input0"].astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    subprocess.run(
        [
            sys.executable,
            "-c",
            _RUN_TFLITE,
            info["path"],
            str(tmp_path / "x.npy"),
            str(tmp_path / "out.npz"),
        ],
        check=True,
        timeout=300,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
    )
    out = np.load(tmp_path / "out.npz")
    ref = det.detect(
        x, score_threshold=0.02, pre_nms_top_k=None, max_detections_per_class=20, max_detections=20
    )
    n = int(ref["num_detections"][0])
    assert n > 0 and int(out["num_detections"][0]) == n
    # TFLite: (ymin, xmin, ymax, xmax), classes 0-based without background.
    np.testing.assert_allclose(
        out["detection_boxes"][0, :n], np.asarray(ref["boxes"])[0, :n][:, [1, 0, 3, 2]], atol=1e-4
    )
    np.testing.assert_array_equal(
        out["detection_classes"][0, :n], np.asarray(ref["classes"])[0, :n] - 1
    )
    np.testing.assert_allclose(
        out["detection_scores"][0, :n], np.asarray(ref["scores"])[0, :n], atol=1e-5
    )


def test_load_classification_checkpoint_into_detector_backbone():
    cls_state = m.to_cvnets_state_dict(m.create_model("mobilevitv3_050", input_shape=(64, 64, 3)))
    det = create_detector("mobilevitv3_050", input_shape=(128, 128, 3))
    report = m.load_backbone_weights(det, cls_state)
    assert report["loaded"] > 0 and report["skipped"] == [
        "classifier.1.weight",
        "classifier.1.bias",
    ]
    assert all(k.startswith(("extra_layers.", "ssd_heads.")) for k in report["head_not_loaded"])
