"""The device-resident training loader: semantics of its augmentation, reproducibility, resume, the Trainer and CLI hooks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DistributedSampler
from torchvision import tv_tensors
from torchvision.transforms.v2 import functional as TF

from workbench.classes import IGNORE_INDEX, default_normalization
from workbench.data.datasets import build_dataset
from workbench.data.bench import bench_data_pipeline, format_bench_table
from workbench.data.device import N_DRAWS, DeviceData, DeviceLoader, resolve_data_on_device
from workbench.data.sampling import EpochSampler
from workbench.training.config import TrainConfig, build_parser, config_from_args
from workbench.training.trainer import Trainer

H, W = 48, 64
NORM = default_normalization(3)


@pytest.fixture(scope="module")
def synth():
    torch.set_num_threads(1)
    return build_dataset("synthetic", "train", length=8, size=(H, W), num_classes=4, void_border=1)


def _loader(ds, **over) -> DeviceLoader:
    kw = dict(batch_size=4, device="cpu", crop=(32, 40), scale=(0.5, 2.0), hflip=True, vflip=True, color_jitter=0.2, mean=NORM["mean"], std=NORM["std"], seed=3)
    kw.update(over)
    return DeviceLoader(ds, **kw)


def _normalized(ds, i) -> torch.Tensor:
    x = torch.as_tensor(ds[i]["image"]).as_subclass(torch.Tensor)
    return TF.normalize(TF.to_dtype(x, torch.float32, scale=True), NORM["mean"], NORM["std"])


def _draws(n, **cols) -> torch.Tensor:
    """Draws with every column 0.99 (no flips, largest offsets) except those given."""
    names = ["scale", "top", "left", "hflip", "vflip", "bright", "contrast", "sat", "order"]
    d = torch.full((n, N_DRAWS), 0.99)
    for k, v in cols.items():
        d[:, names.index(k)] = v
    return d


def test_batch_format_shapes_dtypes_device(synth):
    loader = _loader(synth, channels_last=True)
    batch = next(iter(loader))
    assert set(batch) == {"image", "mask", "name"}
    assert batch["image"].shape == (4, 3, 32, 40) and batch["image"].dtype == torch.float32
    assert batch["image"].is_contiguous(memory_format=torch.channels_last)
    assert batch["mask"].shape == (4, 32, 40) and batch["mask"].dtype == torch.int64
    assert batch["image"].device.type == batch["mask"].device.type == "cpu"
    assert len(batch["name"]) == 4 and all(n.startswith("synthetic-train-") for n in batch["name"])
    assert len(loader) == 2 and len(list(loader)) == 2  # 8 items, drop_last


def test_labels_are_never_interpolated(synth):
    loader = _loader(synth, batch_size=8)
    allowed = set(torch.unique(loader.data.masks).tolist()) | {IGNORE_INDEX}
    for epoch in range(3):
        loader.sampler.set_epoch(epoch)
        for batch in loader:
            assert set(torch.unique(batch["mask"]).tolist()) <= allowed


def test_identity_settings_reproduce_the_normalized_input(synth):
    loader = _loader(synth, crop=(H, W), scale=(1.0, 1.0), hflip=False, vflip=False, color_jitter=0.0, batch_size=8)
    index = torch.arange(8)
    batch = loader.make_batch(index, torch.rand(8, N_DRAWS))
    for i in range(8):
        assert torch.equal(batch["image"][i], _normalized(synth, i))
        assert torch.equal(batch["mask"][i], torch.as_tensor(synth[i]["mask"]).as_subclass(torch.Tensor))


def test_forced_flips_flip(synth):
    loader = _loader(synth, color_jitter=0.0)
    index = torch.tensor([0, 1, 2, 3])
    plain = loader.make_batch(index, _draws(4, scale=0.3, top=0.4, left=0.6))
    h = loader.make_batch(index, _draws(4, scale=0.3, top=0.4, left=0.6, hflip=0.0))
    v = loader.make_batch(index, _draws(4, scale=0.3, top=0.4, left=0.6, vflip=0.0))
    hv = loader.make_batch(index, _draws(4, scale=0.3, top=0.4, left=0.6, hflip=0.0, vflip=0.0))
    for key in ("image", "mask"):
        assert torch.equal(h[key], torch.flip(plain[key], dims=[-1]))
        assert torch.equal(v[key], torch.flip(plain[key], dims=[-2]))
        assert torch.equal(hv[key], torch.flip(plain[key], dims=[-2, -1]))
    no_flip = _loader(synth, color_jitter=0.0, hflip=False, vflip=False)  # disabled flips ignore the draws
    assert torch.equal(no_flip.make_batch(index, _draws(4, scale=0.3, hflip=0.0, vflip=0.0))["mask"], no_flip.make_batch(index, _draws(4, scale=0.3))["mask"])


def test_scale_and_crop_match_interpolate(synth):
    """Fixed scale 2, whole scaled image: images as F.interpolate(bilinear) rounded, masks exactly as nearest-exact."""
    loader = _loader(synth, crop=(2 * H, 2 * W), scale=(2.0, 2.0), hflip=False, vflip=False, color_jitter=0.0)
    batch = loader.make_batch(torch.arange(4), torch.rand(4, N_DRAWS))
    src = loader.data.images[:4].float()
    ref = F.interpolate(src, size=(2 * H, 2 * W), mode="bilinear", align_corners=False).round()
    got = batch["image"] * torch.tensor(NORM["std"]).view(1, 3, 1, 1) + torch.tensor(NORM["mean"]).view(1, 3, 1, 1)
    assert (got * 255 - ref).abs().max() < 1.01  # a rounding tie apart at most
    ref_mask = F.interpolate(loader.data.masks[:4, None].float(), size=(2 * H, 2 * W), mode="nearest-exact")[:, 0].long()
    assert torch.equal(batch["mask"], ref_mask)
    # a crop inside a half-size image: offsets as v2.RandomCrop (top-left corner with the 0 draws)
    small = _loader(synth, crop=(16, 24), scale=(0.5, 0.5), hflip=False, vflip=False, color_jitter=0.0)
    got = small.make_batch(torch.arange(4), _draws(4, top=0.0, left=0.0))["mask"]
    half = F.interpolate(loader.data.masks[:4, None].float(), size=(H // 2, W // 2), mode="nearest-exact")[:, 0].long()
    assert torch.equal(got, half[:, :16, :24])


def test_smaller_images_are_padded_with_ignore_inside_the_crop(synth):
    loader = _loader(synth, crop=(H, W), scale=(0.5, 0.5), hflip=False, vflip=False, color_jitter=0.0)
    batch = loader.make_batch(torch.arange(4), torch.rand(4, N_DRAWS))
    inside = batch["mask"] != IGNORE_INDEX
    fill = (0 - torch.tensor(NORM["mean"])) / torch.tensor(NORM["std"])
    for i in range(4):
        rows, cols = inside[i].any(1).nonzero()[:, 0], inside[i].any(0).nonzero()[:, 0]
        assert rows.max() - rows.min() + 1 <= H // 2 and cols.max() - cols.min() + 1 <= W // 2  # the half-size image, whole, somewhere in the crop
        pad = torch.ones(H, W, dtype=torch.bool)
        pad[rows.min() : rows.min() + H // 2, cols.min() : cols.min() + W // 2] = False
        assert (batch["mask"][i][pad] == IGNORE_INDEX).all()
        assert torch.allclose(batch["image"][i][:, pad], fill[:, None].expand(3, int(pad.sum())))


def test_color_jitter_matches_torchvision(synth):
    """One order and set of factors per sample: the device jitter equals torchvision's uint8 kernels to +-1 level."""
    loader = _loader(synth, crop=(H, W), scale=(1.0, 1.0), hflip=False, vflip=False, color_jitter=0.4)
    draws = _draws(4, bright=torch.tensor([0.1, 0.9, 0.5, 0.2]), contrast=torch.tensor([0.8, 0.2, 0.4, 0.6]), sat=torch.tensor([0.3, 0.7, 0.95, 0.0]), order=torch.tensor([0.05, 0.3, 0.6, 0.95]))
    got = loader.make_batch(torch.arange(4), draws)["image"]
    got = (got * torch.tensor(NORM["std"]).view(1, 3, 1, 1) + torch.tensor(NORM["mean"]).view(1, 3, 1, 1)) * 255
    orders = [(0, 1, 2), (0, 2, 1), (1, 2, 0), (2, 1, 0)]  # _ORDERS[int(order * 6)]
    ops = (TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation)
    for i in range(4):
        img = tv_tensors.Image(loader.data.images[i])
        for op in orders[i]:
            img = ops[op](img, 0.6 + 0.8 * float(draws[i, 5 + op]))
        diff = (got[i] - img.float()).abs()
        assert diff.max() < 1.01 and diff.mean() < 0.05, (i, float(diff.max()), float(diff.mean()))


