"""ZeroGPU: on a Hugging Face ZeroGPU Space the model runs ask for a GPU with ``@spaces.GPU``.

``spaces`` must be imported before torch, so ``workbench.app`` imports this module first. Elsewhere the
package is absent and :func:`on_gpu` returns the function unchanged.
"""

from __future__ import annotations

try:  # Hugging Face ZeroGPU Spaces: `spaces` must be imported before torch; elsewhere it is absent
    import spaces
except ImportError:
    spaces = None

__all__ = ["gpu_duration", "on_gpu", "spaces"]


def gpu_duration(image_path=None, archs=None, *args, **kwargs) -> int:
    """Seconds of ZeroGPU time to ask for: model loading plus a few seconds per selected model."""
    return int(min(120, 10 + 4 * len(archs or ())))


def on_gpu(fn):
    """``@spaces.GPU`` with :func:`gpu_duration` on a ZeroGPU Space; the function itself everywhere else."""
    if spaces is None:
        return fn
    return spaces.GPU(duration=gpu_duration)(fn)
