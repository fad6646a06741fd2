"""The official reference data: counts, ``state_dict`` keys and parity checkpoints.

The reference was made by running the authors' PyTorch code (MobileViTv3 on
ml-cvnets): exact parameter / MAC counts (``summary.json``), each official
``state_dict``'s keys and shapes (``keys/*.json``) and parity files (seeded
weights under the official key names, inputs, and the official outputs).

The repository carries a compact copy in ``tests/data/reference`` (written by
``scripts/make_reference_fixtures.py``), and the package ships the part that
``mvit3 demo`` uses (``summary.json`` and the MobileViTv3-XXS checkpoint) in
``mvit3_keras/reference_data``. In both, parity arrays are stored once in
``parity/pool.npz`` and named per file in ``parity/manifest.json``; large
diagnostic feature maps keep a grid of rows and columns (:class:`ParityData`
samples a computed map the same way). ``MVIT3_REFERENCE`` may point at another
folder of either layout (compact, or one ``parity/<stem>.npz`` per file).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional

import numpy as np

BUNDLED_REFERENCE = Path(__file__).resolve().parent.parent / "tests" / "data" / "reference"
PACKAGED_REFERENCE = Path(__file__).resolve().parent / "reference_data"


def reference_dir(*, packaged: bool = False) -> Optional[Path]:
    """``MVIT3_REFERENCE`` if set, else the repository's copy (a clone); None if absent.

    ``packaged=True`` falls back to the package's subset (summary.json, MobileViTv3-XXS).
    """
    env = os.environ.get("MVIT3_REFERENCE")
    candidates = [Path(env)] if env else [BUNDLED_REFERENCE]
    if packaged and not env:
        candidates.append(PACKAGED_REFERENCE)
    for path in candidates:
        if (path / "summary.json").is_file():
            return path
    return None


def _require_dir() -> Path:
    ref = reference_dir(packaged=True)
    if ref is None:
        raise FileNotFoundError(
            "official reference data not found: it ships in the repository's "
            f"{BUNDLED_REFERENCE} (run from a clone), or set MVIT3_REFERENCE to a folder "
            "holding summary.json, keys/ and parity/"
        )
    return ref


def load_summary() -> dict:
    """``summary.json``'s per-variant entries (parameter and MAC counts, architecture)."""
    with open(_require_dir() / "summary.json", encoding="utf-8") as f:
        return json.load(f)["variants"]


def load_keys(stem: str) -> list:
    """``keys/<stem>.json``: the official state_dict's ``[key, shape]`` entries, in order."""
    with open(_require_dir() / "keys" / f"{stem}.json", encoding="utf-8") as f:
        return json.load(f)


class ParityData(dict):
    """The arrays of one parity file; ``sampled`` names the maps stored on a grid.

    Weights are float16 values (cast to float32 exactly), BatchNorm
    ``num_batches_tracked`` int64; ``ref__*`` entries are inputs and official outputs.
    """

    def __init__(self, arrays: dict, sampled: Optional[dict] = None):
        super().__init__(arrays)
        self.sampled = dict(sampled or {})

    def state_dict(self) -> dict:
        """The official ``state_dict`` part (every entry that is not ``ref__*``)."""
        return {k: v for k, v in self.items() if not k.startswith("ref__")}

    def like_stored(self, key: str, computed) -> np.ndarray:
        """``computed`` (NHWC, the full map that ``key`` was made from) sampled as stored."""
        computed = np.asarray(computed)
        grid = self.sampled.get(key)
        if grid is None:
            return computed
        return computed[:, grid["rows"]][:, :, grid["cols"]]


def load_parity(stem: str, reference: Optional[Path] = None) -> ParityData:
    """The parity file ``stem`` (e.g. ``"cls_xx_small_v3"``) of the reference data."""
    ref = Path(reference) if reference is not None else _require_dir()
    manifest_path = ref / "parity" / "manifest.json"
    if manifest_path.is_file():
        with open(manifest_path, encoding="utf-8") as f:
            manifest = json.load(f)
        if stem not in manifest:
            raise KeyError(f"no parity file {stem!r}; available: {sorted(manifest)}")
        entry = manifest[stem]
        with np.load(ref / "parity" / "pool.npz") as pool:
            arrays = {k: pool[digest] for k, digest in entry["arrays"].items()}
        return ParityData(arrays, entry["sampled"])
    path = ref / "parity" / f"{stem}.npz"
    if not path.is_file():
        raise FileNotFoundError(f"parity file missing: {path}")
    with np.load(path) as data:
        return ParityData({k: data[k] for k in data.files})


def write_parity_checkpoint(stem: str, path, reference: Optional[Path] = None) -> str:
    """Write parity file ``stem``'s weights as an official-layout ``.npz`` checkpoint (atomically)."""
    from mvit3_keras.io_utils import atomic_path

    state = load_parity(stem, reference).state_dict()
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, **state)
    return str(path)
