"""Every registered variant: build, exact parameter / MAC counts, official key layout
(all variants by default); forward at divisible and non-divisible sizes, ``.keras``
round trip, one fit step (one variant per architecture kind by default, every variant
with ``-m slow``: :mod:`support.variants`)."""

from __future__ import annotations

import functools
import json

import keras
import numpy as np
import pytest
from support.variants import REPRESENTATIVES, by_default_for, param

import mvit3_keras as m

ALL = m.list_models()
EXPECTED_NAMES = (
    ["mobilevitv3_xxs", "mobilevitv3_xs", "mobilevitv3_s"]
    + ["mobilevitv3_xxs_l2", "mobilevitv3_xs_l2", "mobilevitv3_s_l2"]
    + [f"mobilevitv3_{w}" for w in ("050", "075", "100", "125", "150", "175", "200")]
    + ["mobilevit_xxs", "mobilevit_xs", "mobilevit_s"]
    + [f"mobilevitv2_{w}" for w in ("050", "075", "100", "125", "150", "175", "200")]
)


def test_registry_names():
    assert sorted(ALL) == sorted(EXPECTED_NAMES)
    assert len(ALL) == 23
    assert m.list_models("mobilevitv3_*", baselines=False) == [
        n for n in EXPECTED_NAMES if n.startswith("mobilevitv3_")
    ]


def test_unknown_variant_error():
    with pytest.raises(
        ValueError, match="Unknown model variant 'mobilevitv3_xxxs'.*mobilevitv3_xxs"
    ):
        m.create_model("mobilevitv3_xxxs")


@pytest.mark.parametrize(
    "shape, match",
    [
        ((16, 16, 3), "too small"),
        ((256, 256), r"\(height, width, channels\)"),
        ((64, 64, 0), "channel"),
    ],
)
def test_bad_input_shape_errors(shape, match):
    with pytest.raises(ValueError, match=match):
        m.create_model("mobilevitv3_xxs", input_shape=shape)


@functools.lru_cache(maxsize=2)
def _model_256(name):
    keras.utils.set_random_seed(0)
    return m.create_model(name)


@pytest.mark.parametrize("name", ALL)
def test_params_and_macs_match_official(name, summary):
    spec = m.get_spec(name)
    ref = summary[f"cls_{spec.cvnets_name}"]
    model = _model_256(name)
    assert m.count_params(model) == ref["params"]
    macs = m.count_macs(model)
    assert macs["official"] == int(ref["macs"]), (macs["official"], ref["macs"])
    assert macs["real"] > 0.5 * macs["official"]


@pytest.mark.parametrize("name", ALL)
def test_state_dict_layout_matches_official_keys(name, reference):
    spec = m.get_spec(name)
    with open(reference / "keys" / f"cls_{spec.cvnets_name}.json", encoding="utf-8") as f:
        official = json.load(f)
    ours = m.to_cvnets_state_dict(_model_256(name))
    assert [k for k, _ in official] == list(ours)
    for key, shape in official:
        assert list(ours[key].shape) == shape, key


# Stage sizes for inputs not divisible by the patch grid (docs/semantics.md, sections 2-3):
# the v1 family keeps odd maps (resizing only the transformer path); the v2
# family enlarges them to even sizes permanently.
STAGES_200x260 = {"v1": [(25, 33), (13, 17), (7, 9)], "v2": [(26, 34), (14, 18), (8, 10)]}
STAGES_224 = {"v1": [(28, 28), (14, 14), (7, 7)], "v2": [(28, 28), (14, 14), (8, 8)]}


