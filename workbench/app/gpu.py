"""ZeroGPU: on a Hugging Face ZeroGPU Space every handler that runs a network asks for a GPU with ``@spaces.GPU``.

``spaces`` must be imported before torch, so ``workbench.app`` imports this module first. Elsewhere the
package is absent and :func:`on_gpu` returns the function unchanged (it still lists it in :data:`GPU_FUNCTIONS`).
Which handlers need it is checked by running every event of the built app under a stand-in ``spaces``
(``tests/test_space.py``): a handler that reaches a ``Predictor`` outside a wrapped function fails there.
"""

from __future__ import annotations

try:  # Hugging Face ZeroGPU Spaces: `spaces` must be imported before torch; elsewhere it is absent
    import spaces
except ImportError:
    spaces = None

__all__ = ["GPU_FUNCTIONS", "gpu_duration", "on_gpu", "spaces"]

# "module.qualname" -> the function as written, for every function wrapped by on_gpu (with or without `spaces`)
GPU_FUNCTIONS: dict[str, object] = {}


def gpu_duration(image_path=None, archs=None, *args, **kwargs) -> int:
    """Seconds of ZeroGPU time to ask for: model loading plus a few seconds per selected model."""
    return int(min(120, 10 + 4 * len(archs or ())))


def on_gpu(fn=None, *, duration=gpu_duration):
    """``@spaces.GPU`` with ``duration`` (seconds, or a function of the call's arguments) on a ZeroGPU Space; the
    function itself everywhere else. ``@on_gpu`` or ``@on_gpu(duration=20)``; generator functions stream as they are."""
    if fn is None:
        return lambda f: on_gpu(f, duration=duration)
    GPU_FUNCTIONS[f"{fn.__module__}.{fn.__qualname__}"] = fn
    if spaces is None:
        return fn
    return spaces.GPU(duration=duration)(fn)
