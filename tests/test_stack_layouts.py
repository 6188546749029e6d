"""changedet stack on the layouts products come in: Earth Engine Landsat exports, Sentinel-2 band folders outside the
.SAFE tree, old-format SAFE products, bands in several CRSs; the sensor tag; the CLI's messages and help."""

from __future__ import annotations

import datetime as dt
import logging
import shutil
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
import rasterio
from click.testing import CliRunner
from rasterio.transform import from_origin
from rasterio.warp import transform_bounds

from changedet.cli.main import cli
from changedet.errors import ChangedetWarning, InputError, ReprojectedInputWarning
from changedet.io import raster_info
from changedet.io.stack import SENTINEL2_BANDS, stack_bands
from changedet.testing import make_geotiff

S2_RES = {"B02": 10, "B03": 10, "B04": 10, "B08": 10, "B05": 20, "B06": 20, "B07": 20, "B8A": 20, "B11": 20,
          "B12": 20, "B01": 60, "B09": 60, "B10": 60}  # fmt: skip


def _band(path: Path, res: int = 30, size_m: int = 960, value: int = 1000, dtype: str = "uint16", **kw: object) -> Path:
    n = size_m // res
    return make_geotiff(path, np.full((n, n), value, dtype), res=res, dtype=dtype, **kw)  # type: ignore[arg-type]


# --- A: Landsat files named by Earth Engine (or beside an MTL file) keep Landsat's numbering ----------------------

def test_earth_engine_landsat_5_files_keep_landsat_band_names_without_thermal(tmp_path: Path) -> None:
    """``LT05_199026_20110615_B1.tif`` .. ``B7``: were renamed B01..B07 (Sentinel-2), so detect read L5's NIR, red,
    green (B4, B3, B2) as B04, B03, B02."""
    d = tmp_path / "l5"
    for i in range(1, 8):
        _band(d / f"LT05_199026_20110615_B{i}.tif", value=10 * i)
    out = stack_bands(d, tmp_path / "l5.tif")
    info = raster_info(out)
    assert info.descriptions == ("B1", "B2", "B3", "B4", "B5", "B7")  # thermal B6 left out
    assert info.tags["SPACECRAFT_ID"] == "LANDSAT_5" and info.nodata == 0 and info.date == dt.date(2011, 6, 15)
    with rasterio.open(out) as ds:
        assert [int(ds.read(i).max()) for i in (1, 3, 6)] == [10, 30, 70]


def test_lowercase_earth_engine_landsat_8_surface_reflectance(tmp_path: Path) -> None:
    d = tmp_path / "l8"
    for b in [f"sr_b{i}" for i in range(1, 8)] + ["st_b10", "qa_pixel", "sr_qa_aerosol"]:
        _band(d / f"lc08_044034_20210508_{b}.tif")
    info = raster_info(stack_bands(d, tmp_path / "l8.tif"))
    assert info.descriptions == tuple(f"SR_B{i}" for i in range(1, 8))
    assert info.tags["SPACECRAFT_ID"] == "LANDSAT_8"
    # an explicit list of Landsat files keeps their Landsat names too (not B01, B02, B03)
    files = [d / f"lc08_044034_20210508_sr_b{i}.tif" for i in (4, 3, 2)]
    info = raster_info(stack_bands(d, tmp_path / "l8rgb.tif", files=files))
    assert info.descriptions == ("SR_B4", "SR_B3", "SR_B2") and info.tags["SPACECRAFT_ID"] == "LANDSAT_8"


def test_band_files_beside_an_mtl_file_are_landsat_bands(tmp_path: Path) -> None:
    d = tmp_path / "scene"
    for i in (1, 2, 3, 4, 5, 6, 7, 8):
        _band(d / f"B{i}.TIF", res=15 if i == 8 else 30)
    (d / "MTL.txt").write_text('GROUP = LANDSAT_METADATA_FILE\n  SPACECRAFT_ID = "LANDSAT_7"\n'
                               "  DATE_ACQUIRED = 2002-07-14\nEND_GROUP = LANDSAT_METADATA_FILE\n")
    info = raster_info(stack_bands(d, tmp_path / "l7.tif"))
    assert info.descriptions == ("B1", "B2", "B3", "B4", "B5", "B7") and info.res == (30.0, 30.0)
    assert info.tags["SPACECRAFT_ID"] == "LANDSAT_7" and info.date == dt.date(2002, 7, 14)


