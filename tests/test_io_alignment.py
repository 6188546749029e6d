"""changedet.io.alignment: check_pair reports, open_pair alignment and validity, on every fixture pair."""

from __future__ import annotations

import math
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.windows import Window

from changedet.errors import (
    CoregistrationWarning,
    NoOverlapError,
    NotGeoreferencedError,
    NotGeoreferencedWarning,
    PairMismatchError,
    PairWarning,
    RasterReadError,
    ReprojectedInputWarning,
)
from changedet.io import check_pair, open_pair
from changedet.io.raster import open_raster
from changedet.testing import PAIR_KINDS, make_geotiff, make_pair

# kind -> (ok, warning classes expected in the report, resampled)
EXPECTED: dict[str, tuple[bool, set[type[Warning]], bool]] = {
    "aligned": (True, set(), False),
    "half-pixel-shift": (True, {ReprojectedInputWarning}, True),
    "misregistered": (True, set(), False),  # 0.36 px: below the half-pixel warning
    "other-crs": (True, {ReprojectedInputWarning}, True),
    "other-resolution": (True, {ReprojectedInputWarning}, True),
    "other-size": (True, {ReprojectedInputWarning}, True),
    "partial-overlap": (True, {PairWarning}, False),
    "disjoint": (False, set(), False),
    "band-mismatch": (False, set(), False),
    "no-crs": (False, set(), False),
    "no-crs-both": (True, {PairWarning}, False),
    "nodata-border": (True, set(), False),
    "corrupt": (False, set(), False),
    "reversed-dates": (True, {PairWarning}, False),
}


def test_every_kind_has_an_expectation() -> None:
    assert set(EXPECTED) == set(PAIR_KINDS)


@pytest.mark.parametrize("kind", PAIR_KINDS)
def test_check_pair_on_fixture(tmp_path: Path, kind: str) -> None:
    before, after = make_pair(tmp_path, kind)
    report = check_pair(before, after)
    ok, warns, resampled = EXPECTED[kind]
    assert report.ok is ok, report.format()
    assert set(report.warning_classes) == warns, report.warnings
    assert report.resampled is resampled
    d = report.to_dict()
    assert d["ok"] is ok and d["problems"] == report.problems
    for message in report.problems + report.warnings:
        assert "before.tif" in message or "after.tif" in message, message
    if ok:
        assert (report.width, report.height) != (None, None)
        assert report.shift is not None and report.shift.magnitude < 0.5


@pytest.mark.parametrize("kind", [k for k in PAIR_KINDS if EXPECTED[k][0]])
def test_open_pair_puts_after_on_the_before_grid(tmp_path: Path, kind: str) -> None:
    before, after = make_pair(tmp_path, kind)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pair = open_pair(before, after)
    emitted = {w.category for w in caught} - {NotGeoreferencedWarning}
    assert emitted == {c for c in EXPECTED[kind][1]}
    with pair, rasterio.open(before) as ref:
        b, a, valid = pair.read()
        assert b.dtype == a.dtype == np.float32 and valid.dtype == bool
        assert b.shape == a.shape == (3, pair.height, pair.width)
        if pair.georeferenced:
            assert pair.crs == ref.crs and (pair.transform.a, pair.transform.e) == (
                ref.transform.a,
                ref.transform.e,
            )
        # same ground in both dates: the residual is the fixture noise (2 %) plus resampling, far below the signal
        diff = np.abs(b - a)[:, valid].mean() / b[:, valid].std()
        assert diff < (0.12 if EXPECTED[kind][2] or kind == "misregistered" else 0.06), diff
        # BEFORE is never resampled: it equals the file on the common window
        col0 = round((pair.transform.c - ref.transform.c) / ref.transform.a)
        raw = ref.read(window=Window(col0, 0, pair.width, pair.height)).astype("float32")
        np.testing.assert_array_equal(b[:, valid], raw[:, valid])


