"""int8 post-training quantization (NNCF + OpenVINO): the acceptance rule refuses a checkpoint that loses too much
test mIoU and accepts one that does not; the int8 model is sha256-checked before it is used.

A tiny U-Net is trained for a few seconds on the synthetic dataset, so that its labels mean something; the int8
models run through the real OpenVINO engine (no mock): one calibrated on training images, one on crushed
calibration data (the images scaled by 1/50, so every activation range is far too small and int8 saturates).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from workbench import create_model
from workbench.data.datasets import build_dataset
from workbench.data.transforms import eval_transforms
from workbench.evaluation.evaluate import EvaluationError, evaluate_checkpoint
from workbench.evaluation.leaderboard import app_precision, precision_section
from workbench.evaluation.manifests import INT8_MAX_MIOU_DROP, int8_verdict, record_int8, update_manifest, write_int8_entry
from workbench.inference.int8 import Int8Error, int8_paths, load_int8
from workbench.inference.quantize import quantize_checkpoint
from workbench.io.checkpoint import save_checkpoint

MEAN, STD = [0.5, 0.5, 0.5], [0.25, 0.25, 0.25]
SYNTH = {"size": [64, 96], "length": 24}


def _images(split: str) -> list[np.ndarray]:
    ds = build_dataset("synthetic", split, transform=eval_transforms(mean=MEAN, std=STD), **SYNTH)
    return [np.asarray(ds[i]["image"], dtype=np.float32)[None] for i in range(len(ds))]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny U-Net trained for a few seconds on synthetic shapes; its manifest holds the fp32 test mIoU."""
    torch.manual_seed(0)
    model = create_model("unet", num_classes=4, encoder="test_resnet", decoder_channels=(32, 16, 16, 8, 8))
    ds = build_dataset("synthetic", "train", transform=eval_transforms(mean=MEAN, std=STD), size=[64, 96], length=48)
    xs = torch.stack([torch.as_tensor(np.asarray(ds[i]["image"])) for i in range(len(ds))]).float()
    ys = torch.stack([torch.as_tensor(np.asarray(ds[i]["mask"])) for i in range(len(ds))]).long()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for step in range(40):
        idx = torch.randint(0, len(xs), (8,))
        loss = torch.nn.functional.cross_entropy(model(xs[idx]), ys[idx], ignore_index=255)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    folder = tmp_path_factory.mktemp("int8")
    manifest = {"normalization": {"mean": MEAN, "std": STD}, "dataset": {"name": "synthetic", "options": SYNTH, "train_split": "train"}}
    path = save_checkpoint(folder / "tiny", model, manifest)
    fp32 = evaluate_checkpoint(path, split="test", progress=False)
    update_manifest(fp32)
    assert fp32["metrics"]["miou"] > 0.4, "the tiny model should have learnt the shapes"
    return path, fp32["metrics"]["miou"]


def _quantize_and_judge(path, calibration):
    xml, info = quantize_checkpoint(path, calibration=calibration)
    write_int8_entry(path, info)
    res = evaluate_checkpoint(path, split="test", engine="openvino", precision="int8", progress=False, agreement_every=1)
    record_int8(res)
    return xml, res, json.loads(path.read_text())["inference"]["int8"]


def test_int8_accepted_when_calibrated_on_training_images_and_refused_when_crushed(trained):
    path, fp32_miou = trained
    calib = _images("train")
    xml, res, entry = _quantize_and_judge(path, calib)
    assert xml == int8_paths(path)[0] and xml.is_file() and xml.with_suffix(".bin").is_file()
    assert res["options"]["engine"] == "openvino" and res["options"]["precision"] == "int8"
    assert entry["fp32_test_miou"] == pytest.approx(fp32_miou)
    drop = fp32_miou - entry["test_miou"]
    assert entry["accepted"] is True, entry["reason"]
    assert drop <= INT8_MAX_MIOU_DROP
    assert entry["test_label_agreement"]["images"] == 24 and entry["test_label_agreement"]["mean"] > 0.95

    crushed = [a / 50.0 for a in calib]
    _, res2, entry2 = _quantize_and_judge(path, crushed)
    assert entry2["accepted"] is False, entry2
    assert fp32_miou - entry2["test_miou"] > INT8_MAX_MIOU_DROP
    assert "drop" in entry2["reason"]
    prec, why = app_precision(json.loads(path.read_text()))
    assert prec != "int8" and "refused" in why
    assert "not quantized" not in precision_section({"tiny": json.loads(path.read_text())})


def test_int8_model_is_verified_before_use(trained):
    path, _ = trained
    xml, info = quantize_checkpoint(path, calibration=_images("train")[:4])
    write_int8_entry(path, info)
    net = load_int8(path)  # the files match the manifest's sha256
    x = torch.from_numpy(_images("test")[0])
    assert net(x).shape == (1, 4, 64, 96)
    assert net(torch.randn(1, 3, 97, 131)).shape == (1, 4, 97, 131)  # dynamic height and width
    with pytest.raises(Int8Error, match="not accepted"):
        load_int8(path, require_accepted=True)  # written, not yet evaluated
    binf = xml.with_suffix(".bin")
    data = bytearray(binf.read_bytes())
    data[len(data) // 2] ^= 0xFF
    binf.write_bytes(bytes(data))
    with pytest.raises(Int8Error, match="sha256"):
        load_int8(path)
    with pytest.raises(EvaluationError, match="sha256"):
        evaluate_checkpoint(path, split="test", engine="openvino", precision="int8", progress=False)


def test_int8_verdict_threshold():
    assert int8_verdict(0.600, 0.605)[0] is True  # exactly 0.5 points
    assert int8_verdict(0.5995, 0.605)[0] is False  # 0.55 points
    assert int8_verdict(0.61, 0.605)[0] is True  # int8 better
    assert int8_verdict(0.6, None)[0] is False  # nothing to compare with


def test_int8_needs_an_engine(trained):
    path, _ = trained
    with pytest.raises(EvaluationError, match="engine"):
        evaluate_checkpoint(path, split="test", precision="int8", progress=False)
