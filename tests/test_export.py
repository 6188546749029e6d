"""changedet.export: GeoPackage/GeoJSON writers, the embedded QGIS style, style files, the QGIS project, CLIs."""

from __future__ import annotations

import json
import os
import sqlite3
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pyogrio
import pytest
import rasterio
from click.testing import CliRunner
from rasterio.transform import from_origin

from changedet.cli.main import cli
from changedet.errors import InputError, OutputExistsError
from changedet.export import (
    change_style_qml,
    embed_gpkg_style,
    export_qgis,
    polygon_style_qml,
    probability_style_qml,
    rgb_bands,
    write_qgis_project,
    write_vectors,
)
from changedet.testing import make_geotiff, make_pair, paint_change
from changedet.vectorize import COLUMNS, vectorize

UTM = "EPSG:32631"
T_UTM = from_origin(500000, 5700000, 10, 10)
QGIS_STYLE_COLUMNS = [
    "id", "f_table_catalog", "f_table_schema", "f_table_name", "f_geometry_column", "styleName", "styleQML",
    "styleSLD", "useAsDefault", "description", "owner", "ui", "update_time",
]


def _polygons(n_blocks: int = 2):
    mask = np.zeros((100, 100), dtype="uint8")
    prob = np.full((100, 100), 0.1, dtype="float32")
    for k in range(n_blocks):
        mask[10 + 30 * k : 20 + 30 * k, 10:40] = 1
        prob[10 + 30 * k : 20 + 30 * k, 10:40] = 0.8
    return vectorize(mask, prob, transform=T_UTM, crs=UTM, threshold=0.5, before_date="2019-05-01",
                     after_date="2020-05-01", model="fc-siam-diff")


def _result_folder(root: Path, *, bands: int = 13, crs: str = UTM, res: float = 10.0,
                   origin: tuple[float, float] = (500000.0, 5700000.0)) -> tuple[Path, Path, Path, int]:
    """A detect-like result folder built from a synthetic pair (probability, change, polygons, report)."""
    before, after = make_pair(root / "inputs", "aligned", size=96, bands=bands, crs=crs, res=res, origin=origin)
    truth = paint_change(after, (20, 30, 16, 24))
    with rasterio.open(before) as ds:
        transform, grid_crs = ds.transform, ds.crs
    prob = np.random.default_rng(0).random((96, 96)).astype("float32") * 0.3
    prob[truth] = 0.9
    prob[60:64, 60:70] = 0.7
    out = root / "result"
    out.mkdir(parents=True)
    make_geotiff(out / "probability.tif", prob, crs=grid_crs, transform=transform, nodata=-1)
    make_geotiff(out / "change.tif", (prob >= 0.5).astype("uint8"), crs=grid_crs, transform=transform, nodata=255)
    gdf = vectorize(out / "change.tif", out / "probability.tif", threshold=0.5)
    write_vectors(gdf, out / "changes.gpkg", out / "changes.geojson")
    report = {"threshold": 0.5, "inputs": {"before": {"path": str(before), "date": "2019-05-01"},
                                           "after": {"path": str(after), "date": "2020-05-01"}}}
    (out / "report.json").write_text(json.dumps(report))
    return out, before, after, len(gdf)


