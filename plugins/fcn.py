"""Fully Convolutional Networks: FCN-32s, FCN-16s, FCN-8s.

Long, Shelhamer, Darrell, "Fully Convolutional Networks for Semantic
Segmentation", CVPR 2015 / TPAMI 2017. A classification network becomes a
dense predictor by scoring every position of its coarsest feature map and
upsampling the scores with a learned, bilinear-initialised transposed
convolution; the 16s/8s variants add scores from finer layers (zero-initialised)
after 2x upsampling, so that fine detail comes back.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from workbench import DEFAULT_ENCODER, ConvBNAct, SegmentationModel, TimmEncoder, make_upsample, register_architecture

__all__ = ["FCNDecoder"]

_EXPLANATION_COMMON = (
    "FCN turns an image classifier into a segmenter: the classifier's last, coarsest feature map "
    "(1/32 of the input) is scored for every class at every position by a 1x1 convolution, and that small "
    "score map is blown back up to the image size by a learned upsampling layer that starts out as "
    "plain bilinear interpolation."
)


class FCNDecoder(nn.Module):
    """Score the coarsest map, then fuse finer score maps after 2x upsampling (Long et al.).

    Args:
        channels, reductions: the encoder's feature pyramid.
        num_classes: number of class score channels.
        n_skips: 0 (FCN-32s), 1 (FCN-16s) or 2 (FCN-8s).
        upsample: upsampling method for every step (the paper: transposed, bilinear init).
        dropout: dropout before the coarse score layer (the paper's fc7 dropout).
    """

    def __init__(self, channels: list[int], reductions: list[int], num_classes: int, n_skips: int, upsample, dropout: float = 0.1) -> None:
        super().__init__()
        deep_c, deep_r = channels[-1], reductions[-1]
        # the "fully connected" layers of the classifier, as convolutions (torchvision's FCNHead shape)
        self.fc = nn.Sequential(ConvBNAct(deep_c, max(deep_c // 4, num_classes)), nn.Dropout2d(dropout))
        self.score = nn.Conv2d(max(deep_c // 4, num_classes), num_classes, 1)
        self.skip_index: list[int] = []
        self.skip_scores = nn.ModuleList()
        self.ups = nn.ModuleList()
        r = deep_r
        for _ in range(n_skips):
            target = r // 2
            if target not in reductions:
                raise ValueError(f"encoder has no feature map at 1/{target} (reductions {reductions}) for the skip")
            idx = reductions.index(target)
            score = nn.Conv2d(channels[idx], num_classes, 1)
            nn.init.zeros_(score.weight)  # the skip starts silent: training begins from the coarser net
            nn.init.zeros_(score.bias)
            self.skip_index.append(idx)
            self.skip_scores.append(score)
            self.ups.append(make_upsample(upsample, num_classes, num_classes, 2))
            r = target
        self.final_up = make_upsample(upsample, num_classes, num_classes, r)  # r = 32, 16 or 8

    def forward(self, features: list[torch.Tensor], image: torch.Tensor) -> torch.Tensor:
        x = self.score(self.fc(features[-1]))  # (B, K, H/32, W/32)
        for idx, score, up in zip(self.skip_index, self.skip_scores, self.ups):
            skip = features[idx]
            x = up(x, guide=skip) + score(skip)  # (B, K, H/16, W/16), then (B, K, H/8, W/8)
        return self.final_up(x, guide=image)  # (B, K, H, W)


def _fcn(n_skips: int, *, num_classes: int, in_chans: int, encoder: str, upsample, encoder_weights=None, dropout: float = 0.1) -> SegmentationModel:
    enc = TimmEncoder(encoder, in_chans=in_chans, weights=encoder_weights)
    dec = FCNDecoder(enc.channels, enc.reductions, num_classes, n_skips, upsample, dropout)
    return SegmentationModel(enc, dec, nn.Identity(), size_divisor=max(enc.reductions))


_PAPER = "Long, Shelhamer, Darrell. Fully Convolutional Networks for Semantic Segmentation. CVPR 2015"


@register_architecture(
    "fcn32s",
    title="FCN-32s",
    paper=_PAPER,
    default_encoder=DEFAULT_ENCODER,
    default_upsample="transposed",
    explanation=_EXPLANATION_COMMON
    + "\n\nFCN-32s does this in a single 32x step. It gets the gist of a scene right but every boundary "
    "is smeared over a 32-pixel grid: thin poles and sign posts vanish. It is the baseline the skip "
    "versions improve on.",
)
def fcn32s(*, num_classes: int, in_chans: int = 3, encoder: str = DEFAULT_ENCODER, upsample="transposed", encoder_weights=None, dropout: float = 0.1) -> nn.Module:
    return _fcn(0, num_classes=num_classes, in_chans=in_chans, encoder=encoder, upsample=upsample, encoder_weights=encoder_weights, dropout=dropout)


@register_architecture(
    "fcn16s",
    title="FCN-16s",
    paper=_PAPER,
    default_encoder=DEFAULT_ENCODER,
    default_upsample="transposed",
    explanation=_EXPLANATION_COMMON
    + "\n\nFCN-16s adds a second score map from the 1/16 features: the coarse scores are upsampled 2x, "
    "added to the finer ones (whose layer starts at zero, so training begins from FCN-32s), and the sum "
    "is upsampled 16x. Boundaries sharpen because the finer layer still knows where things are.",
)
def fcn16s(*, num_classes: int, in_chans: int = 3, encoder: str = DEFAULT_ENCODER, upsample="transposed", encoder_weights=None, dropout: float = 0.1) -> nn.Module:
    return _fcn(1, num_classes=num_classes, in_chans=in_chans, encoder=encoder, upsample=upsample, encoder_weights=encoder_weights, dropout=dropout)


@register_architecture(
    "fcn8s",
    title="FCN-8s",
    paper=_PAPER,
    default_encoder=DEFAULT_ENCODER,
    default_upsample="transposed",
    explanation=_EXPLANATION_COMMON
    + "\n\nFCN-8s fuses scores from the 1/32, 1/16 and 1/8 feature maps, each added after a learned 2x "
    "upsampling, then upsamples 8x. It was the paper's best model: the skips combine 'what' from deep "
    "layers with 'where' from shallow ones, the idea every later encoder-decoder builds on.",
)
def fcn8s(*, num_classes: int, in_chans: int = 3, encoder: str = DEFAULT_ENCODER, upsample="transposed", encoder_weights=None, dropout: float = 0.1) -> nn.Module:
    return _fcn(2, num_classes=num_classes, in_chans=in_chans, encoder=encoder, upsample=upsample, encoder_weights=encoder_weights, dropout=dropout)