# --- B: Sentinel-2 band folders outside the .SAFE tree ------------------------------------------------------------

def test_earth_search_flat_layout_leaves_out_the_non_reflectance_layers(tmp_path: Path,
                                                                        caplog: pytest.LogCaptureFixture) -> None:
    """B01.tif .. B12.tif, B8A.tif, AOT.tif, SCL.tif, WVP.tif and a 3-band TCI.tif: was "TCI.tif: has 3 bands ...
    Split it first"; without TCI it stacked AOT, SCL (bilinearly resampled) and WVP as bands, without nodata."""
    d = tmp_path / "S2B_31UDQ_20161130_0_L2A"
    for b, res in S2_RES.items():
        if b != "B10":
            _band(d / f"{b}.tif", res=res)
    for layer, res in (("AOT", 10), ("SCL", 20), ("WVP", 10)):
        _band(d / f"{layer}.tif", res=res, value=3)
    make_geotiff(d / "TCI.tif", np.ones((3, 96, 96), "uint8"), dtype="uint8")
    with caplog.at_level(logging.INFO, logger="changedet.io.stack"):
        info = raster_info(stack_bands(d, tmp_path / "e84.tif"))
    assert info.descriptions == tuple(b for b in SENTINEL2_BANDS if b != "B10")
    assert info.nodata == 0 and info.tags["SPACECRAFT_ID"] == "SENTINEL_2B" and info.date == dt.date(2016, 11, 30)
    assert "left out AOT.tif, SCL.tif, TCI.tif, WVP.tif" in caplog.text


def test_a_single_resolution_folder_of_an_l2a_product_warns(tmp_path: Path) -> None:
    safe = tmp_path / "S2B_MSIL2A_20161130T105422_N0205_R051_T31UDQ_20161130T112233.SAFE"
    granule = safe / "GRANULE" / "L2A_T31UDQ_A007527_20161130T112233"
    r10 = granule / "IMG_DATA" / "R10m"
    for b in ("B02", "B03", "B04", "B08", "AOT", "WVP"):
        _band(r10 / f"T31UDQ_20161130T105422_{b}_10m.tif", res=10)
    make_geotiff(r10 / "T31UDQ_20161130T105422_TCI_10m.tif", np.ones((3, 96, 96), "uint8"), dtype="uint8")
    with pytest.warns(ChangedetWarning, match=r"only the 10 m files of a Sentinel-2 L2A product.*GRANULE/<name>"):
        info = raster_info(stack_bands(r10, tmp_path / "r10.tif"))
    assert info.descriptions == ("B02", "B03", "B04", "B08") and info.nodata == 0
    assert info.tags["SPACECRAFT_ID"] == "SENTINEL_2B" and info.date == dt.date(2016, 11, 30)


def test_8_bit_sentinel2_named_files_get_no_nodata(tmp_path: Path) -> None:
    for b in ("B02", "B03", "B04"):
        _band(tmp_path / "d" / f"x_{b}.tif", res=10, value=0, dtype="uint8")  # 0 is a dark pixel here, not fill
    info = raster_info(stack_bands(tmp_path / "d", tmp_path / "s.tif"))
    assert info.nodata is None and "SPACECRAFT_ID" not in info.tags


# --- C: the sensing date of an old-format SAFE product --------------------------------------------------------------

OLD_SAFE = "S2A_OPER_PRD_MSIL1C_PDMC_20161205T183354_R051_V20161130T105422_20161130T105422.SAFE"
OLD_TILE = "S2A_OPER_MSI_L1C_TL_SGS__20161205T150012_A007527_T31UDQ"


