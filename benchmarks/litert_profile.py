"""LiteRT op profile of ``.tflite`` files: where the milliseconds go, fp32 vs int8.

The per-op times are those of the library's profiler,
:func:`quantization.benchmark.profile_ops` (the LiteRT Python API has no per-op
profiler, so each op is cut out into a one-op model with the same tensors,
quantization parameters and buffers and timed alone, XNNPACK default delegate,
``--threads``); the whole-file latency, with and without XNNPACK, is
:func:`quantization.benchmark.benchmark_tflite`. This script adds what the
library does not report: whether XNNPACK took each op (the one-op interpreter
then holds a ``DELEGATE`` node; ops it refuses run on the builtin kernels and
split the delegated graph into partitions). Per op type the table gives the
count, how many XNNPACK took, the summed time and the share.

    python benchmarks/litert_profile.py --models mobilevitv3_xxs      # cached files
    python benchmarks/litert_profile.py benchmarks/.cache/mobilevitv3_xxs_256_int8.tflite
"""

from __future__ import annotations

import collections
import math
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import common as C  # noqa: E402
from quantization.runtime import interpreter_ops  # noqa: E402


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


def _op_names(interpreter) -> list:
    """Node names of an allocated interpreter (LiteRT exposes them only privately)."""
    return [o["op_name"] for o in interpreter_ops(interpreter)]


def xnnpack_delegation(content: bytes, threads: int):
    """``(number of XNNPACK partitions of the whole file, [XNNPACK takes op i alone])``."""
    from quantization.flatbuffer_edit import num_ops, single_op_model
    from quantization.runtime import load_interpreter

    whole = load_interpreter(content, num_threads=threads, use_xnnpack=True)
    partitions = sum(name == "DELEGATE" for name in _op_names(whole))
    delegated = []
    for index in range(num_ops(content)):
        one = load_interpreter(single_op_model(content, index), num_threads=threads)
        delegated.append("DELEGATE" in _op_names(one))
    return partitions, delegated


def profile_file(path, threads, iters) -> dict:
    """Whole-file latency (XNNPACK / builtin kernels only), and the per-op profile of
    :func:`quantization.benchmark.profile_ops` with XNNPACK's choice per op."""
    from quantization.benchmark import benchmark_tflite, profile_ops

    with open(path, "rb") as f:
        content = f.read()
    whole = {}
    for label, xnnpack in (("xnnpack", True), ("builtin_only", False)):
        timing = benchmark_tflite(
            content,
            num_threads=threads,
            warmup=1,
            runs=max(3, iters // 2),
            max_seconds=None,
            use_xnnpack=xnnpack,
        )
        whole[label] = timing["median_ms"]
    profile = profile_ops(content, num_threads=threads, warmup=1, runs=iters)
    partitions, delegated = xnnpack_delegation(content, threads)
    per_type = collections.defaultdict(lambda: {"count": 0, "ms": 0.0, "xnnpack": 0})
    ops_out = []
    for row in profile["ops"]:
        taken = delegated[row["index"]]
        entry = per_type[row["op"]]
        entry["count"] += 1
        entry["ms"] += 0.0 if math.isnan(row["ms"]) else row["ms"]
        entry["xnnpack"] += int(taken)
        ops_out.append({**row, "xnnpack": taken})
    return {
        "path": str(path),
        "whole_model_ms": whole,
        "xnnpack_partitions": partitions,
        "sum_of_ops_ms": profile["sum_ms"],
        "by_type": dict(sorted(per_type.items(), key=lambda kv: -kv[1]["ms"])),
        "ops": ops_out,
    }


def main(argv=None) -> int:
    args = parse_args(argv)
    files = list(args.files) or cached_files(args)
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
        tables.append(_op_table(os.path.basename(path), prof, args.threads))
    C.write_tables(args.output_dir, "litert_profile", payload, tables)
    return 0


def cached_files(args) -> list:
    """The files :mod:`benchmarks.tflite_latency` cached for ``--models`` x ``--quants``."""
    files = []
    for name in filter(None, args.models.split(",")):
        for q in filter(None, args.quants.split(",")):
            path = os.path.join(args.cache_dir, f"{name}_{args.image_size}_{q}_rw.tflite")
            if os.path.isfile(path):
                files.append(path)
            else:
                print(
                    f"[profile] {path} missing: run benchmarks/tflite_latency.py first", flush=True
                )
    return files


def _op_table(file_name, prof, threads) -> str:
    """Per op type: count, how many XNNPACK took, summed ms and share of the sum."""
    total = max(prof["sum_of_ops_ms"], 1e-9)
    w = prof["whole_model_ms"]
    return C.print_table(
        f"{file_name}: whole model {w['xnnpack']:.1f} ms with XNNPACK "
        f"({prof['xnnpack_partitions']} delegate partitions), {w['builtin_only']:.1f} ms builtin "
        f"only; sum of single ops {prof['sum_of_ops_ms']:.1f} ms ({threads} thread)",
        ["op", "count", "in XNNPACK", "ms (sum)", "share"],
        [
            [
                op,
                e["count"],
                f"{e['xnnpack']}/{e['count']}",
                f"{e['ms']:.2f}",
                C.percent(e["ms"], total),
            ]
            for op, e in prof["by_type"].items()
        ],
    )


if __name__ == "__main__":
    sys.exit(main())
