"""workbench.evaluation.ensemble and ``workbench eval --ensemble``: several checkpoints' mean probabilities as one model."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import workbench
from workbench.cli import main as cli_main
from workbench.data.datasets import build_dataset
from workbench.data.transforms import eval_transforms
from workbench.evaluation.ensemble import Ensemble, evaluate_ensemble, load_ensemble
from workbench.evaluation.evaluate import EvaluationError, evaluate_checkpoint
from workbench.evaluation.tta import predict_probs
from workbench.io.checkpoint import read_manifest

SYNTH = {"size": [48, 64], "length": 3}  # 3 test images of 48 x 64
CLASSES = ["background", "circle", "rectangle"]
# two different normalisations, neither the default: each member must normalise the image its own way
NORM_A = {"mean": [0.5, 0.4, 0.3], "std": [0.25, 0.3, 0.2]}
NORM_B = {"mean": [0.2, 0.5, 0.6], "std": [0.4, 0.2, 0.35]}


def _naive(seed, num_classes=3):
    torch.manual_seed(seed)
    model = workbench.create_model("naive", num_classes=num_classes, width=8, depth=2)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.3, 0.3)
                m.running_var.uniform_(0.5, 1.5)
    return model.eval()


def _save(tmp_path, name, seed, norm, classes=CLASSES, dataset="synthetic"):
    meta = {"dataset": {"name": dataset, "options": SYNTH}, "classes": [{"name": c} for c in classes], "normalization": norm}
    return workbench.save_checkpoint(tmp_path / name, _naive(seed, num_classes=len(classes)), meta)


def _images01():
    ds = build_dataset("synthetic", "test", transform=eval_transforms(mean=[0.0] * 3, std=[1.0] * 3), num_classes=3, **SYNTH)
    return [(torch.as_tensor(ds[i]["image"]).as_subclass(torch.Tensor), torch.as_tensor(ds[i]["mask"]).as_subclass(torch.Tensor)) for i in range(len(ds))]


def test_an_ensemble_of_one_scores_exactly_as_the_checkpoint(tmp_path):
    ckpt = _save(tmp_path, "a", seed=1, norm=NORM_A)
    assert read_manifest(ckpt)["normalization"] == NORM_A
    # the probabilities themselves, bit for bit: the member normalises as the evaluation transform does
    model = workbench.load_checkpoint(ckpt)[0]
    ensemble = load_ensemble([ckpt])[0]
    normalised = build_dataset("synthetic", "test", transform=eval_transforms(**NORM_A), num_classes=3, **SYNTH)
    for i, (image, _mask) in enumerate(_images01()):
        own = predict_probs(model, torch.as_tensor(normalised[i]["image"]).as_subclass(torch.Tensor), flip=True)
        assert torch.equal(ensemble.predict_probs(image, flip=True), own)
    for tta in ({}, {"flip": True, "scales": [0.75, 1.0]}):
        single = evaluate_checkpoint(ckpt, device="cpu", progress=False, **tta)
        ens = evaluate_ensemble([ckpt], device="cpu", progress=False, **tta)
        assert ens["metrics"]["confusion"] == single["metrics"]["confusion"]
        assert ens["metrics"]["miou"] == single["metrics"]["miou"] and ens["metrics"]["class_names"] == CLASSES
        assert [r["confusion"] for r in ens["per_image"]] == [r["confusion"] for r in single["per_image"]]
        assert ens["options"] == single["options"] and ens["n_images"] == 3


def test_an_ensemble_of_two_is_the_mean_of_the_probabilities(tmp_path):
    a, b = _save(tmp_path, "a", seed=1, norm=NORM_A), _save(tmp_path, "b", seed=2, norm=NORM_B)
    ensemble, members, _manifests = load_ensemble([a, b])
    assert [m["checkpoint"] for m in members] == ["a", "b"]
    ma, mb = workbench.load_checkpoint(a)[0], workbench.load_checkpoint(b)[0]

    def norm(x, n):
        return (x - torch.tensor(n["mean"])[:, None, None]) / torch.tensor(n["std"])[:, None, None]

    expected_cm = np.zeros((3, 3), np.int64)
    for image, mask in _images01():
        pa, pb = predict_probs(ma, norm(image, NORM_A), flip=True), predict_probs(mb, norm(image, NORM_B), flip=True)
        mean = (pa + pb) / 2
        got = ensemble.predict_probs(image, flip=True)
        torch.testing.assert_close(got, mean, rtol=1e-6, atol=1e-7)
        # forward: the log of the mean (a model's "logits"), without test-time augmentation
        plain = (predict_probs(ma, norm(image, NORM_A)) + predict_probs(mb, norm(image, NORM_B))) / 2
        torch.testing.assert_close(ensemble(image[None])[0].softmax(0), plain, rtol=1e-5, atol=1e-6)
        pred, m = mean.argmax(0).numpy(), mask.numpy()
        keep = m != 255
        np.add.at(expected_cm, (m[keep], pred[keep]), 1)

    res = evaluate_ensemble([a, b], flip=True, device="cpu", progress=False)
    assert res["metrics"]["confusion"] == expected_cm.tolist()  # argmax of the mean, counted independently
    singles = [evaluate_checkpoint(c, flip=True, device="cpu", progress=False)["metrics"]["confusion"] for c in (a, b)]
    assert all(res["metrics"]["confusion"] != s for s in singles)
    assert res["checkpoint"] == "ensemble-a+b" and res["architecture"] == "ensemble"
    recorded = res["ensemble"]["members"]
    assert [(r["checkpoint"], r["weights_sha256"]) for r in recorded] == [(n, read_manifest(c)["weights"]["sha256"]) for n, c in (("a", a), ("b", b))]
    assert res["num_parameters"] == sum(p.numel() for p in ma.parameters()) + sum(p.numel() for p in mb.parameters())
    assert res["machine"]["isa"]


def test_members_that_do_not_fit_together_are_refused(tmp_path):
    a = _save(tmp_path, "a", seed=1, norm=NORM_A)
    renamed = _save(tmp_path, "renamed", seed=2, norm=NORM_A, classes=["background", "disc", "box"])
    four = _save(tmp_path, "four", seed=3, norm=NORM_A, classes=CLASSES + ["triangle"])
    for other in (renamed, four):
        with pytest.raises(EvaluationError, match="must predict the same classes"):
            evaluate_ensemble([a, other], device="cpu", progress=False)
    elsewhere = _save(tmp_path, "elsewhere", seed=4, norm=NORM_A, dataset="folder")
    with pytest.raises(EvaluationError, match="trained on different datasets"):
        evaluate_ensemble([a, elsewhere], device="cpu", progress=False)
    with pytest.raises(FileNotFoundError, match="not found"):
        evaluate_ensemble([a, "no_such_checkpoint_anywhere"], device="cpu", progress=False)
    with pytest.raises(ValueError, match="at least one model"):
        Ensemble([], [])


def test_cli_ensemble_writes_one_result(tmp_path, capsys):
    a, b = _save(tmp_path, "a", seed=1, norm=NORM_A), _save(tmp_path, "b", seed=2, norm=NORM_B)
    out = tmp_path / "res"
    manifests_before = [a.read_text(), b.read_text()]
    assert cli_main(["eval", str(a), str(b), "--ensemble", "--limit", "2", "--out", str(out), "--quiet"]) == 0
    stored = json.loads((out / "ensemble-a+b.test.json").read_text())
    direct = evaluate_ensemble([a, b], limit=2, device="cpu", progress=False)
    assert stored["metrics"]["confusion"] == direct["metrics"]["confusion"] and stored["n_images"] == 2
    assert [m["checkpoint"] for m in stored["ensemble"]["members"]] == ["a", "b"]
    assert "| ensemble | ensemble-a+b |" in (out / "leaderboard_test.md").read_text()
    assert [a.read_text(), b.read_text()] == manifests_before  # an ensemble writes into no manifest
    capsys.readouterr()
    assert cli_main(["eval", str(a), str(b), "--ensemble", "--update-manifests", "--out", str(out)]) == 2
    assert "drop --update-manifests" in capsys.readouterr().err
    renamed = _save(tmp_path, "renamed", seed=2, norm=NORM_A, classes=["background", "disc", "box"])
    assert cli_main(["eval", str(a), str(renamed), "--ensemble", "--out", str(out), "--quiet"]) == 2
    assert "must predict the same classes" in capsys.readouterr().err
