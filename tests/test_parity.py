"""Parity with the official PyTorch code on the shared reference files.

Rule (reference README): max |logit diff| <= 2e-4 x std(reference logits) for
every input, and every stored intermediate feature within 1e-4.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import assert_close_to_reference, load_parity

import mvit3_keras as m
from mvit3_keras.introspect import official_features_model

CASES = {
    "cls_xx_small_v3": "mobilevitv3_xxs",
    "cls_w0.5": "mobilevitv3_050",
    "cls_mobilevit_xx_small": "mobilevit_xxs",
    "cls_mobilevit_v2_w0.5": "mobilevitv2_050",
}


@pytest.mark.parametrize("stem", sorted(CASES))
def test_classification_parity(reference, stem):
    data = load_parity(reference, stem)
    inputs = sorted(k for k in data if k.startswith("ref__input"))
    assert len(inputs) == 3
    for key in inputs:
        i = key[len("ref__input") :]
        x = data[key].astype(np.float32)
        model = m.create_model(CASES[stem], input_shape=x.shape[1:])
        report = m.load_cvnets_weights(model, data, rgb_input=False)
        assert not report["bgr_to_rgb"]
        logits = model.predict(x, verbose=0)
        assert_close_to_reference(logits, data[f"ref__output{i}"], what=f"{stem} input {i}")

        if i == "0":
            prefix = "ref__feat0__"
            modules = [k[len(prefix) :] for k in data if k.startswith(prefix)]
            assert modules, "parity file stores intermediate features"
            feats = official_features_model(model, modules).predict(x[:1], verbose=0)
            for module in modules:
                expected = data[prefix + module]
                got = data.like_stored(prefix + module, feats[module])
                assert got.shape == expected.shape, module
                err = float(np.abs(got - expected).max())
                assert err <= 1e-4, f"{stem} {module}: max |diff| {err:.2e} > 1e-4"


@pytest.mark.parametrize("stem", ["cls_xx_small_v3", "cls_w0.5"])  # v3 and the v2 family
def test_dynamic_size_model_matches_static(reference, stem):
    """A model built for any size (None, None, 3) gives the same logits."""
    data = load_parity(reference, stem)
    dynamic = m.create_model(CASES[stem], input_shape=(None, None, 3))
    m.load_cvnets_weights(dynamic, data, rgb_input=False)
    for i in range(3):
        x = data[f"ref__input{i}"].astype(np.float32)
        assert_close_to_reference(dynamic.predict(x, verbose=0), data[f"ref__output{i}"])
