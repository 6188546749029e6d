"""The streaming engine: tiled equals whole-image, nodata propagation, skipped tiles, resume, interruption."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from affine import Affine
from rasterio.windows import Window

from changedet.inference import MASK_NODATA, PROB_NODATA, TorchPredictor, predict_pair


class ArrayPair:
    """An aligned pair held in memory (the engine only needs size, georeferencing and ``read``)."""

    def __init__(self, before: np.ndarray, after: np.ndarray, valid: np.ndarray | None = None) -> None:
        self.before, self.after = before.astype(np.float32), after.astype(np.float32)
        self.count, self.height, self.width = before.shape
        self.valid = np.ones((self.height, self.width), bool) if valid is None else valid
        self.crs = rasterio.crs.CRS.from_epsg(32631)
        self.transform = Affine(10, 0, 500000, 0, -10, 5700000)
        self.reads = 0

    def read(self, window: Window) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        self.reads += 1
        r, c = int(window.row_off), int(window.col_off)
        h, w = int(window.height), int(window.width)
        return (self.before[:, r : r + h, c : c + w], self.after[:, r : r + h, c : c + w],
                self.valid[r : r + h, c : c + w])


class ConvDiff(torch.nn.Module):
    """A small translation-equivariant Siamese model: shared 3x3 convs, absolute difference, 1x1 head."""

    required_multiple = 1
    is_metric = False

    def __init__(self, in_channels: int = 3, depth: int = 2) -> None:
        super().__init__()
        torch.manual_seed(0)
        layers: list[torch.nn.Module] = []
        ch = in_channels
        for _ in range(depth):
            layers += [torch.nn.Conv2d(ch, 8, 3, padding=1), torch.nn.ReLU()]
            ch = 8
        self.encoder = torch.nn.Sequential(*layers)
        self.head = torch.nn.Conv2d(8, 1, 1)
        self.in_channels = in_channels

    def forward(self, before: torch.Tensor, after: torch.Tensor) -> torch.Tensor:
        return self.head((self.encoder(before) - self.encoder(after)).abs()) - 1.0


def _predictor(model: torch.nn.Module, c: int = 3) -> TorchPredictor:
    return TorchPredictor(model, [0.0] * c, [1.0] * c, [0.0] * c, [1.0] * c)


def _whole(model: torch.nn.Module, pair: ArrayPair) -> np.ndarray:
    with torch.no_grad():
        out = model(torch.from_numpy(pair.before[None]), torch.from_numpy(pair.after[None]))
    return torch.sigmoid(out)[0, 0].numpy()


def _read(path: Path) -> tuple[np.ndarray, dict]:
    with rasterio.open(path) as ds:
        return ds.read(1), ds.profile


@pytest.mark.parametrize(
    ("size", "tile", "overlap", "blend"),
    [((97, 131), 32, 16, "cosine"), ((150, 77), 64, 24, "cosine"), ((200, 211), 64, 8, "center-crop"),
     ((45, 300), 32, 20, "center-crop"), ((64, 64), 128, 32, "cosine")],
)
def test_tiled_equals_whole_image(tmp_path: Path, size: tuple[int, int], tile: int, overlap: int, blend: str) -> None:
    rng = np.random.default_rng(1)
    before = rng.normal(size=(3, *size)).astype(np.float32)
    after = before + (rng.random((3, *size)) > 0.9) * 2
    pair = ArrayPair(before, after)
    model = ConvDiff(depth=2)  # receptive-field margin 2 px <= overlap // 4 (cosine) or overlap // 2 (crop)
    stats = predict_pair(pair, _predictor(model), out_dir=tmp_path, threshold=0.5, tile_size=tile,
                         overlap=overlap, blend=blend)
    prob, profile = _read(tmp_path / "probability.tif")
    np.testing.assert_allclose(prob, _whole(model, pair), atol=1e-5)
    assert profile["nodata"] == PROB_NODATA and profile["dtype"] == "float32"
    mask, mprofile = _read(tmp_path / "change.tif")
    np.testing.assert_array_equal(mask, (prob >= 0.5).astype(np.uint8))
    assert mprofile["nodata"] == MASK_NODATA
    assert stats.valid_pixels == size[0] * size[1]
    assert stats.changed_pixels == int(mask.sum())
    assert not (tmp_path / ".changedet-partial").exists()


@pytest.mark.parametrize(("batch_size", "tile", "overlap"), [(1, 64, 16), (3, 64, 16), (4, 64, 16), (1, 300, 40),
                                                           (2, 300, 40)])
def test_batches_that_span_two_tile_rows_blend_every_tile(tmp_path: Path, batch_size: int, tile: int,
                                                          overlap: int) -> None:
    # 1100 rows: row blocks are written (flushed) while tiles are still predicted; 90 columns in tiles of 64 give two
    # tiles per tile row, so batches of 3 or 4 hold the end of one tile row and the start of the next. The rows of
    # the first must be blended before they are written (a regression: they came out as nodata or half-weighted).
    rng = np.random.default_rng(4)
    pair = ArrayPair(rng.normal(size=(3, 1100, 90)), rng.normal(size=(3, 1100, 90)))
    model = ConvDiff()
    stats = predict_pair(pair, _predictor(model), out_dir=tmp_path, threshold=0.5, tile_size=tile, overlap=overlap,
                         batch_size=batch_size)
    prob, _ = _read(tmp_path / "probability.tif")
    assert (prob != PROB_NODATA).all()
    np.testing.assert_allclose(prob, _whole(model, pair), atol=1e-5)
    assert stats.valid_pixels == 1100 * 90


def test_nodata_propagates_and_empty_tiles_are_skipped(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    before = rng.normal(size=(3, 160, 160)).astype(np.float32)
    after = before.copy()
    after[:, 60:90, 60:90] += 5.0
    valid = np.ones((160, 160), bool)
    valid[:, :64] = False  # a nodata border covering whole tiles
    valid[100:, :] = False
    pair = ArrayPair(before, after, valid)
    model = ConvDiff()
    stats = predict_pair(pair, _predictor(model), out_dir=tmp_path, threshold=0.5, tile_size=32, overlap=8)
    prob, _ = _read(tmp_path / "probability.tif")
    mask, _ = _read(tmp_path / "change.tif")
    assert np.all(prob[~valid] == PROB_NODATA)
    assert np.all(mask[~valid] == MASK_NODATA)
    assert set(np.unique(mask[valid])) <= {0, 1}
    assert stats.tiles_skipped > 0 and stats.tiles_predicted + stats.tiles_skipped == stats.tiles_total
    assert stats.valid_pixels == int(valid.sum())


def test_outputs_are_valid_cogs(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    pair = ArrayPair(rng.normal(size=(3, 700, 600)), rng.normal(size=(3, 700, 600)))
    predict_pair(pair, _predictor(ConvDiff(depth=1)), out_dir=tmp_path, threshold=0.5, tile_size=256, overlap=32)
    from rasterio.shutil import copy  # noqa: F401 - rasterio's COG validation lives in GDAL's layout flags

    with rasterio.open(tmp_path / "probability.tif") as ds:
        assert ds.crs.to_epsg() == 32631 and ds.transform == pair.transform
        assert ds.profile["tiled"] and ds.block_shapes[0] == (512, 512)
        assert ds.overviews(1), "a COG of this size has overviews"
        assert ds.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"
        assert ds.descriptions == ("change probability",)


def test_interrupted_run_leaves_no_output_and_resume_gives_the_same_result(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    pair = ArrayPair(rng.normal(size=(3, 1100, 90)), rng.normal(size=(3, 1100, 90)))
    model = ConvDiff()
    full = tmp_path / "full"
    predict_pair(pair, _predictor(model), out_dir=full, threshold=0.5, tile_size=64, overlap=16)

    class Boom(Exception):
        pass

    calls = {"n": 0}

    def stop_late(done: int, total: int, _px: int) -> None:
        calls["n"] += 1
        if done == total - 10:  # interrupt after more than one 512-row block is final
            raise Boom

    run = tmp_path / "run"
    with pytest.raises(Boom):
        predict_pair(pair, _predictor(model), out_dir=run, threshold=0.5, tile_size=64, overlap=16,
                     progress=stop_late)
    assert not (run / "probability.tif").exists() and not (run / "change.tif").exists()
    journal = run / ".changedet-partial" / "journal.json"
    assert journal.exists()
    import json

    assert json.loads(journal.read_text())["rows_done"] >= 512
    pair.reads = 0
    stats = predict_pair(pair, _predictor(model), out_dir=run, threshold=0.5, tile_size=64, overlap=16,
                         resume=True)
    assert stats.tiles_resumed > 0
    assert pair.reads < stats.tiles_total  # it did not start over
    for name in ("probability.tif", "change.tif"):
        a, _ = _read(full / name)
        b, _ = _read(run / name)
        np.testing.assert_array_equal(a, b)


def test_the_predictor_runs_a_folded_copy_and_leaves_the_model_untouched() -> None:
    from changedet.models import create_model

    torch.manual_seed(0)
    model = create_model("fc-siam-diff", in_channels=4).eval()
    predictor = _predictor(model, c=4)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in predictor.model.modules())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    rng = np.random.default_rng(0)
    b = rng.normal(size=(1, 4, 40, 40)).astype(np.float32)
    a = rng.normal(size=(1, 4, 40, 40)).astype(np.float32)
    with torch.no_grad():
        ref = torch.sigmoid(model(torch.from_numpy(b), torch.from_numpy(a)))[:, 0].numpy()
    np.testing.assert_allclose(predictor.predict(b, a, np.ones((1, 40, 40), bool)), ref, atol=1e-5)


def test_the_predictor_normalises_each_date_with_its_statistics() -> None:
    """(x - mean) / std per band and date (fused into one pass), non-finite values to 0, in float32 and bf16."""
    model = ConvDiff(in_channels=3).eval()
    rng = np.random.default_rng(1)
    b = rng.normal(1500, 300, size=(2, 3, 24, 40)).astype(np.float32)
    a = rng.normal(900, 100, size=(2, 3, 24, 40)).astype(np.float32)
    b[0, 1, 3, 4] = np.inf
    mb, sb, ma, sa = [1400.0, 1500.0, 1600.0], [250.0, 300.0, 0.0], [900.0, 950.0, 850.0], [90.0, 100.0, 110.0]
    nb = (b - np.reshape(mb, (1, 3, 1, 1))) / np.reshape([250.0, 300.0, 1.0], (1, 3, 1, 1))  # std 0 -> 1
    na = (a - np.reshape(ma, (1, 3, 1, 1))) / np.reshape(sa, (1, 3, 1, 1))
    nb[~np.isfinite(nb)] = 0.0
    with torch.no_grad():
        ref = torch.sigmoid(model(torch.from_numpy(nb.astype(np.float32)), torch.from_numpy(na.astype(np.float32))))[:, 0].numpy()
    valid = np.ones((2, 24, 40), bool)
    got = TorchPredictor(model, mb, sb, ma, sa).predict(b, a, valid)
    np.testing.assert_allclose(got, ref, atol=1e-5)
    got16 = TorchPredictor(model, mb, sb, ma, sa, precision="bf16").predict(b, a, valid)
    np.testing.assert_allclose(got16, ref, atol=0.05)


@pytest.mark.parametrize("name", ["fc-ef", "fc-siam-diff", "metric-siam"])
def test_the_predictor_lays_both_dates_out_as_the_model_joins_them(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The two normalised dates go into one buffer (channels for FC-EF, batch for the shared encoders): the model
    joins them without a copy, and the probabilities equal those of separately prepared dates."""
    import changedet.models.fcn as fcn
    import changedet.models.metric as metric
    from changedet.models import create_model

    torch.manual_seed(0)
    model = create_model(name, in_channels=3).eval()
    rng = np.random.default_rng(2)
    b = rng.normal(1500, 300, size=(2, 3, 32, 48)).astype(np.float32)
    a = rng.normal(900, 100, size=(2, 3, 32, 48)).astype(np.float32)
    b[1, 2, 5, 6], a[0, 0, 1, 1] = np.nan, -np.inf
    stats = ([1400.0, 1500.0, 1600.0], [250.0, 300.0, 0.0], [900.0, 950.0, 850.0], [90.0, 100.0, 110.0])
    joined: list[bool] = []
    real = fcn.cat_pair

    def spy(x: torch.Tensor, y: torch.Tensor, dim: int) -> torch.Tensor:
        out = real(x, y, dim)
        joined.append(out.data_ptr() == x.data_ptr())
        return out

    monkeypatch.setattr(fcn, "cat_pair", spy)
    monkeypatch.setattr(metric, "cat_pair", spy)
    valid = np.ones((2, 32, 48), bool)
    for precision, tol in (("float32", 1e-6), ("bf16", 1e-6)):
        predictor = TorchPredictor(model, *stats, precision=precision)
        assert predictor._pair_dim == model.pair_dim
        joined.clear()
        got = predictor.predict(b, a, valid)
        assert joined == [True]
        predictor._pair_dim = None  # the two dates prepared apart, joined by torch.cat
        joined.clear()
        ref = predictor.predict(b, a, valid)
        assert joined == [False]
        assert np.isfinite(got).all()
        np.testing.assert_allclose(got, ref, atol=tol)


