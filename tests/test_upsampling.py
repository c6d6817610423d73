"""The interchangeable upsampling modules of ``workbench.models.upsampling``."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from workbench.models.upsampling import (
    METHODS,
    BedOfNails,
    MaxUnpool,
    PixelShuffleUp,
    TransposedUp,
    UpsampleSpec,
    bilinear_kernel,
    canonical_upsample,
    icnr_,
    make_upsample,
    parse_upsample,
)

SCALES = (2, 4, 8)


def _inputs(method, cin, scale, b=2, h=5, w=7, guide_channels=None):
    x = torch.randn(b, cin, h, w)
    guide = torch.randn(b, guide_channels or cin, h * scale, w * scale) if method == "max_unpool" else None
    return x, guide


# --------------------------------------------------------------------------- shapes


@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("method", list(METHODS) + ["transposed_k{s}", "transposed_k{s+1}"])
@pytest.mark.parametrize("cin,cout", [(4, 6), (5, 5)])
def test_shape(method, scale, cin, cout):
    method = method.replace("{s}", str(scale)).replace("{s+1}", str(scale + 1))
    up = make_upsample(method, cin, cout, scale)
    assert (up.in_channels, up.out_channels, up.scale) == (cin, cout, scale)
    assert up.method == parse_upsample(method).method
    x, guide = _inputs(up.method, cin, scale)
    y = up(x, guide=guide)
    assert y.shape == (2, cout, 5 * scale, 7 * scale)
    assert y.dtype == x.dtype
    assert torch.isfinite(y).all()


def test_out_channels_default_and_scale_one():
    up = make_upsample("bilinear", 3, scale=2)
    assert up.out_channels == 3
    assert isinstance(up.proj, nn.Identity)
    proj = make_upsample("pixel_shuffle", 3, 5, scale=1)  # nothing to grow: projection only
    assert proj(torch.randn(1, 3, 4, 4)).shape == (1, 5, 4, 4)
    for bad in (0, -2, 1.5):
        with pytest.raises(ValueError, match="scale"):
            make_upsample("nearest", 3, 3, bad)


def test_max_unpool_needs_a_guide():
    with pytest.raises(ValueError, match="guide"):
        make_upsample("max_unpool", 3, 3, 2)(torch.randn(1, 3, 4, 4))


def test_transposed_kernel_smaller_than_stride_raises():
    with pytest.raises(ValueError, match="kernel_size 3 must be >= the stride 4"):
        make_upsample("transposed_k3", 2, 2, 4)
    assert make_upsample("transposed_k4", 2, 2, 4).kernel_size == 4
    assert make_upsample("transposed", 2, 2, 4).kernel_size == 8


# --------------------------------------------------------------------------- parsing


@pytest.mark.parametrize(
    "spec,expected,canonical",
    [
        ("nearest", UpsampleSpec("nearest"), "nearest"),
        ("bilinear", UpsampleSpec("bilinear"), "bilinear"),
        ("transposed", UpsampleSpec("transposed"), "transposed"),
        ("transposed_k3", UpsampleSpec("transposed", kernel_size=3), "transposed_k3"),
        ("transposed_k16", UpsampleSpec("transposed", kernel_size=16), "transposed_k16"),
        ({"method": "pixel_shuffle"}, UpsampleSpec("pixel_shuffle"), "pixel_shuffle"),
        ({"method": "transposed", "kernel_size": 3}, UpsampleSpec("transposed", kernel_size=3), "transposed_k3"),
        ({"method": "transposed_k3"}, UpsampleSpec("transposed", kernel_size=3), "transposed_k3"),
        (
            {"method": "transposed", "init": "default"},
            UpsampleSpec("transposed", init="default"),
            {"method": "transposed", "kernel_size": None, "init": "default"},
        ),
        (
            {"method": "transposed_k4", "init": "default"},
            UpsampleSpec("transposed", kernel_size=4, init="default"),
            {"method": "transposed", "kernel_size": 4, "init": "default"},
        ),
        (UpsampleSpec("resize_conv"), UpsampleSpec("resize_conv"), "resize_conv"),
    ],
)
def test_parse_and_canonical(spec, expected, canonical):
    assert parse_upsample(spec) == expected
    assert canonical_upsample(spec) == canonical
    assert parse_upsample(canonical) == expected  # the canonical form round-trips


@pytest.mark.parametrize("method", METHODS)
def test_every_method_name_parses(method):
    assert parse_upsample(method).method == method
    assert canonical_upsample(method) == method


@pytest.mark.parametrize(
    "bad,pattern",
    [
        ("trilinear", "valid choices: nearest, bilinear, transposed, resize_conv, pixel_shuffle, bed_of_nails, max_unpool"),
        ("Bilinear", "valid choices"),
        ("transposed_kx", "valid choices"),
        ("transposed_k", "valid choices"),
        ("transposed_k0", "positive integer"),
        ("", "valid choices"),
        ({"kernel_size": 3}, "'method' key with one of nearest, bilinear"),
        ({"method": 3}, "'method' key"),
        ({"method": "bilinear", "kernel_size": 3}, "has no option"),
        ({"method": "transposed", "stride": 2}, r"valid: \['init', 'kernel_size'\]"),
        ({"method": "transposed", "init": "xavier"}, "init must be one of"),
        ({"method": "transposed", "kernel_size": 0}, "positive integer"),
        ({"method": "transposed", "kernel_size": 2.5}, "positive integer"),
        ({"method": "nope"}, "valid choices"),
        (3, "string or a dict"),
        (None, "string or a dict"),
    ],
)
def test_parse_rejects_bad_specs(bad, pattern):
    with pytest.raises(ValueError, match=pattern):
        parse_upsample(bad)


# --------------------------------------------------------------------------- bilinear kernel


def fcn_get_upsampling_weight(kernel_size: int) -> np.ndarray:
    """The formula of FCN's ``surgery.get_upsampling_weight`` / ``upsample_filt`` (Long et al.)."""
    factor = (kernel_size + 1) // 2
    center = factor - 1 if kernel_size % 2 == 1 else factor - 0.5
    og = np.ogrid[:kernel_size, :kernel_size]
    return (1 - abs(og[0] - center) / factor) * (1 - abs(og[1] - center) / factor)


