"""Which variants a per-variant test runs for by default.

The variants of one architecture kind (family x block: MobileViTv1, MobileViTv2,
MobileViTv3 on the v1 family, MobileViTv3 on the v2 family) differ only in widths and
depths, so the expensive per-variant checks (a ``.keras`` round trip, a compiled fit
step, the folding passes, a LiteRT export) run by default for one representative of
each kind and for every other variant with ``-m slow`` (``.ci/run`` runs the slow
tests when CI's time budget allows). Cheap checks (parameter / MAC counts, the
official key layout, the backbone's feature pyramid) run for every variant always.
"""

from __future__ import annotations

import pytest

import mvit3_keras


def representatives() -> dict:
    """``{(family, block): first registered variant}``: one per architecture kind."""
    kinds = {}
    for name in mvit3_keras.list_models():
        spec = mvit3_keras.get_spec(name)
        kinds.setdefault((spec.family, spec.block), name)
    return kinds


REPRESENTATIVES = tuple(representatives().values())


def param(*values, slow: bool = False):
    """``pytest.param(*values)``, run only with ``-m slow`` when ``slow``."""
    return pytest.param(*values, marks=pytest.mark.slow if slow else ())


def by_default_for(names=REPRESENTATIVES) -> list:
    """``list_models()`` as parameters; those not in ``names`` run with ``-m slow``."""
    return [param(name, slow=name not in names) for name in mvit3_keras.list_models()]
