"""Pure functions that turn label maps and probabilities into pictures.

Everything here takes and returns numpy arrays (uint8 RGB images are
``(H, W, 3)``); nothing touches models, files or the UI.
"""

from __future__ import annotations

import html
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw

__all__ = [
    "colorize",
    "overlay",
    "legend_html",
    "disagreement",
    "disagreement_image",
    "error_map",
    "heatmap",
    "class_probability_maps",
    "one_hot",
    "one_hot_pairs",
    "receptive_field_picture",
    "fit_for_display",
    "present_labels",
    "palette_image",
    "confidence_map",
    "confidence_scale",
    "confidence_image",
    "confidence_legend_html",
]


def _colors_array(classes_or_colors) -> np.ndarray:
    cols = [c["color"] if isinstance(c, dict) else c for c in classes_or_colors]
    return np.asarray(cols, dtype=np.uint8).reshape(-1, 3)


def colorize(labels: np.ndarray, classes_or_colors, void_color=(0, 0, 0)) -> np.ndarray:
    """(H, W) integer labels -> (H, W, 3) uint8 colours; labels outside the class range get ``void_color``."""
    colors = _colors_array(classes_or_colors)
    labels = np.asarray(labels)
    void = np.asarray(void_color, dtype=np.uint8)
    if labels.dtype == np.uint8 and labels.ndim == 2 and len(colors) <= 256:  # the common case: PIL's palette lookup, 8x faster than numpy's gather
        return np.asarray(palette_image(labels, colors, void_color).convert("RGB"))
    lut = np.vstack([colors, void[None]])
    idx = labels.astype(np.int64)
    idx = np.where((idx < 0) | (idx >= len(colors)), len(colors), idx)
    return lut[idx]


def palette_image(labels: np.ndarray, classes_or_colors, void_color=(0, 0, 0)) -> Image.Image:
    """(H, W) labels -> a palette ("P" mode) PIL image with the class colours: the same picture as
    :func:`colorize`, but PNG-encoded 5x faster and smaller (one byte per pixel)."""
    labels = np.asarray(labels)
    colors = _colors_array(classes_or_colors)
    if labels.dtype != np.uint8 or labels.ndim != 2 or len(colors) > 256:  # (colorize's general path then)
        return Image.fromarray(colorize(labels, colors, void_color))
    lut = np.tile(np.asarray(void_color, dtype=np.uint8), (256, 1))
    lut[: len(colors)] = colors
    h, w = labels.shape
    out = Image.frombytes("P", (w, h), np.ascontiguousarray(labels).tobytes())
    out.putpalette(lut.ravel().tolist())
    return out


def overlay(image: np.ndarray, mask_rgb: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Blend a colour mask onto an image: ``(1 - alpha) * image + alpha * mask`` (uint8, same size).

    Uses PIL's blend (C, one pass; 6x faster than float32 numpy on a 360x480 image)."""
    img = np.asarray(image)
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=-1)
    if img.shape[:2] != mask_rgb.shape[:2]:
        raise ValueError(f"image {img.shape[:2]} and mask {mask_rgb.shape[:2]} differ in size")
    a = float(np.clip(alpha, 0.0, 1.0))
    base = np.ascontiguousarray(img[..., :3], dtype=np.uint8)
    top = np.ascontiguousarray(mask_rgb, dtype=np.uint8)
    return np.asarray(Image.blend(Image.fromarray(base, "RGB"), Image.fromarray(top, "RGB"), a))


def legend_html(classes, present: np.ndarray | None = None) -> str:
    """A compact HTML legend: a colour swatch and the name per class (only ``present`` ones if given)."""
    items = []
    shown = None if present is None else set(np.asarray(present).tolist())
    for i, c in enumerate(classes):
        if shown is not None and i not in shown:
            continue
        r, g, b = c["color"]
        items.append(
            f'<span style="display:inline-flex;align-items:center;margin:0 8px 2px 0;white-space:nowrap">'
            f'<span style="width:12px;height:12px;background:rgb({r},{g},{b});border:1px solid #888;margin-right:4px;display:inline-block"></span>'
            f"{html.escape(str(c['name']))}</span>"
        )
    return '<div class="wb-legend">' + "".join(items) + "</div>"


