"""Probability calibration: logistic fit, calibration metrics, Platt scaling, and folding it into a network."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from changedet.calibration import (
    calibrate_probabilities,
    calibrate_threshold,
    cross_calibrate,
    fit_logistic,
    probability_metrics,
)
from changedet.errors import InputError, ModelError
from changedet.models import create_model, fold_logit_affine


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def test_logistic_fit_recovers_the_generating_parameters() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(0.0, 2.0, 400_000)
    y = rng.random(x.size) < _sigmoid(1.5 * x - 2.0)
    slope, intercept = fit_logistic(x, y)
    assert slope == pytest.approx(1.5, abs=0.03)
    assert intercept == pytest.approx(-2.0, abs=0.03)


def test_logistic_fit_needs_both_classes() -> None:
    with pytest.raises(InputError, match="both changed and unchanged"):
        fit_logistic(np.arange(5.0), np.zeros(5))


def test_probability_metrics_by_hand() -> None:
    p = np.array([[0.2, 0.2], [0.7, 0.7]])
    t = np.array([[0, 1], [1, 1]])
    m = probability_metrics([p], [t], bins=10)
    # bin [0.2, 0.3): mean p 0.2, frequency 0.5; bin [0.7, 0.8): mean p 0.7, frequency 1.0; half the pixels each
    assert m["ece"] == pytest.approx(0.5 * 0.3 + 0.5 * 0.3)
    assert m["brier"] == pytest.approx((0.04 + 0.64 + 0.09 + 0.09) / 4)
    assert m["nll"] == pytest.approx(-(math.log(0.8) + math.log(0.2) + 2 * math.log(0.7)) / 4)
    assert m["mean_probability"] == pytest.approx(0.45) and m["change_fraction"] == pytest.approx(0.75)


def test_probability_metrics_ignore_invalid_and_ignored_pixels() -> None:
    p = np.array([0.9, 0.1, 0.5, 0.5])
    t = np.array([1, 0, 255, 1])
    valid = np.array([True, True, True, False])
    m = probability_metrics([p], [t], [valid])
    assert m["change_fraction"] == 0.5 and m["mean_probability"] == pytest.approx(0.5)


def test_platt_scaling_turns_low_scores_into_probabilities_without_reordering() -> None:
    rng = np.random.default_rng(1)
    z = rng.normal(-3.0, 2.0, (400, 500))  # true logits: about 10 % change
    truth = (rng.random(z.shape) < _sigmoid(z)).astype(np.uint8)
    scores = _sigmoid(0.5 * z - 3.0).astype(np.float32)  # a network whose outputs stay far too low
    valid = np.ones(z.shape, bool)
    valid[:10] = False
    cal = calibrate_probabilities([scores], [truth], [valid], max_pixels=50_000)
    assert cal.scale == pytest.approx(2.0, rel=0.05) and cal.bias == pytest.approx(6.0, rel=0.05)
    assert cal.before["ece"] > 0.05 and cal.after["ece"] < 0.01
    assert cal.after["nll"] < cal.before["nll"] and cal.after["brier"] < cal.before["brier"]
    assert cal.after["mean_probability"] == pytest.approx(cal.after["change_fraction"], abs=0.005)
    out = cal.apply(scores)
    order = np.argsort(scores[10:].ravel(), kind="stable")
    assert (np.diff(out[10:].ravel()[order]) >= 0).all()  # same ranking, so the same precision-recall curve
    nan = cal.apply(np.array([np.nan, 0.5], np.float32))
    assert np.isnan(nan[0]) and np.isfinite(nan[1])
    assert cal.to_dict()["method"] == "platt"


def test_platt_scaling_refuses_reversed_scores() -> None:
    rng = np.random.default_rng(2)
    truth = (rng.random(10_000) < 0.3).astype(np.uint8)
    scores = np.where(truth == 1, 0.2, 0.8) + rng.normal(0, 0.05, truth.size)
    with pytest.raises(InputError, match="not more often changed"):
        calibrate_probabilities([np.clip(scores, 0.01, 0.99)], [truth])
    with pytest.raises(InputError, match="unknown probability calibration"):
        calibrate_probabilities([scores], [truth], method="isotonic")


@pytest.mark.parametrize("name", ["fc-ef", "fc-siam-diff", "fc-siam-conc", "siam-unet", "bit"])
def test_fold_logit_affine_rescales_the_output_of_every_logit_architecture(name: str) -> None:
    torch.manual_seed(0)
    model = create_model(name, in_channels=4).train()
    x, y = torch.randn(2, 4, 40, 56), torch.randn(2, 4, 40, 56)
    model.eval()
    with torch.no_grad():
        reference = model(x, y)
    model.train()
    running = {k: v.clone() for k, v in model.state_dict().items() if "running" in k}
    fold_logit_affine(model, 1.7, -2.3)
    assert model.training  # mode restored
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in running.items())  # no batch-norm update
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(x, y), 1.7 * reference - 2.3, atol=1e-4, rtol=1e-4)


def test_fold_logit_affine_refuses_metric_models_and_bad_parameters() -> None:
    with pytest.raises(ModelError, match="metric models"):
        fold_logit_affine(create_model("metric-siam", in_channels=3), 1.0, 0.0)
    with pytest.raises(ModelError, match="scale > 0"):
        fold_logit_affine(create_model("fc-ef", in_channels=3), -1.0, 0.0)


def test_cross_calibration_scores_each_scene_at_the_other_scenes_threshold() -> None:
    # three scenes whose own best thresholds differ; each is scored at the threshold fitted on the other two
    a = np.array([[0.95, 0.85, 0.80, 0.10]])
    b = np.array([[0.60, 0.55, 0.30, 0.20]])
    c = np.array([[0.40, 0.35, 0.05, np.nan]])  # NaN: no score (outside the scene), never counted
    truth = [np.array([[1, 1, 0, 0]]), np.array([[1, 1, 0, 0]]), np.array([[1, 0, 0, 1]])]
    valid = [np.ones((1, 4), bool), np.array([[True, True, True, False]]), np.ones((1, 4), bool)]
    out = cross_calibrate([a, b, c], truth, valid, names=["a", "b", "c"])
    assert out["method"] == "f1" and list(out["scenes"]) == ["a", "b", "c"]
    tp = fp = fn = 0
    for i, name in enumerate("abc"):
        rest = [k for k in range(3) if k != i]
        cal = calibrate_threshold([[a, b, c][k] for k in rest], [truth[k] for k in rest], [valid[k] for k in rest])
        got = out["scenes"][name]
        assert got["threshold"] == pytest.approx(cal.threshold)
        score = [a, b, c][i][0]
        keep = valid[i][0] & np.isfinite(score)
        pred = (np.nan_to_num(score, nan=-1) >= cal.threshold) & keep
        t = truth[i][0].astype(bool) & keep
        assert (got["tp"], got["fp"], got["fn"]) == (int((pred & t).sum()), int((pred & ~t).sum()),
                                                    int((~pred & t).sum()))
        tp, fp, fn = tp + got["tp"], fp + got["fp"], fn + got["fn"]
    assert out["pooled"]["f1"] == pytest.approx(2 * tp / (2 * tp + fp + fn))
    # each scene alone is separable, but the transferred thresholds are not all right
    assert out["pooled"]["f1"] < 1.0
    assert calibrate_threshold([a], [truth[0]]).metrics["f1"] == 1.0
    with pytest.raises(InputError, match="at least two scenes"):
        cross_calibrate([a], [truth[0]])


@pytest.mark.parametrize("kwargs,message", [
    ({"threads": -1}, r"threads must be a whole number from 1 to 512 .*got -1"),  # was torch's RuntimeError
    ({"threads": 0}, r"threads must be a whole number from 1 to 512 .*got 0"),
    ({"device": "cuda"}, r"device 'cuda' requested but CUDA is not available; use device='cpu'"),
    ({"device": "gpu"}, r"unknown device 'gpu'; use 'cpu', 'cuda' or 'cuda:N'"),
])
def test_calibrate_checkpoint_checks_threads_and_device_as_train_does(tmp_path, monkeypatch, kwargs, message) -> None:
    from changedet.errors import exit_code_for
    from changedet.training import calibrate_checkpoint, cross_calibrate_checkpoint

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    missing = tmp_path / "model.safetensors"  # checked before the checkpoint is read
    with pytest.raises(InputError, match=message) as info:
        calibrate_checkpoint(missing, tmp_path / "out.safetensors", **kwargs)
    assert exit_code_for(info.value) == 2 and not (tmp_path / "out.safetensors").exists()
    with pytest.raises(InputError, match=message):
        cross_calibrate_checkpoint(missing, **kwargs)
