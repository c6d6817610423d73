"""Segmentation losses: cross-entropy, Dice, Focal, Lovasz and weighted sums of them.

Dice and Focal come from ``segmentation_models_pytorch.losses``. Lovasz-softmax is
smp's algorithm with the classes sorted in one batched call instead of a Python
loop over them: the same value and gradient, forward + backward 1.71x faster at
8x224x224 and 1.25x at 8x352x480 on 2 CPU cores (``workbench bench --losses``). Cross-entropy uses ``torch.nn.functional.cross_entropy``, because smp's
``SoftCrossEntropyLoss`` takes neither per-class weights (median-frequency
balancing, Long et al.) nor per-pixel weight maps (U-Net border weighting,
Ronneberger et al.), which the workbench needs.

A loss spec is a ``+``-separated sum of optionally weighted terms:
``"ce"``, ``"ce+dice"``, ``"ce+0.5*lovasz"``, ``"0.7*focal+0.3*dice"``.

:class:`DistillationLoss` (``workbench distill``) adds the temperature-scaled KL divergence to a
teacher's soft labels (Hinton et al. 2015) to any of them.
"""

from __future__ import annotations

import re

import segmentation_models_pytorch as smp
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..classes import IGNORE_INDEX

__all__ = ["LOSSES", "CrossEntropy", "LovaszSoftmax", "CombinedLoss", "DistillationLoss", "kd_kl", "parse_loss", "build_loss"]

LOSSES = ("ce", "dice", "focal", "lovasz")
_TERM = re.compile(r"^\s*(?:(\d+(?:\.\d*)?|\.\d+)\s*\*\s*)?([a-z_]+)\s*$")


class CrossEntropy(nn.Module):
    """Cross-entropy with ignore index, optional class weights and optional per-pixel weight map.

    With a weight map ``w`` (B, H, W) the loss is ``sum(w * ce) / (number of valid pixels)``:
    the paper's weighted sum, normalised so its scale does not depend on image size.
    """

    def __init__(self, class_weights: torch.Tensor | None = None, ignore_index: int = IGNORE_INDEX) -> None:
        super().__init__()
        self.ignore_index = ignore_index
        self.register_buffer("class_weights", None if class_weights is None else torch.as_tensor(class_weights, dtype=torch.float32))

    def forward(self, logits: torch.Tensor, target: torch.Tensor, weight_map: torch.Tensor | None = None) -> torch.Tensor:
        logits = logits.float()
        if weight_map is None:
            return F.cross_entropy(logits, target, weight=self.class_weights, ignore_index=self.ignore_index)
        ce = F.cross_entropy(logits, target, weight=self.class_weights, ignore_index=self.ignore_index, reduction="none")  # (B, H, W)
        valid = (target != self.ignore_index).sum().clamp(min=1)
        return (ce * weight_map).sum() / valid


class LovaszSoftmax(nn.Module):
    """Lovasz-softmax loss (Berman, Rannen Triki, Blaschko, CVPR 2018), a surrogate of each class's IoU.

    Over the batch's non-void pixels and averaged over the classes present in the target, as
    ``smp.losses.LovaszLoss("multiclass")`` (per_image=False), which it matches in value and gradient.
    smp sorts each class's errors in a Python loop; here the (classes, pixels) errors are sorted in one
    call, which spreads the rows over the cores. A batch of only void pixels gives 0 with zero gradients
    (smp returns an empty tensor there, which cannot be added to the other terms).
    """

    def __init__(self, ignore_index: int = IGNORE_INDEX) -> None:
        super().__init__()
        self.ignore_index = ignore_index

    def forward(self, logits: torch.Tensor, target: torch.Tensor, weight_map: torch.Tensor | None = None) -> torch.Tensor:
        c = logits.shape[1]
        probas = logits.float().softmax(1).movedim(1, -1).reshape(-1, c)  # (P, C)
        labels = target.reshape(-1)
        valid = labels != self.ignore_index
        probas, labels = probas[valid], labels[valid]
        if labels.numel() == 0:
            return logits.float().sum() * 0.0
        fg = labels.unsqueeze(0) == torch.arange(c, device=labels.device).unsqueeze(1)  # (C, P)
        present = fg.any(1)
        fg = fg[present].to(probas.dtype)  # (K, P), the K classes present
        errors = (fg - probas.t()[present]).abs()
        errors_sorted, perm = errors.sort(dim=1, descending=True)
        fg_sorted = fg.gather(1, perm)
        # Alg. 1 of the paper: the Jaccard loss after each prefix of the sorted pixels, differenced
        gts = fg_sorted.sum(1, keepdim=True)
        jaccard = 1.0 - (gts - fg_sorted.cumsum(1)) / (gts + (1.0 - fg_sorted).cumsum(1))
        grad = torch.cat([jaccard[:, :1], jaccard[:, 1:] - jaccard[:, :-1]], dim=1)
        return (errors_sorted * grad).sum(1).mean()


class _PixelAgnostic(nn.Module):
    """Adapts an smp loss to the ``(logits, target, weight_map=None)`` signature (weight maps do not apply)."""

    def __init__(self, loss: nn.Module) -> None:
        super().__init__()
        self.loss = loss

    def forward(self, logits: torch.Tensor, target: torch.Tensor, weight_map: torch.Tensor | None = None) -> torch.Tensor:
        return self.loss(logits.float(), target)


