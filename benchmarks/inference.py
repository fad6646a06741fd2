"""Float inference throughput: our Keras models vs timm (PyTorch eager) on this CPU.

For each pair (ours, timm) and batch size (32 and 1, 256x256 by default):

* ours: Keras eager (``model(x, training=False)``), ``tf.function``, ``tf.function``
  on ``mvit3_keras.optimize_for_inference(model)`` (BatchNorm folded, fused
  conv + bias + activation; the inference formulation we ship),
  ``mvit3_keras.inference_function(model)`` (that formulation traced once for the
  batch's shape with its variables frozen into constants: a fixed-shape server) and
  ``tf.function(jit_compile=True)`` (XLA; only for ``--xla-models``, see the
  README: XLA's CPU depthwise convolution is ~200x slower than oneDNN's);
* timm: PyTorch eager under ``torch.inference_mode()``, NCHW (timm's default)
  and channels-last (the faster PyTorch layout for depthwise convs).

Both sides run in their own worker process, timed in interleaved rounds; the
ratio is best-Keras images/s over best-timm images/s (the stricter comparison).
timm twins of our baselines are first checked to be the same network: our
seeded random weights loaded into timm must reproduce our logits.

    python benchmarks/inference.py                       # default pairs, 3 rounds
    python benchmarks/inference.py --pairs mobilevitv3_050,mobilevit_xxs --rounds 5
    python benchmarks/inference.py --smoke --peer-python none
"""

from __future__ import annotations

import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import common as C  # noqa: E402

DEFAULT_PAIRS = ",".join(
    [
        "mobilevitv3_050:mobilevitv2_050",
        "mobilevitv3_xxs:mobilevit_xxs",
        "mobilevit_xxs",
        "mobilevit_xs",
        "mobilevit_s",
        "mobilevitv2_050",
        "mobilevitv2_075",
        "mobilevitv2_100",
        "mobilevitv2_125",
        "mobilevitv2_150",
        "mobilevitv2_175",
        "mobilevitv2_200",
    ]
)
TARGET_RATIO = 1.2  # target: Keras float throughput >= 1.2x timm at batch 32
OURS_VARIANTS = ("eager", "graph", "optimized", "frozen", "xla")
PEER_VARIANTS = ("nchw", "channels_last")
LABELS = {
    "eager": "Keras eager",
    "graph": "tf.function",
    "optimized": "optimized",
    "frozen": "frozen",
    "xla": "tf.function XLA",
    "nchw": "timm NCHW",
    "channels_last": "timm ch-last",
}


def parse_args(argv=None):
    p = C.base_parser(__doc__.split("\n\n")[0])
    p.add_argument("--pairs", default=DEFAULT_PAIRS, help="ours[:timm],... (default: %(default)s)")
    p.add_argument(
        "--extra-models",
        default="",
        help="our variants measured without a peer (tf.function and optimized only), e.g. for the "
        "plot; 'v3' = "
        "every MobileViTv3 variant not already in --pairs",
    )
    p.add_argument("--batches", default="32,1")
    p.add_argument("--image-size", type=int, default=256)
    p.add_argument(
        "--xla-models",
        default="mobilevitv3_050,mobilevitv3_xxs",
        help="models also timed with jit_compile=True ('' for none)",
    )
    p.add_argument("--no-equivalence", action="store_true", help="skip the timm twin check")
    p.add_argument(
        "--peer-malloc",
        choices=["tuned", "default"],
        default="tuned",
        help="tuned (default): glibc malloc keeps PyTorch's large buffers (common.TUNED_MALLOC_ENV), "
        "~2x faster timm at batch 32 here; default: stock PyTorch",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="CPU threads of both sides (default: all cores); with 1 the comparison is robust "
        "to load from other processes (writes inference_1thread.json)",
    )
    args = p.parse_args(argv)
    if args.smoke:
        args.pairs, args.extra_models, args.batches = "mobilevitv3_xxs", "", "2,1"
        args.image_size, args.xla_models = 64, ""
        args.rounds = args.rounds or 1
        args.peer_python = "none"
    args.rounds = args.rounds or 3
    return args


def iters_for(batch: int, variant: str) -> int:
    if batch >= 8:
        return 1
    return 4 if variant in ("eager", "xla") else 8


def check_equivalence(ours, peer, pairs, size, workdir) -> dict:
    import numpy as np

    from benchmarks.timm_equivalence import compare

    out = {}
    for name, timm_name in pairs:
        if timm_name is None or C.TIMM_EXACT.get(name) != timm_name:
            continue
        keys = peer.call("state_keys", model=timm_name)["keys"]
        f = {k: os.path.join(workdir, f"{name}_{k}") for k in ("w.npz", "x.npy", "y.npy", "t.npy")}
        ours.call(
            "equivalence_export",
            model=name,
            timm_keys=keys,
            state_npz=f["w.npz"],
            input_npy=f["x.npy"],
            output_npy=f["y.npy"],
            size=size,
        )
        peer.call(
            "equivalence",
            model=timm_name,
            state_npz=f["w.npz"],
            input_npy=f["x.npy"],
            output_npy=f["t.npy"],
        )
        out[name] = {"timm": timm_name, **compare(np.load(f["y.npy"]), np.load(f["t.npy"]))}
        print(
            f"[equivalence] {name} vs timm {timm_name}: max|diff| {out[name]['max_abs_diff']:.2e} "
            f"(tol {out[name]['tolerance']:.2e}) -> {'SAME NETWORK' if out[name]['equivalent'] else 'DIFFERENT'}",
            flush=True,
        )
    return out