class _Pointwise(torch.nn.Module):
    """1x1 convolutions only: equivariant to every flip and rotation, so test-time augmentation must not change it."""

    required_multiple = 1

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.a, self.b = torch.nn.Conv2d(3, 4, 1), torch.nn.Conv2d(3, 4, 1)
        self.head = torch.nn.Conv2d(4, 1, 1)

    def forward(self, before: torch.Tensor, after: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.a(before) + self.b(after)))


class _Skewed(torch.nn.Module):
    """An asymmetric 3x3 kernel on AFTER - BEFORE: neither flip-, rotation- nor date-swap-invariant."""

    required_multiple = 1

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 1, 3, padding=1, bias=False)
        with torch.no_grad():
            self.conv.weight.copy_(torch.arange(27, dtype=torch.float32).reshape(1, 3, 3, 3) / 27 - 0.3)

    def forward(self, before: torch.Tensor, after: torch.Tensor) -> torch.Tensor:
        return self.conv(after - before)


def _views_by_hand(model: torch.nn.Module, b: np.ndarray, a: np.ndarray, views: list) -> np.ndarray:
    """Test-time augmentation written independently with numpy: transform, predict, transform back, average."""
    total = np.zeros((b.shape[0], b.shape[2], b.shape[3]), np.float64)
    for turns, mirrored, swapped in views:
        x, y = (a, b) if swapped else (b, a)
        x, y = (np.flip(v, -1) if mirrored else v for v in (x, y))
        x, y = (np.ascontiguousarray(np.rot90(v, turns, axes=(-2, -1))) for v in (x, y))
        with torch.no_grad():
            p = torch.sigmoid(model(torch.from_numpy(x), torch.from_numpy(y)))[:, 0].numpy()
        p = np.rot90(p, -turns, axes=(-2, -1))
        total += np.flip(p, -1) if mirrored else p
    return (total / len(views)).astype(np.float32)


