"""The QGIS deliverables in a real QGIS (Debian's QGIS 3.22 under /usr/bin/python3, offscreen).

- the exported project opens; every layer is valid, in the right CRS, with the right feature count and style;
  the map renders to a PNG that is not blank; the project still opens after its folder is moved;
- the GeoPackage's embedded style is what QGIS applies when the layer is added alone (no sidecar around);
- ``qgis_process`` runs the Processing algorithm ``changedet:detect`` of ``qgis_plugin/`` on a synthetic pair.

Skipped, with the reason, when /usr/bin/python3 cannot import qgis.core (``scripts/setup_qgis.sh`` installs it).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from changedet.testing import make_pair

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = Path(__file__).resolve().parent / "qgis_scripts"
QGIS_PYTHON = "/usr/bin/python3"
QGIS_PROCESS = "/usr/bin/qgis_process.bin"  # Debian's /usr/bin/qgis_process wrapper is broken in 3.22

pytestmark = pytest.mark.qgis


def _qgis_missing() -> str | None:
    if not os.path.exists(QGIS_PYTHON):
        return f"{QGIS_PYTHON} not found"
    try:
        r = subprocess.run([QGIS_PYTHON, "-c", "import qgis.core"], capture_output=True, text=True, timeout=120,
                           env={**os.environ, "QT_QPA_PLATFORM": "offscreen"})
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"{QGIS_PYTHON} cannot run ({exc})"
    if r.returncode != 0:
        return f"{QGIS_PYTHON} cannot import qgis.core (run scripts/setup_qgis.sh): {r.stderr.strip()[-200:]}"
    return None


_MISSING = _qgis_missing()
if _MISSING:
    pytestmark = [pytest.mark.qgis, pytest.mark.skip(reason=_MISSING)]


@pytest.fixture
def qgis_env(tmp_path) -> dict[str, str]:
    """Environment for QGIS processes: offscreen, every config/cache folder in a temporary folder."""
    home = tmp_path / "qgis_home"
    home.mkdir()
    home.chmod(0o700)
    env = {k: v for k, v in os.environ.items() if not k.startswith("QGIS_") and k != "VIRTUAL_ENV"}
    # QGIS's embedded Python looks for "python3" on PATH to find its prefix: an activated venv's python3 (built on
    # another interpreter) would give it that interpreter's standard library, and qgis_process then crashes
    venv_bins = {str(Path(sys.prefix) / "bin"), str(Path(os.environ.get("VIRTUAL_ENV", sys.prefix)) / "bin")}
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if p not in venv_bins)
    env.update(
        QT_QPA_PLATFORM="offscreen",
        XDG_RUNTIME_DIR=str(home),
        XDG_CONFIG_HOME=str(home / "config"),
        XDG_CACHE_HOME=str(home / "cache"),
        XDG_DATA_HOME=str(home / "data"),
        QGIS_CUSTOM_CONFIG_PATH=str(home / "profile"),
        HOME=str(home),
        PYTHONPATH="",
    )
    return env


def _check_project(project: Path, png: Path, env: dict[str, str], *standalone: Path) -> dict:
    r = subprocess.run([QGIS_PYTHON, str(SCRIPTS / "check_project.py"), str(project), str(png),
                        *map(str, standalone)], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, f"QGIS exited with {r.returncode}:\n{r.stderr[-3000:]}"
    lines = [line for line in r.stdout.splitlines() if line.startswith("{")]
    assert lines, f"no report from QGIS:\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}"
    return json.loads(lines[-1])


def _result(root: Path, *, bands: int = 13, crs: str = "EPSG:32631", res: float = 10.0,
            origin: tuple[float, float] = (500000.0, 5700000.0)) -> tuple[Path, int]:
    """A result folder like `changedet detect` writes, from a synthetic pair with two painted blocks."""
    import rasterio

    from changedet.export import export_qgis, write_vectors
    from changedet.testing import make_geotiff, paint_change
    from changedet.vectorize import vectorize

    before, after = make_pair(root / "inputs", "aligned", size=96, bands=bands, crs=crs, res=res, origin=origin)
    truth = paint_change(after, (20, 30, 16, 24)) | paint_change(after, (60, 10, 8, 30))
    with rasterio.open(before) as ds:
        transform, grid_crs = ds.transform, ds.crs
    prob = np.random.default_rng(0).random((96, 96)).astype("float32") * 0.3
    prob[truth] = 0.9
    out = root / "result"
    out.mkdir(parents=True)
    make_geotiff(out / "probability.tif", prob, crs=grid_crs, transform=transform, nodata=-1)
    make_geotiff(out / "change.tif", (prob >= 0.5).astype("uint8"), crs=grid_crs, transform=transform, nodata=255)
    gdf = vectorize(out / "change.tif", out / "probability.tif", threshold=0.5, simplify=5.0)
    write_vectors(gdf, out / "changes.gpkg", out / "changes.geojson")
    report = {"threshold": 0.5, "inputs": {"before": {"path": str(before), "date": "2019-05-01"},
                                           "after": {"path": str(after), "date": "2020-05-01"}}}
    (out / "report.json").write_text(json.dumps(report))
    export_qgis(out)
    return out, len(gdf)


def _assert_project(report: dict, *, crs: str, n_polygons: int, rgb: list[int]) -> None:
    assert report["read"] is True
    assert report["project_crs"] == crs
    layers = {layer["name"]: layer for layer in report["layers"]}
    assert [layer["name"] for layer in report["layers"]] == [
        "change polygons", "change mask", "change probability", "AFTER", "BEFORE"]
    for layer in report["layers"]:
        assert layer["valid"], layer
        assert layer["crs"] == crs, layer
    poly = layers["change polygons"]
    assert poly["feature_count"] == n_polygons
    assert poly["renderer"] == "singleSymbol" and poly["stroke_color"] == "#ffe31a1c"
    assert {"area_m2", "perimeter_m", "mean_prob", "max_prob", "before_date", "after_date", "model",
            "threshold"} <= set(poly["fields"])
    assert layers["change mask"]["renderer"] == "paletted"
    prob = layers["change probability"]
    assert prob["renderer"] == "singlebandpseudocolor" and prob["ramp_min"] == 0.5 and prob["ramp_clip"] is True
    for name in ("AFTER", "BEFORE"):
        assert layers[name]["renderer"] == "multibandcolor" and layers[name]["rgb_bands"] == rgb
    assert report["render_errors"] == []
    assert report["saved_png"] is True
    img = report["image"]
    assert img["distinct_colours"] > 100, img  # imagery, ramps and outlines, not a flat fill
    assert img["non_background"] > 0.9, img  # the rasters cover the default view extent


def test_project_opens_renders_and_moves_in_qgis(tmp_path, qgis_env):
    _, n = _result(tmp_path / "a")
    # move the whole folder (inputs next to it): relative paths must still resolve
    moved = tmp_path / "moved"
    shutil.move(str(tmp_path / "a"), moved)
    result = moved / "result"
    # the GeoPackage alone, without its .qml sidecar: QGIS must find the embedded default style
    alone = tmp_path / "alone"
    alone.mkdir()
    shutil.copy(result / "changes.gpkg", alone / "changes.gpkg")
    png = tmp_path / "map.png"
    report = _check_project(result / "project.qgs", png, qgis_env, alone / "changes.gpkg",
                            result / "probability.tif", result / "change.tif")
    _assert_project(report, crs="EPSG:32631", n_polygons=n, rgb=[4, 3, 2])
    for layer in report["layers"]:
        assert layer["source"].split("|")[0].startswith(str(moved)), layer["source"]
    assert png.stat().st_size > 1000
    gpkg, prob, change = report["standalone"]
    assert gpkg["valid"] and gpkg["renderer"] == "singleSymbol"
    # QGIS's own default would be a random colour: these are the embedded style's
    assert (gpkg["fill_color"], gpkg["stroke_color"]) == ("#28e31a1c", "#ffe31a1c")
    assert prob["renderer"] == "singlebandpseudocolor" and prob["ramp_min"] == 0.5  # probability.qml sidecar
    assert change["renderer"] == "paletted"  # change.qml sidecar


def test_project_in_epsg4326_with_rgb_inputs(tmp_path, qgis_env):
    out, n = _result(tmp_path, bands=3, crs="EPSG:4326", res=0.0001, origin=(2.3, 48.9))
    report = _check_project(out / "project.qgs", tmp_path / "map.png", qgis_env)
    _assert_project(report, crs="EPSG:4326", n_polygons=n, rgb=[1, 2, 3])
    ext = report["extent"]
    assert ext == pytest.approx([2.3, 48.9 - 96 * 0.0001, 2.3 + 96 * 0.0001, 48.9])


def _changedet_executable() -> str | None:
    for candidate in (os.environ.get("CHANGEDET_EXECUTABLE"), str(Path(sys.executable).parent / "changedet"),
                      str(REPO / ".venv" / "bin" / "changedet"), shutil.which("changedet")):
        if candidate and os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    return None


@pytest.mark.slow
def test_qgis_process_runs_the_detect_algorithm(tmp_path, qgis_env):
    exe = _changedet_executable()
    if exe is None:
        pytest.skip("no changedet executable found (set CHANGEDET_EXECUTABLE)")
    if not os.path.exists(QGIS_PROCESS):
        pytest.skip(f"{QGIS_PROCESS} not found")
    from changedet.testing import paint_change

    before, after = make_pair(tmp_path / "pair", "aligned", size=96, bands=3)
    paint_change(after, (20, 30, 16, 24))
    # the executable given by the parameter (README), not $CHANGEDET_EXECUTABLE: a path without an extension
    # (venv/bin/changedet) must be accepted (QGIS 3.22's default file filter "*.*" refuses it)
    env = {k: v for k, v in qgis_env.items() if k != "CHANGEDET_EXECUTABLE"}
    env.update(QGIS_PLUGINPATH=str(REPO / "qgis_plugin"), OMP_NUM_THREADS="2")
    r = subprocess.run([QGIS_PROCESS, "plugins", "enable", "changedet_processing"], capture_output=True,
                       text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    out = tmp_path / "out"
    r = subprocess.run([QGIS_PROCESS, "--json", "run", "changedet:detect", f"--BEFORE={before}",
                        f"--AFTER={after}", "--METHOD=1", f"--OUTPUT={out}", f"--EXECUTABLE={exe}"],
                       capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    results = json.loads(r.stdout[r.stdout.index("{"):])["results"]
    assert Path(results["OUTPUT"]) == out
    for key, name in (("PROBABILITY", "probability.tif"), ("CHANGE", "change.tif"), ("POLYGONS", "changes.gpkg"),
                      ("REPORT", "report.json"), ("PROJECT", "project.qgs")):
        assert Path(results[key]) == out / name and (out / name).is_file()
    import pyogrio

    polygons = pyogrio.read_dataframe(out / "changes.gpkg", layer="changes")
    assert len(polygons) >= 1
    # the painted 16 x 24 block (10 m pixels) is found: the largest polygon covers most of it
    assert polygons["area_m2"].max() == pytest.approx(16 * 24 * 100.0, rel=0.25)
    report = _check_project(out / "project.qgs", tmp_path / "map.png", qgis_env)
    assert report["read"] is True
    assert all(layer["valid"] for layer in report["layers"]), report["layers"]
    assert {layer["name"] for layer in report["layers"]} >= {"change polygons", "change probability"}
    # bad input is reported, not crashed on
    r = subprocess.run([QGIS_PROCESS, "run", "changedet:detect", f"--BEFORE={before}",
                        f"--AFTER={before}", "--METHOD=1", f"--OUTPUT={out}",
                        f"--EXECUTABLE={tmp_path / 'no-such-changedet'}"],
                       capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode != 0
    # refused by the algorithm (qgis_process echoes every input, so the name alone proves nothing), not by the
    # parameter's file filter ("Incorrect parameter value for EXECUTABLE")
    assert "no-such-changedet (from the 'changedet executable' parameter) is not an executable file" in (
        r.stdout + r.stderr), r.stdout[-3000:] + r.stderr[-3000:]
    assert "Incorrect parameter value" not in r.stdout + r.stderr


_PARAMETER_SCRIPT = """
import json, sys
from qgis.core import QgsApplication, QgsProcessingContext, QgsProcessingFeedback, QgsProject
sys.path.insert(0, sys.argv[1])
app = QgsApplication([], False)
app.initQgis()
from changedet_processing.algorithm import DetectAlgorithm
alg = DetectAlgorithm()
alg.initAlgorithm()
param = alg.parameterDefinition("EXECUTABLE")
context = QgsProcessingContext()
context.setProject(QgsProject.instance())
report = {"filter": param.fileFilter(), "acceptable": {}, "check": {}}
for path in sys.argv[2:]:
    report["acceptable"][path] = param.checkValueIsAcceptable(path)
    ok, message = alg.checkParameterValues({"BEFORE": sys.argv[2], "AFTER": sys.argv[2], "EXECUTABLE": path,
                                            "OUTPUT": "TEMPORARY_OUTPUT"}, context)
    report["check"][path] = [ok, message]
