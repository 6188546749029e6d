"""Calibration of trained networks: the final step of :func:`changedet.training.train` and existing checkpoints.

``_fit_platt`` (Platt scaling of logit models) and ``_calibrate_metric`` (``center``/``scale`` of metric models) run
on the validation predictions at the end of training; :func:`calibrate_checkpoint` adds probability calibration to
a saved checkpoint and :func:`cross_calibrate_checkpoint` scores its validation scenes at thresholds calibrated on
the others.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from changedet.calibration import (
    ProbabilityCalibration,
    _pooled_metrics,
    calibrate_probabilities,
    calibrate_threshold,
    cross_calibrate,
)
from changedet.data.generic import Scene
from changedet.data.sampling import PreparedScene, prepare_scenes
from changedet.errors import InputError, OutputExistsError
from changedet.training.checks import _check_threads
from changedet.training.outputs import _json_safe
from changedet.training.runtime import _check_device, _torch_settings
from changedet.training.validation import _validate

log = logging.getLogger("changedet.training")  # the package's logger, as before the split


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
    device : str
        ``cpu``, ``cuda``, ``cuda:1``... (an :class:`InputError` where CUDA is not available, as in :func:`train`).
    threads : int, optional
        torch threads while the network runs: 1 to 512, or None for torch's choice.

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
        scores that do not rank change first); an unknown or unavailable device, or threads outside 1..512.
    OutputExistsError
        ``out`` exists and ``overwrite`` is false.
    """
    from changedet.models import fold_logit_affine
    from changedet.models.checkpoint import checkpoint_paths, load_checkpoint, save_checkpoint

    _check_threads(threads)
    dev = _check_device(device)
    if Path(out).is_dir():
        raise InputError(f"{out}: a folder; give the new checkpoint's file name, e.g. {Path(out) / 'model.safetensors'}")
    weights_out, json_out = checkpoint_paths(out)
    existing = [p for p in (weights_out, json_out) if p.exists()]
    if existing and not overwrite:
        raise OutputExistsError(f"{existing[0]} exists; pass overwrite=True (--overwrite) to replace it")
    net, meta = load_checkpoint(checkpoint)
    if getattr(net, "is_metric", False):
        raise InputError(f"{checkpoint}: a metric model; its distances are calibrated (center/scale) in training")
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

    _check_threads(threads)
    dev = _check_device(device)
    net, meta = load_checkpoint(checkpoint)
    if getattr(net, "is_metric", False):
        raise InputError(f"{checkpoint}: a metric model; its cross-calibration is recorded in training")
    prepared, probs = _checkpoint_probabilities(checkpoint, net, meta, val_scenes, dev, threads)
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