@pytest.mark.parametrize("mode", ["flip", "d4", "swap", "flip+swap", "d4+swap"])
def test_test_time_augmentation_maps_every_view_back_onto_the_tile(mode: str) -> None:
    from changedet.inference import TTA_MODES, tta_transforms

    rng = np.random.default_rng(5)
    b = rng.normal(size=(2, 3, 24, 40)).astype(np.float32)  # not square: rotated views are 40 x 24
    a = rng.normal(size=(2, 3, 24, 40)).astype(np.float32)
    valid = np.ones((2, 24, 40), bool)
    views = tta_transforms(mode)
    assert len(views) == len(set(views)) == TTA_MODES[mode]
    skewed = _Skewed().eval()
    got = TorchPredictor(skewed, [0.0] * 3, [1.0] * 3, [0.0] * 3, [1.0] * 3, tta=mode).predict(b, a, valid)
    np.testing.assert_allclose(got, _views_by_hand(skewed, b, a, views), atol=1e-5)
    plain = TorchPredictor(skewed, [0.0] * 3, [1.0] * 3, [0.0] * 3, [1.0] * 3).predict(b, a, valid)
    assert np.abs(got - plain).max() > 0.05  # the views differ for this model: the average is not the identity
    if "swap" in mode:  # sigmoid(x) and sigmoid(-x) average to one half
        np.testing.assert_allclose(got, 0.5, atol=1e-6)
    pointwise = _Pointwise().eval()
    np.testing.assert_allclose(_predictor(pointwise).predict(b, a, valid) if "swap" in mode else
                               TorchPredictor(pointwise, [0.0] * 3, [1.0] * 3, [0.0] * 3, [1.0] * 3,
                                              tta=mode).predict(b, a, valid),
                               _views_by_hand(pointwise, b, a, [(0, False, False)]), atol=1e-5)


