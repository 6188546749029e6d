"""Batch detection on Dask (changedet.distributed, ``changedet batch``) and block-split scenes.

The cluster tests start a real ``dask.distributed.LocalCluster`` (2 worker processes, 1 thread each) and compare
every raster with a single-process :func:`changedet.api.detect` on the same pair, bit for bit.
"""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio
from click.testing import CliRunner

from changedet.api import detect
from changedet.cli.main import cli
from changedet.distributed import (
    BATCH_REPORT,
    BatchPair,
    detect_blocks,
    model_cache_info,
    plan_blocks,
    read_pairs,
    run_batch,
)
from changedet.errors import InputError
from changedet.testing import make_pair, paint_change

# the same options everywhere: small tiles so that every scene has several tile rows and columns
TILING = {"tile_size": 64, "overlap": 16, "quicklook": False}
CLI_TILING = ["--tile-size", "64", "--overlap", "16", "--no-quicklook"]


def _raster(path: Path) -> np.ndarray:
    with rasterio.open(path) as ds:
        return ds.read(1)


def _assert_same_rasters(batch_dir: Path, single_dir: Path) -> None:
    for name in ("probability.tif", "change.tif"):
        a, b = _raster(batch_dir / name), _raster(single_dir / name)
        assert a.shape == b.shape
        assert np.array_equal(a, b), f"{batch_dir / name} differs from single-process detect"


def _checkpoint(tmp: Path) -> Path:
    import torch

    from changedet.models import create_model
    from changedet.models.checkpoint import CheckpointMeta, save_checkpoint

    torch.manual_seed(0)
    model = create_model("fc-siam-diff", in_channels=3)
    meta = CheckpointMeta(band_names=["B1", "B2", "B3"], pixel_size=10.0, threshold=0.5, name="tiny")
    return save_checkpoint(model, tmp / "tiny", meta)


def _pairs(root: Path, n: int, size: int = 96, corrupt: bool = True) -> Path:
    """``n`` synthetic pairs with a painted change (and a corrupt one) plus their CSV, paths relative to it."""
    lines = ["name,before,after"]
    for i in range(n):
        before, after = make_pair(root / f"site{i}", "aligned", size=size, seed=i)
        paint_change(after, (10 + 5 * i, 20, 30, 25))
        lines.append(f"site{i},site{i}/{before.name},site{i}/{after.name}")
    if corrupt:
        make_pair(root / "broken", "corrupt", size=size)
        lines.append("broken,broken/before.tif,broken/after.tif")
    csv_path = root / "pairs.csv"
    csv_path.write_text("\n".join(lines) + "\n")
    return csv_path


# ---------------------------------------------------------------------------------------------------------------
# without a cluster
# ---------------------------------------------------------------------------------------------------------------
def test_read_pairs_resolves_paths_keeps_urls_and_derives_unique_names(tmp_path: Path) -> None:
    (tmp_path / "pairs.csv").write_text(
        "\ufeffBefore , AFTER,name,notes\n"
        "a/2019.tif,a/2020.tif,,x\n"
        "b/2019.tif,b/2020.tif,,\n"
        "\n"
        "https://example.com/c/s2_2019.tif?x=1,/vsis3/bucket/c/s2_2020.tif,,\n"
        "/abs/d.tif,/abs/e.tif,my-site,\n"
        "f/x.tif,f/x.tif,,\n"
        "g/x.tif,g/x.tif,,\n"
    )
    pairs = read_pairs(tmp_path / "pairs.csv")
    assert [p.name for p in pairs] == ["a_2019__2020", "b_2019__2020", "s2_2019__s2_2020", "my-site", "f_x", "g_x"]
    assert pairs[0].before == str((tmp_path / "a/2019.tif").resolve())
    assert pairs[2].before == "https://example.com/c/s2_2019.tif?x=1"
    assert pairs[2].after == "/vsis3/bucket/c/s2_2020.tif"
    assert pairs[3].before == "/abs/d.tif"
    assert [p.line for p in pairs] == [2, 3, 5, 6, 7, 8]
    # the same CSV gives the same names (a re-run finds its folders)
    assert [p.name for p in read_pairs(tmp_path / "pairs.csv")] == [p.name for p in pairs]


