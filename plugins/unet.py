"""U-Net.

Ronneberger, Fischer, Brox, "U-Net: Convolutional Networks for Biomedical Image
Segmentation", MICCAI 2015. A contracting encoder and a symmetric expanding
decoder: at every scale the decoder upsamples, concatenates the encoder's
feature map of the same size (the long skip connection) and applies two 3x3
convolutions, all the way back to full resolution.
"""

from __future__ import annotations

import torch.nn as nn

from workbench import DEFAULT_DECODER_CHANNELS, DEFAULT_ENCODER, build_unet, register_architecture


@register_architecture(
    "unet",
    title="U-Net",
    paper="Ronneberger, Fischer, Brox. U-Net: Convolutional Networks for Biomedical Image Segmentation. MICCAI 2015",
    default_encoder=DEFAULT_ENCODER,
    default_upsample="transposed_k2",
    explanation=(
        "U-Net is shaped like the letter U. The left half (the encoder) shrinks the image step by step "
        "while learning what is in it; the right half (the decoder) grows it back step by step. At every "
        "size, the decoder is handed a copy of the encoder's feature map of the same size through a "
        "'skip connection', so the fine detail lost while shrinking is available again while growing."
        "\n\nEach decoder step upsamples (the paper uses a 2x2 transposed convolution), concatenates the "
        "skip, and applies two 3x3 convolutions. It was designed for cell images with few training "
        "examples and became the default segmentation architecture almost everywhere."
    ),
)
def unet(*, num_classes: int, in_chans: int = 3, encoder: str = DEFAULT_ENCODER, upsample="transposed_k2", decoder_channels=DEFAULT_DECODER_CHANNELS, encoder_weights=None) -> nn.Module:
    return build_unet(num_classes=num_classes, in_chans=in_chans, encoder=encoder, upsample=upsample, decoder_channels=decoder_channels, encoder_weights=encoder_weights)
