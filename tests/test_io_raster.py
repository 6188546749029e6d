"""changedet.io.raster: validated open, metadata, windowed reads, atomic output and the COG writer."""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine
from rasterio.windows import Window

from changedet.errors import NotGeoreferencedWarning, OutputExistsError, RasterReadError
from changedet.io.raster import (
    COGWriter,
    atomic_output,
    cog_layout_errors,
    date_from_name,
    date_from_tags,
    open_raster,
    overview_factors,
    raster_info,
    read_window,
    write_cog,
)
from changedet.testing import make_geotiff, make_pair

T = Affine(10, 0, 500000, 0, -10, 5700000)


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# --- open_raster: every way a file can be unusable -------------------------------------------------------------


def test_missing_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(RasterReadError, match=r"nope.tif: no such file. Check the path.$"):
        open_raster(tmp_path / "nope.tif")  # absolute: no word about the current folder
    monkeypatch.chdir(tmp_path)
    with pytest.raises(RasterReadError, match=r"nope.tif: no such file. Check the path \(relative paths start at "):
        open_raster("nope.tif")


def test_directory(tmp_path: Path) -> None:
    with pytest.raises(RasterReadError, match=r"is a directory.*changedet stack"):
        open_raster(tmp_path)


def test_empty_file(tmp_path: Path) -> None:
    p = tmp_path / "empty.tif"
    p.write_bytes(b"")
    with pytest.raises(RasterReadError, match=r"empty.tif: the file is empty"):
        open_raster(p)


def test_text_file_named_tif(tmp_path: Path) -> None:
    p = tmp_path / "page.tif"
    p.write_text("<!DOCTYPE html><html><body>404 not found</body></html>")
    with pytest.raises(RasterReadError, match=r"page.tif: not a raster.*HTML page") as exc:
        open_raster(p)
    assert isinstance(exc.value, OSError) and isinstance(exc.value, ValueError)
    assert exc.value.exit_code == 2


def test_truncated_geotiff_header(tmp_path: Path) -> None:
    _, after = make_pair(tmp_path, "corrupt")
    with pytest.raises(RasterReadError, match=r"after.tif: cannot be opened.*truncated"):
        open_raster(after)


def test_truncated_cog_fails_on_open_not_later(tmp_path: Path) -> None:
    # A COG has its header first: it opens, and only the pixel data are missing. The probe read catches it.
    p = tmp_path / "cut.tif"
    data = np.random.default_rng(0).integers(0, 255, (2, 300, 300), dtype="uint8")
    write_cog(p, data, crs="EPSG:32631", transform=T, blocksize=128)
    raw = p.read_bytes()
    p.write_bytes(raw[: int(len(raw) * 0.6)])
    with rasterio.open(p):  # GDAL alone accepts it
        pass
    with pytest.raises(RasterReadError, match=r"cut.tif: the header is readable but the pixel data are not"):
        open_raster(p)


def test_gigantic_declared_size_is_refused_before_reading(tmp_path: Path) -> None:
    p = tmp_path / "huge.vrt"
    p.write_text(
        '<VRTDataset rasterXSize="1000000" rasterYSize="1000000">'
        '<VRTRasterBand dataType="Byte" band="1"/></VRTDataset>'
    )
    with pytest.raises(
        RasterReadError, match=r"huge.vrt: the header declares 1000000 x 1000000.*max_samples"
    ):
        open_raster(p)


def test_size_limit_is_configurable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    p = make_geotiff(tmp_path / "a.tif", np.zeros((2, 32, 32), "uint8"))
    with pytest.raises(RasterReadError, match=r"2,048 samples, more than the limit of 1,000"):
        open_raster(p, max_samples=1000)
    monkeypatch.setenv("CHANGEDET_MAX_SAMPLES", "1000")
    with pytest.raises(RasterReadError, match=r"limit of 1,000"):
        open_raster(p)
    monkeypatch.setenv("CHANGEDET_MAX_SAMPLES", "1e6")
    open_raster(p).close()