def test_geopackage_keeps_crs_and_is_version_1_2_with_qgis_style(tmp_path):
    gdf = _polygons()
    out = write_vectors(gdf, tmp_path / "changes.gpkg", tmp_path / "changes.geojson")
    assert set(out) == {"gpkg", "qml", "geojson"}
    assert sorted(os.listdir(tmp_path)) == ["changes.geojson", "changes.gpkg", "changes.qml"]  # no temp files
    info = pyogrio.read_info(tmp_path / "changes.gpkg", layer="changes")
    assert info["crs"] == UTM and info["features"] == 2 and info["geometry_type"] == "Polygon"
    assert list(info["fields"]) == list(COLUMNS)
    con = sqlite3.connect(tmp_path / "changes.gpkg")
    try:
        assert con.execute("PRAGMA user_version").fetchone()[0] == 10200  # GeoPackage 1.2
        cols = [r[1] for r in con.execute("PRAGMA table_info(layer_styles)")]
        assert cols == QGIS_STYLE_COLUMNS
        geom_col = con.execute("SELECT column_name FROM gpkg_geometry_columns WHERE table_name='changes'").fetchone()[0]
        row = con.execute("SELECT f_table_catalog, f_table_schema, f_table_name, f_geometry_column, useAsDefault, "
                          "styleQML, styleSLD FROM layer_styles").fetchall()
        assert len(row) == 1
        catalog, schema, table, gcol, default, qml, sld = row[0]
        assert (catalog, schema, table, gcol, default) == ("", "", "changes", geom_col, 1)
        assert qml == polygon_style_qml() and "PolygonSymbolizer" in sld
        assert con.execute("SELECT data_type FROM gpkg_contents WHERE table_name='layer_styles'").fetchone() == (
            "attributes",)
    finally:
        con.close()
    back = pyogrio.read_dataframe(tmp_path / "changes.gpkg", layer="changes")
    np.testing.assert_allclose(back["area_m2"], gdf["area_m2"])
    assert back["before_date"].tolist() == ["2019-05-01"] * 2


def test_geojson_is_wgs84_by_default_and_keeps_crs_on_request(tmp_path):
    gdf = _polygons()
    write_vectors(gdf, geojson_path=tmp_path / "a.geojson")
    doc = json.loads((tmp_path / "a.geojson").read_text())
    assert "crs" not in doc  # RFC 7946: WGS84 implied
    assert doc.get("name") == "changes"  # not the temporary file's name
    lon, lat = np.asarray(doc["features"][0]["geometry"]["coordinates"][0]).T
    assert (0 < lon).all() and (lon < 6).all() and (51 < lat).all() and (lat < 52).all()
    assert doc["features"][0]["properties"]["mean_prob"] == pytest.approx(0.8)
    write_vectors(gdf, geojson_path=tmp_path / "b.geojson", geojson_crs=None)
    assert pyogrio.read_info(tmp_path / "b.geojson")["crs"] == UTM
    xy = np.asarray(json.loads((tmp_path / "b.geojson").read_text())["features"][0]["geometry"]["coordinates"][0])
    assert (xy[:, 0] >= 500000).all() and (xy[:, 1] <= 5700000).all()


def test_existing_outputs_are_not_replaced_without_overwrite(tmp_path):
    gdf = _polygons()
    write_vectors(gdf, tmp_path / "c.gpkg", tmp_path / "c.geojson")
    before = (tmp_path / "c.geojson").read_bytes()
    with pytest.raises(OutputExistsError, match=r"c\.gpkg"):
        write_vectors(_polygons(1), tmp_path / "c.gpkg", tmp_path / "c.geojson")
    with pytest.raises(OutputExistsError, match=r"c\.geojson"):  # checked before the GeoPackage is written
        write_vectors(_polygons(1), tmp_path / "new.gpkg", tmp_path / "c.geojson")
    assert not (tmp_path / "new.gpkg").exists()
    assert (tmp_path / "c.geojson").read_bytes() == before
    write_vectors(_polygons(1), tmp_path / "c.gpkg", tmp_path / "c.geojson", overwrite=True)
    assert pyogrio.read_info(tmp_path / "c.gpkg", layer="changes")["features"] == 1
    assert sorted(os.listdir(tmp_path)) == ["c.geojson", "c.gpkg", "c.qml"]


def test_empty_result_writes_valid_empty_layers(tmp_path):
    gdf = vectorize(np.zeros((10, 10), "uint8"), transform=T_UTM, crs=UTM)
    write_vectors(gdf, tmp_path / "e.gpkg", tmp_path / "e.geojson")
    info = pyogrio.read_info(tmp_path / "e.gpkg", layer="changes")
    assert info["features"] == 0 and list(info["fields"]) == list(COLUMNS) and info["crs"] == UTM
    assert info["geometry_type"] == "Polygon"
    doc = json.loads((tmp_path / "e.geojson").read_text())
    assert doc["type"] == "FeatureCollection" and doc["features"] == []


