"""What training reports: the CSV log, TensorBoard scalars, progress-bar means and the health watch."""

from __future__ import annotations

import csv
import os
import time

import jax

from maskrcnn.model import LOSS_NAMES


class NonFiniteLossError(RuntimeError):
    pass


class CsvLog:
    """Appends one row per logged step to ``<workdir>/log.csv`` (and keeps rows of a resumed run).

    The columns are where the row is, ``loss``, every loss part the model's ``loss_parts`` returns (the
    five Mask R-CNN losses and any a subclass adds), ``lr``, ``grad_norm``, ``skipped`` and ``seconds``;
    they are fixed by the first row (or by the header of the log a resumed run appends to).
    """

    HEAD = ("stage", "epoch", "step", "split", "loss")
    TAIL = ("lr", "grad_norm", "skipped", "seconds")

    def __init__(self, path: str):
        self.path, self.file, self.writer = path, None, None

    def write(self, row: dict):
        if self.writer is None:
            if os.path.exists(self.path) and os.path.getsize(self.path):
                with open(self.path, newline="") as f:
                    fields = next(csv.reader(f))
            else:
                parts = [k for k in row if k not in self.HEAD + self.TAIL]
                fields = [*self.HEAD, *LOSS_NAMES, *(p for p in parts if p not in LOSS_NAMES), *self.TAIL]
            self._open(fields)
        new = [k for k in row if k not in self.writer.fieldnames]
        if new:  # a column first seen now (a hook's metric): the file is written again with it
            self._add_columns(new)
        self.writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
        self.file.flush()

    def _open(self, fields):
        new = not os.path.exists(self.path) or not os.path.getsize(self.path)
        self.file = open(self.path, "a", newline="")  # noqa: SIM115 (closed in close())
        self.writer = csv.DictWriter(self.file, fields, restval="")
        if new:
            self.writer.writeheader()

    def _add_columns(self, names):
        self.file.close()
        with open(self.path, newline="") as f:
            rows = list(csv.DictReader(f))
        old = list(self.writer.fieldnames)
        fields = [*old[: -len(self.TAIL)], *names, *old[-len(self.TAIL) :]]
        partial = self.path + ".tmp"
        with open(partial, "w", newline="") as f:
            writer = csv.DictWriter(f, fields, restval="")
            writer.writeheader()
            writer.writerows(rows)
        os.replace(partial, self.path)
        self._open(fields)

    def close(self):
        if self.file is not None:
            self.file.close()


class Monitor:
    """Reads each step's metrics: running means on the progress bar, CSV and TensorBoard rows every
    ``log_every`` steps, and the count of skipped (non-finite) steps, stopping after too many in a row.

    It also judges whether training is healthy since the last checkpoint (:meth:`healthy`): no step was
    non-finite and no loss rose above ``SPIKE`` times the stage's lowest loss so far. A learning rate far
    too high blows the weights up while the loss is still finite; such checkpoints are marked, kept apart
    from the last healthy one, and skipped by a resume.
    """

    SPIKE = 10.0  # a loss 10x the stage's best is divergence, not noise (losses start within ~3x of it)

    def __init__(self, log: CsvLog, board, *, log_every: int, max_nonfinite: int):
        self.log, self.board, self.log_every, self.max_nonfinite = log, board, log_every, max_nonfinite
        self.skipped = self.in_row = 0
        self.stage = None

    def start_epoch(self, stage: int, epoch: int, steps_per_epoch: int, bar):
        if stage != self.stage:
            self.best_loss, self.window_ok, self.window_max = float("inf"), True, 0.0
        self.stage, self.epoch, self.steps_per_epoch, self.bar = stage, epoch, steps_per_epoch, bar
        self.running, self.finite_steps, self.t0 = {}, 0, time.time()

    def healthy(self) -> bool:
        """No non-finite step and no loss spike since :meth:`checkpointed` was last called."""
        return self.window_ok and self.window_max <= self.SPIKE * self.best_loss

    def checkpointed(self):
        self.window_ok, self.window_max = True, 0.0

    def record(self, step: int, metrics: dict):
        metrics = jax.device_get(metrics)
        if metrics["finite"]:
            loss = float(metrics["loss"])
            self.best_loss, self.window_max = min(self.best_loss, loss), max(self.window_max, loss)
        else:
            self.window_ok = False
        if metrics["finite"]:
            self.in_row = 0
            self.finite_steps += 1
            for k in (k for k in metrics if k not in ("lr", "grad_norm", "finite")):  # epoch means so far
                self.running[k] = self.running.get(k, 0.0) + (
                    float(metrics[k]) - self.running.get(k, 0.0)
                ) / (self.finite_steps)
        else:
            self.skipped += 1
            self.in_row += 1
            if self.in_row >= self.max_nonfinite:
                raise NonFiniteLossError(
                    f"{self.in_row} steps in a row had a non-finite loss or gradient "
                    f"(stage {self.stage}, step {step}); they left the weights unchanged. "
                    "Lower the learning rate or check the input data."
                )
        self.bar.update(1)
        self.bar.set_postfix({k: f"{v:.3f}" for k, v in self.running.items()}, refresh=False)
        if step % self.log_every and step % self.steps_per_epoch:
            return
        row = {k: float(v) for k, v in metrics.items() if k != "finite"}  # loss, every part, lr, grad_norm
        seconds = time.time() - self.t0
        self.log.write(
            {
                **row,
                "stage": self.stage,
                "epoch": self.epoch,
                "step": step,
                "split": "train",
                "skipped": self.skipped,
                "seconds": seconds,
            }
        )
        if self.board is not None:
            import tensorflow as tf

            with self.board.as_default(step=self.stage * 10**7 + step):
                for k, v in row.items():
                    tf.summary.scalar(f"train/{k}", v)

    def log_epoch(self, stage: int, epoch: int, step: int, logs: dict, split: str = "validation"):
        """One row of an epoch's end: the validation losses and what hooks added (CSV and TensorBoard)."""
        self.log.write({**logs, "stage": stage, "epoch": epoch, "step": step, "split": split})
        if self.board is not None:
            import tensorflow as tf

            with self.board.as_default(step=stage * 10**7 + step):
                for k, v in logs.items():
                    tf.summary.scalar(f"{split}/{k}", float(v))


def tensorboard_writer(workdir: str):
    """A TensorBoard writer through tf.summary (TensorFlow is installed for the data side), or None."""
    try:
        import tensorflow as tf
    except ImportError:  # pragma: no cover
        return None
    return tf.summary.create_file_writer(os.path.join(workdir, "tensorboard"))
