"""Smoke runs of the benchmark scripts (our side only, tiny models / images, one round).

They check that each script runs end to end and writes the JSON its README
section and the plot read; they time nothing (figures come from
``bash benchmarks/run_all.sh``, never from tests).
"""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.xdist_group("benchmarks")


def _run(module, tmp_path, *extra):
    import importlib

    mod = importlib.import_module(f"benchmarks.{module}")
    assert mod.main(["--smoke", "--output-dir", str(tmp_path), *extra]) == 0


def _load(tmp_path, name):
    path = tmp_path / f"{name}.json"
    assert path.is_file(), f"{name}.json was not written"
    data = json.loads(path.read_text())
    assert data["machine"]["cpu_count"] >= 1
    assert data["table"].lstrip().startswith("###")
    assert not list(tmp_path.glob("*.tmp*")), "temporary files left behind"
    return data


def test_inference_smoke(tmp_path):
    _run("inference", tmp_path)
    data = _load(tmp_path, "inference")
    rows = data["rows"]
    assert [r["batch"] for r in rows] == [2, 1]
    for r in rows:
        assert r["model"] == "mobilevitv3_xxs" and r["params"] == 1_249_448
        assert r["macs_official"] > 0 and r["macs_real"] > 0
        for variant in ("eager", "graph", "optimized", "frozen"):
            res = r["results"][variant]
            assert res["images_per_s"] > 0 and res["n"] >= 1
        assert r["ratio_best"] is None and r["target_met"] is None  # no peer in smoke runs
        assert 0 < r["graph_fraction_of_peak"] < 1
    assert data["matmul_peak_macs_per_s"]["ours"] > 0

    # The plot script draws from the JSON the benchmarks write.
    from benchmarks import plot

    assert plot.plot(str(tmp_path)) and (tmp_path / "latency_vs_macs.png").stat().st_size > 10_000


@pytest.mark.slow  # the default suite runs the inference benchmark's smoke test
def test_training_step_smoke(tmp_path):
    _run("training_step", tmp_path)
    (row,) = _load(tmp_path, "training_step")["rows"]
    ours = row["ours"]
    assert ours["images_per_s"] > 0 and ours["peak_rss_mib"] > 0
    assert ours["jit_compile"] is False  # what fit() uses on a CPU-only machine
    assert "peer" not in row and "ratio" not in row


def test_machine_peak_smoke(tmp_path):
    _run("machine_peak", tmp_path)
    data = _load(tmp_path, "machine_peak")
    assert data["peak_macs_per_s"] > 0
    (row,) = data["rows"]
    assert 0 < row["fraction_of_peak"] < 1


def test_profile_tf_smoke(tmp_path):
    _run("profile_tf", tmp_path)
    (prof,) = _load(tmp_path, "profile_tf")["profiles"]
    kinds = prof["by_layer_kind_us"]
    # default: the optimize_for_inference formulation (fused conv + bias + SiLU kernels
    # are attributed to the activation layer; no BatchNorm left)
    assert {"Activation(silu_inference)", "MultiHeadSelfAttention"} <= set(kinds)
    assert not {"BatchNorm", "BatchNormalization"} & set(kinds)
    assert prof["busy_us_per_step"] > 0


@pytest.mark.slow
def test_tflite_latency_smoke(tmp_path):
    _run("tflite_latency", tmp_path)
    data = _load(tmp_path, "tflite_latency")
    (row,) = data["rows"]
    assert set(row["latency"]) == {"fp32", "int8"}
    assert all(v["median_ms"] > 0 for v in row["latency"].values())
    assert row["files"]["fp32"]["cosine_vs_keras_min"] > 0.999
    assert row["int8_vs_fp32"] > 0 and row["best_int8"] == "int8"


@pytest.mark.slow
def test_variant_latency_smoke(tmp_path):
    """Three exports of one variant timed side by side, and the one-op LiteRT peaks."""
    _run("variant_latency", tmp_path, "--cache-dir", str(tmp_path / "cache"), "--runs", "2")
    data = _load(tmp_path, "variant_latency")
    (row,) = data["rows"]
    assert row["model"] == "mobilevitv3_xxs" and row["macs_real"] > 0
    for kind in ("fp32", "cpu", "npu"):
        assert row[f"{kind}_ms"] > 0 and 0 < row[f"{kind}_fraction_of_peak"] < 1
    assert row["cpu_cosine"] > 0.95 and row["npu_cosine"] > 0.95
    peak = data["peak"]
    assert peak["macs_per_s"]["fp32"] > 0 and peak["macs_per_s"]["int8"] > 0
    assert {s["kind"] for s in peak["shapes"].values()} == {"fp32", "int8"}


