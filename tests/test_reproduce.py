"""scripts/reproduce.py: the model-card table's figures (no training here; the script itself takes hours)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "reproduce.py"


@pytest.fixture(scope="module")
def reproduce() -> Any:
    spec = importlib.util.spec_from_file_location("reproduce_script", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _metrics_csv(path: Path, rows: list[tuple[int, str]]) -> Path:
    lines = ["epoch,train_loss,val_f1,val_f1_best"] + [f"{e},0.5,0.1,{v}" for e, v in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_last_epoch_f1_is_the_last_validated_epoch(reproduce: Any, tmp_path: Path) -> None:
    # validation every second epoch; the best epoch (0.42) is not the last one
    csv = _metrics_csv(tmp_path / "metrics.csv", [(1, ""), (2, "0.30"), (3, ""), (4, "0.42"), (5, ""), (6, "0.35"),
                                                 (7, "")])
    assert reproduce.last_epoch_f1(csv) == pytest.approx(0.35)
    assert reproduce.last_epoch_f1(tmp_path / "missing.csv") is None
    assert reproduce.last_epoch_f1(_metrics_csv(tmp_path / "none.csv", [(1, ""), (2, "")])) is None


def test_the_table_reports_best_and_last_epoch_f1_over_the_seeds(reproduce: Any) -> None:
    def run(seed: int, f1: float, last: float | None) -> dict[str, Any]:
        metrics = {"precision": 0.5, "recall": 0.5, "f1": f1, "iou": 0.3, "kappa": 0.4, "at_0.5": {"f1": 0.1}}
        return {"seed": seed, "metrics": metrics, "last_f1": last, "cross": {"pooled": {"f1": 0.2}}, "test": None,
                "threshold": 0.25, "best_epoch": 10, "seconds": 600.0, "band_names": ["B04", "B03", "B02"],
                "data": {"val": ["pisa", "rennes"]}}

    text = reproduce.table({("s2-rgb", "fc-ef"): [run(0, 0.40, 0.36), run(1, 0.44, 0.38)]})
    head, _rule, row = text.splitlines()
    cells = dict(zip([c.strip() for c in head.split("|")], [c.strip() for c in row.split("|")], strict=True))
    assert cells["F1"] == "42.00 ± 2.83"
    assert cells["F1, last epoch"] == "37.00 ± 1.41"
    assert cells["F1, others' threshold"] == "20.00 ± 0.00"
    # runs summarised before the column existed have no last-epoch figure
    old = reproduce.table({("s2-rgb", "fc-ef"): [run(0, 0.40, None)]})
    assert "| 40.00 ± 0.00 | 20.00 ± 0.00 | n/a |" in old
