"""Subprocess side of :mod:`quantization.app_clients` (numpy plus one app runtime).

``python -m quantization._app_client_worker JOB.json``: JOB names the ``client``,
the model ``path``, an ``inputs`` ``.npy`` file, the ``result`` pickle to write and
the client's ``options``.
"""

from __future__ import annotations

import json
import os
import pickle
import sys

import numpy as np


def _mp_image(pixels):
    import mediapipe as mp

    return mp.Image(image_format=mp.ImageFormat.SRGB, data=np.ascontiguousarray(pixels))


def _mp_base(path):
    from mediapipe.tasks.python import BaseOptions

    return BaseOptions(model_asset_path=path)


def mediapipe_classify(path, pixels, max_results=1) -> list:
    from mediapipe.tasks.python import vision

    options = vision.ImageClassifierOptions(base_options=_mp_base(path), max_results=max_results)
    out = []
    with vision.ImageClassifier.create_from_options(options) as classifier:
        for image in pixels:
            top = classifier.classify(_mp_image(image)).classifications[0].categories
            out.append([(c.index, c.category_name, float(c.score)) for c in top])
    return out


def mediapipe_segment(path, pixels) -> np.ndarray:
    from mediapipe.tasks.python import vision

    options = vision.ImageSegmenterOptions(
        base_options=_mp_base(path), output_category_mask=True, output_confidence_masks=False
    )
    masks = []
    with vision.ImageSegmenter.create_from_options(options) as segmenter:
        for image in pixels:  # numpy_view() is a view of MediaPipe's buffer: copy it now
            mask = segmenter.segment(_mp_image(image)).category_mask.numpy_view()
            masks.append(np.array(mask).reshape(mask.shape[:2]))
    return np.stack(masks)


def mediapipe_detect(path, pixels, max_results=20) -> list:
    from mediapipe.tasks.python import vision

    options = vision.ObjectDetectorOptions(base_options=_mp_base(path), max_results=max_results)
    out = []
    with vision.ObjectDetector.create_from_options(options) as detector:
        for image in pixels:
            boxes = []
            for d in detector.detect(_mp_image(image)).detections:
                b = d.bounding_box
                corners = (b.origin_x, b.origin_y, b.origin_x + b.width, b.origin_y + b.height)
                names = tuple(c.category_name for c in d.categories)
                boxes.append((names, np.asarray(corners, np.float64)))
            out.append(boxes)
    return out


def litert_signature(path, images) -> list:
    """Named outputs per image: the default signature's, or (a file without signatures)
    the output tensors' names."""
    from quantization.runtime import dequantize_output, load_interpreter, quantize_input

    interpreter = load_interpreter(path)
    if interpreter.get_signature_list():
        runner = interpreter.get_signature_runner()
        ((name, detail),) = runner.get_input_details().items()
        outputs = runner.get_output_details()
        run = lambda x: runner(**{name: x})  # noqa: E731
    else:
        (detail,) = interpreter.get_input_details()
        outputs = {o["name"]: o for o in interpreter.get_output_details()}
        run = lambda x: _invoke(interpreter, detail, x, outputs)  # noqa: E731
    results = []
    for image in images:
        raw = run(quantize_input(np.asarray(image)[None], detail))
        results.append({k: dequantize_output(v[0], outputs[k]) for k, v in raw.items()})
    return results


def _invoke(interpreter, detail, x, outputs) -> dict:
    interpreter.set_tensor(detail["index"], x)
    interpreter.invoke()
    return {name: interpreter.get_tensor(o["index"]) for name, o in outputs.items()}


CLIENTS = {
    "mediapipe_classify": mediapipe_classify,
    "mediapipe_segment": mediapipe_segment,
    "mediapipe_detect": mediapipe_detect,
    "litert_signature": litert_signature,
}


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    with open(argv[0], encoding="utf-8") as f:
        job = json.load(f)
    client = CLIENTS.get(job["client"])
    if client is None:
        raise SystemExit(f"unknown client {job['client']!r}; one of {sorted(CLIENTS)}")
    result = client(job["path"], np.load(job["inputs"]), **job["options"])
    tmp = job["result"] + ".part"
    with open(tmp, "wb") as f:
        pickle.dump(result, f)
    os.replace(tmp, job["result"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
