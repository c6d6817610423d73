"""The upsampling lab: every way to grow a feature map back to full resolution, compared and explained.

Small pure functions (numpy or torch in, numpy or dicts out) behind the app's Upsampling tab::

    from workbench import lab
    rows = lab.compare_operators(image, 4)          # every operator, with PSNR, SSIM, checkerboard score
    lab.checkerboard_score(logits, stride=2)         # share of a map's energy in a period-2 pattern
    fig = lab.overlap_figure(3, 2)                   # taps per output pixel: the uneven overlap
    lab.constant_input_gallery(seed=0)               # patterns the decoder makes out of nothing
    lab.variant_checkpoints()                        # the trained U-Net upsampling variants

Rooms: :mod:`.operators` (reduce and restore, the comparison), :mod:`.scores` (PSNR, SSIM,
checkerboard), :mod:`.overlap`, :mod:`.constant_input`, :mod:`.trained`, and the command line
``python -m workbench.lab table`` (:mod:`.__main__`).
"""

from .constant_input import CONSTANT_INPUT_METHODS, constant_input_artifacts, constant_input_gallery
from .operators import OPERATORS, Operator, compare_operators, reduce_and_restore, reduce_image
from .overlap import OVERLAP_METHODS, overlap_figure, overlap_map_1d, overlap_map_2d
from .scores import checkerboard_score, psnr, ssim
from .trained import TRAINED_METHODS, variant_checkpoints, variant_markdown, variant_table

__all__ = [
    "OPERATORS",
    "Operator",
    "TRAINED_METHODS",
    "CONSTANT_INPUT_METHODS",
    "OVERLAP_METHODS",
    "reduce_image",
    "reduce_and_restore",
    "compare_operators",
    "psnr",
    "ssim",
    "checkerboard_score",
    "overlap_map_1d",
    "overlap_map_2d",
    "overlap_figure",
    "constant_input_artifacts",
    "constant_input_gallery",
    "variant_checkpoints",
    "variant_table",
    "variant_markdown",
]
