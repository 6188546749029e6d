"""Safe checkpoints: safetensors by default, pickles only on request and then with ``weights_only=True``, and a
validated JSON (unknown architecture, wrong version, missing keys, ... -> CheckpointError, exit 2 in the CLI)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from click.testing import CliRunner

from changedet import detect
from changedet.cli.main import cli
from changedet.errors import CheckpointError
from changedet.models import create_model
from changedet.models.checkpoint import CheckpointMeta, load_checkpoint, save_checkpoint
from changedet.testing import make_pair


@pytest.fixture
def good(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    model = create_model("fc-siam-diff", in_channels=3)
    return save_checkpoint(model, tmp_path / "ckpt" / "good",
                           CheckpointMeta(band_names=["B1", "B2", "B3"], pixel_size=10.0, name="good"))


@pytest.fixture
def pair(tmp_path: Path) -> tuple[Path, Path]:
    return make_pair(tmp_path / "pair", "aligned", size=48)


def _copy(good: Path, name: str) -> Path:
    """A copy of the good checkpoint under another stem (weights + JSON)."""
    dst = good.with_name(f"{name}.safetensors")
    shutil.copy(good, dst)
    shutil.copy(good.with_suffix(".json"), dst.with_suffix(".json"))
    return dst


def _edit_json(path: Path, change: Callable[[dict[str, Any]], None]) -> Path:
    meta_path = path.with_suffix(".json")
    data = json.loads(meta_path.read_text())
    change(data)
    meta_path.write_text(json.dumps(data))
    return path


def _unknown_architecture(d: dict[str, Any]) -> None:
    d["architecture"] = "unet-9000"


def _future_version(d: dict[str, Any]) -> None:
    d["format_version"] = 99


def _missing_keys(d: dict[str, Any]) -> None:
    del d["normalization"], d["kwargs"]


def _bad_threshold(d: dict[str, Any]) -> None:
    d["threshold"] = "high"


def _band_names_vs_channels(d: dict[str, Any]) -> None:
    d["band_names"] = ["B1", "B2"]


BAD_JSON = [
    ("unknown-architecture", _unknown_architecture, [r"unknown architecture 'unet-9000'", r"fc-siam-diff"]),
    ("wrong-format-version", _future_version, [r"format_version 99 is not supported", r"upgrade changedet"]),
    ("missing-keys", _missing_keys, [r"lacks the keys \['kwargs', 'normalization'\]", r"save_checkpoint"]),
    ("bad-threshold", _bad_threshold, [r"'threshold' must be a finite number, found 'high'"]),
    ("band-names-vs-channels", _band_names_vs_channels, [r"2 band_names but the model has in_channels=3"]),
]


@pytest.mark.parametrize("name,change,patterns", BAD_JSON, ids=[b[0] for b in BAD_JSON])
def test_invalid_json_is_a_checkpoint_error(good: Path, name: str, change: Any, patterns: list[str]) -> None:
    bad = _edit_json(_copy(good, name), change)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(bad)
    assert info.match(rf"{name}\.json")  # names the file
    for pattern in patterns:
        assert info.match(pattern)


@pytest.mark.parametrize("name,change,patterns", BAD_JSON, ids=[b[0] for b in BAD_JSON])
def test_invalid_json_through_detect_exits_2(
    good: Path, pair: tuple[Path, Path], tmp_path: Path, name: str, change: Any, patterns: list[str]
) -> None:
    bad = _edit_json(_copy(good, name), change)
    out = tmp_path / "out"
    with pytest.raises(CheckpointError):
        detect(*pair, model=str(bad), output_dir=out, quicklook=False)
    assert not out.exists()
    res = CliRunner().invoke(cli, ["-q", "detect", str(pair[0]), str(pair[1]), "-o", str(out), "--model", str(bad)])
    assert res.exit_code == 2, res.output
    assert res.stderr.startswith("error: ") and f"{name}.json" in res.stderr
    assert not out.exists()


def test_unreadable_json_and_weights(good: Path, pair: tuple[Path, Path], tmp_path: Path) -> None:
    not_json = _copy(good, "not_json")
    not_json.with_suffix(".json").write_text("{ this is not json")
    with pytest.raises(CheckpointError, match=r"not_json\.json: not a readable checkpoint JSON"):
        load_checkpoint(not_json)
    garbage = _copy(good, "garbage")
    garbage.write_bytes(b"\x00" * 64)
    meta = garbage.with_suffix(".json")
    meta.write_text(json.dumps({**json.loads(meta.read_text()), "weights_sha256": ""}))
    with pytest.raises(CheckpointError, match=r"garbage\.safetensors: not a readable safetensors file"):
        load_checkpoint(garbage)
    swapped = _copy(good, "swapped")
    swapped.write_bytes(garbage.read_bytes())  # the JSON still holds the good file's SHA-256
    with pytest.raises(CheckpointError, match=r"swapped\.safetensors: the weights do not match their JSON"):
        load_checkpoint(swapped)
    no_json = _copy(good, "no_json")
    no_json.with_suffix(".json").unlink()
    res = CliRunner().invoke(cli, ["-q", "detect", str(pair[0]), str(pair[1]), "-o", str(tmp_path / "o"),
                                   "--model", str(no_json)])
    assert res.exit_code == 2 and "no_json.json: checkpoint JSON not found" in res.stderr


def test_band_mismatch_names_both_numbers(good: Path) -> None:
    with pytest.raises(CheckpointError, match=r"trained on 3 bands \(B1, B2, B3\) but the input has 4 bands"):
        load_checkpoint(good, in_channels=4)


class _Exploit:
    """A pickle payload that would create a file when unpickled by a plain ``torch.load``/``pickle.load``."""

    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.write_text, (self.target, "pwned"))


def _legacy_pt(good: Path, name: str, payload: Any = None) -> Path:
    """A ``.pt`` state dict (with its JSON beside it), optionally carrying a payload."""
    model, _ = load_checkpoint(good)
    state: dict[str, Any] = dict(model.state_dict())
    if payload is not None:
        state["__evil__"] = payload
    path = good.with_name(f"{name}.pt")
    torch.save(state, path)
    meta = json.loads(good.with_suffix(".json").read_text())
    meta["weights_sha256"] = ""
    path.with_suffix(".json").write_text(json.dumps(meta))
    return path


def test_pickles_are_refused_by_default(good: Path, pair: tuple[Path, Path], tmp_path: Path) -> None:
    legacy = _legacy_pt(good, "legacy")
    with pytest.raises(CheckpointError, match=r"legacy\.pt: \.pt files are pickles and are not loaded by default; "
                                              r"pass allow_pickle=True"):
        load_checkpoint(legacy)
    res = CliRunner().invoke(cli, ["-q", "detect", str(pair[0]), str(pair[1]), "-o", str(tmp_path / "out"),
                                   "--model", str(legacy)])
    assert res.exit_code == 2 and "are pickles and are not loaded by default" in res.stderr
    assert not (tmp_path / "out").exists()
    model, meta = load_checkpoint(legacy, allow_pickle=True)  # plain tensors: fine once allowed
    reference, _ = load_checkpoint(good)
    for key, value in reference.state_dict().items():
        assert torch.equal(model.state_dict()[key], value)
    assert meta.architecture == "fc-siam-diff"


def test_allowed_pickles_never_run_code(good: Path, tmp_path: Path) -> None:
    target = tmp_path / "pwned.txt"
    evil = _legacy_pt(good, "evil", payload=_Exploit(target))
    with pytest.raises(CheckpointError, match=r"evil\.pt: cannot read with torch\.load\(weights_only=True\)"):
        load_checkpoint(evil, allow_pickle=True)
    assert not target.exists()  # weights_only=True refused the payload before running it
