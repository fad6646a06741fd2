"""Imports of packages a plain ``pip install mvit3-keras`` may lack, with one clear error.

Every package that a documented ``mvit3`` command imports is a core dependency
(``setup.cfg``); the extras hold only what no documented command needs: ``torch``
(reading PyTorch ``.pt`` checkpoints) and ``test`` / ``dev`` (the test suite and
linter). A missing package raises :class:`MissingDependencyError`, whose one-line
message names the package and the ``pip install`` that brings it; the ``mvit3``
command line prints it without a traceback.
"""

from __future__ import annotations

import importlib
from typing import Optional

DISTRIBUTION = "mvit3-keras"

# top-level import name -> (pip package, extra of mvit3-keras or None for a core dependency)
PACKAGES = {
    "torch": ("torch", "torch"),
    "pytest": ("pytest", "test"),
    "tensorflow": ("tensorflow", None),
    "keras": ("keras", None),
    "numpy": ("numpy", None),
    "h5py": ("h5py", None),
    "tensorflow_datasets": ("tensorflow-datasets", None),
    "importlib_resources": ("importlib_resources", None),
    "sklearn": ("scikit-learn", None),
    "PIL": ("pillow", None),
    "scipy": ("scipy", None),
    "matplotlib": ("matplotlib", None),
    "tensorboard": ("tensorboard", None),
    "ai_edge_litert": ("ai-edge-litert", None),
    "flatbuffers": ("flatbuffers", None),
}


class MissingDependencyError(ImportError):
    """A package that mvit3-keras needs here is not installed; the message says what to install."""


def missing_message(module: str, purpose: str, extra: Optional[str] = None) -> str:
    """``"<purpose> needs ... 'package', which is not installed: pip install ..."``: the extra
    of mvit3-keras that brings ``module`` (a top-level import name), or its pip package."""
    package, known_extra = PACKAGES.get(module.split(".")[0], (module.split(".")[0], None))
    extra = extra or known_extra
    if extra:
        return (
            f"{purpose} needs the optional package {package!r}, which is not installed: "
            f"pip install '{DISTRIBUTION}[{extra}]'"
        )
    return (
        f"{purpose} needs the package {package!r}, a dependency of {DISTRIBUTION} that is "
        f"not installed here: pip install {package}"
    )


def require(module: str, *, purpose: str, extra: Optional[str] = None):
    """Import and return ``module``; if it is missing raise :class:`MissingDependencyError`
    naming the extra (or package) to install, e.g.
    ``require("torch", extra="torch", purpose="reading .pt checkpoints")``."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        missing = getattr(err, "name", None) or module
        if missing.split(".")[0] != module.split(".")[0]:
            raise  # the package is there but broken (one of *its* imports failed)
        raise MissingDependencyError(missing_message(module, purpose, extra)) from err


def explain_import_error(err: ImportError, purpose: str) -> str:
    """One line for an ``ImportError`` raised by a command: what to install when it is a
    package of :data:`PACKAGES`, else the error itself."""
    if isinstance(err, MissingDependencyError):
        return str(err)
    name = getattr(err, "name", None)
    if isinstance(err, ModuleNotFoundError) and name and name.split(".")[0] in PACKAGES:
        return missing_message(name, purpose)
    return f"{type(err).__name__}: {err}"
