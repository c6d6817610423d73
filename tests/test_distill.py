"""``workbench distill``: the KD loss, the teacher cache (written once, corruption rebuilt), the teacher chain in the manifest, resume."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from workbench.classes import IGNORE_INDEX  # noqa: E402
from workbench.data.datasets import build_dataset  # noqa: E402
from workbench.data.transforms import TeacherMap, train_transforms  # noqa: E402
from workbench.evaluation import ensemble as ensemble_mod  # noqa: E402
from workbench.training.distill import DistillTrainer, distill  # noqa: E402
from workbench.training.distill_config import DistillConfig  # noqa: E402
from workbench.training.losses import DistillationLoss, build_loss, kd_kl  # noqa: E402
from workbench.training.teacher_cache import CACHE_FORMAT, LOGP_STEP, TeacherCache, dequantize_logp, image_digest, quantize_logp  # noqa: E402

DATA = {"length": 8, "size": [40, 48]}
TINY = dict(arch="fcn32s", encoder="test_resnet", dataset="synthetic", dataset_options=DATA, crop=[32, 32], scale=[0.75, 1.25], batch_size=4, lr=3e-3,
            warmup_steps=2, workers=0, precision="fp32", val_every=1, val_limit=2, cache=False)


# ----------------------------------------------------------------------------- the loss


def test_kd_loss_equals_the_hand_computed_value_and_ignores_void():
    # two pixels, three classes: pixel 0 labelled 1, pixel 1 void
    student = torch.tensor([[1.0, 2.0, 0.5], [3.0, -1.0, 0.0]]).t().reshape(1, 3, 1, 2)
    teacher = torch.tensor([[0.2, 1.5, -0.3], [9.0, 9.0, -9.0]]).t().reshape(1, 3, 1, 2)
    target = torch.tensor([[[1, IGNORE_INDEX]]])
    T, alpha = 2.0, 0.3

    def softmax(v):
        e = [math.exp(x) for x in v]
        return [x / sum(e) for x in e]

    ps, pt = softmax([1.0 / T, 2.0 / T, 0.5 / T]), softmax([0.2 / T, 1.5 / T, -0.3 / T])
    kl = sum(t * (math.log(t) - math.log(s)) for t, s in zip(pt, ps))  # only the non-void pixel counts
    ce = -math.log(softmax([1.0, 2.0, 0.5])[1])
    expected = alpha * T * T * kl + (1 - alpha) * ce

    loss = DistillationLoss(build_loss("ce"), alpha=alpha, temperature=T)(student, target, teacher)
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    assert kd_kl(student, teacher, target, T).item() == pytest.approx(kl, rel=1e-4)  # float32: a small KL of near distributions
    # log-probabilities of the teacher give the same soft labels as its logits
    assert kd_kl(student, F.log_softmax(teacher, 1), target, T).item() == pytest.approx(kl, rel=1e-4)
    # a teacher equal to the student costs nothing
    assert kd_kl(student, student, target, T).item() == pytest.approx(0.0, abs=1e-7)
    # all void: no soft term
    assert kd_kl(student, teacher, torch.full_like(target, IGNORE_INDEX), T).item() == 0.0


def test_alpha_zero_is_the_ground_truth_loss_and_bad_settings_are_refused():
    g = torch.Generator().manual_seed(0)
    logits, teacher = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 4, 8, 8, generator=g)
    target = torch.randint(0, 4, (2, 8, 8), generator=g)
    target[0, :2] = IGNORE_INDEX
    gt = build_loss("ce+0.5*dice")
    assert DistillationLoss(gt, alpha=0.0, temperature=4.0)(logits, target, teacher).item() == pytest.approx(gt(logits, target).item(), rel=1e-7)
    only_soft = DistillationLoss(gt, alpha=1.0, temperature=3.0)(logits, target, teacher).item()
    assert only_soft == pytest.approx(9.0 * kd_kl(logits, teacher, target, 3.0).item(), rel=1e-6)
    with pytest.raises(ValueError, match="alpha"):
        DistillationLoss(gt, alpha=1.5, temperature=1.0)
    with pytest.raises(ValueError, match="temperature"):
        DistillationLoss(gt, alpha=0.5, temperature=0.0)
    with pytest.raises(ValueError, match="teacher map"):
        DistillationLoss(gt, alpha=0.5, temperature=1.0)(logits, target, teacher[:, :3])
    with pytest.raises(ValueError, match="teacher"):
        DistillConfig(**TINY, out="x").validate()  # no teachers


def test_a_teacher_map_travels_with_the_mask_through_the_joint_transform():
    ds = build_dataset("synthetic", "train", length=2, size=[48, 64])
    sample = dict(ds[0])
    mask = torch.as_tensor(sample["mask"]).long()
    # a "teacher" that is the one-hot of the label (void -> class 0): after any scale/crop/flip its argmax must be the mask
    onehot = F.one_hot(torch.where(mask == IGNORE_INDEX, 0, mask), 4).permute(2, 0, 1).to(torch.float16)
    sample["teacher"] = TeacherMap(onehot)
    tf = train_transforms((40, 40), scale=(0.5, 2.0), hflip=True, color_jitter=0.3, mean=[0.5] * 3, std=[0.25] * 3)
    for seed in range(6):
        torch.manual_seed(seed)
        out = tf(dict(sample))
        t, m = out["teacher"], out["mask"]
        assert isinstance(t, TeacherMap) and t.shape == (4, 40, 40) and t.dtype == torch.float16
        valid = m != IGNORE_INDEX
        assert torch.equal(t.argmax(0)[valid], m[valid])
        assert (t[:, ~valid] == 0).all()  # padding: 0 in the teacher map where the mask is void


# ----------------------------------------------------------------------------- the cache


@pytest.fixture(scope="module")
def teachers(tmp_path_factory):
    """Two tiny teacher checkpoints (FCN-32s of different random weights, saved as `workbench train` saves them)."""
    from workbench.classes import default_normalization
    from workbench.io.checkpoint import save_checkpoint
    from workbench.models.registry import create_model

    base = tmp_path_factory.mktemp("teachers")
    ds = build_dataset("synthetic", "train", **DATA)
    out = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        model = create_model("fcn32s", num_classes=ds.num_classes, in_chans=3, encoder="test_resnet")
        manifest = {"dataset": {"name": "synthetic"}, "classes": ds.classes, "normalization": default_normalization(3), "metrics": {"val": {"miou": 0.1 * seed}}}
        save_checkpoint(base / f"teacher{seed}", model, manifest)
        out.append(str(base / f"teacher{seed}.json"))
    return out


def _cfg(tmp_path, teachers, **over) -> DistillConfig:
    kw = dict(TINY, teachers=teachers, teacher_flip=True, temperature=2.0, alpha=0.5, epochs=2, teacher_cache=str(tmp_path / "cache"), out=str(tmp_path / "student"))
    kw.update(over)
    return DistillConfig(**kw)


@pytest.fixture
def count_teacher(monkeypatch):
    """Counts the teacher forward passes (calls of predict_probs, one per teacher and image: the teacher is an evaluation.ensemble.Ensemble)."""
    calls = {"n": 0}
    real = ensemble_mod.predict_probs

    def counting(*a, **k):
        calls["n"] += 1
        return real(*a, **k)

    monkeypatch.setattr(ensemble_mod, "predict_probs", counting)
    return calls


def test_distill_run_records_the_teacher_chain_and_caches_the_teacher_once(tmp_path, teachers, count_teacher):
    summary = distill(_cfg(tmp_path, teachers), command="pytest distill")
    n_images = DATA["length"]
    # the teacher ran once per image and teacher, before the first epoch; the second epoch used the cache
    assert count_teacher["n"] == 2 * n_images
    assert summary["distillation"]["teacher_images_computed"] == n_images and summary["epochs"] == 2
    entries = sorted(Path(summary["distillation"]["cache_dir"]).glob("*.npz"))
    assert len(entries) == n_images and summary["distillation"]["cache_bytes"] == sum(p.stat().st_size for p in entries)
    with np.load(entries[0]) as f:
        q = f["q"]
    assert q.dtype == np.uint8 and q.shape == (4, 40, 48)
    assert np.allclose(np.exp(dequantize_logp(q).astype(np.float64)).sum(0), 1.0, atol=0.04)  # each probability within 3.2 %

    manifest = json.loads((tmp_path / "student" / "last.json").read_text())
    chain = manifest["training"]["distillation"]
    shas = [json.loads(Path(t).read_text())["weights"]["sha256"] for t in teachers]
    assert [t["weights_sha256"] for t in chain["teachers"]] == shas
    assert [t["checkpoint"] for t in chain["teachers"]] == ["teacher1", "teacher2"] and chain["teachers"][0]["architecture"] == "fcn32s"
    assert [t["val_miou"] for t in chain["teachers"]] == [0.1, 0.2]
    assert chain["tta"] == {"flip": True, "scales": None} and chain["temperature"] == 2.0 and chain["alpha"] == 0.5
    assert chain["cache_key"] == summary["distillation"]["cache_key"] and len(chain["cache_key"]) == 64
    assert manifest["training"]["command"] == "pytest distill" and manifest["training"]["config"]["teachers"] == teachers
    assert (tmp_path / "student" / "best.json").is_file()

    # a second student of the same teachers computes no teacher pass at all
    count_teacher["n"] = 0
    again = distill(_cfg(tmp_path, teachers, epochs=1, arch="fcn8s", out=str(tmp_path / "student2")), command="pytest")
    assert count_teacher["n"] == 0 and again["distillation"]["teacher_images_computed"] == 0
    # key.json says what the folder's entries were computed with; another augmentation is another key (another folder)
    key = json.loads((Path(summary["distillation"]["cache_dir"]) / "key.json").read_text())
    digest = key.pop("digest")
    assert key.pop("format") == CACHE_FORMAT and key["tta"] == {"flip": True, "scales": None} and key["precision"] == "fp32"
    assert TeacherCache(tmp_path / "cache", key).digest == digest == chain["cache_key"]
    assert TeacherCache(tmp_path / "cache", {**key, "tta": {"flip": False, "scales": None}}).digest != digest


def test_a_corrupt_or_stale_cache_entry_is_detected_and_rebuilt(tmp_path, teachers, count_teacher):
    first = distill(_cfg(tmp_path, teachers, epochs=1), command="pytest")
    entries = sorted(Path(first["distillation"]["cache_dir"]).glob("*.npz"))
    good = entries[1].read_bytes()
    # 1: bytes flipped in the middle (zip CRC / data hash); 2: truncated; 3: another image's (valid) entry under this name
    b = bytearray(entries[0].read_bytes())
    b[len(b) // 2] ^= 0xFF
    entries[0].write_bytes(bytes(b))
    entries[1].write_bytes(good[: len(good) // 3])
    entries[2].write_bytes(entries[3].read_bytes())
    count_teacher["n"] = 0
    second = distill(_cfg(tmp_path, teachers, epochs=1, out=str(tmp_path / "again")), command="pytest")
    assert second["distillation"]["teacher_images_computed"] == 3 and count_teacher["n"] == 2 * 3
    problems = " ".join(second["distillation"]["cache_entries_rejected"])
    assert entries[0].name in problems and entries[1].name in problems and "stale" in problems
    with np.load(entries[1]) as rebuilt, np.load(entries[3]) as untouched:  # rebuilt, readable again, the right image
        assert json.loads(str(rebuilt["meta"]))["name"] != json.loads(str(untouched["meta"]))["name"]
        assert rebuilt["q"].shape == untouched["q"].shape


def test_quantised_log_probabilities_stay_within_a_half_step():
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 4, (5, 6, 7)).astype(np.float32)
    logp = logits - np.log(np.exp(logits).sum(0, keepdims=True))
    back = dequantize_logp(quantize_logp(logp))
    kept = logp >= -255 * LOGP_STEP
    assert np.abs(back - logp)[kept].max() <= LOGP_STEP / 2 + 1e-6
    assert (back[~kept] == np.float32(-255 * LOGP_STEP)).all()
    assert torch.equal(dequantize_logp(torch.from_numpy(quantize_logp(logp))), torch.from_numpy(back))


def test_cache_entry_checks_shape_and_image(tmp_path):
    cache = TeacherCache(tmp_path, {"teachers": ["x"]})
    cache.prepare()
    img = np.zeros((3, 8, 8), np.uint8)
    cache.store("a/b c", image_digest(img), np.zeros((2, 8, 8), np.float32))
    assert cache.load("a/b c", image_digest(img), (2, 8, 8)) is not None
    assert cache.load("a/b c", image_digest(img), (3, 8, 8)) is None  # other class count
    assert cache.load("a/b c", image_digest(img + 1), (2, 8, 8)) is None and "stale" in cache.problems[-1]  # same name, new pixels
    assert cache.load("a/b c", image_digest(img), (2, 8, 9)) is None and cache.stats["missing"] == 1  # other resolution, other file
    assert TeacherCache(tmp_path, {"teachers": ["y"]}).dir != cache.dir


def test_resume_continues_from_the_last_epoch_and_refuses_other_teachers(tmp_path, teachers, count_teacher):
    cfg = _cfg(tmp_path, teachers, epochs=2)
    trainer = DistillTrainer(cfg, command="pytest")
    trainer.fit(stop_after_epoch=1)
    trainer.close()
    assert json.loads((tmp_path / "student" / "last.json").read_text())["training"]["epochs_completed"] == 1
    with pytest.raises(FileExistsError):
        DistillTrainer(_cfg(tmp_path, teachers, epochs=2), command="pytest")
    with pytest.raises(ValueError, match="other teachers or settings"):
        DistillTrainer(_cfg(tmp_path, teachers, epochs=2, temperature=4.0, resume=True), command="pytest")
    count_teacher["n"] = 0
    summary = distill(_cfg(tmp_path, teachers, epochs=2, resume=True), command="pytest")
    assert count_teacher["n"] == 0 and summary["epochs"] == 2
    rows = [json.loads(line) for line in (tmp_path / "student" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    manifest = json.loads((tmp_path / "student" / "last.json").read_text())
    assert manifest["training"]["epochs_completed"] == 2 and manifest["training"]["distillation"]["temperature"] == 2.0

    # the resumed run equals the uninterrupted one
    straight = distill(_cfg(tmp_path, teachers, epochs=2, out=str(tmp_path / "straight")), command="pytest")
    assert straight["best_val_miou"] == pytest.approx(summary["best_val_miou"], abs=1e-6)
    from workbench.io.state import load_state

    a = load_state(tmp_path / "student" / "resume.safetensors")["model"]
    b = load_state(tmp_path / "straight" / "resume.safetensors")["model"]
    assert all(torch.allclose(a[k].float(), b[k].float(), atol=1e-5) for k in a)


def test_cli_distill(tmp_path, teachers):
    from workbench.cli import main

    args = ["distill", "--teachers", *teachers, "--arch", "fcn32s", "--encoder", "test_resnet", "--dataset", "synthetic", "--dataset-options", json.dumps(DATA),
            "--crop", "32", "32", "--batch-size", "4", "--precision", "fp32", "--epochs", "1", "--val-limit", "2", "--workers", "0", "--no-cache",
            "--temperature", "3", "--alpha", "0.7", "--teacher-scales", "0.75", "1", "--teacher-cache", str(tmp_path / "c"), "--out", str(tmp_path / "cli")]
    assert main(args) == 0
    manifest = json.loads((tmp_path / "cli" / "last.json").read_text())
    chain = manifest["training"]["distillation"]
    assert chain["temperature"] == 3.0 and chain["alpha"] == 0.7 and chain["tta"]["scales"] == [0.75, 1.0]
    import yaml

    written = yaml.safe_load((tmp_path / "cli" / "config.yaml").read_text())
    assert written["teachers"] == teachers and written["alpha"] == 0.7
    assert main(["distill", "--arch", "unet", "--out", str(tmp_path / "none")]) == 2  # no teachers: a clear error
    assert main(["distill", "--teachers", "no_such_checkpoint", "--out", str(tmp_path / "none")]) == 2