@pytest.mark.parametrize("name", by_default_for())
def test_forward_divisible_and_non_divisible(name):
    spec = m.get_spec(name)
    x = np.random.default_rng(0).uniform(size=(1, 256, 256, 3)).astype("float32")
    logits = _model_256(name).predict(x, verbose=0)
    assert logits.shape == (1, 1000) and np.isfinite(logits).all()

    for size, expected in (((200, 260), STAGES_200x260), ((224, 224), STAGES_224)):
        backbone = m.create_backbone(name, input_shape=(*size, 3))
        shapes = [tuple(backbone.output[k].shape[1:3]) for k in ("P3", "P4", "P5")]
        assert shapes == expected[spec.family], (size, shapes)
    model = m.create_model(name, input_shape=(200, 260, 3))
    x = np.random.default_rng(0).uniform(size=(1, 200, 260, 3)).astype("float32")
    logits = model.predict(x, verbose=0)
    assert logits.shape == (1, 1000) and np.isfinite(logits).all()


@pytest.mark.parametrize("name", by_default_for())
def test_keras_round_trip(name, tmp_path):
    model = m.create_model(name, num_classes=7, input_shape=(64, 96, 3))
    path = tmp_path / f"{name}.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    x = np.random.default_rng(1).uniform(size=(2, 64, 96, 3)).astype("float32")
    np.testing.assert_array_equal(model.predict(x, verbose=0), loaded.predict(x, verbose=0))
    assert m.to_cvnets_state_dict(loaded).keys() == m.to_cvnets_state_dict(model).keys()


