"""Distributed (DDP) training: the epoch split, rank-0 helpers, and real 2-process gloo runs under torchrun.

The ``distributed`` tests start ``python -m torch.distributed.run --standalone`` (loopback rendezvous on a free
port) in a session of their own and kill that whole session if it runs past its time limit.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from torch.utils.data import DataLoader

from changedet.ddp import (
    RankFailedError,
    ShardedBatchSampler,
    assign_by_size,
    distributed_context,
    run_on_main,
    state_dict_digest,
)
from changedet.errors import InputError, OutputExistsError
from tests.test_training import BANDS, synthetic_scene

REPO = Path(__file__).resolve().parents[1]
TIMEOUT = 150  # seconds for one torchrun launch on a busy 2-core machine (a run takes ~20 s)


def _run_bounded(cmd: list[str], timeout: float = TIMEOUT, **kwargs) -> subprocess.CompletedProcess:
    """Run cmd in its own session; on timeout kill that session (torchrun and its workers) and fail."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, cwd=kwargs.pop("cwd", REPO), env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"{' '.join(cmd)} did not finish in {timeout} s; stderr:\n{err[-4000:]}")
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def _stderr(res: subprocess.CompletedProcess) -> str:
    """Both ends of a failed launch's stderr: the workers' own messages come first, torchrun's summary last."""
    err = res.stderr
    return err if len(err) <= 8000 else f"{err[:4000]}\n[...]\n{err[-4000:]}"


# ----------------------------------------------------------------------------------------------- epoch sharding
@pytest.mark.parametrize(("n", "batch", "world"), [(16, 4, 2), (17, 4, 2), (64, 8, 3), (5, 8, 2), (30, 7, 4),
                                                   (8, 8, 8)])
def test_sharded_batches_split_each_single_process_batch(n: int, batch: int, world: int) -> None:
    single = [b.tolist() for b in DataLoader(range(n), batch_size=batch, shuffle=False, drop_last=n > batch)]
    ranks = [ShardedBatchSampler(n, batch_size=batch, rank=r, world_size=world).batches() for r in range(world)]
    assert len({len(b) for b in ranks}) == 1, "every rank must take the same number of steps"
    assert len(ranks[0]) == len(single)
    for step, global_batch in enumerate(single):
        shares = [ranks[r][step] for r in range(world)]
        assert all(shares), "no rank may get an empty batch"
        flat = [i for share in shares for i in share]
        assert len(flat) == len(set(flat)), "the ranks' shares overlap"
        assert sorted(flat) == global_batch, "the shares must make up the single-process batch"
    # the whole epoch: each chip of the single-process epoch exactly once
    seen = sorted(i for r in ranks for b in r for i in b)
    assert seen == sorted(i for b in single for i in b)
    # usable as a DataLoader batch_sampler
    loader = DataLoader(range(n), batch_sampler=ShardedBatchSampler(n, batch_size=batch, rank=0, world_size=world))
    assert [b.tolist() for b in loader] == ranks[0]


def test_sharded_batches_reject_batches_too_small_to_share() -> None:
    with pytest.raises(InputError, match="cannot be shared by 2 processes"):
        ShardedBatchSampler(16, batch_size=1, rank=0, world_size=2)
    with pytest.raises(InputError, match="raise batch_size and chips_per_epoch"):
        ShardedBatchSampler(3, batch_size=8, rank=0, world_size=4)
    with pytest.raises(InputError, match="rank 2"):
        ShardedBatchSampler(16, batch_size=4, rank=2, world_size=2)


def test_assign_by_size_balances_scenes_over_ranks() -> None:
    sizes = [900, 100, 500, 400, 300, 200]
    owners = assign_by_size(sizes, 2)
    loads = [sum(s for s, o in zip(sizes, owners, strict=True) if o == r) for r in range(2)]
    assert sorted(loads) == [1200, 1200]
    assert assign_by_size(sizes, 1) == [0] * 6
    assert sorted(set(assign_by_size(sizes, 3))) == [0, 1, 2]
    assert assign_by_size([], 4) == []


