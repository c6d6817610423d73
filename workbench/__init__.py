"""Segmentation Workbench: see how semantic-segmentation architectures differ.

Public API::

    import workbench
    workbench.list_architectures()                      # ['deeplabv3plus', 'fcn16s', ...]
    model = workbench.create_model("unet", num_classes=11)
    workbench.save_checkpoint("runs/unet", model, {"classes": [...]})
    model, manifest = workbench.load_checkpoint("runs/unet.json")
    pred = workbench.Predictor("checkpoints/unet_camvid.json").predict("street.jpg")
    pred.labels, pred.probs, pred.latency_ms
"""

__version__ = "0.1.0"

__all__ = [
    "ArchitectureInfo",
    "CheckpointError",
    "ImageError",
    "Prediction",
    "Predictor",
    "UnknownChoiceError",
    "create_model",
    "from_hub",
    "get_architecture",
    "list_architectures",
    "load_checkpoint",
    "load_image",
    "load_plugins",
    "plugin_errors",
    "push_to_hub",
    "register_architecture",
    "save_checkpoint",
]


_REGISTRY = {"ArchitectureInfo", "UnknownChoiceError", "create_model", "get_architecture", "list_architectures", "load_plugins", "plugin_errors", "register_architecture"}


def __getattr__(name):  # lazy: `import workbench` loads no torch (the CLI re-executes itself before it, see allocator.py)
    if name in _REGISTRY:
        from .models import registry

        return getattr(registry, name)
    if name in ("save_checkpoint", "load_checkpoint", "CheckpointError"):
        from .io import checkpoint

        return getattr(checkpoint, name)
    if name in ("Predictor", "Prediction"):
        from .inference import predictor

        return getattr(predictor, name)
    if name in ("push_to_hub", "from_hub"):
        from .io import hub

        return getattr(hub, name)
    if name in ("load_image", "ImageError"):
        from .io import images as imageio

        return getattr(imageio, name)
    raise AttributeError(f"module 'workbench' has no attribute {name!r}")
