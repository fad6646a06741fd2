"""``tf.distribute`` strategies for ``--strategy auto|mirrored|multiworker|tpu``.

Batch sizes: ``--batch-size`` (recipe ``dataset.train_batch_size0``) is the
**per-replica** batch, as in ml-cvnets where every GPU process gets
``train_batch_size0`` images. The input pipeline is batched with the **global**
batch = per-replica batch x ``strategy.num_replicas_in_sync`` (across all workers
for MultiWorkerMirroredStrategy) and Keras splits it over the replicas. The
learning-rate values stay those of the recipe (they were tuned for the official
global batch, e.g. 8 GPUs x 128 = 1024 for MobileViTv2): scale them with ``--set``
when your global batch differs.

* ``auto``: TPUStrategy when a TPU is found, MirroredStrategy over all GPUs when
  more than one is visible, MultiWorkerMirroredStrategy when ``TF_CONFIG`` names a
  cluster, else the default (single-device) strategy.
* ``mirrored``: synchronous data parallelism on the local devices (all GPUs, or
  the CPU devices; ``MVIT3_LOGICAL_CPUS=N`` splits the CPU into N logical devices,
  which is how the tests run it on a CPU-only machine).
* ``multiworker``: ``MultiWorkerMirroredStrategy`` configured from ``TF_CONFIG``
  (``{"cluster": {"worker": ["host:port", ...]}, "task": {"type": "worker",
  "index": i}}``); start the same command on every worker. Worker 0 (the chief)
  writes the checkpoints, logs and summary; the others write to a scratch folder.
* ``tpu``: ``TPUStrategy`` via ``TPUClusterResolver`` (``--set runtime.tpu=NAME``
  or the environment's default TPU).
"""

from __future__ import annotations

import json
import os

STRATEGIES = ("auto", "mirrored", "multiworker", "tpu")


def configure_logical_cpus(count: int | None = None) -> None:
    """Split the physical CPU into ``count`` logical devices (before TF initialises)."""
    import tensorflow as tf

    count = count or int(os.environ.get("MVIT3_LOGICAL_CPUS", "0") or 0)
    if count <= 1:
        return
    cpus = tf.config.list_physical_devices("CPU")
    try:
        tf.config.set_logical_device_configuration(
            cpus[0], [tf.config.LogicalDeviceConfiguration() for _ in range(count)]
        )
    except RuntimeError as err:
        raise RuntimeError(
            f"MVIT3_LOGICAL_CPUS={count}: TensorFlow was already initialised in this process "
            "(set the variable before starting Python)"
        ) from err


def _tf_config() -> dict:
    raw = os.environ.get("TF_CONFIG", "")
    if not raw:
        return {}
    try:
        return json.loads(raw)
    except json.JSONDecodeError as err:
        raise ValueError(f"TF_CONFIG is not valid JSON ({err}): {raw[:200]!r}") from None


def make_strategy(name: str = "auto", tpu: str | None = None):
    import tensorflow as tf

    if name not in STRATEGIES:
        raise ValueError(f"--strategy must be one of {', '.join(STRATEGIES)}, got {name!r}")
    configure_logical_cpus()
    if name == "tpu" or (name == "auto" and tpu):
        try:
            resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu or "")
            tf.config.experimental_connect_to_cluster(resolver)
            tf.tpu.experimental.initialize_tpu_system(resolver)
            return tf.distribute.TPUStrategy(resolver)
        except (ValueError, tf.errors.NotFoundError, RuntimeError) as err:
            if name == "tpu":
                raise ValueError(
                    f"--strategy tpu: no TPU found ({err}); run on a TPU VM or pass "
                    "--set runtime.tpu=NAME, or use --strategy auto"
                ) from None
    if name == "multiworker" or (name == "auto" and "cluster" in _tf_config()):
        config = _tf_config()
        if "cluster" not in config:
            raise ValueError(
                "--strategy multiworker needs TF_CONFIG, e.g. "
                '{"cluster": {"worker": ["127.0.0.1:12345", "127.0.0.1:12346"]}, '
                '"task": {"type": "worker", "index": 0}}'
            )
        communication = tf.distribute.experimental.CommunicationOptions(
            implementation=tf.distribute.experimental.CommunicationImplementation.AUTO
        )
        return tf.distribute.MultiWorkerMirroredStrategy(communication_options=communication)
    if name == "mirrored":
        gpus = tf.config.list_logical_devices("GPU")
        devices = [d.name for d in gpus] or [d.name for d in tf.config.list_logical_devices("CPU")]
        return tf.distribute.MirroredStrategy(devices=devices)
    if len(tf.config.list_logical_devices("GPU")) > 1:
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()


def is_chief(strategy=None) -> bool:
    """True on the worker that writes files (single process, or worker 0 / chief)."""
    config = _tf_config()
    task = config.get("task", {})
    if not config.get("cluster"):
        return True
    if task.get("type") == "chief":
        return True
    if "chief" in config["cluster"]:
        return False
    return task.get("type", "worker") == "worker" and int(task.get("index", 0)) == 0


def worker_index() -> int:
    return int(_tf_config().get("task", {}).get("index", 0))


def num_workers() -> int:
    cluster = _tf_config().get("cluster", {})
    return max(1, sum(len(v) for k, v in cluster.items() if k in ("worker", "chief")))


def describe(strategy) -> str:
    replicas = strategy.num_replicas_in_sync
    return f"{type(strategy).__name__} ({replicas} replica{'s' if replicas != 1 else ''})"
