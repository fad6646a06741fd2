"""One registry for every variant: ``list_models()`` / ``get_spec(name)``.

Published ImageNet-1k top-1 figures: MobileViTv3 from the official README
(micronDLA/MobileViTv3) and the paper's low-latency table (L2 models);
MobileViTv1/v2 from the ml-cvnets model zoo.
"""

from __future__ import annotations

import difflib
import warnings
from collections.abc import Mapping

from mvit3_keras import specs as S

_REGISTRY: dict = {}


def register(spec: S.ModelSpec) -> S.ModelSpec:
    """Add ``spec`` to the registry under ``spec.name`` (used below for the zoo)."""
    if spec.name in _REGISTRY:
        warnings.warn(f"model {spec.name!r} registered twice; the last one wins", stacklevel=2)
    _REGISTRY[spec.name] = spec
    return spec


def list_models(pattern: str = "*", *, baselines: bool = True) -> list:
    """Registered variant names (shell-style ``pattern``), in registration order."""
    import fnmatch

    return [
        name
        for name, spec in _REGISTRY.items()
        if fnmatch.fnmatch(name, pattern) and (baselines or not spec.is_baseline)
    ]


def did_you_mean(name, candidates) -> str:
    """``" Did you mean a, b?"`` for the names of ``candidates`` close to ``name``, or ``""``."""
    close = difflib.get_close_matches(str(name), list(candidates), n=3)
    return f" Did you mean {', '.join(close)}?" if close else ""


def lookup(table: Mapping, name, *, what: str, known: str):
    """``table[name]``, or a :class:`ValueError` naming close matches and every key:
    ``"Unknown <what> 'name'. Did you mean ...? <known>: a, b, ..."``."""
    try:
        return table[name]
    except (KeyError, TypeError):
        raise ValueError(
            f"Unknown {what} {name!r}.{did_you_mean(name, table)} {known}: {', '.join(table)}"
        ) from None


def get_spec(name: str) -> S.ModelSpec:
    """The :class:`~mvit3_keras.specs.ModelSpec` of a registered variant (a spec
    passes through)."""
    if isinstance(name, S.ModelSpec):
        return name
    return lookup(
        _REGISTRY, name, what="model variant", known="Known variants (mvit3_keras.list_models())"
    )


def spec_for_cvnets_name(cvnets_name: str) -> S.ModelSpec:
    """The variant whose official key file is ``keys/cls_<cvnets_name>.json``."""
    for spec in _REGISTRY.values():
        if spec.cvnets_name == cvnets_name:
            return spec
    raise ValueError(f"No registered variant corresponds to the official name {cvnets_name!r}")


# --- MobileViTv3, v1-based (MobileViTv3-XXS/XS/S and low-latency L2) ------------
_V3_V1 = (
    # name, mode, display, cvnets name, top-1, source
    ("mobilevitv3_xxs", "xx_small_v3", 0.05, "MobileViTv3-XXS", "xx_small_v3", 70.98),
    ("mobilevitv3_xs", "x_small_v3", 0.1, "MobileViTv3-XS", "x_small_v3", 76.7),
    ("mobilevitv3_s", "small_v3", 0.1, "MobileViTv3-S", "small_v3", 79.3),
)
for _name, _mode, _drop, _disp, _cv, _top1 in _V3_V1:
    register(
        S.v1_family_spec(
            _name,
            _mode,
            S.BLOCK_MOBILEVITV3,
            transformer_dropout=_drop,
            published=S.Published(_disp, _cv, _top1, "official README"),
        )
    )
_L2_TOP1 = {"xx_small_v3": 70.23, "x_small_v3": 76.10, "small_v3": 79.06}
for _name, _mode, _drop, _disp, _cv, _top1 in _V3_V1:
    register(
        S.v1_family_spec(
            _name + "_l2",
            _mode,
            S.BLOCK_MOBILEVITV3,
            layer_4_blocks=2,
            transformer_dropout=_drop,
            published=S.Published(
                _disp + "-L2", _cv + "_fast", _L2_TOP1[_mode], "paper (low-latency models)"
            ),
        )
    )

# --- MobileViTv3, v2-based (MobileViTv3-0.5 ... 2.0) ------------------------------
_V3_V2_TOP1 = {0.5: 72.33, 0.75: 76.55, 1.0: 78.64}
_WIDTHS = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0)


def _width_tag(width: float) -> str:
    return f"{int(round(width * 100)):03d}"


for _w in _WIDTHS:
    register(
        S.v2_family_spec(
            f"mobilevitv3_{_width_tag(_w)}",
            _w,
            S.BLOCK_MOBILEVITV3,
            published=S.Published(
                f"MobileViTv3-{_w}",
                f"w{_w}",
                _V3_V2_TOP1.get(_w),
                "official README" if _w in _V3_V2_TOP1 else "",
            ),
        )
    )

# --- Baselines: MobileViTv1 ------------------------------------------------------
for _name, _mode, _drop, _disp, _top1 in (
    ("mobilevit_xxs", "xx_small", 0.05, "MobileViT-XXS", 69.0),
    ("mobilevit_xs", "x_small", 0.1, "MobileViT-XS", 74.8),
    ("mobilevit_s", "small", 0.1, "MobileViT-S", 78.4),
):
    register(
        S.v1_family_spec(
            _name,
            _mode,
            S.BLOCK_MOBILEVIT,
            transformer_dropout=_drop,
            published=S.Published(_disp, f"mobilevit_{_mode}", _top1, "ml-cvnets model zoo"),
        )
    )

# --- Baselines: MobileViTv2 ------------------------------------------------------
_V2_TOP1 = {0.5: 70.18, 0.75: 75.56, 1.0: 78.09, 1.25: 79.65, 1.5: 80.38, 1.75: 80.84, 2.0: 81.17}
for _w in _WIDTHS:
    register(
        S.v2_family_spec(
            f"mobilevitv2_{_width_tag(_w)}",
            _w,
            S.BLOCK_MOBILEVITV2,
            published=S.Published(
                f"MobileViTv2-{_w}", f"mobilevit_v2_w{_w}", _V2_TOP1[_w], "ml-cvnets model zoo"
            ),
        )
    )
