"""Checkpoint conversion: formats, wrappers, BGR->RGB, strict errors, round trips."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import load_parity

import mvit3_keras as m
from mvit3_keras.convert import CheckpointMismatchError


@pytest.fixture(scope="module")
def xxs_state(reference):
    data = load_parity(reference, "cls_xx_small_v3")
    return {k: v for k, v in data.items() if not k.startswith("ref__")}


@pytest.fixture(scope="module")
def xxs_input(reference):
    data = load_parity(reference, "cls_xx_small_v3")
    return data["ref__input0"].astype(np.float32), data["ref__output0"]


def _predict(model, x):
    return model.predict(x, verbose=0)


@pytest.mark.parametrize("wrapper", ["plain", "state_dict", "model", "module_prefix"])
def test_pytorch_checkpoint_formats(wrapper, xxs_state, xxs_input, tmp_path):
    torch = pytest.importorskip("torch")
    tensors = {k: torch.from_numpy(np.asarray(v)) for k, v in xxs_state.items()}
    if wrapper == "state_dict":
        obj = {"state_dict": tensors, "epoch": 300}
    elif wrapper == "model":
        obj = {"model": tensors, "optimizer": {}}
    elif wrapper == "module_prefix":
        obj = {f"module.{k}": v for k, v in tensors.items()}
    else:
        obj = tensors
    path = tmp_path / "checkpoint_ema_best.pt"
    torch.save(obj, path)
    model = m.create_model("mobilevitv3_xxs")
    report = m.load_cvnets_weights(model, str(path), rgb_input=False)
    assert report["loaded"] == 279 and not report["missing"] and not report["unexpected"]
    x, ref = xxs_input
    np.testing.assert_allclose(_predict(model, x), ref, atol=2e-4 * ref.std())


def test_npz_and_mapping_sources(xxs_state, xxs_input, tmp_path):
    path = tmp_path / "weights.npz"
    np.savez(path, **xxs_state)
    x, ref = xxs_input
    for source in (str(path), xxs_state):
        model = m.create_model("mobilevitv3_xxs")
        m.load_cvnets_weights(model, source, rgb_input=False)
        np.testing.assert_allclose(_predict(model, x), ref, atol=2e-4 * ref.std())


def test_rgb_input_flips_first_conv_for_v1_family(xxs_state, xxs_input):
    """v1-family checkpoints are BGR-trained: rgb_input=True takes RGB, same logits."""
    x_bgr, ref = xxs_input
    model = m.create_model("mobilevitv3_xxs")
    report = m.load_cvnets_weights(model, xxs_state, rgb_input=True)
    assert report["bgr_to_rgb"]
    np.testing.assert_allclose(_predict(model, x_bgr[..., ::-1]), ref, atol=2e-4 * ref.std())
    # The inverse conversion restores the official (BGR) first conv exactly.
    back = m.to_cvnets_state_dict(model, rgb_input=True)
    np.testing.assert_array_equal(
        back["conv_1.block.conv.weight"], xxs_state["conv_1.block.conv.weight"]
    )


def test_v2_family_is_rgb_already(reference):
    data = load_parity(reference, "cls_w0.5")
    model = m.create_model("mobilevitv3_050")
    report = m.load_cvnets_weights(model, data, rgb_input=True)
    assert not report["bgr_to_rgb"]


def test_round_trip_is_exact():
    a = m.create_model("mobilevit_xxs", num_classes=10, input_shape=(64, 64, 3))
    b = m.create_model("mobilevit_xxs", num_classes=10, input_shape=(64, 64, 3))
    m.load_cvnets_weights(b, m.to_cvnets_state_dict(a))
    for wa, wb in zip(a.weights, b.weights):
        np.testing.assert_array_equal(wa.numpy(), wb.numpy())


def _mismatch_message(variant, state) -> str:
    """The :class:`CheckpointMismatchError` text of loading ``state`` into ``variant``."""
    model = m.create_model(variant)
    with pytest.raises(CheckpointMismatchError) as err:
        m.load_cvnets_weights(model, state)
    return str(err.value)


def test_missing_key_error_lists_it(xxs_state):
    state = dict(xxs_state)
    del state["layer_4.1.global_rep.2.pre_norm_ffn.1.weight"]
    text = _mismatch_message("mobilevitv3_xxs", state)
    assert "1 missing" in text and "layer_4.1.global_rep.2.pre_norm_ffn.1.weight" in text
    assert "strict=False" in text


def test_wrong_shape_error_lists_both_shapes(xxs_state):
    state = dict(xxs_state)
    state["conv_1x1_exp.block.conv.weight"] = np.zeros((512, 64, 1, 1), np.float32)
    with pytest.raises(
        CheckpointMismatchError,
        match=r"conv_1x1_exp.block.conv.weight: checkpoint \[512, 64, 1, 1\] vs model \[512, 128, 1, 1\]",
    ):
        m.load_cvnets_weights(m.create_model("mobilevitv3_xxs"), state)


def test_wrong_variant_error_names_the_right_one(xxs_state):
    text = _mismatch_message("mobilevitv3_xs", xxs_state)
    assert "looks like 'mobilevitv3_xxs'" in text and "num_classes=1000" in text
    assert "shape mismatches" in text


def test_wrong_num_classes_error(xxs_state):
    model = m.create_model("mobilevitv3_xxs", num_classes=10)
    with pytest.raises(
        CheckpointMismatchError,
        match=r"classifier.fc.weight: checkpoint \[1000, 512\] vs model \[10, 512\]",
    ):
        m.load_cvnets_weights(model, xxs_state)


def test_non_strict_loads_the_rest(xxs_state):
    model = m.create_model("mobilevitv3_xxs", num_classes=10)
    report = m.load_cvnets_weights(model, xxs_state, strict=False)
    assert report["loaded"] == 277
    assert [s.split(":")[0] for s in report["mismatched"]] == [
        "classifier.fc.weight",
        "classifier.fc.bias",
    ]


def test_unexpected_keys_are_reported(xxs_state):
    state = dict(xxs_state)
    state["extra_head.weight"] = np.zeros(3, np.float32)
    with pytest.raises(CheckpointMismatchError, match="(?s)1 unexpected.*extra_head.weight"):
        m.load_cvnets_weights(m.create_model("mobilevitv3_xxs"), state)


def test_corrupted_and_unsupported_files(tmp_path):
    pytest.importorskip("torch")
    bad = tmp_path / "broken.pt"
    bad.write_bytes(b"not a checkpoint")
    model = m.create_model("mobilevitv3_xxs")
    with pytest.raises(ValueError, match="could not read PyTorch checkpoint"):
        m.load_cvnets_weights(model, str(bad))
    gz = tmp_path / "weights.bin.gz"
    gz.write_bytes(b"")
    with pytest.raises(ValueError, match="unsupported checkpoint format"):
        m.load_cvnets_weights(model, str(gz))
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        m.load_cvnets_weights(model, str(tmp_path / "nope.pt"))