def test_not_georeferenced_polygons_need_geojson_crs_none(tmp_path):
    with pytest.warns(UserWarning):
        gdf = vectorize(np.ones((4, 4), "uint8"))
    with pytest.raises(InputError, match="geojson_crs=None"):
        write_vectors(gdf, geojson_path=tmp_path / "x.geojson")
    assert not (tmp_path / "x.geojson").exists()
    write_vectors(gdf, tmp_path / "x.gpkg", tmp_path / "x.geojson", geojson_crs=None)
    assert pyogrio.read_info(tmp_path / "x.gpkg", layer="changes")["features"] == 1


def test_style_files_are_qgis_xml():
    for text in (polygon_style_qml(), probability_style_qml(0.37), change_style_qml()):
        assert text.startswith("<!DOCTYPE qgis")
        root = ET.fromstring(text.split("\n", 1)[1])
        assert root.tag == "qgis" and root.get("version", "").startswith("3.")
    prob = ET.fromstring(probability_style_qml(0.37).split("\n", 1)[1])
    shader = prob.find("pipe/rasterrenderer/rastershader/colorrampshader")
    assert shader.get("clip") == "1" and float(shader.get("minimumValue")) == 0.37
    assert float(shader.findall("item")[0].get("value")) == 0.37
    change = ET.fromstring(change_style_qml().split("\n", 1)[1])
    entries = {e.get("value"): e.get("alpha") for e in change.iter("paletteEntry")}
    assert entries == {"0": "0", "1": "255"}
    with pytest.raises(InputError):
        probability_style_qml(1.5)


def test_embed_style_errors(tmp_path):
    not_gpkg = tmp_path / "x.gpkg"
    not_gpkg.write_bytes(b"")
    with pytest.raises(InputError, match=r"no geometry layer|not a GeoPackage"):
        embed_gpkg_style(not_gpkg, polygon_style_qml())
    write_vectors(_polygons(), tmp_path / "c.gpkg")
    with pytest.raises(InputError, match="'other'"):
        embed_gpkg_style(tmp_path / "c.gpkg", polygon_style_qml(), layer="other")
    # a second embed replaces the style of the same name, a new name becomes the one default
    embed_gpkg_style(tmp_path / "c.gpkg", polygon_style_qml())
    embed_gpkg_style(tmp_path / "c.gpkg", polygon_style_qml(), name="mine")
    con = sqlite3.connect(tmp_path / "c.gpkg")
    rows = con.execute("SELECT styleName, useAsDefault FROM layer_styles ORDER BY id").fetchall()
    con.close()
    assert rows == [("changedet", 0), ("mine", 1)]


def test_rgb_bands():
    assert rgb_bands(13) == (4, 3, 2)
    assert rgb_bands(3) == (1, 2, 3)
    assert rgb_bands(4, ["B02", "B03", "B04", "B08"]) == (3, 2, 1)
    assert rgb_bands(13, [f"B{i:02d}" for i in range(1, 9)] + ["B8A", "B09", "B10", "B11", "B12"]) == (4, 3, 2)
    assert rgb_bands(2) is None
    assert rgb_bands(7, [f"SR_B{i}" for i in range(1, 8)]) == (4, 3, 2)  # Landsat 8/9 (SR_B6 is SWIR 1)
    assert rgb_bands(7, [f"B{i}" for i in range(1, 8)], tags={"SPACECRAFT_ID": "LANDSAT_5"}) == (3, 2, 1)
    assert rgb_bands(3, colorinterp=["blue", "green", "red"]) == (3, 2, 1)
    assert rgb_bands(4, ["nir", "Blue", "Green", "Red"]) == (4, 3, 2)


