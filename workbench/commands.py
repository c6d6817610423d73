"""What the ``workbench`` commands without a home of their own do: list, info, export, eval, weights,
hub-push and hub-pull (each ``cmd_x(args) -> exit code``, printing for a terminal).

The command line itself (:mod:`workbench.cli`) parses the arguments and imports this module only when
one of these commands runs; the other commands' entry points live beside their code
(``tools/bench.py``, ``tools/loadtest.py``, ``data/bench.py``, ``data/fetch.py``, ``training/trainer.py``).
"""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

import numpy as np
import torch

from .data.datasets import build_dataset
from .data.weighting import SEGNET_CAMVID_WEIGHTS, class_pixel_stats, inverse_frequency_weights, median_frequency_weights
from .evaluation.ensemble import evaluate_ensemble
from .evaluation.evaluate import EvaluationError, evaluate_checkpoint
from .evaluation.leaderboard import precision_section
from .evaluation.manifests import STANDARD_PROTOCOL, collect_checkpoints, protocol_deviations, record_int8, update_manifest, write_int8_entry
from .evaluation.report import format_leaderboard, write_results
from .io.checkpoint import CheckpointError, export_checkpoint, load_checkpoint
from .io.hub import download_from_hub, push_to_hub, save_local_copy
from .io.onnx import export_onnx
from .models.anatomy import count_flops, count_parameters, stage_shapes
from .models.registry import create_model, get_architecture, list_architectures, plugin_errors

__all__ = ["cmd_list", "cmd_info", "cmd_export", "cmd_eval", "cmd_quantize", "cmd_weights", "cmd_hub_push", "cmd_hub_pull"]


def cmd_list(args) -> int:
    """``workbench list [PATTERN]``: the registered architectures, then plugins that failed to load (exit 1 with --strict)."""
    for name in list_architectures(args.pattern):
        info = get_architecture(name)
        print(f"{name:16s} {info.title:40s} encoder={info.default_encoder} upsample={info.default_upsample}")
    errors = plugin_errors()
    if errors:
        print(f"\n{len(errors)} plugin(s) failed to load:", file=sys.stderr)
        for where, err in errors.items():
            print(f"  {where}: {err}", file=sys.stderr)
    return 1 if errors and args.strict else 0


def cmd_info(args) -> int:
    """``workbench info NAME``: the paper, parameters, FLOPs and every stage's feature-map size."""
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


def cmd_export(args) -> int:
    """``workbench export SRC DST``: a verified copy (fp16 weights by default, manifest fields set), or ``--onnx``."""
    if args.onnx:
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


def _each_checkpoint(patterns, verb: str, work) -> tuple[list, list, int] | None:
    """Run ``work(checkpoint)`` for every manifest ``patterns`` name (globs welcome), one at a time.

    Prints the collection's warnings; a checkpoint that fails (cannot be loaded, no data, a model the engine
    cannot run) is reported and the others still run. Returns ``(checkpoints, results, failed)`` with the
    non-None results, or None (after printing why) when no checkpoint matched.
    """
    checkpoints, warnings_ = collect_checkpoints(patterns)
    for w in warnings_:
        print(f"warning: {w}", file=sys.stderr)
    if not checkpoints:
        print(f"error: no checkpoint to {verb} (give .json manifests written by save_checkpoint)", file=sys.stderr)
        return None
    results, failed = [], 0
    for ckpt in checkpoints:
        try:
            res = work(ckpt)
        except (CheckpointError, EvaluationError, ValueError, RuntimeError) as exc:  # RuntimeError: a runtime that cannot convert or run the model
            failed += 1
            print(f"error: {ckpt}: {exc}", file=sys.stderr)
            continue
        if res is not None:
            results.append(res)
    if failed:
        print(f"{failed} of {len(checkpoints)} checkpoint(s) could not {verb}", file=sys.stderr)
    return checkpoints, results, failed