def disagreement(label_maps: list[np.ndarray]) -> tuple[np.ndarray, float]:
    """Where do several models disagree?

    Returns:
        ``(n_distinct, agreement)``: (H, W) number of distinct labels per pixel
        (1 = all agree) and the fraction of pixels where all models agree.
    """
    if not label_maps:
        raise ValueError("need at least one label map")
    maps = [np.asarray(m) for m in label_maps]
    if any(m.shape != maps[0].shape for m in maps):
        raise ValueError(f"label maps differ in shape: {sorted({m.shape for m in maps})}")
    if len(maps) <= 16:  # a label counts if no earlier map has it: M(M-1)/2 comparisons, 15x faster than a sort for 7 maps
        n_distinct = np.ones(maps[0].shape, np.int32)
        new = np.empty(maps[0].shape, bool)
        for i in range(1, len(maps)):
            np.not_equal(maps[i], maps[0], out=new)
            for j in range(1, i):
                new &= maps[i] != maps[j]
            n_distinct += new
    else:
        srt = np.sort(np.stack(maps), axis=0)
        n_distinct = (1 + (np.diff(srt, axis=0) != 0).sum(axis=0)).astype(np.int32)
    agreement = float(np.count_nonzero(n_distinct == 1)) / max(n_distinct.size, 1)
    return n_distinct, agreement


def _grey(image: np.ndarray) -> np.ndarray:
    """(H, W) uint16 channel mean (floored) of an RGB(A) image, or the grey image itself."""
    img = np.asarray(image)
    if img.ndim == 2:
        return img.astype(np.uint16)
    rgb = img[..., :3].astype(np.uint16, copy=False)
    return (rgb[..., 0] + rgb[..., 1] + rgb[..., 2]) // 3  # channel adds: 15x faster than .sum(-1)


def disagreement_image(image: np.ndarray, n_distinct: np.ndarray, n_models: int) -> np.ndarray:
    """Grey image with disagreeing pixels tinted yellow (2 labels) to red (all different).

    Background ``0.35 * grey + 90``; a pixel where ``k > 1`` models' labels differ is
    ``0.25 * background + 0.75 * colour``, the colour going from yellow (k = 2) to red
    (k = ``n_models``). One lookup in a (k, grey) -> RGB table: 10x faster than float
    arithmetic on every pixel.
    """
    grey = np.minimum(_grey(image), 255)
    n = np.clip(np.asarray(n_distinct), 1, max(n_models, 1)).astype(np.int32)
    background = np.clip(0.35 * np.arange(256) + 90, 0, 255)  # (256,)
    k = np.arange(max(n_models, 1) + 1)
    t = np.clip((k - 1) / max(n_models - 1, 1), 0, 1)[:, None]
    color = (1 - t) * np.array([255, 210, 0]) + t * np.array([230, 20, 20])  # (K, 3)
    table = 0.25 * background[None, :, None] + 0.75 * color[:, None, :]  # (K, 256, 3)
    table[: 2] = background[None, :, None]  # k <= 1: everyone agrees
    table = np.clip(table, 0, 255).astype(np.uint8).reshape(-1, 3)
    return table[n * 256 + grey]


