"""Training of change-detection networks: chips, losses, validation, early stopping, threshold calibration.

:func:`train` is the one entry point; ``changedet train --config run.yaml`` maps the YAML keys 1:1 onto its keyword
arguments. A run:

1. reads the training and validation scenes (:func:`changedet.data.load_dataset`) and normalises each once
   (``normalization="scene"``: each date z-scored with its own per-band statistics, as the inference does);
2. draws ``chips_per_epoch`` chips per epoch with positive-aware sampling and augmentation
   (:class:`~changedet.data.sampling.ChipDataset`) and optimises the loss (weighted BCE, Dice, focal, their sums, or
   the contrastive/triplet losses of metric models, optionally with online hard example mining);
3. after each epoch predicts the *whole* validation scenes (one forward pass per scene, overlap-tiled above
   ``val_tile_size``), records pooled metrics at 0.5 and at the F1-optimal threshold in ``metrics.csv`` and
   ``curves.png``, keeps the best weights by validation F1 (by validation loss where the validation scenes hold no
   change, with a warning) and stops after ``patience`` epochs without progress;
4. calibrates the decision threshold on the validation scenes (F1-optimal on the precision-recall curve, or Otsu),
   plots ``pr_curve.png`` and writes the checkpoint ``<out>/<name>.safetensors`` + ``<name>.json`` with band names,
   normalisation, pixel size, threshold, metrics at the calibrated threshold and at 0.5, the configuration (with
   absolute paths) and the data split.

Every output is written into the hidden ``<out>/.changedet-staging-<pid>/`` folder (``metrics.csv`` there after
each epoch) and moved into ``out`` once all are complete: an interrupted or failed run leaves ``out`` as it was.

On the CPU the run is deterministic for a given ``seed`` (torch and numpy generators seeded, deterministic
algorithms requested). Progress goes to a callback (``progress=True`` shows a tqdm bar on stderr); nothing is printed.

>>> from changedet.training import train  # doctest: +SKIP
>>> result = train(out="out/train/s2", dataset={"type": "oscd", "root": "data/oscd", "val_cities": ["bercy", "rennes"]},
...                model="fc-siam-diff", epochs=30, chip_size=96, threads=2)  # doctest: +SKIP
>>> result.checkpoint, result.threshold  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import copy
import csv
import dataclasses
import logging
import math
import os
import shutil
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from changedet.calibration import (
    ProbabilityCalibration,
    _pooled_metrics,
    calibrate_probabilities,
    calibrate_threshold,
    cross_calibrate,
    plot_pr_curve,
)
from changedet.data.augment import Augment
from changedet.data.generic import Scene
from changedet.data.sampling import ChipDataset, PreparedScene, parse_normalization, prepare_scenes
from changedet.ddp import (
    DEFAULT_TIMEOUT,
    DistContext,
    ShardedBatchSampler,
    all_gather,
    all_reduce_sum,
    assign_by_size,
    broadcast_buffers,
    distributed_context,
    gather_to_main,
    run_on_main,
    state_dict_digest,
)
from changedet.errors import ChangedetWarning, InputError, OutputError, OutputExistsError
from changedet.evaluation import confusion_matrix, f1_optimal_threshold, pool
from changedet.io.folders import output_folder_lock, remove_stale_staging

log = logging.getLogger(__name__)

__all__ = [
    "METRIC_LOSSES",
    "OHEMLoss",
    "TrainResult",
    "build_loss",
    "calibrate_checkpoint",
    "predict_scene",
    "seed_everything",
    "train",
]

METRIC_LOSSES = ("contrastive", "triplet")  # losses on the embeddings of metric models
OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("cosine", "step", "none")
ProgressCallback = Callable[[dict[str, Any]], None]


# --------------------------------------------------------------------------------------------------------- losses
class OHEMLoss(nn.Module):
    """Online hard example mining: average a pixel loss over the hardest valid pixels of the batch only.

    Keeps the ``keep`` fraction (at least ``min_kept`` pixels) of valid pixels with the largest loss (Shrivastava et
    al. 2016, in the per-pixel form used for segmentation), so easy unchanged background stops dominating the
    gradient. Called like the losses of :mod:`changedet.losses`: ``loss(logits, target, valid)``.

    Parameters
    ----------
    kind : {"bce", "focal"}
        The per-pixel loss: BCE on logits weighted by ``pos_weight``, or focal (``gamma``, ``alpha``).
    keep : float
        Fraction of valid pixels kept, in (0, 1].
    min_kept : int
        Lower bound on the number of kept pixels.

    Examples
    --------
    >>> import torch
    >>> loss = OHEMLoss("bce", keep=0.5, min_kept=1)
    >>> logits = torch.tensor([[[[4.0, -4.0], [0.0, 0.0]]]])
    >>> target = torch.tensor([[[[1.0, 0.0], [1.0, 0.0]]]])
    >>> round(float(loss(logits, target, torch.ones_like(target, dtype=torch.bool))), 4)  # the two 0.0 logits
    0.6931
    """

    def __init__(
        self,
        kind: str = "bce",
        *,
        keep: float = 0.25,
        min_kept: int = 1024,
        pos_weight: float | None = None,
        gamma: float = 2.0,
        alpha: float | None = 0.25,
    ) -> None:
        super().__init__()
        if kind not in ("bce", "focal"):
            raise InputError(f"hard example mining needs a pixel-wise loss (bce or focal), not {kind!r}")
        if not 0.0 < keep <= 1.0:
            raise InputError(f"ohem keep fraction must be in (0, 1], got {keep}")
        self.kind = kind
        self.keep = float(keep)
        self.min_kept = int(min_kept)
        self.register_buffer("pos_weight", torch.tensor(float(pos_weight if pos_weight is not None else 1.0)))
        self.gamma = float(gamma)
        self.alpha = alpha

    def pixel_loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Per-pixel loss, same shape as ``logits``."""
        if self.kind == "bce":
            pos_weight: torch.Tensor = self.pos_weight  # type: ignore[assignment]
            return F.binary_cross_entropy_with_logits(logits, target, pos_weight=pos_weight, reduction="none")
        bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
        loss = (1.0 - torch.exp(-bce)) ** self.gamma * bce
        if self.alpha is not None:
            loss = loss * (self.alpha * target + (1.0 - self.alpha) * (1.0 - target))
        return loss

    def forward(self, output: Any, target: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        logits = output[0] if isinstance(output, (tuple, list)) else output
        target = target.to(logits.dtype).reshape(logits.shape)
        mask = torch.ones_like(target, dtype=torch.bool) if valid is None else valid.reshape(logits.shape).bool()
        losses = self.pixel_loss(logits, target)[mask]
        n = losses.numel()
        if n == 0:
            return logits.sum() * 0.0
        k = min(n, max(self.min_kept, math.ceil(self.keep * n)))
        if k < n:
            losses = torch.topk(losses, k, sorted=False).values
        return losses.mean()


def build_loss(
    loss: str = "bce",
    *,
    pos_weight: float | None = None,
    ohem: float | None = None,
    ohem_min_kept: int = 1024,
    **loss_kwargs: Any,
) -> nn.Module:
    """Build the training loss by name (:func:`changedet.losses.create_loss`), optionally with hard example mining.

    Parameters
    ----------
    loss : str
        ``bce``, ``dice``, ``focal``, ``contrastive``, ``triplet`` or a ``+`` combination (``bce+dice``).
    pos_weight : float, optional
        Change-class weight of the BCE component.
    ohem : float, optional
        Keep only this fraction of the hardest pixels (``bce`` or ``focal`` only): :class:`OHEMLoss`.
    **loss_kwargs
        Component options: ``margin``, ``mining``, ``distance`` (metric losses), ``gamma``, ``alpha`` (focal),
        ``smooth`` (Dice), ``weights`` (of a combination).
    """
    if ohem:
        if loss not in ("bce", "focal"):
            raise InputError(f"ohem applies to the pixel losses bce and focal, not {loss!r}")
        allowed = {"gamma", "alpha"}
        unknown = set(loss_kwargs) - allowed
        if unknown:
            raise InputError(f"unknown option(s) {sorted(unknown)} for {loss} with ohem; known: gamma, alpha")
        return OHEMLoss(loss, keep=float(ohem), min_kept=ohem_min_kept, pos_weight=pos_weight, **loss_kwargs)
    from changedet.losses import create_loss

    kwargs = dict(loss_kwargs)
    if pos_weight is not None and "bce" in [p.strip() for p in loss.lower().split("+")]:
        kwargs["pos_weight"] = float(pos_weight)
    return create_loss(loss, **kwargs)


# ----------------------------------------------------------------------------------------------------- utilities
def seed_everything(seed: int) -> None:
    """Seed torch (CPU and CUDA) for a reproducible run; numpy generators are seeded where they are created."""
    torch.manual_seed(int(seed))
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(int(seed))


@contextlib.contextmanager
def _torch_settings(threads: int | None, deterministic: bool, device: torch.device) -> Iterator[None]:
    """Set threads and determinism for the run, restore the caller's settings afterwards.

    The run also flushes subnormal floats to zero (:func:`changedet.models.flush_denormals`): without it, epochs
    slowed down up to 5 times once some gradients became subnormal.
    """
    old_threads = torch.get_num_threads()
    old_det = torch.are_deterministic_algorithms_enabled()
    old_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    old_cudnn = (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
    try:
        if threads:
            torch.set_num_threads(int(threads))
        if deterministic:
            if device.type == "cuda":
                os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
                torch.backends.cudnn.deterministic = True
                torch.backends.cudnn.benchmark = False
            torch.use_deterministic_algorithms(True, warn_only=True)
        from changedet.models import flush_denormals

        with flush_denormals():
            yield
    finally:
        torch.set_num_threads(old_threads)
        torch.use_deterministic_algorithms(old_det, warn_only=old_warn)
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = old_cudnn


def _windows(n: int, tile: int, overlap: int) -> list[tuple[int, int, int]]:
    """(start, keep_from, keep_to) along one axis: tiles of ``tile`` overlapping by ``overlap``, centre parts kept."""
    if n <= tile:
        return [(0, 0, n)]
    if tile <= 2 * overlap:
        raise InputError(f"tile size {tile} must exceed twice the overlap ({overlap})")
    step = tile - 2 * overlap
    starts = [*range(0, n - tile, step), n - tile]
    out: list[tuple[int, int, int]] = []
    for i, s in enumerate(starts):
        keep_from = 0 if i == 0 else s + overlap
        keep_to = n if i == len(starts) - 1 else s + tile - overlap
        if i > 0:
            keep_from = max(keep_from, out[-1][2])
        out.append((s, keep_from, keep_to))
    return out


@torch.inference_mode()
def predict_scene(
    model: nn.Module,
    before: np.ndarray,
    after: np.ndarray,
    *,
    device: str | torch.device = "cpu",
    tile_size: int = 1024,
    overlap: int = 64,
    channels_last: bool = True,
    output: str = "probability",
) -> np.ndarray:
    """Change scores (row, col) of a normalised (band, row, col) pair, in one pass or overlap-tiled.

    Scenes up to ``tile_size`` pixels on a side go through the network in one forward pass; larger ones are cut into
    tiles overlapping by ``2 * overlap`` pixels of which only the centres are kept, so tile borders never reach the
    output. The model is put in eval mode (and left so).

    Parameters
    ----------
    output : {"probability", "logits", "distance"}
        ``sigmoid(logits)``, the logits, or the embedding distance of a metric model (``model.distance_map``).
    """
    if output not in ("probability", "logits", "distance"):
        raise InputError(f"unknown output {output!r}; choose probability, logits or distance")
    model.eval()
    device = torch.device(device)
    _, h, w = before.shape
    out = np.empty((h, w), dtype=np.float32)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    for r0, rk0, rk1 in _windows(h, tile_size, overlap):
        for c0, ck0, ck1 in _windows(w, tile_size, overlap):
            rs, cs = slice(r0, min(r0 + tile_size, h)), slice(c0, min(c0 + tile_size, w))
            tb = torch.from_numpy(np.ascontiguousarray(before[:, rs, cs]))[None].to(device).contiguous(memory_format=fmt)
            ta = torch.from_numpy(np.ascontiguousarray(after[:, rs, cs]))[None].to(device).contiguous(memory_format=fmt)
            if output == "distance":
                score = model.distance_map(tb, ta).float()  # type: ignore[operator]
            else:
                score = model(tb, ta).float()
                if output == "probability":
                    score = torch.sigmoid(score)
            tile = score[0, 0].cpu().numpy()
            out[rk0:rk1, ck0:ck1] = tile[rk0 - r0 : rk1 - r0, ck0 - c0 : ck1 - c0]
    return out


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return (0.5 * (1.0 + np.tanh(0.5 * x.astype(np.float64)))).astype(np.float32)


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


# --------------------------------------------------------------------------------------------------------- outputs
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


# ------------------------------------------------------------------------------------------------------------ train
def _validate_parts(
    model: nn.Module,
    val: Sequence[PreparedScene],
    loss_fn: nn.Module | None,
    device: torch.device,
    tile_size: int,
    metric: bool,
) -> list[tuple[np.ndarray, np.ndarray, float, float]]:
    """Per validation scene: (score, probability, loss x valid pixels, valid pixels; 0.0, 0.0 without a loss)."""
    out = []
    for s in val:
        logits = predict_scene(model, s.before, s.after, device=device, tile_size=tile_size, output="logits")
        prob = _sigmoid(logits)
        score = (
            predict_scene(model, s.before, s.after, device=device, tile_size=tile_size, output="distance")
            if metric
            else prob
        )
        loss_sum, n = 0.0, 0.0
        if loss_fn is not None:
            with torch.inference_mode():
                target = torch.from_numpy(s.label.astype(np.float32))[None, None].to(device)
                valid = torch.from_numpy(s.valid)[None, None].to(device)
                n = float(s.valid.sum())
                loss_sum = float(loss_fn(torch.from_numpy(logits)[None, None].to(device), target, valid)) * n
        out.append((score, prob, loss_sum, n))
    return out


def _pool_parts(
    parts: Sequence[tuple[np.ndarray, np.ndarray, float, float]],
) -> tuple[list[np.ndarray], list[np.ndarray], float | None]:
    losses, weights = 0.0, 0.0
    for _, _, loss_sum, n in parts:  # in scene order: the same sums whatever the number of processes
        losses += loss_sum
        weights += n
    return [p[0] for p in parts], [p[1] for p in parts], (losses / weights if weights else None)


def _validate(
    model: nn.Module,
    val: Sequence[PreparedScene],
    loss_fn: nn.Module | None,
    device: torch.device,
    tile_size: int,
    metric: bool,
) -> tuple[list[np.ndarray], list[np.ndarray], float | None]:
    """Predict whole validation scenes: (scores, probabilities, mean loss over valid pixels or None).

    Scores are the probabilities, or for metric models the embedding distances (their calibration is set only at
    the end, and a threshold search on the distance is independent of it).
    """
    return _pool_parts(_validate_parts(model, val, loss_fn, device, tile_size, metric))


def _validate_sharded(
    model: nn.Module,
    val: Sequence[PreparedScene],
    loss_fn: nn.Module | None,
    device: torch.device,
    tile_size: int,
    metric: bool,
    ctx: DistContext | None,
    owners: Sequence[int],
) -> tuple[list[np.ndarray], list[np.ndarray], float | None] | None:
    """:func:`_validate`, each rank predicting the scenes it owns; the pooled result on rank 0, None elsewhere.

    Every rank holds the same weights, so a scene's prediction does not depend on the rank that makes it, and rank
    0 pools the scenes in their order: the metrics are those of a single process.
    """
    if ctx is None:
        return _validate(model, val, loss_fn, device, tile_size, metric)
    mine = [i for i, r in enumerate(owners) if r == ctx.rank]
    local = dict(zip(mine, _validate_parts(model, [val[i] for i in mine], loss_fn, device, tile_size, metric),
                     strict=True))
    gathered = gather_to_main(local, ctx)
    if gathered is None:
        return None
    merged: dict[int, tuple[np.ndarray, np.ndarray, float, float]] = {}
    for part in gathered:
        merged.update(part)
    return _pool_parts([merged[i] for i in range(len(val))])


class _LossStep(nn.Module):
    """Network and loss as one module, so ``DistributedDataParallel`` syncs the gradients of both.

    ``forward(before, after, target, valid)`` returns the batch loss; metric losses get the embeddings
    (``forward_with_embeddings``), which DDP could not see if it were called on the wrapped network directly.
    """

    def __init__(self, net: nn.Module, loss_fn: nn.Module, metric_loss: bool) -> None:
        super().__init__()
        self.net = net
        self.loss_fn = loss_fn
        self.metric_loss = metric_loss

    def forward(self, before: torch.Tensor, after: torch.Tensor, target: torch.Tensor,
                valid: torch.Tensor) -> torch.Tensor:
        if self.metric_loss:
            outputs = self.net.forward_with_embeddings(before, after)  # type: ignore[operator]
        else:
            outputs = self.net(before, after)
        loss: torch.Tensor = self.loss_fn(outputs, target, valid)
        return loss


def _val_row(scores: list[np.ndarray], probs: list[np.ndarray], val: Sequence[PreparedScene]) -> dict[str, Any]:
    labels = [s.label for s in val]
    valids = [s.valid for s in val]
    cm = pool(confusion_matrix(p >= 0.5, t, v) for p, t, v in zip(probs, labels, valids, strict=True))
    best_t, best_f1 = f1_optimal_threshold(scores, labels, valids)

    def clean(x: float | None) -> float | None:
        return None if x is None or math.isnan(x) else round(float(x), 6)

    return {
        "val_precision": clean(cm.precision),
        "val_recall": clean(cm.recall),
        "val_f1": clean(cm.f1),
        "val_iou": clean(cm.iou),
        "val_kappa": clean(cm.kappa),
        "val_f1_best": clean(best_f1),
        "val_threshold_best": clean(best_t),
    }


def _check_choice(name: str, value: str, choices: Sequence[str]) -> str:
    if value not in choices:
        raise InputError(f"unknown {name} {value!r}; choose one of {', '.join(choices)}")
    return value


def _class_counts(scenes: Sequence[Scene]) -> tuple[int, int]:
    """(changed, unchanged) valid labelled pixels of scenes."""
    changed = unchanged = 0
    for s in scenes:
        if s.label is None:
            continue
        n_valid = int(np.count_nonzero(s.valid))
        n_changed = int(np.count_nonzero(s.label[s.valid]))
        changed += n_changed
        unchanged += n_valid - n_changed
    return changed, unchanged


def _scene_names(scenes: Sequence[Scene], limit: int = 5) -> str:
    names = [s.name for s in scenes]
    return ", ".join(names[:limit]) + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _no_change_message(scenes: Sequence[Scene], dataset: Mapping[str, Any] | None) -> str:
    """Why the training scenes hold no changed pixel: the label values found and the change_values that match none."""
    from changedet.data.generic import _label_values

    files = [Path(str(s.meta["label"])) for s in scenes if s.meta.get("label")][:5]
    found: set[float] = set()
    for f in files:
        with contextlib.suppress(InputError), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            found |= _label_values(f)
    shown = "{" + ", ".join(f"{v:g}" for v in sorted(found)[:10]) + (", ..." if len(found) > 10 else "") + "}"
    where = f" ({', '.join(str(f) for f in files[:3])}{' ...' if len(files) > 3 else ''})" if files else ""
    change_values = dataset.get("change_values") if isinstance(dataset, Mapping) else None
    head = f"the training scenes ({_scene_names(scenes)}) hold no changed pixel, so there is nothing to learn"
    if change_values is not None:
        values = f" {shown}{where}" if files else ""
        return (f"{head}: change_values {change_values} matches none of their labels' values{values}; set "
                "change_values to the value(s) that mark change" + (f" (e.g. [{max(found):g}])" if found - {0.0} else ""))
    if files:
        return (f"{head}: their labels hold only the values {shown}{where}, read as no change; check the labels, "
                "or say which values are change with change_values")
    return f"{head}: every labelled pixel is 0 (no change); give scenes whose labels hold change"


def _check_label_classes(train: Sequence[Scene], val: Sequence[Scene], dataset: Mapping[str, Any] | None) -> bool:
    """Check that the splits' labels hold both classes: an :class:`InputError` when the training scenes hold no
    changed pixel, a :class:`~changedet.errors.ChangedetWarning` when a split holds one class only. Returns whether
    the validation scenes hold change (else their F1 is undefined and the epoch is chosen by validation loss)."""
    changed, unchanged = _class_counts(train)
    if changed == 0:
        raise InputError(_no_change_message(train, dataset))
    if unchanged == 0:
        warnings.warn(
            f"the training scenes ({_scene_names(train)}) hold only changed pixels, no unchanged one: check the "
            "labels (a label tagged with nodata 0 loses its no-change class) and change_values", ChangedetWarning,
            stacklevel=3,
        )
    if not val:
        return True
    changed, unchanged = _class_counts(val)
    if changed == 0:
        warnings.warn(
            f"the validation scenes ({_scene_names(val)}) hold no changed pixel: their F1 is undefined, so the "
            "best epoch is chosen by validation loss and the threshold is not calibrated (0.5); add a validation "
            "scene with change (val_names...) for F1-based selection and calibration", ChangedetWarning,
            stacklevel=3,
        )
        return False
    if unchanged == 0:
        warnings.warn(
            f"the validation scenes ({_scene_names(val)}) hold only changed pixels, no unchanged one: their scores "
            "and the calibrated threshold say little; check the labels (a label tagged with nodata 0 loses its "
            "no-change class) and change_values", ChangedetWarning, stacklevel=3,
        )
    return True


def _auto_pos_weight(ds: ChipDataset, cap: float) -> float:
    pos = neg = 0
    scenes = ds.scenes
    k = ds.chip_size
    for si, r, c in ds.positions():
        s = scenes[int(si)]
        lab = s.label[r : r + k, c : c + k]
        val = s.valid[r : r + k, c : c + k]
        n_pos = int(np.count_nonzero(lab[val]))
        pos += n_pos
        neg += int(val.sum()) - n_pos
    if pos == 0:
        return 1.0
    return float(min(max(neg / pos, 1.0), cap))


def train(
    *,
    out: str | Path,
    dataset: Mapping[str, Any] | None = None,
    train_scenes: Sequence[Scene] | None = None,
    val_scenes: Sequence[Scene] | None = None,
    model: str = "fc-siam-diff",
    model_kwargs: Mapping[str, Any] | None = None,
    loss: str = "bce",
    pos_weight: float | str | None = "auto",
    pos_weight_cap: float = 50.0,
    loss_kwargs: Mapping[str, Any] | None = None,
    ohem: float | None = None,
    ohem_min_kept: int = 1024,
    optimizer: str = "adam",
    lr: float = 1e-3,
    weight_decay: float = 0.0,
    momentum: float = 0.9,
    schedule: str = "cosine",
    step_size: int = 10,
    gamma: float = 0.5,
    epochs: int = 50,
    chips_per_epoch: int = 512,
    batch_size: int = 16,
    chip_size: int = 96,
    positive_fraction: float = 0.5,
    min_valid: float = 0.5,
    augment: bool | Mapping[str, Any] | Augment | None = True,
    normalization: str | Mapping[str, Any] = "scene",
    patience: int | None = 10,
    min_epochs: int = 1,
    val_every: int = 1,
    val_tile_size: int = 1024,
    ema: float | None = None,
    threshold_method: str = "f1",
    probability_calibration: str = "platt",
    seed: int = 0,
    device: str = "cpu",
    threads: int | None = None,
    deterministic: bool = True,
    channels_last: bool = True,
    num_workers: int = 0,
    name: str = "model",
    description: str = "",
    checkpoint_name: str = "",
    overwrite: bool = False,
    plots: bool = True,
    progress: bool | ProgressCallback | None = None,
    config_base: str | Path | None = None,
    distributed: bool | None = None,
    sync_bn: bool = False,
    ddp_backend: str | None = None,
    ddp_timeout: float = DEFAULT_TIMEOUT,
) -> TrainResult:
    """Train a change-detection network and write a calibrated checkpoint.

    Parameters
    ----------
    out : path
        Output folder: ``<name>.safetensors``, ``<name>.json``, ``metrics.csv``, ``curves.png``, ``pr_curve.png``,
        moved there from a hidden staging folder once all are written (``metrics.csv`` is updated in
        ``<out>/.changedet-staging-<pid>/`` during the run); an interrupted or failed run leaves nothing behind.
    dataset : mapping, optional
        A dataset spec for :func:`changedet.data.load_dataset` (``type: oscd|airchange|folders|list`` ...); its
        relative paths are resolved against ``config_base`` (else the current folder) and recorded absolute. The
        training scenes must hold changed pixels (else an :class:`InputError` naming the label values found and
        ``change_values``); a split of one class only gives a :class:`~changedet.errors.ChangedetWarning`.
    train_scenes, val_scenes : sequence of Scene, optional
        In-memory scenes instead of ``dataset`` (e.g. synthetic data). Without validation scenes there is no early
        stopping and the threshold is calibrated on the training scenes (recorded in the checkpoint).
    model : str
        Architecture name (``changedet.models.list_models()``); ``model_kwargs`` go to its constructor
        (``in_channels`` is set from the data).
    loss : str
        ``bce``, ``dice``, ``focal``, ``bce+dice``, ``focal+dice``; ``contrastive``/``triplet`` for metric models.
    pos_weight : float, "auto" or None
        BCE weight of the change class; ``"auto"`` = unchanged/changed pixel ratio of the first epoch's chips,
        capped at ``pos_weight_cap``.
    loss_kwargs : mapping, optional
        ``focal_gamma``, ``focal_alpha``, ``dice_weight``; ``margin``, ``mining``... for the metric losses.
    ohem : float, optional
        Keep only this fraction of the hardest valid pixels per batch (online hard example mining).
    optimizer, lr, weight_decay, momentum : optimiser (``adam``, ``adamw``, ``sgd``) and its settings.
    schedule, step_size, gamma : learning-rate schedule (``cosine`` over all epochs, ``step``, ``none``).
    epochs, chips_per_epoch, batch_size, chip_size : the sampling budget.
    positive_fraction : float
        Share of chips centred on changed pixels (the rest uniform).
    min_valid : float
        Minimum valid fraction of uniformly drawn chips.
    augment : bool or mapping
        ``True`` (flips and 90-degree rotations), ``False``, or ``{flips, rotations, date_swap, gain, offset}``.
    normalization : str or mapping
        ``"scene"`` (per-date z-score) or ``"fixed"`` (statistics from the training scenes, or given mean/std:
        ``{mode: fixed, mean: [...], std: [...]}``, both or neither; other keys are errors).
    patience : int, optional
        Stop after this many validations without a better validation F1 (None: never; at least 1). Where the
        validation scenes hold no changed pixel (F1 undefined) the best epoch is the one with the lowest validation
        loss (the last one for metric losses), recorded as ``training.best_epoch_by`` in the checkpoint.
    min_epochs, val_every, val_tile_size : validation schedule and the tile size of whole-scene prediction.
    ema : float, optional
        Decay of an exponential moving average of the weights (e.g. ``0.99``: a horizon of about 100 optimiser
        steps), updated after every step (:class:`torch.optim.swa_utils.AveragedModel`, batch-norm statistics
        averaged too). When set, validation, the threshold calibration and the checkpoint use the averaged
        weights instead of the last step's. ``None`` (default): no averaging.
    threshold_method : {"f1", "otsu", "fixed"}
        How the final decision threshold is calibrated on the validation scenes. With two or more validation
        scenes, ``metrics["cross_calibrated"]`` also records each scene scored at the threshold calibrated on the
        others (:func:`changedet.calibration.cross_calibrate`): a less optimistic F1 than the one at the threshold
        fitted to all of them.
    probability_calibration : {"platt", "none"}
        Before the threshold is chosen, fit Platt scaling (``sigmoid(a * logit + b)``, a logistic regression of the
        validation labels on the logits) and fold it into the network's last convolution, so that
        ``probability.tif`` holds probabilities (pixels at 0.3 are changed about 30 % of the time on the validation
        data) and not just scores. The order of the pixels does not change, so neither does the F1 at the
        calibrated threshold; the threshold is searched on the calibrated probabilities. The expected calibration error, Brier score and log loss before
        and after go into ``metrics["probability_calibration"]``. Metric models are calibrated by their own
        ``center``/``scale`` fit and skip this.
    seed : int
    device : str
        ``cpu``, ``cuda``, ``cuda:1``...
    threads : int, optional
        ``torch.set_num_threads`` during the run (restored afterwards).
    deterministic : bool
        Request deterministic algorithms (identical weights for identical seeds on the CPU).
    channels_last : bool
        NHWC memory format (faster convolutions on recent CPUs and GPUs).
    num_workers : int
        DataLoader worker processes (0: chips are cut in the main process, usually fastest for in-memory scenes).
    name : str
        Checkpoint stem inside ``out`` (``model`` gives ``model.safetensors``/``model.json``).
    description, checkpoint_name : str
        Stored in the checkpoint (``checkpoint_name`` is the short model name, e.g. ``s2-13band``).
    overwrite : bool
        Replace the outputs of an earlier run in ``out`` (its plots are removed when this run writes none).
    plots : bool
        Write ``curves.png`` and ``pr_curve.png``.
    progress : bool or callable, optional
        ``True`` for a tqdm bar on stderr, or a callback receiving event dicts (``start``, ``step``, ``epoch``,
        ``end``).
    config_base : path, optional
        Folder against which relative dataset paths are resolved (the config file's folder; default: the current
        folder).
    distributed : bool, optional
        Data-parallel training with ``torch.distributed`` (see Notes). ``None`` (default): when launched by
        ``torchrun`` with more than one process (or inside a process group of several ranks the caller created);
        ``False``: never.
    sync_bn : bool
        In a distributed run on CUDA devices, convert batch norm to :class:`torch.nn.SyncBatchNorm` (statistics over
        the global batch instead of each process's share of it). Not available on the CPU.
    ddp_backend : {"gloo", "nccl"}, optional
        Process-group backend; default ``nccl`` on CUDA devices, ``gloo`` on the CPU.
    ddp_timeout : float
        Seconds a rank waits for the others in a collective operation before failing.

    Returns
    -------
    TrainResult
        Identical on every rank of a distributed run, except ``seconds`` and ``distributed["rank"]``.

    Notes
    -----
    **Distributed training.** Under ``torchrun --nproc_per_node N`` (or ``changedet train --nproc N``) every
    process loads the data, seeds the same generators and wraps the network (with the loss) in
    :class:`~torch.nn.parallel.DistributedDataParallel`: ``gloo`` on the CPU, ``nccl`` and ``cuda:LOCAL_RANK`` on
    GPUs. ``batch_size`` and ``chips_per_epoch`` stay *global*: each batch of the single-process epoch is shared
    among the processes (:class:`~changedet.ddp.ShardedBatchSampler`), every chip is seen once per epoch by exactly
    one process, and the ranks' losses are weighted by their share so that the averaged gradient is that of the
    whole batch. The number of steps, the learning rate and the schedule are therefore those of one process; to
    give each process a batch of ``b`` chips, set ``batch_size`` to ``N * b``. Without ``sync_bn`` each process
    normalises its own share of the batch (batch-norm statistics over ``batch_size / N`` chips), so results are
    close to, not bit-identical with, a single process; the running statistics of rank 0 are copied to every rank
    after each epoch. The training loss is averaged over the ranks; the validation scenes are spread over the
    ranks and pooled on rank 0, whose metrics (identical to a single process's for the same weights) every rank
    receives, so all take the same early-stopping decision. Rank 0 alone calibrates the threshold and writes
    ``metrics.csv``, the plots and the checkpoint; the process group is destroyed at the end, also after an error.
    """
    from changedet.models import create_model, flush_denormals, fold_logit_affine
    from changedet.models.checkpoint import CheckpointMeta, checkpoint_paths, save_checkpoint

    started = time.perf_counter()
    config = {k: v for k, v in locals().items() if k not in ("train_scenes", "val_scenes", "progress", "started",
                                                             "create_model", "CheckpointMeta", "checkpoint_paths",
                                                             "save_checkpoint", "fold_logit_affine",
                                                             "flush_denormals")}
    if not isinstance(loss, str) or not loss:
        raise InputError(f"loss must be a name such as 'bce' or 'bce+dice', got {loss!r}")
    _check_choice("optimizer", optimizer, OPTIMIZERS)
    _check_choice("schedule", schedule, SCHEDULES)
    _check_choice("threshold_method", threshold_method, ("f1", "otsu", "fixed"))
    _check_choice("probability_calibration", probability_calibration, ("platt", "none"))
    if isinstance(pos_weight, str) and pos_weight != "auto":
        raise InputError(f"pos_weight must be a number, 'auto' or null, got {pos_weight!r}")
    for key, value, low in (("epochs", epochs, 1), ("chips_per_epoch", chips_per_epoch, 1),
                            ("batch_size", batch_size, 1), ("chip_size", chip_size, 8), ("val_every", val_every, 1),
                            ("val_tile_size", val_tile_size, 2 * 64 + 1)):  # predict_scene's overlap is 64
        if not isinstance(value, int) or value < low:
            raise InputError(f"{key} must be an integer >= {low}, got {value!r}")
    parse_normalization(normalization)  # unknown keys, a mean without a std...: before anything is read
    if patience is not None and (isinstance(patience, bool) or not isinstance(patience, int) or patience < 1):
        raise InputError(f"patience must be >= 1 or null (never stop early), got {patience!r}")
    if lr <= 0:
        raise InputError(f"lr must be > 0, got {lr}")
    if ema is not None and (isinstance(ema, bool) or not isinstance(ema, (int, float)) or not 0.0 < ema < 1.0):
        raise InputError(f"ema must be a decay between 0 and 1 (e.g. 0.99) or null, got {ema!r}")
    if not isinstance(name, str) or not name or name in (".", "..") or Path(name).name != name or "\\" in name:
        raise InputError(f"name must be a file name without folders (the checkpoint's stem inside out), got {name!r}")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise InputError(f"{out}: exists and is not a folder; give a folder path as out (--out)")
    # the checkpoint records absolute paths, so that `changedet calibrate` finds the data again from any folder
    config["out"] = str(out.absolute())
    config["config_base"] = str(Path(config_base).expanduser().resolve()) if config_base is not None else str(Path.cwd())
    if isinstance(dataset, Mapping):
        from changedet.data.spec import resolve_paths

        dataset = config["dataset"] = resolve_paths(dataset, config_base)
    weights_path, json_path = checkpoint_paths(out / name)
    outputs = [weights_path, json_path, out / "metrics.csv", out / "curves.png", out / "pr_curve.png"]
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"device {device!r} requested but CUDA is not available; use device='cpu'")
    if ddp_backend is not None:
        _check_choice("ddp_backend", ddp_backend, ("gloo", "nccl"))

    with (
        distributed_context(dev, enabled=distributed, backend=ddp_backend, timeout=ddp_timeout) as dctx,
        _staging(out, dctx) as staging,
    ):
        # In a distributed run (torchrun) every rank runs this function on the same data with the same seed; rank 0
        # alone checks and writes the outputs (run_on_main hands its result or its error to every rank), first into
        # the staging folder, moved into `out` once complete.
        main = dctx is None or dctx.is_main
        world = 1 if dctx is None else dctx.world_size
        if dctx is not None:
            dev = dctx.device

        def check_outputs() -> None:
            existing = [p for p in outputs if p.exists()]
            if existing and not overwrite:
                raise OutputExistsError(
                    f"{out}: holds the outputs of an earlier run ({', '.join(p.name for p in existing)}); "
                    "pass overwrite=True (--overwrite) or choose another folder"
                )

        run_on_main(check_outputs, dctx)
        if dctx is not None and dctx.is_main:
            import socket

            log.info("distributed training on %d processes; rank 0 (host %s) writes the outputs to %s",
                     world, socket.gethostname(), out.resolve())
        if sync_bn and dctx is not None and dev.type != "cuda":
            raise InputError(
                "sync_bn needs CUDA devices (torch's SyncBatchNorm has no CPU implementation); "
                "train on the CPU with sync_bn: false (each process normalises its own share of the batch)"
            )
        if sync_bn and dctx is None:
            log.info("sync_bn has no effect in a single process")

        # ---- data
        split_info: dict[str, Any]
        if dataset is not None:
            if train_scenes is not None or val_scenes is not None:
                raise InputError("give either dataset or train_scenes/val_scenes, not both")
            from changedet.data.spec import load_dataset

            split = load_dataset(dataset, base=config_base)
            train_list, val_list, split_info = split.train, split.val, split.info
        elif train_scenes is not None:
            train_list, val_list = list(train_scenes), list(val_scenes or [])
            split_info = {"type": "scenes", "train": [s.name for s in train_list],
                          "val": [s.name for s in val_list]}
        else:
            raise InputError("no training data: give dataset (a spec mapping) or train_scenes")
        if not train_list:
            raise InputError("the dataset holds no training scene")
        val_has_change = _check_label_classes(train_list, val_list, dataset)
        calibrated_on = "val"
        if not val_list:
            log.warning("no validation scenes: no early stopping; the threshold is calibrated on the training scenes")
            calibrated_on = "train"
        band_names = list(train_list[0].band_names)
        norm_arg = dict(normalization) if isinstance(normalization, Mapping) else {"mode": normalization}
        prepared_train, norm_entry = prepare_scenes(train_list, normalization=norm_arg, chip_size=chip_size)
        if norm_entry["mode"] == "fixed":
            norm_arg = norm_entry  # validation uses the training statistics
        eval_source = val_list if val_list else train_list
        prepared_val, _ = prepare_scenes(eval_source, normalization=norm_arg)
        for s in eval_source:
            if [b.upper() for b in s.band_names] != [b.upper() for b in band_names]:
                raise InputError(f"validation scene {s.name} has bands {s.band_names}, training has {band_names}")
        pixel_sizes = [s.pixel_size for s in train_list if s.pixel_size]
        pixel_size = float(np.median(pixel_sizes)) if pixel_sizes else None
        augmenter = Augment.from_config(augment)  # type: ignore[arg-type]
        # whole validation scenes are spread over the ranks (each predicts its own, rank 0 pools the results)
        owners = assign_by_size([s.valid.size for s in prepared_val], world)

        progress_cb: ProgressCallback | None
        if not main:
            progress_cb = None  # one progress bar, on rank 0
        elif progress is True:
            progress_cb = tqdm_progress(epochs)
        elif callable(progress):
            progress_cb = progress
        else:
            progress_cb = None

        history: list[dict[str, Any]] = []
        calibrated: dict[str, Any] = {}
        digests: list[str] | None = None
        chips_per_rank: list[int] | None = None
        with _torch_settings(threads, deterministic, dev):
            seed_everything(seed)
            kwargs = dict(model_kwargs or {})
            kwargs["in_channels"] = len(band_names)
            net = create_model(model, **kwargs)
            is_metric = bool(getattr(net, "is_metric", False))
            parts = [p.strip().lower() for p in loss.split("+")]
            metric_loss = any(p in METRIC_LOSSES for p in parts)
            if metric_loss and not is_metric:
                raise InputError(
                    f"the {loss} loss works on embeddings and needs a metric model (e.g. metric-siam); "
                    f"{model} is not one"
                )
            extra_loss_kwargs = dict(loss_kwargs or {})
            if metric_loss and hasattr(net, "distance"):
                given = extra_loss_kwargs.setdefault("distance", net.distance)
                if str(given).lower() != str(net.distance).lower():
                    raise InputError(
                        f"loss_kwargs distance {given!r} differs from the model's distance {net.distance!r}: the "
                        f"loss would train one distance and detect would score the other; give "
                        f"model_kwargs: {{distance: {given}}} (or drop the loss's distance)"
                    )
            if dctx is not None and sync_bn:
                net = nn.SyncBatchNorm.convert_sync_batchnorm(net)
            fmt = torch.channels_last if channels_last else torch.contiguous_format
            net = net.to(dev).to(memory_format=fmt)  # type: ignore[call-overload]

            ds = ChipDataset(prepared_train, chip_size=chip_size, chips_per_epoch=chips_per_epoch,
                             positive_fraction=positive_fraction, augment=augmenter, seed=seed, min_valid=min_valid)
            pw: float | None = None
            if "bce" in parts or (ohem and "bce" in parts):
                if pos_weight == "auto":
                    pw = _auto_pos_weight(ds, pos_weight_cap)  # same chips on every rank: same weight
                elif pos_weight is not None:
                    pw = float(pos_weight)
            loss_fn = build_loss(loss, pos_weight=pw, ohem=ohem, ohem_min_kept=ohem_min_kept, **extra_loss_kwargs)
            loss_fn = loss_fn.to(dev)

            params = [p for p in net.parameters() if p.requires_grad] + [
                p for p in loss_fn.parameters() if p.requires_grad
            ]
            if optimizer == "adam":
                opt: torch.optim.Optimizer = torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
            elif optimizer == "adamw":
                opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
            else:
                opt = torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay,
                                      nesterov=momentum > 0)
            if schedule == "cosine":
                sched: Any = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
            elif schedule == "step":
                sched = torch.optim.lr_scheduler.StepLR(opt, step_size=step_size, gamma=gamma)
            else:
                sched = None

            ddp_step: nn.Module | None = None
            global_batch = min(batch_size, len(ds))
            # the loader's own generator: drawing its base seed must not advance the global one (dropout...)
            generator = torch.Generator()
            generator.manual_seed(int(seed))
            if dctx is None:
                loader = torch.utils.data.DataLoader(
                    ds, batch_size=batch_size, shuffle=False, drop_last=len(ds) > batch_size,
                    num_workers=num_workers, pin_memory=dev.type == "cuda", generator=generator,
                    persistent_workers=False,
                )
            else:
                # the single-process batches, each shared among the ranks: the same steps, optimiser and
                # learning rate as one process with batch_size, computed by world_size processes
                sampler = ShardedBatchSampler(len(ds), batch_size=batch_size, rank=dctx.rank, world_size=world)
                loader = torch.utils.data.DataLoader(
                    ds, batch_sampler=sampler, num_workers=num_workers, pin_memory=dev.type == "cuda",
                    generator=generator, persistent_workers=False,
                )
                from torch.nn.parallel import DistributedDataParallel

                ddp_step = DistributedDataParallel(
                    _LossStep(net, loss_fn, metric_loss),
                    device_ids=[dev.index] if dev.type == "cuda" else None,
                )
                if dctx.rank:  # the same initial weights, but dropout masks of its own on each rank (rank 0 keeps
                    # the single-process stream)
                    seed_everything(int(np.random.SeedSequence([int(seed), dctx.rank]).generate_state(1)[0]))
            steps_per_epoch = len(loader)
            if progress_cb:
                progress_cb({"event": "start", "steps_per_epoch": steps_per_epoch, "epochs": epochs})

            ema_net: AveragedModel | None = None
            if ema is not None:
                ema_net = AveragedModel(net, multi_avg_fn=get_ema_multi_avg_fn(float(ema)), use_buffers=True)
            # the weights that are validated, calibrated and saved: the moving average's copy, or the network's
            eval_net: nn.Module = ema_net.module if ema_net is not None else net  # type: ignore[assignment]
            best_score, best_epoch, best_state = -math.inf, 0, copy.deepcopy(eval_net.state_dict())
            # the best epoch: by validation F1, or where the validation scenes hold no change (F1 undefined) by
            # validation loss, or (metric losses, which are not computed on whole scenes) the last epoch
            select_by = "f1" if val_has_change else ("last" if metric_loss else "val_loss")
            stale = 0
            epoch = 0
            chips_seen = 0

            def make_folders() -> None:
                out.mkdir(parents=True, exist_ok=True)
                remove_stale_staging(out)
                staging.mkdir(exist_ok=True)

            run_on_main(make_folders, dctx)
            try:
                for epoch in range(1, epochs + 1):
                    t0 = time.perf_counter()
                    ds.set_epoch(epoch - 1)
                    net.train()
                    total = torch.zeros((), device=dev)
                    for before, after, target, valid in loader:
                        before = before.to(dev, non_blocking=True).contiguous(memory_format=fmt)
                        after = after.to(dev, non_blocking=True).contiguous(memory_format=fmt)
                        target = target.to(dev, non_blocking=True)
                        valid = valid.to(dev, non_blocking=True)
                        if ddp_step is None:
                            if metric_loss:
                                outputs = net.forward_with_embeddings(before, after)  # type: ignore[operator]
                            else:
                                outputs = net(before, after)
                            batch_loss = loss_fn(outputs, target, valid)
                        else:
                            # DDP averages the ranks' gradients; weighting each rank's loss by its share of the
                            # global batch makes that average the gradient of the chip-weighted mean loss
                            share = before.shape[0] * world / global_batch
                            batch_loss = ddp_step(before, after, target, valid) * share
                            chips_seen += int(before.shape[0])
                        opt.zero_grad(set_to_none=True)
                        batch_loss.backward()
                        opt.step()
                        if ema_net is not None:
                            ema_net.update_parameters(net)
                        total += batch_loss.detach()
                        if progress_cb:
                            progress_cb({"event": "step"})
                    if dctx is not None:
                        all_reduce_sum(total, dctx)
                        total /= world
                        broadcast_buffers(net, dctx)  # batch-norm statistics of rank 0 on every rank
                        broadcast_buffers(eval_net, dctx)  # and of the moving average (each rank averaged its own)
                    lr_now = opt.param_groups[0]["lr"]
                    if sched is not None:
                        sched.step()
                    row: dict[str, Any] = {
                        "epoch": epoch,
                        "lr": lr_now,
                        "train_loss": round(float(total) / max(steps_per_epoch, 1), 6),
                        "train_seconds": round(time.perf_counter() - t0, 3),
                    }
                    improved = False
                    if val_list and (epoch % val_every == 0 or epoch == epochs):
                        t1 = time.perf_counter()
                        val_parts = _validate_sharded(
                            eval_net, prepared_val, None if metric_loss else loss_fn, dev, val_tile_size, is_metric,
                            dctx, owners,
                        )

                        def val_fields(val_parts: Any = val_parts) -> dict[str, Any]:
                            scores, probs, val_loss = val_parts
                            fields: dict[str, Any] = {"val_loss": None if val_loss is None else round(val_loss, 6)}
                            fields.update(_val_row(scores, probs, prepared_val))
                            return fields

                        row.update(run_on_main(val_fields, dctx))  # the same metrics, so the same decision
                        row["val_seconds"] = round(time.perf_counter() - t1, 3)
                        if select_by == "f1":
                            score = row["val_f1_best"] if row["val_f1_best"] is not None else -1.0
                        elif select_by == "val_loss" and row.get("val_loss") is not None:
                            score = -float(row["val_loss"])
                        else:
                            score = float(epoch)
                        if score > best_score:
                            best_score, best_epoch, best_state = score, epoch, copy.deepcopy(eval_net.state_dict())
                            improved, stale = True, 0
                        else:
                            stale += 1
                    elif not val_list:
                        best_epoch, best_state = epoch, copy.deepcopy(eval_net.state_dict())
                    row["best"] = improved
                    history.append(row)
                    run_on_main(lambda: _write_csv(staging / "metrics.csv", history), dctx)
                    if progress_cb:
                        progress_cb({"event": "epoch", **row})
                    if patience is not None and val_list and stale >= patience and epoch >= min_epochs:
                        log.info("early stopping at epoch %d (best %d by %s)", epoch, best_epoch,
                                 "validation F1" if select_by == "f1" else "validation loss")
                        break
            finally:
                if progress_cb:
                    progress_cb({"event": "end"})

            # ---- calibration on the best weights
            net.load_state_dict(best_state)
            net.eval()
            if dctx is not None:
                digests = all_gather(state_dict_digest(net), dctx)
                chips_per_rank = all_gather(chips_seen, dctx)
            cal_parts = _validate_sharded(net, prepared_val, None, dev, val_tile_size, is_metric, dctx, owners)

            def calibrate() -> None:
                assert cal_parts is not None  # rank 0 holds the pooled predictions
                scores, probs, _ = cal_parts
                labels = [s.label for s in prepared_val]
                valids = [s.valid for s in prepared_val]
                metric_calibration = None
                if is_metric:
                    metric_calibration = _calibrate_metric(net, scores, labels, valids)
                    probs = [
                        _sigmoid((d - metric_calibration["center"]) * metric_calibration["scale"]) for d in scores
                    ]
                calibrated["platt"] = None
                if not is_metric and probability_calibration == "platt":
                    calibrated["platt"], probs = _fit_platt(probs, labels, valids)
                calibrated["calibration"] = calibrate_threshold(probs, labels, valids, method=threshold_method)
                calibrated["metric"] = metric_calibration
                calibrated["cross"] = None
                if val_list and len(probs) >= 2 and threshold_method != "fixed":
                    # each validation scene at the threshold of the others: what the calibration gives unseen data
                    calibrated["cross"] = cross_calibrate(probs, labels, valids, method=threshold_method,
                                                          names=[s.name for s in prepared_val])

            run_on_main(calibrate, dctx)  # kept on rank 0 (the precision-recall curve is large)

        distributed_info: dict[str, Any] | None = None
        if dctx is not None:
            distributed_info = {**dctx.to_dict(), "sync_bn": bool(sync_bn), "global_batch_size": global_batch,
                                "chips_per_rank": chips_per_rank, "weights_digests": digests}

        def write_outputs() -> dict[str, Any]:
            calibration = calibrated["calibration"]
            metric_calibration = calibrated["metric"]
            metrics = {
                "calibrated_on": calibrated_on,
                "scenes": [s.name for s in prepared_val],
                "threshold_method": calibration.method,
                "threshold": calibration.threshold,
                **{k: v for k, v in calibration.metrics.items()},
                "at_0.5": calibration.reference_metrics,
                "average_precision": calibration.to_dict()["average_precision"],
                "best_epoch": best_epoch,
            }
            if metric_calibration is not None:
                metrics["metric_calibration"] = metric_calibration
            if calibrated["cross"] is not None:
                metrics["cross_calibrated"] = calibrated["cross"]
            platt = calibrated["platt"]
            if platt is not None:
                fold_logit_affine(net, platt.scale, platt.bias)  # the checkpoint's outputs are calibrated
                metrics["probability_calibration"] = platt.to_dict()
            training = {
                "config": _json_safe(config),
                "data": split_info,
                "epochs_run": epoch,
                "best_epoch": best_epoch,
                "best_epoch_by": select_by if val_list else "last",
                "pos_weight": pw,
                "seconds": round(time.perf_counter() - started, 1),
                "torch": torch.__version__,
                "device": str(dev),
            }
            if distributed_info is not None:
                training["distributed"] = {k: distributed_info[k] for k in
                                           ("world_size", "backend", "sync_bn", "global_batch_size")}
                if digests is not None and len(set(digests)) > 1:
                    log.warning("the ranks' weights differ after training (digests %s): replicas drifted apart",
                                digests)
            meta = CheckpointMeta(
                band_names=band_names,
                normalization=norm_entry,
                pixel_size=pixel_size,
                threshold=float(calibration.threshold),
                metrics=_json_safe(metrics),
                training=training,
                name=checkpoint_name or name,
                description=description,
            )
            # every output into the staging folder, then moved into `out` (the checkpoint last); the outputs of an
            # earlier run that this one does not write (plots: false) are removed, as they describe another model
            _write_csv(staging / "metrics.csv", history)
            files = {"metrics": str(out / "metrics.csv")}
            if plots:
                if history:
                    _plot_curves(staging / "curves.png", history, best_epoch)
                    files["curves"] = str(out / "curves.png")
                plot_pr_curve(calibration, staging / "pr_curve.png",
                              title=f"{model}: precision-recall on {calibrated_on} ({', '.join(metrics['scenes'][:4])})")
                files["pr_curve"] = str(out / "pr_curve.png")
            cpu_net = net.to("cpu").to(memory_format=torch.contiguous_format)  # type: ignore[call-overload]
            staged_weights, staged_json = checkpoint_paths(save_checkpoint(cpu_net, staging / name, meta,
                                                                          overwrite=True))
            for key in ("metrics", "curves", "pr_curve"):
                if key in files:
                    os.replace(staging / Path(files[key]).name, files[key])
            os.replace(staged_weights, weights_path)
            os.replace(staged_json, json_path)
            for key, file_name in (("curves", "curves.png"), ("pr_curve", "pr_curve.png")):
                if key not in files:
                    (out / file_name).unlink(missing_ok=True)
            checkpoint = weights_path
            files["checkpoint"] = str(checkpoint)
            summary = {"checkpoint": str(checkpoint), "out": str(out), "threshold": float(calibration.threshold),
                       "metrics": metrics, "files": files}
            if dctx is not None:
                summary["history"] = history  # rank 0's, so that every rank returns the same result
            return summary

        with flush_denormals():  # write_outputs runs the model too (folding the probability calibration)
            summary = run_on_main(write_outputs, dctx)
    return TrainResult(
        checkpoint=Path(summary["checkpoint"]),
        out=Path(summary["out"]),
        threshold=summary["threshold"],
        metrics=summary["metrics"],
        history=summary.get("history", history),
        best_epoch=best_epoch,
        epochs_run=epoch,
        seconds=time.perf_counter() - started,
        files=summary["files"],
        distributed=distributed_info,
    )


