"""`workbench bench`: the figures it reports are computed, consistent and tabulated (small sizes; no timing targets)."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from PIL import Image

from workbench.inference import timing
from workbench.system import machine
from workbench.tools import bench, bench_engines, bench_request, bench_training
from workbench.models.anatomy import count_parameters
from workbench.models.registry import create_model


def test_run_bench_rows_and_reference_are_consistent():
    result = bench.run_bench(["fcn8s", "unet"], size=(64, 96), repeats=3, warmup=1, memory=False, batch=2)
    assert [r["architecture"] for r in result["rows"]] == ["fcn8s", "unet"]
    for row in result["rows"]:
        assert row["params"] == count_parameters(create_model(row["architecture"], num_classes=11))
        assert row["gflops"] > 0 and row["latency_p90_ms"] >= row["latency_p50_ms"] > 0
        assert row["speedup_vs_fp32_eager"] == pytest.approx(row["latency_fp32_eager_p50_ms"] / row["latency_p50_ms"])
        assert row["achieved_gflop_s"] == pytest.approx(row["gflops"] / (row["latency_p50_ms"] / 1e3))
        assert row["share_of_peak"] == pytest.approx(row["achieved_gflop_s"] / result["matmul_peak_gflop_s"][result["precision"]])
    ref = result["reference"]
    unet = result["rows"][1]
    assert ref["model"].startswith("smp.Unet") and ref["unet_speedup_vs_smp"] == pytest.approx(ref["latency_p50_ms"] / unet["latency_p50_ms"])
    md = bench.to_markdown(result)
    assert "| fcn8s |" in md and "| unet |" in md and "smp.Unet" in md


def test_request_profile_with_and_without_ground_truth(tmp_path, image_factory):
    """The request profile splits the handler into stages whose sum is the handler's time; an upload
    without ground truth has no scoring stage; the table shows both side by side."""
    image = tmp_path / "photo.png"
    image_factory(96, 64).save(image)
    prof = bench_request.profile_request(str(image), ("fcn8s", "naive"), repeats=2)
    stages = prof["stages_ms"]
    assert {"decode", "network", "colorize, overlay, error maps, legends", "image encoding (Gradio)"} <= set(stages)
    assert "scores vs ground truth" not in stages  # not a CamVid image
    assert set(prof["per_model_forward_ms"]) == {"fcn8s", "naive"}
    parts = sum(v for k, v in stages.items() if k not in ("handler total", "image encoding (Gradio)"))
    assert parts <= stages["handler total"] * 1.05  # the stages are parts of the handler (5%: clock granularity)
    assert prof["total_ms"] == pytest.approx(stages["handler total"] + stages["image encoding (Gradio)"])
    assert prof["overhead_share"] == pytest.approx(1 - stages["network"] / prof["total_ms"])
    assert 0 < prof["overhead_share"] < 1
    copy = shutil.copyfile(image, tmp_path / "upload.png")
    other = bench_request.profile_request(str(copy), ("fcn8s", "naive"), repeats=1)
    md = bench_request.request_to_markdown(prof, {"start_to_first_answer_s": 1.0, "request_p50_ms": 10.0, "request_max_ms": 12.0, "answer_p50_ms": 7.0}, other)
    assert "| stage | CamVid example ms | share | own upload ms | share |" in md
    assert f"**{100 * prof['overhead_share']:.1f}%**" in md and "start to first answered request 1.0 s" in md
    assert "p50 10 ms (max 12 ms), of which the answer without the client downloading" in md and "is 7 ms (p50)" in md


def test_encode_outputs_counts_palette_masks(monkeypatch):
    """Gradio encodes the palette masks (PIL images) too: the request's encoding stage must include them."""
    from gradio import processing_utils

    saved = []
    monkeypatch.setattr(processing_utils, "save_pil_to_cache", lambda img, cache_dir, name="image", format="webp": saved.append((img.mode, format)))
    mask = Image.fromarray(np.zeros((36, 48), np.uint8), "P")
    overlay = np.zeros((36, 48, 3), np.uint8)
    # as workbench.app.compare.encoded_images lists a result's pictures: (value, format); None = no picture
    assert bench_request._encode_outputs([(mask, "png"), (overlay, "jpeg"), (None, "jpeg")]) >= 0
    assert saved == [("P", "png"), ("RGB", "jpeg")]


def test_train_bench_rows_and_compiled_variants(monkeypatch):
    import torch

    compiled = []
    monkeypatch.setattr(torch, "compile", lambda m: compiled.append(m) or m)  # the wiring, not Inductor (test_train compiles for real)
    result = bench_training.run_train_bench(["fcn32s"], batch_size=2, size=(64, 64), repeats=1, compile=True)
    rows = result["rows"]
    assert [(r["precision"] == "fp32", r["channels_last"], r["compile"]) for r in rows][0] == (True, False, False)  # the baseline
    assert sum(r["compile"] for r in rows) == 2 and len(compiled) == 2
    for r in rows[1:]:
        assert r["speedup_vs_fp32"] == pytest.approx(r["images_per_s"] / rows[0]["images_per_s"])
        assert r["images_per_s"] == pytest.approx(2 / r["step_s"]) and r["first_step_s"] > 0
    md = bench_training.train_to_markdown(result)
    assert md.count("| fcn32s |") == len(rows) and "| yes (" in md
    assert len(bench_training.run_train_bench(["fcn32s"], batch_size=2, size=(64, 64), repeats=1)["rows"]) == len(rows) - 2


