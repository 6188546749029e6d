"""Multi-temporal series: what changed, and when (changedet.series, ``changedet detect d1 d2 d3 -o out``)."""

from __future__ import annotations

import itertools
import json
import os
import re
import warnings
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
import rasterio
import shapely
from click.testing import CliRunner
from scipy import ndimage

from changedet.errors import (
    InputError,
    NoOverlapError,
    OutputError,
    OutputExistsError,
    PairWarning,
    ReprojectedInputWarning,
)
from changedet.series import (
    SERIES_COLUMNS,
    SeriesStack,
    detect_series,
    open_series,
    order_by_date,
    paletted_style_qml,
    predict_series,
    series_pairs,
)
from changedet.testing import make_geotiff

DATES = ["2019-05-01", "2020-05-01", "2021-05-01", "2022-05-01"]
S = 20  # block side in pixels
# block -> upper-left (row, col); every date has exactly two bright blocks so that the per-date band statistics
# (which CVA standardises with) are the same at every date
BLOCKS = {"Q": (8, 8), "P": (8, 70), "A": (50, 20), "B": (90, 60), "C": (60, 120)}
PRESENT = {0: ("P", "Q"), 1: ("P", "A"), 2: ("A", "B"), 3: ("B", "C")}
# (first change, count, last change) per block; pairs are numbered from 1
EXPECTED = {
    "consecutive": {"Q": (1, 1, 1), "P": (2, 1, 2), "A": (1, 2, 3), "B": (2, 1, 2), "C": (3, 1, 3)},
    "reference": {"Q": (1, 3, 3), "P": (2, 2, 3), "A": (1, 2, 2), "B": (2, 2, 3), "C": (3, 1, 3)},
}
# the probability threshold: CVA's Otsu split sits just above the noise of this very clean synthetic scene
THR = 0.9


