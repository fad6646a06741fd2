"""Shared fixtures: the official reference data and small helpers."""

from __future__ import annotations

import json
import os
import time

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from mvit3_keras import reference as official  # noqa: E402


@pytest.fixture(scope="session")
def reference():
    """Path of the official reference data (summary.json, keys/, parity/).

    The repository carries it (tests/data/reference); missing data fails the run.
    """
    path = official.reference_dir()
    if path is None:
        pytest.fail(f"official reference data not found in {official.BUNDLED_REFERENCE}")
    return path


@pytest.fixture(scope="session")
def summary(reference):
    with open(reference / "summary.json", encoding="utf-8") as f:
        return json.load(f)["variants"]


def load_parity(reference, stem):
    """The arrays of parity file ``stem`` (weights float16 -> float32, exact).

    A :class:`mvit3_keras.reference.ParityData`: compare a computed map with a
    stored one through ``data.like_stored(key, computed)`` (large maps are kept
    on a grid of rows and columns).
    """
    return official.load_parity(stem, reference)


def assert_close_to_reference(actual, expected, *, rel=2e-4, what="output"):
    """The parity rule of the reference README: max |diff| <= rel * std(reference)."""
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} vs {expected.shape}"
    err = float(np.abs(actual - expected).max())
    tol = rel * float(expected.std())
    assert err <= tol, (
        f"{what}: max |diff| {err:.3e} > {tol:.3e} ({rel} x std {expected.std():.3e})"
    )
    return err


@pytest.fixture
def fresh_keras_session():
    """Clears the Keras session after the test (``pytestmark = pytest.mark.usefixtures(...)``
    in modules that build many models)."""
    yield
    import keras

    keras.backend.clear_session()


def assert_official_state_dict(reference, entry, model):
    """``model``'s cvnets state_dict has the names and shapes of the official ``entry``
    (``keys/<entry>.json`` of the reference data)."""
    from mvit3_keras import to_cvnets_state_dict

    with open(reference / "keys" / f"{entry}.json", encoding="utf-8") as f:
        expected = {k: tuple(shape) for k, shape in json.load(f)}
    got = {k: tuple(v.shape) for k, v in to_cvnets_state_dict(model).items()}
    assert got == expected


def save_and_reload(model, path):
    """``model`` saved to ``path`` and loaded back, with the loaded model's record (the
    variant, task and head it was built with), checked equal to ``model``'s."""
    import keras

    from mvit3_keras import model_record

    model.save(path)
    loaded = keras.models.load_model(path)
    record = model_record(loaded)
    assert record == model_record(model)
    return loaded, record


def pytest_collection_modifyitems(config, items):
    """``@pytest.mark.slow`` tests run only when selected (``-m slow`` or ``-m "slow or not slow"``)."""
    if "slow" in (config.getoption("markexpr") or ""):
        items.sort(key=_slow_minutes, reverse=True)  # longest first: fits CI's budget best
        return
    skip = pytest.mark.skip(reason="slow test: run with -m slow")
    for item in items:
        if item.get_closest_marker("slow"):
            item.add_marker(skip)


SLOW_TEST_MINUTES = 6
"""Longest time a slow test takes on CI's 2 cores unless it says ``slow(minutes=N)``."""


def pytest_runtest_setup(item):
    """Under CI's time budget a slow test starts only if it can end before it.

    ``scripts/test.sh`` sets ``MVIT3_DEADLINE`` (seconds since the epoch) when it runs
    the slow tests inside CI's 90 minutes; a slow test whose estimate (``minutes=`` of
    its ``slow`` mark, else :data:`SLOW_TEST_MINUTES`) would pass the deadline is
    skipped with the reason, so the run ends in time and says what it left out.
    """
    minutes = _slow_minutes(item)  # 0: not a slow test
    deadline = os.environ.get("MVIT3_DEADLINE")
    if not minutes or not deadline:
        return
    left = float(deadline) - time.time()
    if left < minutes * 60:
        pytest.skip(
            f"CI time budget: {left / 60:.1f} min left, {item.nodeid} takes up to {minutes} min"
            " (MVIT3_SLOW=1 bash scripts/test.sh runs every slow test)"
        )


def _slow_minutes(item) -> float:
    marker = item.get_closest_marker("slow")
    if marker is None:
        return 0
    return marker.kwargs.get("minutes", SLOW_TEST_MINUTES)
