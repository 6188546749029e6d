"""``changedet stack DIR -o OUT.tif``: one multi-band GeoTIFF from a folder of single-band files."""

from __future__ import annotations

from pathlib import Path

import click

from changedet.cli._common import echo_json, quiet


@click.command("stack")
@click.argument("folder", type=click.Path(path_type=Path))
@click.option("-o", "--out", "out", required=True, type=click.Path(path_type=Path), help="Output GeoTIFF.")
@click.option(
    "--resampling",
    default="bilinear",
    show_default=True,
    type=click.Choice(["nearest", "bilinear", "cubic", "average"]),
    help="How coarser bands are resampled onto the finest grid.",
)
@click.option(
    "--interleave",
    default="band",
    show_default=True,
    type=click.Choice(["band", "pixel"]),
    help="TIFF layout: band (a block holds one band: reading 3 of 13 bands decodes 3, so the default true-colour "
    "model reads 2-3x faster) or pixel (a block holds all bands: faster for a model that reads every band).",
)
@click.option("--overwrite", is_flag=True, help="Replace OUT if it exists.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary on stdout.")
def command(folder: Path, out: Path, resampling: str, interleave: str, overwrite: bool, as_json: bool) -> None:
    """Stack the single-band rasters of FOLDER into OUT on the finest grid.

    Sentinel-2 bands (file names ending in B01..B12 or B8A, e.g. an OSCD city's imgs_1 folder) are ordered as on
    the sensor (B01 B02 B03 B04 B05 B06 B07 B08 B8A B09 B10 B11 B12); other files are ordered naturally and named
    after their file names. Band names become band descriptions, the date found in the file names becomes the
    ACQUISITION_DATE tag. OUT is a tiled, compressed Cloud-Optimised GeoTIFF written atomically, band-interleaved
    unless --interleave pixel.

    FOLDER may also be a Sentinel-2 .SAFE product (L1C: 13 bands; L2A: 12, no B10), one of its GRANULE/<name>
    folders or its IMG_DATA folder: the finest file of each band is stacked and 0 is the nodata value.
    """
    from changedet.io.raster import raster_info
    from changedet.io.stack import stack_bands

    def progress(done: int, total: int) -> None:
        if not quiet():
            click.echo(f"  band {done}/{total}", err=True)

    path = stack_bands(folder, out, overwrite=overwrite, resampling=resampling, interleave=interleave,
                       progress=progress)
    info = raster_info(path)
    if as_json:
        echo_json(info.to_dict())
        return
    click.echo(
        f"wrote {path}: {info.count} bands ({', '.join(info.band_names())}), {info.width} x {info.height} px, "
        f"pixel {info.res[0]:.6g} x {info.res[1]:.6g}, date {info.date or 'unknown'}"
    )
