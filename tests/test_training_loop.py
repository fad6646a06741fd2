"""The training loop in-process: outputs, evaluation, --init, segmentation, bad input."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from training import callbacks as cb  # noqa: E402
from training.loop import RunConflictError, TrainConfig, evaluate, train  # noqa: E402

TINY = ["runtime.max_val_examples=32", "runtime.verbose=2", "runtime.tensorboard=false"]


def _config(out, **kw):
    base = dict(
        model="mobilevitv3_xxs",
        dataset="demo",
        image_size=32,
        epochs=1,
        batch_size=8,
        output=str(out),
        overrides=TINY + ["runtime.steps_per_epoch=2"],
    )
    base.update(kw)
    return TrainConfig(**base)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny") / "run"
    summary = train(_config(out))
    return out, summary


def test_run_outputs(tiny_run):
    out, s = tiny_run
    for name in (
        "run.json",
        "summary.json",
        "history.csv",
        "final.keras",
        "best.keras",
        "best.keras.json",
        "training_curves.png",
        "backup/state.json",
    ):
        assert (out / name).exists(), name
    assert s["status"] == "complete" and s["epochs_run"] == 1 and s["weights_evaluated"] == "ema"
    assert set(s["final"]) >= {"loss", "top1", "top5"} and s["wall_time_s"] > 0
    model = keras.models.load_model(out / "final.keras")  # an inference model, no optimizer
    assert model.input_shape == (None, 32, 32, 3) and model.output_shape == (None, 10)


def test_evaluate_ema_raw_best(tiny_run):
    out, s = tiny_run
    ema = evaluate(str(out), weights="ema")
    assert ema["top1"] == pytest.approx(s["final"]["top1"], abs=1e-6)
    raw = evaluate(str(out), weights="raw")
    best = evaluate(str(out), weights="best")
    assert 0 <= raw["top1"] <= 1 and 0 <= best["top1"] <= 1
    model_file = evaluate(str(out / "final.keras"), dataset="demo", limit=32)
    assert model_file["top1"] == pytest.approx(ema["top1"], abs=1e-6)


def test_evaluate_command(tiny_run, capsys):
    from mvit3_keras.cli import main

    out, _ = tiny_run
    assert main(["evaluate", str(out), "--weights", "raw", "--json"]) == 0
    assert '"top1"' in capsys.readouterr().out


def test_same_output_with_another_config_is_refused(tiny_run):
    out, _ = tiny_run
    before = sorted(os.listdir(out))
    with pytest.raises(RunConflictError, match="optim.weight_decay.*new --output"):
        train(
            _config(out, overrides=TINY + ["runtime.steps_per_epoch=2", "optim.weight_decay=0.1"])
        )
    assert sorted(os.listdir(out)) == before


def test_init_with_a_1000_class_checkpoint_names_the_fix(tmp_path):
    import mvit3_keras as m

    big = m.create_model("mobilevitv3_xxs", num_classes=1000, input_shape=(32, 32, 3))
    npz_big = tmp_path / "official_1000.npz"
    np.savez(npz_big, **m.to_cvnets_state_dict(big))
    with pytest.raises(ValueError, match="1000 classes but the dataset has 10.*init_reset_head"):
        train(_config(tmp_path / "ft2", init=str(npz_big)))
    assert not (tmp_path / "ft2" / "backup").exists()  # nothing trained, nothing written


@pytest.mark.slow
def test_init_from_official_layout_checkpoint(tiny_run, tmp_path):
    import mvit3_keras as m

    out, _ = tiny_run
    model = keras.models.load_model(out / "final.keras")
    npz = tmp_path / "official_10.npz"
    np.savez(npz, **m.to_cvnets_state_dict(model))
    s = train(_config(tmp_path / "ft", init=str(npz)))
    assert s["init_report"]["loaded"] > 100 and s["init_report"]["missing"] == 0
    big = m.create_model("mobilevitv3_xxs", num_classes=1000, input_shape=(32, 32, 3))
    npz_big = tmp_path / "official_1000.npz"
    np.savez(npz_big, **m.to_cvnets_state_dict(big))
    s = train(
        _config(
            tmp_path / "ft3",
            init=str(npz_big),
            overrides=TINY + ["runtime.steps_per_epoch=2", "runtime.init_reset_head=true"],
        )
    )
    assert s["status"] == "complete"


@pytest.mark.slow
def test_demo_digits_accuracy(tmp_path):
    """The README demo's training: >= 95 % validation top-1 on the real digits."""
    s = train(
        TrainConfig(
            model="mobilevitv3_xxs",
            dataset="demo",
            recipe="demo",
            image_size=32,
            output=str(tmp_path / "demo"),
            overrides=["runtime.verbose=2"],
        )
    )
    assert s["final"]["top1"] >= 0.95, s["final"]