@pytest.mark.parametrize("stride", [1, 2, 3, 4, 8, 16, 32])
def test_bilinear_kernel_equals_fcn_formula(stride):
    k = bilinear_kernel(2 * stride, stride)
    assert k.shape == (2 * stride, 2 * stride)
    assert k.dtype == torch.float32
    np.testing.assert_allclose(k.numpy(), fcn_get_upsampling_weight(2 * stride), rtol=0, atol=1e-6)


@pytest.mark.parametrize("k,s", [(2, 2), (3, 2), (4, 2), (16, 8), (5, 2), (12, 4)])
def test_bilinear_kernel_partition_of_unity(k, s):
    kern = bilinear_kernel(k, s).double()
    assert (kern >= 0).all()
    # output pixel o of a stride-s transposed conv receives taps t with t = o + p (mod s)
    for py in range(s):
        for px in range(s):
            assert kern[py::s, px::s].sum().item() == pytest.approx(1.0, abs=1e-6), (py, px)
    # and applied as a transposed convolution, a constant image stays constant (away from the border)
    up = TransposedUp(1, 1, s, kernel_size=k)
    with torch.no_grad():
        y = up(torch.full((1, 1, 6, 6), 3.0))
    assert y.shape == (1, 1, 6 * s, 6 * s)
    torch.testing.assert_close(y[..., s:-s, s:-s], torch.full_like(y[..., s:-s, s:-s], 3.0))


def test_bilinear_kernel_special_cases():
    torch.testing.assert_close(bilinear_kernel(2, 2), torch.ones(2, 2))  # k == s: nearest neighbour
    torch.testing.assert_close(bilinear_kernel(3, 2), torch.outer(torch.tensor([0.5, 1, 0.5]), torch.tensor([0.5, 1, 0.5])))


@pytest.mark.parametrize("scale", SCALES)
def test_bilinear_transposed_conv_reproduces_interpolate(scale):
    up = TransposedUp(3, 3, scale)  # kernel 2s, bilinear init
    assert up.conv.bias.abs().sum() == 0
    x = torch.randn(2, 3, 9, 11)
    with torch.no_grad():
        y = up(x)
    ref = F.interpolate(x, scale_factor=scale, mode="bilinear", align_corners=False)
    assert y.shape == ref.shape
    b = scale // 2  # the border where interpolate replicates and the convolution sees zero padding
    torch.testing.assert_close(y[..., b:-b, b:-b], ref[..., b:-b, b:-b], rtol=0, atol=1e-5)
    # channels are not mixed at initialisation
    assert (up.conv.weight[0, 1] == 0).all() and (up.conv.weight[1, 0] == 0).all()


def test_transposed_default_init_is_not_bilinear():
    up = make_upsample({"method": "transposed", "init": "default"}, 2, 2, 2)
    assert not torch.allclose(up.conv.weight[0, 0], bilinear_kernel(4, 2))
    assert (up.conv.weight[0, 1] != 0).any()


# --------------------------------------------------------------------------- pixel shuffle, bed of nails, max-unpool


@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("cin,cout", [(4, 3), (3, 3)])
def test_icnr_pixel_shuffle_is_nearest_at_init(scale, cin, cout):
    up = make_upsample("pixel_shuffle", cin, cout, scale)
    assert isinstance(up, PixelShuffleUp)
    x = torch.randn(2, cin, 5, 6)
    with torch.no_grad():
        y = up(x)
        sub = up.conv(x)[:, :: scale * scale]  # one channel per sub-pixel group
    assert sub.shape == (2, cout, 5, 6)
    torch.testing.assert_close(y, F.interpolate(sub, scale_factor=scale, mode="nearest"), rtol=0, atol=0)
    # ... and the groups really are copies, while different output channels differ
    w = up.conv.weight.view(cout, scale * scale, *up.conv.weight.shape[1:])
    assert (w == w[:, :1]).all()
    assert not torch.equal(w[0, 0], w[1, 0])


