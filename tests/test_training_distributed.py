"""tf.distribute: MirroredStrategy on 2 logical CPU devices (default suite) and
MultiWorkerMirroredStrategy with 2 local worker processes on loopback (slow)."""

from __future__ import annotations

import json
import socket
import subprocess

import pytest
from training_helpers import env, run, summary, train_cmd


def test_mirrored_on_two_logical_cpus(tmp_path):
    out = tmp_path / "mirrored"
    proc = run(
        train_cmd(
            out,
            "--strategy",
            "mirrored",
            "--epochs",
            "1",
            "--batch-size",
            "4",
            "--set",
            "runtime.steps_per_epoch=2",
        ),
        MVIT3_LOGICAL_CPUS=2,
    )
    s = summary(out)
    assert s["replicas"] == 2 and s["strategy"].startswith("MirroredStrategy (2 replicas)")
    assert s["batch_per_replica"] == 4 and s["global_batch"] == 8  # global = per-replica x 2
    assert "batch 4/replica x 2 = 8 global" in proc.stdout
    assert 0.0 <= s["final"]["top1"] <= 1.0


def _free_ports(n):
    socks, ports = [], []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    return ports


@pytest.mark.slow(minutes=8)
def test_multiworker_two_local_workers(tmp_path):
    out = tmp_path / "multiworker"
    ports = _free_ports(2)
    workers = [f"127.0.0.1:{p}" for p in ports]
    cmd = train_cmd(
        out,
        "--strategy",
        "multiworker",
        "--epochs",
        "2",
        "--batch-size",
        "4",
        "--set",
        "runtime.steps_per_epoch=3",
    )
    procs = []
    for index in range(2):
        tf_config = {"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}}
        procs.append(
            subprocess.Popen(
                cmd,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                env=env(TF_CONFIG=json.dumps(tf_config)),
            )
        )
    logs = []
    try:
        for p in procs:
            logs.append(p.communicate(timeout=900)[0].decode(errors="replace"))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for p, log in zip(procs, logs):
        assert p.returncode == 0, log[-4000:]
    s = summary(out)  # written by worker 0 (the chief) only
    assert s["replicas"] == 2 and s["global_batch"] == 8
    assert s["strategy"].startswith(("MultiWorkerMirroredStrategy", "CollectiveAllReduceStrategy"))
    assert (out / "final.keras").exists() and (out / ".worker-1" / "backup" / "state.json").exists()
    assert not (out / ".worker-1" / "summary.json").exists()