def cmd_eval(args) -> int:
    """``workbench eval CHECKPOINT ...``: metrics JSON, leaderboard and confusion plots per split; 2 if any failed."""
    if getattr(args, "ensemble", False):
        return _eval_ensemble(args)
    if args.update_manifests:  # refused before any work, not after minutes of evaluation
        extra = protocol_deviations({"flip": args.flip, "scales": args.scales, "limit": args.limit})
        if args.engine != "torch":  # the manifest's metrics are the PyTorch model's; int8 figures go through workbench quantize
            extra = [*extra, "engine"]
        if extra:
            print(
                f"error: --update-manifests records the standard protocol ({STANDARD_PROTOCOL}) run through PyTorch; "
                f"drop {' '.join('--' + k for k in extra)} or evaluate without --update-manifests",
                file=sys.stderr,
            )
            return 2

    def work(ckpt):
        res = evaluate_checkpoint(
            ckpt,
            **_eval_options(args),
            cost=args.cost or args.update_manifests,
            engine=args.engine,
            agreement_every=args.agreement_every,
        )
        if args.update_manifests:
            update_manifest(res)
        if args.engine != "torch":
            opts, agree = res["options"], res.get("label_agreement") or {}
            print(
                f"{Path(ckpt).name}: ran on {opts.get('engine')} {opts.get('precision')}"
                + (f" ({opts['engine_reason']})" if opts.get("engine_reason") else "")
                + _agreement_text(agree, "images"),
                flush=True,
            )
        return res

    done = _each_checkpoint(args.checkpoints, "be evaluated", work)
    if done is None:
        return 2
    _checkpoints, results, failed = done
    if results:
        written = write_results(results, args.out)
        for split in dict.fromkeys(r["split"] for r in results):
            print(f"## {split}\n")
            print(format_leaderboard([r for r in results if r["split"] == split]))
        n_files = sum(len(v) for v in written.values())
        print(f"wrote {n_files} files to {args.out}: " + ", ".join(p.name for p in written["leaderboard"]) + " and per checkpoint .json / .confusion.png")
    return 2 if failed else 0


def _eval_options(args) -> dict:
    """The options ``workbench eval`` passes to the evaluation of a checkpoint and of an ensemble alike."""
    return dict(
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
    )


def _eval_ensemble(args) -> int:
    """``workbench eval CHECKPOINT ... --ensemble``: the checkpoints' mean probabilities as one model, written like one checkpoint's result."""
    refused = [flag for flag, on in (("--update-manifests", args.update_manifests), ("--cost", args.cost), ("--engine", args.engine != "torch"),
                                     ("--agreement-every", args.agreement_every is not None), ("--precision int8", args.precision == "int8")) if on]
    if refused:
        print(f"error: --ensemble evaluates in PyTorch and writes no manifest (an ensemble is not a checkpoint): drop {', '.join(refused)}", file=sys.stderr)
        return 2
    try:
        res = evaluate_ensemble(args.checkpoints, **_eval_options(args))
    except (CheckpointError, EvaluationError, FileNotFoundError, ValueError, RuntimeError) as exc:
        print(f"error: ensemble: {exc}", file=sys.stderr)
        return 2
    written = write_results([res], args.out)
    print(f"## {res['split']}: ensemble of {len(res['ensemble']['members'])}\n")
    print(format_leaderboard([res]))
    print(f"wrote {', '.join(p.name for v in written.values() for p in v)} to {args.out}")
    return 0


def _agreement_text(agree: dict, what: str) -> str:
    """``; labels vs fp32 eager on N <what>: mean ..%, worst ..%`` for a result's ``label_agreement`` (empty without one)."""
    if not agree.get("images"):
        return ""
    return f"; labels vs fp32 eager on {agree['images']} {what}: mean {100 * agree['mean']:.2f}%, worst {100 * agree['worst']:.2f}%"


