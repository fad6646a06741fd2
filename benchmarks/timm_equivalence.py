"""Our weights in timm's layout, to prove that a timm model is our architecture's twin.

timm's ``mobilevit_*`` / ``mobilevitv2_*`` modules hold the same tensors as the
official ml-cvnets models, in the same order, under other names. The official
``state_dict`` of our model (:func:`mvit3_keras.to_cvnets_state_dict`, without
the BatchNorm step counters) is paired with timm's ``state_dict`` position by
position; every pair must have the same shape, otherwise the models differ.
The proof is the output: timm run with these weights must give our logits
(the parity rule of the reference data: max |diff| <= 2e-4 x std).
"""

from __future__ import annotations

import numpy as np

PARITY_REL = 2e-4


def to_timm_state_dict(model, timm_keys) -> dict:
    """``{timm_key: array}`` from our Keras ``model``; ``timm_keys`` = ``[[key, shape], ...]``."""
    from mvit3_keras import to_cvnets_state_dict

    ours = [
        (k, v)
        for k, v in to_cvnets_state_dict(model, rgb_input=False).items()
        if not k.endswith("num_batches_tracked")
    ]
    if len(ours) != len(timm_keys):
        raise ValueError(
            f"{model.name}: {len(ours)} tensors vs {len(timm_keys)} in the timm model: "
            "not the same architecture"
        )
    out = {}
    for (ok, value), (tk, tshape) in zip(ours, timm_keys):
        if list(value.shape) != list(tshape):
            raise ValueError(
                f"{model.name}: {ok} {list(value.shape)} pairs with timm {tk} {list(tshape)}: "
                "shapes differ, not the same architecture"
            )
        out[tk] = np.ascontiguousarray(value, dtype=np.float32)
    return out


def randomize_weights(model, seed: int = 0) -> None:
    """Give every normalisation layer non-trivial statistics and affine weights,
    so the comparison exercises them (fresh BatchNorm is the identity)."""
    import keras

    rng = np.random.default_rng(seed)
    for layer in _layers(model):
        if isinstance(layer, keras.layers.BatchNormalization):
            c = layer.gamma.shape[0]
            layer.gamma.assign(rng.uniform(0.5, 1.5, c).astype(np.float32))
            layer.beta.assign(rng.normal(0, 0.1, c).astype(np.float32))
            layer.moving_mean.assign(rng.normal(0, 0.1, c).astype(np.float32))
            layer.moving_variance.assign(rng.uniform(0.5, 1.5, c).astype(np.float32))
        elif isinstance(layer, (keras.layers.LayerNormalization, keras.layers.GroupNormalization)):
            c = layer.gamma.shape[0]
            layer.gamma.assign(rng.uniform(0.5, 1.5, c).astype(np.float32))
            layer.beta.assign(rng.normal(0, 0.1, c).astype(np.float32))
        elif getattr(layer, "use_bias", False) and getattr(layer, "bias", None) is not None:
            layer.bias.assign(rng.normal(0, 0.05, layer.bias.shape).astype(np.float32))


def _layers(model):
    import keras

    for layer in model.layers:
        if isinstance(layer, keras.Model):
            yield from _layers(layer)
        else:
            yield layer


def compare(ours: np.ndarray, theirs: np.ndarray) -> dict:
    ours = np.asarray(ours, np.float64)
    theirs = np.asarray(theirs, np.float64)
    err = float(np.abs(ours - theirs).max())
    tol = PARITY_REL * float(ours.std())
    return {
        "max_abs_diff": err,
        "tolerance": tol,
        "logit_std": float(ours.std()),
        "top1_agree": float((ours.argmax(-1) == theirs.argmax(-1)).mean()),
        "equivalent": bool(err <= tol),
    }
