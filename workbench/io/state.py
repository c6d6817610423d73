"""Training state (optimizer, scheduler, RNG, counters) in one safetensors file: no pickle anywhere.

Any nested structure of dicts (any hashable JSON-able keys, e.g. the int keys
of an optimizer's state), lists, tuples, numbers, strings, tensors and numpy
arrays is split into a flat ``{name: tensor}`` dict, stored as safetensors,
and a JSON skeleton, stored in the same file's metadata. One file, written
atomically, so the state on disk is always complete and consistent.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open

from .checkpoint import atomic_save_tensors

__all__ = ["pack", "unpack", "save_state", "load_state"]


def pack(obj: Any) -> tuple[dict[str, torch.Tensor], Any]:
    """Split ``obj`` into ``(tensors, skeleton)``; ``unpack(tensors, skeleton)`` rebuilds it."""
    tensors: dict[str, torch.Tensor] = {}

    def walk(o: Any) -> Any:
        if isinstance(o, torch.Tensor):
            key = f"t{len(tensors)}"
            tensors[key] = o.detach().cpu().contiguous().clone()
            return {"__tensor__": key}
        if isinstance(o, np.ndarray):
            key = f"t{len(tensors)}"
            tensors[key] = torch.from_numpy(np.ascontiguousarray(o).copy())
            return {"__ndarray__": key}
        if isinstance(o, dict):
            return {"__dict__": [[walk(k), walk(v)] for k, v in o.items()]}
        if isinstance(o, tuple):
            return {"__tuple__": [walk(v) for v in o]}
        if isinstance(o, list):
            return [walk(v) for v in o]
        if isinstance(o, (np.integer, np.floating)):
            return o.item()
        if o is None or isinstance(o, (bool, int, float, str)):
            return o
        raise TypeError(f"cannot store a {type(o).__name__} in training state")

    return tensors, walk(obj)


def unpack(tensors: dict[str, torch.Tensor], skeleton: Any) -> Any:
    def walk(o: Any) -> Any:
        if isinstance(o, dict):
            if "__tensor__" in o:
                return tensors[o["__tensor__"]]
            if "__ndarray__" in o:
                return tensors[o["__ndarray__"]].numpy()
            if "__dict__" in o:
                return {_hashable(walk(k)): walk(v) for k, v in o["__dict__"]}
            if "__tuple__" in o:
                return tuple(walk(v) for v in o["__tuple__"])
        if isinstance(o, list):
            return [walk(v) for v in o]
        return o

    return walk(skeleton)


def _hashable(k: Any) -> Any:
    return tuple(k) if isinstance(k, list) else k


def save_state(path: str | os.PathLike, state: dict[str, Any]) -> None:
    """Write ``state`` atomically to ``path`` (a ``.safetensors`` file)."""
    tensors, skeleton = pack(state)
    atomic_save_tensors(Path(path), tensors, {"format": "workbench-train-state", "skeleton": json.dumps(skeleton)})


def load_state(path: str | os.PathLike) -> dict[str, Any]:
    """Read a state written by :func:`save_state` (safetensors only; never unpickles)."""
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
        if meta.get("format") != "workbench-train-state":
            raise ValueError(f"{path} is not a workbench training state file")
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    return unpack(tensors, json.loads(meta["skeleton"]))
