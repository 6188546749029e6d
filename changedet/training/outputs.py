"""What a training run reports and writes: its result, progress, ``metrics.csv``, the curves and the staging folder.

:class:`TrainResult` is what :func:`changedet.training.train` returns and :func:`tqdm_progress` its progress bar;
the private helpers write ``metrics.csv`` and ``curves.png`` atomically, hold the hidden staging folder
(``_staging``) and make configurations JSON-safe (``_json_safe``).
"""

from __future__ import annotations

import contextlib
import csv
import math
import os
import shutil
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from changedet.data.augment import Augment
from changedet.ddp import run_on_main
from changedet.errors import OutputError
from changedet.io.folders import output_folder_lock

ProgressCallback = Callable[[dict[str, Any]], None]



@dataclass
class TrainResult:
    """What :func:`train` produced: checkpoint path, calibrated threshold, metrics and per-epoch history."""

    checkpoint: Path
    out: Path
    threshold: float
    metrics: dict[str, Any]
    history: list[dict[str, Any]]
    best_epoch: int
    epochs_run: int
    seconds: float
    files: dict[str, str] = field(default_factory=dict)
    distributed: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        out = {
            "checkpoint": str(self.checkpoint),
            "out": str(self.out),
            "threshold": self.threshold,
            "metrics": self.metrics,
            "best_epoch": self.best_epoch,
            "epochs_run": self.epochs_run,
            "seconds": round(self.seconds, 2),
            "files": self.files,
        }
        if self.distributed is not None:
            out["distributed"] = self.distributed
        return out



def tqdm_progress(total_epochs: int, *, disable: bool = False) -> ProgressCallback:
    """A progress callback drawing a tqdm bar over the steps of all epochs on stderr."""
    from tqdm.auto import tqdm

    state: dict[str, Any] = {"bar": None}

    def callback(event: dict[str, Any]) -> None:
        kind = event.get("event")
        if kind == "start":
            state["bar"] = tqdm(total=event["steps_per_epoch"] * total_epochs, unit="step", disable=disable,
                                dynamic_ncols=True, desc="train")
        bar = state["bar"]
        if bar is None:
            return
        if kind == "step":
            bar.update(1)
        elif kind == "epoch":
            shown = {k: event[k] for k in ("epoch", "train_loss", "val_f1", "val_f1_best") if event.get(k) is not None}
            bar.set_postfix({k: (f"{v:.3f}" if isinstance(v, float) else v) for k, v in shown.items()})
        elif kind == "end":
            bar.close()

    return callback



def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    if not rows:
        return
    fields = list(rows[0])
    for row in rows[1:]:
        fields += [k for k in row if k not in fields]
    tmp = path.with_name(f".{path.name}.partial")
    with tmp.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: ("" if v is None else v) for k, v in row.items()})
    os.replace(tmp, path)



@contextlib.contextmanager
def _staging(out: Path, dctx: Any) -> Iterator[Path]:
    """The hidden folder ``out/.changedet-staging-<pid>`` where a run writes ``metrics.csv`` each epoch and its
    outputs at the end, before they are moved into ``out``; removed on exit whatever happens, with ``out`` itself
    when this run created it and left it empty (an interrupted or failed run leaves nothing behind). Only the main
    process touches the disk (the staging folders of killed runs are removed by
    :func:`changedet.io.folders.remove_stale_staging`); the main process holds the output folder's lock
    (:func:`changedet.io.folders.output_folder_lock`) meanwhile, so that a second run into it fails at once."""
    main = dctx is None or dctx.is_main
    staging = out / f".changedet-staging-{os.getpid()}"
    created = main and not out.exists()
    with contextlib.ExitStack() as locked:

        def lock() -> None:
            try:
                out.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise OutputError(f"{out}: cannot create the output folder ({exc.strerror or exc}); choose a "
                                  "writable one") from exc
            locked.enter_context(output_folder_lock(out))  # two trainings into one folder replaced each other's

        run_on_main(lock, dctx)  # (a refusal reaches every rank of a distributed run, which would wait otherwise)
        try:
            yield staging
        finally:
            if main:
                shutil.rmtree(staging, ignore_errors=True)
                if created:
                    with contextlib.suppress(OSError):
                        out.rmdir()  # only if empty



def _curves_figure(history: list[dict[str, Any]], best_epoch: int) -> Any:
    """The training-curve figure: losses per epoch, validation scores at the epochs that were validated."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 4), dpi=100)
    ax1, ax2 = fig.subplots(1, 2)

    def series(key: str) -> tuple[list[int], list[float]]:
        # only the validated epochs (val_every > 1 leaves gaps): a line through them, one marker each
        pts = [(h["epoch"], float(h[key])) for h in history if h.get(key) is not None]
        return [p[0] for p in pts], [p[1] for p in pts]

    ax1.plot(*series("train_loss"), label="train loss")
    if any(h.get("val_loss") is not None for h in history):
        ax1.plot(*series("val_loss"), marker="o", ms=3, label="validation loss")
    ax1.set(xlabel="epoch", ylabel="loss", title="Loss")
    ax1.legend()
    for key, name in (("val_f1", "val F1 @0.5"), ("val_f1_best", "val F1 @best threshold"), ("val_iou", "val IoU @0.5")):
        if any(h.get(key) is not None for h in history):
            ax2.plot(*series(key), marker="o", ms=3, label=name)
    if best_epoch > 0:
        ax2.axvline(best_epoch, color="0.6", ls="--", lw=1, label=f"best epoch {best_epoch}")
    ax2.set(xlabel="epoch", ylabel="score", ylim=(0, 1), title="Validation")
    ax2.legend()
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig



def _plot_curves(path: Path, history: list[dict[str, Any]], best_epoch: int) -> None:
    fig = _curves_figure(history, best_epoch)
    tmp = path.with_name(f".{path.name}.partial")
    try:
        fig.savefig(tmp, format="png")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)



def _json_safe(obj: Any) -> Any:
    if isinstance(obj, Mapping):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, Augment):
        return obj.to_dict()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, (np.integer, np.floating)):
        return obj.item()
    if obj is None or isinstance(obj, (str, int, float, bool)):
        return obj
    return str(obj)
