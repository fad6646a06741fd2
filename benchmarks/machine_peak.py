"""The fraction of the machine's peak that our models reach.

Peak: the best MAC/s of a large float32 matrix product (``tf.linalg.matmul`` or
NumPy's BLAS, whichever is faster, n x n, in the same worker process that then
runs the models; PyTorch's
``torch.matmul`` in the peer process for reference). Achieved: our counter's
real MACs (:func:`mvit3_keras.count_macs`, ``"real"``: the multiply-adds that
actually run) x images/s of the ``tf.function`` model at batch 32. The ratio of
the two says how much of the arithmetic capability the model uses; MobileViT
is dominated by depthwise convolutions, normalisations and activations whose
arithmetic intensity is far below a matmul's, so a fraction well below 1 is
expected, and the per-model figures show where the gap is largest.

    python benchmarks/machine_peak.py
    python benchmarks/machine_peak.py --models mobilevitv3_xxs,mobilevitv3_050 --batch 32
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import common as C  # noqa: E402

DEFAULT_MODELS = "mobilevitv3_xxs,mobilevitv3_xs,mobilevitv3_s,mobilevitv3_050,mobilevitv3_100,mobilevitv3_200,mobilevit_xxs,mobilevitv2_050"


def parse_args(argv=None):
    p = C.base_parser(__doc__.split("\n\n")[0])
    p.add_argument("--models", default=DEFAULT_MODELS)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--image-size", type=int, default=256)
    p.add_argument("--matmul-sizes", default="1024,2048,4096")
    args = p.parse_args(argv)
    if args.smoke:
        args.models, args.batch, args.image_size, args.matmul_sizes = (
            "mobilevitv3_xxs",
            2,
            64,
            "512",
        )
        args.rounds = args.rounds or 1
        args.peer_python = "none"
    args.rounds = args.rounds or 3
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    peer_py = C.peer_python(args.peer_python)
    models = [n for n, _ in C.parse_pairs(args.models)]
    sizes = [int(s) for s in args.matmul_sizes.split(",")]
    payload = {
        "benchmark": "machine_peak",
        "machine": C.machine_info(),
        "config": {k: str(v) for k, v in vars(args).items()},
    }
    with C.Workers(C.keras_worker(args.smoke), C.peer_worker(peer_py)) as workers:
        peaks = measure_matmul_peaks(workers, sizes)
        peak = max(max(peaks["tensorflow"].values()), max(peaks["numpy"].values()))
        payload["matmul_macs_per_s"] = peaks
        payload["peak_macs_per_s"] = peak
        _peak_table(peaks, sizes)
        ours = workers.ours
        rows = [measure_model(ours, args, name, peak) for name in models]
        payload["rows"] = rows
        # Re-measure the peak at the end: the load of the machine may have changed.
        payload["peak_macs_per_s_end"] = ours.call("matmul_peak", n=max(sizes))["macs_per_s"]
        payload["table"] = _fraction_table(rows, peak, args.batch)
        C.write_results(args.output_dir, "machine_peak", payload)
    return 0


def measure_matmul_peaks(workers, sizes) -> dict:
    """``{"tensorflow" | "numpy" | "torch": {n: MAC/s}}`` (torch: with a peer only)."""
    peaks = {"tensorflow": {}, "numpy": {}, "torch": {}}
    for n in sizes:
        ours = workers.ours.call("matmul_peak", n=n)["by_runner"]
        peaks["tensorflow"][n], peaks["numpy"][n] = ours["tensorflow"], ours["numpy"]
        if workers.peer:
            peaks["torch"][n] = workers.peer.call("matmul_peak", n=n)["macs_per_s"]
    return peaks


def measure_model(ours, args, name, peak) -> dict:
    """Images/s of ``name``'s ``tf.function`` and the MAC/s it achieves (vs ``peak``)."""
    desc = ours.call("describe", model=name, size=args.image_size)
    key = f"{name}/graph"
    ours.call(
        "build_infer",
        key=key,
        model=name,
        batch=args.batch,
        size=args.image_size,
        variant="graph",
    )
    secs = []
    for _ in range(args.rounds):
        secs += ours.call("time", key=key, iters=1)["seconds"]
    ours.call("reset")
    ips = args.batch / C.median(secs)
    achieved = ips * desc["macs_real"]
    return {
        "model": name,
        "macs_real": desc["macs_real"],
        "macs_official": desc["macs_official"],
        "images_per_s": ips,
        "achieved_macs_per_s": achieved,
        "fraction_of_peak": achieved / peak,
    }


def _peak_table(peaks, sizes) -> str:
    return C.print_table(
        "Measured matmul peak (float32, best of 5), GMAC/s",
        ["n", "TensorFlow", "NumPy", "PyTorch (peer)"],
        [
            [
                n,
                f"{peaks['tensorflow'][n] / 1e9:.1f}",
                f"{peaks['numpy'][n] / 1e9:.1f}",
                C.fmt(peaks["torch"].get(n, 0) / 1e9 or None, ".1f"),
            ]
            for n in sizes
        ],
    )


def _fraction_table(rows, peak, batch) -> str:
    return C.print_table(
        f"Fraction of the matmul peak ({peak / 1e9:.1f} GMAC/s), tf.function, batch {batch}",
        ["model", "real MACs/img", "images/s", "achieved GMAC/s", "fraction of peak"],
        [
            [
                r["model"],
                f"{r['macs_real'] / 1e6:.0f}M",
                f"{r['images_per_s']:.1f}",
                f"{r['achieved_macs_per_s'] / 1e9:.1f}",
                f"{100 * r['fraction_of_peak']:.1f}%",
            ]
            for r in rows
        ],
    )


if __name__ == "__main__":
    sys.exit(main())