def test_icnr_weight_helper():
    w = torch.empty(12, 2, 3, 3)
    icnr_(w, 2)
    groups = w.view(3, 4, 2, 3, 3)
    assert (groups == groups[:, :1]).all()
    assert w.abs().sum() > 0


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_bed_of_nails(scale):
    up = make_upsample("bed_of_nails", 2, 2, scale)
    assert isinstance(up, BedOfNails)
    x = torch.randn(2, 2, 3, 4)
    y = up(x)
    assert y.shape == (2, 2, 3 * scale, 4 * scale)
    torch.testing.assert_close(y[..., ::scale, ::scale], x, rtol=0, atol=0)
    mask = torch.ones_like(y, dtype=torch.bool)
    mask[..., ::scale, ::scale] = False
    assert (y[mask] == 0).all()
    assert (y != 0).sum() == x.numel()


def test_bed_of_nails_with_projection():
    up = make_upsample("bed_of_nails", 3, 5, 2)
    x = torch.randn(1, 3, 4, 4)
    with torch.no_grad():
        y = up(x)
        torch.testing.assert_close(y[..., ::2, ::2], up.proj(x))
    assert (y[..., 1::2, :] == 0).all() and (y[..., :, 1::2] == 0).all()


def _expected_unpool(x: np.ndarray, positions: np.ndarray, s: int) -> np.ndarray:
    """Reference: value x[b, c, i, j] at the argmax (within block (i, j)) of positions[b, c or 0]."""
    b, c, h, w = x.shape
    out = np.zeros((b, c, h * s, w * s), x.dtype)
    for bi in range(b):
        for ci in range(c):
            g = positions[bi, ci if positions.shape[1] == c else 0]
            for i in range(h):
                for j in range(w):
                    block = g[i * s : (i + 1) * s, j * s : (j + 1) * s]
                    di, dj = np.unravel_index(np.argmax(block), block.shape)
                    out[bi, ci, i * s + di, j * s + dj] = x[bi, ci, i, j]
    return out


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_max_unpool_per_channel(scale):
    up = make_upsample("max_unpool", 3, 3, scale)
    assert isinstance(up, MaxUnpool)
    x = torch.randn(2, 3, 3, 4)
    guide = torch.randn(2, 3, 3 * scale, 4 * scale)
    y = up(x, guide=guide)
    np.testing.assert_array_equal(y.numpy(), _expected_unpool(x.numpy(), guide.numpy(), scale))
    # the positions really differ between channels (per-channel indices, not shared)
    nz = (y != 0)
    assert not torch.equal(nz[:, 0], nz[:, 1])


@pytest.mark.parametrize("scale", [2, 4])
def test_max_unpool_channel_mean_when_channels_differ(scale):
    up = make_upsample("max_unpool", 3, 3, scale)
    x = torch.randn(2, 3, 3, 4)
    guide = torch.randn(2, 5, 3 * scale, 4 * scale)  # 5 channels != 3: positions from the channel mean
    y = up(x, guide=guide)
    mean = guide.mean(1, keepdim=True).numpy()
    np.testing.assert_array_equal(y.numpy(), _expected_unpool(x.numpy(), mean, scale))
    nz = (y != 0)
    assert torch.equal(nz[:, 0], nz[:, 1]) and torch.equal(nz[:, 1], nz[:, 2])


def test_max_unpool_with_projection_and_low_precision():
    up = make_upsample("max_unpool", 4, 2, 2)
    x = torch.randn(1, 4, 3, 3)
    guide = torch.randn(1, 2, 6, 6)
    with torch.no_grad():
        y = up(x, guide=guide)
        expected = _expected_unpool(up.proj(x).numpy(), guide.numpy(), 2)
    np.testing.assert_allclose(y.numpy(), expected, rtol=1e-6, atol=1e-6)
    up_bf16 = make_upsample("max_unpool", 3, 3, 2)
    xb = torch.randn(1, 3, 3, 3, dtype=torch.bfloat16)
    yb = up_bf16(xb, guide=torch.randn(1, 3, 6, 6, dtype=torch.bfloat16))
    assert yb.dtype == torch.bfloat16
    assert (yb != 0).sum() == xb.numel()


# --------------------------------------------------------------------------- gradients


@pytest.mark.parametrize("method", list(METHODS) + ["transposed_k3", {"method": "transposed", "init": "default"}])
@pytest.mark.parametrize("cin,cout", [(4, 6), (3, 3)])
def test_gradients_flow(method, cin, cout):
    up = make_upsample(method, cin, cout, 2)
    x, guide = _inputs(up.method, cin, 2)
    x.requires_grad_(True)
    y = up(x, guide=guide)
    (y * torch.randn_like(y)).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    for name, p in up.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name
