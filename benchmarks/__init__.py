"""Side-by-side benchmarks: ours (Keras / TFLite) vs timm (PyTorch) and ONNX Runtime.

Every script runs as ``python benchmarks/<name>.py``, prints a table and writes
``benchmarks/results/<name>.json``; ``bash benchmarks/run_all.sh`` runs them all.
The peer (timm / PyTorch / ONNX Runtime) lives in its own virtualenv and is driven
through :mod:`benchmarks.worker` in a child process, so both sides are measured
in the same run, interleaved, on the same machine.
"""
