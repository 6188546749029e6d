"""changes.geojson: which CRS it can be written in (decided before a run), its precision, densified edges, the
antimeridian and the poles, and inputs whose coordinates a GeoJSON cannot describe."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pyogrio
import pytest
import shapely
from click.testing import CliRunner
from pyproj import CRS, Geod, Transformer
from rasterio.transform import from_origin

from changedet import detect
from changedet.api import ChangeResult
from changedet.cli.main import cli
from changedet.errors import ChangedetWarning, InputError, NotGeoreferencedWarning
from changedet.export import write_vectors
from changedet.export.vector import plan_geojson, resolve_geojson_crs
from changedet.testing import make_geotiff, make_pair, paint_change
from changedet.vectorize import vectorize

LOCAL_WKT = ('ENGCRS["Site grid",EDATUM["Site datum"],CS[Cartesian,2],AXIS["easting (X)",east,LENGTHUNIT["metre",1]],'
             'AXIS["northing (Y)",north,LENGTHUNIT["metre",1]]]')
MARS = "IAU_2015:49910"  # Mars equirectangular: has an authority code, and no way to WGS84
# a custom transverse Mercator: transforms to WGS84, but no GeoJSON can name it (no authority code)
TMERC = "+proj=tmerc +lat_0=0 +lon_0=-1.6 +k=0.9996 +x_0=500000 +y_0=0 +ellps=WGS84 +units=m +no_defs"
WGS84 = Geod(ellps="WGS84")


def _features(path: Path) -> list[dict]:
    return json.loads(path.read_text())["features"]


def _geodesic_area(geom) -> float:
    area = 0.0
    for part in shapely.get_parts(shapely.segmentize(geom, 0.01)):
        area += abs(WGS84.polygon_area_perimeter(*part.exterior.xy)[0])
        area -= sum(abs(WGS84.polygon_area_perimeter(*h.xy)[0]) for h in part.interiors)
    return area


# ---------------------------------------------------------------------------------------------- which CRS
def test_resolve_and_plan_geojson_crs():
    assert resolve_geojson_crs("EPSG:32631", "EPSG:4326") == "EPSG:4326"
    assert resolve_geojson_crs("EPSG:32631", None) is None and resolve_geojson_crs(None, None) is None
    with pytest.raises(InputError, match=r"cannot be named in a GeoJSON.*\.gpkg"):  # as plan_geojson: not written
        resolve_geojson_crs(LOCAL_WKT, None)
    with pytest.warns(ChangedetWarning, match="keeps that CRS"):  # nameable: kept, in the 'crs' member
        assert resolve_geojson_crs(MARS, "EPSG:4326") is None
    with pytest.raises(InputError, match=r"Site grid.*cannot be transformed.*GeoPackage"):
        resolve_geojson_crs(LOCAL_WKT, "EPSG:4326")
    with pytest.raises(InputError, match=r"cannot be transformed to EPSG:32631"):
        resolve_geojson_crs(LOCAL_WKT, "EPSG:32631")
    assert plan_geojson("EPSG:32631", None) == (True, None)
    with pytest.warns(NotGeoreferencedWarning, match="changes.geojson is not written"):
        assert plan_geojson(None, "EPSG:4326") == (False, None)
    with pytest.warns(ChangedetWarning, match="no authority code"):
        assert plan_geojson(LOCAL_WKT, "EPSG:4326") == (False, None)
    with pytest.warns(ChangedetWarning, match="no authority code"):  # a CRS that GDAL cannot name: not "input"
        assert plan_geojson(LOCAL_WKT, None) == (False, None)
    with pytest.warns(ChangedetWarning, match="keeps that CRS"):
        assert plan_geojson(MARS, "EPSG:4326") == (True, None)
    with pytest.raises(InputError, match="EPSG:32631"):
        plan_geojson(LOCAL_WKT, "EPSG:32631")


def test_write_vectors_refuses_an_unreachable_crs_before_writing_anything(tmp_path):
    mask = np.zeros((20, 20), "uint8")
    mask[5:10, 5:10] = 1
    gdf = vectorize(mask, transform=from_origin(1000, 2000, 0.5, 0.5), crs=LOCAL_WKT)
    with pytest.raises(InputError, match="cannot be transformed"):  # not pyproj's ProjError
        write_vectors(gdf, tmp_path / "c.gpkg", tmp_path / "c.geojson")
    assert list(tmp_path.iterdir()) == []


def _local_pair(root: Path, crs: str) -> tuple[Path, Path]:
    pair = make_pair(root, "aligned", size=64, crs=crs, origin=(1000.0, 2000.0), res=0.5)
    paint_change(pair[1], (10, 20, 16, 16))
    return pair[0], pair[1]


def test_detect_with_a_local_crs_skips_the_geojson_it_cannot_describe(tmp_path):
    before, after = _local_pair(tmp_path / "in", LOCAL_WKT)
    with pytest.warns(ChangedetWarning, match="changes.geojson is not written"):
        res = detect(before, after, method="cva", output_dir=tmp_path / "out", quicklook=False)
    assert not (tmp_path / "out" / "changes.geojson").exists() and "geojson" not in res.paths
    assert res.report["vectorize"]["geojson_written"] is False
    assert "changes.geojson" not in res.report["outputs"]
    assert len(res.polygons) >= 1 and CRS(res.polygons.crs).name == "Site grid"


def test_detect_refuses_an_explicit_unreachable_geojson_crs_before_the_prediction(tmp_path, monkeypatch):
    import changedet.inference

    before, after = _local_pair(tmp_path / "in", LOCAL_WKT)

    def no_prediction(*args, **kwargs):  # pragma: no cover - reached only if the check came too late
        raise AssertionError("the prediction ran before the GeoJSON CRS was checked")

    monkeypatch.setattr(changedet.inference, "predict_pair", no_prediction)
    with pytest.raises(InputError, match=r"Site grid.*cannot be transformed to EPSG:32631"):
        detect(before, after, method="cva", output_dir=tmp_path / "out", quicklook=False, geojson_crs="EPSG:32631")
    assert not (tmp_path / "out").exists()


def test_a_nameable_crs_that_cannot_reach_wgs84_is_kept_in_the_geojson(tmp_path):
    mask = np.zeros((20, 20), "uint8")
    mask[5:10, 5:10] = 1
    gdf = vectorize(mask, transform=from_origin(1000, 2000, 10, 10), crs=MARS)
    with pytest.warns(ChangedetWarning, match="keeps that CRS"):
        crs = resolve_geojson_crs(gdf.crs, "EPSG:4326")
    write_vectors(gdf, geojson_path=tmp_path / "m.geojson", geojson_crs=crs)
    doc = json.loads((tmp_path / "m.geojson").read_text())
    assert doc["crs"]["properties"]["name"] == "urn:ogc:def:crs:IAU::49910"  # named, so not read as WGS84
    # read back from a GeoTIFF, the same CRS has lost its code: detect writes no GeoJSON that would look WGS84
    before, after = _local_pair(tmp_path / "in", MARS)
    with pytest.warns(ChangedetWarning, match="changes.geojson is not written"):
        res = detect(before, after, method="cva", output_dir=tmp_path / "out", quicklook=False)
    assert "geojson" not in res.paths and res.report["vectorize"]["geojson_written"] is False


def test_cli_vectorize_with_a_local_crs(tmp_path):
    mask = np.zeros((40, 40), "uint8")
    mask[5:15, 5:15] = 1
    local = make_geotiff(tmp_path / "local.tif", mask, crs=LOCAL_WKT, transform=from_origin(1000, 2000, 0.5, 0.5))
    runner = CliRunner()
    r = runner.invoke(cli, ["vectorize", str(local), str(tmp_path / "a.geojson")])
    assert r.exit_code == 2 and "cannot be transformed" in r.output and ".gpkg" in r.output
    assert not (tmp_path / "a.geojson").exists()
    r = runner.invoke(cli, ["vectorize", str(local), str(tmp_path / "a.gpkg")])
    assert r.exit_code == 0, r.output
    # no GeoJSON can name it: 'input' would write coordinates that readers take for longitude/latitude
    r = runner.invoke(cli, ["vectorize", str(local), str(tmp_path / "b.geojson"), "--geojson-crs", "input"])
    assert r.exit_code == 2 and "cannot be named" in r.output and ".gpkg" in r.output, r.output
    assert not (tmp_path / "b.geojson").exists()


def test_the_geojson_advice_is_true_for_the_command_that_gets_it():
    # detect writes no changes.geojson in a CRS no GeoJSON can name, whatever --geojson-crs: "input" is no way out
    with pytest.raises(InputError) as detect_error:
        plan_geojson(LOCAL_WKT, "EPSG:3857")
    assert "leave --geojson-crs out" in str(detect_error.value)
    assert "--geojson-crs input" not in str(detect_error.value)  # it said "pass --geojson-crs input"
    with pytest.warns(ChangedetWarning, match="changes.geojson is not written"):  # following the advice
        assert plan_geojson(LOCAL_WKT, "EPSG:4326") == (False, None)
    # vectorize writes the OUT it is given: a GeoPackage is the way
    with pytest.raises(InputError) as vectorize_error:
        resolve_geojson_crs(LOCAL_WKT, "EPSG:3857")
    assert "GeoPackage" in str(vectorize_error.value) and "--geojson-crs input" not in str(vectorize_error.value)
    # a CRS a GeoJSON can name: keeping it is a way out for both
    for plan in (plan_geojson, resolve_geojson_crs):
        with pytest.raises(InputError, match="give --geojson-crs input"):
            plan(MARS, "EPSG:32631")


def test_cli_vectorize_help_says_what_a_crs_without_a_code_gives():
    r = CliRunner().invoke(cli, ["vectorize", "--help"], terminal_width=200)
    text = " ".join(r.output.split())
    assert "a local/engineering CRS that cannot be transformed to WGS84 is kept, with a warning" not in text
    assert "when it has an authority code" in text and "write a .gpkg OUT" in text


def test_vectorize_refuses_geojson_crs_input_in_a_crs_that_no_geojson_can_name(tmp_path):
    """A custom transverse Mercator: detect writes no GeoJSON in it; vectorize wrote one without a 'crs' member."""
    mask = np.zeros((40, 40), "uint8")
    mask[5:15, 5:15] = 1
    tif = make_geotiff(tmp_path / "t.tif", mask, crs=TMERC, transform=from_origin(492000, 4841000, 10, 10))
    runner = CliRunner()
    r = runner.invoke(cli, ["vectorize", str(tif), str(tmp_path / "t.geojson"), "--geojson-crs", "input"])
    assert r.exit_code == 2, r.output
    assert "cannot be named in a GeoJSON" in r.output and ".gpkg" in r.output
    assert "leave --geojson-crs out" in r.output  # it can be taken to WGS84
    assert not (tmp_path / "t.geojson").exists()
    with pytest.warns(ChangedetWarning, match="changes.geojson is not written"):  # detect's plan agrees
        assert plan_geojson(TMERC, None) == (False, None)
    # following the advice: RFC 7946 longitude/latitude, or a GeoPackage that keeps the CRS
    r = runner.invoke(cli, ["vectorize", str(tif), str(tmp_path / "t.geojson")])
    assert r.exit_code == 0, r.output
    lon, lat = np.asarray(_features(tmp_path / "t.geojson")[0]["geometry"]["coordinates"][0]).T
    assert (-2 < lon).all() and (lon < -1).all() and (43 < lat).all() and (lat < 44).all()
    r = runner.invoke(cli, ["vectorize", str(tif), str(tmp_path / "t.gpkg"), "--geojson-crs", "input"])
    assert r.exit_code == 0, r.output
    # write_vectors itself: no GeoJSON with geojson_crs=None that would be read as longitude/latitude
    gdf = vectorize(tif)
    with pytest.raises(InputError, match=r"cannot be named in a GeoJSON.*geojson_path=None"):
        write_vectors(gdf, tmp_path / "w.gpkg", tmp_path / "w.geojson", geojson_crs=None)
    assert not (tmp_path / "w.gpkg").exists() and not (tmp_path / "w.geojson").exists()


# ------------------------------------------------------------------------------------------ not georeferenced
def test_detect_without_crs_writes_no_wgs84_looking_geojson(tmp_path):
    img = np.random.default_rng(0).normal(100, 5, (3, 30, 40)).astype("float32")
    after = img.copy()
    after[:, 10:20, 10:25] += 60
    b = make_geotiff(tmp_path / "b.tif", img, crs=None)
    a = make_geotiff(tmp_path / "a.tif", after, crs=None)
    out = tmp_path / "out"
    out.mkdir()
    (out / "changes.geojson").write_text("{}")  # a stale one of an earlier run: removed with overwrite
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = detect(b, a, method="cva", output_dir=out, quicklook=False, overwrite=True)
    assert any("changes.geojson is not written" in str(w.message) for w in caught)
    assert not (out / "changes.geojson").exists() and "geojson" not in res.paths
    assert res.report["vectorize"]["geojson_written"] is False and res.report["vectorize"]["geojson_crs"] is None
    assert sorted(p.name for p in out.iterdir() if not p.name.endswith(".qml")) == [
        "change.tif", "changes.gpkg", "probability.tif", "report.json"]
    assert len(res.polygons) >= 1 and res.polygons.crs is None
    loaded = ChangeResult.load(out)
    assert "geojson" not in loaded.paths and len(loaded.polygons) == len(res.polygons)
    saved = loaded.save(tmp_path / "copy")
    assert set(saved) == set(loaded.paths) and not (tmp_path / "copy" / "changes.geojson").exists()


# ----------------------------------------------------------------------------------------------- precision
def test_rfc7946_geojson_keeps_centimetre_pixels_as_polygons(tmp_path):
    salt = (np.random.default_rng(0).random((256, 256)) < 0.05).astype("uint8")
    gdf = vectorize(salt, transform=from_origin(500000, 6700000, 0.01, 0.01), crs="EPSG:32633")
    write_vectors(gdf, geojson_path=tmp_path / "c.geojson")
    feats = _features(tmp_path / "c.geojson")
    assert len(feats) == len(gdf)
    types = {f["geometry"]["type"] for f in feats}
    assert types == {"Polygon"}, types  # 7 decimals (1 cm) merged vertices into lines and collections
    back = pyogrio.read_dataframe(tmp_path / "c.geojson")
    assert back.is_valid.all()
    decimals = max(len(c.split(".")[1]) for c in json.dumps(feats[0]["geometry"]["coordinates"]).split(", "))
    assert decimals >= 9
    # a 10 m grid keeps RFC 7946's usual 7 decimals (1 cm): files do not grow for nothing
    coarse = vectorize(salt, transform=from_origin(500000, 6700000, 10, 10), crs="EPSG:32633")
    write_vectors(coarse, geojson_path=tmp_path / "d.geojson")
    coords = json.dumps(_features(tmp_path / "d.geojson")[0]["geometry"]["coordinates"])
    assert max(len(c.split(".")[1]) for c in coords.replace("]", "").split(", ") if "." in c) <= 7


# -------------------------------------------------------------------------------------- densify, poles, 180
def _back_in(crs: str, geom) -> shapely.Geometry:
    """A lon/lat GeoJSON geometry (edges straight in lon/lat, as GeoJSON defines them) taken back to ``crs``."""
    t = Transformer.from_crs(4326, crs, always_xy=True)
    dense = shapely.segmentize(geom, 0.0005)
    return shapely.transform(dense, lambda xy: np.column_stack(t.transform(xy[:, 0], xy[:, 1])))


def test_polar_stereographic_geojson_is_densified(tmp_path):
    # a 102 km square near 84 N: straight lon/lat edges between its corners were 2.1 km (21 px) off
    mask = np.ones((1024, 1024), "uint8")
    gdf = vectorize(mask, transform=from_origin(-300000, -600000, 100, 100), crs="EPSG:3413")
    write_vectors(gdf, geojson_path=tmp_path / "p.geojson")
    geom = shapely.geometry.shape(_features(tmp_path / "p.geojson")[0]["geometry"])
    assert geom.is_valid
    assert shapely.hausdorff_distance(_back_in("EPSG:3413", geom), gdf.geometry.iloc[0]) < 100  # within a pixel


def test_a_polygon_holding_the_pole_is_closed_along_the_pole(tmp_path):
    mask = np.ones((512, 512), "uint8")  # a 5 km square centred on the North Pole
    mask[200:300, 200:220] = 0  # with a hole beside the pole
    gdf = vectorize(mask, transform=from_origin(-2560, 2560, 10, 10), crs="EPSG:3413")
    write_vectors(gdf, geojson_path=tmp_path / "pole.geojson")
    geom = shapely.geometry.shape(_features(tmp_path / "pole.geojson")[0]["geometry"])
    assert geom.is_valid, shapely.is_valid_reason(geom)  # was a self-intersecting ring of its 4 corners
    lon0, _, lon1, lat1 = geom.bounds
    assert (lon0, lon1, lat1) == (-180.0, 180.0, 90.0)
    assert _geodesic_area(geom) == pytest.approx(gdf.area_m2.iloc[0], rel=1e-3)


def test_a_polygon_across_the_antimeridian_is_cut_there(tmp_path):
    # UTM zone 60 (177 E): a 20 km square across 180 E, with a hole on each side of it
    mask = np.ones((200, 200), "uint8")
    mask[50:70, 30:50] = 0
    mask[120:140, 150:170] = 0
    gdf = vectorize(mask, transform=from_origin(726000, 5010000, 100, 100), crs="EPSG:32660")
    write_vectors(gdf, geojson_path=tmp_path / "am.geojson")
    geom = shapely.geometry.shape(_features(tmp_path / "am.geojson")[0]["geometry"])
    assert geom.is_valid and geom.geom_type == "MultiPolygon" and len(geom.geoms) == 2
    assert sum(len(p.interiors) for p in geom.geoms) == 2
    lon0, _, lon1, _ = geom.bounds
    assert lon0 == -180.0 and lon1 == 180.0
    assert _geodesic_area(geom) == pytest.approx(gdf.area_m2.iloc[0], rel=1e-3)


def test_a_series_without_crs_writes_no_wgs84_looking_geojson(tmp_path):
    from changedet.series import detect_series

    rng = np.random.default_rng(0)
    dates = [rng.normal(100, 5, (3, 30, 40)).astype("float32") for _ in range(3)]
    dates[2][:, 10:20, 10:25] += 60
    paths = [make_geotiff(tmp_path / f"d{k}.tif", img, crs=None) for k, img in enumerate(dates)]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = detect_series(paths, method="cva", keep_order=True, output_dir=tmp_path / "out", quicklook=False)
    assert any("changes.geojson is not written" in str(w.message) for w in caught)
    assert not (tmp_path / "out" / "changes.geojson").exists() and "geojson" not in res.paths
    assert (tmp_path / "out" / "changes.gpkg").exists()
    assert res.report["vectorize"]["geojson_written"] is False
