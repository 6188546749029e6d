"""The model or method of a series run (:func:`~changedet.series.detect_series`): one predictor per pair, each
with its threshold and what it was fitted with, and the ``model`` entry of ``report.json``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from changedet.series.stack import SeriesStack


def _pair_predictors(stack: SeriesStack, pairs_idx: Sequence[tuple[int, int]], *, method: str, net: Any, meta: Any,
                     threshold: float | None, device: str, precision: str,
                     tta: str) -> tuple[list[Any], list[float], list[dict[str, Any]]]:
    """One predictor per pair with its threshold and what it was fitted with: the network normalised with the
    checkpoint's statistics or each pair's own (``"scene"``), or the unsupervised method fitted on each pair."""
    from changedet.api import _sample_for_fit
    from changedet.inference import ScorerPredictor, TorchPredictor

    predictors: list[Any] = []
    thresholds: list[float] = []
    methods: list[dict[str, Any]] = []
    for i, j in pairs_idx:
        view = stack.pair(i, j)
        if method == "model":
            from changedet.io.radiometry import band_stats

            norm = meta.normalization or {"mode": "scene"}
            if norm.get("mode") == "fixed":
                mb, sb, ma, sa = norm["mean"], norm["std"], norm["mean"], norm["std"]
            else:
                mb, sb = band_stats(view, which="before")
                ma, sa = band_stats(view, which="after")
            predictors.append(TorchPredictor(net, mb, sb, ma, sa, device=device, precision=precision,
                                             name=meta.name or meta.architecture, tta=tta))
            thresholds.append(float(meta.threshold if threshold is None else threshold))
            methods.append({"normalization": norm.get("mode"),
                            "before_mean": [round(float(x), 4) for x in mb],
                            "after_mean": [round(float(x), 4) for x in ma]})
        else:
            from changedet.unsupervised import create_scorer

            scorer = create_scorer(method)
            b, a, v = _sample_for_fit(view)
            scorer.fit(b, a, v)
            predictors.append(ScorerPredictor(scorer))
            thresholds.append(float(scorer.threshold if threshold is None else threshold))
            methods.append({"fitted": scorer.to_dict()})
    return predictors, thresholds, methods


def _model_report(method: str, meta: Any, checkpoint: Any, thresholds: Sequence[float], *, precision: str, tta: str,
                  device: str) -> dict[str, Any]:
    """The report's ``model``: the network's name, checkpoint, bands and run options, or the method's."""
    if method == "model":
        return {
            "method": "model", "name": meta.name or None, "architecture": meta.architecture,
            "checkpoint": str(checkpoint) if checkpoint else (meta.name or None),
            "band_names": meta.band_names, "calibrated_threshold": meta.threshold,
            "metrics": meta.metrics, "precision": precision, "tta": tta,
            "device": device,
        }
    return {"method": method, "name": method, "calibrated_threshold": thresholds[0]}
