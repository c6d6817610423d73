"""Time Gradio's own output processing (``Blocks.postprocess_data``) of every streamed step of one seven-model
Compare run, in process, with the app's fast path for ``gr.skip()`` (default) or without it (``--no-fast-skip``).

    WORKBENCH_ALLOCATOR=system python scripts/gradio_output_timing.py [--no-fast-skip]

Prints the machine (ISA included) and the milliseconds per step and in all (docs/performance.md).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gradio import blocks  # noqa: E402
from gradio.state_holder import SessionState  # noqa: E402

from workbench.app.layout import build_app  # noqa: E402
from workbench.app.common import example_images  # noqa: E402
from workbench.system.machine import machine_description  # noqa: E402

ARCHS = ["fcn32s", "fcn16s", "fcn8s", "unet", "residual_unet", "tiramisu", "dilated"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--no-fast-skip", action="store_true", help="Gradio's own processing of skips (patches.install_fast_skip undone)")
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    demo = build_app()
    if args.no_fast_skip:
        blocks.Blocks.postprocess_data = blocks.Blocks.postprocess_data.workbench_original
    (dep,) = [d for d in demo.config["dependencies"] if d["api_name"] == "compare"]
    block_fn = demo.fns[dep["id"]]
    image, state = example_images(1)[0], SessionState(demo)
    for _ in range(args.rounds):  # the last round is reported: models loaded, files cached
        times = []
        for step in list(block_fn.fn(image, ARCHS, 0.5)):
            t = time.perf_counter()
            asyncio.run(demo.postprocess_data(block_fn, step, state))
            times.append((time.perf_counter() - t) * 1e3)
    print(machine_description())
    print(f"fast skip {'off' if args.no_fast_skip else 'on'}: Gradio's output processing per step (ms)", [round(t) for t in times], f"total {sum(times):.0f} ms")


if __name__ == "__main__":
    main()
