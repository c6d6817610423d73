"""Every architecture on every kind of timm encoder (issue 26, "Any timm encoder").

One encoder per timm family, the smallest there is (random weights), chosen for what it exercises:
the first reduction (1/2, 1/4, 1/16), channels-last outputs, transformers built for one input
size (dynamic_img_size, window padding, a fixed size) and single-scale ViTs (the simple feature
pyramid). The matrix is generated from the registry, as tests/test_models.py is: a new
architecture that takes ``encoder=`` is run on every family the day it is registered. Each cell
builds ``create_model(arch, num_classes=5, encoder=E)`` and runs a 97x131 image (sizes that are
multiples of nothing), or expects the documented ``ValueError`` (docs/plugins.md, "Encoders").
"""

from __future__ import annotations

import inspect

import pytest
import torch

import workbench
from workbench.models.encoders import PYRAMID_REDUCTIONS, TimmEncoder, encoder_spec

# family -> the smallest timm model of it (pretrained=False)
FAMILIES = {
    "resnet": "test_resnet",  # 1/2-first, the classic pyramid
    "efficientnet": "test_efficientnet",  # 1/2-first, timm's EfficientNetFeatures (no output_fmt)
    "regnet": "regnetx_002",
    "mobilevit": "mobilevit_xxs",  # convolution + transformer blocks, 1/2-first
    "hrnet": "hrnet_w18_small",  # parallel branches: cut at 1/8 (dilated), it still needs 32-multiples
    "convnext": "test_convnext",  # 1/4-first
    "edgenext": "edgenext_xx_small",  # 1/4-first
    "repvit": "repvit_m0_9",  # 1/4-first
    "fastvit": "fastvit_t8",  # 1/4-first
    "hgnetv2": "hgnetv2_b0",  # 1/4-first
    "efficientvit": "efficientvit_b0",  # 1/4-first (MIT)
    "efficientvit_msra": "efficientvit_m0",  # 1/16..1/64 (MSRA): three coarse levels
    "metaformer": "poolformerv2_s12",  # 1/4-first
    "pvt_v2": "pvt_v2_b0",  # 1/4-first transformer
    "mambaout": "test_mambaout",  # 1/4-first, NHWC outputs
    "swin": "swin_tiny_patch4_window7_224",  # NHWC, built for 224: dynamic_img_size + window padding
    "maxvit": "test_maxvit",  # window partitions fixed at build: padded to multiples of 160
    "coatnet": "test_coatnet",  # attention tables fixed at build: padded to 160x160
    "vit": "test_vit",  # one scale (1/16): the simple feature pyramid, dynamic_img_size
    "eva02": "eva02_tiny_patch14_224",  # one scale at 1/14
}

ARCHS = [a for a in workbench.list_architectures() if "encoder" in inspect.signature(workbench.get_architecture(a).factory).parameters]

_NOT_DILATABLE = r"DeepLabV3Plus dilates its encoder \(output_stride 16\), and timm cannot dilate '{enc}'"
_SMP_PATTERN = r"smp's tu- encoders need a timm pyramid at 1/2\.\.1/32, 1/4\.\.1/32 or 1/1\.\.1/32; '{enc}' has reductions"

# the documented refusals: (family, architecture) -> the message it must give
REFUSED = {
    ("efficientvit_msra", "dilated"): r"dilated needs a 1/8 feature map: timm encoder '{enc}' cannot be dilated",
    ("efficientvit_msra", "tiramisu"): r"5 up blocks configured for an encoder with 6 levels from 1/64",
    ("efficientvit_msra", "smp_unet"): _SMP_PATTERN,
    ("efficientvit_msra", "deeplabv3plus"): _SMP_PATTERN,
    ("vit", "smp_unet"): _SMP_PATTERN + r" \[16, 16, 16\] \(one scale",
    ("vit", "deeplabv3plus"): _SMP_PATTERN,
    ("eva02", "smp_unet"): _SMP_PATTERN + r" \[14, 14, 14\] \(one scale",
    ("eva02", "deeplabv3plus"): _SMP_PATTERN,
    **{
        (family, "deeplabv3plus"): _NOT_DILATABLE
        for family in ("hrnet", "edgenext", "repvit", "fastvit", "hgnetv2", "efficientvit", "metaformer", "pvt_v2", "mambaout", "swin", "maxvit", "coatnet")
    },
}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # ~190 small models at a small size: one intra-op thread does the same work without the spin-waiting
    # two threads do when other processes share the two cores (measured: 20 s of CPU vs 130-175 s under load)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_the_matrix_is_wide_enough():
    # a guard for the parametrisation: at least 15 families and every built-in architecture with an encoder
    assert len(FAMILIES) >= 15
    assert {"fcn32s", "fcn16s", "fcn8s", "unet", "residual_unet", "tiramisu", "dilated", "smp_unet", "deeplabv3plus"} <= set(ARCHS)
    assert all(arch in ARCHS for _, arch in REFUSED)


@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("arch", ARCHS)
def test_every_architecture_on_every_encoder_family(arch, family):
    enc = FAMILIES[family]
    if (family, arch) in REFUSED:
        with pytest.raises(ValueError, match=REFUSED[family, arch].format(enc=enc)):
            workbench.create_model(arch, num_classes=5, encoder=enc)
        return
    model = workbench.create_model(arch, num_classes=5, encoder=enc).eval()
    with torch.no_grad():
        y = model(torch.randn(1, 3, 97, 131))
    assert y.shape == (1, 5, 97, 131)
    assert torch.isfinite(y).all()


