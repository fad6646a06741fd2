"""TensorFlow profiler op statistics of our ``tf.function`` model (where the float time goes).

Runs ``tf.profiler.experimental`` around a few batches and converts the trace
with TensorFlow's own ``framework_op_stats`` tool; prints the self time by TF
op type and by the Keras layer kind that emitted the ops (our custom layers -
Unfold/Fold, attention cores, resizes - vs Keras' Conv2D, DepthwiseConv2D,
BatchNormalization, activations, norms). This is the profile behind the model
code decisions in the README's Benchmarks section.

    python benchmarks/profile_tf.py --models mobilevitv3_050,mobilevitv3_xxs --batch 32
"""

from __future__ import annotations

import collections
import glob
import json
import os
import shutil
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import common as C  # noqa: E402


def parse_args(argv=None):
    p = C.base_parser(__doc__.split("\n\n")[0])
    p.add_argument("--models", default="mobilevitv3_050,mobilevitv3_xxs")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--image-size", type=int, default=256)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument(
        "--formulation",
        choices=("optimized", "plain"),
        default="optimized",
        help="optimized: mvit3_keras.optimize_for_inference (BatchNorm folded; what the "
        "benchmarks time as 'fused'); plain: the trainable model",
    )
    args = p.parse_args(argv)
    if args.smoke:
        args.models, args.batch, args.image_size, args.steps = "mobilevitv3_xxs", 2, 64, 1
    return args


def _layer_kinds(model) -> dict:
    """``{layer name: class name}`` (nested models included)."""
    import keras

    out = {}

    def walk(m):
        for layer in m.layers:
            if isinstance(layer, keras.Model):
                walk(layer)
            else:
                out[layer.name] = type(layer).__name__
                if isinstance(layer, keras.layers.Activation):
                    act = layer.get_config()["activation"]
                    act = act if isinstance(act, str) else layer.activation.__name__
                    out[layer.name] = f"Activation({act})"

    walk(model)
    return out


def profile_model(name, batch, size, steps, formulation="optimized") -> dict:
    import numpy as np
    import tensorflow as tf

    import mvit3_keras as m
    from mvit3_keras.compat import xplane_op_stats

    model = m.create_model(name, input_shape=(size, size, 3))
    if formulation == "optimized":
        model = m.optimize_for_inference(model)
    x = tf.constant(np.random.default_rng(0).random((batch, size, size, 3), np.float32))
    fn = tf.function(lambda t: model(t, training=False))
    fn(x).numpy()
    fn(x).numpy()
    logdir = tempfile.mkdtemp(prefix="mvit3-tfprof-")
    try:
        tf.profiler.experimental.start(logdir)
        for _ in range(steps):
            fn(x).numpy()
        tf.profiler.experimental.stop()
        paths = glob.glob(os.path.join(logdir, "**", "*.xplane.pb"), recursive=True)
        data, ok = xplane_op_stats(paths)
    finally:
        shutil.rmtree(logdir, ignore_errors=True)
    if not ok:
        raise RuntimeError("the TF profiler produced no op statistics")
    table = json.loads(data)
    table = table[0] if isinstance(table, list) else table
    cols = [c["id"] for c in table["cols"]]
    kinds = _layer_kinds(model)
    by_type, by_kind = collections.Counter(), collections.Counter()
    total = 0.0
    for row in table["rows"]:
        r = {k: (c or {}).get("v") for k, c in zip(cols, row["c"])}
        if r["host_or_device"] != "Host" or r["type"] == "IDLE":
            continue
        t = float(r["total_self_time"]) / steps
        total += t
        by_type[r["type"]] += t
        parts = r["operation"].split("/")
        layer = parts[1] if len(parts) > 1 else parts[0]
        layer = layer[:-2] if layer.endswith("_1") and layer[:-2] in kinds else layer
        by_kind[kinds.get(layer, "(other)")] += t
    return {
        "model": name,
        "formulation": formulation,
        "batch": batch,
        "image_size": size,
        "busy_us_per_step": total,
        "by_op_type_us": dict(by_type.most_common()),
        "by_layer_kind_us": dict(by_kind.most_common()),
    }


BREAKDOWNS = (("TF op type", "by_op_type_us"), ("Keras layer kind", "by_layer_kind_us"))


def main(argv=None) -> int:
    args = parse_args(argv)
    payload = {"benchmark": "profile_tf", "machine": C.machine_info(), "profiles": []}
    tables = []
    for name in filter(None, args.models.split(",")):
        prof = profile_model(name, args.batch, args.image_size, args.steps, args.formulation)
        payload["profiles"].append(prof)
        tables += [_breakdown_table(prof, title, key, args) for title, key in BREAKDOWNS]
    C.write_tables(args.output_dir, "profile_tf", payload, tables)
    return 0


def _breakdown_table(prof, title, key, args) -> str:
    """The 14 largest entries of one breakdown (``key``) of a profile: ms and share."""
    total = prof["busy_us_per_step"]
    return C.print_table(
        f"{prof['model']} ({args.formulation}), batch {args.batch}: busy time per step by {title} "
        f"({total / 1000:.0f} ms of op time over all threads)",
        [title, "ms", "share"],
        [[k, f"{v / 1000:.1f}", C.percent(v, total)] for k, v in list(prof[key].items())[:14]],
    )


if __name__ == "__main__":
    sys.exit(main())