print(json.dumps(report))
"""


def test_executable_parameter_accepts_a_path_without_extension(tmp_path, qgis_env):
    # QGIS 3.22's QgsProcessingParameterFile defaults to the filter "All files (*.*)", which refuses
    # /path/to/venv/bin/changedet: the documented way to point the algorithm at changedet
    (raster,) = make_pair(tmp_path / "pair", "aligned", size=16, bands=3)[:1]
    exe = tmp_path / "venv" / "bin" / "changedet"
    exe.parent.mkdir(parents=True)
    exe.write_text("#!/bin/sh\n")
    exe.chmod(0o755)
    script = tmp_path / "param.py"
    script.write_text(_PARAMETER_SCRIPT)
    r = subprocess.run([QGIS_PYTHON, str(script), str(REPO / "qgis_plugin"), str(raster), str(exe),
                        str(tmp_path / "changedet.exe")], capture_output=True, text=True, env=qgis_env, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    report = json.loads([line for line in r.stdout.splitlines() if line.startswith("{")][-1])
    assert report["acceptable"] == {str(raster): True, str(exe): True, str(tmp_path / "changedet.exe"): True}, report
    assert report["check"][str(exe)][0] is True, report


def test_cancelling_the_detect_algorithm_leaves_no_partial_folder(tmp_path, qgis_env):
    exe = _changedet_executable()
    if exe is None:
        pytest.skip("no changedet executable found (set CHANGEDET_EXECUTABLE)")
    before, after = make_pair(tmp_path / "pair", "aligned", size=1024, bands=3)
    out = tmp_path / "out"
    env = dict(qgis_env, CHANGEDET_EXECUTABLE=exe)
    r = subprocess.run([QGIS_PYTHON, str(SCRIPTS / "cancel_detect.py"), str(REPO / "qgis_plugin"), str(before),
                        str(after), str(out)], capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    result = json.loads([line for line in r.stdout.splitlines() if line.startswith("{")][-1])
    # changedet keeps finished blocks for --resume when stopped; the algorithm reruns with --overwrite, so it
    # removes them: nothing but a complete result (if the run beat the cancel) may be left
    assert ".changedet-partial" not in result["left"], result
    if result["raised"] is not None:
        assert "cancelled: changedet was stopped; no new output was written" in result["raised"]
        assert result["left"] == [], result
    else:
        assert "report.json" in result["left"], result


_LOAD_SCRIPT = """
import gc, json, sys
from qgis.core import QgsApplication, QgsProject, QgsRasterLayer, QgsVectorLayer
from qgis.PyQt.QtGui import QColor
plugin_dir, before, after, outdir = sys.argv[1:5]
sys.path.insert(0, plugin_dir)
sys.path.insert(0, "/usr/share/qgis/python/plugins")
app = QgsApplication([], False)
app.initQgis()
import processing
from processing.core.Processing import Processing
Processing.initialize()
from changedet_processing.provider import ChangedetProvider
provider = ChangedetProvider()
QgsApplication.processingRegistry().addProvider(provider)
# what the desktop's Processing toolbox does: run, then load the results into the project (handleAlgorithmResults)
processing.runAndLoadResults("changedet:detect", {"BEFORE": before, "AFTER": after, "METHOD": 1, "OUTPUT": outdir})
gc.collect()
layers = {}
for layer in QgsProject.instance().mapLayers().values():
    r = layer.renderer()
    entry = {"renderer": r.type()}
    if isinstance(layer, QgsVectorLayer) and r.type() == "singleSymbol":
        entry["fill_color"] = r.symbol().color().name(QColor.HexArgb)
    if isinstance(layer, QgsRasterLayer) and r.type() == "singlebandpseudocolor":
        entry["ramp_min"] = r.classificationMin()
    layers[layer.name()] = entry