def _fit_platt(
    probs: list[np.ndarray], labels: list[np.ndarray], valids: list[np.ndarray]
) -> tuple[ProbabilityCalibration | None, list[np.ndarray]]:
    """Platt scaling of validation probabilities: (the fit or None when it is impossible, the probabilities after)."""
    try:
        platt = calibrate_probabilities(probs, labels, valids)
    except InputError as exc:
        log.warning("probability calibration skipped: %s", exc)
        return None, probs
    log.info("Platt scaling: scale %.4f, bias %.4f; validation ECE %.4f -> %.4f", platt.scale, platt.bias,
             platt.before["ece"], platt.after["ece"])
    return platt, [platt.apply(p) for p in probs]


def calibrate_checkpoint(
    checkpoint: str | Path,
    out: str | Path,
    *,
    val_scenes: Sequence[Scene] | None = None,
    overwrite: bool = False,
    device: str = "cpu",
    threads: int | None = None,
) -> dict[str, Any]:
    """Add probability calibration (Platt scaling) to a trained checkpoint and write it to ``out``.

    For checkpoints trained before :func:`train` calibrated probabilities, or to recalibrate on other labelled
    scenes. The network is run on the validation scenes (by default the ones its training config names, read
    again with :func:`changedet.data.load_dataset`), Platt scaling is fitted to its probabilities and folded into
    its last convolution, and the threshold is searched again (same method as in training) on the calibrated
    probabilities: the F1 there equals the F1 before, the threshold moves with the probabilities.

    Parameters
    ----------
    checkpoint : path
        A changedet checkpoint (``.safetensors`` with its ``.json``) of a logit model.
    out : path
        Where to write the calibrated checkpoint (may equal ``checkpoint`` with ``overwrite=True``).
    val_scenes : sequence of Scene, optional
        Labelled scenes to calibrate on, instead of the checkpoint's validation split.

    Returns
    -------
    dict
        ``checkpoint`` (the written path), ``threshold_before``/``threshold``, ``f1_before``/``f1``,
        ``recorded_f1`` (the F1 the checkpoint recorded, to check that the data are the same),
        ``recorded_threshold`` and ``recorded_f1_here`` (the checkpoint's own threshold and the F1 it gives on
        these scenes), ``probability_calibration`` (scale, bias, metrics before and after), ``cross_calibrated``
        (with two or more scenes: each at the threshold calibrated on the others, else None) and ``scenes``.

    Raises
    ------
    InputError
        A metric model (its distances are calibrated during training), no validation scenes, scenes without a
        label or with another band count than the checkpoint's, or a fit that is impossible (one class only, or
        scores that do not rank change first).
    OutputExistsError
        ``out`` exists and ``overwrite`` is false.
    """
    from changedet.models import fold_logit_affine
    from changedet.models.checkpoint import checkpoint_paths, load_checkpoint, save_checkpoint

    if Path(out).is_dir():
        raise InputError(f"{out}: a folder; give the new checkpoint's file name, e.g. {Path(out) / 'model.safetensors'}")
    weights_out, json_out = checkpoint_paths(out)
    existing = [p for p in (weights_out, json_out) if p.exists()]
    if existing and not overwrite:
        raise OutputExistsError(f"{existing[0]} exists; pass overwrite=True (--overwrite) to replace it")
    net, meta = load_checkpoint(checkpoint)
    if getattr(net, "is_metric", False):
        raise InputError(f"{checkpoint}: a metric model; its distances are calibrated (center/scale) in training")
    dev = torch.device(device)
    prepared, probs = _checkpoint_probabilities(checkpoint, net, meta, val_scenes, dev, threads)
    labels = [s.label for s in prepared]
    valids = [s.valid for s in prepared]
    method = str((meta.training.get("config") or {}).get("threshold_method") or "f1")
    before = calibrate_threshold(probs, labels, valids, method=method)
    as_shipped = _pooled_metrics(probs, labels, valids, float(meta.threshold))
    platt = calibrate_probabilities(probs, labels, valids)
    calibrated = [platt.apply(p) for p in probs]
    after = calibrate_threshold(calibrated, labels, valids, method=method)
    fold_logit_affine(net, platt.scale, platt.bias)
    metrics = {**meta.metrics, "threshold": after.threshold, **after.metrics, "at_0.5": after.reference_metrics,
               "scenes": [s.name for s in prepared], "probability_calibration": platt.to_dict()}
    if val_scenes is not None:
        metrics["calibrated_on"] = "given scenes"  # not the validation split of the training config
    metrics.pop("cross_calibrated", None)
    if len(prepared) >= 2 and method != "fixed":
        metrics["cross_calibrated"] = cross_calibrate(calibrated, labels, valids, method=method,
                                                      names=[s.name for s in prepared])
    new_meta = dataclasses.replace(meta, threshold=float(after.threshold), metrics=_json_safe(metrics))
    cpu_net = net.to("cpu").to(memory_format=torch.contiguous_format)  # type: ignore[call-overload]
    written = save_checkpoint(cpu_net, out, new_meta, overwrite=True)
    return {
        "checkpoint": str(written),
        "scenes": [s.name for s in prepared],
        "threshold_before": before.threshold,
        "threshold": after.threshold,
        "f1_before": before.metrics["f1"],
        "f1": after.metrics["f1"],
        "recorded_f1": meta.metrics.get("f1"),
        "recorded_threshold": float(meta.threshold),
        "recorded_f1_here": as_shipped["f1"],
        "probability_calibration": platt.to_dict(),
        "cross_calibrated": metrics.get("cross_calibrated"),
    }


