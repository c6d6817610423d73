"""``python -m workbench.lab table [CHECKPOINT ...] --images N --out FILE``: the trained-variant table.

``scripts/train_upsampling.sh`` runs it after publishing the variants.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..paths import resolve_data_root
from .trained import variant_checkpoints, variant_markdown, variant_table


def main(argv: list[str] | None = None) -> int:
    """``python -m workbench.lab table [CHECKPOINT ...] --images N --out FILE``: the trained-variant table."""
    p = argparse.ArgumentParser(prog="python -m workbench.lab", description="Upsampling lab: the trained-variant table.")
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("table", help="test mIoU, checkerboard score and latency of the trained U-Net upsampling variants")
    t.add_argument("checkpoints", nargs="*", help="manifests (default: every upsampling_lab checkpoint in checkpoints/)")
    t.add_argument("--images", type=int, default=20, help="CamVid test images to average the checkerboard score over (default 20)")
    t.add_argument("--data-root", default=None)
    t.add_argument("--device", default="auto")
    t.add_argument("--out", default=None, help="also write the Markdown table to this file")
    args = p.parse_args(argv)
    ckpts = [Path(c) for c in args.checkpoints] or list(variant_checkpoints().values())
    if not ckpts:
        print("error: no upsampling-lab checkpoints found (scripts/train_upsampling.sh publish writes them)")
        return 2
    folder = resolve_data_root(args.data_root) / "camvid" / "test"
    files = sorted(folder.glob("*.png"))
    step = max(1, len(files) // max(args.images, 1))
    images = [str(f) for f in files[::step][: args.images]]
    if not images:
        print(f"warning: no CamVid test images under {folder}: checkerboard scores left empty")
    text = variant_markdown(variant_table(ckpts, images, device=args.device), len(images))
    print(text, end="")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text)
    return 0



if __name__ == "__main__":
    raise SystemExit(main())
