"""``mvit3`` command line: one sub-command per job.

Each package contributes its commands through a ``register(subparsers)``
function (``mvit3_keras.commands``, ``training.commands``,
``quantization.commands``); a command's handler gets the parsed ``args`` and
returns an exit code.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

COMMAND_MODULES = ("mvit3_keras.commands", "training.commands", "quantization.commands")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mvit3",
        description="MobileViTv3 for edge devices: models, official weights, training, int8 export.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).register(sub)
    return parser


def main(argv=None) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except (ValueError, FileNotFoundError, KeyError, TypeError) as err:
        if os.environ.get("MVIT3_DEBUG"):
            raise
        print(f"mvit3 {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