print(json.dumps(layers))
"""


def test_layers_loaded_by_the_algorithm_are_styled(tmp_path, qgis_env):
    # QGIS 3.22's Processing loads result layers without their default style (grey rasters, random-colour
    # polygons): the algorithm's post-processor applies the GeoPackage's embedded style and the .qml sidecars
    exe = _changedet_executable()
    if exe is None:
        pytest.skip("no changedet executable found (set CHANGEDET_EXECUTABLE)")
    from changedet.testing import paint_change

    before, after = make_pair(tmp_path / "pair", "aligned", size=96, bands=3)
    paint_change(after, (20, 30, 16, 24))
    script = tmp_path / "load.py"
    script.write_text(_LOAD_SCRIPT)
    r = subprocess.run([QGIS_PYTHON, str(script), str(REPO / "qgis_plugin"), str(before), str(after),
                        str(tmp_path / "out")], capture_output=True, text=True,
                       env=dict(qgis_env, CHANGEDET_EXECUTABLE=exe, OMP_NUM_THREADS="2"), timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    layers = json.loads([line for line in r.stdout.splitlines() if line.startswith("{")][-1])
    assert set(layers) == {"change polygons", "change mask", "change probability"}, layers
    assert layers["change probability"]["renderer"] == "singlebandpseudocolor", layers
    assert layers["change mask"]["renderer"] == "paletted", layers
    assert layers["change polygons"] == {"renderer": "singleSymbol", "fill_color": "#28e31a1c"}, layers
