"""The quick-look figure and the interactive map: checked for content, not just "it draws"."""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import numpy as np
import pytest
import rasterio
import shapely
from matplotlib.collections import Collection
from matplotlib.image import AxesImage

from changedet.api import ChangeResult, detect
from changedet.errors import InputError
from changedet.plotting import (
    explore_result,
    plot_result,
    rgb_composite,
    rgb_indexes,
    save_quicklook,
    stretch_limits,
)
from changedet.testing import make_geotiff, make_pair, paint_change

SCALE_TEXT = re.compile(r"^\d+(\.\d+)? k?m$")


def _result(tmp: Path, kind: str = "aligned", *, block: tuple[int, int, int, int] | None = (30, 40, 24, 30),
             **pair_kwargs: object) -> ChangeResult:
    before, after = make_pair(tmp, kind, **pair_kwargs)  # type: ignore[arg-type]
    if block is not None:
        paint_change(after, block)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return detect(before, after, method="cva", min_area=300, output_dir=tmp / "out", quicklook=False)


def _map_axes(fig: object) -> list:
    return [ax for ax in fig.axes if ax.get_images()]  # type: ignore[attr-defined]


def _scale_texts(ax: object) -> list[str]:
    return [t.get_text() for t in ax.texts if SCALE_TEXT.match(t.get_text())]  # type: ignore[attr-defined]


@pytest.fixture(scope="module")
def projected(tmp_path_factory: pytest.TempPathFactory) -> ChangeResult:
    return _result(tmp_path_factory.mktemp("projected"), size=128)


def test_four_map_panels_with_the_raster_extent_titles_and_scale_bars(projected: ChangeResult) -> None:
    fig = projected.plot()
    axes = _map_axes(fig)
    assert len(axes) == 4
    with rasterio.open(projected.paths["probability"]) as ds:
        b = ds.bounds
    for ax in axes:
        assert ax.get_xlim() == pytest.approx((b.left, b.right))
        assert ax.get_ylim() == pytest.approx((b.bottom, b.top))
        for im in ax.get_images():
            assert im.get_extent() == pytest.approx([b.left, b.right, b.bottom, b.top])
        assert _scale_texts(ax), f"no scale bar text in {ax.get_title()!r}"
    titles = [ax.get_title() for ax in axes]
    assert titles[0] == "BEFORE (2019-05-01)" and titles[1] == "AFTER (2020-05-01)"
    assert titles[2] == "change probability"
    assert titles[3].startswith("change polygons over AFTER: 1")
    # 128 px of 10 m = 1280 m wide: a quarter is 320 m -> a 200 m bar
    assert _scale_texts(axes[0]) == ["200 m"]
    assert axes[2].get_xlabel() == "easting (metre)" and axes[0].get_ylabel() == "northing (metre)"
    assert "EPSG:32631" in fig.get_suptitle() and "cva" in fig.get_suptitle()


def test_polygons_are_drawn_over_after_where_they_are(projected: ChangeResult) -> None:
    fig = projected.plot()
    poly_ax = _map_axes(fig)[3]
    drawn = [c for c in poly_ax.collections if isinstance(c, Collection) and len(c.get_paths())]
    assert drawn, "the polygon panel has no polygon collection"
    # the drawn paths cover the painted block: rows 30..54, cols 40..70 of a 10 m grid from (500000, 5700000)
    verts = np.concatenate([p.vertices for c in drawn for p in c.get_paths()])
    assert verts[:, 0].min() == pytest.approx(500400, abs=15) and verts[:, 0].max() == pytest.approx(500700, abs=15)
    assert verts[:, 1].max() == pytest.approx(5699700, abs=15) and verts[:, 1].min() == pytest.approx(5699460, abs=15)
    # the panel's image is AFTER, identical to the AFTER panel
    after_img = _map_axes(fig)[1].get_images()[0].get_array()
    assert np.array_equal(poly_ax.get_images()[0].get_array(), after_img)
    # no polygon on the other panels
    for ax in _map_axes(fig)[:3]:
        assert not [c for c in ax.collections if len(c.get_paths())]


