"""mypy passes on the package with the configuration in pyproject.toml (``files = ["changedet"]``)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_mypy_passes() -> None:
    pytest.importorskip("mypy", reason="mypy is not installed (pip install 'changedet[dev]')")
    # incremental: the cache in .mypy_cache (git-ignored) makes reruns take a few seconds
    proc = subprocess.run(
        [sys.executable, "-m", "mypy", "--no-error-summary", "--no-pretty"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    errors = [line for line in proc.stdout.splitlines() if ": error:" in line]
    assert proc.returncode == 0, f"mypy found {len(errors)} error(s):\n" + "\n".join(errors or [proc.stdout,
                                                                                              proc.stderr])


def test_package_is_marked_typed() -> None:
    assert (REPO / "changedet" / "py.typed").is_file()
    text = (REPO / "pyproject.toml").read_text()
    assert '"py.typed"' in text  # shipped in the wheel
    assert "disallow_untyped_defs = true" in text
