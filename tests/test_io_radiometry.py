"""changedet.io.radiometry: scaling, statistics over valid pixels, normalisation, histogram matching."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
from skimage.exposure import match_histograms

from changedet.io import open_pair
from changedet.io.radiometry import HistogramMatcher, band_stats, dtype_scale, normalize, scale
from changedet.testing import make_pair


def test_dtype_scale_and_scale() -> None:
    assert dtype_scale("uint8") == pytest.approx(1 / 255)
    assert dtype_scale("uint16") == pytest.approx(1e-4)
    assert dtype_scale("float32") == 1.0
    arr = np.array([[[0, 5000, 10000]]], dtype="uint16")
    np.testing.assert_allclose(scale(arr), [[[0.0, 0.5, 1.0]]])
    out = scale(
        np.array([[[0.0, 5.0, 10.0]], [[1.0, 1.0, 3.0]]]), method="percentile", bounds=([0, 1], [10, 3])
    )
    np.testing.assert_allclose(out, [[[0, 0.5, 1]], [[0, 0, 1]]])
    assert scale(arr, method="none").dtype == np.float32
    with pytest.raises(ValueError, match="unknown scaling"):
        scale(arr, method="zz")  # type: ignore[arg-type]


def test_normalize_is_safe_for_constant_bands() -> None:
    arr = np.stack([np.arange(6.0).reshape(2, 3), np.full((2, 3), 7.0)])
    out = normalize(arr, [2.5, 7.0], [1.5, 0.0])
    assert out.dtype == np.float32 and np.isfinite(out).all()
    np.testing.assert_allclose(out[1], 0.0)
    np.testing.assert_allclose(out[0], (np.arange(6.0).reshape(2, 3) - 2.5) / 1.5, rtol=1e-6)
    batch = normalize(np.stack([arr, arr]), [2.5, 7.0], [1.5, 0.0])
    assert batch.shape == (2, 2, 2, 3)
    with pytest.raises(ValueError, match="does not match"):
        normalize(arr, [1.0], [1.0])


def test_band_stats_ignore_invalid_pixels(tmp_path: Path) -> None:
    before, after = make_pair(tmp_path, "nodata-border")
    with open_pair(before, after) as pair:
        b, a, valid = pair.read()
        mean, std = band_stats(pair, "before")
        np.testing.assert_allclose(mean, b[:, valid].astype(float).mean(axis=1), rtol=1e-9)
        np.testing.assert_allclose(std, b[:, valid].astype(float).std(axis=1), rtol=1e-9)
        mean_a, _ = band_stats(pair, "after")
        np.testing.assert_allclose(mean_a, a[:, valid].astype(float).mean(axis=1), rtol=1e-9)
    with rasterio.open(after) as ds:
        m, _ = band_stats(ds)
        arr = ds.read().astype(float)
        np.testing.assert_allclose(m, arr[:, (arr != 0).all(axis=0)].mean(axis=1), rtol=1e-6)
        dec, _ = band_stats(ds, max_pixels=1000)  # decimated: close, not equal
        np.testing.assert_allclose(dec, m, rtol=0.05)


def test_histogram_matcher_agrees_with_skimage() -> None:
    rng = np.random.default_rng(0)
    before = rng.gamma(2.0, 300.0, (2, 200, 200))
    after = 0.5 * rng.gamma(3.0, 200.0, (2, 200, 200)) + 40
    matched = HistogramMatcher.fit_arrays(before, after).apply(after)
    reference = match_histograms(after, before, channel_axis=0)
    for band in range(2):
        np.testing.assert_allclose(
            np.percentile(matched[band], [5, 50, 95]), np.percentile(reference[band], [5, 50, 95]), rtol=0.02
        )
    # windows mapped one by one give the same result as the whole array (it streams)
    m = HistogramMatcher.fit_arrays(before, after)
    np.testing.assert_allclose(m.apply(after[:, :50]), m.apply(after)[:, :50])
