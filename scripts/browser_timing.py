"""Time the served app's Compare in headless Chromium: from the click on Segment to the first card and the last.

Usage:
    python scripts/browser_timing.py [--image IMG] [--engine auto torch] [--repeats 5] [--merge benchmarks/request_cpu_avx2.json]

Each engine gets a fresh app process (``WORKBENCH_ENGINE``); every figure is the median over ``--repeats``
requests after one that loads the models. ``--merge`` adds the figures to a stored ``workbench bench --request``
result (key ``browser``) and rewrites its Markdown beside it. Playwright drives Debian's /usr/bin/chromium.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from workbench.paths import resolve_data_root
from workbench.system.machine import machine_description
from workbench.tools.bench import markdown_for
from workbench.tools.bench_request import CLASSIC, browser_timing


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--image", default=None, help="default: the first CamVid test image under the data root")
    p.add_argument("--arch", nargs="+", default=list(CLASSIC))
    p.add_argument("--engine", nargs="+", default=["auto"], help="one app process per engine (default: auto)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--chromium", default="/usr/bin/chromium")
    p.add_argument("--merge", default=None, metavar="JSON", help="add the figures to this stored bench --request result")
    args = p.parse_args()
    image = args.image or str(sorted((resolve_data_root() / "camvid" / "test").glob("*.png"))[0])
    runs = []
    for engine in args.engine:
        r = browser_timing(image, args.arch, repeats=args.repeats, chromium=args.chromium, engine=engine)
        r["machine"] = machine_description()
        runs.append(r)
        print(json.dumps({k: v for k, v in r.items() if k != "runs"}))
    if args.merge:
        path = Path(args.merge)
        result = json.loads(path.read_text())
        result["browser"] = runs
        path.write_text(json.dumps(result, indent=2) + "\n")
        path.with_suffix(".md").write_text(markdown_for(result) + "\n")
        print(f"wrote {path} and {path.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
