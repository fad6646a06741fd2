"""Input pipeline vs training step throughput (images/s).

For each case the ``tf.data`` training pipeline with the recipe's official
augmentations is drained on its own (pipeline images/s), then the model's
training step runs on one cached batch (step images/s, no input cost). The
pipeline is not the bottleneck when its rate is well above the step rate.

    python benchmarks/input_pipeline.py [--quick]

Prints a table and writes ``benchmarks/results/input_pipeline.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from mvit3_keras.io_utils import atomic_write_text  # noqa: E402
from training import pipeline, recipes  # noqa: E402
from training.datasets.base import DatasetSource  # noqa: E402

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "input_pipeline.json")


def synthetic_jpeg_source(num=256, size=(375, 500), classes=1000, seed=0):
    """ImageNet-like source: JPEG-encoded photographs-sized images, decoded in the pipeline."""
    rng = np.random.RandomState(seed)
    encoded = []
    for _ in range(32):
        base = rng.randint(0, 255, (size[0] // 8, size[1] // 8, 3)).astype(np.uint8)
        img = tf.image.resize(base, size, "bilinear").numpy().astype(np.uint8)
        encoded.append(tf.io.encode_jpeg(img, quality=90).numpy())
    files = [encoded[i % len(encoded)] for i in range(num)]
    labels = rng.randint(0, classes, num).astype(np.int64)

    def load(split, *, shuffle_files=False, seed=None):
        ds = tf.data.Dataset.from_tensor_slices({"jpeg": files, "label": labels})
        return ds.map(
            lambda ex: {"image": tf.io.decode_jpeg(ex["jpeg"], channels=3), "label": ex["label"]},
            num_parallel_calls=tf.data.AUTOTUNE,
        )

    return DatasetSource(
        "synthetic_jpeg", "classification", classes, "train", "validation", load, lambda split: num
    )


def pipeline_rate(ds, batches):
    it = iter(ds)
    x, _ = next(it)  # warm-up (tracing, autotune)
    start, images = time.perf_counter(), 0
    for _ in range(batches):
        x, _ = next(it)
        images += int(x.shape[0])
    return images / (time.perf_counter() - start)


def step_rate(model, batch, steps):
    x, y = batch
    model.train_on_batch(x, y)  # trace
    start = time.perf_counter()
    for _ in range(steps):
        model.train_on_batch(x, y)
    return steps * int(x.shape[0]) / (time.perf_counter() - start)


def run(quick: bool):
    import mvit3_keras as m
    from training import losses, metrics, optimizers

    cases = [
        ("mobilevitv3_xxs", "mobilevitv3_xxs_in1k", 256, 32),  # v1 recipe: multi-scale sampler
        ("mobilevitv3_050", "mobilevitv2_in1k", 256, 32),  # v2: RandAugment, erase, mix
    ]
    rows = []
    for model_name, recipe_name, size, batch in cases:
        values = recipes.get_recipe(recipe_name).to_dict()
        values["dataset"]["train_batch_size0"] = batch
        source = synthetic_jpeg_source(num=batch * (4 if quick else 12))
        ds = pipeline.classification_train(
            source, values, image_size=size, per_replica_batch=batch, replicas=1, seed=0
        )
        p_rate = pipeline_rate(ds, 3 if quick else 10)
        model = m.create_model(model_name, num_classes=1000, input_shape=(None, None, 3))
        model.compile(
            optimizer=optimizers.make_optimizer(values, 1000),
            loss=losses.classification_loss(values),
            metrics=metrics.classification_metrics(),
            jit_compile=False,
        )
        fixed = pipeline.classification_train(
            source,
            recipes.merge(values, {"sampler": {"name": "batch_sampler"}}),
            image_size=size,
            per_replica_batch=batch,
            replicas=1,
            seed=0,
        )
        s_rate = step_rate(model, next(iter(fixed)), 2 if quick else 5)
        rows.append(
            {
                "model": model_name,
                "recipe": recipe_name,
                "image_size": size,
                "batch": batch,
                "pipeline_images_per_s": round(p_rate, 1),
                "train_step_images_per_s": round(s_rate, 1),
                "pipeline_over_step": round(p_rate / s_rate, 2),
            }
        )
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    rows = run(args.quick)
    header = f"{'model':<18}{'recipe':<24}{'size':>5}{'batch':>6}{'pipeline img/s':>16}{'step img/s':>12}{'ratio':>7}"
    print(header)
    print("-" * len(header))
    for r in rows:
        print(
            f"{r['model']:<18}{r['recipe']:<24}{r['image_size']:>5}{r['batch']:>6}"
            f"{r['pipeline_images_per_s']:>16.1f}{r['train_step_images_per_s']:>12.1f}"
            f"{r['pipeline_over_step']:>7.2f}"
        )
    result = {
        "machine": {"cpus": os.cpu_count(), "tensorflow": tf.__version__},
        "note": "CPU only; pipeline = decode + official augmentations; step = forward + "
        "backward + AdamW/EMA update on a cached batch",
        "rows": rows,
    }
    os.makedirs(os.path.dirname(RESULTS), exist_ok=True)
    atomic_write_text(RESULTS, json.dumps(result, indent=2))
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
