"""``changedet models``: architectures with parameter counts, bundled checkpoints."""

from __future__ import annotations

import json

from click.testing import CliRunner

from changedet.cli.main import cli
from changedet.models import count_parameters, create_model, list_models
from changedet.models.bundled import DEFAULT_FOR, default_model_name


def test_models_json_lists_architectures_with_parameters() -> None:
    result = CliRunner().invoke(cli, ["models", "--json"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.output)
    names = [a["name"] for a in info["architectures"]]
    assert names == list_models()
    by_name = {a["name"]: a for a in info["architectures"]}
    assert by_name["fc-siam-diff"]["parameters"]["13"] == count_parameters(create_model("fc-siam-diff",
                                                                                       in_channels=13))
    assert by_name["metric-siam"]["metric"] is True and by_name["bit"]["metric"] is False
    assert by_name["siam-unet"]["defaults"]["encoder_name"] == "resnet18"
    assert isinstance(info["bundled"], list)
    for b in info["bundled"]:  # what each shipped model is the default for agrees with the default chooser
        assert b["default_for"] == DEFAULT_FOR.get(b["name"])


def test_default_for_matches_default_model_name() -> None:
    assert default_model_name(13, 10.0) == default_model_name(3, 10.0) == "s2-rgb" and "13-band" in DEFAULT_FOR["s2-rgb"]
    assert default_model_name(3, 0.5) == default_model_name(3, None) == "aerial-rgb" and "aerial-rgb" in DEFAULT_FOR
    assert "s2-13band" not in DEFAULT_FOR  # bundled, used only when named


def test_models_text_output() -> None:
    result = CliRunner().invoke(cli, ["models"])
    assert result.exit_code == 0, result.output
    assert "fc-siam-diff" in result.output and "Bundled checkpoints" in result.output
    if "s2-13band " in result.output:
        assert "used when named: --model s2-13band" in result.output
