"""``changedet info RASTER``: what changedet sees in a raster (grid, bands, nodata, date, layout)."""

from __future__ import annotations

from pathlib import Path

import click

from changedet.cli._common import RASTER, echo_json


@click.command("info")
@click.argument("raster", type=RASTER)
@click.option("--json", "as_json", is_flag=True, help="Print the metadata as JSON on stdout.")
def command(raster: Path, as_json: bool) -> None:
    """Describe RASTER: size, bands and their names, CRS, pixel size (also in metres), bounds, nodata,
    acquisition date (from tags or the file name), tiling, compression and overviews.

    Exit status 2 when RASTER cannot be read (missing, empty, corrupt, not a raster); the message says why.
    """
    from changedet.io.alignment import pixel_size_m
    from changedet.io.raster import open_raster, raster_info

    with open_raster(raster) as ds:
        info = raster_info(ds)
    size_m = pixel_size_m(info.crs, info.transform, info.width, info.height)
    wgs84 = None
    if info.crs is not None:
        from rasterio.warp import transform_bounds

        try:
            wgs84 = [
                round(v, 7) for v in transform_bounds(info.crs, "EPSG:4326", *info.bounds, densify_pts=21)
            ]
        except Exception:  # noqa: BLE001 - informative only
            wgs84 = None
    if as_json:
        out = info.to_dict()
        out["pixel_size_m"] = list(size_m) if size_m else None
        out["bounds_wgs84"] = wgs84
        out["band_names"] = info.band_names()
        echo_json(out)
        return
    from changedet.io.raster import crs_to_string

    click.echo(f"{info.path}")
    click.echo(f"  driver        {info.driver}")
    click.echo(f"  size          {info.width} x {info.height} px, {info.count} band(s)")
    click.echo(f"  crs           {crs_to_string(info.crs) or 'none (pixel coordinates)'}")
    if info.georeferenced:
        metres = f" (~{size_m[1]:.3g} x {size_m[0]:.3g} m)" if size_m and info.is_geographic else ""
        click.echo(f"  pixel size    {info.res[0]:.6g} x {info.res[1]:.6g}{metres}")
        click.echo(f"  bounds        {', '.join(f'{v:.6f}' for v in info.bounds)}")
        if wgs84 and not info.is_geographic:
            click.echo(f"  bounds WGS84  {', '.join(f'{v:.6f}' for v in wgs84)}")
    click.echo(f"  nodata        {info.nodata}")
    if info.mask:  # detect reads it as nodata (pixels outside it are not compared)
        click.echo(f"  mask          {info.mask} (pixels outside it are nodata)")
    date = f"{info.date} (from {info.date_source})" if info.date else "unknown"
    click.echo(f"  date          {date}")
    if info.tiled is not None:
        layout = "tiled" if info.tiled else "striped"
    else:  # drivers that do not say: blocks a row high (or as wide as the image) are strips
        tiled_blocks = bool(info.block_shapes) and info.block_shapes[0][0] > 1
        layout = "tiled" if tiled_blocks and info.block_shapes[0][1] < info.width else "striped"
    click.echo(
        f"  layout        {layout}, blocks {info.block_shapes[0][1]}x{info.block_shapes[0][0]}, "
        f"compression {info.compression or 'none'}, overviews {list(info.overviews) or 'none'}"
        + (f", {info.interleave}-interleaved" if info.interleave else "")
    )
    click.echo("  bands")
    colours = list(info.colorinterp) if len(info.colorinterp) == info.count else [""] * info.count
    for i, (name, dtype, colour) in enumerate(zip(info.band_names(), info.dtypes, colours, strict=True), start=1):
        # GDAL's colour interpretation where it says something (red, green, blue, alpha: detect's validity mask)
        shown = "" if colour in ("", "undefined", "gray", "grey") else f"  {colour}"
        click.echo(f"    {i:>3}  {name:<12} {dtype}{shown}")
    if info.tags:
        click.echo("  tags")
        for key, value in sorted(info.tags.items()):
            click.echo(f"    {key} = {value}")
