"""Losses: hand-computed values on tiny tensors, ignore index and valid mask, mining, optimisation."""

from __future__ import annotations

import math

import pytest
import torch

from changedet.errors import InputError
from changedet.losses import (
    BCELoss,
    CombinedLoss,
    ContrastiveLoss,
    DiceLoss,
    FocalLoss,
    TripletLoss,
    create_loss,
    feature_distance,
)


def _img(values, dtype=torch.float32) -> torch.Tensor:
    """A (1, 1, 1, W) tensor from a list."""
    return torch.tensor(values, dtype=dtype).reshape(1, 1, 1, -1)


# -- contrastive ---------------------------------------------------------------------------------------------------


def test_contrastive_hand_computed() -> None:
    d = _img([0.5, 0.2, 3.0, 1.5])
    y = _img([0, 1, 255, 1], torch.uint8)
    # unchanged: mean(0.5^2) = 0.25; changed: mean((1-0.2)^2, max(0, 1-1.5)^2) = mean(0.64, 0) = 0.32
    assert float(ContrastiveLoss(margin=1.0)(d, y)) == pytest.approx(0.5 * 0.25 + 0.5 * 0.32, abs=1e-7)


def test_contrastive_does_not_use_ignore_index_as_epsilon() -> None:
    """open-cd passed ignore_index (255) where an epsilon belonged: the denominators became n + 255."""
    d = _img([0.5, 0.2])
    y = _img([0, 1], torch.uint8)
    expected = 0.5 * 0.5**2 / 1 + 0.5 * 0.8**2 / 1
    assert float(ContrastiveLoss(margin=1.0)(d, y)) == pytest.approx(expected, rel=1e-6)
    buggy = 0.5 * 0.5**2 / (1 + 255) + 0.5 * 0.8**2 / (1 + 255)
    assert abs(float(ContrastiveLoss(margin=1.0)(d, y)) - buggy) > 0.1
    # the ignore value is a label, not a number in the arithmetic: another ignore value, same loss
    y7 = _img([0, 1, 7], torch.uint8)
    d7 = _img([0.5, 0.2, 9.0])
    assert float(ContrastiveLoss(margin=1.0, ignore_index=7)(d7, y7)) == pytest.approx(expected, rel=1e-6)


def test_contrastive_is_safe_when_a_class_is_absent() -> None:
    d = _img([0.5, 0.2, 0.0]).requires_grad_(True)
    only_unchanged = _img([0, 0, 0], torch.uint8)
    loss = ContrastiveLoss(margin=1.0)(d, only_unchanged)
    assert float(loss.detach()) == pytest.approx(0.5 * (0.25 + 0.04 + 0.0) / 3)
    loss.backward()
    assert torch.isfinite(d.grad).all()
    d.grad = None
    all_ignored = _img([255, 255, 255], torch.uint8)
    loss = ContrastiveLoss()(d, all_ignored)
    assert float(loss.detach()) == 0.0
    loss.backward()
    assert torch.equal(d.grad, torch.zeros_like(d))


def test_contrastive_from_embeddings_matches_distance_map() -> None:
    g = torch.Generator().manual_seed(0)
    eb, ea = torch.randn(2, 4, 3, 5, generator=g), torch.randn(2, 4, 3, 5, generator=g)
    y = (torch.rand(2, 1, 3, 5, generator=g) > 0.5).long()
    d = feature_distance(eb, ea, "l2")
    loss = ContrastiveLoss(margin=2.0)
    assert float(loss((None, eb, ea), y)) == pytest.approx(float(loss(d, y)), rel=1e-6)


# -- triplet -------------------------------------------------------------------------------------------------------
# Four pixels in one row, 2-D embeddings. Pixels 0, 1 unchanged (anchors with positives), 2, 3 changed (negatives).
BEFORE = torch.tensor([[0.0, 0.0], [1.0, 0.0], [9.0, 9.0], [9.0, 9.0]]).T.reshape(1, 2, 1, 4)
AFTER = torch.tensor([[0.0, 0.5], [1.0, 1.0], [0.0, 0.3], [3.0, 0.0]]).T.reshape(1, 2, 1, 4)
LABELS = _img([0, 0, 1, 1], torch.uint8)
# d(a, p) = [0.5, 1.0]; d(a0, n) = [0.3, 3.0]; d(a1, n) = [sqrt(1.09), 2.0]
D_A1_N2 = math.sqrt(1.09)
MARGIN = 1.2


