"""Which registered variant an official ``state_dict`` belongs to (for error messages
and for ``mvit3 convert-weights`` to check the requested name)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Optional

from mvit3_keras import specs as S
from mvit3_keras.registry import get_spec, list_models


def _shape(state, key, dim):
    value = state.get(key)
    return None if value is None or value.ndim <= dim else int(value.shape[dim])


def checkpoint_signature(state: Mapping) -> Optional[dict]:
    prefix = "encoder." if any(k.startswith("encoder.") for k in state) else ""
    st = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    if "conv_1.block.conv.weight" not in st:
        return None
    v1 = any(".pre_norm_mha." in k for k in st)
    sig = {
        "family": S.V1_FAMILY if v1 else S.V2_FAMILY,
        "stem": _shape(st, "conv_1.block.conv.weight", 0),
        "out": tuple(
            _shape(st, f"layer_{i}.0.block.red_1x1.block.conv.weight", 0) for i in range(1, 6)
        ),
        "layer_4_blocks": len(
            {
                k.split(".")[3]
                for k in st
                if k.startswith("layer_4.1.global_rep.") and "pre_norm" in k
            }
        ),
    }
    local_1x1 = "local_rep.conv_1x1" if v1 else "local_rep.1"
    sig["attn"] = tuple(
        _shape(st, f"layer_{i}.1.{local_1x1}.block.conv.weight", 0) for i in (3, 4, 5)
    )
    if v1:
        depthwise = _shape(st, "layer_3.1.local_rep.conv_3x3.block.conv.weight", 1) == 1
        sig["block"] = S.BLOCK_MOBILEVITV3 if depthwise else S.BLOCK_MOBILEVIT
    else:
        proj_in = _shape(st, "layer_3.1.conv_proj.block.conv.weight", 1)
        sig["block"] = S.BLOCK_MOBILEVITV3 if proj_in == 2 * sig["attn"][0] else S.BLOCK_MOBILEVITV2
    return sig


def spec_signature(spec: S.ModelSpec) -> dict:
    return {
        "family": spec.family,
        "stem": spec.stem_channels,
        "out": tuple(s.out_channels for s in spec.stages),
        "layer_4_blocks": spec.layer_4.num_attn_blocks,
        "attn": tuple(s.attn_dim for s in spec.stages[2:]),
        "block": spec.block,
    }


def guess_variant(state: Mapping) -> Optional[str]:
    """Registered name whose architecture matches ``state``, or ``None``."""
    sig = checkpoint_signature(state)
    if sig is None:
        return None
    for name in list_models():
        if spec_signature(get_spec(name)) == sig:
            return name
    return None


def checkpoint_num_classes(state: Mapping) -> Optional[int]:
    for key in ("classifier.fc.weight", "classifier.1.weight"):
        if key in state:
            return int(state[key].shape[0])
    return None
