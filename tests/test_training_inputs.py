"""Training inputs that cannot be meant as given: label nodata that is a class, splits without change, files not in
UTF-8, misspelt options, off-grid labels; and the run's outputs: staged until complete, stale plots removed,
absolute dataset paths recorded."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from changedet.cli.main import cli
from changedet.data import load_dataset, read_folders, read_list, read_pair_files
from changedet.data.sampling import parse_normalization, prepare_scenes
from changedet.errors import (
    ChangedetWarning,
    InputError,
    ModelArgumentError,
    NoOverlapError,
    OutputExistsError,
    Terminated,
    exit_code_for,
)
from changedet.evaluation import evaluate_paths
from changedet.testing import make_geotiff
from changedet.training import _check_label_classes, calibrate_checkpoint, train
from tests.test_training import BANDS, synthetic_scene

TINY = {"model": "fc-ef", "chip_size": 32, "batch_size": 4, "chips_per_epoch": 8, "threads": 1, "plots": False,
        "epochs": 1, "val_tile_size": 256}


def folder_dataset(root: Path, n: int = 3, *, size: int = 48, nodata: float | None = None, scale: int = 255,
                   nochange: tuple[str, ...] = ()) -> Path:
    """An A/B/label folder of synthetic pairs p0, p1... with 0/``scale`` labels (tagged ``nodata`` if given)."""
    for i in range(n):
        name = f"p{i}"
        s = synthetic_scene(i, size=size)
        label = np.zeros_like(s.label) if name in nochange else s.label
        make_geotiff(root / "A" / f"{name}.tif", s.before, transform=s.transform, dtype="float32", descriptions=BANDS)
        make_geotiff(root / "B" / f"{name}.tif", s.after, transform=s.transform, dtype="float32", descriptions=BANDS)
        make_geotiff(root / "label" / f"{name}.tif", label * scale, transform=s.transform, dtype="uint8",
                     nodata=nodata)
    return root


def write_pair(folder: Path, label: np.ndarray, *, nodata: float | None = None, origin=(500000.0, 5700000.0)):
    before = np.random.default_rng(0).integers(1, 1000, (2, *label.shape)).astype(np.uint16)
    make_geotiff(folder / "before.tif", before)
    make_geotiff(folder / "after.tif", before)
    make_geotiff(folder / "label.tif", label, dtype="uint8", nodata=nodata, origin=origin)
    return folder / "before.tif", folder / "after.tif", folder / "label.tif"


# ------------------------------------------------------------------------------------------ label nodata (problem 1)
@pytest.mark.parametrize("change_values", [None, [255]])
def test_a_label_nodata_that_is_the_no_change_value_is_read_as_no_change(tmp_path, change_values) -> None:
    label = np.zeros((16, 16), np.uint8)
    label[4:8, 4:8] = 255  # gdal_rasterize -burn 255 -a_nodata 0
    before, after, lab = write_pair(tmp_path, label, nodata=0)
    with pytest.warns(ChangedetWarning, match=r"label\.tif: its nodata value 0 is also the label's 'no change'"):
        scene = read_pair_files(before, after, lab, change_values=change_values)
    assert scene.valid.all()  # the 0s are known "no change", not unknown
    assert scene.change_fraction == pytest.approx(16 / 256)


def test_a_label_nodata_that_is_no_class_still_marks_unknown_pixels(tmp_path) -> None:
    label = np.full((16, 16), 255, np.uint8)  # changedet's own change.tif: 0/1 with a nodata 255 border
    label[2:14, 2:14] = 0
    label[4:8, 4:8] = 1
    before, after, lab = write_pair(tmp_path, label, nodata=255)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ChangedetWarning)
        scene = read_pair_files(before, after, lab)
    assert scene.valid.sum() == 144 and scene.label[scene.valid].sum() == 16
    oscd = np.zeros((16, 16), np.uint8)  # OSCD's 1/2 with 0 unknown, tagged nodata 0: 0 stays unknown
    oscd[2:14, 2:14] = 1
    oscd[4:8, 4:8] = 2
    before, after, lab = write_pair(tmp_path / "oscd", oscd, nodata=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ChangedetWarning)
        scene = read_pair_files(before, after, lab)
    assert scene.valid.sum() == 144 and scene.label[scene.valid].sum() == 16


def test_evaluate_reads_a_truth_tagged_nodata_0_as_no_change(tmp_path) -> None:
    truth = np.zeros((32, 32), np.uint8)
    truth[4:12, 4:12] = 255
    make_geotiff(tmp_path / "truth.tif", truth, nodata=0)
    make_geotiff(tmp_path / "change.tif", (truth > 0).astype(np.uint8), nodata=255)
    with pytest.warns(ChangedetWarning, match=r"truth\.tif: its nodata value 0"):
        result = evaluate_paths(tmp_path / "change.tif", tmp_path / "truth.tif")
    pooled = result["pooled"]
    assert pooled["tn"] == 32 * 32 - 64 and pooled["kappa"] == pytest.approx(1.0)


def test_training_on_labels_tagged_nodata_0_keeps_the_no_change_class(tmp_path) -> None:
    root = folder_dataset(tmp_path / "d", nodata=0)
    with pytest.warns(ChangedetWarning, match="nodata value 0"):
        split = load_dataset({"type": "folders", "root": str(root), "val_names": ["p2"]})
    fractions = [s.change_fraction for s in [*split.train, *split.val]]
    assert all(0.0 < f < 0.5 for f in fractions), fractions  # was 1.0: only the changed pixels were valid


# ------------------------------------------------------------------------ splits without change (problems 2 and 3)
def test_training_without_any_changed_pixel_is_an_input_error_naming_the_values(tmp_path) -> None:
    root = folder_dataset(tmp_path / "d")  # labels 0/255
    out = tmp_path / "run"
    with pytest.raises(InputError, match=r"no changed pixel.*change_values \[1\].*\{0, 255\}.*p0\.tif.*\[255\]"):
        train(out=out, dataset={"type": "folders", "root": str(root), "val_names": ["p2"], "change_values": [1]},
              **TINY)
    assert not out.exists()


def test_validation_without_change_warns_and_picks_the_epoch_by_validation_loss(tmp_path) -> None:
    root = folder_dataset(tmp_path / "d", size=64, nochange=("p2",))
    with pytest.warns(ChangedetWarning, match=r"validation scenes \(p2\) hold no changed pixel"):
        result = train(out=tmp_path / "run", dataset={"type": "folders", "root": str(root), "val_names": ["p2"]},
                       **{**TINY, "epochs": 6, "patience": 2, "chips_per_epoch": 16, "seed": 1})
    losses = [row["val_loss"] for row in result.history]
    assert result.best_epoch == 1 + int(np.argmin(losses)) and result.best_epoch > 1, losses
    meta = json.loads((tmp_path / "run" / "model.json").read_text())
    assert meta["training"]["best_epoch_by"] == "val_loss"


def test_a_split_of_one_class_only_warns() -> None:
    changed = synthetic_scene(1, size=32)
    changed.label[:] = 1
    with pytest.warns(ChangedetWarning, match="training scenes .* only changed pixels"):
        assert _check_label_classes([changed], [synthetic_scene(2, size=32)], None)
    with pytest.warns(ChangedetWarning, match="validation scenes .* only changed pixels"):
        assert _check_label_classes([synthetic_scene(2, size=32)], [changed], None)


# --------------------------------------------------------------------------------- staged outputs (problems 4, 9)
def _interrupt_after_first_epoch(exc: type[BaseException]):
    def progress(event):
        if event["event"] == "epoch":
            raise exc

    return progress


@pytest.mark.parametrize("exc", [KeyboardInterrupt, Terminated])
def test_an_interrupted_training_leaves_nothing_and_does_not_block_the_rerun(tmp_path, exc) -> None:
    root = folder_dataset(tmp_path / "d")
    dataset = {"type": "folders", "root": str(root), "val_names": ["p2"]}
    out = tmp_path / "run"
    with pytest.raises(exc):
        train(out=out, dataset=dataset, progress=_interrupt_after_first_epoch(exc), **{**TINY, "epochs": 3})
    assert not out.exists()  # was: metrics.csv, which made the rerun an OutputExistsError
    train(out=out, dataset=dataset, **TINY)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(exc):  # an interrupted --overwrite run leaves the earlier run as it was
        train(out=out, dataset=dataset, overwrite=True, progress=_interrupt_after_first_epoch(exc),
              **{**TINY, "epochs": 3, "seed": 5})
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    with pytest.raises(OutputExistsError):
        train(out=out, dataset=dataset, **TINY)


def test_metrics_are_written_to_the_staging_folder_during_the_run(tmp_path) -> None:
    root = folder_dataset(tmp_path / "d")
    out = tmp_path / "run"
    seen: list[list[str]] = []

    def progress(event):
        if event["event"] == "epoch":
            seen.append(sorted(str(p.relative_to(out)) for p in out.rglob("*")))

    train(out=out, dataset={"type": "folders", "root": str(root), "val_names": ["p2"]}, progress=progress, **TINY)
    assert len(seen) == 1 and seen[0][0].startswith(".changedet-staging-") and seen[0][1].endswith("metrics.csv")
    assert sorted(p.name for p in out.iterdir()) == ["metrics.csv", "model.json", "model.safetensors"]


def test_overwrite_without_plots_removes_the_earlier_runs_plots(tmp_path) -> None:
    root = folder_dataset(tmp_path / "d")
    dataset = {"type": "folders", "root": str(root), "val_names": ["p2"]}
    out = tmp_path / "run"
    train(out=out, dataset=dataset, **{**TINY, "plots": True})
    assert (out / "curves.png").is_file() and (out / "pr_curve.png").is_file()
    result = train(out=out, dataset=dataset, overwrite=True, **TINY)
    assert sorted(p.name for p in out.iterdir()) == ["metrics.csv", "model.json", "model.safetensors"]
    assert set(result.files) == {"metrics", "checkpoint"}


def test_a_second_training_into_a_folder_in_use_fails_at_once(tmp_path) -> None:
    """Two trainings into one new folder both ended with exit 0, the second's model replacing the first's."""
    from changedet.errors import OutputFolderBusyError
    from changedet.io.folders import output_folder_lock

    root = folder_dataset(tmp_path / "d")
    dataset = {"type": "folders", "root": str(root), "val_names": ["p2"]}
    out = tmp_path / "run"
    out.mkdir()
    with output_folder_lock(out), pytest.raises(OutputFolderBusyError, match="another changedet run"):
        train(out=out, dataset=dataset, **TINY)
    assert list(out.iterdir()) == []
    train(out=out, dataset=dataset, **TINY)  # free again
    assert (out / "model.safetensors").is_file()


# ------------------------------------------------------------------------------ recorded paths (problem 10)
def test_relative_dataset_paths_are_recorded_absolute_and_calibrate_finds_them(tmp_path, monkeypatch) -> None:
    folder_dataset(tmp_path / "d")
    monkeypatch.chdir(tmp_path)
    train(out="run", dataset={"type": "folders", "root": "d", "val_names": ["p2"]}, **TINY)
    config = json.loads((tmp_path / "run" / "model.json").read_text())["training"]["config"]
    assert config["dataset"]["root"] == str(tmp_path / "d")
    assert config["config_base"] == str(tmp_path) and config["out"] == str(tmp_path / "run")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    result = calibrate_checkpoint(tmp_path / "run" / "model.safetensors", tmp_path / "cal.safetensors", threads=1)
    assert result["scenes"] == ["p2"]


# --------------------------------------------------------------------------- config checks (problems 6, 7, 11)
@pytest.mark.parametrize("patience", [0, -3])
def test_patience_below_one_is_an_input_error(tmp_path, patience) -> None:
    with pytest.raises(InputError, match="patience must be >= 1 or null"):
        train(out=tmp_path / "run", dataset={"type": "folders", "root": str(tmp_path / "missing")},
              patience=patience, **TINY)


@pytest.mark.parametrize("normalization,message", [
    ({"mode": "fixed", "meen": [1, 2, 3], "sdt": [1, 1, 1]}, r"unknown normalization key\(s\) \['meen', 'sdt'\]"),
    ({"mode": "scene", "typo": 1}, r"unknown normalization key\(s\) \['typo'\]"),
    ({"mode": "fixed", "mean": [1, 2, 3]}, "mean given without std"),
    ({"mode": "fixed", "std": [1, 2, 3]}, "std given without mean"),
    ({"mode": "scene", "mean": [1, 2, 3], "std": [1, 1, 1]}, "only with mode: fixed"),
    ({"mode": "fixed", "mean": [1, 2, 3], "std": [1, 0, 1]}, "std values must be > 0"),
    ({"mode": "fixed", "mean": ["a"], "std": [1]}, "mean must be a list of numbers"),
    (5, "normalization must be"),
])
def test_normalization_typos_and_incomplete_statistics_are_errors(tmp_path, normalization, message) -> None:
    with pytest.raises(InputError, match=message):
        parse_normalization(normalization)
    with pytest.raises(InputError, match=message):  # before any file is read (the root does not exist)
        train(out=tmp_path / "run", dataset={"type": "folders", "root": str(tmp_path / "missing")},
              normalization=normalization, **TINY)


def test_fixed_statistics_of_another_band_count_name_the_bands() -> None:
    with pytest.raises(InputError, match=r"needs 3 mean/std values \(one per band: red, green, blue\), got 2"):
        prepare_scenes([synthetic_scene(1, size=32)], normalization={"mode": "fixed", "mean": [1, 2], "std": [1, 1]})


@pytest.mark.parametrize("settings,message", [
    ({"threads": -1}, r"threads must be a whole number from 1 to 512 .*got -1"),
    ({"threads": 0}, r"threads must be a whole number from 1 to 512 .*got 0"),  # was silently ignored
    ({"threads": 513}, r"threads must be a whole number from 1 to 512"),
    ({"threads": "x"}, r"threads must be a whole number from 1 to 512 .*got 'x'"),
    ({"num_workers": -1}, r"num_workers must be a whole number >= 0 .*got -1"),
    ({"augment": {"gain": "x"}}, r"augment\.gain must be a number, got 'x'"),
    ({"augment": {"flips": "yes"}}, r"augment\.flips must be true/false, got 'yes'"),
    ({"augment": {"date_swap": "x"}}, r"augment\.date_swap must be a probability from 0 to 1"),
    ({"pos_weight": -1}, r"pos_weight must be a number > 0 .*got -1"),  # was accepted silently
    ({"min_valid": 2}, r"min_valid must be a fraction from 0 to 1, got 2"),
    ({"positive_fraction": -0.1}, r"positive_fraction must be a fraction from 0 to 1"),
    ({"augment": {"gain": 1.5}}, r"augment gain must be in \[0, 1\), got 1\.5"),
    ({"model_kwargs": {"dropout": "x"}}, r"model_kwargs\.dropout must be a number \(model 'fc-ef' option dropout\), got 'x'"),
    ({"model_kwargs": ["dropout"]}, r"model_kwargs must be a mapping"),
    ({"loss": "focal", "loss_kwargs": {"gamma": "x"}}, r"loss_kwargs\.gamma must be a number .*got 'x'"),
    ({"loss": "focal", "loss_kwargs": {"alpha": "x"}}, r"loss_kwargs\.alpha must be a number .*got 'x'"),
    ({"loss": "focal", "ohem": 0.5, "loss_kwargs": {"gamma": "x"}}, r"loss_kwargs\.gamma must be a number"),
    ({"loss": "bce+dice", "loss_kwargs": {"weights": "x"}}, r"loss_kwargs\.weights must be a list of numbers"),
])
def test_bad_run_settings_are_input_errors_before_anything_is_read(tmp_path, settings, message) -> None:
    # were tracebacks (RuntimeError from torch.set_num_threads, ValueError, TypeError) after the data was read
    out = tmp_path / "run"
    with pytest.raises(InputError, match=message) as info:
        train(out=out, dataset={"type": "folders", "root": str(tmp_path / "missing")}, **{**TINY, **settings})
    assert exit_code_for(info.value) == 2 and not out.exists()


def test_a_value_error_of_the_model_constructor_is_a_model_argument_error(tmp_path, monkeypatch) -> None:
    from changedet import models

    def refuse(name, **kwargs):  # a constructor's own float()/int() of a value the checks let through
        raise ValueError("could not convert string to float: 'x'")

    monkeypatch.setattr(models, "create_model", refuse)
    with pytest.raises(ModelArgumentError, match=r"cannot create model 'fc-ef' with model_kwargs \{'dropout': 0\.1\}"
                                                 r": could not convert .*check the values of model_kwargs") as info:
        train(out=tmp_path / "run", train_scenes=[synthetic_scene(1, size=48)],
              **{**TINY, "model_kwargs": {"dropout": 0.1}})
    assert exit_code_for(info.value) == 2


def test_the_documented_loss_options_are_accepted_and_unknown_ones_list_the_accepted_names() -> None:
    from changedet.losses import create_loss

    doc = train.__doc__ or ""
    documented = doc[doc.index("loss_kwargs :"):doc.index("ohem :")]
    for wrong in ("focal_gamma", "focal_alpha", "dice_weight"):  # were documented, and rejected
        assert wrong not in documented
    assert all(f"``{k}``" in documented for k in ("gamma", "alpha", "smooth", "weights"))
    create_loss("focal", gamma=2.0, alpha=0.5)
    create_loss("bce+dice", smooth=0.5, weights=[1.0, 0.5])
    with pytest.raises(InputError, match=r"loss 'focal' does not take \['focal_gamma'\]; it takes alpha, gamma, "
                                         r"ignore_index$"):
        create_loss("focal", focal_gamma=2.0)
    with pytest.raises(InputError, match=r"does not take \['dice_weight'\]; it takes .*smooth, weights"):
        create_loss("bce+dice", dice_weight=0.5)


def test_a_misspelt_model_kwarg_is_bad_input_exit_2() -> None:
    from changedet.models import create_model

    with pytest.raises(ModelArgumentError, match="dropuot") as info:
        create_model("fc-ef", in_channels=3, dropuot=0.2)
    assert isinstance(info.value, InputError) and exit_code_for(info.value) == 2


# ------------------------------------------------------------------------------------- encodings (problem 5)
def test_lists_and_configs_that_are_not_utf8_are_input_errors(tmp_path) -> None:
    root = folder_dataset(tmp_path / "données")
    csv = tmp_path / "pairs.csv"
    csv.write_bytes("name,before,after,label\np0,donn\xe9es/A/p0.tif,donn\xe9es/B/p0.tif,donn\xe9es/label/p0.tif\n"
                    .encode("cp1252"))
    yml = tmp_path / "pairs.yaml"
    yml.write_bytes('pairs:\n  - {name: p0, before: "donn\xe9es/A/p0.tif", after: "donn\xe9es/B/p0.tif"}\n'
                    .encode("cp1252"))
    for path in (csv, yml):
        with pytest.raises(InputError, match=rf"{path.name}: not UTF-8 text \(byte 0xe9 on line 2.*save the list as UTF-8"):
            read_list(path)
    (root / "list").mkdir()
    (root / "list" / "val.txt").write_bytes("p0\np1 \xe9\n".encode("cp1252"))
    with pytest.raises(InputError, match=r"val\.txt: not UTF-8 text"):
        read_folders(root, split="val")
    config = tmp_path / "run.yaml"
    config.write_bytes('out: run\ndescription: "mod\xe8le"\n'.encode("cp1252"))
    runner = CliRunner()
    result = runner.invoke(cli, ["train", "-c", str(config)])
    assert result.exit_code == 2 and "run.yaml: not UTF-8 text" in result.output, result.output
    assert not isinstance(result.exception, UnicodeDecodeError)
    result = runner.invoke(cli, ["calibrate", str(tmp_path / "model.safetensors"), "--scenes", str(csv),
                                 "-o", str(tmp_path / "cal.safetensors")])
    assert result.exit_code == 2 and "pairs.csv: not UTF-8 text" in result.output, result.output
    utf8 = tmp_path / "utf8.csv"  # the same list in UTF-8 reads
    utf8.write_text(csv.read_bytes().decode("cp1252"), encoding="utf-8")
    assert [s.name for s in read_list(utf8)] == ["p0"]


# --------------------------------------------------------------------------------- off-grid labels (problem 8)
def test_a_label_that_does_not_overlap_its_images_is_an_error_naming_it(tmp_path) -> None:
    label = np.zeros((16, 16), np.uint8)
    label[4:8, 4:8] = 255
    before, after, lab = write_pair(tmp_path, label, origin=(600000.0, 5700000.0))  # 100 km east
    with pytest.raises(NoOverlapError, match=r"label\.tif: does not overlap .*before\.tif"):
        read_pair_files(before, after, lab)


def test_a_scene_without_valid_pixels_warns_and_training_names_it(tmp_path) -> None:
    label = np.zeros((16, 16), np.uint8)
    before = np.zeros((2, 16, 16), np.uint16)  # all nodata
    make_geotiff(tmp_path / "before.tif", before, nodata=0)
    make_geotiff(tmp_path / "after.tif", before + 5)
    make_geotiff(tmp_path / "label.tif", label)
    with pytest.warns(ChangedetWarning, match=r"empty: no pixel holds data in both .*before\.tif"):
        scene = read_pair_files(tmp_path / "before.tif", tmp_path / "after.tif", tmp_path / "label.tif",
                                name="empty")
    with pytest.raises(InputError, match=r"scene empty \(.*label\.tif\): no valid pixel"):
        prepare_scenes([scene])


def test_augment_values_that_were_always_taken_still_are() -> None:
    """date_swap: true (always swap) and flips: 0/1 were accepted before the settings were checked up front."""
    from changedet.data.augment import Augment
    from changedet.training.checks import _check_augment

    for augment in ({"date_swap": True}, {"date_swap": 0.5}, {"flips": 1, "rotations": 0}, True, None):
        _check_augment(augment)
    assert Augment.from_config({"date_swap": True}).date_swap is True
