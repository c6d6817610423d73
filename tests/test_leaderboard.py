"""The shipped checkpoints: size rules, manifests that agree with the committed leaderboard, reproducible numbers."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from workbench.io.checkpoint import read_manifest
from workbench.evaluation.leaderboard import PUBLISHED_CAMVID, leaderboard_rows, table
from workbench.paths import checkpoints_dir, resolve_data_root

CKPT = checkpoints_dir()
MANIFESTS = sorted(p for p in CKPT.glob("*.json"))
EVALUATED = [p for p in MANIFESTS if (read_manifest(p).get("metrics") or {}).get("test")]
ZOO_EVALUATED = [p for p in EVALUATED if not read_manifest(p).get("upsampling_lab")]  # lab variants: a relative comparison, own eval folder
needs_checkpoints = pytest.mark.skipif(not MANIFESTS, reason="no checkpoints shipped yet")


@needs_checkpoints
def test_checkpoint_size_rules():
    total = sum(p.stat().st_size for p in CKPT.rglob("*") if p.is_file())
    assert total <= 200 * 2**20, f"checkpoints/ holds {total / 2**20:.0f} MB (limit 200)"
    for p in MANIFESTS:
        man = read_manifest(p)
        weights = CKPT / man["weights"]["file"]
        assert weights.stat().st_size <= 20 * 2**20, f"{weights.name} is over 20 MB"
        assert man["weights"]["dtype"] == "float16", f"{p.name}: weights must be stored in fp16"


@needs_checkpoints
@pytest.mark.parametrize("path", MANIFESTS, ids=[p.stem for p in MANIFESTS])
def test_manifest_is_complete(path):
    man = read_manifest(path)
    for key in ("architecture", "kwargs", "dataset", "classes", "normalization", "training", "metrics", "num_parameters"):
        assert key in man, f"{path.name} lacks {key}"
    training = man["training"]
    for key in ("command", "config", "epochs_completed", "wall_time_s", "hardware"):
        assert key in training, f"{path.name} lacks training.{key}"
    assert "val" in man["metrics"] and "test" in man["metrics"], f"{path.name}: val and test metrics expected"
    assert "gflops" in man.get("cost", {}) and "cpu_latency_ms" in man["cost"]


@needs_checkpoints
@pytest.mark.parametrize("path", EVALUATED, ids=[p.stem for p in EVALUATED])
def test_manifest_agrees_with_committed_eval_and_leaderboard(path):
    man = read_manifest(path)
    sub = "isbi/" if man["dataset"]["name"] == "isbi" else "upsampling/" if man.get("upsampling_lab") else ""
    result = json.loads((CKPT / "eval" / f"{sub}{path.stem}.test.json").read_text())
    assert result["metrics"]["miou"] == pytest.approx(man["metrics"]["test"]["miou"], abs=1e-12)
    assert result["n_images"] == man["metrics"]["test"]["n_images"]
    assert result["metrics"]["confusion"] == man["metrics"]["test"]["confusion"], "the manifest's confusion matrix is the evaluation's"
    # and it is the matrix those scores come from: IoU = TP / (TP + FP + FN) per class present
    conf = np.asarray(man["metrics"]["test"]["confusion"], dtype=np.float64)
    tp = np.diag(conf)
    union = conf.sum(0) + conf.sum(1) - tp
    iou = np.divide(tp, union, out=np.full_like(tp, np.nan), where=union > 0)
    assert np.nanmean(iou) == pytest.approx(man["metrics"]["test"]["miou"], abs=1e-12)
    board = (CKPT / "eval" / sub / "leaderboard_test.md").read_text()
    row = next(line for line in board.splitlines() if f"| {path.stem} |" in line)
    assert f"| {100 * man['metrics']['test']['miou']:.1f} |" in row


@needs_checkpoints
def test_camvid_quality_bar():
    camvid = {p.stem: read_manifest(p) for p in ZOO_EVALUATED if read_manifest(p)["dataset"]["name"] == "camvid"}
    strawmen = {name for name, man in camvid.items() if man.get("strawman")}
    assert strawmen <= {"camvid_naive"}, f"only the naive stack is shipped as the tutorial's strawman, not {strawmen}"
    rows = leaderboard_rows({name: man for name, man in camvid.items() if name not in strawmen})
    if not rows:
        pytest.skip("no evaluated CamVid checkpoints yet")
    # the strawman is shipped to show how far it falls short (issue 26): it must, against every real architecture
    for name in strawmen:
        assert camvid[name]["metrics"]["test"]["miou"] < min(r["miou"] for r in rows) - 0.2, name
    # issue 4's bar: every shipped CamVid checkpoint at least 50 test mIoU, the best at least 60, one pass at 360x480
    assert all(r["miou"] >= 0.50 for r in rows), [(r["name"], r["miou"]) for r in rows]
    best = max(rows, key=lambda r: r["miou"])
    assert best["miou"] >= 0.60, f"the best CamVid checkpoint, {best['name']}, has {100 * best['miou']:.1f} test mIoU"
    tab = table(rows, PUBLISHED_CAMVID)
    assert sum("(published)" in r[0] for r in tab) == len(PUBLISHED_CAMVID)


@pytest.mark.data
@needs_checkpoints
def test_reevaluating_a_checkpoint_reproduces_its_stored_per_image_results():
    """CI re-runs the cheapest shipped CamVid checkpoint on 3 test images and compares with the committed results."""
    if not (resolve_data_root() / "camvid" / "test").is_dir():
        pytest.skip(f"CamVid not found under {resolve_data_root()}: set WORKBENCH_DATA_ROOT")
    camvid = [p for p in ZOO_EVALUATED if read_manifest(p)["dataset"]["name"] == "camvid"]
    if not camvid:
        pytest.skip("no evaluated CamVid checkpoints yet")
    cheapest = min(camvid, key=lambda p: read_manifest(p)["cost"]["gflops"])
    from workbench.evaluation.evaluate import confusion_from_entries, evaluate_checkpoint

    stored = json.loads((CKPT / "eval" / f"{cheapest.stem}.test.json").read_text())
    fresh = evaluate_checkpoint(cheapest, split="test", limit=3, progress=False)
    c = len(stored["metrics"]["class_names"])
    for old, new in zip(stored["per_image"][:3], fresh["per_image"]):
        assert old["name"] == new["name"]
        a, b = confusion_from_entries(old["confusion"], c), confusion_from_entries(new["confusion"], c)
        agree = (a.diagonal().sum() == b.diagonal().sum()) or abs(int(a.diagonal().sum()) - int(b.diagonal().sum())) / a.sum() < 1e-3
        assert agree, f"{old['name']}: correct pixels {int(a.diagonal().sum())} stored vs {int(b.diagonal().sum())} now"
        assert math.isclose(old["miou"], new["miou"], abs_tol=0.005)


def test_table_notes_say_how_a_checkpoint_was_trained():
    metrics = {"test": {"miou": 0.5, "pixel_accuracy": 0.8, "per_class_iou": [0.5]}}
    fresh = {"metrics": metrics, "training": {"epochs_completed": 120}}
    tuned = {"metrics": metrics, "training": {"epochs_completed": 22, "init_from": {"training": {"epochs_completed": 110}}}}
    twice = {"metrics": metrics, "training": {"epochs_completed": 16, "init_from": {"training": tuned["training"]}}}
    notes = {r[0]: r[-1] for r in table(leaderboard_rows({"fresh": fresh, "tuned": tuned, "twice": twice}))}
    assert notes == {
        "fresh": "trained here, 120 epochs",
        "tuned": "trained here, 110 + 22 epochs (fine-tuned)",
        "twice": "trained here, 110 + 22 + 16 epochs (fine-tuned 2 times)",
    }


@needs_checkpoints
def test_leaderboard_tab_draws_each_checkpoint_confusion_matrix():
    from workbench.app.leaderboard import checkpoint_view, evaluated_checkpoints

    names = evaluated_checkpoints()
    assert "unet" in names and "tiramisu" in names
    for name in names:
        conf, curves, text = checkpoint_view(name)
        assert conf is not None and conf.axes[0].get_xlabel() == "prediction"
        assert "Test mIoU" in text
        assert curves is not None or "training log was not shipped" in text
    assert checkpoint_view("no_such_model")[:2] == (None, None)


def test_export_ships_the_runs_training_log_and_the_tab_draws_it(tmp_path):
    import workbench
    from workbench.io.checkpoint import export_checkpoint, training_log_path
    from workbench.training.curves import curves_figure, read_metrics

    run = tmp_path / "run"
    run.mkdir()
    model = workbench.create_model("fcn32s", num_classes=3, encoder="resnet10t")
    workbench.save_checkpoint(run / "best", model, {"dataset": {"name": "synthetic"}})
    lines = [json.dumps({"epoch": e, "train_loss": 1.0 / e, **({"val": {"miou": 0.1 * e}} if e % 2 == 0 else {})}) for e in (1, 2, 3, 4)]
    (run / "metrics.jsonl").write_text("\n".join(lines) + '\n{"epoch": 5, "train_lo')  # the last line cut by a kill
    assert training_log_path(run / "best.json") == run / "metrics.jsonl"

    out = export_checkpoint(run / "best.json", tmp_path / "shipped" / "camvid_x")
    log = training_log_path(out)
    assert log == tmp_path / "shipped" / "camvid_x.metrics.jsonl"
    records = read_metrics(log)
    assert [r["epoch"] for r in records] == [1, 2, 3, 4], "the cut line is dropped, the others kept in order"
    fig = curves_figure(records)
    loss, = fig.axes[0].get_lines()
    assert list(loss.get_xdata()) == [1, 2, 3, 4]
    val, = fig.axes[1].get_lines()
    assert list(val.get_ydata()) == pytest.approx([0.2, 0.4])
    with pytest.raises(ValueError, match="no epoch records"):
        curves_figure([{"note": "not an epoch"}])

    again = export_checkpoint(out, tmp_path / "copy")  # a shipped checkpoint's log travels too
    assert read_metrics(training_log_path(again)) == records
