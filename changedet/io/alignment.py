"""Can BEFORE and AFTER be compared, and how: pair checks and the common grid.

:func:`check_pair` inspects two rasters and collects every problem (the pair cannot be compared) and every warning
(it can, with a caveat) in a :class:`PairReport`. :func:`open_pair` (alias :func:`align`) returns an
:class:`AlignedPair`: AFTER on BEFORE's pixel grid, clipped to the common extent, read window by window.

The common grid is BEFORE's grid (its CRS, pixel size and pixel edges), restricted to the part AFTER covers.
BEFORE is never resampled. AFTER is read directly when it already lies on that grid (same CRS and pixel size,
origin an integer number of pixels away); otherwise it goes through a :class:`rasterio.vrt.WarpedVRT` (bilinear for
imagery by default; use ``resampling="nearest"`` for masks and classes) and a
:class:`~changedet.errors.ReprojectedInputWarning` says why.

This module holds the two entry points and the checks that read pixels (validity, zero fill, residual shift). The
report is :mod:`changedet.io.pair_report`, the header checks and the common-grid plan are
:mod:`changedet.io.pair_analysis`, and :class:`AlignedPair` is :mod:`changedet.io.aligned_pair`; their public
names stay importable from here.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from typing import TYPE_CHECKING, Any, TypeAlias

import numpy as np
from rasterio.io import DatasetReader

from changedet.errors import (
    CoregistrationWarning,
    InputError,
    NoOverlapError,
    NothingToCompareWarning,
    PairWarning,
    RasterReadError,
)
from changedet.io.aligned_pair import AlignedPair, _needs_mask, _read_masked, pixel_size_m  # noqa: F401
from changedet.io.coregister import COREGISTRATION_WARN_PX, estimate_pair_shift
from changedet.io.pair_analysis import Indexes, _analyze
from changedet.io.pair_report import PairReport, _pct
from changedet.io.raster import ensure_open, open_raster

if TYPE_CHECKING:  # pragma: no cover
    import xarray

__all__ = ["AlignedPair", "PairReport", "align", "check_pair", "open_pair", "pixel_size_m"]

#: What :func:`check_pair` and :func:`open_pair` accept for BEFORE and AFTER (an ``xarray.DataArray`` with a CRS,
#: from rioxarray, is written to a temporary GeoTIFF first, as :func:`changedet.detect` does).
PathOrDataset: TypeAlias = "str | os.PathLike[str] | DatasetReader | xarray.DataArray"

_MIN_VALID_WARN = 0.5


# --------------------------------------------------------------------------------------------------------------
# Public API


def check_pair(
    before: PathOrDataset,
    after: PathOrDataset,
    *,
    indexes: Indexes = None,
    estimate_shift: bool = True,
    resampling: str = "bilinear",
) -> PairReport:
    """Inspect a BEFORE/AFTER pair and collect every problem and warning, without raising.

    Checked: that both files open (missing, corrupt, ...), georeferencing, CRS, pixel size and grid offset,
    extent and overlap fraction, band count and data type (after ``indexes``), band names, nodata, dates, the share
    of the common grid that is valid in both dates, and (when the pair can be aligned and ``estimate_shift``) the
    residual co-registration shift, warned about above half a pixel.

    Parameters
    ----------
    before, after
        Paths, open rasterio datasets, or ``xarray.DataArray`` objects of (band, y, x) with a CRS (rioxarray),
        written to temporary GeoTIFFs (``before.tif``, ``after.tif``, the names in the messages) that are removed
        before this returns.
    indexes
        1-based band indexes used in both dates, or a pair ``([...], [...])`` of lists for BEFORE and AFTER.
    estimate_shift
        Estimate the residual shift by phase correlation (reads one window of up to 512 x 512 pixels).
    resampling
        Resampling named in the report when AFTER must be resampled.

    Returns
    -------
    PairReport
        ``report.ok`` is False when the pair cannot be compared; ``report.problems`` says why.

    Examples
    --------
    >>> import tempfile
    >>> from changedet.testing import make_pair
    >>> before, after = make_pair(tempfile.mkdtemp(), "band-mismatch")
    >>> report = check_pair(before, after)
    >>> report.ok, "4 band(s)" in report.problems[0]
    (False, True)
    """
    report = PairReport(before=_name(before, "before"), after=_name(after, "after"))
    try:
        before, after, xr_tmp = _written_dataarrays(before, after)
    except InputError as exc:  # a DataArray that cannot be written (no spatial dims, no CRS beside one, ...)
        report.problem(str(exc), type(exc))
        return report
    opened: list[DatasetReader] = []
    try:
        datasets: list[DatasetReader | None] = []
        for src in (before, after):
            if isinstance(src, DatasetReader):
                try:
                    ensure_open(src)
                except RasterReadError as exc:
                    report.problem(str(exc), RasterReadError)
                    datasets.append(None)
                    continue
                datasets.append(src)
                continue
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    ds = open_raster(src)
            except RasterReadError as exc:
                report.problem(str(exc), RasterReadError)
                datasets.append(None)
                continue
            opened.append(ds)
            datasets.append(ds)
        if any(d is None for d in datasets):
            return report
        ds_b, ds_a = datasets
        full, plan = _analyze(ds_b, ds_a, indexes, resampling)
        if xr_tmp is not None:  # not the temporary files, removed on return
            full.before, full.after = report.before, report.after
        if plan is None or not full.ok:
            return full
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pair = AlignedPair(ds_b, ds_a, plan, full, resampling=resampling)
        try:
            _assess_validity(pair, full)
            if estimate_shift and full.ok:
                _assess_shift(pair, full)
        finally:
            pair.close()
        return full
    finally:
        for ds in opened:
            ds.close()
        if xr_tmp is not None:
            xr_tmp.cleanup()


def _name(src: Any, which: str) -> str:
    """What an input is called in a report: its path, an open dataset's name, ``before (xarray.DataArray)``."""
    from changedet._xarray import is_xarray

    if isinstance(src, DatasetReader):
        return str(src.name)
    if isinstance(src, (str, os.PathLike)):
        return str(os.fspath(src))
    if is_xarray(src):
        return f"{which} (xarray.DataArray)"
    return str(getattr(src, "name", None) or f"{which} ({type(src).__name__})")


