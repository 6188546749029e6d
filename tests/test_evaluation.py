"""Metrics of changedet.evaluation against hand-computed confusion matrices, PR curves and thresholds."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest

from changedet.errors import InputError
from changedet.evaluation import (
    ConfusionMatrix,
    binarize_truth,
    confusion_matrix,
    evaluate_paths,
    f1_optimal_threshold,
    otsu_threshold,
    pair_files,
    pool,
    precision_recall_curve,
)
from changedet.testing import make_geotiff


def test_confusion_matrix_hand_computed() -> None:
    pred = np.array([[1, 1, 1, 0], [0, 0, 0, 1], [1, 0, 0, 0]])
    truth = np.array([[1, 1, 0, 0], [1, 0, 0, 1], [0, 0, 0, 0]])
    cm = confusion_matrix(pred, truth)
    assert (cm.tp, cm.fp, cm.fn, cm.tn) == (3, 2, 1, 6)
    assert cm.precision == pytest.approx(3 / 5)
    assert cm.recall == pytest.approx(3 / 4)
    assert cm.f1 == pytest.approx(2 * 3 / (2 * 3 + 2 + 1))
    assert cm.iou == pytest.approx(3 / 6)
    assert cm.overall_accuracy == pytest.approx(9 / 12)
    # kappa by hand: p_o = 9/12; p_e = (5*4 + 7*8) / 144 = 76/144
    p_o, p_e = 9 / 12, 76 / 144
    assert cm.kappa == pytest.approx((p_o - p_e) / (1 - p_e))


def test_valid_mask_excludes_pixels() -> None:
    pred = np.array([1, 1, 0, 0])
    truth = np.array([1, 0, 1, 0])
    valid = np.array([True, False, False, True])
    cm = confusion_matrix(pred, truth, valid)
    assert (cm.tp, cm.fp, cm.fn, cm.tn) == (1, 0, 0, 1)
    assert cm.kappa == pytest.approx(1.0)


def test_kappa_of_chance_agreement_is_zero() -> None:
    # prediction independent of truth with matching marginals: p_o == p_e
    cm = ConfusionMatrix(tp=25, fp=25, fn=25, tn=25)
    assert cm.kappa == pytest.approx(0.0)
    assert ConfusionMatrix(tp=0, fp=10, fn=10, tn=0).kappa == pytest.approx(-1.0)


def test_undefined_metrics_are_nan_and_null_in_json() -> None:
    cm = confusion_matrix(np.zeros(5), np.zeros(5))
    assert math.isnan(cm.precision) and math.isnan(cm.recall) and math.isnan(cm.f1)
    assert cm.overall_accuracy == 1.0
    d = cm.to_dict()
    assert d["precision"] is None and d["f1"] is None and d["overall_accuracy"] == 1.0


def test_pooled_differs_from_mean_of_files() -> None:
    a = ConfusionMatrix(tp=9, fp=1, fn=0, tn=90)  # F1 0.947
    b = ConfusionMatrix(tp=1, fp=9, fn=10, tn=80)  # F1 0.095
    pooled = pool([a, b])
    assert (pooled.tp, pooled.fp, pooled.fn, pooled.tn) == (10, 10, 10, 170)
    assert pooled.f1 == pytest.approx(0.5)
    assert pooled.f1 != pytest.approx((a.f1 + b.f1) / 2)


def test_shape_mismatch_is_an_input_error() -> None:
    with pytest.raises(InputError, match="shape"):
        confusion_matrix(np.zeros((2, 2)), np.zeros((2, 3)))


def test_precision_recall_curve_known_values() -> None:
    scores = np.array([0.9, 0.8, 0.8, 0.4, 0.1])
    truth = np.array([1, 1, 0, 1, 0])
    curve = precision_recall_curve(scores, truth)
    assert curve.thresholds.tolist() == [0.9, 0.8, 0.4, 0.1]
    assert curve.precision.tolist() == pytest.approx([1.0, 2 / 3, 3 / 4, 3 / 5])
    assert curve.recall.tolist() == pytest.approx([1 / 3, 2 / 3, 1.0, 1.0])
    # the curve agrees with counting directly at every threshold
    for t, p, r in zip(curve.thresholds, curve.precision, curve.recall, strict=True):
        cm = confusion_matrix(scores >= t, truth)
        assert (cm.precision, cm.recall) == pytest.approx((p, r))


def test_f1_optimal_threshold_on_known_curve() -> None:
    scores = np.array([0.9, 0.8, 0.8, 0.4, 0.1])
    truth = np.array([1, 1, 0, 1, 0])
    t, f1 = f1_optimal_threshold(scores, truth)
    # F1 at 0.9: 0.5, at 0.8: 0.667, at 0.4: 0.857, at 0.1: 0.75 -> best at 0.4, returned midway to 0.1
    assert f1 == pytest.approx(6 / 7)
    assert t == pytest.approx(0.25)
    assert confusion_matrix(scores >= t, truth).f1 == pytest.approx(f1)
    assert confusion_matrix(scores > t, truth).f1 == pytest.approx(f1)


def test_f1_threshold_pools_scenes_and_honours_valid() -> None:
    s1, t1 = np.array([0.9, 0.2]), np.array([1, 0])
    s2, t2 = np.array([0.6, 0.95]), np.array([1, 0])
    v2 = np.array([True, False])  # the false alarm at 0.95 is invalid
    t, f1 = f1_optimal_threshold([s1, s2], [t1, t2], [np.ones(2, bool), v2])
    assert f1 == pytest.approx(1.0)
    assert 0.2 < t < 0.6
    assert math.isnan(f1_optimal_threshold(np.array([0.1, 0.2]), np.array([0, 0]))[0])


def test_otsu_separates_two_modes() -> None:
    rng = np.random.default_rng(0)
    scores = np.concatenate([rng.normal(0.2, 0.03, 900), rng.normal(0.8, 0.03, 100)])
    high = np.arange(scores.size) >= 900
    t = otsu_threshold(scores)
    assert 0.2 < t < 0.7
    assert np.mean((scores >= t) == high) > 0.99
    valid = np.ones_like(scores, dtype=bool)
    valid[900:] = False
    assert otsu_threshold(scores, valid) < 0.3


def test_binarize_truth_oscd_values() -> None:
    change, known = binarize_truth(np.array([0, 1, 2, 2]), change_values=[2], no_change_values=[1])
    assert change.tolist() == [False, False, True, True]
    assert known.tolist() == [False, True, True, True]


def test_evaluate_paths_files_and_folders(tmp_path) -> None:
    truth = np.zeros((20, 20), np.uint8)
    truth[5:10, 5:10] = 1
    pred = np.zeros((20, 20), np.uint8)
    pred[5:10, 5:12] = 1  # 25 TP, 10 FP
    pred[0, :] = 255  # nodata row: ignored
    make_geotiff(tmp_path / "p" / "a.tif", pred, nodata=255, dtype="uint8")
    make_geotiff(tmp_path / "t" / "a.tif", truth * 255, dtype="uint8")
    prob = np.where(truth == 1, 0.9, 0.1).astype(np.float32)
    make_geotiff(tmp_path / "p" / "b.tif", prob, nodata=-1, dtype="float32")
    make_geotiff(tmp_path / "t" / "b.tif", truth * 255, dtype="uint8")

    one = evaluate_paths(tmp_path / "p" / "a.tif", tmp_path / "t" / "a.tif")
    assert (one["pooled"]["tp"], one["pooled"]["fp"], one["pooled"]["fn"]) == (25, 10, 0)
    assert one["pooled"]["pixels"] == 380  # 400 minus the nodata row
    with pytest.raises(InputError, match="threshold"):
        evaluate_paths(tmp_path / "p", tmp_path / "t")
    both = evaluate_paths(tmp_path / "p", tmp_path / "t", threshold=0.5)
    assert [r["truth"].endswith(n) for r, n in zip(both["files"], ("a.tif", "b.tif"), strict=True)] == [True, True]
    assert both["pooled"]["tp"] == 50 and both["pooled"]["fp"] == 10


def test_evaluate_paths_ignore_value_and_grid_check(tmp_path) -> None:
    truth = np.array([[0, 1], [2, 1]], np.uint8)  # 2: unknown
    pred = np.array([[0, 1], [1, 0]], np.uint8)
    make_geotiff(tmp_path / "p.tif", pred, dtype="uint8")
    make_geotiff(tmp_path / "t.tif", truth, dtype="uint8")
    r = evaluate_paths(tmp_path / "p.tif", tmp_path / "t.tif", ignore_value=2, truth_change_values=[1])
    assert (r["pooled"]["tp"], r["pooled"]["fp"], r["pooled"]["fn"], r["pooled"]["tn"]) == (1, 0, 1, 1)
    make_geotiff(tmp_path / "shifted.tif", pred, dtype="uint8", origin=(500010.0, 5700000.0))
    with pytest.raises(InputError, match="grid"):
        evaluate_paths(tmp_path / "shifted.tif", tmp_path / "t.tif")


def test_ignore_value_is_left_out_before_oscd_labels_are_recognised(tmp_path) -> None:
    """0 unknown, 1 no change, 2 change: with ignore_value=0 the rest is OSCD's 1/2, not "non-zero is change"."""
    truth = np.ones((10, 10), np.uint8)
    truth[2:4, 2:4] = 2  # 4 changed pixels
    truth[0, :] = 0  # 10 unknown pixels
    pred = np.zeros((10, 10), np.uint8)
    pred[2:4, 2:5] = 1  # 4 TP, 2 FP
    pred[0, :3] = 1  # on unknown pixels: not scored
    make_geotiff(tmp_path / "p.tif", pred, dtype="uint8")
    make_geotiff(tmp_path / "t.tif", truth, dtype="uint8")
    with pytest.warns(UserWarning, match="OSCD labels"):
        r = evaluate_paths(tmp_path / "p.tif", tmp_path / "t.tif", ignore_value=0)
    assert (r["pooled"]["tp"], r["pooled"]["fp"], r["pooled"]["fn"], r["pooled"]["tn"]) == (4, 2, 0, 84)
    explicit = evaluate_paths(tmp_path / "p.tif", tmp_path / "t.tif", truth_change_values=[2], truth_no_change_values=[1])
    assert explicit["pooled"] == r["pooled"]


