"""The ``workbench`` command line (also ``python -m workbench``)."""

from __future__ import annotations

import argparse
import sys

__all__ = ["main", "build_parser"]


def _cmd_list(args) -> int:
    from .registry import get_architecture, list_architectures, plugin_errors

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
    from .analysis import count_flops, count_parameters, stage_shapes
    from .registry import create_model, get_architecture

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
    from . import bench

    return bench.main(args)


def _cmd_app(args) -> int:
    import runpy

    from .paths import app_path

    sys.argv = [str(app_path())] + (["--port", str(args.port)] if args.port else [])
    runpy.run_path(str(app_path()), run_name="__main__")
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
    s.add_argument("--out", help="write <out>.json and <out>.md")
    s.set_defaults(func=_cmd_bench)

    s = sub.add_parser("app", help="start the Gradio app")
    s.add_argument("--port", type=int, default=None)
    s.set_defaults(func=_cmd_app)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, KeyError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
