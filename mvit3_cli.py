"""Entry point of the ``mvit3`` command: the parser, the dispatch, and what it shows on the terminal.

Each package contributes its sub-commands through a ``register(subparsers)``
function (:data:`COMMAND_MODULES`): the model zoo (``mvit3_keras.commands``:
``list``, ``macs``, ``convert-weights``), training (``training.commands``),
quantization (``quantization.commands``) and the examples (``mvit3_examples.commands``:
``demo``). A command's handler gets the parsed ``args`` and returns an exit code.
Only this module knows all of them: the library packages depend one way
(``mvit3_keras`` <- ``training`` <- ``quantization``) and never import their consumers.

One grammar for every command: ``mvit3 COMMAND SUBJECT [--option VALUE ...]``. The
thing a command acts on is positional (``train MODEL``, ``evaluate RUN_OR_MODEL``,
``export MODEL.keras``, ``qat MODEL.keras``, ``benchmark FILE.tflite ...``, ``macs
NAME``); the flags several commands share (``--dataset``, ``--split``, ``--task``,
``--image-size H [W]``, ``--batch-size``, ``--output``, ``--threads``, ``--json [FILE]``,
``--data-dir``) are defined once, in :mod:`mvit3_keras.cli_args`. Values are checked
while parsing, once: a bad one ends in ``mvit3 COMMAND: error: argument --FLAG: ...``
and exit code 2.

TensorFlow, the TFLite converter and LiteRT print start-up and conversion
notices from C++ (before Python logging exists, so Python cannot silence them)
and from Python (absl, ``tf.function`` retracing notes, deprecations). The ones
listed in :data:`HARMLESS` say nothing a user can act on. Only the command line
uses :func:`framework_output`: it drops those lines from the process's standard
error (file descriptor 2, so C++ and child processes are covered) and keeps every
other line. ``mvit3 --verbose`` shows everything; the library never hides output.

This module lives outside the ``mvit3_keras`` package on purpose: importing any
part of the package imports TensorFlow, which prints its notices at once, so the
filter must start before that import.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import logging
import os
import re
import sys
import threading
import warnings

COMMAND_MODULES = (
    "mvit3_keras.commands",
    "training.commands",
    "quantization.commands",
    "mvit3_examples.commands",
)

# Lines that carry no information for a user of the CLI (checked on TF 2.21 / LiteRT 2.3).
HARMLESS = tuple(
    re.compile(p)
    for p in (
        r"All log messages before absl::InitializeLog\(\) is called",
        r"cudart_stub\.cc.*Could not find cuda drivers",
        r"cuda_platform\.cc.*failed call to cuInit",
        r"Unable to register cu(DNN|FFT|BLAS) factory",
        r"computation placer already registered",
        r"TF-TRT Warning: Could not find TensorRT",
        r"oneDNN custom operations are on",
        r"This TensorFlow binary is optimized to use available CPU instructions",
        r"To enable the following instructions: .* rebuild TensorFlow",
        r"Statistics for quantized inputs were expected",
        r"Ignored output_format\.",
        r"Ignored drop_control_dependency\.",
        r"Created TensorFlow Lite XNNPACK delegate for CPU",
        r"INFO: Initialized TensorFlow Lite runtime",
        r"fully_quantize: 0, inference_type: 6, input_inference_type",
        r"Assume axis of per-channel quantization",
        r"Please consider providing the trackable_obj argument",
        r"tf\.lite\.Interpreter is deprecated",
        r"TensorFlow Lite Python Interpreter is deprecated",
        r"triggered tf\.function retracing",
        r"Skipping variable loading for optimizer",
        r"Your `PyDataset` class should call",
        r"WARNING: Logging before InitGoogle\(\) is written to STDERR",  # MediaPipe Tasks
        r"inference_feedback_manager\.cc.*Feedback manager requires a model with a single",
        r"^\s*warnings\.warn\(\s*$",
        r"^\s*$",
    )
)


def is_harmless(line: str) -> bool:
    return any(p.search(line) for p in HARMLESS)


class _StderrLineFilter:
    """Route file descriptor 2 through a pipe; forward the lines that are not harmless."""

    def __init__(self):
        self._saved = None
        self._thread = None

    def start(self):
        sys.stderr.flush()
        self._saved = os.dup(2)
        read_end, write_end = os.pipe()
        os.dup2(write_end, 2)
        os.close(write_end)
        self._thread = threading.Thread(target=self._forward, args=(read_end,), daemon=True)
        self._thread.start()

    def _forward(self, read_end: int):
        with os.fdopen(read_end, "rb") as pipe, os.fdopen(self._saved, "wb", closefd=False) as out:
            for raw in pipe:
                if not is_harmless(raw.decode("utf-8", "replace")):
                    out.write(raw)
                    out.flush()

    def stop(self):
        sys.stderr.flush()
        os.dup2(self._saved, 2)  # closes the pipe's last write end: the reader drains and ends
        self._thread.join(timeout=5)
        os.close(self._saved)


@contextlib.contextmanager
def framework_output(verbose: bool = False):
    """Inside: framework notices of :data:`HARMLESS` are dropped (all kept when ``verbose``)."""
    if verbose:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "0")
        yield
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    line_filter = _StderrLineFilter()
    line_filter.start()
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=DeprecationWarning)
            warnings.filterwarnings("ignore", message=".*triggered tf.function retracing")
            _quiet_python_loggers()
            yield
    finally:
        line_filter.stop()


def build_parser() -> argparse.ArgumentParser:
    """The ``mvit3`` parser with the sub-commands of every module of :data:`COMMAND_MODULES`;
    ``parser.commands``: ``{name: the sub-command's parser}``."""
    parser = argparse.ArgumentParser(
        prog="mvit3",
        description="MobileViTv3 for edge devices: models, official weights, training, int8 export.",
    )
    parser.add_argument(
        "--verbose",
        action="store_true",
        help="show every framework log and warning (the `mvit3` command hides known-harmless "
        "ones; see mvit3_cli.py)",
    )
    sub = parser.add_subparsers(
        dest="command",
        metavar="COMMAND",
    )
    sub.required = True
    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).register(sub)
    parser.commands = dict(sub.choices)
    return parser


