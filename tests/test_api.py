"""The notebook API: top-level re-exports, ChangeResult (arrays, save, load, repr) and xarray inputs."""

from __future__ import annotations

import filecmp
import gc
import json
import subprocess
import sys
import types
import warnings
from pathlib import Path

import numpy as np
import pytest
import rasterio

import changedet
from changedet.api import ChangeResult, detect
from changedet.errors import InputError, OutputExistsError
from changedet.testing import make_pair, paint_change

BLOCK = (20, 30, 16, 24)  # rows 20..36, cols 30..54: 384 px of 10 m


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("pair")
    before, after = make_pair(tmp, "aligned", size=96, bands=4)
    paint_change(after, BLOCK)
    return Path(before), Path(after)


@pytest.fixture(scope="module")
def result(pair: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> ChangeResult:
    out = tmp_path_factory.mktemp("run") / "out"
    return detect(*pair, method="cva", min_area=300, output_dir=out, qgis_project=True)


# -- top level ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("name", "module"),
    [("detect", "changedet.api"), ("ChangeResult", "changedet.api"), ("open_pair", "changedet.io.alignment"),
     ("check_pair", "changedet.io.alignment"), ("vectorize", "changedet.vectorize"),
     ("create_model", "changedet.models.registry")],
)
def test_top_level_reexports_are_the_real_objects(name: str, module: str) -> None:
    obj = getattr(changedet, name)
    if isinstance(obj, types.ModuleType):  # changedet.vectorize once the submodule is imported: callable too
        assert callable(obj)
        obj = getattr(obj, name)
    assert obj.__module__ == module
    assert name in changedet.__all__ and name in dir(changedet)
    doc = obj.__doc__ or ""
    assert "Examples" in doc or ">>>" in doc, f"changedet.{name} has no docstring example"


def test_unknown_top_level_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no attribute 'detekt'"):
        changedet.detekt  # noqa: B018


