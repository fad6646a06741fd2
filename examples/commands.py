"""``mvit3 demo``: the end-to-end demo of the README (:mod:`mvit3_examples.demo`)."""

from __future__ import annotations


def register(subparsers) -> None:
    p = subparsers.add_parser("demo", help="the end-to-end demo of the README")
    p.add_argument("--output", default="outputs/demo", help="output folder")
    p.add_argument("--quick", action="store_true", help="smaller settings for a smoke run")
    p.set_defaults(handler=run_demo_command)


def run_demo_command(args) -> int:
    from mvit3_examples.demo import run_demo

    run_demo(args.output, quick=args.quick)
    return 0
