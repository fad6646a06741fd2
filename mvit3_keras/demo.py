"""The README's main job: an end-to-end run on real data that ships with the packages.

Steps (each prints what it did and writes into the output folder):

1. ``model zoo``: build MobileViTv3-XXS, convert an official-format checkpoint
   (the reference parity checkpoint when the reference data is present, else a
   seeded checkpoint written in the official ``state_dict`` layout), save it as
   ``.keras``, reload it in Keras and classify two real photos shipped with
   scikit-learn.

Later steps (training on the bundled real dataset, int8 export, evaluation in
LiteRT) are appended to :data:`DEMO_STEPS` by the ``training`` and
``quantization`` packages.
"""

from __future__ import annotations

import json
import os
import time

import numpy as np

DEMO_STEPS: list = []


def demo_step(title: str):
    def register(fn):
        DEMO_STEPS.append((title, fn))
        return fn

    return register


def sample_photos(size: int = 256) -> np.ndarray:
    """scikit-learn's two sample photographs, resized to ``size`` (RGB, [0, 1])."""
    import tensorflow as tf
    from sklearn.datasets import load_sample_images

    images = load_sample_images().images  # china.jpg, flower.jpg (427x640x3 uint8)
    batch = [
        tf.image.resize(tf.convert_to_tensor(img, tf.float32) / 255.0, (size, size)).numpy()
        for img in images
    ]
    return np.stack(batch).astype(np.float32)


@demo_step("model zoo: official checkpoint -> Keras -> predictions")
def step_model_zoo(context: dict) -> dict:
    import keras

    import mvit3_keras as m
    from mvit3_keras.convert_cli import convert_checkpoint
    from mvit3_keras.reference import reference_dir

    out = context["output"]
    ref = reference_dir()
    parity = None
    if ref is not None and (ref / "parity" / "cls_xx_small_v3.npz").is_file():
        checkpoint = str(ref / "parity" / "cls_xx_small_v3.npz")
        origin = "official reference checkpoint (seeded weights, official outputs)"
    else:
        model = m.create_model("mobilevitv3_xxs")
        checkpoint = os.path.join(out, "mobilevitv3_xxs_official_layout.npz")
        np.savez(checkpoint, **m.to_cvnets_state_dict(model, rgb_input=False))
        origin = "checkpoint written in the official state_dict layout"
    keras_path = os.path.join(out, "mobilevitv3_xxs.keras")
    report = convert_checkpoint("mobilevitv3_xxs", checkpoint, keras_path, rgb_input=False)
    model = keras.models.load_model(keras_path)
    print(f"  converted {report['loaded_tensors']} tensors from {origin}: {checkpoint}")
    print(f"  params {m.count_params(model):,}, MACs {m.count_macs(model)['official'] / 1e6:.1f}M")
    if ref is not None and checkpoint.endswith("cls_xx_small_v3.npz"):
        data = np.load(checkpoint)
        x = data["ref__input0"].astype(np.float32)
        logits = model.predict(x, verbose=0)
        err = float(np.abs(logits - data["ref__output0"]).max())
        parity = {"max_abs_logit_diff": err, "ref_logit_std": float(data["ref__output0"].std())}
        print(f"  parity with the official PyTorch output: max |diff| = {err:.2e}")
    photos = sample_photos()
    probs = keras.ops.convert_to_numpy(keras.ops.softmax(model.predict(photos, verbose=0)))
    top5 = [np.argsort(p)[::-1][:5].tolist() for p in probs]
    print(f"  top-5 classes of scikit-learn's sample photos: {top5}")
    return {"checkpoint": checkpoint, "keras_model": keras_path, "parity": parity, "top5": top5}


DEMO_STEP_MODULES = ("training.demo_steps", "quantization.demo_steps")


def run_demo(output_dir: str, *, quick: bool = False) -> dict:
    import importlib

    from mvit3_keras.io_utils import atomic_write_text

    for module in DEMO_STEP_MODULES:  # registers their steps, in this order
        importlib.import_module(module)

    os.makedirs(output_dir, exist_ok=True)
    context = {"output": output_dir, "quick": quick, "results": {}}
    for i, (title, fn) in enumerate(DEMO_STEPS, start=1):
        print(f"[{i}/{len(DEMO_STEPS)}] {title}")
        start = time.time()
        result = fn(context)
        result["seconds"] = round(time.time() - start, 1)
        context["results"][title] = result
    atomic_write_text(
        os.path.join(output_dir, "demo_summary.json"),
        json.dumps(context["results"], indent=2, default=str),
    )
    print(f"demo summary: {os.path.join(output_dir, 'demo_summary.json')}")
    return context["results"]
