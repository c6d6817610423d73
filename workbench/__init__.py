"""Segmentation Workbench: see how semantic-segmentation architectures differ.

Public API::

    import workbench
    workbench.list_architectures()                      # ['deeplabv3plus', 'fcn16s', ...]
    model = workbench.create_model("unet", num_classes=11)
    workbench.save_checkpoint("runs/unet", model, {"classes": [...]})
    model, manifest = workbench.load_checkpoint("runs/unet.json")
    manifest.test_miou, manifest.dataset_name, manifest["classes"]   # a workbench.Manifest
    pred = workbench.Predictor("checkpoints/unet_camvid.json").predict("street.jpg")
    pred.labels, pred.probs, pred.latency_ms

Plugins build on the same namespace (docs/plugins.md)::

    from workbench import register_architecture, TimmEncoder, SegmentationModel, make_upsample
"""

import importlib

__version__ = "0.1.0"

# Every public name -> the module that defines it, imported on first use: `import workbench` loads no
# torch (the CLI re-executes itself with another allocator before torch is loaded, see system/allocator.py).
_LAZY = {
    # the registry
    **dict.fromkeys(["ArchitectureInfo", "UnknownChoiceError", "create_model", "get_architecture", "list_architectures", "load_plugins", "plugin_errors", "register_architecture"], "models.registry"),
    # building blocks for plugins (docs/plugins.md)
    **dict.fromkeys(["SegmentationModel", "PadCropModel", "WrappedModel", "ConvBNAct", "DoubleConv", "MIN_INPUT_SIZE"], "models.base"),
    **dict.fromkeys(["TimmEncoder", "DEFAULT_ENCODER", "list_encoders"], "models.encoders"),
    **dict.fromkeys(["UNetDecoder", "UNetStage", "build_unet", "DEFAULT_DECODER_CHANNELS"], "models.decoders"),
    **dict.fromkeys(["make_upsample", "METHODS", "canonical_upsample", "parse_upsample", "UpsampleSpec", "Upsample"], "models.upsampling"),
    # checkpoints, images, the Hub
    **dict.fromkeys(["Manifest", "CheckpointError"], "io.manifest"),
    **dict.fromkeys(["save_checkpoint", "load_checkpoint"], "io.checkpoint"),
    **dict.fromkeys(["load_image", "ImageError"], "io.images"),
    **dict.fromkeys(["push_to_hub", "from_hub"], "io.hub"),
    # inference
    **dict.fromkeys(["Predictor", "Prediction"], "inference.predictor"),
}

__all__ = sorted(_LAZY)


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'workbench' has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
