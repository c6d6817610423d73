"""The ``workbench`` command line (also ``python -m workbench``): the argument parser and the dispatch.

Importing this module loads no torch, and nothing here may change that: the console script imports it,
and :func:`main` first re-executes the process with a caching allocator (:mod:`workbench.system.allocator`),
which only works before torch is loaded. So every command names its handler as a ``"module:function"``
string, imported by :func:`_resolve` only when that command runs. The handlers live beside their code
(``tools/bench.py``, ``data/fetch.py``, ...) or, for the small commands, in :mod:`workbench.commands`.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from collections.abc import Callable

from .system.allocator import reexec_with_allocator

__all__ = ["main", "build_parser", "process_engine"]


def _resolve(spec: str) -> Callable:
    """``"package.module:function"`` -> the function, importing its module now (see the module docstring)."""
    module, _, name = spec.partition(":")
    return getattr(importlib.import_module(module), name)


def _manifest_field(text: str) -> tuple[str, object]:
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"expected KEY=JSON, got {text!r}")
    try:
        return key.strip(), json.loads(value)
    except json.JSONDecodeError:
        return key.strip(), value


def _dataset_option(text: str):
    try:
        return _resolve("workbench.evaluation.evaluate:parse_dataset_option")(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def build_parser() -> argparse.ArgumentParser:
    """Every subcommand and its flags; each sets ``func``, its handler (``"module:function"`` or a function)."""
    p = argparse.ArgumentParser(prog="workbench", description="Segmentation Workbench: compare segmentation architectures.")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("list", help="list registered architectures and plugin errors")
    s.add_argument("pattern", nargs="?", default=None, help="fnmatch filter, e.g. 'fcn*'")
    s.add_argument("--strict", action="store_true", help="exit 1 if a plugin failed to load")
    s.set_defaults(func="workbench.commands:cmd_list")

    s = sub.add_parser("info", help="explain one architecture: parameters, FLOPs, feature-map sizes")
    s.add_argument("name")
    s.add_argument("--num-classes", type=int, default=11)
    s.add_argument("--size", type=int, nargs=2, default=[360, 480], metavar=("H", "W"))
    s.set_defaults(func="workbench.commands:cmd_info")

    s = sub.add_parser("engines", help="which inference engine each checkpoint runs on here, and why (measured once, cached)")
    s.add_argument("checkpoints", nargs="+", metavar="CHECKPOINT")
    s.add_argument("--engine", default="auto", choices=["auto", "torch", "openvino", "onnxruntime"])
    s.add_argument("--device", default="cpu")
    s.set_defaults(func="workbench.tools.bench_engines:cmd_engines")

    s = sub.add_parser("bench", help="parameters, FLOPs and latency of every architecture")
    s.add_argument("--arch", nargs="*", help="architectures (default: all)")
    s.add_argument("--size", type=int, nargs=2, default=[360, 480], metavar=("H", "W"))
    s.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"])
    s.add_argument("--device", default="auto")
    s.add_argument("--repeats", type=int, default=10)
    s.add_argument("--no-flops", action="store_true")
    s.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurement (a fresh process per architecture)")
    s.add_argument("--out", help="write <out>.json and <out>.md")
    s.add_argument("--train", action="store_true", help="training throughput instead: fp32 vs channels_last vs bf16 (default size 224x224)")
    s.add_argument("--batch-size", type=int, default=8, help="batch size for --train and --losses")
    s.add_argument("--compile", action="store_true", help="with --train: also time the fast precision under torch.compile (as train --compile)")
    s.add_argument("--encoders", action="store_true", help="compare candidate timm encoders instead (size, latency)")
    s.add_argument("--losses", action="store_true", help="forward + backward time of every loss term (default size 224x224, --batch-size), smp's Lovasz-softmax beside ours")
    s.add_argument("--allocators", action="store_true", help="training step and inference under the system allocator, tcmalloc and jemalloc (a process each; WORKBENCH_ALLOCATOR)")
    s.add_argument("--engines", action="store_true", help="every shipped checkpoint (or --arch ones) through every engine x precision (torch, OpenVINO, ONNX Runtime), ratios against torch eager fp32, the auto choice, the Compare request per engine")
    s.add_argument("--engine", nargs="*", default=None, choices=["torch", "openvino", "onnxruntime"], help="with --engines: only these engines in the table and the request timing")
    s.add_argument("--request", action="store_true", help="the app's whole Compare request instead, by stage, plus the served app end to end")
    s.add_argument("--image", default=None, help="image for --request (default: the first CamVid test image)")
    s.add_argument("--render", metavar="JSON", help="measure nothing: rewrite the Markdown table of a stored result (to --out, else beside the JSON)")
    s.set_defaults(func="workbench.tools.bench:main")

    s = sub.add_parser("bench-data", help="training data pipeline throughput without a model: DataLoader (CPU workers) vs the device loader")
    s.add_argument("--dataset", default="synthetic", help="camvid, isbi, folder or synthetic (default: synthetic)")
    s.add_argument("--split", default="train")
    s.add_argument("--data-root", default=None, help="folder holding camvid/ etc. (default: $WORKBENCH_DATA_ROOT, then ../shared/data)")
    s.add_argument("--dataset-options", type=json.loads, default=None, metavar="JSON", help='dataset options, e.g. \'{"length": 64, "size": [360, 480]}\' for synthetic')
    s.add_argument("--batch-size", type=int, default=8)
    s.add_argument("--crop", type=int, nargs=2, default=[224, 224], metavar=("H", "W"))
    s.add_argument("--scale", type=float, nargs=2, default=[0.5, 2.0], metavar=("MIN", "MAX"))
    s.add_argument("--hflip", action=argparse.BooleanOptionalAction, default=True)
    s.add_argument("--vflip", action=argparse.BooleanOptionalAction, default=False)
    s.add_argument("--color-jitter", type=float, default=0.2)
    s.add_argument("--workers", type=int, default=2, help="DataLoader workers (default: 2, as training)")
    s.add_argument("--device", default="auto", help="where batches go (default: cuda if available, else cpu)")
    s.add_argument("--batches", type=int, default=20, help="timed batches per pipeline")
    s.add_argument("--warmup", type=int, default=2, help="untimed batches first")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--out", default=None, metavar="JSON", help="also write the figures to this JSON file")
    s.set_defaults(func="workbench.data.bench:main")

    s = sub.add_parser("train", help="train an architecture on a dataset (CamVid, ISBI, a folder, synthetic)")
    _resolve("workbench.training.config:build_parser")(s)  # the training flags live beside the training config
    s.set_defaults(func="workbench.training.trainer:main")

    s = sub.add_parser("distill", help="train an architecture on a teacher ensemble's soft labels (knowledge distillation, teacher maps cached on disk)")
    _resolve("workbench.training.distill_config:build_parser")(s)  # the train flags plus --teachers, --temperature, --alpha, ...
    s.set_defaults(func="workbench.training.distill:main")

    s = sub.add_parser("eval", help="evaluate checkpoints on a dataset split: metrics JSON, leaderboard, confusion plots")
    s.add_argument("checkpoints", nargs="+", metavar="CHECKPOINT", help=".json manifests (globs welcome; other JSON files are skipped with a warning)")
    s.add_argument("--split", default="test", help="dataset split (default: test)")
    s.add_argument("--dataset", default=None, help="dataset name (default: the manifest's dataset.name)")
    s.add_argument("--dataset-option", action="append", type=_dataset_option, metavar="KEY=VALUE", help="extra dataset option, e.g. path=/images (repeatable; JSON values)")
    s.add_argument("--data-root", default=None, help="data root (default: $WORKBENCH_DATA_ROOT, then ../shared/data)")
    s.add_argument("--flip", action="store_true", help="average with the horizontally flipped image")
    s.add_argument("--scales", type=float, nargs="+", metavar="F", help="multi-scale inference: average the probabilities over the image resized by each factor, e.g. 0.75 1 1.25 1.5")
    s.add_argument("--window", type=int, nargs=2, metavar=("H", "W"), help="sliding-window inference for images larger than H x W")
    s.add_argument("--stride", type=int, nargs=2, metavar=("H", "W"), help="sliding-window stride (default: half the window)")
    s.add_argument("--limit", type=int, default=None, metavar="N", help="evaluate only the first N images")
    s.add_argument("--device", default="auto")
    s.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16", "auto", "int8"], help="int8: the checkpoint's shipped int8 model, with --engine openvino (workbench quantize writes it); with --engine auto use auto")
    s.add_argument("--engine", default="torch", choices=["torch", "openvino", "onnxruntime", "auto"], help="run the network through PyTorch (default), OpenVINO or ONNX Runtime on the CPU, or auto: the engine and precision the app's Predictor chooses for the checkpoint on this CPU (measured once, cached)")
    s.add_argument("--agreement-every", type=int, default=None, metavar="K", help="with an engine other than torch: also run fp32 eager on every K-th image and report the label agreement")
    s.add_argument("--out", default="eval_results", help="output folder (default: eval_results/)")
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    s.add_argument("--cost", action="store_true", help="also measure GFLOPs and the app's CPU latency at 360x480")
    s.add_argument("--update-manifests", action="store_true", help="write the metrics (and cost) into each checkpoint's manifest")
    s.add_argument("--ensemble", action="store_true", help="evaluate the checkpoints (manifests or names in checkpoints/) as ONE model: the mean of their softmax probabilities, the teacher workbench distill uses")
    s.set_defaults(func="workbench.commands:cmd_eval")

    s = sub.add_parser("predict", help="segment images or folders with checkpoints: an index PNG label map, a colour overlay and optionally a JSON per image and checkpoint")
    s.add_argument("inputs", nargs="+", metavar="IMAGES_OR_FOLDER", help="image files and folders (walked for image files, sorted; hidden ones skipped)")
    s.add_argument("--checkpoints", nargs="+", required=True, metavar="CKPT", help=".json manifests (globs welcome) or shipped checkpoint names, e.g. camvid_unet")
    s.add_argument("--out", required=True, metavar="DIR", help="results go to DIR/<checkpoint stem>/<image path without suffix>.png (+ _overlay.jpg, + .json)")
    s.add_argument("--engine", default="auto", choices=["auto", "torch", "openvino", "onnxruntime"], help="auto (default): the engine and precision the app's Predictor chooses for each checkpoint on this machine (measured once, cached); or a fixed one")
    s.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16", "int8"], help="auto (default): as the engine chooses; int8 runs the checkpoint's shipped int8 model on openvino")
    s.add_argument("--device", default="auto", help="auto (default: CUDA if available for torch, the CPU for openvino/onnxruntime), cpu, cuda, ...")
    s.add_argument("--batch", type=int, default=4, metavar="N", help="images decoded and segmented together; same-size ones share a forward pass where the engine takes a batch (torch, onnxruntime) (default: 4)")
    s.add_argument("--json", action="store_true", help="also write a JSON per image: checkpoint, engine, precision, latency, image size, class pixel fractions")
    s.add_argument("--overlay-alpha", type=float, default=0.5, metavar="A", help="weight of the class colours in the overlay, 0..1 (default: 0.5)")
    s.add_argument("--overlay-format", default="jpg", choices=["jpg", "png"], help="the overlay's format (default: jpg)")
    s.add_argument("--max-side", type=int, default=1024, metavar="PX", help="longer side the network sees; larger images are resized for it, the labels come back at full size (default: 1024)")
    s.add_argument("--skip-existing", action="store_true", help="keep results already in DIR (resume an interrupted run)")
    s.add_argument("--quiet", action="store_true", help="no progress bar or engine lines; errors and the summary line only")
    s.set_defaults(func="workbench.tools.predict:cmd_predict")

    s = sub.add_parser("quantize", help="int8 post-training quantization (NNCF + OpenVINO), calibrated on training images; accepted only within 0.5 test mIoU of fp32")
    s.add_argument("checkpoints", nargs="+", metavar="CHECKPOINT", help=".json manifests (globs welcome)")
    s.add_argument("--data-root", default=None, help="data root (default: $WORKBENCH_DATA_ROOT, then ../shared/data)")
    s.add_argument("--calib-images", type=int, default=None, metavar="N", help="training images that calibrate (full resolution; default: workbench.inference.quantize.DEFAULT_CALIB_IMAGES)")
    s.add_argument("--variant", default=None, metavar="NAME", help="NNCF settings by name (workbench.inference.quantize.QUANTIZE_VARIANTS; default: DEFAULT_VARIANT, chosen in benchmarks/int8_options_cpu_avx512.md)")
    s.add_argument("--keep-refused", action="store_true", help="keep a refused int8 model's files (by default they are deleted, its figures stay in the manifest)")
    s.add_argument("--seed", type=int, default=0, help="which calibration images are drawn")
    s.add_argument("--agreement-every", type=int, default=1, metavar="K", help="also run fp32 eager on every K-th test image and record the int8 label agreement (default: every image)")
    s.add_argument("--no-eval", action="store_true", help="only write the int8 model (recorded as not accepted)")
    s.add_argument("--out", default=None, metavar="DIR", help="also write the int8 results (JSON, confusion plots, leaderboard) to DIR")
    s.add_argument("--leaderboard", default=None, metavar="MD", help="rewrite the 'which precision the app runs' section of this leaderboard file")
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    s.set_defaults(func="workbench.commands:cmd_quantize")

    s = sub.add_parser("weights", help="class frequencies and loss weights of a dataset split (vs SegNet's for CamVid)")
    s.add_argument("--dataset", default="camvid", help="camvid, isbi, folder or synthetic (default: camvid)")
    s.add_argument("--split", default="train")
    s.add_argument("--data-root", default=None, help="folder holding camvid/ etc. (default: $WORKBENCH_DATA_ROOT, then ../shared/data)")
    s.add_argument("--path", default=None, help="the folder of a 'folder' dataset")
    s.add_argument("--method", default="median", choices=["median", "inverse"])
    s.add_argument("--json", default=None, metavar="OUT", help="also write the numbers to this JSON file")
    s.set_defaults(func="workbench.commands:cmd_weights")

    s = sub.add_parser("calibrate-ood", help="calibrate the out-of-distribution score (CamVid val vs offline non-street images), check it on held-out images, write workbench/inference/ood.json")
    s.add_argument("checkpoints", nargs="*", help="checkpoint names in checkpoints/ or paths (default: camvid_unet camvid_fcn8s)")
    s.add_argument("--data-root", default=None, help="folder holding camvid/ and isbi2012-membrane/ (default: $WORKBENCH_DATA_ROOT, then ../shared/data)")
    s.add_argument("--keep", type=float, default=0.95, help="share of CamVid val the threshold keeps as in-distribution (default: 0.95)")
    s.add_argument("--engine", default="torch", help="engine that computes the logits (default: torch fp32; the score is engine-independent up to precision)")
    s.add_argument("--seed", type=int, default=0, help="seed of the synthetic out-of-distribution textures")
    s.add_argument("--limit", type=int, default=None, metavar="N", help="at most N CamVid images per split (quick runs; the shipped calibration uses all)")
    s.add_argument("--probes", type=int, default=40, metavar="N", help="CamVid test images altered (upside down, grey) as near-OOD probes (default: 40)")
    s.add_argument("--out", default=None, metavar="JSON", help="where to write the calibration (default: workbench/inference/ood.json, package data)")
    s.add_argument("--benchmark-dir", default="benchmarks", metavar="DIR", help="where ood_calibration.{md,json} go (default: benchmarks)")
    s.add_argument("--no-benchmark", action="store_true", help="write only the calibration file")
    s.set_defaults(func="workbench.evaluation.ood:main")

    s = sub.add_parser("fetch-data", help="download CamVid and/or ISBI 2012 into the data root (resumable, verified, atomic)")
    s.add_argument("dataset", choices=["camvid", "isbi", "all"])
    s.add_argument("--data-root", default=None, help="where to put camvid/ and isbi2012-membrane/ (default: $WORKBENCH_DATA_ROOT, then ../shared/data)")
    s.add_argument("--url", default=None, help="archive URL, file:// URL or local .zip instead of the public one (also $WORKBENCH_CAMVID_URL / $WORKBENCH_ISBI_URL)")
    s.add_argument("--force", action="store_true", help="download again and replace the dataset folder even if present (or invalid)")
    s.add_argument("--quiet", action="store_true", help="no progress bars or status lines, errors only")
    s.set_defaults(func="workbench.data.fetch:main")

    s = sub.add_parser("export", help="copy a checkpoint under a new name (verified; fp16 weights), e.g. a run's best into checkpoints/; or --onnx")
    s.add_argument("src", help="source checkpoint (.json)")
    s.add_argument("dst", help="destination path without suffix, e.g. checkpoints/camvid_unet")
    s.add_argument("--onnx", action="store_true", help="write DST.onnx instead (dynamic batch, height and width; normalization inside), checked with ONNX Runtime")
    s.add_argument("--no-check", action="store_true", help="with --onnx: skip the ONNX Runtime check")
    s.add_argument("--dtype", default="float16", choices=["float16", "bfloat16", "float32"])
    s.add_argument("--default", action="store_true", help='mark as the default checkpoint of its architecture ("default": true)')
    s.add_argument("--set", action="append", type=_manifest_field, metavar="KEY=JSON", help="add or replace a top-level manifest field, e.g. upsampling_lab=true (repeatable; the value is JSON, else a string)")
    s.set_defaults(func="workbench.commands:cmd_export")

    s = sub.add_parser("loadtest", help="concurrent clients against the served app: correctness, errors, latency, memory")
    s.add_argument("--clients", type=int, default=16)
    s.add_argument("--requests", type=int, default=320)
    s.add_argument("--invalid-fraction", type=float, default=0.25)
    s.add_argument("--arch", nargs="+", default=["fcn8s", "unet"], help="architectures each request runs")
    s.add_argument("--url", default=None, help="a running app (default: start one on a free local port)")
    s.add_argument("--memory-bound", type=float, default=300.0, help="allowed growth of the server's resident memory (MB)")
    s.add_argument("--data-root", default=None)
    s.add_argument("--json", default=None, help="also write the figures to this JSON file")
    s.add_argument("--quiet", action="store_true")
    s.set_defaults(func="workbench.tools.loadtest:main")

    s = sub.add_parser("hub-push", help="upload a checkpoint to a Hugging Face Hub model repo (weights, manifest, model card; one commit)")
    s.add_argument("checkpoint", metavar="CHECKPOINT", help="the checkpoint's .json manifest (or its .safetensors)")
    s.add_argument("repo_id", metavar="REPO_ID", help="owner/name on the Hub")
    s.add_argument("--private", action="store_true", help="create the repository private")
    s.add_argument("--token", default=None, help="Hub token with write access (default: $HF_TOKEN or the one saved by `hf auth login`)")
    s.add_argument("--revision", default=None, help="branch to commit to (created if missing; default: main)")
    s.add_argument("--message", default=None, help="commit message")
    s.add_argument("--license", default=None, help="license in the model card (default: the manifest's 'license', else 'other')")
    s.set_defaults(func="workbench.commands:cmd_hub_push")

    s = sub.add_parser("hub-pull", help="download a checkpoint from the Hugging Face Hub (cached, sha256 verified); --out copies it into a folder")
    s.add_argument("repo_id", metavar="REPO_ID", help="owner/name on the Hub")
    s.add_argument("--revision", default=None, help="branch, tag or commit (default: main)")
    s.add_argument("--out", default=None, metavar="DIR", help="also write DIR/NAME.json + DIR/NAME.safetensors, e.g. checkpoints/")
    s.add_argument("--name", default=None, help="NAME for --out (default: the repository's name)")
    s.add_argument("--token", default=None, help="Hub token for private repositories (default: $HF_TOKEN)")
    s.set_defaults(func="workbench.commands:cmd_hub_pull")

    s = sub.add_parser("space", help="the Hugging Face Space: `workbench space deploy USER/NAME` assembles and uploads it")
    s.set_defaults(func="workbench.tools.space:cmd_space")  # dispatches on space_command
    space = s.add_subparsers(dest="space_command", required=True)
    s = space.add_parser("deploy", help="assemble the Space (app, package, plugins, checkpoints, examples, README front matter, requirements) and upload it with huggingface_hub; --dry-run only lists and checks")
    s.add_argument("repo_id", metavar="USER/NAME", help="the Space on the Hub (created if missing)")
    s.add_argument("--dry-run", action="store_true", help="upload nothing: list every file with its size and storage (git or LFS/Xet) and check the front matter and files against the Hub's rules")
    s.add_argument("--staging", default=None, metavar="DIR", help="assemble the Space in DIR (new or empty) and keep it (default: a temporary folder, removed afterwards; with --dry-run nothing is written unless given)")
    s.add_argument("--token", default=None, help="Hub token with write access (default: $HF_TOKEN or the one saved by `hf auth login`)")
    s.add_argument("--private", action="store_true", help="create the Space private (an existing Space keeps its visibility)")
    s.add_argument("--title", default=None, help="the Space's title (default: the README front matter's)")
    s.add_argument("--message", default=None, help="commit message")

    s = sub.add_parser("app", help="start the Gradio app")
    s.add_argument("--port", type=int, default=None)
    s.add_argument("--engine", default=None, choices=["auto", "torch", "openvino", "onnxruntime"], help="inference engine for every model (default: $WORKBENCH_ENGINE, else auto: the fastest whose labels match PyTorch's, measured at launch once per machine)")
    s.set_defaults(func="workbench.app.server:cmd_app")
    return p


# commands worth a caching allocator (see allocator.py): they run networks or the data pipeline for long
ALLOCATOR_COMMANDS = {"train", "distill", "eval", "bench", "bench-data", "app", "predict"}


def _engine_arg(argv: list[str]) -> str | None:
    """The value of ``--engine`` on a command line, if any."""
    for i, a in enumerate(argv):
        if a == "--engine" and i + 1 < len(argv):
            return argv[i + 1]
        if a.startswith("--engine="):
            return a.partition("=")[2]
    return None


def process_engine(command: str, argv: list[str]) -> str:
    """The inference engine a command line will run: ``--engine``, else ``$WORKBENCH_ENGINE``, else the
    command's default (``app`` and ``predict``: auto; ``bench --engines``: every engine, and ``bench --request``: the app's, so auto;
    the others: torch)."""
    if command == "bench" and ("--engines" in argv or "--request" in argv):
        return "auto"  # they run every engine (bench --engines --engine takes a list) or the app's engines
    asked = _engine_arg(argv) or os.environ.get("WORKBENCH_ENGINE")
    if asked:
        return asked
    return "auto" if command in ("app", "predict") else "torch"


def main(argv: list[str] | None = None) -> int:
    """Run one command (``argv``, default: the process's own arguments); returns the exit code: 0 success,
    2 a clear error (one line on stderr), 3 an OS error such as a full disk."""
    if argv is None:  # a real command line, not a call from Python: swap the allocator before torch loads
        command = next((a for a in sys.argv[1:] if not a.startswith("-")), None)
        if command in ALLOCATOR_COMMANDS:  # a run that may use OpenVINO keeps the system allocator (allocator.py)
            reexec_with_allocator(process_engine(command, sys.argv[1:]))
    args = build_parser().parse_args(argv)
    try:
        func = _resolve(args.func) if isinstance(args.func, str) else args.func
        return int(func(args) or 0)
    except (ValueError, KeyError, FileNotFoundError, FileExistsError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # disk full, permissions, ...: say what failed, no traceback
        print(f"error: {exc.strerror or exc}{f': {exc.filename}' if exc.filename else ''} ({type(exc).__name__}); nothing already written was replaced", file=sys.stderr)
        return 3


if __name__ == "__main__":
    sys.exit(main())