def test_tiled_equals_whole_image_with_test_time_augmentation(tmp_path: Path) -> None:
    """The augmented model is still translation-equivariant: tiles blend into the whole-image result."""
    rng = np.random.default_rng(2)
    before = rng.normal(size=(3, 97, 131)).astype(np.float32)
    after = before + (rng.random((3, 97, 131)) > 0.9) * 2
    pair = ArrayPair(before, after)
    model = ConvDiff(depth=2).eval()
    predictor = TorchPredictor(model, [0.0] * 3, [1.0] * 3, [0.0] * 3, [1.0] * 3, tta="d4")
    predict_pair(pair, predictor, out_dir=tmp_path, threshold=0.5, tile_size=48, overlap=16)
    from changedet.inference import tta_transforms

    whole = _views_by_hand(model, pair.before[None], pair.after[None], tta_transforms("d4"))[0]
    np.testing.assert_allclose(_read(tmp_path / "probability.tif")[0], whole, atol=1e-5)


def test_test_time_augmentation_names_are_checked_and_survive_pickling() -> None:
    import pickle
    from typing import get_args

    from changedet.errors import InputError
    from changedet.inference import TTA_MODES, parse_tta
    from changedet.types import TTA

    assert list(get_args(TTA)) == list(TTA_MODES)  # the CLI's choices (changedet.types, no rasterio import)
    assert parse_tta("swap+flip") == parse_tta("FLIP+SWAP") == "flip+swap" and parse_tta(None) == "none"
    for bad in ("rot", "flip+d4", "flip+flip", "", "none+swap"):
        with pytest.raises(InputError, match="unknown test-time augmentation"):
            parse_tta(bad)
    predictor = TorchPredictor(_Skewed(), [0.0] * 3, [1.0] * 3, [0.0] * 3, [1.0] * 3, tta="swap+d4")
    assert predictor.tta == "d4+swap"
    assert pickle.loads(pickle.dumps(predictor)).tta == "d4+swap"