def dispatch(argv=None) -> int:
    """Parse ``argv`` and run the command's handler; bad input ends in one
    ``mvit3 COMMAND: error: ...`` line on stderr and exit code 2 (``MVIT3_DEBUG=1``:
    the traceback instead)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        with _json_on_stdout(args):
            return int(args.handler(args) or 0)
    except (ValueError, FileNotFoundError, KeyError, TypeError, ImportError) as err:
        if os.environ.get("MVIT3_DEBUG"):
            raise
        if isinstance(err, ImportError):  # a missing package: name what to install
            from mvit3_keras.optional import explain_import_error

            message = explain_import_error(err, f"mvit3 {args.command}")
        else:
            message = str(err)
        print(f"mvit3 {args.command}: error: {message}", file=sys.stderr)
        return 2


@contextlib.contextmanager
def _json_on_stdout(args):
    """``--json`` without a file: the command's JSON document is all that stdout
    carries; what the command prints meanwhile (tables, progress) goes to stderr."""
    if getattr(args, "json", None) != "-":
        yield
        return
    args.json = sys.stdout
    with contextlib.redirect_stdout(sys.stderr):
        yield


def main(argv=None) -> int:
    """``mvit3 [--verbose] COMMAND ...``: :func:`dispatch` behind the output filter,
    with the progress lines of the ``"mvit3"`` logger on stdout (for this call only: a
    second call in the same process neither repeats the lines nor writes to the first
    call's stdout)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    with framework_output(verbose="--verbose" in argv):  # known before parsing: imports print
        from mvit3_keras.progress import ProgressHandler, logger

        handler, saved = ProgressHandler(), (logger.level, logger.propagate)
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False  # absl's root handler would print every record again
        try:
            return dispatch(argv)
        finally:
            logger.removeHandler(handler)
            logger.setLevel(saved[0])
            logger.propagate = saved[1]


def _quiet_python_loggers():
    """absl and TensorFlow's Python loggers: errors only (their warnings are in HARMLESS)."""
    for name in ("absl", "tensorflow", "h5py"):
        logging.getLogger(name).setLevel(logging.ERROR)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
