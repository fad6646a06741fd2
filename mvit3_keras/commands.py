"""``mvit3`` sub-commands of the model zoo: ``list``, ``macs``, ``convert-weights``.

Registered by the console entry point (``mvit3_cli.build_parser``).
"""

from __future__ import annotations

import json

from mvit3_keras import cli_args


def register(subparsers) -> None:
    p = subparsers.add_parser("list", help="list the registered variants (params, MACs, top-1)")
    p.add_argument("--pattern", default="*", help="shell pattern, e.g. 'mobilevitv3_*'")
    cli_args.add_json(p, what="the table")
    p.set_defaults(handler=_cmd_list)

    p = subparsers.add_parser("macs", help="count MACs (official profiler rules and real)")
    p.add_argument("name")
    cli_args.add_image_size(p, default=(256, 256), default_text="256")
    cli_args.add_json(p, what="the counts")
    p.set_defaults(handler=_cmd_macs)

    p = subparsers.add_parser(
        "convert-weights",
        help="convert an official ml-cvnets/MobileViTv3 checkpoint to .keras or .weights.h5",
    )
    p.add_argument("name", help="variant name (mvit3 list)")
    p.add_argument("checkpoint", help=".pt/.pth (as released), or .npz")
    p.add_argument("output", help="OUTPUT.keras (whole model) or OUTPUT.weights.h5")
    p.add_argument("--num-classes", type=int, default=None, help="default: from the checkpoint")
    cli_args.add_image_size(
        p, default=(256, 256), default_text="256", use="input size of the saved model"
    )
    p.add_argument(
        "--bgr-input",
        action="store_true",
        help="keep the official channel order (v1 family: BGR) instead of RGB",
    )
    p.add_argument(
        "--no-strict",
        action="store_true",
        help="load matching weights only instead of failing on any mismatch",
    )
    p.set_defaults(handler=_cmd_convert)


def _cmd_list(args) -> int:
    from mvit3_keras.registry import list_models
    from mvit3_keras.summary import format_table, variant_table

    rows = variant_table(list_models(args.pattern))
    print(format_table(rows))
    cli_args.emit_json(args.json, rows)
    return 0


def _cmd_macs(args) -> int:
    from mvit3_keras.backbone import create_model
    from mvit3_keras.macs import count_macs
    from mvit3_keras.summary import count_params

    shape = (*args.image_size, 3)
    model = create_model(args.name, input_shape=shape)
    macs, params = count_macs(model), count_params(model)
    print(
        f"{args.name} @ {shape[0]}x{shape[1]}: params {params:,}  "
        f"MACs {macs['official'] / 1e6:.3f}M (official profiler)  {macs['real'] / 1e6:.3f}M (real)"
    )
    counts = {"name": args.name, "image_size": list(shape[:2]), "params": params}
    cli_args.emit_json(
        args.json, {**counts, "macs_official": macs["official"], "macs_real": macs["real"]}
    )
    return 0


def _cmd_convert(args) -> int:
    from mvit3_keras.convert_cli import convert_checkpoint

    report = convert_checkpoint(
        args.name,
        args.checkpoint,
        args.output,
        num_classes=args.num_classes,
        input_shape=(*args.image_size, 3),
        rgb_input=not args.bgr_input,
        strict=not args.no_strict,
    )
    print(json.dumps(report, indent=2))
    return 0
