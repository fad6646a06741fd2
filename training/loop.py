"""The public entry points of training, for the ``mvit3`` command and scripts.

:func:`train` runs :class:`training.trainer.Trainer` (its module docstring describes a
run step by step; the task, e.g. classification or segmentation, comes from
:mod:`training.tasks`); :func:`evaluate` evaluates a run folder or a ``.keras`` model
(:mod:`training.run_folder`).
"""

from __future__ import annotations

from training.run_folder import RUN_FILE, SUMMARY_FILE, RunConflictError, evaluate
from training.trainer import TrainConfig, Trainer, resolve, train

__all__ = [
    "RUN_FILE",
    "SUMMARY_FILE",
    "RunConflictError",
    "TrainConfig",
    "Trainer",
    "evaluate",
    "resolve",
    "train",
]
