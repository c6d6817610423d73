"""The ``workbench`` command line (also ``python -m workbench``)."""

from __future__ import annotations

import argparse
import json
import sys

__all__ = ["main", "build_parser"]


def _cmd_list(args) -> int:
    from .models.registry import get_architecture, list_architectures, plugin_errors

    for name in list_architectures(args.pattern):
        info = get_architecture(name)
        print(f"{name:16s} {info.title:40s} encoder={info.default_encoder} upsample={info.default_upsample}")
    errors = plugin_errors()
    if errors:
        print(f"\n{len(errors)} plugin(s) failed to load:", file=sys.stderr)
        for where, err in errors.items():
            print(f"  {where}: {err}", file=sys.stderr)
    return 1 if errors and args.strict else 0


def _cmd_info(args) -> int:
    from .models.anatomy import count_flops, count_parameters, stage_shapes
    from .models.registry import create_model, get_architecture

    info = get_architecture(args.name)
    model = create_model(args.name, num_classes=args.num_classes)
    print(f"{info.title} ({info.name})\n{info.paper}\n\n{info.explanation}\n")
    print(f"parameters: {count_parameters(model):,}")
    print(f"GFLOPs at {args.size[0]}x{args.size[1]}: {count_flops(model, tuple(args.size)) / 1e9:.2f}")
    print(f"options: {', '.join(info.options) or '-'}\n")
    print(f"{'stage':28s} {'channels':>8s} {'H x W':>12s} {'1/x':>6s}")
    for s in stage_shapes(model, tuple(args.size)):
        print(f"{s.name:28s} {s.channels:8d} {f'{s.height}x{s.width}':>12s} {s.reduction:6g}")
    return 0


def _cmd_bench(args) -> int:
    from .tools import bench

    return bench.main(args)


def _cmd_bench_data(args) -> int:
    from .data import device as device_data

    return device_data.main(args)


def _cmd_train(args) -> int:
    from .training import trainer as train

    return train.main(args)


def _cmd_export(args) -> int:
    import torch

    from .io.checkpoint import export_checkpoint

    if args.onnx:
        from .io.onnx import export_onnx

        if args.set or args.default:
            raise ValueError("--set and --default describe a workbench checkpoint; they do not apply to --onnx")
        res = export_onnx(args.src, args.dst, check=not args.no_check)
        print(f"wrote {res['path']} ({res['bytes'] / 1e6:.1f} MB, opset {res['opset']}; input 'image' (B, C, H, W) 0..255, output 'logits', any H, W >= 32)")
        for row in res["checks"]:
            h, w = row["size"]
            print(f"  ONNX Runtime vs PyTorch at {h}x{w}: labels agree on {100 * row['label_agreement']:.3f}% of pixels, max |logit diff| {row['max_abs_logit_diff']:.2e}")
        return 0
    extra = {"default": True} if args.default else {}
    extra.update(dict(args.set or []))
    fixed = sorted(set(extra) & {"architecture", "kwargs", "weights", "format", "format_version", "software", "created_utc"})
    if fixed:
        raise ValueError(f"--set cannot change {', '.join(fixed)}: they describe the weights themselves")
    dtype = {"float16": torch.float16, "float32": None, "bfloat16": torch.bfloat16}[args.dtype]
    path = export_checkpoint(args.src, args.dst, dtype=dtype, extra=extra)
    print(f"wrote {path} and {path.with_suffix('.safetensors').name}")
    return 0


def _cmd_loadtest(args) -> int:
    from .tools import loadtest

    return loadtest.main(args)


def _cmd_fetch_data(args) -> int:
    from .data.fetch import FetchError, _fetch, usage_hint
    from .paths import resolve_data_root

    names = ["camvid", "isbi"] if args.dataset == "all" else [args.dataset]
    if args.url and len(names) > 1:
        print("error: --url names one archive; give a dataset (camvid or isbi), or use WORKBENCH_CAMVID_URL / WORKBENCH_ISBI_URL", file=sys.stderr)
        return 2
    failed = 0
    for name in names:
        try:
            _fetch(name, args.data_root, url=args.url, force=args.force, progress=not args.quiet, hint=False)
        except FetchError as exc:
            failed += 1
            print(f"error: {name}: {exc}", file=sys.stderr)
    if failed < len(names) and not args.quiet:
        print(usage_hint(resolve_data_root(args.data_root).absolute()))
    return 2 if failed else 0


