"""Atomic file writes: a crash or kill never leaves a half-written file behind."""

from __future__ import annotations

import contextlib
import os
import tempfile


@contextlib.contextmanager
def atomic_path(path, *, suffix: str | None = None):
    """Yield a temporary path next to ``path``; move it into place on success.

    The temporary file keeps ``path``'s extension (Keras picks the format from
    it) and lives in the same directory, so ``os.replace`` is atomic.
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path)) or "."
    os.makedirs(directory, exist_ok=True)
    base = os.path.basename(path)
    ext = suffix if suffix is not None else _full_extension(base)
    fd, tmp = tempfile.mkstemp(prefix=f".{base}.", suffix=".tmp" + ext, dir=directory)
    os.close(fd)
    os.unlink(tmp)  # writers such as Keras refuse or misbehave on an existing file
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _full_extension(name: str) -> str:
    for ext in (".weights.h5", ".keras", ".tflite", ".json", ".npz", ".h5", ".csv", ".png"):
        if name.endswith(ext):
            return ext
    return os.path.splitext(name)[1]


def atomic_write_text(path, text: str) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())


def atomic_write_bytes(path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