@pytest.mark.parametrize(("names", "tags", "interp", "rgb"), [
    ([f"SR_B{i}" for i in range(1, 8)], {"SPACECRAFT_ID": "LANDSAT_8"}, None, ("4", "3", "2")),
    ([f"B{i}" for i in range(1, 8)], {"SPACECRAFT_ID": "LANDSAT_5"}, None, ("3", "2", "1")),
    (None, None, ("blue", "green", "red"), ("3", "2", "1")),
    (["B02", "B03", "B04"], None, None, ("3", "2", "1")),
    (None, None, None, ("1", "2", "3")),
], ids=["landsat8_sr", "landsat5_level1", "bgr_colorinterp", "s2_names", "plain"])
def test_project_rgb_is_what_the_model_reads(tmp_path, names, tags, interp, rgb):
    """The BEFORE/AFTER composites show the red, green and blue bands a true-colour model reads (Landsat numbering
    per SPACECRAFT_ID, GDAL's colour interpretation), as ``ChangeResult.plot()`` does."""
    from rasterio.enums import ColorInterp

    from changedet.io import raster_info
    from changedet.io.bands import identified_bands

    n = len(names) if names else 3
    data = np.random.default_rng(0).integers(1, 1000, (n, 32, 32))
    path = make_geotiff(tmp_path / "in.tif", data, dtype="uint16", crs=UTM, transform=T_UTM, descriptions=names,
                        tags=tags)
    if interp is not None:
        with rasterio.open(path, "r+") as ds:
            ds.colorinterp = [getattr(ColorInterp, c) for c in interp]
    want = identified_bands(raster_info(path), ["B04", "B03", "B02"]) or [1, 2, 3]
    assert tuple(str(i) for i in want) == rgb
    with rasterio.open(path) as ds:
        assert rgb_bands(ds.count, ds.descriptions, colorinterp=ds.colorinterp, dtypes=ds.dtypes,
                         tags=ds.tags()) == tuple(int(i) for i in rgb)
    out = tmp_path / "out"
    out.mkdir()
    project = write_qgis_project(out, before=path, after=path, threshold=0.5)
    for layer in ("BEFORE", "AFTER"):
        r = {m.findtext("layername"): m.find("pipe/rasterrenderer") for m in _layers(project)}[layer]
        assert (r.get("redBand"), r.get("greenBand"), r.get("blueBand")) == rgb


def test_writing_a_project_does_not_import_torch(tmp_path):
    """The QGIS export picks the composite's bands with changedet.io.bands, which stays free of the ML stack."""
    import subprocess
    import sys

    path = make_geotiff(tmp_path / "in.tif", np.ones((7, 16, 16)), dtype="uint16", crs=UTM, transform=T_UTM,
                        descriptions=[f"SR_B{i}" for i in range(1, 8)])
    code = ("import sys; from changedet.export import write_qgis_project; "
            f"p = write_qgis_project({str(tmp_path)!r}, before={str(path)!r}, threshold=0.5); "
            "print('redBand=\"4\"' in open(p).read(), 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["True", "False"]


def _layers(project: Path) -> list[ET.Element]:
    root = ET.parse(project).getroot()
    return root.findall("projectlayers/maplayer")


def test_project_layers_order_paths_crs_and_extent(tmp_path):
    out, _, after, _ = _result_folder(tmp_path)
    written = export_qgis(out)
    assert set(written) == {"probability_qml", "change_qml", "polygons_qml", "project"}
    project = written["project"]
    root = ET.parse(project).getroot()
    names = [e.get("name") for e in root.findall("layer-tree-group/layer-tree-layer")]
    assert names == ["change polygons", "change mask", "change probability", "AFTER", "BEFORE"]
    sources = {m.findtext("layername"): m.findtext("datasource") for m in _layers(project)}
    assert sources["change polygons"] == "./changes.gpkg|layername=changes"
    assert sources["change probability"] == "./probability.tif"
    assert sources["BEFORE"] == "../inputs/before.tif" and sources["AFTER"] == "../inputs/after.tif"
    assert root.findtext("projectCrs/spatialrefsys/authid") == UTM
    assert root.find("properties/Paths/Absolute").text == "false"
    with rasterio.open(out / "probability.tif") as ds:
        bounds = tuple(ds.bounds)
    ext = root.find("ProjectViewSettings/DefaultViewExtent")
    assert tuple(float(ext.get(k)) for k in ("xmin", "ymin", "xmax", "ymax")) == bounds
    renderers = {m.findtext("layername"): m.find("pipe/rasterrenderer") for m in _layers(project)
                 if m.get("type") == "raster"}
    rgb = renderers["AFTER"]
    assert rgb.get("type") == "multibandcolor"
    assert (rgb.get("redBand"), rgb.get("greenBand"), rgb.get("blueBand")) == ("4", "3", "2")
    lo, hi = float(rgb.findtext("redContrastEnhancement/minValue")), float(rgb.findtext("redContrastEnhancement/maxValue"))
    with rasterio.open(after) as ds:
        red = ds.read(4).astype(float)
    assert lo == pytest.approx(np.quantile(red, 0.02), rel=0.05) and hi == pytest.approx(np.quantile(red, 0.98), rel=0.05)
    ramp = renderers["change probability"].find("rastershader/colorrampshader")
    assert float(ramp.get("minimumValue")) == 0.5  # from report.json
    assert root.findtext("title") == "changedet: 2019-05-01 → 2020-05-01"
    assert (out / "probability.qml").read_text() == probability_style_qml(0.5)


def test_project_rgb_for_three_bands_and_explicit_mapping(tmp_path):
    out, before, after, _ = _result_folder(tmp_path, bands=3)
    p = write_qgis_project(out, before=before, after=after, threshold=0.3)
    rgb = {m.findtext("layername"): m.find("pipe/rasterrenderer") for m in _layers(p)}["BEFORE"]
    assert (rgb.get("redBand"), rgb.get("greenBand"), rgb.get("blueBand")) == ("1", "2", "3")
    p = write_qgis_project(out, before=before, after=after, threshold=0.3, band_mapping=(3, 2, 1), path="b.qgs")
    rgb = {m.findtext("layername"): m.find("pipe/rasterrenderer") for m in _layers(p)}["BEFORE"]
    assert (rgb.get("redBand"), rgb.get("greenBand"), rgb.get("blueBand")) == ("3", "2", "1")
    with pytest.raises(InputError, match="band 5"):
        write_qgis_project(out, before=before, threshold=0.3, band_mapping=(5, 2, 1), path="c.qgs")
    assert not (out / "c.qgs").exists()


def test_project_errors(tmp_path):
    with pytest.raises(InputError, match="not a folder"):
        write_qgis_project(tmp_path / "nope", threshold=0.5)
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="nothing to put"):
        write_qgis_project(tmp_path / "empty", threshold=0.5)
    out, *_ = _result_folder(tmp_path / "r")
    with pytest.raises(InputError, match="BEFORE raster does not exist"):
        write_qgis_project(out, before=tmp_path / "missing.tif", threshold=0.5)


