"""Training and evaluation data: datasets, transforms, weighting, samplers, the device loader, fetching.

The public names are importable from here (importing this package loads torch)::

    from workbench.data import build_dataset, train_transforms, eval_transforms, build_train_loader
"""

from .base import DatasetError, LabelDecoder, SegDataset
from .camvid import find_ground_truth
from .datasets import DATASETS, build_dataset
from .device import DeviceData, DeviceLoader, resolve_data_on_device
from .files import require_data_root
from .loaders import TrainLoader, build_train_loader
from .sampling import EpochSampler, SeededView, collate
from .synthetic import SyntheticDataset, synthetic_sample
from .transforms import eval_transforms, train_transforms
from .weighting import WeightMap, unet_border_weights

__all__ = [
    "DATASETS",
    "DatasetError",
    "DeviceData",
    "DeviceLoader",
    "EpochSampler",
    "LabelDecoder",
    "SeededView",
    "SegDataset",
    "SyntheticDataset",
    "TrainLoader",
    "WeightMap",
    "build_dataset",
    "build_train_loader",
    "collate",
    "eval_transforms",
    "find_ground_truth",
    "require_data_root",
    "resolve_data_on_device",
    "synthetic_sample",
    "train_transforms",
    "unet_border_weights",
]
