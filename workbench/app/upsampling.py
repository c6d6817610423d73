"""The Upsampling tab: every way to grow a feature map back to full resolution (the lab, workbench.lab)."""

from __future__ import annotations

import gradio as gr
import numpy as np

from workbench import lab, viz
from workbench.inference.predictor import Predictor

from .common import HEAVY, LIGHT, engine_kwargs, image_input, read_upload
from .gpu import on_gpu

__all__ = ["LAB_FACTORS", "LAB_TABLE_HEADERS", "LAB_VARIANT_HEADERS", "build", "lab_constant_input", "lab_operators", "lab_overlap", "lab_trained"]

LAB_FACTORS = (2, 4, 8)
LAB_MAX_SIDE = 640  # larger uploads are shrunk first: the lab compares operators, not megapixels
LAB_TABLE_HEADERS = ["operator", "PSNR (dB)", "SSIM", "checkerboard score", "how it is set up"]
LAB_VARIANT_HEADERS = ["variant", "upsampling", "CamVid test mIoU", "checkerboard score (this image)", "latency (this image, ms)", "CPU latency 360x480 (ms)"]
_LAB_CONSTANT_CACHE: dict[int, tuple] = {}
_LAB_PREDICTORS: dict[str, Predictor] = {}


def _fmt_db(v: float) -> str:
    return "inf (identical)" if v == float("inf") else f"{v:.2f}"


def lab_operators(image_path: str | None, factor) -> tuple[list, list, str]:
    """Upsampling tab: the image reduced by ``factor`` and grown back with every operator, scored against the original."""
    image = read_upload(image_path)
    if max(image.size) > LAB_MAX_SIDE:
        image = image.copy()
        image.thumbnail((LAB_MAX_SIDE, LAB_MAX_SIDE))
    arr = np.asarray(image)
    f = int(factor or 2)
    if f not in LAB_FACTORS:
        raise gr.Error(f"Factor must be one of {', '.join(map(str, LAB_FACTORS))}.")
    rows = lab.compare_operators(arr, f)
    small = lab.reduce_image(arr, f)
    gallery = [(arr, f"original {arr.shape[1]}x{arr.shape[0]}"), (small, f"reduced 1/{f}: {small.shape[1]}x{small.shape[0]} block means")]
    gallery += [(r["image"], f"{r['title']} · PSNR {_fmt_db(r['psnr'])} dB · SSIM {r['ssim']:.3f} · checkerboard {r['checkerboard']:.3f}") for r in rows]
    table = [[r["title"], _fmt_db(r["psnr"]), f"{r['ssim']:.3f}", f"{r['checkerboard']:.4f}", r["setup"]] for r in rows]
    note = (
        f"**The image shrunk {f}x (mean of each {f}x{f} block; for max-unpooling the maximum, remembering where it was) and grown "
        f"back {f}x** by applying each 2x operator {int(np.log2(f))} time(s), as a decoder grows its map stage by stage. "
        "The learned operators are the workbench's own modules (`workbench/models/upsampling.py`) with one input and one output "
        "channel, applied to each colour channel separately: a 3-to-3 layer at initialisation would mix colours at random, "
        "and what we compare is the spatial structure each operator imposes. Their weights are set to show that structure "
        "(see the table): bilinear-initialised transposed convolutions as FCN and our U-Net start, equal taps to expose the "
        "uneven overlap of kernel 3 / stride 2, resize-conv with a tent kernel and pixel shuffle with ICNR. Bed-of-nails and "
        "max-unpooling leave most pixels empty: in a decoder the convolutions that follow fill them in.\n\n"
        f"PSNR and SSIM (Wang et al. 2004, 11x11 Gaussian window) against the original; **checkerboard score**: the share of "
        f"the restored image's energy in a pattern repeating every {f} pixels (2-D FFT power at multiples of 1/{f} of the "
        "sampling frequency, mean removed; 0 = none, 1 = nothing else)."
    )
    return gallery, table, note


