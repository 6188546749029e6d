"""Ctrl-C (SIGINT) on a running ``changedet detect``: exit code 130, a clear message, no output file (only the hidden
resume folder), and ``--resume`` finishes the job."""

from __future__ import annotations

import json
import os
import re
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from changedet.testing import make_geotiff

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")

EXE = str(Path(sys.executable).with_name("changedet"))


@pytest.fixture(scope="module")
def job(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """A 1536 x 1536 pair and a small network checkpoint: a run of several seconds on 2 CPU cores."""
    import torch

    from changedet.models import create_model
    from changedet.models.checkpoint import CheckpointMeta, save_checkpoint

    tmp = tmp_path_factory.mktemp("sigint")
    rng = np.random.default_rng(3)
    before = rng.integers(1, 3000, (3, 1536, 1536)).astype("uint16")
    after = before.copy()
    after[:, 600:800, 300:900] = 6000
    torch.manual_seed(0)
    ckpt = save_checkpoint(create_model("fc-siam-diff", in_channels=3), tmp / "tiny",
                           CheckpointMeta(band_names=["B1", "B2", "B3"], pixel_size=10.0, name="tiny"))
    return make_geotiff(tmp / "before.tif", before), make_geotiff(tmp / "after.tif", after), ckpt


def _wait_for_progress(proc: subprocess.Popen, timeout: float = 240.0) -> bytes:
    """Read stderr until the progress bar shows a finished tile (``1/N`` or more); return what was read."""
    assert proc.stderr is not None
    fd = proc.stderr.fileno()
    seen = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 1.0)
        if ready:
            chunk = os.read(fd, 4096)
            if not chunk:
                break
            seen += chunk
            if re.search(rb"\b[1-9][0-9]*/[0-9]+ \[", seen):
                return seen
        if proc.poll() is not None:
            break
    raise AssertionError(f"no progress output before the run ended or timed out: {seen!r}")


def test_sigint_exits_130_with_no_output_and_resume_finishes(job: tuple[Path, Path, Path], tmp_path: Path) -> None:
    before, after, ckpt = job
    out = tmp_path / "out"
    args = [EXE, "detect", str(before), str(after), "-o", str(out), "--model", str(ckpt), "--tile-size", "256",
            "--threads", "1", "--no-quicklook"]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        head = _wait_for_progress(proc)
        proc.send_signal(signal.SIGINT)
        stdout, tail = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    stderr = (head + tail).decode(errors="replace")
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr
    assert f"interrupted: no output was written; finished blocks are kept in {out / '.changedet-partial'}: run " \
           "the same command with --resume" in stderr
    assert "no partial output was left behind" not in stderr  # one message, not two that contradict each other
    assert stdout == b""  # no "outputs in ..." summary
    # nothing but the hidden resume folder: no raster, no report, no staging folder, no temporary file
    assert sorted(p.name for p in out.iterdir()) == [".changedet-partial"]
    partial = sorted(p.name for p in (out / ".changedet-partial").iterdir())
    assert "journal.json" in partial and not any(n.endswith(".tmp") for n in partial), partial

    res = subprocess.run([EXE, "-q", *args[1:], "--resume", "--json"], capture_output=True, text=True, timeout=400)
    assert res.returncode == 0, res.stderr
    report = json.loads(res.stdout)
    assert report["stats"]["tiles_total"] == 49  # 7 x 7 tiles of at most 256 px, 32 px overlap (the default)
    assert report["summary"]["valid_pixels"] == 1536 * 1536
    assert {p.name for p in out.iterdir()} >= {"probability.tif", "change.tif", "changes.gpkg", "report.json"}
    assert not (out / ".changedet-partial").exists()


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="needs /proc to see when torch is loaded")
def test_sigint_while_the_model_loads_leaves_no_folder(job: tuple[Path, Path, Path], tmp_path: Path) -> None:
    """Ctrl-C as soon as torch is loaded (model loading, pair checks): exit 130, no output folder left."""
    before, after, ckpt = job
    out = tmp_path / "out"
    proc = subprocess.Popen([EXE, "-q", "detect", str(before), str(after), "-o", str(out), "--model", str(ckpt),
                             "--no-quicklook"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                if "libtorch" in Path(f"/proc/{proc.pid}/maps").read_text():
                    break  # torch is imported inside the command body, after the output folder was checked
            except OSError:
                pass
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        _stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, stderr
    assert b"Traceback" not in stderr and b"interrupted" in stderr
    left = sorted(p.name for p in out.iterdir()) if out.exists() else []
    assert left in ([], [".changedet-partial"]), left