def test_a_rotated_grid_is_drawn_where_its_polygons_are(tmp_path: Path) -> None:
    from affine import Affine

    rotated = Affine.translation(500000, 4600000) * Affine.rotation(30) * Affine.scale(10, -10)
    b = np.random.default_rng(0).normal(100, 5, (3, 64, 64)).astype("float32")
    a = b.copy()
    a[:, 10:30, 10:30] += 80
    before = make_geotiff(tmp_path / "b.tif", b, transform=rotated)
    after = make_geotiff(tmp_path / "a.tif", a, transform=rotated)
    res = detect(before, after, method="cva", output_dir=tmp_path / "o", quicklook=False)
    prob_ax = _map_axes(res.plot())[2]
    image = prob_ax.get_images()[0]
    # the image's pixel (col, row) goes where the raster's affine puts it, as the polygons are drawn
    to_map = image.get_transform() - prob_ax.transData
    for col, row in ((0, 0), (20.5, 20.5), (64, 64)):
        np.testing.assert_allclose(to_map.transform((col, row)), rotated * (col, row), atol=1e-6)
    centre = rotated * (20, 20)
    assert res.polygons.contains(shapely.Point(centre)).any()


def test_no_polygons_means_an_empty_polygon_panel(tmp_path: Path) -> None:
    result = _result(tmp_path, block=None, size=64)
    result._polygons = result.polygons.iloc[0:0]
    fig = result.plot()
    axes = _map_axes(fig)
    assert len(axes) == 4
    assert axes[3].get_title().startswith("change polygons over AFTER: 0")
    assert not [c for c in axes[3].collections if len(c.get_paths())]


def test_probability_panel_shows_the_probability_raster_and_nodata_as_blank(tmp_path: Path) -> None:
    result = _result(tmp_path, "nodata-border", block=None, size=96)
    fig = result.plot(max_size=4096)
    shown = _map_axes(fig)[2].get_images()[0].get_array()
    prob = result.probability
    assert shown.shape == prob.shape
    assert np.array_equal(np.ma.getmaskarray(shown), prob < 0)
    np.testing.assert_array_equal(shown.compressed(), prob[prob >= 0])
    # the BEFORE composite is transparent where BEFORE has no data (over a hatched patch), opaque elsewhere
    before_img = _map_axes(fig)[0].get_images()[0].get_array()
    assert before_img.shape[-1] == 4
    assert np.all(before_img[:, :12, 3] == 0.0)
    assert np.all(before_img[:, 40:, 3] == 1.0)
    for ax in _map_axes(fig):
        hatched = [p for p in ax.patches if p.get_hatch() and p.get_label() == "nodata"]
        assert len(hatched) == 1
        assert all(hatched[0].zorder < im.zorder for im in ax.get_images())