def _written_dataarrays(before: Any, after: Any) -> tuple[Any, Any, tempfile.TemporaryDirectory[str] | None]:
    """BEFORE and AFTER with each ``xarray.DataArray`` written to a GeoTIFF in a new temporary folder (returned,
    None without DataArrays; the caller removes it), as :func:`changedet.detect` does.

    Raises
    ------
    InputError
        A DataArray cannot be written (see :func:`changedet._xarray.write_dataarrays`); nothing is left behind.
    """
    from changedet._xarray import XARRAY_TMP_PREFIX, is_xarray, write_dataarrays

    if not (is_xarray(before) or is_xarray(after)):
        return before, after, None
    tmp = tempfile.TemporaryDirectory(prefix=XARRAY_TMP_PREFIX)
    try:
        written = write_dataarrays([before, after], tmp.name, ["before", "after"])
    except BaseException:
        tmp.cleanup()
        raise
    return written[0], written[1], tmp


#: Share of the compared pixels that may be 0 in every band of a date whose nodata is not 0 before a warning says
#: they look like undeclared fill.
ZERO_FILL_WARN = 0.01


def _assess_validity(pair: AlignedPair, report: PairReport, allow_empty: bool = False) -> None:
    try:
        before, after, valid = pair.read_decimated(max_pixels=512 * 512)
    except RasterReadError as exc:
        report.problem(str(exc), RasterReadError)
        return
    frac = float(valid.mean()) if valid.size else 0.0
    report.valid_fraction = frac
    for arr, ds, name in ((before, pair._ds_b, report.before), (after, pair._ds_a, report.after)):
        _warn_zero_fill(arr, valid, ds.nodata, name, report)
    if frac == 0.0:
        msg = (
            f"{report.before} / {report.after}: no pixel of the common grid is valid in both dates (nodata, NaN or "
            "outside a footprint everywhere): nothing to compare; check the nodata values and the extents."
        )
        if allow_empty:
            report.warn(msg, NothingToCompareWarning)
        else:
            report.problem(msg, NoOverlapError)
    elif frac < _MIN_VALID_WARN:
        report.warn(
            f"{report.before} / {report.after}: only {_pct(frac)} of the common grid is valid in both dates (nodata, "
            "NaN or outside a footprint elsewhere); results cover that part only.",
            PairWarning,
        )


