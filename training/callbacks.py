"""Keras callbacks of the loop, made crash-safe, and the loop's own output.

Only public Keras API here (``keras.callbacks.Callback``); the EMA weights are reached
through :mod:`mvit3_keras.compat`.

* :class:`AtomicBackupAndRestore`: what ``keras.callbacks.BackupAndRestore`` does,
  surviving a SIGKILL at any moment. Keras writes ``latest.weights.h5`` in place and
  then ``training_metadata.json`` (a kill in between pairs new weights with an old
  epoch; a kill during the write corrupts the only backup). Here every backup is a
  new file ``epoch-NNNN.weights.h5`` written to a temporary name and renamed, and
  only then ``state.json`` (also written atomically) is switched to point at it;
  the previous backups stay (``keep``) as a fallback. The weights file holds the
  model *and* the optimizer state (iterations -> the LR schedule position and the
  EMA warm-up, Adam moments, the EMA weights). :meth:`~AtomicBackupAndRestore.restore`
  is called by the loop before ``fit`` (which then starts at ``initial_epoch``).
* :class:`EMAEvaluation`: Keras' validation runs on the raw weights; this adds the
  EMA weights' validation (ml-cvnets evaluates both the model and its EMA copy every
  epoch): ``val_*`` are the EMA weights' metrics, ``val_*_raw`` the raw weights'.
* :class:`BestCheckpoint`: ``best.keras`` = the best validation metric over the raw
  *and* the EMA weights of every epoch (ml-cvnets keeps ``checkpoint_best.pt`` and
  ``checkpoint_ema_best.pt``; here the better of the two), written through a
  temporary file as an inference model (no optimizer) built by ``export_fn``, with a
  side-car JSON (epoch, value, which weights) so a resumed run does not overwrite a
  better model.
* :class:`EpochStats`: adds ``epoch_time`` (s), ``learning_rate`` and ``ema_decay``
  to the logs (CSV, TensorBoard, summary).
* :class:`EpochLine`: the default output, one line per epoch (an in-place progress bar
  during the epoch on a terminal).
* :class:`ProgressReport`: evaluation batches reported to the ``"mvit3"`` logger
  (:mod:`mvit3_keras.progress`; the ``mvit3`` command draws the bar).
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import sys
import time

import keras

from mvit3_keras import compat
from mvit3_keras.io_utils import atomic_path, atomic_write_text

STATE_FILE = "state.json"


class CorruptCheckpointError(RuntimeError):
    """A checkpoint in the output folder cannot be read."""


def read_backup_state(backup_dir: str) -> dict | None:
    path = os.path.join(backup_dir, STATE_FILE)
    if not os.path.exists(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            state = json.load(f)
        int(state["epoch"])
        return state
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise CorruptCheckpointError(
            f"the backup index {path!r} is unreadable ({err}). Nothing was deleted. Fix: move "
            f"the folder {backup_dir!r} away to restart this run from scratch (the best model "
            "and logs in the output folder are kept), or use a new --output."
        ) from None


class AtomicBackupAndRestore(keras.callbacks.Callback):
    def __init__(self, backup_dir, keep: int = 2):
        super().__init__()
        self.backup_dir = backup_dir
        self.keep = max(1, int(keep))
        self.restored_epoch = 0
        self.restored_from = None

    # -- restore -------------------------------------------------------------------------
    def restore(self) -> int:
        """Load the newest readable backup into the model (+ optimizer); its epoch (0: none)."""
        state = read_backup_state(self.backup_dir)
        if state is None:
            return 0
        if self.model.optimizer is not None and not self.model.optimizer.built:
            self.model.optimizer.build(self.model.trainable_variables)
        errors = []
        for entry in [state] + list(state.get("previous", [])):
            path = os.path.join(self.backup_dir, entry["weights"])
            try:
                self.model.load_weights(path)
            except Exception as err:  # h5 corruption shows up as OSError / ValueError / KeyError
                errors.append(f"{path}: {type(err).__name__}: {str(err)[:200]}")
                continue
            if errors:
                print(
                    f"warning: newest backup unreadable, resumed from {path}\n  "
                    + "\n  ".join(errors)
                )
            self.restored_epoch = int(entry["epoch"])
            self.restored_from = path
            return self.restored_epoch
        raise CorruptCheckpointError(
            "no readable backup in "
            f"{self.backup_dir!r}:\n  " + "\n  ".join(errors) + "\nNothing was deleted. Fix: "
            f"move {self.backup_dir!r} away (e.g. `mv {self.backup_dir} "
            f"{self.backup_dir}.corrupt`) and run the same command again to restart from "
            "scratch; best.keras and the logs in the output folder are kept."
        )

    # -- save ----------------------------------------------------------------------------
    def on_epoch_end(self, epoch, logs=None):
        self.save(int(epoch) + 1)

    def save(self, epoch: int) -> None:
        """Write the backup of the state after ``epoch`` epochs, then point ``state.json`` at it."""
        os.makedirs(self.backup_dir, exist_ok=True)
        name = f"epoch-{int(epoch):04d}.weights.h5"
        with atomic_path(os.path.join(self.backup_dir, name)) as tmp:
            self.model.save_weights(tmp, overwrite=True)
        old = read_backup_state(self.backup_dir)
        previous = []
        if old is not None:
            previous = [{"epoch": old["epoch"], "weights": old["weights"]}] + list(
                old.get("previous", [])
            )
        previous = [p for p in previous if p["weights"] != name][: self.keep - 1]
        state = {"epoch": int(epoch), "weights": name, "previous": previous, "time": time.time()}
        atomic_write_text(os.path.join(self.backup_dir, STATE_FILE), json.dumps(state, indent=1))
        keep = {name} | {p["weights"] for p in previous}
        for stale in glob.glob(os.path.join(self.backup_dir, "epoch-*.weights.h5")):
            if os.path.basename(stale) not in keep:
                try:
                    os.remove(stale)
                except OSError:
                    pass


# ---------------------------------------------------------------------------------------
# raw and EMA weights
# ---------------------------------------------------------------------------------------
def uses_ema(model) -> bool:
    return bool(getattr(model.optimizer, "use_ema", False))


def weights_values(model, which: str = "raw") -> list:
    """``model.get_weights()`` with the trainable variables replaced by their EMA averages
    when ``which == "ema"`` (the model itself is not touched)."""
    values = model.get_weights()
    if which == "raw":
        return values
    averages = {id(var): avg for var, avg in compat.ema_pairs(model.optimizer)}
    return [
        keras.ops.convert_to_numpy(averages[id(w)]) if id(w) in averages else value
        for w, value in zip(model.weights, values)
    ]


@contextlib.contextmanager
def ema_weights(model):
    """Swap the EMA weights into ``model`` for the ``with`` block; the raw weights are copied
    back exactly afterwards (``keras.callbacks.SwapEMAWeights`` swaps by add/subtract,
    which rounds the raw weights a little at every swap)."""
    pairs = compat.ema_pairs(model.optimizer)
    raw = [keras.ops.convert_to_numpy(var) for var, _ in pairs]
    for var, average in pairs:
        var.assign(average)
    try:
        yield model
    finally:
        for (var, _), value in zip(pairs, raw):
            var.assign(value)


class EMAEvaluation(keras.callbacks.Callback):
    """``val_*`` -> ``val_*_raw`` (Keras' validation, raw weights), then ``val_*`` = the EMA
    weights' validation (timm's train.py and ml-cvnets also validate both every epoch)."""

    def __init__(self, val_data, steps=None):
        super().__init__()
        self.val_data = val_data
        self.steps = steps

    def on_epoch_end(self, epoch, logs=None):
        if logs is None or not uses_ema(self.model):
            return
        for key in [k for k in logs if k.startswith("val_")]:
            logs[key + "_raw"] = logs.pop(key)
        with ema_weights(self.model):
            result = self.model.evaluate(
                self.val_data, steps=self.steps, verbose=0, return_dict=True
            )
        logs.update({f"val_{k}": float(v) for k, v in result.items()})


class BestCheckpoint(keras.callbacks.Callback):
    """Keep the best of ``candidates`` (``{"ema": "val_top1", "raw": "val_top1_raw"}``)."""

    def __init__(self, filepath, export_fn, candidates: dict, write: bool = True):
        super().__init__()
        self.filepath = filepath
        self.info_path = filepath + ".json"
        self.export_fn = export_fn  # export_fn(path or None, which) -> None
        self.candidates = dict(candidates)
        self.write = write
        self.best = read_json(self.info_path).get("value", float("-inf"))
        self.saved = None  # which weights were saved at the last epoch (None: not saved)

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        scores = {w: float(logs[k]) for w, k in self.candidates.items() if k in logs}
        self.saved = None
        if not scores:
            return
        which = max(scores, key=lambda w: (scores[w], w == "ema"))  # a tie goes to EMA
        if not scores[which] > self.best:
            return
        self.best, self.saved = scores[which], which
        if not self.write:
            self.export_fn(None, which)  # keep collective ops in step on non-chief workers
            return
        with atomic_path(self.filepath) as tmp:
            self.export_fn(tmp, which)
        info = {
            "epoch": epoch + 1,
            "monitor": self.candidates[which],
            "value": scores[which],
            "weights": which,
            "candidates": {self.candidates[w]: v for w, v in scores.items()},
        }
        atomic_write_text(self.info_path, json.dumps(info, indent=1))


def read_json(path: str) -> dict:
    """The JSON object in ``path`` ({} when missing or unreadable)."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


