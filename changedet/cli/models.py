"""``changedet models``: list the architectures and the bundled checkpoints."""

from __future__ import annotations

from typing import Any

import click

from changedet.cli._common import echo_json


def collect(band_counts: tuple[int, ...] = (3, 13)) -> dict[str, Any]:
    """Architectures (with default kwargs and parameter counts per band count) and bundled checkpoints."""
    import torch

    from changedet.models import count_parameters, create_model, list_models
    from changedet.models.bundled import DEFAULT_FOR, WEIGHTS_DIR, list_bundled

    architectures = []
    with torch.device("meta"):  # no memory, no initialisation cost: only shapes are needed to count parameters
        for name in list_models():
            params = {str(c): count_parameters(create_model(name, in_channels=c)) for c in band_counts}
            model = create_model(name, in_channels=band_counts[0])
            doc = (type(model).__doc__ or "").strip().splitlines()
            architectures.append({"name": name, "metric": bool(model.is_metric), "parameters": params,
                                  "summary": doc[0] if doc else "", "defaults": model.config})
    bundled = [
        {"name": m.name, "architecture": m.architecture, "bands": m.in_channels, "band_names": m.band_names,
         "pixel_size": m.pixel_size, "threshold": m.threshold, "metrics": m.metrics, "description": m.description,
         "default_for": DEFAULT_FOR.get(m.name or ""), "path": str(WEIGHTS_DIR / f"{m.name}.safetensors")}
        for m in list_bundled()
    ]
    return {"architectures": architectures, "bundled": bundled}


_SHOWN = ("f1", "precision", "recall", "iou", "kappa")


def _fmt_metrics(metrics: dict[str, Any]) -> str:
    """The headline validation scores (in %), and where they were measured; `--json` has every figure."""
    parts = [f"{k} {100 * metrics[k]:.1f}" for k in _SHOWN if isinstance(metrics.get(k), (int, float))]
    where = metrics.get("calibrated_on") or "validation"
    scenes = metrics.get("scenes")
    if isinstance(scenes, list) and scenes:
        where = f"{where}: {', '.join(map(str, scenes))}"
    return (", ".join(parts) + f" ({where})") if parts else "-"


@click.command("models")
@click.option("--json", "as_json", is_flag=True, help="Print JSON on stdout.")
def command(as_json: bool) -> None:
    """List the model architectures and the bundled checkpoints (bands, metrics, threshold)."""
    info = collect()
    if as_json:
        echo_json(info)
        return
    click.echo("Architectures (parameters at 3 / 13 bands):")
    for a in info["architectures"]:
        p = a["parameters"]
        kind = " [metric]" if a["metric"] else ""
        click.echo(f"  {a['name']:<14} {p['3'] / 1e6:6.2f} M / {p['13'] / 1e6:6.2f} M{kind}  {a['summary']}")
    click.echo("")
    if not info["bundled"]:
        click.echo("Bundled checkpoints: none in this installation (train one with `changedet train`).")
        return
    click.echo("Bundled checkpoints:")
    for b in info["bundled"]:
        px = "?" if b["pixel_size"] is None else f"{b['pixel_size']:g} m"
        click.echo(f"  {b['name']:<12} {b['architecture']:<13} {b['bands']} bands, {px}, threshold "
                   f"{b['threshold']:.3f}, {_fmt_metrics(b['metrics'])}  {b['description']}")
        use = f"default for {b['default_for']}" if b["default_for"] else f"used when named: --model {b['name']}"
        click.echo(f"  {'':<12} {use}")
