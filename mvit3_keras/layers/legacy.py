"""Class names that earlier saved ``.keras`` files contain, for formulations that are
now switches of one layer. Each is the layer itself under its old name (Keras keys a
saved layer's weights by its class name, so an alias needs its own class); the old
configs are valid configs of that layer. New models never contain them."""

from __future__ import annotations

import keras

from mvit3_keras.layers.attention import LinearSelfAttention, MultiHeadSelfAttention
from mvit3_keras.layers.patches import Fold, Unfold


@keras.saving.register_keras_serializable(package="mvit3_keras")
class MultiHeadSelfAttentionSplit(MultiHeadSelfAttention):
    """Loads saved ``MultiHeadSelfAttentionSplit``: :class:`MultiHeadSelfAttention`
    with ``dim`` set."""


@keras.saving.register_keras_serializable(package="mvit3_keras")
class LinearSelfAttentionSplit(LinearSelfAttention):
    """Loads saved ``LinearSelfAttentionSplit``: :class:`LinearSelfAttention` with
    ``dim`` set."""


@keras.saving.register_keras_serializable(package="mvit3_keras")
class LinearSelfAttentionExport(LinearSelfAttention):
    """Loads saved ``LinearSelfAttentionExport``: :class:`LinearSelfAttention` with
    ``target`` set."""


@keras.saving.register_keras_serializable(package="mvit3_keras")
class UnfoldExport(Unfold):
    """Loads saved ``UnfoldExport``: :class:`Unfold` with ``target`` set."""


@keras.saving.register_keras_serializable(package="mvit3_keras")
class FoldExport(Fold):
    """Loads saved ``FoldExport``: :class:`Fold` with ``target`` set."""


LEGACY_CLASSES = (
    MultiHeadSelfAttentionSplit,
    LinearSelfAttentionSplit,
    LinearSelfAttentionExport,
    UnfoldExport,
    FoldExport,
)