def run_pair(
    ours, peer, name, timm_name, batch, size, rounds, xla: bool, graph_only: bool = False
) -> dict:
    entries = {}
    variants = ["graph", "optimized", "frozen"]
    variants = variants if graph_only else ["eager", *variants]
    variants += ["xla"] if xla else []
    for v in variants:
        key = f"ours/{name}/{batch}/{v}"
        ours.call("build_infer", key=key, model=name, batch=batch, size=size, variant=v)
        entries[key] = (ours, v)
    if peer is not None and timm_name:
        for v in PEER_VARIANTS:
            key = f"peer/{timm_name}/{batch}/{v}"
            peer.call("build_infer", key=key, model=timm_name, batch=batch, size=size, variant=v)
            entries[key] = (peer, v)

    def runner(key):
        worker, variant = entries[key]
        return worker.call("time", key=key, iters=iters_for(batch, variant))["seconds"]

    times = C.interleave(entries, rounds, runner)
    for key, (worker, _) in entries.items():
        worker.call("free", key=key)
    result = {}
    for key, (_, v) in entries.items():
        sec = C.median(times[key])
        result[v] = {
            "median_s": sec,
            "images_per_s": batch / sec,
            "ms_per_image": 1000 * sec / batch,
            "spread": C.spread(times[key]),
            "n": len(times[key]),
        }
    return result


def main(argv=None) -> int:
    args = parse_args(argv)
    peer_py = C.peer_python(args.peer_python)
    pairs, extra_models = model_lists(args)
    payload = {
        "benchmark": "inference",
        "machine": C.machine_info(),
        "config": vars(args) | {"output_dir": str(args.output_dir)},
    }
    with start_workers(args, peer_py) as workers:
        peak = measure_references(workers, args, pairs, payload)
        rows = measure_models(workers, args, pairs, extra_models, peak, payload)
        payload["rows"] = rows
        payload["table"] = _table(rows, peak, payload["threads"])
        payload["complete"] = True
        C.write_results(args.output_dir, output_name(args), payload)
    return 0


def model_lists(args):
    """``(pairs, extra_models)``: the (ours, timm) pairs and our models without a peer."""
    pairs = C.parse_pairs(args.pairs)
    paired = {n for n, _ in pairs}
    extra = args.extra_models
    if extra == "v3":
        extra = ",".join(n for n in C.V3_VARIANTS if n not in paired)
    extra_models = [n for n, _ in C.parse_pairs(extra)] if extra else []
    return pairs, extra_models


def output_name(args) -> str:
    """``inference`` (all cores), ``inference_<n>thread``; ``_stock_pytorch`` without the tuned
    malloc."""
    name = "inference" if not args.threads or args.smoke else f"inference_{args.threads}thread"
    if args.peer_malloc == "default" and not args.smoke:
        name += "_stock_pytorch"
    return name


def start_workers(args, peer_py) -> C.Workers:
    ours = C.keras_worker(args.smoke, threads=args.threads)
    peer = C.peer_worker(
        peer_py,
        threads=args.threads,
        env_extra=C.TUNED_MALLOC_ENV if args.peer_malloc == "tuned" else None,
    )
    return C.Workers(ours, peer)


def measure_references(workers, args, pairs, payload) -> dict:
    """Versions, threads, each side's matmul peak and the timm twin check, into ``payload``;
    returns the peaks (MAC/s)."""
    ours, peer = workers.ours, workers.peer
    payload["versions"] = {"ours": ours.call("hello")["versions"]}
    payload["threads"] = {"ours": ours.call("hello")["intra_op_threads"]}
    if peer:
        payload["threads"]["peer"] = peer.call("hello")["intra_op_threads"]
        payload["versions"]["peer"] = peer.call("hello")["versions"]
    peak = {"ours": ours.call("matmul_peak", n=1024 if args.smoke else 2048)["macs_per_s"]}
    if peer:
        peak["peer"] = peer.call("matmul_peak", n=2048)["macs_per_s"]
    payload["matmul_peak_macs_per_s"] = peak
    with tempfile.TemporaryDirectory(prefix="mvit3-equiv-") as workdir:
        payload["equivalence"] = (
            check_equivalence(ours, peer, pairs, args.image_size, workdir)
            if peer and not args.no_equivalence
            else {}
        )
    return peak


