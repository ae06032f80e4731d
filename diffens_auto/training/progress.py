"""What a user watches during training: a timestamped text log and `progress.png`, redrawn every epoch.

The curves (train and validation loss, learning rate, epoch time) live in `Progress.curves`, a dict of plain
lists that the checkpoint stores, so a resumed run continues the same plot.
"""
from __future__ import annotations

import math
import time
from datetime import datetime
from pathlib import Path

from diffens_auto.atomic import atomic_path

CURVES = ("train_loss", "val_loss", "lr", "epoch_time")


def log_file_name(now: datetime | None = None) -> str:
    """training_log_YYYY_MM_DD_HH_MM_SS.txt for `now` (default: the current local time)."""
    return f"training_log_{(now or datetime.now()).strftime('%Y_%m_%d_%H_%M_%S')}.txt"


class Progress:
    """Text log and per-epoch curves of one training run; only the writer (rank 0) touches files."""

    def __init__(self, folder: str | Path, writer: bool = True, echo: bool = True):
        self.folder = Path(folder).resolve()
        self.writer, self.echo = writer, echo
        self.curves = {name: [] for name in CURVES}
        self.log_path = None
        if writer:
            self.folder.mkdir(parents=True, exist_ok=True)
            self.log_path = self._new_log_path()

    def _new_log_path(self) -> Path:
        path = self.folder / log_file_name()
        while path.exists():        # two runs started within one second (tests): keep both logs
            time.sleep(0.01)
            path = self.folder / log_file_name()
        path.touch()
        return path

    def log(self, message: str) -> None:
        """Append a timestamped line to the log (and print it)."""
        if not self.writer:
            return
        line = f"{datetime.now().strftime('%Y-%m-%d %H:%M:%S.%f')[:-3]}: {message}"
        with open(self.log_path, "a", encoding="utf-8") as f:
            f.write(line + "\n")
        if self.echo:
            print(line, flush=True)

    def record(self, train_loss: float, val_loss: float, lr: float, epoch_time: float) -> None:
        """Add one epoch's values to the curves."""
        for name, value in zip(CURVES, (train_loss, val_loss, lr, epoch_time)):
            self.curves[name].append(float(value))

    def state_dict(self) -> dict:
        return {name: list(values) for name, values in self.curves.items()}

    def load_state_dict(self, state: dict) -> None:
        self.curves = {name: [float(v) for v in state.get(name, [])] for name in CURVES}

    def plot(self, path: str | Path | None = None) -> Path | None:
        """Redraw progress.png (atomically): losses (log scale), learning rate, seconds per epoch."""
        if not self.writer or not self.curves["train_loss"]:
            return None
        from matplotlib.backends.backend_agg import FigureCanvasAgg  # no pyplot: no global backend state
        from matplotlib.figure import Figure

        path = Path(path) if path is not None else self.folder / "progress.png"
        epochs = list(range(1, len(self.curves["train_loss"]) + 1))
        figure = Figure(figsize=(10, 10), tight_layout=True)
        FigureCanvasAgg(figure)
        loss, lr, seconds = figure.subplots(3, 1, sharex=True)
        loss.plot(epochs, self.curves["train_loss"], "b-o", markersize=3, label="train loss")
        loss.plot(epochs, self.curves["val_loss"], "r-o", markersize=3, label="validation loss (EMA weights)")
        if all(v > 0 and math.isfinite(v) for v in self.curves["train_loss"] + self.curves["val_loss"]):
            loss.set_yscale("log")
        loss.set_ylabel("MSE(eps_hat, eps)")
        loss.legend(loc="upper right")
        lr.plot(epochs, self.curves["lr"], "g-o", markersize=3)
        lr.set_ylabel("learning rate")
        seconds.plot(epochs, self.curves["epoch_time"], "k-o", markersize=3)
        seconds.set_ylabel("epoch time [s]")
        seconds.set_xlabel("epoch")
        with atomic_path(path) as tmp:
            figure.savefig(tmp, format="png", dpi=80)
        return path
