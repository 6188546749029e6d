"""``changedet calibrate CHECKPOINT -o OUT``: make a checkpoint's outputs calibrated probabilities (Platt scaling)."""

from __future__ import annotations

from pathlib import Path

import click

from changedet.cli._common import echo_json


@click.command("calibrate")
@click.argument("checkpoint", type=click.Path(path_type=Path))
@click.option("-o", "--out", "out", type=click.Path(path_type=Path), required=True,
              help="Where to write the calibrated checkpoint (.safetensors; its .json is written beside it).")
@click.option("--scenes", "scenes", type=click.Path(path_type=Path), default=None,
              help="Calibrate on these labelled scenes instead of the checkpoint's validation split: a CSV or YAML "
                   "list (UTF-8) with columns name, before, after, label (paths relative to the list; binary labels "
                   "0/1, 0/255 or OSCD's 1/2, their nodata pixels left out unless nodata is a class value, such as 0 "
                   "of a 0/255 mask): the `list` dataset of `changedet train`.")
@click.option("--overwrite", is_flag=True, help="Replace OUT if it exists (OUT may be CHECKPOINT itself).")
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda or cuda:N.")
@click.option("--threads", type=click.IntRange(1, 512), default=None, help="Torch threads, 1 to 512 (default: torch's).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def command(checkpoint: Path, out: Path, scenes: Path | None, overwrite: bool, device: str, threads: int | None,
            as_json: bool) -> None:
    """Fit Platt scaling of CHECKPOINT's probabilities and its threshold on labelled scenes, and write OUT.

    CHECKPOINT is a checkpoint file or a bundled model's name (`s2-13band`...). By default the scenes are the
    validation scenes of the checkpoint's training config (read again from disk); with `--scenes LIST` they are
    your own labelled pairs, e.g. to fit a bundled model's threshold to your area (the best threshold of these
    models differs between scenes by a factor of 2-10, see the README). The calibration is folded into the
    network's last layer, so `changedet detect --model OUT` writes probabilities that match observed change
    frequencies on those scenes, and the threshold is searched again (F1-optimal); the ranking of the pixels does
    not change. With two or more scenes, each is also scored at the threshold calibrated on the others.
    """
    from changedet.errors import UnknownModelError
    from changedet.models.bundled import bundled_path, list_bundled
    from changedet.models.checkpoint import checkpoint_paths
    from changedet.training import calibrate_checkpoint

    bundled = [m.name for m in list_bundled()]
    if not checkpoint.exists() and checkpoint.name in bundled:
        checkpoint = bundled_path(checkpoint.name)
    elif (not checkpoint.is_dir() and not any(p.is_file() for p in checkpoint_paths(checkpoint))
          and checkpoint.name == str(checkpoint) and not checkpoint.suffix):  # a bare name: not a path's typo
        raise UnknownModelError(str(checkpoint), bundled, what="bundled model")
    val_scenes = None
    if scenes is not None:
        from changedet.data import read_list

        val_scenes = read_list(scenes)
    result = calibrate_checkpoint(checkpoint, out, val_scenes=val_scenes, overwrite=overwrite, device=device,
                                  threads=threads)
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
    recorded = result.get("recorded_threshold")
    if recorded is not None and result.get("recorded_f1_here") is not None:
        click.echo(f"at the checkpoint's own threshold {recorded:.4f}: F1 {100 * result['recorded_f1_here']:.2f}")
    cross = result.get("cross_calibrated")
    if cross:
        click.echo(f"others' threshold  pooled F1 {100 * (cross['pooled'].get('f1') or 0):.2f}   (each scene at the "
                   "threshold calibrated on the others)")
