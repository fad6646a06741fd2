"""Official (ml-cvnets / MobileViTv3) PyTorch checkpoints <-> Keras weights.

Every weight-bearing Keras layer is named like the PyTorch module that owns the
weights, so the mapping is a rule per layer type (docs/semantics.md section 9):

=====================  =========================================  ==========================
Keras layer            official keys (``<name>.``)                 transform
=====================  =========================================  ==========================
Conv2D                 ``weight [O, I, kh, kw]``, ``bias``         ``transpose(2, 3, 1, 0)``
DepthwiseConv2D        ``weight [C, 1, kh, kw]``, ``bias``         ``transpose(2, 3, 0, 1)``
Dense                  ``weight [O, I]``, ``bias``                 ``.T``
BatchNormalization     ``weight, bias, running_mean, running_var`` (+ ``num_batches_tracked``)
LayerNormalization     ``weight, bias``
GroupNormalization     ``weight, bias``
=====================  =========================================  ==========================

Channel order: the v1-family checkpoints (MobileViTv1, MobileViTv3-XXS/XS/S
and L2) were trained on BGR images (OpenCV); with ``rgb_input=True`` the input
channels of the first convolution are reversed so the Keras model takes RGB.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Mapping

import keras
import numpy as np

from mvit3_keras.graph_clone import iter_layers

_WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "net", "ema_state_dict")
FIRST_CONV_SUFFIX = "conv_1.block.conv"
_MAX_LISTED = 25


class CheckpointMismatchError(ValueError):
    """The checkpoint does not fit the model (missing/unexpected keys, wrong shapes)."""


# --------------------------------------------------------------------------------------
# Reading checkpoints
# --------------------------------------------------------------------------------------
def read_state_dict(source) -> OrderedDict[str, np.ndarray]:
    """Read ``source`` into an ordered ``{official key: float/int ndarray}``.

    ``source``: a ``.pt`` / ``.pth`` file as the authors release it (also wrapped
    as ``{"state_dict": ...}`` / ``{"model": ...}``, or with ``module.``
    prefixes from DataParallel), an ``.npz`` file, or a mapping key -> array.
    """
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        if not os.path.exists(path):
            raise FileNotFoundError(f"checkpoint not found: {path}")
        if path.endswith(".npz"):
            with np.load(path, allow_pickle=False) as data:
                raw = OrderedDict((k, data[k]) for k in data.files)
        elif path.endswith((".pt", ".pth", ".bin", ".ckpt")):
            raw = _read_torch(path)
        else:
            raise ValueError(
                f"unsupported checkpoint format {path!r}: use a PyTorch .pt/.pth file, "
                "an .npz file or a mapping of key -> array"
            )
    elif isinstance(source, Mapping):
        raw = source
    else:
        raise TypeError(f"checkpoint source must be a path or a mapping, got {type(source)!r}")

    for _ in range(3):  # unwrap {"state_dict": {...}} and similar containers
        nested = [k for k in _WRAPPER_KEYS if isinstance(raw.get(k), Mapping)]
        if not nested:
            break
        raw = raw[nested[0]]
    out = OrderedDict()
    for key, value in raw.items():
        if key.startswith("ref__"):  # reference outputs stored beside the weights
            continue
        if key.startswith("module."):
            key = key[len("module.") :]
        out[key] = _to_numpy(value)
    return out


def _read_torch(path):
    from mvit3_keras.optional import require

    torch = require("torch", extra="torch", purpose=f"reading the PyTorch checkpoint {path!r}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ValueError(
            f"could not read PyTorch checkpoint {path!r} ({type(err).__name__}: {err}). "
            "Is the file complete? Official checkpoints are plain state_dicts."
        ) from err
    if not isinstance(obj, Mapping):
        raise ValueError(f"{path!r} holds a {type(obj).__name__}, not a state_dict")
    return obj


def _to_numpy(value):
    if hasattr(value, "detach"):  # torch.Tensor
        value = value.detach().cpu()
        if str(value.dtype) == "torch.bfloat16":
            value = value.float()
        value = value.numpy()
    arr = np.asarray(value)
    if arr.dtype.kind == "f":
        arr = arr.astype(np.float32)
    return arr


# --------------------------------------------------------------------------------------
# The mapping
# --------------------------------------------------------------------------------------
def _layer_entries(layer):
    """``[(suffix, variable, to_keras, from_keras)]`` for a weight-bearing layer."""

    def t(perm):
        inv = np.argsort(perm)
        return (lambda w: np.transpose(w, perm)), (lambda w: np.transpose(w, inv))

    ident = (lambda w: w), (lambda w: w)
    if isinstance(layer, keras.layers.DepthwiseConv2D):
        entries = [("weight", layer.kernel, *t((2, 3, 0, 1)))]
    elif isinstance(layer, keras.layers.Conv2D):
        entries = [("weight", layer.kernel, *t((2, 3, 1, 0)))]
    elif isinstance(layer, keras.layers.Dense):
        entries = [("weight", layer.kernel, *t((1, 0)))]
    elif isinstance(layer, keras.layers.BatchNormalization):
        return [
            ("weight", layer.gamma, *ident),
            ("bias", layer.beta, *ident),
            ("running_mean", layer.moving_mean, *ident),
            ("running_var", layer.moving_variance, *ident),
        ]
    elif isinstance(layer, (keras.layers.LayerNormalization, keras.layers.GroupNormalization)):
        return [("weight", layer.gamma, *ident), ("bias", layer.beta, *ident)]
    else:
        return None
    if getattr(layer, "use_bias", False):
        entries.append(("bias", layer.bias, *ident))
    return entries


def keras_key_map(model) -> OrderedDict[str, tuple]:
    """``{official key: (variable, to_keras, from_keras)}`` for every weight of ``model``.

    Raises if the model has weights that no official key explains (a custom
    layer the converter does not know), so nothing is silently left random.
    """
    mapping = OrderedDict()
    unknown = []
    for layer in iter_layers(model):
        if isinstance(layer, keras.Model) or not layer.weights:
            continue  # a nested model's own layers come next
        entries = _layer_entries(layer)
        if entries is None:
            unknown.append(f"{layer.name} ({type(layer).__name__})")
            continue
        for suffix, var, to_keras, from_keras in entries:
            mapping[f"{layer.name}.{suffix}"] = (var, to_keras, from_keras)
    if unknown:
        raise TypeError(
            "the model has layers the cvnets converter cannot map: " + ", ".join(unknown)
        )
    return mapping


def _is_v1_family(keys) -> bool:
    return any(".pre_norm_mha." in k for k in keys)


def _first_conv_key(keys):
    for k in keys:
        if k.endswith(FIRST_CONV_SUFFIX + ".weight") and k.count(".") <= 4:
            return k
    return None


def match_state_dict(state: Mapping, mapping: Mapping, flip_key=None):
    """Pair checkpoint arrays with model variables (shapes checked, converted to
    the Keras layout, ``flip_key``'s input channels reversed).

    Returns ``(assignments, missing, unexpected, mismatched)``: ``[(variable,
    array)]`` and the key lists of :func:`load_cvnets_weights`.
    """
    missing = [k for k in mapping if k not in state]
    unexpected = [k for k in state if k not in mapping and not k.endswith(".num_batches_tracked")]
    mismatched = []
    assignments = []
    for key, (var, to_keras, from_keras) in mapping.items():
        if key not in state:
            continue
        value = state[key]
        try:
            converted = to_keras(value)
        except ValueError:
            converted = None
        if converted is None or tuple(converted.shape) != tuple(var.shape):
            expected = _torch_shape(var, to_keras, from_keras)
            mismatched.append(f"{key}: checkpoint {list(value.shape)} vs model {expected}")
            continue
        if key == flip_key:
            converted = converted[:, :, ::-1, :]
        assignments.append((var, converted))
    return assignments, missing, unexpected, mismatched


def load_cvnets_weights(
    model, source, *, strict: bool = True, rgb_input: bool = True, key_prefix: str = ""
) -> dict:
    """Load an official checkpoint into a model built by this package.

    Args:
        model: from :func:`create_model` (or a segmenter / detector).
        source: ``.pt`` / ``.pth`` / ``.npz`` path or a mapping key -> array.
        strict: raise :class:`CheckpointMismatchError` listing every missing
            key, unexpected key and shape mismatch. With ``strict=False`` the
            matching weights are loaded and the rest is reported.
        rgb_input: the converted model takes RGB images (the v1-family
            checkpoints were trained on BGR; their first conv is flipped).
            ``False`` keeps the official channel order.
        key_prefix: prepended to every checkpoint key, e.g. ``"encoder."`` to load
            a classification checkpoint into a segmenter's backbone.

    Returns:
        ``{"loaded": n, "missing": [...], "unexpected": [...], "mismatched": [...],
        "bgr_to_rgb": bool}``.
    """
    state = read_state_dict(source)
    if key_prefix:
        state = OrderedDict((key_prefix + k, v) for k, v in state.items())
    flip_key = _first_conv_key(state) if rgb_input and _is_v1_family(state) else None
    assignments, missing, unexpected, mismatched = match_state_dict(
        state, keras_key_map(model), flip_key
    )
    if strict and (missing or unexpected or mismatched):
        raise CheckpointMismatchError(
            _mismatch_message(model, state, missing, unexpected, mismatched)
        )
    for var, value in assignments:
        var.assign(value.astype(var.dtype) if hasattr(value, "astype") else value)
    return {
        "loaded": len(assignments),
        "missing": missing,
        "unexpected": unexpected,
        "mismatched": mismatched,
        "bgr_to_rgb": flip_key is not None,
    }


def _torch_shape(var, to_keras, from_keras):
    return list(from_keras(np.zeros(var.shape, dtype=np.float32)).shape)


def _listing(title, items):
    if not items:
        return ""
    shown = "\n    ".join(items[:_MAX_LISTED])
    more = f"\n    ... and {len(items) - _MAX_LISTED} more" if len(items) > _MAX_LISTED else ""
    return f"\n  {title} ({len(items)}):\n    {shown}{more}"


def _mismatch_message(model, state, missing, unexpected, mismatched):
    from mvit3_keras.variant_guess import checkpoint_num_classes, guess_variant

    guess = guess_variant(state)
    num_classes = checkpoint_num_classes(state)
    hint = ""
    if guess and guess != model.name:
        classes = f"num_classes={num_classes}" if num_classes else "..."
        builder = "create_model"  # dense-task checkpoints name their builder
        if any(k.startswith("seg_head.") for k in state):
            builder = "create_segmenter"
        elif any(k.startswith("ssd_heads.") for k in state):
            builder = "create_detector"
        hint = (
            f"\nThe checkpoint looks like {guess!r}: build the model with "
            f"mvit3_keras.{builder}({guess!r}, {classes})."
        )
    if num_classes and not hint:
        hint = f"\nThe checkpoint's classifier has {num_classes} classes."
    return (
        f"checkpoint does not match model {model.name!r}: {len(missing)} missing, "
        f"{len(unexpected)} unexpected, {len(mismatched)} with a different shape."
        + _listing("missing keys (in the model, not in the checkpoint)", missing)
        + _listing("unexpected keys (in the checkpoint, not in the model)", unexpected)
        + _listing("shape mismatches", mismatched)
        + hint
        + "\nUse strict=False to load only the matching weights."
    )


def to_cvnets_state_dict(model, *, rgb_input: bool = True) -> OrderedDict[str, np.ndarray]:
    """The inverse of :func:`load_cvnets_weights`: official keys -> float32 arrays.

    BatchNorm ``num_batches_tracked`` entries are added (int64, value 0) so the
    result loads with ``load_state_dict(strict=True)`` in the official code.
    """
    mapping = keras_key_map(model)
    out = OrderedDict()
    flip = rgb_input and _is_v1_family(mapping)
    first = _first_conv_key(mapping) if flip else None
    for key, (var, _, from_keras) in mapping.items():
        value = keras.ops.convert_to_numpy(var).astype(np.float32)
        if key == first:
            value = value[:, :, ::-1, :]
        out[key] = np.ascontiguousarray(from_keras(value))
        if key.endswith(".running_var"):
            out[key[: -len("running_var")] + "num_batches_tracked"] = np.array(0, dtype=np.int64)
    return out
