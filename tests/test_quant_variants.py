"""int8 export of EVERY registered variant, proven by running the files in LiteRT.

For each of the 23 variants: random weights made realistic
(:func:`quantization.synthetic.recalibrate_batchnorm`), a static 96x96 input
(the odd 3x3 last stage exercises the resize paths of both families), int8
PTQ calibrated on 8 real photo crops, then ALL files of a group are loaded,
allocated and invoked by one separate process. The int8-vs-float logit cosine
table is printed (``pytest -s``) and attached as the ``int8_sweep`` property.

Measured (this machine, TF 2.21 / ai-edge-litert 2.3.0; about 1 min per group):
every variant runs; mean cosine 0.94-0.98 (v1 family), 0.88-0.93 (MobileViTv3-0.5
... 2.0) and 0.69-0.83 (MobileViTv2 baselines, whose blocks have no residual
around the global path) on these random, BatchNorm-standardised networks.
Random networks are far more sensitive than trained ones: the trained demo
model loses no top-1 with PTQ int8, and the official reference checkpoints give
0.975-0.997 (tests/test_quant_reference.py).
"""

from __future__ import annotations

import json

import pytest

import mvit3_keras as m
from quantization.sweep import format_sweep, int8_variant_sweep

MIN_COSINE = 0.6  # sanity bound for random weights (see the module docstring)

GROUPS = {
    "v1-family": [n for n in m.list_models() if m.get_spec(n).family == "v1"],
    "mobilevitv3-v2": [
        n for n in m.list_models() if n.startswith("mobilevitv3_") and m.get_spec(n).family == "v2"
    ],
    "mobilevitv2": [n for n in m.list_models() if n.startswith("mobilevitv2_")],
}


def test_groups_cover_every_registered_variant():
    covered = [n for names in GROUPS.values() for n in names]
    assert sorted(covered) == sorted(m.list_models())
    assert len(covered) == 23


@pytest.mark.parametrize("group", sorted(GROUPS))
def test_int8_every_variant_runs_in_separate_process(group, tmp_path, record_property):
    rows = int8_variant_sweep(GROUPS[group], image_size=96, output_dir=str(tmp_path))
    table = format_sweep(rows, f"int8 vs float logits ({group}, 96x96, random weights)")
    print("\n" + table)
    record_property("int8_sweep", json.dumps(rows, default=str))
    assert [r["model"] for r in rows] == GROUPS[group]
    crashed = [r["model"] for r in rows if not r.get("runs")]
    assert not crashed, f"files that do not run in LiteRT: {crashed}\n{table}"
    for r in rows:
        assert r["backend"] == "ai_edge_litert"
        assert not any(k.startswith("CUSTOM") for k in r["op_histogram"]), r["op_histogram"]
        assert r["cosine"] >= MIN_COSINE, table