def lab_overlap(kernel, stride) -> tuple[object, str]:
    """Upsampling tab: how many taps land on each output pixel, transposed conv vs resize-conv vs pixel shuffle."""
    k, s = int(kernel or 3), int(stride or 2)
    if k < s:
        raise gr.Error(f"A transposed convolution with stride {s} needs a kernel of at least {s} (got {k}): smaller kernels leave gaps.")
    fig = lab.overlap_figure(k, s)
    one = lab.overlap_map_1d(k, s, 2 * s)[:s]
    pattern = ", ".join(map(str, one))
    if one.min() == one.max():
        verdict = f"**Even**: kernel {k} is divisible by stride {s}, so every output pixel gets {one[0]} taps per axis ({one[0] ** 2} in 2-D)."
    else:
        verdict = (
            f"**Uneven**: kernel {k} is not divisible by stride {s}, so output pixels get {pattern} taps per axis in turn "
            f"({one.min() ** 2} to {one.max() ** 2} in 2-D). Whatever the weights, some pixels sum more contributions than their "
            "neighbours: a checkerboard the network must learn to cancel (Odena, Dumoulin and Olah 2016)."
        )
    text = (
        f"{verdict}\n\nCounts come from running the workbench's own layers with all-ones weights on an all-ones input (TransposedUp "
        "with its padding; the interior, away from the borders). Resize-convolution (nearest, then a 3x3 convolution) and pixel "
        "shuffle (a 3x3 convolution per sub-pixel) give every output pixel the same 9 taps whatever the stride. Even overlap is "
        "necessary, not sufficient: with random weights every transposed convolution sums different taps at different phases "
        "(see the constant-input experiment below); ICNR makes the pixel-shuffle sub-pixel kernels equal so it starts as nearest."
    )
    return fig, text


def lab_constant_input(seed) -> tuple[list, list, str]:
    """Upsampling tab: the U-Net decoder with each method at random initialisation, fed a constant input."""
    sd = int(seed or 0)
    if sd not in _LAB_CONSTANT_CACHE:
        if len(_LAB_CONSTANT_CACHE) >= 8:
            _LAB_CONSTANT_CACHE.clear()
        results = lab.constant_input_gallery(sd)
        gallery = [(r["image"], f"{r['label']} · checkerboard {r['score']:.3f}") for r in results]
        table = [[r["label"], f"{r['score']:.4f}", f"{r['spread']:.2e}", "period-2 artifacts" if r["score"] > 0.1 else "no artifacts"] for r in results]
        _LAB_CONSTANT_CACHE[sd] = (gallery, table)
    gallery, table = _LAB_CONSTANT_CACHE[sd]
    text = (
        f"The U-Net decoder (resnet10t's feature pyramid, decoder widths 256/128/64/32/16) built with `torch.manual_seed({sd})`, "
        "in eval mode, fed encoder features that are constant in space (one random value per channel) and a constant image. "
        "Any pattern in its output comes from the decoder. Shown: the central 64x64 window, far from the zero-padding borders, of "
        "the output channel that varies most, stretched to its own range and enlarged 4x. Transposed convolutions with "
        "PyTorch's default initialisation, pixel shuffle without ICNR, bed-of-nails and max-unpooling (with a constant guide "
        "every maximum is a tie, so it places values like bed-of-nails) print a period-2 pattern before any training; "
        "interpolation, resize-conv, ICNR pixel shuffle and bilinear-initialised transposed convolutions stay flat."
    )
    return gallery, table, text


@on_gpu(duration=60)
def lab_trained(image_path: str | None) -> tuple[list, list, str]:
    """Upsampling tab: the trained U-Net upsampling variants side by side on the image, with their numbers."""
    variants = lab.variant_checkpoints()
    if not variants:
        return [], [], (
            "No trained upsampling variants are shipped yet. `bash scripts/train_upsampling.sh` trains the eight U-Nets (one "
            "recipe, only the upsampling differs) and `bash scripts/train_upsampling.sh publish` exports them to "
            "`checkpoints/upsampling_unet_<method>` and evaluates them."
        )
    image = read_upload(image_path)
    gallery, table = [], []
    for method, path in variants.items():
        try:
            if method not in _LAB_PREDICTORS:
                _LAB_PREDICTORS[method] = Predictor(path, "auto", **engine_kwargs())
            pred = _LAB_PREDICTORS[method].predict(image)
        except Exception as exc:  # one broken checkpoint must not hide the others
            table.append([path.stem, method, "-", "-", "-", f"error: {type(exc).__name__}: {exc}"])
            continue
        man = _LAB_PREDICTORS[method].manifest
        miou, cpu = man.test_miou, man.cpu_latency_ms
        score = lab.checkerboard_score(pred.probs_work, 2)
        gallery.append((viz.colorize(pred.labels, pred.classes), f"{method} · test mIoU {'-' if miou is None else f'{100 * miou:.1f}'} · checkerboard {score:.2e}"))
        table.append([path.stem, method, "-" if miou is None else f"{100 * miou:.1f}", f"{score:.2e}", f"{pred.latency_ms:.0f}", "-" if cpu is None else f"{cpu:.0f}"])
    text = (
        f"**{len(variants)} U-Nets identical except for the upsampling method**, trained with one recipe on CamVid "
        "(`scripts/train_upsampling.sh`). Test mIoU and CPU latency at 360x480 come from their manifests (`workbench eval --split "
        "test --cost`); the checkerboard score is measured on this image's probability maps (stride 2)."
    )
    return gallery, table, text


