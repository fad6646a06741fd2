"""Build the compact copies of the official reference data the repository carries.

``tests/data/reference``: everything the tests compare with. ``mvit3_keras/reference_data``:
``summary.json`` and the MobileViTv3-XXS parity checkpoint that ``mvit3 demo`` converts
(shipped in the package, so the demo runs from a plain install too).

The reference data (parameter/MAC counts, official ``state_dict`` keys and
parity files) was made by running the authors' PyTorch code. A clone of this
repository must run its tests without it, so this script writes a compact copy
that the repository carries:

- ``summary.json`` and ``keys/*.json`` as they are;
- ``parity/pool.npz``: every array of the parity files stored once (the files
  share their inputs and the convolution weights of their backbones), keyed by
  content hash, deflate-compressed;
- ``parity/manifest.json``: for each parity file, its array names -> pool key,
  and for the large diagnostic feature maps the rows/columns that were kept.

Trimming (all of it lossless for what a test compares, except the diagnostic
sampling): intermediate feature maps and full-resolution segmentation logits
keep a fixed grid of rows and columns that always includes the first and last
ones (padding mistakes show at the borders), see :func:`_grid`. Weights,
inputs and final outputs are kept whole and bit-exact.

Run by a developer who has the reference folder (never by tests)::

    python scripts/make_reference_fixtures.py /path/to/reference
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "tests" / "data" / "reference"
# What `mvit3 demo` needs, shipped inside the package (a plain install has no tests/).
PACKAGED = ROOT / "mvit3_keras" / "reference_data"
PACKAGED_STEMS = ("cls_xx_small_v3",)
# Diagnostic maps keep every STEP-th row/column (plus the last two); logits and weights stay whole.
FEATURE_STEP = 6
SEGMENTATION_STEP = 3  # of the stored 1::3 sample, i.e. every 9th full-resolution pixel


def _grid(size: int, step: int) -> np.ndarray:
    """Rows (or columns) kept of a map: 0, step, 2*step, ... and the last two."""
    return np.unique(np.r_[np.arange(0, size, step), max(size - 2, 0), size - 1]).astype(np.int32)


def _sampling(key: str, array: np.ndarray):
    """The (rows, cols) grid that ``key`` keeps, or None when it is stored whole."""
    if array.ndim != 4:
        return None
    if "__feat" in key and "seg_head.classifier" not in key and array.shape[1] > 8:
        step = FEATURE_STEP
    elif "rows1step3_cols1step3" in key:
        step = SEGMENTATION_STEP
    else:
        return None
    return _grid(array.shape[1], step), _grid(array.shape[2], step)


def _digest(array: np.ndarray) -> str:
    h = hashlib.sha1(str((array.dtype.str, array.shape)).encode())
    h.update(np.ascontiguousarray(array).tobytes())
    return h.hexdigest()[:20]


def build_parity(src: Path, dst: Path, stems=None) -> dict:
    pool, manifest = {}, {}
    for path in sorted((src / "parity").glob("*.npz")):
        if stems is not None and path.stem not in stems:
            continue
        entry = {"arrays": {}, "sampled": {}}
        with np.load(path) as data:
            for key in data.files:
                array = data[key]
                grid = _sampling(key, array)
                if grid is not None:
                    rows, cols = grid
                    array = array[:, rows][:, :, cols]
                    entry["sampled"][key] = {"rows": rows.tolist(), "cols": cols.tolist()}
                digest = _digest(array)
                pool.setdefault(digest, array)
                entry["arrays"][key] = digest
        manifest[path.stem] = entry
    dst.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(dst / "pool.npz", **pool)
    with open(dst / "manifest.json", "w", encoding="utf-8") as f:
        json.dump(manifest, f, indent=1, sort_keys=True)
    return manifest


def write_folder(src: Path, out: Path, *, keys: bool, stems=None) -> None:
    """Write the compact copy into ``out`` (replaced as a whole, never half-written)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".reference_", dir=out.parent))
    shutil.copy2(src / "summary.json", tmp / "summary.json")
    if keys:
        shutil.copytree(src / "keys", tmp / "keys")
    build_parity(src, tmp / "parity", stems)
    os.chmod(tmp, 0o755)
    for path in tmp.rglob("*"):
        os.chmod(path, 0o755 if path.is_dir() else 0o644)
    old = out.with_name(out.name + ".old")
    if out.exists():
        out.rename(old)
    tmp.rename(out)
    shutil.rmtree(old, ignore_errors=True)
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    print(f"wrote {out} ({size / 1e6:.1f} MB)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("reference", type=Path, help="the official reference folder")
    parser.add_argument("--output", type=Path, default=OUT)
    args = parser.parse_args()
    src = args.reference
    if not (src / "summary.json").is_file():
        raise SystemExit(f"{src} has no summary.json: pass the official reference folder")
    write_folder(src, args.output, keys=True)
    write_folder(src, PACKAGED, keys=False, stems=PACKAGED_STEMS)


if __name__ == "__main__":
    main()
