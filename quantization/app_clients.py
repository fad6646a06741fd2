"""Run an exported ``.tflite`` file the way an app does, in a SEPARATE process.

An app's process holds its task runtime and nothing else: MediaPipe Tasks (the
C++ task runners Android and iOS apps call) or the LiteRT interpreter with the
model's signature. Loading MediaPipe's own TFLite, absl and protobuf copies into a
process that already holds TensorFlow is not a configuration any app has, and it
can crash that process later (a segmentation fault during garbage collection).
So each call here starts ``python -m quantization._app_client_worker`` (numpy plus
the one runtime), feeds it the images and reads its results back:

* :func:`mediapipe_classify` - ``ImageClassifier``: top categories per image;
* :func:`mediapipe_segment` - ``ImageSegmenter``: the category mask per image;
* :func:`mediapipe_detect` - ``ObjectDetector``: boxes and class names per image;
* :func:`litert_signature_outputs` - LiteRT's signature runner: every named
  output per image (integer inputs quantized, integer outputs dequantized, as
  :mod:`quantization.runtime` does).

MediaPipe takes uint8 RGB pixels ``[N, H, W, 3]`` (what a camera frame gives);
LiteRT takes the model's float input ``[N, H, W, C]``.
"""

from __future__ import annotations

import os
import pickle
import tempfile

import numpy as np

from quantization.verify import RuntimeCrashError, run_worker


def run_client(client: str, path, images, *, timeout: float = 600.0, **options):
    """What ``client`` (``"mediapipe_classify"``, ``"mediapipe_segment"``,
    ``"mediapipe_detect"`` or ``"litert_signature"``) returns for ``images`` on the
    file at ``path``, computed in a child process. ``options`` go to the client
    (e.g. ``max_results``). Raises :class:`RuntimeCrashError` when the child dies or
    the runtime rejects the file, with the runtime's last words."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no such .tflite file: {path}")
    with tempfile.TemporaryDirectory(prefix="mvit3_app_client_") as tmp:
        job = {
            "client": client,
            "path": os.path.abspath(path),
            "inputs": os.path.join(tmp, "inputs.npy"),
            "result": os.path.join(tmp, "result.pkl"),
            "options": options,
        }
        np.save(job["inputs"], np.asarray(images))
        job_path = os.path.join(tmp, "job.json")
        proc = run_worker("quantization._app_client_worker", job, job_path, timeout)
        if proc.returncode != 0 or not os.path.exists(job["result"]):
            code = proc.returncode
            reason = f"signal {-code}" if code < 0 else f"exit code {code}"
            raise RuntimeCrashError(
                f"{client} could not run {path} ({reason}); stderr tail: "
                f"{proc.stderr.strip()[-600:]}"
            )
        with open(job["result"], "rb") as f:
            return pickle.load(f)  # written by our own child process just now


def mediapipe_classify(path, pixels, *, max_results: int = 1) -> list:
    """Per image: ``[(index, category_name, score), ...]``, best first."""
    return run_client("mediapipe_classify", path, pixels, max_results=max_results)


def mediapipe_segment(path, pixels) -> np.ndarray:
    """``[N, H, W]`` uint8 category masks."""
    return run_client("mediapipe_segment", path, pixels)


def mediapipe_detect(path, pixels, *, max_results: int = 20) -> list:
    """Per image: ``[(class names, box (xmin, ymin, xmax, ymax) in pixels), ...]``.

    MediaPipe merges the detections of one box into one detection with several
    categories, hence a tuple of names per box."""
    return run_client("mediapipe_detect", path, pixels, max_results=max_results)


def litert_signature_outputs(path, images) -> list:
    """Per image: ``{output name: float array}`` from the file's default signature."""
    return run_client("litert_signature", path, images)
