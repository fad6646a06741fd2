"""``mvit3 convert-weights``: official checkpoint -> ``.keras`` / ``.weights.h5`` (atomic)."""

from __future__ import annotations

import os

from mvit3_keras.backbone import create_model
from mvit3_keras.convert import load_cvnets_weights, read_state_dict
from mvit3_keras.io_utils import atomic_path
from mvit3_keras.registry import get_spec
from mvit3_keras.variant_guess import checkpoint_num_classes, guess_variant


def convert_checkpoint(
    name: str,
    checkpoint,
    output,
    *,
    num_classes: int | None = None,
    input_shape=(256, 256, 3),
    rgb_input: bool = True,
    strict: bool = True,
) -> dict:
    output = os.fspath(output)
    if not output.endswith((".keras", ".weights.h5")):
        raise ValueError(
            f"output {output!r} must end with .keras (whole model) or .weights.h5 (weights only)"
        )
    spec = get_spec(name)
    state = read_state_dict(checkpoint)
    guessed = guess_variant(state)
    if strict and guessed is not None and guessed != spec.name:
        raise ValueError(
            f"checkpoint {checkpoint!s} is a {guessed!r} checkpoint, not {spec.name!r}: "
            f"run `mvit3 convert-weights {guessed} ...`"
        )
    found = checkpoint_num_classes(state)
    if num_classes is None:
        num_classes = found or 1000
    elif found is not None and found != num_classes and strict:
        raise ValueError(
            f"--num-classes {num_classes} does not match the checkpoint's classifier "
            f"({found} classes); drop --num-classes or pass --no-strict to skip the classifier"
        )
    model = create_model(spec.name, num_classes=num_classes, input_shape=input_shape)
    report = load_cvnets_weights(model, state, strict=strict, rgb_input=rgb_input)
    with atomic_path(output) as tmp:
        if output.endswith(".weights.h5"):
            model.save_weights(tmp)
        else:
            model.save(tmp)
    return {
        "model": spec.name,
        "output": output,
        "num_classes": num_classes,
        "input_shape": list(input_shape),
        "input_channel_order": "rgb" if (rgb_input or spec.input_channel_order == "rgb") else "bgr",
        "loaded_tensors": report["loaded"],
        "missing": report["missing"],
        "unexpected": report["unexpected"],
        "mismatched": report["mismatched"],
    }
