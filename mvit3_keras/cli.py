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
    parser.add_argument(
        "--verbose",
        action="store_true",
        help="show every framework log and warning (the `mvit3` command hides known-harmless "
        "ones; see mvit3_cli.py)",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).register(sub)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
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


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
