"""Export formulations, now switches of the model's own layers (``mvit3_keras.layers``).

* LayerNorm / GroupNorm(1) -> :class:`mvit3_keras.layers.NormalizationExport`
  (explicit ``MEAN, SUB, MUL, MEAN, ADD, RSQRT, MUL``, one MEAN per axis);
* ``Unfold`` / ``Fold`` -> the same layers with ``target="generic"`` /
  ``"edgetpu"`` (``SPACE_TO_DEPTH`` / ``DEPTH_TO_SPACE`` or concatenations);
* ``LinearSelfAttention`` -> the same layer with ``target`` set
  (:func:`mvit3_keras.layers.patch_softmax`).

The names below are kept for existing imports; ``UnfoldExport``, ``FoldExport`` and
``LinearSelfAttentionExport`` are the model layers themselves (check ``.target``).
"""

from __future__ import annotations

from mvit3_keras.layers import (
    EXPORT_TARGETS,
    Fold,
    LinearSelfAttention,
    NormalizationExport,
    Unfold,
    check_target,
    patch_softmax,
    stepwise_mean,
)

TARGETS = EXPORT_TARGETS
UnfoldExport = Unfold
FoldExport = Fold
LinearSelfAttentionExport = LinearSelfAttention

__all__ = [
    "TARGETS",
    "FoldExport",
    "LinearSelfAttentionExport",
    "NormalizationExport",
    "UnfoldExport",
    "check_target",
    "patch_softmax",
    "stepwise_mean",
]
