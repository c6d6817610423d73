"""Serving the app: process settings, the examples warmed in the background, ``demo.launch`` and the command line."""

from __future__ import annotations

import argparse
import os

import gradio as gr

from . import gpu
from .common import ENGINES, default_selection, example_images, max_upload, set_engine, zoo
from .common import engine as engine_in_use
from .layout import build_app
from .patches import limit_malloc_arenas
from .segment import warm_examples
from .theme import CSS

__all__ = ["cmd_app", "launch", "main"]

MAX_SESSIONS = 128  # sessions whose state is kept; the oldest are dropped beyond this


def warm_examples_enabled() -> bool:
    """Compute the Compare examples' results in the background at start-up: on by default on a Space (``SPACE_ID``
    is set there), off locally where a quiet CPU matters more (``WORKBENCH_WARM_EXAMPLES`` decides)."""
    return os.environ.get("WORKBENCH_WARM_EXAMPLES", "1" if os.environ.get("SPACE_ID") else "0") == "1"


def launch(host: str = "127.0.0.1", port: int = 7860, engine: str | None = None, **kwargs) -> gr.Blocks:
    """Build the app and serve it (blocks until the server stops unless ``prevent_thread_lock=True``).

    Caps glibc's malloc arenas, builds the app (:func:`~workbench.app.build_app`), warms the examples when
    :func:`warm_examples_enabled` and calls ``demo.launch`` with the upload limit, the CSS and the session cap;
    ``engine``: the inference engine every model asks for (None: ``$WORKBENCH_ENGINE``, else ``common.DEFAULT_ENGINE``);
    ``kwargs`` go to ``demo.launch``. Returns the Blocks.
    """
    set_engine(engine)
    limit_malloc_arenas()
    examples, selection = example_images(), default_selection()
    demo = build_app(examples, selection)
    if gpu.spaces is None:  # on ZeroGPU the GPU exists only inside requests
        if engine_in_use() == "auto":  # measure (or read the cached choice of) every trained model's engine now, Compare's first
            zoo().prepare(selection + [n for n, e in zoo().entries.items() if e.trained and n not in selection])
        if warm_examples_enabled():
            warm_examples(examples, selection)
    demo.launch(server_name=host, server_port=port, max_file_size=max_upload(), css=CSS, state_session_capacity=MAX_SESSIONS, **kwargs)
    return demo


def main(argv: list[str] | None = None) -> None:
    """``python app.py [--host H] [--port P] [--engine E]`` and ``workbench app``."""
    p = argparse.ArgumentParser(description="Serve the Segmentation Workbench app")
    p.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"))
    p.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", "7860")))
    p.add_argument("--engine", default=None, choices=ENGINES, help="inference engine for every model (default: $WORKBENCH_ENGINE, else auto: the fastest whose labels match PyTorch's, measured at launch once per machine)")
    args = p.parse_args(argv)
    launch(args.host, args.port, engine=args.engine)


def cmd_app(args) -> int:
    """``workbench app [--port P] [--engine E]`` (the CLI has already swapped the allocator)."""
    main((["--port", str(args.port)] if args.port else []) + (["--engine", args.engine] if getattr(args, "engine", None) else []))
    return 0