@pytest.mark.parametrize("driver,suffix", [("PNG", ".png"), ("JPEG", ".jpg"), ("BMP", ".bmp")])
def test_plain_images_get_pixel_coordinates(tmp_path: Path, driver: str, suffix: str) -> None:
    p = tmp_path / f"photo{suffix}"
    arr = np.random.default_rng(1).integers(0, 255, (3, 40, 50), dtype="uint8")
    with rasterio.open(p, "w", driver=driver, width=50, height=40, count=3, dtype="uint8") as ds:
        ds.write(arr)
    for aux in tmp_path.glob("*.aux.xml"):
        aux.unlink()
    with pytest.warns(NotGeoreferencedWarning, match=f"photo{suffix}: no georeferencing"):
        ds = open_raster(p)
    with ds:
        info = raster_info(ds)
        assert info.crs is None and info.transform.is_identity and not info.georeferenced
        assert (info.width, info.height, info.count) == (50, 40, 3)
        assert read_window(ds, Window(0, 0, 10, 5)).shape == (3, 5, 10)


# --- metadata ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name,expected",
    [
        ("S2A_OPER_MSI_L1C_TL_MTI__20160120T104345_A003020_T39QZG_B01.tif", dt.date(2016, 1, 20)),
        ("T40QBM_20180328T065919_B8A.tif", dt.date(2018, 3, 28)),
        ("paris_2019-05-01.tif", dt.date(2019, 5, 1)),
        ("after20190501.tif", dt.date(2019, 5, 1)),
        ("LC08_L2SP_199026_20200612_20200824_02_T1_SR_B4.TIF", dt.date(2020, 6, 12)),
        ("tile_12345678.tif", None),
        ("before.tif", None),
    ],
)
def test_date_from_name(name: str, expected: dt.date | None) -> None:
    assert date_from_name(name) == expected


def test_date_from_tags_prefers_acquisition_tags() -> None:
    assert date_from_tags({"TIFFTAG_DATETIME": "2021:02:03 10:00:00"}) == dt.date(2021, 2, 3)
    assert date_from_tags(
        {"TIFFTAG_DATETIME": "2021:02:03 10:00:00", "DATE_ACQUIRED": "2017-07-08"}
    ) == dt.date(2017, 7, 8)
    assert date_from_tags({"SENSING_TIME": "2018-03-28T06:59:19.024Z"}) == dt.date(2018, 3, 28)
    assert date_from_tags({"foo": "2018-03-28"}) is None


def test_raster_info_and_json(tmp_path: Path) -> None:
    p = make_geotiff(
        tmp_path / "img_20200101.tif",
        np.ones((2, 32, 48), "float32"),
        nodata=float("nan"),
        descriptions=["red", None],
        tags={"ACQUISITION_DATE": "2019-06-30"},
    )
    info = raster_info(p)
    assert info.date == dt.date(2019, 6, 30) and info.date_source == "tags"  # tag wins over the name
    assert info.descriptions == ("red", None) and info.band_names() == ["red", "B2"]
    assert info.res == (10.0, 10.0) and info.bounds == (500000.0, 5700000.0 - 320, 500480.0, 5700000.0)
    d = info.to_dict()
    assert json.loads(json.dumps(d))["nodata"] == "nan"
    assert d["crs"] == "EPSG:32631" and d["width"] == 48 and d["date"] == "2019-06-30"
    assert d["interleave"] == "pixel" and raster_info(make_geotiff(tmp_path / "one.tif", np.ones((8, 8),
                                                                                 "uint8"))).interleave is None
    with pytest.raises(AttributeError):
        info.width = 3  # type: ignore[misc]


def test_read_window_and_bad_index(tmp_path: Path) -> None:
    arr = np.arange(3 * 20 * 30, dtype="uint16").reshape(3, 20, 30)
    p = make_geotiff(tmp_path / "a.tif", arr)
    with open_raster(p) as ds:
        out = read_window(ds, Window(5, 2, 10, 4), indexes=[3, 1])
        np.testing.assert_array_equal(out, arr[[2, 0], 2:6, 5:15])
        assert read_window(ds, indexes=2).shape == (1, 20, 30)
        with pytest.raises(RasterReadError, match=r"a.tif: band index \[4\] out of range.*3 band"):
            read_window(ds, indexes=[4])


# --- atomic_output ------------------------------------------------------------------------------------------------


