"""``workbench bench-data``: batches per second of the two training data pipelines, without a model.

Both pipelines come from :func:`workbench.data.loaders.build_train_loader`, the builder the trainer
uses, so the figures are those of a training run's data side.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from ..classes import default_normalization
from ..io.checkpoint import atomic_write_bytes
from ..system.machine import machine_description
from .datasets import build_dataset
from .loaders import build_train_loader

__all__ = ["bench_data_pipeline", "format_bench_table", "main"]


def bench_data_pipeline(
    *,
    dataset: str = "synthetic",
    split: str = "train",
    data_root: str | None = None,
    dataset_options: dict | None = None,
    batch_size: int = 8,
    crop: Sequence[int] = (224, 224),
    scale: Sequence[float] = (0.5, 2.0),
    hflip: bool = True,
    vflip: bool = False,
    color_jitter: float = 0.2,
    workers: int = 2,
    device: str = "auto",
    batches: int = 20,
    warmup: int = 2,
    channels_last: bool = True,
    seed: int = 0,
) -> dict:
    """Batches per second of the DataLoader pipeline and of the device loader, without a model.

    Both produce the same training batches (same crop, scale, flips, jitter, normalisation) on
    ``device``; the DataLoader's batches are copied there as ``Trainer.train_step`` does. Times cover
    ``batches`` batches after ``warmup``; on CUDA the device is synchronised before the clock stops.
    ``setup_s`` is the time to the first batch: decoding is shared (the dataset's cache is filled
    first), so it is starting the workers for the DataLoader and stacking + copying the split for the
    device loader.

    Returns ``{"machine", "device", "config", "rows": [{"pipeline", "setup_s", "batches",
    "batches_per_s", "images_per_s"}, ...]}``; the last row has ``speedup`` over the first.
    """
    dev = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device)
    crop = (int(crop[0]), int(crop[1]))
    opts = dict(dataset_options or {})
    opts.setdefault("cache", True)
    ds = build_dataset(dataset, split, data_root=data_root, **opts)
    ds.validate()  # decodes everything once, into the cache both pipelines read
    norm = default_normalization(ds.in_chans)
    if len(ds) < batch_size:
        raise ValueError(f"{dataset}/{split} has {len(ds)} images, fewer than one batch of {batch_size}")
    loader_options = dict(batch_size=batch_size, device=dev, crop=crop, scale=scale, hflip=hflip, vflip=vflip, color_jitter=color_jitter,
                          mean=norm["mean"], std=norm["std"], channels_last=channels_last, seed=seed, workers=workers)

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    def timed(batch_iter, t_start: float, label: str) -> dict:
        next(batch_iter)  # workers start / the split is stacked and copied: setup ends with the first batch
        sync()
        setup_s = time.perf_counter() - t_start
        for _ in range(warmup):
            next(batch_iter)
        sync()
        t0 = time.perf_counter()
        for _ in range(batches):
            next(batch_iter)
        sync()
        dt = time.perf_counter() - t0
        return {"pipeline": label, "setup_s": round(setup_s, 3), "batches": batches, "batches_per_s": round(batches / dt, 2), "images_per_s": round(batches * batch_size / dt, 1)}

    def forever(loader, sampler):
        epoch = 0
        while True:
            sampler.set_epoch(epoch)
            yield from loader
            epoch += 1

    rows = []
    # (a) the DataLoader pipeline, as the trainer builds it, batches copied to the device
    t0 = time.perf_counter()
    loader, sampler = build_train_loader(ds, pipeline="dataloader", **loader_options)

    def to_device(it):
        for b in it:
            x = b["image"].to(dev, non_blocking=True)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            yield x, b["mask"].to(dev, non_blocking=True)

    it = to_device(forever(loader, sampler))
    rows.append(timed(it, t0, f"DataLoader ({workers} worker{'' if workers == 1 else 's'})"))
    del it, loader
    # (b) the device loader
    t0 = time.perf_counter()
    dloader, dsampler = build_train_loader(ds, pipeline="device", **loader_options)
    rows.append(timed(forever(dloader, dsampler), t0, f"device loader ({dev.type})"))
    rows[-1]["speedup"] = round(rows[-1]["batches_per_s"] / rows[0]["batches_per_s"], 2)
    config = {"dataset": dataset, "split": split, "images": len(ds), "image_size": list(ds[0]["image"].shape[-2:]), "batch_size": batch_size,
              "crop": list(crop), "scale": list(scale), "hflip": hflip, "vflip": vflip, "color_jitter": color_jitter, "workers": workers,
              "torch_threads": torch.get_num_threads()}
    return {"machine": machine_description(), "device": str(dev), "config": config, "rows": rows}


def format_bench_table(result: dict) -> str:
    """A Markdown table of :func:`bench_data_pipeline`'s result."""
    c = result["config"]
    lines = [
        f"Data pipeline, {c['dataset']}/{c['split']} ({c['images']} images, {c['image_size'][0]}x{c['image_size'][1]}), batch {c['batch_size']}, "
        f"crop {c['crop'][0]}x{c['crop'][1]}, scale {c['scale'][0]}-{c['scale'][1]}, device {result['device']}, no model",
        "",
        "| pipeline | setup s | batches/s | images/s | speed-up |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for r in result["rows"]:
        lines.append(f"| {r['pipeline']} | {r['setup_s']:.2f} | {r['batches_per_s']:.2f} | {r['images_per_s']:.1f} | {r.get('speedup', 1.0):.2f}x |")
    return "\n".join(lines)


def main(args) -> int:
    """``workbench bench-data``."""
    result = bench_data_pipeline(
        dataset=args.dataset, split=args.split, data_root=args.data_root, dataset_options=args.dataset_options, batch_size=args.batch_size,
        crop=args.crop, scale=args.scale, hflip=args.hflip, vflip=args.vflip, color_jitter=args.color_jitter, workers=args.workers,
        device=args.device, batches=args.batches, warmup=args.warmup, seed=args.seed,
    )
    print(format_bench_table(result))
    if args.out:
        atomic_write_bytes(Path(args.out), (json.dumps(result, indent=2) + "\n").encode())
        print(f"\nwrote {args.out}")
    return 0