def _checkpoint_probabilities(
    checkpoint: str | Path,
    net: nn.Module,
    meta: Any,
    val_scenes: Sequence[Scene] | None,
    dev: torch.device,
    threads: int | None,
) -> tuple[list[PreparedScene], list[np.ndarray]]:
    """A loaded checkpoint's probabilities on labelled scenes (by default its config's validation split)."""
    from changedet.data import load_dataset

    config = meta.training.get("config") or {}
    if val_scenes is None:
        spec = config.get("dataset")
        if not spec:
            raise InputError(f"{checkpoint}: its training config names no dataset; pass labelled val_scenes")
        val_scenes = load_dataset(spec, base=config.get("config_base")).val
    val_scenes = list(val_scenes)
    if not val_scenes:
        raise InputError(f"{checkpoint}: no validation scenes to calibrate on; pass labelled val_scenes")
    wanted = [str(b).upper() for b in meta.band_names]
    for i, scene in enumerate(val_scenes):  # a 13-band stack for s2-rgb: its B04, B03, B02 by name, as detect reads
        names = [str(b).upper() for b in scene.band_names]
        if names != wanted and all(w in names for w in wanted):
            val_scenes[i] = scene.select_bands([scene.band_names[names.index(w)] for w in wanted])
    for scene in val_scenes:
        if len(scene.band_names) != len(meta.band_names):
            raise InputError(
                f"{scene.meta.get('before') or scene.name}: {len(scene.band_names)} bands, but {checkpoint} was "
                f"trained on {len(meta.band_names)} ({', '.join(meta.band_names)}); give scenes with those bands"
            )
        if scene.label is None:
            raise InputError(f"{scene.meta.get('before') or scene.name}: no label; calibration needs labelled scenes")
    norm = {k: v for k, v in (meta.normalization or {}).items() if k in ("mode", "mean", "std")}
    prepared, _ = prepare_scenes(val_scenes, normalization=norm)
    with _torch_settings(threads, True, dev):
        net = net.to(dev)
        _, probs, _ = _validate(net, prepared, None, dev, int(config.get("val_tile_size") or 1024), False)
    return prepared, probs


