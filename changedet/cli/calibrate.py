"""``changedet calibrate CHECKPOINT -o OUT``: make a checkpoint's outputs calibrated probabilities (Platt scaling)."""

from __future__ import annotations

from pathlib import Path

import click

from changedet.cli._common import echo_json


@click.command("calibrate")
@click.argument("checkpoint", type=click.Path(path_type=Path))
@click.option("-o", "--out", "out", type=click.Path(path_type=Path), required=True,
              help="Where to write the calibrated checkpoint (.safetensors; its .json is written beside it).")
@click.option("--overwrite", is_flag=True, help="Replace OUT if it exists (OUT may be CHECKPOINT itself).")
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda or cuda:N.")
@click.option("--threads", type=int, default=None, help="Torch threads (default: torch's).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def command(checkpoint: Path, out: Path, overwrite: bool, device: str, threads: int | None, as_json: bool) -> None:
    """Fit Platt scaling of CHECKPOINT's probabilities on its validation scenes and write OUT.

    The validation scenes are those of the checkpoint's training config (read again from disk). The calibration
    is folded into the network's last layer, so `changedet detect --model OUT` writes probabilities that match
    observed change frequencies on those scenes; the threshold is recalibrated and the F1 does not change.
    `changedet train` does this itself (probability_calibration: platt); this command is for older checkpoints.
    """
    from changedet.training import calibrate_checkpoint

    result = calibrate_checkpoint(checkpoint, out, overwrite=overwrite, device=device, threads=threads)
    if as_json:
        echo_json(result)
        return
    platt = result["probability_calibration"]
    b, a = platt["before"], platt["after"]
    click.echo(f"checkpoint   {result['checkpoint']}")
    click.echo(f"scenes       {', '.join(result['scenes'])}")
    click.echo(f"Platt        scale {platt['scale']:.4f}, bias {platt['bias']:.4f}")
    click.echo(f"ECE          {100 * b['ece']:.2f} % -> {100 * a['ece']:.2f} %   "
               f"(mean probability {100 * b['mean_probability']:.2f} % -> {100 * a['mean_probability']:.2f} %, "
               f"changed {100 * a['change_fraction']:.2f} %)")
    click.echo(f"log loss     {b['nll']:.4f} -> {a['nll']:.4f}   Brier {b['brier']:.4f} -> {a['brier']:.4f}")
    click.echo(f"threshold    {result['threshold_before']:.4f} -> {result['threshold']:.4f}   "
               f"F1 {100 * result['f1_before']:.2f} -> {100 * result['f1']:.2f}")