def test_a_prediction_whose_nodata_tag_was_lost_keeps_255_as_nodata(tmp_path) -> None:
    """detect's change.tif (0/1, 255 no data) without its nodata tag: 255 is no data, as vectorize reads it."""
    truth = np.zeros((10, 10), np.uint8)
    truth[2:4, 2:4] = 1
    pred = (truth == 1).astype(np.uint8)
    pred[0, 0] = 1  # 1 FP
    pred[6:, :] = 255  # 40 pixels without data
    make_geotiff(tmp_path / "t.tif", truth, dtype="uint8")
    make_geotiff(tmp_path / "tagged.tif", pred, dtype="uint8", nodata=255)
    make_geotiff(tmp_path / "untagged.tif", pred, dtype="uint8")
    tagged = evaluate_paths(tmp_path / "tagged.tif", tmp_path / "t.tif")
    with pytest.warns(UserWarning, match=r"untagged.tif: declares no nodata value .* its 40 pixels of 255 are read as no data"):
        untagged = evaluate_paths(tmp_path / "untagged.tif", tmp_path / "t.tif")
    assert untagged["pooled"] == tagged["pooled"]
    assert (untagged["pooled"]["tp"], untagged["pooled"]["fp"], untagged["pooled"]["tn"]) == (4, 1, 55)
    # a 0/255 mask (no 1s) keeps "non-zero is change", without a warning
    make_geotiff(tmp_path / "m255.tif", np.where(pred == 1, 255, pred).astype(np.uint8), dtype="uint8")
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        r = evaluate_paths(tmp_path / "m255.tif", tmp_path / "t.tif")
    assert (r["pooled"]["tp"], r["pooled"]["fp"], r["pooled"]["tn"]) == (4, 41, 55)


