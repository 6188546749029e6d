"""Contract tests for every registered architecture, and the Siamese properties (weight sharing, symmetry)."""

from __future__ import annotations

import functools

import pytest
import torch

from changedet.errors import ModelError, UnknownModelError
from changedet.models import ChangeModel, create_model, list_models
from changedet.models.checkpoint import CheckpointMeta, load_checkpoint, save_checkpoint
from changedet.models.fusion import SYMMETRIC_FUSIONS, fuse, fused_channels

MODELS = list_models()


@functools.cache
def _model(name: str, in_channels: int) -> ChangeModel:
    torch.manual_seed(0)
    return create_model(name, in_channels=in_channels).eval()


def _pair(in_channels: int, h: int, w: int, n: int = 2, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, in_channels, h, w, generator=g), torch.randn(n, in_channels, h, w, generator=g)


def _first_conv(model: torch.nn.Module) -> torch.nn.Conv2d:
    return next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))


def test_registry_lists_the_contract_names() -> None:
    assert set(MODELS) == {"fc-ef", "fc-siam-conc", "fc-siam-diff", "siam-unet", "metric-siam", "bit"}


def test_unknown_model_lists_the_names() -> None:
    with pytest.raises(UnknownModelError) as info:
        create_model("fc-siam-dif", in_channels=3)
    assert "fc-siam-diff" in str(info.value) and "siam-unet" in str(info.value)


def test_bad_kwargs_are_model_errors() -> None:
    with pytest.raises(ModelError, match=r"no_such_kwarg"):
        create_model("fc-siam-diff", in_channels=3, no_such_kwarg=1)
    with pytest.raises(ModelError, match=r"in_channels"):
        create_model("fc-ef", in_channels=0)
    with pytest.raises(ModelError, match=r"download"):
        create_model("siam-unet", in_channels=3, encoder_weights="imagenet")
    with pytest.raises(ModelError, match=r"unknown encoder_name"):
        create_model("siam-unet", in_channels=3, encoder_name="resnet-nope")
    with pytest.raises(ModelError, match=r"one mode per encoder level"):
        create_model("siam-unet", in_channels=3, fusion=["absdiff", "l2"])
    with pytest.raises(ModelError, match=r"unknown fusion"):
        create_model("siam-unet", in_channels=3, fusion="product")


@pytest.mark.parametrize("name", MODELS)
class TestModelContract:
    @pytest.mark.parametrize("in_channels", [3, 4, 13])
    @pytest.mark.parametrize("size", [(64, 64), (45, 67)])
    def test_output_shape(self, name: str, in_channels: int, size: tuple[int, int]) -> None:
        model = _model(name, in_channels)
        before, after = _pair(in_channels, *size, n=1)
        with torch.no_grad():
            out = model(before, after)
        assert out.shape == (1, 1, *size)
        assert out.dtype == torch.float32
        assert torch.isfinite(out).all()

    def test_attributes_and_config(self, name: str) -> None:
        model = _model(name, 4)
        assert model.in_channels == 4
        assert isinstance(model.required_multiple, int) and model.required_multiple >= 1
        assert isinstance(model.is_metric, bool)
        assert hasattr(model, "forward_with_embeddings") == model.is_metric
        config = model.config
        assert config["name"] == name and config["in_channels"] == 4
        rebuilt = create_model(**config)
        assert rebuilt.config == config
        own = {k: v.shape for k, v in model.state_dict().items()}
        assert {k: v.shape for k, v in rebuilt.state_dict().items()} == own

    def test_wrong_band_count_is_a_clear_error(self, name: str) -> None:
        model = _model(name, 4)
        before, after = _pair(3, 32, 32)
        with pytest.raises(ModelError, match=r"expects 4 bands .* has 3"):
            model(before, after)
        with pytest.raises(ModelError, match=r"same shape"):
            model(*_pair(4, 32, 32)[:1], _pair(4, 32, 16)[0])

    def test_backward_reaches_the_encoder(self, name: str) -> None:
        torch.manual_seed(0)
        model = create_model(name, in_channels=4).train()
        before, after = _pair(4, 32, 32)
        target = torch.zeros(2, 1, 32, 32)
        target[..., 8:20, 8:20] = 1
        loss = torch.nn.functional.binary_cross_entropy_with_logits(model(before, after), target)
        loss.backward()
        grad = _first_conv(model).weight.grad
        assert grad is not None
        assert grad.abs().sum() > 0

    def test_save_load_round_trip_is_identical(self, name: str, tmp_path) -> None:
        torch.manual_seed(3)
        model = create_model(name, in_channels=4)
        # make batch-norm statistics non-trivial so that buffers are checked too
        model.train()
        with torch.no_grad():
            model(*_pair(4, 32, 32, seed=5))
        model.eval()
        meta = CheckpointMeta(band_names=["b", "g", "r", "nir"], pixel_size=10.0, threshold=0.3)
        path = save_checkpoint(model, tmp_path / name, meta)
        loaded, meta2 = load_checkpoint(path, in_channels=4)
        assert meta2.architecture == name and meta2.threshold == 0.3
        before, after = _pair(4, 45, 67, n=1)
        with torch.no_grad():
            assert torch.equal(model(before, after), loaded(before, after))

    def test_channels_last_and_bf16(self, name: str) -> None:
        model = _model(name, 3)
        before, after = _pair(3, 32, 32, n=1)
        with torch.no_grad():
            ref = model(before, after)
            cl = model.to(memory_format=torch.channels_last)(before.to(memory_format=torch.channels_last),
                                                              after.to(memory_format=torch.channels_last))
            bf = create_model(**model.config)
            bf.load_state_dict(model.state_dict())
            bf = bf.eval().to(torch.bfloat16)
            out_bf = bf(before.bfloat16(), after.bfloat16())
        assert torch.allclose(cl, ref, atol=1e-4, rtol=1e-4)
        assert out_bf.dtype == torch.bfloat16 and out_bf.shape == ref.shape
        assert torch.isfinite(out_bf).all()


