"""changedet.testing: the synthetic fixtures are what they claim to be."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio

from changedet.testing import PAIR_KINDS, TextureField, make_geotiff, make_pair, paint_change


def test_make_geotiff_options(tmp_path: Path) -> None:
    p = make_geotiff(
        tmp_path / "x.tif",
        np.zeros((2, 20, 30)),
        crs="EPSG:3857",
        res=(2, 3),
        origin=(100, 200),
        nodata=-9,
        descriptions=["a", "b"],
        tags={"K": 1},
        dtype="int16",
    )
    with rasterio.open(p) as ds:
        assert (
            ds.crs.to_epsg() == 3857
            and ds.res == (2.0, 3.0)
            and (ds.transform.c, ds.transform.f) == (100, 200)
        )
        assert ds.nodata == -9 and ds.descriptions == ("a", "b") and ds.tags()["K"] == "1"
        assert ds.dtypes == ("int16", "int16") and (ds.count, ds.height, ds.width) == (2, 20, 30)


@pytest.mark.parametrize("kind", PAIR_KINDS)
def test_every_kind_writes_two_files(tmp_path: Path, kind: str) -> None:
    before, after = make_pair(tmp_path, kind, size=64)
    assert before.is_file() and after.is_file() and before.parent == after.parent == tmp_path


def test_unknown_kind(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown fixture kind 'nope'; known: aligned"):
        make_pair(tmp_path, "nope")


def test_texture_is_smooth_and_continuous() -> None:
    field = TextureField(64, 2, seed=1)
    rows, cols = np.meshgrid(np.arange(64) + 0.5, np.arange(64) + 0.5, indexing="ij")
    v = field.sample(rows, cols)
    assert v.shape == (2, 64, 64) and abs(v.std() - 1) < 0.3
    # neighbouring pixels are strongly correlated (smooth), and a 0.1 px move changes values only a little
    assert np.corrcoef(v[0, :, :-1].ravel(), v[0, :, 1:].ravel())[0, 1] > 0.8
    assert np.abs(field.sample(rows, cols + 0.1) - v).mean() < 0.1


def test_paint_change_returns_the_truth(tmp_path: Path) -> None:
    _, after = make_pair(tmp_path, "aligned", size=64, dtype="uint8")
    truth = paint_change(after, (10, 20, 8, 12))
    with rasterio.open(after) as ds:
        arr = ds.read()
    assert truth.sum() == 96 and truth[10:18, 20:32].all()
    assert (arr[:, truth] == 250).all() and (arr[:, ~truth] != 250).mean() > 0.99
    with pytest.raises(ValueError, match="outside the raster"):
        paint_change(after, (60, 60, 10, 10))
