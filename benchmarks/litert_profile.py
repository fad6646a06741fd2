"""LiteRT op profile of ``.tflite`` files: where the milliseconds go, fp32 vs int8.

The LiteRT Python API exposes no per-op profiler, so each op is timed on its
own: :func:`quantization.flatbuffer_edit.single_op_model` cuts the op out of
the file (same tensors, quantization parameters and buffers) and the one-op
model runs in the same interpreter configuration as the whole file (XNNPACK
default delegate, ``--threads``). Per op type the table gives the count, the
summed time, the share, and whether XNNPACK took the op (the one-op
interpreter then holds a ``DELEGATE`` node) - ops it refuses run on the
builtin kernels and split the delegated graph into partitions.

    python benchmarks/litert_profile.py --models mobilevitv3_xxs      # cached files
    python benchmarks/litert_profile.py benchmarks/.cache/mobilevitv3_xxs_256_int8.tflite
"""

from __future__ import annotations

import collections
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import common as C  # noqa: E402


def parse_args(argv=None):
    p = C.base_parser(__doc__.split("\n\n")[0])
    p.add_argument("files", nargs="*", help=".tflite files (default: the cached --models files)")
    p.add_argument("--models", default="mobilevitv3_xxs,mobilevitv3_050")
    p.add_argument("--quants", default="fp32,int8,int8_cpu")
    p.add_argument("--image-size", type=int, default=256)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--cache-dir", default=str(C.BENCH_DIR / ".cache"))
    return p.parse_args(argv)


def _interpreter(content, threads, xnnpack=True):
    from quantization.runtime import load_interpreter

    return load_interpreter(bytes(content), num_threads=threads, use_xnnpack=xnnpack)


def _fill_inputs(interpreter, rng):
    import numpy as np

    for d in interpreter.get_input_details():
        dtype = np.dtype(d["dtype"])
        shape = tuple(int(s) for s in d["shape"])
        if dtype.kind == "f":
            x = rng.random(shape, np.float32).astype(dtype)
        elif dtype.kind in "iu":
            info = np.iinfo(dtype)
            x = rng.integers(max(info.min, -128), min(info.max, 127) + 1, size=shape).astype(dtype)
        else:
            x = np.zeros(shape, dtype)
        interpreter.set_tensor(d["index"], x)


def _median_ms(interpreter, iters):
    interpreter.invoke()
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        interpreter.invoke()
        times.append(time.perf_counter() - start)
    return 1000 * C.median(times)


def profile_file(path, threads, iters) -> dict:
    import numpy as np

    from quantization.flatbuffer_edit import num_ops, single_op_model

    with open(path, "rb") as f:
        content = f.read()
    rng = np.random.default_rng(0)
    whole = {}
    for label, xnn in (("xnnpack", True), ("builtin_only", False)):
        it = _interpreter(content, threads, xnn)
        _fill_inputs(it, rng)
        whole[label] = _median_ms(it, max(3, iters // 2))
        if xnn:
            ops = it._get_ops_details()  # noqa: SLF001
            partitions = sum(o["op_name"] == "DELEGATE" for o in ops)
    per_type = collections.defaultdict(lambda: {"count": 0, "ms": 0.0, "xnnpack": 0})
    ops_out = []
    for index in range(num_ops(content)):
        one = single_op_model(content, index)
        it = _interpreter(one, threads, True)
        names = [o["op_name"] for o in it._get_ops_details()]  # noqa: SLF001
        op_name = next(n for n in names if n != "DELEGATE")
        delegated = "DELEGATE" in names
        _fill_inputs(it, rng)
        ms = _median_ms(it, iters)
        entry = per_type[op_name]
        entry["count"] += 1
        entry["ms"] += ms
        entry["xnnpack"] += int(delegated)
        ops_out.append({"index": index, "op": op_name, "ms": ms, "xnnpack": delegated})
    total = sum(e["ms"] for e in per_type.values())
    return {
        "path": str(path),
        "whole_model_ms": whole,
        "xnnpack_partitions": partitions,
        "sum_of_ops_ms": total,
        "by_type": dict(sorted(per_type.items(), key=lambda kv: -kv[1]["ms"])),
        "ops": ops_out,
    }


def main(argv=None) -> int:
    args = parse_args(argv)
    files = list(args.files)
    if not files:
        for name in filter(None, args.models.split(",")):
            for q in filter(None, args.quants.split(",")):
                path = os.path.join(args.cache_dir, f"{name}_{args.image_size}_{q}_rw.tflite")
                if os.path.isfile(path):
                    files.append(path)
                else:
                    print(
                        f"[profile] {path} missing: run benchmarks/tflite_latency.py first",
                        flush=True,
                    )
    payload = {
        "benchmark": "litert_profile",
        "machine": C.machine_info(),
        "threads": args.threads,
        "files": {},
    }
    tables = []
    for path in files:
        prof = profile_file(path, args.threads, args.iters)
        payload["files"][os.path.basename(path)] = prof
        rows = [
            [
                op,
                e["count"],
                f"{e['xnnpack']}/{e['count']}",
                f"{e['ms']:.2f}",
                f"{100 * e['ms'] / max(prof['sum_of_ops_ms'], 1e-9):.1f}%",
            ]
            for op, e in prof["by_type"].items()
        ]
        w = prof["whole_model_ms"]
        tables.append(
            C.print_table(
                f"{os.path.basename(path)}: whole model {w['xnnpack']:.1f} ms with XNNPACK "
                f"({prof['xnnpack_partitions']} delegate partitions), {w['builtin_only']:.1f} ms builtin "
                f"only; sum of single ops {prof['sum_of_ops_ms']:.1f} ms ({args.threads} thread)",
                ["op", "count", "in XNNPACK", "ms (sum)", "share"],
                rows,
            )
        )
    payload["table"] = "\n".join(tables)
    C.write_results(args.output_dir, "litert_profile", payload)
    return 0


if __name__ == "__main__":
    sys.exit(main())