def test_cli_vectorize_mask_probability_and_formats(tmp_path):
    out, *_ = _result_folder(tmp_path)
    runner = CliRunner()
    r = runner.invoke(cli, ["vectorize", str(out / "change.tif"), str(tmp_path / "v.gpkg"),
                            "--probability", str(out / "probability.tif"), "--min-area", "5000", "--json"])
    assert r.exit_code == 0, r.output
    summary = json.loads(r.output)
    assert summary["polygons"] == 1 and summary["area_m2"] == 16 * 24 * 100.0  # the 4 x 10 block is dropped
    g = pyogrio.read_dataframe(tmp_path / "v.gpkg", layer="changes")
    assert g["mean_prob"][0] == pytest.approx(0.9) and g["before_date"][0] == "2019-05-01"  # dates from report.json
    # a probability raster: the threshold comes from report.json next to it, or --threshold
    r = runner.invoke(cli, ["vectorize", str(out / "probability.tif"), str(tmp_path / "p.geojson"),
                            "--threshold", "0.8"])
    assert r.exit_code == 0, r.output
    assert len(json.loads((tmp_path / "p.geojson").read_text())["features"]) == 1
    r = runner.invoke(cli, ["vectorize", str(out / "probability.tif"), str(tmp_path / "p.geojson")])
    assert r.exit_code == 2 and "exists already" in r.output
    r = runner.invoke(cli, ["vectorize", str(out / "probability.tif"), str(tmp_path / "k.geojson"),
                            "--geojson-crs", "input"])
    assert r.exit_code == 0 and pyogrio.read_info(tmp_path / "k.geojson")["crs"] == UTM
    r = runner.invoke(cli, ["vectorize", str(out / "change.tif"), str(tmp_path / "v.shp")])
    assert r.exit_code == 2 and ".gpkg or .geojson" in r.output
    lone = make_geotiff(tmp_path / "lone" / "prob.tif", np.full((8, 8), 0.3, "float32"))  # (only 0/1: a mask)
    r = runner.invoke(cli, ["vectorize", str(lone), str(tmp_path / "l.gpkg")])
    assert r.exit_code == 2 and "--threshold" in r.output
    assert not (tmp_path / "l.gpkg").exists()


