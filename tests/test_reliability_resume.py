"""Atomic, resumable detect runs: interrupted runs leave only the hidden resume folder, ``resume`` continues from
the journal of finished row blocks with a result identical to an uninterrupted run, and write failures (a full
disk) are an OutputError with nothing half-written in the output folder."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio

from changedet import detect
from changedet.testing import make_geotiff

HEIGHT, WIDTH, TILE = 2000, 300, 128
RASTERS = ("probability.tif", "change.tif")


def _make_scene(tmp: Path, height: int, width: int) -> tuple[Path, Path]:
    """A pair with a few changed blocks spread down the rows and a nodata band across the scene."""
    rng = np.random.default_rng(7)
    before = rng.normal(1500, 200, (3, height, width)).clip(1, None).astype("uint16")
    after = (before + rng.normal(0, 30, before.shape)).clip(1, None).astype("uint16")
    for r in range(100, height - 60, 600):
        after[:, r:r + 60, width // 4:3 * width // 4] = 5000
    after[:, 900:940, :] = 0
    return (make_geotiff(tmp / "before.tif", before, nodata=0),
            make_geotiff(tmp / "after.tif", after, nodata=0))


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """2000 rows x 300 columns: 124 tiles of 128 px."""
    return _make_scene(tmp_path_factory.mktemp("scene"), HEIGHT, WIDTH)


@pytest.fixture(scope="module")
def narrow_scene(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """1300 rows x 128 columns (one tile column: a network on 2 CPU cores stays within seconds)."""
    return _make_scene(tmp_path_factory.mktemp("narrow"), 1300, 128)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch

    from changedet.models import create_model
    from changedet.models.checkpoint import CheckpointMeta, save_checkpoint

    torch.manual_seed(0)
    tmp = tmp_path_factory.mktemp("ckpt")
    return save_checkpoint(create_model("fc-siam-diff", in_channels=3), tmp / "tiny",
                           CheckpointMeta(band_names=["B1", "B2", "B3"], pixel_size=10.0, name="tiny"))


class Interrupt:
    """A progress callback that presses Ctrl-C after ``after`` tiles (a fraction below 1: of all tiles)."""

    def __init__(self, after: float) -> None:
        self.after = after
        self.total = 0

    def __call__(self, done: int, total: int, _pixels: int) -> None:
        self.total = total
        if done >= (self.after * total if self.after < 1 else self.after):
            raise KeyboardInterrupt


def _options(method: str, checkpoint: Path) -> dict[str, Any]:
    opts: dict[str, Any] = {"method": method, "tile_size": TILE, "quicklook": False}
    if method == "model":
        opts["model"] = str(checkpoint)
    return opts


def _read(folder: Path) -> dict[str, np.ndarray]:
    out = {}
    for name in RASTERS:
        with rasterio.open(folder / name) as ds:
            out[name] = ds.read()
    return out


def _assert_same_rasters(folder: Path, other: Path) -> None:
    a, b = _read(folder), _read(other)
    for name in RASTERS:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)


@pytest.mark.parametrize("method", ["cva", pytest.param("model", marks=pytest.mark.slow)])
def test_resume_continues_an_interrupted_run_with_an_identical_result(
    scene: tuple[Path, Path], narrow_scene: tuple[Path, Path], checkpoint: Path, tmp_path: Path, method: str
) -> None:
    before, after = scene if method == "cva" else narrow_scene
    with rasterio.open(before) as ds:
        height = ds.height
    opts = _options(method, checkpoint)
    whole = detect(before, after, output_dir=tmp_path / "whole", **opts)

    out = tmp_path / "resumed"
    stop = Interrupt(after=0.55)
    with pytest.raises(KeyboardInterrupt):
        detect(before, after, output_dir=out, progress=stop, **opts)
    # only the hidden resume folder is left: no output, no staging folder, no temporary file
    assert sorted(p.name for p in out.iterdir()) == [".changedet-partial"]
    journal = json.loads((out / ".changedet-partial" / "journal.json").read_text())
    assert 0 < journal["rows_done"] < height, journal  # some row blocks were finished before Ctrl-C

    result = detect(before, after, output_dir=out, resume=True, **opts)
    stats = result.report["stats"]
    assert stats["tiles_resumed"] > 0 and stats["tiles_resumed"] + stats["tiles_predicted"] + \
        stats["tiles_skipped"] == stats["tiles_total"] == stop.total
    assert not (out / ".changedet-partial").exists()
    a, b = _read(tmp_path / "whole"), _read(out)
    for name in RASTERS:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)
    assert result.report["summary"] == whole.report["summary"]


def test_cli_resume_after_an_interrupted_api_run(scene: tuple[Path, Path], checkpoint: Path, tmp_path: Path) -> None:
    before, after = scene
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        detect(before, after, output_dir=out, progress=Interrupt(after=0.55), **_options("cva", checkpoint))
    exe = Path(sys.executable).with_name("changedet")
    res = subprocess.run([str(exe), "-q", "detect", str(before), str(after), "-o", str(out), "--method", "cva",
                          "--tile-size", str(TILE), "--no-quicklook", "--resume", "--json"],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["stats"]["tiles_resumed"] > 0
    detect(before, after, output_dir=tmp_path / "whole", **_options("cva", checkpoint))
    a, b = _read(tmp_path / "whole"), _read(out)
    for name in RASTERS:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)


def test_resume_with_other_settings_starts_over(scene: tuple[Path, Path], checkpoint: Path, tmp_path: Path) -> None:
    before, after = scene
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        detect(before, after, output_dir=out, progress=Interrupt(after=0.55), **_options("cva", checkpoint))
    # another threshold: the journal does not apply, so everything is predicted again (and still correct)
    result = detect(before, after, output_dir=out, resume=True, threshold=0.9, **_options("cva", checkpoint))
    assert result.report["stats"]["tiles_resumed"] == 0
    whole = detect(before, after, output_dir=tmp_path / "whole", threshold=0.9, **_options("cva", checkpoint))
    assert result.report["summary"] == whole.report["summary"]


def test_resume_with_another_pair_starts_over(scene: tuple[Path, Path], checkpoint: Path, tmp_path: Path) -> None:
    before, after = scene
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        detect(before, after, output_dir=out, progress=Interrupt(after=0.55), **_options("cva", checkpoint))
    # the same grid and settings, but other files: none of the finished rows may be reused
    other_b, other_a = _make_scene(tmp_path / "other", HEIGHT, WIDTH)
    with rasterio.open(other_a, "r+") as ds:  # change it so that the two pairs' results differ
        data = ds.read()
        data[:, :200, :] = np.where(data[:, :200, :] > 0, 7000, 0)
        ds.write(data)
    result = detect(other_b, other_a, output_dir=out, resume=True, **_options("cva", checkpoint))
    assert result.report["stats"]["tiles_resumed"] == 0
    detect(other_b, other_a, output_dir=tmp_path / "whole", **_options("cva", checkpoint))
    _assert_same_rasters(tmp_path / "whole", out)


@pytest.fixture(scope="module")
def shifted_scene(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """1300 rows x 256 columns; AFTER is BEFORE displaced by 2 columns, brighter, with changed blocks."""
    tmp = tmp_path_factory.mktemp("shifted")
    from scipy import ndimage

    rng = np.random.default_rng(3)
    texture = ndimage.gaussian_filter(rng.standard_normal((3, 1300, 256)), (0, 2.5, 2.5))  # smooth: correlates
    before = 1500 + 300 * texture / texture.std()
    after = np.roll(before, 2, axis=2) ** 1.05 + rng.normal(0, 20, before.shape)
    for r in range(100, 1240, 400):
        after[:, r:r + 60, 96:160] += 600
    return (make_geotiff(tmp / "before.tif", before.astype("uint16"), nodata=0),
            make_geotiff(tmp / "after.tif", after.clip(1, 60000).astype("uint16"), nodata=0))


@pytest.mark.parametrize("setting", ["match_histograms", "coregister"])
def test_resume_with_other_corrections_starts_over(shifted_scene: tuple[Path, Path], checkpoint: Path,
                                                   tmp_path: Path, setting: str,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    """Interrupted without --match-histograms (--coregister), resumed with it: the finished rows hold another
    prediction, so the resume starts over (and says so) instead of mixing the two."""
    before, after = shifted_scene
    opts = _options("cva", checkpoint)
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        detect(before, after, output_dir=out, progress=Interrupt(after=0.55), **opts)
    assert json.loads((out / ".changedet-partial" / "journal.json").read_text())["rows_done"] > 0
    with caplog.at_level("WARNING", logger="changedet.inference"):
        result = detect(before, after, output_dir=out, resume=True, **{setting: True}, **opts)
    assert result.report["stats"]["tiles_resumed"] == 0
    assert "other settings; starting over" in caplog.text
    detect(before, after, output_dir=tmp_path / "whole", **{setting: True}, **opts)
    _assert_same_rasters(tmp_path / "whole", out)
    detect(before, after, output_dir=tmp_path / "plain", **opts)  # the setting does change the probabilities
    assert not np.array_equal(_read(tmp_path / "plain")["probability.tif"], _read(out)["probability.tif"])


@pytest.mark.slow
@pytest.mark.parametrize("setting", [{"precision": "bf16"}, {"tta": "flip"}])
def test_resume_with_another_precision_or_tta_starts_over(narrow_scene: tuple[Path, Path], checkpoint: Path,
                                                          tmp_path: Path, setting: dict[str, str]) -> None:
    before, after = narrow_scene
    opts = _options("model", checkpoint)
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        detect(before, after, output_dir=out, progress=Interrupt(after=0.55), **opts)
    result = detect(before, after, output_dir=out, resume=True, **setting, **opts)
    assert result.report["stats"]["tiles_resumed"] == 0
    detect(before, after, output_dir=tmp_path / "whole", **setting, **opts)
    _assert_same_rasters(tmp_path / "whole", out)


def test_resume_signature_covers_what_changes_the_probabilities(shifted_scene: tuple[Path, Path]) -> None:
    """The journal's signature: equal for equal settings (a resume continues), different for another checkpoint
    of the same architecture and name, precision, test-time augmentation, normalisation, bands, co-registration
    shift or histogram matching."""
    import torch

    from changedet.io.alignment import open_pair
    from changedet.models import create_model
    from changedet.partials import _input_fingerprint, _predictor_fingerprint
    from changedet.predictors import TorchPredictor

    def predictor(seed: int = 0, mean: float = 0.0, **kw: Any) -> dict[str, Any]:
        torch.manual_seed(seed)
        net = create_model("fc-siam-diff", in_channels=3)
        return _predictor_fingerprint(TorchPredictor(net, [mean] * 3, [1.0] * 3, [0.0] * 3, [1.0] * 3,
                                                     name="tiny", **kw))

    base = predictor()
    assert predictor() == base
    others = [predictor(seed=1), predictor(mean=1.0), predictor(precision="bf16"), predictor(tta="flip")]
    assert all(o != base for o in others)

    before, after = shifted_scene
    with open_pair(before, after) as plain, open_pair(before, after, match_histograms=True) as matched, \
            open_pair(before, after, coregister=True) as shifted, open_pair(before, after, indexes=[3, 2, 1]) as bgr:
        assert shifted.shift is not None  # the scene's displacement was found and corrected
        fp = _input_fingerprint(plain)
        with open_pair(before, after) as again:
            assert _input_fingerprint(again) == fp
        assert all(_input_fingerprint(p) != fp for p in (matched, shifted, bgr))


def test_resume_without_a_journal_does_not_replace_finished_outputs(scene: tuple[Path, Path], checkpoint: Path,
                                                                      tmp_path: Path) -> None:
    from changedet.errors import OutputExistsError

    before, after = scene
    out = tmp_path / "out"
    detect(before, after, output_dir=out, **_options("cva", checkpoint))
    stamp = (out / "report.json").stat().st_mtime_ns
    with pytest.raises(OutputExistsError, match="nothing to resume"):
        detect(before, after, output_dir=out, resume=True, threshold=0.9, **_options("cva", checkpoint))
    assert (out / "report.json").stat().st_mtime_ns == stamp


def test_ctrl_c_after_prediction_keeps_the_prediction_for_resume(
    scene: tuple[Path, Path], checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C while the polygons are built, when both rasters are complete: no output (no half result), but the
    finished prediction stays in .changedet-partial and --resume goes on from there without predicting again."""
    before, after = scene
    out = tmp_path / "out"
    import changedet.vectorize

    real = changedet.vectorize.vectorize

    def interrupted(*_args: Any, **_kwargs: Any) -> Any:
        raise KeyboardInterrupt

    monkeypatch.setattr(changedet.vectorize, "vectorize", interrupted)
    with pytest.raises(KeyboardInterrupt):
        detect(before, after, output_dir=out, **_options("cva", checkpoint))
    assert sorted(p.name for p in out.iterdir()) == [".changedet-partial"]
    monkeypatch.setattr(changedet.vectorize, "vectorize", real)
    resumed = detect(before, after, output_dir=out, resume=True, **_options("cva", checkpoint))
    assert resumed.report["stats"]["tiles_predicted"] == 0 and resumed.report["stats"]["tiles_resumed"] > 0
    assert not (out / ".changedet-partial").exists()
    clean = detect(before, after, output_dir=tmp_path / "clean", **_options("cva", checkpoint))
    for name in ("probability", "change"):
        with rasterio.open(resumed.paths[name]) as a, rasterio.open(clean.paths[name]) as b:
            np.testing.assert_array_equal(a.read(), b.read())
    assert len(resumed.polygons) == len(clean.polygons)


