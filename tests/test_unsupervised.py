"""Unsupervised change detection (changedet.unsupervised): CVA, IR-MAD and DSFA on synthetic pairs with known changes."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys

import numpy as np
import pytest

from changedet.errors import InputError, PairMismatchError
from changedet.unsupervised import (
    CVA,
    IRMAD,
    ChangeScorer,
    auto_threshold,
    create_scorer,
    list_methods,
    ratio_probability,
)

METHODS = ["cva", "irmad", "dsfa"]
# Small DSFA settings keep the suite fast; the defaults are exercised by the real-data tests.
FAST = {"cva": {}, "irmad": {}, "dsfa": {"epochs": 100, "n_train": 1500, "hidden": (32, 32)}}


def make_scene(
    shape: tuple[int, int] = (96, 96),
    bands: int = 4,
    seed: int = 0,
    noise: float = 15.0,
    dtype: str = "float32",
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """An easy synthetic pair: land-cover patches, a per-band gain/offset between the dates, noise, painted blocks.

    Returns (before, after, truth) with before/after (band, row, col) of ``dtype`` and truth bool (row, col).
    """
    rng = np.random.default_rng(seed)
    h, w = shape
    n_classes = 5
    spectra = rng.uniform(800, 3000, (n_classes, bands))
    cells = rng.integers(0, n_classes, (h // 12 + 1, w // 12 + 1))
    cover = np.kron(cells, np.ones((12, 12), dtype=int))[:h, :w]
    before = spectra[cover].transpose(2, 0, 1) + rng.normal(0, noise, (bands, h, w))
    gain = rng.uniform(0.7, 1.4, (bands, 1, 1))
    offset = rng.uniform(-200, 300, (bands, 1, 1))
    after_ground = spectra[cover].transpose(2, 0, 1).copy()
    truth = np.zeros(shape, dtype=bool)
    # Spectrally distinct new surfaces (bright in even bands, dark in odd ones) painted into AFTER.
    new = np.where(np.arange(bands) % 2 == 0, 4200.0, 200.0)
    for r0, c0, hh, ww in [(8, 8, 14, 20), (50, 30, 18, 12), (70, 70, 12, 16), (20, 60, 10, 10)]:
        r0, c0 = r0 * h // 96, c0 * w // 96
        after_ground[:, r0 : r0 + hh, c0 : c0 + ww] = new[:, None, None]
        truth[r0 : r0 + hh, c0 : c0 + ww] = True
    after = gain * after_ground + offset + rng.normal(0, noise, (bands, h, w))
    if np.issubdtype(np.dtype(dtype), np.integer):
        info = np.iinfo(dtype)
        before = np.clip(np.round(before), info.min, info.max)
        after = np.clip(np.round(after), info.min, info.max)
    return before.astype(dtype), after.astype(dtype), truth


def f1_score(mask: np.ndarray, truth: np.ndarray) -> float:
    tp = float(np.sum(mask & truth))
    fp = float(np.sum(mask & ~truth))
    fn = float(np.sum(~mask & truth))
    return 2 * tp / max(2 * tp + fp + fn, 1.0)


@pytest.fixture(autouse=True)
def _one_torch_thread():
    # DSFA trains a tiny network: one thread is fastest, and two threads on a loaded 2-core CI machine are ~10x
    # slower (spinning). Function scope, so that it runs after conftest's per-test thread setting.
    torch = pytest.importorskip("torch")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def scene() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return make_scene()


@pytest.fixture(scope="module")
def fitted(scene: tuple[np.ndarray, np.ndarray, np.ndarray]) -> dict[str, ChangeScorer]:
    before, after, _ = scene
    valid = np.ones(before.shape[1:], dtype=bool)
    return {m: create_scorer(m, **FAST[m]).fit(before, after, valid) for m in METHODS}


# -- finding the changes -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", METHODS)
def test_finds_painted_blocks(method: str, scene, fitted) -> None:
    before, after, truth = scene
    scorer = fitted[method]
    p = scorer.predict(before, after, np.ones(truth.shape, dtype=bool))
    assert p.dtype == np.float32 and p.shape == truth.shape
    assert np.isfinite(p).all() and p.min() >= 0.0 and p.max() <= 1.0
    f1 = f1_score(p >= scorer.threshold, truth)
    assert f1 > 0.9, f"{method}: F1 {f1:.3f} on the easy synthetic pair"
    # A probability map, not a mask. (IR-MAD's chi-square probability is uniform on unchanged ground.)
    assert p[truth].mean() > 0.9 and p[~truth].mean() < (0.6 if method == "irmad" else 0.3)


@pytest.mark.parametrize(
    ("method", "kwargs"),
    [("cva", {"threshold_method": "kmeans"}), ("irmad", {"threshold": 0.99}),
     ("dsfa", {"threshold_method": "kmeans", **FAST["dsfa"]}),
     ("dsfa", {"predetector": "irmad", "shared_weights": False, **FAST["dsfa"]})],
)
def test_options_find_painted_blocks(method: str, kwargs: dict, scene) -> None:
    before, after, truth = scene
    scorer = create_scorer(method, **kwargs).fit(before, after)
    assert f1_score(scorer.predict(before, after) >= scorer.threshold, truth) > 0.9


@pytest.mark.parametrize(("bands", "dtype"), [(2, "uint8"), (3, "int16"), (13, "uint16"), (6, "float64")])
@pytest.mark.parametrize("method", ["cva", "irmad"])
def test_any_band_count_and_dtype(method: str, bands: int, dtype: str) -> None:
    before, after, truth = make_scene(bands=bands, dtype="float64" if dtype == "uint8" else dtype, seed=bands)
    if dtype == "uint8":  # stretch each date onto 0..255, as an 8-bit product would be
        before, after = (((d - d.min()) / (d.max() - d.min()) * 255).round().astype(np.uint8) for d in (before, after))
    scorer = create_scorer(method).fit(before, after)
    assert scorer.n_bands_ == bands
    assert f1_score(scorer.predict(before, after) >= scorer.threshold, truth) > 0.9


@pytest.mark.parametrize("method", METHODS)
def test_single_band(method: str) -> None:
    # One band: blocks painted over the brightest land cover change least; no false alarms, most blocks found.
    before, after, truth = make_scene(bands=1, seed=1)
    scorer = create_scorer(method, **FAST[method]).fit(before, after)
    mask = scorer.predict(before, after) >= scorer.threshold
    assert scorer.n_bands_ == 1
    assert mask[~truth].mean() < 0.01 and mask[truth].mean() > 0.5


def test_dsfa_13_uint16_bands() -> None:
    before, after, truth = make_scene(bands=13, dtype="uint16", seed=3)
    scorer = create_scorer("dsfa", **FAST["dsfa"]).fit(before, after)
    assert f1_score(scorer.predict(before, after) >= scorer.threshold, truth) > 0.9


def test_irmad_robust_scale_cuts_false_alarms(scene, fitted) -> None:
    # Nielsen's sigma = sqrt(2 (1 - rho)) shrinks with the reweighting and flags much unchanged ground.
    before, after, truth = scene
    textbook = IRMAD(robust_scale=False).fit(before, after)
    m0 = fitted["irmad"].predict(before, after) >= 0.999
    m1 = textbook.predict(before, after) >= 0.999
    assert m0[truth].mean() > 0.99 and m1[truth].mean() > 0.99  # both find the blocks
    assert m0[~truth].mean() < 0.01 < m1[~truth].mean()  # only the robust scale keeps false alarms rare


def test_irmad_ignores_affine_radiometry(scene, fitted) -> None:
    # MAD is invariant to an affine transformation of either date: a different gain/offset gives the same map.
    before, after, _ = scene
    rescaled = (after.astype(np.float64) * np.array([2.0, 0.5, 3.0, 1.5])[:, None, None] - 700.0)
    p0 = fitted["irmad"].predict(before, after)
    p1 = IRMAD().fit(before, rescaled).predict(before, rescaled)
    assert np.mean(np.abs(p0 - p1)) < 1e-4
    assert np.array_equal(p0 >= 0.999, p1 >= 0.999)


# -- nodata -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", METHODS)
def test_invalid_pixels_are_zero_and_ignored_in_fit(method: str, scene) -> None:
    before, after, truth = scene
    valid = np.ones(truth.shape, dtype=bool)
    valid[:, :20] = False  # a nodata border, overlapping a changed block
    b1, a1 = before.copy(), after.copy()
    b1[:, ~valid], a1[:, ~valid] = np.nan, 65535.0  # garbage under the mask
    b2, a2 = before.copy(), after.copy()
    b2[:, ~valid], a2[:, ~valid] = -1e30, 0.0  # other garbage
    s1 = create_scorer(method, **FAST[method]).fit(b1, a1, valid)
    s2 = create_scorer(method, **FAST[method]).fit(b2, a2, valid)
    assert json.dumps(s1.to_dict()) == json.dumps(s2.to_dict()), "invalid pixels changed the fit"
    p = s1.predict(b1, a1, valid)
    assert np.isfinite(p).all()
    assert (p[~valid] == 0).all()
    assert f1_score(p >= s1.threshold, truth & valid) > 0.9
    assert np.array_equal(p, s2.predict(b2, a2, valid))


def test_non_finite_values_are_invalid_even_if_marked_valid(fitted, scene) -> None:
    before, after, _ = scene
    b = before.copy()
    b[1, 5, 5] = np.nan
    b[0, 6, 6] = np.inf
    for scorer in fitted.values():
        p = scorer.predict(b, after, np.ones(b.shape[1:], dtype=bool))
        assert p[5, 5] == 0 and p[6, 6] == 0 and np.isfinite(p).all()


@pytest.mark.parametrize("method", METHODS)
def test_no_valid_pixel_in_fit_is_a_clear_error(method: str, scene) -> None:
    before, after, _ = scene
    with pytest.raises(InputError, match="valid pixel"):
        create_scorer(method, **FAST[method]).fit(before, after, np.zeros(before.shape[1:], dtype=bool))


@pytest.mark.parametrize("method", METHODS)
def test_window_without_valid_pixel_predicts_zeros(method: str, fitted, scene) -> None:
    before, after, _ = scene
    p = fitted[method].predict(before[:, :8, :8], after[:, :8, :8], np.zeros((8, 8), dtype=bool))
    assert p.shape == (8, 8) and not p.any()


# -- streaming --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", METHODS)
def test_fit_on_sample_then_windows_equals_whole_image(method: str) -> None:
    before, after, truth = make_scene(shape=(120, 100), seed=5)
    valid = np.ones(truth.shape, dtype=bool)
    valid[-7:, :] = False
    # Fit on a decimated read, as the detect engine does.
    scorer = create_scorer(method, **FAST[method]).fit(before[:, ::3, ::3], after[:, ::3, ::3], valid[::3, ::3])
    whole = scorer.predict(before, after, valid)
    tiled = np.full(whole.shape, -1.0, dtype=np.float32)
    rows, cols = [0, 37, 64, 120], [0, 50, 51, 100]  # uneven windows, one a single column wide
    for r0, r1 in itertools.pairwise(rows):
        for c0, c1 in itertools.pairwise(cols):
            tiled[r0:r1, c0:c1] = scorer.predict(before[:, r0:r1, c0:c1], after[:, r0:r1, c0:c1], valid[r0:r1, c0:c1])
    np.testing.assert_allclose(tiled, whole, rtol=0, atol=1e-6)
    assert f1_score(whole >= scorer.threshold, truth) > 0.9


def test_dsfa_is_deterministic_with_a_seed(scene) -> None:
    before, after, _ = scene
    p1 = create_scorer("dsfa", seed=7, **FAST["dsfa"]).fit(before, after).predict(before, after)
    p2 = create_scorer("dsfa", seed=7, **FAST["dsfa"]).fit(before, after).predict(before, after)
    np.testing.assert_array_equal(p1, p2)


# -- degenerate inputs ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", METHODS)
def test_constant_bands_are_nan_free(method: str, scene) -> None:
    before, after, truth = (a.copy() for a in scene)
    before[0], after[0] = 7.0, 7.0  # constant in both dates
    after[2] = 1000.0  # constant in one date only
    scorer = create_scorer(method, **FAST[method]).fit(before, after)
    p = scorer.predict(before, after)
    assert np.isfinite(p).all() and p.min() >= 0 and p.max() <= 1
    assert scorer.to_dict()["constant_bands"] == [0, 2]
    if method != "dsfa":  # the constant bands are ignored: same map as from the two informative bands alone
        alone = create_scorer(method).fit(before[[1, 3]], after[[1, 3]])
        np.testing.assert_allclose(p, alone.predict(before[[1, 3]], after[[1, 3]]), atol=1e-5)
    assert f1_score(p >= scorer.threshold, truth) > 0.7


@pytest.mark.parametrize("method", METHODS)
def test_all_constant_bands_give_zero_probability(method: str) -> None:
    before = np.full((3, 20, 20), 5, dtype=np.uint16)
    after = np.full((3, 20, 20), 9, dtype=np.uint16)
    scorer = create_scorer(method, **FAST[method]).fit(before, after)
    p = scorer.predict(before, after)
    assert np.isfinite(p).all() and not (p >= scorer.threshold).any()


def test_duplicated_bands_do_not_break_irmad(scene) -> None:
    before, after, truth = scene
    b = np.concatenate([before, before[:2]])
    a = np.concatenate([after, after[:2]])
    scorer = IRMAD().fit(b, a)
    p = scorer.predict(b, a)
    assert np.isfinite(p).all()
    assert f1_score(p >= scorer.threshold, truth) > 0.9


# -- API --------------------------------------------------------------------------------------------------------
def test_unknown_method_lists_the_known_ones() -> None:
    with pytest.raises(InputError, match="cva, dsfa, irmad"):
        create_scorer("pca")
    with pytest.raises(InputError, match="threshold_method"):
        create_scorer("cva", threshold_method="median")
    with pytest.raises(InputError, match="cva"):
        create_scorer("cva", no_such_option=1)
    with pytest.raises(InputError, match="probability"):
        create_scorer("irmad", threshold=1.5)
    assert list_methods() == ["cva", "dsfa", "irmad"]
    assert isinstance(create_scorer("CVA"), CVA)


@pytest.mark.parametrize("method", METHODS)
def test_scorer_protocol_and_report(method: str, fitted) -> None:
    scorer = fitted[method]
    assert isinstance(scorer, ChangeScorer)
    assert scorer.name == method
    assert 0.0 < scorer.threshold < 1.0
    report = json.loads(json.dumps(scorer.to_dict()))  # JSON-safe
    assert report["method"] == method and report["threshold"] == scorer.threshold
    assert report["n_bands"] == 4


@pytest.mark.parametrize("method", METHODS)
def test_bad_shapes_are_clear_errors(method: str, fitted, scene) -> None:
    before, after, _ = scene
    scorer = fitted[method]
    with pytest.raises(PairMismatchError, match="fitted on 4 bands but got 3"):
        scorer.predict(before[:3], after[:3])
    with pytest.raises(PairMismatchError, match="shape"):
        scorer.predict(before, after[:, :10])
    with pytest.raises(InputError, match="valid has shape"):
        scorer.predict(before, after, np.ones((3, 3), dtype=bool))
    with pytest.raises(InputError, match="not fitted"):
        create_scorer(method).predict(before, after)


def test_probability_mapping_puts_the_threshold_at_one_half() -> None:
    p = ratio_probability(np.array([0.0, 0.5, 2.0, 4.0, 1e9]), 2.0, 4.0)
    assert p.dtype == np.float32
    assert p[0] == 0 and p[2] == pytest.approx(0.5) and p[4] == pytest.approx(1.0)
    assert np.all(np.diff(p) > 0)


@pytest.mark.parametrize("how", ["otsu", "kmeans"])
def test_auto_threshold_splits_two_populations(how: str) -> None:
    rng = np.random.default_rng(0)
    x = np.r_[rng.normal(1, 0.2, 9000), rng.normal(6, 0.5, 1000)]
    assert 1.6 < auto_threshold(x, how) < 5.0
    assert auto_threshold(np.zeros(10), how) > 0  # no split possible: above every score


def test_import_does_not_import_torch() -> None:
    code = (
        "import sys, numpy as np\n"
        "from changedet.unsupervised import create_scorer\n"
        "b = np.random.default_rng(0).normal(size=(3, 30, 30)); a = b + 0.1\n"
        "for m in ('cva', 'irmad'):\n"
        "    create_scorer(m).fit(b, a).predict(b, a)\n"
        "create_scorer('dsfa')\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
