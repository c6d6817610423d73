"""Datasets and transforms: real CamVid / ISBI readers (skipped without the data), folder datasets with
bad input, the synthetic set, and the alignment of image, mask and weight map under augmentation."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import tv_tensors
from torchvision.transforms import v2

from workbench.classes import CAMVID_CLASSES, IGNORE_INDEX, default_normalization
from workbench.data.datasets import DatasetError, SegDataset, build_dataset
from workbench.paths import DATA_ROOT_ENV, resolve_data_root
from workbench.data.transforms import eval_transforms, train_transforms
from workbench.data.weighting import WeightMap, unet_border_weights

from conftest import REPO_ROOT

DATA_ROOT = resolve_data_root()


# --------------------------------------------------------------------------- real data


@pytest.fixture(scope="module")
def camvid_root():
    if not (DATA_ROOT / "camvid").is_dir():
        pytest.skip(f"CamVid not found under {DATA_ROOT}: set {DATA_ROOT_ENV} to the folder holding camvid/")
    return DATA_ROOT / "camvid"


@pytest.fixture(scope="module")
def isbi_root():
    if not (DATA_ROOT / "isbi2012-membrane").is_dir():
        pytest.skip(f"ISBI 2012 not found under {DATA_ROOT}: set {DATA_ROOT_ENV} to the folder holding isbi2012-membrane/")
    return DATA_ROOT / "isbi2012-membrane"


@pytest.mark.data
def test_camvid_splits_items_and_void(camvid_root):
    sizes = {s: len(build_dataset("camvid", s)) for s in ("train", "val", "test")}
    assert sizes == {"train": 367, "val": 101, "test": 233}
    ds = build_dataset("camvid", "train")
    assert (ds.name, ds.split, ds.num_classes, ds.in_chans, ds.ignore_index) == ("camvid", "train", 11, 3, 255)
    assert ds.classes == CAMVID_CLASSES
    first = (camvid_root / "train.txt").read_text().split()[:2]
    assert ds.files[0] == (camvid_root / "train" / Path(first[0]).name, camvid_root / "trainannot" / Path(first[1]).name)
    for i in (0, 200):
        s = ds[i]
        assert isinstance(s["image"], tv_tensors.Image) and s["image"].dtype == torch.uint8
        assert s["image"].shape == (3, 360, 480)
        assert isinstance(s["mask"], tv_tensors.Mask) and s["mask"].dtype == torch.int64 and s["mask"].shape == (360, 480)
        assert s["name"] == ds.files[i][0].stem
        raw = np.asarray(Image.open(ds.files[i][1]))
        m = s["mask"].numpy()
        assert set(np.unique(m)) <= set(range(11)) | {255}
        np.testing.assert_array_equal(m == 255, raw == 11)  # void 11 -> 255, nothing else
        np.testing.assert_array_equal(m[raw != 11], raw[raw != 11])
        np.testing.assert_array_equal(s["image"].numpy().transpose(1, 2, 0), np.asarray(Image.open(ds.files[i][0]).convert("RGB")))
    assert (ds[0]["mask"] == 255).any()
    assert ds.validate(max_files=25) == 25
    assert build_dataset("camvid", "test").validate(max_files=10) == 10


@pytest.mark.data
def test_camvid_masks_and_cache(camvid_root):
    ds = build_dataset("camvid", "val", cache=True)
    a = ds[3]
    b = ds[3]
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["mask"], b["mask"])
    a["image"][:] = 0  # a sample is a copy: changing it leaves the cache alone
    assert torch.equal(ds[3]["image"], b["image"])
    masks = ds.masks()
    first = next(masks)
    assert first.dtype == np.int64 and first.shape == (360, 480)
    np.testing.assert_array_equal(first, ds[0]["mask"].numpy())


@pytest.mark.data
def test_isbi_splits_and_labels(isbi_root):
    train, val, test = build_dataset("isbi", "train"), build_dataset("isbi", "val"), build_dataset("isbi", "test")
    assert (len(train), len(val), len(test)) == (20, 4, 6)
    assert [p.stem for p, _ in test.files] == ["24", "25", "26", "27", "28", "29"]
    assert [p.stem for p, _ in val.files] == ["20", "21", "22", "23"]
    assert [p.stem for p, _ in train.files] == [str(i) for i in range(20)]
    assert (train.in_chans, train.num_classes, train.classes[0]["name"]) == (1, 2, "Membrane")
    s = test[0]
    assert s["image"].shape == (1, 512, 512) and s["image"].dtype == torch.uint8
    assert s["mask"].shape == (512, 512) and s["mask"].dtype == torch.int64
    raw = np.asarray(Image.open(test.files[0][1]))
    np.testing.assert_array_equal(s["mask"].numpy(), (raw == 255).astype(np.int64))
    assert set(np.unique(s["mask"].numpy())) == {0, 1}
    other = build_dataset("isbi", "test", test_slices=[0, 1])
    assert [p.stem for p, _ in other.files] == ["0", "1"]
    assert len(build_dataset("isbi", "train", test_slices=[0, 1])) == 24
    assert len(build_dataset("isbi", "train", test_slices=[0, 1], val_slices=[])) == 28
    assert len(build_dataset("isbi", "all")) == 30
    assert test.validate() == 6 and train.validate(max_files=6) == 6


@pytest.mark.data
def test_isbi_border_weights(isbi_root):
    ds = build_dataset("isbi", "test", border_weights=True)
    s = ds[0]
    assert isinstance(s["weight"], WeightMap) and s["weight"].dtype == torch.float32 and s["weight"].shape == (512, 512)
    w, m = s["weight"].numpy(), s["mask"].numpy()
    np.testing.assert_allclose(w, unet_border_weights(m, object_classes=(1,)))
    assert w[m == 0].mean() > 2 * w[m == 1].mean()  # membranes between cells weigh most


def test_cli_weights_missing_data(tmp_path):
    env = dict(os.environ, **{DATA_ROOT_ENV: str(tmp_path / "nowhere")})
    res = subprocess.run([sys.executable, "-m", "workbench", "weights"], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 2
    assert str(tmp_path / "nowhere") in res.stderr and DATA_ROOT_ENV in res.stderr and "--data-root" in res.stderr


@pytest.mark.data
def test_cli_weights_on_camvid(camvid_root, tmp_path):
    out = tmp_path / "w.json"
    res = subprocess.run(
        [sys.executable, "-m", "workbench", "weights", "--json", str(out)], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120
    )
    assert res.returncode == 0, res.stderr
    assert "SegNet" in res.stdout and "Bicyclist" in res.stdout
    data = json.loads(out.read_text())
    assert data["images"] == 367 and len(data["weights"]) == 11
    # within a factor 1.25 of the SegNet tutorial's weights, except SignSymbol (see the report)
    ratios = np.array(data["weights"]) / np.array(data["segnet_reference"])
    assert np.all((ratios[[0, 1, 2, 3, 4, 5, 7, 8, 9, 10]] > 0.9) & (ratios[[0, 1, 2, 3, 4, 5, 7, 8, 9, 10]] < 1.25))


# --------------------------------------------------------------------------- bad input


def test_missing_data_root_explains_where_it_looked(tmp_path, monkeypatch):
    missing = tmp_path / "no-data"
    with pytest.raises(DatasetError) as exc:
        build_dataset("camvid", "train", data_root=missing)
    msg = str(exc.value)
    assert str(missing) in msg and "--data-root" in msg and DATA_ROOT_ENV in msg and "explicitly" in msg
    monkeypatch.setenv(DATA_ROOT_ENV, str(missing))
    with pytest.raises(DatasetError, match=rf"from \${DATA_ROOT_ENV}"):
        build_dataset("isbi", "train")
    with pytest.raises(DatasetError, match="CamVid not found"):
        build_dataset("camvid", "train", data_root=tmp_path)


def test_unknown_dataset_split_and_option():
    with pytest.raises(DatasetError, match="unknown dataset 'cityscapes'; valid: camvid, isbi, folder, synthetic"):
        build_dataset("cityscapes", "train")
    with pytest.raises(DatasetError, match="unknown split 'training' for dataset 'camvid'; valid: train, val, test"):
        build_dataset("camvid", "training")
    with pytest.raises(DatasetError, match="valid: train, val, test, all"):
        build_dataset("isbi", "validation")
    with pytest.raises(DatasetError, match="valid: train, val, test"):
        build_dataset("synthetic", "all")
    with pytest.raises(DatasetError, match=r"unknown option\(s\) \['colour'\] for dataset 'synthetic'"):
        build_dataset("synthetic", "train", colour=True)
    with pytest.raises(DatasetError, match="border_options"):
        build_dataset("synthetic", "train", border_options={"w": 1})


def _save(path: Path, arr: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)
    return path


def _make_folder(root: Path, n=3, size=(24, 32), num_classes=3, split=None, grey=False, seed=0):
    """images/ + masks/ (or images/<split>/ + masks/<split>/) with index masks; returns the label maps."""
    rng = np.random.default_rng(seed)
    labels = []
    for i in range(n):
        img = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
        if grey:
            img = img[..., 0]
        lab = rng.integers(0, num_classes, size, dtype=np.uint8)
        sub = f"{split}/" if split else ""
        _save(root / f"images/{sub}s{i}.png", img)
        _save(root / f"masks/{sub}s{i}.png", lab)
        labels.append(lab)
    return labels


def test_folder_index_masks(tmp_path):
    labels = _make_folder(tmp_path, n=3)
    ds = build_dataset("folder", "all", path=tmp_path)
    assert (ds.name, ds.split, len(ds), ds.num_classes, ds.in_chans) == ("folder", "all", 3, 3, 3)
    assert [c["name"] for c in ds.classes] == ["class_0", "class_1", "class_2"]
    s = ds[1]
    assert s["name"] == "s1" and s["image"].shape == (3, 24, 32)
    np.testing.assert_array_equal(s["mask"].numpy(), labels[1])
    assert ds.validate() == 3
    # void value mapped to ignore; 255 is ignore anyway
    lab = labels[0].copy()
    lab[0, :5] = 7
    lab[1, :3] = 255
    _save(tmp_path / "masks/s0.png", lab)
    ds = build_dataset("folder", "all", path=tmp_path, num_classes=3, void=7)
    m = ds[0]["mask"].numpy()
    assert (m[0, :5] == IGNORE_INDEX).all() and (m[1, :3] == IGNORE_INDEX).all()
    np.testing.assert_array_equal(m[2:], labels[0][2:])


def test_folder_splits_and_grey_images(tmp_path):
    _make_folder(tmp_path, n=2, split="train", grey=True)
    _make_folder(tmp_path, n=1, split="val", grey=True, seed=1)
    train = build_dataset("folder", "train", path=tmp_path)
    assert len(train) == 2 and train.in_chans == 1 and train[0]["image"].shape == (1, 24, 32)
    assert len(build_dataset("folder", "val", path=tmp_path)) == 1
    with pytest.raises(DatasetError, match="valid: train, val"):
        build_dataset("folder", "all", path=tmp_path)
    with pytest.raises(DatasetError, match="needs path="):
        build_dataset("folder", "train")


def test_folder_colour_masks_with_palette(tmp_path):
    classes = [{"name": "bg", "color": [0, 0, 0]}, {"name": "road", "color": [128, 64, 128]}, {"name": "car", "color": [64, 0, 128]}]
    lab = np.zeros((10, 12), np.uint8)
    lab[2:5, 3:9] = 1
    lab[6:9, 1:4] = 2
    rgb = np.array([c["color"] for c in classes], np.uint8)[lab]
    rgb[0, 0] = (255, 255, 255)  # void colour
    _save(tmp_path / "images/a.png", np.zeros((10, 12, 3), np.uint8))
    _save(tmp_path / "masks/a.png", rgb)
    want = lab.astype(np.int64)
    want[0, 0] = IGNORE_INDEX
    ds = build_dataset("folder", "all", path=tmp_path, classes=classes, void_color=[255, 255, 255])
    assert ds.classes == classes and ds.num_classes == 3
    np.testing.assert_array_equal(ds[0]["mask"].numpy(), want)
    (tmp_path / "classes.json").write_text(json.dumps({"classes": classes, "void_color": [255, 255, 255]}))
    ds = build_dataset("folder", "all", path=tmp_path)
    assert [c["name"] for c in ds.classes] == ["bg", "road", "car"]
    np.testing.assert_array_equal(ds[0]["mask"].numpy(), want)
    # a colour outside the palette names the file and the colour
    (tmp_path / "classes.json").write_text(json.dumps(classes))
    with pytest.raises(DatasetError, match=r"a\.png: mask holds colours \[\(255, 255, 255\)\] that are not in the palette"):
        build_dataset("folder", "all", path=tmp_path)[0]
    # colour masks without a palette
    (tmp_path / "classes.json").unlink()
    with pytest.raises(DatasetError, match=r"a\.png: colour mask but no palette"):
        build_dataset("folder", "all", path=tmp_path)


def test_folder_binary_masks(tmp_path):
    _save(tmp_path / "images/a.png", np.zeros((6, 6), np.uint8))
    m = np.zeros((6, 6), np.uint8)
    m[2:4] = 255
    _save(tmp_path / "masks/a.png", m)
    with pytest.raises(DatasetError, match="binary=True"):
        build_dataset("folder", "all", path=tmp_path)
    ds = build_dataset("folder", "all", path=tmp_path, binary=True)
    assert ds.num_classes == 2
    np.testing.assert_array_equal(ds[0]["mask"].numpy(), (m > 127).astype(np.int64))


def test_mask_values_outside_the_classes(tmp_path):
    _make_folder(tmp_path, n=2)
    bad = np.full((24, 32), 1, np.uint8)
    bad[0, 0] = 9
    bad_path = _save(tmp_path / "masks/s1.png", bad)
    ds = build_dataset("folder", "all", path=tmp_path, num_classes=3)
    ds[0]
    with pytest.raises(DatasetError, match=r"s1\.png: mask holds values \[9\] outside the classes 0..2"):
        ds[1]
    with pytest.raises(DatasetError) as exc:
        ds.validate()
    assert "1 of 2 checked pairs" in str(exc.value) and str(bad_path) in str(exc.value)


def test_image_mask_size_mismatch(tmp_path):
    _make_folder(tmp_path, n=2)
    _save(tmp_path / "masks/s0.png", np.zeros((20, 32), np.uint8))
    ds = build_dataset("folder", "all", path=tmp_path, num_classes=3)
    with pytest.raises(DatasetError) as exc:
        ds[0]
    msg = str(exc.value)
    assert "s0.png: image is 32x24" in msg and str(tmp_path / "masks/s0.png") in msg and "32x20" in msg


def test_corrupt_png(tmp_path):
    _make_folder(tmp_path, n=2, size=(64, 64))
    img = tmp_path / "images/s1.png"
    img.write_bytes(img.read_bytes()[: img.stat().st_size // 2])  # truncated
    msk = tmp_path / "masks/s0.png"
    msk.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    ds = build_dataset("folder", "all", path=tmp_path, num_classes=3)
    with pytest.raises(DatasetError, match=r"s1\.png.*(corrupt|truncated)"):
        ds[1]
    with pytest.raises(DatasetError, match=r"masks/s0\.png: mask cannot be decoded"):
        ds[0]
    with pytest.raises(DatasetError) as exc:
        ds.validate()
    assert "2 of 2 checked pairs" in str(exc.value) and str(img) in str(exc.value) and str(msk) in str(exc.value)


def test_validate_lists_at_most_ten_problems(tmp_path):
    _make_folder(tmp_path, n=13, size=(8, 8))
    for i in range(13):
        _save(tmp_path / f"masks/s{i}.png", np.full((8, 8), 5, np.uint8))
    with pytest.raises(DatasetError) as exc:
        build_dataset("folder", "all", path=tmp_path, num_classes=3).validate()
    msg = str(exc.value)
    assert "13 of 13 checked pairs" in msg and "... and 3 more" in msg and msg.count("outside the classes") == 10


def test_missing_masks_and_listed_files(tmp_path):
    _make_folder(tmp_path, n=2)
    (tmp_path / "masks/s1.png").unlink()
    with pytest.raises(DatasetError, match=r"s1\.png"):
        build_dataset("folder", "all", path=tmp_path, num_classes=3)
    # a CamVid layout whose list names a missing file; without the list, pairs are matched by name
    cam = tmp_path / "root/camvid"
    _save(cam / "val/a.png", np.zeros((4, 4, 3), np.uint8))
    _save(cam / "valannot/a.png", np.full((4, 4), 11, np.uint8))
    (cam / "val.txt").write_text("/SegNet/CamVid/val/a.png /SegNet/CamVid/valannot/a.png\n/SegNet/CamVid/val/b.png /SegNet/CamVid/valannot/b.png\n")
    with pytest.raises(DatasetError, match=r"missing:\n  - .*val/b\.png"):
        build_dataset("camvid", "val", data_root=tmp_path / "root")
    (cam / "val.txt").unlink()
    ds = build_dataset("camvid", "val", data_root=tmp_path / "root")
    assert len(ds) == 1 and (ds[0]["mask"] == IGNORE_INDEX).all()


# --------------------------------------------------------------------------- synthetic


def test_synthetic_is_deterministic_and_splits_differ():
    a, b = build_dataset("synthetic", "train"), build_dataset("synthetic", "train")
    assert isinstance(a, SegDataset) and (a.name, a.split) == ("synthetic", "train")
    assert (len(a), len(build_dataset("synthetic", "val")), len(build_dataset("synthetic", "test"))) == (64, 16, 16)
    assert (a.num_classes, a.in_chans, a.ignore_index) == (4, 3, 255)
    for i in (0, 5):
        s1, s2, s3 = a[i], a[i], b[i]
        assert s1["image"].shape == (3, 96, 128) and s1["mask"].shape == (96, 128)
        assert s1["image"].dtype == torch.uint8 and s1["mask"].dtype == torch.int64
        assert torch.equal(s1["image"], s2["image"]) and torch.equal(s1["image"], s3["image"])
        assert torch.equal(s1["mask"], s3["mask"])
    assert not torch.equal(a[0]["image"], a[1]["image"])
    val, test = build_dataset("synthetic", "val"), build_dataset("synthetic", "test")
    assert not torch.equal(a[0]["image"], val[0]["image"]) and not torch.equal(val[0]["image"], test[0]["image"])
    assert not torch.equal(a[0]["image"], build_dataset("synthetic", "train", seed=1)[0]["image"])
    counts = np.bincount(np.concatenate([m.ravel() for m in a.masks()]), minlength=4)
    assert counts.size == 4 and (counts > 0).all()  # every class occurs
    assert counts[0] > counts[1:].max()  # background is the largest class
    small = build_dataset("synthetic", "val", size=(40, 48), length=3, num_classes=6, void_border=1)
    assert len(small) == 3 and small.num_classes == 6 and small[0]["image"].shape == (3, 40, 48)
    assert set(np.unique(small[0]["mask"].numpy())) <= set(range(6)) | {255} and (small[0]["mask"] == 255).any()


def _digest(ds, i):
    s = ds[i]
    return hashlib.sha256(s["image"].numpy().tobytes() + s["mask"].numpy().tobytes()).hexdigest()


def test_synthetic_identical_across_processes():
    code = (
        "from workbench.data.datasets import build_dataset; import hashlib\n"
        "s = build_dataset('synthetic', 'val')[7]\n"
        "print(hashlib.sha256(s['image'].numpy().tobytes() + s['mask'].numpy().tobytes()).hexdigest())"
    )
    res = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == _digest(build_dataset("synthetic", "val"), 7)


def test_synthetic_is_learnable():
    """A tiny per-pixel conv net beats chance by far after 25 steps."""
    torch.manual_seed(0)
    norm = default_normalization(3)
    train = build_dataset("synthetic", "train", transform=eval_transforms(**norm), cache=True)
    val = build_dataset("synthetic", "val", transform=eval_transforms(**norm))
    layers = []
    for i in range(3):  # three 3x3 conv layers: a 7x7 receptive field
        layers += [torch.nn.Conv2d(3 if i == 0 else 16, 16, 3, padding=1), torch.nn.BatchNorm2d(16), torch.nn.ReLU()]
    model = torch.nn.Sequential(*layers, torch.nn.Conv2d(16, 4, 1))
    opt = torch.optim.Adam(model.parameters(), lr=0.02)
    loader = torch.utils.data.DataLoader(train, batch_size=8, shuffle=True)
    model.train()
    step, threads = 0, torch.get_num_threads()
    torch.set_num_threads(1)  # a net this small gains nothing from a second thread, and loses a lot when the core is busy
    try:
        while step < 25:
            for batch in loader:
                loss = torch.nn.functional.cross_entropy(model(batch["image"]), batch["mask"], ignore_index=255)
                opt.zero_grad()
                loss.backward()
                opt.step()
                step += 1
                if step == 25:
                    break
    finally:
        torch.set_num_threads(threads)
    model.eval()
    batch = next(iter(torch.utils.data.DataLoader(val, batch_size=16)))
    with torch.no_grad():
        pred = model(batch["image"]).argmax(1)
    conf = torch.bincount(batch["mask"].flatten() * 4 + pred.flatten(), minlength=16).reshape(4, 4).double()
    iou = conf.diag() / (conf.sum(0) + conf.sum(1) - conf.diag())
    assert iou.mean() > 0.6, iou


# --------------------------------------------------------------------------- border weights in the dataset


def test_border_weight_cache_memory_and_disk(tmp_path):
    cache_dir = tmp_path / "wcache"
    ds = build_dataset("synthetic", "val", border_weights=True, weight_cache_dir=cache_dir, length=4)
    s = ds[2]
    assert isinstance(s["weight"], WeightMap) and s["weight"].dtype == torch.float32 and s["weight"].shape == (96, 128)
    np.testing.assert_allclose(s["weight"].numpy(), unet_border_weights(s["mask"].numpy(), object_classes=(1, 2, 3)))
    assert ds.cache_stats == {"weights_computed": 1}
    assert torch.equal(ds[2]["weight"], s["weight"])
    assert ds.cache_stats == {"weights_computed": 1, "weights_memory": 1}
    files = sorted(cache_dir.iterdir())
    assert len(files) == 1 and files[0].suffix == ".npy"  # no temporary files left behind
    # a fresh dataset (another worker, a later run) reads the map from disk
    again = build_dataset("synthetic", "val", border_weights=True, weight_cache_dir=cache_dir, length=4)
    assert torch.equal(again[2]["weight"], s["weight"])
    assert again.cache_stats == {"weights_disk": 1}
    # other parameters are another key
    other = build_dataset("synthetic", "val", border_weights=True, weight_cache_dir=cache_dir, length=4, border_options={"w0": 3.0})
    other[2]
    assert other.cache_stats == {"weights_computed": 1} and len(list(cache_dir.iterdir())) == 2
    # an unreadable cache file is recomputed and replaced
    for f in cache_dir.iterdir():
        f.write_bytes(b"not npy")
    broken = build_dataset("synthetic", "val", border_weights=True, weight_cache_dir=cache_dir, length=4)
    assert torch.equal(broken[2]["weight"], s["weight"]) and broken.cache_stats == {"weights_computed": 1}


def test_preload_and_validate_fill_the_caches():
    ds = build_dataset("synthetic", "val", length=5, cache=True, border_weights=True)
    assert ds.validate() == 5 and len(ds._pairs) == 5  # validate() checked and cached every pair
    ds.preload()
    assert ds.cache_stats == {"weights_computed": 5}
    for i in range(5):
        ds[i]
    assert ds.cache_stats == {"weights_computed": 5, "weights_memory": 5}


def test_dataloader_workers_with_transforms_and_weights():
    norm = default_normalization(3)
    ds = build_dataset(
        "synthetic", "train", length=8, border_weights=True, transform=train_transforms((64, 64), color_jitter=0.3, **norm)
    )
    loader = torch.utils.data.DataLoader(ds, batch_size=4, num_workers=2)
    batches = list(loader)
    assert len(batches) == 2
    b = batches[0]
    assert b["image"].shape == (4, 3, 64, 64) and b["image"].dtype == torch.float32
    assert b["mask"].shape == (4, 64, 64) and b["mask"].dtype == torch.int64
    assert b["weight"].shape == (4, 64, 64) and b["weight"].dtype == torch.float32
    assert b["name"] == [f"synthetic-train-{i:04d}" for i in range(4)]


# --------------------------------------------------------------------------- transforms


def _position_sample(h=64, w=96):
    """Image channels encode (row, col) and a constant 255; mask and weight are functions of position."""
    rows, cols = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    image = torch.stack([rows, cols, torch.full_like(rows, 255)]).to(torch.uint8)
    mask = ((rows // 8) * 7 + cols // 8) % 5
    weight = (1 + rows * w + cols).float()  # 0 only where padded
    return {"image": tv_tensors.Image(image), "mask": tv_tensors.Mask(mask), "weight": WeightMap(weight), "name": "pos"}, w


@pytest.mark.parametrize("rotate", [0.0, 15.0])
def test_image_mask_and_weight_stay_aligned(rotate):
    unit = {"mean": [0.0] * 3, "std": [1.0] * 3}
    t = train_transforms((48, 80), scale=(0.5, 2.0), hflip=True, vflip=True, rotate=rotate, color_jitter=0, **unit)
    padded = 0
    for seed in range(25):
        torch.manual_seed(seed)
        sample, width = _position_sample()
        out = t(sample)
        img, mask, weight = out["image"] * 255, out["mask"], out["weight"].long()
        assert img.shape == (3, 48, 80) and mask.shape == (48, 80) and weight.shape == (48, 80)
        assert out["name"] == "pos"
        pad = weight == 0
        padded += int(pad.sum())
        assert torch.equal(mask == 255, pad)  # mask padded with ignore exactly where the weight is 0
        row, col = (weight - 1) // width, (weight - 1) % width
        expected = ((row // 8) * 7 + col // 8) % 5
        assert torch.equal(mask[~pad], expected[~pad])  # mask moved exactly with the weight map
        # the bilinear image agrees to within a pixel (ignoring pixels blended with the padding)
        keep = ~pad & (img[2] > 254.5)
        assert keep.sum() > 0.25 * keep.numel()
        err = torch.maximum((img[0] - row).abs(), (img[1] - col).abs())[keep]
        assert err.max() <= 1.0 + 1e-3, (seed, float(err.max()))
    assert padded > 0  # some draws scaled below the crop size


def test_crop_pads_with_ignore_and_zero_weight():
    norm = {"mean": [0.2, 0.4, 0.6], "std": [0.5, 0.5, 0.5]}
    t = train_transforms((40, 50), scale=None, hflip=False, color_jitter=0, **norm)
    sample = {
        "image": tv_tensors.Image(torch.full((3, 20, 30), 255, dtype=torch.uint8)),
        "mask": tv_tensors.Mask(torch.ones(20, 30, dtype=torch.int64)),
        "weight": tv_tensors.Mask(torch.full((20, 30), 2.0)),  # a plain Mask weight is recognised too
        "name": "small",
    }
    out = t(sample)
    img, mask, weight = out["image"], out["mask"], out["weight"]
    assert img.shape == (3, 40, 50) and img.dtype == torch.float32
    assert mask.shape == (40, 50) and mask.dtype == torch.int64
    assert weight.shape == (40, 50) and weight.dtype == torch.float32
    inside = mask == 1
    assert inside.sum() == 600 and ((mask == 255) | inside).all()
    assert (weight[inside] == 2.0).all() and (weight[~inside] == 0).all()
    mean, std = torch.tensor(norm["mean"])[:, None], torch.tensor(norm["std"])[:, None]
    torch.testing.assert_close(img[:, inside], ((1.0 - mean) / std).expand(3, 600))
    torch.testing.assert_close(img[:, ~inside], ((0.0 - mean) / std).expand(3, 1400))
    filled = train_transforms((40, 50), scale=None, color_jitter=0, ignore_index=99, **norm)(sample)["mask"]
    assert set(filled.unique().tolist()) == {1, 99}


def test_colour_jitter_touches_the_image_only():
    sample, _ = _position_sample(32, 32)
    sample["image"] = tv_tensors.Image(torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8))
    out = v2.ColorJitter(brightness=0.8, contrast=0.8, saturation=0.8, hue=0.3)(sample)
    assert not torch.equal(out["image"], sample["image"])
    assert torch.equal(out["mask"], sample["mask"]) and torch.equal(out["weight"], sample["weight"])
    t = train_transforms((32, 32), scale=None, hflip=False, color_jitter=0.5, mean=[0, 0, 0], std=[1, 1, 1])
    out = t(sample)
    assert not torch.allclose(out["image"], sample["image"].float() / 255)
    assert torch.equal(out["mask"], sample["mask"]) and torch.equal(out["weight"], sample["weight"])


def test_eval_transforms_normalise_only():
    ds = build_dataset("synthetic", "test", length=2, border_weights=True)
    raw = ds[0]
    norm = default_normalization(3)
    out = eval_transforms(**norm)(raw)
    mean, std = torch.tensor(norm["mean"])[:, None, None], torch.tensor(norm["std"])[:, None, None]
    torch.testing.assert_close(out["image"], (raw["image"].float() / 255 - mean) / std)
    assert torch.equal(out["mask"], raw["mask"]) and torch.equal(out["weight"], raw["weight"])
    ds.transform = train_transforms((64, 64), **norm)
    s = ds[1]
    assert s["image"].shape == (3, 64, 64) and s["weight"].shape == (64, 64) and s["name"] == "synthetic-test-0001"


def _fake_camvid(root: Path, name: str = "0001TP_006690.png"):
    """One CamVid test image and its label map under ``root/camvid``."""
    rng = np.random.default_rng(3)
    image = rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)
    labels = rng.integers(0, 12, (12, 16), dtype=np.uint8)  # 11 = void
    (root / "camvid" / "test").mkdir(parents=True)
    (root / "camvid" / "testannot").mkdir(parents=True)
    Image.fromarray(image).save(root / "camvid" / "test" / name)
    Image.fromarray(labels).save(root / "camvid" / "testannot" / name)
    return image, labels, name


def test_find_ground_truth_by_name_and_content(tmp_path):
    from workbench.data.datasets import find_ground_truth

    image, labels, name = _fake_camvid(tmp_path / "data")
    expected = np.where(labels == 11, IGNORE_INDEX, labels)
    upload = tmp_path / "upload" / name
    upload.parent.mkdir()
    upload.write_bytes((tmp_path / "data" / "camvid" / "test" / name).read_bytes())  # Gradio's copy: same bytes
    np.testing.assert_array_equal(find_ground_truth(upload, image, tmp_path / "data"), expected)

    Image.fromarray(image).save(upload, compress_level=0)  # same pixels, other bytes: still found
    assert upload.read_bytes() != (tmp_path / "data" / "camvid" / "test" / name).read_bytes()
    np.testing.assert_array_equal(find_ground_truth(upload, image, tmp_path / "data"), expected)

    other = image.copy()
    other[0, 0] ^= 1  # a user's own file that shares the name gets nobody's labels
    Image.fromarray(other).save(upload)
    assert find_ground_truth(upload, other, tmp_path / "data") is None
    assert find_ground_truth(tmp_path / "upload" / "elsewhere.png", image, tmp_path / "data") is None
    assert find_ground_truth(None, image, tmp_path / "data") is None
