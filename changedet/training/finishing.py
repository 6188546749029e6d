"""The end of a training run: the best weights calibrated, then the checkpoint, ``metrics.csv`` and plots written.

``_calibrate_best`` fits the metric models' distance calibration or Platt scaling and the decision threshold on
the best weights (on rank 0 of a distributed run, into a ``_Calibration``); ``_write_outputs`` folds the
probability calibration into the network and writes every output into the staging folder before moving them into
``out`` (the checkpoint last), returning the run's summary.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from changedet.calibration import (
    Calibration,
    ProbabilityCalibration,
    calibrate_threshold,
    cross_calibrate,
    plot_pr_curve,
)
from changedet.ddp import DistContext, run_on_main
from changedet.training.outputs import _json_safe, _plot_curves, _write_csv
from changedet.training.preparation import _Destination, _TrainData
from changedet.training.recalibration import _calibrate_metric, _fit_platt
from changedet.training.selection import _Selection
from changedet.training.trainer import _Trainer
from changedet.training.validation import _sigmoid, _validate_sharded

log = logging.getLogger("changedet.training")  # the package's logger, as before the split


@dataclass
class _Calibration:
    """What rank 0 fits on the best weights (the other ranks' stays empty: the precision-recall curve is large)."""

    calibration: Calibration = field(init=False)
    platt: ProbabilityCalibration | None = field(init=False)
    metric: dict[str, Any] | None = field(init=False)
    cross: dict[str, Any] | None = field(init=False)


def _calibrate_best(
    trainer: _Trainer,
    data: _TrainData,
    *,
    dev: torch.device,
    val_tile_size: int,
    threshold_method: str,
    probability_calibration: str,
    dctx: DistContext | None,
) -> _Calibration:
    """Predict the validation scenes with the network (holding the best weights), then on rank 0 calibrate its
    outputs (metric models: distance centre and scale; else Platt scaling unless ``probability_calibration`` is
    ``"none"``) and the decision threshold, cross-calibrated with two or more validation scenes."""
    net, prepared_val = trainer.net, data.prepared_val
    is_metric = trainer.is_metric
    calibrated = _Calibration()
    cal_parts = _validate_sharded(net, prepared_val, None, dev, val_tile_size, is_metric, dctx, data.owners)

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
        calibrated.platt = None
        if not is_metric and probability_calibration == "platt":
            calibrated.platt, probs = _fit_platt(probs, labels, valids)
        calibrated.calibration = calibrate_threshold(probs, labels, valids, method=threshold_method)
        calibrated.metric = metric_calibration
        calibrated.cross = None
        if data.has_val and len(probs) >= 2 and threshold_method != "fixed":
            # each validation scene at the threshold of the others: what the calibration gives unseen data
            calibrated.cross = cross_calibrate(probs, labels, valids, method=threshold_method,
                                               names=[s.name for s in prepared_val])

    run_on_main(calibrate, dctx)  # kept on rank 0 (the precision-recall curve is large)
    return calibrated


def _distributed_info(
    dctx: DistContext | None,
    *,
    sync_bn: bool,
    global_batch: int,
    chips_per_rank: list[int] | None,
    digests: list[str] | None,
) -> dict[str, Any] | None:
    """What :attr:`TrainResult.distributed` reports of a distributed run (None for a single process)."""
    if dctx is None:
        return None
    return {**dctx.to_dict(), "sync_bn": bool(sync_bn), "global_batch_size": global_batch,
            "chips_per_rank": chips_per_rank, "weights_digests": digests}


def _write_outputs(
    calibrated: _Calibration,
    trainer: _Trainer,
    data: _TrainData,
    selection: _Selection,
    *,
    destination: _Destination,
    staging: Path,
    history: list[dict[str, Any]],
    epochs_run: int,
    config: dict[str, Any],
    started: float,
    dev: torch.device,
    distributed_info: dict[str, Any] | None,
    digests: list[str] | None,
    model: str,
    name: str,
    checkpoint_name: str,
    description: str,
    plots: bool,
    dctx: DistContext | None,
) -> dict[str, Any]:
    """Write the checkpoint, ``metrics.csv`` and the plots (rank 0 only); the summary that :func:`train` returns.

    The probability calibration is folded into the network's last convolution first, so that the checkpoint's
    outputs are calibrated probabilities.
    """
    from changedet.models import fold_logit_affine
    from changedet.models.checkpoint import CheckpointMeta, checkpoint_paths, save_checkpoint

    out, net, best_epoch = destination.out, trainer.net, selection.best_epoch
    calibration = calibrated.calibration
    metric_calibration = calibrated.metric
    metrics = {
        "calibrated_on": data.calibrated_on,
        "scenes": [s.name for s in data.prepared_val],
        "threshold_method": calibration.method,
        "threshold": calibration.threshold,
        **{k: v for k, v in calibration.metrics.items()},
        "at_0.5": calibration.reference_metrics,
        "average_precision": calibration.to_dict()["average_precision"],
        "best_epoch": best_epoch,
    }
    if metric_calibration is not None:
        metrics["metric_calibration"] = metric_calibration
    if calibrated.cross is not None:
        metrics["cross_calibrated"] = calibrated.cross
    platt = calibrated.platt
    if platt is not None:
        fold_logit_affine(net, platt.scale, platt.bias)  # the checkpoint's outputs are calibrated
        metrics["probability_calibration"] = platt.to_dict()
    training = {
        "config": _json_safe(config),
        "data": data.split_info,
        "epochs_run": epochs_run,
        "best_epoch": best_epoch,
        "best_epoch_by": selection.select_by if data.has_val else "last",
        "pos_weight": trainer.pos_weight,
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
        band_names=data.band_names,
        normalization=data.norm_entry,
        pixel_size=data.pixel_size,
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
                      title=f"{model}: precision-recall on {data.calibrated_on} ({', '.join(metrics['scenes'][:4])})")
        files["pr_curve"] = str(out / "pr_curve.png")
    cpu_net = net.to("cpu").to(memory_format=torch.contiguous_format)  # type: ignore[call-overload]
    staged_weights, staged_json = checkpoint_paths(save_checkpoint(cpu_net, staging / name, meta,
                                                                  overwrite=True))
    for key in ("metrics", "curves", "pr_curve"):
        if key in files:
            os.replace(staging / Path(files[key]).name, files[key])
    os.replace(staged_weights, destination.weights_path)
    os.replace(staged_json, destination.json_path)
    for key, file_name in (("curves", "curves.png"), ("pr_curve", "pr_curve.png")):
        if key not in files:
            (out / file_name).unlink(missing_ok=True)
    checkpoint = destination.weights_path
    files["checkpoint"] = str(checkpoint)
    summary = {"checkpoint": str(checkpoint), "out": str(out), "threshold": float(calibration.threshold),
               "metrics": metrics, "files": files}
    if dctx is not None:
        summary["history"] = history  # rank 0's, so that every rank returns the same result
    return summary
