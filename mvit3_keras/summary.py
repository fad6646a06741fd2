"""Parameter counts and the variant table (README, ``mvit3 list``)."""

from __future__ import annotations

import math


def count_params(model) -> int:
    """Trainable parameters, as the official code counts them (BatchNorm running
    statistics are buffers, not parameters)."""
    return int(sum(math.prod(w.shape) for w in model.trainable_weights))


def variant_table(names=None, *, image_size: int = 256) -> list:
    """One row per variant: name, paper name, family, params, MACs, top-1."""
    import keras

    from mvit3_keras.backbone import create_model
    from mvit3_keras.macs import count_macs
    from mvit3_keras.registry import get_spec, list_models

    rows = []
    for name in names or list_models():
        spec = get_spec(name)
        model = create_model(name, input_shape=(image_size, image_size, 3))
        macs = count_macs(model)
        rows.append(
            {
                "name": name,
                "paper_name": spec.display_name,
                "family": spec.family,
                "baseline": spec.is_baseline,
                "params": count_params(model),
                "macs_official": macs["official"],
                "macs_real": macs["real"],
                "imagenet_top1": spec.imagenet_top1,
                "top1_source": spec.top1_source,
                "input_channel_order": spec.input_channel_order,
            }
        )
        del model
        keras.backend.clear_session()
    return rows


def format_table(rows) -> str:
    header = f"{'name':<20} {'paper name':<18} {'params':>11} {'MACs (M)':>9} {'real (M)':>9} {'top-1':>6}"
    lines = [header, "-" * len(header)]
    for r in rows:
        top1 = f"{r['imagenet_top1']:.2f}" if r["imagenet_top1"] else "-"
        lines.append(
            f"{r['name']:<20} {r['paper_name']:<18} {r['params']:>11,} "
            f"{r['macs_official'] / 1e6:>9.1f} {r['macs_real'] / 1e6:>9.1f} {top1:>6}"
        )
    return "\n".join(lines)