def test_derived_names_never_collide_with_given_ones(tmp_path: Path) -> None:
    (tmp_path / "p.csv").write_text("before,after,name\nx/a.tif,x/b.tif,a__b\nx/a.tif,x/b.tif,\n"
                                    "y/a.tif,y/b.tif,X_A__B\n")
    names = [p.name for p in read_pairs(tmp_path / "p.csv")]
    assert names[0] == "a__b" and names[2] == "X_A__B"
    assert names[1].lower() not in {"a__b", "x_a__b"} and names[1].startswith("x_a__b")


def test_a_rerun_keeps_the_recorded_names_when_rows_are_added(tmp_path: Path) -> None:
    """Appending a row used to rename a finished pair (``2019__2020`` -> ``siteA_2019__2020``), recomputing it into
    a new folder: the names recorded by the earlier run are kept, and new rows avoid them."""
    csv_path = tmp_path / "pairs.csv"
    csv_path.write_text("before,after\nsiteA/2019.tif,siteA/2020.tif\n")
    first = read_pairs(csv_path)
    assert [p.name for p in first] == ["2019__2020"]
    csv_path.write_text(csv_path.read_text() + "siteB/2019.tif,siteB/2020.tif\nsiteC/2019.tif,siteC/2020.tif\n")
    assert [p.name for p in read_pairs(csv_path)] == ["siteA_2019__2020", "siteB_2019__2020", "siteC_2019__2020"]
    again = read_pairs(csv_path, keep_names=first)
    assert [p.name for p in again] == ["2019__2020", "siteB_2019__2020", "siteC_2019__2020"]
    assert read_pairs(csv_path, keep_names=again) == again  # and from then on
    # a recorded name whose inputs left the CSV is not reused by another row (its folder holds the other outputs)
    csv_path.write_text("before,after\nsiteD/2019.tif,siteD/2020.tif\n")
    assert [p.name for p in read_pairs(csv_path, keep_names=first)] == ["siteD_2019__2020"]
    # a name given in the CSV wins over a recorded one
    csv_path.write_text("name,before,after\n2019__2020,siteD/2019.tif,siteD/2020.tif\n,siteA/2019.tif,siteA/2020.tif\n")
    assert [p.name for p in read_pairs(csv_path, keep_names=first)] == ["2019__2020", "siteA_2019__2020"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("left,right\na.tif,b.tif\n", "expected at least 'before' and 'after'"),
        ("before,after\n", "no pairs"),
        ("before,after\na.tif,\n,b.tif\n", "line 2: empty after; line 3: empty before"),
        ("before,after,name\na.tif,b.tif,s1\nc.tif,d.tif,S1\n", "name 'S1' is also used on line 2"),
        ("before,after,name\na.tif,b.tif,../up\n", "line 2: name '../up' is not a plain folder name"),
    ],
)
def test_read_pairs_names_the_file_and_every_bad_row(tmp_path: Path, text: str, expected: str) -> None:
    path = tmp_path / "pairs.csv"
    path.write_text(text)
    with pytest.raises(InputError, match=r"pairs\.csv") as info:
        read_pairs(path)
    assert expected in str(info.value)