def test_atomic_output_renames_on_success(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "out.txt"
    with atomic_output(target) as tmp:
        assert tmp.parent == target.parent and tmp.suffix == ".txt" and tmp.name.startswith(".")
        tmp.write_text("x")
        assert not target.exists()
    assert target.read_text() == "x"
    assert _leftovers(target.parent) == ["out.txt"]


@pytest.mark.parametrize("exc", [RuntimeError("boom"), KeyboardInterrupt()])
def test_atomic_output_cleans_up_on_error(tmp_path: Path, exc: BaseException) -> None:
    with pytest.raises(type(exc)), atomic_output(tmp_path / "out.tif") as tmp:
        tmp.write_bytes(b"half")
        Path(str(tmp) + ".aux.xml").write_text("<x/>")
        raise exc
    assert _leftovers(tmp_path) == []


def test_a_killed_writers_temporary_files_are_removed_by_the_next_run(tmp_path: Path) -> None:
    import subprocess
    import sys

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True).stdout.strip()  # a process that has exited
    stale = [tmp_path / f".out.{dead}-0a1b2c3d.stage.tif", tmp_path / f".out.{dead}-0a1b2c3d.stage.tif.ovr",
             tmp_path / f".out.{dead}-99aa88bb.partial.tif"]
    live = tmp_path / f".out.{os.getpid()}-12345678.stage.tif"  # a writer still running: left alone
    other = tmp_path / f".other.{dead}-0a1b2c3d.stage.tif"  # another output's: left alone
    for p in (*stale, live, other):
        p.write_bytes(b"x" * 10)
    with atomic_output(tmp_path / "out.tif") as tmp:
        assert f".out.{os.getpid()}-" in tmp.name
        tmp.write_bytes(b"done")
    assert not any(p.exists() for p in stale)
    assert live.exists() and other.exists() and (tmp_path / "out.tif").read_bytes() == b"done"


def test_atomic_output_exists(tmp_path: Path) -> None:
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(OutputExistsError, match=r"out.txt: exists already.*--overwrite") as err:
        with atomic_output(target):
            pytest.fail("must not be entered")
    assert err.value.exit_code == 2
    with atomic_output(target, overwrite=True) as tmp:
        tmp.write_text("new")
    assert target.read_text() == "new"


# --- COG writer ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("interleave", ["band", "pixel"])
@pytest.mark.parametrize("dtype,nodata", [("float32", -1.0), ("uint8", 255)])
def test_cog_writer_streams_a_valid_cog(tmp_path: Path, dtype: str, nodata: float, interleave: str) -> None:
    rng = np.random.default_rng(0)
    full = (rng.random((2, 300, 260)) * 200).astype(dtype)
    p = tmp_path / "out.tif"
    with COGWriter(
        p,
        width=260,
        height=300,
        count=2,
        dtype=dtype,
        crs="EPSG:32631",
        transform=T,
        nodata=nodata,
        descriptions=["probability", "other"],
        tags={"threshold": 0.5, "model": "fc-siam-diff"},
        blocksize=128,
        interleave=interleave,
    ) as w:
        for r0 in range(0, 300, 100):  # stream in row blocks, last one written partly
            w.write(full[:, r0 : r0 + 100], Window(0, r0, 260, 100))
        assert not p.exists()  # nothing at the final name before completion
    assert _leftovers(tmp_path) == ["out.tif"]
    assert cog_layout_errors(p) == []
    with rasterio.open(p) as ds:
        assert ds.tags(ns="IMAGE_STRUCTURE")["INTERLEAVE"] == interleave.upper()
        # GDAL's COG driver tags its files; the band-interleaved route (GTiff driver, GDAL < 3.11) cannot
        assert ds.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == ("COG" if interleave == "pixel" else None)
        assert ds.profile["tiled"] and ds.block_shapes[0] == (128, 128)
        assert ds.compression.name.lower() == "deflate"
        assert ds.overviews(1) == [2, 4]  # 300 px -> 150 -> 75: halved until one 128 px tile holds it
        np.testing.assert_allclose(ds.read(1, out_shape=(150, 130)).mean(), full[0].mean(), rtol=0.05)
        assert ds.nodata == nodata
        assert ds.descriptions == ("probability", "other")
        assert ds.tags()["threshold"] == "0.5" and ds.tags()["model"] == "fc-siam-diff"
        assert ds.crs.to_epsg() == 32631 and ds.transform == T
        np.testing.assert_array_equal(ds.read(), full)


