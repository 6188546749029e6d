"""Output folders shared by the runs that write into them: an exclusive lock for the length of a run, and the
removal of the staging folders that killed runs left (used by ``detect``, series and ``train``)."""

from __future__ import annotations

import contextlib
import os
import shutil
import warnings
from collections.abc import Iterator
from pathlib import Path

from changedet.errors import ChangedetWarning, OutputError, OutputFolderBusyError

__all__ = ["missing_folders", "output_folder_lock", "remove_empty_folders", "remove_stale_staging"]


@contextlib.contextmanager
def output_folder_lock(folder: Path) -> Iterator[None]:
    """Hold an exclusive lock on an output folder for a run: a second ``detect``, series or ``train`` into it
    fails at once with an :class:`OutputError` instead of mixing its outputs with the first's (both used to end
    with exit 0, one's report.json beside the other's change.tif).

    A POSIX ``flock`` on the folder itself: nothing is written into it, and the lock goes with the process however
    it ends (SIGKILL included). Not taken where ``fcntl`` does not exist (Windows).
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise OutputFolderBusyError(
                f"{folder}: another changedet run is writing into this folder; wait for it to finish, or choose "
                "another output folder"
            ) from None
        except OSError as exc:  # a file system without flock (some NFS, CIFS and FUSE mounts): run unlocked
            warnings.warn(f"{folder}: the output folder cannot be locked here ({exc.strerror or exc}); runs into it "
                          "at the same time are not kept apart", ChangedetWarning, stacklevel=3)
        yield
    finally:
        os.close(fd)  # releases the lock


def remove_stale_staging(out: Path) -> None:
    """Remove staging folders left in ``out`` by runs that were killed (their process no longer exists).

    Called at the start of a run (pair ``detect``, series and ``train``), while it holds :func:`output_folder_lock`
    and before it makes its own staging folder: one named with this process's pid is then a dead run's whose pid came round
    again (pid 1 in every one-shot container, or any pid reused after a ``kill -9``), since a live run into ``out``
    would hold the lock. It is removed rather than reused: a run that adopted it moved the dead run's files (its
    pair folders, its ``.changedet-partial``) into place beside its own. Without ``fcntl`` (Windows), where no lock
    is taken, this process's own folder is left alone (another thread of it may be writing there).
    """
    try:
        import fcntl  # noqa: F401 - only whether output_folder_lock really locks
    except ImportError:  # pragma: no cover - Windows
        locked = False
    else:
        locked = True
    for item in out.glob(".changedet-staging-*"):
        try:
            pid = int(item.name.rsplit("-", 1)[1])
        except ValueError:
            continue
        if pid == os.getpid():
            if not locked:  # pragma: no cover - Windows
                continue
            try:
                shutil.rmtree(item)
            except FileNotFoundError:
                pass
            except OSError as exc:  # reusing it would move a dead run's files into place
                raise OutputError(
                    f"{item}: the staging folder of a killed run (its pid is this run's) cannot be removed ({exc}); "
                    "delete it, then rerun"
                ) from exc
            continue
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            shutil.rmtree(item, ignore_errors=True)
        except OSError:  # alive but not ours (PermissionError), or no way to tell: leave it
            continue


def missing_folders(folder: Path) -> list[Path]:
    """``folder`` and its parents that do not exist yet, deepest first: the folders a run will create (none when
    the path cannot even be looked up, a name longer than the file system allows, say: the run's own check of the
    output folder then says why)."""
    try:
        return [d for d in (folder, *folder.parents) if not d.exists()]
    except OSError:
        return []


def remove_empty_folders(folders: list[Path]) -> None:
    """Remove ``folders`` (deepest first, :func:`missing_folders`) while they are empty: the output folders a failed
    run created."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:
            break