def test_plan_blocks_partition_the_rows_and_list_every_tile_row_touching_them() -> None:
    from changedet.inference import engine_grid

    grid = engine_grid(1000, 300, tile_size=256, overlap=32)
    th = grid.tile_size
    for block_rows in (1, 100, 333, 999, 1000, 5000):
        plan = plan_blocks(1000, 300, block_rows=block_rows, tile_size=256, overlap=32)
        assert plan[0].rows[0] == 0 and plan[-1].rows[1] == 1000
        assert all(a.rows[1] == b.rows[0] for a, b in itertools.pairwise(plan))
        for b in plan:
            touching = [k for k, s in enumerate(grid.row_starts) if s < b.rows[1] and s + th > b.rows[0]]
            assert list(range(*b.tile_rows)) == touching
            assert b.read_rows[0] <= b.rows[0] and b.read_rows[1] >= b.rows[1]
    with pytest.raises(InputError):
        plan_blocks(10, 10, block_rows=0)


def test_row_blocks_of_the_engine_are_bit_identical_to_the_whole_scene(tmp_path: Path) -> None:
    from changedet.inference import TorchPredictor, predict_pair
    from changedet.io.alignment import open_pair
    from changedet.models import create_model

    before, after = make_pair(tmp_path, "aligned", size=96, seed=3)
    paint_change(after, (40, 40, 30, 30))
    import torch

    torch.manual_seed(0)
    predictor = TorchPredictor(create_model("fc-siam-diff", in_channels=3), [1500.0] * 3, [400.0] * 3,
                               [1500.0] * 3, [400.0] * 3)
    with open_pair(before, after) as pair:
        predict_pair(pair, predictor, out_dir=tmp_path / "whole", threshold=0.5, tile_size=48, overlap=16)
        parts = []
        for i, rows in enumerate([(0, 37), (37, 38), (38, 70), (70, 96)]):
            predict_pair(pair, predictor, out_dir=tmp_path / f"b{i}", threshold=0.5, tile_size=48, overlap=16,
                         rows=rows, cog=False)
            with rasterio.open(tmp_path / f"b{i}" / "probability.tif") as ds:
                assert ds.height == rows[1] - rows[0]
                assert ds.transform.f == pair.transform.f + rows[0] * pair.transform.e
                parts.append(ds.read(1))
    assert np.array_equal(np.concatenate(parts), _raster(tmp_path / "whole" / "probability.tif"))


def test_detect_blocks_without_a_cluster_equals_detect(tmp_path: Path) -> None:
    before, after = make_pair(tmp_path / "in", "aligned", size=96, seed=5)
    paint_change(after, (30, 30, 40, 40))
    ckpt = _checkpoint(tmp_path)
    single = detect(before, after, ckpt, output_dir=tmp_path / "single", **TILING)
    blocks = detect_blocks(before, after, ckpt, output_dir=tmp_path / "blocks", block_rows=40, **TILING)
    _assert_same_rasters(tmp_path / "blocks", tmp_path / "single")
    assert [b["rows"] for b in blocks.report["stats"]["blocks"]] == [[0, 40], [40, 80], [80, 96]]
    assert blocks.report["summary"] == single.report["summary"]
    assert blocks.report["tiling"] == single.report["tiling"]  # the same (balanced) tiles were used
    assert not any(p.name.startswith(".changedet") for p in (tmp_path / "blocks").iterdir())


@pytest.mark.parametrize("option", ["coregister", "match_histograms"])
def test_detect_blocks_apply_the_drivers_corrections_like_detect(tmp_path: Path, option: str) -> None:
    """The blocks reopen the pair with the shift (and histogram matcher) the driver estimated: --coregister was
    dropped on split scenes, which came out as without it."""
    before, after = make_pair(tmp_path / "in", "misregistered", size=96, seed=5, shift=(1.6, -2.3))
    opts = {"method": "cva", "threshold": 0.5, **TILING}
    corrected = detect(before, after, output_dir=tmp_path / "single", **{option: True}, **opts)
    plain = detect(before, after, output_dir=tmp_path / "plain", **opts)
    assert not np.array_equal(_raster(tmp_path / "single" / "probability.tif"),
                              _raster(tmp_path / "plain" / "probability.tif"))  # the option does something here
    detect_blocks(before, after, None, output_dir=tmp_path / "blocks", block_rows=40, **{option: True}, **opts)
    _assert_same_rasters(tmp_path / "blocks", tmp_path / "single")
    assert corrected.report["alignment"]["resampled"] == plain.report["alignment"]["resampled"]


