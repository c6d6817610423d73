"""workbench.evaluation.metrics: the confusion matrix against torchmetrics and smp, hand-made cases, the ISBI Rand error."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from workbench.classes import IGNORE_INDEX
from workbench.evaluation.metrics import ConfusionMatrix, foreground_iou, pixel_error, rand_error, rand_scores, segmentation_metrics


def _random_batch(seed: int, num_classes: int, shape=(3, 17, 23), ignore_frac=0.2):
    g = torch.Generator().manual_seed(seed)
    target = torch.randint(0, num_classes, shape, generator=g)
    # predictions agree with the target most of the time, so IoUs are far from trivial
    pred = torch.where(torch.rand(shape, generator=g) < 0.6, target, torch.randint(0, num_classes, shape, generator=g))
    target[torch.rand(shape, generator=g) < ignore_frac] = IGNORE_INDEX
    return pred, target


# --------------------------------------------------------------------------- cross-checks with libraries


@pytest.mark.parametrize("seed", [0, 1])
def test_matches_torchmetrics(seed):
    from torchmetrics.classification import MulticlassAccuracy, MulticlassConfusionMatrix, MulticlassJaccardIndex

    c = 5
    pred, target = _random_batch(seed, c)
    assert (target == IGNORE_INDEX).any()
    for cls in range(c):  # every class present in the target: torchmetrics and we agree on what to average
        assert (target == cls).any()
    res = ConfusionMatrix(c).update(pred, target)
    m = segmentation_metrics(res)

    iou_tm = MulticlassJaccardIndex(num_classes=c, average=None, ignore_index=IGNORE_INDEX)(pred, target)
    np.testing.assert_allclose(m["per_class_iou"], iou_tm.double().numpy(), rtol=1e-6)
    miou_tm = MulticlassJaccardIndex(num_classes=c, average="macro", ignore_index=IGNORE_INDEX)(pred, target)
    assert m["miou"] == pytest.approx(float(miou_tm), rel=1e-6)
    acc_micro = MulticlassAccuracy(num_classes=c, average="micro", ignore_index=IGNORE_INDEX)(pred, target)
    assert m["pixel_accuracy"] == pytest.approx(float(acc_micro), rel=1e-6)
    acc_macro = MulticlassAccuracy(num_classes=c, average="macro", ignore_index=IGNORE_INDEX)(pred, target)
    assert m["mean_class_accuracy"] == pytest.approx(float(acc_macro), rel=1e-6)
    acc_none = MulticlassAccuracy(num_classes=c, average=None, ignore_index=IGNORE_INDEX)(pred, target)
    np.testing.assert_allclose(m["per_class_accuracy"], acc_none.double().numpy(), rtol=1e-6)
    cm_tm = MulticlassConfusionMatrix(num_classes=c, ignore_index=IGNORE_INDEX)(pred, target)
    assert m["confusion"] == cm_tm.tolist()


def test_matches_smp_metrics():
    import segmentation_models_pytorch as smp

    c = 4
    pred, target = _random_batch(7, c, shape=(4, 19, 21))
    cm = ConfusionMatrix(c)
    for i in range(pred.shape[0]):  # one image at a time, as the evaluator does
        cm.update(pred[i], target[i])
    m = cm.compute()
    tp, fp, fn, tn = smp.metrics.get_stats(pred[:, None], target[:, None], mode="multiclass", num_classes=c, ignore_index=IGNORE_INDEX)
    # dataset-level per-class IoU: sum the per-image stats, then divide
    iou_smp = smp.metrics.iou_score(tp.sum(0, keepdim=True), fp.sum(0, keepdim=True), fn.sum(0, keepdim=True), tn.sum(0, keepdim=True), reduction="none")[0]
    np.testing.assert_allclose(m["per_class_iou"], iou_smp.double().numpy(), rtol=1e-6)
    acc_smp = smp.metrics.accuracy(tp.sum(), fp.sum(), fn.sum(), tn.sum(), reduction="none")
    # smp's micro accuracy counts (tp + tn) / all over one-vs-rest: relate it to global accuracy
    n = m["n_pixels"]
    assert float(tp.sum()) / n == pytest.approx(m["pixel_accuracy"], rel=1e-9)
    assert float(acc_smp) == pytest.approx(((c - 2) * n + 2 * float(tp.sum())) / (c * n), rel=1e-6)


# --------------------------------------------------------------------------- hand-made


def test_hand_made_matrix():
    # rows = target, cols = prediction
    conf = torch.tensor([[5, 1, 0], [2, 3, 0], [0, 0, 0]])
    m = segmentation_metrics(conf)
    assert m["per_class_iou"][0] == pytest.approx(5 / (6 + 7 - 5))  # 5 / 8
    assert m["per_class_iou"][1] == pytest.approx(3 / (5 + 4 - 3))  # 3 / 6
    assert math.isnan(m["per_class_iou"][2])  # absent from both: not a zero
    assert m["miou"] == pytest.approx((5 / 8 + 3 / 6) / 2)
    assert m["pixel_accuracy"] == pytest.approx(8 / 11)
    assert m["per_class_accuracy"][:2] == pytest.approx([5 / 6, 3 / 5])
    assert math.isnan(m["per_class_accuracy"][2])
    assert m["mean_class_accuracy"] == pytest.approx((5 / 6 + 3 / 5) / 2)
    assert m["support"] == [6, 5, 0] and m["n_pixels"] == 11
    assert m["confusion"] == conf.tolist()


def test_class_only_predicted_counts_as_zero_iou():
    conf = torch.tensor([[4, 2], [0, 0]])  # class 1 predicted twice but never in the target
    m = segmentation_metrics(conf)
    assert m["per_class_iou"] == [pytest.approx(4 / 6), 0.0]
    assert m["miou"] == pytest.approx(2 / 6)
    assert math.isnan(m["per_class_accuracy"][1]) and m["mean_class_accuracy"] == pytest.approx(4 / 6)


def test_update_orientation_and_return_value():
    cm = ConfusionMatrix(3)
    target = torch.tensor([[0, 0, 1], [2, 2, IGNORE_INDEX]])
    pred = torch.tensor([[0, 1, 1], [2, 0, 1]])
    counts = cm.update(pred, target)
    expected = torch.zeros(3, 3, dtype=torch.int64)
    for t, p in ((0, 0), (0, 1), (1, 1), (2, 2), (2, 0)):
        expected[t, p] += 1
    assert torch.equal(counts, expected) and torch.equal(cm.matrix, expected)
    cm.update(pred, target)
    assert torch.equal(cm.matrix, 2 * expected) and cm.matrix.dtype == torch.int64
    cm.reset()
    assert int(cm.matrix.sum()) == 0


def test_ignore_pixels_never_count():
    c = 3
    pred, target = _random_batch(3, c)
    base = ConfusionMatrix(c).update(pred, target)
    # whatever is predicted where the target is ignored changes nothing
    pred2 = pred.clone()
    ign = target == IGNORE_INDEX
    pred2[ign] = (pred2[ign] + 1) % c
    assert torch.equal(ConfusionMatrix(c).update(pred2, target), base)
    assert int(base.sum()) == int((~ign).sum())
    # an all-ignore target counts nothing and gives nan metrics, not an exception
    m = ConfusionMatrix(c)
    m.update(pred, torch.full_like(target, IGNORE_INDEX))
    res = m.compute()
    assert res["n_pixels"] == 0 and math.isnan(res["miou"]) and math.isnan(res["pixel_accuracy"])
    # a different ignore index
    cm = ConfusionMatrix(2, ignore_index=-1)
    cm.update(torch.tensor([0, 1, 1]), torch.tensor([0, -1, 1]))
    assert cm.matrix.tolist() == [[1, 0], [0, 1]]


def test_merge_equals_one_matrix_over_both():
    c = 4
    p1, t1 = _random_batch(11, c)
    p2, t2 = _random_batch(12, c, shape=(2, 9, 40))
    a, b, both = ConfusionMatrix(c), ConfusionMatrix(c), ConfusionMatrix(c)
    a.update(p1, t1)
    b.update(p2, t2)
    both.update(p1, t1)
    both.update(p2, t2)
    assert torch.equal(a.merge(b).matrix, both.matrix)
    assert a.compute() == both.compute()
    with pytest.raises(ValueError, match="cannot merge"):
        a.merge(ConfusionMatrix(c + 1))


def test_invalid_inputs_raise():
    cm = ConfusionMatrix(3)
    with pytest.raises(ValueError, match="shapes differ"):
        cm.update(torch.zeros(2, 3, dtype=torch.long), torch.zeros(3, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="target value 7"):
        cm.update(torch.zeros(4, dtype=torch.long), torch.tensor([0, 1, 7, 2]))
    with pytest.raises(ValueError, match="prediction value 3"):
        cm.update(torch.tensor([0, 3, 1, 1]), torch.tensor([0, 1, 2, 2]))
    with pytest.raises(TypeError, match="integer"):
        cm.update(torch.zeros(4), torch.zeros(4, dtype=torch.long))
    assert int(cm.matrix.sum()) == 0  # failed updates leave the matrix untouched
    # an out-of-range prediction where the target is ignored is not counted and not an error
    cm.update(torch.tensor([9, 1]), torch.tensor([IGNORE_INDEX, 1]))
    assert cm.matrix.tolist() == [[0, 0, 0], [0, 1, 0], [0, 0, 0]]


def test_accepts_numpy_and_any_shape():
    pred = np.array([[[0, 1], [1, 1]]], dtype=np.uint8)
    target = np.array([[[0, 1], [0, IGNORE_INDEX]]], dtype=np.uint8)
    cm = ConfusionMatrix(2)
    cm.update(pred, target)
    assert cm.matrix.tolist() == [[1, 1], [0, 1]]


def test_all_reduce_without_distributed_is_a_noop():
    cm = ConfusionMatrix(2)
    cm.update(torch.tensor([0, 1, 1]), torch.tensor([0, 1, 0]))
    before = cm.matrix.clone()
    assert cm.all_reduce() is cm and torch.equal(cm.matrix, before)


def _all_reduce_worker(rank: int, world: int, init_file: str, out_file: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        cm = ConfusionMatrix(3)
        # rank r counts r + 1 pixels of (target r, pred 0)
        cm.update(torch.zeros(rank + 1, dtype=torch.long), torch.full((rank + 1,), rank))
        cm.all_reduce()
        if rank == 0:
            torch.save(cm.matrix, out_file)
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_all_reduce_sums_over_ranks(tmp_path):
    import torch.multiprocessing as mp

    out = tmp_path / "m.pt"
    mp.spawn(_all_reduce_worker, args=(2, str(tmp_path / "init"), str(out)), nprocs=2, join=True)
    assert torch.load(out).tolist() == [[1, 0, 0], [2, 0, 0], [0, 0, 0]]


# --------------------------------------------------------------------------- binary / EM


def test_pixel_error_and_foreground_iou():
    target = np.array([[1, 1, 0], [0, 1, IGNORE_INDEX]])
    pred = np.array([[1, 0, 0], [1, 1, 1]])
    assert pixel_error(pred, target) == pytest.approx(2 / 5)
    assert foreground_iou(pred, target) == pytest.approx(2 / 4)  # the ignored pixel is in neither
    assert foreground_iou(pred, target, foreground=0) == pytest.approx(1 / 3)
    assert pixel_error(torch.from_numpy(pred), torch.from_numpy(target)) == pytest.approx(2 / 5)
    assert math.isnan(foreground_iou(np.zeros((2, 2), int), np.zeros((2, 2), int)))


def _cells(*rects, shape=(8, 8)):
    """A binary map (1 = cell, 0 = membrane) with the given filled rectangles (r0, r1, c0, c1)."""
    m = np.zeros(shape, np.int64)
    for r0, r1, c0, c1 in rects:
        m[r0:r1, c0:c1] = 1
    return m


def test_rand_error_identical_is_zero():
    gt = _cells((1, 4, 1, 7), (5, 7, 1, 3), (5, 7, 4, 7))
    s = rand_scores(gt, gt)
    assert s["error"] == 0.0 and s["precision"] == 1.0 and s["recall"] == 1.0
    # relabelling segments or moving only membrane pixels outside the cells changes nothing
    assert rand_error(gt, gt.copy()) == 0.0


def test_rand_error_merge_hand_computed():
    # GT: two 3x3 cells separated by a membrane column; prediction: one 3x7 cell over both
    gt = _cells((1, 4, 1, 4), (1, 4, 5, 8))
    pred = _cells((1, 4, 1, 8))
    # n = 18 GT-cell pixels, p = [[9/18], [9/18]]: sum_AB = 2 * (1/2)^2 = 1/2, sum_A = 1/2, sum_B = 1
    s = rand_scores(pred, gt)
    assert s["n_pixels"] == 18
    assert s["precision"] == pytest.approx(1 / 2) and s["recall"] == pytest.approx(1.0)
    assert s["f_score"] == pytest.approx(2 / 3) and s["error"] == pytest.approx(1 / 3)
    # unequal cells a = 6, b = 3 (n = 9): precision = (36 + 9) / 81 = 5/9, F = 2P / (P + 1) = 5/7
    gt2 = _cells((1, 3, 1, 4), (5, 6, 1, 4))
    pred2 = _cells((1, 6, 1, 4))
    assert rand_error(pred2, gt2) == pytest.approx(1 - 5 / 7)


def test_rand_error_split_hand_computed():
    # GT: one 3x3 cell. Prediction: its left and right columns as two cells, the middle column
    # called membrane (3 singleton pixels). n = 9: sum_AB = sum_B = (3^2 + 3^2 + 3) / 81 = 21/81,
    # sum_A = 1 -> precision 1, recall 7/27, F = 7/17.
    gt = _cells((2, 5, 2, 5))
    pred = _cells((2, 5, 2, 3), (2, 5, 4, 5))
    s = rand_scores(pred, gt)
    assert s["precision"] == pytest.approx(1.0) and s["recall"] == pytest.approx(7 / 27)
    assert s["error"] == pytest.approx(10 / 17)
    # a split with no boundary pixels inside the cell is impossible with connected components:
    # touching foreground is one component, so predicting the whole cell is exact
    assert rand_error(_cells((2, 5, 2, 5)), gt) == 0.0


def test_rand_error_excludes_gt_membrane_and_ignore():
    gt = _cells((1, 4, 1, 4))
    pred = gt.copy()
    pred[0, :] = 1  # predicted cell pixels over GT membrane: excluded from the count ...
    assert rand_scores(pred, gt)["n_pixels"] == 9
    # ... but they still connect predicted components: a cell grown over the membrane row merges
    gt2 = _cells((1, 4, 1, 3), (1, 4, 4, 6))
    pred2 = gt2.copy()
    pred2[0, 1:6] = 1  # a bridge through GT membrane joins the two cells
    assert rand_error(gt2, gt2) == 0.0
    assert rand_error(pred2, gt2) == pytest.approx(1 / 3)  # two equal cells merged, as above
    # ignore pixels in the target behave like membrane (not counted, and they separate GT cells)
    gt3 = _cells((1, 4, 1, 6))
    gt3[1:4, 3] = IGNORE_INDEX
    s = rand_scores(_cells((1, 4, 1, 6)), gt3)
    assert s["n_pixels"] == 12 and s["error"] == pytest.approx(1 / 3)  # one predicted cell over two GT cells
    # a GT without cells has no score
    assert math.isnan(rand_error(pred, np.zeros_like(gt)))


def _brute_force_rand(pred: np.ndarray, gt: np.ndarray, connectivity: int) -> tuple[float, float]:
    """Precision and recall by counting ordered pixel pairs (with replacement) over GT-cell pixels."""
    from scipy import ndimage

    st = ndimage.generate_binary_structure(2, connectivity)
    gs, _ = ndimage.label(gt == 1, structure=st)
    ps, _ = ndimage.label(pred == 1, structure=st)
    idx = np.flatnonzero(gs.ravel() > 0)
    g, p = gs.ravel()[idx], ps.ravel()[idx]
    same_g = g[:, None] == g[None, :]
    same_p = ((p[:, None] == p[None, :]) & (p[:, None] > 0)) | np.eye(len(idx), dtype=bool)  # boundary: singletons
    both = (same_g & same_p).sum()
    return both / same_p.sum(), both / same_g.sum()


@pytest.mark.parametrize("connectivity", [1, 2])
def test_rand_scores_match_pair_counting_on_random_maps(connectivity):
    rng = np.random.default_rng(connectivity)
    for _ in range(5):
        gt = (rng.random((14, 15)) < 0.7).astype(np.int64)
        pred = np.where(rng.random(gt.shape) < 0.85, gt, 1 - gt)
        s = rand_scores(pred, gt, connectivity=connectivity)
        prec, rec = _brute_force_rand(pred, gt, connectivity)
        assert s["precision"] == pytest.approx(prec, rel=1e-12) and s["recall"] == pytest.approx(rec, rel=1e-12)
        assert s["error"] == pytest.approx(1 - 2 * prec * rec / (prec + rec), rel=1e-12)


def test_rand_connectivity_matters_for_diagonals():
    gt = np.array([[1, 0], [0, 1]] * 1)
    gt = np.pad(gt, 1)
    # 4-connected: two cells; 8-connected: one cell. The same map scores 0 against itself either way,
    # but predicting one cell where 4-connectivity sees two is a merge only under connectivity=1.
    merged = gt.copy()
    merged[1, 2] = 1  # joins the diagonal pixels through a predicted cell pixel on GT membrane
    assert rand_error(merged, gt, connectivity=1) == pytest.approx(1 / 3)
    assert rand_error(merged, gt, connectivity=2) == 0.0
