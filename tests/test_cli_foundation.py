"""The foundation commands: ``changedet info``, ``check`` and ``stack`` (exit codes and messages)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
from click.testing import CliRunner

from changedet.cli.check import parse_indexes
from changedet.cli.main import cli
from changedet.testing import make_geotiff, make_pair


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


def test_info_text_and_json(runner: CliRunner, tmp_path: Path) -> None:
    before, _ = make_pair(tmp_path, "aligned", descriptions=["red", "green", "blue"])
    res = runner.invoke(cli, ["info", str(before)])
    assert res.exit_code == 0, res.output
    assert "128 x 128 px, 3 band(s)" in res.output and "EPSG:32631" in res.output
    assert "2019-05-01 (from tags)" in res.output and "green" in res.output
    res = runner.invoke(cli, ["info", str(before), "--json"])
    data = json.loads(res.output)
    assert data["count"] == 3 and data["band_names"] == ["red", "green", "blue"]
    assert data["pixel_size_m"] == [10.0, 10.0] and len(data["bounds_wgs84"]) == 4
    # make_pair writes GDAL's default layout for a new multi-band GeoTIFF; changedet stack writes band-interleaved
    assert data["interleave"] == "pixel" and "pixel-interleaved" in runner.invoke(cli, ["info", str(before)]).output


def test_info_shows_colour_interpretation_and_alpha(runner: CliRunner, tmp_path: Path) -> None:
    from rasterio.enums import ColorInterp

    path = make_geotiff(tmp_path / "rgba.tif", np.ones((4, 16, 16), "uint8"), dtype="uint8")
    with rasterio.open(path, "r+") as ds:
        ds.colorinterp = [ColorInterp.red, ColorInterp.green, ColorInterp.blue, ColorInterp.alpha]
    res = runner.invoke(cli, ["info", str(path)])
    assert res.exit_code == 0, res.output
    assert "B1           uint8  red" in res.output and "B4           uint8  alpha" in res.output


def test_info_layout_mask_and_json_colours(runner: CliRunner, tmp_path: Path) -> None:
    from rasterio.enums import ColorInterp

    arr = np.ones((1, 200, 300), "uint8")
    common = {"driver": "GTiff", "width": 300, "height": 200, "count": 1, "dtype": "uint8", "crs": "EPSG:32631",
              "transform": rasterio.transform.from_origin(500000, 5700000, 10, 10)}
    with rasterio.open(tmp_path / "strips.tif", "w", **common) as ds:
        ds.write(arr)
    # one 512 px tile is wider than this 300 px image: still tiled (changedet's own small outputs are like this)
    with rasterio.open(tmp_path / "tiles.tif", "w", tiled=True, blockxsize=512, blockysize=512, **common) as ds:
        ds.write(arr)
        ds.colorinterp = [ColorInterp.red]
        mask = np.full((200, 300), 255, "uint8")
        mask[:, :10] = 0
        ds.write_mask(mask)
    assert "layout        striped" in runner.invoke(cli, ["info", str(tmp_path / "strips.tif")]).output
    out = runner.invoke(cli, ["info", str(tmp_path / "tiles.tif")]).output
    assert "layout        tiled, blocks 512x512" in out and "mask          per-dataset mask" in out
    data = json.loads(runner.invoke(cli, ["info", str(tmp_path / "tiles.tif"), "--json"]).output)
    assert data["tiled"] is True and data["mask"] == "per-dataset mask" and data["colorinterp"] == ["red"]


@pytest.mark.parametrize("make", ["missing", "text", "dir"])
def test_info_unreadable_exits_2(runner: CliRunner, tmp_path: Path, make: str) -> None:
    path = tmp_path / "bad.tif"
    if make == "text":
        path.write_text("hello")
    elif make == "dir":
        path = tmp_path
    res = runner.invoke(cli, ["info", str(path)])
    assert res.exit_code == 2
    assert f"error: {path}" in res.output


def test_check_ok_with_warnings_exits_0(runner: CliRunner, tmp_path: Path) -> None:
    before, after = make_pair(tmp_path, "other-size")
    res = runner.invoke(cli, ["check", str(before), str(after)])
    assert res.exit_code == 0, res.output
    assert "size differs: before.tif 128 x 128 px, after.tif 125 x 125 px" in res.output
    assert "residual shift:" in res.output and "OK: the pair can be compared" in res.output


def test_check_says_each_warning_about_a_file_once(runner: CliRunner, tmp_path: Path) -> None:
    """check's helpers open both files before check_pair does: each file's warning was printed twice."""
    import subprocess
    import sys

    before, after = make_pair(tmp_path, "no-crs-both")
    code = "from changedet.cli.main import main; main()"  # the installed command, warnings printed as a user sees them
    res = subprocess.run([sys.executable, "-c", code, "check", str(before), str(after)], capture_output=True,
                         text=True)
    assert res.returncode == 0, res.stderr
    for name in ("before.tif", "after.tif"):
        assert res.stderr.count(f"{name}: no georeferencing") == 1, res.stderr


@pytest.mark.parametrize(
    "kind,text",
    [
        ("disjoint", "do not overlap"),
        ("band-mismatch", "4 band(s) but before.tif has 3"),
        ("no-crs", "after.tif: has no georeferencing"),
        ("corrupt", "after.tif: cannot be opened"),
    ],
)
def test_check_problems_exit_1(runner: CliRunner, tmp_path: Path, kind: str, text: str) -> None:
    before, after = make_pair(tmp_path, kind)
    res = runner.invoke(cli, ["check", str(before), str(after)])
    assert res.exit_code == 1, res.output
    assert text in res.output and "NOT OK" in res.output


def test_check_lists_every_reason_and_json(runner: CliRunner, tmp_path: Path) -> None:
    _, after = make_pair(tmp_path, "corrupt")
    res = runner.invoke(cli, ["check", str(tmp_path / "nothere.tif"), str(after), "--json"])
    assert res.exit_code == 1
    data = json.loads(res.output)
    assert data["ok"] is False and len(data["problems"]) == 2


def test_check_compares_named_bands_of_stacks_with_different_band_counts(runner: CliRunner, tmp_path: Path) -> None:
    from changedet.io.stack import SENTINEL2_BANDS

    l1c = list(SENTINEL2_BANDS)
    l2a = [n for n in l1c if n != "B10"]  # an L2A stack has no cirrus band
    rng = np.random.default_rng(0)
    before = make_geotiff(tmp_path / "l1c.tif", (rng.random((13, 64, 64)) * 3000).astype("uint16"), descriptions=l1c)
    after = make_geotiff(tmp_path / "l2a.tif", (rng.random((12, 64, 64)) * 3000).astype("uint16"), descriptions=l2a)
    res = runner.invoke(cli, ["check", str(before), str(after), "--no-shift", "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.output)
    assert data["indexes"]["before"] == [i + 1 for i, n in enumerate(l1c) if n != "B10"]
    assert data["indexes"]["after"] == list(range(1, 13))
    assert any("checked the 12 bands both have by name" in n for n in data["notes"])
    # unnamed bands of different counts that no model can tell apart still cannot be compared (an unnamed 3-band
    # raster is read as red, green, blue by detect, so it can be, against the named bands of the 12-band stack)
    plain, _ = make_pair(tmp_path / "p", "band-mismatch", bands=4)
    res = runner.invoke(cli, ["check", str(plain), str(after), "--no-shift"])
    assert res.exit_code == 1 and "NOT OK" in res.output


def test_check_says_which_model_detect_would_run_or_why_none(runner: CliRunner, tmp_path: Path) -> None:
    from changedet.io.stack import SENTINEL2_BANDS

    rng = np.random.default_rng(0)
    before = make_geotiff(tmp_path / "l1c.tif", (rng.random((13, 64, 64)) * 3000).astype("uint16"),
                          descriptions=list(SENTINEL2_BANDS))
    after = make_geotiff(tmp_path / "bgr.tif", (rng.random((3, 64, 64)) * 3000).astype("uint16"),
                         descriptions=["B02", "B03", "B04"])
    res = runner.invoke(cli, ["check", str(before), str(after), "--no-shift", "--json"])
    assert res.exit_code == 0, res.output
    default = json.loads(res.output)["default_model"]
    assert default["name"] == "s2-rgb" and default["indexes"] == {"before": [4, 3, 2], "after": [3, 2, 1]}
    assert default["bands"]["after"] == ["B04", "B03", "B02"]
    # an unnamed 4-band pair can be compared, but detect needs a model for it: check says so
    plain = make_pair(tmp_path / "plain", "aligned", size=64, bands=4)
    res = runner.invoke(cli, ["check", *map(str, plain), "--no-shift"])
    assert res.exit_code == 0 and "OK: the pair can be compared" in res.output
    assert "detect needs --model (and --indexes): no bundled model takes 4 bands" in res.output


def test_check_reports_an_after_without_the_models_bands_with_the_per_date_fix(runner: CliRunner,
                                                                              tmp_path: Path) -> None:
    from changedet.io.stack import SENTINEL2_BANDS

    data = (np.random.default_rng(0).random((13, 64, 64)) * 3000).astype("uint16")
    before = make_geotiff(tmp_path / "l1c.tif", data, descriptions=list(SENTINEL2_BANDS))
    after = make_geotiff(tmp_path / "after3.tif", data[1:4])  # B02, B03, B04, unnamed (None, None, None)
    res = runner.invoke(cli, ["check", str(before), str(after), "--no-shift"])
    assert res.exit_code == 1 and isinstance(res.exception, SystemExit), res.output  # a report, no traceback
    assert "NOT OK" in res.output
    assert "reads B04, B03, B02" in res.output and "3 unnamed bands" in res.output
    assert "--indexes 4,3,2:3,2,1" in res.output
    assert "NOT OK: 1 problem" in res.output and "--indexes 1,2,3" not in res.output  # not the generic hint too
    res = runner.invoke(cli, ["check", str(before), str(after), "--no-shift", "--json"])
    assert res.exit_code == 1
    assert any("--indexes 4,3,2:3,2,1" in p for p in json.loads(res.output)["problems"])
    # the fix it gives: OK
    res = runner.invoke(cli, ["check", str(before), str(after), "--no-shift", "--indexes", "4,3,2:3,2,1"])
    assert res.exit_code == 0 and "OK: the pair can be compared" in res.output


def test_undeclared_zero_fill_is_warned_with_the_fix(runner: CliRunner, tmp_path: Path) -> None:
    before, after = make_pair(tmp_path, "aligned", size=64)
    with rasterio.open(after, "r+") as ds:
        data = ds.read()
        data[:, :, :16] = 0  # an export's fill, no nodata declared
        ds.write(data)
    res = runner.invoke(cli, ["check", str(before), str(after), "--no-shift"])
    assert res.exit_code == 0, res.output
    assert "a block of 25.0% of the compared pixels is 0 in every band and the file declares no nodata" in res.output
    assert "gdal_edit.py -a_nodata 0" in res.output
    # zeros scattered in specks (dark water in an 8-bit export stretched with a 2-98 % cut) are no fill
    with rasterio.open(after, "r+") as ds:
        data = ds.read()
        data[:, :, :16] = 100
        data[:, ::4, ::4] = 0  # 6 % of the pixels, in 256 separate specks
        ds.write(data)
    res = runner.invoke(cli, ["check", str(before), str(after), "--no-shift"])
    assert res.exit_code == 0 and "is 0 in every band" not in res.output
    with rasterio.open(after, "r+") as ds:
        ds.nodata = 0
    res = runner.invoke(cli, ["check", str(before), str(after), "--no-shift"])
    assert res.exit_code == 0 and "is 0 in every band" not in res.output


def test_check_indexes(runner: CliRunner, tmp_path: Path) -> None:
    before, after = make_pair(tmp_path, "band-mismatch")
    res = runner.invoke(cli, ["check", str(before), str(after), "--indexes", "1-3", "--json", "--no-shift"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.output)
    assert data["indexes"] == {"before": [1, 2, 3], "after": [1, 2, 3]} and data["shift"] is None
    res = runner.invoke(cli, ["check", str(before), str(after), "--indexes", "1,x"])
    assert res.exit_code == 2 and "--indexes" in res.output


def test_parse_indexes() -> None:
    import click

    assert parse_indexes("3-1") == [3, 2, 1]
    assert parse_indexes("1,2,3:3,2,1") == ([1, 2, 3], [3, 2, 1])
    assert parse_indexes(None) is None
    for bad, says in (("1,,2", "empty band number between commas"), ("1,2,3:", "a side of BEFORE:AFTER is empty"),
                      (":1", "a side of BEFORE:AFTER is empty"), ("", "an empty value"), ("a", "1-based")):
        with pytest.raises(click.BadParameter, match=says):
            parse_indexes(bad)


def test_stack_command(runner: CliRunner, tmp_path: Path) -> None:
    for name, res_m in (("B02", 10), ("B03", 10), ("B05", 20)):
        n = 320 // res_m
        make_geotiff(tmp_path / "d" / f"T31_20200202T1_{name}.tif", np.ones((n, n), "uint16"), res=res_m)
    out = tmp_path / "s.tif"
    res = runner.invoke(cli, ["stack", str(tmp_path / "d"), "-o", str(out)])
    assert res.exit_code == 0, res.output
    assert "3 bands (B02, B03, B05), 32 x 32 px" in res.output and "2020-02-02" in res.output
    res = runner.invoke(cli, ["stack", str(tmp_path / "d"), "-o", str(out)])
    assert res.exit_code == 2 and "exists already" in res.output
    res = runner.invoke(cli, ["-q", "stack", str(tmp_path / "d"), "-o", str(out), "--overwrite", "--json"])
    assert res.exit_code == 0 and json.loads(res.output)["descriptions"] == ["B02", "B03", "B05"]
    with rasterio.open(out) as ds:
        assert ds.tags(ns="IMAGE_STRUCTURE")["INTERLEAVE"] == "BAND"  # the default
    res = runner.invoke(cli, ["-q", "stack", str(tmp_path / "d"), "-o", str(out), "--overwrite", "--interleave",
                              "pixel"])
    assert res.exit_code == 0, res.output
    with rasterio.open(out) as ds:
        assert ds.tags(ns="IMAGE_STRUCTURE")["INTERLEAVE"] == "PIXEL" and ds.read().shape == (3, 32, 32)
    res = runner.invoke(cli, ["stack", str(tmp_path / "d"), "-o", str(out), "--overwrite", "--interleave", "line"])
    assert res.exit_code == 2 and "--interleave" in res.output
    (tmp_path / "adir").mkdir()
    res = runner.invoke(cli, ["stack", str(tmp_path / "d"), "-o", str(tmp_path / "adir")])
    assert res.exit_code == 2 and "is a directory; give a file name" in res.output
    res = runner.invoke(cli, ["stack", str(tmp_path / "nothing"), "-o", str(tmp_path / "x.tif")])
    assert res.exit_code == 2 and "nothing: does not exist" in res.output


def test_gdal_virtual_paths_reach_gdal_as_given(runner: CliRunner, tmp_path: Path) -> None:
    """click.Path collapsed the // of an absolute /vsizip/ path (and https:// in /vsicurl/): `info` said
    "not a raster format GDAL can read" for a path gdalinfo opens."""
    import zipfile

    from changedet.cli._common import RASTER

    before, _ = make_pair(tmp_path, "aligned", size=64)
    with zipfile.ZipFile(tmp_path / "pair.zip", "w") as z:
        z.write(before, "before.tif")
    vsi = f"/vsizip/{tmp_path / 'pair.zip'}/before.tif"  # /vsizip//tmp/... for an absolute archive path
    assert vsi.startswith("/vsizip//")
    res = runner.invoke(cli, ["info", vsi, "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["width"] == 64
    assert RASTER.convert("/vsicurl/https://host/a.tif", None, None) == "/vsicurl/https://host/a.tif"
    assert RASTER.convert("a/../b.tif", None, None) == Path("a/../b.tif")


def test_a_path_too_long_for_the_file_system_is_a_clear_error(runner: CliRunner, tmp_path: Path) -> None:
    long = "x" * 300  # over the 255 bytes a file name may have: ENAMETOOLONG, which used to be a traceback
    before, after = make_pair(tmp_path, "aligned", size=64)
    res = runner.invoke(cli, ["info", str(tmp_path / f"{long}.tif")])
    assert res.exit_code == 2 and "cannot be opened (File name too long)" in res.output
    res = runner.invoke(cli, ["detect", str(before), str(after), "-o", str(tmp_path / long), "--method", "cva"])
    assert res.exit_code == 1 and "cannot write there (File name too long)" in res.output
    assert "Traceback" not in res.output