# ------------------------------------------------------------------------------------------- single-process paths
def test_single_process_context_and_rank0_helpers(monkeypatch) -> None:
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(key, raising=False)
    with distributed_context("cpu") as ctx:
        assert ctx is None
    with distributed_context("cpu", enabled=False) as ctx:
        assert ctx is None
    with pytest.raises(InputError, match="RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT"), \
            distributed_context("cpu", enabled=True):
        pass
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(InputError, match="WORLD_SIZE='two'"), distributed_context("cpu"):
        pass
    assert run_on_main(lambda: 41 + 1, None) == 42
    with pytest.raises(OutputExistsError):
        run_on_main(lambda: (_ for _ in ()).throw(OutputExistsError("x")), None)


def test_rank_errors_are_rebuilt_with_their_class() -> None:
    from changedet.ddp import _rebuild_error

    err = _rebuild_error("OutputExistsError", "changedet.errors", "out: holds the outputs of an earlier run")
    assert type(err) is OutputExistsError and err.exit_code == 2 and "earlier run" in str(err)
    err = _rebuild_error("ZeroDivisionError", "builtins", "division by zero")
    assert isinstance(err, RankFailedError) and "rank 0 failed with ZeroDivisionError" in str(err)


def test_state_dict_digest_sees_any_changed_bit() -> None:
    a = torch.nn.Conv2d(3, 4, 3)
    b = torch.nn.Conv2d(3, 4, 3)
    b.load_state_dict(a.state_dict())
    assert state_dict_digest(a) == state_dict_digest(b)
    b.to(memory_format=torch.channels_last)
    assert state_dict_digest(b) == state_dict_digest(a)
    with torch.no_grad():
        b.weight[0, 0, 0, 0] = torch.nextafter(b.weight[0, 0, 0, 0], torch.tensor(10.0))
    assert state_dict_digest(a) != state_dict_digest(b)


def test_sync_bn_is_a_no_op_in_a_single_process(tmp_path) -> None:
    from changedet.training import train

    res = train(out=tmp_path, train_scenes=[synthetic_scene(1, 48)], val_scenes=[synthetic_scene(2, 48)],
                model="fc-siam-diff", chip_size=32, batch_size=4, chips_per_epoch=4, epochs=1, threads=1,
                plots=False, sync_bn=True)
    assert res.distributed is None and res.checkpoint.exists()
    assert "distributed" not in res.to_dict()


def _free_port() -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.distributed
@pytest.mark.parametrize("ema", [None, 0.8])
def test_one_rank_ddp_path_gives_the_single_process_weights(tmp_path, monkeypatch, ema) -> None:
    """distributed=True with one rank runs the DDP code path (sampler, loss weighting, rank-0 outputs, buffer
    broadcasts, sharded validation) in this process: it must train exactly what a single process trains."""
    import torch.distributed as dist
    from safetensors.torch import load_file

    from changedet.training import train

    for key, value in {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1",
                       "MASTER_PORT": str(_free_port())}.items():
        monkeypatch.setenv(key, value)
    kwargs = {"train_scenes": [synthetic_scene(1, 64), synthetic_scene(2, 64)],
              "val_scenes": [synthetic_scene(5, 48), synthetic_scene(6, 48)], "model": "fc-siam-diff",
              "chip_size": 32, "batch_size": 4, "chips_per_epoch": 8, "epochs": 2, "threads": 1, "seed": 4,
              "plots": False, "ddp_timeout": 30, "ema": ema}
    with pytest.raises(InputError, match="sync_bn needs CUDA"):
        train(out=tmp_path / "syncbn", distributed=True, sync_bn=True, **kwargs)
    assert not dist.is_initialized(), "the process group must be destroyed after an error"
    ddp = train(out=tmp_path / "ddp", distributed=True, **kwargs)
    assert not dist.is_initialized()
    single = train(out=tmp_path / "single", distributed=False, **kwargs)
    assert ddp.distributed is not None and ddp.distributed["world_size"] == 1 and single.distributed is None
    wd, ws = load_file(str(ddp.checkpoint)), load_file(str(single.checkpoint))
    assert wd.keys() == ws.keys() and all(torch.equal(wd[k], ws[k]) for k in wd)
    assert ddp.threshold == single.threshold
    strip = ("train_seconds", "val_seconds")
    assert [{k: v for k, v in r.items() if k not in strip} for r in ddp.history] == \
        [{k: v for k, v in r.items() if k not in strip} for r in single.history]


