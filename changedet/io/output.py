"""Atomic output: a file is written under a temporary name in its folder and renamed onto its name when complete.

:func:`atomic_output` is what every writer in changedet goes through, so a failed or interrupted run leaves no
half-written file; the temporary names carry the writer's process id, so that a later run removes the leftovers of
a killed one.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator
from glob import escape as glob_escape
from pathlib import Path

from changedet.errors import InputError, OutputError, OutputExistsError
from changedet.io.metadata import PathLike

__all__ = ["atomic_output"]


_SIDECARS = (".aux.xml", ".ovr", ".msk", "-journal", "-wal", "-shm")


def _remove_quietly(path: Path) -> None:
    for candidate in (path, *(Path(str(path) + s) for s in _SIDECARS)):
        with contextlib.suppress(FileNotFoundError, IsADirectoryError, PermissionError):
            candidate.unlink()


def _temp_sibling(path: Path, tag: str = "partial") -> Path:
    """A hidden temporary name next to ``path`` that keeps its suffix (drivers pick formats by extension) and
    carries the writing process's id, so that a later run can tell a killed writer's leftovers
    (:func:`_remove_stale_siblings`)."""
    return path.with_name(f".{path.stem}.{os.getpid()}-{secrets.token_hex(4)}.{tag}{path.suffix}")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # another user's process (PermissionError): alive
        return True
    return True


def _remove_stale_siblings(path: Path) -> None:
    """Remove the temporary files (:func:`_temp_sibling`) that a killed writer (SIGKILL, SIGTERM, power loss) left
    next to ``path``: their process no longer exists. A live writer's files are left alone."""
    for tag in ("partial", "stage"):
        for item in path.parent.glob(f".{glob_escape(path.stem)}.*-*.{tag}{path.suffix}*"):
            token = item.name[len(path.stem) + 2 :].split(".", 1)[0]
            pid = token.split("-", 1)[0]
            if pid.isdigit() and not _pid_alive(int(pid)):
                with contextlib.suppress(OSError):
                    item.unlink()


@contextlib.contextmanager
def atomic_output(path: PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Write a file under a temporary name in its folder and rename it onto ``path`` only when complete.

    Yields the temporary path (same folder, same suffix, hidden). On a clean exit the temporary file is renamed
    onto ``path`` with :func:`os.replace` (atomic on one file system); on any exception, Ctrl-C included, it is
    removed with its GDAL side-car files and the exception propagates. The output folder is created if needed.

    Raises
    ------
    OutputExistsError
        ``path`` exists and ``overwrite`` is False (checked before anything is written).
    OutputError
        ``path`` is a directory, the folder cannot be created, or nothing was written to the temporary path.

    Examples
    --------
    >>> import tempfile, os
    >>> d = tempfile.mkdtemp()
    >>> with atomic_output(os.path.join(d, "out.txt")) as tmp:
    ...     _ = tmp.write_text("done")
    >>> sorted(os.listdir(d))
    ['out.txt']
    """
    final = Path(os.fspath(path))
    if final.is_dir():
        raise InputError(f"{final}: is a directory; give a file name for the output.")  # a usage error: exit 2
    if final.exists() and not overwrite:
        raise OutputExistsError(
            f"{final}: exists already; pass overwrite=True (--overwrite) or choose another name."
        )
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"{final}: cannot create the output folder {final.parent} ({exc}).") from exc
    _remove_stale_siblings(final)
    tmp = _temp_sibling(final)
    try:
        yield tmp
        if not tmp.exists():
            raise OutputError(f"{final}: the writer produced nothing at the temporary path {tmp}.")
        if final.exists() and not overwrite:  # appeared while we were writing
            raise OutputExistsError(
                f"{final}: was created by someone else while this one was written; pass overwrite=True."
            )
        try:
            os.replace(tmp, final)
        except OSError as exc:
            raise OutputError(f"{final}: cannot rename the finished temporary file onto it ({exc}).") from exc
        aux = Path(str(tmp) + ".aux.xml")
        if aux.exists():
            os.replace(aux, Path(str(final) + ".aux.xml"))
    except BaseException:
        _remove_quietly(tmp)
        raise
