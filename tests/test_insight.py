"""The "why they differ" views: receptive fields (theoretical and effective), feature maps stage by stage, and
their app tabs. Small models and images; exact answers from hand-built networks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn
from PIL import Image

import workbench
from workbench.lab.features import feature_stages
from workbench.lab.receptive import (
    effective_receptive_field,
    mass_radius,
    receptive_field,
    shifted_box,
    theoretical_extent,
    theoretical_receptive_field,
)


class _Full(nn.Module):
    """A plain network that returns full-size maps (upsampling back where it strided)."""

    def __init__(self, *layers: nn.Module, up: int = 1) -> None:
        super().__init__()
        self.body = nn.Sequential(*layers)
        self.up = up

    def forward(self, x):
        y = self.body(x)
        return nn.functional.interpolate(y, scale_factor=self.up, mode="nearest") if self.up > 1 else y


@pytest.mark.parametrize("depth", [1, 3, 8])
def test_naive_stack_sees_2L_plus_1_pixels(depth):
    model = workbench.create_model("naive", num_classes=3, width=4, depth=depth)
    top, left, bottom, right = theoretical_receptive_field(model, (40, 48), (20, 24))
    assert (bottom - top + 1, right - left + 1) == (2 * depth + 1, 2 * depth + 1)
    assert (top, left) == (20 - depth, 24 - depth)
    # at a corner the field is clipped by the border
    assert theoretical_receptive_field(model, (40, 48), (0, 0)) == (0, 0, depth, depth)


def test_strides_and_max_pooling_widen_the_field_as_the_formula_says():
    # conv3 (rf 3, jump 1) -> maxpool 2/2 (rf 4, jump 2) -> conv3 (rf 4 + 2 * 2 = 8): 8 pixels, or 7 / 8 / 9 by phase
    model = _Full(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.BatchNorm2d(2), nn.Conv2d(2, 1, 3, padding=1), up=2)
    for y in (20, 21):
        top, _, bottom, _ = theoretical_receptive_field(model, (48, 48), (y, 24), in_chans=1)
        assert bottom - top + 1 == 8
    # dilation: a 3x3 with dilation 4 after the pool reaches (3 - 1) * 4 * 2 = 16 more
    dil = _Full(nn.Conv2d(1, 2, 3, padding=1), nn.MaxPool2d(2), nn.Conv2d(2, 1, 3, padding=4, dilation=4), up=2)
    top, _, bottom, _ = theoretical_receptive_field(dil, (64, 64), (32, 32), in_chans=1)
    assert bottom - top + 1 == 4 + 16


def test_extent_moved_to_a_pixel_matches_the_direct_measurement():
    model = workbench.create_model("naive", num_classes=3, width=4, depth=3)
    ext = theoretical_extent(model, (40, 48))
    assert ext == (3, 3, 3, 3)
    for point in [(5, 7), (20, 24), (0, 47), (39, 0)]:
        box, covers = shifted_box(ext, point, (40, 48))
        assert box == theoretical_receptive_field(model, (40, 48), point) and not covers
    # a field wider than the image at its centre is unbounded: it covers the whole image from anywhere
    assert shifted_box((20, 24, 19, 23), (3, 3), (40, 48)) == ((0, 0, 39, 47), True)


def test_effective_field_of_one_convolution_is_its_weights():
    conv = nn.Conv2d(2, 3, 3, padding=1, bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.randn(3, 2, 3, 3))
    x = torch.randn(1, 2, 9, 11)
    erf = effective_receptive_field(conv, x, (4, 5), channel=1)
    expected = np.zeros((9, 11))
    expected[3:6, 4:7] = conv.weight[1].abs().sum(0).detach().numpy()
    np.testing.assert_allclose(erf, expected, rtol=1e-6, atol=1e-7)
    # the default channel is the class the model predicts there
    c = int(conv(x)[0, :, 4, 5].argmax())
    np.testing.assert_allclose(effective_receptive_field(conv, x, (4, 5)), effective_receptive_field(conv, x, (4, 5), channel=c))
    with pytest.raises(ValueError, match="outside"):
        effective_receptive_field(conv, x, (9, 0))


def test_mass_radius():
    e = np.zeros((21, 21))
    e[10, 10] = 1.0
    assert mass_radius(e, (10, 10), 0.9) == 0
    e[10, 13] = 1.0  # half the mass three pixels away
    assert mass_radius(e, (10, 10), 0.5) == 0 and mass_radius(e, (10, 10), 0.9) == 3
    assert mass_radius(np.ones((21, 21)), (10, 10), 1.0) == 10
    with pytest.raises(ValueError):
        mass_radius(e, (10, 10), 0.0)


def test_receptive_field_of_a_registry_model_is_inside_its_theoretical_field():
    torch.manual_seed(0)
    model = workbench.create_model("fcn32s", num_classes=3, encoder="resnet10t").eval()
    x = torch.randn(1, 3, 64, 96)
    rf = receptive_field(model, x, (30, 40))
    top, left, bottom, right = rf.box
    outside = rf.erf.copy()
    outside[top:bottom + 1, left:right + 1] = 0
    assert rf.erf.sum() > 0 and outside.sum() == 0, "no gradient reaches past the theoretical field"
    assert 0 <= rf.radius50 <= rf.radius90


def test_feature_stages_go_down_and_back_up():
    model = workbench.create_model("unet", num_classes=3, encoder="resnet10t").eval()
    stages = feature_stages(model, torch.randn(1, 3, 64, 96), top_channels=2)
    names = [s.name for s in stages]
    assert names[0].startswith("encoder") and names[-1] == "head"
    assert "decoder" not in names, "the decoder container repeating its last stage is dropped"
    enc = [s for s in stages if s.part == "encoder"]
    dec = [s for s in stages if s.part == "decoder"]
    assert [s.reduction for s in enc] == sorted(s.reduction for s in enc) and enc[-1].reduction == 32
    assert [s.reduction for s in dec] == sorted((s.reduction for s in dec), reverse=True) and dec[-1].reduction == 1
    for s in stages:
        assert len(s.maps) == 1 + min(2, s.channels)
        assert all(pic.shape == (*s.size, 3) and pic.dtype == np.uint8 for pic, _ in s.maps)
    with pytest.raises(ValueError, match="one image"):
        feature_stages(model, torch.randn(2, 3, 64, 96))


@pytest.fixture(scope="module")
def small_image(tmp_path_factory):
    rng = np.random.default_rng(1)
    path = tmp_path_factory.mktemp("why") / "small.png"
    Image.fromarray(rng.integers(0, 255, (64, 96, 3), dtype=np.uint8)).save(path)
    return str(path)


def test_receptive_field_tab(small_image):
    import gradio as gr

    from workbench.app.receptive import receptive_field_view

    gallery, table = receptive_field_view(small_image, ["naive"], 48, 32)
    (picture, caption), = gallery
    assert picture.shape == (64, 96, 3)
    assert "17 x 17 px" in table and "naive: sees 17 x 17 px" in caption  # the zoo's naive stack: 8 layers
    assert "Pixel (48, 32)" in table
    with pytest.raises(gr.Error, match="at least one"):
        receptive_field_view(small_image, [], 1, 1)


def test_feature_maps_tab(small_image):
    from workbench.app.features import DISPLAY_SIDE, feature_maps_view

    gallery, table = feature_maps_view(small_image, "fcn8s", 1)
    assert "encoder[4]" in table and table.rstrip().endswith("| 64 x 96 | 1/1 |"), "down to 1/32 and back to full size"
    assert all(max(pic.shape[:2]) >= DISPLAY_SIDE // 2 for pic, _ in gallery)
    assert any("3x3" in cap or "2x3" in cap for _, cap in gallery), "the deepest maps say their real size"
