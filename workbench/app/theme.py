"""The app's look: a little CSS for the cards' badges, errors and statistics (passed to ``launch``)."""

from __future__ import annotations

__all__ = ["CSS", "TITLE"]

TITLE = "Segmentation Workbench"

CSS = """
.wb-badge {font-size: 0.8em; padding: 1px 6px; border-radius: 8px; margin-left: 6px}
.wb-untrained {background: #fde68a; color: #7c2d12}
.wb-trained {background: #bbf7d0; color: #14532d}
.wb-own {background: #bfdbfe; color: #1e3a8a}
.wb-error {color: #b91c1c; font-weight: 600}
.wb-stats {font-size: 0.9em; color: #555}
"""
