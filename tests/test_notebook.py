"""examples/quickstart.ipynb: committed without outputs, and runs top to bottom on a real OSCD city (nbclient)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from tests.conftest import OSCD_IMAGES, SHARED_DATA

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "examples" / "quickstart.ipynb"
CITY = "rennes"


def _load() -> dict:
    return json.loads(NOTEBOOK.read_text(encoding="utf-8"))


def test_committed_notebook_has_no_outputs() -> None:
    nb = _load()
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert code, "the notebook has no code cells"
    dirty = [i for i, c in enumerate(code) if c.get("outputs") or c.get("execution_count") is not None]
    assert not dirty, f"code cells {dirty} carry outputs: clear them before committing (Kernel > Clear outputs)"
    assert nb["metadata"]["kernelspec"]["language"] == "python"


def test_notebook_covers_the_quickstart_steps() -> None:
    source = "\n".join("".join(c["source"]) for c in _load()["cells"] if c["cell_type"] == "code")
    for call in ("stack_bands(", "changedet.check_pair(", "changedet.detect(", "result.plot()", "result.explore()",
                 "changedet.vectorize(", "min_area=", "export_qgis(", "list_bundled()", "CHANGEDET_SHARED_DATA"):
        assert call in source, f"the notebook no longer calls {call}"


def _kernelspec(tmp: Path) -> str:
    """A kernelspec for this interpreter (the venv's python, with ipykernel) in a private Jupyter data dir."""
    name = "changedet-test"
    spec = tmp / "jupyter" / "kernels" / name
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "changedet test", "language": "python",
    }))
    return name


def _outputs(cell: dict, kind: str) -> list:
    return [o for o in cell.get("outputs", []) if kind in o.get("data", {})]


@pytest.mark.realdata
@pytest.mark.slow
def test_notebook_runs_top_to_bottom(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    pytest.importorskip("folium")
    if not (OSCD_IMAGES / CITY).is_dir():
        pytest.skip(f"{OSCD_IMAGES / CITY} not found")
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    monkeypatch.setenv("CHANGEDET_SHARED_DATA", str(SHARED_DATA))
    monkeypatch.setenv("CHANGEDET_CITY", CITY)
    monkeypatch.setenv("CHANGEDET_NOTEBOOK_OUT", str(tmp_path / "out"))
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    kernel = _kernelspec(tmp_path)
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(nb, kernel_name=kernel, timeout=600,
                                     resources={"metadata": {"path": str(NOTEBOOK.parent)}})
    client.execute()  # raises CellExecutionError with the cell and traceback on any error

    cells = {i: c for i, c in enumerate(nb.cells) if c.cell_type == "code"}
    errors = [o for c in cells.values() for o in c.outputs if o.output_type == "error"]
    assert not errors
    plot_cell = next(c for c in cells.values() if "result.plot()" in c.source)
    assert _outputs(plot_cell, "image/png"), "result.plot() displayed no image"
    map_cell = next(c for c in cells.values() if "result.explore()" in c.source)
    html = "".join(o["data"]["text/html"] for o in _outputs(map_cell, "text/html"))
    assert "leaflet" in html.lower()
    detect_cell = next(c for c in cells.values() if "changedet.detect(" in c.source)
    shown = "".join(o["data"].get("text/plain", "") for o in detect_cell.outputs if "data" in o)
    assert shown.startswith("ChangeResult(")

    out = tmp_path / "out" / "result"
    for name in ("probability.tif", "change.tif", "changes.gpkg", "report.json", "quicklook.png", "project.qgs",
                 "changes_min500m2.gpkg", "changes_min500m2.geojson", "probability.qml"):
        assert (out / name).is_file(), name
    report = json.loads((out / "report.json").read_text())
    bundled = any((REPO / "changedet" / "weights").glob("s2-rgb.safetensors"))
    assert report["model"]["method"] == ("model" if bundled else "cva")
    if bundled:
        assert report["model"]["name"] == "s2-rgb"
    # the notebook itself is untouched on disk (executed in memory)
    assert not any(c.get("outputs") for c in _load()["cells"] if c["cell_type"] == "code")
