"""Load a classification checkpoint into the backbone of a dense-prediction model.

This is how the paper fine-tunes: the segmentation / detection yamls point
``model.classification.pretrained`` at an ImageNet checkpoint, whose
classifier (and, in the v1 family, ``conv_1x1_exp``) the dense models do not
have. The backbone of a model from :func:`mvit3_keras.create_segmenter` /
:func:`mvit3_keras.create_detector` carries the ``encoder.`` prefix.

:func:`load_weights_except` is the other fine-tuning case: a checkpoint of the same
task with another label set, loaded into everything but the head. Both check the
whole checkpoint before assigning anything (:func:`check_before_loading`).
"""

from __future__ import annotations

from collections import OrderedDict

from mvit3_keras.convert import (
    CheckpointMismatchError,
    keras_key_map,
    load_cvnets_weights,
    read_state_dict,
)

ENCODER_PREFIX = "encoder."
_UNUSED_ENCODER_PARTS = ("classifier.", "conv_1x1_exp.")


def load_backbone_weights(model, source, *, rgb_input: bool = True) -> dict:
    """Load the backbone weights of ``source`` into ``model``'s ``encoder.*`` layers.

    Args:
        model: a segmenter or detector (layers named ``encoder.*``).
        source: a classification checkpoint (``.pt`` / ``.npz`` / mapping;
            keys without prefix) or a segmentation / detection checkpoint
            (``encoder.*`` keys; its head is ignored).
        rgb_input: as in :func:`mvit3_keras.load_cvnets_weights`.

    Every backbone weight must be in the checkpoint with the right shape
    (else :class:`CheckpointMismatchError`, e.g. for a checkpoint of another
    variant). The classifier / ``conv_1x1_exp`` keys are skipped and the head
    keeps its initialisation.

    Returns:
        ``{"loaded": n, "skipped": [checkpoint keys not used],
        "head_not_loaded": [model keys left as initialised], "bgr_to_rgb": bool}``.
    """
    state = read_state_dict(source)
    prefix = "" if any(k.startswith(ENCODER_PREFIX) for k in state) else ENCODER_PREFIX
    used = OrderedDict()
    skipped = []  # as named in the checkpoint
    for original, value in state.items():
        key = prefix + original
        inner = key[len(ENCODER_PREFIX) :] if key.startswith(ENCODER_PREFIX) else None
        if inner is None or inner.startswith(_UNUSED_ENCODER_PARTS):
            skipped.append(original)
        else:
            used[key] = value
    mapping = keras_key_map(model)
    required = [k for k in mapping if k.startswith(ENCODER_PREFIX)]
    check_before_loading(model, mapping, used, required, what="backbone")
    report = load_cvnets_weights(model, used, strict=False, rgb_input=rgb_input)
    return {
        "loaded": report["loaded"],
        "skipped": [k for k in skipped if not k.endswith(".num_batches_tracked")],
        "head_not_loaded": [k for k in report["missing"] if not k.startswith(ENCODER_PREFIX)],
        "bgr_to_rgb": report["bgr_to_rgb"],
    }


def load_weights_except(model, source, *, head_prefixes, rgb_input: bool = True) -> dict:
    """Load every weight of ``model`` except its head from ``source``.

    Fine-tuning to a new label set: the checkpoint's head (keys starting with one of
    ``head_prefixes``, e.g. ``"classifier"``) is skipped and the model's head keeps its
    initialisation; every other weight must be in the checkpoint with the right shape
    (else :class:`CheckpointMismatchError`, and nothing is assigned).

    Returns:
        ``{"loaded": n, "skipped": [checkpoint keys not used],
        "head_not_loaded": [model keys left as initialised], "bgr_to_rgb": bool}``.
    """
    head_prefixes = tuple(head_prefixes)
    state = read_state_dict(source)
    used = OrderedDict((k, v) for k, v in state.items() if not k.startswith(head_prefixes))
    skipped = [k for k in state if k.startswith(head_prefixes)]
    mapping = keras_key_map(model)
    required = [k for k in mapping if not k.startswith(head_prefixes)]
    check_before_loading(model, mapping, used, required, what="body (all but the head)")
    report = load_cvnets_weights(model, used, strict=False, rgb_input=rgb_input)
    return {
        "loaded": report["loaded"],
        "skipped": skipped,
        "head_not_loaded": report["missing"],
        "bgr_to_rgb": report["bgr_to_rgb"],
    }


def check_before_loading(model, mapping, used: dict, required: list, *, what: str) -> None:
    """Raise :class:`CheckpointMismatchError` unless every ``required`` model key is in
    ``used`` with the right shape and ``used`` has no key the model lacks (checked before
    anything is assigned, so a wrong checkpoint changes nothing)."""
    missing = [k for k in required if k not in used]
    unexpected = [k for k in used if k not in mapping and not k.endswith(".num_batches_tracked")]
    mismatched = []
    for key, value in used.items():
        if key in mapping:
            var, to_keras, _ = mapping[key]
            try:
                shape = tuple(to_keras(value).shape)
            except ValueError:
                shape = None
            if shape != tuple(var.shape):
                mismatched.append(f"{key}: checkpoint {list(value.shape)}")
    problems = missing + unexpected + mismatched
    if problems:
        raise CheckpointMismatchError(
            f"the checkpoint's {what} does not match {model.name!r}: "
            f"{len(missing)} {what} weights missing, {len(unexpected)} unexpected, "
            f"{len(mismatched)} with a different shape, e.g. {problems[:5]}. "
            "Is it a checkpoint of the same variant (see mvit3_keras.list_models())?"
        )