def _triplet(mining: str, **kw) -> TripletLoss:
    return TripletLoss(margin=MARGIN, mining=mining, distance="l2", **kw)


def test_triplet_hard_mining_hand_computed() -> None:
    # hardest negatives: a0 -> n2 (0.3), a1 -> n2 (1.044)
    expected = ((0.5 - 0.3 + MARGIN) + (1.0 - D_A1_N2 + MARGIN)) / 2
    assert float(_triplet("hard")((None, BEFORE, AFTER), LABELS)) == pytest.approx(expected, rel=1e-6)


def test_triplet_semi_hard_mining_hand_computed() -> None:
    # semi-hard: closest negative farther than the positive: a0 -> n3 (3.0 > 0.5), a1 -> n2 (1.044 > 1.0)
    expected = (max(0.0, 0.5 - 3.0 + MARGIN) + (1.0 - D_A1_N2 + MARGIN)) / 2
    assert float(_triplet("semi-hard")((None, BEFORE, AFTER), LABELS)) == pytest.approx(expected, rel=1e-6)


def test_triplet_all_mining_hand_computed() -> None:
    pairs = [0.5 - 0.3 + MARGIN, 0.5 - 3.0 + MARGIN, 1.0 - D_A1_N2 + MARGIN, 1.0 - 2.0 + MARGIN]
    active = [p for p in pairs if p > 0]
    assert len(active) == 3
    expected = sum(active) / len(active)
    assert float(_triplet("all")((None, BEFORE, AFTER), LABELS)) == pytest.approx(expected, rel=1e-6)


def test_hard_mining_sends_gradient_only_to_the_hardest_negative() -> None:
    after = AFTER.clone().requires_grad_(True)
    _triplet("hard")((None, BEFORE, after), LABELS).backward()
    grad = after.grad[0, :, 0]  # (D, pixels)
    assert grad[:, 2].abs().sum() > 0  # n2 is the hardest negative of both anchors
    assert torch.equal(grad[:, 3], torch.zeros(2))  # n3 is never selected
    after.grad = None
    _triplet("all")((None, BEFORE, after), LABELS).backward()
    assert after.grad[0, :, 0, 3].abs().sum() > 0  # ... while "all" uses it (pair a1-n3 is active)


def test_triplet_ignores_ignored_and_invalid_pixels() -> None:
    labels = _img([0, 0, 1, 255], torch.uint8)
    after_moved = AFTER.clone()
    after_moved[0, :, 0, 3] = torch.tensor([0.0, 0.0])  # would be the hardest negative of a0 if it counted
    ref = float(_triplet("hard")((None, BEFORE, AFTER), labels))
    assert float(_triplet("hard")((None, BEFORE, after_moved), labels)) == pytest.approx(ref)
    valid = _img([True, True, True, False], torch.bool)
    assert float(_triplet("hard")((None, BEFORE, after_moved), LABELS, valid)) == pytest.approx(ref)


def test_triplet_without_negatives_is_zero_and_differentiable() -> None:
    eb = BEFORE.clone().requires_grad_(True)
    loss = _triplet("hard")((None, eb, AFTER), _img([0, 0, 0, 255], torch.uint8))
    assert float(loss.detach()) == 0.0
    loss.backward()
    assert torch.equal(eb.grad, torch.zeros_like(eb))


def test_triplet_samples_a_bounded_number_of_anchors() -> None:
    g = torch.Generator().manual_seed(0)
    eb, ea = torch.randn(1, 3, 16, 16, generator=g), torch.randn(1, 3, 16, 16, generator=g)
    y = (torch.rand(1, 1, 16, 16, generator=g) > 0.7).long()
    full = TripletLoss(mining="hard", max_anchors=10_000, max_negatives=10_000)((None, eb, ea), y)
    small = TripletLoss(mining="hard", max_anchors=8, max_negatives=8,
                        generator=torch.Generator().manual_seed(1))
    counts: list[int] = []
    original = small._sample
    small._sample = lambda idx, k: (counts.append(min(idx.numel(), k)), original(idx, k))[1]  # type: ignore[method-assign]
    value = small((None, eb, ea), y)
    assert counts == [8, 8]
    assert torch.isfinite(value) and float(value) != pytest.approx(float(full))