def _warn_zero_fill(arr: np.ndarray, valid: np.ndarray, nodata: float | None, name: str, report: PairReport) -> None:
    """A warning when one block of compared pixels of one date, more than :data:`ZERO_FILL_WARN` of them, is exactly
    0 in every band while its nodata is not 0 (the share said is that block's): the
    fill of a swath edge or of an export without ``-a_nodata`` (a 0 is no Sentinel-2 or Landsat value). Compared as
    data, such pixels skew the date's normalisation and come out as change (a 100-column 0 strip in a 563-column
    OSCD scene doubled the changed share and lost half of the real change elsewhere)."""
    if nodata == 0 or not valid.any():
        return
    zero = (arr == 0).all(axis=0) & valid
    share = float(zero.sum()) / float(valid.sum())
    if share > ZERO_FILL_WARN:
        from scipy import ndimage

        # fill is one block (a swath edge, a footprint's outside); the zeros of an 8-bit export stretched with a
        # 2-98 % cut are dark water and shadow in hundreds of specks, which the warning's advice would blank
        labels, n = ndimage.label(zero)
        largest = int(np.bincount(labels.ravel())[1:].max()) if n else 0
        share = largest / float(valid.sum())
    if share > ZERO_FILL_WARN:
        declared = "declares no nodata" if nodata is None else f"declares nodata {nodata:g}"
        report.warn(
            f"{name}: a block of {_pct(share)} of the compared pixels is 0 in every band and the file {declared}: if "
            "it is fill (outside a swath or a footprint), its pixels are compared as data, skew the normalisation "
            f"and come out as change; declare 0 as nodata (`gdal_edit.py -a_nodata 0 {name}` in place, or `gdal_translate -of "
            "VRT -a_nodata 0` to a VRT beside it, the file untouched) and run again.",
            PairWarning,
        )


def _assess_shift(pair: AlignedPair, report: PairReport) -> None:
    try:
        shift = estimate_pair_shift(pair)
    except (ValueError, RasterReadError) as exc:
        report.notes.append(f"residual shift not estimated ({exc})")
        return
    report.shift = shift
    if shift is None:
        report.notes.append("residual shift not estimated (common grid under 32 x 32 valid pixels, or an image without texture: one value throughout)")
        return
    if not shift.reliable:
        report.notes.append(f"residual shift estimate unreliable (weak correlation): {shift.describe()}")
    elif shift.magnitude > COREGISTRATION_WARN_PX:
        report.warn(
            f"{report.after}: residual shift of {shift.describe()} relative to {report.before}, above "
            f"{COREGISTRATION_WARN_PX} px; edges will look like changes. Correct it with coregister=True "
            "(--coregister) or co-register the inputs.",
            CoregistrationWarning,
        )


