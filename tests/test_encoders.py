"""The timm encoder adapter."""

from __future__ import annotations

import pytest
import timm
import torch
from safetensors.torch import save_file

from workbench.models.encoders import DEFAULT_ENCODER, TimmEncoder, list_encoders


def _check_pyramid(enc, x):
    feats = enc(x)
    assert isinstance(feats, list) and len(feats) == len(enc.channels) == len(enc.reductions)
    h, w = x.shape[-2:]
    for f, c, r in zip(feats, enc.channels, enc.reductions):
        assert f.shape == (x.shape[0], c, h // r, w // r)
    return feats


def test_channels_and_reductions_match_outputs():
    enc = TimmEncoder("test_resnet")
    assert enc.reductions == [2, 4, 8, 16, 32]
    assert enc.output_stride == 32 and enc.in_chans == 3 and enc.name == "test_resnet"
    _check_pyramid(enc, torch.randn(2, 3, 64, 96))


@pytest.mark.parametrize("output_stride", [8, 16])
@pytest.mark.parametrize("name", ["test_resnet", DEFAULT_ENCODER])
def test_output_stride(name, output_stride):
    enc = TimmEncoder(name, output_stride=output_stride)
    assert max(enc.reductions) == output_stride
    assert enc.reductions == sorted(enc.reductions)
    _check_pyramid(enc, torch.randn(1, 3, 64, 64))


def test_bad_output_stride():
    with pytest.raises(ValueError, match="output_stride must be 8, 16 or 32"):
        TimmEncoder("test_resnet", output_stride=4)


def test_in_chans_one():
    enc = TimmEncoder("test_resnet", in_chans=1)
    assert enc.in_chans == 1
    _check_pyramid(enc, torch.randn(1, 1, 64, 64))


def test_unknown_encoder_name():
    with pytest.raises(ValueError, match="unknown timm encoder 'resnet_does_not_exist'") as err:
        TimmEncoder("resnet_does_not_exist")
    assert "similar names" in str(err.value) and "resnet" in str(err.value)
    with pytest.raises(ValueError, match="unknown timm encoder"):
        TimmEncoder("zzzqqq")


@pytest.mark.parametrize(
    "name,expected",
    [
        ("resnet10t", True),
        ("test_resnet", True),
        ("mobilenetv2_035", True),  # InvertedResidual blocks with identity skips
        ("vgg11", False),  # plain conv stacks
        ("lcnet_035", False),  # DepthwiseSeparableConv blocks, all built with noskip
        ("test_efficientnet", False),  # its blocks exist but none uses its skip
    ],
)
def test_is_residual(name, expected):
    assert TimmEncoder(name).is_residual is expected


def test_weights_from_local_file(tmp_path):
    source = timm.create_model("test_resnet")  # random weights standing in for downloaded ones
    path = tmp_path / "test_resnet.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))
    loaded = TimmEncoder("test_resnet", weights=path)
    fresh = TimmEncoder("test_resnet")
    src = source.state_dict()
    got = loaded.model.state_dict()
    compared = 0
    for key in ("conv1.0.weight", "layer1.0.conv1.weight", "layer4.0.bn2.running_var"):
        if key not in got:
            continue
        assert torch.equal(got[key], src[key]), key
        assert not torch.equal(fresh.model.state_dict()[key], src[key]) or "running" in key
        compared += 1
    assert compared >= 2
    # every encoder tensor comes from the file
    assert all(torch.equal(v, src[k]) for k, v in got.items())
    # a string path works too, and a missing file is a clear error
    assert torch.equal(TimmEncoder("test_resnet", weights=str(path)).model.state_dict()["conv1.0.weight"], src["conv1.0.weight"])
    with pytest.raises(FileNotFoundError, match="not found"):
        TimmEncoder("test_resnet", weights=tmp_path / "missing.safetensors")


def test_encoder_weights_reach_the_models(tmp_path):
    import workbench

    source = timm.create_model("test_resnet")
    path = tmp_path / "enc.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))
    for arch in ("unet", "fcn8s", "dilated"):
        model = workbench.create_model(arch, num_classes=2, encoder="test_resnet", encoder_weights=str(path))
        assert torch.equal(model.encoder.model.state_dict()["conv1.0.weight"], source.state_dict()["conv1.0.weight"]), arch
    # a checkpoint holds the weights: it loads after the encoder file is gone, and never re-reads it
    workbench.save_checkpoint(tmp_path / "ckpt", model)
    path.unlink()
    loaded, manifest = workbench.load_checkpoint(tmp_path / "ckpt.json")
    assert manifest["kwargs"]["encoder_weights"] == str(path)
    assert torch.equal(loaded.encoder.model.state_dict()["conv1.0.weight"], source.state_dict()["conv1.0.weight"])


def test_list_encoders():
    names = list_encoders("resnet1*")
    assert "resnet10t" in names and all(n.startswith("resnet1") for n in names)
