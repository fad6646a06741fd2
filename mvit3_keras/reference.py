"""Locating the official reference data (``shared/reference`` beside the repository).

The reference (official parameter/MAC counts, state_dict keys and parity
files made by running the authors' PyTorch code) is not shipped in the wheel.
``MVIT3_REFERENCE`` points at it; otherwise ``../shared/reference`` relative to
the repository root is used when present.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional

_REPO_ROOT = Path(__file__).resolve().parent.parent


def reference_dir() -> Optional[Path]:
    env = os.environ.get("MVIT3_REFERENCE")
    candidates = [Path(env)] if env else []
    candidates += [_REPO_ROOT.parent / "shared" / "reference", _REPO_ROOT / "shared" / "reference"]
    for path in candidates:
        if (path / "summary.json").is_file():
            return path
    return None


def load_summary() -> dict:
    ref = reference_dir()
    if ref is None:
        raise FileNotFoundError(
            "official reference data not found: set MVIT3_REFERENCE to the folder holding "
            "summary.json, keys/ and parity/"
        )
    with open(ref / "summary.json", encoding="utf-8") as f:
        return json.load(f)["variants"]