def _old_safe(root: Path) -> Path:
    img = root / OLD_SAFE / "GRANULE" / f"{OLD_TILE}_N02.04" / "IMG_DATA"
    for b, res in S2_RES.items():
        _band(img / f"{OLD_TILE}_{b}.tif", res=res)
    return root / OLD_SAFE


def test_old_format_safe_records_the_sensing_date_not_the_processing_date(tmp_path: Path) -> None:
    """Processed 2016-12-05, sensed 2016-11-30 (``_V20161130``): the processing date was recorded."""
    safe = _old_safe(tmp_path)
    granule = next((safe / "GRANULE").iterdir())
    for given in (safe, granule, granule / "IMG_DATA"):
        info = raster_info(stack_bands(given, tmp_path / "old.tif", overwrite=True))
        assert info.date == dt.date(2016, 11, 30) and info.tags["SPACECRAFT_ID"] == "SENTINEL_2A"
    archive = Path(shutil.make_archive(str(tmp_path / "zipped"), "zip", tmp_path, OLD_SAFE))
    assert raster_info(stack_bands(archive, tmp_path / "zip.tif")).date == dt.date(2016, 11, 30)
    # the granule metadata's SENSING_TIME wins over names
    (granule / f"{OLD_TILE.replace('MSI_L1C_TL', 'MTD_L1C_TL')}.xml").write_text(
        "<n1:Level-1C_Tile_ID><General_Info><SENSING_TIME metadataLevel=\"Standard\">2016-11-29T23:59:59.026Z"
        "</SENSING_TIME></General_Info></n1:Level-1C_Tile_ID>")
    assert raster_info(stack_bands(granule, tmp_path / "meta.tif")).date == dt.date(2016, 11, 29)
    # the band files alone carry only the processing date: no date, and a warning that says why
    loose = tmp_path / "loose"
    shutil.copytree(granule / "IMG_DATA", loose)
    with pytest.warns(ChangedetWarning, match=r"2016-12-05\) is the Sentinel-2 processing date"):
        info = raster_info(stack_bands(loose, tmp_path / "loose.tif"))
    assert "ACQUISITION_DATE" not in info.tags and info.tags["SPACECRAFT_ID"] == "SENTINEL_2A"


# --- D: bands in several CRSs: the finest grid in metres ----------------------------------------------------------

def test_mixed_crs_takes_the_grid_of_the_finest_band_in_metres(tmp_path: Path) -> None:
    """Four 10 m bands in UTM, nine 20/60 m bands in EPSG:4326: the grid was the majority CRS's (a 20 m grid in
    degrees), downsampling the 10 m bands without a word."""
    d = tmp_path / "d"
    west, south, east, north = transform_bounds("EPSG:32631", "EPSG:4326", 500000, 5699040, 500960, 5700000)
    for b, res in S2_RES.items():
        if res == 10:
            _band(d / f"T31UDQ_20190501T105031_{b}.tif", res=10)
        else:
            dx, dy = res / (111320 * np.cos(np.radians((south + north) / 2))), res / 110574
            w, h = int(np.ceil((east - west) / dx)), int(np.ceil((north - south) / dy))
            make_geotiff(d / f"T31UDQ_20190501T105031_{b}.tif", np.full((h, w), 1000, "uint16"), crs="EPSG:4326",
                         transform=from_origin(west, north, dx, dy))
    with pytest.warns(ReprojectedInputWarning) as record:
        info = raster_info(stack_bands(d, tmp_path / "s.tif"))
    assert info.crs is not None and info.crs.to_epsg() == 32631
    assert info.res == (10.0, 10.0) and (info.width, info.height) == (96, 96)
    message = str(next(w.message for w in record if isinstance(w.message, ReprojectedInputWarning)))
    assert "T31UDQ_20190501T105031_B01.tif" in message and "(EPSG:4326)" in message
    assert "_B02.tif (EPSG:32631), the band with the finest pixel (10 m)" in message


# --- E, F: the CLI -------------------------------------------------------------------------------------------------