def test_same_seed_same_batches_other_epoch_other_batches(synth):
    a, b = _loader(synth), _loader(synth)
    first, again = list(a), list(b)
    for x, y in zip(first, again):
        assert torch.equal(x["image"], y["image"]) and torch.equal(x["mask"], y["mask"]) and x["name"] == y["name"]
    a.sampler.set_epoch(1)
    other = list(a)
    assert not torch.equal(other[0]["image"], first[0]["image"])
    c = _loader(synth, seed=4)
    assert not torch.equal(next(iter(c))["image"], first[0]["image"])


def test_resume_skip_gives_the_batch_iteration_would_reach(synth):
    loader = _loader(synth, batch_size=2)
    loader.sampler.set_epoch(2)
    full = list(loader)
    loader.sampler.set_epoch(2, skip=2 * 2)  # two batches done, as Trainer.fit resumes
    assert len(loader) == len(full) - 2
    resumed = list(loader)
    assert len(resumed) == len(full) - 2
    for x, y in zip(full[2:], resumed):
        assert torch.equal(x["image"], y["image"]) and torch.equal(x["mask"], y["mask"]) and x["name"] == y["name"]


def test_ddp_shard_is_the_distributed_samplers(synth):
    base = DistributedSampler(range(len(synth)), num_replicas=2, rank=1, shuffle=True, seed=0, drop_last=True)
    loader = _loader(synth, sampler=EpochSampler(base), batch_size=2)
    loader.sampler.set_epoch(5)
    names = [n for b in loader for n in b["name"]]
    assert names == [synth.sample_name(i) for i in list(base)]


