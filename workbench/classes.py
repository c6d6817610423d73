"""Class names, colours and input normalisation defaults."""

from __future__ import annotations

import colorsys

__all__ = ["IGNORE_INDEX", "CAMVID_CLASSES", "CAMVID_VOID", "ISBI_CLASSES", "IMAGENET_MEAN", "IMAGENET_STD", "default_classes", "default_normalization", "palette"]

# Label value for pixels that count nowhere (void, padding): ignored by losses and metrics.
# Datasets map their own void label to it (CamVid's 11 becomes 255).
IGNORE_INDEX = 255

# The 11-class CamVid of the SegNet tutorial (ids 0..10; 11 = void, ignored). Colours as there.
CAMVID_CLASSES = [
    {"name": "Sky", "color": [128, 128, 128]},
    {"name": "Building", "color": [128, 0, 0]},
    {"name": "Pole", "color": [192, 192, 128]},
    {"name": "Road", "color": [128, 64, 128]},
    {"name": "Pavement", "color": [60, 40, 222]},
    {"name": "Tree", "color": [128, 128, 0]},
    {"name": "SignSymbol", "color": [192, 128, 128]},
    {"name": "Fence", "color": [64, 64, 128]},
    {"name": "Car", "color": [64, 0, 128]},
    {"name": "Pedestrian", "color": [64, 64, 0]},
    {"name": "Bicyclist", "color": [0, 128, 192]},
]
CAMVID_VOID = 11

# ISBI 2012 membranes: label 0 = membrane (cell boundary), 1 = cell interior (255 in the PNGs).
ISBI_CLASSES = [
    {"name": "Membrane", "color": [230, 60, 60]},
    {"name": "Cell", "color": [40, 40, 40]},
]

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]


def palette(n: int) -> list[list[int]]:
    """``n`` well-separated RGB colours (golden-ratio hues)."""
    out = []
    for i in range(n):
        h = (i * 0.618033988749895) % 1.0
        r, g, b = colorsys.hsv_to_rgb(h, 0.65, 0.95 if i % 2 == 0 else 0.75)
        out.append([int(r * 255), int(g * 255), int(b * 255)])
    return out


def default_classes(num_classes: int) -> list[dict]:
    """CamVid's classes for 11 classes, generic names and colours otherwise."""
    if num_classes == len(CAMVID_CLASSES):
        return [dict(c) for c in CAMVID_CLASSES]
    return [{"name": f"class_{i}", "color": c} for i, c in enumerate(palette(num_classes))]


def default_normalization(in_chans: int) -> dict:
    """ImageNet statistics for RGB input (timm's default), mean 0.5 / std 0.5 for other channel counts."""
    if in_chans == 3:
        return {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)}
    return {"mean": [0.5] * in_chans, "std": [0.5] * in_chans}