# -- logit losses --------------------------------------------------------------------------------------------------


def test_bce_pos_weight_hand_computed() -> None:
    logits = _img([0.0, 2.0, -1.0])
    y = _img([1, 0, 255], torch.uint8)
    expected = (3.0 * math.log(2) + math.log(1 + math.e**2)) / 2
    assert float(BCELoss(pos_weight=3.0)(logits, y)) == pytest.approx(expected, rel=1e-6)


def test_dice_hand_computed() -> None:
    logits = _img([0.0, 0.0, 100.0])
    y = _img([1, 0, 255], torch.uint8)
    # p = [0.5, 0.5], t = [1, 0]: 1 - (2 * 0.5 + 1) / (1.0 + 1 + 1)
    assert float(DiceLoss(smooth=1.0)(logits, y)) == pytest.approx(1 - 2.0 / 3.0, rel=1e-6)


def test_focal_hand_computed() -> None:
    logits = _img([0.0, 1.0])
    y = _img([1, 0], torch.uint8)
    p1 = 1 / (1 + math.exp(-1.0))
    v0 = 0.25 * (0.5**2) * math.log(2)
    v1 = 0.75 * (p1**2) * -math.log(1 - p1)
    assert float(FocalLoss(alpha=0.25, gamma=2.0)(logits, y)) == pytest.approx((v0 + v1) / 2, rel=1e-6)


@pytest.mark.parametrize("name", ["bce", "dice", "focal", "bce+dice"])
def test_logit_losses_ignore_ignored_and_invalid_pixels(name: str) -> None:
    loss = create_loss(name, pos_weight=2.0) if "bce" in name else create_loss(name)
    logits = _img([0.3, -1.0, 2.0, 5.0])
    y = _img([1, 0, 255, 1], torch.uint8)
    valid = _img([True, True, True, False], torch.bool)
    ref = float(loss(logits, y, valid))
    changed = logits.clone()
    changed[..., 2] = -40.0
    changed[..., 3] = -40.0
    assert float(loss(changed, y, valid)) == pytest.approx(ref, rel=1e-6)
    assert float(loss(changed, y)) != pytest.approx(ref, rel=1e-3)  # the invalid pixel counts without the mask


def test_losses_reject_bad_targets_and_names() -> None:
    with pytest.raises(InputError, match=r"0 .*1 .*255"):
        BCELoss()(_img([0.0, 0.0]), _img([0, 2], torch.uint8))
    with pytest.raises(InputError, match=r"known losses"):
        create_loss("bce+lovasz")
    with pytest.raises(InputError, match=r"does not take"):
        create_loss("dice", pos_weight=2.0)
    combined = create_loss("bce+dice", pos_weight=2.0, weights=[1.0, 0.5])
    assert isinstance(combined, CombinedLoss) and combined.weights == [1.0, 0.5]
    assert combined.losses[0].pos_weight == 2.0


# -- optimisation on a synthetic pair ------------------------------------------------------------------------------


def _synthetic_pair() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    before = torch.randn(2, 3, 32, 32, generator=g) * 0.3
    after = before + 0.05 * torch.randn(2, 3, 32, 32, generator=g)
    target = torch.zeros(2, 1, 32, 32, dtype=torch.uint8)
    after[:, :, 8:20, 10:24] += 2.0
    target[:, :, 8:20, 10:24] = 1
    target[:, :, :2] = 255
    return before, after, target


@pytest.mark.parametrize("name", ["bce", "dice", "focal", "bce+dice", "contrastive", "triplet"])
def test_a_few_steps_drive_the_loss_down(name: str) -> None:
    from changedet.models import create_model

    torch.manual_seed(0)
    metric = name in ("contrastive", "triplet")
    model = create_model("metric-siam" if metric else "fc-siam-diff", in_channels=3, dropout=0.0)
    kwargs = {"generator": torch.Generator().manual_seed(0), "max_anchors": 256} if name == "triplet" else {}
    loss_fn = create_loss(name, **kwargs)
    before, after, target = _synthetic_pair()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    values = []
    for _ in range(8):
        out = model.forward_with_embeddings(before, after) if metric else model(before, after)
        loss = loss_fn(out, target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        values.append(float(loss.detach()))
    assert all(math.isfinite(v) for v in values)
    assert values[-1] < 0.8 * values[0], values
