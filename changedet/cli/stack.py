"""``changedet stack DIR -o OUT.tif``: one multi-band GeoTIFF from a folder of single-band files."""

from __future__ import annotations

import os
from pathlib import Path

import click

from changedet.cli._common import echo_json, quiet


@click.command("stack")
@click.argument("inputs", metavar="FOLDER | FILE...", nargs=-1, required=True, type=click.Path(path_type=Path))
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
def command(inputs: tuple[Path, ...], out: Path, resampling: str, interleave: str, overwrite: bool,
            as_json: bool) -> None:
    """Stack the single-band rasters of FOLDER (or the FILEs given) into OUT on the finest grid.

    \b
    FOLDER may be:
    - a folder of single-band files, e.g. an OSCD city's imgs_1 folder;
    - a Sentinel-2 product as ESA delivers it: the .SAFE folder, one of its
      GRANULE/<name> folders or its IMG_DATA folder, or the downloaded .zip,
      read in place (L1C: 13 bands; L2A: 12, no B10, each band from its
      finest R10m/R20m/R60m file; an R10m/R20m/R60m folder alone gives only
      that resolution's bands, with a warning);
    - a Landsat scene folder: USGS Collection 2 (LC09_L2SP_..., LC08_L1TP_...),
      Earth Engine exports (LT05_199026_20110615_B1.tif) or band files beside
      an MTL.txt: the reflective 30 m bands under Landsat's own names (SR_B1..
      or B1..), without the panchromatic, thermal and QA layers.

    Sentinel-2 bands (file names ending in B01..B12 or B8A) are ordered as on the sensor (B01 B02 B03 B04 B05 B06
    B07 B08 B8A B09 B10 B11 B12); the layers that are not reflectance bands (TCI, AOT, WVP, SCL, QA..., shown with
    -v) are left out; 0 is nodata for Sentinel-2 (16-bit) and Landsat bands. Other files are ordered naturally (or
    as given) and named after their file names. The grid is that of the band with the finest pixel in metres; bands
    in another CRS are reprojected onto it, with a warning.

    Band names become band descriptions. The ACQUISITION_DATE tag is the date in OSCD's dates.txt beside an
    imgs_1/imgs_2 folder, else the sensing date of the Sentinel-2 product (its metadata or product name) or of the
    Landsat MTL file, else the first date in the file names, else in the folder name. The SPACECRAFT_ID tag names
    the sensor where the files tell it (LANDSAT_5, LANDSAT_8, SENTINEL_2A, ...). OUT is a tiled, compressed
    Cloud-Optimised GeoTIFF written atomically, band-interleaved unless --interleave pixel.

    Several FILEs instead of a FOLDER stack exactly those files (e.g. to pick one of two files of a band).
    """
    from changedet.io.raster import raster_info
    from changedet.io.stack import stack_bands

    def progress(done: int, total: int) -> None:
        if not quiet():
            click.echo(f"  band {done}/{total}", err=True)

    one = inputs[0]
    if len(inputs) == 1 and (one.is_dir() or not one.exists() or one.suffix.lower() == ".zip"):
        path = stack_bands(one, out, overwrite=overwrite, resampling=resampling, interleave=interleave,
                           progress=progress)
    else:
        parent = Path(os.path.commonpath([os.path.abspath(p.parent) for p in inputs]))
        path = stack_bands(parent, out, files=list(inputs), overwrite=overwrite, resampling=resampling,
                           interleave=interleave, progress=progress)
    info = raster_info(path)
    if as_json:
        echo_json(info.to_dict())
        return
    click.echo(
        f"wrote {path}: {info.count} bands ({', '.join(info.band_names())}), {info.width} x {info.height} px, "
        f"pixel {info.res[0]:.6g} x {info.res[1]:.6g}, date {info.date or 'unknown'}"
    )