# -- Siamese properties -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["fc-siam-diff", "fc-siam-conc"])
def test_fc_siamese_shares_encoder_weights(name: str) -> None:
    model = _model(name, 3)
    x = _pair(3, 32, 32)[0]
    with torch.no_grad():
        sb, sa, xb, xa = model.encode(x, x.clone())
    for b, a in zip(sb, sa, strict=True):
        assert torch.allclose(b, a, atol=1e-6)
    assert torch.allclose(xb, xa, atol=1e-6)
    if name == "fc-siam-diff":
        assert all(model.fuse_skip(b, a).abs().max() <= 1e-6 for b, a in zip(sb, sa, strict=True))
    # ... whereas different dates do give different features (the check above can fail)
    with torch.no_grad():
        sb, sa, _, _ = model.encode(x, _pair(3, 32, 32)[1])
    assert (sb[0] - sa[0]).abs().max() > 1e-2


@pytest.mark.parametrize("fusion", ["diff", "absdiff", "l1", "l2", "cosine"])
def test_siam_unet_identical_dates_give_zero_difference(fusion: str) -> None:
    torch.manual_seed(0)
    model = create_model("siam-unet", in_channels=4, fusion=fusion).eval()
    x = _pair(4, 64, 64)[0]
    with torch.no_grad():
        fused = model.fused_features(x, x.clone())
    assert all(f.abs().max() <= 1e-5 for f in fused)


def test_pseudo_siamese_has_two_encoders() -> None:
    torch.manual_seed(0)
    model = create_model("siam-unet", in_channels=3, shared=False, fusion="absdiff").eval()
    assert model.encoder_after is not None
    x = _pair(3, 64, 64)[0]
    with torch.no_grad():
        fused = model.fused_features(x, x.clone())
    # two independently initialised encoders do not agree, unlike the shared one above
    assert max(float(f.abs().max()) for f in fused) > 1e-3


@pytest.mark.parametrize("distance", ["l1", "l2", "cosine"])
def test_metric_identical_dates_give_the_lowest_score(distance: str) -> None:
    torch.manual_seed(0)
    model = create_model("metric-siam", in_channels=3, distance=distance).eval()
    model.set_calibration(center=0.4, scale=7.0)
    x, y = _pair(3, 45, 67)
    with torch.no_grad():
        same = model(x, x.clone())
        other = model(x, y)
    lowest = -0.4 * 7.0
    assert torch.allclose(same, torch.full_like(same, lowest), atol=1e-4)
    assert (other >= lowest - 1e-4).all()
    assert (other > lowest + 1e-3).float().mean() > 0.5