def cmd_quantize(args) -> int:
    """``workbench quantize CHECKPOINT ...``: int8 (NNCF + OpenVINO) calibrated on training images, evaluated on the
    test split through the engine, accepted only within the mIoU rule, recorded in each manifest; 2 if any failed.

    A refused int8 model's files are deleted (its figures stay in the manifest) unless ``--keep-refused``: the
    engines pick up any IR lying beside a checkpoint."""
    from .inference.quantize import quantize_checkpoint  # nncf and openvino load only for this command

    def work(ckpt):
        xml, info = quantize_checkpoint(ckpt, data_root=args.data_root, calib_images=args.calib_images, seed=args.seed, variant=args.variant)
        write_int8_entry(ckpt, info)
        kept = f", {len(info['fp32_layers'])} layer(s) kept in fp32" if info.get("fp32_layers") else ""
        print(f"{ckpt.name}: wrote {xml.name} (+ .bin, {info['bytes'] / 1e6:.1f} MB) in {info['quantize_s']:.0f} s, {info['calibration']['images']} calibration images, variant {args.variant}{kept}", flush=True)
        if args.no_eval:
            return None
        res = evaluate_checkpoint(ckpt, split="test", data_root=args.data_root, engine="openvino", precision="int8", progress=not args.quiet, agreement_every=args.agreement_every)
        record_int8(res)
        entry = json.loads(Path(ckpt).read_text(encoding="utf-8"))["inference"]["int8"]
        agree = res.get("label_agreement") or {}
        removed = ""
        if not entry["accepted"] and not args.keep_refused:
            for f in (xml, xml.with_suffix(".bin")):
                f.unlink(missing_ok=True)
            removed = f"; deleted {xml.name} and its .bin (--keep-refused keeps them)"
        print(
            f"{ckpt.name}: int8 {'ACCEPTED' if entry['accepted'] else 'refused'}: {entry['reason']}"
            + _agreement_text(agree, "test images")
            + removed,
            flush=True,
        )
        return res

    done = _each_checkpoint(args.checkpoints, "be quantized", work)
    if done is None:
        return 2
    checkpoints, results, failed = done
    if results and args.out:
        write_results(results, args.out, merge=True)  # the folder collects the zoo's int8 results one run at a time
        print(f"wrote the int8 results to {args.out}")
    if args.leaderboard:
        _update_precision_section(args.leaderboard, Path(checkpoints[0]).parent)
    return 2 if failed else 0


PRECISION_BEGIN = "<!-- precision-the-app-runs: written by workbench quantize --leaderboard -->"


def _update_precision_section(path, checkpoints_dir) -> None:
    """Replace (or add) the section of ``path`` (a leaderboard Markdown) that says which precision the app runs."""
    p = Path(path)
    text = p.read_text(encoding="utf-8") if p.is_file() else ""
    text = text.split(PRECISION_BEGIN)[0].rstrip() + "\n\n"
    checkpoints, _ = collect_checkpoints([str(Path(checkpoints_dir) / "*.json")])
    manifests = {c.stem: json.loads(c.read_text(encoding="utf-8")) for c in checkpoints}
    dataset = lambda m: (m.get("dataset") or {}).get("name") if isinstance(m.get("dataset"), dict) else m.get("dataset")  # noqa: E731
    # the leaderboard's checkpoints: those served by the app (the upsampling lab's variants are not)
    section = precision_section({k: m for k, m in manifests.items() if dataset(m) == "camvid" and not m.get("upsampling_lab")})
    p.write_text(text + PRECISION_BEGIN + "\n" + section, encoding="utf-8")
    print(f"updated {p}: which precision the app runs")


def cmd_weights(args) -> int:
    """``workbench weights``: class pixel frequencies and median- or inverse-frequency loss weights (vs SegNet's on CamVid)."""
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


def cmd_hub_push(args) -> int:
    """``workbench hub-push CHECKPOINT REPO_ID``: weights, manifest and model card in one Hub commit."""
    url = push_to_hub(args.checkpoint, args.repo_id, token=args.token, private=args.private, revision=args.revision, commit_message=args.message, license=args.license)
    print(f"pushed {args.checkpoint} to https://huggingface.co/{args.repo_id} (model.safetensors, workbench.json, README.md in one commit)\n{url}")
    return 0


def cmd_hub_pull(args) -> int:
    """``workbench hub-pull REPO_ID``: download (sha256 verified) and, with ``--out``, copy into a folder."""
    path = download_from_hub(args.repo_id, revision=args.revision, token=args.token)
    if args.out:
        dst = save_local_copy(path, args.out, args.name or args.repo_id.split("/")[-1])
        print(f"wrote {dst} and {dst.with_suffix('.safetensors').name} (sha256 verified)")
        return 0
    _model, manifest = load_checkpoint(path)
    print(f"{args.repo_id}: {manifest['architecture']} checkpoint, sha256 verified, cached at {path}")
    return 0