def test_before_and_after_share_one_stretch(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    base = rng.uniform(1000, 2000, (3, 64, 64))
    before = make_geotiff(tmp_path / "b.tif", base, dtype="uint16", tags={"ACQUISITION_DATE": "2020-01-01"})
    after = make_geotiff(tmp_path / "a.tif", base * 1.5, dtype="uint16", tags={"ACQUISITION_DATE": "2020-06-01"})
    result = detect(before, after, method="cva", quicklook=False, vectorize=False)
    shared = [ax.get_images()[0].get_array()[..., :3] for ax in _map_axes(result.plot())[:2]]
    own = [ax.get_images()[0].get_array()[..., :3] for ax in _map_axes(result.plot(shared_stretch=False))[:2]]
    # one stretch: AFTER, 1.5 x brighter everywhere, looks brighter; separate stretches hide it
    assert shared[1].mean() > shared[0].mean() + 0.3
    assert abs(own[1].mean() - own[0].mean()) < 0.02



def _assert_painted_blocks(result) -> None:
    """The BEFORE panel shows red on the left 20 columns, green on the top 20 rows, blue in the lower right corner."""
    img = _map_axes(result.plot(max_size=4096))[1].get_images()[0].get_array()
    red, green, blue = (img[..., i] > 0.5 for i in range(3))
    assert red[:, :20].all() and not red[:, 20:].any()
    assert green[:20].all() and not green[20:].any()
    assert blue[30:, 30:].all() and not blue[:30].any()

def test_sentinel2_composite_uses_b04_b03_b02_by_name(tmp_path: Path) -> None:
    names = ["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11", "B12"]
    data = np.full((13, 40, 40), 1000.0)
    data[3, :, :20] = 3000  # B04 (red) bright in the left half
    data[2, :20, :] = 3000  # B03 (green) bright in the top half
    data[1, 30:, 30:] = 3000  # B02 (blue) bright in the lower right corner
    data[0] = np.arange(40)[None] * 100  # B01 would be a ramp: it must not be shown
    path = make_geotiff(tmp_path / "s2.tif", data, dtype="uint16", descriptions=names)
    assert rgb_indexes(names, 13) == [4, 3, 2]
    result = detect(path, path, method="cva", quicklook=False, vectorize=False)
    _assert_painted_blocks(result)


#: Inputs whose red, green and blue bands a true-colour model finds by Landsat numbering or colour interpretation:
#: (band names, tags, colour interpretation, the 0-based red, green, blue bands).
DISPLAY_CASES = {
    "landsat8_sr": ([f"SR_B{i}" for i in range(1, 8)], {"SPACECRAFT_ID": "LANDSAT_8"}, None, (3, 2, 1)),
    "landsat5_level1": ([f"B{i}" for i in range(1, 8)], {"SPACECRAFT_ID": "LANDSAT_5"}, None, (2, 1, 0)),
    "bgr_colorinterp": (None, None, ("blue", "green", "red"), (2, 1, 0)),
}


def _coloured_raster(path: Path, case: str) -> Path:
    """A raster whose red band is bright in the left half, green in the top half, blue in the lower right corner
    and every other band a ramp (which a composite must not show)."""
    from rasterio.enums import ColorInterp

    names, tags, interp, (r, g, b) = DISPLAY_CASES[case]
    n = len(names) if names else 3
    data = np.tile(np.arange(40, dtype=float)[None, None] * 100 + 500, (n, 40, 1))
    data[[r, g, b]] = 1000.0
    data[r, :, :20] = 3000
    data[g, :20, :] = 3000
    data[b, 30:, 30:] = 3000
    make_geotiff(path, data, dtype="uint16", descriptions=names, tags=tags)
    if interp is not None:
        with rasterio.open(path, "r+") as ds:
            ds.colorinterp = [getattr(ColorInterp, c) for c in interp]
    return path


@pytest.mark.parametrize("case", sorted(DISPLAY_CASES))
def test_composite_shows_the_bands_the_model_reads(tmp_path: Path, case: str) -> None:
    from changedet.io import raster_info
    from changedet.io.bands import display_bands, identified_bands

    path = _coloured_raster(tmp_path / f"{case}.tif", case)
    r, g, b = DISPLAY_CASES[case][3]
    assert identified_bands(raster_info(path), ["B04", "B03", "B02"]) == [r + 1, g + 1, b + 1]  # what s2-rgb reads
    with rasterio.open(path) as ds:
        assert display_bands(ds) == display_bands(raster_info(path)) == (r + 1, g + 1, b + 1)
        assert rgb_indexes(ds.descriptions, ds.count, colorinterp=ds.colorinterp, dtypes=ds.dtypes,
                           tags=ds.tags()) == [r + 1, g + 1, b + 1]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = detect(path, path, method="cva", quicklook=False, vectorize=False)
    _assert_painted_blocks(result)


def test_geographic_crs_uses_degrees_a_latitude_aspect_and_a_metric_scale(tmp_path: Path) -> None:
    result = _result(tmp_path, size=80, crs="EPSG:4326", res=0.0001, origin=(2.36, 48.86), block=(20, 20, 16, 16))
    fig = result.plot()
    axes = _map_axes(fig)
    assert axes[2].get_xlabel() == "longitude (°)" and axes[0].get_ylabel() == "latitude (°)"
    assert axes[0].get_aspect() == pytest.approx(1 / np.cos(np.radians(48.856)), rel=1e-3)
    # 80 px x 0.0001 deg x 73.3 km/deg = 587 m; a quarter is 147 m -> a 100 m bar
    assert _scale_texts(axes[0]) == ["100 m"]
    bar = next(line for line in axes[0].lines if len(line.get_xdata()) == 2)
    length_deg = float(np.ptp(bar.get_xdata()))
    assert length_deg * 111_320 * np.cos(np.radians(48.856)) == pytest.approx(100, rel=0.01)


def test_pixel_coordinates_without_a_crs(tmp_path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = _result(tmp_path, "no-crs-both", size=64, block=(10, 10, 16, 16))
    fig = result.plot()
    axes = _map_axes(fig)
    assert len(axes) == 4
    assert axes[2].get_xlabel() == "column (pixels)"
    assert not _scale_texts(axes[0])  # no CRS, no scale
    assert sorted(axes[0].get_xlim()) == pytest.approx([0, 64])
    assert "none (pixel coordinates)" in fig.get_suptitle()
    with pytest.raises(InputError, match="no CRS"):
        explore_result(result)


def test_missing_inputs_show_not_available(projected: ChangeResult) -> None:
    moved = ChangeResult(projected.output_dir, projected.paths, projected.report, projected.crs,
                         projected.transform, before=projected.output_dir / "gone.tif", after=None)
    fig = moved.plot()
    texts = [t.get_text() for ax in fig.axes for t in ax.texts]
    assert texts.count("not available") == 2
    assert len(_map_axes(fig)) == 1  # only the probability


def test_decimated_reads_bound_the_figure_cost(projected: ChangeResult) -> None:
    fig = projected.plot(max_size=32)
    for ax in _map_axes(fig):
        assert max(ax.get_images()[0].get_array().shape[:2]) == 32


def test_save_quicklook_writes_a_png_atomically(projected: ChangeResult, tmp_path: Path) -> None:
    out = save_quicklook(projected, tmp_path / "q.png", dpi=50)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in tmp_path.iterdir()] == ["q.png"]
    with pytest.raises(OSError):
        save_quicklook(projected, tmp_path / "missing" / "q.png", dpi=50)
    assert not (tmp_path / "missing").exists()


def test_detect_writes_the_same_figure_as_quicklook_png(tmp_path: Path) -> None:
    before, after = make_pair(tmp_path, "aligned", size=64)
    result = detect(before, after, method="cva", output_dir=tmp_path / "out")
    import matplotlib.image as mpimg

    png = mpimg.imread(result.paths["quicklook"])
    w, h = result.plot().get_size_inches() * 110
    assert png.shape[:2] == (round(h), round(w))


def test_stretch_helpers() -> None:
    a = np.array([[[0.0, 10.0], [20.0, np.nan]]])
    lo, hi = stretch_limits([(a, None)], (0, 100))
    assert (lo[0], hi[0]) == (0.0, 20.0)
    img = rgb_composite(a, limits=(lo, hi))
    assert img.shape == (2, 2, 3)
    np.testing.assert_allclose(img[..., 0], [[0.0, 0.5], [1.0, 1.0]])  # NaN is invalid -> white
    assert rgb_indexes(["red", "green", "blue", "nir"], 4) == [1, 2, 3]
    assert rgb_indexes(["nir", "Blue", "Green", "Red"], 4) == [4, 3, 2]
    with pytest.raises(ValueError):
        stretch_limits([])


# -- explore -----------------------------------------------------------------------------------------------------
def test_explore_has_the_polygons_over_raster_overlays(projected: ChangeResult) -> None:
    folium = pytest.importorskip("folium")
    from rasterio.warp import transform_bounds

    m = projected.explore()
    assert isinstance(m, folium.Map)
    children = list(m._children.values())
    overlays = {c.layer_name: c for c in children if isinstance(c, folium.raster_layers.ImageOverlay)}
    assert set(overlays) == {"AFTER", "change mask"}
    geojson = [c for c in children if isinstance(c, folium.GeoJson)]
    assert len(geojson) == 1 and geojson[0].layer_name == "change polygons"
    assert len(geojson[0].data["features"]) == len(projected.polygons) == 1
    # polygons are added last: on top of the overlays
    assert children.index(geojson[0]) > max(children.index(o) for o in overlays.values())
    west, south, east, north = transform_bounds(projected.crs, "EPSG:4326", *projected.bounds)
    (s, w), (n, e) = overlays["change mask"].bounds
    assert (s, w, n, e) == pytest.approx((south, west, north, east), abs=2e-4)
    html = m.get_root().render()
    assert "change polygons" in html and "L.imageOverlay" in html and "L.control.layers" in html


def test_explore_mask_overlay_marks_the_change(projected: ChangeResult) -> None:
    folium = pytest.importorskip("folium")
    import base64
    import io

    import matplotlib.image as mpimg

    m = projected.explore(show_after=False, max_size=128)
    overlays = [c for c in m._children.values() if isinstance(c, folium.raster_layers.ImageOverlay)]
    assert [o.layer_name for o in overlays] == ["change mask"]
    url = overlays[0].url
    rgba = mpimg.imread(io.BytesIO(base64.b64decode(url.split(",", 1)[1])), format="png")
    opaque = rgba[..., 3] > 0.5
    changed = int((projected.mask == 1).sum())
    # about the changed pixel count (warped to Web Mercator at the same size), and red
    assert opaque.sum() == pytest.approx(changed, rel=0.15)
    assert rgba[opaque][:, 0].min() > 0.9 and rgba[opaque][:, 2].max() < 0.1


def test_explore_without_polygons_still_maps_the_mask(tmp_path: Path) -> None:
    folium = pytest.importorskip("folium")
    result = _result(tmp_path, block=None, size=64)
    result._polygons = result.polygons.iloc[0:0]
    m = result.explore()
    assert not [c for c in m._children.values() if isinstance(c, folium.GeoJson)]
    assert [c for c in m._children.values() if isinstance(c, folium.raster_layers.ImageOverlay)]


def test_explore_passes_keywords_to_geodataframe_explore(projected: ChangeResult) -> None:
    pytest.importorskip("folium")
    m = projected.explore(tooltip=["area_m2"], style_kwds={"color": "#00ff00"})
    html = m.get_root().render()
    assert "#00ff00" in html and "area_m2" in html


def test_plot_result_on_axes_images_are_axesimages(projected: ChangeResult) -> None:
    fig = plot_result(projected)
    for ax in _map_axes(fig):
        assert all(isinstance(im, AxesImage) for im in ax.get_images())


def test_the_polygon_panel_gives_the_area_of_the_polygons_drawn_not_of_the_unfiltered_mask(tmp_path: Path) -> None:
    from changedet.plotting import _area_text

    before, after = make_pair(tmp_path, "aligned", size=96)
    paint_change(after, (10, 10, 24, 30))  # 720 px of 10 m: 72,000 m2, kept
    paint_change(after, (60, 60, 6, 6))  # 36 px: 3,600 m2, below min_area
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = detect(before, after, method="cva", min_area=10_000, output_dir=tmp_path / "o", quicklook=False)
    polys = res.polygons
    assert len(polys) == 1
    mask_area, poly_area = res.report["summary"]["changed_area_m2"], float(polys.area_m2.sum())
    assert mask_area >= poly_area + 3_000  # the small block is in the mask, not in the polygons
    title = _map_axes(res.plot())[3].get_title()
    assert title == f"change polygons over AFTER: 1, {_area_text(poly_area)}"
    assert _area_text(mask_area) not in title
