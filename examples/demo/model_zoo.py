"""Demo step 1, the model zoo: official checkpoint -> Keras, checked against the official outputs.

The reference checkpoint of MobileViTv3-XXS (seeded weights made by the
official PyTorch code, ``cvnets/models/classification/mobilevit.py`` with the
MobileViTv3 overlay, shipped in ``mvit3_keras/reference_data``) is converted to
``.keras``, reloaded, and its parameter / MAC counts and logits are compared
with the official ones.
"""

from __future__ import annotations

import os

import numpy as np

MODEL_ZOO_TITLE = "model zoo: official checkpoint -> Keras, checked against the official outputs"
REFERENCE_STEM = "cls_xx_small_v3"  # MobileViTv3-XXS in the official reference data


def step_model_zoo(context: dict) -> dict:
    """Convert the official-layout reference checkpoint and check it against the authors' code.

    The reference checkpoint holds seeded weights made by the official PyTorch
    code, with the official model's logits for three inputs; it ships with the
    package (``mvit3_keras/reference_data``). Everything printed is checkable:
    parameter and MAC counts against the official profiler, and the logits of the
    reloaded ``.keras`` model against the official ones (the parity rule: max
    |diff| <= 2e-4 x std of the official logits). Its weights are random, so no
    class predictions are shown here; the later steps classify real images.
    """
    import keras

    import mvit3_keras as m
    from mvit3_keras import reference
    from mvit3_keras.convert_cli import convert_checkpoint

    out = context["output"]
    official = reference.load_summary()[REFERENCE_STEM]
    checkpoint = reference.write_parity_checkpoint(
        REFERENCE_STEM, os.path.join(out, f"{REFERENCE_STEM}.npz")
    )
    keras_path = os.path.join(out, "mobilevitv3_xxs.keras")
    report = convert_checkpoint("mobilevitv3_xxs", checkpoint, keras_path, rgb_input=False)
    model = keras.models.load_model(keras_path)
    params, macs = m.count_params(model), m.count_macs(model)["official"]
    print(
        f"  converted {report['loaded_tensors']} tensors of the official reference checkpoint "
        f"{checkpoint} -> {keras_path}"
    )
    print(
        f"  params {params:,} (official {official['params']:,}), "
        f"MACs {macs / 1e6:.3f}M (official profiler {official['macs_M']:.3f}M)"
    )
    parity = _official_parity(model, reference.load_parity(REFERENCE_STEM))
    return {
        "checkpoint": checkpoint,
        "keras_model": keras_path,
        "params": params,
        "official_params": official["params"],
        "macs": macs,
        "official_macs": official["macs"],
        "parity": parity,
    }


def _official_parity(model, data) -> list:
    """Reloaded model vs the official logits for every stored input (sizes 256, 224, 200x260)."""
    import keras

    import mvit3_keras as m

    rows = []
    for i in range(3):
        x = data[f"ref__input{i}"].astype(np.float32)
        expected = data[f"ref__output{i}"]
        sized = m.create_model("mobilevitv3_xxs", input_shape=x.shape[1:])
        sized.set_weights(model.get_weights())
        err = float(np.abs(sized.predict(x, verbose=0) - expected).max())
        bar = 2e-4 * float(expected.std())
        rows.append({"input": list(x.shape[1:3]), "max_abs_diff": err, "bar": bar})
        print(
            f"  logits vs the official PyTorch model, input {x.shape[1]}x{x.shape[2]}: "
            f"max |diff| {err:.1e} (bar {bar:.1e}) {'OK' if err <= bar else 'FAILED'}"
        )
        keras.backend.clear_session()
    if any(r["max_abs_diff"] > r["bar"] for r in rows):
        raise RuntimeError("the converted model does not reproduce the official outputs")
    return rows