def test_cli_export_qgis_reads_report(tmp_path):
    out, *_ = _result_folder(tmp_path)
    r = CliRunner().invoke(cli, ["export", "qgis", str(out), "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["project"] == str(out / "project.qgs")
    names = [m.findtext("layername") for m in _layers(out / "project.qgs")]
    assert "BEFORE" in names and "AFTER" in names
    r = CliRunner().invoke(cli, ["export", "qgis", str(out), "--band-mapping", "1,2"])
    assert r.exit_code == 2


def test_cli_export_qgis_checks_before_writing_and_takes_q(tmp_path):
    out, *_ = _result_folder(tmp_path)
    before_files = sorted(p.name for p in out.iterdir())
    r = CliRunner().invoke(cli, ["export", "qgis", str(out), "--band-mapping", "1,2,20"])
    assert r.exit_code == 2 and "band 20" in r.output
    assert sorted(p.name for p in out.iterdir()) == before_files  # no style written before the error
    r = CliRunner().invoke(cli, ["export", "qgis", str(out), "--after", str(tmp_path / "missing.tif")])
    assert r.exit_code == 2 and "missing.tif: the AFTER raster given (--after) does not exist" in r.output
    assert sorted(p.name for p in out.iterdir()) == before_files
    r = CliRunner().invoke(cli, ["export", "qgis", str(out), "-q"])  # -q/-v after the leaf command, as elsewhere
    assert r.exit_code == 0, r.output
    assert (out / "project.qgs").is_file()


def test_export_qgis_after_moving_the_folder_with_its_inputs(tmp_path, caplog):
    # a whole site folder (inputs + result) moved: report.json's absolute input paths are gone, but the paths
    # relative to the result folder that the existing project records still resolve
    out, *_ = _result_folder(tmp_path / "site")
    export_qgis(out)
    (tmp_path / "site").rename(tmp_path / "site_moved")
    out = tmp_path / "site_moved" / "result"
    r = CliRunner().invoke(cli, ["export", "qgis", str(out)])
    assert r.exit_code == 0, r.output
    assert "left out of the project" not in r.output
    sources = {m.findtext("layername"): m.findtext("datasource") for m in _layers(out / "project.qgs")}
    assert sources["BEFORE"] == "../inputs/before.tif" and sources["AFTER"] == "../inputs/after.tif", sources
    assert (out / sources["BEFORE"]).is_file() and (out / sources["AFTER"]).is_file()
    # the result moved alone: the inputs are not found anywhere, they are left out with a warning
    alone = tmp_path / "alone"
    out.rename(alone)
    with caplog.at_level("WARNING", logger="changedet.export.qgis"):
        export_qgis(alone)
    assert "BEFORE raster" in caplog.text and "left out of the project" in caplog.text
    assert [m.findtext("layername") for m in _layers(alone / "project.qgs")] == [
        "change polygons", "change mask", "change probability"]


def test_export_qgis_after_moving_a_detect_folder_without_a_project(tmp_path):
    """No project was written, so there is none to take the inputs from: report.json's path_from_output is used."""
    from changedet.api import detect

    before, after = make_pair(tmp_path / "site" / "inputs", "aligned", size=64, bands=3)
    res = detect(before, after, method="cva", output_dir=tmp_path / "site" / "result", quicklook=False)
    assert res.report["inputs"]["before"]["path_from_output"] == "../inputs/before.tif"
    del res
    (tmp_path / "site").rename(tmp_path / "moved")
    out = tmp_path / "moved" / "result"
    r = CliRunner().invoke(cli, ["export", "qgis", str(out)])
    assert r.exit_code == 0 and "left out of the project" not in r.output, r.output
    sources = {m.findtext("layername"): m.findtext("datasource") for m in _layers(out / "project.qgs")}
    assert sources["BEFORE"] == "../inputs/before.tif" and sources["AFTER"] == "../inputs/after.tif", sources