@pytest.mark.slow
def test_scaling_smoke(tmp_path):
    """Keras and LiteRT latency at two sizes, growth exponents, and the limits plot."""
    _run("scaling", tmp_path, "--rounds", "1")
    data = _load(tmp_path, "scaling")
    entry = data["results"]["mobilevitv3_xxs"]
    assert [r["size"] for r in entry["rows"]] == [64, 128]
    for r in entry["rows"]:
        assert r["keras_ms"] > 0 and r["litert_ms"] > 0
        assert 0 < r["attention_macs"] < r["macs_real"]
    # MACs grow faster than the pixels: the v1-family attention is quadratic in N
    macs = entry["fits"]["macs_real"]["all_sizes"]
    assert 1.0 < macs < 2.0, macs
    from benchmarks import plot

    path = plot.plot_limits(str(tmp_path))
    assert path and (tmp_path / "limits_and_scaling.png").stat().st_size > 10_000


def test_litert_profile_uses_the_library_profiler(tmp_path):
    """Per-op times from :func:`quantization.benchmark.profile_ops`, XNNPACK's choice per op."""
    import keras

    from benchmarks import litert_profile
    from quantization import export_tflite

    inputs = keras.Input((16, 16, 3))
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu")(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inputs, keras.layers.Dense(4)(x))
    path = tmp_path / "tiny.tflite"
    export_tflite(model, path, quant="fp32", verify=False)
    assert litert_profile.main([str(path), "--iters", "2", "--output-dir", str(tmp_path)]) == 0
    prof = _load(tmp_path, "litert_profile")["files"]["tiny.tflite"]
    assert prof["whole_model_ms"]["xnnpack"] > 0 and prof["whole_model_ms"]["builtin_only"] > 0
    assert sum(e["count"] for e in prof["by_type"].values()) == len(prof["ops"]) >= 3
    assert all(op["ms"] >= 0 and isinstance(op["xnnpack"], bool) for op in prof["ops"])
    assert prof["xnnpack_partitions"] >= 1 and prof["sum_of_ops_ms"] > 0


@pytest.mark.slow
def test_quant_speed_times_files_through_the_worker(tmp_path):
    """Four exports with their LiteRT checks (slow: minutes on 2 busy cores)."""
    from benchmarks import quant_speed

    args = ["--image-size", "32", "--rounds", "1", "--runs", "2", "--threads", "1"]
    assert quant_speed.main([*args, "--no-profile", "--output-dir", str(tmp_path)]) == 0
    data = json.loads((tmp_path / "quant_speed.json").read_text())
    assert set(data["results"]) == {
        "fp32",
        "int8 (all int8 kernels)",
        "int8 CPU (float attention+norm)",
        "QAT int8 (all int8 kernels)",
    }
    assert all(r["median_ms"] > 0 for r in data["results"].values())


def test_timm_state_dict_mapping_rejects_other_architecture():
    """The twin check fails loudly when the timm model is a different network."""
    import mvit3_keras as m
    from benchmarks.timm_equivalence import to_timm_state_dict

    model = m.create_model("mobilevit_xxs", input_shape=(64, 64, 3))
    n = sum(1 for k in m.to_cvnets_state_dict(model) if not k.endswith("num_batches_tracked"))
    with pytest.raises(ValueError, match="not the same architecture"):
        to_timm_state_dict(model, [["x", [1]]] * (n - 1))
    with pytest.raises(ValueError, match="shapes differ"):
        to_timm_state_dict(model, [["x", [1]]] * n)


def test_growth_exponent_recovers_power_laws():
    from benchmarks.scaling import growth_exponent

    pixels = [128**2, 256**2, 512**2, 1024**2]
    assert abs(growth_exponent(pixels, [3e-3 * p for p in pixels]) - 1.0) < 1e-12
    assert abs(growth_exponent(pixels, [2e-9 * p**2 for p in pixels]) - 2.0) < 1e-12
    linear_plus_quadratic = [p + 1e-6 * p**2 for p in pixels]
    assert 1.0 < growth_exponent(pixels[-2:], linear_plus_quadratic[-2:]) < 2.0