# --------------------------------------------------------------------------------------- real 2-process training
WORKER = textwrap.dedent(
    """
    import json, os, sys
    from pathlib import Path

    from changedet.training import train
    from tests.test_training import synthetic_scene

    base = Path(sys.argv[1])
    ema = float(sys.argv[2]) if len(sys.argv) > 2 else None
    rank = int(os.environ["RANK"])
    # each rank gets its own output folder (as on machines without a shared disk): only rank 0 may write to its own
    result = train(
        out=base / f"rank{rank}",
        train_scenes=[synthetic_scene(1, 64), synthetic_scene(2, 64)],
        val_scenes=[synthetic_scene(5, 48), synthetic_scene(6, 64)],
        model="fc-siam-diff", chip_size=32, batch_size=4, chips_per_epoch=12, epochs=2, threads=1, seed=3,
        plots=True, ddp_timeout=60, ema=ema,
        probability_calibration="none",  # the checkpoint must hold the replicas' weights bit for bit (digests)
    )
    (base / f"result{rank}.json").write_text(json.dumps(result.to_dict(), default=str))
    """
)


@pytest.mark.distributed
@pytest.mark.parametrize("ema", [None, 0.8])
def test_two_process_ddp_training_gives_identical_replicas(tmp_path, ema) -> None:
    from safetensors.torch import load_file

    from changedet.calibration import calibrate_threshold
    from changedet.data.sampling import prepare_scenes
    from changedet.models import create_model
    from changedet.training import _validate, seed_everything

    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    res = _run_bounded([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                        str(script), str(tmp_path), *([] if ema is None else [str(ema)])])
    assert res.returncode == 0, _stderr(res)
    r0, r1 = (json.loads((tmp_path / f"result{r}.json").read_text()) for r in (0, 1))

    # both ranks hold the same weights: each rank's own digest, gathered, and the digest of the checkpoint on disk
    d0, d1 = r0["distributed"], r1["distributed"]
    assert (d0["rank"], d1["rank"]) == (0, 1) and d0["world_size"] == d1["world_size"] == 2
    assert d0["backend"] == "gloo" and d0["sync_bn"] is False
    digests = d0["weights_digests"]
    assert digests == d1["weights_digests"] and len(digests) == 2 and digests[0] == digests[1]
    checkpoint = Path(r0["checkpoint"])
    assert state_dict_digest(load_file(str(checkpoint))) == digests[0]
    seed_everything(3)  # the initial weights of the run: training changed them
    assert state_dict_digest(create_model("fc-siam-diff", in_channels=3)) != digests[0]

    # only rank 0 wrote: its folder holds every output, rank 1's folder was never created
    assert sorted(p.name for p in (tmp_path / "rank0").iterdir()) == [
        "curves.png", "metrics.csv", "model.json", "model.safetensors", "pr_curve.png"]
    assert not (tmp_path / "rank1").exists()
    assert checkpoint.parent == tmp_path / "rank0" and r1["checkpoint"] == r0["checkpoint"]

    # the sharded epochs: each of the 2 x 12 chips trained on once, 6 per rank and epoch (batches of 2 + 2)
    assert d0["global_batch_size"] == 4
    assert d0["chips_per_rank"] == d1["chips_per_rank"] == [12, 12]
    assert r0["epochs_run"] == 2

    # every rank returns rank 0's result, and the metrics are a single process's on the same weights
    for key in ("threshold", "metrics", "best_epoch", "epochs_run", "files"):
        assert r0[key] == r1[key], key
    meta = json.loads(checkpoint.with_suffix(".json").read_text())
    assert meta["training"]["distributed"] == {"world_size": 2, "backend": "gloo", "sync_bn": False,
                                               "global_batch_size": 4}
    assert len((tmp_path / "rank0" / "metrics.csv").read_text().splitlines()) == 1 + r0["epochs_run"]
    model = create_model("fc-siam-diff", in_channels=3)
    model.load_state_dict(load_file(str(checkpoint)))
    val, _ = prepare_scenes([synthetic_scene(5, 48), synthetic_scene(6, 64)], normalization="scene")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _, probs, _ = _validate(model, val, None, torch.device("cpu"), 1024, False)
    finally:
        torch.set_num_threads(threads)
    single = calibrate_threshold(probs, [s.label for s in val], [s.valid for s in val], method="f1")
    assert r0["threshold"] == pytest.approx(single.threshold, abs=1e-6)
    assert r0["metrics"]["f1"] == pytest.approx(single.metrics["f1"], abs=1e-9)
    assert np.isfinite(r0["metrics"]["average_precision"])