_FSIZE_CHILD = r"""
import resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead of killing us
resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[1]), int(sys.argv[1])))
from changedet.cli.main import cli
sys.argv = ["changedet", *sys.argv[2:]]
cli()
"""


def test_disk_full_is_an_output_error_with_nothing_half_written(scene: tuple[Path, Path], tmp_path: Path) -> None:
    """A full disk, simulated with a file-size limit (RLIMIT_FSIZE): exit 1, OutputError, no output file."""
    before, after = scene
    out = tmp_path / "out"
    res = subprocess.run([sys.executable, "-c", _FSIZE_CHILD, "150000", "-q", "detect", str(before), str(after),
                          "-o", str(out), "--method", "cva", "--tile-size", str(TILE), "--no-quicklook"],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 1, res.stderr
    assert f"error: {out}: writing the outputs failed (" in res.stderr, res.stderr
    assert "See previous exception" not in res.stderr  # GDAL's reason (e.g. a write error), not a pointer to it
    assert "Check the free disk space" in res.stderr and "Traceback" not in res.stderr
    left = sorted(p.name for p in out.iterdir())
    assert set(left) <= {".changedet-partial"}, left
    assert signal.SIGXFSZ  # the platform has the signal the child ignores


def test_gdal_error_reopening_a_partial_file_is_an_output_error(
    scene: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """GDAL's own errors (CPLE_*, not RasterioError), as when a partial file truncated by a full disk cannot be
    reopened after a flush, are an OutputError with nothing half-written, like any other write failure."""
    from rasterio._err import CPLE_AppDefinedError

    from changedet.errors import OutputError
    from changedet.inference import StripWriter

    def truncated(self: StripWriter) -> None:
        self.ds.close()
        raise CPLE_AppDefinedError(1, 1, f"{self.partial.name}: TIFFReadDirectory:Failed to read directory at offset 150000")

    monkeypatch.setattr(StripWriter, "sync", truncated)
    before, after = scene
    out = tmp_path / "out"
    with pytest.raises(OutputError, match=r"writing the outputs failed \(probability.partial.tif: TIFFReadDirectory"):
        detect(before, after, output_dir=out, **_options("cva", None))
    left = sorted(p.name for p in out.iterdir())
    assert set(left) <= {".changedet-partial"}, left


def _signal_once_journaled(args: list[str], journal: Path, sig: int, **popen: Any) -> tuple[int, str]:
    """Start ``changedet`` with ``args``, send it ``sig`` once the journal records a finished row block (or it
    ends), and return its exit code and stderr."""
    import os
    import time

    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, **popen)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                if json.loads(journal.read_text())["rows_done"] > 0:
                    break
            except (OSError, ValueError, KeyError):
                pass
            time.sleep(0.005)
        if proc.poll() is None:
            os.kill(proc.pid, sig)
        _, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.returncode, stderr


def test_resume_after_sigkill_gives_an_identical_result(scene: tuple[Path, Path], tmp_path: Path) -> None:
    """A run killed without warning (SIGKILL: no cleanup at all) resumes from what reached the disk.

    The journal only records row blocks once they are flushed to the partial files, so whatever the kill left,
    --resume either continues from those blocks or, when the partial files are unusable, starts over; the result
    is identical to an uninterrupted run either way.
    """
    before, after = scene
    out = tmp_path / "out"
    args = [str(Path(sys.executable).with_name("changedet")), "-q", "detect", str(before), str(after), "-o", str(out),
            "--method", "cva", "--tile-size", str(TILE), "--no-quicklook", "--no-vectorize"]
    returncode, _ = _signal_once_journaled(args, out / ".changedet-partial" / "journal.json", signal.SIGKILL)
    if returncode == 0:
        pytest.skip("the run finished before it could be killed")
    assert not (out / "report.json").exists() and not (out / "change.tif").exists()
    res = subprocess.run([*args, "--resume", "--json"], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["stats"]["tiles_resumed"] > 0  # the journaled blocks were on disk
    detect(before, after, output_dir=tmp_path / "whole", method="cva", tile_size=TILE, quicklook=False,
           vectorize=False)
    _assert_same_rasters(tmp_path / "whole", out)


def test_sigterm_stops_like_ctrl_c_exit_143_and_resumes(scene: tuple[Path, Path], checkpoint: Path,
                                                         tmp_path: Path) -> None:
    """SIGTERM (a batch scheduler's stop, `kill`) is handled as Ctrl-C: a message, exit 143, the finished blocks
    kept for --resume, no output; it ended the process with -15 and no word before."""
    before, after = scene
    out = tmp_path / "out"
    args = [str(Path(sys.executable).with_name("changedet")), "detect", str(before), str(after), "-o", str(out),
            "--model", str(checkpoint), "--tile-size", str(TILE), "--no-quicklook", "--no-vectorize"]
    journal = out / ".changedet-partial" / "journal.json"
    returncode, stderr = _signal_once_journaled(args, journal, signal.SIGTERM)
    assert returncode == 143, stderr
    assert "interrupted: no output was written; finished blocks are kept" in stderr
    assert not (out / "report.json").exists() and journal.is_file()
    res = subprocess.run([*args, "-q", "--resume", "--json"], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["stats"]["tiles_resumed"] > 0


def test_resume_with_a_lost_partial_file_starts_over(scene: tuple[Path, Path], checkpoint: Path,
                                                      tmp_path: Path) -> None:
    before, after = scene
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        detect(before, after, output_dir=out, progress=Interrupt(after=0.55), **_options("cva", checkpoint))
    (out / ".changedet-partial" / "probability.partial.tif").unlink()  # e.g. removed by a disk clean-up
    result = detect(before, after, output_dir=out, resume=True, **_options("cva", checkpoint))
    assert result.report["stats"]["tiles_resumed"] == 0
    whole = detect(before, after, output_dir=tmp_path / "whole", **_options("cva", checkpoint))
    assert result.report["summary"] == whole.report["summary"]
    a, b = _read(tmp_path / "whole"), _read(out)
    for name in RASTERS:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)


def test_staging_left_by_a_killed_run_is_removed(scene: tuple[Path, Path], checkpoint: Path, tmp_path: Path) -> None:
    import os

    before, after = scene
    out = tmp_path / "out"
    dead = 2**22 + 12345  # above Linux's pid_max: no such process
    with pytest.raises(ProcessLookupError):
        os.kill(dead, 0)
    stale = out / f".changedet-staging-{dead}"
    stale.mkdir(parents=True)
    (stale / "probability.tif").write_bytes(b"half")
    alive = out / f".changedet-staging-{os.getppid()}"  # a live process's staging folder is left alone
    alive.mkdir()
    detect(before, after, output_dir=out, **_options("cva", checkpoint))
    assert not stale.exists() and alive.exists()


@pytest.mark.parametrize("flag", ["resume", "overwrite"])
def test_an_unreadable_partial_file_is_replaced_not_fatal(scene: tuple[Path, Path], checkpoint: Path,
                                                          tmp_path: Path, flag: str) -> None:
    """What a full disk leaves (a TIFF header pointing past the end of the file): the next run, once space is
    freed, starts over instead of failing on it every time (GDAL's Create opened the old file and gave up)."""
    import struct

    before, after = scene
    out = tmp_path / "out"
    (out / ".changedet-partial").mkdir(parents=True)
    (out / ".changedet-partial" / "probability.partial.tif").write_bytes(
        b"II*\x00" + struct.pack("<I", 610304) + bytes(100))
    result = detect(before, after, output_dir=out, **{flag: True}, **_options("cva", checkpoint))
    whole = detect(before, after, output_dir=tmp_path / "whole", **_options("cva", checkpoint))
    assert result.report["summary"] == whole.report["summary"]
    _assert_same_rasters(out, tmp_path / "whole")


def test_a_cog_cut_short_by_a_full_disk_is_an_output_error(scene: tuple[Path, Path], checkpoint: Path,
                                                            tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """GDAL's COG driver returns without an error when a full disk cuts the copy short: the run read the file back,
    so it no longer ends with exit 0 and an unreadable probability.tif (nor with an input error when vectorising)."""
    import os

    import rasterio.shutil

    from changedet.errors import OutputError

    real_copy = rasterio.shutil.copy

    def cut_short(src: str, dst: str, **kw: Any) -> None:
        real_copy(src, dst, **kw)
        os.truncate(dst, os.path.getsize(dst) // 2)

    monkeypatch.setattr(rasterio.shutil, "copy", cut_short)
    before, after = scene
    out = tmp_path / "out"
    for vectorize in (False, True):
        with pytest.raises(OutputError, match="check the free disk space"):
            detect(before, after, output_dir=out, vectorize=vectorize, overwrite=True, **_options("cva", checkpoint))
        assert {p.name for p in out.iterdir()} <= {".changedet-partial"}


def test_a_second_run_into_a_folder_in_use_fails_at_once(scene: tuple[Path, Path], checkpoint: Path,
                                                          tmp_path: Path) -> None:
    """Two runs into one new folder used to both exit 0 with mixed outputs (one's report.json, the other's
    change.tif): the second now fails with an OutputError and touches nothing."""
    from changedet.api import output_folder_lock
    from changedet.errors import OutputError
    from changedet.series import detect_series

    before, after = scene
    out = tmp_path / "out"
    out.mkdir()
    with output_folder_lock(out):  # as a first run holds it (another open file description: flock says no)
        with pytest.raises(OutputError, match="another changedet run is writing into this folder"):
            detect(before, after, output_dir=out, **_options("cva", checkpoint))
        with pytest.raises(OutputError, match="another changedet run is writing into this folder"):
            detect_series([before, after], output_dir=out, method="cva", quicklook=False, keep_order=True)
        assert list(out.iterdir()) == []
    result = detect(before, after, output_dir=out, **_options("cva", checkpoint))  # free again
    assert result.paths["change"].exists()
