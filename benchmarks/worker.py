"""A benchmark worker: builds models and times them on request (JSON lines on stdin/stdout).

Two backends, one protocol, so the coordinator treats both sides alike:

* ``keras``: our models (``mvit3_keras``) in Keras eager, ``tf.function``,
  ``tf.function(jit_compile=True)``, ``train_on_batch``, and ``.tflite`` files in
  LiteRT (XNNPACK);
* ``timm``: timm's MobileViT / MobileViTv2 in PyTorch eager (NCHW and
  channels-last), its training step, ONNX export and ONNX Runtime sessions.
  This backend imports only numpy / torch / timm / onnxruntime, so it runs in
  the separate peer virtualenv (``benchmarks/.peer-venv``).

Each timed call runs the prepared callable ``iters`` times and returns the
wall time of every call (``time.perf_counter``), outputs materialised.

Run as ``python benchmarks/worker.py keras|timm``; the coordinator side is
:class:`SubprocessWorker` (separate process) or :class:`LocalWorker`
(in-process, for ``--smoke`` runs).
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import traceback

THIS = os.path.abspath(__file__)
ROOT = os.path.dirname(os.path.dirname(THIS))


def _rss() -> dict:
    """Peak (ru_maxrss) and current RSS of this process, MiB."""
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    current = None
    try:
        with open("/proc/self/statm", encoding="ascii") as f:
            pages = int(f.read().split()[1])
        current = pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:  # pragma: no cover
        pass
    return {"peak_rss_mib": peak_kib / 1024.0, "rss_mib": current}


def _threads() -> int | None:
    """CPU threads of this worker (``MVIT3_BENCH_THREADS``; default: the framework's)."""
    value = os.environ.get("MVIT3_BENCH_THREADS")
    return int(value) if value else None


class _Base:
    def __init__(self):
        self.fns = {}

    def time(self, key, iters=1):
        fn = self.fns[key]
        out = []
        for _ in range(int(iters)):
            start = time.perf_counter()
            fn()
            out.append(time.perf_counter() - start)
        return {"seconds": out}

    def free(self, key):
        self.fns.pop(key, None)
        import gc

        gc.collect()
        return {}

    def rss(self):
        return _rss()

    def reset(self):
        """Drop every prepared callable and cached model (memory stays flat over many models)."""
        self.fns.clear()
        self.models.clear()
        self._clear_framework()
        import gc

        gc.collect()
        return _rss()

    def _clear_framework(self):
        pass

    def _warm(self, key, warmup):
        start = time.perf_counter()
        for _ in range(int(warmup)):
            self.fns[key]()
        return time.perf_counter() - start


class KerasBackend(_Base):
    """Our models: ``mvit3_keras`` on the TensorFlow backend, and LiteRT."""

    def __init__(self):
        super().__init__()
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        import numpy as np
        import tensorflow as tf

        threads = _threads()
        if threads:  # before TensorFlow runs its first op
            tf.config.threading.set_intra_op_parallelism_threads(threads)
            tf.config.threading.set_inter_op_parallelism_threads(threads)
        self.np, self.tf = np, tf
        self.models = {}

    def _clear_framework(self):
        import keras

        keras.backend.clear_session()

    def hello(self):
        import keras

        import mvit3_keras

        tf = self.tf
        return {
            "backend": "keras",
            "versions": {
                "tensorflow": tf.__version__,
                "keras": keras.__version__,
                "mvit3_keras": mvit3_keras.__version__,
            },
            "intra_op_threads": tf.config.threading.get_intra_op_parallelism_threads()
            or os.cpu_count(),
            **_rss(),
        }

    def _model(self, name, size):
        import mvit3_keras as m

        key = (name, int(size))
        if key not in self.models:
            self.models[key] = m.create_model(name, input_shape=(size, size, 3))
        return self.models[key]

    def describe(self, model, size):
        from mvit3_keras import count_macs, count_params

        net = self._model(model, size)
        macs = count_macs(net)
        return {
            "params": int(count_params(net)),
            "macs_official": macs["official"],
            "macs_real": macs["real"],
        }

    def build_infer(self, key, model, batch, size, variant, warmup=2, seed=0):
        np, tf = self.np, self.tf
        net = self._model(model, size)
        x = tf.constant(np.random.default_rng(seed).random((batch, size, size, 3), np.float32))
        if variant == "eager":

            def fn():
                return net(x, training=False).numpy()

        elif variant in ("graph", "xla"):
            call = tf.function(
                lambda t: net(t, training=False),
                jit_compile=variant == "xla",
                reduce_retracing=True,
            )

            def fn():
                return call(x).numpy()

        elif variant == "optimized":
            # mvit3_keras.optimize_for_inference: BatchNorm folded into the convs, rank-4
            # Dense as 1x1 convs, SiLU without the custom-gradient wrapper, so Grappler fuses
            # conv + bias + activation. Same function up to float32 rounding.
            opt_key = (model, int(size), "optimized")
            if opt_key not in self.models:
                import mvit3_keras as m

                self.models[opt_key] = m.optimize_for_inference(net)
            optimized = self.models[opt_key]
            call = tf.function(lambda t: optimized(t, training=False), reduce_retracing=True)

            def fn():
                return call(x).numpy()

        elif variant == "frozen":
            # mvit3_keras.inference_function: the optimized model traced once for this shape,
            # its variables frozen into constants (what a fixed-shape server runs).
            import mvit3_keras as m

            serve = m.inference_function(net, batch_size=batch, input_shape=(size, size, 3))

            def fn():
                return serve(x).numpy()

        else:
            raise ValueError(f"unknown keras inference variant {variant!r}")
        self.fns[key] = fn
        return {"warmup_s": self._warm(key, warmup)}

    def build_train(self, key, model, batch, size, warmup=2, seed=0, lr=1e-3):
        """One ``train_on_batch`` of AdamW + cross-entropy (what ``fit`` runs per step)."""
        import keras

        np = self.np
        rng = np.random.default_rng(seed)
        net = self._model(model, size)
        net.compile(
            optimizer=keras.optimizers.AdamW(learning_rate=lr, weight_decay=0.01),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        )
        x = rng.random((batch, size, size, 3), np.float32)
        y = rng.integers(0, 1000, size=(batch,)).astype(np.int64)

        def fn():
            return net.train_on_batch(x, y)

        self.fns[key] = fn
        return {"warmup_s": self._warm(key, warmup), "jit_compile": bool(net.jit_compile)}

    def build_tflite(self, key, path, threads, warmup=3, seed=0):
        """A LiteRT interpreter on ``path`` (``threads`` CPU threads, XNNPACK), loaded and fed
        as the library's own timer (:func:`quantization.benchmark.benchmark_tflite`) does."""
        from quantization.runtime import load_interpreter, quantize_input

        interpreter = load_interpreter(path, num_threads=int(threads))
        detail = interpreter.get_input_details()[0]
        shape = tuple(int(v) for v in detail["shape"])
        x = self.np.random.default_rng(seed).random(shape, self.np.float32)
        interpreter.set_tensor(detail["index"], quantize_input(x, detail))
        out_index = interpreter.get_output_details()[0]["index"]

        def fn():
            interpreter.invoke()
            return interpreter.get_tensor(out_index)

        self.fns[key] = fn
        return {"warmup_s": self._warm(key, warmup), "runtime": interpreter.mvit3_backend}

    def tflite_outputs(self, path, input_npy, output_npy, threads=2):
        """Run ``path`` on the images of ``input_npy`` (float outputs -> ``output_npy``)."""
        from quantization.runtime import run_tflite

        out = run_tflite(path, self.np.load(input_npy), num_threads=int(threads))
        self.np.save(output_npy, self.np.asarray(out, self.np.float32))
        return {"shape": list(self.np.shape(out))}

    def equivalence_export(
        self, model, timm_keys, state_npz, input_npy, output_npy, size=256, seed=0
    ):
        """Seeded random weights (norm statistics too) -> timm-keyed ``state_npz``;
        our logits on a seeded batch -> ``output_npy`` (input saved to ``input_npy``)."""
        import keras

        from benchmarks.timm_equivalence import randomize_weights, to_timm_state_dict

        np = self.np
        keras.utils.set_random_seed(seed)
        import mvit3_keras as m

        net = m.create_model(model, input_shape=(size, size, 3))
        randomize_weights(net, seed)
        state = to_timm_state_dict(net, timm_keys)
        np.savez(state_npz, **state)
        x = np.random.default_rng(seed + 1).random((2, size, size, 3), np.float32)
        np.save(input_npy, x)
        np.save(output_npy, np.asarray(net(x, training=False)))
        return {"tensors": len(state)}

    def matmul_peak(self, n=2048, iters=5):
        """Achievable MAC/s of this process: a large float32 matrix product, the best of
        ``tf.linalg.matmul`` and NumPy's BLAS (TensorFlow's CPU matmul reached half of
        NumPy's on one machine here, 45 vs 95 GMAC/s, and 2.3x it on another)."""
        np, tf = self.np, self.tf
        a = np.random.default_rng(0).random((n, n), np.float32)
        t = tf.constant(a)
        mm = tf.function(lambda x: tf.linalg.matmul(x, x), autograph=False)
        runners = {"tensorflow": lambda: mm(t).numpy(), "numpy": lambda: a @ a}
        seconds = {}
        for name, run in runners.items():
            run()
            seconds[name] = []
            for _ in range(int(iters)):
                start = time.perf_counter()
                run()
                seconds[name].append(time.perf_counter() - start)
        per_runner = {name: n**3 / min(times) for name, times in seconds.items()}
        return {
            "n": n,
            "seconds": seconds["tensorflow"],
            "by_runner": per_runner,
            "macs_per_s": max(per_runner.values()),
        }


class TimmBackend(_Base):
    """The peer: timm models in PyTorch eager, and ONNX Runtime."""

    def __init__(self):
        super().__init__()
        import numpy as np
        import torch

        threads = _threads() or os.cpu_count() or 1
        torch.set_num_threads(threads)
        torch.set_num_interop_threads(threads)
        self.np, self.torch = np, torch
        self.models = {}

    def hello(self):
        versions = {"torch": self.torch.__version__}
        for mod in ("timm", "onnx", "onnxruntime", "numpy"):
            try:
                versions[mod] = __import__(mod).__version__
            except ImportError:
                versions[mod] = None
        return {
            "backend": "timm",
            "versions": versions,
            "intra_op_threads": self.torch.get_num_threads(),
            **_rss(),
        }

    def _model(self, name, channels_last=False):
        import timm

        key = (name, bool(channels_last))
        if key not in self.models:
            self.torch.manual_seed(0)  # the same weights in every process (ONNX check)
            net = timm.create_model(name, pretrained=False)
            if channels_last:
                net = net.to(memory_format=self.torch.channels_last)
            self.models[key] = net
        return self.models[key]

    def describe(self, model, size=256):
        net = self._model(model)
        return {"params": int(sum(p.numel() for p in net.parameters() if p.requires_grad))}

    def build_infer(self, key, model, batch, size, variant, warmup=2, seed=0):
        torch = self.torch
        if variant not in ("nchw", "channels_last"):
            raise ValueError(f"unknown timm inference variant {variant!r}")
        cl = variant == "channels_last"
        net = self._model(model, cl).eval()
        x = torch.from_numpy(
            self.np.random.default_rng(seed).random((batch, 3, size, size), self.np.float32)
        )
        if cl:
            x = x.contiguous(memory_format=torch.channels_last)

        def fn():
            with torch.inference_mode():
                return net(x).numpy()

        self.fns[key] = fn
        return {"warmup_s": self._warm(key, warmup)}

    def build_train(self, key, model, batch, size, variant="nchw", warmup=2, seed=0, lr=1e-3):
        """One optimizer step of AdamW + cross-entropy (the standard PyTorch loop)."""
        torch = self.torch
        cl = variant == "channels_last"
        net = self._model(model, cl).train()
        opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=0.01)
        loss_fn = torch.nn.CrossEntropyLoss()
        rng = self.np.random.default_rng(seed)
        x = torch.from_numpy(rng.random((batch, 3, size, size), self.np.float32))
        if cl:
            x = x.contiguous(memory_format=torch.channels_last)
        y = torch.from_numpy(rng.integers(0, 1000, size=(batch,)).astype(self.np.int64))

        def fn():
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(net(x), y)
            loss.backward()
            opt.step()
            return float(loss)

        self.fns[key] = fn
        return {"warmup_s": self._warm(key, warmup)}

    def equivalence(self, model, state_npz, input_npy, output_npy):
        """Load a timm-keyed state dict, run NHWC ``input_npy``; save logits."""
        torch, np = self.torch, self.np
        net = self._model(model).eval()
        with np.load(state_npz) as data:
            state = {k: torch.from_numpy(data[k]) for k in data.files}
        own = net.state_dict()
        for k, v in own.items():  # counters are not weights
            if k.endswith("num_batches_tracked") and k not in state:
                state[k] = v
        missing, unexpected = net.load_state_dict(state, strict=True), None
        del missing, unexpected
        x = torch.from_numpy(np.load(input_npy)).permute(0, 3, 1, 2).contiguous()
        with torch.inference_mode():
            y = net(x).numpy()
        np.save(output_npy, y)
        return {"shape": list(y.shape)}

    def state_keys(self, model):
        net = self._model(model)
        return {
            "keys": [
                [k, list(v.shape)]
                for k, v in net.state_dict().items()
                if not k.endswith("num_batches_tracked")
            ]
        }

    def export_onnx(self, model, path, size, batch=1, opset=17):
        torch = self.torch
        net = self._model(model).eval()
        x = torch.zeros(batch, 3, size, size)
        tmp = path + ".tmp.onnx"
        kwargs = dict(input_names=["image"], output_names=["logits"], opset_version=opset)
        try:
            torch.onnx.export(net, (x,), tmp, dynamo=False, **kwargs)
            exporter = "torchscript"
        except TypeError:  # pragma: no cover - older torch without the dynamo flag
            torch.onnx.export(net, (x,), tmp, **kwargs)
            exporter = "torchscript"
        os.replace(tmp, path)
        return {"path": path, "exporter": exporter, "bytes": os.path.getsize(path)}

    def onnx_check(self, model, path, size, seed=0):
        """max |ONNX Runtime - PyTorch| logits of the exported file on a random batch of 1."""
        import onnxruntime as ort

        torch, np = self.torch, self.np
        x = np.random.default_rng(seed).random((1, 3, size, size), np.float32)
        with torch.inference_mode():
            ref = self._model(model).eval()(torch.from_numpy(x)).numpy()
        sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        out = sess.run(None, {sess.get_inputs()[0].name: x})[0]
        return {"max_abs_diff": float(np.abs(out - ref).max()), "logit_std": float(ref.std())}

    def build_ort(self, key, path, threads, warmup=3, seed=0):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = int(threads)
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        sess = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
        inp = sess.get_inputs()[0]
        shape = [int(s) for s in inp.shape]
        x = self.np.random.default_rng(seed).random(shape, self.np.float32)

        def fn():
            return sess.run(None, {inp.name: x})[0]

        self.fns[key] = fn
        return {"warmup_s": self._warm(key, warmup), "providers": sess.get_providers()}

    def run_ort(self, path, input_npy, output_npy, threads=2):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = int(threads)
        sess = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
        x = self.np.load(input_npy).transpose(0, 3, 1, 2).copy()
        y = sess.run(None, {sess.get_inputs()[0].name: x})[0]
        self.np.save(output_npy, y)
        return {"shape": list(y.shape)}

    def matmul_peak(self, n=2048, iters=5):
        torch = self.torch
        a = torch.rand(n, n)
        torch.matmul(a, a)
        times = []
        for _ in range(int(iters)):
            start = time.perf_counter()
            torch.matmul(a, a)
            times.append(time.perf_counter() - start)
        return {"n": n, "seconds": times, "macs_per_s": n**3 / min(times)}