class CombinedLoss(nn.Module):
    """``sum_i coef_i * loss_i(logits, target, weight_map)``; remembers the spec and its terms."""

    def __init__(self, terms: list[tuple[float, str, nn.Module]], spec: str) -> None:
        super().__init__()
        self.coefs = [c for c, _, _ in terms]
        self.names = [n for _, n, _ in terms]
        self.terms = nn.ModuleList(m for _, _, m in terms)
        self.spec = spec

    def forward(self, logits: torch.Tensor, target: torch.Tensor, weight_map: torch.Tensor | None = None) -> torch.Tensor:
        total = logits.new_zeros((), dtype=torch.float32)
        for coef, term in zip(self.coefs, self.terms):
            total = total + coef * term(logits, target, weight_map)
        return total


def parse_loss(spec: str) -> list[tuple[float, str]]:
    """``"ce+0.5*dice"`` -> ``[(1.0, "ce"), (0.5, "dice")]``; raises ValueError listing the valid losses."""
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"loss spec must be a non-empty string like 'ce' or 'ce+0.5*dice'; valid losses: {', '.join(LOSSES)}")
    terms = []
    for part in spec.split("+"):
        m = _TERM.match(part)
        if not m or m.group(2) not in LOSSES:
            raise ValueError(f"bad loss term {part.strip()!r} in {spec!r}; valid losses: {', '.join(LOSSES)}, combined as e.g. 'ce+0.5*dice'")
        terms.append((float(m.group(1)) if m.group(1) else 1.0, m.group(2)))
    return terms


def build_loss(spec: str = "ce", *, class_weights=None, ignore_index: int = IGNORE_INDEX) -> CombinedLoss:
    """Build the loss for ``spec``; ``class_weights`` (C,) apply to the cross-entropy term."""
    terms = []
    for coef, name in parse_loss(spec):
        if name == "ce":
            mod: nn.Module = CrossEntropy(None if class_weights is None else torch.as_tensor(class_weights, dtype=torch.float32), ignore_index)
        elif name == "dice":
            mod = _PixelAgnostic(smp.losses.DiceLoss("multiclass", from_logits=True, ignore_index=ignore_index))
        elif name == "focal":
            mod = _PixelAgnostic(smp.losses.FocalLoss("multiclass", ignore_index=ignore_index))
        else:
            mod = LovaszSoftmax(ignore_index)
        terms.append((coef, name, mod))
    return CombinedLoss(terms, spec)


def kd_kl(logits: torch.Tensor, teacher_logp: torch.Tensor, target: torch.Tensor, temperature: float, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Mean over the non-void pixels of ``KL(softmax(teacher / T) || softmax(student / T))``.

    Args:
        logits: the student's (B, C, H, W).
        teacher_logp: the teacher's (B, C, H, W) logits or log-probabilities (the same after the softmax).
        target: (B, H, W) labels; pixels equal to ``ignore_index`` (void, padding) are left out.
        temperature: T > 0; larger T softens both distributions.

    A batch without a non-void pixel gives 0 (with a zero gradient).
    """
    t = float(temperature)
    log_ps = F.log_softmax(logits.float() / t, dim=1)
    log_pt = F.log_softmax(teacher_logp.float() / t, dim=1)
    kl = (log_pt.exp() * (log_pt - log_ps)).sum(1)  # (B, H, W)
    valid = target != ignore_index
    return (kl * valid).sum() / valid.sum().clamp(min=1)


class DistillationLoss(nn.Module):
    """``alpha * T^2 * KL(teacher_T || student_T) + (1 - alpha) * ground_truth_loss``, void pixels ignored in both.

    The ``T^2`` keeps the soft term's gradients on the scale of the hard one's as T changes (Hinton et
    al. 2015). ``alpha = 0`` is the ground-truth loss alone (the KL is not computed), ``alpha = 1`` the
    teacher alone. ``ground_truth`` is any loss of :func:`build_loss` (class and border weights apply to it).
    """

    def __init__(self, ground_truth: nn.Module, *, alpha: float, temperature: float, ignore_index: int = IGNORE_INDEX) -> None:
        super().__init__()
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1] (the soft term's share), got {alpha}")
        if not temperature > 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        self.ground_truth = ground_truth
        self.alpha, self.temperature, self.ignore_index = float(alpha), float(temperature), ignore_index

    def forward(self, logits: torch.Tensor, target: torch.Tensor, teacher_logp: torch.Tensor, weight_map: torch.Tensor | None = None) -> torch.Tensor:
        if teacher_logp.shape != logits.shape:
            raise ValueError(f"teacher map {tuple(teacher_logp.shape)} does not match the student's logits {tuple(logits.shape)}")
        total = logits.new_zeros((), dtype=torch.float32)
        if self.alpha < 1.0:
            total = total + (1.0 - self.alpha) * self.ground_truth(logits, target, weight_map)
        if self.alpha > 0.0:
            total = total + self.alpha * self.temperature**2 * kd_kl(logits, teacher_logp, target, self.temperature, self.ignore_index)
        return total
