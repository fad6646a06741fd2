"""The training loop in-process: outputs, evaluation, --init, segmentation, bad input."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from training import callbacks as cb  # noqa: E402
from training.loop import RunConflictError, TrainConfig, evaluate, train  # noqa: E402

TINY = ["runtime.max_val_examples=32", "runtime.tensorboard=false"]
# the tests of the module's tiny training run (``tiny_run``) share one xdist worker, so
# the run is made once, not on each worker
on_tiny_run_worker = pytest.mark.xdist_group("tiny_run")


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
    import contextlib
    import io

    out = tmp_path_factory.mktemp("tiny") / "run"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):  # the default output: one line per epoch
        summary = train(_config(out, epochs=2))
    summary["printed"] = printed.getvalue()
    return out, summary


@on_tiny_run_worker
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
    assert s["status"] == "complete" and s["epochs_run"] == 2 and s["weights_evaluated"] == "ema"
    assert set(s["final"]) >= {"loss", "top1", "top5"} and s["wall_time_s"] > 0
    assert set(s["final_raw"]) >= {"loss", "top1", "top5"}  # the raw weights, evaluated too
    assert s["best"]["weights"] in ("ema", "raw") and s["best"]["epoch"] in (1, 2)
    assert s["best"]["value"] == max(s["best"]["candidates"].values())
    assert s["ema"]["warmup"] == {"gamma": 1.0, "power": pytest.approx(2 / 3)}
    # 2 epochs x 2 steps: the last update is step 3: min(0.99, 1 - 4 ** (-2/3))
    assert s["ema"]["decay_at_last_step"] == pytest.approx(1 - 4 ** (-2 / 3), abs=1e-6)
    rows = cb.read_csv(str(out / "history.csv"))
    assert {"val_top1", "val_top1_raw", "ema_decay", "learning_rate"} <= set(rows[-1])
    assert rows[-1]["val_top1"] == pytest.approx(s["final"]["top1"])
    assert rows[-1]["val_top1_raw"] == pytest.approx(s["final_raw"]["top1"])
    model = keras.models.load_model(out / "final.keras")  # an inference model, no optimizer
    assert model.input_shape == (None, 32, 32, 3) and model.output_shape == (None, 10)


@on_tiny_run_worker
def test_default_output_is_one_line_per_epoch(tiny_run):
    printed = tiny_run[1]["printed"].splitlines()
    epochs = [line for line in printed if line.startswith("epoch ")]
    assert [line.split()[1] for line in epochs] == ["1/2", "2/2"], printed
    assert all("val top1 ema" in line and " raw " in line and " lr " in line for line in epochs)
    assert not any("/step" in line for line in printed)  # no Keras progress bar
    assert any(line.startswith("best val top1 (best.keras)") for line in printed)


@on_tiny_run_worker
def test_evaluate_ema_raw_best(tiny_run):
    out, s = tiny_run
    ema = evaluate(str(out), weights="ema")
    assert ema["top1"] == pytest.approx(s["final"]["top1"], abs=1e-6)
    raw = evaluate(str(out), weights="raw")
    assert raw["top1"] == pytest.approx(s["final_raw"]["top1"], abs=1e-6)
    best = evaluate(str(out), weights="best")
    if s["best"]["epoch"] == s["epochs_run"]:  # the best is one of the final weights
        assert best["top1"] == pytest.approx(s["best"]["value"], abs=1e-6)
    model_file = evaluate(str(out / "final.keras"), dataset="demo", limit=32)
    assert model_file["top1"] == pytest.approx(ema["top1"], abs=1e-6)


@on_tiny_run_worker
def test_evaluate_command(tiny_run, capsys):
    from mvit3_cli import main

    out, _ = tiny_run
    assert main(["evaluate", str(out), "--weights", "raw", "--json"]) == 0
    captured = capsys.readouterr()  # --json alone: stdout is the JSON document only
    assert 0.0 <= json.loads(captured.out)["top1"] <= 1.0
    assert "evaluation of" in captured.err


@on_tiny_run_worker
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
@on_tiny_run_worker
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


@pytest.mark.slow(minutes=12)
@pytest.mark.parametrize(
    "task_args, metric, minimum",
    [
        # The README demo's training: >= 95 % validation top-1 on the real digits.
        pytest.param(dict(recipe="demo", image_size=32), "top1", 0.95, id="digits_accuracy"),
        pytest.param(dict(task="segmentation"), "miou", 0.7, id="segmentation_learns_shapes"),
    ],
)
def test_demo_training_reaches(tmp_path, task_args, metric, minimum):
    s = train(
        TrainConfig(
            model="mobilevitv3_xxs",
            dataset="demo",
            output=str(tmp_path / "demo"),
            overrides=["runtime.verbose=2"],
            **task_args,
        )
    )
    assert s["final"][metric] >= minimum, s["final"]


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
        (dict(task="detection"), "unknown task 'detection'.*classification, segmentation"),
        (dict(head="pspnet"), "--head is for --task segmentation"),
    ],
)
def test_bad_input_errors(tmp_path, kwargs, match):
    with pytest.raises((ValueError, FileNotFoundError), match=match):
        train(_config(tmp_path / "bad", **kwargs))


def test_corrupted_backup_falls_back_then_errors(tmp_path):
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    model.compile(optimizer=keras.optimizers.AdamW(use_ema=True), loss="mse")
    model.optimizer.build(model.trainable_variables)  # as during training
    backup = tmp_path / "backup"
    callback = cb.AtomicBackupAndRestore(str(backup), keep=2)
    callback.set_model(model)
    for epoch in (0, 1):
        callback.on_epoch_end(epoch)  # the backups after epochs 1 and 2
    state = json.loads((backup / "state.json").read_text())
    assert state["epoch"] == 2 and state["previous"][0]["epoch"] == 1
    (backup / "epoch-0002.weights.h5").write_bytes(b"garbage, as after a disk failure")
    restored = cb.AtomicBackupAndRestore(str(backup))
    restored.set_model(model)
    assert restored.restore() == 1  # fell back to the previous backup
    (backup / "epoch-0001.weights.h5").write_bytes(b"garbage")
    with pytest.raises(cb.CorruptCheckpointError, match="Nothing was deleted.*mv "):
        restored.restore()
    assert (backup / "epoch-0001.weights.h5").exists()  # nothing already trained is deleted
    (backup / "state.json").write_text("{not json")
    with pytest.raises(cb.CorruptCheckpointError, match="unreadable"):
        cb.read_backup_state(str(backup))


def _ema_model():
    from training import optimizers

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3), keras.layers.Dense(2)])
    opt = optimizers.LRMultiplierAdamW(
        learning_rate=0.05, use_ema=True, ema_momentum=0.99, ema_warmup={"gamma": 1, "power": 2 / 3}
    )
    model.compile(optimizer=opt, loss="mse", metrics=["mae"])
    x = np.random.default_rng(0).normal(size=(16, 4)).astype("float32")
    model.fit(x, x[:, :2], batch_size=4, epochs=2, verbose=0, shuffle=False)
    model.train_on_batch(x[:4], x[:4, :2])  # fit ends with the EMA weights in the model
    return model, x


def test_ema_swap_is_exact_and_export_picks_weights():
    from mvit3_keras import compat

    model, _ = _ema_model()
    raw = [w.copy() for w in model.get_weights()]
    pairs = compat.ema_pairs(model.optimizer)
    averages = [keras.ops.convert_to_numpy(a) for _, a in pairs]
    assert not all(
        np.array_equal(keras.ops.convert_to_numpy(v), a) for (v, _), a in zip(pairs, averages)
    )
    with cb.ema_weights(model):
        for (var, _), avg in zip(pairs, averages):
            np.testing.assert_array_equal(keras.ops.convert_to_numpy(var), avg)
    for before, after in zip(raw, model.get_weights()):
        np.testing.assert_array_equal(before, after)  # bit-exact, unlike SwapEMAWeights
    ema_values = cb.weights_values(model, "ema")
    assert len(ema_values) == len(raw)
    np.testing.assert_array_equal(ema_values[0], averages[0])
    assert all(np.array_equal(a, b) for a, b in zip(cb.weights_values(model, "raw"), raw))


def test_ema_evaluation_and_best_checkpoint_keep_the_better_weights(tmp_path):
    model, x = _ema_model()
    import tensorflow as tf

    ds = tf.data.Dataset.from_tensor_slices((x, x[:, :2])).batch(8)
    logs = {"loss": 1.0, "val_loss": 0.5, "val_mae": 0.4}
    evaluation = cb.EMAEvaluation(ds)
    evaluation.set_model(model)
    evaluation.on_epoch_end(0, logs)
    assert logs["val_loss_raw"] == 0.5 and logs["val_mae_raw"] == 0.4
    with cb.ema_weights(model):
        expected = model.evaluate(ds, verbose=0, return_dict=True)
    assert logs["val_mae"] == pytest.approx(expected["mae"])

    saved = []

    def export(path, which):
        saved.append(which)
        open(path, "w").close()

    path = str(tmp_path / "best.keras")
    best = cb.BestCheckpoint(path, export, {"ema": "val_top1", "raw": "val_top1_raw"})
    for epoch, (ema, raw) in enumerate([(0.5, 0.6), (0.7, 0.65), (0.6, 0.6), (0.7, 0.7)]):
        best.on_epoch_end(epoch, {"val_top1": ema, "val_top1_raw": raw})
    assert saved == ["raw", "ema"]  # epoch 3 (0.6) and 4 (a tie at 0.7) are not better
    info = json.loads((tmp_path / "best.keras.json").read_text())
    assert info["weights"] == "ema" and info["epoch"] == 2 and info["value"] == 0.7
    resumed = cb.BestCheckpoint(path, export, {"ema": "val_top1"})
    resumed.on_epoch_end(4, {"val_top1": 0.69})
    assert saved == ["raw", "ema"] and resumed.saved is None  # a resumed run keeps the better


def test_epoch_line():
    line = cb.EpochLine(epochs=4, steps=22)
    line.on_epoch_begin(1)
    logs = {"loss": 0.97, "top1": 0.82, "val_top1": 0.94, "val_top1_raw": 0.91}
    text = line.format(1, {**logs, "learning_rate": 0.0023, "epoch_time": 35.4})
    assert text == (
        "epoch 2/4  loss 0.9700  top1 0.8200  val top1 ema 0.9400 raw 0.9100  lr 2.30e-03  35.4 s"
    )


def test_verbose_flag_before_or_after_the_command():
    from mvit3_cli import build_parser

    parser = build_parser()
    base = ["train", "mobilevitv3_xxs", "--dataset", "demo"]
    assert parser.parse_args(["--verbose", *base]).verbose is True
    assert parser.parse_args([*base, "--verbose"]).verbose is True
    assert parser.parse_args(base).verbose is False
    assert parser.parse_args(["evaluate", "run", "--verbose"]).verbose is True


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


def test_task_registry():
    from training.tasks import get_task, task_names

    assert task_names() == ("classification", "segmentation")
    assert get_task("classification").monitor == "val_top1"
    assert get_task("segmentation").monitor == "val_miou"
    assert get_task(get_task("segmentation")) is get_task("segmentation")
    with pytest.raises(ValueError, match="unknown task 'detection'.*--task"):
        get_task("detection")


def test_load_weights_except_the_head_checks_before_loading():
    import mvit3_keras as m
    from mvit3_keras.backbone_weights import load_weights_except

    big = m.create_model("mobilevitv3_xxs", num_classes=1000, input_shape=(32, 32, 3))
    model = m.create_model("mobilevitv3_xxs", num_classes=10, input_shape=(32, 32, 3))
    state = m.to_cvnets_state_dict(big)
    report = load_weights_except(model, state, head_prefixes=("classifier",))
    assert report["loaded"] > 100 and report["head_not_loaded"]
    assert all(k.startswith("classifier") for k in report["head_not_loaded"] + report["skipped"])
    np.testing.assert_array_equal(
        model.get_layer("conv_1.block.conv").get_weights()[0],
        big.get_layer("conv_1.block.conv").get_weights()[0],
    )
    other = m.create_model("mobilevitv3_xs", num_classes=10, input_shape=(32, 32, 3))
    before = [w.copy() for w in other.get_weights()]
    with pytest.raises(m.CheckpointMismatchError, match="same variant"):
        load_weights_except(other, state, head_prefixes=("classifier",))
    assert all(np.array_equal(a, b) for a, b in zip(before, other.get_weights()))


@on_tiny_run_worker
def test_run_labels_are_embedded_by_export(tiny_run, tmp_path, capsys):
    """`mvit3 train` writes the dataset's class names (labels.txt); `mvit3 export` of the
    run's model embeds them as the file's TFLite metadata labels by default."""
    from mvit3_cli import dispatch
    from quantization.metadata import read_associated_files

    out, _ = tiny_run
    labels = (out / "labels.txt").read_text().splitlines()
    assert len(labels) == 10 and all(labels), labels
    path = tmp_path / "final.tflite"
    args = ["export", str(out / "final.keras"), "--quant", "fp32", "--no-verify"]
    assert dispatch(args + ["--output", str(path)]) == 0
    assert "the training run's class names" in capsys.readouterr().out
    (content,) = read_associated_files(path).values()
    assert content.decode().splitlines() == labels