def _cmd_app(args) -> int:
    import runpy

    from .paths import app_path

    sys.argv = [str(app_path())] + (["--port", str(args.port)] if args.port else [])
    runpy.run_path(str(app_path()), run_name="__main__")
    return 0


def _manifest_field(text: str) -> tuple[str, object]:
    import json

    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"expected KEY=JSON, got {text!r}")
    try:
        return key.strip(), json.loads(value)
    except json.JSONDecodeError:
        return key.strip(), value


def _dataset_option(text: str):
    from .evaluation.evaluate import parse_dataset_option

    try:
        return parse_dataset_option(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _cmd_eval(args) -> int:
    from .io.checkpoint import CheckpointError
    from .evaluation.evaluate import STANDARD_PROTOCOL, EvaluationError, collect_checkpoints, evaluate_checkpoint, format_leaderboard, protocol_deviations, update_manifest, write_results

    if args.update_manifests:  # refused before any work, not after minutes of evaluation
        extra = protocol_deviations({"flip": args.flip, "scales": args.scales, "limit": args.limit})
        if extra:
            print(
                f"error: --update-manifests records the standard protocol ({STANDARD_PROTOCOL}); "
                f"drop {' '.join('--' + k for k in extra)} or evaluate without --update-manifests",
                file=sys.stderr,
            )
            return 2
    checkpoints, warnings = collect_checkpoints(args.checkpoints)
    for w in warnings:
        print(f"warning: {w}", file=sys.stderr)
    if not checkpoints:
        print("error: no checkpoint to evaluate (give .json manifests written by save_checkpoint)", file=sys.stderr)
        return 2
    results, failed = [], 0
    for ckpt in checkpoints:
        try:
            results.append(
                evaluate_checkpoint(
                    ckpt,
                    dataset=args.dataset,
                    split=args.split,
                    data_root=args.data_root,
                    dataset_options=dict(args.dataset_option or []) or None,
                    flip=args.flip,
                    scales=args.scales,
                    window=tuple(args.window) if args.window else None,
                    stride=tuple(args.stride) if args.stride else None,
                    limit=args.limit,
                    device=args.device,
                    precision=args.precision,
                    progress=not args.quiet,
                    cost=args.cost or args.update_manifests,
                )
            )
            if args.update_manifests:
                update_manifest(results[-1])
        except (CheckpointError, EvaluationError, ValueError) as exc:
            failed += 1
            print(f"error: {ckpt}: {exc}", file=sys.stderr)
    if results:
        written = write_results(results, args.out)
        for split in dict.fromkeys(r["split"] for r in results):
            print(f"## {split}\n")
            print(format_leaderboard([r for r in results if r["split"] == split]))
        n_files = sum(len(v) for v in written.values())
        print(f"wrote {n_files} files to {args.out}: " + ", ".join(p.name for p in written["leaderboard"]) + " and per checkpoint .json / .confusion.png")
    if failed:
        print(f"{failed} of {len(checkpoints)} checkpoint(s) could not be evaluated", file=sys.stderr)
        return 2
    return 0


def _cmd_weights(args) -> int:
    import json
    import warnings

    import numpy as np

    from .data.datasets import build_dataset
    from .data.weighting import SEGNET_CAMVID_WEIGHTS, class_pixel_stats, inverse_frequency_weights, median_frequency_weights

    options = {"path": args.path} if args.path else {}
    ds = build_dataset(args.dataset, args.split, data_root=args.data_root, **options)
    pixels, image_pixels = class_pixel_stats(ds.masks(), ds.num_classes, ds.ignore_index)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if args.method == "median":
            weights = median_frequency_weights(pixels, image_pixels)
        else:
            weights = inverse_frequency_weights(pixels)
    share = pixels / max(int(pixels.sum()), 1)
    freq = np.divide(pixels, image_pixels, out=np.zeros(len(pixels)), where=image_pixels > 0) if args.method == "median" else share
    reference = SEGNET_CAMVID_WEIGHTS if ds.name == "camvid" else None
    title = {"median": "median-frequency", "inverse": "inverse-frequency"}[args.method]
    print(f"{ds.name}/{ds.split}: {len(ds)} label maps, {ds.num_classes} classes, {title} weights (ignore index {ds.ignore_index} excluded)")
    header = f"{'id':>3s}  {'class':14s} {'pixels %':>9s} {'freq':>8s} {'weight':>8s}"
    if reference:
        header += f" {'SegNet':>8s} {'ratio':>6s}"
    print(header)
    for c, info in enumerate(ds.classes):
        line = f"{c:3d}  {info['name']:14s} {100 * share[c]:9.3f} {freq[c]:8.4f} {weights[c]:8.4f}"
        if reference:
            line += f" {reference[c]:8.4f} {weights[c] / reference[c]:6.3f}"
        print(line)
    for w in caught:
        print(f"warning: {w.message}", file=sys.stderr)
    if args.json:
        out = {
            "dataset": ds.name,
            "split": ds.split,
            "method": args.method,
            "images": len(ds),
            "classes": [c["name"] for c in ds.classes],
            "pixels": pixels.tolist(),
            "image_pixels": image_pixels.tolist(),
            "frequency": [float(f) for f in freq],
            "weights": [float(w) for w in weights],
        }
        if reference:
            out["segnet_reference"] = list(reference)
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=2)
        print(f"wrote {args.json}")
    return 0


