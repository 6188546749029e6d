"""End-to-end detect: known answers, nodata, band selection, outputs, CLI == API."""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path
from types import SimpleNamespace

import geopandas as gpd
import numpy as np
import pytest
import rasterio
from click.testing import CliRunner

from changedet.api import detect
from changedet.cli.main import cli
from changedet.errors import CheckpointError, NothingToCompareWarning, OutputExistsError
from changedet.testing import make_geotiff, make_pair, paint_change

ALL_OUTPUTS = {"probability.tif", "change.tif", "changes.gpkg", "changes.geojson", "report.json", "quicklook.png"}


def _checkpoint(tmp: Path, bands: list[str], name: str = "tiny") -> Path:
    import torch

    from changedet.models import create_model
    from changedet.models.checkpoint import CheckpointMeta, save_checkpoint

    torch.manual_seed(0)
    model = create_model("fc-siam-diff", in_channels=len(bands))
    meta = CheckpointMeta(band_names=bands, pixel_size=10.0, threshold=0.5, name=name)
    return save_checkpoint(model, tmp / name, meta)


def test_known_answer_block_gives_one_polygon_of_the_right_area_place_and_crs(tmp_path: Path) -> None:
    before, after = make_pair(tmp_path, "aligned", size=256, bands=4)
    paint_change(after, (64, 96, 40, 60))  # rows 64..104, cols 96..156 at 10 m
    out = tmp_path / "out"
    result = detect(before, after, method="cva", output_dir=out)
    assert ALL_OUTPUTS <= {p.name for p in out.iterdir()}
    assert not any(p.name.startswith(".changedet") for p in out.iterdir())
    polys = gpd.read_file(out / "changes.gpkg", layer="changes")
    assert len(polys) == 1
    assert polys.crs.to_epsg() == 32631
    poly = polys.geometry.iloc[0]
    assert poly.area == pytest.approx(40 * 60 * 100, rel=0.03)
    # the block's bounds in map coordinates: x 500960..501560, y 5699360..5698960
    minx, miny, maxx, maxy = poly.bounds
    assert minx == pytest.approx(500960, abs=20) and maxx == pytest.approx(501560, abs=20)
    assert maxy == pytest.approx(5700000 - 640, abs=20) and miny == pytest.approx(5700000 - 1040, abs=20)
    row = polys.iloc[0]
    assert row["area_m2"] == pytest.approx(240000, rel=0.03)
    assert row["before_date"] == "2019-05-01" and row["after_date"] == "2020-05-01"
    assert 0.5 <= row["mean_prob"] <= row["max_prob"] <= 1.0
    geojson = gpd.read_file(out / "changes.geojson")
    assert geojson.crs.to_epsg() == 4326 and len(geojson) == 1
    report = json.loads((out / "report.json").read_text())
    assert report["summary"]["n_polygons"] == 1
    assert report["summary"]["changed_area_m2"] == pytest.approx(240000, rel=0.03)
    assert report["inputs"]["before"]["date"] == "2019-05-01"
    assert report["model"]["method"] == "cva"
    assert result.mask.shape == (256, 256)
    assert int((result.mask == 1).sum()) == report["summary"]["changed_pixels"]


def test_rasters_are_georeferenced_cogs_on_the_before_grid(tmp_path: Path) -> None:
    before, after = make_pair(tmp_path, "other-crs", size=128)
    with pytest.warns(UserWarning):
        detect(before, after, method="cva", output_dir=tmp_path / "out", quicklook=False)
    with rasterio.open(before) as b, rasterio.open(tmp_path / "out" / "probability.tif") as p:
        assert p.crs == b.crs
        assert p.transform.a == b.transform.a and p.transform.e == b.transform.e
        assert p.dtypes[0] == "float32" and p.nodata == -1
    with rasterio.open(tmp_path / "out" / "change.tif") as c:
        assert c.dtypes[0] == "uint8" and c.nodata == 255
        assert set(np.unique(c.read(1))) <= {0, 1, 255}


def test_nodata_is_propagated_and_never_changed(tmp_path: Path) -> None:
    before, after = make_pair(tmp_path, "nodata-border", size=128)
    result = detect(before, after, method="cva", output_dir=tmp_path / "out", quicklook=False)
    with rasterio.open(before) as b, rasterio.open(after) as a:
        invalid = (b.read(1) == b.nodata) | (a.read(1) == a.nodata)
    mask, prob = result.mask, result.probability
    assert invalid.any()
    assert np.all(mask[invalid] == 255) and np.all(prob[invalid] == -1)
    assert np.all(mask[~invalid] != 255)
    polys = result.polygons
    if len(polys):
        from shapely.geometry import box

        left_border = box(500000, 5700000 - 1280, 500000 + 120, 5700000)
        assert polys.intersection(left_border).area.max() == pytest.approx(0.0, abs=1e-6)


def test_nodata_in_one_date_makes_no_false_change_beside_it(tmp_path: Path) -> None:
    """Nodata is filled with each date's mean after normalisation (as in training), not with a raw 0 that the two
    dates' statistics turn into two different values: that difference spilled ~13 px of 'change' into valid rows."""
    from rasterio.transform import from_origin
    from scipy.ndimage import uniform_filter

    rng = np.random.default_rng(0)
    before = uniform_filter(rng.normal(120, 20, (3, 256, 256)), (1, 5, 5))
    after = before.copy()
    after[:, 64:128, 64:128] = 230  # the change, well away from the nodata rows
    holed = before.copy()
    holed[:, :40] = 0  # nodata rows at the top of BEFORE
    t = from_origin(400000, 5000000, 1, 1)
    paths = [make_geotiff(tmp_path / f"{n}.tif", x.astype("uint8"), transform=t, nodata=nd)
             for n, x, nd in (("b", before, None), ("h", holed, 0), ("a", after, None))]
    kwargs = {"model": "aerial-rgb", "vectorize": False, "quicklook": False}
    plain = detect(paths[0], paths[2], output_dir=tmp_path / "plain", **kwargs).mask
    holey = detect(paths[1], paths[2], output_dir=tmp_path / "holey", **kwargs).mask
    assert (holey[:40] == 255).all()
    near_plain, near_holey = int((plain[40:60] == 1).sum()), int((holey[40:60] == 1).sum())
    assert near_holey <= near_plain + 50, (near_holey, near_plain)  # 2988 in rows 40-53 before the fix
    assert (holey[64:128, 64:128] == 1).mean() == pytest.approx((plain[64:128, 64:128] == 1).mean(), abs=0.02)