def _one_fit_step(name, *, run_eagerly):
    keras.utils.set_random_seed(0)
    model = m.create_model(name, num_classes=5, input_shape=(64, 64, 3))
    model.compile(
        optimizer=keras.optimizers.AdamW(1e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        run_eagerly=run_eagerly,
    )
    model.optimizer.build(model.trainable_variables)  # one trace, not two (Task.compile)
    before = [w.numpy().copy() for w in model.trainable_weights[:3]]
    x = np.random.default_rng(2).uniform(size=(4, 64, 64, 3)).astype("float32")
    y = np.array([0, 1, 2, 3])
    history = model.fit(x, y, batch_size=4, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    assert any(not np.allclose(b, w.numpy()) for b, w in zip(before, model.trainable_weights[:3]))


@pytest.mark.parametrize("name", by_default_for())
def test_fit_step(name):
    """One optimizer step on every variant (eager: tracing 23 graphs costs minutes)."""
    _one_fit_step(name, run_eagerly=False if name in ONE_PER_BLOCK_TYPE else True)


# One variant per block type (v3 v1-based, v3 v2-based, MobileViTv1, MobileViTv2):
# these also run ``fit`` as a compiled tf.function graph.
ONE_PER_BLOCK_TYPE = REPRESENTATIVES


# bfloat16 (the CPU / TPU policy) for each kind; float16 (the GPU policy) for one model
# of each family by default, the rest with -m slow
MIXED_PRECISION_CASES = [
    param(name, policy, slow=policy == "mixed_float16" and not name.startswith("mobilevitv3"))
    for policy in ("mixed_bfloat16", "mixed_float16")
    for name in ONE_PER_BLOCK_TYPE
]


@pytest.mark.parametrize("name, policy", MIXED_PRECISION_CASES)
def test_mixed_precision(name, policy):
    keras.config.set_dtype_policy(policy)
    try:
        model = m.create_model(name, num_classes=5, input_shape=(64, 80, 3))
        x = np.random.default_rng(3).uniform(size=(2, 64, 80, 3)).astype("float32")
        logits = model.predict(x, verbose=0)
        assert np.isfinite(logits).all()
        assert model.get_layer("conv_1.block.conv").compute_dtype == policy.split("_")[1]
        model.compile(
            optimizer=keras.optimizers.AdamW(1e-3),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            run_eagerly=True,
        )
        history = model.fit(x, np.array([0, 1]), epochs=1, verbose=0)
        assert np.isfinite(history.history["loss"][0])
    finally:
        keras.config.set_dtype_policy("float32")


# -- model records: what a saved model is --------------------------------------------------------
_LOAD_RECORDS = """
import json, sys
import keras
import mvit3_keras
records = {}
for path in sys.argv[1:]:
    record = mvit3_keras.model_record(keras.models.load_model(path))
    records[path] = None if record is None else record.to_config()
print(json.dumps(records))
"""


def _without_record(path, new_path):
    """A copy of the ``.keras`` file ``path`` as an older version wrote it (no record)."""
    import zipfile

    with zipfile.ZipFile(path) as src, zipfile.ZipFile(new_path, "w") as dst:
        for item in src.infolist():
            data = src.read(item.filename)
            if item.filename == "config.json":
                config = json.loads(data)
                assert config["config"].pop("model_record")
                data = json.dumps(config).encode()
            dst.writestr(item, data)
    return new_path


def test_saved_classifier_records_its_variant_after_only_import_mvit3_keras(tmp_path):
    import subprocess
    import sys

    model = m.create_model("mobilevitv3_050", num_classes=7, input_shape=(64, 96, 3))
    record = m.model_record(model)
    assert record == m.ModelRecord(
        variant="mobilevitv3_050",
        task="classification",
        input_shape=(64, 96, 3),
        num_classes=7,
        options={"include_top": True, "pooling": None},
    )
    backbone = m.create_backbone("mobilevitv3_xxs", input_shape=(64, 64, 3), output_stride=16)
    paths = [str(tmp_path / "cls.keras"), str(tmp_path / "backbone.keras")]
    model.save(paths[0])
    backbone.save(paths[1])
    plain = keras.Model(model.input, model.output, name="plain")  # e.g. from an older version
    paths.append(str(tmp_path / "plain.keras"))
    plain.save(paths[2])
    paths.append(_without_record(paths[0], tmp_path / "old.keras"))
    out = subprocess.run(
        [sys.executable, "-c", _LOAD_RECORDS, *map(str, paths)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    records = json.loads(out.stdout.strip().splitlines()[-1])
    assert m.ModelRecord.from_config(records[paths[0]]) == record
    loaded_backbone = m.ModelRecord.from_config(records[paths[1]])
    assert loaded_backbone == m.model_record(backbone)
    assert (loaded_backbone.task, loaded_backbone.options["output_stride"]) == ("backbone", 16)
    assert records[str(paths[2])] is None and records[str(paths[3])] is None


def test_rebuild_model_from_record_and_errors():
    model = m.create_model(
        "mobilevit_xxs", include_top=False, pooling="avg", input_shape=(None, None, 3)
    )
    record = m.model_record(model)
    assert (record.num_classes, record.input_shape) == (None, (None, None, 3))
    rebuilt = m.rebuild_model(record)
    assert m.model_record(rebuilt) == record
    assert rebuilt.count_params() == model.count_params()
    assert m.model_record(m.rebuild_model(record, input_shape=(64, 64, 3))).input_shape == (
        64,
        64,
        3,
    )
    plain = keras.Model(model.input, model.output)
    assert m.model_record(plain) is None
    with pytest.raises(ValueError, match="records no variant.*--model-name"):
        m.model_record(plain, required=True)
    with pytest.raises(TypeError, match="expects a keras.Model"):
        m.model_record("model.keras")
    with pytest.raises(TypeError, match="only models built by mvit3_keras"):
        m.attach_model_record(plain, record)
    with pytest.raises(ValueError, match="task must be one of classification, backbone"):
        m.ModelRecord(variant="mobilevit_xxs", task="depth", input_shape=(64, 64, 3))
    with pytest.raises(TypeError, match="cannot be recorded"):
        m.ModelRecord("mobilevit_xxs", "classification", (64, 64, 3), options={"f": len})
    clone = keras.models.clone_model(model, clone_function=lambda layer: layer)
    assert m.model_record(clone) is None  # a clone keeps the class, not the arguments
    assert m.model_record(m.attach_model_record(clone, record)) == record