def test_machine_description_records_the_isa_and_native_bf16():
    import torch

    m = machine.machine_description()
    assert m["isa"] == torch.backends.cpu.get_cpu_capability() and isinstance(m["bf16"], bool)
    assert machine.machine_line(m) == f"{m['threads']} threads, {m['cpu']}, torch {m['torch']}" + (f", {m['allocator']}" if m["allocator"] else "")


def test_fmt_ms_keeps_the_digits_that_matter():
    assert [timing.fmt_ms(v) for v in (1.234, 9.996, 28.84, 99.94, 1295.4)] == ["1.23", "10.00", "28.8", "99.9", "1295"]


def test_render_rewrites_a_stored_result_without_measuring(tmp_path, monkeypatch):
    """`bench --render X.json` gives the same table as the run that wrote X.json, from the JSON alone."""
    import json
    from types import SimpleNamespace

    result = bench.run_bench(["fcn8s"], size=(64, 64), repeats=1, warmup=0, memory=False, batch=1, reference=False)
    stored = tmp_path / "gpu.json"
    stored.write_text(json.dumps(result))
    assert bench.markdown_for(json.loads(stored.read_text())) == bench.to_markdown(result)
    monkeypatch.setattr(bench, "run_bench", lambda *a, **k: pytest.fail("--render must not measure"))
    args = SimpleNamespace(render=str(stored), out=None)
    assert bench.main(args) == 0
    assert (tmp_path / "gpu.md").read_text() == bench.to_markdown(result) + "\n"
    with pytest.raises(ValueError, match="not a stored `workbench bench` result"):
        bench.markdown_for({"rows": [{"something": 1}]})


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")  # the ONNX row traces the model's size checks
def test_engine_bench_rows_parity_and_new_size_cost(monkeypatch):
    """Every engine row carries its latency and label agreement with fp32 eager; the compiled row also
    records what a second input size costs (the reason the app does not compile)."""
    import torch

    monkeypatch.setattr(torch, "compile", lambda m: m)  # the wiring, not Inductor (timings are not checked here)
    result = bench_engines.run_architecture_bench("fcn8s", size=(48, 72), repeats=1)
    rows = {r["engine"].split(" (")[0]: r for r in result["rows"]}
    assert rows["torch eager fp32"]["label_agreement"] == 1.0
    for r in result["rows"]:
        if "error" not in r:
            assert r["latency_p50_ms"] > 0 and 0.5 <= r["label_agreement"] <= 1.0
    comp = rows["torch.compile of the fast path"]
    assert comp["new_size"] == [64, 96] and comp["new_size_first_call_s"] > 0 and comp["compile_s"] > 0
    md = bench_engines.architecture_engines_to_markdown(result)
    assert "first call at 64x96" in md and bench.markdown_for(result) == md


def test_loss_bench_times_every_term_and_checks_lovasz_against_smp():
    import json

    from workbench.training.losses import LOSSES

    result = bench_training.run_loss_bench(batch_size=2, size=(16, 16), repeats=1)
    rows = {r["loss"]: r for r in result["rows"]}
    assert set(rows) == {*LOSSES, "lovasz (smp)"}
    assert rows["lovasz"]["value"] == pytest.approx(rows["lovasz (smp)"]["value"], rel=1e-5)  # the same loss
    assert rows["ce"]["vs_ce"] == 1.0 and all(r["ms"] > 0 for r in rows.values())
    assert result["lovasz_speedup_vs_smp"] == pytest.approx(rows["lovasz (smp)"]["ms"] / rows["lovasz"]["ms"])
    md = bench.markdown_for(json.loads(json.dumps(result)))
    assert md == bench_training.losses_to_markdown(result) and "| lovasz (smp) |" in md and "2 x 11 classes x 16x16" in md


def test_allocator_bench_runs_each_allocator_in_its_own_process():
    import json

    from workbench.system.allocator import find_library

    result = bench_training.run_allocator_bench(["naive"], batch_size=2, train_size=(32, 32), size=(32, 32), repeats=1)
    ran = [r["allocator"] for r in result["rows"]]  # each row's allocator is what its process had loaded
    assert ran == [a for a in bench_training.ALLOCATORS if a == "system" or find_library(a)]
    assert result["not_installed"] == [a for a in bench_training.ALLOCATORS if a not in ran]
    base = result["rows"][0]
    assert base["train_speedup"] == 1.0 and base["latency_speedup"] == 1.0
    for r in result["rows"]:
        assert r["train_step_s"] > 0 and r["latency_p50_ms"] > 0 and r["max_rss_mb"] > 50 and 0 <= r["kernel_time_share"] < 1
        assert r["train_speedup"] == pytest.approx(base["train_step_s"] / r["train_step_s"])
    md = bench.markdown_for(json.loads(json.dumps(result)))
    assert md == bench_training.allocators_to_markdown(result) and "| naive | system |" in md and "batch 2 x 32x32" in md
