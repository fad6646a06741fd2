"""``mvit3 convert-weights`` / ``list`` / ``macs``, loading a saved model in a new process,
and the package structure (one-way imports, ``mvit3 demo`` from the examples)."""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import load_parity
from support.sources import python_files

from mvit3_cli import dispatch as main
from mvit3_keras.reference import write_parity_checkpoint


def _run(*args, cwd=None):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    return subprocess.run(
        [sys.executable, "-m", "mvit3_cli", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=600,
    )


@pytest.fixture(scope="module")
def parity_npz(reference, tmp_path_factory):
    """The reference checkpoint as an official-layout .npz file."""
    path = tmp_path_factory.mktemp("checkpoint") / "cls_xx_small_v3.npz"
    return write_parity_checkpoint("cls_xx_small_v3", path, reference)


def test_convert_to_keras_then_load_in_new_process(parity_npz, reference, tmp_path):
    out = tmp_path / "xxs.keras"
    assert main(["convert-weights", "mobilevitv3_xxs", parity_npz, str(out), "--bgr-input"]) == 0
    assert out.is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["xxs.keras"], "no temporary file left behind"
    data = load_parity(reference, "cls_xx_small_v3")
    np.save(tmp_path / "x.npy", data["ref__input0"].astype(np.float32))
    script = (
        "import sys, numpy as np, keras, mvit3_keras\n"
        "model = keras.models.load_model(sys.argv[1])\n"
        "np.save(sys.argv[3], model.predict(np.load(sys.argv[2]), verbose=0))\n"
    )
    res = subprocess.run(
        [sys.executable, "-c", script, str(out), str(tmp_path / "x.npy"), str(tmp_path / "y.npy")],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    ref = data["ref__output0"]
    assert np.abs(np.load(tmp_path / "y.npy") - ref).max() <= 2e-4 * ref.std()


def test_convert_to_weights_h5(parity_npz, tmp_path, capsys):
    out = tmp_path / "xxs.weights.h5"
    assert main(["convert-weights", "mobilevitv3_xxs", parity_npz, str(out)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["loaded_tensors"] == 279 and report["input_channel_order"] == "rgb"
    import mvit3_keras as m

    model = m.create_model("mobilevitv3_xxs")
    model.load_weights(out)


def test_convert_wrong_variant_is_a_clear_error(parity_npz, tmp_path):
    res = _run("convert-weights", "mobilevitv3_s", parity_npz, str(tmp_path / "s.keras"))
    assert res.returncode == 2
    assert "is a 'mobilevitv3_xxs' checkpoint" in res.stderr
    assert not (tmp_path / "s.keras").exists()


def test_convert_bad_output_extension(parity_npz, tmp_path, capsys):
    assert main(["convert-weights", "mobilevitv3_xxs", parity_npz, str(tmp_path / "x.pt")]) == 2
    assert "must end with .keras" in capsys.readouterr().err


def test_convert_unknown_variant(parity_npz, tmp_path, capsys):
    assert main(["convert-weights", "mobilevitv4", parity_npz, str(tmp_path / "x.keras")]) == 2
    assert "Unknown model variant 'mobilevitv4'" in capsys.readouterr().err


def test_list_and_macs(capsys):
    assert main(["list", "--pattern", "mobilevitv3_0*"]) == 0
    out = capsys.readouterr().out
    assert "mobilevitv3_050" in out and "1,429,985" in out and "481.3" in out
    assert main(["macs", "mobilevitv3_s"]) == 0
    assert "1841.391M (official profiler)" in capsys.readouterr().out


# --------------------------------------------------------------------------------------
# One-way dependencies: mvit3_keras <- training <- quantization; the examples, the tests
# and the benchmarks use the library, never the other way round.
# --------------------------------------------------------------------------------------
ROOT = Path(__file__).resolve().parent.parent
CONSUMERS = {
    "mvit3_keras": ("training", "quantization", "mvit3_examples", "examples", "tests", "support"),
    "training": ("quantization", "mvit3_examples", "examples", "tests", "support"),
    "quantization": ("mvit3_examples", "examples", "tests", "support"),
}
IMPORT_FUNCTIONS = ("import_module", "__import__", "find_spec")


def _imported_modules(path: Path) -> set:
    """Every module ``path`` imports: statically, through ``importlib`` with a
    constant name, or named by a dotted string constant (``"training.loop"``)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
        elif isinstance(node, ast.Call) and node.args:
            func = node.func
            called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            first = node.args[0]
            if called in IMPORT_FUNCTIONS and isinstance(first, ast.Constant):
                names.add(str(first.value))
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            if re.fullmatch(r"[a-z_][a-z0-9_]*(\.[a-z_][a-z0-9_]*)+", node.value):
                names.add(node.value)
    return names


@pytest.mark.parametrize("package", sorted(CONSUMERS))
def test_library_packages_never_import_their_consumers(package):
    modules = sorted((ROOT / package).rglob("*.py"))
    assert len(modules) > 5, f"no modules found under {ROOT / package}"
    offending = []
    for path in modules:
        for name in sorted(_imported_modules(path)):
            if name.split(".")[0] in CONSUMERS[package]:
                offending.append(f"{path.relative_to(ROOT)} imports {name}")
    assert not offending, "\n".join(offending)


FIRST_PARTY = ("mvit3_keras", "training", "quantization", "mvit3_examples", "support", "benchmarks")


def test_no_module_imports_private_names_of_another_module():
    """``from a.b import _name`` / ``import a._b`` of this repository's modules, from any
    of its folders: make the name public or move it."""
    offending = []
    for path in python_files():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                module = node.module or ""
                if node.level == 0 and module.split(".")[0] not in FIRST_PARTY:
                    continue
                names = [module, *(a.name for a in node.names)]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names if a.name.split(".")[0] in FIRST_PARTY]
            else:
                continue
            parts = [part for name in names for part in name.split(".")]
            if any(part.startswith("_") and not part.startswith("__") for part in parts):
                offending.append(f"{path.relative_to(ROOT)}:{node.lineno} {ast.unparse(node)}")
    assert not offending, "\n".join(offending)


def test_demo_command_comes_from_the_examples_package():
    from mvit3_cli import build_parser

    parser = build_parser()
    args = parser.parse_args(["demo", "--quick", "--output", "x"])
    assert args.handler.__module__ == "mvit3_examples.commands" and args.quick
    from mvit3_examples.demo import DEMO_STEPS

    titles = [title for title, _ in DEMO_STEPS]
    assert titles[0].startswith("model zoo") and titles[1].startswith("train on real data")
    assert titles[2].startswith("int8 export") and "MediaPipe" in titles[3]