def dimmed(image: np.ndarray) -> np.ndarray:
    """The background of an error map: the image in grey at 40% brightness, (H, W) uint8 (at most 102)."""
    img = np.asarray(image)
    if img.ndim == 3:
        rgb = img[..., :3].astype(np.uint16, copy=False)
        return ((rgb[..., 0] + rgb[..., 1] + rgb[..., 2]) * 2 // 15).astype(np.uint8)  # floor(0.4 * mean), in integers
    return (img.astype(np.float32) * 0.4).astype(np.uint8)


_WRONG, _IGNORED = 254, 255  # palette slots above every dimmed grey level
_ERROR_PALETTE = np.repeat(np.arange(256, dtype=np.uint8)[:, None], 3, axis=1)
_ERROR_PALETTE[_WRONG] = (235, 30, 30)
_ERROR_PALETTE[_IGNORED] = (20, 20, 70)


def error_map(pred: np.ndarray, target: np.ndarray, image: np.ndarray | None = None, ignore_index: int | None = None, *, base: np.ndarray | None = None) -> np.ndarray:
    """Wrong pixels in red, right ones dimmed (grey image or black), ignored ones in dark blue; (H, W, 3) uint8.

    ``base``: :func:`dimmed` of the image, precomputed when several error maps share one image.
    The grey levels, red and blue are palette indices that :func:`colorize` expands to RGB
    (4x faster than pasting the two colours through masks).
    """
    pred, target = np.asarray(pred), np.asarray(target)
    h, w = target.shape
    if pred.shape != target.shape:
        raise ValueError(f"prediction {pred.shape} and target {target.shape} differ in shape")
    if base is None:
        base = dimmed(image) if image is not None else np.zeros((h, w), np.uint8)
    base = np.asarray(base)
    if base.shape != (h, w) or base.dtype != np.uint8 or base.max(initial=0) >= _WRONG:
        raise ValueError(f"base must be dimmed(image): ({h}, {w}) uint8 grey, got {base.shape} {base.dtype}")
    idx = base.copy()
    np.putmask(idx, pred != target, _WRONG)
    if ignore_index is not None:
        np.putmask(idx, target == ignore_index, _IGNORED)
    return colorize(idx, _ERROR_PALETTE)


@lru_cache(maxsize=4)
def _lut(name: str) -> np.ndarray:
    import matplotlib  # on first use only: importing matplotlib costs ~0.3 s and viz is imported by every tab

    cmap = matplotlib.colormaps[name]
    return (cmap(np.linspace(0, 1, 256))[:, :3] * 255).astype(np.uint8)


def heatmap(values: np.ndarray, vmin: float = 0.0, vmax: float = 1.0, cmap: str = "viridis") -> np.ndarray:
    """(H, W) floats -> (H, W, 3) uint8 through a matplotlib colour map."""
    v = (np.asarray(values, dtype=np.float32) - vmin) / max(vmax - vmin, 1e-12)
    idx = np.clip(np.round(v * 255), 0, 255).astype(np.uint8)
    return _lut(cmap)[idx]


def class_probability_maps(probs: np.ndarray, classes) -> list[tuple[np.ndarray, str]]:
    """One heat map per class channel of (C, H, W) probabilities, captioned with name and mean probability."""
    return [(heatmap(p), f"{c['name']} (mean p={float(p.mean()):.2f})") for p, c in zip(probs, classes)]


def one_hot(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """(H, W) labels -> (C, H, W) uint8 one-hot channels (the training target representation)."""
    labels = np.asarray(labels)
    return (labels[None] == np.arange(num_classes)[:, None, None]).astype(np.uint8)


def one_hot_pairs(target: np.ndarray, probs: np.ndarray, classes, gap: int = 4) -> list[tuple[np.ndarray, str]]:
    """Per class, the one-hot target channel beside the network's probability channel, as one tile each.

    ``target``: (H, W) labels (the ground truth, or a model's argmax); values outside the classes (void) are
    in no channel and drawn grey. ``probs``: (C, h, w) probabilities; the target is resized to (h, w) with
    nearest neighbours. Left half: white where the target is this class, black elsewhere; right half: the
    probability heat map (as :func:`class_probability_maps`). Captions give the class's share of the target
    and its mean probability, so training's comparison (target vs probability, channel by channel) reads
    off the pairs, and the argmax is the channel that is brightest at a pixel.
    """
    probs = np.asarray(probs)
    c, h, w = probs.shape
    t = np.asarray(target)
    if t.ndim != 2:
        raise ValueError(f"target must be an (H, W) label map, got shape {t.shape}")
    if t.shape != (h, w):
        t = np.asarray(Image.fromarray(t.astype(np.int32)).resize((w, h), Image.NEAREST))
    void = (t < 0) | (t >= c)
    hot = one_hot(np.where(void, 0, t), c)
    hot[:, void] = 0
    labelled = max(int((~void).sum()), 1)
    spacer = np.full((h, gap, 3), 255, np.uint8)
    out = []
    for k, cls in enumerate(classes[:c]):
        left = np.repeat((hot[k] * 255)[..., None], 3, axis=2).astype(np.uint8)
        left[void] = 128
        tile = np.concatenate([left, spacer, heatmap(probs[k])], axis=1)
        out.append((tile, f"{cls['name']}: target {100 * hot[k].sum() / labelled:.0f}% | mean p={float(probs[k].mean()):.2f}"))
    return out


def receptive_field_picture(image: np.ndarray, erf: np.ndarray, box: tuple[int, int, int, int], point: tuple[int, int]) -> np.ndarray:
    """The image dimmed, the effective receptive field ``erf`` ((H, W) gradient magnitudes, same size) laid over
    it as a heat map (square-root scaled and saturated at its 99.7th percentile, so the tails show), the theoretical field ``box`` (top, left, bottom,
    right, inclusive) as a yellow frame and the pixel ``point`` (y, x) as a cyan cross: (H, W, 3) uint8."""
    img = np.asarray(image)
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    img = img[..., :3].astype(np.float32)
    e = np.sqrt(np.maximum(np.asarray(erf, dtype=np.float32), 0))
    if e.shape != img.shape[:2]:
        raise ValueError(f"the field is {e.shape}, the image {img.shape[:2]}")
    e = np.clip(e / max(float(np.percentile(e, 99.7)), 1e-20), 0, 1)  # a few peak pixels must not wash out the rest
    heat = heatmap(e, cmap="inferno").astype(np.float32)
    a = np.clip(e * 2.0, 0, 1)[..., None]
    out = Image.fromarray(((0.45 * img) * (1 - a) + heat * a).astype(np.uint8))
    draw = ImageDraw.Draw(out)
    top, left, bottom, right = box
    draw.rectangle([left, top, right, bottom], outline=(255, 220, 0), width=max(1, round(max(img.shape[:2]) / 240)))
    y, x = point
    r = max(3, round(max(img.shape[:2]) / 80))
    draw.line([x - r, y, x + r, y], fill=(0, 255, 255), width=2)
    draw.line([x, y - r, x, y + r], fill=(0, 255, 255), width=2)
    return np.asarray(out)


def fit_for_display(arr: np.ndarray, max_side: int, labels: bool = False) -> np.ndarray:
    """Shrink an image (bilinear) or a label map (nearest) so its longer side is at most ``max_side``."""
    a = np.asarray(arr)
    h, w = a.shape[:2]
    scale = max_side / max(h, w)
    if scale >= 1:
        return a
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    if labels:
        return np.asarray(Image.fromarray(a.astype(np.int32)).resize(size, Image.NEAREST)).astype(a.dtype)
    return np.asarray(Image.fromarray(a).resize(size, Image.BILINEAR))


def present_labels(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """The class ids that occur in ``labels`` (faster than ``np.unique`` for small label sets)."""
    counts = np.bincount(np.asarray(labels).ravel(), minlength=num_classes)
    return np.flatnonzero(counts[:num_classes])


CONFIDENCE_KINDS = ("max", "entropy")


def confidence_map(probs: np.ndarray, kind: str = "max") -> np.ndarray:
    """Per-pixel confidence from (C, H, W) class probabilities, as (H, W) float32 in [0, 1]; 1 = certain.

    ``kind="max"``: the highest class probability (between ``1 / C``, all classes equally likely, and 1).
    ``kind="entropy"``: ``1 - entropy / log C`` (0 = uniform over the classes, 1 = one class has it all).
    """
    p = np.asarray(probs)
    if p.ndim != 3 or p.shape[0] < 2:
        raise ValueError(f"probabilities must be (C, H, W) with C >= 2, got shape {p.shape}")
    if kind == "max":
        return p.max(axis=0).astype(np.float32, copy=False)
    if kind == "entropy":
        p = p.astype(np.float32, copy=False)
        ent = np.zeros(p.shape[1:], np.float32)
        for ch in p:  # channel by channel: no (C, H, W) temporaries, 2x faster than the vectorised form
            ent -= ch * np.log(np.maximum(ch, 1e-12))
        return np.clip(1.0 - ent / np.float32(np.log(p.shape[0])), 0.0, 1.0)
    raise ValueError(f"confidence kind must be one of {CONFIDENCE_KINDS}, got {kind!r}")


def confidence_scale(kind: str, num_classes: int, cmap: str = "magma") -> dict:
    """The colour scale of :func:`confidence_image`: ``vmin``/``vmax``, a title, and ``ticks`` as
    ``[(value, "#rrggbb")]`` for a legend (low confidence dark, high bright)."""
    if kind not in CONFIDENCE_KINDS:
        raise ValueError(f"confidence kind must be one of {CONFIDENCE_KINDS}, got {kind!r}")
    if num_classes < 2:
        raise ValueError(f"need at least 2 classes, got {num_classes}")
    vmin = 1.0 / num_classes if kind == "max" else 0.0
    title = "highest class probability" if kind == "max" else "1 - normalised entropy"
    lut = _lut(cmap)
    ticks = []
    for v in np.linspace(vmin, 1.0, 5):
        r, g, b = lut[int(round((v - vmin) / (1.0 - vmin) * 255))]
        ticks.append((round(float(v), 3), f"#{r:02x}{g:02x}{b:02x}"))
    return {"kind": kind, "title": title, "vmin": vmin, "vmax": 1.0, "cmap": cmap, "ticks": ticks}


def confidence_image(probs: np.ndarray, kind: str = "max", cmap: str = "magma") -> tuple[np.ndarray, dict]:
    """A per-pixel confidence picture of (C, H, W) probabilities: ``(rgb (H, W, 3) uint8, scale)`` where
    ``scale`` is :func:`confidence_scale` plus ``mean`` (the image's mean confidence) and ``low_share`` (the share
    of pixels below the scale's midpoint). Dark = unsure, bright = confident."""
    conf = confidence_map(probs, kind)
    scale = confidence_scale(kind, np.asarray(probs).shape[0], cmap)
    rgb = heatmap(conf, scale["vmin"], scale["vmax"], cmap)
    mid = (scale["vmin"] + scale["vmax"]) / 2
    return rgb, {**scale, "mean": float(conf.mean()), "low_share": float(np.count_nonzero(conf < mid)) / max(conf.size, 1)}


def confidence_legend_html(scale: dict) -> str:
    """An HTML colour bar for a :func:`confidence_scale` (or :func:`confidence_image`'s scale) with its tick values."""
    stops = ", ".join(color for _, color in scale["ticks"])
    labels = "".join(f"<span>{v:.2f}</span>" for v, _ in scale["ticks"])
    mean = f" &middot; mean {scale['mean']:.2f}" if "mean" in scale else ""
    return (
        f'<div class="wb-confidence-legend"><div style="font-size:0.85em">confidence: {html.escape(scale["title"])}{mean}</div>'
        f'<div style="height:10px;background:linear-gradient(to right, {stops});border:1px solid #888"></div>'
        f'<div style="display:flex;justify-content:space-between;font-size:0.8em">{labels}</div></div>'
    )
