"""Demo step 4: the file a user ships, run by the runtime an app uses.

The trained model is exported once more the way a phone app wants it: the default
int8 file for phone CPUs (``target="cpu"``) with TFLite Model Metadata (the RGB
input's normalization and the dataset's class names, ``export_tflite(...,
labels=...)``). MediaPipe Tasks' ``ImageClassifier`` (the C++ task runner that
Android and iOS apps call) loads it as it is and classifies real held-out digit
scans given as uint8 RGB images, as a camera frame would be; its top-1 labels are
printed next to the Keras model's on the same pixels.
"""

from __future__ import annotations

import importlib.util
import os

APP_TITLE = "what an app ships: int8 + metadata, classified by MediaPipe Tasks"


def mediapipe_top1(path: str, pixels) -> list:
    """``[(label, score), ...]`` of MediaPipe's ``ImageClassifier`` on uint8 RGB images,
    run in a separate process (an app's process holds MediaPipe, not TensorFlow)."""
    from quantization.app_clients import mediapipe_classify

    return [top[0][1:] for top in mediapipe_classify(path, pixels, max_results=1)]


def step_app(context: dict) -> dict:
    """Export the app file, classify the held-out digits through MediaPipe Tasks and
    compare with the Keras model on the same uint8 pixels."""
    import keras
    import numpy as np

    from mvit3_examples.demo.train import demo_eval_arrays, train_result
    from quantization.export import export_tflite

    if importlib.util.find_spec("mediapipe") is None:
        print("  MediaPipe Tasks is not installed (pip install mediapipe): step not run")
        return {"ran": False, "reason": "mediapipe is not installed"}
    train = train_result(context, "app")
    size = int(train["image_size"])
    out = os.path.join(context["output"], "app")
    os.makedirs(out, exist_ok=True)
    model = keras.models.load_model(train["keras_model"])
    calibration, _ = demo_eval_arrays(size, split="train")
    images, labels = demo_eval_arrays(size)
    class_names = [str(i) for i in range(10)]
    path = os.path.join(out, "mobilevitv3_xxs_digits_int8.tflite")
    report = export_tflite(
        model, path, quant="int8", representative_data=calibration[:200], labels=class_names
    )
    pixels = np.round(images * 255.0).astype(np.uint8)  # what a camera gives the app
    keras_top1 = model.predict(pixels.astype(np.float32) / 255.0, verbose=0).argmax(-1)
    found = mediapipe_top1(path, pixels)
    app_top1 = np.array([class_names.index(name) for name, _ in found])
    result = {
        "ran": True,
        "file": path,
        "size_kib": round(report.file.size_bytes / 1024),
        "target": str(report.target),
        "num_images": int(len(labels)),
        "mediapipe_top1": float(np.mean(app_top1 == labels)),
        "keras_top1": float(np.mean(keras_top1 == labels)),
        "agreement_with_keras": float(np.mean(app_top1 == keras_top1)),
    }
    _print_app_result(result, labels, keras_top1, found, class_names)
    return result


def _print_app_result(result, labels, keras_top1, found, class_names) -> None:
    print(
        f"  exported {result['file']} ({result['size_kib']} KiB, int8, target "
        f"{result['target']}, labels and input normalization embedded)"
    )
    print("  image  true  Keras  MediaPipe (logit)")
    for i in range(5):
        name, score = found[i]
        print(f"  {i:5d}  {labels[i]:4d}  {class_names[keras_top1[i]]:>5}  {name:>9} ({score:.2f})")
    print(
        f"  MediaPipe ImageClassifier on {result['num_images']} held-out digits: top-1 "
        f"{100 * result['mediapipe_top1']:.2f}% (Keras model {100 * result['keras_top1']:.2f}%), "
        f"same top-1 as Keras on {100 * result['agreement_with_keras']:.2f}%"
    )