_MALLOC_PROBE = r"""
import ctypes, os, sys
import numpy as np
from changedet import inference, streaming


class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                "fsmblks", "uordblks", "fordblks", "keepcost")]


libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = MallInfo2


def mmapped_while_alive(size=64 * 2**20):
    before = libc.mallinfo2().hblkhd  # bytes glibc serves with mmap
    x = np.empty(size, np.uint8)
    x[::4096] = 1
    grown = libc.mallinfo2().hblkhd - before
    del x
    return grown


out = [mmapped_while_alive()]
with inference.large_allocations():
    with inference.large_allocations():  # nested use is counted
        out.append(mmapped_while_alive())
    out.append(mmapped_while_alive())  # still inside the outer context
out.append(streaming._MALLOC_DEPTH)  # large_allocations lives in changedet.streaming
out.append(mmapped_while_alive())  # glibc's default restored (and the heap trimmed) on exit
os.environ["CHANGEDET_MALLOPT"] = "0"
with inference.large_allocations():
    out.append(mmapped_while_alive())  # switched off
print(*out)
"""


def test_large_allocations_serve_big_tensors_from_the_heap_and_restore_the_default() -> None:
    import platform
    import subprocess
    import sys

    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        pytest.skip("large_allocations tunes glibc's malloc; elsewhere it does nothing")
    # a fresh process: this one's heap may hold large free chunks that serve a big request without mmap
    proc = subprocess.run([sys.executable, "-c", _MALLOC_PROBE], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    outside, nested, inside, depth, restored, disabled = map(int, proc.stdout.split())
    big = 64 * 2**20
    assert outside >= big  # glibc's default: a fresh mmap for a 64 MB block, unmapped when freed
    assert nested == inside == 0  # served from the heap, so the next forward pass reuses the pages
    assert depth == 0
    assert restored >= big
    assert disabled >= big


def test_tiles_pool_in_phase_with_a_whole_image_pass() -> None:
    """The engine sizes and spaces tiles in multiples of the network's downsampling factor (16 for FC-EF): tiles
    that start off that phase pool different pixels together than one whole-image pass does."""
    from changedet.inference import engine_grid
    from changedet.models import create_model

    torch.manual_seed(1)
    model = create_model("fc-ef", in_channels=3).eval()
    predictor = _predictor(model)
    assert predictor.multiple == model.pad_multiple == 16
    rng = np.random.default_rng(1)
    h, w = 300, 260
    before = rng.normal(size=(1, 3, h, w)).astype("float32")
    after = before + 0.3 * rng.normal(size=(1, 3, h, w)).astype("float32")
    whole = predictor.predict(before, after, np.ones((1, h, w), bool))[0]

    def mean_gap(multiple: int) -> float:
        grid = engine_grid(h, w, multiple=multiple, tile_size=128, overlap=32)
        out = np.zeros((h, w))
        for t in grid:
            rs, cs = t.slices
            p = predictor.predict(before[:, :, rs, cs], after[:, :, rs, cs], np.ones((1, t.height, t.width), bool))
            out[rs, cs] += grid.weights(t) * p[0]
        return float(np.abs(out - whole)[32:-32, 32:-32].mean())

    in_phase, off_phase = mean_gap(predictor.multiple), mean_gap(1)  # tiles of 128 at 0, 96 / of 122 at 0, 90
    assert in_phase < 0.2 * off_phase, (in_phase, off_phase)