@pytest.mark.slow
def test_segmentation_learns_shapes(tmp_path):
    s = train(
        TrainConfig(
            model="mobilevitv3_xxs",
            dataset="demo",
            task="segmentation",
            output=str(tmp_path / "seg"),
            overrides=["runtime.verbose=2"],
        )
    )
    assert s["final"]["miou"] >= 0.7, s["final"]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(model="mobilevitv3_xxxs"), "Unknown model variant 'mobilevitv3_xxxs'"),
        (dict(dataset="imagenet2021"), "Unknown dataset 'imagenet2021'"),
        (dict(recipe="mobilevitv3_xxs_in1"), "Unknown recipe 'mobilevitv3_xxs_in1'"),
        (dict(image_size=16), "too small.*at least 32"),
        (dict(task="segmentation", image_size=48), "multiple of 32"),
        (dict(recipe="deeplabv3_voc_mobilevitv3_xxs"), "segmentation recipe"),
        (dict(init="/no/such/file.pt"), "not found"),
    ],
)
def test_bad_input_errors(tmp_path, kwargs, match):
    with pytest.raises((ValueError, FileNotFoundError), match=match):
        train(_config(tmp_path / "bad", **kwargs))


def test_corrupted_backup_falls_back_then_errors(tmp_path):
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    model.compile(optimizer=keras.optimizers.AdamW(use_ema=True), loss="mse")
    backup = tmp_path / "backup"
    callback = cb.AtomicBackupAndRestore(str(backup), keep=2)
    callback.set_model(model)
    for epoch in (1, 2):
        callback._current_epoch = epoch
        callback._save_model()
    state = json.loads((backup / "state.json").read_text())
    assert state["epoch"] == 2 and state["previous"][0]["epoch"] == 1
    (backup / "epoch-0002.weights.h5").write_bytes(b"garbage, as after a disk failure")
    restored = cb.AtomicBackupAndRestore(str(backup))
    restored.set_model(model)
    restored.on_train_begin()
    assert restored.restored_epoch == 1  # fell back to the previous backup
    (backup / "epoch-0001.weights.h5").write_bytes(b"garbage")
    with pytest.raises(cb.CorruptCheckpointError, match="Nothing was deleted.*mv "):
        restored.on_train_begin()
    assert (backup / "epoch-0001.weights.h5").exists()  # nothing already trained is deleted
    (backup / "state.json").write_text("{not json")
    with pytest.raises(cb.CorruptCheckpointError, match="unreadable"):
        cb.read_backup_state(str(backup))


def test_csv_repair_drops_partial_and_rerun_rows(tmp_path):
    path = tmp_path / "history.csv"
    path.write_text("epoch,loss\n0,1.0\n1,0.9\n2,0.8\n3,0.")
    cb.repair_csv(str(path), upto_epoch=2)
    assert path.read_text() == "epoch,loss\n0,1.0\n1,0.9\n"


def test_segmentation_smoke_aux_head_and_pspnet(tmp_path):
    s = train(
        _config(
            tmp_path / "seg",
            task="segmentation",
            dataset="demo",
            image_size=64,
            head="pspnet",
            batch_size=4,
            model="mobilevitv3_050",
            overrides=TINY
            + [
                "runtime.steps_per_epoch=1",
                "model.segmentation.use_aux_head=true",
                "model.segmentation.output_stride=16",
                'model.segmentation.pspnet={"psp_out_channels": 32}',
            ],
        )
    )
    assert s["status"] == "complete" and 0.0 <= s["final"]["miou"] <= 1.0
    model = keras.models.load_model(tmp_path / "seg" / "final.keras")
    assert model.output_shape == (None, 64, 64, 4)  # inference model: logits only, no aux
