"""Inference optimisations that keep the numbers: Conv-BN folding and memory format.

``fold_conv_bn`` finds every BatchNorm that directly consumes a convolution's
output by watching one forward pass (no graph tracing, so it works on any
module, timm's and smp's included), folds the normalisation into the
convolution's weights (``torch.nn.utils.fusion.fuse_conv_bn_eval``) and removes
the BatchNorm (keeping timm's fused activation where a ``BatchNormAct2d`` holds
one). The folded model is checked against the original on the example input:
if the outputs differ (a convolution output that also fed something else), the
original is kept. Whether an optimised path still gives the same labels is
measured in :mod:`workbench.inference.parity`.
"""

from __future__ import annotations

import copy

import torch
import torch.nn as nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

__all__ = ["find_conv_bn_pairs", "fold_conv_bn", "optimize_for_inference"]


@torch.no_grad()
def find_conv_bn_pairs(model: nn.Module, example: torch.Tensor) -> list[tuple[str, str]]:
    """``(conv_name, bn_name)`` for every BatchNorm2d whose input is exactly a Conv2d's output, in one forward pass."""
    model.eval()
    produced: dict[int, str] = {}
    keep: list[torch.Tensor] = []  # hold conv outputs so their ids are not reused during the pass
    pairs: list[tuple[str, str]] = []
    hooks = []
    modules = dict(model.named_modules())

    def conv_hook(name):
        def hook(_m, _inp, out):
            produced[id(out)] = name
            keep.append(out)

        return hook

    def bn_hook(name):
        def hook(_m, inp, _out):
            src = produced.get(id(inp[0]))
            if src is not None:
                pairs.append((src, name))

        return hook

    for name, m in modules.items():
        if type(m) is nn.Conv2d:
            hooks.append(m.register_forward_hook(conv_hook(name)))
        elif isinstance(m, nn.BatchNorm2d) and m.track_running_stats and m.running_mean is not None:
            hooks.append(m.register_forward_hook(bn_hook(name)))
    try:
        model(example)
    finally:
        for h in hooks:
            h.remove()
    # a convolution reached twice (weight sharing) or a BN fed by two convs cannot be folded safely
    convs = [c for c, _ in pairs]
    bns = [b for _, b in pairs]
    return [(c, b) for c, b in dict.fromkeys(pairs) if convs.count(c) == 1 and bns.count(b) == 1]


def _set(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, attr = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, attr, module)


def _bn_replacement(bn: nn.Module) -> nn.Module:
    """What stays of a BatchNorm after folding: nothing, or the activation timm fused into it."""
    act = getattr(bn, "act", None)
    if isinstance(act, nn.Module) and not isinstance(act, nn.Identity):
        drop = getattr(bn, "drop", None)
        return nn.Sequential(drop, act) if isinstance(drop, nn.Module) and not isinstance(drop, nn.Identity) else act
    return nn.Identity()


@torch.no_grad()
def fold_conv_bn(model: nn.Module, example: torch.Tensor, atol: float = 1e-3) -> tuple[nn.Module, int]:
    """Fold BatchNorms into the convolutions that feed them (eval mode).

    Args:
        model: any module; it is not modified (a folded copy is returned).
        example: an input for the pairing pass and the parity check.
        atol: largest allowed absolute difference of the outputs (fp32).

    Returns:
        ``(model, n_folded)``: the folded copy, or the original with 0 if the check failed.
    """
    model.eval()
    pairs = find_conv_bn_pairs(model, example)
    if not pairs:
        return model, 0
    folded = copy.deepcopy(model).eval()
    for conv_name, bn_name in pairs:
        conv = folded.get_submodule(conv_name)
        bn = folded.get_submodule(bn_name)
        _set(folded, conv_name, fuse_conv_bn_eval(conv, bn))
        _set(folded, bn_name, _bn_replacement(bn))
    ref = model(example)
    out = folded(example)
    if ref.shape != out.shape or not torch.allclose(ref, out, atol=atol, rtol=1e-3):
        return model, 0
    return folded, len(pairs)


def optimize_for_inference(model: nn.Module, example: torch.Tensor, *, fold: bool = True, channels_last: bool = True) -> tuple[nn.Module, dict]:
    """Eval mode, Conv-BN folding (checked), channels_last. Returns the model and what was done."""
    model = model.eval()
    info = {"conv_bn_folded": 0, "channels_last": channels_last}
    if fold:
        model, info["conv_bn_folded"] = fold_conv_bn(model, example)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model, info
