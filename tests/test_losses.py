"""Losses: the loss-spec grammar, every term on void pixels, and the Lovasz-softmax against smp's."""

from __future__ import annotations

import pytest
import segmentation_models_pytorch as smp
import torch
import torch.nn.functional as F

from workbench.classes import IGNORE_INDEX
from workbench.training.losses import LOSSES, CrossEntropy, LovaszSoftmax, build_loss, parse_loss


def _batch(seed: int, b: int = 2, c: int = 5, h: int = 12, w: int = 16, absent: int | None = 3, void: float = 0.2):
    g = torch.Generator().manual_seed(seed)
    logits = (3 * torch.randn(b, c, h, w, generator=g)).requires_grad_()
    target = torch.randint(0, c, (b, h, w), generator=g)
    if absent is not None:
        target[target == absent] = (absent + 1) % c
    target[torch.rand(b, h, w, generator=g) < void] = IGNORE_INDEX
    return logits, target


def _value_and_grad(loss, logits, target):
    logits.grad = None
    value = loss(logits, target)
    value.backward()
    return value.detach(), logits.grad.clone()


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("shape", [(2, 5, 12, 16), (1, 11, 9, 7), (3, 2, 8, 8)])
def test_lovasz_matches_smp_in_value_and_gradient(seed, shape):
    b, c, h, w = shape
    logits, target = _batch(seed, b, c, h, w, absent=1 if c > 2 else None)
    ref = smp.losses.LovaszLoss("multiclass", ignore_index=IGNORE_INDEX)
    want, want_grad = _value_and_grad(lambda x, y: ref(x.float(), y), logits, target)
    got, got_grad = _value_and_grad(LovaszSoftmax(IGNORE_INDEX), logits, target)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got_grad, want_grad, rtol=1e-4, atol=1e-6)


def test_lovasz_with_tied_errors_matches_smp():
    # equal logits everywhere: every error of a class ties; the Lovasz extension does not depend on the order of ties
    logits = torch.zeros(2, 4, 6, 6, requires_grad=True)
    target = torch.arange(72).reshape(2, 6, 6) % 4
    ref = smp.losses.LovaszLoss("multiclass", ignore_index=IGNORE_INDEX)
    torch.testing.assert_close(LovaszSoftmax()(logits, target), ref(logits, target))


def test_lovasz_is_zero_for_a_confident_right_answer_and_large_for_a_wrong_one():
    target = torch.randint(0, 3, (2, 8, 8), generator=torch.Generator().manual_seed(0))
    right = 50 * F.one_hot(target, 3).permute(0, 3, 1, 2).float()
    assert LovaszSoftmax()(right, target).item() == pytest.approx(0.0, abs=1e-6)
    wrong = 50 * F.one_hot((target + 1) % 3, 3).permute(0, 3, 1, 2).float()
    assert LovaszSoftmax()(wrong, target).item() == pytest.approx(1.0, abs=1e-3)  # every error 1: the Jaccard loss of missing everything


@pytest.mark.parametrize("name", LOSSES)
def test_every_loss_term_is_finite_and_backpropagates_with_void_pixels(name):
    logits, target = _batch(0)
    loss = build_loss(name)(logits, target)
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0


def test_the_lovasz_term_over_only_void_pixels_is_a_zero_that_sums_with_the_others():
    logits, target = _batch(1, void=1.0)
    assert (target == IGNORE_INDEX).all()
    ref = smp.losses.LovaszLoss("multiclass", ignore_index=IGNORE_INDEX)(logits.float(), target)
    assert ref.numel() == 0  # smp's: an empty tensor, which turns a sum of terms empty too
    loss = build_loss("0.5*dice+lovasz")(logits, target)
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    assert LovaszSoftmax()(logits, target).item() == 0.0


def test_a_loss_spec_is_the_weighted_sum_of_its_terms():
    logits, target = _batch(2)
    total = build_loss("ce+0.5*lovasz+.25*dice")(logits, target)
    ce = CrossEntropy()(logits, target)
    lov = LovaszSoftmax()(logits, target)
    dice = smp.losses.DiceLoss("multiclass", from_logits=True, ignore_index=IGNORE_INDEX)(logits.float(), target)
    torch.testing.assert_close(total, ce + 0.5 * lov + 0.25 * dice)


def test_parse_loss_and_its_errors():
    assert parse_loss("ce") == [(1.0, "ce")]
    assert parse_loss(" ce + 0.5*lovasz ") == [(1.0, "ce"), (0.5, "lovasz")]
    for bad in ["", "ce+", "crossentropy", "ce+-1*dice", "2*"]:
        with pytest.raises(ValueError, match="valid losses"):
            parse_loss(bad)


def test_cross_entropy_with_a_weight_map_by_hand():
    logits = torch.zeros(1, 2, 1, 3)  # uniform: every pixel's cross-entropy is log 2
    target = torch.tensor([[[0, 1, IGNORE_INDEX]]])
    weight_map = torch.tensor([[[1.0, 3.0, 100.0]]])
    got = CrossEntropy()(logits, target, weight_map)
    # sum over pixels of weight * ce (the void pixel's ce is 0) over the two valid pixels
    assert got.item() == pytest.approx((1.0 + 3.0) * torch.log(torch.tensor(2.0)).item() / 2)