def test_missing_dask_is_a_clear_input_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "distributed", None)  # what an install without the extra looks like
    csv_path = _pairs(tmp_path, 1, corrupt=False)
    with pytest.raises(InputError, match=r"pip install 'changedet\[distributed\]'"):
        run_batch(csv_path, tmp_path / "out", client=None)  # type: ignore[arg-type]
    result = CliRunner().invoke(cli, ["batch", str(csv_path), "-o", str(tmp_path / "out")])
    assert result.exit_code == 2
    assert "changedet[distributed]" in result.output


# ---------------------------------------------------------------------------------------------------------------
# on a LocalCluster
# ---------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def client():
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0",
                                  silence_logs=50) as cluster, distributed.Client(cluster) as c:
        yield c


@pytest.mark.distributed
def test_batch_cli_isolates_a_corrupt_pair_and_matches_single_process_detect(tmp_path: Path, client) -> None:
    csv_path = _pairs(tmp_path, 3)
    out = tmp_path / "out"
    args = ["batch", str(csv_path), "-o", str(out), "--scheduler", client.scheduler.address, "--method", "cva",
            "--retries", "1", *CLI_TILING]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 1, result.output
    report = json.loads((out / BATCH_REPORT).read_text())
    status = {p["name"]: p["status"] for p in report["pairs"]}
    assert status == {"site0": "done", "site1": "done", "site2": "done", "broken": "failed"}
    assert report["counts"] == {"done": 3, "skipped": 0, "failed": 1, "pending": 0}
    broken = next(p for p in report["pairs"] if p["name"] == "broken")
    assert broken["error"]["type"] == "RasterReadError"
    assert "after.tif" in broken["error"]["message"] and broken["error"]["traceback"]
    assert "RasterReadError" in result.output and "1 failed" in result.output
    assert not (out / "broken" / "report.json").exists()
    workers = {p["worker"] for p in report["pairs"] if p["status"] == "done"}
    assert workers <= set(client.scheduler_info()["workers"])
    for i in range(3):
        before = tmp_path / f"site{i}" / "before.tif"
        single = detect(before, before.with_name("after.tif"), method="cva", output_dir=tmp_path / f"single{i}",
                        **TILING)
        _assert_same_rasters(out / f"site{i}", tmp_path / f"single{i}")
        rec = next(p for p in report["pairs"] if p["name"] == f"site{i}")
        assert rec["summary"] == single.report["summary"]
        assert rec["summary"]["changed_pixels"] > 0

    # a re-run skips the done pairs (their files are not rewritten) and tries the failed one again
    stamps = {i: (out / f"site{i}" / "probability.tif").stat().st_mtime_ns for i in range(3)}
    (tmp_path / "broken" / "after.tif").write_bytes((tmp_path / "site0" / "after.tif").read_bytes())
    again = CliRunner().invoke(cli, args)
    assert again.exit_code == 0, again.output
    report = json.loads((out / BATCH_REPORT).read_text())
    status = {p["name"]: p["status"] for p in report["pairs"]}
    assert status == {"site0": "skipped", "site1": "skipped", "site2": "skipped", "broken": "done"}
    assert all((out / f"site{i}" / "probability.tif").stat().st_mtime_ns == stamps[i] for i in range(3))
    assert (out / "broken" / "report.json").is_file()
    assert next(p for p in report["pairs"] if p["name"] == "site1")["summary"]["changed_pixels"] > 0

    # a row that now names other rasters is not skipped as done: its outputs are another pair's
    csv_path.write_text(csv_path.read_text().replace("site1,site1/before.tif,site1/after.tif",
                                                     "site1,site1/before.tif,site2/after.tif"))
    third = CliRunner().invoke(cli, args)
    assert third.exit_code == 1, third.output
    site1 = next(p for p in json.loads((out / BATCH_REPORT).read_text())["pairs"] if p["name"] == "site1")
    assert site1["status"] == "failed" and "made from" in site1["error"]["message"]
    assert "--overwrite" in site1["error"]["message"]
    assert (out / "site1" / "probability.tif").stat().st_mtime_ns == stamps[1]


