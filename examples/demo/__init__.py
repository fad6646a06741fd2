"""The README's main job: an end-to-end run on real data that ships with the packages.

Steps, in order (each prints what it did and writes into the output folder):

1. :mod:`~mvit3_examples.demo.model_zoo`: the official reference checkpoint of
   MobileViTv3-XXS converted to ``.keras``, reloaded, and checked against the
   official parameter / MAC counts and logits.
2. :mod:`~mvit3_examples.demo.train`: MobileViTv3-XXS trained from scratch on the
   bundled real digits (CPU), the saved model reloaded and evaluated.
3. :mod:`~mvit3_examples.demo.quantize`: that model exported as fp32, PTQ int8 and
   QAT int8 ``.tflite`` files, evaluated and timed in LiteRT.
4. :mod:`~mvit3_examples.demo.app`: the file an app ships (int8 for phone CPUs, with
   labels and input metadata) classifying real digits through MediaPipe Tasks, next
   to the Keras model.

Every step is ``step(context) -> dict``; ``context`` holds the output folder,
the ``quick`` flag and the results of the earlier steps (by title), and
:func:`run_demo` writes all results to ``demo_summary.json``.
"""

from __future__ import annotations

import json
import os
import time

from mvit3_examples.demo.app import APP_TITLE, step_app
from mvit3_examples.demo.model_zoo import MODEL_ZOO_TITLE, step_model_zoo
from mvit3_examples.demo.quantize import QUANTIZE_TITLE, step_quantize
from mvit3_examples.demo.train import TRAIN_TITLE, step_train

DEMO_STEPS = (
    (MODEL_ZOO_TITLE, step_model_zoo),
    (TRAIN_TITLE, step_train),
    (QUANTIZE_TITLE, step_quantize),
    (APP_TITLE, step_app),
)


def run_demo(output_dir: str, *, quick: bool = False) -> dict:
    """Run :data:`DEMO_STEPS` in order into ``output_dir``; returns the results by step title."""
    from mvit3_keras.io_utils import atomic_write_text

    os.makedirs(output_dir, exist_ok=True)
    context = {"output": output_dir, "quick": quick, "results": {}}
    for i, (title, step) in enumerate(DEMO_STEPS, start=1):
        print(f"[{i}/{len(DEMO_STEPS)}] {title}")
        start = time.time()
        result = step(context)
        result["seconds"] = round(time.time() - start, 1)
        context["results"][title] = result
    summary_path = os.path.join(output_dir, "demo_summary.json")
    atomic_write_text(summary_path, json.dumps(context["results"], indent=2, default=str))
    print(f"demo summary: {summary_path}")
    return context["results"]
