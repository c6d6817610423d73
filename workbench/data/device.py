"""Device-resident training data: the whole split on the accelerator, augmented there in batches.

With the DataLoader pipeline every training image is resized, cropped, flipped and jittered on the
CPU, one at a time, then copied to the GPU: on a fast GPU the CPU is the bottleneck. Here the split is
decoded once (by the dataset classes of :mod:`workbench.data`), kept on the training device as uint8,
and each batch is augmented on that device in a handful of batched kernels:

* the same augmentations as :func:`workbench.data.transforms.train_transforms` with the training config:
  random scale in ``scale`` (one factor per sample, same for height and width), random crop of ``crop``
  with padding where the scaled image is smaller (image 0, mask ``ignore_index``, weight 0; the image
  lands at a random place in the crop, as ``v2.RandomCrop(pad_if_needed=True)`` does), horizontal flip,
  vertical flip if enabled, colour jitter (brightness, contrast, saturation in a random order per
  sample), then float and mean/std normalisation;
* images are resampled bilinearly with ``F.grid_sample`` (no antialiasing, unlike the CPU pipeline's
  antialiased downscaling) and rounded to integer levels as a uint8 resize would; masks and weight
  maps are *gathered* at nearest-exact source indices (the CPU pipeline's rule), so a label is always a
  copy of an input label, never an interpolated value. The colour jitter floors after each step like
  torchvision's uint8 kernels;
* every sample of a batch gets its own scale, crop, flips and jitter factors, drawn from a
  :class:`torch.Generator` on the device seeded by (seed, rank, epoch, batch index): runs are
  reproducible and a mid-epoch ``--resume`` (the :class:`~workbench.data.sampling.EpochSampler`'s ``skip``)
  continues with exactly the batches the uninterrupted run would have seen;
* the batch order is the DataLoader pipeline's (the same ``EpochSampler`` over a
  ``DistributedSampler``), so under DDP each rank takes its usual shard;
* nothing in a step waits for the device: indices go up once per epoch (pinned, non-blocking), the
  random draws are made on the device, shapes never depend on data.

Batches are the dicts :func:`workbench.data.sampling.collate` makes (``image`` float32 (B, C, H, W),
channels_last on request, ``mask`` int64 (B, H, W), ``weight`` float32 (B, H, W) with border weights,
``name``), already on the device, so ``Trainer.train_step`` takes them unchanged.

Why ``grid_sample`` for images: on one CPU thread, a batch of 8 CamVid-sized (360x480) images cropped
to 224x224 took 8.6 ms with ``grid_sample`` (+ a gather for the masks), 14.5 ms with a separable
gather-and-blend, 19 ms with four-corner gathers and 19-21 ms with a loop of ``F.interpolate`` + crop
+ pad per sample; on a GPU ``grid_sample`` is one kernel for the whole batch.

Memory: uint8 images and masks of the split, padded to the largest size when sizes differ (edge
pixels replicated, so bilinear sampling at an image's border sees only that image); CamVid train is
367 x 360 x 480 x 4 bytes, about 250 MB.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, DistributedSampler

from ..classes import IGNORE_INDEX
from .sampling import EpochSampler

__all__ = ["DeviceData", "DeviceLoader", "resolve_data_on_device"]

# Columns of the per-sample uniform draws, one (B, 9) tensor per batch.
_SCALE, _TOP, _LEFT, _HFLIP, _VFLIP, _BRIGHT, _CONTRAST, _SAT, _ORDER = range(9)
N_DRAWS = 9
# The 6 orders of (brightness, contrast, saturation): a table lookup instead of a per-sample randperm.
_ORDERS = ((0, 1, 2), (0, 2, 1), (1, 0, 2), (1, 2, 0), (2, 0, 1), (2, 1, 0))
_GRAY = (0.2989, 0.587, 0.114)  # torchvision's rgb_to_grayscale weights

DATA_ON_DEVICE_CHOICES = ("auto", "on", "off")


def resolve_data_on_device(setting: str, device: torch.device, world: int = 1) -> bool:
    """Whether training uses the device loader: ``on``, ``off``, or ``auto`` (on for CUDA without DDP).

    ``auto`` keeps multi-process runs on the DataLoader (their behaviour is unchanged); ``on`` under
    DDP works too, each rank loading the split and taking its usual shard.
    """
    if setting not in DATA_ON_DEVICE_CHOICES:
        raise ValueError(f"data_on_device must be one of {', '.join(DATA_ON_DEVICE_CHOICES)}, got {setting!r}")
    if setting == "auto":
        return torch.device(device).type == "cuda" and world == 1
    return setting == "on"


# ----------------------------------------------------------------------------- the split on the device


@dataclass
class DeviceData:
    """A whole split as tensors on one device.

    ``images`` uint8 (N, C, H, W) and ``masks`` uint8 (N, H, W) (int64 if a label exceeds 255), padded
    to the largest image where sizes differ; ``sizes`` int64 (N, 2) each item's true (H, W); ``weights``
    float32 (N, H, W) or None; ``names`` one per item.
    """

    images: torch.Tensor
    masks: torch.Tensor
    sizes: torch.Tensor
    weights: torch.Tensor | None
    names: list[str]

    @property
    def uniform(self) -> bool:
        """All items have the size of the stored tensors (no padding)."""
        return bool((self.sizes == torch.tensor(self.images.shape[-2:], device=self.sizes.device)).all())

    def __len__(self) -> int:
        return self.images.shape[0]

    @classmethod
    def from_dataset(cls, dataset: Dataset, device: torch.device | str) -> DeviceData:
        """Decode every item of ``dataset`` (through its own ``__getitem__``; ``transform`` must be None)
        and move the stacked uint8 tensors to ``device``."""
        if getattr(dataset, "transform", None) is not None:
            raise ValueError("the device loader needs the dataset's untransformed samples (transform=None); it augments on the device itself")
        n = len(dataset)
        if n == 0:
            raise ValueError("the dataset is empty")
        samples = [dataset[i] for i in range(n)]
        chans = {int(s["image"].shape[0]) for s in samples}
        if len(chans) != 1:
            raise ValueError(f"images have different channel counts {sorted(chans)}")
        sizes = torch.tensor([tuple(s["image"].shape[-2:]) for s in samples], dtype=torch.int64)
        hmax, wmax = (int(v) for v in sizes.max(0).values)
        labels_fit = all(int(s["mask"].max()) <= 255 and int(s["mask"].min()) >= 0 for s in samples)
        mask_dtype = torch.uint8 if labels_fit else torch.int64
        has_weight = "weight" in samples[0]
        images = torch.empty((n, chans.pop(), hmax, wmax), dtype=torch.uint8)
        masks = torch.full((n, hmax, wmax), IGNORE_INDEX, dtype=mask_dtype)
        weights = torch.zeros((n, hmax, wmax), dtype=torch.float32) if has_weight else None
        for i, s in enumerate(samples):
            img = torch.as_tensor(s["image"]).as_subclass(torch.Tensor)
            if img.dtype != torch.uint8:
                raise ValueError(f"item {i}: expected a uint8 image, got {img.dtype}")
            h, w = img.shape[-2:]
            if (h, w) != (hmax, wmax):  # replicate the edges: bilinear sampling at the border sees only this image
                img = F.pad(img[None].float(), (0, wmax - w, 0, hmax - h), mode="replicate")[0].to(torch.uint8)
            images[i] = img
            masks[i, :h, :w] = torch.as_tensor(s["mask"]).as_subclass(torch.Tensor).to(mask_dtype)
            if weights is not None:
                weights[i, :h, :w] = torch.as_tensor(s["weight"]).as_subclass(torch.Tensor).float()
        names = [str(s.get("name", "")) for s in samples]
        del samples
        device = torch.device(device)
        move = (lambda t: t.pin_memory().to(device, non_blocking=True)) if device.type == "cuda" else (lambda t: t.to(device))
        return cls(move(images), move(masks), move(sizes), None if weights is None else move(weights), names)


# ----------------------------------------------------------------------------- the loader


def _default_sampler(n: int, seed: int) -> EpochSampler:
    class _Len:  # DistributedSampler only asks for len()
        def __len__(self) -> int:
            return n

    return EpochSampler(DistributedSampler(_Len(), num_replicas=1, rank=0, shuffle=True, seed=seed, drop_last=True))


def _batch_seed(seed: int, rank: int, epoch: int, batch: int) -> int:
    return (((int(seed) * 1_000_003 + int(rank)) * 1_000_003 + int(epoch)) * 1_000_003 + int(batch)) % (2**63 - 1)


class DeviceLoader:
    """Batches of a split held on ``device``, augmented there; iterate it like the training DataLoader.

    Args:
        dataset: a :mod:`workbench.data` dataset without transform, or a :class:`DeviceData`.
        sampler: the :class:`~workbench.data.sampling.EpochSampler` the DataLoader would use (its epoch, skip
            and shard decide which items come in which order); default: one replica, shuffled by ``seed``.
        batch_size: items per batch; an incomplete last batch is dropped (as the DataLoader does).
        device: where the data lives and the augmentation runs.
        crop: output (H, W), or None for whole images without augmentation (as ``crop=None`` trains).
        scale, hflip, vflip, color_jitter: as in :func:`workbench.data.transforms.train_transforms`.
        mean, std: per-channel normalisation of the [0, 1] image.
        ignore_index: mask value of padding.
        channels_last: return images in channels_last memory format.
        seed: seeds every batch's draws, together with the sampler's rank and epoch and the batch index.

    ``len()`` is the number of batches left in the epoch (after the sampler's skip).
    """

    def __init__(
        self,
        dataset,
        *,
        sampler=None,
        batch_size: int,
        device: torch.device | str,
        crop: Sequence[int] | None,
        scale: Sequence[float] | None = (0.5, 2.0),
        hflip: bool = True,
        vflip: bool = False,
        color_jitter: float = 0.0,
        mean: Sequence[float],
        std: Sequence[float],
        ignore_index: int = IGNORE_INDEX,
        channels_last: bool = False,
        seed: int = 0,
    ) -> None:
        self.device = torch.device(device)
        self.data = dataset if isinstance(dataset, DeviceData) else DeviceData.from_dataset(dataset, self.device)
        self.sampler = sampler if sampler is not None else _default_sampler(len(self.data), seed)
        self.batch_size = int(batch_size)
        if self.batch_size < 1:
            raise ValueError("batch_size must be positive")
        self.crop = None if crop is None else (int(crop[0]), int(crop[1]))
        lo, hi = (1.0, 1.0) if scale is None else (float(scale[0]), float(scale[1]))
        if not 0 < lo <= hi:
            raise ValueError(f"scale must be (min, max) with 0 < min <= max, got {scale}")
        self.scale = (lo, hi)
        self.hflip, self.vflip = bool(hflip), bool(vflip)
        self.color_jitter = float(color_jitter or 0.0)
        if not 0 <= self.color_jitter <= 1:
            raise ValueError(f"color_jitter must be in [0, 1], got {color_jitter}")
        chans = self.data.images.shape[1]
        if len(mean) != chans or len(std) != chans:
            raise ValueError(f"mean and std need {chans} values, got {len(mean)} and {len(std)}")
        self.mean = torch.tensor(list(mean), dtype=torch.float32, device=self.device).view(1, -1, 1, 1)
        self.std = torch.tensor(list(std), dtype=torch.float32, device=self.device).view(1, -1, 1, 1)
        self.ignore_index = int(ignore_index)
        self.channels_last = bool(channels_last)
        self.seed = int(seed)
        if self.crop is None and not self.data.uniform:
            raise ValueError("images of different sizes cannot be batched whole (crop=None); give a crop size")
        # random draws on the device itself where it has a generator of its own (no host round trip)
        self._gen_device = self.device if self.device.type == "cuda" else torch.device("cpu")
        self._gen = torch.Generator(device=self._gen_device)
        # small constants made once: a host->device copy in a step would wait for the GPU
        self._orders = torch.tensor(_ORDERS, dtype=torch.int64, device=self.device)
        self._gray = torch.tensor(_GRAY, dtype=torch.float32, device=self.device).view(1, 3, 1, 1)
        h, w = self.data.images.shape[-2:]
        self._stored_hw = torch.tensor([h, w], dtype=torch.float32, device=self.device)

    def __len__(self) -> int:
        return len(self.sampler) // self.batch_size

    def draws(self, epoch: int, batch: int, n: int | None = None) -> torch.Tensor:
        """The (n, 9) uniform draws of batch ``batch`` of ``epoch`` (a pure function of seed, rank, epoch, batch)."""
        rank = getattr(getattr(self.sampler, "base", None), "rank", 0)
        self._gen.manual_seed(_batch_seed(self.seed, rank, epoch, batch))
        u = torch.rand((n or self.batch_size, N_DRAWS), generator=self._gen, device=self._gen_device)
        return u.to(self.device, non_blocking=True)

    def __iter__(self) -> Iterator[dict]:
        sampler = self.sampler
        pairs = list(sampler)  # (epoch, index), the skip already applied
        epoch = getattr(sampler, "epoch", pairs[0][0] if pairs else 0)
        first = getattr(sampler, "skip", 0) // self.batch_size
        indices = torch.tensor([i for _, i in pairs], dtype=torch.int64)
        order = indices.pin_memory().to(self.device, non_blocking=True) if self.device.type == "cuda" else indices.to(self.device)
        for b in range(len(pairs) // self.batch_size):
            sl = slice(b * self.batch_size, (b + 1) * self.batch_size)
            yield self.make_batch(order[sl], self.draws(epoch, first + b), names=[self.data.names[i] for _, i in pairs[sl]])

    # -- one batch

    def make_batch(self, index: torch.Tensor, draws: torch.Tensor, names: list[str] | None = None) -> dict:
        """The augmented batch of items ``index`` (B,) for uniform ``draws`` (B, 9) in [0, 1).

        Draw columns: scale, crop top, crop left, hflip (< 0.5 flips), vflip (< 0.5 flips), brightness,
        contrast, saturation, jitter order. ``__iter__`` uses seeded draws; tests force flips with these.
        ``names`` default: looked up when ``index`` is a CPU tensor (reading a device tensor would wait).
        """
        data = self.data
        if names is None:
            names = [data.names[i] for i in index.tolist()] if index.device.type == "cpu" else [""] * index.shape[0]
        index = index.to(self.device)
        if self.crop is None:
            image = data.images[index].float()  # (B, C, H, W), no augmentation, as crop=None trains
            mask = data.masks[index].long()
            weight = None if data.weights is None else data.weights[index]
        else:
            image, mask, weight = self._geometry(index, draws)
            if self.color_jitter:
                image = self._jitter(image, draws)
        if self.channels_last:
            image = image.contiguous(memory_format=torch.channels_last)
        # as v2.ToDtype(scale=True) + v2.Normalize: identical operations, identical numbers
        image = image.mul_(1.0 / 255).sub_(self.mean).div_(self.std)
        out = {"image": image, "mask": mask}
        if weight is not None:
            out["weight"] = weight
        out["name"] = names
        return out

    def _axis(self, true_len, scaled, out_len: int, u_off, flip):
        """One axis for every sample: positions in the scaled image, validity, and source coordinates.

        ``true_len`` and ``scaled`` (B,) float (integer-valued); ``u_off`` (B,) the crop-offset draw;
        ``flip`` (B,) bool. Returns ``valid`` (B, L) (the output pixel lies in the scaled image, not in
        padding), ``near`` (B, L) int64 nearest-exact source index (as ``F.interpolate``'s
        "nearest-exact") and ``centre`` (B, L) the continuous source coordinate of the pixel centre.
        """
        diff = scaled - out_len  # > 0: crop inside the image; < 0: image inside the crop (padding)
        n = diff.abs() + 1
        off = torch.minimum(diff, torch.zeros_like(diff)) + torch.minimum(torch.floor(u_off * n), n - 1)  # (B,)
        r = torch.arange(out_len, device=self.device, dtype=torch.float32)
        r = torch.where(flip[:, None], out_len - 1 - r, r)  # flip after the crop == read the crop backwards
        pos = r + off[:, None]  # (B, L)
        valid = (pos >= 0) & (pos < scaled[:, None])
        centre = (pos + 0.5) * (true_len / scaled)[:, None]  # source coordinate of the output pixel's centre
        near = torch.minimum(centre.floor(), (true_len - 1)[:, None]).clamp_min(0).long()
        return valid, near, centre

    def _geometry(self, index, draws):
        """Random scale, crop (with padding), flips: (B, C, ch, cw) float 0..255, (B, ch, cw) int64, weights."""
        data = self.data
        ch, cw = self.crop
        bsz = index.shape[0]
        hw = data.sizes[index].float()  # (B, 2) true sizes
        lo, hi = self.scale
        s = lo + draws[:, _SCALE] * (hi - lo)
        scaled = torch.clamp_min(torch.round(hw * s[:, None]), 1)  # (B, 2), as RandomScale: max(1, round(h * s))
        no = torch.zeros(bsz, dtype=torch.bool, device=self.device)
        vflip = draws[:, _VFLIP] < 0.5 if self.vflip else no
        hflip = draws[:, _HFLIP] < 0.5 if self.hflip else no
        vy, ny, cy = self._axis(hw[:, 0], scaled[:, 0], ch, draws[:, _TOP], vflip)
        vx, nx, cx = self._axis(hw[:, 1], scaled[:, 1], cw, draws[:, _LEFT], hflip)
        valid = vy[:, :, None] & vx[:, None, :]  # (B, ch, cw)
        # images: bilinear, align_corners=False, border clamped (as F.interpolate), in the stored tensor's frame
        gy = (2 * cy / self._stored_hw[0] - 1)[:, :, None].expand(bsz, ch, cw)
        gx = (2 * cx / self._stored_hw[1] - 1)[:, None, :].expand(bsz, ch, cw)
        grid = torch.stack((gx, gy), dim=-1)  # (B, ch, cw, 2)
        src = data.images[index].float()  # (B, C, H, W)
        image = F.grid_sample(src, grid, mode="bilinear", padding_mode="border", align_corners=False)
        image = image.round_().mul_(valid[:, None])  # uint8 levels; padding 0
        # masks and weights: gathered at nearest-exact indices, never interpolated
        b = index[:, None, None]
        mask = data.masks[b, ny[:, :, None], nx[:, None, :]].long().masked_fill_(~valid, self.ignore_index)
        weight = None
        if data.weights is not None:
            weight = data.weights[b, ny[:, :, None], nx[:, None, :]].masked_fill_(~valid, 0.0)
        return image, mask, weight

    def _jitter(self, image, draws):
        """Brightness, contrast, saturation with factors in [1 - cj, 1 + cj], in a random order per sample.

        Each of the three steps applies every operation with its factor where it is that sample's
        turn and factor 1 (an exact no-op) elsewhere. Values are floored after each operation, as
        torchvision's uint8 kernels truncate.
        """
        cj = self.color_jitter
        factors = 1 - cj + 2 * cj * draws[:, _BRIGHT : _SAT + 1]  # (B, 3)
        order = self._orders[torch.clamp_max((draws[:, _ORDER] * len(_ORDERS)).long(), len(_ORDERS) - 1)]  # (B, 3)
        one = torch.ones_like(factors[:, 0])
        rgb = image.shape[1] == 3
        gray_w = self._gray
        for step in range(3):
            for op in range(3):
                f = torch.where(order[:, step] == op, factors[:, op], one).view(-1, 1, 1, 1)
                if op == 0:  # brightness: blend with black
                    image = image * f
                elif op == 1:  # contrast: blend with the mean grey level of the whole crop
                    gray = (image * gray_w).sum(1, keepdim=True).floor_() if rgb else image
                    image = image * f + gray.mean(dim=(1, 2, 3), keepdim=True) * (1 - f)
                elif rgb:  # saturation: blend with the grey image (grey images have none)
                    gray = (image * gray_w).sum(1, keepdim=True).floor_()
                    image = image * f + gray * (1 - f)
                image = image.clamp_(0, 255).floor_()
        return image
