"""int8 export of many variants, proven in one LiteRT process: ``int8_variant_sweep``.

Each variant is built at a small static size with weights of the same
character as the official reference checkpoints
(:func:`support.weights.official_like_weights`: the official
initialisation, BatchNorm statistics measured on real photos), exported with
``quant`` (calibration on real photo crops), and all files are then loaded,
allocated and invoked by ONE child process
(:func:`quantization.verify.verify_in_subprocess`; a file that aborts the
runtime is reported with its crashing op and the others still run). The rows
give int8-vs-float logit cosine similarity and top-1 agreement on held-out
crops. Used by ``tests/test_quant_variants.py`` and
``benchmarks/int8_variants.py``.

Bit-reproducible: the weights depend only on ``(seed, variant name)`` (never on
global RNG state, the order of the names or the test worker), the BatchNorm pass
runs with TF op determinism, the photo crops are seeded, the converter's
calibration is a deterministic float run, and the LiteRT child runs int8 kernels
with a fixed thread count. Each row carries CRC32 digests of the weights and of
the ``.tflite`` bytes, so two runs can be compared exactly.

``calibration="zeros"`` / ``"tiny"`` export deliberately broken files (ranges
calibrated on black images / on photos scaled to [0, 0.02]): the negative
controls against which the bound of ``tests/test_quant_variants.py`` is set.
"""

from __future__ import annotations

import os
import tempfile
import time
import zlib
from collections.abc import Sequence
from typing import Optional

import numpy as np

from .photos import photo_crops
from .weights import official_like_weights, op_determinism, weights_digest

CALIBRATIONS = ("photos", "zeros", "tiny")


def calibration_images(kind: str, photos: np.ndarray) -> np.ndarray:
    """The representative data of ``kind`` (:data:`CALIBRATIONS`) made from ``photos``."""
    if kind == "photos":
        return photos
    if kind == "zeros":
        return np.zeros_like(photos)
    if kind == "tiny":
        return (photos * 0.02).astype(np.float32)
    raise ValueError(f"calibration must be one of {CALIBRATIONS}, got {kind!r}")


def batchnorm_photos(image_size: int, seed: int = 0) -> np.ndarray:
    """The photo crops every variant's BatchNorm statistics are measured on (16
    crops drawn with another seed than the sweep's calibration / evaluation crops)."""
    return photo_crops(16, image_size, seed=seed + 1000)


def build_variant(name: str, image_size: int, num_classes: int = 1000, seed: int = 0):
    """``name`` at ``image_size`` with official-like weights
    (:func:`support.weights.official_like_weights`, BatchNorm statistics on
    :func:`batchnorm_photos`): the same weights for the same arguments in every process."""
    import mvit3_keras as m

    # Every Keras initial value is overwritten: no global RNG state is read or set.
    model = m.create_model(name, input_shape=(image_size, image_size, 3), num_classes=num_classes)
    family = m.get_spec(name).family
    images = batchnorm_photos(image_size, seed)
    return official_like_weights(model, images, family=family, name=name, seed=seed)


def _file_crc(path: str) -> str:
    with open(path, "rb") as f:
        return f"{zlib.crc32(f.read()):08x}"


def _export_one(name, path, calib, held_out, *, build, quant, target, calibration):
    import keras

    from quantization.export import export_tflite

    start = time.time()
    model = build(name)
    report = export_tflite(
        model,
        path,
        quant=quant,
        representative_data=calibration_images(calibration, calib),
        num_calibration_samples=len(calib),
        target=target,
        verify=False,
    )
    with op_determinism():
        ref = np.asarray(model.predict(held_out, verbose=0, batch_size=len(held_out)))
    row = {
        "model": name,
        "calibration": calibration,
        "size_bytes": report.file.size_bytes,
        "num_ops": report.file.num_ops,
        "export_seconds": round(time.time() - start, 1),
        "op_histogram": report.file.op_histogram,
        "weights_crc32": weights_digest(model),
        "tflite_crc32": _file_crc(path),
    }
    del model
    keras.backend.clear_session()
    return row, ref


def _score(row, result, ref):
    from quantization.export import cosine_similarity
    from quantization.verify import describe_crash

    row["runs"] = bool(result.get("ok"))
    if not result.get("ok"):
        row["error"] = result.get("error")
        if result.get("crashed"):
            row["crash_op"] = describe_crash(result.get("crash_op"))
        return row
    out = result["outputs"][0]
    cos = cosine_similarity(out, ref)
    row["cosine"] = float(cos.mean())
    row["cosine_min"] = float(cos.min())
    row["top1_agreement"] = float(np.mean(out.argmax(-1) == ref.argmax(-1)))
    row["backend"] = result["backend"]
    row["outputs_crc32"] = f"{zlib.crc32(np.ascontiguousarray(out).tobytes()):08x}"
    return row


def int8_variant_sweep(
    names: Sequence[str],
    *,
    image_size: int = 96,
    num_classes: int = 1000,
    num_calibration: int = 32,
    num_eval: int = 16,
    quant: str = "int8",
    target: str = "generic",
    calibration: str = "photos",
    output_dir: Optional[str] = None,
    seed: int = 0,
    num_threads: int = 1,
    build=None,
) -> list:
    """One row per name (see the module docstring). ``build(name) -> keras.Model``
    replaces :func:`build_variant` (e.g. to load a checkpoint)."""
    from quantization.verify import verify_in_subprocess

    if build is None:

        def build(name):
            return build_variant(name, image_size, num_classes, seed)

    images = photo_crops(num_calibration + num_eval, image_size, seed=seed)
    calib, held_out = images[:num_calibration], images[num_calibration:]
    tmp = None
    if output_dir is None:
        tmp = tempfile.TemporaryDirectory(prefix="mvit3_sweep_")
        output_dir = tmp.name
    rows, files, refs = [], [], []
    try:
        for name in names:
            path = os.path.join(output_dir, f"{name}_{quant}_{target}_{calibration}.tflite")
            row, ref = _export_one(
                name,
                path,
                calib,
                held_out,
                build=build,
                quant=quant,
                target=target,
                calibration=calibration,
            )
            rows.append(row)
            refs.append(ref)
            files.append(path)
        start = time.time()
        results = verify_in_subprocess(
            files, images=[held_out] * len(files), num_threads=num_threads
        )
        verify_seconds = round(time.time() - start, 2)
        for row, result, ref in zip(rows, results, refs):
            _score(row, result, ref)["verify_seconds_total"] = verify_seconds
    finally:
        if tmp is not None:
            tmp.cleanup()
    return rows


def format_sweep(rows: list, title: str = "") -> str:
    lines = [title] if title else []
    lines.append(
        f"{'variant':<20s} {'runs':>4s} {'cosine':>8s} {'min':>8s} {'top-1 agree':>11s} "
        f"{'KiB':>7s} {'ops':>5s} {'export s':>8s} {'weights':>8s} {'tflite':>8s}"
    )
    for r in rows:
        if r.get("runs"):
            lines.append(
                f"{r['model']:<20s} {'yes':>4s} {r['cosine']:>8.4f} {r['cosine_min']:>8.4f} "
                f"{100 * r['top1_agreement']:>10.1f}% {r['size_bytes'] / 1024:>7.0f} "
                f"{r['num_ops']:>5d} {r['export_seconds']:>8.1f} "
                f"{r['weights_crc32']:>8s} {r['tflite_crc32']:>8s}"
            )
        else:
            lines.append(f"{r['model']:<20s} {'NO':>4s} {r.get('crash_op') or r.get('error')}")
    return "\n".join(lines)
