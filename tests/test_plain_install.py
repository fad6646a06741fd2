"""A plain install runs the documented commands, and bad input gives one clear line.

* ``test_plain_install_*`` (slow: 11 min on 2 busy cores, most of it pip and TensorFlow
  start-up): ``pip install <repo>`` without extras into a new virtualenv, then the
  venv's ``mvit3`` in an empty folder: ``train --dataset demo --epochs 1``, ``export
  --quant int8`` (the ``.tflite`` loads and runs in that venv's ``ai_edge_litert``),
  ``evaluate``, ``evaluate-tflite`` and ``benchmark``; an unknown ``--dataset`` and a
  ``.pt`` checkpoint without PyTorch each end in one line that says what to do.
  pip reads the wheels from a wheelhouse (``MVIT3_WHEELHOUSE``, default
  ``~/.cache/mvit3-keras/wheels``) and fills it with ``pip download`` only when a
  requirement is missing there, so only the first run downloads TensorFlow (~800 MB of
  wheels: pip's own HTTP cache stays empty where the index sends no cache headers).
* the rest (default suite): the same two error lines from the development install.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mvit3_cli import dispatch as main

ROOT = Path(__file__).resolve().parent.parent
UNKNOWN = "some_unknown_name"
# not copied for the install: VCS, environments, outputs, caches, and what is no package
SKIP_AT_ROOT = {".git", ".venv", "runs", "outputs", "build", "dist", "benchmarks", "tests"}
SKIP = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", ".*_cache")


def _error_line(stderr: str, command: str) -> str:
    """The one ``mvit3 COMMAND: error: ...`` line (TensorFlow's start-up notices may precede it)."""
    assert "Traceback" not in stderr, stderr[-3000:]
    lines = [line for line in stderr.splitlines() if line.startswith(f"mvit3 {command}: error: ")]
    assert len(lines) == 1, stderr[-3000:]
    assert stderr.rstrip().endswith(lines[0]), "the error is the last line"
    return lines[0]


def _check_unknown_dataset(message: str) -> None:
    assert f"Unknown dataset '{UNKNOWN}'" in message
    assert "tfds.list_builders()" in message, "says how to list the TFDS datasets"
    assert "demo" in message and "folder ROOT/{train,val}/<class>/<image>" in message
    assert "tfds build" in message, "says how to bring a dataset of one's own"


def _check_missing_torch(message: str) -> None:
    assert "ckpt.pt" in message and "'torch'" in message
    assert "pip install 'mvit3-keras[torch]'" in message


# --------------------------------------------------------------------------------------
# default suite: the development install
# --------------------------------------------------------------------------------------
def test_unknown_dataset_is_one_line(tmp_path, capsys):
    out = tmp_path / "run"
    rc = main(["train", "mobilevitv3_xxs", "--dataset", UNKNOWN, "--output", str(out)])
    assert rc == 2
    _check_unknown_dataset(_error_line(capsys.readouterr().err, "train"))
    assert not out.exists(), "a failed command leaves no output folder behind"


def test_missing_torch_names_the_extra(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` fails as if not installed
    checkpoint = tmp_path / "ckpt.pt"
    checkpoint.write_bytes(b"not read: PyTorch is missing")
    out = tmp_path / "out.keras"
    rc = main(["convert-weights", "mobilevitv3_xxs", str(checkpoint), str(out)])
    assert rc == 2
    _check_missing_torch(_error_line(capsys.readouterr().err, "convert-weights"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.pt"], "nothing written"


def _setup_cfg_packages() -> tuple:
    """``(packages, package_dir)`` of setup.cfg's ``[options]``."""
    import configparser

    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg", encoding="utf-8")
    packages = cfg["options"]["packages"].split()
    mapping = {}
    for line in cfg["options"]["package_dir"].strip().splitlines():
        name, folder = (part.strip() for part in line.split("="))
        mapping[name] = folder
    return packages, mapping


def test_setup_cfg_lists_every_package_of_the_tree():
    """setup.cfg names its packages one by one (``find:`` cannot install examples/ as
    ``mvit3_examples``): a new sub-package must be added there or it is not installed."""
    packages, mapping = _setup_cfg_packages()
    assert mapping == {"mvit3_examples": "examples"}
    found = []
    for top, folder in (
        ("mvit3_keras", "mvit3_keras"),
        ("training", "training"),
        ("quantization", "quantization"),
        ("mvit3_examples", "examples"),
    ):
        for init in sorted((ROOT / folder).rglob("__init__.py")):
            relative = init.parent.relative_to(ROOT / folder).parts
            found.append(".".join((top, *relative)))
    assert sorted(packages) == sorted(found)


def test_missing_core_package_names_it():
    from mvit3_keras.optional import explain_import_error

    err = ModuleNotFoundError("No module named 'sklearn'", name="sklearn")
    message = explain_import_error(err, "mvit3 train")
    assert message.startswith("mvit3 train needs the package 'scikit-learn'")
    assert message.endswith("pip install scikit-learn")


# --------------------------------------------------------------------------------------
# slow: a new virtualenv with `pip install <repo>`, no extras
# --------------------------------------------------------------------------------------
def _run(cmd, *, cwd, env, check=True, timeout=1800):
    proc = subprocess.run(
        [str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )
    assert proc.returncode == 0 or not check, (
        f"{' '.join(proc.args)}: exit {proc.returncode}\n"
        f"STDOUT:\n{proc.stdout[-3000:]}\nSTDERR:\n{proc.stderr[-3000:]}"
    )
    return proc


@pytest.fixture(scope="module")
def plain_venv(tmp_path_factory):
    """``(bin dir, env, work dir)`` of a new venv holding ``pip install <repo>`` (no extras)."""
    base = tmp_path_factory.mktemp("plain_install")
    src = base / "src"  # a copy, so the build writes nothing into the working tree

    def ignore(folder, names):
        return set(SKIP(folder, names)) | (
            SKIP_AT_ROOT & set(names) if folder == str(ROOT) else set()
        )

    shutil.copytree(ROOT, src, ignore=ignore)
    venv = base / "venv"
    _run([sys.executable, "-m", "venv", venv], cwd=base, env=None)
    bin_dir = venv / "bin"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(PATH=f"{bin_dir}{os.pathsep}{env.get('PATH', '')}", TF_CPP_MIN_LOG_LEVEL="2")
    wheels = Path(os.environ.get("MVIT3_WHEELHOUSE") or Path.home() / ".cache/mvit3-keras/wheels")
    wheels.mkdir(parents=True, exist_ok=True)
    pip = [bin_dir / "python", "-m", "pip"]
    # --no-compile: no .pyc for all of TensorFlow up front (imports compile what they use)
    install = [*pip, "install", "-q", "--no-compile", "--no-index", "--find-links", wheels, src]
    if _run(install, cwd=base, env=env, check=False).returncode:  # not all in the wheelhouse
        _run(
            [*pip, "download", "-q", "-d", wheels, src, "setuptools>=61", "wheel"],
            cwd=base,
            env=env,
        )
        _run(install, cwd=base, env=env)
    work = base / "work"  # an empty folder: nothing of the repository is importable from here
    work.mkdir()
    return bin_dir, env, work


@pytest.mark.slow(minutes=12)
@pytest.mark.xdist_group("plain_install")
def test_plain_install_has_no_extras(plain_venv):
    bin_dir, env, work = plain_venv
    probe = _run(
        [
            bin_dir / "python",
            "-c",
            "import importlib.util as u, mvit3_keras, mvit3_examples.demo; "
            "print(mvit3_keras.__file__); print(mvit3_examples.demo.__file__); "
            "print(u.find_spec('torch') is None)",
        ],
        cwd=work,
        env=env,
    )
    location, examples, no_torch = probe.stdout.split()
    assert location.startswith(str(bin_dir.parent)), "the installed package, not the repository"
    assert examples.startswith(str(bin_dir.parent)), "`mvit3 demo` ships with the package"
    assert no_torch == "True", "torch is an extra, not a dependency"
    demo_help = _run([bin_dir / "mvit3", "demo", "--help"], cwd=work, env=env)
    assert "--quick" in demo_help.stdout
    _run([bin_dir / "python", "-m", "pip", "check"], cwd=work, env=env)


@pytest.mark.slow
@pytest.mark.xdist_group("plain_install")
def test_plain_install_train_export_evaluate(plain_venv):
    bin_dir, env, work = plain_venv
    mvit3 = bin_dir / "mvit3"
    _run(
        [mvit3, "train", "mobilevitv3_xxs", "--dataset", "demo", "--epochs", "1"]
        + ["--image-size", "32", "--set", "runtime.steps_per_epoch=8", "--output", "run"],
        cwd=work,
        env=env,
    )
    run = work / "run"
    for name in ("final.keras", "best.keras", "summary.json", "history.csv", "training_curves.png"):
        assert (run / name).is_file(), name
    assert (run / "logs").is_dir(), "TensorBoard logs (tensorboard is a dependency)"

    _run(
        [mvit3, "export", run / "final.keras", "--quant", "int8", "--dataset", "demo"]
        + ["--split", "train", "--calibration-samples", "32", "--output", "xxs_int8.tflite"],
        cwd=work,
        env=env,
    )
    tflite = work / "xxs_int8.tflite"
    assert tflite.is_file()
    script = (
        "import sys, numpy as np\n"
        "from ai_edge_litert.interpreter import Interpreter\n"
        "it = Interpreter(model_path=sys.argv[1]); it.allocate_tensors()\n"
        "inp, out = it.get_input_details()[0], it.get_output_details()[0]\n"
        "it.set_tensor(inp['index'], np.random.rand(*inp['shape']).astype(inp['dtype']))\n"
        "it.invoke(); y = it.get_tensor(out['index'])\n"
        "assert np.isfinite(y).all(); print(*y.shape)\n"
    )
    ran = _run([bin_dir / "python", "-c", script, tflite], cwd=work, env=env)
    assert ran.stdout.split()[-2:] == ["1", "10"], "logits of the 10 digit classes"

    _run([mvit3, "evaluate", "run", "--json"], cwd=work, env=env)
    _run(
        [mvit3, "evaluate-tflite", tflite, "--dataset", "demo", "--limit", "32"]
        + ["--keras", run / "final.keras"],
        cwd=work,
        env=env,
    )
    _run([mvit3, "benchmark", tflite, "--runs", "3", "--warmup", "1"], cwd=work, env=env)


@pytest.mark.slow
@pytest.mark.xdist_group("plain_install")
def test_plain_install_bad_input_is_one_line(plain_venv):
    bin_dir, env, work = plain_venv
    mvit3 = bin_dir / "mvit3"
    proc = _run(
        [mvit3, "train", "mobilevitv3_xxs", "--dataset", UNKNOWN, "--output", "bad"],
        cwd=work,
        env=env,
        check=False,
    )
    assert proc.returncode == 2, proc.stderr[-3000:]
    _check_unknown_dataset(_error_line(proc.stderr, "train"))
    assert not (work / "bad").exists(), "a failed command leaves no output folder behind"

    (work / "ckpt.pt").write_bytes(b"not read: PyTorch is missing")
    proc = _run(
        [mvit3, "convert-weights", "mobilevitv3_xxs", "ckpt.pt", "converted.keras"],
        cwd=work,
        env=env,
        check=False,
    )
    assert proc.returncode == 2, proc.stderr[-3000:]
    _check_missing_torch(_error_line(proc.stderr, "convert-weights"))
    assert not (work / "converted.keras").exists()