@pytest.mark.distributed
def test_model_batch_loads_the_model_once_per_worker_and_matches_detect(tmp_path: Path, client) -> None:
    csv_path = _pairs(tmp_path, 4, corrupt=False)
    ckpt = _checkpoint(tmp_path)
    before_info = client.run(model_cache_info)
    snapshots: list[dict[str, int]] = []

    def on_update(_rec: dict, report) -> None:  # the file on disk is already up to date
        snapshots.append(json.loads(report.path.read_text())["counts"])

    report = run_batch(csv_path, tmp_path / "out", client=client, retries=0, model=str(ckpt), on_update=on_update,
                       threads=1, **TILING)
    assert report.exit_code == 0 and report.counts["done"] == 4
    assert [s["done"] for s in snapshots] == [1, 2, 3, 4]
    assert [s["pending"] for s in snapshots] == [3, 2, 1, 0]
    after_info = client.run(model_cache_info)
    loads = {w: after_info[w]["loads"] - before_info[w]["loads"] for w in after_info}
    uses = {w: loads[w] + after_info[w]["hits"] - before_info[w]["hits"] for w in after_info}
    assert sum(uses.values()) == 4
    assert all(loads[w] == (1 if uses[w] else 0) for w in loads), (loads, uses)
    for i in range(4):
        before = tmp_path / f"site{i}" / "before.tif"
        detect(before, before.with_name("after.tif"), ckpt, output_dir=tmp_path / f"single{i}", threads=1,
               **TILING)
        _assert_same_rasters(tmp_path / "out" / f"site{i}", tmp_path / f"single{i}")


@pytest.mark.distributed
def test_a_large_scene_is_split_into_blocks_over_the_workers_and_is_bit_identical(tmp_path: Path, client) -> None:
    before, after = make_pair(tmp_path / "big", "aligned", size=128, seed=7)
    paint_change(after, (50, 60, 40, 40))
    small = make_pair(tmp_path / "small", "aligned", size=64, seed=8)
    ckpt = _checkpoint(tmp_path)
    pairs = [BatchPair("big", str(before), str(after)), BatchPair("small", str(small[0]), str(small[1]))]
    report = run_batch(pairs, tmp_path / "out", client=client, retries=0, block_pixels=100 * 100, block_rows=40,
                       model=str(ckpt), threads=1, **TILING)
    assert report.exit_code == 0
    recs = {p["name"]: p for p in report.pairs}
    assert recs["big"]["blocks"] == 4 and recs["small"]["blocks"] is None
    pair_report = json.loads((tmp_path / "out" / "big" / "report.json").read_text())
    blocks = pair_report["stats"]["blocks"]
    assert [b["rows"] for b in blocks] == [[0, 40], [40, 80], [80, 120], [120, 128]]
    assert {b["worker"] for b in blocks} <= set(client.scheduler_info()["workers"])
    detect(before, after, ckpt, output_dir=tmp_path / "single", threads=1, **TILING)
    _assert_same_rasters(tmp_path / "out" / "big", tmp_path / "single")
    assert not (tmp_path / "out" / "big" / ".changedet-partial").exists()