def test_different_image_sizes_are_padded_in_storage():
    class Pairs(torch.utils.data.Dataset):
        transform = None

        def __init__(self):
            g = torch.Generator().manual_seed(0)
            self.items = [(torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=g), torch.randint(0, 3, (h, w), generator=g)) for h, w in ((40, 56), (32, 40))]

        def __len__(self):
            return len(self.items)

        def __getitem__(self, i):
            return {"image": tv_tensors.Image(self.items[i][0]), "mask": tv_tensors.Mask(self.items[i][1]), "name": f"p{i}"}

    ds = Pairs()
    data = DeviceData.from_dataset(ds, "cpu")
    assert data.images.shape == (2, 3, 40, 56) and data.sizes.tolist() == [[40, 56], [32, 40]] and not data.uniform
    loader = DeviceLoader(data, batch_size=2, device="cpu", crop=(64, 80), scale=(2.0, 2.0), hflip=False, vflip=False, mean=NORM["mean"], std=NORM["std"])
    batch = loader.make_batch(torch.tensor([1, 0]), _draws(2, top=0.0, left=0.0))
    small, mask = ds.items[1]
    ref = F.interpolate(small[None].float(), size=(64, 80), mode="bilinear", align_corners=False).round()[0]  # the border is the image's own
    got = (batch["image"][0] * torch.tensor(NORM["std"]).view(3, 1, 1) + torch.tensor(NORM["mean"]).view(3, 1, 1)) * 255
    assert (got - ref).abs().max() < 1.01
    assert torch.equal(batch["mask"][0], F.interpolate(mask[None, None].float(), size=(64, 80), mode="nearest-exact")[0, 0].long())
    with pytest.raises(ValueError, match="different sizes"):
        DeviceLoader(data, batch_size=2, device="cpu", crop=None, mean=NORM["mean"], std=NORM["std"])


def test_border_weights_travel_with_the_masks():
    ds = build_dataset("synthetic", "train", length=4, size=(H, W), border_weights=True)  # no void: 255 only where padded
    batch = next(iter(_loader(ds)))
    assert batch["weight"].shape == (4, 32, 40) and batch["weight"].dtype == torch.float32
    same = _loader(ds, crop=(H, W), scale=(1.0, 1.0), hflip=False, vflip=False, color_jitter=0.0).make_batch(torch.arange(4), torch.rand(4, N_DRAWS))
    for i in range(4):
        assert torch.equal(same["weight"][i], torch.as_tensor(ds[i]["weight"]).as_subclass(torch.Tensor))
    pad = _loader(ds, crop=(H, W), scale=(0.5, 0.5)).make_batch(torch.arange(4), torch.rand(4, N_DRAWS))
    padded = pad["mask"] == IGNORE_INDEX
    assert padded.any() and (pad["weight"][padded] == 0).all() and (pad["weight"][~padded] > 0).all()


def test_resolve_data_on_device():
    cuda, cpu = torch.device("cuda", 0), torch.device("cpu")
    assert resolve_data_on_device("auto", cuda, 1) and not resolve_data_on_device("auto", cpu, 1)
    assert not resolve_data_on_device("auto", cuda, 2)  # DDP keeps the DataLoader unless asked
    assert resolve_data_on_device("on", cpu, 1) and resolve_data_on_device("on", cuda, 2) and not resolve_data_on_device("off", cuda, 1)
    with pytest.raises(ValueError, match="auto, on, off"):
        resolve_data_on_device("yes", cpu)


