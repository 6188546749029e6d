"""xarray inputs (changedet._xarray): orientation, band names, data types and georeferencing of DataArrays."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import rasterio

from changedet._xarray import dataarray_to_geotiff, write_dataarrays
from changedet.api import ChangeResult, detect
from changedet.errors import NotGeoreferencedError
from changedet.testing import make_pair, paint_change

rioxarray = pytest.importorskip("rioxarray", reason="rioxarray is not installed (pip install 'changedet[notebook]')")

NAMES = ["B02", "B03", "B04", "B08"]


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    before, after = make_pair(tmp_path_factory.mktemp("pair"), "aligned", size=96, bands=4, descriptions=NAMES)
    paint_change(after, (20, 30, 16, 24))
    return Path(before), Path(after)


def _detect(before: object, after: object, **kw: object) -> ChangeResult:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return detect(before, after, quicklook=False, threads=1, **kw)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def by_path(pair: tuple[Path, Path]) -> ChangeResult:
    return _detect(*pair, method="cva", min_area=300)


def _open(path: Path) -> object:
    return rioxarray.open_rasterio(path)


@pytest.mark.parametrize("which", ["both", "after"])
def test_x_coordinates_decreasing_are_flipped_like_y_increasing(pair: tuple[Path, Path], by_path: ChangeResult,
                                                                which: str) -> None:
    def flip(da: object) -> object:
        return da.isel(x=slice(None, None, -1))  # type: ignore[attr-defined]

    b, a = _open(pair[0]), _open(pair[1])
    res = _detect(flip(b) if which == "both" else b, flip(a), method="cva", min_area=300)
    assert res.transform == by_path.transform
    np.testing.assert_array_equal(res.mask, by_path.mask)
    np.testing.assert_array_equal(res.probability, by_path.probability)


def _descriptions(da: object, tmp_path: Path) -> tuple[list[str | None], np.ndarray]:
    path = dataarray_to_geotiff(da, tmp_path / "x.tif")
    with rasterio.open(path) as ds:
        return list(ds.descriptions), ds.read()


def test_rioxarray_long_name_follows_the_band_coordinate_when_bands_are_reordered(pair: tuple[Path, Path],
                                                                                  tmp_path: Path) -> None:
    da = _open(pair[0])
    with rasterio.open(pair[0]) as ds:
        data = ds.read()
    assert list(da.attrs["long_name"]) == NAMES  # type: ignore[attr-defined]
    cases = {
        "as read": (da, [0, 1, 2, 3]),
        "reversed": (da.isel(band=slice(None, None, -1)), [3, 2, 1, 0]),  # type: ignore[attr-defined]
        "subset": (da.isel(band=[2, 1, 0]), [2, 1, 0]),  # type: ignore[attr-defined]
    }
    for name, (arr, order) in cases.items():
        desc, values = _descriptions(arr, tmp_path)
        assert desc == [NAMES[k] for k in order], name
        np.testing.assert_array_equal(values, data[order])
    renumbered = da.assign_coords(band=[5, 6, 7, 8])  # type: ignore[attr-defined]
    assert _descriptions(renumbered, tmp_path)[0] == [None] * 4  # not the file's band numbers: no names


def test_a_model_reads_the_bands_it_needs_from_reordered_rioxarray_bands(pair: tuple[Path, Path]) -> None:
    ref = _detect(*pair, vectorize=False)

    def rev(da: object) -> object:
        return da.isel(band=slice(None, None, -1))  # type: ignore[attr-defined]

    res = _detect(rev(_open(pair[0])), rev(_open(pair[1])), vectorize=False)
    assert res.report["grid"]["bands"] == ref.report["grid"]["bands"]
    np.testing.assert_array_equal(res.probability, ref.probability)


def test_float16_dataarrays_are_written_as_float32(pair: tuple[Path, Path], by_path: ChangeResult,
                                                   tmp_path: Path) -> None:
    b, a = _open(pair[0]).astype("float16"), _open(pair[1]).astype("float16")  # type: ignore[attr-defined]
    with rasterio.open(dataarray_to_geotiff(b, tmp_path / "b.tif")) as ds:
        assert ds.dtypes == ("float32",) * 4
    res = _detect(b, a, method="cva", min_area=300)
    assert len(res.polygons) == len(by_path.polygons) == 1
    assert res.polygons.geometry.iloc[0].equals(by_path.polygons.geometry.iloc[0])


def test_a_dataarray_without_crs_beside_one_with_a_crs_gets_the_rioxarray_fix(pair: tuple[Path, Path],
                                                                              tmp_path: Path) -> None:
    bare = _open(pair[1]).drop_vars("spatial_ref")  # type: ignore[attr-defined]
    assert bare.rio.crs is None
    for other in (pair[0], _open(pair[0])):
        with pytest.raises(NotGeoreferencedError, match=r'after: .* has no CRS .*\.rio\.write_crs\("EPSG:32631"\)'):
            write_dataarrays([other, bare], tmp_path, ["before", "after"])
        assert not (tmp_path / "after.tif").exists()
    fixed = bare.rio.write_crs("EPSG:32631")
    written = write_dataarrays([pair[0], fixed], tmp_path, ["before", "after"])
    assert written[0] == pair[0] and written[1] == tmp_path / "after.tif"
    both_bare = write_dataarrays([bare, bare], tmp_path, ["before", "after"])  # pixel coordinates: allowed
    assert [Path(p).name for p in both_bare] == ["before.tif", "after.tif"]
    from changedet import detect

    with pytest.raises(NotGeoreferencedError, match=r"\.rio\.write_crs\("):  # detect says the same
        detect(pair[0], bare, method="cva", output_dir=tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_long_name_names_the_bands_of_a_dataarray_without_a_band_coordinate() -> None:
    import numpy as np
    import xarray as xr

    from changedet._xarray import _band_names

    bare = xr.DataArray(np.zeros((3, 4, 4)), dims=("band", "y", "x"))
    assert _band_names(bare, "band", ("B04", "B03", "B02"), 3) == ["B04", "B03", "B02"]
    numbered = bare.assign_coords(band=[3, 2, 1])  # rioxarray's numbers, reordered: the names follow them
    assert _band_names(numbered, "band", ("B01", "B02", "B03"), 3) == ["B03", "B02", "B01"]


def test_a_one_row_or_column_dataarray_keeps_its_georeferencing_or_gets_the_fix(pair: tuple[Path, Path],
                                                                                 tmp_path: Path) -> None:
    import xarray as xr
    from affine import Affine

    from changedet.errors import InputError

    xs, ys = 650000.75 + 1.5 * np.arange(300), np.array([5279999.25])
    rng = np.random.default_rng(0)

    def row(values: np.ndarray) -> xr.DataArray:
        return xr.DataArray(values, dims=("band", "y", "x"), coords={"y": ys, "x": xs}).rio.write_crs("EPSG:32634")

    b = rng.uniform(0, 255, (3, 1, 300)).astype("float32")
    a = b.copy()
    a[:, :, 100:140] = 255 - a[:, :, 100:140]
    fix = r"before: .*has a CRS \(EPSG:32634\) .*1 row.*Affine\(1\.5, 0\.0, 650000\.0, 0\.0, -1\.5, 5280000\.0\)"
    with pytest.raises(InputError, match=fix):  # not a result in pixel coordinates blaming a temporary file
        detect(row(b), row(a), method="cva", quicklook=False, output_dir=tmp_path / "out")
    assert not (tmp_path / "out").exists()
    column = row(b).transpose("band", "x", "y").rename({"x": "y", "y": "x"}).assign_coords(y=5279999.25 - xs)
    with pytest.raises(InputError, match=r"1 column.*\.rio\.write_transform\(Affine\("):
        dataarray_to_geotiff(column.rio.write_crs("EPSG:32634"), tmp_path / "c.tif")
    nothing = xr.DataArray(b[:, :, :4].repeat(4, axis=1), dims=("band", "y", "x")).rio.write_crs("EPSG:32634")
    with pytest.raises(InputError, match=r"no x/y coordinate values.*\.rio\.write_transform"):
        dataarray_to_geotiff(nothing, tmp_path / "n.tif")

    t = Affine(1.5, 0.0, 650000.0, 0.0, -1.5, 5280000.0)  # the transform it carries is used
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no NotGeoreferencedWarning
        warnings.filterwarnings("ignore", category=PendingDeprecationWarning)
        warnings.filterwarnings("ignore", category=ResourceWarning)
        res = detect(row(b).rio.write_transform(t), row(a).rio.write_transform(t), method="cva", quicklook=False)
    assert str(res.crs) == "EPSG:32634" and res.transform == t
    assert res.mask[0, 100:140].mean() > 0.8 > 0.2 > res.mask[0, :90].mean()

    # one row or column selected from a file: its position from the coordinate (rioxarray's GeoTransform is still
    # the whole file's), its pixel size from that GeoTransform
    full = _open(pair[0])
    with rasterio.open(pair[0]) as ds:
        ft = ds.transform
    for sel, (col, line) in (({"y": slice(10, 11)}, (0, 10)), ({"x": slice(5, 6)}, (5, 0)),
                             ({"y": slice(10, 11), "x": slice(5, 6)}, (5, 10))):
        with rasterio.open(dataarray_to_geotiff(full.isel(sel), tmp_path / "one.tif")) as ds:  # type: ignore[attr-defined]
            assert ds.crs == "EPSG:32631"
            assert ds.transform == ft * Affine.translation(col, line), sel