# --------------------------------------------------------------------------- what the adapter does


def _check_pyramid(enc: TimmEncoder, h: int, w: int) -> list[torch.Tensor]:
    with torch.no_grad():
        feats = enc.eval()(torch.randn(1, 3, h, w))
    assert [tuple(f.shape) for f in feats] == [(1, c, h // r, w // r) for c, r in zip(enc.channels, enc.reductions)]
    return feats


@pytest.mark.parametrize("name", ["test_mambaout", "swin_tiny_patch4_window7_224"])
def test_channels_last_encoders_give_nchw_maps(name):
    enc = TimmEncoder(name)
    assert enc.spec.channels_last and enc.reductions == [4, 8, 16, 32]
    _check_pyramid(enc, 64, 96)


def test_fixed_size_transformers_get_the_cheapest_size_handling_timm_offers():
    swin = encoder_spec("swin_tiny_patch4_window7_224")
    assert dict(swin.timm_kwargs) == {"dynamic_img_size": True} and swin.fixed_size is None and swin.input_multiple == (1, 1)
    vit = encoder_spec("test_vit")
    assert dict(vit.timm_kwargs) == {"dynamic_img_size": True, "dynamic_img_pad": True} and vit.single_scale
    assert encoder_spec("test_maxvit").input_multiple == (160, 160)  # window partitions fixed when built
    assert encoder_spec("test_coatnet").fixed_size == (160, 160)  # relative-position tables sized when built
    plain = encoder_spec("test_resnet")
    assert plain.timm_kwargs == () and plain.fixed_size is None and not plain.channels_last


def test_window_padding_is_cropped_back():
    enc = TimmEncoder("test_maxvit")
    _check_pyramid(enc, 64, 192)  # padded to 160x320 inside, maps cropped back to 1/r of 64x192


def test_fixed_size_encoder_refuses_larger_inputs_clearly():
    model = workbench.create_model("fcn8s", num_classes=3, encoder="test_coatnet").eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 160, 150)).shape == (1, 3, 160, 150)
        with pytest.raises(ValueError, match=r"'test_coatnet' takes inputs up to 160x160 only .* got 192x160"):
            model(torch.randn(1, 3, 170, 150))


@pytest.mark.parametrize("name, grid", [("test_vit", 16), ("eva02_tiny_patch14_224", 14)])
def test_single_scale_encoders_get_a_simple_feature_pyramid(name, grid):
    enc = TimmEncoder(name)
    assert enc.pyramid is not None and enc.reductions == list(PYRAMID_REDUCTIONS)
    c = enc.model.feature_info.channels()[-1]
    assert enc.channels == [c // 4, c // 2, c, c]
    _check_pyramid(enc, 64, 96)
    assert encoder_spec(name).reductions[-1] == grid


def test_unet_on_a_quarter_first_encoder_climbs_in_2x_steps():
    model = workbench.create_model("unet", num_classes=3, encoder="test_convnext")
    dec = model.decoder
    assert [s.up.scale for s in dec.stages] == [2, 2, 2, 2, 2]
    assert dec.skip_index == [2, 1, 0, None, -1]  # 1/16, 1/8, 1/4, the skip-less 1/2 level, the image
    assert dec.stages[3].block[0][0].in_channels == 32  # nothing concatenated at 1/2
    # every parameter learns, the skip-less stage included
    model(torch.randn(2, 3, 64, 64)).square().mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters() if p.requires_grad)


def test_half_first_encoders_keep_their_decoders():
    # the existing configurations (every shipped checkpoint) build exactly what they built before
    unet = workbench.create_model("unet", num_classes=3, encoder="test_resnet")
    assert None not in unet.decoder.skip_index and len(unet.decoder.stages) == 5
    tiramisu = workbench.create_model("tiramisu", num_classes=3, encoder="test_resnet", variant="fc_densenet56")
    assert None not in tiramisu.decoder.skip_index
    assert all(type(m).__name__ != "SimpleFeaturePyramid" for m in unet.modules())


def test_dilated_cuts_encoders_timm_cannot_dilate_at_one_eighth():
    model = workbench.create_model("dilated", num_classes=3, encoder="swin_tiny_patch4_window7_224")
    enc = model.encoder
    assert enc.reductions == [4, 8]
    assert model.size_divisor == 32  # the stages kept may need what the whole encoder needs (HRNet, Hiera)
    assert len(enc.model.feature_info.reduction()) == 2  # the 1/16 and 1/32 stages are not built
    assert not any(n.startswith("layers_2") or n.startswith("layers_3") for n, _ in enc.model.named_modules())
    # encoders timm can dilate still are (the paper's front-end)
    assert workbench.create_model("dilated", num_classes=3, encoder="test_convnext").encoder.reductions[-1] == 8


def test_decoder_channels_grow_for_deeper_encoders_only_by_default():
    model = workbench.create_model("unet", num_classes=3, encoder="efficientvit_m0")
    assert [s.block[0][0].out_channels for s in model.decoder.stages] == [512, 256, 128, 64, 32, 16]
    with pytest.raises(ValueError, match="decoder_channels needs 6 widths for this encoder, got 5"):
        workbench.create_model("unet", num_classes=3, encoder="efficientvit_m0", decoder_channels=(64, 32, 16, 16, 16))