BACKENDS = {"keras": KerasBackend, "timm": TimmBackend}


def handle(backend, request: dict) -> dict:
    cmd = request.pop("cmd")
    method = getattr(backend, cmd, None)
    if method is None or cmd.startswith("_"):
        raise ValueError(f"unknown worker command {cmd!r}")
    return method(**request)


def serve(name: str) -> None:
    """Answer JSON requests, one per line, until EOF or ``{"cmd": "quit"}``."""
    out = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # library prints go to stderr, never into the protocol
    sys.stdout = sys.stderr
    backend = BACKENDS[name]()
    out.write(json.dumps({"ok": True, "ready": name}) + "\n")
    for line in sys.stdin:
        if not line.strip():
            continue
        request = json.loads(line)
        if request.get("cmd") == "quit":
            out.write(json.dumps({"ok": True}) + "\n")
            break
        try:
            reply = {"ok": True, "result": handle(backend, request)}
        except Exception as err:  # noqa: BLE001 - reported to the coordinator
            reply = {
                "ok": False,
                "error": f"{type(err).__name__}: {err}",
                "traceback": traceback.format_exc(),
            }
        out.write(json.dumps(reply) + "\n")


class WorkerError(RuntimeError):
    pass


class SubprocessWorker:
    """A worker in a child process (``python`` may be another virtualenv's)."""

    def __init__(
        self,
        backend: str,
        python: str | None = None,
        *,
        label: str | None = None,
        threads: int | None = None,
        env_extra: dict | None = None,
    ):
        self.backend = backend
        self.label = label or backend
        env = dict(os.environ)
        env.update(env_extra or {})
        env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        if threads:
            env["MVIT3_BENCH_THREADS"] = str(int(threads))
        env["PYTHONUNBUFFERED"] = "1"
        self.log = tempfile.NamedTemporaryFile(
            "w+", prefix=f"mvit3-bench-{self.label}-", suffix=".log", delete=False
        )
        self.proc = subprocess.Popen(
            [python or sys.executable, THIS, backend],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.log,
            text=True,
            cwd=ROOT,
            env=env,
        )
        ready = self._read()
        if not ready.get("ok"):
            raise WorkerError(f"{self.label} worker failed to start:\n{self.log_tail()}")

    def _read(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            raise WorkerError(
                f"{self.label} worker exited (code {self.proc.poll()}):\n{self.log_tail()}"
            )
        return json.loads(line)

    def log_tail(self, n: int = 30) -> str:
        self.log.flush()
        with open(self.log.name, encoding="utf-8", errors="replace") as f:
            return "".join(f.readlines()[-n:])

    def call(self, cmd: str, **kwargs):
        self.proc.stdin.write(json.dumps({"cmd": cmd, **kwargs}) + "\n")
        self.proc.stdin.flush()
        reply = self._read()
        if not reply.get("ok"):
            raise WorkerError(
                f"{self.label} worker: {reply.get('error')}\n{reply.get('traceback', '')}"
            )
        return reply.get("result")

    def close(self):
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write(json.dumps({"cmd": "quit"}) + "\n")
                self.proc.stdin.flush()
                self.proc.wait(timeout=60)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        try:
            os.unlink(self.log.name)
        except OSError:  # pragma: no cover
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class LocalWorker:
    """The same protocol in this process (``--smoke`` runs, no peer)."""

    def __init__(self, backend: str, *, label: str | None = None):
        self.label = label or backend
        self.impl = BACKENDS[backend]()

    def call(self, cmd: str, **kwargs):
        return handle(self.impl, {"cmd": cmd, **kwargs})

    def close(self):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


if __name__ == "__main__":
    if len(sys.argv) != 2 or sys.argv[1] not in BACKENDS:
        sys.exit(f"usage: python {os.path.basename(THIS)} {'|'.join(BACKENDS)}")
    if ROOT not in sys.path:
        sys.path.insert(0, ROOT)
    serve(sys.argv[1])
