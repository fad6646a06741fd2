"""The int8 and app steps of the README demo (``mvit3_examples.demo``), after a quick
training run (slow: ~6 min)."""

from __future__ import annotations

import json
import os

import pytest


@pytest.mark.slow(minutes=12)
def test_demo_quantization_and_app_steps(tmp_path):
    from mvit3_examples.demo.app import step_app
    from mvit3_examples.demo.quantize import step_quantize
    from mvit3_examples.demo.train import TRAIN_TITLE, step_train

    context = {"output": str(tmp_path), "quick": True, "results": {}}
    context["results"][TRAIN_TITLE] = step_train(context)
    result = step_quantize(context)
    names = [row["name"] for row in result["rows"]]
    assert names[0] == "fp32" and any(n.startswith("QAT") for n in names)
    for row in result["rows"]:
        assert os.path.isfile(row["file"]) and row["median_ms"] > 0
        assert 0.0 <= row["edgetpu_op_share"] <= 1.0
    fp32 = result["rows"][0]
    assert abs(fp32["delta_top1"]) < 1e-9 and fp32["agreement"] == 1.0
    ptq = next(r for r in result["rows"] if r["name"].startswith("PTQ int8 (all"))
    assert ptq["delta_top1"] >= -0.02  # quick training: a looser bound than the full demo
    saved = json.loads((tmp_path / "quantization" / "quantization_results.json").read_text())
    assert saved["checks"] == result["checks"]
    assert (tmp_path / "quantization" / "quantization_table.txt").is_file()
    app = step_app(context)  # MediaPipe Tasks runs the int8 file with its metadata
    assert app["ran"] and os.path.isfile(app["file"]) and app["num_images"] > 300
    assert app["agreement_with_keras"] >= 0.97, app  # int8 vs float top-1 on real digits
    assert app["mediapipe_top1"] >= app["keras_top1"] - 0.02, app