@pytest.mark.distributed
def test_cli_starts_its_own_local_cluster_and_prints_the_dashboard(tmp_path: Path) -> None:
    csv_path = _pairs(tmp_path, 2, corrupt=False)
    result = CliRunner().invoke(cli, ["batch", str(csv_path), "-o", str(tmp_path / "out"), "--workers", "2",
                                      "--dashboard-address", ":0", "--method", "cva", "--json", *CLI_TILING])
    assert result.exit_code == 0, result.output
    assert "dashboard: http://" in result.stderr
    report = json.loads(result.stdout)
    assert report["workers"] == 2 and report["counts"]["done"] == 2
    assert report["dashboard"].startswith("http://")


@pytest.mark.distributed
def test_a_rerun_with_an_added_row_keeps_the_done_pairs_name_and_skips_it(tmp_path: Path, client) -> None:
    for site in ("siteA", "siteB"):
        make_pair(tmp_path / site, "aligned", size=48, names=("2019.tif", "2020.tif"))
    csv_path = tmp_path / "pairs.csv"
    csv_path.write_text("before,after\nsiteA/2019.tif,siteA/2020.tif\n")
    out = tmp_path / "out"
    assert run_batch(csv_path, out, client=client, retries=0, method="cva", **TILING).exit_code == 0
    stamp = (out / "2019__2020" / "change.tif").stat().st_mtime_ns
    csv_path.write_text(csv_path.read_text() + "siteB/2019.tif,siteB/2020.tif\n")
    report = run_batch(csv_path, out, client=client, retries=0, method="cva", **TILING)
    assert {p["name"]: p["status"] for p in report.pairs} == {"2019__2020": "skipped", "siteB_2019__2020": "done"}
    assert (out / "2019__2020" / "change.tif").stat().st_mtime_ns == stamp
    assert sorted(p.name for p in out.iterdir()) == ["2019__2020", BATCH_REPORT, "siteB_2019__2020"]


