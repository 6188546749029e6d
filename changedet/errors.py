"""One exception hierarchy and the warning classes of changedet (stdlib only).

Every message names the file, what was found, what was expected and the fix, e.g.
``after.tif: CRS EPSG:32632 differs from before.tif (EPSG:32631); it was reprojected onto the BEFORE grid.``

Exit codes used by the CLI (the ``EXIT_*`` constants): 0 success; 1 a :class:`ChangedetError` at run time or
``check`` found problems; 2 usage errors and unusable inputs (:class:`InputError`); 130 interrupted (SIGINT);
143 terminated (SIGTERM, as a batch scheduler or ``kill`` sends it: :class:`Terminated`).
"""

from __future__ import annotations

__all__ = [
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_RUNTIME",
    "EXIT_TERMINATED",
    "EXIT_USAGE",
    "ChangedetError",
    "ChangedetWarning",
    "CheckpointError",
    "CoregistrationWarning",
    "InputError",
    "InputRangeWarning",
    "ModelArgumentError",
    "ModelError",
    "NoOverlapError",
    "NotGeoreferencedError",
    "NotGeoreferencedWarning",
    "NothingToCompareWarning",
    "OutputError",
    "OutputExistsError",
    "OutputFolderBusyError",
    "PairMismatchError",
    "PairWarning",
    "RasterReadError",
    "ReprojectedInputWarning",
    "Terminated",
    "UnknownModelError",
    "exit_code_for",
    "root_message",
]

EXIT_OK = 0
EXIT_RUNTIME = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143


class Terminated(KeyboardInterrupt):
    """SIGTERM received (``changedet`` turns it into this exception): the run stops as on Ctrl-C, cleaning up and
    keeping what ``--resume`` continues from, and exits 143."""


class ChangedetError(Exception):
    """Base class of every error changedet raises on purpose."""

    exit_code: int = EXIT_RUNTIME


class InputError(ChangedetError, ValueError):
    """An input raster, option or file cannot be used as given."""

    exit_code = EXIT_USAGE


class RasterReadError(InputError, OSError):
    """A raster cannot be opened or read (missing, empty, truncated, not a raster, a directory...)."""


class NotGeoreferencedError(InputError):
    """A raster has no CRS/transform where one is required (e.g. only one date is georeferenced)."""


class PairMismatchError(InputError):
    """BEFORE and AFTER cannot be compared as given (band count, dtype, ...)."""


class NoOverlapError(InputError):
    """BEFORE and AFTER do not overlap, or overlap too little to be compared."""


class ModelError(ChangedetError):
    """A model cannot be created or used."""


class ModelArgumentError(ModelError, InputError):
    """A model's constructor arguments (``model_kwargs``) are not accepted, e.g. a misspelt name: bad input."""

    exit_code = EXIT_USAGE


class UnknownModelError(ModelError, ValueError):
    """A model or bundled checkpoint name is not known; the message lists the known names."""

    exit_code = EXIT_USAGE

    def __init__(self, name: str, known: list[str] | tuple[str, ...], what: str = "model") -> None:
        self.name = name
        self.known = sorted(known)
        super().__init__(
            f"unknown {what} {name!r}; known {what}s: {', '.join(self.known)}. "
            "Run `changedet models` to list them with their bands."
        )


class CheckpointError(ModelError):
    """A checkpoint is missing, invalid, of an unknown version, or does not fit the input."""

    exit_code = EXIT_USAGE


class OutputError(ChangedetError, OSError):
    """An output cannot be written (read-only folder, disk full, ...)."""


class OutputFolderBusyError(OutputError):
    """Another changedet run is writing into the output folder (``changedet.io.folders.output_folder_lock``)."""


class OutputExistsError(ChangedetError, FileExistsError):
    """An output exists already and ``overwrite`` was not given."""

    exit_code = EXIT_USAGE


class ChangedetWarning(UserWarning):
    """Base class of changedet's warnings."""


class ReprojectedInputWarning(ChangedetWarning):
    """AFTER was reprojected/resampled onto the BEFORE grid (different CRS, resolution or size)."""


class NotGeoreferencedWarning(ChangedetWarning):
    """A raster has no georeferencing; pixel coordinates are used."""


class PairWarning(ChangedetWarning):
    """Something about the pair is suspicious but not fatal (dates out of order, partial overlap, ...)."""


class CoregistrationWarning(ChangedetWarning):
    """The residual shift between the aligned dates is above half a pixel."""


class NothingToCompareWarning(ChangedetWarning):
    """No pixel is valid in both dates: the result is empty."""


class InputRangeWarning(ChangedetWarning):
    """The input's per-band statistics are far outside those the model was trained on (other units or scaling)."""


def root_message(exc: BaseException) -> str:
    """The message of an exception and of the errors it was raised from, GDAL's real reason first: rasterio's
    "Read failed. See previous exception for details." alone never named the missing file behind a VRT."""
    parts: list[str] = []
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        text = str(cur).strip()
        if text and "See previous exception" not in text and text not in parts:
            parts.append(text)
        cur = cur.__cause__ or cur.__context__
    return "; ".join(reversed(parts)) or type(exc).__name__


def exit_code_for(exc: BaseException) -> int:
    """Return the CLI exit code for an exception (see the module docstring)."""
    if isinstance(exc, Terminated):
        return EXIT_TERMINATED
    if isinstance(exc, KeyboardInterrupt):
        return EXIT_INTERRUPTED
    if isinstance(exc, ChangedetError):
        return exc.exit_code
    return EXIT_RUNTIME