def test_vectorize_and_evaluate_share_the_lost_nodata_rule() -> None:
    from changedet import metrics
    from changedet.vectorize import sources

    assert sources.DETECT_MASK_VALUES == metrics.DETECT_MASK_VALUES == (0, 1, 255)
    assert sources.detect_mask_nodata_count is metrics.detect_mask_nodata_count
    block = np.array([[0, 1], [255, 255]], np.uint8)
    assert metrics.detect_mask_nodata_count([block, block]) == 4
    assert metrics.detect_mask_nodata_count([block, np.array([[2]], np.uint8)]) is None
    assert metrics.detect_mask_nodata_count([np.array([[0, 1]], np.uint8)]) is None


def test_detect_folders_score_the_mask_or_with_a_threshold_the_probability(tmp_path) -> None:
    truth = np.zeros((20, 20), np.uint8)
    truth[5:10, 5:10] = 1
    prob = np.where(truth == 1, 0.6, 0.1).astype(np.float32)
    prob[12:15, 12:15] = 0.3  # 9 pixels that a low threshold calls change and the stored mask does not
    for scene in ("s1", "s2"):
        make_geotiff(tmp_path / "out" / scene / "probability.tif", prob, nodata=-1, dtype="float32")
        make_geotiff(tmp_path / "out" / scene / "change.tif", (prob >= 0.5).astype(np.uint8), nodata=255,
                     dtype="uint8")
        make_geotiff(tmp_path / "truth" / f"{scene}.tif", truth, dtype="uint8")
    make_geotiff(tmp_path / "truth" / "s3.tif", truth, dtype="uint8")  # no prediction for it
    with pytest.warns(UserWarning, match=r"no prediction for 1 of the 3 truth files .*\(s3\)"):
        mask = evaluate_paths(tmp_path / "out", tmp_path / "truth")
    assert [r["pred"].endswith("change.tif") for r in mask["files"]] == [True, True]
    assert (mask["pooled"]["tp"], mask["pooled"]["fp"]) == (50, 0)
    with pytest.warns(UserWarning, match="no prediction"):
        low = evaluate_paths(tmp_path / "out", tmp_path / "truth", threshold=0.2)
        high = evaluate_paths(tmp_path / "out", tmp_path / "truth", threshold=0.9)
    assert all(r["pred"].endswith("probability.tif") for r in low["files"] + high["files"])
    assert (low["pooled"]["tp"], low["pooled"]["fp"]) == (50, 18)  # the threshold reaches the probabilities
    assert (high["pooled"]["tp"], high["pooled"]["fp"]) == (0, 0)
    # <stem>_change.tif beside <stem>_probability.tif in one folder: the same choice
    make_geotiff(tmp_path / "flat" / "s1_change.tif", (prob >= 0.5).astype(np.uint8), dtype="uint8")
    make_geotiff(tmp_path / "flat" / "s1_probability.tif", prob, dtype="float32")
    with pytest.warns(UserWarning, match=r"no prediction for 2 of the 3"):
        pairs = {t.stem: p.name for p, t in pair_files(tmp_path / "flat", tmp_path / "truth")}
        assert pairs == {"s1": "s1_change.tif"}
        pairs = {t.stem: p.name for p, t in pair_files(tmp_path / "flat", tmp_path / "truth", probability=True)}
        assert pairs == {"s1": "s1_probability.tif"}