def _cmd_hub_push(args) -> int:
    from .io.hub import push_to_hub

    url = push_to_hub(args.checkpoint, args.repo_id, token=args.token, private=args.private, revision=args.revision, commit_message=args.message, license=args.license)
    print(f"pushed {args.checkpoint} to https://huggingface.co/{args.repo_id} (model.safetensors, workbench.json, README.md in one commit)\n{url}")
    return 0


def _cmd_hub_pull(args) -> int:
    from .io.checkpoint import load_checkpoint
    from .io.hub import download_from_hub, save_local_copy

    path = download_from_hub(args.repo_id, revision=args.revision, token=args.token)
    if args.out:
        dst = save_local_copy(path, args.out, args.name or args.repo_id.split("/")[-1])
        print(f"wrote {dst} and {dst.with_suffix('.safetensors').name} (sha256 verified)")
        return 0
    _model, manifest = load_checkpoint(path)
    print(f"{args.repo_id}: {manifest['architecture']} checkpoint, sha256 verified, cached at {path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="workbench", description="Segmentation Workbench: compare segmentation architectures.")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("list", help="list registered architectures and plugin errors")
    s.add_argument("pattern", nargs="?", default=None, help="fnmatch filter, e.g. 'fcn*'")
    s.add_argument("--strict", action="store_true", help="exit 1 if a plugin failed to load")
    s.set_defaults(func=_cmd_list)

    s = sub.add_parser("info", help="explain one architecture: parameters, FLOPs, feature-map sizes")
    s.add_argument("name")
    s.add_argument("--num-classes", type=int, default=11)
    s.add_argument("--size", type=int, nargs=2, default=[360, 480], metavar=("H", "W"))
    s.set_defaults(func=_cmd_info)

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
    s.add_argument("--engines", action="store_true", help="one architecture through torch eager, the fast path, torch.compile and ONNX Runtime")
    s.add_argument("--request", action="store_true", help="the app's whole Compare request instead, by stage, plus the served app end to end")
    s.add_argument("--image", default=None, help="image for --request (default: the first CamVid test image)")
    s.add_argument("--render", metavar="JSON", help="measure nothing: rewrite the Markdown table of a stored result (to --out, else beside the JSON)")
    s.set_defaults(func=_cmd_bench)

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
    s.set_defaults(func=_cmd_bench_data)

    from .training.trainer import build_parser as train_flags

    s = sub.add_parser("train", help="train an architecture on a dataset (CamVid, ISBI, a folder, synthetic)")
    train_flags(s)
    s.set_defaults(func=_cmd_train)

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
    s.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16", "auto"])
    s.add_argument("--out", default="eval_results", help="output folder (default: eval_results/)")
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    s.add_argument("--cost", action="store_true", help="also measure GFLOPs and the app's CPU latency at 360x480")
    s.add_argument("--update-manifests", action="store_true", help="write the metrics (and cost) into each checkpoint's manifest")
    s.set_defaults(func=_cmd_eval)

    s = sub.add_parser("weights", help="class frequencies and loss weights of a dataset split (vs SegNet's for CamVid)")
    s.add_argument("--dataset", default="camvid", help="camvid, isbi, folder or synthetic (default: camvid)")
    s.add_argument("--split", default="train")
    s.add_argument("--data-root", default=None, help="folder holding camvid/ etc. (default: $WORKBENCH_DATA_ROOT, then ../shared/data)")
    s.add_argument("--path", default=None, help="the folder of a 'folder' dataset")
    s.add_argument("--method", default="median", choices=["median", "inverse"])
    s.add_argument("--json", default=None, metavar="OUT", help="also write the numbers to this JSON file")
    s.set_defaults(func=_cmd_weights)

    s = sub.add_parser("fetch-data", help="download CamVid and/or ISBI 2012 into the data root (resumable, verified, atomic)")
    s.add_argument("dataset", choices=["camvid", "isbi", "all"])
    s.add_argument("--data-root", default=None, help="where to put camvid/ and isbi2012-membrane/ (default: $WORKBENCH_DATA_ROOT, then ../shared/data)")
    s.add_argument("--url", default=None, help="archive URL, file:// URL or local .zip instead of the public one (also $WORKBENCH_CAMVID_URL / $WORKBENCH_ISBI_URL)")
    s.add_argument("--force", action="store_true", help="download again and replace the dataset folder even if present (or invalid)")
    s.add_argument("--quiet", action="store_true", help="no progress bars or status lines, errors only")
    s.set_defaults(func=_cmd_fetch_data)

    s = sub.add_parser("export", help="copy a checkpoint under a new name (verified; fp16 weights), e.g. a run's best into checkpoints/; or --onnx")
    s.add_argument("src", help="source checkpoint (.json)")
    s.add_argument("dst", help="destination path without suffix, e.g. checkpoints/camvid_unet")
    s.add_argument("--onnx", action="store_true", help="write DST.onnx instead (dynamic batch, height and width; normalization inside), checked with ONNX Runtime")
    s.add_argument("--no-check", action="store_true", help="with --onnx: skip the ONNX Runtime check")
    s.add_argument("--dtype", default="float16", choices=["float16", "bfloat16", "float32"])
    s.add_argument("--default", action="store_true", help='mark as the default checkpoint of its architecture ("default": true)')
    s.add_argument("--set", action="append", type=_manifest_field, metavar="KEY=JSON", help="add or replace a top-level manifest field, e.g. upsampling_lab=true (repeatable; the value is JSON, else a string)")
    s.set_defaults(func=_cmd_export)

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
    s.set_defaults(func=_cmd_loadtest)

    s = sub.add_parser("hub-push", help="upload a checkpoint to a Hugging Face Hub model repo (weights, manifest, model card; one commit)")
    s.add_argument("checkpoint", metavar="CHECKPOINT", help="the checkpoint's .json manifest (or its .safetensors)")
    s.add_argument("repo_id", metavar="REPO_ID", help="owner/name on the Hub")
    s.add_argument("--private", action="store_true", help="create the repository private")
    s.add_argument("--token", default=None, help="Hub token with write access (default: $HF_TOKEN or the one saved by `hf auth login`)")
    s.add_argument("--revision", default=None, help="branch to commit to (created if missing; default: main)")
    s.add_argument("--message", default=None, help="commit message")
    s.add_argument("--license", default=None, help="license in the model card (default: the manifest's 'license', else 'other')")
    s.set_defaults(func=_cmd_hub_push)

    s = sub.add_parser("hub-pull", help="download a checkpoint from the Hugging Face Hub (cached, sha256 verified); --out copies it into a folder")
    s.add_argument("repo_id", metavar="REPO_ID", help="owner/name on the Hub")
    s.add_argument("--revision", default=None, help="branch, tag or commit (default: main)")
    s.add_argument("--out", default=None, metavar="DIR", help="also write DIR/NAME.json + DIR/NAME.safetensors, e.g. checkpoints/")
    s.add_argument("--name", default=None, help="NAME for --out (default: the repository's name)")
    s.add_argument("--token", default=None, help="Hub token for private repositories (default: $HF_TOKEN)")
    s.set_defaults(func=_cmd_hub_pull)

    s = sub.add_parser("app", help="start the Gradio app")
    s.add_argument("--port", type=int, default=None)
    s.set_defaults(func=_cmd_app)
    return p


# commands worth a caching allocator (see allocator.py): they run networks or the data pipeline for long
ALLOCATOR_COMMANDS = {"train", "eval", "bench", "bench-data", "app"}


def main(argv: list[str] | None = None) -> int:
    if argv is None:  # a real command line, not a call from Python: swap the allocator before torch loads
        command = next((a for a in sys.argv[1:] if not a.startswith("-")), None)
        if command in ALLOCATOR_COMMANDS:
            from .tools.allocator import reexec_with_allocator

            reexec_with_allocator()
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, KeyError, FileNotFoundError, FileExistsError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # disk full, permissions, ...: say what failed, no traceback
        print(f"error: {exc.strerror or exc}{f': {exc.filename}' if exc.filename else ''} ({type(exc).__name__}); nothing already written was replaced", file=sys.stderr)
        return 3


if __name__ == "__main__":
    sys.exit(main())
