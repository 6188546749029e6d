"""A staging folder named with this run's pid is a dead run's (pid reuse: pid 1 in every one-shot container).

``changedet detect`` stages its outputs in ``OUT/.changedet-staging-<pid>/``; ``kill -9`` leaves that folder. A later
run that gets the same pid (each ``docker run`` / Kubernetes retry is pid 1) used to skip it as its own: the series
reused it and moved the dead run's pair folders into place beside its own outputs (exit 0), and a two-date detect
failed on it ("[Errno 39] Directory not empty ... Check the free disk space"). The output folder's lock
(:func:`changedet.api.output_folder_lock`) rules out a live run, so the folder is removed.
"""

from __future__ import annotations

import os
from pathlib import Path

from changedet.api import detect
from changedet.testing import make_pair


def test_pair_detect_removes_a_dead_series_staging_folder_that_has_its_pid(tmp_path: Path) -> None:
    pair = make_pair(tmp_path / "in", "aligned", size=96)
    out = tmp_path / "out"
    staging = out / f".changedet-staging-{os.getpid()}"  # what a series killed with -9 as the same pid left
    (staging / "pair_01_2019-05-01_2020-05-01").mkdir(parents=True)
    (staging / "pair_01_2019-05-01_2020-05-01" / "change.tif").write_bytes(b"a dead run's")
    (staging / ".changedet-partial").mkdir()
    (staging / ".changedet-partial" / "change_count.partial.tif").write_bytes(b"half")
    result = detect(pair.before, pair.after, output_dir=out, method="cva", tile_size=64, quicklook=False)
    assert result.paths["change"].is_file()
    assert not staging.exists()
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["change.qml", "change.tif", "changes.geojson", "changes.gpkg", "changes.qml", "probability.qml",
         "probability.tif", "report.json"])


def test_a_file_system_without_flock_runs_unlocked_with_a_warning(tmp_path, monkeypatch) -> None:
    """NFS, CIFS or FUSE mounts may refuse flock (ENOLCK, EOPNOTSUPP): a raw OSError crashed detect and train."""
    import errno
    import fcntl

    import pytest

    from changedet.errors import ChangedetWarning
    from changedet.io.folders import output_folder_lock

    def refuse(fd: int, op: int) -> None:
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", refuse)
    with pytest.warns(ChangedetWarning, match="cannot be locked here"), output_folder_lock(tmp_path):
        (tmp_path / "written").write_text("ok")
    assert (tmp_path / "written").read_text() == "ok"
