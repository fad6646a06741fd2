"""A run killed with SIGKILL continues from its last checkpoint when started again; the
EMA warm-up continues at the global step."""

from __future__ import annotations

import glob
import json
import os
import signal
import subprocess
import time

import pytest
from training_helpers import env, run, summary, train_cmd

EPOCHS, STEPS = 4, 25


def _state(output):
    path = os.path.join(output, "backup", "state.json")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def test_sigkill_then_same_command_resumes(tmp_path):
    out = tmp_path / "run"
    cmd = train_cmd(
        out,
        "--epochs",
        str(EPOCHS),
        "--batch-size",
        "8",
        "--set",
        f"runtime.steps_per_epoch={STEPS}",
    )
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env())
    deadline = time.time() + 420
    killed_after = None
    try:
        while time.time() < deadline and proc.poll() is None:
            state = _state(out)
            if state and state["epoch"] >= 1:
                proc.send_signal(signal.SIGKILL)  # a real kill, mid-training
                killed_after = state["epoch"]
                break
            time.sleep(0.05)
    finally:
        if proc.poll() is None and killed_after is None:
            proc.kill()
        log = proc.communicate(timeout=60)[0].decode(errors="replace")
    assert killed_after is not None, f"the run never saved a backup:\n{log[-3000:]}"
    assert proc.returncode == -signal.SIGKILL
    saved = _state(out)["epoch"]
    assert 1 <= saved < EPOCHS, "the run finished before it could be killed"
    assert not os.path.exists(out / "summary.json")

    second = run(cmd)  # the same command again
    assert f"resuming after epoch {saved}" in second.stdout
    s = summary(out)
    assert s["status"] == "complete" and s["resumed_from_epoch"] == saved
    assert s["epochs_run"] == EPOCHS  # every epoch once, across both processes
    assert not glob.glob(str(out / ".*.tmp*")) and not glob.glob(str(out / "backup" / ".*.tmp*"))

    # the history has each epoch exactly once and the LR continues on the same schedule
    import csv

    from training import optimizers, recipes

    with open(out / "history.csv", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in rows] == list(range(EPOCHS))
    values = recipes.get_recipe("demo").to_dict()
    schedule = optimizers.learning_rate_schedule(values, EPOCHS * STEPS)
    warmup = optimizers.ema_warmup_config(values)
    for r in rows:
        expected = float(schedule((int(r["epoch"]) + 1) * STEPS))
        assert float(r["learning_rate"]) == pytest.approx(expected, rel=1e-4)
        # the EMA decay of each epoch's last update follows the global step across the kill
        last_step = (int(r["epoch"]) + 1) * STEPS - 1
        assert float(r["ema_decay"]) == pytest.approx(
            optimizers.ema_decay_at(last_step, 0.99, warmup), abs=1e-9
        )
        assert 0 <= float(r["val_top1_raw"]) <= 1 and 0 <= float(r["val_top1"]) <= 1

    # the final backup holds the optimizer state after all EPOCHS * STEPS iterations
    import h5py

    state = _state(out)
    assert state["epoch"] == EPOCHS
    with h5py.File(out / "backup" / state["weights"], "r") as f:
        assert int(f["optimizer/vars/0"][()]) == EPOCHS * STEPS  # optimizer.iterations
        # Adam moments + EMA averages for every trainable variable are saved too
        assert len(f["optimizer/vars"]) > 3 * 200

    third = run(cmd)  # a finished run is not trained again
    assert "is complete; nothing to do" in third.stdout


def _ema_run(tmp_path, epochs, resume_at=None):
    """A tiny model trained for ``epochs`` (4 steps each) with the recipe optimizer; with
    ``resume_at``: stopped after that many epochs, rebuilt and restored from the backup."""
    import keras
    import numpy as np

    from training import callbacks as cb
    from training import optimizers, recipes

    values = recipes.get_recipe("demo").to_dict()
    values["optim"]["weight_decay"] = 0.0
    x = np.random.default_rng(0).normal(size=(16, 4)).astype("float32")

    def model_and_backup():
        keras.utils.set_random_seed(0)
        model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8), keras.layers.Dense(2)])
        model.compile(optimizer=optimizers.make_optimizer(values, 4 * epochs), loss="mse")
        backup = cb.AtomicBackupAndRestore(str(tmp_path / "backup"))
        backup.set_model(model)
        return model, backup

    model, backup = model_and_backup()
    fit = dict(batch_size=4, verbose=0, shuffle=False, callbacks=[backup])
    if resume_at:
        model.fit(x, x[:, :2], epochs=resume_at, **fit)
        model, backup = model_and_backup()  # a new process: nothing but the backup
        fit["callbacks"] = [backup]
        assert backup.restore() == resume_at
    model.fit(x, x[:, :2], epochs=epochs, initial_epoch=backup.restored_epoch, **fit)
    return model


def test_ema_warm_up_continues_after_resume(tmp_path):
    """Training 2 + 2 epochs with a restart in between gives the same EMA weights as 4 epochs
    straight: the warm-up's step is the optimizer's ``iterations`` (saved in the backup); a
    counter restarting at 0 would reset the average to the weights at the restart."""
    import keras
    import numpy as np

    from mvit3_keras import compat

    straight = _ema_run(tmp_path / "a", 4)
    resumed = _ema_run(tmp_path / "b", 4, resume_at=2)
    assert int(resumed.optimizer.iterations) == int(straight.optimizer.iterations) == 16
    for (_, a), (_, b) in zip(
        compat.ema_pairs(straight.optimizer), compat.ema_pairs(resumed.optimizer)
    ):
        np.testing.assert_allclose(
            keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b), rtol=1e-5, atol=1e-6
        )