def test_flag_parses_and_validates():
    assert config_from_args(build_parser().parse_args(["--data-on-device", "on"])).data_on_device == "on"
    assert TrainConfig().data_on_device == "auto"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--data-on-device", "sometimes"])
    with pytest.raises(ValueError, match="data_on_device"):
        TrainConfig(data_on_device="yes").validate()
    assert "--data-on-device" in build_parser().format_help()


def _train_cfg(tmp_path, **over) -> TrainConfig:
    kw = dict(arch="unet", encoder="test_resnet", dataset="synthetic", dataset_options={"length": 8, "size": [64, 64]}, crop=[64, 64], scale=[0.75, 1.25],
              batch_size=4, warmup_steps=1, workers=0, precision="fp32", epochs=1, max_steps=2, val_limit=2, cache=False, data_on_device="on", out=str(tmp_path / "run"))
    kw.update(over)
    return TrainConfig(**kw)


def test_trainer_two_steps_on_the_device_loader(tmp_path):
    from workbench.data.device import DeviceLoader as Loader

    torch.set_num_threads(1)
    trainer = Trainer(_train_cfg(tmp_path), command="pytest")
    assert isinstance(trainer.loader, Loader) and trainer.data_pipeline == "device"
    summary = trainer.fit()
    run = Path(trainer.cfg.out)
    assert summary["steps"] == 2 and summary["data_pipeline"] == "device"
    for name in ("config.yaml", "metrics.jsonl", "best.json", "last.json", "summary.json", "resume.safetensors"):
        assert (run / name).is_file(), name
    assert "data_pipeline: device" in (run / "config.yaml").read_text()
    assert json.loads((run / "last.json").read_text())["training"]["data_pipeline"] == "device"
    again = config_from_args(build_parser().parse_args(["--config", str(run / "config.yaml")]))
    assert again == trainer.cfg  # the recorded pipeline is not a config field
    off = Trainer(_train_cfg(tmp_path / "off", data_on_device="auto", device="cpu"))  # CPU: auto is the DataLoader
    assert off.data_pipeline == "dataloader" and not isinstance(off.loader, Loader)


def test_bench_data_pipeline_and_cli(tmp_path, capsys):
    res = bench_data_pipeline(dataset="synthetic", dataset_options={"length": 8, "size": [48, 64]}, batch_size=4, crop=(32, 32), workers=0, device="cpu", batches=2, warmup=1)
    assert [r["pipeline"] for r in res["rows"]] == ["DataLoader (0 workers)", "device loader (cpu)"]
    assert all(r["batches_per_s"] > 0 for r in res["rows"]) and "speedup" in res["rows"][-1]
    assert "| pipeline |" in format_bench_table(res)
    from workbench.cli import main

    out = tmp_path / "bench.json"
    code = main(["bench-data", "--dataset", "synthetic", "--dataset-options", '{"length": 8, "size": [48, 64]}', "--batch-size", "4", "--crop", "32", "32",
                 "--workers", "0", "--device", "cpu", "--batches", "2", "--warmup", "1", "--out", str(out)])
    assert code == 0 and json.loads(out.read_text())["rows"][1]["pipeline"] == "device loader (cpu)"
    assert "| device loader (cpu) |" in capsys.readouterr().out


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_batches_without_host_sync(synth, tmp_path):
    loader = _loader(synth, device="cuda", channels_last=True)
    it = iter(loader)
    next(it)  # the epoch's index upload happens here; later batches must not wait for the GPU
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")  # any synchronising call raises
    try:
        batch = next(it)
        loader.make_batch(torch.arange(4, device="cuda"), loader.draws(0, 7), names=["x"] * 4)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert batch["image"].is_cuda and batch["mask"].is_cuda and batch["mask"].dtype == torch.int64
    assert batch["image"].is_contiguous(memory_format=torch.channels_last)
    cpu_mask_values = set(torch.unique(loader.data.masks).tolist()) | {IGNORE_INDEX}
    assert set(torch.unique(batch["mask"]).tolist()) <= cpu_mask_values
    trainer = Trainer(_train_cfg(tmp_path, device="auto", data_on_device="auto", precision="auto"))
    assert trainer.data_pipeline == "device" and trainer.loader.data.images.is_cuda
    assert trainer.fit()["steps"] == 2