def test_stack_help_names_every_input_and_where_the_date_comes_from() -> None:
    res = CliRunner().invoke(cli, ["stack", "--help"])
    assert res.exit_code == 0
    text = " ".join(res.output.split())
    assert ".zip" in text and "Landsat scene folder" in text and "LC08_L1TP_" in text
    assert "dates.txt" in text and "SPACECRAFT_ID" in text and "FOLDER | FILE..." in text
    assert "the date found in the file names" not in text


def test_stack_cli_messages_and_files(tmp_path: Path) -> None:
    runner = CliRunner()
    res = runner.invoke(cli, ["stack", str(tmp_path / "nonexistent"), "-o", str(tmp_path / "x.tif")])
    assert res.exit_code == 2 and "nonexistent: does not exist" in res.output
    d = tmp_path / "d"
    for b in ("B02", "B03", "B04"):
        _band(d / f"x_{b}.tif", res=10)
    _band(d / "copy_of_B04.tif", res=10, value=7)
    res = runner.invoke(cli, ["stack", str(d), "-o", str(tmp_path / "x.tif")])
    assert res.exit_code == 2 and "same Sentinel-2 band (B04: copy_of_B04.tif, x_B04.tif)" in res.output
    assert "changedet stack FILE FILE ... -o OUT.tif" in " ".join(res.output.split())
    # the CLI way: name the files
    res = runner.invoke(cli, ["stack", *(str(d / f"x_{b}.tif") for b in ("B04", "B03", "B02")), "-o",
                              str(tmp_path / "x.tif")])
    assert res.exit_code == 0, res.output
    assert "3 bands (B02, B03, B04)" in res.output


def test_a_sentinel2_folder_missing_a_band_of_a_bundled_model_warns(tmp_path: Path) -> None:
    for b in ("B02", "B03", "B08"):
        _band(tmp_path / "d" / f"T31UDQ_20190501T105031_{b}.tif", res=10)
    with pytest.warns(ChangedetWarning, match=r"Sentinel-2 band\(s\) B04 missing.*s2-rgb model reads B04, B03, B02"):
        stack_bands(tmp_path / "d", tmp_path / "s.tif")
    # an L2A product (no B10) and the four 10 m bands are complete as they are: no warning
    for name, bands in (("l2a", [b for b in S2_RES if b != "B10"]), ("ten", ["B02", "B03", "B04", "B08"])):
        for b in bands:
            _band(tmp_path / name / f"T31UDQ_20190501T105031_{b}.tif", res=S2_RES[b])
        with warnings.catch_warnings():
            warnings.simplefilter("error", ChangedetWarning)
            stack_bands(tmp_path / name, tmp_path / f"{name}.tif")


def test_landsat_files_without_a_reflective_band_are_refused(tmp_path: Path) -> None:
    for b in ("ST_B10", "QA_PIXEL"):
        _band(tmp_path / "t" / f"LC08_L2SP_196025_20200612_20200824_02_T1_{b}.TIF")
    with pytest.raises(InputError, match="no reflective 30 m band"):
        stack_bands(tmp_path / "t", tmp_path / "t.tif")


def test_sentinel2_zip_gets_the_spacecraft_from_its_name(tmp_path: Path) -> None:
    safe = tmp_path / "S2B_MSIL1C_20190501T105029_N0207_R051_T31UDQ_20190501T130520.SAFE"
    for b in ("B02", "B03", "B04"):
        _band(safe / "GRANULE" / "L1C_T31UDQ_A011332_20190501T105031" / "IMG_DATA" / f"T31UDQ_20190501T105031_{b}.tif",
              res=10)
    archive = tmp_path / "product.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for f in safe.rglob("*"):
            z.write(f, f.relative_to(tmp_path).as_posix())
    info = raster_info(stack_bands(archive, tmp_path / "z.tif"))
    assert info.tags["SPACECRAFT_ID"] == "SENTINEL_2B" and info.date == dt.date(2019, 5, 1) and info.nodata == 0
