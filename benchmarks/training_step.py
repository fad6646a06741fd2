"""Training-step throughput and peak memory: our Keras model vs timm in PyTorch.

One step = forward, cross-entropy, backward and an AdamW update on a batch of
32 (what ``model.fit`` / ``train_on_batch`` runs per step vs the standard
PyTorch loop: ``zero_grad``, ``loss.backward()``, ``opt.step()``), at 128x128 and
256x256. Keras resolves ``jit_compile="auto"`` to False on a CPU-only machine,
as ``fit`` does.

Each side of each configuration runs in its own fresh process, so its peak
RSS (``ru_maxrss``) is its own: the table gives the peak of the whole process
and the increment over the process after the framework import. The steps of
the two processes are interleaved (one step here, one step there) and the
median step time is compared.

    python benchmarks/training_step.py
    python benchmarks/training_step.py --pairs mobilevitv3_050:mobilevitv2_050 --sizes 256
    python benchmarks/training_step.py --smoke --peer-python none
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import common as C  # noqa: E402

DEFAULT_PAIRS = (
    "mobilevitv3_050:mobilevitv2_050,mobilevitv3_xxs:mobilevit_xxs,mobilevit_xxs,mobilevitv2_050"
)
TARGET_RATIO = 1.0


def parse_args(argv=None):
    p = C.base_parser(__doc__.split("\n\n")[0])
    p.add_argument("--pairs", default=DEFAULT_PAIRS)
    p.add_argument("--sizes", default="128,256")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--peer-variant", default="nchw", choices=["nchw", "channels_last"])
    args = p.parse_args(argv)
    if args.smoke:
        args.pairs, args.sizes, args.batch = "mobilevitv3_xxs", "64", 2
        args.rounds = args.rounds or 1
        args.peer_python = "none"
    args.rounds = args.rounds or 4
    return args


def measure(name, timm_name, size, args, peer_py) -> dict:
    label = f"{name}@{size}"
    ours = C.keras_worker(args.smoke, label=f"ours-{label}")
    peer = C.peer_worker(peer_py, label=f"peer-{label}") if timm_name else None
    with C.Workers(ours, peer):
        sides = {"ours": ours} | ({"peer": peer} if peer else {})
        base = {k: w.call("rss") for k, w in sides.items()}
        desc, build = build_steps(ours, peer, name, timm_name, size, args)

        def runner(side):
            return sides[side].call("time", key="train", iters=1)["seconds"]

        times = C.interleave(sides, args.rounds, runner)
        after = {k: w.call("rss") for k, w in sides.items()}
        out = {
            "model": name,
            "timm": timm_name,
            "image_size": size,
            "batch": args.batch,
            "in_process": args.smoke,
        }
        for side in sides:
            out[side] = {
                "params": desc[side]["params"],
                **step_figures(times[side], args.batch),
                "peak_rss_mib": after[side]["peak_rss_mib"],
                "baseline_rss_mib": base[side]["rss_mib"],
                "peak_increment_mib": after[side]["peak_rss_mib"] - base[side]["rss_mib"],
                **({"jit_compile": build[side].get("jit_compile")} if side == "ours" else {}),
            }
        if peer:
            out.update(targets(out["ours"], out["peer"]))
        return out


def build_steps(ours, peer, name, timm_name, size, args):
    """``(desc, build)`` of each side: the model description and its built training step."""
    desc = {"ours": ours.call("describe", model=name, size=size)}
    warmup = 1 if args.smoke else 2
    build = {
        "ours": ours.call(
            "build_train", key="train", model=name, batch=args.batch, size=size, warmup=warmup
        )
    }
    if peer:
        desc["peer"] = peer.call("describe", model=timm_name)
        build["peer"] = peer.call(
            "build_train",
            key="train",
            model=timm_name,
            batch=args.batch,
            size=size,
            variant=args.peer_variant,
        )
    return desc, build


def step_figures(seconds, batch) -> dict:
    sec = C.median(seconds)
    return {
        "median_step_s": sec,
        "images_per_s": batch / sec,
        "spread": C.spread(seconds),
        "n": len(seconds),
    }


def targets(ours, peer) -> dict:
    """Throughput ratio and the throughput / memory targets of one configuration."""
    ratio = ours["images_per_s"] / peer["images_per_s"]
    return {
        "ratio": ratio,
        "throughput_target_met": ratio >= TARGET_RATIO,
        "memory_target_met": ours["peak_rss_mib"] <= peer["peak_rss_mib"],
        "memory_increment_target_met": ours["peak_increment_mib"] <= peer["peak_increment_mib"],
    }


def main(argv=None) -> int:
    args = parse_args(argv)
    peer_py = C.peer_python(args.peer_python)
    pairs = C.parse_pairs(args.pairs)
    sizes = [int(s) for s in args.sizes.split(",")]
    payload = {
        "benchmark": "training_step",
        "machine": C.machine_info(),
        "config": {k: str(v) for k, v in vars(args).items()},
    }
    rows = []
    for name, timm_name in pairs:
        for size in sizes:
            row = measure(name, timm_name, size, args, peer_py)
            rows.append(row)
            msg = f"[{name} {size}px b{args.batch}] ours {row['ours']['images_per_s']:.1f} img/s, peak {row['ours']['peak_rss_mib']:.0f} MiB"
            if "peer" in row:
                msg += f"; timm {timm_name} {row['peer']['images_per_s']:.1f} img/s, peak {row['peer']['peak_rss_mib']:.0f} MiB; ratio {row['ratio']:.2f}x"
            print(msg, flush=True)
    payload["rows"] = rows
    payload["table"] = _table(rows)
    C.write_results(args.output_dir, "training_step", payload)
    return 0


def _table(rows):
    headers = [
        "ours",
        "timm",
        "size",
        "ours img/s",
        "timm img/s",
        "ratio",
        ">=1.0x",
        "ours peak MiB (+incr.)",
        "timm peak MiB (+incr.)",
        "mem <= timm",
    ]
    body = []
    for r in rows:
        o, p = r["ours"], r.get("peer")
        body.append(
            [
                f"{r['model']} ({o['params'] / 1e6:.2f}M)",
                f"{r['timm']} ({p['params'] / 1e6:.2f}M)" if p else "-",
                r["image_size"],
                C.fmt(o["images_per_s"], ".1f"),
                C.fmt(p["images_per_s"], ".1f") if p else "-",
                C.fmt(r.get("ratio"), ".2f"),
                C.verdict(r.get("throughput_target_met")),
                f"{o['peak_rss_mib']:.0f} (+{o['peak_increment_mib']:.0f})",
                f"{p['peak_rss_mib']:.0f} (+{p['peak_increment_mib']:.0f})" if p else "-",
                C.verdict(r.get("memory_target_met"))
                + (f" / incr. {C.verdict(r.get('memory_increment_target_met'))}" if p else ""),
            ]
        )
    batch = rows[0]["batch"] if rows else 32
    return C.print_table(
        f"Training step (batch {batch}, AdamW), images/s and peak RSS", headers, body
    )


if __name__ == "__main__":
    sys.exit(main())
