"""``mvit3 convert-weights`` / ``list`` / ``macs`` and loading a saved model in a new process."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import load_parity

from mvit3_keras.cli import main
from mvit3_keras.reference import write_parity_checkpoint


def _run(*args, cwd=None):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    return subprocess.run(
        [sys.executable, "-m", "mvit3_keras.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=600,
    )


@pytest.fixture(scope="module")
def parity_npz(reference, tmp_path_factory):
    """The reference checkpoint as an official-layout .npz file."""
    path = tmp_path_factory.mktemp("checkpoint") / "cls_xx_small_v3.npz"
    return write_parity_checkpoint("cls_xx_small_v3", path, reference)


def test_convert_to_keras_then_load_in_new_process(parity_npz, reference, tmp_path):
    out = tmp_path / "xxs.keras"
    assert main(["convert-weights", "mobilevitv3_xxs", parity_npz, str(out), "--bgr-input"]) == 0
    assert out.is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["xxs.keras"], "no temporary file left behind"
    data = load_parity(reference, "cls_xx_small_v3")
    np.save(tmp_path / "x.npy", data["ref__input0"].astype(np.float32))
    script = (
        "import sys, numpy as np, keras, mvit3_keras\n"
        "model = keras.models.load_model(sys.argv[1])\n"
        "np.save(sys.argv[3], model.predict(np.load(sys.argv[2]), verbose=0))\n"
    )
    res = subprocess.run(
        [sys.executable, "-c", script, str(out), str(tmp_path / "x.npy"), str(tmp_path / "y.npy")],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    ref = data["ref__output0"]
    assert np.abs(np.load(tmp_path / "y.npy") - ref).max() <= 2e-4 * ref.std()


def test_convert_to_weights_h5(parity_npz, tmp_path, capsys):
    out = tmp_path / "xxs.weights.h5"
    assert main(["convert-weights", "mobilevitv3_xxs", parity_npz, str(out)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["loaded_tensors"] == 279 and report["input_channel_order"] == "rgb"
    import mvit3_keras as m

    model = m.create_model("mobilevitv3_xxs")
    model.load_weights(out)


def test_convert_wrong_variant_is_a_clear_error(parity_npz, tmp_path):
    res = _run("convert-weights", "mobilevitv3_s", parity_npz, str(tmp_path / "s.keras"))
    assert res.returncode == 2
    assert "is a 'mobilevitv3_xxs' checkpoint" in res.stderr
    assert not (tmp_path / "s.keras").exists()


def test_convert_bad_output_extension(parity_npz, tmp_path, capsys):
    assert main(["convert-weights", "mobilevitv3_xxs", parity_npz, str(tmp_path / "x.pt")]) == 2
    assert "must end with .keras" in capsys.readouterr().err


def test_convert_unknown_variant(parity_npz, tmp_path, capsys):
    assert main(["convert-weights", "mobilevitv4", parity_npz, str(tmp_path / "x.keras")]) == 2
    assert "Unknown model variant 'mobilevitv4'" in capsys.readouterr().err


def test_list_and_macs(capsys):
    assert main(["list", "--pattern", "mobilevitv3_0*"]) == 0
    out = capsys.readouterr().out
    assert "mobilevitv3_050" in out and "1,429,985" in out and "481.3" in out
    assert main(["macs", "mobilevitv3_s"]) == 0
    assert "1841.391M (official profiler)" in capsys.readouterr().out
