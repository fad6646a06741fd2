"""The repository's own Python sources, for tests that read the code itself."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CODE_FOLDERS = ("mvit3_keras", "training", "quantization", "examples", "tests", "benchmarks")


def python_files(*folders: str) -> list:
    """Sorted ``*.py`` paths under ``folders`` (default: every code folder), leaving out
    hidden folders such as ``benchmarks/.peer-venv`` (a local environment the peer
    benchmarks create, with third-party code that is not ours to check)."""
    paths = []
    for folder in folders or CODE_FOLDERS:
        for path in sorted((ROOT / folder).rglob("*.py")):
            if not any(part.startswith(".") for part in path.relative_to(ROOT).parts):
                paths.append(path)
    return paths