# ---------------------------------------------------------------------------------------
# logs and output
# ---------------------------------------------------------------------------------------
class EpochStats(keras.callbacks.Callback):
    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.time()

    def on_epoch_end(self, epoch, logs=None):
        if logs is None:
            return
        logs["epoch_time"] = round(time.time() - getattr(self, "_start", time.time()), 3)
        opt = self.model.optimizer
        if opt is None:
            return
        if "learning_rate" not in logs:
            try:
                logs["learning_rate"] = float(keras.ops.convert_to_numpy(opt.learning_rate))
            except Exception:
                pass
        if uses_ema(self.model) and hasattr(opt, "ema_decay_at"):
            # the decay of the epoch's last update (step iterations - 1)
            step = int(keras.ops.convert_to_numpy(opt.iterations)) - 1
            logs["ema_decay"] = opt.ema_decay_at(step)


class EpochLine(keras.callbacks.Callback):
    """``epoch 3/30  loss 0.97  top1 0.822 | val top1 0.940 (raw 0.913)  lr 2.3e-03  35.4 s``;
    on a terminal an in-place bar shows the steps of the running epoch."""

    def __init__(self, epochs: int, steps: int, metric: str = "top1", stream=None):
        super().__init__()
        self.epochs, self.steps, self.metric = int(epochs), int(steps), metric
        self.stream = stream or sys.stdout
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.best = None  # a BestCheckpoint whose .saved is shown

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch, self._start = epoch, time.time()

    def on_train_batch_end(self, batch, logs=None):
        if not self.tty:
            return
        done = min(int(batch) + 1, self.steps)
        bar = "=" * (20 * done // max(self.steps, 1))
        loss = (logs or {}).get("loss")
        loss = f"  loss {float(loss):.4f}" if loss is not None else ""
        self.stream.write(
            f"\repoch {self._epoch + 1}/{self.epochs} [{bar:<20}] {done}/{self.steps}"
            f"  {time.time() - self._start:.0f} s{loss}\033[K"
        )
        self.stream.flush()

    def on_epoch_end(self, epoch, logs=None):
        self.stream.write(("\r\033[K" if self.tty else "") + self.format(epoch, logs or {}) + "\n")
        self.stream.flush()

    def format(self, epoch: int, logs: dict) -> str:
        m = self.metric
        parts = [f"epoch {epoch + 1}/{self.epochs}"]
        for key, label in (("loss", "loss"), (m, m)):
            if key in logs:
                parts.append(f"{label} {logs[key]:.4f}")
        val = f"val {m} {logs[f'val_{m}']:.4f}" if f"val_{m}" in logs else ""
        if f"val_{m}_raw" in logs:
            val = f"val {m} ema {logs[f'val_{m}']:.4f} raw {logs[f'val_{m}_raw']:.4f}"
        if val:
            parts.append(val)
        if "learning_rate" in logs:
            parts.append(f"lr {logs['learning_rate']:.2e}")
        parts.append(f"{logs.get('epoch_time', time.time() - self._start):.1f} s")
        saved = getattr(self.best, "saved", None)
        if saved:
            parts.append(f"-> best.keras ({saved})")
        return "  ".join(parts)


def remove_stale_temporaries(*folders) -> list:
    """Delete the temporary files of writes a kill interrupted (``.<name>.<random>.tmp<ext>``,
    made by :func:`mvit3_keras.io_utils.atomic_path`); the real files are untouched."""
    removed = []
    for folder in folders:
        for path in glob.glob(os.path.join(folder, ".*.tmp*")):
            try:
                os.remove(path)
                removed.append(path)
            except OSError:
                pass
    return removed


def repair_csv(path: str, upto_epoch: int) -> None:
    """Keep the header and the rows of epochs < ``upto_epoch`` (0-based ``epoch`` column);
    drop a half-written last line and rows of epochs that will be re-run."""
    if not os.path.exists(path):
        return
    with open(path, encoding="utf-8", errors="replace") as f:
        text = f.read()
    lines = text.split("\n")
    if not lines or not lines[0].startswith("epoch"):
        atomic_write_text(path, "")
        return
    header = lines[0]
    ncols = len(header.split(","))
    kept, seen = [header], set()
    complete = lines[1:-1] if not text.endswith("\n") else lines[1:]
    for line in complete:
        cells = line.split(",")
        if len(cells) != ncols:
            continue
        try:
            epoch = int(float(cells[0]))
        except ValueError:
            continue
        if epoch < upto_epoch and epoch not in seen:
            seen.add(epoch)
            kept.append(line)
    new = "\n".join(kept) + "\n"
    if new != text:
        atomic_write_text(path, new)


def read_csv(path: str) -> list:
    """Rows of a CSVLogger file as dicts (last row wins per epoch)."""
    import csv

    if not os.path.exists(path):
        return []
    rows = {}
    with open(path, encoding="utf-8", errors="replace") as f:
        for row in csv.DictReader(f):
            try:
                epoch = int(float(row["epoch"]))
                rows[epoch] = {k: float(v) for k, v in row.items() if v not in (None, "")}
            except (ValueError, KeyError, TypeError):
                continue
    return [rows[k] for k in sorted(rows)]


class ProgressReport(keras.callbacks.Callback):
    """``evaluate`` batches -> :mod:`mvit3_keras.progress` (the ``"mvit3"`` logger)."""

    def __init__(self, total: int, what: str):
        super().__init__()
        self.total, self.what = int(total), what

    def on_test_begin(self, logs=None):
        self._start = time.time()

    def on_test_batch_end(self, batch, logs=None):
        from mvit3_keras import progress

        progress.logger.info(
            "%s",
            self.what,
            extra={"progress": (int(batch) + 1, self.total, time.time() - self._start)},
        )
