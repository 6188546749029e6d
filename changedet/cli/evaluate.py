"""``changedet evaluate PRED TRUTH``: accuracy of change maps against reference masks (files or folders)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from changedet.cli._common import echo_json


def _values(text: str | None, option: str) -> list[float] | None:
    from changedet.errors import InputError

    if text is None:
        return None
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError as exc:
        raise InputError(f"{option}: expected comma-separated numbers such as 1,2, got {text!r}") from exc


def _fmt(v: Any) -> str:
    return "   n/a" if v is None else f"{100 * v:6.2f}"


@click.command("evaluate")
@click.argument("pred", type=click.Path(path_type=Path))
@click.argument("truth", type=click.Path(path_type=Path))
@click.option("--threshold", type=float, default=None,
              help="PRED is a probability raster: change where value >= THRESHOLD.")
@click.option("--ignore-value", type=float, default=None, help="Truth value to leave out (e.g. an unknown class), before the value conventions are read.")
@click.option("--truth-values", default=None, metavar="NOCHANGE,CHANGE",
              help="Truth values of no change and change, e.g. 1,2 for OSCD labels (other values are ignored).")
@click.option("--truth-change-value", type=float, default=None,
              help="The one truth value that means change (others mean no change), e.g. 255.")
@click.option("--json", "as_json", is_flag=True, help="Print per-file and pooled metrics as JSON.")
def command(
    pred: Path,
    truth: Path,
    threshold: float | None,
    ignore_value: float | None,
    truth_values: str | None,
    truth_change_value: float | None,
    as_json: bool,
) -> None:
    """Score PRED against TRUTH: precision, recall, F1, IoU, overall accuracy and kappa of the change class.

    PRED and TRUTH are two rasters, or two folders whose rasters are matched by name (a detect output folder
    <name>/change.tif matches <name>.tif; with --threshold its probability.tif is scored instead; truth files
    without a prediction are named in a warning). PRED is a change.tif (0/1, nodata 255) or, with --threshold, a
    probability.tif; a 0/1/255 mask that declares no nodata value is read as a change.tif whose nodata tag was lost
    (255 no data, with a warning). TRUTH: non-zero is change, except that a truth of 1s and 2s only is read as OSCD's labels (1
    no change, 2 change; a warning says so). Nodata pixels of either raster are ignored. Scores are reported per file and pooled over all
    pixels (the convention of the published OSCD and AirChange results).
    """
    from changedet.errors import InputError
    from changedet.evaluation import evaluate_paths

    change_values = no_change_values = None
    if truth_values is not None and truth_change_value is not None:
        raise InputError("give --truth-values or --truth-change-value, not both")
    if truth_values is not None:
        vals = _values(truth_values, "--truth-values") or []
        if len(vals) != 2:
            raise InputError(f"--truth-values takes two numbers NOCHANGE,CHANGE (e.g. 1,2), got {truth_values!r}")
        no_change_values, change_values = [vals[0]], [vals[1]]
    elif truth_change_value is not None:
        change_values = [truth_change_value]
    report = evaluate_paths(
        pred,
        truth,
        threshold=threshold,
        ignore_value=ignore_value,
        truth_change_values=change_values,
        truth_no_change_values=no_change_values,
    )
    if as_json:
        echo_json(report)
        return
    header = f"{'file':<32} {'P':>6} {'R':>6} {'F1':>6} {'IoU':>6} {'OA':>6} {'kappa':>6} {'change%':>7}"
    click.echo(header)
    for row in report["files"]:
        name = Path(row["truth"]).stem if len(report["files"]) > 1 else Path(row["pred"]).name
        click.echo(
            f"{name[:32]:<32} {_fmt(row['precision'])} {_fmt(row['recall'])} {_fmt(row['f1'])} {_fmt(row['iou'])} "
            f"{_fmt(row['overall_accuracy'])} {_fmt(row['kappa'])} {_fmt(row['change_fraction'])}"
        )
    p = report["pooled"]
    click.echo(
        f"{'pooled (' + str(len(report['files'])) + ' files)':<32} {_fmt(p['precision'])} {_fmt(p['recall'])} "
        f"{_fmt(p['f1'])} {_fmt(p['iou'])} {_fmt(p['overall_accuracy'])} {_fmt(p['kappa'])} "
        f"{_fmt(p['change_fraction'])}"
    )
