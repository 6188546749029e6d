"""Chip sampling, normalisation and augmentation."""

from __future__ import annotations

import numpy as np
import pytest
from affine import Affine

from changedet.data import Scene
from changedet.data.augment import Augment, dihedral
from changedet.data.sampling import ChipDataset, band_statistics, normalize_array, prepare_scenes
from changedet.errors import InputError


def sparse_scene(name: str = "s", size: int = 200, *, seed: int = 0) -> Scene:
    """1 % change in one corner block; a nodata stripe on the left."""
    rng = np.random.default_rng(seed)
    before = rng.normal(100, 10, (2, size, size)).astype(np.float32)
    after = before + rng.normal(0, 1, before.shape).astype(np.float32)
    label = np.zeros((size, size), np.uint8)
    label[150:170, 150:170] = 1
    valid = np.ones((size, size), bool)
    valid[:, :40] = False
    return Scene(name, before, after, label, valid, None, Affine.identity(), ["a", "b"], None)


def test_scene_normalisation_uses_valid_pixels_and_zeroes_invalid() -> None:
    scene = sparse_scene()
    scene.before[:, ~scene.valid] = 1e6  # garbage under nodata must not move the statistics
    (prepared,), entry = prepare_scenes([scene], normalization="scene")
    assert entry == {"mode": "scene", "mean": [], "std": []}
    v = prepared.before[:, scene.valid]
    np.testing.assert_allclose(v.mean(axis=1), 0.0, atol=1e-4)
    np.testing.assert_allclose(v.std(axis=1), 1.0, atol=1e-4)
    assert (prepared.before[:, ~scene.valid] == 0).all()
    mean, std = band_statistics(scene.after, scene.valid)
    np.testing.assert_allclose(prepared.after, normalize_array(scene.after, mean, std, scene.valid))


def test_fixed_normalisation_uses_given_statistics() -> None:
    scene = sparse_scene()
    (prepared,), entry = prepare_scenes([scene], normalization={"mode": "fixed", "mean": [100, 100], "std": [10, 5]})
    assert entry["mean"] == [100.0, 100.0] and entry["std"] == [10.0, 5.0]
    r, c = 50, 60
    assert prepared.before[1, r, c] == pytest.approx((scene.before[1, r, c] - 100) / 5, rel=1e-5)
    with pytest.raises(InputError, match="needs 2"):
        prepare_scenes([scene], normalization={"mode": "fixed", "mean": [1], "std": [1]})


def test_positive_aware_sampling_fraction_and_placement() -> None:
    prepared, _ = prepare_scenes([sparse_scene()], chip_size=32)
    ds = ChipDataset(prepared, chip_size=32, chips_per_epoch=200, positive_fraction=0.5, seed=1)
    with_change = [bool(ds[i][2].sum() > 0) for i in range(len(ds))]
    # half the chips are centred near a changed pixel; uniform chips hit the 1 % block only rarely
    assert 0.5 <= np.mean(with_change) < 0.7
    none = ChipDataset(prepared, chip_size=32, chips_per_epoch=200, positive_fraction=0.0, seed=1)
    assert np.mean([bool(none[i][2].sum() > 0) for i in range(200)]) < 0.2
    # every uniformly drawn chip is at least half valid (the stripe is 40 px wide)
    assert min(float(none[i][3].float().mean()) for i in range(200)) >= 0.5


def test_chip_positions_are_deterministic_per_seed_and_epoch() -> None:
    prepared, _ = prepare_scenes([sparse_scene()], chip_size=32)
    a = ChipDataset(prepared, chip_size=32, chips_per_epoch=50, seed=4, augment=Augment(date_swap=0.5, gain=0.1))
    b = ChipDataset(prepared, chip_size=32, chips_per_epoch=50, seed=4, augment=Augment(date_swap=0.5, gain=0.1))
    np.testing.assert_array_equal(a.positions(), b.positions())
    for i in (0, 7, 49):
        for x, y in zip(a[i], b[i], strict=True):
            assert (x == y).all()
    first = a.positions().copy()
    a.set_epoch(1)
    assert not np.array_equal(first, a.positions())
    a.set_epoch(0)
    np.testing.assert_array_equal(first, a.positions())


def test_small_scenes_are_padded_with_invalid_pixels() -> None:
    small = sparse_scene(size=200).crop(0, 100, 20, 30)
    (prepared,), _ = prepare_scenes([small], chip_size=32)
    assert prepared.shape == (32, 32)
    assert not prepared.valid[20:, :].any() and not prepared.valid[:, 30:].any()
    ds = ChipDataset([prepared], chip_size=32, chips_per_epoch=4, min_valid=0.1)
    assert ds[0][0].shape == (2, 32, 32)


def test_augment_transforms_dates_label_and_mask_identically() -> None:
    rng = np.random.default_rng(0)
    before = rng.normal(size=(2, 8, 8)).astype(np.float32)
    after = before + 1.0
    original = before.copy()
    label = (before[0] > 0.5).astype(np.uint8)
    valid = before[1] > -1.0
    aug = Augment(flips=True, rotations=True)
    seen = set()
    for seed in range(40):
        b, a, lab, val = aug(before, after, label, valid, np.random.default_rng(seed))
        np.testing.assert_allclose(a - b, 1.0, rtol=1e-6)  # dates stay aligned
        np.testing.assert_array_equal(lab, (b[0] > 0.5).astype(np.uint8))  # label follows the image
        np.testing.assert_array_equal(val, b[1] > -1.0)
        seen.add(b.tobytes())
    assert len(seen) == 8  # all 8 symmetries of the square occur
    np.testing.assert_array_equal(before, original)  # inputs untouched


def test_date_swap_and_radiometric_jitter() -> None:
    before = np.zeros((3, 4, 4), np.float32)
    after = np.ones((3, 4, 4), np.float32)
    lab, val = np.zeros((4, 4), np.uint8), np.ones((4, 4), bool)
    swap = Augment(flips=False, rotations=False, date_swap=1.0)
    b, a, _, _ = swap(before, after, lab, val, np.random.default_rng(0))
    assert (b == 1).all() and (a == 0).all()
    jitter = Augment(flips=False, rotations=False, gain=0.2, offset=0.1)
    b, a, _, _ = jitter(before, after, lab, val, np.random.default_rng(0))
    per_band_after = a.reshape(3, -1)
    assert np.ptp(per_band_after, axis=1).max() == pytest.approx(0.0)  # one gain/offset per band...
    assert len(set(np.round(per_band_after[:, 0], 6))) == 3  # ...different for each band
    assert not np.allclose(b, 0.0)  # the BEFORE date got its own offsets
    assert np.all((a >= 0.8 - 0.5) & (a <= 1.2 + 0.5))


def test_dihedral_is_a_group_action() -> None:
    x = np.arange(9).reshape(3, 3)
    assert np.array_equal(dihedral(dihedral(x, 1, False), 3, False), x)
    assert np.array_equal(dihedral(x, 0, True), x[:, ::-1])


def test_augment_config_validation() -> None:
    assert Augment.from_config(True) == Augment()
    assert Augment.from_config(False) is None
    with pytest.raises(InputError, match="unknown augment"):
        Augment.from_config({"flip": True})
    with pytest.raises(InputError, match="date_swap"):
        Augment(date_swap=2.0)