def test_import_changedet_and_vectorize_do_not_import_torch() -> None:
    code = (
        "import sys, changedet; changedet.vectorize; changedet.open_pair; changedet.check_pair;"
        "assert 'torch' not in sys.modules, 'torch imported';"
        "changedet.create_model; assert 'torch' in sys.modules"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


def test_top_level_vectorize_is_callable_whatever_was_imported_first() -> None:
    # importing the submodule changedet.vectorize (detect does) rebinds the package attribute to the module
    code = (
        "import numpy as np, changedet, changedet.vectorize, inspect\n"
        "from rasterio.transform import from_origin\n"
        "m = np.zeros((20, 20), 'uint8'); m[2:6, 3:8] = 1\n"
        "gdf = changedet.vectorize(m, transform=from_origin(500000, 5700000, 10, 10), crs='EPSG:32631', min_area=100)\n"
        "print(len(gdf), float(gdf.area_m2.sum()), 'min_area' in inspect.signature(changedet.vectorize).parameters)\n"
        "print(changedet.vectorize.vectorize.__name__)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["1", "2000.0", "True", "vectorize"]


def test_public_api_is_typed() -> None:
    import inspect

    for name in ("detect", "open_pair", "check_pair", "vectorize", "create_model"):
        fn = getattr(changedet, name)
        sig = inspect.signature(fn)
        assert sig.return_annotation is not inspect.Signature.empty, f"{name} has no return annotation"
        missing = [p for p, v in sig.parameters.items() if v.annotation is inspect.Parameter.empty
                   and v.kind not in (v.VAR_KEYWORD, v.VAR_POSITIONAL)]
        assert not missing, f"{name}: unannotated {missing}"
    assert (Path(changedet.__file__).parent / "py.typed").is_file()


# -- ChangeResult ------------------------------------------------------------------------------------------------
def test_arrays_and_georeferencing_match_the_files(result: ChangeResult) -> None:
    with rasterio.open(result.paths["probability"]) as p, rasterio.open(result.paths["change"]) as c:
        np.testing.assert_array_equal(result.probability, p.read(1))
        np.testing.assert_array_equal(result.mask, c.read(1))
        assert result.crs == p.crs and result.transform == p.transform
        assert result.bounds == pytest.approx(tuple(p.bounds))
    truth = np.zeros((96, 96), bool)
    truth[20:36, 30:54] = True
    assert (result.mask[truth] == 1).mean() > 0.95
    assert result.changed_fraction == pytest.approx((result.mask == 1).sum() / (result.mask != 255).sum())
    assert result.changed_percent == pytest.approx(100 * result.changed_fraction, abs=1e-3)
    assert result.changed_area_m2 == pytest.approx((result.mask == 1).sum() * 100)


def test_polygons_are_a_geodataframe_in_the_raster_crs(result: ChangeResult) -> None:
    import geopandas as gpd

    polys = result.polygons
    assert isinstance(polys, gpd.GeoDataFrame) and polys.crs == result.crs
    assert len(polys) == 1 and polys.area_m2.iloc[0] == pytest.approx(384 * 100, rel=0.05)
    assert result.to_geodataframe() is polys
    assert result.report["summary"]["n_polygons"] == 1


def test_repr_summarises_the_result(result: ChangeResult) -> None:
    text = repr(result)
    assert text.startswith("ChangeResult(1 polygon, ")
    assert f"{result.changed_percent:.3g} % changed" in text
    assert "km2 changed of 0.9216 km2 compared"  # 96 x 96 px of 10 m in text
    assert str(result.output_dir) in text


def test_save_copies_every_output(result: ChangeResult, tmp_path: Path) -> None:
    dest = tmp_path / "kept"
    new = result.save(dest)
    expected = {p.name for p in result.output_dir.iterdir() if not p.name.startswith(".")}
    assert {"project.qgs", "probability.qml", "change.qml", "changes.qml", "quicklook.png"} <= expected
    assert {p.name for p in dest.iterdir()} == expected
    for name in expected - {"project.qgs"}:
        assert filecmp.cmp(result.output_dir / name, dest / name, shallow=False), name
    # the project is written again for the new folder: every layer (BEFORE and AFTER too) resolves from there
    import xml.etree.ElementTree as ET

    sources = [e.text or "" for e in ET.parse(dest / "project.qgs").iter("datasource")]
    assert len(sources) >= 5
    for src in sources:
        path = src.split("|")[0]
        assert (dest / path).resolve().is_file(), src
    assert set(new) == set(result.paths) and all(p.parent == dest for p in new.values())
    # existing outputs: nothing copied without overwrite
    (dest / "report.json").write_text("{}")
    with pytest.raises(OutputExistsError, match="overwrite=True"):
        result.save(dest)
    assert (dest / "report.json").read_text() == "{}"
    result.save(dest, overwrite=True)
    assert json.loads((dest / "report.json").read_text()) == result.report
    assert not [p for p in dest.iterdir() if p.name.startswith(".")]
    # saving into its own folder is a no-op
    assert result.save(result.output_dir) == result.paths


def test_save_over_another_run_leaves_one_result(result: ChangeResult, pair: tuple[Path, Path],
                                                  tmp_path: Path) -> None:
    result.save(tmp_path / "d")
    bare = detect(*pair, method="cva", vectorize=False, quicklook=False)
    bare.save(tmp_path / "d", overwrite=True)
    left = {p.name for p in (tmp_path / "d").iterdir()}
    assert not left & {"changes.gpkg", "changes.geojson", "changes.qml", "quicklook.png", "project.qgs"}
    again = ChangeResult.load(tmp_path / "d")
    assert again.polygons is None and again.report == bare.report


def test_save_refuses_a_file_as_folder(result: ChangeResult, tmp_path: Path) -> None:
    target = tmp_path / "file"
    target.write_text("x")
    with pytest.raises(OSError, match="not a folder"):
        result.save(target)


def test_load_reopens_a_finished_run(result: ChangeResult) -> None:
    again = ChangeResult.load(result.output_dir)
    assert again.report == result.report and again.paths == result.paths
    assert again.crs == result.crs and again.transform == result.transform
    assert again.before == Path(result.report["inputs"]["before"]["path"])
    np.testing.assert_array_equal(again.mask, result.mask)
    assert len(again.polygons) == len(result.polygons)
    assert len([ax for ax in again.plot().axes if ax.get_images()]) == 4


def test_load_names_what_is_missing(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"report\.json, probability\.tif, change\.tif not found"):
        ChangeResult.load(tmp_path)


def test_temporary_outputs_live_as_long_as_the_result(pair: tuple[Path, Path]) -> None:
    res = detect(*pair, method="cva", quicklook=False)
    folder = res.output_dir
    assert (folder / "change.tif").is_file()
    del res
    gc.collect()
    assert not folder.exists()


def test_a_failed_run_without_output_dir_removes_its_temporary_folder(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    missing = tmp_path / "missing.tif"
    with pytest.raises(InputError, match=r"missing\.tif") as excinfo:
        detect(missing, missing, method="cva", quicklook=False)
    # removed by detect itself, not left to the garbage collector (the traceback still holds detect's frame, as
    # a notebook's last exception does; the collector would warn "Implicitly cleaning up")
    assert excinfo.traceback and not [p for p in tmp_path.iterdir() if p.name.startswith("changedet-")]


def test_open_datasets_give_the_same_result_as_paths(pair: tuple[Path, Path], result: ChangeResult) -> None:
    with rasterio.open(pair[0]) as b, rasterio.open(pair[1]) as a:
        res = detect(b, a, method="cva", min_area=300, quicklook=False)
    np.testing.assert_array_equal(res.probability, result.probability)
    assert res.polygons.geometry.iloc[0].equals(result.polygons.geometry.iloc[0])
    # the datasets are closed now: plot() opens them again by name
    assert len([ax for ax in res.plot().axes if ax.get_images()]) == 4


def test_vectorize_false_means_no_polygons(pair: tuple[Path, Path]) -> None:
    res = detect(*pair, method="cva", quicklook=False, vectorize=False)
    assert res.polygons is None and "gpkg" not in res.paths


# -- xarray ------------------------------------------------------------------------------------------------------
def _rioxarray() -> object:
    return pytest.importorskip("rioxarray", reason="rioxarray is not installed (pip install 'changedet[notebook]')")


def test_xarray_inputs_give_the_same_rasters_and_polygons(pair: tuple[Path, Path], result: ChangeResult) -> None:
    rioxarray = _rioxarray()
    before = rioxarray.open_rasterio(pair[0])  # type: ignore[attr-defined]
    after = rioxarray.open_rasterio(pair[1], chunks={"y": 32})  # type: ignore[attr-defined]  # dask-backed
    res = detect(before, after, method="cva", min_area=300, quicklook=False)
    np.testing.assert_array_equal(res.probability, result.probability)
    np.testing.assert_array_equal(res.mask, result.mask)
    assert res.crs == result.crs and res.transform == result.transform
    assert len(res.polygons) == 1 and res.polygons.geometry.iloc[0].equals(result.polygons.geometry.iloc[0])
    assert res.report["inputs"]["after"]["date"] == "2020-05-01"  # the ACQUISITION_DATE tag travels as attrs
    assert len([ax for ax in res.plot().axes if ax.get_images()]) == 4
    assert res.report["inputs"]["before"]["source"] == "xarray.DataArray (in memory)"
    assert res.report["inputs"]["before"]["path"] is None  # the temporary GeoTIFF goes with the result
    written = Path(res.before)
    assert written.is_file()
    del res
    gc.collect()
    assert not written.exists()


def test_a_dataarray_without_coordinate_values_keeps_its_row_order(pair: tuple[Path, Path]) -> None:
    _rioxarray()
    import xarray as xr
    from affine import Affine

    t = Affine(10, 0, 500000, 0, -10, 5000000)
    b = np.random.default_rng(0).normal(100, 5, (3, 64, 64)).astype("float32")
    a = b.copy()
    a[:, :20, :20] += 200  # the change is in the top-left corner (the north-west)

    def bare(x: np.ndarray) -> object:  # dims only: rows in the order of the transform
        return xr.DataArray(x, dims=("band", "y", "x")).rio.write_crs("EPSG:32631").rio.write_transform(t)

    res = detect(bare(b), bare(a), method="cva", quicklook=False)
    rows = np.flatnonzero((res.mask == 1).any(axis=1))
    assert rows.min() == 0 and rows.max() == 19
    left, bottom, right, top = res.polygons.total_bounds
    assert left == pytest.approx(500000) and right == pytest.approx(500000 + 200)
    assert top == pytest.approx(5000000) and bottom == pytest.approx(5000000 - 200)


def test_a_qgis_project_of_xarray_inputs_refers_to_no_temporary_file(pair: tuple[Path, Path], tmp_path: Path) -> None:
    rioxarray = _rioxarray()
    before = rioxarray.open_rasterio(pair[0])  # type: ignore[attr-defined]
    after = rioxarray.open_rasterio(pair[1])  # type: ignore[attr-defined]
    res = detect(before, after, method="cva", output_dir=tmp_path / "out", qgis_project=True, quicklook=False)
    project = (tmp_path / "out" / "project.qgs").read_text()
    assert "changes.gpkg" in project and "change.tif" in project
    assert "changedet-xarray-" not in project and "before.tif" not in project  # the inputs were in memory
    del res


def test_xarray_band_names_time_and_south_up(pair: tuple[Path, Path], result: ChangeResult) -> None:
    rioxarray = _rioxarray()
    import xarray as xr

    def named(path: Path, day: str) -> xr.DataArray:
        da = rioxarray.open_rasterio(path)  # type: ignore[attr-defined]
        da = da.assign_coords(band=["B02", "B03", "B04", "B08"]).expand_dims(time=[np.datetime64(day)])
        da.attrs = {}
        return da

    before = named(pair[0], "2018-06-01")
    after = named(pair[1], "2018-07-15").isel(y=slice(None, None, -1))  # y increasing: flipped back on write
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = detect(before, after, method="cva", min_area=300, quicklook=False)
    np.testing.assert_array_equal(res.mask, result.mask)
    inputs = res.report["inputs"]
    assert inputs["before"]["descriptions"] == ["B02", "B03", "B04", "B08"]
    assert (inputs["before"]["date"], inputs["after"]["date"]) == ("2018-06-01", "2018-07-15")
    assert res.polygons.before_date.iloc[0] == "2018-06-01"


def test_xarray_misuse_is_a_clear_input_error(pair: tuple[Path, Path], tmp_path: Path) -> None:
    rioxarray = _rioxarray()
    da = rioxarray.open_rasterio(pair[0])  # type: ignore[attr-defined]
    with pytest.raises(InputError, match=r"xarray\.Dataset was given"):
        detect(da.to_dataset(dim="band"), pair[1], method="cva", output_dir=tmp_path / "a")
    two = da.expand_dims(time=2)
    with pytest.raises(InputError, match=r"needs \(band, y, x\)"):
        detect(two, pair[1], method="cva", output_dir=tmp_path / "b")
    nospace = da.rename({"x": "u", "y": "v"})
    with pytest.raises(InputError, match="no spatial dimensions"):
        detect(pair[0], nospace, method="cva", output_dir=tmp_path / "c")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists() and not (tmp_path / "c").exists()


def test_report_areas_follow_the_latitude_in_web_mercator_and_degrees(tmp_path: Path) -> None:
    from pyproj import Geod, Transformer

    from changedet.testing import make_geotiff

    # Web Mercator at 60 N: a map unit is half a metre on the ground, so a pixel of 10 units is ~25 m^2
    x, y = Transformer.from_crs("EPSG:4326", "EPSG:3857", always_xy=True).transform(10, 60)
    rng = np.random.default_rng(0)
    b = rng.normal(100, 5, (3, 64, 64)).astype("float32")
    a = b.copy()
    a[:, 10:30, 10:30] += 80
    pb = make_geotiff(tmp_path / "mb.tif", b, crs="EPSG:3857", res=10, origin=(x, y))
    pa = make_geotiff(tmp_path / "ma.tif", a, crs="EPSG:3857", res=10, origin=(x, y))
    res = detect(pb, pa, method="cva", output_dir=tmp_path / "m", quicklook=False)
    s = res.report["summary"]
    gdf = res.to_geodataframe()
    truth = sum(abs(Geod(ellps="WGS84").geometry_area_perimeter(g)[0]) for g in gdf.to_crs(4326).geometry)
    assert s["changed_pixels"] == (res.mask == 1).sum() > 0
    assert s["changed_area_m2"] == pytest.approx(truth, rel=0.01)
    assert s["changed_area_m2"] == pytest.approx(s["changed_pixels"] * 100 / 4, rel=0.02)
    # EPSG:4326 over 5 degrees of latitude: the rows in the north hold less ground than the centre row
    g = rng.normal(100, 5, (1, 250, 60)).astype("float32")
    g2 = g.copy()
    g2[:, :50] += 80  # the northern degree changes
    gb = make_geotiff(tmp_path / "gb.tif", g, crs="EPSG:4326", res=0.02, origin=(10, 60))
    ga = make_geotiff(tmp_path / "ga.tif", g2, crs="EPSG:4326", res=0.02, origin=(10, 60))
    res = detect(gb, ga, method="cva", output_dir=tmp_path / "g", quicklook=False, vectorize=False)
    s = res.report["summary"]
    rows = np.flatnonzero((res.mask == 1).any(axis=1))
    geod = Geod(ellps="WGS84")
    per_row = [abs(geod.polygon_area_perimeter([10, 10.02, 10.02, 10], [60 - 0.02 * r, 60 - 0.02 * r,
                                                                          60 - 0.02 * (r + 1), 60 - 0.02 * (r + 1)])[0])
               for r in range(250)]
    expected = sum((res.mask[r] == 1).sum() * per_row[r] for r in rows)
    assert s["changed_area_m2"] == pytest.approx(expected, rel=0.005)
    assert s["valid_area_m2"] == pytest.approx(60 * sum(per_row), rel=0.005)


def test_progress_true_draws_a_bar_false_none(pair: tuple[Path, Path], tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    res = detect(*pair, method="cva", quicklook=False, vectorize=False, progress=True)
    assert "tile" in capsys.readouterr().err and res.report["summary"]["valid_pixels"] > 0
    detect(*pair, method="cva", quicklook=False, vectorize=False, progress=False)
    assert capsys.readouterr().err == ""
    with pytest.raises(InputError, match="progress must be True, False, None or a callable"):
        detect(*pair, method="cva", output_dir=tmp_path / "x", progress="yes")  # type: ignore[arg-type]
    assert not (tmp_path / "x").exists()


@pytest.fixture
def pixel_pair(tmp_path: Path) -> tuple[Path, Path]:
    """A 40 x 30 px pair without georeferencing."""
    from changedet.testing import make_geotiff

    img = np.random.default_rng(0).normal(100, 5, (3, 30, 40)).astype("float32")
    return make_geotiff(tmp_path / "b.tif", img, crs=None), make_geotiff(tmp_path / "a.tif", img + 1, crs=None)


def test_a_qgis_project_of_pixel_coordinates_is_refused_before_writing(pixel_pair: tuple[Path, Path],
                                                                       tmp_path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(InputError, match=r"not georeferenced.*drop --qgis-project"):
            detect(*pixel_pair, method="cva", output_dir=tmp_path / "out", qgis_project=True)
    assert not (tmp_path / "out").exists()


def test_bounds_of_a_pixel_coordinate_result_are_ordered(pixel_pair: tuple[Path, Path]) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = detect(*pixel_pair, method="cva", quicklook=False)
    assert res.bounds == (0.0, 0.0, 40.0, 30.0)
    assert res.report["vectorize"]["geojson_crs"] is None  # pixel coordinates, not WGS84


def test_geojson_crs_input_keeps_the_raster_crs_in_python_too(pair: tuple[Path, Path]) -> None:
    import pyogrio

    res = detect(*pair, method="cva", quicklook=False, geojson_crs="input")
    assert res.report["vectorize"]["geojson_crs"] is None
    assert pyogrio.read_info(res.paths["geojson"])["crs"] == "EPSG:32631"


def test_vectorize_of_detect_files_takes_model_dates_and_threshold_from_their_tags(result: ChangeResult) -> None:
    gdf = changedet.vectorize(result.paths["change"], result.paths["probability"], min_area=300)
    assert len(gdf) == len(result.polygons)
    first = gdf.iloc[0]
    assert first["model"] == result.polygons.iloc[0]["model"] == "cva"
    assert first["before_date"] == result.polygons.iloc[0]["before_date"] is not None
    assert first["after_date"] == result.polygons.iloc[0]["after_date"] is not None
    assert first["threshold"] == pytest.approx(result.report["threshold"], abs=1e-4)


def test_a_result_still_finds_its_files_after_chdir(pair: tuple[Path, Path], tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    import shutil
    import xml.etree.ElementTree as ET

    for p in pair:
        shutil.copy(p, tmp_path / p.name)
    monkeypatch.chdir(tmp_path)
    res = detect(pair[0].name, pair[1].name, method="cva", output_dir="run", qgis_project=True, quicklook=False)
    monkeypatch.chdir(tmp_path.parent)  # a notebook that moves on
    assert res.before == tmp_path / pair[0].name and res.output_dir == tmp_path / "run"
    res.save(tmp_path / "kept")
    names = [m.findtext("layername") for m in ET.parse(tmp_path / "kept" / "project.qgs").iter("maplayer")]
    assert "BEFORE" in names and "AFTER" in names


def test_threads_apply_to_the_run_only_and_bad_options_fail_before_reading(tmp_path: Path) -> None:
    import torch

    before, after = make_pair(tmp_path, "aligned", size=64)
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        for method in ("model", "dsfa"):  # DSFA fits a torch network: --threads applies to it too
            detect(before, after, method=method, threads=1, output_dir=tmp_path / method, quicklook=False,
                   vectorize=False)
            assert torch.get_num_threads() == 2  # restored: a notebook's next call is not left on 1 thread
    finally:
        torch.set_num_threads(old)
    for bad, text in [({"threshold": 1.5}, "--threshold"), ({"threshold": float("nan")}, "--threshold"),
                      ({"threads": -1}, "--threads"), ({"indexes": 4}, "--indexes")]:
        with pytest.raises(InputError, match=text):
            detect(before, after, output_dir=tmp_path / "bad", **bad)
        assert not (tmp_path / "bad").exists()  # refused before anything was read or written
    from changedet.series import detect_series

    with pytest.raises(InputError, match="--threshold"):
        detect_series([before, after], threshold=1.5, output_dir=tmp_path / "series")
    assert not (tmp_path / "series").exists()


@pytest.mark.parametrize(("name", "value"), [("CHANGEDET_GDAL_CACHE_MB", "256.5"), ("CHANGEDET_GDAL_CACHE_MB", "abc"),
                                             ("CHANGEDET_GDAL_THREADS", "two"), ("CHANGEDET_GDAL_THREADS", "0")])
def test_documented_environment_variables_that_are_not_counts_are_a_clear_error(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, value: str) -> None:
    before, after = make_pair(tmp_path, "aligned", size=64)
    monkeypatch.setenv(name, value)
    with pytest.raises(InputError, match=f"{name}='{value}' is not a whole number >= 1"):
        detect(before, after, method="cva", output_dir=tmp_path / "out")
    monkeypatch.setenv(name, "64")
    assert detect(before, after, method="cva", output_dir=tmp_path / "ok", quicklook=False).paths["change"].exists()
