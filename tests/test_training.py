"""Training: a short run that must learn a synthetic change, determinism, calibration, checkpoints, OHEM, detect."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from affine import Affine
from scipy.ndimage import gaussian_filter

from changedet.calibration import calibrate_threshold
from changedet.data import Scene
from changedet.errors import InputError, OutputExistsError
from changedet.evaluation import confusion_matrix
from changedet.training import (
    OHEMLoss,
    _windows,
    build_loss,
    cross_calibrate_checkpoint,
    predict_scene,
    train,
)

BANDS = ["red", "green", "blue"]


def synthetic_scene(seed: int, size: int = 96, *, origin: float = 500000.0) -> Scene:
    """Smooth random texture; AFTER = BEFORE + noise, with bright rectangles (the change) painted in."""
    rng = np.random.default_rng(seed)
    before = gaussian_filter(rng.normal(size=(3, size, size)), (0, 2, 2)).astype(np.float32) * 400 + 1000
    after = before * rng.uniform(0.9, 1.1) + rng.normal(0, 5, before.shape).astype(np.float32)
    label = np.zeros((size, size), np.uint8)
    for _ in range(5):
        r, c = rng.integers(0, size - 12, 2)
        h, w = rng.integers(5, 12, 2)
        label[r : r + h, c : c + w] = 1
    after[:, label == 1] = np.array([[2500.0], [2200.0], [600.0]])
    return Scene(
        name=f"synthetic{seed}", before=before, after=after.astype(np.float32), label=label,
        valid=np.ones((size, size), bool), crs="EPSG:32631", transform=Affine(10, 0, origin, 0, -10, 5700000.0),
        band_names=list(BANDS), pixel_size=10.0,
    )


FAST = {"model": "fc-siam-diff", "chip_size": 32, "batch_size": 8, "chips_per_epoch": 64, "threads": 1,
        "augment": {"flips": True, "rotations": True, "date_swap": 0.5}, "plots": False}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    result = train(out=out, train_scenes=[synthetic_scene(i) for i in range(3)], val_scenes=[synthetic_scene(10)],
                   epochs=5, seed=3, **{**FAST, "plots": True})
    return result


def _normalise(scene: Scene) -> tuple[np.ndarray, np.ndarray]:
    from changedet.data.sampling import band_statistics, normalize_array

    out = []
    for arr in (scene.before, scene.after):
        mean, std = band_statistics(arr, scene.valid)
        out.append(normalize_array(arr, mean, std, scene.valid))
    return out[0], out[1]


def test_short_training_learns_synthetic_change(trained) -> None:
    from changedet.models.checkpoint import load_checkpoint

    model, meta = load_checkpoint(trained.checkpoint, in_channels=3)
    test = synthetic_scene(99)  # never seen: neither trained on nor calibrated on
    before, after = _normalise(test)
    prob = predict_scene(model, before, after)
    cm = confusion_matrix(prob >= meta.threshold, test.label, test.valid)
    assert cm.f1 > 0.9, cm.to_dict()
    assert trained.metrics["f1"] > 0.9


def test_checkpoint_holds_threshold_normalisation_and_metrics(trained) -> None:
    meta = json.loads(trained.checkpoint.with_suffix(".json").read_text())
    assert meta["architecture"] == "fc-siam-diff" and meta["kwargs"]["in_channels"] == 3
    assert meta["band_names"] == BANDS
    assert meta["normalization"] == {"mode": "scene", "mean": [], "std": []}
    assert meta["pixel_size"] == 10.0
    assert 0.0 < meta["threshold"] < 1.0 and meta["threshold"] == pytest.approx(trained.threshold)
    m = meta["metrics"]
    for key in ("f1", "precision", "recall", "iou", "kappa"):
        assert 0.0 <= m[key] <= 1.0
        assert key in m["at_0.5"]
    assert m["scenes"] == ["synthetic10"] and m["calibrated_on"] == "val"
    assert meta["training"]["data"]["train"] == ["synthetic0", "synthetic1", "synthetic2"]
    assert meta["training"]["config"]["seed"] == 3
    # the calibrated threshold is the F1-optimal one: no better F1 at 0.5
    assert m["f1"] >= m["at_0.5"]["f1"] or m["at_0.5"]["f1"] is None
    lines = (trained.out / "metrics.csv").read_text().splitlines()
    assert lines[0].startswith("epoch,lr,train_loss") and len(lines) == 1 + trained.epochs_run
    for name in ("curves.png", "pr_curve.png"):
        assert (trained.out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_checkpoint_probabilities_are_platt_calibrated_and_match_the_threshold(trained) -> None:
    from changedet.calibration import probability_metrics
    from changedet.models.checkpoint import load_checkpoint

    m = trained.metrics
    platt = m["probability_calibration"]
    assert platt["method"] == "platt" and platt["scale"] > 0
    assert platt["after"]["ece"] <= platt["before"]["ece"] and platt["after"]["nll"] <= platt["before"]["nll"]
    # the calibration is folded into the weights: the shipped network's own outputs on the validation scene give
    # the calibration metrics recorded "after", and its threshold gives the recorded F1
    model, meta = load_checkpoint(trained.checkpoint, in_channels=3)
    val = synthetic_scene(10)
    before, after = _normalise(val)
    prob = predict_scene(model, before, after, tile_size=1024)
    got = probability_metrics([prob], [val.label], [val.valid])
    assert got["ece"] == pytest.approx(platt["after"]["ece"], abs=1e-3)
    cm = confusion_matrix(prob >= meta.threshold, val.label, val.valid)
    assert cm.f1 == pytest.approx(m["f1"], abs=1e-3)


def test_calibrating_a_calibrated_checkpoint_again_changes_nothing(trained, tmp_path) -> None:
    from changedet.training import calibrate_checkpoint

    with pytest.raises(InputError, match="names no dataset"):  # trained from scenes in memory, not a dataset spec
        calibrate_checkpoint(trained.checkpoint, tmp_path / "a")
    got = calibrate_checkpoint(trained.checkpoint, tmp_path / "b", val_scenes=[synthetic_scene(10)])
    platt = got["probability_calibration"]
    assert platt["scale"] == pytest.approx(1.0, abs=0.05) and platt["bias"] == pytest.approx(0.0, abs=0.05)
    assert got["f1"] == pytest.approx(trained.metrics["f1"], abs=1e-6)
    with pytest.raises(OutputExistsError):
        calibrate_checkpoint(trained.checkpoint, tmp_path / "b", val_scenes=[synthetic_scene(10)])


def test_same_seed_gives_identical_weights(tmp_path) -> None:
    from safetensors.torch import load_file

    scenes = [synthetic_scene(1), synthetic_scene(2)]
    kwargs = {**FAST, "epochs": 1, "chips_per_epoch": 16}
    a = train(out=tmp_path / "a", train_scenes=scenes, val_scenes=[synthetic_scene(5)], seed=7, **kwargs)
    b = train(out=tmp_path / "b", train_scenes=scenes, val_scenes=[synthetic_scene(5)], seed=7, **kwargs)
    c = train(out=tmp_path / "c", train_scenes=scenes, val_scenes=[synthetic_scene(5)], seed=8, **kwargs)
    wa, wb, wc = (load_file(str(r.checkpoint)) for r in (a, b, c))
    assert wa.keys() == wb.keys()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert not all(torch.equal(wa[k], wc[k]) for k in wa)
    assert a.threshold == b.threshold


def test_fixed_normalisation_stored_and_outputs_not_overwritten(tmp_path) -> None:
    scenes = [synthetic_scene(1)]
    result = train(out=tmp_path, train_scenes=scenes, val_scenes=[synthetic_scene(2)], epochs=1,
                   normalization="fixed", loss="bce+dice", **{**FAST, "chips_per_epoch": 8})
    meta = json.loads(result.checkpoint.with_suffix(".json").read_text())
    norm = meta["normalization"]
    assert norm["mode"] == "fixed" and len(norm["mean"]) == len(norm["std"]) == 3
    both = np.concatenate([scenes[0].before, scenes[0].after], axis=2)
    np.testing.assert_allclose(norm["mean"], both.mean(axis=(1, 2)), rtol=1e-4)
    with pytest.raises(OutputExistsError, match="earlier run"):
        train(out=tmp_path, train_scenes=scenes, epochs=1, **{**FAST, "chips_per_epoch": 8})


def test_metric_model_with_contrastive_loss_is_calibrated(tmp_path) -> None:
    result = train(out=tmp_path, train_scenes=[synthetic_scene(1)], val_scenes=[synthetic_scene(2)],
                   epochs=2, loss="contrastive", loss_kwargs={"margin": 1.0},
                   **{**FAST, "model": "metric-siam", "chips_per_epoch": 16})
    meta = json.loads(result.checkpoint.with_suffix(".json").read_text())
    cal = meta["metrics"]["metric_calibration"]
    assert cal["scale"] > 0
    from safetensors.torch import load_file

    weights = load_file(str(result.checkpoint))
    assert float(weights["center"]) == pytest.approx(cal["center"], rel=1e-5)
    assert float(weights["scale"]) == pytest.approx(cal["scale"], rel=1e-5)
    assert 0.0 <= meta["threshold"] <= 1.0
    # the recorded config holds train()'s arguments only (no imported helper), so it can be given back to train()
    assert "flush_denormals" not in meta["training"]["config"]
    assert all("<function" not in str(v) for v in meta["training"]["config"].values())


def test_a_metric_loss_distance_other_than_the_models_is_refused(tmp_path) -> None:
    with pytest.raises(InputError, match=r"distance 'cosine' differs from the model's distance 'l2'"):
        train(out=tmp_path / "x", train_scenes=[synthetic_scene(1)], epochs=1, loss="contrastive",
              loss_kwargs={"distance": "cosine"}, model_kwargs={"distance": "l2"},
              **{**FAST, "model": "metric-siam", "chips_per_epoch": 8})
    assert not (tmp_path / "x" / "model.safetensors").exists()


def test_ema_validates_calibrates_and_saves_the_averaged_weights(tmp_path) -> None:
    from safetensors.torch import load_file

    scenes = [synthetic_scene(i) for i in range(3)]
    kwargs = {**FAST, "epochs": 4, "seed": 5, "probability_calibration": "none"}
    # the average does not steer training: without validation scenes the checkpoint holds the last step's weights,
    # or their moving average, and a decay near 0 averages nothing away
    raw = train(out=tmp_path / "raw", train_scenes=scenes, **kwargs)
    near = train(out=tmp_path / "near", train_scenes=scenes, ema=1e-9, **kwargs)
    avg = train(out=tmp_path / "avg", train_scenes=scenes, ema=0.9, **kwargs)
    w_raw, w_near, w_avg = (load_file(str(r.checkpoint)) for r in (raw, near, avg))
    floats = [k for k in w_raw if w_raw[k].is_floating_point()]
    assert w_raw.keys() == w_avg.keys() and floats
    assert all(torch.allclose(w_raw[k], w_near[k], atol=1e-6) for k in floats)
    changed = [k for k in floats if not torch.allclose(w_raw[k], w_avg[k], atol=1e-4)]
    assert len(changed) > len(floats) // 2  # weights and batch-norm statistics are both averaged
    config = [json.loads(r.checkpoint.with_suffix(".json").read_text())["training"]["config"] for r in (raw, avg)]
    assert config[0]["ema"] is None and config[1]["ema"] == 0.9
    # calibrated on the (three) training scenes: no cross-calibration of scenes the network was trained on
    assert raw.metrics["calibrated_on"] == "train" and "cross_calibrated" not in raw.metrics
    # the averaged network is the one validated and shipped, and it has learnt the change
    learnt = train(out=tmp_path / "val", train_scenes=scenes, val_scenes=[synthetic_scene(10)], ema=0.9,
                   **{**kwargs, "epochs": 5, "seed": 3})
    from changedet.models.checkpoint import load_checkpoint

    model, meta = load_checkpoint(learnt.checkpoint, in_channels=3)
    test = synthetic_scene(99)
    before, after = _normalise(test)
    cm = confusion_matrix(predict_scene(model, before, after) >= meta.threshold, test.label, test.valid)
    assert cm.f1 > 0.9, cm.to_dict()


def test_two_validation_scenes_are_also_scored_at_each_others_threshold(trained, tmp_path) -> None:
    from changedet.models.checkpoint import load_checkpoint

    assert "cross_calibrated" not in trained.metrics  # one validation scene: nothing to transfer a threshold from
    val = [synthetic_scene(10), synthetic_scene(11)]
    result = train(out=tmp_path, train_scenes=[synthetic_scene(i) for i in range(3)], val_scenes=val,
                   epochs=2, seed=3, **FAST)
    cross = json.loads(result.checkpoint.with_suffix(".json").read_text())["metrics"]["cross_calibrated"]
    assert cross["method"] == "f1" and list(cross["scenes"]) == ["synthetic10", "synthetic11"]
    # the shipped network's probabilities on one scene give the threshold the other scene was scored at
    model, _ = load_checkpoint(result.checkpoint, in_channels=3)
    probs = [predict_scene(model, *_normalise(s), tile_size=1024) for s in val]
    for i, j in ((0, 1), (1, 0)):
        other = calibrate_threshold([probs[j]], [val[j].label], [val[j].valid])
        got = cross["scenes"][val[i].name]
        assert got["threshold"] == pytest.approx(other.threshold, abs=1e-4)
        cm = confusion_matrix(probs[i] >= got["threshold"], val[i].label, val[i].valid)
        assert cm.f1 == pytest.approx(got["f1"], abs=1e-3)
    assert 0.0 <= cross["pooled"]["f1"] <= 1.0
    # recomputed from the checkpoint alone (for checkpoints trained before train() recorded it): the same figures
    again = cross_calibrate_checkpoint(result.checkpoint, val_scenes=val)
    for name in cross["scenes"]:
        assert again["scenes"][name]["threshold"] == pytest.approx(cross["scenes"][name]["threshold"], abs=1e-4)
    assert again["pooled"]["f1"] == pytest.approx(cross["pooled"]["f1"], abs=1e-3)
    with pytest.raises(InputError, match="names no dataset"):
        cross_calibrate_checkpoint(result.checkpoint)


def test_bad_options_are_input_errors(tmp_path) -> None:
    scenes = [synthetic_scene(1)]
    with pytest.raises(InputError, match="optimizer"):
        train(out=tmp_path, train_scenes=scenes, optimizer="lbfgs")
    with pytest.raises(InputError, match="probability_calibration"):
        train(out=tmp_path, train_scenes=scenes, probability_calibration="isotonic")
    with pytest.raises(InputError, match="metric model"):
        train(out=tmp_path, train_scenes=scenes, loss="triplet", **{**FAST, "epochs": 1})
    with pytest.raises(InputError, match="no training data"):
        train(out=tmp_path)
    for bad in (1.0, 0, -0.5, "0.99", True):
        with pytest.raises(InputError, match="ema must be a decay"):
            train(out=tmp_path, train_scenes=scenes, ema=bad)
    with pytest.raises(InputError, match="ohem"):
        build_loss("dice", ohem=0.5)


def test_ohem_keeps_only_the_hardest_pixels() -> None:
    loss = OHEMLoss("bce", keep=0.25, min_kept=1)
    logits = torch.tensor([5.0, -5.0, 0.0, -3.0]).view(1, 1, 2, 2)
    target = torch.tensor([1.0, 0.0, 1.0, 1.0]).view(1, 1, 2, 2)
    valid = torch.ones_like(target, dtype=torch.bool)
    # per-pixel BCE: ~0.0067, ~0.0067, 0.693, ~3.049 -> the hardest quarter is the last pixel alone
    expected = float(torch.nn.functional.softplus(torch.tensor(3.0)))
    assert float(loss(logits, target, valid)) == pytest.approx(expected, rel=1e-5)
    valid[0, 0, 1, 1] = False  # the hardest pixel is invalid: the next one is kept
    assert float(loss(logits, target, valid)) == pytest.approx(float(np.log(2)), rel=1e-5)
    weighted = OHEMLoss("bce", keep=1.0, pos_weight=2.0)
    plain = OHEMLoss("bce", keep=1.0)
    assert float(weighted(logits, target, valid)) > float(plain(logits, target, valid))


def test_calibration_on_known_pr_curve() -> None:
    scores = np.array([[0.95, 0.7, 0.6], [0.55, 0.3, 0.1]])
    truth = np.array([[1, 1, 0], [1, 0, 0]])
    cal = calibrate_threshold([scores], [truth], method="f1")
    # F1 by threshold: .95 -> .5, .7 -> .8, .6 -> .714, .55 -> .857, .3 -> .75, .1 -> .667
    assert cal.threshold == pytest.approx((0.55 + 0.3) / 2)
    assert cal.metrics["f1"] == pytest.approx(6 / 7)
    assert cal.reference_metrics["f1"] == pytest.approx(2 * 3 / (2 * 3 + 1 + 0))
    otsu = calibrate_threshold([scores], [truth], method="otsu")
    assert 0.1 < otsu.threshold < 0.95 and otsu.method == "otsu"
    fixed = calibrate_threshold([scores], [truth], method="fixed", fixed=0.65)
    assert fixed.threshold == 0.65 and fixed.metrics["tp"] == 2


@pytest.mark.parametrize(("n", "tile", "overlap"), [(100, 1024, 64), (1000, 256, 32), (257, 256, 16), (700, 300, 50)])
def test_tiled_prediction_windows_cover_every_pixel_once(n: int, tile: int, overlap: int) -> None:
    count = np.zeros(n, int)
    for start, keep_from, keep_to in _windows(n, tile, overlap):
        assert start <= keep_from < keep_to <= min(start + tile, n)
        count[keep_from:keep_to] += 1
    assert (count == 1).all()


def test_tiled_and_whole_scene_prediction_agree_inside(trained) -> None:
    from changedet.models.checkpoint import load_checkpoint

    model, _ = load_checkpoint(trained.checkpoint, in_channels=3)
    before, after = _normalise(synthetic_scene(42, size=128))
    whole = predict_scene(model, before, after, tile_size=1024)
    tiled = predict_scene(model, before, after, tile_size=80, overlap=16)
    assert np.mean(np.abs(whole - tiled) < 0.05) > 0.95


def test_checkpoint_round_trip_through_detect(trained, tmp_path) -> None:
    from changedet.api import detect
    from changedet.testing import make_geotiff

    scene = synthetic_scene(77, size=128)
    b = make_geotiff(tmp_path / "before.tif", scene.before, transform=scene.transform, dtype="float32",
                     descriptions=BANDS)
    a = make_geotiff(tmp_path / "after.tif", scene.after, transform=scene.transform, dtype="float32",
                     descriptions=BANDS)
    result = detect(b, a, model=trained.checkpoint, output_dir=tmp_path / "out", vectorize=False, quicklook=False)
    import rasterio

    with rasterio.open(tmp_path / "out" / "change.tif") as ds:
        change = ds.read(1)
    cm = confusion_matrix(change == 1, scene.label, change != 255)
    assert cm.f1 > 0.85, cm.to_dict()
    assert result is not None


def test_training_curves_draw_validation_scores_validated_every_other_epoch() -> None:
    from changedet.training import _curves_figure

    history = [{"epoch": e, "train_loss": 1.0 / e, **({"val_loss": 0.5, "val_f1": 0.1 * e, "val_f1_best": 0.12 * e,
                                                       "val_iou": 0.05 * e} if e % 2 == 0 else
                                                      {"val_loss": None, "val_f1": None, "val_f1_best": None,
                                                       "val_iou": None})}
               for e in range(1, 9)]
    fig = _curves_figure(history, best_epoch=6)
    losses, scores = fig.axes
    lines = {ln.get_label(): ln for ln in scores.get_lines()}
    # every validated epoch is a visible point: no NaN gaps that would leave nothing drawn
    assert list(lines["val F1 @0.5"].get_xdata()) == [2, 4, 6, 8]
    np.testing.assert_allclose(lines["val F1 @best threshold"].get_ydata(), [0.24, 0.48, 0.72, 0.96])
    assert lines["val F1 @0.5"].get_marker() == "o"
    assert list(lines["best epoch 6"].get_xdata()) == [6, 6]
    train = {ln.get_label(): ln for ln in losses.get_lines()}
    assert len(train["train loss"].get_xdata()) == 8 and len(train["validation loss"].get_xdata()) == 4


def test_training_and_prediction_flush_subnormal_floats(tmp_path, monkeypatch) -> None:
    """Subnormal gradients slow convolution backward passes many times over: train() and detect flush them."""
    import changedet.models as models
    from changedet.inference import TorchPredictor

    supported = torch.set_flush_denormal(False)
    seen: list[bool] = []
    real_create = models.create_model

    def create_spying(*args, **kwargs):
        model = real_create(*args, **kwargs)
        model.register_forward_pre_hook(lambda *_: seen.append(bool(torch.tensor([1e-39]) * 1.0 == 0)))
        return model

    monkeypatch.setattr(models, "create_model", create_spying)
    train(out=tmp_path / "run", train_scenes=[synthetic_scene(1)], val_scenes=[synthetic_scene(5)], seed=0,
          **{**FAST, "epochs": 1, "chips_per_epoch": 16})
    assert seen and all(s == supported for s in seen)
    assert not bool(torch.tensor([1e-39]) * 1.0 == 0)  # switched off again after the run

    seen.clear()
    net = create_spying("fc-siam-diff", in_channels=3)
    predictor = TorchPredictor(net, [0.0] * 3, [1.0] * 3, [0.0] * 3, [1.0] * 3)
    x = np.zeros((1, 3, 32, 32), np.float32)
    predictor.predict(x, x, np.ones((1, 32, 32), bool))
    assert seen == [supported]
