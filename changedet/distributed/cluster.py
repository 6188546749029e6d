"""The Dask side: importing ``distributed`` with a clear error when it is missing, the client
(:func:`open_client`: a running scheduler or a LocalCluster) and its dashboard, and the worker a task runs on."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from changedet.errors import InputError

if TYPE_CHECKING:  # pragma: no cover
    from distributed import Client


def _require_distributed() -> Any:
    """Import ``distributed`` or raise an InputError saying how to install it."""
    try:
        import distributed
    except ImportError as exc:
        raise InputError(
            f"dask.distributed is not installed ({exc}); batch and block-split detection need it: "
            "pip install 'changedet[distributed]'"
        ) from exc
    return distributed


def _worker_address() -> str | None:
    try:
        from distributed import get_worker

        return str(get_worker().address)
    except (ImportError, ValueError):
        return None


@contextlib.contextmanager
def open_client(scheduler: str | None = None, *, n_workers: int | None = None, threads_per_worker: int = 1,
                dashboard_address: str = ":8787", silence_logs: int | bool = logging.WARNING) -> Iterator[Client]:
    """A ``distributed.Client``: connected to ``scheduler``, or to a new LocalCluster closed on exit.

    Parameters
    ----------
    scheduler
        Address of a running scheduler (``tcp://host:8786``); None starts a :class:`distributed.LocalCluster`
        of ``n_workers`` worker processes with ``threads_per_worker`` threads each.
    n_workers
        Worker processes of the LocalCluster (default: one per CPU core, at most 8).
    threads_per_worker
        Dask threads of each LocalCluster worker (pairs a worker runs at once).
    dashboard_address
        Where the LocalCluster serves its dashboard (``":0"`` for any free port).
    silence_logs
        Log level of the LocalCluster's workers (False leaves Dask's logging configuration alone).
    """
    distributed = _require_distributed()
    if scheduler:
        try:
            client = distributed.Client(scheduler, timeout="20s")
        except OSError as exc:
            raise InputError(
                f"cannot connect to the Dask scheduler at {scheduler} ({exc}); start one with `dask scheduler` "
                "(and workers with `dask worker " + scheduler + "`) or leave out --scheduler for a local cluster"
            ) from exc
        with client:
            yield client
        return
    n = n_workers or max(1, min(8, os.cpu_count() or 1))
    with distributed.LocalCluster(n_workers=n, threads_per_worker=threads_per_worker, processes=True,
                                  dashboard_address=dashboard_address, silence_logs=silence_logs) as cluster, \
            distributed.Client(cluster) as client:
        yield client


def dashboard_link(client: Any) -> str | None:
    """The dashboard URL of the client's scheduler, or None when it serves none (bokeh missing)."""
    try:
        if "dashboard" not in client.scheduler_info().get("services", {}):
            return None
        return str(client.dashboard_link)
    except Exception:  # noqa: BLE001 - informative only
        return None