def _base(h: int = 128, w: int = 160, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = np.stack([ndimage.gaussian_filter(rng.normal(0, 1, (h, w)), 3) for _ in range(3)])
    base = 1000 + 200 * base / base.std()
    patch = base[:, 100 : 100 + S, 130 : 130 + S].copy()
    for r, c in BLOCKS.values():  # same ground under every block: no date differs in its statistics
        base[:, r : r + S, c : c + S] = patch
    return base.astype("float32")


def _write_series(folder: Path, *, names: list[str] | None = None, tags: bool = True, nodata_cols: dict | None = None,
                  origin_shift: dict | None = None) -> list[Path]:
    """Four dates of one 128 x 160 px, 10 m grid with bright blocks appearing and disappearing (see PRESENT)."""
    rng = np.random.default_rng(1)
    base = _base()
    paths = []
    for k, dt in enumerate(DATES):
        arr = base + rng.normal(0, 5, base.shape).astype("float32")
        for b in PRESENT[k]:
            r, c = BLOCKS[b]
            arr[:, r : r + S, c : c + S] += 800
        nodata = None
        if nodata_cols and k in nodata_cols:
            arr[:, :, nodata_cols[k]] = 0
            nodata = 0
        origin = (500000.0 + 10 * (origin_shift or {}).get(k, 0), 5700000.0)
        name = names[k] if names else f"site_{dt}.tif"
        paths.append(make_geotiff(folder / name, arr, tags={"ACQUISITION_DATE": dt} if tags else None,
                                  nodata=nodata, origin=origin))
    return paths


@pytest.fixture(scope="module")
def series_files(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    # neutral names: the dates come from the ACQUISITION_DATE metadata only
    folder = tmp_path_factory.mktemp("series")
    return _write_series(folder, names=["scene_c.tif", "scene_a.tif", "scene_d.tif", "scene_b.tif"])


def _block_values(arr: np.ndarray, block: str) -> set[int]:
    r, c = BLOCKS[block]
    return {int(v) for v in np.unique(arr[r : r + S, c : c + S])}


def _outside(arr: np.ndarray) -> np.ndarray:
    keep = np.ones(arr.shape, bool)
    for r, c in BLOCKS.values():
        keep[r : r + S, c : c + S] = False
    return arr[keep]


# ----------------------------------------------------------------------------------------------- known answers
@pytest.mark.parametrize("mode", ["consecutive", "reference"])
def test_blocks_appearing_at_known_dates_give_exactly_those_first_change_dates_and_counts(
    series_files: list[Path], tmp_path: Path, mode: str
) -> None:
    shuffled = [series_files[k] for k in (2, 0, 3, 1)]
    out = tmp_path / "out"
    series = detect_series(shuffled, output_dir=out, method="cva", threshold=THR, mode=mode, tile_size=64,
                           overlap=16)
    assert series.labels == DATES
    first, count, last = series.first_change, series.change_count, series.last_change
    for block, (f, n, lst) in EXPECTED[mode].items():
        assert _block_values(first, block) == {f}, block
        assert _block_values(count, block) == {n}, block
        assert _block_values(last, block) == {lst}, block
    for arr in (first, count, last):
        assert set(np.unique(_outside(arr)).tolist()) == {0}

    # polygons: one per block, attributes = the block's first change date and count
    gdf = series.polygons
    assert list(gdf.columns) == [*SERIES_COLUMNS, "geometry"]
    assert len(gdf) == len(BLOCKS)
    assert (gdf.area_m2 == S * S * 100.0).all() and (gdf.pixel_count == S * S).all()
    t = rasterio.open(series.paths["first_change"]).transform
    for block, (f, n, lst) in EXPECTED[mode].items():
        r, c = BLOCKS[block]
        x, y = t * (c + S / 2, r + S / 2)
        row = gdf[gdf.contains(shapely.Point(x, y))]
        assert len(row) == 1, block
        rec = row.iloc[0]
        assert rec.first_change == f and rec.first_change_date == DATES[f]  # seen changed at the AFTER date
        assert rec.earliest_change_date == rec.first_change_date
        assert rec.n_changes == n and rec.max_changes == n
        assert rec.last_change_date == DATES[lst]
        before = 0 if mode == "reference" else f - 1
        assert rec.first_change_pair == f"{DATES[before]}/{DATES[f]}"
    # the GeoJSON is RFC 7946 with the same attributes
    gj = json.loads((out / "changes.geojson").read_text())
    assert len(gj["features"]) == len(BLOCKS)
    assert {f["properties"]["first_change_date"] for f in gj["features"]} <= set(DATES[1:])
    assert -180 <= gj["features"][0]["geometry"]["coordinates"][0][0][0] <= 180


def test_per_pair_rasters_and_their_counts_match_the_series_rasters(series_files: list[Path], tmp_path: Path) -> None:
    series = detect_series(series_files, output_dir=tmp_path / "o", method="cva", threshold=THR, tile_size=64,
                           overlap=16)
    assert [p.label for p in series.pairs] == [f"{a}/{b}" for a, b in itertools.pairwise(DATES)]
    masks = np.stack([p.mask for p in series.pairs])
    assert set(np.unique(masks).tolist()) == {0, 1}
    np.testing.assert_array_equal(series.change_count, (masks == 1).sum(axis=0))
    first = np.where((masks == 1).any(axis=0), (masks == 1).argmax(axis=0) + 1, 0)
    np.testing.assert_array_equal(series.first_change, first)
    for k, p in enumerate(series.pairs, start=1):
        assert p.paths["probability"].parent.name == f"pair_{k:02d}_{DATES[k - 1]}_{DATES[k]}"
        assert (p.paths["probability"].parent / "probability.qml").exists()
        with rasterio.open(p.paths["change"]) as ds:
            assert ds.tags()["BEFORE_DATE"] == DATES[k - 1] and ds.tags()["AFTER_DATE"] == DATES[k]
            assert ds.nodata == 255 and ds.dtypes[0] == "uint8"
        assert p.summary["changed_pixels"] == int((masks[k - 1] == 1).sum())
    rep = json.loads((tmp_path / "o" / "report.json").read_text())
    assert rep["mode"] == "consecutive" and rep["order"] == "date" and rep["dates"] == DATES
    assert [i["date"] for i in rep["inputs"]] == DATES
    assert rep["summary"]["n_pairs"] == 3 and rep["summary"]["n_polygons"] == len(BLOCKS)
    assert rep["summary"]["changed_pixels"] == len(BLOCKS) * S * S
    assert rep["summary"]["first_change_pixels"] == {DATES[1]: 2 * S * S, DATES[2]: 2 * S * S, DATES[3]: S * S}
    assert [p["summary"]["changed_pixels"] for p in rep["pairs"]] == [2 * S * S] * 3


def test_index_rasters_carry_the_dates_in_tags_and_band_description(series_files: list[Path], tmp_path: Path) -> None:
    series = detect_series(series_files, output_dir=tmp_path / "o", method="cva", threshold=THR, mode="reference",
                           vectorize=False, quicklook=False)
    for key in ("first_change", "last_change", "change_count"):
        with rasterio.open(series.paths[key]) as ds:
            assert ds.dtypes[0] == "uint8" and ds.nodata == 255
            assert ds.descriptions[0]
            tags = ds.tags()
            assert tags["PAIR_1"] == f"{DATES[0]}/{DATES[1]}" and tags["PAIR_3"] == f"{DATES[0]}/{DATES[3]}"
            assert tags["PAIR_2_DATE"] == DATES[2] and tags["N_PAIRS"] == "3"
            assert ds.overviews(1) == [] or ds.is_tiled  # a COG (tiled)
    assert "gpkg" not in series.paths and not (tmp_path / "o" / "changes.gpkg").exists()


def test_a_date_given_twice_numbers_the_folders_but_not_the_dates(series_files: list[Path], tmp_path: Path) -> None:
    import shutil

    by_date = dict(zip(DATES, series_files, strict=True))
    twin = shutil.copy(by_date["2020-05-01"], tmp_path / "twin.tif")
    files = [by_date["2019-05-01"], by_date["2020-05-01"], Path(twin), by_date["2022-05-01"]]
    with pytest.warns(UserWarning, match="same date"):
        series = detect_series(files, output_dir=tmp_path / "o", method="cva", threshold=THR, vectorize=False,
                               quicklook=False)
    assert series.labels == ["2019-05-01", "2020-05-01-1", "2020-05-01-2", "2022-05-01"]
    rep = json.loads((tmp_path / "o" / "report.json").read_text())
    assert rep["dates"] == ["2019-05-01", "2020-05-01", "2020-05-01", "2022-05-01"]
    assert [v["date"] for v in rep["index_legend"].values()] == ["2020-05-01", "2020-05-01", "2022-05-01"]
    with rasterio.open(series.paths["first_change"]) as ds:
        tags = ds.tags()
    assert tags["DATES"] == "2019-05-01,2020-05-01,2020-05-01,2022-05-01"
    assert tags["PAIR_2_DATE"] == "2020-05-01" and tags["PAIR_2"] == "2020-05-01-1/2020-05-01-2"


# ----------------------------------------------------------------------------------------------- ordering
def test_dates_are_sorted_from_metadata_and_file_names(tmp_path: Path) -> None:
    paths = _write_series(tmp_path, tags=False)  # dates only in the file names (site_2019-05-01.tif ...)
    srcs, infos = order_by_date([paths[3], paths[1], paths[0], paths[2]])
    assert srcs == paths and [i.date.isoformat() for i in infos] == DATES


def test_keep_order_is_honoured(series_files: list[Path], tmp_path: Path) -> None:
    given = [series_files[3], series_files[2], series_files[1], series_files[0]]  # newest first
    with pytest.warns(PairWarning, match="keep-order"):
        series = detect_series(given, output_dir=tmp_path / "o", method="cva", threshold=THR, keep_order=True,
                               vectorize=False, quicklook=False)
    assert series.labels == DATES[::-1]
    assert series.report["order"] == "given"
    # time reversed: block C (only in the last date) now changes in the first pair
    assert _block_values(series.first_change, "C") == {1}
    assert _block_values(series.first_change, "Q") == {3}


@pytest.mark.parametrize("mode", ["consecutive", "reference"])
def test_keep_order_warns_about_the_dates_of_each_compared_pair(series_files: list[Path], tmp_path: Path,
                                                                 mode: str) -> None:
    """2022, 2019, 2021 in the order given: consecutive compares 2022->2019 and 2019->2021, reference 2022->2019
    and 2022->2021; the warnings are about those pairs, never a date against the first one it is not compared
    with."""
    by_date = {}
    for f in series_files:
        with rasterio.open(f) as ds:
            by_date[ds.tags()["ACQUISITION_DATE"]] = f
    d, a, c = by_date["2022-05-01"], by_date["2019-05-01"], by_date["2021-05-01"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        series = detect_series([d, a, c], output_dir=tmp_path / "o", method="cva", threshold=THR, keep_order=True,
                               mode=mode, vectorize=False, quicklook=False)
    got = sorted(str(w.message) for w in caught if issubclass(w.category, PairWarning))
    late = [(a, "2019-05-01")] if mode == "consecutive" else [(a, "2019-05-01"), (c, "2021-05-01")]
    assert got == sorted(f"{f.name} ({day}) does not come after {d.name} (2022-05-01), the BEFORE it is compared "
                         "with, but keep_order (--keep-order) keeps the order given; drop it to sort the dates"
                         for f, day in late)
    assert all(w.filename == __file__ for w in caught if issubclass(w.category, PairWarning))  # the caller's line
    assert [p.before_label for p in series.pairs] == (["2022-05-01", "2019-05-01"] if mode == "consecutive"
                                                       else ["2022-05-01", "2022-05-01"])
    for alignment in series.report["alignment"]:  # the alignment onto the first date says nothing of the order
        assert not any("AFTER should be the later" in m for m in alignment.get("warnings", [])), alignment
    assert sorted(series.report["date_warnings"]) == got  # recorded, not only printed


def test_unknown_dates_raise_a_clear_error_naming_the_files_and_write_nothing(tmp_path: Path) -> None:
    paths = _write_series(tmp_path / "in", names=["a.tif", "b.tif", "c.tif", "d.tif"], tags=False)
    out = tmp_path / "out"
    with pytest.raises(InputError) as err:
        detect_series(paths, output_dir=out, method="cva")
    msg = str(err.value)
    assert all(str(p) in msg for p in paths) and "--keep-order" in msg and "ACQUISITION_DATE" in msg
    assert not out.exists() or not any(out.iterdir())
    # with keep_order the order given is used and the labels are the file stems
    series = detect_series(paths, output_dir=out, method="cva", threshold=THR, keep_order=True, vectorize=False,
                           quicklook=False)
    assert series.labels == ["a", "b", "c", "d"]
    assert (out / "pair_01_a_b" / "change.tif").exists()
    with rasterio.open(series.paths["first_change"]) as ds:
        assert ds.tags()["PAIR_3"] == "c/d"


def test_bad_series_inputs(series_files: list[Path], tmp_path: Path) -> None:
    with pytest.raises(InputError, match="at least two"):
        detect_series(series_files[:1], output_dir=tmp_path / "o", method="cva")
    with pytest.raises(InputError, match="more than once"):
        detect_series([series_files[0], series_files[1], series_files[0]], output_dir=tmp_path / "o", method="cva")
    with pytest.raises(InputError, match="mode"):
        detect_series(series_files, output_dir=tmp_path / "o", method="cva", mode="pairwise")
    with pytest.raises(InputError, match="resume"):
        detect_series(series_files, output_dir=tmp_path / "o", method="cva", resume=True)
    assert series_pairs(3, "reference") == [(0, 1), (0, 2)]


def test_dates_without_a_common_area_raise_no_overlap(tmp_path: Path) -> None:
    arr = _base()[:, :64, :64]
    a = make_geotiff(tmp_path / "x_2019-01-01.tif", arr)
    b = make_geotiff(tmp_path / "x_2020-01-01.tif", arr, origin=(500400.0, 5700000.0))  # right part of a
    c = make_geotiff(tmp_path / "x_2021-01-01.tif", arr, origin=(499600.0, 5700000.0))  # left part of a
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(NoOverlapError, match="no area in common"):
            open_series([a, b, c])


# ----------------------------------------------------------------------------------------------- grids and nodata
def test_every_date_is_aligned_onto_the_first_grid_clipped_to_the_common_extent(tmp_path: Path) -> None:
    # date 3 starts 8 px east: the series grid is the first grid from column 8; date 2 is in another CRS
    paths = _write_series(tmp_path / "in", origin_shift={3: 8})
    with rasterio.open(paths[1]) as ds:
        from rasterio.warp import calculate_default_transform, reproject

        t, w, h = calculate_default_transform(ds.crs, "EPSG:32632", ds.width, ds.height, *ds.bounds, resolution=10)
        dst = np.zeros((ds.count, h, w), "float32")
        reproject(ds.read(), dst, src_transform=ds.transform, src_crs=ds.crs, dst_transform=t, dst_crs="EPSG:32632",
                  resampling=rasterio.enums.Resampling.nearest, dst_nodata=0)
    paths[1] = make_geotiff(tmp_path / "in" / "utm32_2020-05-01.tif", dst, crs="EPSG:32632", transform=t, nodata=0)
    with pytest.warns(ReprojectedInputWarning):
        stack = open_series(paths)
    with stack:
        assert (stack.width, stack.height) == (160 - 8, 128)
        assert stack.transform.c == 500000.0 + 80 and stack.crs.to_epsg() == 32631
        values, valid = stack.read(rasterio.windows.Window(0, 0, 40, 30))
        assert values.shape == (4, 3, 30, 40) and valid.shape == (4, 30, 40)
        ref = rasterio.open(paths[0]).read(window=rasterio.windows.Window(8, 0, 40, 30))
        np.testing.assert_array_equal(values[0], ref)  # the first date is never resampled
        shifted = rasterio.open(paths[3]).read(window=rasterio.windows.Window(0, 0, 40, 30))
        np.testing.assert_array_equal(values[3], shifted)  # same grid, offset by whole pixels: read directly
        assert valid[0].all() and valid[3].all()


def test_pixels_without_data_in_any_pair_are_nodata(tmp_path: Path) -> None:
    # columns 0-9 missing at dates 1 and 3: every consecutive pair lacks them -> nodata;
    # columns 150-159 missing at date 1 only: pair 3 (dates 2 -> 3) still sees them -> 0 (no change)
    paths = _write_series(tmp_path / "in", nodata_cols={1: slice(0, 10), 3: slice(0, 10)})
    with rasterio.open(paths[1], "r+") as ds:
        arr = ds.read()
        arr[:, :, 150:] = 0
        ds.write(arr)
    series = detect_series(paths, output_dir=tmp_path / "o", method="cva", threshold=THR, vectorize=False,
                           quicklook=False)
    for arr in (series.change_count, series.first_change, series.last_change):
        assert (arr[:, :10] == 255).all()
        assert (arr[:, 150:] == 0).all()
    masks = [p.mask for p in series.pairs]
    assert (masks[0][:, 150:] == 255).all() and (masks[2][:, 150:] == 0).all()


# ----------------------------------------------------------------------------------------------- streaming
def _run_counting(paths: list[Path], out: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[list, object]:
    calls: list[tuple[int, int, int, int]] = []
    real = SeriesStack.read

    def counting(self: SeriesStack, window: object = None, **kw: object) -> object:
        calls.append((int(window.col_off), int(window.row_off), int(window.width), int(window.height)))
        return real(self, window, **kw)

    monkeypatch.setattr(SeriesStack, "read", counting)
    series = detect_series(paths, output_dir=out, method="cva", threshold=THR, tile_size=32, overlap=8,
                           batch_size=3, vectorize=False, quicklook=False)
    return calls, series


def test_one_pass_reads_each_tile_of_each_date_once_whatever_the_number_of_dates(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from changedet.tiling import TileGrid

    paths = _write_series(tmp_path / "in")
    grid = TileGrid(128, 160, tile_size=32, overlap=8)
    windows = sorted(t.window for t in grid.tiles)
    per_n = {}
    for n in (2, 3, 4):
        calls, series = _run_counting(paths[:n], tmp_path / f"o{n}", monkeypatch)
        monkeypatch.undo()
        assert sorted(calls) == windows  # every tile once, all dates at once
        stats = series.report["stats"]
        assert stats["tiles_read"] == len(grid)
        assert stats["predictions"] == len(grid) * (n - 1)  # each pair predicted on each tile
        per_n[n] = stats["strip_buffer_bytes"]
    # strip buffers (a tile plus a row block high): one accumulator (4 B/px) and validity (1 B) per pair
    row = (32 + 512) * 160
    assert per_n == {n: row * 5 * (n - 1) for n in (2, 3, 4)}


@pytest.mark.parametrize("batch_size", [1, 3])
def test_batches_that_span_two_tile_rows_blend_every_tile(tmp_path: Path, batch_size: int) -> None:
    """A tall scene (row blocks written while tiles are predicted) in batches that cross tile rows: every pair's
    probability equals the whole-image prediction (a regression: rows were written before the last tiles of the
    previous tile row were blended in)."""
    import torch
    from rasterio.crs import CRS

    from changedet.inference import TorchPredictor
    from changedet.series import predict_series
    from tests.test_inference import ConvDiff

    class Stack:
        height, width = 1100, 90
        crs, transform = CRS.from_epsg(32631), rasterio.Affine(10, 0, 500000, 0, -10, 5700000)

        def __init__(self) -> None:
            self.values = np.random.default_rng(5).normal(size=(3, 3, self.height, self.width)).astype(np.float32)

        def read(self, window: object) -> tuple[np.ndarray, np.ndarray]:
            r, c, h, w = int(window.row_off), int(window.col_off), int(window.height), int(window.width)
            v = self.values[:, :, r : r + h, c : c + w]
            return v, np.ones((3, h, w), bool)

    stack, model = Stack(), ConvDiff()
    pairs = [(0, 1), (1, 2)]
    predictors = [TorchPredictor(model, [0.0] * 3, [1.0] * 3, [0.0] * 3, [1.0] * 3) for _ in pairs]
    predict_series(stack, pairs, predictors, out_dir=tmp_path, pair_dirs=["p1", "p2"], thresholds=[0.5, 0.5],
                   tile_size=64, overlap=16, batch_size=batch_size)
    for (i, j), name in zip(pairs, ["p1", "p2"], strict=True):
        with torch.no_grad():
            whole = torch.sigmoid(model(torch.from_numpy(stack.values[i][None]),
                                        torch.from_numpy(stack.values[j][None])))[0, 0].numpy()
        with rasterio.open(tmp_path / name / "probability.tif") as ds:
            np.testing.assert_allclose(ds.read(1), whole, atol=1e-5)


def test_two_dates_give_exactly_the_two_date_detect(series_files: list[Path], tmp_path: Path) -> None:
    from changedet.api import detect

    pair = sorted(series_files, key=lambda p: rasterio.open(p).tags()["ACQUISITION_DATE"])[:2]
    one = detect(pair[0], pair[1], method="cva", output_dir=tmp_path / "d", tile_size=64, overlap=16,
                 quicklook=False)
    series = detect_series(pair, method="cva", output_dir=tmp_path / "s", tile_size=64, overlap=16, quicklook=False)
    np.testing.assert_array_equal(series.pairs[0].probability, one.probability)
    np.testing.assert_array_equal(series.pairs[0].mask, one.mask)
    np.testing.assert_array_equal(series.change_count, (one.mask == 1).astype("uint8"))


def test_a_supervised_checkpoint_runs_every_pair_like_detect(series_files: list[Path], tmp_path: Path) -> None:
    import torch

    from changedet.api import detect
    from changedet.models import create_model
    from changedet.models.checkpoint import CheckpointMeta, save_checkpoint

    torch.manual_seed(0)
    model = create_model("fc-siam-diff", in_channels=3)
    ckpt = save_checkpoint(model, tmp_path / "tiny", CheckpointMeta(band_names=["B1", "B2", "B3"], pixel_size=10.0,
                                                                     threshold=0.5, name="tiny"))
    ordered, _ = order_by_date(series_files)
    series = detect_series(ordered[:3], model=str(ckpt), output_dir=tmp_path / "s", tile_size=64, overlap=16,
                           quicklook=False, vectorize=False)
    assert series.report["model"]["architecture"] == "fc-siam-diff"
    for k, (i, j) in enumerate([(0, 1), (1, 2)]):
        one = detect(ordered[i], ordered[j], model=str(ckpt), output_dir=tmp_path / f"d{k}", tile_size=64,
                     overlap=16, quicklook=False, vectorize=False)
        np.testing.assert_allclose(series.pairs[k].probability, one.probability, atol=1e-6)


def test_predict_series_validates_its_arguments(series_files: list[Path], tmp_path: Path) -> None:
    with open_series(series_files) as stack, pytest.raises(ValueError, match="same length"):
        predict_series(stack, [(0, 1), (1, 2)], [], out_dir=tmp_path, pair_dirs=["a"], thresholds=[0.5])


# ----------------------------------------------------------------------------------------------- outputs
def test_outputs_are_atomic_an_interrupted_run_leaves_nothing(series_files: list[Path], tmp_path: Path) -> None:
    out = tmp_path / "o"

    def boom(done: int, total: int, pixels: int) -> None:
        if done >= 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        detect_series(series_files, output_dir=out, method="cva", tile_size=32, overlap=8, progress=boom)
    assert not out.exists()  # not even the folder it created (as detect)
    out.mkdir()
    with pytest.raises(KeyboardInterrupt):
        detect_series(series_files, output_dir=out, method="cva", tile_size=32, overlap=8, progress=boom)
    assert list(out.iterdir()) == []  # a folder that was there stays, empty


def test_progress_true_draws_a_bar_like_detect_and_a_bad_progress_writes_nothing(
    series_files: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    series = detect_series(series_files[:3], output_dir=tmp_path / "o", method="cva", threshold=THR,
                           tile_size=64, overlap=16, quicklook=False, progress=True)
    assert series.report["summary"]["n_pairs"] == 2 and series.paths["report"].is_file()
    err = capsys.readouterr().err
    assert "tile/s" in err and re.search(r"\b(\d+)/\1 \[", err), err  # tqdm's bar, up to the last tile
    detect_series(series_files[:3], output_dir=tmp_path / "q", method="cva", threshold=THR, quicklook=False,
                  progress=False)
    assert capsys.readouterr().err == ""
    with pytest.raises(InputError, match="progress must be True, False, None or a callable"):
        detect_series(series_files[:3], output_dir=tmp_path / "p" / "q", method="cva", progress="yes")  # type: ignore[arg-type]
    assert not (tmp_path / "p").exists()


def test_existing_outputs_need_overwrite(series_files: list[Path], tmp_path: Path) -> None:
    out = tmp_path / "o"
    kw = {"method": "cva", "threshold": THR, "quicklook": False}
    detect_series(series_files, output_dir=out, **kw)
    with pytest.raises(OutputExistsError, match="pair_01"):
        detect_series(series_files, output_dir=out, **kw)
    series = detect_series(series_files, output_dir=out, overwrite=True, **kw)
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == [
        f"pair_{k:02d}_{a}_{b}" for k, (a, b) in enumerate(itertools.pairwise(DATES), start=1)]
    assert series.paths["report"].exists() and not any(p.name.startswith(".") for p in out.iterdir())


def test_temporary_output_folder_and_save(series_files: list[Path], tmp_path: Path) -> None:
    series = detect_series(series_files, method="cva", threshold=THR, quicklook=False)
    assert series.output_dir.exists() and series.paths["first_change"].exists()
    dest = series.save(tmp_path / "kept")
    assert (dest / "first_change.tif").exists() and (dest / series.pairs[0].paths["change"].parent.name).is_dir()
    with pytest.raises(OutputExistsError):
        series.save(dest)


def _tree(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def test_save_with_overwrite_leaves_one_result_without_the_outputs_of_an_earlier_series(
    series_files: list[Path], tmp_path: Path
) -> None:
    kw = {"method": "cva", "threshold": THR, "quicklook": False}
    four = detect_series(series_files, qgis_project=True, **kw)  # 3 pairs, polygons, project
    two = detect_series(series_files[:2], vectorize=False, **kw)  # 1 pair, no polygons, no project
    dest = tmp_path / "kept"
    four.save(dest)
    assert len([p for p in dest.iterdir() if p.name.startswith("pair_")]) == 3
    (dest / "notes.txt").write_text("mine")  # not an output: left alone
    before = _tree(dest)
    with pytest.raises(OutputExistsError, match="pass overwrite=True"):
        two.save(dest)
    assert _tree(dest) == before  # nothing copied
    assert two.save(dest, overwrite=True) == dest
    assert _tree(dest) == sorted([*_tree(two.output_dir), "notes.txt"])
    assert json.loads((dest / "report.json").read_text())["summary"]["n_pairs"] == 1
    assert not any((dest / n).exists() for n in ("changes.gpkg", "changes.geojson", "changes.qml", "project.qgs"))


def test_save_rewrites_the_project_for_the_new_folder_and_saving_in_place_does_nothing(
    series_files: list[Path], tmp_path: Path
) -> None:
    import re

    out = tmp_path / "run"
    series = detect_series(series_files[:3], output_dir=out, method="cva", threshold=THR, quicklook=False,
                           qgis_project=True)
    dest = tmp_path / "a" / "b" / "copy"  # another depth: paths relative to the run folder would break
    series.save(dest)
    sources = re.findall(r"<datasource>([^<|]*)", (dest / "project.qgs").read_text())
    assert len(sources) == 4  # BEFORE, AFTER, first change, polygons
    for src in sources:
        assert not os.path.isabs(src) and (dest / src).resolve().is_file(), src
    assert {series_files[0].resolve(), series_files[2].resolve()} <= {(dest / src).resolve() for src in sources}
    snapshot = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    assert series.save(out, overwrite=True) == out  # its own folder: nothing to copy, no error
    assert series.save(out) == out
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == snapshot
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputError, match="not a folder"):
        series.save(tmp_path / "file")


def test_detect_series_overwrite_removes_the_outputs_of_an_earlier_longer_series(
    series_files: list[Path], tmp_path: Path
) -> None:
    out = tmp_path / "o"
    kw = {"method": "cva", "threshold": THR, "quicklook": False}
    detect_series(series_files, output_dir=out, qgis_project=True, **kw)
    two = detect_series(series_files[:2], output_dir=out, overwrite=True, vectorize=False, **kw)
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [*two.report["outputs"], "change_count.qml", "first_change.qml", "last_change.qml"])
    assert [p.name for p in out.iterdir() if p.name.startswith("pair_")] == [two.pairs[0].paths["change"].parent.name]


def test_detect_series_overwrite_removes_the_outputs_of_an_earlier_two_date_run(
    series_files: list[Path], tmp_path: Path
) -> None:
    """A series with overwrite=True in a two-date run's folder: its probability.tif and change.tif (and their
    styles) would stay beside the series' report.json; a file changedet does not write stays."""
    from changedet.api import detect

    out = tmp_path / "o"
    kw = {"method": "cva", "threshold": THR, "quicklook": False}
    detect(series_files[0], series_files[1], output_dir=out, qgis_project=True, **kw)
    (out / "notes.txt").write_text("mine")
    series = detect_series(series_files, output_dir=out, overwrite=True, vectorize=False, **kw)
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [*series.report["outputs"], "change_count.qml", "first_change.qml", "last_change.qml", "notes.txt"])
    assert not any((out / n).exists() for n in ("probability.tif", "change.tif", "probability.qml", "change.qml",
                                                "changes.gpkg", "project.qgs"))


def test_qgis_styles_colour_each_date_and_the_project_shows_first_change(
    series_files: list[Path], tmp_path: Path
) -> None:
    out = tmp_path / "o"
    detect_series(series_files, output_dir=out, method="cva", threshold=THR, qgis_project=True)
    root = ET.fromstring((out / "first_change.qml").read_text().split("\n", 1)[1])
    r = root.find("pipe/rasterrenderer")
    assert r is not None and r.get("type") == "paletted"
    entries = r.findall("colorPalette/paletteEntry")
    assert [e.get("value") for e in entries] == ["1", "2", "3"]
    assert [e.get("label").split()[0] for e in entries] == DATES[1:]
    assert len({e.get("color") for e in entries}) == 3
    count = ET.fromstring((out / "change_count.qml").read_text().split("\n", 1)[1])
    assert [e.get("value") for e in count.iter("paletteEntry")] == ["1", "2", "3"]
    proj = ET.parse(out / "project.qgs").getroot()
    layers = {m.findtext("layername"): m for m in proj.iter("maplayer")}
    assert {"first change", "change polygons", "BEFORE", "AFTER"} <= set(layers)
    fc = layers["first change"]
    assert fc.findtext("datasource").endswith("first_change.tif")
    assert fc.find("pipe/rasterrenderer").get("type") == "paletted"
    assert [e.get("label").split()[0] for e in fc.iter("paletteEntry")] == DATES[1:]
    assert "first change" in {n.get("name") for n in proj.iter("layer-tree-layer")}
    assert (out / "quicklook.png").stat().st_size > 10_000


def test_paletted_style_qml_labels() -> None:
    qml = paletted_style_qml([(1, (1, 2, 3), "2020-05-01"), (7, (255, 0, 16), "x & y")])
    root = ET.fromstring(qml.split("\n", 1)[1])
    got = [(e.get("value"), e.get("color"), e.get("label")) for e in root.iter("paletteEntry")]
    assert got == [("1", "#010203", "2020-05-01"), ("7", "#ff0010", "x & y")]


# ----------------------------------------------------------------------------------------------- CLI
def test_cli_three_dates(series_files: list[Path], tmp_path: Path) -> None:
    from changedet.cli.main import cli

    out = tmp_path / "out"
    given = [series_files[2], series_files[0], series_files[1]]  # 2021, 2019, 2020 (metadata dates)
    args = ["detect", *map(str, given), "-o", str(out), "--method", "cva", "--threshold", str(THR),
            "--mode", "reference", "--no-quicklook"]
    res = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert "outputs in" in res.output and "changed:" in res.output
    rep = json.loads((out / "report.json").read_text())
    assert rep["mode"] == "reference" and rep["summary"]["n_pairs"] == 2
    assert rep["dates"] == DATES[:3]  # sorted by the metadata dates
    assert [i["source"] for i in rep["inputs"]] == [str(series_files[k]) for k in range(3)]
    assert {"change_count.tif", "first_change.tif", "last_change.tif", "changes.gpkg"} <= set(os.listdir(out))
    res = CliRunner().invoke(cli, [*args[:-1], "--json", "--overwrite", "--no-quicklook"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["kind"] == "series"


def test_cli_unknown_dates_exit_code_two(tmp_path: Path) -> None:
    from changedet.cli.main import cli

    paths = _write_series(tmp_path / "in", names=["a.tif", "b.tif", "c.tif", "d.tif"], tags=False)
    res = CliRunner().invoke(cli, ["detect", *map(str, paths[:3]), "-o", str(tmp_path / "o"), "--method", "cva"])
    assert res.exit_code == 2
    assert "acquisition date unknown" in res.output and "--keep-order" in res.output
    res = CliRunner().invoke(cli, ["detect", *map(str, paths[:3]), "-o", str(tmp_path / "o"), "--method", "cva",
                                   "--keep-order", "--no-quicklook", "--threshold", str(THR)])
    assert res.exit_code == 0, res.output


# ----------------------------------------------------------------------------------------------- real data
@pytest.mark.realdata
def test_no_real_three_date_series_exists_in_shared_data(oscd_images: Path) -> None:
    """A real series of three or more dates cannot be assembled from ``../shared/data``.

    OSCD holds one image pair per city (``imgs_1``/``imgs_2`` with ``dates.txt``). A series would need two cities
    whose footprints overlap (with an area) and whose dates differ. This test proves none exists: the only
    footprints that meet are saclay_e and saclay_w, which share an edge (zero area) and the same two dates
    (2016-03-15, 2017-08-29); bercy and paris share date_1 (2016-11-30) but do not overlap. AirChange (Szada,
    Tiszadob) has no georeferencing and one pair per scene; LEVIR-CD and DSIFN samples are bi-temporal too.
    """
    from rasterio.warp import transform_bounds

    cities = {}
    for city_dir in sorted(p for p in oscd_images.iterdir() if p.is_dir()):
        dates = dict(line.split(":") for line in (city_dir / "dates.txt").read_text().split("\n") if ":" in line)
        b02 = sorted((city_dir / "imgs_1").glob("*B02.tif"))[0]
        with rasterio.open(b02) as ds:
            box = shapely.box(*transform_bounds(ds.crs, "EPSG:4326", *ds.bounds))
        cities[city_dir.name] = (box, {d.strip() for d in dates.values()})
    assert len(cities) >= 14
    touching = []
    for (a, (ba, da)), (b, (bb, db)) in itertools.combinations(cities.items(), 2):
        if ba.intersects(bb):
            touching.append((a, b))
            overlap = ba.intersection(bb).area
            assert overlap < 1e-9 or len(da | db) < 3, f"{a} and {b} would make a series"
    assert touching == [("saclay_e", "saclay_w")]
    assert cities["saclay_e"][1] == cities["saclay_w"][1] == {"20160315", "20170829"}


@pytest.mark.realdata
def test_real_pair_through_the_series_engine_equals_detect(oscd_images: Path, tmp_path: Path) -> None:
    """On a real OSCD pair (beirut, B02/B03/B04/B08), a two-date series equals the two-date detect.

    OSCD's file names carry the L1C *processing* date (beirut imgs_1: ``..._EPA__20160929T004310_...``), not the
    acquisition date of ``dates.txt`` (2015-08-20), so the acquisition dates are written as ACQUISITION_DATE tags
    (which win over the file name) before the run, as a user should do.
    """
    from changedet.api import detect
    from changedet.io.stack import stack_bands

    city = oscd_images / "beirut"
    stacked = []
    for k in ("imgs_1", "imgs_2"):
        files = [sorted((city / k).glob(f"*{b}.tif"))[0] for b in ("B02", "B03", "B04", "B08")]
        stacked.append(stack_bands(city / k, tmp_path / f"{k}.tif", files=files))
    dates = dict(line.split(":") for line in (city / "dates.txt").read_text().split("\n") if ":" in line)
    for path, key in zip(stacked, ("date_1", "date_2"), strict=True):
        d = dates[key].strip()
        with rasterio.open(path, "r+", IGNORE_COG_LAYOUT_BREAK="YES") as ds:
            ds.update_tags(ACQUISITION_DATE=f"{d[:4]}-{d[4:6]}-{d[6:]}")
    series = detect_series(stacked[::-1], method="cva", output_dir=tmp_path / "s", quicklook=False)
    assert [d.isoformat() for d in series.dates] == ["2015-08-20", "2017-10-03"]
    one = detect(stacked[0], stacked[1], method="cva", output_dir=tmp_path / "d", quicklook=False)
    np.testing.assert_array_equal(series.pairs[0].mask, one.mask)
    assert series.report["summary"]["changed_pixels"] == one.report["summary"]["changed_pixels"] > 0
    assert len(series.polygons) == len(one.polygons)


def test_areas_in_web_mercator_are_on_the_ground_and_match_the_two_date_detect(tmp_path: Path) -> None:
    from pyproj import Transformer

    from changedet.api import detect

    x, y = Transformer.from_crs("EPSG:4326", "EPSG:3857", always_xy=True).transform(10, 60)
    rng = np.random.default_rng(3)
    base = rng.normal(100, 5, (3, 64, 64)).astype("float32")
    files = []
    for k, dt in enumerate(("2019-05-01", "2020-05-01", "2021-05-01")):
        arr = base + rng.normal(0, 1, base.shape).astype("float32")
        if k >= 1:
            arr[:, 10:30, 10:30] += 80
        if k >= 2:
            arr[:, 40:50, 40:60] += 80
        files.append(make_geotiff(tmp_path / f"s_{dt}.tif", arr, crs="EPSG:3857", res=10, origin=(x, y)))
    series = detect_series(files, output_dir=tmp_path / "o", method="cva", vectorize=False, quicklook=False)
    single = detect(files[1], files[2], method="cva", output_dir=tmp_path / "d", vectorize=False, quicklook=False)
    pair2 = series.pairs[1].summary
    assert pair2["changed_pixels"] == single.report["summary"]["changed_pixels"] > 0
    assert pair2["changed_area_m2"] == pytest.approx(single.report["summary"]["changed_area_m2"])
    # a Web Mercator unit is about half a metre on the ground at 60 N: a 10-unit pixel holds ~25 m^2, not 100
    s = series.report["summary"]
    assert s["changed_area_m2"] == pytest.approx(s["changed_pixels"] * 25, rel=0.02)
    assert s["valid_area_m2"] == pytest.approx(s["valid_pixels"] * 25, rel=0.02)


def test_a_series_keeps_the_raster_crs_in_geojson_with_input(series_files: list[Path], tmp_path: Path) -> None:
    import pyogrio

    series = detect_series(series_files[:3], output_dir=tmp_path / "o", method="cva", threshold=THR,
                           geojson_crs="input", quicklook=False)
    assert pyogrio.read_info(series.paths["geojson"])["crs"] == "EPSG:32631"


# ----------------------------------------------------------------------------------------------- xarray inputs
def test_dataarrays_give_the_same_series_as_their_files(series_files: list[Path], tmp_path: Path) -> None:
    rioxarray = pytest.importorskip("rioxarray")
    from changedet.errors import NotGeoreferencedError

    kw = {"method": "cva", "threshold": THR, "quicklook": False, "tile_size": 64, "overlap": 16}
    files = detect_series(series_files[:3], output_dir=tmp_path / "f", **kw)
    arrays = [rioxarray.open_rasterio(p) for p in series_files[:3]]
    series = detect_series([arrays[2], arrays[0], arrays[1]], output_dir=tmp_path / "x", qgis_project=True, **kw)
    assert series.labels == files.labels == DATES[:3]  # the ACQUISITION_DATE tags travel as attrs
    for name in ("first_change", "change_count", "last_change"):
        np.testing.assert_array_equal(getattr(series, name), getattr(files, name))
    assert len(series.polygons) == len(files.polygons)
    assert {i["source"] for i in series.report["inputs"]} == {"xarray.DataArray (in memory)"}
    assert "changedet-xarray-" not in (tmp_path / "x" / "project.qgs").read_text()
    bare = arrays[1].drop_vars("spatial_ref")
    with pytest.raises(NotGeoreferencedError, match=r"input_2: the xarray\.DataArray has no CRS .*rio\.write_crs"):
        detect_series([arrays[0], bare, arrays[2]], output_dir=tmp_path / "y", **kw)
    assert not (tmp_path / "y").exists()


# ----------------------------------------------------------------------------------------------- staging, disk full
DEAD_PID = 2**22 + 12345  # above Linux's pid_max: no such process


def _staging_of_a_dead_run(out: Path, pid: int) -> Path:
    """What ``kill -9`` of a series leaves: its staging folder with a pair folder and its partial files."""
    staging = out / f".changedet-staging-{pid}"
    (staging / "pair_07_2000-01-01_2001-01-01").mkdir(parents=True)
    (staging / "pair_07_2000-01-01_2001-01-01" / "change.tif").write_bytes(b"a dead run's")
    (staging / ".changedet-partial").mkdir()
    (staging / ".changedet-partial" / "change_count.partial.tif").write_bytes(b"half")
    return staging


@pytest.mark.parametrize("overwrite", [False, True])
def test_staging_folders_of_killed_runs_are_removed_ours_too_and_never_reused(
    series_files: list[Path], tmp_path: Path, overwrite: bool
) -> None:
    """A killed run's staging folder goes at the next run; one named with this process's pid (pid 1 again in a
    one-shot container) is a dead run's too, since the output folder's lock rules out a live one: it was reused,
    and its pair folder moved into place beside the new series' (exit 0)."""
    out = tmp_path / "o"
    with pytest.raises(ProcessLookupError):
        os.kill(DEAD_PID, 0)
    ours = _staging_of_a_dead_run(out, os.getpid())
    dead = _staging_of_a_dead_run(out, DEAD_PID)
    alive = out / f".changedet-staging-{os.getppid()}"  # a live process's (another namespace's) is left alone
    alive.mkdir()
    series = detect_series(series_files[:3], output_dir=out, method="cva", threshold=THR, quicklook=False,
                           vectorize=False, overwrite=overwrite)
    assert not ours.exists() and not dead.exists() and alive.exists()
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == [
        alive.name, *(p.paths["change"].parent.name for p in series.pairs)]
    assert series.report["summary"]["n_pairs"] == 2


def test_a_run_refused_by_the_lock_leaves_the_staging_folder_of_its_pid_alone(
    series_files: list[Path], tmp_path: Path
) -> None:
    """The folder's lock is held (by another PID namespace's run of the same pid, say): that run's staging folder
    is not ours to remove."""
    from changedet.api import output_folder_lock
    from changedet.errors import OutputFolderBusyError

    out = tmp_path / "o"
    theirs = _staging_of_a_dead_run(out, os.getpid())
    with output_folder_lock(out), pytest.raises(OutputFolderBusyError):
        detect_series(series_files[:3], output_dir=out, method="cva", threshold=THR, quicklook=False)
    assert (theirs / ".changedet-partial" / "change_count.partial.tif").is_file()


def test_a_write_failure_during_a_series_is_an_output_error_with_nothing_written(
    series_files: list[Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A full disk while the rasters are streamed (rasterio's "Write failed" from the writer thread) is the
    OutputError of a two-date detect, not a traceback; nothing is left, not even the folder the run created."""
    from rasterio.errors import RasterioIOError

    from changedet.inference import StripWriter

    def full(self: StripWriter, array: np.ndarray, row_off: int) -> None:
        raise RasterioIOError("Write failed. See previous exception for details.") from OSError(
            28, "No space left on device")

    monkeypatch.setattr(StripWriter, "write", full)
    out = tmp_path / "o"
    with pytest.raises(OutputError) as info:
        detect_series(series_files[:3], output_dir=out, method="cva", threshold=THR, quicklook=False)
    msg = str(info.value)
    assert msg.startswith(f"{out}: writing the outputs failed (") and "No space left on device" in msg, msg
    assert "no output was written. Check the free disk space" in msg and "See previous exception" not in msg
    assert not out.exists()


def test_a_cog_a_full_disk_cut_short_is_the_same_output_error_without_the_staging_path(
    series_files: list[Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """changedet's own error about a file of the staging folder (the COG conversion's read-back) names a hidden
    folder that is gone once the run fails: it becomes the output folder's write failure."""
    from changedet.inference import StripWriter

    def cut_short(self: StripWriter, keep_partial: bool = False) -> Path:
        raise OutputError(f"{self.final_path}: writing the Cloud-Optimised GeoTIFF failed (TIFFReadDirectory:Failed "
                          "to read directory at offset 720896); check the free disk space.") from OSError(
            28, "No space left on device")

    monkeypatch.setattr(StripWriter, "finalize", cut_short)
    out = tmp_path / "o"
    out.mkdir()
    with pytest.raises(OutputError, match=r"writing the outputs failed \(.*No space left on device") as info:
        detect_series(series_files[:3], output_dir=out, method="cva", threshold=THR, quicklook=False)
    assert str(info.value).startswith(f"{out}: ") and ".changedet-staging" not in str(info.value)
    assert list(out.iterdir()) == []


_FSIZE_CHILD = r"""
import resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead of killing us
resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[1]), int(sys.argv[1])))
from changedet.cli.main import cli
sys.argv = ["changedet", *sys.argv[2:]]
cli()
"""


@pytest.mark.parametrize("limit", [20_000, 60_000])
def test_cli_series_on_a_full_disk_exits_one_with_the_output_error(
    series_files: list[Path], tmp_path: Path, limit: int
) -> None:
    """A full disk, simulated with a file-size limit (RLIMIT_FSIZE, no root needed): it used to end in
    rasterio's traceback ("RasterioIOError: Write failed") from the series engine's writer, exit 1."""
    import subprocess
    import sys

    out = tmp_path / "out"
    res = subprocess.run([sys.executable, "-c", _FSIZE_CHILD, str(limit), "-q", "detect",
                          *map(str, series_files[:3]), "-o", str(out), "--method", "cva", "--no-quicklook"],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 1, res.stderr
    assert f"error: {out}: writing the outputs failed (" in res.stderr, res.stderr
    assert "Check the free disk space" in res.stderr and "Traceback" not in res.stderr
    assert not out.exists()


# ----------------------------------------------------------------------------------------------- bands per date
def _with_bands_reversed(src: Path, dst: Path) -> Path:
    """A copy of ``src`` with its bands in the opposite order (a date delivered as B, G, R)."""
    with rasterio.open(src) as ds:
        return make_geotiff(dst, ds.read()[::-1], tags=ds.tags(), origin=(ds.transform.c, ds.transform.f))


def test_indexes_with_one_list_per_raster_follow_their_rasters_into_date_order(
    series_files: list[Path], tmp_path: Path
) -> None:
    """``indexes=[[...], [...], [...]]``: one list per raster as given (the order of the CLI's lists too), each
    kept with its raster when the dates are sorted; a date whose bands stand in another order reads its own."""
    d2019, d2020, d2021 = series_files[:3]
    rev = _with_bands_reversed(d2020, tmp_path / "in" / "scene_rev.tif")
    kw = {"method": "cva", "threshold": THR, "quicklook": False, "vectorize": False, "tile_size": 64, "overlap": 16}
    plain = detect_series([d2019, d2020, d2021], output_dir=tmp_path / "plain", **kw)
    given = [rev, d2021, d2019]  # not in date order: the lists are the rasters'
    series = detect_series(given, indexes=[[3, 2, 1], [1, 2, 3], [1, 2, 3]], output_dir=tmp_path / "s", **kw)
    assert series.labels == DATES[:3]
    for name in ("first_change", "change_count", "last_change"):
        np.testing.assert_array_equal(getattr(series, name), getattr(plain, name), err_msg=name)
    assert [a["indexes"] for a in series.report["alignment"]] == [
        {"before": [1, 2, 3], "after": [3, 2, 1]}, {"before": [1, 2, 3], "after": [1, 2, 3]}]
    # the reversed date read as given differs: the lists above did matter
    wrong = detect_series(given, output_dir=tmp_path / "w", **kw)
    assert not np.array_equal(wrong.change_count, plain.change_count)


def test_open_series_takes_one_list_per_raster_in_the_order_given(series_files: list[Path], tmp_path: Path) -> None:
    d2019, d2020, d2021 = series_files[:3]
    rev = _with_bands_reversed(d2020, tmp_path / "in" / "scene_rev.tif")
    with open_series([rev, d2021, d2019], indexes=[[3, 2, 1], [1, 2, 3], [2, 3, 1]]) as stack:
        assert [r.to_dict()["indexes"] for r in stack.pair_reports] == [
            {"before": [2, 3, 1], "after": [3, 2, 1]}, {"before": [2, 3, 1], "after": [1, 2, 3]}]


def test_one_list_per_raster_feeds_a_supervised_model_each_dates_own_bands(
    series_files: list[Path], tmp_path: Path
) -> None:
    import torch

    from changedet.models import create_model
    from changedet.models.checkpoint import CheckpointMeta, save_checkpoint

    torch.manual_seed(0)
    ckpt = save_checkpoint(create_model("fc-siam-diff", in_channels=3), tmp_path / "tiny",
                           CheckpointMeta(band_names=["B1", "B2", "B3"], pixel_size=10.0, threshold=0.5, name="tiny"))
    d2019, d2020, d2021 = series_files[:3]
    rev = _with_bands_reversed(d2020, tmp_path / "in" / "scene_rev.tif")
    kw = {"model": str(ckpt), "quicklook": False, "vectorize": False, "tile_size": 64, "overlap": 16}
    plain = detect_series([d2019, d2020, d2021], output_dir=tmp_path / "plain", **kw)
    series = detect_series([d2019, rev, d2021], indexes=([1, 2, 3], [3, 2, 1], [1, 2, 3]),
                           output_dir=tmp_path / "s", **kw)
    for k in range(2):
        np.testing.assert_allclose(series.pairs[k].probability, plain.pairs[k].probability, atol=1e-6)


def test_indexes_lists_must_be_one_per_raster(series_files: list[Path], tmp_path: Path) -> None:
    kw = {"method": "cva", "quicklook": False}
    with pytest.raises(InputError, match=r"2 lists of bands for 3 rasters: give one list for every date, or one "
                                         r"list per raster.*1,2,3:3,2,1:1,2,3"):
        detect_series(series_files[:3], indexes=([1, 2, 3], [3, 2, 1]), output_dir=tmp_path / "a", **kw)
    with pytest.raises(InputError, match=r"one list per raster \(3\)"):
        detect_series(series_files[:3], indexes=([1, 2, 3], [3, 2, "x"], [1, 2, 3]), output_dir=tmp_path / "b",
                      **kw)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_cli_indexes_take_one_list_per_raster_separated_by_colons(series_files: list[Path], tmp_path: Path) -> None:
    from changedet.cli.main import cli

    d2019, d2020, d2021 = series_files[:3]
    rev = _with_bands_reversed(d2020, tmp_path / "in" / "scene_rev.tif")
    common = ["--method", "cva", "--threshold", str(THR), "--no-quicklook", "--no-vectorize"]
    res = CliRunner().invoke(cli, ["detect", str(d2021), str(rev), str(d2019), "-o", str(tmp_path / "o"),
                                   "--indexes", "1-3:3,2,1:1,2,3", *common], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    rep = json.loads((tmp_path / "o" / "report.json").read_text())
    assert [a["indexes"]["after"] for a in rep["alignment"]] == [[3, 2, 1], [1, 2, 3]]
    for lists, n in (("1,2,3:3,2,1", 3), ("1,2,3:3,2,1:1,2,3:1,2,3", 3), ("1,2,3:3,2,1:1,2,3", 2)):
        res = CliRunner().invoke(cli, ["detect", *map(str, series_files[:n]), "-o", str(tmp_path / "x"),
                                       "--indexes", lists, *common])
        assert res.exit_code == 2, res.output
        assert f"band lists separated by ':' for {n} rasters" in res.output, res.output
    assert not (tmp_path / "x").exists()


def test_the_band_name_warning_of_a_series_gives_advice_a_series_takes(series_files: list[Path],
                                                                       tmp_path: Path) -> None:
    """The warning about a date whose bands are named differently used to advise --indexes BEFORE:AFTER, which a
    series refused; its advice (one list per raster, separated by ':') now runs."""
    from changedet.cli.main import cli

    d2019, d2020, d2021 = series_files[:3]
    named = []
    for k, (src, names) in enumerate([(d2019, ["B04", "B03", "B02"]), (d2020, ["Band 1", "Band 2", "Band 3"]),
                                      (d2021, ["B04", "B03", "B02"])]):
        with rasterio.open(src) as ds:
            named.append(make_geotiff(tmp_path / "in" / f"named_{k}.tif", ds.read(), tags=ds.tags(),
                                      descriptions=names))
    with pytest.warns(PairWarning, match="band names") as caught:
        detect_series(named, method="cva", output_dir=tmp_path / "w", quicklook=False, vectorize=False)
    advice = next(str(w.message) for w in caught if "band names" in str(w.message))
    assert "one list per raster separated by ':'" in advice and "1,2,3:3,2,1:1,2,3 for three" in advice, advice
    example = re.search(r"(\d,\d,\d:\d,\d,\d:\d,\d,\d) for three", advice).group(1)  # type: ignore[union-attr]
    res = CliRunner().invoke(cli, ["detect", *map(str, named), "-o", str(tmp_path / "o"), "--indexes", example,
                                   "--method", "cva", "--no-quicklook", "--no-vectorize"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
