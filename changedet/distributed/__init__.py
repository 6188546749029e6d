"""Past one machine with Dask: change detection over many pairs, and over scenes too large for one worker.

* :func:`run_batch` runs :func:`changedet.api.detect` over the pairs of a CSV (:func:`read_pairs`) on a
  ``dask.distributed`` cluster, one task per pair, each in its own output folder. Failed pairs are retried (Dask
  ``retries``) and never stop the others; pairs whose outputs are complete (``report.json`` present) are skipped,
  so a re-run resumes where the last one stopped (a pair whose ``report.json`` names other input files than its
  row now does fails with a message, rather than passing off those outputs as its own). ``batch-report.json`` in the output folder is rewritten
  (atomically) after every pair, so a killed run leaves an accurate report.
* :func:`detect_blocks` runs :func:`~changedet.api.detect` on one very large scene whose row blocks
  (:func:`plan_blocks`) are predicted on different workers, with the tiles above and below each block as halo, and
  merged into the usual Cloud-Optimised GeoTIFFs before vectorising once. The result is bit-identical to a
  single-process ``detect`` (same tiles, same order, same blending sums) with ``batch_size=1``.
* Each worker loads a model once and keeps it (:func:`model_cache_info`); the tasks use it through
  :func:`changedet.api.detect` unchanged.

The cluster is a :class:`distributed.LocalCluster` by default (:func:`open_client`), or any running one
(``dask scheduler`` and ``dask worker`` processes, ``Client("tcp://host:8786")``); input rasters and the output
folder must then be reachable under the same paths (or URLs) from every worker.

Dask is an optional dependency (``pip install 'changedet[distributed]'``): it is imported only when needed, and a
missing installation raises :class:`~changedet.errors.InputError` saying how to install it.

The code lives in :mod:`changedet.distributed.pairs` (the pairs CSV), :mod:`~changedet.distributed.cluster` (the
Dask client), :mod:`~changedet.distributed.blocks` (block-split scenes), :mod:`~changedet.distributed.report`
(``batch-report.json``) and :mod:`~changedet.distributed.batch` (:func:`run_batch`); every name is importable from
here.
"""

from __future__ import annotations

import logging

from changedet.distributed.batch import DEFAULT_BLOCK_PIXELS as DEFAULT_BLOCK_PIXELS
from changedet.distributed.batch import PairFailedError, model_cache_info, run_batch
from changedet.distributed.batch import _check_options as _check_options
from changedet.distributed.blocks import DEFAULT_BLOCK_ROWS as DEFAULT_BLOCK_ROWS
from changedet.distributed.blocks import Block, detect_blocks, plan_blocks
from changedet.distributed.cluster import _require_distributed as _require_distributed
from changedet.distributed.cluster import dashboard_link, open_client
from changedet.distributed.pairs import BatchPair, read_pairs
from changedet.distributed.report import BATCH_REPORT, BatchReport

log = logging.getLogger(__name__)

__all__ = [
    "BATCH_REPORT",
    "BatchPair",
    "BatchReport",
    "Block",
    "PairFailedError",
    "dashboard_link",
    "detect_blocks",
    "model_cache_info",
    "open_client",
    "plan_blocks",
    "read_pairs",
    "run_batch",
]
