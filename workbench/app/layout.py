"""The page: a header, a status line and one tab per module, assembled into a ``gr.Blocks``.

Each tab module lays out its own components and wires its own events; adding a tab is a module and
one ``with gr.Tab`` here.
"""

from __future__ import annotations

import os

import gradio as gr

from . import architectures, evaluate, features, leaderboard, receptive, task, upsampling, weights
from .common import LIGHT, architectures as registered, default_selection, example_images, status_markdown
from .compare import CompareTab
from .patches import install_atomic_image_cache, install_fast_skip
from .segment import register_examples
from .theme import TITLE

__all__ = ["build_app", "queue_size"]


def queue_size() -> int:
    """Waiting events beyond this get "Queue is full" at once (``WORKBENCH_QUEUE_SIZE``, default 64)."""
    return int(os.environ.get("WORKBENCH_QUEUE_SIZE", "64"))


def build_app(examples: list[str] | None = None, selection: list[str] | None = None) -> gr.Blocks:
    """Build the app: every tab, its events and the queue.

    Asks the registry and the checkpoints folder, registers the example images (their Compare results are
    then cached) and makes Gradio's image cache write atomically; starts nothing (see :func:`~workbench.app.launch`).

    Args:
        examples: example image paths (default: :func:`~workbench.app.common.example_images`).
        selection: the Compare tab's preselected architectures (default: :func:`~workbench.app.common.default_selection`).
    """
    install_atomic_image_cache()
    install_fast_skip()
    names = registered()
    examples = register_examples(examples if examples is not None else example_images())
    selection = selection if selection is not None else default_selection()
    with gr.Blocks(title=TITLE, delete_cache=(1800, 3600)) as demo:  # uploads and results older than an hour are deleted
        gr.Markdown(
            "# Segmentation Workbench\nSee how semantic-segmentation architectures differ: run them side by side on your image. "
            "Models marked *untrained* have random weights until their trained checkpoint ships."
        )
        status = gr.Markdown()
        with gr.Tab("Compare"):
            compare_tab = CompareTab(names, selection, examples)
        with gr.Tab("Task representation"):
            task.build(names, examples)
        with gr.Tab("Receptive field"):
            receptive.build(names, examples)
        with gr.Tab("Feature maps"):
            features.build(names, examples)
        with gr.Tab("Architectures"):
            architectures.build(demo, names)
        with gr.Tab("Upsampling"):
            upsampling.build(demo, examples)
        with gr.Tab("Evaluate"):
            evaluate_models = evaluate.build(names, compare_tab.image)
        with gr.Tab("Leaderboard"):
            leaderboard.build(demo)
        with gr.Tab("Loss weighting"):
            weights.build()
        compare_tab.own.wire(names, compare_tab.archs, evaluate_models)  # a session's own checkpoints join both tabs' choices
        compare_tab.wire().then(status_markdown, None, status, api_name=False, **LIGHT)  # which engines ran, and why
        demo.load(status_markdown, None, status, api_name=False, **LIGHT)
    # Beyond queue_size() waiting events Gradio answers "Queue is full" at once instead of letting requests pile up.
    demo.queue(max_size=queue_size(), default_concurrency_limit=1)
    return demo