def measure_models(workers, args, pairs, extra_models, peak, payload) -> list:
    """One row per model and batch size; ``payload`` is written (incomplete) after each."""
    batches = [int(b) for b in args.batches.split(",")]
    xla_models = set(filter(None, args.xla_models.split(",")))
    rows = []
    for name, timm_name in pairs + [(n, None) for n in extra_models]:
        # A fresh Keras worker per model: TF keeps freed memory (and compiled XLA
        # clusters) in the process, which otherwise grows by GBs over the variants.
        if not args.smoke and rows:
            workers.fresh_ours(threads=args.threads)
        ours, peer = workers.ours, workers.peer
        if peer:
            peer.call("reset")
        desc = ours.call("describe", model=name, size=args.image_size)
        peer_desc = peer.call("describe", model=timm_name) if peer and timm_name else {}
        for batch in batches:
            res = run_pair(
                ours,
                peer if timm_name else None,
                name,
                timm_name,
                batch,
                args.image_size,
                args.rounds,
                xla=name in xla_models,
                graph_only=name in extra_models,
            )
            same = payload["equivalence"].get(name, {}).get("equivalent")
            row = make_row(
                name, timm_name, batch, args.image_size, desc, peer_desc, same, res, peak
            )
            rows.append(row)
            payload["rows"], payload["complete"] = rows, False
            C.write_results(args.output_dir, output_name(args), payload, quiet=True)
            print(
                f"[{name} b{batch}] "
                + ", ".join(f"{LABELS[v]} {r['images_per_s']:.1f}/s" for v, r in res.items())
                + (f" -> ratio {row['ratio_best']:.2f}x" if row["ratio_best"] else ""),
                flush=True,
            )
    return rows


def make_row(name, timm_name, batch, size, desc, peer_desc, same_network, res, peak) -> dict:
    """The JSON row of one model at one batch size: figures, best variants, ratio, target."""
    ours_best = max((res[v]["images_per_s"], v) for v in OURS_VARIANTS if v in res)
    peer_res = {v: res[v] for v in PEER_VARIANTS if v in res}
    peer_best = max(((r["images_per_s"], v) for v, r in peer_res.items()), default=None)
    ratio = ours_best[0] / peer_best[0] if peer_best else None
    graph_macs_s = desc["macs_real"] * res[ours_best[1]]["images_per_s"]
    return {
        "model": name,
        "params": desc["params"],
        "macs_official": desc["macs_official"],
        "macs_real": desc["macs_real"],
        "timm": timm_name,
        "timm_params": peer_desc.get("params"),
        "same_network": same_network,
        "batch": batch,
        "image_size": size,
        "results": res,
        "ours_best": ours_best[1],
        "peer_best": peer_best[1] if peer_best else None,
        "ratio_best": ratio,
        "ratio_graph_vs_nchw": (
            res["graph"]["images_per_s"] / res["nchw"]["images_per_s"] if "nchw" in res else None
        ),
        "graph_fraction_of_peak": graph_macs_s / peak["ours"],
        "target_met": (ratio >= TARGET_RATIO) if (ratio is not None and batch >= 32) else None,
    }


def _table(rows, peak, threads):
    headers = [
        "ours",
        "params",
        "MACs (off./real)",
        "batch",
        "Keras eager",
        "tf.function",
        "optimized",
        "frozen",
        "XLA",
        "% peak",
        "timm (params)",
        "timm NCHW",
        "timm ch-last",
        "best/best",
        ">=1.2x @32",
    ]
    body = []
    for r in rows:
        res = r["results"]

        def ips(v, res=res):
            return C.fmt(res[v]["images_per_s"], ".1f") if v in res else "-"

        timm = "-"
        if r["timm"] and r["timm_params"]:
            same = {True: ", =", False: ", DIFF", None: ""}[r["same_network"]]
            timm = (
                f"{r['timm']} ({r['timm_params'] / 1e6:.2f}M{same})"
                if r["timm_params"]
                else r["timm"]
            )
        body.append(
            [
                r["model"],
                f"{r['params'] / 1e6:.2f}M",
                f"{r['macs_official'] / 1e6:.0f}M/{r['macs_real'] / 1e6:.0f}M",
                r["batch"],
                ips("eager"),
                ips("graph"),
                ips("optimized"),
                ips("frozen"),
                ips("xla"),
                f"{100 * r['graph_fraction_of_peak']:.0f}%",
                timm,
                ips("nchw"),
                ips("channels_last"),
                C.fmt(r["ratio_best"], ".2f") + ("x" if r["ratio_best"] else ""),
                C.verdict(r["target_met"]),
            ]
        )
    peak_note = ", ".join(f"{k} {v / 1e9:.1f} GMAC/s" for k, v in peak.items())
    return C.print_table(
        f"Float inference, images/s (median of interleaved rounds; threads {threads}); "
        f"matmul peak: {peak_note}",
        headers,
        body,
    )


if __name__ == "__main__":
    sys.exit(main())
