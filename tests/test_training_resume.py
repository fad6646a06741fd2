"""A run killed with SIGKILL continues from its last checkpoint when started again."""

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
    for r in rows:
        expected = float(schedule((int(r["epoch"]) + 1) * STEPS))
        assert float(r["learning_rate"]) == pytest.approx(expected, rel=1e-4)

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
