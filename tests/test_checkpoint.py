"""Checkpoints (safetensors + JSON, validation, atomic writes, no unpickling) and bundled model resolution."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch

from changedet.errors import ChangedetWarning, CheckpointError, UnknownModelError
from changedet.models import create_model
from changedet.models.bundled import default_model_name, list_bundled, resolve_model
from changedet.models.checkpoint import (
    FORMAT_VERSION,
    CheckpointMeta,
    checkpoint_paths,
    load_checkpoint,
    read_meta,
    save_checkpoint,
)

S2_BANDS = ["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11", "B12"]


def _meta(**kw) -> CheckpointMeta:
    base = dict(band_names=["red", "green", "blue"], pixel_size=10.0, threshold=0.42,
                normalization={"mode": "fixed", "mean": [0.1, 0.2, 0.3], "std": [1.0, 2.0, 3.0]},
                metrics={"f1": 0.5}, training={"epochs": 3}, name="demo", description="test model")
    base.update(kw)
    return CheckpointMeta(**base)


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model("fc-siam-diff", in_channels=3).eval()


@pytest.fixture
def saved(model, tmp_path) -> Path:
    return save_checkpoint(model, tmp_path / "demo", _meta())


def _edit_json(weights: Path, **changes) -> None:
    json_path = weights.with_suffix(".json")
    data = json.loads(json_path.read_text())
    for key, value in changes.items():
        if value is None:
            data.pop(key, None)
        else:
            data[key] = value
    json_path.write_text(json.dumps(data))


def test_round_trip_keeps_weights_and_metadata(model, saved) -> None:
    assert saved.name == "demo.safetensors" and saved.with_suffix(".json").is_file()
    assert sorted(p.name for p in saved.parent.iterdir()) == ["demo.json", "demo.safetensors"]  # no temp files
    loaded, meta = load_checkpoint(saved.with_suffix(".json"), in_channels=3)
    assert not loaded.training
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value)
    assert meta.architecture == "fc-siam-diff" and meta.kwargs == {k: v for k, v in model.config.items()
                                                                    if k != "name"}
    assert (meta.threshold, meta.pixel_size, meta.band_names) == (0.42, 10.0, ["red", "green", "blue"])
    assert meta.normalization["std"] == [1.0, 2.0, 3.0] and meta.metrics == {"f1": 0.5}
    assert meta.format_version == FORMAT_VERSION and meta.version and len(meta.weights_sha256) == 64
    # a stem works too
    load_checkpoint(saved.with_suffix(""))


def test_checkpoint_files_get_the_mode_of_any_new_file(model, tmp_path) -> None:
    import os
    import stat

    umask = os.umask(0o022)
    try:
        saved = save_checkpoint(model, tmp_path / "shared", _meta())
    finally:
        os.umask(umask)
    for path in (saved, saved.with_suffix(".json")):  # readable by the group and others, as the other outputs
        assert stat.S_IMODE(path.stat().st_mode) == 0o644


def test_a_folder_given_as_a_checkpoint_names_the_checkpoint_in_it(saved) -> None:
    for call in (read_meta, load_checkpoint):
        with pytest.raises(CheckpointError, match=r"a folder, not a checkpoint; give the checkpoint file \(e\.g\. .*"
                                                  r"demo\.json\)"):
            call(saved.parent)


def test_a_bare_pytorch_pickle_says_what_changedet_reads(model, tmp_path) -> None:
    torch.save(model.state_dict(), tmp_path / "real.pt")
    with pytest.raises(CheckpointError, match=r"real\.pt: a PyTorch pickle without changedet's real\.json"):
        load_checkpoint(tmp_path / "real.pt")


def test_checkpoint_paths() -> None:
    assert checkpoint_paths("a/m") == (Path("a/m.safetensors"), Path("a/m.json"))
    assert checkpoint_paths("a/m.json") == (Path("a/m.safetensors"), Path("a/m.json"))
    assert checkpoint_paths("a/m.pt") == (Path("a/m.pt"), Path("a/m.json"))


def test_band_count_mismatch_names_both_numbers_and_file(saved) -> None:
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(saved, in_channels=13)
    msg = str(info.value)
    assert "3 bands" in msg and "13 bands" in msg and "demo.json" in msg


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"format_version": 99}, "format_version 99 .*upgrade changedet"),
        ({"architecture": "fc-siam-sum"}, "unknown architecture 'fc-siam-sum'.*fc-siam-diff"),
        ({"band_names": None}, r"lacks the keys \['band_names'\]"),
        ({"band_names": ["a", "b"]}, "2 band_names but the model has in_channels=3"),
        ({"normalization": {"mode": "fixed", "mean": [0], "std": [1]}}, "needs 3 mean and std values"),
        ({"normalization": {"mode": "percentile"}}, "'normalization' must be"),
        ({"kwargs": {"in_channels": 3, "dropout": 0.2, "bottleneck": "sideways"}}, "cannot build"),
    ],
)
def test_invalid_json_is_a_checkpoint_error(saved, changes, match) -> None:
    _edit_json(saved, **changes)
    with pytest.raises(CheckpointError, match=match):
        load_checkpoint(saved)


def test_unreadable_json(saved) -> None:
    saved.with_suffix(".json").write_text("{not json")
    with pytest.raises(CheckpointError, match=r"demo.json: not a readable checkpoint JSON"):
        load_checkpoint(saved)


def test_missing_files(tmp_path, saved) -> None:
    with pytest.raises(CheckpointError, match=r"checkpoint JSON not found"):
        load_checkpoint(tmp_path / "nothing.safetensors")
    saved.unlink()
    with pytest.raises(CheckpointError, match=r"weights not found"):
        load_checkpoint(saved.with_suffix(".json"))


def test_missing_and_unexpected_tensors(model, tmp_path) -> None:
    from safetensors.torch import save_file

    path = save_checkpoint(model, tmp_path / "m", _meta())
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    state.pop("decoder.head.bias")
    state["extra.weight"] = torch.zeros(2)
    save_file(state, str(path))
    _edit_json(path, weights_sha256="")  # the hash check would fire first; test the name check itself
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    assert "missing tensors: decoder.head.bias" in str(info.value)
    assert "unexpected tensors: extra.weight" in str(info.value)


def test_weights_from_another_save_are_detected(model, tmp_path) -> None:
    a = save_checkpoint(model, tmp_path / "a", _meta())
    torch.manual_seed(1)
    b = save_checkpoint(create_model("fc-siam-diff", in_channels=3), tmp_path / "b", _meta())
    a.write_bytes(b.read_bytes())
    with pytest.raises(CheckpointError, match=r"SHA-256"):
        load_checkpoint(a)


def test_corrupt_weights(saved) -> None:
    saved.write_bytes(b"\x00" * 20)
    _edit_json(saved, weights_sha256="")
    with pytest.raises(CheckpointError, match=r"not a readable safetensors file"):
        load_checkpoint(saved)


def test_pickles_need_allow_pickle_and_use_weights_only(model, saved, tmp_path) -> None:
    pt = tmp_path / "legacy.pt"
    torch.save({"state_dict": model.state_dict()}, pt)
    pt.with_suffix(".json").write_text(saved.with_suffix(".json").read_text())
    with pytest.raises(CheckpointError, match=r"pickles.*allow_pickle=True"):
        load_checkpoint(pt)
    loaded, _ = load_checkpoint(pt, allow_pickle=True)
    assert torch.equal(loaded.state_dict()["decoder.head.weight"], model.state_dict()["decoder.head.weight"])

    class Evil:
        def __reduce__(self):
            return (print, ("unpickled!",))

    torch.save({"state_dict": Evil()}, pt)
    with pytest.raises(CheckpointError, match=r"weights_only"):
        load_checkpoint(pt, allow_pickle=True)


def test_failed_save_leaves_nothing(model, tmp_path, monkeypatch) -> None:
    import safetensors.torch

    def boom(*_a, **_k):
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.torch, "save", boom)
    with pytest.raises(OSError, match=r"disk full"):
        save_checkpoint(model, tmp_path / "x", _meta())
    assert list(tmp_path.iterdir()) == []


def test_failed_save_keeps_the_previous_checkpoint(model, saved, monkeypatch) -> None:
    before = saved.read_bytes()
    monkeypatch.setattr(json, "dumps", lambda *_a, **_k: (_ for _ in ()).throw(OSError("no space")))
    with pytest.raises(OSError, match=r"no space"):
        save_checkpoint(model, saved, _meta(threshold=0.9))
    monkeypatch.undo()
    assert saved.read_bytes() == before and read_meta(saved).threshold == 0.42
    assert sorted(p.name for p in saved.parent.iterdir()) == ["demo.json", "demo.safetensors"]


def test_save_validates_meta(model, tmp_path) -> None:
    with pytest.raises(CheckpointError, match=r"2 band_names but the model has in_channels=3"):
        save_checkpoint(model, tmp_path / "m", _meta(band_names=["a", "b"]))
    with pytest.raises(CheckpointError, match=r"meta.architecture 'bit'"):
        save_checkpoint(model, tmp_path / "m", _meta(architecture="bit"))
    assert list(tmp_path.iterdir()) == []


def test_metric_calibration_survives_a_round_trip(tmp_path) -> None:
    model = create_model("metric-siam", in_channels=3).eval()
    model.set_calibration(0.7, 4.0)
    loaded, _ = load_checkpoint(save_checkpoint(model, tmp_path / "metric", _meta()))
    assert float(loaded.center) == pytest.approx(0.7) and float(loaded.scale) == pytest.approx(4.0)


# -- bundled models ------------------------------------------------------------------------------------------------


@pytest.fixture
def weights_dir(tmp_path) -> Path:
    folder = tmp_path / "weights"
    torch.manual_seed(0)
    save_checkpoint(create_model("fc-siam-diff", in_channels=13), folder / "s2-13band",
                    _meta(band_names=S2_BANDS, normalization={"mode": "scene", "mean": [], "std": []},
                          name="s2-13band", pixel_size=10.0))
    save_checkpoint(create_model("fc-siam-diff", in_channels=3), folder / "aerial-rgb",
                    _meta(name="aerial-rgb", pixel_size=0.5))
    (folder / "orphan.json").write_text("{}")  # no weights: skipped
    return folder


def test_default_model_names() -> None:
    assert default_model_name(13, 10.0) == "s2-rgb"  # a Sentinel-2 L1C stack: its true-colour bands
    assert default_model_name(3, 10.0) == "s2-rgb"
    assert default_model_name(3, 5.0) == "s2-rgb"
    assert default_model_name(3, 0.3) == "aerial-rgb"
    assert default_model_name(3, None) == "aerial-rgb"
    with pytest.raises(CheckpointError, match=r"no bundled model takes 4 bands.*changedet train"):
        default_model_name(4, 10.0)
    # other band counts: by band name, else by colour interpretation
    s2 = ["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11", "B12"]
    assert default_model_name(15, 10.0, band_names=[*s2, "QA", "SCL"]) == "s2-rgb"
    assert default_model_name(4, 10.0, band_names=["B02", "B03", "B04", "B08"]) == "s2-rgb"
    assert default_model_name(4, 0.3, colors=["red", "green", "blue", "alpha"]) == "aerial-rgb"
    assert default_model_name(4, 10.0, colors=["red", "green", "blue", "undefined"]) == "s2-rgb"
    with pytest.raises(CheckpointError):
        default_model_name(4, 10.0, band_names=["B02", "B03", "B08", None], colors=["gray"] * 4)


def test_list_bundled(weights_dir) -> None:
    assert [m.name for m in list_bundled(weights_dir)] == ["aerial-rgb", "s2-13band"]
    assert all(isinstance(m, CheckpointMeta) for m in list_bundled())  # the shipped folder parses


def test_resolve_default_by_bands_and_pixel_size(weights_dir) -> None:
    model, meta = resolve_model("s2-13band", band_count=13, pixel_size=10.0, weights_dir=weights_dir)
    assert meta.name == "s2-13band" and model.in_channels == 13
    model, meta = resolve_model(band_count=3, pixel_size=None, weights_dir=weights_dir)
    assert meta.name == "aerial-rgb"
    with pytest.raises(CheckpointError, match=r"'s2-rgb', which is not bundled.*aerial-rgb.*changedet train"):
        resolve_model(band_count=3, pixel_size=10.0, weights_dir=weights_dir)


def test_resolve_default_for_13_bands_names_the_bands_it_reads() -> None:
    # the shipped default for a 13-band input is s2-rgb on 3 of them; resolve_model takes the bands fed to the model
    _, meta = resolve_model(band_count=3, pixel_size=10.0)
    assert meta.name == "s2-rgb" and meta.band_names == ["B04", "B03", "B02"]
    with pytest.raises(CheckpointError, match=r"13-band input is 's2-rgb', which reads 3 of its bands \(B04, B03, "
                                              r"B02\).*takes all 13 \(s2-13band\)"):
        resolve_model(band_count=13, pixel_size=10.0)


def test_resolve_by_name_path_and_architecture(weights_dir) -> None:
    _, meta = resolve_model("aerial-rgb", band_count=3, pixel_size=0.5, weights_dir=weights_dir)
    assert meta.name == "aerial-rgb"
    with pytest.raises(CheckpointError, match=r"13 bands .* 3 bands"):
        resolve_model("s2-13band", band_count=3, weights_dir=weights_dir)
    path = weights_dir / "aerial-rgb.safetensors"
    model, meta = resolve_model(str(path), band_count=3, weights_dir=weights_dir)
    assert meta.architecture == "fc-siam-diff"
    model, meta = resolve_model("fc-siam-diff", band_count=3, checkpoint=path, weights_dir=weights_dir)
    assert model.config["name"] == "fc-siam-diff"
    with pytest.raises(CheckpointError, match=r"holds a 'fc-siam-diff' model, not 'bit'"):
        resolve_model("bit", band_count=3, checkpoint=path, weights_dir=weights_dir)
    with pytest.raises(CheckpointError, match=r"architecture without trained weights"):
        resolve_model("bit", band_count=3, weights_dir=weights_dir)
    with pytest.raises(UnknownModelError, match=r"aerial-rgb.*s2-13band"):
        resolve_model("sentinel-best", band_count=3, weights_dir=weights_dir)


def test_resolve_warns_on_a_very_different_pixel_size(weights_dir) -> None:
    with pytest.warns(ChangedetWarning, match=r"trained at 0.5 m pixels but the input has 10 m"):
        resolve_model("aerial-rgb", band_count=3, pixel_size=10.0, weights_dir=weights_dir)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        resolve_model("aerial-rgb", band_count=3, pixel_size=0.6, weights_dir=weights_dir)


def test_saving_the_same_weights_twice_writes_the_same_bytes(tmp_path) -> None:
    # safetensors orders its header from a hash map (random from save to save): changedet sorts it, so a run
    # repeated with the same seed gives a byte-identical checkpoint and weights_sha256
    import torch
    from safetensors.torch import load_file

    torch.manual_seed(0)
    model = create_model("fc-ef", in_channels=3)
    paths = [save_checkpoint(model, tmp_path / f"m{i}") for i in range(4)]
    assert len({p.read_bytes() for p in paths}) == 1
    assert len({read_meta(p).weights_sha256 for p in paths}) == 1
    loaded = load_file(str(paths[0]))
    assert all(torch.equal(loaded[k], v) for k, v in model.state_dict().items())