def test_truth_of_ones_and_twos_is_read_as_oscd_labels(tmp_path) -> None:
    truth = np.ones((10, 10), np.uint8)
    truth[2:4, 2:4] = 2  # 4 changed pixels, the rest 1 (no change)
    pred = np.zeros((10, 10), np.uint8)
    pred[2:4, 2:5] = 1  # 4 TP, 2 FP
    make_geotiff(tmp_path / "p.tif", pred, dtype="uint8")
    make_geotiff(tmp_path / "t.tif", truth, dtype="uint8")
    with pytest.warns(UserWarning, match="OSCD labels"):
        r = evaluate_paths(tmp_path / "p.tif", tmp_path / "t.tif")
    assert (r["pooled"]["tp"], r["pooled"]["fp"], r["pooled"]["fn"], r["pooled"]["tn"]) == (4, 2, 0, 94)
    # explicit values win, and other truths keep "non-zero is change"
    r = evaluate_paths(tmp_path / "p.tif", tmp_path / "t.tif", truth_change_values=[1, 2])
    assert r["pooled"]["tp"] == 6 and r["pooled"]["fn"] == 94
    make_geotiff(tmp_path / "t3.tif", np.where(truth == 2, 3, 1).astype(np.uint8), dtype="uint8")
    assert evaluate_paths(tmp_path / "p.tif", tmp_path / "t3.tif")["pooled"]["fn"] == 94


