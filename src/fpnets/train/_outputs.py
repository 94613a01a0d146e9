"""What a run writes besides checkpoints: metrics CSV, TensorBoard events, PNG plots."""

from __future__ import annotations

import csv
import io
import math
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..tasks import Metric, Task
from ._checkpoint import atomic_write_bytes, atomic_write_text


def columns(task: type[Task]) -> tuple[str, ...]:
    """Columns of ``metrics.csv`` for ``task``, one row per epoch: epoch, lr, then loss, the task's
    metrics and mean forward iterations for train and val (iterations empty for models without a
    solve; fractions stay fractions), throughput, epoch time, and the task's extra columns."""
    names = [m.name for m in task.all_metrics()]
    cols = ["epoch", "lr"]
    for split in ("train", "val"):
        cols += [f"{split}_{n}" for n in names] + [f"{split}_iters"]
    return (*cols, "samples_per_s", "epoch_s", *task.extra_columns)


def write_metrics_csv(path: Path, history: Sequence[Mapping[str, Any]], cols: Sequence[str]) -> None:
    """Rewrite the whole CSV from the history (atomic), so a resumed run never repeats an epoch."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(cols), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in history:
        writer.writerow({k: "" if row.get(k) is None else row.get(k) for k in cols})
    atomic_write_text(path, buf.getvalue())


def read_metrics_csv(path: Path) -> list[dict[str, float | None]]:
    """The rows of a ``metrics.csv`` as numbers (None for empty cells)."""
    with open(path, newline="") as fh:
        return [{k: (float(v) if v != "" else None) for k, v in row.items()} for row in csv.DictReader(fh)]


class TensorBoard:
    """A SummaryWriter when ``torch.utils.tensorboard`` and tensorboard are importable, else nothing."""

    def __init__(self, log_dir: Path, cols: Sequence[str] = (), enabled: bool = True) -> None:
        self._writer = None
        self.cols = tuple(cols)
        if not enabled:
            return
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            return
        self._writer = SummaryWriter(log_dir=str(log_dir))

    @property
    def active(self) -> bool:
        return self._writer is not None

    def log(self, record: Mapping[str, Any]) -> None:
        if self._writer is None:
            return
        step = int(record["epoch"])
        for key in self.cols[1:]:
            value = record.get(key)
            if value is not None and math.isfinite(value):
                group = key.split("_", 1)
                tag = f"{group[1]}/{group[0]}" if group[0] in ("train", "val") else f"run/{key}"
                self._writer.add_scalar(tag, value, step)
        self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def _series(history: Sequence[Mapping[str, Any]], key: str) -> tuple[list[float], list[float]]:
    xs, ys = [], []
    for row in history:
        value = row.get(key)
        if value is not None and math.isfinite(value):
            xs.append(row["epoch"])
            ys.append(value)
    return xs, ys


def _save_figure(fig: Any, path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    atomic_write_bytes(path, buf.getvalue())


def write_plots(
    run_dir: Path,
    history: Sequence[Mapping[str, Any]],
    metrics: Sequence[Metric],
    *,
    loss_label: str = "loss",
    title: str = "",
) -> list[Path]:
    """``curves.png`` (the loss and each metric, train and validation) and ``iterations.png`` (mean
    forward iterations per epoch; skipped for models without a fixed-point solve). Uses the Agg
    canvas directly, so no global matplotlib backend is touched. Returns the files written."""
    try:
        from matplotlib.figure import Figure
        from matplotlib.ticker import MaxNLocator
    except ImportError:
        warnings.warn("matplotlib is not installed; no plots written", RuntimeWarning, stacklevel=2)
        return []
    written = []
    panels = [m for m in metrics if m.name != "loss"]
    fig = Figure(figsize=(5 * (1 + len(panels)), 4), layout="constrained")
    axes = fig.subplots(1, 1 + len(panels), squeeze=False)[0]
    for ax, metric in zip(axes, (None, *panels), strict=True):
        name = "loss" if metric is None else metric.name
        scale = 100.0 if metric is not None and metric.percent else 1.0
        for split, style in (("train", "-"), ("val", "--")):
            xs, ys = _series(history, f"{split}_{name}")
            ax.plot(xs, [scale * y for y in ys], style, marker=".", label=split)
        label = (
            loss_label
            if metric is None
            else (metric.label or metric.name) + (" (%)" if metric.percent else "")
        )
        ax.set(xlabel="epoch", ylabel=label, title=name)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(title)
    _save_figure(fig, run_dir / "curves.png")
    written.append(run_dir / "curves.png")

    train_it, val_it = _series(history, "train_iters"), _series(history, "val_iters")
    if train_it[0] or val_it[0]:
        fig = Figure(figsize=(5.5, 4), layout="constrained")
        ax = fig.subplots()
        ax.plot(*train_it, "-", marker=".", label="train")
        ax.plot(*val_it, "--", marker=".", label="val")
        ax.set(xlabel="epoch", ylabel="mean forward iterations", title="fixed-point depth")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend()
        if title:
            fig.suptitle(title)
        _save_figure(fig, run_dir / "iterations.png")
        written.append(run_dir / "iterations.png")
    return written


__all__ = ["TensorBoard", "columns", "read_metrics_csv", "write_metrics_csv", "write_plots"]
