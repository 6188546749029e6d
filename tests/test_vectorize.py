"""Known-answer tests of changedet.vectorize: areas, window merging, attributes, metre options, errors."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings

import numpy as np
import pytest
import shapely
from pyproj import CRS, Geod, Transformer
from rasterio.transform import from_origin

from changedet.errors import InputError, NotGeoreferencedWarning, RasterReadError
from changedet.testing import make_geotiff
from changedet.vectorize import COLUMNS, vectorize

UTM = "EPSG:32631"
T_UTM = from_origin(500000, 5700000, 10, 10)
RES_DEG = 0.0001
T_GEO = from_origin(2.3, 48.9, RES_DEG, RES_DEG)
GEOD = Geod(ellps="WGS84")


def _block_area_geodesic(r0: int, c0: int, h: int, w: int) -> float:
    """Geodesic area of a block of pixels of T_GEO, computed independently of changedet."""
    lon0, lat0 = T_GEO @ (c0, r0)
    lon1, lat1 = T_GEO @ (c0 + w, r0 + h)
    # densify the edges along parallels so the polygon follows the pixel grid
    lons = np.concatenate([np.linspace(lon0, lon1, 50), np.linspace(lon1, lon0, 50)])
    lats = np.concatenate([np.full(50, lat0), np.full(50, lat1)])
    return abs(GEOD.polygon_area_perimeter(lons, lats)[0])


def test_blocks_projected_exact_areas_place_and_crs():
    mask = np.zeros((200, 300), dtype="uint8")
    mask[10:30, 40:90] = 1  # 20 x 50 px
    mask[100:170, 200:207] = 1  # 70 x 7 px
    gdf = vectorize(mask, transform=T_UTM, crs=UTM)
    assert list(gdf.columns) == [*COLUMNS, "geometry"]
    assert gdf.crs == CRS.from_user_input(UTM)
    assert len(gdf) == 2
    assert gdf["id"].tolist() == [1, 2]
    assert gdf["area_m2"].tolist() == [20 * 50 * 100.0, 70 * 7 * 100.0]
    assert gdf["perimeter_m"].tolist() == [2 * (20 + 50) * 10.0, 2 * (70 + 7) * 10.0]
    assert gdf["pixel_count"].tolist() == [1000, 490]
    assert gdf.geometry[0].equals(shapely.box(500400, 5700000 - 300, 500900, 5700000 - 100))
    assert gdf.geometry[1].equals(shapely.box(502000, 5700000 - 1700, 502070, 5700000 - 1000))
    # exterior rings counter-clockwise (RFC 7946 order)
    assert all(shapely.is_ccw(g.exterior) for g in gdf.geometry)


def test_epsg4326_areas_within_one_percent_of_geodesic():
    mask = np.zeros((400, 400), dtype="uint8")
    mask[50:150, 60:260] = 1
    mask[300:310, 300:305] = 1
    gdf = vectorize(mask, transform=T_GEO, crs="EPSG:4326")
    assert gdf.crs.to_epsg() == 4326
    expected = [_block_area_geodesic(50, 60, 100, 200), _block_area_geodesic(300, 300, 10, 5)]
    np.testing.assert_allclose(gdf["area_m2"], expected, rtol=0.01)
    # and with the area computed in the UTM zone (an independent route)
    utm = Transformer.from_crs("EPSG:4326", UTM, always_xy=True)
    projected = [shapely.transform(g, lambda xy: np.column_stack(utm.transform(xy[:, 0], xy[:, 1]))).area
                 for g in gdf.geometry]
    np.testing.assert_allclose(gdf["area_m2"], projected, rtol=0.01)
    # pixels at 48.9 N are ~7.3 m x 11.1 m: a perimeter in metres, not degrees
    assert 2 * (100 * 11.0 + 200 * 7.2) < gdf["perimeter_m"][0] < 2 * (100 * 11.2 + 200 * 7.4)


def test_web_mercator_areas_are_geodesic_and_utm_stays_planar():
    # EPSG:3857 stretches areas by 1/cos^2(latitude): a 20 x 20 px block of 10 map units at 60 N is about
    # 10 km^2 on the ground, not 40 000 m^2 (map units); min_area and simplify are read on the ground too
    x, y = Transformer.from_crs("EPSG:4326", "EPSG:3857", always_xy=True).transform(10, 60)
    t = from_origin(x, y, 10, 10)
    mask = np.zeros((64, 64), dtype="uint8")
    mask[10:30, 10:30] = 1
    gdf = vectorize(mask, transform=t, crs="EPSG:3857")
    truth = abs(Geod(ellps="WGS84").geometry_area_perimeter(gdf.to_crs(4326).geometry.iloc[0])[0])
    assert gdf["area_m2"].iloc[0] == pytest.approx(truth, rel=1e-3)
    assert gdf["area_m2"].iloc[0] == pytest.approx(40000 / 4, rel=0.02)
    assert gdf["perimeter_m"].iloc[0] == pytest.approx(800 / 2, rel=0.02)
    assert len(vectorize(mask, transform=t, crs="EPSG:3857", min_area=15000)) == 0  # 40000 map units: dropped
    assert len(vectorize(mask, transform=t, crs="EPSG:3857", min_area=9000)) == 1
    # a UTM zone keeps planar areas in map units (its areal scale is within 0.2 % of 1)
    assert vectorize(mask, transform=T_UTM, crs=UTM)["area_m2"].iloc[0] == 40000.0


def test_needs_geodesic_area_by_areal_scale():
    from rasterio.crs import CRS as RCRS

    from changedet.geodesy import needs_geodesic_area

    assert needs_geodesic_area(RCRS.from_epsg(4326), (2, 48, 3, 49))
    assert not needs_geodesic_area(RCRS.from_epsg(32631), (500000, 5700000, 510000, 5710000))
    assert not needs_geodesic_area(RCRS.from_epsg(3035), (4000000, 3000000, 4010000, 3010000))  # equal-area
    x, y = Transformer.from_crs("EPSG:4326", "EPSG:3857", always_xy=True).transform(10, 60)
    assert needs_geodesic_area(RCRS.from_epsg(3857), (x, y, x + 1000, y + 1000))
    assert not needs_geodesic_area(None, (0, 0, 1, 1))


@pytest.mark.parametrize("window_size", [7, 16, 33, 4096])
def test_block_split_across_windows_comes_back_as_one_polygon(window_size):
    mask = np.zeros((100, 100), dtype="uint8")
    mask[5:95, 3:97] = 1
    mask[40:60, 40:60] = 0  # a hole crossing window edges
    gdf = vectorize(mask, transform=T_UTM, crs=UTM, window_size=window_size)
    assert len(gdf) == 1
    poly = gdf.geometry[0]
    assert poly.geom_type == "Polygon" and poly.is_valid
    assert len(poly.interiors) == 1
    assert gdf["area_m2"][0] == (90 * 94 - 400) * 100.0
    assert gdf["pixel_count"][0] == 90 * 94 - 400
    # vertices are only the block and hole corners: no seams left from the window edges
    assert len(shapely.get_coordinates(shapely.normalize(poly))) == 10


def test_result_does_not_depend_on_the_window_size():
    rng = np.random.default_rng(1)
    mask = (rng.random((150, 170)) > 0.55).astype("uint8")
    prob = rng.random((150, 170)).astype("float32")
    whole = vectorize(mask, prob, transform=T_UTM, crs=UTM)
    tiled = vectorize(mask, prob, transform=T_UTM, crs=UTM, window_size=13)
    assert len(whole) == len(tiled) > 100
    assert shapely.equals(np.asarray(whole.geometry.values), np.asarray(tiled.geometry.values)).all()
    for col in ("area_m2", "perimeter_m", "pixel_count", "mean_prob", "max_prob"):
        np.testing.assert_allclose(whole[col], tiled[col], rtol=1e-12)
    assert whole["pixel_count"].sum() == mask.sum()


def test_attributes_are_filled():
    mask = np.zeros((60, 60), dtype="uint8")
    mask[10:20, 10:20] = 1
    prob = np.full((60, 60), 0.1, dtype="float32")
    prob[10:20, 10:20] = 0.6
    prob[12, 13] = 0.95
    prob[15, 15] = -1  # the probability's nodata: ignored in the statistics
    gdf = vectorize(mask, prob, transform=T_UTM, crs=UTM, threshold=0.5, window_size=16,
                    before_date="2019-05-01", after_date=np.datetime64("2020-05-01").astype(object),
                    model="fc-siam-diff")
    row = gdf.iloc[0]
    assert row["max_prob"] == pytest.approx(0.95)
    # values outside 0..1 (the -1 nodata of probability.tif) are not probabilities: left out
    assert row["mean_prob"] == pytest.approx((98 * 0.6 + 0.95) / 99, rel=1e-6)
    assert row["before_date"] == "2019-05-01" and row["after_date"] == "2020-05-01"
    assert row["model"] == "fc-siam-diff" and row["threshold"] == 0.5


def test_probability_nodata_from_file_is_ignored(tmp_path):
    mask = np.zeros((40, 40), dtype="uint8")
    mask[5:15, 5:15] = 1
    prob = np.full((40, 40), 0.2, dtype="float32")
    prob[5:15, 5:15] = 0.8
    prob[6, 6] = -1
    prob[7, 7] = np.nan
    mp = make_geotiff(tmp_path / "change.tif", mask, crs=UTM, transform=T_UTM, nodata=255)
    pp = make_geotiff(tmp_path / "probability.tif", prob, crs=UTM, transform=T_UTM, nodata=-1)
    gdf = vectorize(mp, pp)
    assert gdf.crs == CRS.from_user_input(UTM)
    assert gdf["mean_prob"][0] == pytest.approx(0.8)
    assert gdf["max_prob"][0] == pytest.approx(0.8)
    assert gdf["pixel_count"][0] == 100
    assert np.isnan(gdf["threshold"][0])


def test_a_probability_on_another_grid_is_refused(tmp_path):
    mask = np.zeros((40, 40), dtype="uint8")
    mask[5:15, 5:15] = 1
    prob = np.full((40, 40), 0.9, dtype="float32")
    mp = make_geotiff(tmp_path / "change.tif", mask, crs=UTM, transform=T_UTM, nodata=255)
    other_crs = make_geotiff(tmp_path / "p1.tif", prob, crs="EPSG:32633", transform=T_UTM)
    shifted = make_geotiff(tmp_path / "p2.tif", prob, crs=UTM, transform=from_origin(900000, 100000, 20, 20))
    for p in (other_crs, shifted):
        with pytest.raises(InputError, match=rf"{p.name}: its grid .* differs from the mask .*change.tif"):
            vectorize(mp, p)


def test_probability_and_threshold_give_the_mask():
    prob = np.zeros((50, 50), dtype="float32")
    prob[10:20, 10:30] = 0.7
    prob[30:40, 30:40] = 0.4
    gdf = vectorize(None, prob, transform=T_UTM, crs=UTM, threshold=0.5)
    assert len(gdf) == 1 and gdf["area_m2"][0] == 200 * 100.0
    assert len(vectorize(None, prob, transform=T_UTM, crs=UTM, threshold=0.4)) == 2
    with pytest.raises(InputError, match="threshold"):
        vectorize(None, prob, transform=T_UTM, crs=UTM)


def test_nodata_is_not_change():
    mask = np.zeros((30, 30), dtype="uint8")
    mask[0:10, :] = 255
    mask[15:20, 15:20] = 1
    gdf = vectorize(mask, transform=T_UTM, crs=UTM)
    assert len(gdf) == 1 and gdf["pixel_count"][0] == 25
    assert len(vectorize(mask, transform=T_UTM, crs=UTM, nodata=None)) == 2


def test_min_area_in_square_metres_in_epsg4326():
    mask = np.zeros((200, 200), dtype="uint8")
    mask[10:20, 10:20] = 1  # ~100 px of ~81 m2: ~8100 m2
    mask[100:103, 100:103] = 1  # 9 px: ~730 m2
    small, big = _block_area_geodesic(100, 100, 3, 3), _block_area_geodesic(10, 10, 10, 10)
    gdf = vectorize(mask, transform=T_GEO, crs="EPSG:4326", min_area=1000)
    assert len(gdf) == 1 and gdf["area_m2"][0] == pytest.approx(big, rel=0.01)
    assert len(vectorize(mask, transform=T_GEO, crs="EPSG:4326", min_area=small * 0.99)) == 2
    assert len(vectorize(mask, transform=T_GEO, crs="EPSG:4326", min_area=big * 1.01)) == 0


def test_fill_holes_in_square_metres_in_epsg4326_absorbs_islands():
    mask = np.zeros((120, 120), dtype="uint8")
    mask[10:110, 10:110] = 1
    mask[20:30, 20:30] = 0  # hole of 100 px, ~8100 m2
    mask[60:90, 60:90] = 0  # hole of 900 px, ~73000 m2 ...
    mask[70:73, 70:73] = 1  # ... with an island of 9 px inside
    hole_small = _block_area_geodesic(20, 20, 10, 10)
    hole_big = _block_area_geodesic(60, 60, 30, 30)
    kept = vectorize(mask, transform=T_GEO, crs="EPSG:4326")
    assert len(kept) == 2 and len(kept.geometry[0].interiors) == 2
    one = vectorize(mask, transform=T_GEO, crs="EPSG:4326", fill_holes=hole_small * 1.01)
    assert len(one) == 2 and len(one.geometry[0].interiors) == 1
    assert one["area_m2"][0] == pytest.approx(kept["area_m2"][0] + hole_small, rel=1e-6)
    both = vectorize(mask, transform=T_GEO, crs="EPSG:4326", fill_holes=hole_big * 1.01)
    assert len(both) == 1 and len(both.geometry[0].interiors) == 0
    assert both["area_m2"][0] == pytest.approx(_block_area_geodesic(10, 10, 100, 100), rel=1e-6)
    # the island's pixels are absorbed into the polygon's statistics
    assert both["pixel_count"][0] == mask.sum()
    # just below the big hole's area: the big hole stays
    assert len(vectorize(mask, transform=T_GEO, crs="EPSG:4326", fill_holes=hole_big * 0.99)) == 2


@pytest.mark.parametrize("window_size", [512, 32])
def test_fill_holes_never_covers_nodata(window_size: int):
    mask = np.zeros((120, 120), dtype="uint8")
    mask[10:110, 10:110] = 1
    mask[20:30, 20:30] = 0  # a 100 px hole of unchanged pixels: filled
    mask[60:80, 60:80] = 255  # a 400 px hole of nodata (e.g. a cloud or NaN in AFTER): never filled
    mask[62:64, 62:64] = 0  # (unchanged pixels inside it do not make it fillable)
    gdf = vectorize(mask, transform=T_UTM, crs=UTM, nodata=255, fill_holes=1e7, window_size=window_size)
    assert len(gdf) == 1
    poly = gdf.geometry[0]
    assert len(poly.interiors) == 1
    assert shapely.Polygon(poly.interiors[0]).area == pytest.approx(400 * 100)  # the nodata block stays out
    assert gdf["area_m2"][0] == pytest.approx((100 * 100 - 400) * 100)
    # from a probability raster, NaN is nodata in the same way
    prob = np.where(mask == 1, 0.9, 0.1).astype("float32")
    prob[60:80, 60:80] = np.nan
    gdf = vectorize(None, prob, threshold=0.5, transform=T_UTM, crs=UTM, fill_holes=1e7, window_size=window_size)
    assert len(gdf.geometry[0].interiors) == 1 and gdf["area_m2"][0] == pytest.approx((100 * 100 - 400) * 100)


def test_simplify_is_topology_preserving_and_in_metres():
    yy, xx = np.mgrid[0:200, 0:200]
    disk = ((yy - 100) ** 2 + (xx - 100) ** 2 < 70**2).astype("uint8")
    exact = vectorize(disk, transform=T_UTM, crs=UTM)
    simple = vectorize(disk, transform=T_UTM, crs=UTM, simplify=15.0)
    n_exact = len(shapely.get_coordinates(exact.geometry[0]))
    n_simple = len(shapely.get_coordinates(simple.geometry[0]))
    assert n_simple < n_exact / 3
    assert simple["area_m2"][0] == pytest.approx(np.pi * 700**2, rel=0.02)
    assert simple.geometry[0].is_valid
    # a checkerboard-ish field of regions touching at corners: simplified polygons must not overlap
    rng = np.random.default_rng(3)
    field = (rng.random((60, 60)) > 0.5).astype("uint8")
    g = vectorize(field, transform=T_UTM, crs=UTM, simplify=12.0)
    assert shapely.is_valid(np.asarray(g.geometry.values)).all()
    tree = shapely.STRtree(np.asarray(g.geometry.values))
    a, _ = tree.query(np.asarray(g.geometry.values), predicate="overlaps")
    assert len(a) == 0, "simplified polygons overlap"


def test_simplify_in_metres_in_epsg4326():
    yy, xx = np.mgrid[0:200, 0:200]
    disk = ((yy - 100) ** 2 + (xx - 100) ** 2 < 70**2).astype("uint8")
    exact = vectorize(disk, transform=T_GEO, crs="EPSG:4326")
    simple = vectorize(disk, transform=T_GEO, crs="EPSG:4326", simplify=20.0)
    assert simple.crs.to_epsg() == 4326
    assert len(shapely.get_coordinates(simple.geometry[0])) < len(shapely.get_coordinates(exact.geometry[0])) / 3
    assert simple["area_m2"][0] == pytest.approx(exact["area_m2"][0], rel=0.02)
    # 20 m at 48.9 N is ~0.00027 deg of longitude: a tolerance read in degrees would have erased the disk
    assert simple.geometry[0].hausdorff_distance(exact.geometry[0]) < 0.0005


def test_not_georeferenced_gives_pixel_coordinates_and_a_warning():
    mask = np.zeros((20, 30), dtype="uint8")
    mask[2:5, 10:20] = 1
    with pytest.warns(NotGeoreferencedWarning, match="pixel coordinates"):
        gdf = vectorize(mask)
    assert gdf.crs is None
    assert gdf.geometry[0].equals(shapely.box(10, 2, 20, 5))
    assert np.isnan(gdf["area_m2"][0]) and np.isnan(gdf["perimeter_m"][0])
    assert gdf["pixel_count"][0] == 30


def test_empty_mask_gives_an_empty_frame_with_the_schema():
    gdf = vectorize(np.zeros((10, 10), dtype="uint8"), transform=T_UTM, crs=UTM)
    assert len(gdf) == 0
    assert list(gdf.columns) == [*COLUMNS, "geometry"]
    assert gdf.crs == CRS.from_user_input(UTM)


def test_paths_and_datasets_match_arrays(tmp_path):
    import rasterio

    rng = np.random.default_rng(5)
    mask = (rng.random((64, 64)) > 0.7).astype("uint8")
    p = make_geotiff(tmp_path / "m.tif", mask, crs=UTM, transform=T_UTM, nodata=255)
    from_array = vectorize(mask, transform=T_UTM, crs=UTM)
    from_path = vectorize(p, window_size=20)
    with rasterio.open(p) as ds:
        from_ds = vectorize(ds)
        assert not ds.closed  # a dataset given by the caller stays open
    assert shapely.equals(np.asarray(from_array.geometry.values), np.asarray(from_path.geometry.values)).all()
    assert shapely.equals(np.asarray(from_array.geometry.values), np.asarray(from_ds.geometry.values)).all()


def test_bad_input_errors(tmp_path):
    with pytest.raises(InputError, match="shape"):
        vectorize(np.zeros((5, 5), "uint8"), np.zeros((6, 5), "float32"), transform=T_UTM, crs=UTM)
    with pytest.raises(InputError, match="min_area"):
        vectorize(np.zeros((5, 5), "uint8"), transform=T_UTM, crs=UTM, min_area=-1)
    with pytest.raises(InputError, match="2-D"):
        vectorize(np.zeros((2, 5, 5), "uint8"), transform=T_UTM, crs=UTM)
    with pytest.raises(InputError, match="threshold"):
        vectorize(np.zeros((5, 5), "uint8"), transform=T_UTM, crs=UTM, threshold=3)
    with pytest.raises(RasterReadError, match=r"missing\.tif"):
        vectorize(tmp_path / "missing.tif")
    bad = tmp_path / "bad.tif"
    bad.write_bytes(b"not a raster at all")
    with pytest.raises(RasterReadError, match=r"bad\.tif"):
        vectorize(bad)


def test_a_float_raster_given_as_the_mask_is_a_probability_as_in_the_cli(tmp_path):
    """vectorize(probability, threshold=t) thresholds the probability as `changedet vectorize probability.tif
    --threshold t` does, instead of making every non-zero pixel change (one polygon of the whole scene)."""
    prob = np.full((60, 60), 0.1, dtype="float32")
    prob[5:25, 10:30] = 0.9  # 20 x 20 px: 40 000 m2
    expected = vectorize(None, prob, threshold=0.5, transform=T_UTM, crs=UTM)
    assert len(expected) == 1 and expected["area_m2"].tolist() == [40000.0]
    gdf = vectorize(prob, threshold=0.5, transform=T_UTM, crs=UTM)
    assert gdf["area_m2"].tolist() == [40000.0] and gdf["threshold"].tolist() == [0.5]
    assert gdf["mean_prob"].tolist() == pytest.approx([0.9])  # read as the probability
    # a file too; its THRESHOLD tag (as detect writes it) stands in for a threshold not given
    path = make_geotiff(tmp_path / "probability.tif", prob, crs=UTM, transform=T_UTM, nodata=-1,
                        tags={"THRESHOLD": "0.5"})
    for g in (vectorize(path, threshold=0.5), vectorize(path), vectorize(None, path)):
        assert g["area_m2"].tolist() == [40000.0] and g["threshold"].tolist() == [0.5]
    # without a threshold or a tag, or with a probability as well: ambiguous, an InputError that names the fix
    with pytest.raises(InputError, match=r"float raster.*threshold=.*astype\('uint8'\)"):
        vectorize(prob, transform=T_UTM, crs=UTM)
    with pytest.raises(InputError, match=r"untagged\.tif.*threshold="):
        vectorize(make_geotiff(tmp_path / "untagged.tif", prob, crs=UTM, transform=T_UTM))
    with pytest.raises(InputError, match=r"probability was given too"):
        vectorize(prob, prob, threshold=0.5, transform=T_UTM, crs=UTM)
    # integer and boolean masks are still masks: every non-zero pixel is change
    mask = (prob > 0.5).astype("uint8")
    for m in (mask, mask.astype(bool)):
        assert vectorize(m, transform=T_UTM, crs=UTM)["area_m2"].tolist() == [40000.0]
    # a float mask of only 0s and 1s (NaN as no data) is still a mask without a threshold or beside a probability
    fmask = mask.astype("float32")
    fmask[0, :] = np.nan
    assert vectorize(fmask, transform=T_UTM, crs=UTM)["area_m2"].tolist() == [40000.0]
    assert vectorize(fmask, prob, transform=T_UTM, crs=UTM)["mean_prob"].tolist() == pytest.approx([0.9])
    # ChangeResult.probability holds -1 where a date has no data: still a probability (-1 is no data)
    holed = prob.copy()
    holed[50:, :] = -1
    assert vectorize(holed, threshold=0.5, transform=T_UTM, crs=UTM)["area_m2"].tolist() == [40000.0]
    # float values above 1 (a count, a class raster) are neither: an error, not 0 polygons at threshold 0.5
    with pytest.raises(InputError, match=r"values from 0 to 3: neither a change probability"):
        vectorize(mask.astype("float32") * 3, threshold=0.5, transform=T_UTM, crs=UTM)
    # the command line makes the same decision (it calls vectorize with RASTER as the mask)
    from click.testing import CliRunner

    from changedet.cli.main import cli

    runner = CliRunner()
    r = runner.invoke(cli, ["vectorize", str(path), str(tmp_path / "p.gpkg"), "--threshold", "0.5", "--json"])
    assert r.exit_code == 0 and json.loads(r.output)["area_m2"] == 40000.0, r.output
    r = runner.invoke(cli, ["vectorize", str(path), str(tmp_path / "q.gpkg"), "--probability", str(path)])
    assert r.exit_code == 2 and "--probability" in r.output and not (tmp_path / "q.gpkg").exists()


def test_a_crs_without_a_transform_is_an_input_error(tmp_path):
    """crs= alone would label pixel coordinates (column, row) with the CRS: areas of square degrees or pixels read as
    square metres. The error names the fix."""
    mask = np.zeros((40, 40), dtype="uint8")
    mask[5:15, 5:15] = 1
    with pytest.raises(InputError, match=r"mask: crs=EPSG:4326 was given without transform=.*Pass transform="):
        vectorize(mask, crs="EPSG:4326")
    bare = make_geotiff(tmp_path / "bare.tif", mask, crs=None)  # no georeferencing at all
    with warnings.catch_warnings(), pytest.raises(InputError, match=r"bare\.tif: crs=EPSG:32631 .*without transform="):
        warnings.simplefilter("ignore", NotGeoreferencedWarning)  # said when the file is opened
        vectorize(bare, crs=UTM)
    # with the transform, or from a georeferenced file whose transform it keeps, it works
    assert vectorize(mask, crs=UTM, transform=T_UTM)["area_m2"].tolist() == [10000.0]
    tif = make_geotiff(tmp_path / "m.tif", mask, crs=UTM, transform=T_UTM)
    assert vectorize(tif, crs=UTM)["area_m2"].tolist() == [10000.0]


def test_vectorize_and_export_do_not_import_torch(tmp_path):
    code = (
        "import sys, numpy as np\n"
        "from rasterio.transform import from_origin\n"
        "from changedet.vectorize import vectorize\n"
        "from changedet.export import write_vectors, export_qgis\n"
        "m = np.zeros((20, 20), 'uint8'); m[2:8, 2:8] = 1\n"
        "g = vectorize(m, transform=from_origin(500000, 5700000, 10, 10), crs='EPSG:32631', simplify=5)\n"
        f"write_vectors(g, r'{tmp_path / 'c.gpkg'}', r'{tmp_path / 'c.geojson'}')\n"
        "bad = [m for m in sys.modules if m == 'torch' or m.startswith('torch.')]\n"
        "assert not bad, bad\n"
        "print('ok', len(g))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok 1"


def test_warning_free_on_georeferenced_input():
    mask = np.zeros((10, 10), "uint8")
    mask[2:4, 2:4] = 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        vectorize(mask, transform=T_UTM, crs=UTM, simplify=5, fill_holes=10, min_area=1)


def test_no_polygon_under_min_area_after_simplify():
    # staircase blobs of ~5-9 pixels: simplification with a 10 m tolerance cuts corners below 500 m^2
    rng = np.random.default_rng(4)
    mask = (rng.random((120, 120)) > 0.93).astype("uint8")
    mask = np.maximum(mask, np.roll(mask, 1, axis=0))
    plain = vectorize(mask, transform=T_UTM, crs=UTM, min_area=500)
    simplified = vectorize(mask, transform=T_UTM, crs=UTM, min_area=500, simplify=10)
    assert len(plain) and plain["area_m2"].min() >= 500
    assert len(simplified) and simplified["area_m2"].min() >= 500
    assert len(simplified) <= len(plain)


def test_polar_simplify_works_and_wide_geographic_polygons_are_densified():
    from pyproj import Geod

    # polar stereographic at the South Pole: no UTM zone there, simplification runs in a local azimuthal projection
    mask = np.zeros((128, 128), dtype="uint8")
    mask[10:40, 10:40] = 1
    gdf = vectorize(mask, transform=from_origin(-640, 640, 10, 10), crs="EPSG:3031", simplify=5)
    assert len(gdf) == 1 and gdf.geometry.iloc[0].is_valid
    # a band 60 degrees of longitude wide along parallels: its edges are densified before the geodesic area
    wide = np.zeros((120, 240), dtype="uint8")
    wide[40:80] = 1  # latitudes 60..70 N, longitudes 0..60
    gdf = vectorize(wide, transform=from_origin(0, 80, 0.25, 0.25), crs="EPSG:4326")
    lon = np.r_[np.linspace(0, 60, 2001), np.linspace(60, 0, 2001)]
    lat = np.r_[np.full(2001, 60.0), np.full(2001, 70.0)]
    exact = abs(Geod(ellps="WGS84").polygon_area_perimeter(lon, lat)[0])
    assert gdf["area_m2"].sum() == pytest.approx(exact, rel=1e-3)  # was 4.9 % short


# ------------------------------------------------------------------------------------------------------ nodata
def test_a_0_255_mask_file_without_declared_nodata_is_vectorised_as_change(tmp_path):
    mask = np.zeros((40, 40), dtype="uint8")
    mask[5:15, 5:15] = 255  # a binary mask exported as 0/255 (LEVIR-CD labels, most GIS exports)
    mask[25:30, 25:35] = 255
    plain = make_geotiff(tmp_path / "plain.tif", mask, crs=UTM, transform=T_UTM)  # declares no nodata
    gdf = vectorize(plain)
    assert len(gdf) == 2 and gdf["pixel_count"].tolist() == [100, 50]
    # a file that declares 255 as nodata (changedet's change.tif) keeps it as nodata
    declared = make_geotiff(tmp_path / "declared.tif", mask, crs=UTM, transform=T_UTM, nodata=255)
    assert len(vectorize(declared)) == 0
    # nodata= overrides what the file declares, both ways
    assert len(vectorize(plain, nodata=255)) == 0
    assert len(vectorize(declared, nodata=None)) == 2
    # an array declares nothing: 255 is nodata, as in ChangeResult.mask
    assert len(vectorize(mask, transform=T_UTM, crs=UTM)) == 0
    with pytest.raises(InputError, match="nodata must be a number"):
        vectorize(mask, transform=T_UTM, crs=UTM, nodata="x")


def test_cli_vectorize_takes_255_as_change_without_declared_nodata_and_has_a_nodata_option(tmp_path):
    from click.testing import CliRunner

    from changedet.cli.main import cli

    mask = np.zeros((40, 40), dtype="uint8")
    mask[5:15, 5:15] = 255
    mask[20:22, 20:22] = 7  # another value: nodata with --nodata 7
    plain = make_geotiff(tmp_path / "plain.tif", mask, crs=UTM, transform=T_UTM)
    runner = CliRunner()
    r = runner.invoke(cli, ["vectorize", str(plain), str(tmp_path / "a.gpkg"), "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["pixels"] == 104
    r = runner.invoke(cli, ["vectorize", str(plain), str(tmp_path / "b.gpkg"), "--nodata", "255", "--json"])
    assert r.exit_code == 0 and json.loads(r.output)["pixels"] == 4
    r = runner.invoke(cli, ["vectorize", str(plain), str(tmp_path / "c.gpkg"), "--nodata", "7", "--json"])
    assert r.exit_code == 0 and json.loads(r.output)["pixels"] == 100
    declared = make_geotiff(tmp_path / "declared.tif", mask, crs=UTM, transform=T_UTM, nodata=255)
    r = runner.invoke(cli, ["vectorize", str(declared), str(tmp_path / "d.gpkg"), "--json"])
    assert r.exit_code == 0 and json.loads(r.output)["pixels"] == 4
    r = runner.invoke(cli, ["vectorize", str(declared), str(tmp_path / "e.gpkg"), "--nodata", "none", "--json"])
    assert r.exit_code == 0 and json.loads(r.output)["pixels"] == 104
    r = runner.invoke(cli, ["vectorize", str(plain), str(tmp_path / "f.gpkg"), "--nodata", "abc"])
    assert r.exit_code == 2 and "--nodata" in r.output and not (tmp_path / "f.gpkg").exists()


# ------------------------------------------------------------------------------------------ simplify validity
@pytest.mark.parametrize(("crs", "transform"), [
    ("EPSG:4326", from_origin(10.35, 43.72, 0.0001, 0.0001)),  # OSCD-like (Pisa): simplified in UTM
    ("EPSG:3857", from_origin(1152000, 5420000, 10, 10)),
    (UTM, T_UTM),
])
def test_simplify_always_gives_valid_polygons(crs, transform):
    from scipy import ndimage

    # blobs whose simplified outlines, taken back from UTM to degrees, crossed themselves by a rounding error:
    # make_valid then gave a GeometryCollection (a polygon and a line) that write_vectors refused after the run
    field = ndimage.gaussian_filter(np.random.default_rng(2).random((150, 150)), 1.5) > 0.52
    exact = vectorize(field.astype("uint8"), transform=transform, crs=crs)
    for tol in (10.0, 15.0, 25.0):
        g = vectorize(field.astype("uint8"), transform=transform, crs=crs, simplify=tol)
        assert set(g.geom_type) == {"Polygon"}, (tol, g.geom_type.value_counts().to_dict())
        assert g.is_valid.all()
        assert len(g) == len(exact) and g["pixel_count"].sum() == exact["pixel_count"].sum()
        assert g["area_m2"].sum() == pytest.approx(exact["area_m2"].sum(), rel=0.15)  # small blobs, 1-2.5 px


def test_a_threshold_other_than_the_masks_is_a_warning_and_not_written_into_the_polygons(tmp_path):
    from changedet.api import detect
    from changedet.errors import ChangedetWarning
    from changedet.testing import make_pair, paint_change
    from changedet.vectorize import vectorize as vec

    before, after = make_pair(tmp_path, "aligned", size=96)
    paint_change(after, (30, 50, 20, 30))
    r = detect(before, after, method="cva", output_dir=tmp_path / "out", quicklook=False)
    made_at = r.report["threshold"]
    with pytest.warns(ChangedetWarning, match="give the probability raster alone"):
        gdf = vec(r.paths["change"], r.paths["probability"], threshold=0.99)
    assert set(gdf["threshold"].round(6)) == {round(made_at, 6)}  # the mask's polygons, labelled with its threshold
    again = vec(None, r.paths["probability"], threshold=0.99)  # thresholding again: the probability alone
    assert set(again["threshold"]) <= {0.99} and len(again) <= len(gdf)


def test_detect_gives_no_threshold_warning_for_its_own_mask(tmp_path):
    """The THRESHOLD tag keeps 6 significant digits of the calibrated threshold: the same threshold, not another."""
    from changedet.api import detect
    from changedet.errors import ChangedetWarning
    from changedet.testing import make_pair, paint_change

    before, after = make_pair(tmp_path, "aligned", size=96)
    paint_change(after, (30, 50, 20, 30))
    with warnings.catch_warnings():
        warnings.simplefilter("error", ChangedetWarning)  # it said "thresholded at 0.123457, not 0.123457"
        r = detect(before, after, method="cva", threshold=0.123456789, output_dir=tmp_path / "out", quicklook=False)
    assert set(r.polygons["threshold"]) == {0.123456789}


def test_a_0_1_255_mask_without_declared_nodata_keeps_255_as_nodata_with_a_warning(tmp_path):
    """detect's change.tif (0/1, 255 = no data) whose nodata tag was lost: 255 stays no data, and it is said."""
    from changedet.errors import ChangedetWarning

    mask = np.zeros((40, 40), dtype="uint8")
    mask[5:15, 5:15] = 1  # 100 changed pixels
    mask[:, 30:] = 255  # 400 pixels of no data, in the last window only (window_size=16)
    plain = make_geotiff(tmp_path / "plain.tif", mask, crs=UTM, transform=T_UTM)  # declares no nodata
    with pytest.warns(ChangedetWarning, match=r"only the values 0, 1 and 255.*400 pixels of 255.*--nodata none"):
        gdf = vectorize(plain, window_size=16)
    assert gdf["pixel_count"].tolist() == [100]  # was 2 polygons, 500 pixels: the no-data strip as change
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert vectorize(plain, nodata=None)["pixel_count"].sum() == 500  # asked for: 255 is change
        assert vectorize(plain, nodata=255)["pixel_count"].tolist() == [100]  # said: no warning
        zero255 = make_geotiff(tmp_path / "z.tif", np.where(mask == 1, 0, mask), crs=UTM, transform=T_UTM)
        assert vectorize(zero255)["pixel_count"].tolist() == [400]  # a 0/255 mask: 255 is still change
        other = mask.copy()
        other[0, 0] = 7  # another value: not detect's encoding, every non-zero value is change
        assert vectorize(make_geotiff(tmp_path / "o.tif", other, crs=UTM, transform=T_UTM))["pixel_count"].sum() == 501


