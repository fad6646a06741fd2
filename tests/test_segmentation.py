"""DeepLabv3 / PSPNet segmenters: official sizes, names, parity, shapes, training, export."""

from __future__ import annotations

import json
import math

import keras
import numpy as np
import pytest
from conftest import (
    assert_close_to_reference,
    assert_official_state_dict,
    load_parity,
    save_and_reload,
)

import mvit3_keras as m
from mvit3_keras import specs as S
from mvit3_keras.compat import frozen_function
from mvit3_keras.registry import spec_for_cvnets_name
from mvit3_keras.segmentation import (
    HEADS,
    PRESETS,
    AdaptiveAveragePooling2D,
    SegmentationCrossEntropy,
    Segmenter,
    create_segmenter,
)
from quantization.runtime import interpreter_ops

SEG_ENTRIES = [
    "seg_deeplabv3_ade20k_w0.5",
    "seg_deeplabv3_ade20k_w0.75",
    "seg_deeplabv3_ade20k_w1.0",
    "seg_deeplabv3_voc_small_v3",
    "seg_deeplabv3_voc_w0.5",
    "seg_deeplabv3_voc_w0.75",
    "seg_deeplabv3_voc_w1.0",
    "seg_deeplabv3_voc_x_small_v3",
    "seg_deeplabv3_voc_xx_small_v3",
    "seg_pspnet_ade20k_w0.5",
    "seg_pspnet_voc_w0.5",
]


def _entry_args(entry):
    _, head, dataset, variant = entry.split("_", 3)
    preset = {"voc": "pascal_voc", "ade20k": "ade20k"}[dataset]
    return spec_for_cvnets_name(variant).name, head, preset


pytestmark = pytest.mark.usefixtures("fresh_keras_session")


# --------------------------------------------------------------------------------------
# Official configurations: parameters, MACs, state_dict names
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("entry", SEG_ENTRIES)
def test_official_params_macs_and_keys(reference, summary, entry):
    ref = summary[entry]
    backbone, head, preset = _entry_args(entry)
    seg = create_segmenter(backbone, head=head, preset=preset, input_shape=(512, 512, 3))
    assert m.count_params(seg) == ref["params"]
    without_aux = ref.get("params_without_aux_head", ref["params"])
    assert m.count_params(seg.inference_model()) == without_aux
    assert seg.has_aux_head == ("params_without_aux_head" in ref)
    # The official profiler (MACs at 512x512, rounded to 1e3 in summary.json); the
    # training-only aux head is not counted, as in the official profile.
    assert abs(m.count_macs(seg)["official"] - ref["macs"]) <= 500
    assert_official_state_dict(reference, entry, seg)


def _cls_encoder_params(reference, spec):
    """Backbone parameters from the official classification keys (no classifier / exp)."""
    with open(reference / "keys" / f"cls_{spec.cvnets_name}.json", encoding="utf-8") as f:
        keys = json.load(f)
    skip = ("running_mean", "running_var", "num_batches_tracked")
    return sum(
        math.prod(shape)
        for k, shape in keys
        if not k.startswith(("classifier", "conv_1x1_exp")) and not k.endswith(skip)
    )