def test_an_all_ones_truth_beside_oscd_truths_is_no_change(tmp_path) -> None:
    truth = np.ones((10, 10), np.uint8)
    truth[2:4, 2:4] = 2
    pred = np.zeros((10, 10), np.uint8)
    pred[0, 0] = 1  # one false alarm in the city without change
    for d in ("p", "t"):
        (tmp_path / d).mkdir()
    make_geotiff(tmp_path / "p" / "a.tif", (truth == 2).astype(np.uint8), dtype="uint8")
    make_geotiff(tmp_path / "t" / "a.tif", truth, dtype="uint8")
    make_geotiff(tmp_path / "p" / "b.tif", pred, dtype="uint8")
    make_geotiff(tmp_path / "t" / "b.tif", np.ones((10, 10), np.uint8), dtype="uint8")  # OSCD: no change
    with pytest.warns(UserWarning, match="OSCD labels"):
        r = evaluate_paths(tmp_path / "p", tmp_path / "t")
    b = next(f for f in r["files"] if f["truth"].endswith("b.tif"))
    assert (b["tp"], b["fp"], b["fn"], b["tn"]) == (0, 1, 0, 99)
    assert (r["pooled"]["tp"], r["pooled"]["fp"], r["pooled"]["fn"]) == (4, 1, 0)
    # alone, an all-ones truth is all change (non-zero is change)
    alone = evaluate_paths(tmp_path / "p" / "b.tif", tmp_path / "t" / "b.tif")
    assert alone["pooled"]["fn"] == 99


def test_a_multi_band_raster_is_scored_on_band_1_with_a_warning(tmp_path) -> None:
    truth = np.zeros((2, 10, 10), np.uint8)
    truth[0, :5] = 1
    make_geotiff(tmp_path / "t.tif", truth, dtype="uint8")
    make_geotiff(tmp_path / "p.tif", truth[0], dtype="uint8")
    with pytest.warns(UserWarning, match=r"t\.tif: 2 bands; only band 1 is scored"):
        r = evaluate_paths(tmp_path / "p.tif", tmp_path / "t.tif")
    assert r["pooled"]["tp"] == 50 and r["pooled"]["fp"] == 0


def test_pair_files_errors(tmp_path) -> None:
    (tmp_path / "p").mkdir()
    (tmp_path / "t").mkdir()
    make_geotiff(tmp_path / "p" / "x.tif", np.zeros((4, 4)), dtype="uint8")
    make_geotiff(tmp_path / "t" / "y.tif", np.zeros((4, 4)), dtype="uint8")
    with pytest.raises(InputError, match="no file names in common"):
        pair_files(tmp_path / "p", tmp_path / "t")
    with pytest.raises(InputError, match="no such file"):
        pair_files(tmp_path / "missing.tif", tmp_path / "t")


def test_evaluation_does_not_import_torch() -> None:
    code = "import sys, changedet.evaluation; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
