"""changedet.io.stack: single-band folders -> one multi-band GeoTIFF on the finest grid."""

from __future__ import annotations

import datetime as dt
import warnings
from pathlib import Path

import numpy as np
import pytest
import rasterio

from changedet.errors import InputError, OutputExistsError, ReprojectedInputWarning
from changedet.io import check_pair, open_pair, raster_info
from changedet.io.raster import cog_layout_errors
from changedet.io.stack import SENTINEL2_BANDS, band_name_from_file, stack_bands
from changedet.testing import make_geotiff

PREFIX = "T31UDQ_20190501T105031_"


def _s2_folder(folder: Path) -> dict[str, np.ndarray]:
    """A fake Sentinel-2 date: 10 m bands 96 px, 20 m bands 48 px, 60 m bands 16 px over one extent."""
    res = {"B02": 10, "B03": 10, "B04": 10, "B08": 10, "B05": 20, "B06": 20, "B07": 20, "B8A": 20, "B11": 20,
           "B12": 20, "B01": 60, "B09": 60, "B10": 60}  # fmt: skip
    arrays = {}
    for name, r in sorted(res.items(), key=lambda kv: kv[0][::-1]):  # written in a scrambled order
        n = 960 // r
        yy, xx = (np.mgrid[0:n, 0:n] + 0.5) * r  # metres: a smooth field sampled at each band's pixel centres
        arrays[name] = (2000 + 800 * np.sin(xx / 150.0) * np.cos(yy / 230.0) + len(name) * 10).astype(
            "uint16"
        )
        make_geotiff(folder / f"{PREFIX}{name}.tif", arrays[name], res=r)
    return arrays


def test_band_name_from_file() -> None:
    assert band_name_from_file("S2A_OPER_MSI_L1C_TL_MTI__20160120T104345_A003020_T39QZG_B01.tif") == "B01"
    assert band_name_from_file("T40QBM_20180328T065919_B8A.tif") == "B8A"
    assert band_name_from_file("scene_B2.tif") == "B02"
    assert band_name_from_file("BAND.tif") is None and band_name_from_file("B13.tif") is None


def test_sentinel2_folder(tmp_path: Path) -> None:
    arrays = _s2_folder(tmp_path / "imgs_1")
    out = stack_bands(tmp_path / "imgs_1", tmp_path / "stack.tif")
    info = raster_info(out)
    assert info.descriptions == SENTINEL2_BANDS
    assert (info.width, info.height, info.count) == (96, 96, 13) and info.res == (10.0, 10.0)
    assert info.date == dt.date(2019, 5, 1) and info.tags["ACQUISITION_DATE"] == "2019-05-01"
    with rasterio.open(out) as ds:
        assert ds.profile["tiled"] and ds.compression is not None and ds.dtypes[0] == "uint16"
        # band-interleaved: a true-colour model reading B04, B03, B02 decodes 3 of the 13 bands' blocks
        assert ds.tags(ns="IMAGE_STRUCTURE")["INTERLEAVE"] == "BAND"
        np.testing.assert_array_equal(ds.read(2), arrays["B02"])  # 10 m bands copied exactly
        np.testing.assert_array_equal(ds.read(8), arrays["B08"])
        b05 = ds.read(5).astype(float)
        b01 = ds.read(1).astype(float)
    # 20 m / 60 m bands resampled onto the 10 m grid: the block means agree with the source pixels
    np.testing.assert_allclose(
        b05.reshape(48, 2, 48, 2).mean(axis=(1, 3))[4:-4, 4:-4], arrays["B05"][4:-4, 4:-4], rtol=0.35
    )
    assert abs(b01.mean() - arrays["B01"].mean()) < 0.02 * arrays["B01"].mean()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["imgs_1", "stack.tif"]
    assert cog_layout_errors(out) == []


