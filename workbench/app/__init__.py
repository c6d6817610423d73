"""The Gradio app: one module per tab, the page layout, the theme, and the launch.

::

    from workbench.app import build_app, launch
    demo = build_app()          # the gr.Blocks, queue configured, nothing started
    launch(port=7860)           # build and serve (``python app.py`` and ``workbench app`` do this)

Modules: ``common`` (zoo, uploads, examples, badges), ``segment`` (running the models, the example cache),
``compare``, ``task``, ``architectures``, ``upsampling``, ``leaderboard``, ``weights`` (the tabs), ``layout``
(``build_app``), ``theme`` (CSS), ``patches`` (process settings for serving), ``server`` (``launch``, ``main``) and ``gpu`` (ZeroGPU).
Importing any of them does no work: the registry, the checkpoints, the examples, Gradio patches and threads
are touched only by ``build_app`` and ``launch``.
"""

from __future__ import annotations

from . import gpu  # noqa: F401  first: on a ZeroGPU Space `spaces` must be imported before torch
from .server import launch, main
from .layout import build_app

__all__ = ["build_app", "launch", "main"]
