"""int8 post-training quantization (NNCF + OpenVINO): the acceptance rule refuses a checkpoint that loses too much
test mIoU and accepts one that does not; the int8 model is sha256-checked before it is used; layers kept in fp32
really are; the CLI deletes refused models and evaluates through ONNX Runtime.

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
from workbench.cli import main as cli_main
from workbench.inference.int8 import Int8Error, compile_openvino, int8_paths, load_int8, to_openvino
from workbench.inference.quantize import QuantizeError, fp32_scope, label_agreement_metric, quantize_checkpoint, quantize_openvino
from workbench.io.checkpoint import load_checkpoint, save_checkpoint

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
    xml, info = quantize_checkpoint(path, calibration=calibration, variant="first")  # accuracy control needs val images on disk
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
    xml, info = quantize_checkpoint(path, calibration=_images("train")[:4], variant="default")
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


def _int8_convolutions(xml) -> dict[str, bool]:
    """For each convolution of an int8 IR, in graph order: whether it runs in int8 (NNCF stores int8 weights as an
    i8 Constant -> Convert -> Multiply; a layer kept in fp32 reads its float weights straight from a Constant)."""
    import openvino as ov  # loaded by workbench.inference.int8 already

    model = ov.Core().read_model(str(xml))
    return {
        op.get_friendly_name(): op.input(1).get_source_output().get_node().get_type_name() != "Constant"
        for op in model.get_ordered_ops()
        if op.get_type_name() in ("Convolution", "ConvolutionBackpropData", "GroupConvolution")
    }


def test_fp32_layers_stay_out_of_int8(trained, tmp_path):
    """The "first" and "head_first" variants keep the layers reading the image (and writing the logits) in fp32:
    NNCF puts no quantizer on their inputs, and the IR still runs and keeps the labels."""
    path, _ = trained
    model, _m = load_checkpoint(path)
    fp32 = to_openvino(model)
    first, last = fp32_scope(fp32, ["first"]), fp32_scope(fp32, ["last"])
    assert first and last and not set(first) & set(last)
    assert any("head" in n for n in last), last
    with pytest.raises(QuantizeError, match="unknown fp32 layer group"):
        fp32_scope(fp32, ["middle"])
    with pytest.raises(QuantizeError, match="unknown quantization variant"):
        quantize_checkpoint(path, calibration=_images("train")[:2], variant="nope")

    calib = _images("train")[:8]
    xml_default, _ = quantize_checkpoint(path, calibration=calib, out=tmp_path / "default.xml", variant="default")
    xml, info = quantize_checkpoint(path, calibration=calib, out=tmp_path / "head_first.xml", variant="head_first")
    # fused layers get fresh names in every conversion: the IRs are compared by the convolutions' order
    assert info["method"]["variant"] == "head_first" and len(info["fp32_layers"]) == len(first) + len(last)
    q_default, q_kept = _int8_convolutions(xml_default), _int8_convolutions(xml)
    assert len(q_default) == len(q_kept)
    kept_at = [i for i, name in enumerate(q_kept) if name in info["fp32_layers"]]
    assert len(kept_at) == len(info["fp32_layers"])
    for i in kept_at:
        assert list(q_kept.values())[i] is False, "a kept layer must run in fp32"
        assert list(q_default.values())[i] is True, "the same layer is int8 by default"
    assert sum(q_kept.values()) > 0, "the other convolutions are still int8"


def test_openvino_fp32_matches_pytorch(trained):
    """OpenVINO runs the float layers in f32, not bf16 (its default on CPUs with native bf16)."""
    path, _ = trained
    model, _m = load_checkpoint(path)
    x = torch.randn(1, 3, 97, 131, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        ref = model(x)
    out = torch.from_numpy(compile_openvino(to_openvino(model))({0: x.numpy()})[0])
    assert (out - ref).abs().max().item() <= 1e-4 * max(1.0, ref.abs().max().item())


def test_cli_quantize_deletes_refused_models_and_eval_runs_onnxruntime(trained, tmp_path, monkeypatch, capsys):
    """`workbench quantize` on crushed calibration data: refused, figures kept, IR files deleted (kept with
    --keep-refused); `workbench eval --engine onnxruntime` runs the checkpoint and reports its label agreement;
    a checkpoint that fails is reported while the others run (exit 2)."""
    import workbench.inference.quantize as quantize

    path, fp32_miou = trained
    crushed = [a / 50.0 for a in _images("train")]
    real = quantize.quantize_checkpoint
    monkeypatch.setattr(quantize, "quantize_checkpoint", lambda *a, **k: real(*a, **{**k, "calibration": crushed}))
    xml, binf = int8_paths(path)
    assert cli_main(["quantize", str(path), "--variant", "first", "--quiet", "--keep-refused"]) == 0
    entry = json.loads(path.read_text())["inference"]["int8"]
    assert entry["accepted"] is False and xml.is_file() and binf.is_file()
    assert cli_main(["quantize", str(path), "--variant", "first", "--quiet"]) == 0
    entry = json.loads(path.read_text())["inference"]["int8"]
    assert entry["accepted"] is False and fp32_miou - entry["test_miou"] > INT8_MAX_MIOU_DROP
    assert not xml.exists() and not binf.exists(), "a refused int8 model must not lie where the engines look"
    assert "deleted" in capsys.readouterr().out

    out = tmp_path / "eval"
    broken = tmp_path / "broken.json"  # a checkpoint whose weights do not match their sha256
    broken.write_text(path.read_text())
    weights = bytearray(path.with_suffix(".safetensors").read_bytes())
    weights[-1] ^= 0xFF
    (tmp_path / json.loads(path.read_text())["weights"]["file"]).write_bytes(bytes(weights))
    code = cli_main(["eval", str(path), str(broken), "--engine", "onnxruntime", "--limit", "3", "--agreement-every", "1", "--quiet", "--out", str(out)])
    captured = capsys.readouterr()
    assert code == 2 and "broken.json" in captured.err and "1 of 2" in captured.err
    res = json.loads((out / f"{path.stem}.test.json").read_text())
    assert res["options"]["engine"] == "onnxruntime" and res["options"]["precision"] == "fp32"
    assert res["label_agreement"]["images"] == 3 and res["label_agreement"]["mean"] >= 0.999
    assert "ran on onnxruntime fp32" in captured.out
    assert cli_main(["eval", str(path), "--engine", "onnxruntime", "--update-manifests", "--quiet", "--out", str(out)]) == 2
    # auto: the Predictor's choice (the suite pins WORKBENCH_ENGINE=torch, so auto resolves to torch here)
    assert cli_main(["eval", str(path), "--engine", "auto", "--precision", "auto", "--limit", "2", "--quiet", "--out", str(out)]) == 0
    res = json.loads((out / f"{path.stem}.test.json").read_text())
    assert res["options"]["engine"] == "torch" and "engine_reason" in res["options"]
    assert cli_main(["eval", str(path), "--engine", "auto", "--precision", "bf16", "--limit", "2", "--quiet", "--out", str(out)]) == 2
    assert "--precision auto" in capsys.readouterr().err


def test_accuracy_control_metric_is_the_parity_bar():
    """The accuracy-control metric is 1.0 for identical labels and drops by d exactly when the mean agreement
    falls to 1 - d or the worst image to 0.99 - d; accuracy control without validation images is refused."""
    ref = np.zeros((8, 10), dtype=np.int64)

    def compiled_giving(wrong_per_image):
        outs = iter(wrong_per_image)

        def run(_inputs):
            logits = np.zeros((1, 2, 8, 10), np.float32)
            logits[0, 1].flat[: next(outs)] = 1.0  # that many pixels get label 1 instead of 0
            return [logits]

        return run

    items = [(np.zeros((1, 3, 8, 10), np.float32), ref)] * 2
    metric, per_item = label_agreement_metric(compiled_giving([0, 0]), items)
    assert metric == 1.0 and per_item == [1.0, 1.0]
    metric, per_item = label_agreement_metric(compiled_giving([0, 4]), items)  # 95% on one image, 97.5% mean
    assert per_item == [1.0, 0.95] and metric == pytest.approx(min(0.975, 0.95 + 0.01))
    with pytest.raises(QuantizeError, match="validation"):
        quantize_openvino(None, [np.zeros((1, 3, 32, 32), np.float32)], variant="accuracy_control")