def test_stack_keeps_every_files_nodata_and_marks_uncovered_pixels(tmp_path: Path) -> None:
    from changedet.errors import ChangedetWarning

    a = np.full((60, 60), 100, np.uint8)
    a[:10] = 0  # nodata 0
    b = np.full((60, 60), 200.0, np.float32)
    b[-10:] = -9999  # nodata -9999
    make_geotiff(tmp_path / "d" / "a.tif", a, nodata=0, dtype="uint8")
    make_geotiff(tmp_path / "d" / "b.tif", b, nodata=-9999, dtype="float32")
    with pytest.warns(ChangedetWarning, match="different nodata values"):
        out = stack_bands(tmp_path / "d", tmp_path / "s.tif")
    with rasterio.open(out) as ds:
        assert ds.nodata == 0 and ds.dtypes[0] == "float32"
        data = ds.read(masked=True)
    assert data.mask[0, :10].all() and not data.mask[0, 10:].any()
    assert data.mask[1, -10:].all() and not data.mask[1, :-10].any()  # -9999 did not become data
    # a band 300 m east, no nodata declared anywhere: the uncovered columns are nodata, with a warning
    make_geotiff(tmp_path / "e" / "p1.tif", np.full((60, 60), 7, np.uint8), dtype="uint8")
    make_geotiff(tmp_path / "e" / "p2.tif", np.full((60, 60), 9, np.uint8), dtype="uint8",
                 origin=(500300.0, 5700000.0))
    with pytest.warns(ChangedetWarning, match=r"p2.tif do\(es\) not cover the whole grid"):
        out = stack_bands(tmp_path / "e", tmp_path / "e.tif")
    with rasterio.open(out) as ds:
        assert ds.nodata == 0
        band2 = ds.read(2, masked=True)
    assert band2.mask[:, :30].all() and (band2[:, 30:] == 9).all()
    # the same with a declared nodata value: the uncovered pixels are that nodata, and the warning still says so
    make_geotiff(tmp_path / "g" / "p1.tif", np.full((60, 60), 7, np.uint8), dtype="uint8", nodata=0)
    make_geotiff(tmp_path / "g" / "p2.tif", np.full((60, 60), 9, np.uint8), dtype="uint8", nodata=0,
                 origin=(500300.0, 5700000.0))
    with pytest.warns(ChangedetWarning, match=r"p2.tif do\(es\) not cover the whole grid.*nodata \(0, the files'"):
        out = stack_bands(tmp_path / "g", tmp_path / "g.tif")
    with rasterio.open(out) as ds:
        assert ds.read(2, masked=True).mask[:, :30].all()
    # a band elsewhere altogether: an error, nothing written
    make_geotiff(tmp_path / "f" / "p1.tif", np.ones((60, 60), np.uint8), dtype="uint8")
    make_geotiff(tmp_path / "f" / "p2.tif", np.ones((60, 60), np.uint8), dtype="uint8", origin=(600000.0, 5700000.0))
    with pytest.raises(InputError, match=r"p2\.tif does not overlap p1\.tif"):
        stack_bands(tmp_path / "f", tmp_path / "f.tif")
    assert not (tmp_path / "f.tif").exists()


def _jp2(path: Path, array: np.ndarray, res: int) -> None:
    from affine import Affine

    path.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(path, "w", driver="JP2OpenJPEG", width=array.shape[1], height=array.shape[0], count=1,
                       dtype="uint16", crs="EPSG:32631", transform=Affine(res, 0, 600000, 0, -res, 5000000),
                       QUALITY=100, REVERSIBLE="YES") as ds:
        ds.write(array[None])