def test_cog_layout_errors_flags_what_is_not_a_cog(tmp_path: Path) -> None:
    from rasterio.enums import Resampling

    data = (np.random.default_rng(2).random((3, 700, 600)) * 3000).astype("uint16")
    profile = {"driver": "GTiff", "width": 600, "height": 700, "count": 3, "dtype": "uint16", "crs": "EPSG:32631",
               "transform": T}
    strips = tmp_path / "strips.tif"
    with rasterio.open(strips, "w", **profile) as ds:
        ds.write(data)
    assert any("strips" in e for e in cog_layout_errors(strips))
    assert any("no internal overviews" in e for e in cog_layout_errors(strips))
    late = tmp_path / "late_overviews.tif"  # tiled, but the overviews were appended after the full image's data
    with rasterio.open(late, "w", tiled=True, blockxsize=256, blockysize=256, **profile) as ds:
        ds.write(data)
    with rasterio.open(late, "r+") as ds:
        ds.build_overviews([2, 4], Resampling.nearest)
    errors = cog_layout_errors(late)
    assert any("IFDs are not all at the start" in e for e in errors)
    assert any("smallest overview first" in e for e in errors)
    cog = write_cog(tmp_path / "cog.tif", data, crs="EPSG:32631", transform=T, blocksize=256)
    assert cog_layout_errors(cog) == []
    with rasterio.open(cog) as ds:
        assert ds.overviews(1) == overview_factors(600, 700, 256) == [2, 4]
        np.testing.assert_array_equal(ds.read([3, 1]), data[[2, 0]])


@pytest.mark.parametrize("size,block,expected", [((300, 300), 128, [2, 4]), ((8192, 8192), 512, [2, 4, 8, 16]),
                                                 ((4096, 100), 512, [2, 4, 8]), ((512, 512), 512, [])])
def test_overview_factors_halve_until_one_tile_holds_the_level(size: tuple[int, int], block: int,
                                                                expected: list[int]) -> None:
    assert overview_factors(*size, block) == expected


def test_to_cog_deflate_level_trades_size_for_speed_and_keeps_the_data(tmp_path: Path) -> None:
    from scipy.ndimage import gaussian_filter

    from changedet.io.raster import to_cog

    rng = np.random.default_rng(1)  # a smooth field with noise in the low bits, like a probability map
    field = gaussian_filter(rng.random((600, 600)), 8).astype(np.float32)
    src = make_geotiff(tmp_path / "src.tif", field[None], transform=T, dtype="float32")
    sizes = {}
    for level in (1, 9):
        out = tmp_path / f"level{level}.tif"
        to_cog(src, out, blocksize=256, level=level)
        sizes[level] = out.stat().st_size
        with rasterio.open(out) as ds:
            assert ds.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"
            assert ds.compression.name.lower() == "deflate"
            np.testing.assert_array_equal(ds.read(1), field)
    assert sizes[9] < sizes[1]  # the level reaches GDAL: the default (1) writes faster, a little larger


def test_cog_writer_leaves_nothing_on_error(tmp_path: Path) -> None:
    p = tmp_path / "out.tif"
    with pytest.raises(ValueError, match=r"does not fit window"):
        with COGWriter(p, width=64, height=64, count=1, dtype="uint8", crs="EPSG:32631", transform=T) as w:
            w.write(np.zeros((1, 32, 64), "uint8"), Window(0, 0, 64, 32))
            w.write(np.zeros((1, 10, 10), "uint8"), Window(0, 32, 64, 32))
    assert _leftovers(tmp_path) == []


def test_cog_writer_unwritten_area_is_nodata(tmp_path: Path) -> None:
    p = tmp_path / "partial.tif"
    with COGWriter(
        p, width=64, height=64, count=1, dtype="uint8", crs="EPSG:32631", transform=T, nodata=255
    ) as w:
        w.write(np.ones((1, 32, 64), "uint8"), Window(0, 0, 64, 32))
    with rasterio.open(p) as ds:
        arr = ds.read(1)
    assert (arr[:32] == 1).all() and (arr[32:] == 255).all()


