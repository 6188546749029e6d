"""The output folder of a series run (:func:`~changedet.series.detect_series`): the outputs it will hold, checked
early; its lock and the staging folder the outputs are written into; moving them into place (``report.json`` last);
what a failed run removes again, and the :class:`~changedet.errors.OutputError` that a failed write becomes."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from changedet.series.outputs import (
    SERIES_OUTPUT_NAMES,
    SeriesPair,
    _remove_outputs_not_written,
    _write_series_project,
)


@dataclass
class _OutputFolder:
    """The output folder of one series run and what the run has done to it so far (for the cleanup)."""

    out: Path
    names: list[str]  # the outputs this run writes (changes.geojson is dropped when none can be written)
    created: list[Path]  # the folders this run creates, deepest first
    tmp_holder: tempfile.TemporaryDirectory[str] | None  # the temporary folder used without output_dir
    staging: Path = field(init=False)
    made_staging: bool = False
    placing: bool = False
    failed: bool = True
    busy: bool = False
    restore: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)  # the lock, torch's threads

    def __post_init__(self) -> None:
        self.staging = self.out / f".changedet-staging-{os.getpid()}"

    @classmethod
    def plan(cls, output_dir: str | os.PathLike[str] | None, dirs: Sequence[str], *, vectorize: bool,
             quicklook: bool, qgis_project: bool, overwrite: bool) -> _OutputFolder:
        """The output folder (a temporary one owned by the result without ``output_dir``) and its outputs, checked
        before anything is read (a clash, a folder that is not writable); no folder is left made."""
        from changedet.api import _check_outputs
        from changedet.io.folders import missing_folders, remove_empty_folders

        tmp_holder = None
        if output_dir is None:
            tmp_holder = tempfile.TemporaryDirectory(prefix="changedet-series-")
            out = Path(tmp_holder.name)
        else:
            out = Path(output_dir)
        names = [SERIES_OUTPUT_NAMES[k] for k in ("change_count", "first_change", "last_change", "report")] + list(dirs)
        if vectorize:
            names += [SERIES_OUTPUT_NAMES["gpkg"], SERIES_OUTPUT_NAMES["geojson"]]
        if quicklook:
            names.append(SERIES_OUTPUT_NAMES["quicklook"])
        if qgis_project:
            names.append(SERIES_OUTPUT_NAMES["project"])
        created = missing_folders(out)  # the folders this run creates, deepest first
        _check_outputs(out, names, overwrite, False)  # fails early (clash, not writable)
        remove_empty_folders(created)  # made again when the outputs are staged: a failed run leaves no folder
        return cls(out, names, created, tmp_holder)

    def lock(self, overwrite: bool) -> None:
        """Make the folder and hold its lock (released by :meth:`release`), check the outputs again and remove
        killed runs' staging folders."""
        from changedet.api import _check_outputs
        from changedet.io.folders import output_folder_lock, remove_stale_staging

        self.out.mkdir(parents=True, exist_ok=True)  # removed after the early check; a failed run removes it again
        self.restore.enter_context(output_folder_lock(self.out))  # no second run writes into this folder meanwhile
        _check_outputs(self.out, self.names, overwrite, False)  # again: a run that held the folder may have finished
        # killed runs' staging folders, ours too: one named with this pid is a dead run's (pid 1 in a container)
        remove_stale_staging(self.out)

    def make_staging(self) -> None:
        """The staging folder every output is written into."""
        self.staging.mkdir()  # new: never a dead run's, whose files would be moved into place with ours
        self.made_staging = True

    def place(self, pairs: Sequence[SeriesPair], source_names: Sequence[str], *, qgis_project: bool,
              overwrite: bool) -> dict[str, Path]:
        """Move the staged outputs into place: folders and files, the project next, ``report.json`` last; the
        paths of the series outputs written."""
        out, staging = self.out, self.staging
        self.placing = True
        for item in sorted(staging.iterdir()):
            if item.name == SERIES_OUTPUT_NAMES["report"] or item.name.startswith("."):
                continue
            target = out / item.name
            if item.is_dir() and target.is_dir():
                shutil.rmtree(target)
            os.replace(item, target)
        if qgis_project:
            _write_series_project(out, source_names, [_moved(p, staging, out) for p in pairs])
        if overwrite:  # polygons, a project or other pairs' folders of an earlier series would stay beside it
            _remove_outputs_not_written(out, self.names)
        os.replace(staging / SERIES_OUTPUT_NAMES["report"], out / SERIES_OUTPUT_NAMES["report"])
        return {k: out / v for k, v in SERIES_OUTPUT_NAMES.items() if v in self.names and (out / v).exists()}

    def moved(self, pairs: Sequence[SeriesPair]) -> list[SeriesPair]:
        """``pairs`` with their paths in the output folder instead of the staging folder."""
        return [_moved(p, self.staging, self.out) for p in pairs]

    def failure(self, exc: BaseException) -> BaseException:
        """The error the run raises for ``exc`` (:func:`_write_failure`); a busy folder is the other run's, which
        the cleanup leaves alone."""
        from changedet.errors import OutputFolderBusyError

        self.busy = isinstance(exc, OutputFolderBusyError)  # the folder is the other run's: leave it
        return _write_failure(exc, self.out, self.staging if self.made_staging else None, self.placing)

    def release(self) -> None:
        """Remove the staging folder, then release the lock (and restore torch's threads)."""
        if self.made_staging:  # (only ours: with the lock refused, a folder of that name is another namespace's run's)
            shutil.rmtree(self.staging, ignore_errors=True)
        self.restore.close()  # the lock, released once the staging folder is gone

    def remove_created(self) -> None:
        """Remove the folders this run created (a failed run leaves none behind)."""
        from changedet.io.folders import remove_empty_folders

        if self.tmp_holder is None:
            remove_empty_folders(self.created)


def _write_failure(exc: BaseException, out: Path, staging: Path | None, placing: bool) -> BaseException:
    """The error a failed series run raises for ``exc``: ``exc`` itself where it is one of changedet's (a busy or
    existing output, an unreadable input), else (a full disk, a permission taken away: GDAL's and the OS's errors,
    and changedet's about a file of this run's staging folder, such as a Cloud-Optimised GeoTIFF a full disk cut
    short) the :class:`~changedet.errors.OutputError` that :func:`changedet.api.detect` raises. ``staging`` is None
    until the run has made its staging folder: an error before that (a killed run's staging folder of the same name
    that cannot be removed) keeps its own message."""
    from changedet.errors import ChangedetError, OutputError, RasterReadError, root_message

    if isinstance(exc, ChangedetError) and not (isinstance(exc, (OutputError, RasterReadError))
                                                and staging is not None and staging.name in str(exc)):
        return exc
    reason = root_message(exc.__cause__ if isinstance(exc, ChangedetError) and exc.__cause__ else exc)
    if placing:  # os.replace does not fail on a full disk, but project.qgs is written beside the outputs moved
        return OutputError(f"{out}: writing the outputs failed ({reason}) while they were moved into place: the "
                           "folder holds an incomplete series without report.json. Check the free disk space and "
                           "write permission of the output folder, then rerun with --overwrite.")
    return OutputError(f"{out}: writing the outputs failed ({reason}); no output was written. Check the free disk "
                       "space and write permission of the output folder.")


def _moved(pair: SeriesPair, staging: Path, out: Path) -> SeriesPair:
    pair.paths = {k: out / v.relative_to(staging) if v.is_relative_to(staging) else v for k, v in pair.paths.items()}
    return pair