def cross_calibrate_checkpoint(
    checkpoint: str | Path,
    *,
    val_scenes: Sequence[Scene] | None = None,
    device: str = "cpu",
    threads: int | None = None,
) -> dict[str, Any]:
    """Score a checkpoint's validation scenes, each at the threshold calibrated on the others.

    :func:`changedet.calibration.cross_calibrate` on the checkpoint's probabilities over ``val_scenes`` (by default
    the validation split its training config names), with the threshold method of its training. :func:`train`
    records the same in ``metrics["cross_calibrated"]``; this recomputes it for checkpoints trained before that.
    """
    from changedet.models.checkpoint import load_checkpoint

    net, meta = load_checkpoint(checkpoint)
    if getattr(net, "is_metric", False):
        raise InputError(f"{checkpoint}: a metric model; its cross-calibration is recorded in training")
    prepared, probs = _checkpoint_probabilities(checkpoint, net, meta, val_scenes, torch.device(device), threads)
    method = str((meta.training.get("config") or {}).get("threshold_method") or "f1")
    return cross_calibrate(probs, [s.label for s in prepared], [s.valid for s in prepared], method=method,
                           names=[s.name for s in prepared])


def _calibrate_metric(
    net: nn.Module, distances: list[np.ndarray], labels: list[np.ndarray], valids: list[np.ndarray]
) -> dict[str, Any]:
    """Fit a metric model's ``center``/``scale`` (logistic regression of labels on distances) on validation data."""
    d = np.concatenate([x[v] for x, v in zip(distances, valids, strict=True)])
    t = np.concatenate([lab[v] for lab, v in zip(labels, valids, strict=True)])
    center, scale = net.calibrate(torch.from_numpy(d), torch.from_numpy(t.astype(np.int64)))  # type: ignore[operator]
    return {"center": float(center), "scale": float(scale), "method": "logistic"}


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