def test_write_cog_refuses_to_overwrite(tmp_path: Path) -> None:
    p = write_cog(tmp_path / "m.tif", np.zeros((16, 16), "uint8"), crs="EPSG:32631", transform=T)
    with pytest.raises(OutputExistsError):
        write_cog(p, np.ones((16, 16), "uint8"), crs="EPSG:32631", transform=T)
    write_cog(p, np.ones((16, 16), "uint8"), crs="EPSG:32631", transform=T, overwrite=True)
    with rasterio.open(p) as ds:
        assert ds.read(1).min() == 1


def test_import_changedet_io_does_not_import_torch() -> None:
    code = "import sys, changedet.io, changedet.io.stack, changedet.testing; print('torch' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env={**os.environ}
    ).stdout.strip()
    assert out == "False"


def test_a_warped_vrt_is_a_clear_input_error_saying_what_is_accepted(tmp_path: Path) -> None:
    from rasterio.vrt import WarpedVRT

    from changedet.api import detect
    from changedet.errors import InputError
    before, after = make_pair(tmp_path, "aligned", size=32)
    with rasterio.open(after) as src, WarpedVRT(src, crs="EPSG:4326") as vrt:
        with pytest.raises(InputError, match=r"WarpedVRT is not accepted; .*rasterio\.open\(\).*xarray\.DataArray"):
            open_raster(vrt)  # type: ignore[arg-type]
        with pytest.raises(InputError, match=rf"pass the file the VRT was made from \({re.escape(str(after))}\)"):
            detect(before, vrt, method="cva", output_dir=tmp_path / "o", quicklook=False)
    assert not (tmp_path / "o").exists()
    with pytest.raises(InputError, match="a list was given where a raster is expected"):
        open_raster([before])  # type: ignore[arg-type]


def test_cog_writer_marks_no_colours_on_three_or_four_byte_bands(tmp_path: Path) -> None:
    """GDAL marks 3 or 4 byte bands red, green, blue(, alpha) by position unless told otherwise: a stack of
    blue.tif, green.tif, nir.tif, red.tif then had its red band drawn as transparency."""
    from rasterio.transform import from_origin

    from changedet.io.raster import COGWriter, raster_info

    for n in (3, 4):
        path = tmp_path / f"s{n}.tif"
        with COGWriter(path, width=64, height=64, count=n, dtype="uint8", crs="EPSG:32631",
                       transform=from_origin(0, 0, 10, 10), descriptions=["blue", "green", "nir", "red"][:n]) as w:
            w.write(np.ones((n, 64, 64), "uint8"))
        info = raster_info(path)
        assert not set(info.colorinterp) & {"red", "green", "blue", "alpha"}, info.colorinterp


def test_a_vrt_whose_source_is_missing_names_that_source(tmp_path: Path) -> None:
    """rasterio's "Read failed. See previous exception for details." alone never named the missing file."""
    import rasterio.shutil

    from changedet.errors import RasterReadError
    from changedet.io.raster import open_raster
    from changedet.testing import make_geotiff

    src = make_geotiff(tmp_path / "part.tif", np.ones((1, 32, 32), "uint16"))
    with rasterio.open(src) as ds:
        rasterio.shutil.copy(ds, tmp_path / "mosaic.vrt", driver="VRT")
    src.unlink()
    with pytest.raises(RasterReadError, match=r"part\.tif: No such file") as err:
        open_raster(tmp_path / "mosaic.vrt")
    assert "See previous exception" not in str(err.value)


def test_a_closed_dataset_is_a_read_error_saying_to_pass_the_path(tmp_path: Path,
                                                                   capfd: pytest.CaptureFixture[str]) -> None:
    path = make_geotiff(tmp_path / "a.tif", np.zeros((1, 8, 8), "uint8"))
    with rasterio.open(path) as ds:
        pass
    capfd.readouterr()
    for call in (raster_info, read_window):
        with pytest.raises(RasterReadError, match=rf"{path}: the rasterio dataset given is closed .*Pass the path"):
            call(ds)
    assert "ERROR" not in capfd.readouterr().err


def test_a_dataarray_given_to_open_raster_is_told_what_to_do(tmp_path: Path) -> None:
    rioxarray = pytest.importorskip("rioxarray")
    from changedet.errors import InputError

    da = rioxarray.open_rasterio(make_geotiff(tmp_path / "a.tif", np.zeros((1, 8, 8), "uint8")))
    with pytest.raises(InputError, match=r"check_pair and open_pair accept an xarray\.DataArray.*da\.rio\.to_raster"):
        open_raster(da)
