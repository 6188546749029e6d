"""``changedet batch PAIRS.csv -o OUTDIR``: detect over many pairs on a Dask cluster
(calls :func:`changedet.distributed.run_batch`).

The detect options are those of ``changedet detect`` (taken from that command, so the two cannot drift apart),
except the ones the batch sets itself (output folder, overwrite/resume, threads).
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any

import click

from changedet.cli._common import echo_json, quiet
from changedet.cli.detect import command as _detect_command
from changedet.distributed import DEFAULT_BLOCK_PIXELS, DEFAULT_BLOCK_ROWS

# detect parameters that the batch does not take (it sets them per pair, or they concern several dates)
_EXCLUDED = {"rasters", "output_dir", "overwrite", "resume", "mode", "keep_order", "as_json", "threads"}


def _run(pairs_csv: Path, output_dir: Path, scheduler: str | None, workers: int | None, threads_per_worker: int,
         retries: int, overwrite: bool, block_pixels: int, block_rows: int, dashboard_address: str,
         as_json: bool, **options: Any) -> None:
    """Run detect over the BEFORE/AFTER pairs listed in PAIRS_CSV on a Dask cluster; one folder per pair in OUTDIR.

    PAIRS_CSV has a header with the columns 'before' and 'after' (paths, relative to the CSV's folder, or URLs
    GDAL can open) and optionally 'name' (the pair's output folder; default: derived from the file names). A local
    cluster of --workers processes is started unless --scheduler gives a running one (inputs and OUTDIR must then
    be reachable from every worker under the same paths).

    Each pair ends done, failed (after --retries more attempts; the others go on) or skipped (its report.json
    exists: a re-run resumes where the last one stopped). The summary table goes to stdout and
    OUTDIR/batch-report.json is updated after every pair. Scenes larger than --block-pixels are split into row
    blocks of --block-rows rows processed on different workers and merged seamlessly. Exit code 1 when any pair
    failed.
    """
    from changedet.distributed import _check_options as check_batch_options
    from changedet.distributed import _require_distributed, dashboard_link, open_client, read_pairs, run_batch
    from changedet.export.vector import geojson_crs_option

    options["geojson_crs"] = geojson_crs_option(options.pop("geojson_crs"))
    read_pairs(pairs_csv)  # validate the CSV before starting a cluster
    check_batch_options({k: v for k, v in options.items() if v is not None}, local=scheduler is None)  # detect's
    show = not quiet()
    ctx = click.get_current_context()
    verbose = int((ctx.find_root().obj or {}).get("verbose", 0))
    _require_distributed()  # a clear error if it is missing; importing it also sets up its loggers
    if not verbose:  # Dask logs its life cycle at INFO; keep stderr for our progress unless -v
        logging.getLogger("distributed").setLevel(logging.WARNING)
    with open_client(scheduler, n_workers=workers, threads_per_worker=1, dashboard_address=dashboard_address,
                     silence_logs=logging.INFO if verbose else logging.CRITICAL) as client:
        if show:  # -q: only the warnings, errors and the summary
            n_workers = len(client.scheduler_info().get("workers", {}))
            link = dashboard_link(client)
            click.echo(f"dask: {n_workers} workers at {client.scheduler.address}; "  # type: ignore[union-attr]
                       f"dashboard: {link or 'not served (install bokeh>=3.1)'}", err=True)
        finished = 0

        def _update(rec: dict[str, Any], report: Any) -> None:
            nonlocal finished
            finished += 1
            total = len(report.pairs) - report.counts["skipped"]
            if show:
                extra = (f" {rec['error']['type']}: {rec['error']['message']}" if rec["status"] == "failed"
                         else f" {rec.get('seconds', 0):.1f} s")
                click.echo(f"[{finished}/{total}] {rec['status']} {rec['name']}{extra}", err=True)

        try:
            report = run_batch(pairs_csv, output_dir, client=client, retries=retries, overwrite=overwrite,
                               block_pixels=block_pixels, block_rows=block_rows, on_update=_update,
                               threads=threads_per_worker, **options)
        except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM (changedet.errors.Terminated)
            from changedet.errors import exit_code_for

            click.echo("interrupted: the pairs finished so far are in place; a pair that was running keeps its "
                       "finished blocks in its hidden .changedet-partial folder: run the same command again to "
                       "continue (finished pairs are skipped, interrupted ones resume)", err=True)
            raise SystemExit(exit_code_for(exc)) from None
    if as_json:
        echo_json(report.to_dict())
    else:
        click.echo(report.table())
        click.echo(f"report: {report.path}")
    if report.write_error is not None:
        click.echo(f"error: {report.write_error}", err=True)
    if report.counts["failed"]:
        c = report.counts
        click.echo(f"error: {c['failed']} of {len(report.pairs)} pairs failed; see {report.path}", err=True)
    if report.exit_code:
        click.get_current_context().exit(report.exit_code)


_batch_params: list[click.Parameter] = [
    click.Argument(["pairs_csv"], type=click.Path(exists=True, dir_okay=False, path_type=Path)),
    click.Option(["-o", "--output-dir"], required=True, type=click.Path(file_okay=False, path_type=Path),
                 help="Batch folder: one sub-folder per pair, and batch-report.json."),
    click.Option(["--scheduler"], default=None, metavar="ADDRESS",
                 help="Use a running Dask scheduler, e.g. tcp://host:8786 (default: start a local cluster)."),
    click.Option(["--workers"], type=click.IntRange(1, 1024), default=None,
                 help="Worker processes of the local cluster (default: one per CPU core, at most 8)."),
    click.Option(["--threads-per-worker"], type=click.IntRange(1, 512), default=1, show_default=True,
                 help="torch threads of each pair's model (each worker runs one pair at a time)."),
    click.Option(["--retries"], type=click.IntRange(0, 100), default=2, show_default=True,
                 help="Run a failed pair again this many times before reporting it failed."),
    click.Option(["--overwrite"], is_flag=True, help="Recompute every pair (default: skip pairs already done)."),
    click.Option(["--block-pixels"], type=click.IntRange(0), default=DEFAULT_BLOCK_PIXELS, show_default=True,
                 help="Split scenes larger than this (pixels) into row blocks over the workers; 0 never splits."),
    click.Option(["--block-rows"], type=click.IntRange(1), default=DEFAULT_BLOCK_ROWS, show_default=True,
                 help="Rows per block of a split scene."),
    click.Option(["--dashboard-address"], default=":8787", show_default=True,
                 help="Where the local cluster serves the Dask dashboard (':0' for any free port)."),
    click.Option(["--json", "as_json"], is_flag=True, help="Print the batch report as JSON instead of the table."),
]

command = click.Command(
    "batch",
    callback=_run,
    params=_batch_params + [copy.copy(p) for p in _detect_command.params if p.name not in _EXCLUDED],
    help=_run.__doc__,
    short_help="Detect over many pairs (CSV) on a Dask cluster.",
)
