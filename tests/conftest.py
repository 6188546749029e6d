"""Shared pytest configuration: the real-data location and the ``realdata`` marker."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("CHANGEDET_SHARED_DATA", REPO.parent / "shared" / "data"))
OSCD_IMAGES = SHARED_DATA / "oscd" / "Onera Satellite Change Detection dataset - Images"
OSCD_LABELS = SHARED_DATA / "oscd" / "Onera Satellite Change Detection dataset - Train Labels"
AIRCHANGE = SHARED_DATA / "sztaki-airchange"
LEVIR = SHARED_DATA / "levir-cd-samples"
DSIFN = SHARED_DATA / "dsifn-samples"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if SHARED_DATA.is_dir():
        return
    skip = pytest.mark.skip(reason=f"real data not found at {SHARED_DATA} (set CHANGEDET_SHARED_DATA)")
    for item in items:
        if "realdata" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    return SHARED_DATA


@pytest.fixture(scope="session")
def oscd_images() -> Path:
    return OSCD_IMAGES


@pytest.fixture(scope="session")
def oscd_labels() -> Path:
    return OSCD_LABELS


@pytest.fixture(autouse=True)
def _torch_threads() -> None:
    """Keep tests on few threads: CI has 2 cores."""
    import sys

    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(min(2, os.cpu_count() or 1))
