"""changedet.io.coregister: sub-pixel shift estimate on synthetic pairs with a known displacement."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from changedet.io import check_pair, open_pair
from changedet.io.coregister import estimate_shift
from changedet.testing import make_pair


@pytest.mark.parametrize("shift", [(0.3, -0.2), (-0.3, 0.0), (0.0, 0.45), (1.6, 2.25)])
def test_estimate_within_a_tenth_of_a_pixel(tmp_path: Path, shift: tuple[float, float]) -> None:
    # AFTER resampled from the same smooth texture displaced by a known fraction of a pixel
    before, after = make_pair(tmp_path, "misregistered", shift=shift, size=192)
    report = check_pair(before, after)
    est = report.shift
    assert est is not None and est.reliable
    assert est.dy == pytest.approx(shift[0], abs=0.1)
    assert est.dx == pytest.approx(shift[1], abs=0.1)
    assert est.dy_m == pytest.approx(10 * est.dy) and est.dx_m == pytest.approx(10 * est.dx)
    assert report.to_dict()["shift"]["magnitude_px"] == pytest.approx(np.hypot(*shift), abs=0.1)


def test_aligned_pair_has_no_shift(tmp_path: Path) -> None:
    before, after = make_pair(tmp_path, "other-crs", size=160)
    est = check_pair(before, after).shift
    assert est is not None and est.magnitude < 0.1


def test_coregister_removes_the_shift(tmp_path: Path) -> None:
    before, after = make_pair(tmp_path, "misregistered", shift=(0.3, -0.2), size=192)
    with open_pair(before, after, coregister=True) as pair:
        b, a, valid = pair.read()
    # the corrected AFTER must agree with BEFORE as well as an unshifted pair does (noise only)
    ref_b, ref_a = make_pair(tmp_path / "ref", "aligned", size=192)
    with open_pair(ref_b, ref_a) as ref:
        rb, ra, rv = ref.read()
    corrected = np.abs(b - a)[:, valid].mean()
    baseline = np.abs(rb - ra)[:, rv].mean()
    assert corrected < 1.25 * baseline


def test_estimate_shift_ignores_invalid_pixels() -> None:
    rng = np.random.default_rng(3)
    img = ndimage.gaussian_filter(rng.standard_normal((160, 160)), 2.5)
    moved = ndimage.shift(img, (0.4, -0.3), order=3, mode="reflect")
    valid = np.ones_like(img, bool)
    valid[:, :40] = False
    moved[:, :40] = 1e6  # garbage where invalid
    dy, dx, err = estimate_shift(img, moved, valid)
    assert (dy, dx) == pytest.approx((0.4, -0.3), abs=0.1) and err < 0.5


def test_estimate_shift_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="2-D arrays of one shape"):
        estimate_shift(np.zeros((8, 8)), np.zeros((8, 9)))
    with pytest.raises(ValueError, match="fewer than 16 valid pixels"):
        estimate_shift(np.zeros((8, 8)), np.zeros((8, 8)), np.zeros((8, 8), bool))


def test_flat_images_give_no_shift_and_no_library_warning(tmp_path: Path) -> None:
    import warnings

    from changedet.testing import make_geotiff

    b = make_geotiff(tmp_path / "b.tif", np.full((64, 64), 7, "uint16"))
    a = make_geotiff(tmp_path / "a.tif", np.full((64, 64), 9, "uint16"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # skimage's "Could not determine RMS error" must not leak
        report = check_pair(b, a)
    assert report.ok and report.shift is None
    assert any("without texture" in n for n in report.notes)