def test_all_nodata_pair_is_a_clear_nothing_to_compare_result(tmp_path: Path) -> None:
    zeros = np.zeros((3, 64, 64), np.uint16)
    before = make_geotiff(tmp_path / "b.tif", zeros, nodata=0)
    after = make_geotiff(tmp_path / "a.tif", zeros, nodata=0)
    with pytest.warns(NothingToCompareWarning, match="nothing to compare"):
        result = detect(before, after, method="cva", output_dir=tmp_path / "out", quicklook=False)
    assert result.report["summary"]["nothing_to_compare"] is True
    assert len(result.polygons) == 0
    assert np.all(result.mask == 255)


def test_existing_outputs_need_overwrite(tmp_path: Path) -> None:
    before, after = make_pair(tmp_path, "aligned", size=64)
    out = tmp_path / "out"
    detect(before, after, method="cva", output_dir=out, quicklook=False)
    stamp = (out / "report.json").stat().st_mtime_ns
    with pytest.raises(OutputExistsError, match="--overwrite"):
        detect(before, after, method="cva", output_dir=out, quicklook=False)
    assert (out / "report.json").stat().st_mtime_ns == stamp
    res = CliRunner().invoke(cli, ["detect", str(before), str(after), "-o", str(out), "--method", "cva"])
    assert res.exit_code == 2 and "already exist" in res.output
    detect(before, after, method="cva", output_dir=out, quicklook=False, overwrite=True)
    assert (out / "changes.gpkg").exists() and (out / "changes.qml").exists()
    # overwriting without polygons removes the earlier run's: they would describe another run's mask
    result = detect(before, after, method="cva", output_dir=out, quicklook=False, vectorize=False, overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == ["change.qml", "change.tif", "probability.qml",
                                                     "probability.tif", "report.json"]
    assert sorted(result.paths) == ["change", "probability", "report"]


def test_overwrite_over_a_series_removes_the_series_outputs_but_no_other_file(tmp_path: Path) -> None:
    """A two-date run with --overwrite in a series' folder: the series rasters, styles and pair folders would sit
    beside the new report.json; files changedet does not write stay."""
    rng = np.random.default_rng(0)
    base = rng.normal(1000, 50, (3, 64, 64))
    dates = [make_geotiff(tmp_path / f"d{k}.tif", (base + 300 * k * (rng.random(base.shape) > 0.9)).astype("uint16"),
                          tags={"ACQUISITION_DATE": f"20{18 + k}-05-01"}) for k in range(3)]
    out = tmp_path / "out"
    args = ["-q", "detect", "-o", str(out), "--method", "cva", "--no-quicklook"]
    res = CliRunner().invoke(cli, [*args, *map(str, dates)], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert (out / "change_count.tif").exists() and any(p.name.startswith("pair_01_") for p in out.iterdir())
    (out / "notes.txt").write_text("mine")
    (out / "pair_01_mine").mkdir()  # a pair folder's name, but not a pair's outputs: left alone
    res = CliRunner().invoke(cli, [*args, str(dates[0]), str(dates[1]), "--overwrite"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in out.iterdir()) == [
        "change.qml", "change.tif", "changes.geojson", "changes.gpkg", "changes.qml", "notes.txt", "pair_01_mine",
        "probability.qml", "probability.tif", "report.json"]
    assert "kind" not in json.loads((out / "report.json").read_text())  # a two-date report
    # files of a series' names in a folder without a finished run's report.json are someone else's: a first run
    # there (no --overwrite needed, none of its own names exist) leaves them
    other = tmp_path / "other"
    (other / "pair_01_mine").mkdir(parents=True)
    (other / "pair_01_mine" / "change.tif").write_bytes(b"mine")
    (other / "first_change.tif").write_bytes(b"mine")
    res = CliRunner().invoke(cli, ["-q", "detect", "-o", str(other), "--method", "cva", "--no-quicklook",
                                   str(dates[0]), str(dates[1])], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert (other / "first_change.tif").read_bytes() == b"mine" and (other / "pair_01_mine" / "change.tif").exists()


@pytest.mark.parametrize("option,match", [({"overlap": -1}, "--overlap"), ({"blend": "x"}, "--blend"),
                                          ({"geojson_crs": "foo"}, "--geojson-crs 'foo' is not a coordinate"),
                                          ({"device": "tpu9", "model": "aerial-rgb"}, "--device 'tpu9'")])
def test_bad_options_are_refused_before_anything_is_written(tmp_path: Path, option: dict, match: str) -> None:
    from changedet.errors import InputError

    before, after = make_pair(tmp_path, "aligned", size=64)
    kwargs = {"method": "cva", **option} if "model" not in option else option
    with pytest.raises(InputError, match=match):
        detect(before, after, output_dir=tmp_path / "out", quicklook=False, **kwargs)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("option", [{"tile_size": 0}, {"tile_size": 1}, {"tile_size": 15}, {"tile_size": 8193},
                                    {"tile_size": 17.5}, {"tile_size": True}, {"batch_size": 0},
                                    {"batch_size": -3}, {"batch_size": 257}, {"batch_size": 2.5}])
def test_tile_and_batch_sizes_the_cli_refuses_are_refused_in_python_too(tmp_path: Path, option: dict) -> None:
    """detect(), detect_series() and the batch's option check take the CLI's --tile-size and --batch-size ranges
    (one definition for both), not values that the CLI refuses (exit 2); tile_size=0 names --tile-size, not
    --overlap."""
    import click

    from changedet.api.options import BATCH_SIZE_RANGE, TILE_SIZE_RANGE
    from changedet.cli.detect import command as detect_command
    from changedet.distributed import _check_options as check_batch_options
    from changedet.errors import InputError
    from changedet.series import detect_series

    (name, value), = option.items()
    flag = "--" + name.replace("_", "-")
    match = rf"^{flag} must be a whole number from \d+ to \d+ .*got {value!r}$"
    before, after = make_pair(tmp_path, "aligned", size=64)
    with pytest.raises(InputError, match=match):
        detect(before, after, method="cva", output_dir=tmp_path / "out", quicklook=False, overlap=0, **option)
    assert not (tmp_path / "out").exists()
    with pytest.raises(InputError, match=match):
        detect_series([before, after, after], method="cva", output_dir=tmp_path / "series", overlap=0, **option)
    with pytest.raises(InputError, match=match):
        check_batch_options({"method": "cva", "overlap": 0, **option})
    # the CLI's limits are the same numbers; it refuses the whole numbers outside them with exit 2
    ranges = {p.name: p.type for p in detect_command.params if p.name in ("tile_size", "batch_size")}
    assert isinstance(ranges["tile_size"], click.IntRange) and isinstance(ranges["batch_size"], click.IntRange)
    assert (ranges["tile_size"].min, ranges["tile_size"].max) == TILE_SIZE_RANGE
    assert (ranges["batch_size"].min, ranges["batch_size"].max) == BATCH_SIZE_RANGE
    if isinstance(value, int) and not isinstance(value, bool):
        res = CliRunner().invoke(cli, ["detect", str(before), str(after), "-o", str(tmp_path / "cli"), "--method",
                                       "cva", "--overlap", "0", flag, str(value)])
        assert res.exit_code == 2 and flag in res.output


def test_tile_and_batch_sizes_at_the_limits_are_taken(tmp_path: Path) -> None:
    from changedet.api.options import BATCH_SIZE_RANGE, TILE_SIZE_RANGE

    before, after = make_pair(tmp_path, "aligned", size=64)
    for k, (tile, batch) in enumerate(zip(TILE_SIZE_RANGE, BATCH_SIZE_RANGE, strict=True)):
        result = detect(before, after, method="cva", output_dir=tmp_path / f"out{k}", quicklook=False,
                        vectorize=False, overlap=0, tile_size=tile, batch_size=np.int64(batch))
        assert (result.report["tiling"]["tile_size"], result.report["tiling"]["batch_size"]) == (tile, batch)


def test_a_failed_run_leaves_no_folder_it_created(tmp_path: Path) -> None:
    from changedet.errors import InputError

    before = make_geotiff(tmp_path / "b.tif", np.ones((3, 32, 32), np.uint16))
    after = make_geotiff(tmp_path / "a.tif", np.ones((3, 32, 32), np.uint16), origin=(900000.0, 5700000.0))
    (tmp_path / "kept").mkdir()
    with pytest.raises(InputError, match="overlap"):  # the two rasters do not overlap
        detect(before, after, method="cva", output_dir=tmp_path / "kept" / "new" / "deeper", quicklook=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.tif", "b.tif", "kept"]
    assert list((tmp_path / "kept").iterdir()) == []


def test_a_numpy_array_input_is_a_clear_error(tmp_path: Path) -> None:
    from changedet.errors import InputError

    _, after = make_pair(tmp_path, "aligned", size=32)
    with pytest.raises(InputError, match="BEFORE is a numpy array, which carries no grid"):
        detect(np.zeros((3, 32, 32), np.float32), after, method="cva", output_dir=tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_cuda_without_a_gpu_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    before, after = make_pair(tmp_path, "aligned", size=64)
    res = CliRunner().invoke(cli, ["detect", str(before), str(after), "-o", str(tmp_path / "out"), "--model",
                                   "aerial-rgb", "--device", "cuda"])
    assert res.exit_code == 2 and "CUDA is not available here; use --device cpu" in res.output
    assert not (tmp_path / "out").exists()


def test_checkpoint_bands_are_selected_by_name(tmp_path: Path) -> None:
    names = ["B01", "B02", "B03", "B04", "B05"]
    before, after = make_pair(tmp_path, "aligned", size=96, bands=5, descriptions=names)
    ckpt = _checkpoint(tmp_path, ["B04", "B03", "B02"], "rgb")
    result = detect(before, after, model=ckpt, output_dir=tmp_path / "out", quicklook=False)
    assert result.report["grid"]["bands"] == ["B04", "B03", "B02"]
    assert result.report["model"]["architecture"] == "fc-siam-diff"


def test_report_names_the_checkpoint_file_even_when_it_carries_a_bundled_name(tmp_path: Path) -> None:
    from changedet.models.checkpoint import read_meta

    before, after = make_pair(tmp_path, "aligned", size=64, bands=3)
    # a user's own checkpoint named like the bundled s2-rgb (changedet train with checkpoint_name: s2-rgb)
    ckpt = _checkpoint(tmp_path, ["B04", "B03", "B02"], "s2-rgb")
    sha = read_meta(ckpt).weights_sha256
    for i, spec in enumerate((ckpt, str(ckpt.with_suffix(".json")), str(ckpt.with_suffix("")))):
        report = detect(before, after, model=spec, output_dir=tmp_path / f"own{i}", quicklook=False,
                        vectorize=False).report["model"]
        assert report["name"] == "s2-rgb"
        assert report["checkpoint"] == str(ckpt) and report["weights_sha256"] == sha
    bundled = detect(before, after, model="s2-rgb", output_dir=tmp_path / "bundled", quicklook=False,
                     vectorize=False).report["model"]
    assert bundled["checkpoint"] == "s2-rgb" and bundled["weights_sha256"] not in (None, sha)


def test_an_index_out_of_range_is_said_before_any_model_is_chosen(tmp_path: Path) -> None:
    before, after = make_pair(tmp_path, "aligned", size=64, bands=13)
    res = CliRunner().invoke(cli, ["detect", str(before), str(after), "-o", str(tmp_path / "out"), "--indexes", "20"])
    assert res.exit_code == 2
    assert "band index [20] out of range; it has 13 band(s)" in res.output  # not "no bundled model takes 1 bands"


def test_band_count_mismatch_names_both_numbers(tmp_path: Path) -> None:
    before, after = make_pair(tmp_path, "aligned", size=64, bands=4)
    ckpt = _checkpoint(tmp_path, ["a", "b", "c"])
    with pytest.raises(CheckpointError, match="has 4 bands but the model tiny expects 3"):
        detect(before, after, model=ckpt, output_dir=tmp_path / "out")
    assert not (tmp_path / "out" / "probability.tif").exists()
    # --indexes picks three of the four bands
    result = detect(before, after, model=ckpt, indexes=[1, 2, 3], output_dir=tmp_path / "out", quicklook=False)
    assert result.report["summary"]["valid_pixels"] == 64 * 64


def _rgba(path: Path, rgb: np.ndarray, alpha: np.ndarray, res: float = 0.1) -> Path:
    """An RGBA GeoTIFF as drone orthomosaics come (colour interpretation R, G, B + alpha band)."""
    from affine import Affine

    with rasterio.open(path, "w", driver="GTiff", width=rgb.shape[2], height=rgb.shape[1], count=4, dtype="uint8",
                       crs="EPSG:32631", transform=Affine(res, 0, 500000, 0, -res, 5700000), photometric="RGB",
                       alpha="YES", tiled=True, blockxsize=64, blockysize=64) as ds:
        ds.write(np.concatenate([rgb, alpha[None]]).astype("uint8"))
    return path


def test_rgba_orthomosaics_run_the_rgb_default_on_their_colour_bands(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    rgb = (rng.random((3, 128, 160)) * 200 + 20).astype("uint8")
    alpha = np.full((128, 160), 255, "uint8")
    alpha[:, :24] = 0  # outside the flight: transparent
    before = _rgba(tmp_path / "before.tif", rgb, alpha)
    after_rgb = rgb.copy()
    after_rgb[:, 40:80, 60:110] = [[[250]], [[30]], [[30]]]
    after = _rgba(tmp_path / "after.tif", after_rgb, alpha)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # trained at 1.5 m, the input has 0.1 m: a warning, not the subject here
        result = detect(before, after, output_dir=tmp_path / "out", quicklook=False, vectorize=False)
    assert result.report["model"]["name"] == "aerial-rgb"
    assert result.report["grid"]["bands"] == ["B1", "B2", "B3"]  # bands 1-3 (red, green, blue); not alpha
    assert result.report["summary"]["valid_pixels"] == 128 * (160 - 24)  # the alpha band is the validity mask
    assert (result.mask[:, :24] == 255).all() and set(np.unique(result.mask[:, 24:])) <= {0, 1}


def test_colour_bands_are_matched_in_the_model_order() -> None:
    from changedet.api import _bands_by_colour

    bgra = SimpleNamespace(colorinterp=("blue", "green", "red", "alpha"))
    assert _bands_by_colour(bgra, ["red", "green", "blue"]) == [3, 2, 1]
    assert _bands_by_colour(bgra, ["B04", "B03", "B02"]) == [3, 2, 1]
    assert _bands_by_colour(bgra, ["B08", "B04", "B03"]) is None  # near-infrared has no colour
    assert _bands_by_colour(SimpleNamespace(colorinterp=("gray", "undefined")), ["red", "green", "blue"]) is None
    assert _bands_by_colour(SimpleNamespace(colorinterp=("red", "red", "green", "blue")), ["red", "green", "blue"]) is None


def test_a_raster_marked_blue_green_red_feeds_the_rgb_model_red_green_blue(tmp_path: Path) -> None:
    from rasterio.enums import ColorInterp

    rng = np.random.default_rng(1)
    paths = []
    for name in ("before.tif", "after.tif"):
        p = make_geotiff(tmp_path / name, (rng.random((3, 64, 64)) * 200).astype("uint8"), res=0.5)
        with rasterio.open(p, "r+") as ds:
            ds.colorinterp = [ColorInterp.blue, ColorInterp.green, ColorInterp.red]
        paths.append(p)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = detect(*paths, output_dir=tmp_path / "out", quicklook=False, vectorize=False)
    assert result.report["model"]["name"] == "aerial-rgb"
    assert result.report["grid"]["bands"] == ["B3", "B2", "B1"]  # red, green, blue


def test_named_sentinel2_stacks_of_other_band_counts_pick_the_rgb_model_by_name(tmp_path: Path) -> None:
    l2a = ["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B11", "B12"]  # no B10
    before, after = make_pair(tmp_path, "aligned", size=64, bands=12, descriptions=l2a)
    result = detect(before, after, output_dir=tmp_path / "out", quicklook=False, vectorize=False)
    assert result.report["model"]["name"] == "s2-rgb"
    assert result.report["grid"]["bands"] == ["B04", "B03", "B02"]


def test_a_13_band_stack_gets_the_true_colour_default_by_name_or_sentinel2_order(tmp_path: Path) -> None:
    from changedet.models.bundled import S2_BANDS

    named = make_pair(tmp_path / "named", "aligned", size=64, bands=13, descriptions=list(S2_BANDS))
    result = detect(*named, output_dir=tmp_path / "named_out", quicklook=False, vectorize=False)
    assert result.report["model"]["name"] == "s2-rgb"
    assert result.report["grid"]["bands"] == ["B04", "B03", "B02"]
    # no band names: a 13-band raster is read as Sentinel-2 L1C in sensor order, so bands 4, 3, 2
    unnamed = make_pair(tmp_path / "unnamed", "aligned", size=64, bands=13)
    default = detect(*unnamed, output_dir=tmp_path / "default", quicklook=False, vectorize=False)
    assert default.report["model"]["name"] == "s2-rgb"
    assert default.report["grid"]["bands"] == ["B4", "B3", "B2"]
    chosen = detect(*unnamed, model="s2-rgb", indexes=[4, 3, 2], output_dir=tmp_path / "chosen", quicklook=False,
                    vectorize=False)
    assert chosen.report["grid"]["bands"] == ["B4", "B3", "B2"]
    with rasterio.open(tmp_path / "default" / "probability.tif") as a, \
            rasterio.open(tmp_path / "chosen" / "probability.tif") as b:
        np.testing.assert_array_equal(a.read(), b.read())
    # the 13-band model stays bundled, by name
    full = detect(*unnamed, model="s2-13band", output_dir=tmp_path / "full", quicklook=False, vectorize=False)
    assert full.report["model"]["name"] == "s2-13band" and len(full.report["grid"]["bands"]) == 13


def test_selecting_all_13_bands_without_a_model_names_the_13_band_model(tmp_path: Path) -> None:
    before, after = make_pair(tmp_path, "aligned", size=64, bands=13)
    res = CliRunner().invoke(cli, ["detect", str(before), str(after), "-o", str(tmp_path / "out"),
                                   "--indexes", ",".join(str(i) for i in range(1, 14))])
    assert res.exit_code == 2
    assert "selects 13 bands but the model s2-rgb expects 3" in res.output and "s2-13band" in res.output
    assert not (tmp_path / "out" / "probability.tif").exists()
    ok = CliRunner().invoke(cli, ["-q", "detect", str(before), str(after), "-o", str(tmp_path / "b13"), "--model",
                                  "s2-13band", "--indexes", ",".join(str(i) for i in range(1, 14)), "--no-quicklook"])
    assert ok.exit_code == 0, ok.output
    assert "model: s2-13band (fc-ef) on bands B1, B2, B3, B4, B5" in ok.output
    default = CliRunner().invoke(cli, ["-q", "detect", str(before), str(after), "-o", str(tmp_path / "rgb"),
                                       "--no-quicklook"])
    assert default.exit_code == 0, default.output
    assert "model: s2-rgb (fc-ef) on bands B4, B3, B2\n" in default.output  # the summary says which model ran


@pytest.mark.parametrize(("names", "res", "model", "bands"), [
    (["Blue", "Green", "Red", "NIR"], 10.0, "s2-rgb", ["Red", "Green", "Blue"]),  # a stack with colour names
    (["red", "green", "blue", "nir"], 0.5, "aerial-rgb", ["red", "green", "blue"]),
    ([f"SR_B{i}" for i in range(1, 8)], 30.0, "s2-rgb", ["SR_B4", "SR_B3", "SR_B2"]),  # Landsat 8/9 Collection 2
    (["SR_B1", "SR_B2", "SR_B3", "SR_B4", "SR_B5", "SR_B7"], 30.0, "s2-rgb", ["SR_B3", "SR_B2", "SR_B1"]),  # 4-7
])
def test_bands_named_after_colours_or_landsat_bands_pick_the_rgb_default(tmp_path: Path, names: list[str], res: float,
                                                                          model: str, bands: list[str]) -> None:
    before, after = make_pair(tmp_path, "aligned", size=64, bands=len(names), descriptions=names, res=res)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the bundled RGB models were trained at 10 m and 1.5 m: a pixel-size warning
        result = detect(before, after, output_dir=tmp_path / "out", quicklook=False, vectorize=False)
    assert result.report["model"]["name"] == model
    assert result.report["grid"]["bands"] == bands


def _with_bands(src: Path, dst: Path, bands: list[int], names: list[str] | None) -> Path:
    """A copy of ``src`` holding only ``bands`` (1-based, in that order), named ``names``."""
    with rasterio.open(src) as ds:
        profile = ds.profile | {"count": len(bands)}
        data = ds.read(bands)
    with rasterio.open(dst, "w", **profile) as out:
        out.write(data)
        for i, name in enumerate(names or [], start=1):
            out.set_band_description(i, name)
    return dst


def test_each_date_reads_the_models_bands_by_its_own_names(tmp_path: Path) -> None:
    from changedet.models.bundled import S2_BANDS

    before, after = make_pair(tmp_path, "aligned", size=64, bands=13, descriptions=list(S2_BANDS))
    reference = detect(before, after, output_dir=tmp_path / "ref", quicklook=False, vectorize=False)
    # AFTER as a 3-band export in blue, green, red order beside the 13-band BEFORE, then the other way round:
    # each date reads B04, B03, B02 wherever its names put them (AFTER was read at BEFORE's positions: B03, B02, B01)
    bgr = _with_bands(after, tmp_path / "after_bgr.tif", [2, 3, 4], ["B02", "B03", "B04"])
    mixed = detect(before, bgr, output_dir=tmp_path / "mixed", quicklook=False, vectorize=False)
    assert mixed.report["alignment"]["indexes"] == {"before": [4, 3, 2], "after": [3, 2, 1]}
    np.testing.assert_array_equal(mixed.probability, reference.probability)
    bgr_before = _with_bands(before, tmp_path / "before_bgr.tif", [2, 3, 4], ["B02", "B03", "B04"])
    other_way = detect(bgr_before, after, output_dir=tmp_path / "other", quicklook=False, vectorize=False)
    assert other_way.report["alignment"]["indexes"] == {"before": [3, 2, 1], "after": [4, 3, 2]}
    np.testing.assert_array_equal(other_way.probability, reference.probability)
    # an unnamed AFTER of BEFORE's band count reads BEFORE's positions, as before
    plain = _with_bands(after, tmp_path / "after_plain.tif", [2, 3, 4], None)
    same_positions = detect(bgr_before, plain, output_dir=tmp_path / "plain", quicklook=False, vectorize=False)
    assert same_positions.report["alignment"]["indexes"] == {"before": [3, 2, 1], "after": [3, 2, 1]}


def test_an_unnamed_after_without_befores_band_positions_says_why_and_gives_the_per_date_fix(tmp_path: Path) -> None:
    from changedet.api import default_model_for
    from changedet.errors import PairMismatchError
    from changedet.models.bundled import S2_BANDS

    data = (np.random.default_rng(0).random((13, 64, 64)) * 3000).astype("uint16")
    before = make_geotiff(tmp_path / "before.tif", data, descriptions=list(S2_BANDS))
    after = make_geotiff(tmp_path / "after3.tif", data[1:4])  # B02, B03, B04 with no names: (None, None, None)
    with rasterio.open(after) as ds:
        assert ds.descriptions == (None, None, None)
    # s2-rgb reads B04, B03, B02 at bands 4, 3, 2 of BEFORE; AFTER names none of them and has no band 4: detect says
    # so (not "band index [4] out of range" for bands the user never gave) and gives the per-date --indexes
    with pytest.raises(PairMismatchError) as raised:
        detect(before, after, output_dir=tmp_path / "out", quicklook=False, vectorize=False)
    message = str(raised.value)
    assert message.startswith(f"{after}: the model s2-rgb reads B04, B03, B02, which {before} holds at bands 4,3,2")
    assert "has 3 unnamed bands" in message and "no band 4" in message and "out of range" not in message
    assert "--indexes 4,3,2:3,2,1 if its bands are B02, B03, B04" in message
    # changedet check asks the same question (default_model_for): the same error, not an IndexError
    with pytest.raises(PairMismatchError) as checked:
        default_model_for(before, after)
    assert str(checked.value) == message
    # the fix it gives works
    fixed = detect(before, after, indexes=([4, 3, 2], [3, 2, 1]), output_dir=tmp_path / "fixed", quicklook=False,
                   vectorize=False)
    assert fixed.report["alignment"]["indexes"] == {"before": [4, 3, 2], "after": [3, 2, 1]}
    res = CliRunner().invoke(cli, ["detect", str(before), str(after), "-o", str(tmp_path / "cli")])
    assert res.exit_code == 2 and "--indexes 4,3,2:3,2,1" in res.output and "Traceback" not in res.output


def test_series_dates_read_the_models_bands_by_their_own_names(tmp_path: Path) -> None:
    import shutil

    from changedet.models.bundled import S2_BANDS
    from changedet.series import detect_series

    first, second = make_pair(tmp_path, "aligned", size=64, bands=13, descriptions=list(S2_BANDS))
    third = {"bgr": _with_bands(second, tmp_path / "third_bgr.tif", [2, 3, 4], ["B02", "B03", "B04"]),
             "full": Path(shutil.copy(second, tmp_path / "third_full.tif"))}
    probs = {}
    for kind, path in third.items():
        with rasterio.open(path, "r+") as ds:
            ds.update_tags(ACQUISITION_DATE="2021-05-01")
        series = detect_series([first, second, path], output_dir=tmp_path / kind, quicklook=False,
                               vectorize=False)
        assert [p.label for p in series.pairs] == ["2019-05-01/2020-05-01", "2020-05-01/2021-05-01"]
        probs[kind] = series.pairs[1].probability
    # a third date holding B02-B04 in blue-first order reads them by name: as if it were the 13-band stack
    np.testing.assert_array_equal(probs["bgr"], probs["full"])


@pytest.mark.parametrize(("names", "dtype", "bands"), [
    (["B1", "B2", "B3", "B4", "B5", "B6", "B7"], "uint8", ["B3", "B2", "B1"]),  # Landsat 5 TM Level-1 (B6 thermal)
    ([f"B{i}" for i in (1, 2, 3, 4, 5, 6, 7, 9, 10, 11)], "uint16", ["B4", "B3", "B2"]),  # Landsat 8/9 Level-1
    (["B1", "B2", "B3", "B4", "B5", "B7"], "uint16", ["B3", "B2", "B1"]),  # `changedet stack` of Landsat 4-7
    (["B2", "B3", "B4"], "uint16", ["B4", "B3", "B2"]),  # Earth Engine's Sentinel-2 / Landsat 8 numbering
    (["SR_B2", "SR_B3", "SR_B4"], "uint16", ["SR_B4", "SR_B3", "SR_B2"]),  # Landsat 8/9 surface reflectance, visible
    (["B2", "B3", "B4"], "uint8", ["B4", "B3", "B2"]),  # Earth Engine's 8-bit visual Sentinel-2 export
])
def test_landsat_and_unpadded_band_numbers_feed_red_green_blue(tmp_path: Path, names: list[str], dtype: str,
                                                               bands: list[str]) -> None:
    before, after = make_pair(tmp_path, "aligned", size=64, bands=len(names), descriptions=names, res=30.0,
                              dtype=dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # trained at 10 m: a pixel-size warning
        result = detect(before, after, output_dir=tmp_path / "out", quicklook=False, vectorize=False)
    assert result.report["model"]["name"] == "s2-rgb"
    assert result.report["grid"]["bands"] == bands


@pytest.mark.parametrize("names", [["B1", "B2", "B3", "B4"], ["B1", "B2", "B3", "B4", "B5", "B6", "B7"]])
def test_landsat_numbers_either_sensor_fits_are_not_guessed(tmp_path: Path, names: list[str]) -> None:
    """16-bit B1 .. Bn without B10/B11 or a SPACECRAFT_ID tag: Landsat 5 (B3 red) or 8 (B4 red)? Guessing fed
    Landsat 5's near-infrared as red; without a guess detect asks for the bands, as it did before the names were read."""
    before, after = make_pair(tmp_path, "aligned", size=64, bands=len(names), descriptions=names, res=30.0)
    res = CliRunner().invoke(cli, ["detect", str(before), str(after), "-o", str(tmp_path / "out")])
    assert res.exit_code == 2 and f"no bundled model takes {len(names)} bands" in res.output
    with rasterio.open(before, "r+") as ds:
        ds.update_tags(SPACECRAFT_ID="LANDSAT_5")
    with rasterio.open(after, "r+") as ds:
        ds.update_tags(SPACECRAFT_ID="LANDSAT_5")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = detect(before, after, output_dir=tmp_path / "tagged", quicklook=False, vectorize=False)
    assert result.report["grid"]["bands"] == ["B3", "B2", "B1"]


def test_the_spacecraft_tag_settles_the_landsat_numbering() -> None:
    from changedet.api import band_colours

    subset = tuple(f"SR_B{i}" for i in range(1, 6))  # SR_B1-SR_B5: Landsat 4-7 or 8/9? The names cannot tell
    l8 = SimpleNamespace(colorinterp=(), descriptions=subset, dtypes=("uint16",) * 5, tags={"SPACECRAFT_ID": "LANDSAT_8"})
    assert band_colours(l8) == ["", "blue", "green", "red", ""]
    l5 = SimpleNamespace(colorinterp=(), descriptions=subset, dtypes=("uint16",) * 5, tags={"SPACECRAFT_ID": "LANDSAT_5"})
    assert band_colours(l5) == ["blue", "green", "red", "", ""]
    level1 = SimpleNamespace(colorinterp=(), descriptions=("B1", "B2", "B3", "B4"), dtypes=("uint16",) * 4,
                             tags={"SPACECRAFT_ID": "LANDSAT_7"})
    assert band_colours(level1) == ["blue", "green", "red", ""]
    # Sentinel-2 and Landsat 8 number the visible bands alike; Earth Engine's S2 names have no zero
    gee = SimpleNamespace(colorinterp=(), descriptions=("B1", "B2", "B3", "B4", "B8A"), dtypes=("uint16",) * 5)
    assert band_colours(gee) == ["", "blue", "green", "red", ""]
    # names either numbering fits give no colour without the tag: the b1, b2, b3 files of a split 8-bit orthophoto
    # or Landsat 5's B1-B3; SR_B1-SR_B5 of Landsat 4-7 or 8
    split = SimpleNamespace(colorinterp=(), descriptions=("B1", "B2", "B3"), dtypes=("uint8",) * 3)
    assert band_colours(split) == ["", "", ""]
    untagged = SimpleNamespace(colorinterp=(), descriptions=subset, dtypes=("uint16",) * 5)
    assert band_colours(untagged) == [""] * 5


def test_band_colours_prefer_the_colour_interpretation_to_names() -> None:
    from changedet.api import band_colours

    marked = SimpleNamespace(colorinterp=("red", "green", "blue"), descriptions=("Blue", "Green", "Red"))
    assert band_colours(marked) == ["red", "green", "blue"]
    plain = SimpleNamespace(colorinterp=("gray", "undefined", "undefined"), descriptions=("Blue", None, "R"))
    assert band_colours(plain) == ["blue", "", "red"]
    assert band_colours(SimpleNamespace(colorinterp=("gray",), descriptions=("SR_B2",))) == ["green"]  # 4-7 numbering
    # ... but not GDAL's default red, green, blue(, alpha) of any 3 or 4 byte bands when names say otherwise
    stacked = SimpleNamespace(colorinterp=("red", "green", "blue", "alpha"), descriptions=("blue", "green", "nir", "red"),
                              dtypes=("uint8",) * 4)
    assert band_colours(stacked) == ["blue", "green", "", "red"]
    deliberate = SimpleNamespace(colorinterp=("blue", "green", "red"), descriptions=("B1", "B2", "B3"),
                                 dtypes=("uint8",) * 3)
    assert band_colours(deliberate) == ["blue", "green", "red"]


def test_unnamed_uncoloured_band_counts_without_a_default_are_a_clear_error(tmp_path: Path) -> None:
    before, after = make_pair(tmp_path, "aligned", size=64, bands=4)
    res = CliRunner().invoke(cli, ["detect", str(before), str(after), "-o", str(tmp_path / "out")])
    assert res.exit_code == 2
    assert "no bundled model takes 4 bands" in res.output and "--indexes" in res.output
    assert not (tmp_path / "out" / "probability.tif").exists()


def test_cli_and_api_give_identical_rasters_and_polygons(tmp_path: Path) -> None:
    before, after = make_pair(tmp_path, "aligned", size=160, bands=3)
    paint_change(after, (30, 40, 20, 30))
    ckpt = _checkpoint(tmp_path, ["B1", "B2", "B3"])
    api_out, cli_out = tmp_path / "api", tmp_path / "cli"
    detect(before, after, model=ckpt, output_dir=api_out, tile_size=64, overlap=16, quicklook=False)
    res = CliRunner().invoke(cli, ["-q", "detect", str(before), str(after), "-o", str(cli_out), "--model", str(ckpt),
                                   "--tile-size", "64", "--overlap", "16", "--no-quicklook"])
    assert res.exit_code == 0, res.output
    for name in ("probability.tif", "change.tif"):
        with rasterio.open(api_out / name) as a, rasterio.open(cli_out / name) as c:
            np.testing.assert_array_equal(a.read(), c.read())
    pa = gpd.read_file(api_out / "changes.gpkg", layer="changes")
    pc = gpd.read_file(cli_out / "changes.gpkg", layer="changes")
    assert len(pa) == len(pc)
    assert pa.geometry.geom_equals(pc.geometry).all()


def test_tta_is_recorded_and_refused_for_unsupervised_methods(tmp_path: Path) -> None:
    before, after = make_pair(tmp_path, "aligned", size=96, bands=3)
    ckpt = _checkpoint(tmp_path, ["red", "green", "blue"])
    plain = detect(before, after, model=str(ckpt), output_dir=tmp_path / "plain", quicklook=False, vectorize=False)
    flipped = detect(before, after, model=str(ckpt), output_dir=tmp_path / "flip", tta="flip", quicklook=False,
                     vectorize=False)
    assert plain.report["model"]["tta"] == "none" and flipped.report["model"]["tta"] == "flip"
    with rasterio.open(tmp_path / "plain" / "probability.tif") as p, rasterio.open(tmp_path / "flip" / "probability.tif") as f:
        assert not np.allclose(p.read(1), f.read(1), atol=1e-6)  # the untrained network is not flip-invariant
    out = tmp_path / "cva"
    res = CliRunner().invoke(cli, ["detect", str(before), str(after), "-o", str(out), "--method", "cva", "--tta", "d4"])
    assert res.exit_code == 2 and "--tta d4" in res.output and "--method cva" in res.output
    assert not out.exists()
    res = CliRunner().invoke(cli, ["detect", str(before), str(after), "-o", str(out), "--tta", "rot"])
    assert res.exit_code == 2 and "rot" in res.output and not out.exists()


def test_non_georeferenced_pair_works_in_pixel_coordinates(tmp_path: Path) -> None:
    before, after = make_pair(tmp_path, "no-crs-both", size=64)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = detect(before, after, method="cva", output_dir=tmp_path / "out", quicklook=True)
    assert any("georeferenc" in str(w.message).lower() for w in caught)
    with rasterio.open(result.paths["probability"]) as ds:
        assert ds.crs is None
    assert (tmp_path / "out" / "quicklook.png").stat().st_size > 1000


def test_report_records_the_balanced_tile_edge_the_engine_used(tmp_path: Path) -> None:
    before, after = make_pair(tmp_path, "aligned", size=200, bands=3)
    ckpt = _checkpoint(tmp_path, ["B1", "B2", "B3"])
    # 200 px in tiles of at most 128 overlapping by 16: 2 tiles per axis; 108 px would cover it (2 x 108 - 16), but
    # tiles are multiples of the FC models' downsampling factor (16) so that they pool in phase: 112
    result = detect(before, after, model=ckpt, output_dir=tmp_path / "out", tile_size=128, overlap=16,
                    quicklook=False, vectorize=False)
    tiling = result.report["tiling"]
    assert (tiling["tile_size"], tiling["overlap"]) == (128, 16)
    assert (tiling["tile_size_used"], tiling["overlap_used"]) == (112, 16)
    assert result.report["stats"]["tiles_predicted"] == 4
    assert result.report["stats"]["paths"] == ["change", "probability"]  # no path into the removed staging folder
    assert ".changedet-staging" not in (tmp_path / "out" / "report.json").read_text()
    defaults = detect(before, after, model=ckpt, output_dir=tmp_path / "default", quicklook=False, vectorize=False)
    assert (defaults.report["tiling"]["tile_size"], defaults.report["tiling"]["overlap"]) == (512, 32)


def test_an_overlap_the_tiles_cannot_hold_is_reduced_with_a_warning(tmp_path: Path) -> None:
    from changedet.errors import ChangedetWarning, InputError

    before, after = make_pair(tmp_path, "aligned", size=200, bands=3)
    ckpt = _checkpoint(tmp_path, ["B1", "B2", "B3"])  # tiles in multiples of 16: 64 px tiles overlap by <= 48
    with pytest.warns(ChangedetWarning, match="the tiles overlap by 48 px"):
        result = detect(before, after, model=ckpt, output_dir=tmp_path / "out", tile_size=64, overlap=60,
                        quicklook=False, vectorize=False)
    assert result.report["tiling"]["overlap_used"] == 48
    with warnings.catch_warnings():
        warnings.simplefilter("error", ChangedetWarning)
        detect(before, after, model=ckpt, output_dir=tmp_path / "ok", tile_size=64, overlap=16, quicklook=False,
               vectorize=False)
    # an overlap as large as the tiles themselves cannot be meant: an error before anything is written
    with pytest.raises(InputError, match="--overlap 64 must be smaller than --tile-size 64"):
        detect(before, after, model=ckpt, output_dir=tmp_path / "no", tile_size=64, overlap=64)
    assert not (tmp_path / "no").exists()


def test_options_a_run_does_not_use_are_named_in_a_warning(tmp_path: Path) -> None:
    from changedet.errors import ChangedetWarning

    before, after = make_pair(tmp_path, "aligned", size=64, bands=3)
    with pytest.warns(ChangedetWarning, match=r"--precision bf16: not used, since --method cva runs no network"):
        detect(before, after, method="cva", precision="bf16", quicklook=False, vectorize=False)
    with pytest.warns(ChangedetWarning, match=r"--min-area 500, --simplify 5: not used, since no polygons are made"):
        detect(before, after, method="cva", min_area=500, simplify=5, quicklook=False, vectorize=False)


def test_progress_rate_counts_from_the_first_finished_tile(monkeypatch: pytest.MonkeyPatch) -> None:
    import changedet.inference as inference

    clock = iter([100.0, 102.0, 104.0])  # first tile at t=100 (after a long set-up), then one tile every 2 s
    monkeypatch.setattr(inference, "time", SimpleNamespace(perf_counter=lambda: next(clock)))
    progress = inference.TileProgress(enabled=True)
    for done in (1, 2):
        progress(done, 3, done * 1_000_000)  # 1 Mpx per tile
    bar = progress.bar
    progress(3, 3, 3_000_000)
    assert bar.n == 3
    assert bar.postfix == "0.50 Mpx/s"  # 2 Mpx in 4 s; the set-up before t=100 does not count
    assert progress.bar is None  # closed at the last tile: later warnings start on their own line


def test_reads_decode_blocks_with_the_configured_gdal_threads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import changedet.api as api
    import changedet.io.alignment as alignment

    seen: list[str | None] = []
    real_open_pair = alignment.open_pair

    def spy(*args: object, **kwargs: object) -> object:
        seen.append(rasterio.env.getenv().get("GDAL_NUM_THREADS"))
        return real_open_pair(*args, **kwargs)

    monkeypatch.setattr(alignment, "open_pair", spy)
    before, after = make_pair(tmp_path, "aligned", size=64)
    monkeypatch.setenv("CHANGEDET_GDAL_THREADS", "3")
    assert api.gdal_read_threads() == 3
    detect(before, after, method="cva", output_dir=tmp_path / "out", quicklook=False, vectorize=False)
    assert seen == ["3"]
    monkeypatch.delenv("CHANGEDET_GDAL_THREADS")
    assert 1 <= api.gdal_read_threads() <= 4


@pytest.mark.parametrize("where", ["group", "command"])
def test_quiet_and_verbose_work_before_or_after_the_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                             where: str) -> None:
    """``changedet -q detect ...`` and ``changedet detect ... -q`` both turn the progress bar off."""
    import changedet.inference as inference

    made: list[bool] = []
    real = inference.TileProgress

    def spy(enabled: bool) -> object:
        made.append(enabled)
        return real(enabled)

    monkeypatch.setattr(inference, "TileProgress", spy)
    root = logging.getLogger()
    monkeypatch.setattr(root, "level", root.level)  # -q / -v set it: restored after the test
    before, after = make_pair(tmp_path, "aligned", size=64)
    args = ["detect", str(before), str(after), "-o", str(tmp_path / "out"), "--method", "cva", "--no-quicklook"]
    res = CliRunner().invoke(cli, ["-q", *args] if where == "group" else [*args, "-q"])
    assert res.exit_code == 0, res.output
    assert made == [False]
    res = CliRunner().invoke(cli, [*args, "--overwrite", "-vv"])
    assert res.exit_code == 0, res.output
    assert made == [False, True]
    assert root.level == logging.DEBUG  # -vv after the command raises the log level


@pytest.mark.parametrize("vectorize", [True, False])
def test_cli_summary_counts_polygons_only_when_it_vectorised(tmp_path: Path, vectorize: bool) -> None:
    before, after = make_pair(tmp_path, "aligned", size=64)
    args = ["detect", str(before), str(after), "-o", str(tmp_path / "out"), "--method", "cva", "--no-quicklook"]
    res = CliRunner().invoke(cli, args if vectorize else [*args, "--no-vectorize"])
    assert res.exit_code == 0, res.output
    summary = next(line for line in res.output.splitlines() if line.startswith("changed: "))
    assert ("polygons; threshold" in summary) == vectorize
    assert "method: cva on bands B1, B2, B3" in res.output
    assert "None" not in summary


def test_indexes_that_contradict_the_models_band_names_are_warned(tmp_path: Path) -> None:
    from changedet.errors import ChangedetWarning
    from changedet.models.bundled import S2_BANDS

    names = list(S2_BANDS)[:13]
    before, after = make_pair(tmp_path, "aligned", size=64, bands=13, descriptions=names)
    with pytest.warns(ChangedetWarning, match=r"--indexes 2,3,4 feeds the model B02, B03, B04, but it was trained on "
                                              r"B04, B03, B02"):
        detect(before, after, model="s2-rgb", indexes=[2, 3, 4], quicklook=False, vectorize=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ChangedetWarning)
        detect(before, after, model="s2-rgb", indexes=[4, 3, 2], quicklook=False, vectorize=False)