def _head_params(spec, head, preset, num_classes):
    """Analytic parameter count of the official heads (docs/semantics.md, section 5)."""
    v1 = spec.family == S.V1_FAMILY
    c4, c5 = spec.layer_4.out_channels, spec.layer_5.out_channels
    if head == "deeplabv3":
        c = 256 if v1 else 512
        n = 2 * c * 6  # six ConvLayers with BN (convs.0-4, project)
        n += c5 * c * 2 + 9 * c5 * c * 3 + 5 * c * c
        out = c
    else:
        r = (c5 // 4) // 16 * 16
        n = 4 * (c5 * r + 2 * r) + 9 * (c5 + 4 * r) * 512 + 2 * 512
        out = 512
    n += out * num_classes + num_classes
    if not v1:  # aux head of the v2-family presets
        inner = max(c4 // 4, 128)
        n += 9 * c4 * inner + 2 * inner + inner * num_classes + num_classes
    return n


@pytest.mark.parametrize("index,name", list(enumerate(m.list_models())))
def test_every_backbone_builds_with_official_names(reference, index, name):
    """Registry-wide: head/preset rotate over the variants; the parameter count is
    the official backbone (from its classification keys) plus the analytic head."""
    spec = m.get_spec(name)
    head = HEADS[index % 2]
    preset = PRESETS[(index // 2) % 2]
    seg = create_segmenter(name, head=head, preset=preset, num_classes=7, input_shape=(64, 64, 3))
    expected = _cls_encoder_params(reference, spec) + _head_params(spec, head, preset, 7)
    assert m.count_params(seg) == expected
    names = list(m.to_cvnets_state_dict(seg))
    assert all(k.startswith(("encoder.", "seg_head.")) for k in names)
    assert not any("conv_1x1_exp" in k or k.startswith("encoder.classifier") for k in names)


# --------------------------------------------------------------------------------------
# Parity with the official outputs
# --------------------------------------------------------------------------------------
PARITY = {
    "seg_deeplabv3_voc_xx_small_v3": ("mobilevitv3_xxs", "pascal_voc"),
    "seg_deeplabv3_ade20k_w0.5": ("mobilevitv3_050", "ade20k"),
}


@pytest.mark.parametrize("stem", sorted(PARITY))
def test_segmentation_parity(reference, stem):
    data = load_parity(reference, stem)
    backbone, preset = PARITY[stem]
    for i in (0, 1):  # input 1 is not divisible by the network stride
        x = data[f"ref__input{i}"].astype(np.float32)
        seg = create_segmenter(backbone, preset=preset, input_shape=x.shape[1:])
        report = m.load_cvnets_weights(seg, data, rgb_input=False)  # strict: every key
        assert report["loaded"] > 0 and not report["bgr_to_rgb"]
        classifier = next(
            layer.name
            for layer in seg.layers
            if layer.name.startswith("seg_head.classifier") and layer.name.endswith("block.conv")
        )
        probe = keras.Model(seg.input, [seg.output["logits"], seg.get_layer(classifier).output])
        full, low = (np.asarray(t) for t in probe(x, training=False))
        assert full.shape == tuple(data[f"ref__output{i}_shape"])
        key = f"ref__output{i}_rows1step3_cols1step3"
        assert_close_to_reference(
            data.like_stored(key, full[:, 1::3, 1::3]), data[key], what="logits"
        )
        assert_close_to_reference(
            low, data[f"ref__feat{i}__seg_head.classifier"], what="low-res logits"
        )
        # Inference returns the main logits only (the aux head is training-only).
        np.testing.assert_allclose(np.asarray(seg(x)), full, rtol=0, atol=1e-5)
        keras.backend.clear_session()


# --------------------------------------------------------------------------------------
# Shapes, options, presets
# --------------------------------------------------------------------------------------
def _low_res(spec, h, w, output_stride):
    """Expected low-resolution size: stride-2 stages give ceil(n/2); v2 blocks make
    odd maps even; dilated stages (output stride 16 / 8) keep the size."""
    for stride in (2, 4, 8, 16, 32):
        if stride <= output_stride:
            h, w = (h + 1) // 2, (w + 1) // 2
        if spec.family == S.V2_FAMILY and stride >= 8:
            h, w = h + h % 2, w + w % 2
    return h, w


SHAPE_CASES = [
    ("mobilevitv3_xxs", "deeplabv3", "pascal_voc", (64, 96)),  # divisible
    ("mobilevitv3_xxs", "deeplabv3", "pascal_voc", (72, 90)),  # not divisible
    ("mobilevitv3_050", "deeplabv3", "ade20k", (72, 90)),
    ("mobilevitv3_050", "pspnet", "pascal_voc", (66, 100)),
]


def _copy_weights(src, dst):
    """By official name (layer order differs between output options)."""
    m.load_cvnets_weights(dst, m.to_cvnets_state_dict(src, rgb_input=False), rgb_input=False)


@pytest.mark.parametrize("backbone,head,preset,size", SHAPE_CASES)
def test_output_shapes(backbone, head, preset, size):
    spec = m.get_spec(backbone)
    seg = create_segmenter(backbone, head=head, preset=preset, input_shape=(*size, 3))
    os_ = seg.segmentation_config["output_stride"]
    classes = seg.segmentation_config["num_classes"]
    low = _low_res(spec, *size, os_)
    x = np.random.RandomState(0).rand(1, *size, 3).astype(np.float32)
    official = np.asarray(seg(x))
    assert official.shape == (1, low[0] * os_, low[1] * os_, classes)

    exact = create_segmenter(
        backbone, head=head, preset=preset, input_shape=(*size, 3), output_resolution="input"
    )
    _copy_weights(seg, exact)
    assert np.asarray(exact(x)).shape == (1, *size, classes)
    lowres = create_segmenter(
        backbone, head=head, preset=preset, input_shape=(*size, 3), output_resolution="low"
    )
    _copy_weights(seg, lowres)
    low_logits = np.asarray(lowres(x))
    assert low_logits.shape == (1, *low, classes)
    masker = create_segmenter(
        backbone, head=head, preset=preset, input_shape=(*size, 3), include_argmax=True
    )
    _copy_weights(seg, masker)
    mask = np.asarray(masker(x))
    assert mask.dtype == np.int32 and mask.shape == official.shape[:3]
    np.testing.assert_array_equal(mask, official.argmax(-1))
    if tuple(size) == tuple(official.shape[1:3]):  # divisible: official == input size
        np.testing.assert_allclose(np.asarray(exact(x)), official, atol=1e-5)


def test_dynamic_size_matches_static():
    """A model for any size (PSP pooling and upsampling on dynamic shapes) agrees."""
    kwargs = dict(head="pspnet", preset="ade20k", num_classes=6)
    static = create_segmenter("mobilevitv3_050", input_shape=(70, 90, 3), **kwargs)
    dynamic = create_segmenter("mobilevitv3_050", input_shape=(None, None, 3), **kwargs)
    _copy_weights(static, dynamic)
    x = np.random.RandomState(1).rand(1, 70, 90, 3).astype(np.float32)
    np.testing.assert_allclose(np.asarray(dynamic(x)), np.asarray(static(x)), atol=2e-5)


def test_presets_and_overrides():
    v1 = create_segmenter("mobilevitv3_xxs", input_shape=(64, 64, 3)).segmentation_config
    assert (v1["output_stride"], v1["aspp_channels"], tuple(v1["aspp_rates"])) == (
        16,
        256,
        (6, 12, 18),
    )
    assert (v1["num_classes"], v1["aux_head"], v1["head_style"]) == (21, False, "v1")
    ade = create_segmenter("mobilevitv3_050", preset="ade20k", input_shape=(64, 64, 3))
    cfg = ade.segmentation_config
    assert (cfg["output_stride"], cfg["aspp_channels"], tuple(cfg["aspp_rates"])) == (
        8,
        512,
        (12, 24, 36),
    )
    assert (cfg["num_classes"], cfg["aux_head"], cfg["ignore_index"]) == (150, True, -1)
    keras.backend.clear_session()
    custom = create_segmenter(
        "mobilevitv3_050",
        preset="ade20k",
        num_classes=10,
        output_stride=16,
        aspp_rates=(6, 12, 18),
        aspp_channels=128,
        aux_head=False,
        input_shape=(64, 64, 3),
    )
    cfg = custom.segmentation_config
    assert (cfg["num_classes"], cfg["output_stride"], cfg["aspp_channels"]) == (10, 16, 128)
    assert tuple(cfg["aspp_rates"]) == (6, 12, 18) and not custom.has_aux_head
    assert custom.get_layer("seg_head.aspp.aspp_layer.convs.1.block.conv").dilation_rate == (6, 6)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(head="fcn"), "head must be one of"),
        (dict(preset="cityscapes"), "unknown preset"),
        (dict(output_stride=4), "output_stride must be"),
        (dict(aspp_rates=(6, 12)), "aspp_rates"),
        (dict(num_classes=0), "num_classes"),
        (dict(output_resolution="full"), "output_resolution"),
    ],
)
def test_bad_arguments_raise_clear_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        create_segmenter("mobilevitv3_xxs", input_shape=(64, 64, 3), **kwargs)


# --------------------------------------------------------------------------------------
# Head semantics against PyTorch (the rules of docs/semantics.md, section 5)
# --------------------------------------------------------------------------------------
def test_adaptive_pooling_matches_pytorch():
    torch = pytest.importorskip("torch")
    rng = np.random.RandomState(0)
    for h, w in [(64, 64), (26, 34), (7, 5), (3, 2)]:
        x = rng.randn(2, h, w, 3).astype(np.float32)
        inp = keras.Input((None, None, 3))
        for s in (1, 2, 3, 6):
            ref = torch.nn.functional.adaptive_avg_pool2d(
                torch.from_numpy(x).permute(0, 3, 1, 2), s
            ).permute(0, 2, 3, 1)
            dynamic = keras.Model(inp, AdaptiveAveragePooling2D(s)(inp))
            for got in (AdaptiveAveragePooling2D(s)(x), dynamic(x)):
                np.testing.assert_allclose(np.asarray(got), ref.numpy(), atol=1e-6)


def _randomize(model, seed=0):
    rng = np.random.RandomState(seed)
    for layer in model.layers:
        for var in layer.weights:
            values = rng.randn(*var.shape).astype(np.float32) * 0.2
            if "variance" in var.path:
                values = rng.uniform(0.5, 1.5, var.shape).astype(np.float32)
            elif "gamma" in var.path:
                values = 1.0 + values
            var.assign(values)


def test_pspnet_and_aux_head_match_pytorch_reference():
    """PSP block (adaptive bins, align_corners=True, concat order) and the v2 aux head
    against a functional PyTorch transcription of the official modules."""
    torch = pytest.importorskip("torch")
    functional = torch.nn.functional
    from mvit3_keras.segmentation import heads
    from mvit3_keras.segmentation.pspnet import pyramid_pooling

    c5, c4, classes = 64, 48, 5
    x5 = keras.Input((13, 17, c5))
    x4 = keras.Input((13, 17, c4))
    psp = pyramid_pooling(x5, channels=32, pool_sizes=(1, 2, 3, 6), name="seg_head.psp_layer")
    aux = heads.aux_head(x4, classes, head_style="v2")
    model = keras.Model([x5, x4], [psp, aux])
    _randomize(model)
    sd = {k: torch.from_numpy(np.asarray(v)) for k, v in m.to_cvnets_state_dict(model).items()}

    def conv_bn_relu(t, name, padding=0, norm=True, act=True):
        t = functional.conv2d(
            t, sd[f"{name}.block.conv.weight"], sd.get(f"{name}.block.conv.bias"), padding=padding
        )
        if norm:
            t = functional.batch_norm(
                t,
                sd[f"{name}.block.norm.running_mean"],
                sd[f"{name}.block.norm.running_var"],
                sd[f"{name}.block.norm.weight"],
                sd[f"{name}.block.norm.bias"],
                eps=1e-5,
            )
        return functional.relu(t) if act else t

    rng = np.random.RandomState(3)
    a5 = rng.randn(1, 13, 17, c5).astype(np.float32)
    a4 = rng.randn(1, 13, 17, c4).astype(np.float32)
    t5 = torch.from_numpy(a5).permute(0, 3, 1, 2)
    outs = [t5]
    for i, s in enumerate((1, 2, 3, 6)):
        y = functional.adaptive_avg_pool2d(t5, s)
        y = conv_bn_relu(y, f"seg_head.psp_layer.psp_branches.{i}.1")
        outs.append(functional.interpolate(y, size=(13, 17), mode="bilinear", align_corners=True))
    ref_psp = conv_bn_relu(torch.cat(outs, 1), "seg_head.psp_layer.fusion.0", padding=1)
    t4 = torch.from_numpy(a4).permute(0, 3, 1, 2)
    ref_aux = conv_bn_relu(t4, "seg_head.aux_head.0", padding=1)
    ref_aux = conv_bn_relu(ref_aux, "seg_head.aux_head.2", norm=False, act=False)

    got_psp, got_aux = (np.asarray(t) for t in model([a5, a4], training=False))
    np.testing.assert_allclose(got_psp, ref_psp.permute(0, 2, 3, 1).numpy(), atol=1e-4)
    np.testing.assert_allclose(got_aux, ref_aux.permute(0, 2, 3, 1).numpy(), atol=1e-4)


def test_cross_entropy_matches_pytorch():
    torch = pytest.importorskip("torch")
    rng = np.random.RandomState(0)
    logits = rng.randn(2, 5, 7, 4).astype(np.float32)  # low resolution
    labels = rng.randint(0, 4, (2, 10, 13)).astype(np.int32)
    labels[0, :3] = 255
    got = float(SegmentationCrossEntropy(ignore_index=255)(labels, logits))
    pred = torch.nn.functional.interpolate(
        torch.from_numpy(logits).permute(0, 3, 1, 2),
        size=(10, 13),
        mode="bilinear",
        align_corners=True,
    )
    ref = torch.nn.functional.cross_entropy(pred, torch.from_numpy(labels).long(), ignore_index=255)
    assert abs(got - float(ref)) < 1e-5


# --------------------------------------------------------------------------------------
# Training, saving, checkpoints, export
# --------------------------------------------------------------------------------------
def test_fit_step_with_aux_loss():
    seg = create_segmenter(
        "mobilevitv3_050", preset="ade20k", num_classes=5, input_shape=(64, 64, 3)
    )
    loss = seg.official_loss()
    assert loss.ignore_index == -1  # ADE20K
    seg.compile(optimizer=keras.optimizers.SGD(0.01), loss=loss, jit_compile=False)
    rng = np.random.RandomState(0)
    x = rng.rand(2, 64, 64, 3).astype(np.float32)
    y = rng.randint(-1, 5, (2, 64, 64)).astype(np.int32)

    train_out = seg(x, training=True)
    assert set(train_out) == {"logits", "aux_logits"}
    assert train_out["aux_logits"].shape == (2, 8, 8, 5)  # layer_4 at output stride 8
    expected = float(loss(y, train_out["logits"])) + 0.4 * float(loss(y, train_out["aux_logits"]))
    assert abs(float(seg.compute_loss(x, y, train_out)) - expected) < 1e-5

    aux_kernel = seg.get_layer("seg_head.aux_head.0.block.conv").kernel
    before = np.asarray(aux_kernel).copy()
    history = seg.fit(x, y, epochs=1, batch_size=2, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    assert not np.allclose(before, np.asarray(aux_kernel))  # the aux loss trains the aux head
    assert np.asarray(seg.predict(x, verbose=0)).shape == (2, 64, 64, 5)


def test_keras_round_trip(tmp_path):
    seg = create_segmenter(
        "mobilevitv3_xxs",
        num_classes=4,
        aux_head=True,
        include_argmax=True,
        input_shape=(64, 80, 3),
    )
    assert "seg_head.aux_head.aux_projection.block.conv" in [layer.name for layer in seg.layers]
    loaded, record = save_and_reload(seg, tmp_path / "seg.keras")
    assert type(loaded).__name__ == "Segmenter"
    x = np.random.RandomState(0).rand(1, 64, 80, 3).astype(np.float32)
    np.testing.assert_array_equal(np.asarray(loaded(x)), np.asarray(seg(x)))
    assert loaded.segmentation_config == seg.segmentation_config
    assert set(loaded(x, training=True)) == {"logits", "aux_logits"}
    assert (record.variant, record.task, record.head, record.preset) == (
        "mobilevitv3_xxs",
        "segmentation",
        "deeplabv3",
        "pascal_voc",
    )
    assert (record.num_classes, record.input_shape) == (4, (64, 80, 3))
    assert record.options["aux_head"] and record.options["include_argmax"]


def test_pspnet_record_round_trip_rebuild_and_older_saves(tmp_path):
    seg = create_segmenter(
        "mobilevitv3_050", head="pspnet", preset="ade20k", input_shape=(64, 64, 3)
    )
    path = tmp_path / "psp.keras"
    seg.save(path)
    record = m.model_record(keras.models.load_model(path))
    assert record == m.model_record(seg)
    assert (record.head, record.preset, record.num_classes) == ("pspnet", "ade20k", 150)
    assert record.options["output_stride"] == 8 and record.options["psp_pool_sizes"] == [1, 2, 3, 6]
    rebuilt = m.rebuild_model(record)
    assert type(rebuilt) is Segmenter and m.model_record(rebuilt) == record
    assert rebuilt.segmentation_config == seg.segmentation_config
    # A Segmenter saved before records existed: the record comes from its head config.
    config = seg.get_config()
    del config["model_record"]
    assert m.model_record(Segmenter.from_config(config)) == record


def test_load_classification_checkpoint_into_backbone():
    cls_model = m.create_model("mobilevitv3_xxs", input_shape=(64, 64, 3))
    cls_state = m.to_cvnets_state_dict(cls_model)
    seg = create_segmenter("mobilevitv3_xxs", input_shape=(64, 64, 3))
    report = m.load_backbone_weights(seg, cls_state)
    assert report["loaded"] == len(
        [
            k
            for k in m.to_cvnets_state_dict(seg)
            if k.startswith("encoder.") and not k.endswith("num_batches_tracked")
        ]
    )
    assert report["skipped"] and all(
        k.startswith(("conv_1x1_exp.", "classifier.")) for k in report["skipped"]
    )
    assert report["head_not_loaded"] and all(
        k.startswith("seg_head.") for k in report["head_not_loaded"]
    )
    np.testing.assert_array_equal(
        np.asarray(seg.get_layer("encoder.layer_3.1.fusion.block.conv").kernel),
        np.asarray(cls_model.get_layer("layer_3.1.fusion.block.conv").kernel),
    )
    # The generic loader with a key prefix reports the same split.
    generic = m.load_cvnets_weights(seg, cls_state, key_prefix="encoder.", strict=False)
    assert all(k.startswith("seg_head.") for k in generic["missing"])
    assert all("conv_1x1_exp" in k or "classifier" in k for k in generic["unexpected"])

    other = create_segmenter("mobilevitv3_xs", input_shape=(64, 64, 3))
    before = [np.asarray(w).copy() for w in other.weights]
    with pytest.raises(m.CheckpointMismatchError, match="backbone does not match"):
        m.load_backbone_weights(other, cls_state)
    assert all(np.array_equal(a, np.asarray(b)) for a, b in zip(before, other.weights))


def test_tflite_conversion_builtin_ops_only():
    """Static batch-1 graph with PSP pooling, align_corners resizes and argmax."""
    import tensorflow as tf

    interpreter_mod = pytest.importorskip("ai_edge_litert.interpreter")

    seg = create_segmenter(
        "mobilevitv3_050",
        head="pspnet",
        preset="ade20k",
        num_classes=6,
        include_argmax=True,
        output_resolution="input",
        input_shape=(66, 90, 3),
    )
    spec = tf.TensorSpec((1, 66, 90, 3), tf.float32)
    fn = tf.function(lambda image: seg(image, training=False), input_signature=[spec])
    converter = tf.lite.TFLiteConverter.from_concrete_functions(
        [frozen_function(fn.get_concrete_function())]
    )
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    interpreter = interpreter_mod.Interpreter(model_content=converter.convert())
    interpreter.allocate_tensors()
    x = np.random.RandomState(0).rand(1, 66, 90, 3).astype(np.float32)
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], x)
    interpreter.invoke()
    mask = interpreter.get_tensor(interpreter.get_output_details()[0]["index"])
    assert mask.shape == (1, 66, 90)
    assert (mask == np.asarray(seg(x))).mean() > 0.999
    ops = {op["op_name"] for op in interpreter_ops(interpreter)}
    assert {"AVERAGE_POOL_2D", "RESIZE_BILINEAR", "ARG_MAX"} <= ops
    assert not any(op.startswith("Flex") for op in ops)
