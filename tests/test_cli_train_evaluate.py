"""``changedet train --config`` and ``changedet evaluate`` through click's CliRunner."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from click.testing import CliRunner

import changedet
from changedet.cli.main import cli
from changedet.cli.train import parse_overrides
from changedet.testing import make_geotiff
from tests.test_training import BANDS, synthetic_scene


@pytest.fixture
def list_dataset(tmp_path):
    rows = ["name,before,after,label"]
    for seed in (1, 2, 3):
        s = synthetic_scene(seed, size=64)
        for kind, arr in (("before", s.before), ("after", s.after)):
            make_geotiff(tmp_path / "data" / f"s{seed}_{kind}.tif", arr, transform=s.transform, dtype="float32",
                         descriptions=BANDS)
        make_geotiff(tmp_path / "data" / f"s{seed}_cm.tif", s.label * 255, transform=s.transform, dtype="uint8")
        rows.append(f"s{seed},s{seed}_before.tif,s{seed}_after.tif,s{seed}_cm.tif")
    (tmp_path / "data" / "pairs.csv").write_text("\n".join(rows) + "\n")
    config = {
        "out": "run",
        "dataset": {"type": "list", "path": "data/pairs.csv", "val_names": ["s3"]},
        "model": "fc-siam-diff",
        "epochs": 5,
        "chips_per_epoch": 16,
        "batch_size": 8,
        "chip_size": 32,
        "threads": 1,
        "plots": False,
        "seed": 0,
    }
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(config))
    return tmp_path


def test_parse_overrides() -> None:
    got = parse_overrides(["--epochs", "3", "--dataset.val-names", "[a,b]", "--lr=0.01", "--no-plots",
                           "--loss", "bce+dice", "--deterministic"])
    assert got == {"epochs": 3, "dataset": {"val_names": ["a", "b"]}, "lr": 0.01, "plots": False,
                   "loss": "bce+dice", "deterministic": True}


def test_train_from_config_with_overrides(list_dataset) -> None:
    runner = CliRunner()
    res = runner.invoke(cli, ["-q", "train", "--config", str(list_dataset / "run.yaml"), "--epochs", "2",
                              "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["epochs_run"] == 2
    run = list_dataset / "run"  # 'out' in a config is relative to the config file
    meta = json.loads((run / "model.json").read_text())
    assert meta["band_names"] == BANDS
    assert meta["training"]["data"] == {"type": "list", "path": str(list_dataset / "data" / "pairs.csv"),
                                        "train": ["s1", "s2"], "val": ["s3"], "test": []}
    assert meta["training"]["config"]["epochs"] == 2
    assert meta["threshold"] == pytest.approx(out["threshold"])
    # a second run into the same folder needs --overwrite (exit 2, message names the folder)
    again = runner.invoke(cli, ["-q", "train", "--config", str(list_dataset / "run.yaml"), "--epochs", "1"])
    assert again.exit_code == 2 and "--overwrite" in again.output
    ok = runner.invoke(cli, ["-q", "train", "-c", str(list_dataset / "run.yaml"), "--epochs", "1", "--overwrite"])
    assert ok.exit_code == 0, ok.output
    assert "threshold" in ok.stdout and "val F1" in ok.stdout


def test_train_rejects_unknown_keys_and_missing_config(list_dataset) -> None:
    runner = CliRunner()
    res = runner.invoke(cli, ["train", "-c", str(list_dataset / "run.yaml"), "--epoch", "2"])
    assert res.exit_code == 2 and "unknown key(s) ['epoch']" in res.output
    res = runner.invoke(cli, ["train", "-c", str(list_dataset / "nope.yaml")])
    assert res.exit_code == 2 and "no such config file" in res.output
    res = runner.invoke(cli, ["train", "-c", str(list_dataset / "run.yaml"), "--dataset.type", "lidar"])
    assert res.exit_code == 2 and "unknown dataset type" in res.output


@pytest.mark.parametrize("override,message", [
    (["--seed", "abc"], "seed must be an integer, got 'abc'"),
    (["--epochs", "1.5"], "epochs must be an integer, got 1.5"),
    (["--patience", "abc"], "patience must be an integer or null"),
    (["--model-kwargs", "5"], "model_kwargs must be a mapping or null, got 5"),
    (["--pos-weight", "abc"], "pos_weight must be a number, 'auto' or null"),
    (["--val-tile-size", "5"], "val_tile_size must be an integer >= 129"),
    (["--name", "../../x"], "name must be a file name without folders"),
    (["--dataset.bands", "3"], "dataset bands must be a list of band names"),
    (["--dataset.change-values", "abc"], "dataset change_values must be a number or a list of numbers"),
    (["--dataset.pixel-size", "abc"], "dataset pixel_size must be a positive number"),
    (["--num-workers", "-1"], "num_workers must be a whole number >= 0"),
    (["--augment.gain", "x"], "augment.gain must be a number, got 'x'"),
    (["--model-kwargs.dropout", "x"], "model_kwargs.dropout must be a number (model 'fc-siam-diff' option dropout)"),
    (["--loss", "focal", "--loss-kwargs.gamma", "x"], "loss_kwargs.gamma must be a number (loss 'focal' option gamma)"),
    (["--loss", "focal", "--loss-kwargs.focal-gamma", "2"],
     "loss 'focal' does not take ['focal_gamma']; it takes alpha, gamma, ignore_index"),
    (["--threads", "-1"], "'--threads': -1 is not in the range 1<=x<=512"),  # was torch's RuntimeError
    (["--threads", "0"], "'--threads': 0 is not in the range 1<=x<=512"),  # was silently ignored
])
def test_train_config_values_of_the_wrong_type_are_clear_errors(list_dataset, override, message) -> None:
    res = CliRunner().invoke(cli, ["train", "-c", str(list_dataset / "run.yaml"), *override])
    assert res.exit_code == 2 and message in res.output, res.output
    assert "Traceback" not in res.output
    assert not (list_dataset / "run").exists() and not (list_dataset.parent / "x.json").exists()


def test_a_bad_value_names_where_it_came_from(list_dataset) -> None:
    runner = CliRunner()
    res = runner.invoke(cli, ["train", "-c", str(list_dataset / "run.yaml"), "--epochs", "x"])
    assert res.exit_code == 2 and "command line (--epochs): epochs must be an integer, got 'x'" in res.output, res.output
    assert "run.yaml" not in res.output  # it was blamed on the config file
    config = yaml.safe_load((list_dataset / "run.yaml").read_text())
    (list_dataset / "bad.yaml").write_text(yaml.safe_dump({**config, "epochs": "x", "threads": 0}))
    res = runner.invoke(cli, ["train", "-c", str(list_dataset / "bad.yaml")])
    assert res.exit_code == 2 and f"{list_dataset / 'bad.yaml'}: epochs must be an integer, got 'x'" in res.output
    res = runner.invoke(cli, ["train", "-c", str(list_dataset / "bad.yaml"), "--epochs", "1"])
    assert res.exit_code == 2 and "threads must be a whole number from 1 to 512" in res.output, res.output
    assert "Traceback" not in res.output and not (list_dataset / "run").exists()


def test_calibrate_bad_threads_and_an_unavailable_device_are_exit_2(list_dataset, monkeypatch) -> None:
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    runner = CliRunner()
    res = runner.invoke(cli, ["train", "-c", str(list_dataset / "run.yaml"), "--epochs", "1", "-q"])
    assert res.exit_code == 0, res.output
    ckpt, out = str(list_dataset / "run" / "model.safetensors"), str(list_dataset / "cal.safetensors")
    res = runner.invoke(cli, ["calibrate", ckpt, "-o", out, "--threads", "-1"])
    assert res.exit_code == 2 and "'--threads': -1 is not in the range 1<=x<=512" in res.output, res.output
    for command in (["calibrate", ckpt, "-o", out], ["train", "-c", str(list_dataset / "run.yaml"), "-o",
                                                     str(list_dataset / "o2")]):
        res = runner.invoke(cli, [*command, "--device", "cuda"])  # calibrate's was a RuntimeError traceback
        assert res.exit_code == 2, res.output
        assert "device 'cuda' requested but CUDA is not available; use device='cpu'" in res.output
    assert not Path(out).exists()


def test_numbers_that_yaml_reads_as_text_are_numbers(list_dataset) -> None:
    from changedet.cli.train import load_config

    config, _ = load_config(list_dataset / "run.yaml", {"lr": "1e-3", "weight_decay": "5e-4"})
    assert config["lr"] == 0.001 and config["weight_decay"] == 0.0005
    with pytest.raises(Exception, match="lr must be a number, got 'fast'"):
        load_config(list_dataset / "run.yaml", {"lr": "fast"})


def test_paths_in_the_config_are_relative_to_it_and_on_the_command_line_to_the_cwd(list_dataset, monkeypatch) -> None:
    from changedet.cli.train import load_config

    config, _ = load_config(list_dataset / "run.yaml", {})
    assert config["dataset"]["path"] == str(list_dataset / "data" / "pairs.csv")
    monkeypatch.chdir(list_dataset / "data")
    config, _ = load_config(list_dataset / "run.yaml", {"dataset": {"path": "pairs.csv"}})
    assert config["dataset"]["path"] == str(list_dataset / "data" / "pairs.csv")
    assert config["dataset"]["val_names"] == ["s3"]  # merged: same dataset type
    # a dataset mapping of another type replaces the config's instead of inheriting its keys
    config, _ = load_config(list_dataset / "run.yaml", {"dataset": {"type": "folders", "root": "levir"}})
    assert config["dataset"] == {"type": "folders", "root": str(list_dataset / "data" / "levir")}


def test_train_out_that_is_a_file_is_a_clear_error(list_dataset) -> None:
    (list_dataset / "afile").write_text("")
    res = CliRunner().invoke(cli, ["train", "-c", str(list_dataset / "run.yaml"), "--out", str(list_dataset / "afile")])
    assert res.exit_code == 2 and "exists and is not a folder" in res.output


def _masks(tmp_path):
    truth = np.zeros((10, 10), np.uint8)
    truth[2:6, 2:6] = 2
    truth[truth == 0] = 1  # OSCD-style 1/2 labels
    pred = np.zeros((10, 10), np.uint8)
    pred[2:6, 2:8] = 1  # 16 TP, 8 FP
    make_geotiff(tmp_path / "pred" / "city.tif", pred, dtype="uint8", nodata=255)
    make_geotiff(tmp_path / "truth" / "city.tif", truth, dtype="uint8")
    return tmp_path / "pred", tmp_path / "truth"


def test_evaluate_json_and_table(tmp_path) -> None:
    pred, truth = _masks(tmp_path)
    runner = CliRunner()
    res = runner.invoke(cli, ["evaluate", str(pred), str(truth), "--truth-values", "1,2", "--json"])
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout)
    pooled = report["pooled"]
    assert (pooled["tp"], pooled["fp"], pooled["fn"], pooled["tn"]) == (16, 8, 0, 76)
    assert pooled["f1"] == pytest.approx(32 / 40)
    assert len(report["files"]) == 1
    table = runner.invoke(cli, ["evaluate", str(pred / "city.tif"), str(truth / "city.tif"),
                                "--truth-change-value", "2"])
    assert table.exit_code == 0
    assert "pooled (1 files)" in table.stdout and " 80.00" in table.stdout


def test_evaluate_bad_input_exit_code(tmp_path) -> None:
    pred, truth = _masks(tmp_path)
    runner = CliRunner()
    res = runner.invoke(cli, ["evaluate", str(pred), str(tmp_path / "missing")])
    assert res.exit_code == 2 and "no such file or folder" in res.output
    res = runner.invoke(cli, ["evaluate", str(pred), str(truth), "--truth-values", "1"])
    assert res.exit_code == 2 and "two numbers" in res.output


def test_evaluate_ignore_value_and_a_lost_nodata_tag(tmp_path) -> None:
    truth = np.ones((10, 10), np.uint8)
    truth[2:4, 2:4] = 2
    truth[0, :] = 0  # unknown
    pred = np.zeros((10, 10), np.uint8)
    pred[2:4, 2:5] = 1
    pred[8:, :] = 255  # detect's no data, its nodata tag lost
    make_geotiff(tmp_path / "p.tif", pred, dtype="uint8")
    make_geotiff(tmp_path / "t.tif", truth, dtype="uint8")
    from changedet.errors import ChangedetWarning

    with pytest.warns(ChangedetWarning) as caught:
        res = CliRunner().invoke(cli, ["evaluate", str(tmp_path / "p.tif"), str(tmp_path / "t.tif"),
                                       "--ignore-value", "0", "--json"])
    assert res.exit_code == 0, res.output
    pooled = json.loads(res.stdout)["pooled"]
    assert (pooled["tp"], pooled["fp"], pooled["fn"], pooled["tn"]) == (4, 2, 0, 64)  # the 1s: no change
    said = " ".join(str(w.message) for w in caught)
    assert "OSCD labels" in said and "its 20 pixels of 255 are read as no data" in said


def test_calibrate_adds_platt_scaling_to_an_uncalibrated_checkpoint(list_dataset) -> None:
    runner = CliRunner()
    res = runner.invoke(cli, ["-q", "train", "-c", str(list_dataset / "run.yaml"), "--chips-per-epoch", "32",
                              "--probability-calibration", "none", "--json"])
    assert res.exit_code == 0, res.output
    raw = list_dataset / "run" / "model.safetensors"
    raw_meta = json.loads(raw.with_suffix(".json").read_text())
    assert "probability_calibration" not in raw_meta["metrics"]
    out = list_dataset / "cal" / "model.safetensors"
    res = runner.invoke(cli, ["calibrate", str(raw), "-o", str(out), "--threads", "1", "--json"])
    assert res.exit_code == 0, res.output
    got = json.loads(res.stdout)
    assert got["scenes"] == ["s3"]  # the checkpoint's own validation split, read again from its config
    assert got["f1_before"] == pytest.approx(raw_meta["metrics"]["f1"], abs=1e-6)  # same data, same network
    assert got["f1"] == pytest.approx(got["f1_before"], abs=1e-6)  # a monotone map keeps the ranking
    meta = json.loads(out.with_suffix(".json").read_text())
    platt = meta["metrics"]["probability_calibration"]
    assert meta["threshold"] == pytest.approx(got["threshold"]) and platt["scale"] > 0
    assert platt["after"]["nll"] <= platt["before"]["nll"]
    # the weights changed (the calibration is folded in), the architecture did not
    assert meta["architecture"] == raw_meta["architecture"] and meta["weights_sha256"] != raw_meta["weights_sha256"]
    text = runner.invoke(cli, ["calibrate", str(raw), "-o", str(out)])
    assert text.exit_code == 2 and "overwrite" in text.output
    again = runner.invoke(cli, ["calibrate", str(raw), "-o", str(out), "--overwrite", "--threads", "1"])
    assert again.exit_code == 0, again.output
    assert "ECE" in again.stdout and "threshold" in again.stdout


def test_calibrate_on_your_own_labelled_scenes_and_a_bundled_model_by_name(list_dataset) -> None:
    runner = CliRunner()
    pairs = list_dataset / "data" / "pairs.csv"
    out = list_dataset / "mine" / "s2-rgb-here.safetensors"
    res = runner.invoke(cli, ["calibrate", "s2-rgb", "--scenes", str(pairs), "-o", str(out), "--threads", "1",
                              "--json"])
    assert res.exit_code == 0, res.output
    got = json.loads(res.stdout)
    assert got["scenes"] == ["s1", "s2", "s3"]
    shipped = json.loads((Path(changedet.__file__).parent / "weights" / "s2-rgb.json").read_text())
    assert got["recorded_threshold"] == pytest.approx(shipped["threshold"])
    assert 0.0 <= got["recorded_f1_here"] <= 1.0
    assert got["f1"] >= got["recorded_f1_here"] - 1e-9  # the F1-optimal threshold on these scenes
    cross = got["cross_calibrated"]
    assert sorted(cross["scenes"]) == ["s1", "s2", "s3"] and 0.0 <= cross["pooled"]["f1"] <= 1.0
    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["architecture"] == shipped["architecture"] and meta["band_names"] == shipped["band_names"]
    assert meta["threshold"] == pytest.approx(got["threshold"])
    assert meta["metrics"]["scenes"] == ["s1", "s2", "s3"] and "cross_calibrated" in meta["metrics"]
    assert meta["metrics"]["calibrated_on"] == "given scenes" and shipped["metrics"]["calibrated_on"] == "val"
    # 3-band scenes cannot calibrate the 13-band model: exit 2, the file and the fix named, nothing written
    bad = runner.invoke(cli, ["calibrate", "s2-13band", "--scenes", str(pairs), "-o", str(list_dataset / "x.safetensors")])
    assert bad.exit_code == 2 and "s1_before.tif" in bad.output and "trained on 13" in bad.output
    assert not (list_dataset / "x.safetensors").exists()
    # a mistyped bundled name lists the bundled models
    typo = runner.invoke(cli, ["calibrate", "s2rgb", "--scenes", str(pairs), "-o", str(list_dataset / "x.safetensors")])
    assert typo.exit_code == 2 and "unknown bundled model 's2rgb'" in typo.output and "s2-rgb" in typo.output
    (list_dataset / "folder").mkdir()
    into = runner.invoke(cli, ["calibrate", "s2-rgb", "--scenes", str(pairs), "-o", str(list_dataset / "folder")])
    assert into.exit_code == 2 and "a folder; give the new checkpoint's file name" in into.output
    assert list((list_dataset / "folder").iterdir()) == [] and not (list_dataset / "folder.safetensors").exists()


def test_calibrate_s2_rgb_on_13_band_stacks_reads_their_b04_b03_b02(tmp_path) -> None:
    from changedet.models.bundled import S2_BANDS

    rows = ["name,before,after,label"]
    for seed in (1, 2):
        s = synthetic_scene(seed, size=64)
        for kind, arr in (("before", s.before), ("after", s.after)):
            thirteen = np.concatenate([arr[:1]] * 3 + [arr] + [arr[:1]] * 7)  # 13 bands
            thirteen[1:4] = arr[::-1]  # B02, B03, B04 at bands 2, 3, 4 hold the scene's blue, green, red
            make_geotiff(tmp_path / f"s{seed}_{kind}.tif", thirteen, transform=s.transform, dtype="float32",
                         descriptions=list(S2_BANDS))
        make_geotiff(tmp_path / f"s{seed}_cm.tif", s.label * 255, transform=s.transform, dtype="uint8")
        rows.append(f"s{seed},s{seed}_before.tif,s{seed}_after.tif,s{seed}_cm.tif")
    (tmp_path / "pairs.csv").write_text("\n".join(rows) + "\n")
    res = CliRunner().invoke(cli, ["calibrate", "s2-rgb", "--scenes", str(tmp_path / "pairs.csv"), "-o",
                                   str(tmp_path / "mine.safetensors"), "--threads", "1", "--json"])
    assert res.exit_code == 0, res.output  # was: 13 bands, but s2-rgb was trained on 3
    assert json.loads(res.stdout)["scenes"] == ["s1", "s2"]