def build(demo: gr.Blocks, examples: list[str]) -> None:
    """The tab's layout and events (inside a ``gr.Tab``); the overlap figure is drawn on page load."""
    gr.Markdown(
        "## Upsampling lab: every way to grow a feature map back to full resolution\nDecoders differ most in how they "
        "upsample, and transposed convolutions bring checkerboard artifacts. Shrink an image and grow it back with each "
        "operator; see why kernel 3 / stride 2 overlaps unevenly; feed a decoder a constant input; compare U-Nets trained "
        "with each method."
    )
    with gr.Row():
        with gr.Column(scale=1, min_width=320):
            up_image = image_input(260)
            up_factor = gr.Radio(list(LAB_FACTORS), value=4, label="Factor")
            up_button = gr.Button("Reduce and restore", variant="primary")
            gr.Examples(examples, inputs=up_image, label="Examples")
        with gr.Column(scale=2, min_width=320):
            up_note = gr.Markdown()
            up_gallery = gr.Gallery(label="Reduced, then restored by each operator", columns=4, height="auto")
    up_table = gr.Dataframe(headers=LAB_TABLE_HEADERS, label="Restored vs original", interactive=False, wrap=True)
    gr.Markdown("### Overlap: how many kernel taps land on each output pixel")
    with gr.Row():
        ov_kernel = gr.Slider(1, 8, value=3, step=1, label="Transposed convolution kernel size")
        ov_stride = gr.Radio([2, 3, 4], value=2, label="Stride")
        ov_button = gr.Button("Show overlap")
    ov_plot = gr.Plot(label="Tap counts in 1-D (bars) and 2-D (maps)")
    ov_text = gr.Markdown()
    gr.Markdown("### Before any training: the U-Net decoder at random initialisation, fed a constant input")
    with gr.Row():
        ci_seed = gr.Number(0, label="Seed", precision=0)
        ci_button = gr.Button("Feed a constant input")
    ci_text = gr.Markdown()
    ci_gallery = gr.Gallery(label="Decoder output (central window, one channel, stretched)", columns=6, height="auto")
    ci_table = gr.Dataframe(headers=["upsampling", "checkerboard score", "largest spread in a channel", "verdict"], interactive=False)
    gr.Markdown("### Trained U-Net variants (identical except for the upsampling), on the image above")
    tr_button = gr.Button("Run the trained variants")
    tr_text = gr.Markdown()
    tr_gallery = gr.Gallery(label="Predictions", columns=4, height="auto")
    tr_table = gr.Dataframe(headers=LAB_VARIANT_HEADERS, interactive=False, wrap=True)

    up_button.click(lab_operators, [up_image, up_factor], [up_gallery, up_table, up_note], api_name="upsampling_operators", **HEAVY)
    ov_button.click(lab_overlap, [ov_kernel, ov_stride], [ov_plot, ov_text], api_name="upsampling_overlap", **LIGHT)
    demo.load(lab_overlap, [ov_kernel, ov_stride], [ov_plot, ov_text], api_name=False, **LIGHT)
    ci_button.click(lab_constant_input, ci_seed, [ci_gallery, ci_table, ci_text], api_name="upsampling_constant_input", **HEAVY)
    tr_button.click(lab_trained, up_image, [tr_gallery, tr_table, tr_text], api_name="upsampling_trained", **HEAVY)
