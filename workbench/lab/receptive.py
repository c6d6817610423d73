"""Receptive fields: which input pixels one output pixel can see (theoretical) and which it uses (effective).

The *theoretical* receptive field is every input pixel connected to the output pixel through the network's
layers; it grows by ``(k - 1) * dilation * jump`` per k x k layer (``jump``: the product of the strides before
it), so 8 plain 3x3 layers see 17 x 17 pixels and a 1/32 encoder sees hundreds. It is measured here, not
derived by hand, so skips, branches and any plugin's layers count: the gradient of the output pixel with
respect to the input is taken through a copy of the network in which every convolution averages its inputs
(positive weights, no bias), normalisations are identities and max-pooling is average pooling, on a constant
input. Nothing can then cancel or be switched off, and the gradient is non-zero exactly on the connected
pixels (float32 holds the smallest corner weights of a few dozen layers). A network is translation-equivariant
up to its strides, so the field is measured once at the centre of an input size (:func:`theoretical_extent`)
and moved to the pixel asked about, which is exact up to the stride phase (a few pixels) and to the borders.

The *effective* receptive field (Luo et al., 2016) is the same gradient through the trained network on the
user's image: how much each input pixel moves the output pixel's winning logit. It is much smaller than the
theoretical one and roughly Gaussian: what a model can see is not what it looks at.

    box = theoretical_receptive_field(model, (360, 480), (180, 240))      # (top, left, bottom, right), inclusive
    rf = receptive_field(model, x, (100, 50))                             # both, for a normalised input batch
    erf = effective_receptive_field(model, x, (180, 240))                 # (H, W) gradient magnitude
    mass_radius(erf, (180, 240), 0.5)                                     # half the gradient within this radius
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn

__all__ = ["ReceptiveField", "theoretical_receptive_field", "theoretical_extent", "shifted_box", "effective_receptive_field", "mass_radius", "receptive_field"]

_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.SyncBatchNorm, nn.GroupNorm, nn.LayerNorm, nn.InstanceNorm2d, nn.LocalResponseNorm)


@dataclass(frozen=True)
class ReceptiveField:
    """One output pixel's receptive fields on one input.

    ``box``: the theoretical receptive field clipped to the input, ``(top, left, bottom, right)`` inclusive;
    ``covers_image``: the box reaches every border (the field is at least the image); ``erf``: the effective
    field, (H, W) gradient magnitudes summed over the input channels; ``radius50``/``radius90``: the half side
    of the smallest square around the pixel that holds 50% / 90% of the effective field's mass.
    """

    point: tuple[int, int]
    box: tuple[int, int, int, int]
    covers_image: bool
    erf: np.ndarray
    radius50: int
    radius90: int

    @property
    def size(self) -> tuple[int, int]:
        """(height, width) of the theoretical field inside the input."""
        return self.box[2] - self.box[0] + 1, self.box[3] - self.box[1] + 1


def _averaging_copy(model: nn.Module) -> nn.Module:
    """A float32 copy of ``model`` whose layers average their inputs (see the module docstring)."""
    proxy = copy.deepcopy(model).float().eval()
    for name, module in list(proxy.named_modules()):
        if not name:
            continue
        parent = proxy.get_submodule(name.rpartition(".")[0]) if "." in name else proxy
        leaf = name.rpartition(".")[2]
        if isinstance(module, _NORMS):
            setattr(parent, leaf, nn.Identity())
        elif isinstance(module, nn.MaxPool2d):
            setattr(parent, leaf, nn.AvgPool2d(module.kernel_size, module.stride, module.padding, ceil_mode=module.ceil_mode, count_include_pad=False))
    with torch.no_grad():
        for module in proxy.modules():
            if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
                fan_in = module.weight[0].numel() if not isinstance(module, nn.ConvTranspose2d) else module.weight.shape[0] * module.weight[0, 0].numel()
                module.weight.fill_(1.0 / max(fan_in, 1))
                if module.bias is not None:
                    module.bias.zero_()
    return proxy


def _output_gradient(model: nn.Module, x: torch.Tensor, point: tuple[int, int], channel: int | None) -> tuple[np.ndarray, int]:
    """|d out[channel, y, x] / d input| summed over input channels, (H, W); ``channel`` None: the winning class."""
    x = x.detach().clone().requires_grad_(True)
    out = model(x)
    if out.shape[-2:] != x.shape[-2:]:
        raise ValueError(f"the model's output is {tuple(out.shape[-2:])}, its input {tuple(x.shape[-2:])}: a receptive field needs full-size logits")
    y, xx = point
    if channel is None:
        channel = int(out[0, :, y, xx].argmax())
    out[0, channel, y, xx].backward()
    return x.grad[0].abs().sum(0).detach().cpu().numpy(), channel


def theoretical_receptive_field(model: nn.Module, input_size: tuple[int, int], point: tuple[int, int], in_chans: int = 3) -> tuple[int, int, int, int]:
    """The input pixels connected to output pixel ``point`` (y, x) for an input of ``input_size`` (H, W):
    their bounding box ``(top, left, bottom, right)``, inclusive, clipped to the input."""
    h, w = input_size
    _check_point(point, input_size)
    proxy = _averaging_copy(model)
    grad, _ = _output_gradient(proxy, torch.ones(1, in_chans, h, w), point, 0)
    rows, cols = np.nonzero(grad > 0)
    if rows.size == 0:
        raise ValueError("no input pixel reaches this output pixel (a network without connections?)")
    return int(rows.min()), int(cols.min()), int(rows.max()), int(cols.max())


def theoretical_extent(model: nn.Module, input_size: tuple[int, int], in_chans: int = 3) -> tuple[int, int, int, int]:
    """How far the theoretical field reaches from the centre pixel of an input of ``input_size``:
    ``(up, left, down, right)`` in pixels (clipped by the input's borders)."""
    h, w = input_size
    cy, cx = h // 2, w // 2
    top, left, bottom, right = theoretical_receptive_field(model, input_size, (cy, cx), in_chans)
    return cy - top, cx - left, bottom - cy, right - cx


def shifted_box(extent: tuple[int, int, int, int], point: tuple[int, int], input_size: tuple[int, int]) -> tuple[tuple[int, int, int, int], bool]:
    """The field of :func:`theoretical_extent` moved to ``point`` and clipped to the input: ``(box, covers_image)``.
    An extent that was clipped at the centre reaches at least that far, so it is taken as unbounded."""
    (h, w), (y, x) = input_size, point
    up, left, down, right = extent
    unbounded = (up >= h // 2, left >= w // 2, down >= h - 1 - h // 2, right >= w - 1 - w // 2)
    box = (0 if unbounded[0] else max(y - up, 0), 0 if unbounded[1] else max(x - left, 0),
           h - 1 if unbounded[2] else min(y + down, h - 1), w - 1 if unbounded[3] else min(x + right, w - 1))
    return box, box == (0, 0, h - 1, w - 1)


def effective_receptive_field(model: nn.Module, x: torch.Tensor, point: tuple[int, int], channel: int | None = None) -> np.ndarray:
    """The trained network's gradient magnitude of output pixel ``point``'s logit (``channel``; default: the
    class it predicts there) with respect to each input pixel of ``x`` (1, C, H, W): an (H, W) float map."""
    _check_point(point, tuple(x.shape[-2:]))
    was_training = model.training
    model.eval()
    try:
        grad, _ = _output_gradient(model, x.float(), point, channel)
    finally:
        model.train(was_training)
    return grad


def mass_radius(erf: np.ndarray, point: tuple[int, int], fraction: float) -> int:
    """The half side r of the smallest square [y-r, y+r] x [x-r, x+r] holding ``fraction`` of ``erf``'s mass."""
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    e = np.asarray(erf, dtype=np.float64)
    total = e.sum()
    if total <= 0:
        return 0
    y, x = point
    h, w = e.shape
    c = np.pad(e, ((1, 0), (1, 0))).cumsum(0).cumsum(1)  # integral image
    for r in range(max(h, w) + 1):
        t, lft, b, rgt = max(y - r, 0), max(x - r, 0), min(y + r, h - 1), min(x + r, w - 1)
        if c[b + 1, rgt + 1] - c[t, rgt + 1] - c[b + 1, lft] + c[t, lft] >= fraction * total - 1e-12 * total:
            return r
    return max(h, w)


def receptive_field(model: nn.Module, x: torch.Tensor, point: tuple[int, int], extent: tuple[int, int, int, int] | None = None) -> ReceptiveField:
    """Both fields of output pixel ``point`` (y, x) for the input batch ``x`` (1, C, H, W), already normalised
    as the model expects: :class:`ReceptiveField`. ``extent``: :func:`theoretical_extent` for this model and
    input size, if known (it depends on the size only, so a caller can keep it across clicks)."""
    size = tuple(x.shape[-2:])
    _check_point(point, size)
    if extent is None:
        extent = theoretical_extent(model, size, x.shape[1])
    box, covers = shifted_box(extent, point, size)
    erf = effective_receptive_field(model, x, point)
    return ReceptiveField(tuple(point), box, covers, erf, mass_radius(erf, point, 0.5), mass_radius(erf, point, 0.9))


def _check_point(point: tuple[int, int], size: tuple[int, int]) -> None:
    y, x = point
    if not (0 <= y < size[0] and 0 <= x < size[1]):
        raise ValueError(f"pixel {point} is outside the {size[0]}x{size[1]} input")
