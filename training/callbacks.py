"""Keras callbacks of the loop, made crash-safe.

* :class:`AtomicBackupAndRestore`: ``keras.callbacks.BackupAndRestore`` whose backup
  survives a SIGKILL at any moment. Keras writes ``latest.weights.h5`` in place and
  then ``training_metadata.json`` (a kill in between pairs new weights with an old
  epoch; a kill during the write corrupts the only backup). Here every backup is a
  new file ``epoch-NNNN.weights.h5`` written to a temporary name and renamed, and
  only then ``state.json`` (also written atomically) is switched to point at it;
  the previous backups stay (``keep``) as a fallback. The weights file holds the
  model *and* the optimizer state (iterations -> the LR schedule position, Adam
  moments, the EMA weights).
* :class:`AtomicModelCheckpoint`: ``keras.callbacks.ModelCheckpoint`` (best by
  ``val_top1`` / ``val_miou``) writing through a temporary file, saving an
  inference model (no optimizer) built by ``export_fn``, and remembering the best
  value in a side-car JSON so a resumed run does not overwrite a better model.
* :class:`EpochStats`: adds ``epoch_time`` (s) and ``learning_rate`` to the logs
  (CSV, TensorBoard, summary).
"""

from __future__ import annotations

import glob
import json
import os
import time

import keras

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


class AtomicBackupAndRestore(keras.callbacks.BackupAndRestore):
    def __init__(self, backup_dir, keep: int = 2):
        super().__init__(backup_dir, save_freq="epoch", delete_checkpoint=False)
        self.keep = max(1, int(keep))
        self.restored_epoch = 0
        self.restored_from = None

    # -- restore -------------------------------------------------------------------------
    def on_train_begin(self, logs=None):
        self._load_model()

    def _load_model(self):
        state = read_backup_state(self.backup_dir)
        if state is None:
            return
        if self.model.optimizer is not None and not self.model.optimizer.built:
            self.model.optimizer.build(self.model.trainable_variables)
        candidates = [state] + list(state.get("previous", []))
        errors = []
        for entry in candidates:
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
            self.model._initial_epoch = int(entry["epoch"])
            self.restored_epoch = int(entry["epoch"])
            self.restored_from = path
            return
        raise CorruptCheckpointError(
            "no readable backup in "
            f"{self.backup_dir!r}:\n  " + "\n  ".join(errors) + "\nNothing was deleted. Fix: "
            f"move {self.backup_dir!r} away (e.g. `mv {self.backup_dir} "
            f"{self.backup_dir}.corrupt`) and run the same command again to restart from "
            "scratch; best.keras and the logs in the output folder are kept."
        )

    # -- save ----------------------------------------------------------------------------
    def _save_model(self):
        os.makedirs(self.backup_dir, exist_ok=True)
        epoch = int(self._current_epoch)
        name = f"epoch-{epoch:04d}.weights.h5"
        path = os.path.join(self.backup_dir, name)
        with atomic_path(path) as tmp:
            self.model.save_weights(tmp, overwrite=True)
        old = read_backup_state(self.backup_dir)
        previous = []
        if old is not None:
            previous = [{"epoch": old["epoch"], "weights": old["weights"]}] + list(
                old.get("previous", [])
            )
        previous = [p for p in previous if p["weights"] != name][: self.keep - 1]
        state = {"epoch": epoch, "weights": name, "previous": previous, "time": time.time()}
        atomic_write_text(os.path.join(self.backup_dir, STATE_FILE), json.dumps(state, indent=1))
        keep = {name} | {p["weights"] for p in previous}
        for stale in glob.glob(os.path.join(self.backup_dir, "epoch-*.weights.h5")):
            if os.path.basename(stale) not in keep:
                try:
                    os.remove(stale)
                except OSError:
                    pass

    def on_train_end(self, logs=None):
        return  # keep the backup: `mvit3 evaluate --weights raw` and re-runs read it


class AtomicModelCheckpoint(keras.callbacks.ModelCheckpoint):
    def __init__(self, filepath, export_fn, monitor, mode="max", write: bool = True):
        self.info_path = filepath + ".json"
        threshold = None
        if os.path.exists(self.info_path):
            try:
                with open(self.info_path, encoding="utf-8") as f:
                    threshold = float(json.load(f)["value"])
            except (OSError, ValueError, KeyError, TypeError):
                threshold = None
        super().__init__(
            filepath,
            monitor=monitor,
            mode=mode,
            save_best_only=True,
            save_weights_only=False,
            initial_value_threshold=threshold,
            verbose=0,
        )
        self.export_fn = export_fn
        self.write = write

    def _save_model(self, epoch, batch, logs):
        logs = logs or {}
        filepath = self._get_file_path(epoch, batch, logs)
        if not self._should_save_model(epoch, batch, logs, filepath):
            return
        if self.write:
            with atomic_path(filepath) as tmp:
                self.export_fn(tmp)
            info = {"epoch": epoch + 1, "monitor": self.monitor, "value": float(logs[self.monitor])}
            atomic_write_text(self.info_path, json.dumps(info, indent=1))
        else:
            self.export_fn(None)  # keep collective ops in step on non-chief workers


class EpochStats(keras.callbacks.Callback):
    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.time()

    def on_epoch_end(self, epoch, logs=None):
        if logs is None:
            return
        logs["epoch_time"] = round(time.time() - getattr(self, "_start", time.time()), 3)
        opt = self.model.optimizer
        if opt is not None and "learning_rate" not in logs:
            try:
                logs["learning_rate"] = float(keras.ops.convert_to_numpy(opt.learning_rate))
            except Exception:
                pass


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