@pytest.mark.distributed
@pytest.mark.filterwarnings("ignore::changedet.errors.ChangedetWarning")  # those pytest.warns below does not match
def test_quiet_batch_prints_worker_warnings_like_detect_and_no_dask_line(tmp_path: Path, client) -> None:
    from changedet.errors import NotGeoreferencedWarning

    make_pair(tmp_path / "p", "no-crs-both", size=48)
    csv_path = tmp_path / "pairs.csv"
    csv_path.write_text("before,after\np/before.tif,p/after.tif\n")
    # the installed command in a subprocess: its stderr as a user sees it (the workers' own stderr is not in it)
    res = subprocess.run([str(Path(sys.executable).with_name("changedet")), "-q", "batch", str(csv_path), "-o",
                          str(tmp_path / "out"), "--scheduler", client.scheduler.address, "--method", "cva",
                          *CLI_TILING], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    lines = res.stderr.splitlines()
    assert lines and all(line.startswith("warning: ") for line in lines), res.stderr  # no "dask: ..." line
    assert any("no georeferencing" in line for line in lines)
    report = json.loads((tmp_path / "out" / BATCH_REPORT).read_text())
    assert any("NotGeoreferencedWarning: " in w for w in report["pairs"][0]["warnings"])
    # from Python: the workers' warnings are raised again in the client process, with their class
    with pytest.warns(NotGeoreferencedWarning, match="no georeferencing"):
        run_batch(csv_path, tmp_path / "out2", client=client, retries=0, method="cva", **TILING)


def test_detect_options_are_checked_before_any_cluster_is_used(tmp_path: Path) -> None:
    """An unknown model, a CUDA device that is not there or a threshold out of range used to start the cluster and
    fail every pair (with retries): now an error before the client is touched (client=None here)."""
    from changedet.errors import UnknownModelError

    pairs = [BatchPair("p", "before.tif", "after.tif")]
    with pytest.raises(UnknownModelError, match="nosuchmodel"):
        run_batch(pairs, tmp_path / "out", client=None, model="nosuchmodel")
    for bad, text in [({"threshold": 2.0}, "--threshold"), ({"overlap": -1}, "--overlap"),
                      ({"tta": "nope"}, "test-time augmentation"),
                      ({"indexes": ([4, 3, 2], [1, 2])}, "as many bands in BEFORE as in AFTER")]:
        with pytest.raises(InputError, match=text):
            run_batch(pairs, tmp_path / "out", client=None, **bad)
    from changedet.errors import CheckpointError

    with pytest.raises(CheckpointError, match="nonexist"):  # it failed in every pair
        run_batch(pairs, tmp_path / "out", client=None, model="fc-ef", checkpoint=str(tmp_path / "nonexist"))
    with pytest.raises(CheckpointError, match="'fc-ef' is an architecture without trained weights"):  # detect's
        run_batch(pairs, tmp_path / "out", client=None, model="fc-ef")
    assert not (tmp_path / "out").exists()


def test_the_batch_command_refuses_bad_options_before_starting_a_cluster(tmp_path: Path) -> None:
    csv = tmp_path / "pairs.csv"
    csv.write_text("before,after\na.tif,b.tif\n")
    res = CliRunner().invoke(cli, ["batch", str(csv), "-o", str(tmp_path / "out"), "-m", "nosuchmodel"])
    assert res.exit_code == 2 and "nosuchmodel" in res.output
    assert "dask:" not in res.output  # no cluster was started
    # an architecture without --checkpoint: detect's message and exit code, not a CheckpointError in every pair
    res = CliRunner().invoke(cli, ["batch", str(csv), "-o", str(tmp_path / "out"), "-m", "fc-ef"])
    assert res.exit_code == 2, res.output
    assert "error: 'fc-ef' is an architecture without trained weights" in res.output
    assert "dask:" not in res.output


def test_a_batch_report_that_cannot_be_written_is_an_output_error_or_a_warning(tmp_path: Path) -> None:
    from changedet.distributed import BatchReport
    from changedet.errors import ChangedetWarning, OutputError

    report = BatchReport(tmp_path / "gone" / "batch-report.json", {"started": "now"},
                         [{"name": "p", "status": "done"}])
    with pytest.raises(OutputError, match="cannot write the batch report"):
        report.write()  # before the pairs start: the batch stops (exit 1), nothing is running yet
    with pytest.warns(ChangedetWarning, match="the pairs go on"):
        report.write_or_warn()  # while pairs run: they go on, and the exit code says the batch is not clean
    assert report.exit_code == 1 and report.write_error is not None
    (tmp_path / "gone").mkdir()
    report.write_or_warn()
    assert report.exit_code == 0 and json.loads(report.path.read_text())["counts"]["done"] == 1


def test_ctrl_c_in_a_batch_says_what_is_kept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import contextlib
    import types

    import changedet.distributed as dist

    @contextlib.contextmanager
    def fake_client(*_a: object, **_k: object):  # type: ignore[no-untyped-def]
        yield types.SimpleNamespace(scheduler_info=lambda: {"workers": {}},
                                    scheduler=types.SimpleNamespace(address="inproc://test"))

    def interrupted(*_a: object, **_k: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(dist, "open_client", fake_client)
    monkeypatch.setattr(dist, "run_batch", interrupted)
    csv = tmp_path / "pairs.csv"
    csv.write_text("before,after\na.tif,b.tif\n")
    res = CliRunner().invoke(cli, ["batch", str(csv), "-o", str(tmp_path / "out")])
    assert res.exit_code == 130
    assert "run the same command again to continue" in res.output
    assert "no partial output was left behind" not in res.output


def test_a_remote_cluster_checks_the_device_and_checkpoint_on_its_workers() -> None:
    """A CPU login node submits --device cuda to GPU workers: only a local cluster's device is checked here."""
    from changedet.distributed import _check_options

    _check_options({"device": "cuda", "checkpoint": "/on/the/workers/model.safetensors", "model": "fc-ef"},
                   local=False)
    import torch

    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="CUDA is not available"):
            _check_options({"device": "cuda"}, local=True)