def test_cli_vectorize_reads_a_lost_nodata_255_as_nodata(tmp_path):
    from click.testing import CliRunner

    from changedet.cli.main import cli

    mask = np.zeros((40, 40), dtype="uint8")
    mask[5:15, 5:15] = 1
    mask[30:, :] = 255
    plain = make_geotiff(tmp_path / "plain.tif", mask, crs=UTM, transform=T_UTM)
    from changedet.errors import ChangedetWarning

    with pytest.warns(ChangedetWarning, match="--nodata none"):
        r = CliRunner().invoke(cli, ["vectorize", str(plain), str(tmp_path / "a.gpkg"), "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["pixels"] == 100  # was 500: the no-data rows as change
    r = CliRunner().invoke(cli, ["vectorize", str(plain), str(tmp_path / "b.gpkg"), "--json", "--nodata", "none"])
    assert r.exit_code == 0 and json.loads(r.output)["pixels"] == 500


# ------------------------------------------------------------------------------------------ a series' rasters
def test_cli_vectorize_on_a_series_rasters_gives_the_series_polygons(tmp_path):
    """report.json of a series holds a list of inputs: vectorize read it as a pair's dict and crashed."""
    import pyogrio
    from click.testing import CliRunner

    from changedet.cli.main import cli
    from changedet.series import detect_series

    dates = ["2019-05-01", "2020-05-01", "2021-05-01"]
    base = np.random.default_rng(0).normal(1000, 5, (3, 64, 64)).astype("float32")
    paths = []
    for k, dt in enumerate(dates):
        arr = base.copy()
        arr[:, 8:24, 8:24] += 800 * (k >= 1)  # appears at the 2nd date
        arr[:, 40:56, 36:56] += 800 * (k >= 2)  # appears at the 3rd
        paths.append(make_geotiff(tmp_path / f"d{k}.tif", arr, tags={"ACQUISITION_DATE": dt}, crs=UTM,
                                  transform=T_UTM))
    out = tmp_path / "s"
    detect_series(paths, output_dir=out, method="cva", threshold=0.9, tile_size=64, quicklook=False)
    own = pyogrio.read_dataframe(out / "changes.gpkg", layer="changes")
    assert len(own) == 2
    runner = CliRunner()
    for name in ("change_count", "first_change", "last_change"):
        r = runner.invoke(cli, ["vectorize", str(out / f"{name}.tif"), str(tmp_path / f"{name}.gpkg"), "--json"])
        assert r.exit_code == 0, r.output  # was an AttributeError
        gdf = pyogrio.read_dataframe(tmp_path / f"{name}.gpkg", layer="changes")
        assert gdf["pixel_count"].tolist() == own["pixel_count"].tolist()
        assert all(a.equals(b) for a, b in zip(gdf.geometry, own.geometry, strict=True))
        for col in ("before_date", "after_date", "model", "threshold"):
            assert gdf[col].tolist() == own[col].tolist(), col
    assert set(own["before_date"]) == {dates[0]} and set(own["after_date"]) == {dates[-1]}
    # in Python too, the series' tags give the dates and the model
    gdf = vectorize(out / "change_count.tif")
    assert set(gdf["before_date"]) == {dates[0]} and set(gdf["after_date"]) == {dates[-1]}
    assert set(gdf["model"]) == set(own["model"])
    # a pair's probability in a series folder carries its threshold as CHANGEDET_THRESHOLD
    pair = next(p for p in out.iterdir() if p.name.startswith("pair_01"))
    r = runner.invoke(cli, ["vectorize", str(pair / "probability.tif"), str(tmp_path / "p.gpkg"), "--json"])
    assert r.exit_code == 0, r.output


def test_a_probability_rasters_declared_nodata_is_kept(tmp_path):
    """With a probability raster alone, its declared nodata (1.0 here) is not change (the nodata default became
    "auto" for masks and was passed as None, no nodata, for probabilities)."""
    prob = np.zeros((40, 40), "float32")
    prob[5:10, 5:10] = 1.0  # nodata
    prob[20:30, 20:30] = 0.9
    path = make_geotiff(tmp_path / "p.tif", prob[None], dtype="float32", nodata=1.0)
    gdf = vectorize(None, path, threshold=0.5)
    assert len(gdf) == 1 and int(gdf["pixel_count"].sum()) == 100


def test_cli_dates_must_be_iso_dates(tmp_path):
    """--before-date/--after-date were stored as given ('yesterday' in the attributes); now a usage error."""
    import geopandas as gpd
    from click.testing import CliRunner

    from changedet.cli.main import cli

    mask = np.zeros((20, 20), dtype="uint8")
    mask[5:10, 5:10] = 1
    path = make_geotiff(tmp_path / "m.tif", mask, crs=UTM, transform=T_UTM)
    runner = CliRunner()
    r = runner.invoke(cli, ["vectorize", str(path), str(tmp_path / "a.gpkg"), "--before-date", "yesterday"])
    assert r.exit_code == 2 and "YYYY-MM-DD" in r.output and not (tmp_path / "a.gpkg").exists()
    r = runner.invoke(cli, ["vectorize", str(path), str(tmp_path / "b.gpkg"), "--before-date", "2019-05-01",
                            "--after-date", "2020-05-01"])
    assert r.exit_code == 0, r.output
    gdf = gpd.read_file(tmp_path / "b.gpkg")
    assert str(gdf["before_date"][0])[:10] == "2019-05-01" and str(gdf["after_date"][0])[:10] == "2020-05-01"
