"""Helpers for the training tests: run ``mvit3 train`` in a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys

TINY = [
    "mobilevitv3_xxs",
    "--dataset",
    "demo",
    "--image-size",
    "32",
    "--set",
    "runtime.max_val_examples=32",
    "--set",
    "runtime.verbose=2",
    "--set",
    "runtime.tensorboard=false",
]


def env(**extra):
    e = dict(os.environ)
    e.update({"TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONHASHSEED": "0", "CUDA_VISIBLE_DEVICES": ""})
    e.update({k: str(v) for k, v in extra.items()})
    return e


def train_cmd(output, *args):
    return [sys.executable, "-m", "mvit3_cli", "train", *TINY, "--output", str(output), *args]


def run(cmd, timeout=600, **env_extra):
    proc = subprocess.run(
        cmd, capture_output=True, text=True, timeout=timeout, env=env(**env_extra)
    )
    assert proc.returncode == 0, (
        f"exit {proc.returncode}\nSTDOUT:\n{proc.stdout[-3000:]}\nSTDERR:\n{proc.stderr[-3000:]}"
    )
    return proc


def summary(output):
    with open(os.path.join(output, "summary.json"), encoding="utf-8") as f:
        return json.load(f)
