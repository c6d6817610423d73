"""Each architecture is what its paper describes: the checks the generic suite cannot make."""

from __future__ import annotations

import pytest
import torch

import workbench
from workbench.models.upsampling import bilinear_kernel


def _plugin(name):
    import sys

    workbench.load_plugins()
    return sys.modules[f"workbench_plugins.{name}"]


@pytest.mark.parametrize("variant, paper_millions", [("fc_densenet56", 1.5), ("fc_densenet67", 3.5), ("fc_densenet103", 9.4)])
def test_tiramisu_variants_match_the_paper_size(variant, paper_millions):
    model = workbench.create_model("tiramisu", num_classes=11, variant=variant)
    params = sum(p.numel() for p in model.parameters()) / 1e6
    assert abs(params - paper_millions) / paper_millions < 0.1, params  # Table 2 of Jegou et al.


def test_tiramisu_upsamples_only_the_new_feature_maps():
    model = workbench.create_model("tiramisu", num_classes=11, variant="fc_densenet56")
    cfg = _plugin("tiramisu").VARIANTS["fc_densenet56"]
    first_up = model.decoder.stages[0].up
    assert first_up.in_channels == cfg.bottleneck_layers * cfg.growth_rate  # 4 x 12 = 48, not the whole stack
    for stage, n in zip(model.decoder.stages[1:], cfg.up_layers):
        assert stage.up.in_channels == n * cfg.growth_rate


def test_tiramisu_on_a_timm_densenet_encoder():
    model = workbench.create_model("tiramisu", num_classes=5, encoder="densenet121").eval()
    assert type(model.encoder).__name__ == "TimmEncoder"
    with torch.no_grad():
        assert model(torch.randn(1, 3, 65, 97)).shape == (1, 5, 65, 97)


def test_fcn_skip_scores_start_at_zero_and_upsampling_starts_bilinear():
    model = workbench.create_model("fcn8s", num_classes=4, encoder="test_resnet")
    dec = model.decoder
    assert len(dec.skip_scores) == 2
    for score in dec.skip_scores:
        assert torch.count_nonzero(score.weight) == 0 and torch.count_nonzero(score.bias) == 0
    kern = bilinear_kernel(4, 2)
    for up in dec.ups:
        w = up.conv.weight
        for i in range(4):
            assert torch.allclose(w[i, i], kern)
        assert torch.count_nonzero(w[0, 1]) == 0
    assert dec.final_up.scale == 8 and dec.final_up.kernel_size == 16


def test_fcn8s_at_init_equals_its_coarse_path():
    """With zero-initialised skips, FCN-8s starts as the 1/32 net upsampled in three learned (bilinear) steps."""
    torch.manual_seed(0)
    model = workbench.create_model("fcn8s", num_classes=3, encoder="test_resnet").eval()
    x = torch.randn(1, 3, 64, 96)
    dec = model.decoder
    with torch.no_grad():
        feats = model.encoder(x)
        coarse = dec.score(dec.fc(feats[-1]))
        expected = dec.final_up(dec.ups[1](dec.ups[0](coarse)))
        assert torch.allclose(model(x), expected, atol=1e-5)


def test_fcn32s_is_one_32x_step():
    model = workbench.create_model("fcn32s", num_classes=3, encoder="test_resnet")
    assert len(model.decoder.ups) == 0 and model.decoder.final_up.scale == 32


def test_dilated_runs_at_output_stride_8_with_an_identity_context_module():
    model = workbench.create_model("dilated", num_classes=6, encoder="test_resnet")
    assert model.encoder.reductions[-1] == 8 and model.size_divisor == 8
    ctx = model.decoder.context
    convs = [m for m in ctx.layers if isinstance(m, torch.nn.Conv2d)]
    assert [c.dilation[0] for c in convs] == [1, 1, 2, 4, 8, 16, 1, 1]
    assert [c.kernel_size[0] for c in convs] == [3] * 7 + [1]
    x = torch.rand(2, 6, 20, 24)  # non-negative scores pass the ReLUs untouched
    with torch.no_grad():
        assert torch.allclose(ctx(x), x, atol=1e-6)


def test_large_context_module_starts_as_identity_too():
    ctx = _plugin("dilated").ContextModule(4, large=True)
    x = torch.rand(1, 4, 16, 16)
    with torch.no_grad():
        assert torch.allclose(ctx(x), x, atol=0.05)


def test_unet_has_one_stage_per_skip_down_to_full_resolution():
    model = workbench.create_model("unet", num_classes=3, encoder="test_resnet")
    assert len(model.decoder.stages) == len(model.encoder.reductions)  # 4 encoder skips + the image
    from workbench.models.anatomy import stage_shapes

    decoder_rows = [s for s in stage_shapes(model, (64, 64)) if s.name.startswith("decoder.stages")]
    assert [r.height for r in decoder_rows] == [4, 8, 16, 32, 64]


def test_residual_unet_decoder_blocks_carry_short_skips():
    model = workbench.create_model("residual_unet", num_classes=3, encoder="test_resnet")
    blocks = [s.block for s in model.decoder.stages]
    assert all(type(b).__name__ == "ResidualBlock" for b in blocks)
    plain = workbench.create_model("unet", num_classes=3, encoder="test_resnet")
    assert all(type(s.block).__name__ == "DoubleConv" for s in plain.decoder.stages)


@pytest.mark.parametrize("depth", [1, 3])
def test_naive_receptive_field_is_2_depth_plus_1(depth):
    model = workbench.create_model("naive", num_classes=2, depth=depth, width=4).eval()
    x = torch.randn(1, 3, 40, 40, requires_grad=True)
    model(x)[0, 0, 20, 20].backward()
    rows, cols = torch.nonzero(x.grad[0].abs().sum(0), as_tuple=True)
    assert (rows.max() - rows.min() + 1) == 2 * depth + 1 and (cols.max() - cols.min() + 1) == 2 * depth + 1