def open_pair(
    before: PathOrDataset,
    after: PathOrDataset,
    *,
    indexes: Indexes = None,
    resampling: str = "bilinear",
    coregister: bool = False,
    match_histograms: bool = False,
    estimate_shift: bool = False,
    allow_empty: bool = False,
) -> AlignedPair:
    """Open BEFORE and AFTER on one grid: AFTER on BEFORE's grid, clipped to the common extent.

    Parameters
    ----------
    before, after
        Paths or open rasterio datasets (datasets passed in are not closed by the pair), or ``xarray.DataArray``
        objects of (band, y, x) with a CRS (rioxarray), written to temporary GeoTIFFs (``before.tif``,
        ``after.tif``) that the pair reads and removes when it is closed.
    indexes
        1-based band indexes for both dates, or ``([...], [...])`` for BEFORE and AFTER separately.
    resampling
        How AFTER is resampled when it is not on BEFORE's grid: ``"bilinear"`` (default, imagery) or
        ``"nearest"`` (masks, classes); any :class:`rasterio.enums.Resampling` name.
    coregister
        Estimate the residual translation by phase correlation and sample AFTER displaced by it.
    match_histograms
        Map AFTER's per-band value distribution onto BEFORE's (a quantile mapping fitted on a decimated read of the
        valid pixels, applied to each window, so it streams).
    estimate_shift
        Estimate the residual shift (stored in ``pair.report.shift``) without correcting it.
    allow_empty
        When no pixel is valid in both dates, warn (:class:`~changedet.errors.NothingToCompareWarning`) instead
        of raising :class:`~changedet.errors.NoOverlapError` (``detect`` then writes an empty result).

    Returns
    -------
    AlignedPair

    Raises
    ------
    RasterReadError, NotGeoreferencedError, PairMismatchError, NoOverlapError
        When the pair cannot be compared; the message lists every problem (see :func:`check_pair`). A closed
        rasterio dataset is a RasterReadError.
    InputError
        An input that is not a path, a dataset or a usable DataArray.

    Warns
    -----
    ReprojectedInputWarning
        AFTER was resampled (other CRS, pixel size or sub-pixel grid offset).
    PairWarning, CoregistrationWarning
        Partial overlap, dates out of order, data types differ, residual shift above half a pixel, ...

    Examples
    --------
    >>> import tempfile, warnings
    >>> from changedet.testing import make_pair
    >>> before, after = make_pair(tempfile.mkdtemp(), "other-resolution")
    >>> with warnings.catch_warnings(record=True) as caught:
    ...     warnings.simplefilter("always")
    ...     with open_pair(before, after) as pair:
    ...         b, a, valid = pair.read()
    >>> b.shape, a.shape, b.dtype.name, bool(valid.all())
    ((3, 128, 128), (3, 128, 128), 'float32', True)
    >>> any(w.category.__name__ == "ReprojectedInputWarning" for w in caught)
    True
    """
    names = (_name(before, "before"), _name(after, "after"))
    for src in (before, after):
        if isinstance(src, DatasetReader):
            ensure_open(src)
    before, after, xr_tmp = _written_dataarrays(before, after)
    owned: list[DatasetReader] = []
    try:
        ds_b = before if isinstance(before, DatasetReader) else open_raster(before)
        if ds_b is not before:
            owned.append(ds_b)
        ds_a = after if isinstance(after, DatasetReader) else open_raster(after)
        if ds_a is not after:
            owned.append(ds_a)
        report, plan = _analyze(ds_b, ds_a, indexes, resampling)
        if xr_tmp is not None:
            report.before, report.after = names
        report.raise_for_problems()
        assert plan is not None
        pair = AlignedPair(ds_b, ds_a, plan, report, resampling=resampling, owned=owned, tmp=xr_tmp)
    except BaseException:
        for ds in owned:
            ds.close()
        if xr_tmp is not None:
            xr_tmp.cleanup()
        raise
    try:
        _assess_validity(pair, report, allow_empty=allow_empty)
        report.raise_for_problems()
        if coregister or estimate_shift:
            _assess_shift(pair, report)
            if coregister and report.shift is not None:
                if report.shift.reliable:
                    pair.set_shift(report.shift)
                    report.notes.append(
                        f"co-registration: AFTER sampled displaced by {report.shift.describe()}"
                    )
                else:
                    report.warn(
                        f"{report.after}: the residual shift could not be estimated reliably "
                        f"({report.shift.describe()}); no co-registration correction was applied.",
                        CoregistrationWarning,
                    )
        if coregister and report.shift is not None and report.shift.reliable:
            # the warning about the shift is moot once it is corrected
            keep = [
                (m, c)
                for m, c in zip(report.warnings, report.warning_classes, strict=False)
                if c is not CoregistrationWarning
            ]
            report.warnings = [m for m, _ in keep]
            report.warning_classes = [c for _, c in keep]
        if match_histograms:
            from changedet.io.radiometry import HistogramMatcher

            pair.set_histogram_matcher(HistogramMatcher.fit(pair))
            report.notes.append("AFTER histogram-matched to BEFORE per band")
    except BaseException:
        pair.close()
        raise
    report.emit_warnings(stacklevel=2)
    return pair


#: Same as :func:`open_pair` (the verb the design notes use for the pipeline stage).
align = open_pair
