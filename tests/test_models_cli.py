"""``changedet models``: architectures with parameter counts, bundled checkpoints."""

from __future__ import annotations

import json

from click.testing import CliRunner

from changedet.cli.main import cli
from changedet.models import count_parameters, create_model, list_models


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


def test_models_text_output() -> None:
    result = CliRunner().invoke(cli, ["models"])
    assert result.exit_code == 0, result.output
    assert "fc-siam-diff" in result.output and "Bundled checkpoints" in result.output