@pytest.fixture
def pairs_config(tmp_path):
    from changedet.testing import make_geotiff

    rows = ["name,before,after,label"]
    for seed in (1, 2, 3):
        s = synthetic_scene(seed, size=48)
        for kind, arr in (("before", s.before), ("after", s.after)):
            make_geotiff(tmp_path / f"s{seed}_{kind}.tif", arr, transform=s.transform, dtype="float32",
                         descriptions=BANDS)
        make_geotiff(tmp_path / f"s{seed}_cm.tif", s.label * 255, transform=s.transform, dtype="uint8")
        rows.append(f"s{seed},s{seed}_before.tif,s{seed}_after.tif,s{seed}_cm.tif")
    (tmp_path / "pairs.csv").write_text("\n".join(rows) + "\n")
    config = {"out": "run", "dataset": {"type": "list", "path": "pairs.csv", "val_names": ["s3"]},
              "model": "fc-siam-diff", "epochs": 1, "chips_per_epoch": 8, "batch_size": 4, "chip_size": 32,
              "threads": 1, "plots": False, "seed": 0, "ddp_timeout": 60}
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(config))
    return tmp_path / "run.yaml"


@pytest.mark.distributed
def test_cli_nproc_launches_torchrun_and_rank0_errors_reach_every_rank(pairs_config) -> None:
    cmd = [sys.executable, "-m", "changedet.cli.train", "-q", "train", "-c", str(pairs_config), "--nproc", "2",
           "--json"]
    res = _run_bounded(cmd)
    assert res.returncode == 0, _stderr(res)
    result = json.loads(res.stdout)  # one JSON document: only rank 0 printed its summary
    dist = result["distributed"]
    assert dist["world_size"] == 2 and dist["rank"] == 0 and dist["chips_per_rank"] == [4, 4]
    assert dist["weights_digests"][0] == dist["weights_digests"][1]
    run = pairs_config.parent / "run"
    assert (run / "model.safetensors").exists() and (run / "metrics.csv").exists()

    # a second run without --overwrite: rank 0 finds the outputs, every rank stops with its error (no hang)
    again = _run_bounded(cmd, timeout=90)
    assert again.returncode != 0
    assert again.stderr.count("holds the outputs of an earlier run") >= 2, again.stderr[-4000:]
    assert again.stdout == ""

    # the folder locked by another run: rank 0 is refused, every rank stops with its error (no wait for a timeout)
    from changedet.io.folders import output_folder_lock

    with output_folder_lock(run):
        busy = _run_bounded([*cmd, "--overwrite"], timeout=90)
    assert busy.returncode != 0
    assert busy.stderr.count("another changedet run is writing into this folder") >= 2, busy.stderr[-4000:]