def test_partial_overlap_is_clipped_to_common_extent(tmp_path: Path) -> None:
    before, after = make_pair(tmp_path, "partial-overlap", size=100)
    with pytest.warns(PairWarning, match=r"after.tif covers 60.0% of before.tif"):
        pair = open_pair(before, after)
    with pair:
        assert (pair.width, pair.height) == (60, 100)
        assert pair.transform.c == 500000 + 40 * 10
        assert pair.report.overlap == pytest.approx(0.6)


def test_nodata_border_validity_is_union_of_both_masks(tmp_path: Path) -> None:
    before, after = make_pair(tmp_path, "nodata-border")
    expected = np.ones((128, 128), bool)
    expected[:, :12] = False  # BEFORE's nodata
    expected[:20, :] = False  # AFTER's nodata
    expected[-8:, -8:] = False
    with open_pair(before, after) as pair:
        b, a, valid = pair.read()
        np.testing.assert_array_equal(valid, expected)
        assert (b[:, ~valid] == 0).all() and (a[:, ~valid] == 0).all()
        # a window read agrees with the full read
        _, _, v2 = pair.read(Window(4, 10, 30, 20))
        np.testing.assert_array_equal(v2, expected[10:30, 4:34])


def test_nan_and_footprint_are_invalid(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    arr_b = rng.random((1, 64, 64)).astype("float32")
    arr_a = arr_b.copy()
    arr_b[0, 5, 7] = np.nan
    arr_a[0, 6, 7] = np.inf
    b = make_geotiff(tmp_path / "b.tif", arr_b)
    a = make_geotiff(tmp_path / "a.tif", arr_a, origin=(500000 + 3.6 * 10, 5700000))  # off-grid, 3.6 px east
    with pytest.warns(ReprojectedInputWarning, match=r"offset from b.tif's by a fraction of a pixel"):
        pair = open_pair(b, a, resampling="nearest")
    with pair:
        # the common grid starts at BEFORE column 3, whose centre (3.5) lies outside AFTER (starts at 3.6)
        assert pair.width == 61 and pair.transform.c == 500030
        _, _, valid = pair.read()
        assert not valid[:, 0].any()
        assert not valid[5, 4]  # BEFORE's NaN (column 7 = grid column 4)
        assert not valid[6, 8]  # AFTER's inf: its column 7 covers x in [10.6, 11.6] px -> BEFORE column 11
        assert valid[:, 1:].sum() == 64 * 60 - 2


def test_no_overlap_error_prints_both_bounds_and_crs(tmp_path: Path) -> None:
    before, after = make_pair(tmp_path, "disjoint")
    with pytest.raises(NoOverlapError) as err:
        open_pair(before, after)
    msg = str(err.value)
    assert "do not overlap" in msg and msg.count("EPSG:32631") == 2
    assert "(500000, 5.69872e+06, 501280, 5.7e+06)" in msg and "(600000, 5.69872e+06, 601280, 5.7e+06)" in msg


def test_no_overlap_across_crs_shows_reprojected_bounds(tmp_path: Path) -> None:
    b = make_geotiff(tmp_path / "b.tif", np.ones((32, 32), "uint8"))
    a = make_geotiff(
        tmp_path / "a.tif", np.ones((32, 32), "uint8"), crs="EPSG:4326", res=0.001, origin=(100, 10)
    )
    report = check_pair(b, a)
    assert not report.ok and "EPSG:4326" in report.problems[0] and "in BEFORE's CRS" in report.problems[0]


def test_south_up_rasters_are_refused_with_the_fix(tmp_path: Path) -> None:
    from affine import Affine

    south_up = Affine(10, 0, 500000, 0, 10, 5699360)  # row 0 is the southern edge
    arr = np.ones((3, 64, 64), "uint16")
    b = make_geotiff(tmp_path / "b.tif", arr, transform=south_up)
    a = make_geotiff(tmp_path / "a.tif", arr, transform=south_up)
    report = check_pair(b, a)
    assert not report.ok
    assert "b.tif: is south-up" in report.problems[0] and "gdalwarp" in report.problems[0]
    assert "do not overlap" not in " ".join(report.problems)
    north_up = make_geotiff(tmp_path / "n.tif", arr)
    with pytest.raises(PairMismatchError, match=r"a.tif: is south-up.*b_northup|a.tif: is south-up.*a_northup"):
        open_pair(north_up, a)


def test_identically_rotated_grids_are_read_directly_and_tiny_size_differences_are_shown(tmp_path: Path) -> None:
    from affine import Affine

    rotated = Affine.translation(500000, 5700000) * Affine.rotation(30) * Affine.scale(10, -10)
    arr = np.random.default_rng(0).normal(100, 5, (3, 64, 64)).astype("float32")
    b = make_geotiff(tmp_path / "rb.tif", arr, transform=rotated)
    a = make_geotiff(tmp_path / "ra.tif", arr, transform=rotated)
    report = check_pair(b, a, estimate_shift=False)
    assert report.ok and not report.resampled and report.warnings == []
    c = make_geotiff(tmp_path / "c.tif", arr, transform=Affine(10.0000001, 0, 500000, 0, -10, 5700000))
    d = make_geotiff(tmp_path / "d.tif", arr)
    report = check_pair(d, c, estimate_shift=False)
    assert any("pixel size 10.0000001 x 10 (64 x 64 px) differs from d.tif (10 x 10," in w for w in report.warnings)


def test_band_mismatch_and_indexes(tmp_path: Path) -> None:
    before, after = make_pair(tmp_path, "band-mismatch")
    with pytest.raises(PairMismatchError, match=r"after.tif: 4 band.*before.tif has 3.*--indexes"):
        open_pair(before, after)
    with open_pair(before, after, indexes=[1, 2, 3]) as pair:
        assert pair.count == 3 and pair.indexes == ([1, 2, 3], [1, 2, 3])
    with open_pair(before, after, indexes=([3, 1], [4, 2])) as pair:
        b, a, _ = pair.read(Window(0, 0, 8, 8))
        assert b.shape == a.shape == (2, 8, 8) and pair.band_names == ["B3", "B1"]
    report = check_pair(before, after, indexes=[1, 5])
    assert not report.ok and any("[5] out of range" in p and "before.tif" in p for p in report.problems)
    report = check_pair(before, after, indexes=([1, 2], [1]))
    assert any("2 band(s) selected in before.tif but 1 in after.tif" in p for p in report.problems)


def test_only_one_date_georeferenced_is_a_problem(tmp_path: Path) -> None:
    before, after = make_pair(tmp_path, "no-crs")
    with pytest.raises(NotGeoreferencedError, match=r"after.tif: has no georeferencing.*before.tif has"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            open_pair(before, after)


def test_neither_georeferenced_needs_same_size(tmp_path: Path) -> None:
    b = make_geotiff(tmp_path / "b.tif", np.ones((32, 32), "uint8"), crs=None)
    a = make_geotiff(tmp_path / "a.tif", np.ones((32, 30), "uint8"), crs=None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        report = check_pair(b, a)
    assert not report.ok and "without georeferencing the two must have the same size" in report.problems[0]
    assert any("neither is georeferenced" in w for w in report.warnings)


def test_geotransforms_without_a_crs_are_said_to_be_unused(tmp_path: Path) -> None:
    from affine import Affine

    arr = np.ones((32, 32), "uint8")
    paths = []
    for name, x0 in (("b.tif", 500000), ("a.tif", 500500)):
        with rasterio.open(tmp_path / name, "w", driver="GTiff", width=32, height=32, count=1, dtype="uint8",
                           transform=Affine(10, 0, x0, 0, -10, 4600000)) as ds:
            ds.write(arr, 1)
        paths.append(tmp_path / name)
    report = check_pair(*paths)
    assert report.ok
    with pytest.warns(NotGeoreferencedWarning, match=r"has a geotransform \(10.0, 0.0, 500000.0.* but no CRS"):
        open_raster(paths[0]).close()
    assert any("geotransforms differ" in w and "gdal_edit.py -a_srs" in w for w in report.warnings)


def test_corrupt_and_missing_are_all_reported(tmp_path: Path) -> None:
    _, after = make_pair(tmp_path, "corrupt")
    report = check_pair(tmp_path / "missing.tif", after)
    assert len(report.problems) == 2
    assert "missing.tif: no such file" in report.problems[0] and "after.tif" in report.problems[1]
    assert set(report.problem_classes) == {RasterReadError}
    with pytest.raises(RasterReadError, match=r"after.tif"):
        open_pair(tmp_path / "before.tif", after)


def test_dates_and_dtype_warnings(tmp_path: Path) -> None:
    b = make_geotiff(tmp_path / "b_20200101.tif", np.ones((3, 40, 40), "uint16"))
    a = make_geotiff(tmp_path / "a_20190101.tif", np.ones((3, 40, 40), "uint8"))
    report = check_pair(b, a)
    assert report.ok
    text = " ".join(report.warnings)
    assert "acquired 2019-01-01 before b_20200101.tif (2020-01-01)" in text
    assert "data type uint16 differs from a_20190101.tif (uint8)" in text


def test_abudhabi_like_size_difference_is_reported(tmp_path: Path) -> None:
    before, after = make_pair(tmp_path, "other-size")
    report = check_pair(before, after)
    assert "size differs: before.tif 128 x 128 px, after.tif 125 x 125 px" in report.notes
    assert any("pixel size 10.24 x 10.24 (125 x 125 px) differs" in w for w in report.warnings)


def test_pixel_area_projected_and_geodesic(tmp_path: Path) -> None:
    before, after = make_pair(tmp_path / "p", "aligned")
    with open_pair(before, after) as pair:
        assert pair.pixel_area_m2() == pytest.approx(100.0)
        assert pair.pixel_size_m() == pytest.approx((10.0, 10.0))
    res = 1e-4
    arr = np.ones((32, 32), "uint8")
    b = make_geotiff(tmp_path / "g" / "b.tif", arr, crs="EPSG:4326", res=res, origin=(54.54, 24.37))
    a = make_geotiff(tmp_path / "g" / "a.tif", arr, crs="EPSG:4326", res=res, origin=(54.54, 24.37))
    with open_pair(b, a) as pair:
        lat = math.radians(24.37 - 16 * res)
        # spherical approximation with the authalic radius: within 0.5 % of the ellipsoidal answer
        approx = 6371007.2**2 * math.radians(res) * math.radians(res) * math.cos(lat)
        assert pair.pixel_area_m2() == pytest.approx(approx, rel=5e-3)
        dy, dx = pair.pixel_size_m()
        assert dy == pytest.approx(11.07, rel=0.01) and dx == pytest.approx(10.14, rel=0.01)


def test_read_is_thread_safe(tmp_path: Path) -> None:
    before, after = make_pair(tmp_path, "other-crs", size=160)
    with pytest.warns(ReprojectedInputWarning), open_pair(before, after) as pair:
        windows = [Window(c, r, 40, 40) for r in range(0, 160, 40) for c in range(0, 160, 40)]
        serial = [pair.read(w) for w in windows]
        with ThreadPoolExecutor(4) as pool:
            parallel = list(pool.map(pair.read, windows * 3))
    for i, got in enumerate(parallel):
        for x, y in zip(serial[i % len(windows)], got, strict=True):
            np.testing.assert_array_equal(x, y)


def _helper_threads() -> set:
    import threading

    return {t for t in threading.enumerate() if t.name.startswith("changedet-read-after")}


@pytest.mark.parametrize("kind", ["aligned", "other-crs", "nodata-border"])
def test_large_windows_read_after_on_a_helper_thread_with_the_same_result(tmp_path: Path, kind: str,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Windows of 256 x 256 px or more read AFTER on a second thread: same arrays as one thread, thread closed."""
    from changedet.io import aligned_pair

    before, after = make_pair(tmp_path, kind, size=300, bands=4)
    windows = [Window(0, 0, 290, 290), Window(10, 20, 260, 255), Window(5, 5, 40, 40)]
    others = _helper_threads()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with open_pair(before, after) as pair:
            parallel = [pair.read(w) for w in windows]
            mine = _helper_threads() - others
            assert len(mine) == 1
            monkeypatch.setattr(aligned_pair, "_PARALLEL_READ_PIXELS", 10**12)
            serial = [pair.read(w) for w in windows]
    assert not any(t.is_alive() for t in mine)  # close() stops it
    for got, ref in zip(parallel, serial, strict=True):
        for x, y in zip(got, ref, strict=True):
            np.testing.assert_array_equal(x, y)
    assert (~parallel[0][2]).any() == (kind == "nodata-border")


def test_a_failed_parallel_read_raises_and_leaves_the_pair_usable(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from changedet.io import aligned_pair

    before, after = make_pair(tmp_path, "aligned", size=300, bands=2)
    real = aligned_pair._read_masked
    calls = {"n": 0}

    def flaky(ds, *args, **kwargs):  # the first BEFORE read fails, AFTER's (on the helper) succeeds
        if ds.name.endswith("before.tif") and calls["n"] == 0:
            calls["n"] += 1
            raise RasterReadError(f"{ds.name}: cannot read window (simulated)")
        return real(ds, *args, **kwargs)

    with open_pair(before, after) as pair:
        monkeypatch.setattr(aligned_pair, "_read_masked", flaky)
        with pytest.raises(RasterReadError, match="simulated"):
            pair.read(Window(0, 0, 300, 300))
        b, a, v = pair.read(Window(0, 0, 300, 300))
        assert b.shape == a.shape == (2, 300, 300) and v.all()


def test_read_window_outside_grid(tmp_path: Path) -> None:
    before, after = make_pair(tmp_path, "aligned", size=64)
    with open_pair(before, after) as pair, pytest.raises(ValueError, match=r"outside the common grid"):
        pair.read(Window(60, 0, 10, 10))


def test_open_datasets_are_not_closed(tmp_path: Path) -> None:
    before, after = make_pair(tmp_path, "aligned", size=64)
    with rasterio.open(before) as b, rasterio.open(after) as a:
        with open_pair(b, a) as pair:
            pair.read()
        assert not b.closed and not a.closed


def test_large_shift_warns_and_coregister_fixes_it(tmp_path: Path) -> None:
    before, after = make_pair(tmp_path, "misregistered", shift=(1.2, -0.7), size=160)
    report = check_pair(before, after)
    assert CoregistrationWarning in report.warning_classes
    assert any("--coregister" in w for w in report.warnings)
    with pytest.warns(CoregistrationWarning):
        open_pair(before, after, estimate_shift=True).close()
    with warnings.catch_warnings():
        warnings.simplefilter("error", CoregistrationWarning)
        pair = open_pair(before, after, coregister=True)
    with pair:
        assert pair.shift is not None and pair.shift.dy == pytest.approx(1.2, abs=0.1)
        b, a, valid = pair.read()
        corrected = np.abs(b - a)[:, valid].mean()
        b0, a0, v0 = pair.read(apply_corrections=False)
        raw = np.abs(b0 - a0)[:, v0].mean()
        assert corrected < 0.5 * raw


def test_match_histograms_maps_after_onto_before(tmp_path: Path) -> None:
    before, after = make_pair(tmp_path, "aligned", dtype="float32")
    with rasterio.open(after, "r+") as ds:
        ds.write(ds.read() * 3.0 + 1.0)  # a different gain and offset
    with open_pair(before, after) as pair:
        b, a, _ = pair.read()
        assert abs(a.mean() - b.mean()) > 0.5
    with open_pair(before, after, match_histograms=True) as pair:
        b, a, _ = pair.read()
        for band in range(3):
            assert a[band].mean() == pytest.approx(b[band].mean(), abs=0.01)
            assert a[band].std() == pytest.approx(b[band].std(), rel=0.05)
        assert "histogram-matched" in " ".join(pair.report.notes)


# -- inputs detect accepts: DataArrays, and closed datasets refused clearly -------------------------------------
def test_check_pair_and_open_pair_accept_the_dataarrays_detect_accepts(tmp_path: Path) -> None:
    rioxarray = pytest.importorskip("rioxarray", reason="rioxarray is not installed (pip install 'changedet[notebook]')")
    before, after = make_pair(tmp_path, "aligned", size=64)
    b, a = rioxarray.open_rasterio(before), rioxarray.open_rasterio(after)
    report = check_pair(b, a)
    assert report.ok, report.problems
    assert (report.before, report.after) == ("before (xarray.DataArray)", "after (xarray.DataArray)")
    assert check_pair(before, a).ok  # one of each
    with open_pair(before, after) as ref:
        expected = ref.read()
    with open_pair(b, a) as pair:
        folder = Path(pair.before_info.path).parent
        assert folder.name.startswith("changedet-xarray-") and folder.is_dir()
        assert pair.report.before == "before (xarray.DataArray)"
        for got, want in zip(pair.read(), expected, strict=True):
            np.testing.assert_array_equal(got, want)
    assert not folder.exists()  # the temporary GeoTIFFs go with the pair
    bare = a.drop_vars("spatial_ref")  # no CRS beside a path with one: the rioxarray fix, from both
    report = check_pair(before, bare)
    assert not report.ok and report.problem_classes == [NotGeoreferencedError]
    assert '.rio.write_crs("EPSG:32631")' in report.problems[0]
    with pytest.raises(NotGeoreferencedError, match=r'after: .*\.rio\.write_crs\("EPSG:32631"\)'):
        open_pair(before, bare)


def test_check_pair_with_dataarrays_does_not_import_torch(tmp_path: Path) -> None:
    pytest.importorskip("rioxarray")
    import subprocess
    import sys

    before, after = make_pair(tmp_path, "aligned", size=32)
    code = ("import sys, rioxarray, changedet.io as cio; "
            f"r = cio.check_pair(rioxarray.open_rasterio({str(before)!r}), rioxarray.open_rasterio({str(after)!r})); "
            "print(r.ok, 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["True", "False"]


def test_closed_datasets_are_a_read_error_naming_the_file_and_the_fix(tmp_path: Path,
                                                                      capfd: pytest.CaptureFixture[str]) -> None:
    from changedet.api import detect

    before, after = make_pair(tmp_path, "aligned", size=32)
    with rasterio.open(before) as b, rasterio.open(after) as a:
        pass  # opened in a notebook cell's `with` block that has ended
    capfd.readouterr()
    fix = rf"{before}: the rasterio dataset given is closed .* Pass the path \('{before}'\) instead, or keep the"
    report = check_pair(b, after)
    assert not report.ok and report.problem_classes == [RasterReadError]
    assert "is closed" in report.problems[0] and f"Pass the path ('{before}')" in report.problems[0]
    with pytest.raises(RasterReadError, match=fix):
        open_pair(b, a)
    with pytest.raises(RasterReadError, match=fix):
        detect(b, a, method="cva", output_dir=tmp_path / "out", quicklook=False)
    assert not (tmp_path / "out").exists()
    assert "ERROR" not in capfd.readouterr().err  # no GDAL "Pointer 'hObject' is NULL" lines