@pytest.mark.parametrize("fusion", SYMMETRIC_FUSIONS)
def test_symmetric_fusions_ignore_the_date_order(fusion: str) -> None:
    torch.manual_seed(0)
    model = create_model("siam-unet", in_channels=3, fusion=fusion).eval()
    x, y = _pair(3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(model(x, y), model(y, x), atol=1e-5)


@pytest.mark.parametrize("distance", ["l1", "l2", "cosine"])
def test_metric_model_ignores_the_date_order(distance: str) -> None:
    torch.manual_seed(0)
    model = create_model("metric-siam", in_channels=3, distance=distance).eval()
    x, y = _pair(3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(model(x, y), model(y, x), atol=1e-5)


def test_fc_siam_diff_symmetry_depends_on_the_bottleneck() -> None:
    x, y = _pair(3, 32, 32)
    torch.manual_seed(0)
    # train-mode batch norm (dropout off) keeps activations at unit scale; an untrained net in eval mode shrinks the
    # deep features so much that the bottleneck barely reaches the output
    symmetric = create_model("fc-siam-diff", in_channels=3, bottleneck="absdiff", dropout=0.0).train()
    torch.manual_seed(0)
    # Daudt: the decoder starts from AFTER's features
    paper = create_model("fc-siam-diff", in_channels=3, dropout=0.0).train()
    with torch.no_grad():
        assert torch.allclose(symmetric(x, y), symmetric(y, x), atol=1e-5)
        assert (paper(x, y) - paper(y, x)).abs().max() > 1e-4


def test_concat_and_early_fusion_are_ordered() -> None:
    """For concat fusion, swapping the dates swaps the two halves of the fused features (and FC-EF's input)."""
    a, b = _pair(5, 8, 8)
    swapped = fuse(b, a, "concat")
    assert torch.equal(swapped, torch.cat(fuse(a, b, "concat").chunk(2, dim=1)[::-1], dim=1))
    assert fused_channels(5, "concat") == 10
    model = _model("fc-ef", 3)
    x, y = _pair(3, 32, 32)
    with torch.no_grad():
        assert (model(x, y) - model(y, x)).abs().max() > 1e-4


def test_metric_calibration_recovers_a_logistic_relation() -> None:
    model = create_model("metric-siam", in_channels=3)
    g = torch.Generator().manual_seed(0)
    d = torch.rand(20000, generator=g) * 2
    y = (torch.rand(20000, generator=g) < torch.sigmoid((d - 0.8) * 6)).long()
    y[:100] = 255  # ignored labels do not matter
    center, scale = model.calibrate(d, y)
    assert abs(center - 0.8) < 0.05 and abs(scale - 6) < 0.6
    assert float(model.center) == pytest.approx(center) and float(model.scale) == pytest.approx(scale)
    with pytest.raises(ModelError, match=r"changed and unchanged"):
        model.calibrate(d, torch.zeros_like(y))
    with pytest.raises(ModelError, match=r"scale > 0"):
        model.set_calibration(0.5, -1.0)


def test_odd_tiny_inputs_are_padded() -> None:
    for name in MODELS:
        model = _model(name, 3)
        with torch.no_grad():
            assert model(*_pair(3, 5, 7, n=1)).shape == (1, 1, 5, 7)


@pytest.mark.parametrize("name", MODELS)
def test_optimize_for_inference_folds_batch_norm_and_keeps_the_function(name: str) -> None:
    from changedet.models import optimize_for_inference

    torch.manual_seed(0)
    model = create_model(name, in_channels=3).train()
    with torch.no_grad():
        model(*_pair(3, 64, 64, seed=7))  # non-trivial running statistics
    model.eval()
    fast = optimize_for_inference(model)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fast.modules())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())  # the original is untouched
    x, y = _pair(3, 45, 67, n=1)
    with torch.no_grad():
        ref = model(x, y)
        out = fast(x.contiguous(memory_format=torch.channels_last), y.contiguous(memory_format=torch.channels_last))
    assert torch.allclose(out, ref, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name", ["fc-ef", "fc-siam-diff", "fc-siam-conc"])
def test_inference_copies_fuse_every_convolution_with_its_relu(name: str) -> None:
    from changedet.models import ConvReLU2d, optimize_for_inference

    torch.manual_seed(0)
    model = create_model(name, in_channels=4).train()
    with torch.no_grad():
        model(*_pair(4, 64, 64, seed=7))
    model.eval()
    n_relu = sum(isinstance(m, torch.nn.ReLU) for m in model.modules())
    x, y = (t.contiguous(memory_format=torch.channels_last) for t in _pair(4, 45, 67, n=1))
    with torch.no_grad():
        ref = model(x, y)
    for dtype, tol in ((torch.float32, 1e-4), (torch.bfloat16, 0.1)):
        fast = optimize_for_inference(model, dtype=dtype)
        assert sum(isinstance(m, ConvReLU2d) for m in fast.modules()) == n_relu > 0
        assert not any(isinstance(m, torch.nn.ReLU) for m in fast.modules())
        with torch.inference_mode():
            out = fast(x.to(dtype), y.to(dtype)).float()
        assert torch.allclose(out, ref, atol=tol, rtol=tol)
    # the unfused path (gradients, other devices) computes the same function
    conv = next(m for m in optimize_for_inference(model).modules() if isinstance(m, ConvReLU2d))
    z = torch.randn(1, conv.in_channels, 20, 24).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        fused = conv(z)
    unfused = conv(z.clone().requires_grad_(True))
    assert unfused.requires_grad and torch.allclose(fused, unfused.detach(), atol=1e-5)
    assert (fused >= 0).all() and (fused == 0).any()


@pytest.mark.parametrize("channels_last", [False, True])
def test_cat_pair_is_a_view_only_where_the_dates_already_lie_side_by_side(channels_last: bool) -> None:
    from changedet.models import cat_pair

    fmt = torch.channels_last if channels_last else torch.contiguous_format
    g = torch.Generator().manual_seed(5)
    for dim, shape in ((0, (4, 3, 6, 5)), (1, (2, 6, 6, 5))):
        buf = torch.randn(shape, generator=g).contiguous(memory_format=fmt)
        half = shape[dim] // 2
        b, a = buf.narrow(dim, 0, half), buf.narrow(dim, half, half)
        joined = cat_pair(b, a, dim)
        assert torch.equal(joined, torch.cat((b, a), dim=dim))
        assert joined.data_ptr() == buf.data_ptr()  # no copy
        # separate tensors, the reverse order, a gap between them or another dimension: a real concatenation
        for x, y, d in ((b.clone(), a.clone(), dim), (a, b, dim), (buf.narrow(dim, 0, 1), a, dim), (b, a, 1 - dim)):
            out = cat_pair(x, y, d)
            assert torch.equal(out, torch.cat((x, y), dim=d))
            assert out.data_ptr() not in (x.data_ptr(), y.data_ptr())
    # with gradients it is torch.cat, and both inputs get theirs
    buf = torch.randn(2, 3, 4, 4, requires_grad=True)
    b, a = buf[:1], buf[1:]
    cat_pair(b, a, 0).square().sum().backward()
    assert buf.grad is not None and torch.allclose(buf.grad, 2 * buf.detach())


def test_models_and_losses_do_not_import_rasterio() -> None:
    import subprocess
    import sys

    code = ("import sys, changedet.models, changedet.losses, changedet.models.checkpoint, changedet.models.bundled, "
            "changedet.models.fcn, changedet.models.siamese, changedet.models.metric, changedet.models.attention; "
            "changedet.models.create_model('siam-unet', in_channels=3); "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('rasterio', 'osgeo', 'geopandas')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def _flushed() -> bool:
    """Whether the CPU currently treats a subnormal float32 as zero (what flush_denormals switches on)."""
    tiny = torch.full((8,), 1e-39, dtype=torch.float32)
    return bool((tiny * 1.0 == 0).all())


def test_flush_denormals_switches_flushing_on_inside_nested_blocks_and_off_after() -> None:
    from changedet.models import flush_denormals

    supported = torch.set_flush_denormal(False)
    assert not _flushed()  # torch's default: subnormals are kept
    with flush_denormals():
        with flush_denormals():
            assert _flushed() == supported
        assert _flushed() == supported  # the inner block does not switch it off for the outer one
    assert not _flushed()
    with pytest.raises(RuntimeError), flush_denormals():
        raise RuntimeError("boom")
    assert not _flushed()  # restored on errors too