@pytest.mark.parametrize("level", ["L1C", "L2A"])
def test_sentinel2_safe_products(tmp_path: Path, level: str) -> None:
    """A .SAFE product as ESA delivers it: JP2 per band under GRANULE/*/IMG_DATA (L2A: R10m/R20m/R60m, each band
    at several resolutions, no B10), plus true-colour and auxiliary layers that must be left out."""
    safe = tmp_path / f"S2B_MSI{level}_20190501T105029_N0207_R051_T31UDQ_20190501T130520.SAFE"
    img = safe / "GRANULE" / f"{level}_T31UDQ_A011332_20190501T105031" / "IMG_DATA"
    native = {"B02": 10, "B03": 10, "B04": 10, "B08": 10, "B05": 20, "B06": 20, "B07": 20, "B8A": 20, "B11": 20,
              "B12": 20, "B01": 60, "B09": 60, "B10": 60}  # fmt: skip
    rng = np.random.default_rng(0)
    b02 = rng.integers(1, 5000, (48, 48)).astype("uint16")
    b02[:, :6] = 0  # outside the swath
    for band, res in native.items():
        n = 480 // res
        arr = b02 if band == "B02" else rng.integers(1, 5000, (n, n)).astype("uint16")
        if level == "L1C":
            _jp2(img / f"T31UDQ_20190501T105031_{band}.jp2", arr, res)
        elif band != "B10":
            _jp2(img / f"R{res}m" / f"T31UDQ_20190501T105031_{band}_{res}m.jp2", arr, res)
            if res < 60:  # the coarser copies ESA adds: never the ones stacked
                _jp2(img / "R60m" / f"T31UDQ_20190501T105031_{band}_60m.jp2", arr[:: 60 // res, :: 60 // res], 60)
    for extra in ("TCI", "AOT", "WVP", "SCL") if level == "L2A" else ("TCI",):
        _jp2(img / ("R20m" if level == "L2A" else "") / f"T31UDQ_20190501T105031_{extra}.jp2",
             np.ones((24, 24), "uint16"), 20)
    want = [b for b in SENTINEL2_BANDS if level == "L1C" or b != "B10"]
    for given in (safe, img.parent, img):  # the product, its granule, or IMG_DATA
        out = stack_bands(given, tmp_path / f"{level}.tif", overwrite=True)
        info = raster_info(out)
        assert info.descriptions == tuple(want)
        assert (info.width, info.height) == (48, 48) and info.res == (10.0, 10.0) and info.nodata == 0
        assert info.date == dt.date(2019, 5, 1) and info.tags["SPACECRAFT_ID"] == "SENTINEL_2B"
        with rasterio.open(out) as ds:
            np.testing.assert_array_equal(ds.read(2), b02)  # B02 from its 10 m file, not a coarser copy
    # the .zip as downloaded, read in place
    import shutil

    archive = Path(shutil.make_archive(str(tmp_path / safe.stem), "zip", tmp_path, safe.name))
    out = stack_bands(archive, tmp_path / f"{level}-zip.tif")
    assert raster_info(out).descriptions == tuple(want)
    with rasterio.open(out) as ds:
        np.testing.assert_array_equal(ds.read(2), b02)
    # a product with two granules: ask for one of them
    (safe / "GRANULE" / "L1C_T31UDR_A011332_20190501T105031" / "IMG_DATA").mkdir(parents=True)
    with pytest.raises(InputError, match="2 granules"):
        stack_bands(safe, tmp_path / "two.tif")


def test_generic_folder_natural_order(tmp_path: Path) -> None:
    for i in (10, 2, 1):
        make_geotiff(tmp_path / "in" / f"scene_band{i}_v1.tif", np.full((20, 20), i, "uint8"))
    (tmp_path / "in" / "notes.txt").write_text("not a raster")
    out = stack_bands(tmp_path / "in", tmp_path / "out.tif")
    with rasterio.open(out) as ds:
        assert ds.descriptions == ("band1", "band2", "band10")
        assert [int(ds.read(i).max()) for i in (1, 2, 3)] == [1, 2, 10]


def test_bands_in_another_crs_stack_and_a_band_given_twice_is_refused(tmp_path: Path) -> None:
    from rasterio.warp import calculate_default_transform, reproject

    band = np.arange(10000, dtype="uint16").reshape(100, 100)
    t_utm = rasterio.transform.from_origin(500000, 5000000, 10, 10)
    for b in ("B02", "B03"):
        make_geotiff(tmp_path / "d" / f"x_{b}.tif", band, transform=t_utm)
    t, w, h = calculate_default_transform("EPSG:32631", "EPSG:4326", 100, 100, 500000, 4999000, 501000, 5000000)
    geo = np.zeros((h, w), "uint16")
    reproject(band, geo, src_transform=t_utm, src_crs="EPSG:32631", dst_transform=t, dst_crs="EPSG:4326")
    make_geotiff(tmp_path / "d" / "x_B04.tif", geo, crs="EPSG:4326", transform=t)
    with pytest.warns(ReprojectedInputWarning, match=r"CRS of x_B04\.tif \(EPSG:4326\) differs"):
        out = stack_bands(tmp_path / "d", tmp_path / "s.tif")  # was "x_B04.tif does not overlap x_B02.tif"
    with rasterio.open(out) as ds:
        assert ds.crs.to_epsg() == 32631 and ds.descriptions == ("B02", "B03", "B04")
        assert ds.read(3)[10:90, 10:90].mean() == pytest.approx(band[10:90, 10:90].mean(), rel=0.01)
    make_geotiff(tmp_path / "d" / "copy_of_B04.tif", band, transform=t_utm)
    with pytest.raises(InputError, match=r"same Sentinel-2 band \(B04: copy_of_B04.tif, x_B04.tif\)"):
        stack_bands(tmp_path / "d", tmp_path / "t.tif")
    assert not (tmp_path / "t.tif").exists()


def test_stack_errors(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match=r"empty: no raster files"):
        stack_bands(tmp_path / "empty", tmp_path / "o.tif")
    make_geotiff(tmp_path / "multi" / "a.tif", np.zeros((2, 8, 8), "uint8"))
    with pytest.raises(InputError, match=r"a.tif: has 2 bands"):
        stack_bands(tmp_path / "multi", tmp_path / "o.tif")
    make_geotiff(tmp_path / "ok" / "a.tif", np.zeros((8, 8), "uint8"))
    (tmp_path / "o.tif").write_text("x")
    with pytest.raises(OutputExistsError):
        stack_bands(tmp_path / "ok", tmp_path / "o.tif")
    assert (tmp_path / "o.tif").read_text() == "x"


@pytest.mark.realdata
def test_oscd_abudhabi_stack_check_and_align(oscd_images: Path, tmp_path: Path) -> None:
    city = oscd_images / "abudhabi"
    before = stack_bands(city / "imgs_1", tmp_path / "abudhabi_1.tif")
    after = stack_bands(city / "imgs_2", tmp_path / "abudhabi_2.tif")
    info_b, info_a = raster_info(before), raster_info(after)
    assert (info_b.width, info_b.height, info_b.count) == (785, 799, 13)
    assert (info_a.width, info_a.height, info_a.count) == (782, 795, 13)
    assert info_b.descriptions == SENTINEL2_BANDS
    assert (info_b.date, info_a.date) == (dt.date(2016, 1, 20), dt.date(2018, 3, 28))

    report = check_pair(before, after)
    assert report.ok, report.format()
    assert "size differs: abudhabi_1.tif 785 x 799 px, abudhabi_2.tif 782 x 795 px" in report.notes
    assert ReprojectedInputWarning in report.warning_classes
    assert report.shift is not None and report.shift.band == "B04"

    with rasterio.open(next((city / "imgs_1").glob("*B02.tif"))) as b02:
        grid = (b02.transform, b02.width, b02.height)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pair = open_pair(before, after)
    with pair:
        assert (pair.transform, pair.width, pair.height) == grid
        assert pair.band_names == list(SENTINEL2_BANDS)
        b, a, valid = pair.read()
        assert valid.mean() > 0.99
        assert 90 < pair.pixel_area_m2() < 110  # ~10 m pixels at 24 N
        i = pair.band_names.index("B04")
        assert np.corrcoef(b[i][valid], a[i][valid])[0, 1] > 0.6


@pytest.mark.parametrize(("mission", "level", "files", "names", "rgb"), [
    ("LC09", "L2SP", [f"SR_B{i}" for i in range(1, 8)] + ["ST_B10", "QA_PIXEL", "QA_RADSAT", "SR_QA_AEROSOL"],
     [f"SR_B{i}" for i in range(1, 8)], ["SR_B4", "SR_B3", "SR_B2"]),
    ("LE07", "L2SP", ["SR_B1", "SR_B2", "SR_B3", "SR_B4", "SR_B5", "SR_B7", "ST_B6", "QA_PIXEL"],
     ["SR_B1", "SR_B2", "SR_B3", "SR_B4", "SR_B5", "SR_B7"], ["SR_B3", "SR_B2", "SR_B1"]),
    ("LC08", "L1TP", [f"B{i}" for i in range(1, 12)] + ["QA_PIXEL"],
     ["B1", "B2", "B3", "B4", "B5", "B6", "B7", "B9"], ["B4", "B3", "B2"]),
])
def test_landsat_collection2_scene_folders(tmp_path: Path, mission: str, level: str, files: list[str],
                                           names: list[str], rgb: list[str]) -> None:
    """A USGS scene folder: the reflective 30 m bands in band order with Landsat's own names and 0 as nodata; no
    panchromatic, thermal or QA layer; detect then feeds the RGB model the red, green and blue bands."""
    from changedet.api import band_colours

    rng = np.random.default_rng(0)
    paths = {}
    for date in ("20200612", "20210615"):
        d = tmp_path / date
        d.mkdir()
        for f in files:
            pan = f == "B8"
            size = 128 if pan else 64
            arr = rng.integers(7000, 20000, (size, size)).astype("uint16")
            arr[:4] = 0  # fill outside the swath
            make_geotiff(d / f"{mission}_{level}_196025_{date}_20200824_02_T1_{f}.TIF", arr, res=15 if pan else 30)
        (d / f"{mission}_{level}_196025_{date}_20200824_02_T1_MTL.txt").write_text("GROUP = LANDSAT_METADATA_FILE\n")
        paths[date] = stack_bands(d, tmp_path / f"{date}.tif")
    info = raster_info(paths["20200612"])
    assert list(info.descriptions) == names
    assert info.res == (30.0, 30.0) and info.nodata == 0 and info.date == dt.date(2020, 6, 12)
    assert info.tags["SPACECRAFT_ID"] == f"LANDSAT_{int(mission[2:])}"  # tells Landsat 4-7 from 8/9 numbering
    colours = band_colours(info)
    assert [names[colours.index(c)] for c in ("red", "green", "blue")] == rgb


def test_a_folder_with_two_landsat_scenes_is_refused(tmp_path: Path) -> None:
    for date in ("20200612", "20210615"):
        for b in (2, 3, 4):
            make_geotiff(tmp_path / f"LC08_L2SP_196025_{date}_20200824_02_T1_SR_B{b}.TIF",
                         np.ones((16, 16), "uint16"), res=30)
    with pytest.raises(InputError, match=r"2 Landsat scenes.*own folder"):
        stack_bands(tmp_path, tmp_path / "out.tif")
    assert not (tmp_path / "out.tif").exists()
