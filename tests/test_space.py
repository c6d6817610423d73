"""The repository is a valid Hugging Face Space: front matter, requirements, examples without data, ZeroGPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.version import Version
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


def _front_matter() -> dict:
    text = (ROOT / "README.md").read_text()
    assert text.startswith("---\n"), "README.md must start with the Space's YAML front matter"
    return yaml.safe_load(text.split("---\n", 2)[1])


def _pyproject_requirements() -> dict[str, Requirement]:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    return {Requirement(d).name.lower().replace("_", "-"): Requirement(d) for d in deps}


def test_readme_front_matter_is_a_valid_gradio_space_config():
    fm = _front_matter()
    for key in ("title", "emoji", "colorFrom", "colorTo", "sdk", "sdk_version", "python_version", "app_file", "tags", "license"):
        assert key in fm, f"front matter lacks {key}"
    assert fm["sdk"] == "gradio"
    assert (ROOT / fm["app_file"]).is_file()
    colours = {"red", "yellow", "green", "blue", "indigo", "purple", "pink", "gray"}  # the values Spaces accepts
    assert fm["colorFrom"] in colours and fm["colorTo"] in colours
    assert len(fm.get("short_description", "")) <= 60
    gradio_spec = _pyproject_requirements()["gradio"].specifier
    assert Version(str(fm["sdk_version"])) in gradio_spec, f"sdk_version {fm['sdk_version']} is outside pyproject's gradio{gradio_spec}"
    assert isinstance(fm["python_version"], str)  # YAML would read 3.10 as the float 3.1
    assert Version(fm["python_version"]) >= Version("3.10")
    assert "semantic-segmentation" in fm["tags"]


def test_requirements_txt_agrees_with_pyproject():
    lines = [ln.split("#")[0].strip() for ln in (ROOT / "requirements.txt").read_text().splitlines()]
    reqs = {Requirement(ln).name.lower().replace("_", "-"): Requirement(ln) for ln in lines if ln}
    project = _pyproject_requirements()
    project.pop("gradio")  # the Space's sdk_version installs gradio; pinning it twice invites conflicts
    assert set(reqs) == set(project), f"only in requirements.txt: {set(reqs) - set(project)}; only in pyproject: {set(project) - set(reqs)}"
    for name, req in reqs.items():
        assert req.specifier == project[name].specifier, f"{name}: requirements.txt {req.specifier} vs pyproject {project[name].specifier}"


def test_packages_txt_installs_an_allocator_the_app_finds():
    """A Space installs packages.txt with apt; the library it brings must be one allocator.py looks for,
    under the file name Debian's package installs (libtcmalloc-minimal4 -> libtcmalloc_minimal.so.4)."""
    from workbench.system.allocator import KINDS, PACKAGES

    packages = [ln.strip() for ln in (ROOT / "packages.txt").read_text().splitlines() if ln.strip() and not ln.startswith("#")]
    kind_of = {pkg: kind for kind, pkg in PACKAGES.items()}  # the packages allocator.py names (.ci/run, its errors)
    installs = {"tcmalloc": "libtcmalloc_minimal.so.4", "jemalloc": "libjemalloc.so.2"}  # what Debian's package puts on disk
    assert packages and set(packages) <= set(kind_of), f"packages.txt lists {packages}; each needs a reason here"
    assert all(installs[kind_of[p]] in KINDS[kind_of[p]] for p in packages)


def test_without_a_data_root_the_app_offers_the_shipped_camvid_examples(monkeypatch, tmp_path):
    """A Space has no data root: the examples are the real CamVid test images shipped in workbench/examples,
    each with its label map; the synthetic image is only the fallback when those are missing too."""
    from workbench.app import common
    from workbench.data import examples as shipped

    monkeypatch.setenv("WORKBENCH_DATA_ROOT", str(tmp_path / "nothing"))
    examples = common.example_images()
    assert 4 <= len(examples) <= 6 and examples == [str(p) for p in shipped.shipped_camvid_images()]
    for ex in examples:
        assert Path(ex).parent == shipped.examples_root() / "camvid" / "test"
        assert (shipped.examples_root() / "camvid" / "testannot" / Path(ex).name).is_file()
        im = Image.open(ex)
        assert im.size == (480, 360) and im.mode == "RGB"
    total = sum(p.stat().st_size for p in shipped.examples_root().rglob("*") if p.is_file())
    assert total < 5e6  # a few MB in all

    monkeypatch.setattr(common, "shipped_camvid_images", lambda: [])  # an installation without the shipped examples
    (ex,) = common.example_images()
    assert ex == common.synthetic_example() and Image.open(ex).size == (480, 360)
    assert common.example_images() == [ex]  # made once, then reused


def test_compare_reports_progress_per_model(monkeypatch, tmp_path):
    from workbench.app import common, compare, segment

    monkeypatch.setenv("WORKBENCH_DATA_ROOT", str(tmp_path / "nothing"))
    calls = []
    order = segment.run_order(["naive", "fcn32s"])  # the fastest expected first; untrained naive has no figure yet
    compare.compare(common.synthetic_example(), ["naive", "fcn32s"], 0.5, progress=lambda frac, desc=None, unit=None: calls.append((frac, desc)))
    assert calls == [((0, 2), f"running {order[0]}"), ((1, 2), f"running {order[1]}")]


# A stand-in for Hugging Face's `spaces`: logs each GPU call and keeps DEPTH, the number of GPU calls running
# (a generator function holds the GPU until it is exhausted, as ZeroGPU streams it).
FAKE_SPACES = '''
import functools, inspect, json, os
LOG = os.environ.get("FAKE_SPACES_LOG")
DEPTH = [0]
def GPU(task=None, *, duration=None, size=None):
    def wrap(fn):
        def log(args, kwargs):
            if LOG:
                with open(LOG, "a") as f:
                    f.write(json.dumps({"fn": fn.__name__, "duration": duration(*args, **kwargs) if callable(duration) else duration}) + "\\n")
        if inspect.isgeneratorfunction(fn):
            @functools.wraps(fn)
            def gpu_fn(*args, **kwargs):
                log(args, kwargs)
                DEPTH[0] += 1
                try:
                    yield from fn(*args, **kwargs)
                finally:
                    DEPTH[0] -= 1
        else:
            @functools.wraps(fn)
            def gpu_fn(*args, **kwargs):
                log(args, kwargs)
                DEPTH[0] += 1
                try:
                    return fn(*args, **kwargs)
                finally:
                    DEPTH[0] -= 1
        gpu_fn.zerogpu = True
        return gpu_fn
    return wrap(task) if callable(task) else wrap
'''


@pytest.mark.slow
def test_zerogpu_decorates_the_model_runs_when_spaces_is_present(tmp_path):
    (tmp_path / "spaces").mkdir()
    (tmp_path / "spaces" / "__init__.py").write_text(FAKE_SPACES)
    log = tmp_path / "gpu.jsonl"
    script = textwrap.dedent(
        """
        from workbench.app import common, compare, segment
        assert getattr(segment.segment_stream, "zerogpu", False), "segment_stream is not wrapped by spaces.GPU"
        compare.compare(common.synthetic_example(), ["naive", "fcn32s", "unet"], 0.5)
        print("ok")
        """
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), str(ROOT)]), FAKE_SPACES_LOG=str(log), WORKBENCH_DATA_ROOT=str(tmp_path / "nothing"))
    res = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0 and "ok" in res.stdout, res.stderr[-3000:]
    rows = [json.loads(line) for line in log.read_text().splitlines()]
    assert rows == [{"fn": "segment_stream", "duration": 22}]  # one GPU call per Compare: 10 s + 4 s per model


def test_without_spaces_nothing_is_wrapped():
    from workbench.app import gpu, segment

    if gpu.spaces is not None:
        pytest.skip("the `spaces` package is installed here")
    assert gpu.on_gpu(len) is len
    assert not hasattr(segment.segment_stream, "zerogpu")
    assert gpu.GPU_FUNCTIONS["workbench.app.segment.segment_stream"] is segment.segment_stream  # listed all the same
    assert gpu.gpu_duration("x.png", ["a"] * 100) == 120  # capped


def test_example_results_are_cached_by_content(monkeypatch, tmp_path):
    """Gradio hands the handler a copy of the example file: the cache goes by content, and only for examples."""
    import shutil

    from workbench.app import common, compare, segment

    monkeypatch.setenv("WORKBENCH_DATA_ROOT", str(tmp_path / "nothing"))
    monkeypatch.setattr(segment, "_EXAMPLE_CACHE", {})
    monkeypatch.setattr(segment, "_EXAMPLE_DIGESTS", set())
    calls = []
    real = segment.segment_stream
    monkeypatch.setattr(segment, "segment_stream", lambda *a, **k: calls.append(a[1]) or real(*a, **k))
    example = common.synthetic_example()
    segment.register_examples([example])
    copy = shutil.copy(example, tmp_path / "served_copy.png")
    first = compare.compare(copy, ["naive", "fcn32s"], 0.5)
    second = compare.compare(copy, ["naive", "fcn32s"], 0.3)
    assert calls == [["naive", "fcn32s"]]  # the second answer came from the cache
    assert (first.state["results"]["naive"]["labels"] == second.state["results"]["naive"]["labels"]).all()
    compare.compare(copy, ["naive"], 0.5)  # another selection is another entry
    Image.open(example).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(tmp_path / "user.png")
    compare.compare(str(tmp_path / "user.png"), ["naive"], 0.5)
    compare.compare(str(tmp_path / "user.png"), ["naive"], 0.5)  # not an example: never cached
    assert len(calls) == 4 and len(segment._EXAMPLE_CACHE) == 2


def test_warming_fills_the_cache_in_the_background(monkeypatch, tmp_path):
    from workbench.app import common, compare, segment

    monkeypatch.setenv("WORKBENCH_DATA_ROOT", str(tmp_path / "nothing"))
    monkeypatch.setattr(segment, "_EXAMPLE_CACHE", {})
    monkeypatch.setattr(segment, "_EXAMPLE_DIGESTS", set())
    paths = segment.register_examples(common.example_images())
    assert len(paths) >= 4  # the shipped CamVid examples
    segment.warm_examples(paths, ["naive"]).join(timeout=120)
    assert len(segment._EXAMPLE_CACHE) == len(paths)
    monkeypatch.setattr(segment, "segment_stream", lambda *a, **k: pytest.fail("not answered from the cache"))
    steps = list(compare.compare_stream(paths[0], ["naive"], 0.5))  # a cached answer streams: running, then done
    assert "running" in steps[0].cards["naive"]["header"] and steps[-1].cards["naive"]["mask"] is not None


HANDLER_PROBE = textwrap.dedent(
    """
    import inspect, json, sys
    import numpy as np
    from PIL import Image
    import spaces  # the stand-in: spaces.DEPTH counts the GPU calls running
    import gradio as gr
    from workbench.app import build_app, common
    from workbench.inference import predictor as P, zoo as Z

    current, calls = [None], []

    def spy(where, real):
        def f(*a, **k):
            calls.append((current[0], where, spaces.DEPTH[0]))
            return real(*a, **k)
        return f

    # every way into a network: building or running a Predictor, the zoo, the queued GPU path
    P.Predictor.__init__ = spy("Predictor()", P.Predictor.__init__)
    P.Predictor.predict = spy("Predictor.predict", P.Predictor.predict)
    P.Predictor.logits = spy("Predictor.logits", P.Predictor.logits)
    P.predict_many = spy("predict_many", P.predict_many)
    Z.Zoo.predictor = spy("Zoo.predictor", Z.Zoo.predictor)
    Z.Zoo.predict = spy("Zoo.predict", Z.Zoo.predict)

    image = sys.argv[1]
    Image.fromarray(np.full((64, 96, 3), 120, np.uint8)).save(image)

    def value(component):
        if isinstance(component, gr.Image):
            return image
        return None if isinstance(component, gr.State) else component.value

    def run_every_event(demo):
        \"\"\"Call every event handler of ``demo`` with its inputs' initial values (an image for image inputs);
        return {handler: [calls into a network made outside a GPU call]} and the handlers that reached a network.\"\"\"
        outside, reached = {}, set()
        for block_fn in demo.fns.values():
            if block_fn.fn is None:
                continue
            name = getattr(block_fn.fn, "__qualname__", block_fn.name)
            current[0] = name
            start = len(calls)
            try:
                out = block_fn.fn(*[value(c) for c in block_fn.inputs])
                if inspect.isgenerator(out):
                    list(out)
            except Exception:  # gr.Error for missing data etc.: what ran before it still counts
                pass
            mine = calls[start:]
            if mine:
                reached.add(name)
            bad = sorted({where for _, where, depth in mine if depth == 0})
            if bad:
                outside[name] = bad
        return outside, sorted(reached)

    app_outside, app_reached = run_every_event(build_app(selection=["fcn8s", "naive"]))

    # the check must be able to fail: a new handler that runs a model without asking for the GPU
    with gr.Blocks() as rogue:
        img = gr.Image(type="filepath")
        out = gr.Textbox()
        def new_handler(path):
            return str(common.zoo().predict("naive", path).labels.shape)
        gr.Button().click(new_handler, img, out)
    rogue_outside, _ = run_every_event(rogue)
    print(json.dumps({"outside": app_outside, "reached": app_reached, "rogue": rogue_outside}))
    """
)


@pytest.mark.slow
def test_every_handler_that_runs_a_network_asks_for_the_gpu(tmp_path):
    """Every event of the built app, run under a stand-in `spaces`: whatever builds or runs a Predictor (directly,
    through the zoo, or the queued GPU path) does so inside a @spaces.GPU call. Found by running the handlers,
    not from a list, so a new tab's handler that forgets gpu.on_gpu fails here (the rogue handler shows it would)."""
    (tmp_path / "spaces").mkdir()
    (tmp_path / "spaces" / "__init__.py").write_text(FAKE_SPACES)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), str(ROOT)]))
    res = subprocess.run([sys.executable, "-c", HANDLER_PROBE, str(tmp_path / "probe.png")], cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200)
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["outside"] == {}, f"handlers that run a network without @spaces.GPU (wrap them with workbench.app.gpu.on_gpu): {out['outside']}"
    # the probe reached the tabs that run networks (Compare, task representation, architectures, upsampling lab, ISBI)
    reached = " ".join(out["reached"])
    for handler in ("CompareTab.run", "task_representation", "describe_architecture", "lab_trained"):
        assert handler in reached, out["reached"]
    assert "new_handler" in out["rogue"]  # an unwrapped handler is caught


# --- no data root: every tab works from the shipped examples


def test_shipped_examples_get_ground_truth_error_maps_and_scores(monkeypatch, tmp_path):
    """The Compare tab finds the shipped label map of a shipped example (and of Gradio's copy of it, which keeps
    the name and the bytes), so a Space shows the ground truth, error maps and per-image scores; a different
    image under the same name gets none."""
    import shutil

    import numpy as np

    from workbench.app import common, compare
    from workbench.data import examples as shipped

    monkeypatch.setenv("WORKBENCH_DATA_ROOT", str(tmp_path / "nothing"))
    example = common.example_images()[0]
    served = tmp_path / "gradio-cache" / Path(example).name
    served.parent.mkdir()
    shutil.copy(example, served)
    out = compare.compare(str(served), ["fcn8s"], 0.5)
    gt = out.ground_truth
    assert gt["visible"] is True and gt["value"].size == (480, 360)
    labels = np.asarray(Image.open(shipped.examples_root() / "camvid" / "testannot" / Path(example).name))
    from workbench.classes import CAMVID_CLASSES

    gt_rgb = np.asarray(gt["value"].convert("RGB"))
    assert (gt_rgb[labels == 3] == CAMVID_CLASSES[3]["color"]).all()  # road in road colour, from the shipped label map
    card = out.cards["fcn8s"]
    assert card["errors"]["visible"] is True and "on this image: mIoU" in card["header"]

    Image.open(example).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(served)  # same name, other pixels
    assert compare.compare(str(served), ["naive"], 0.5).ground_truth["visible"] is False


@pytest.mark.slow
def test_every_tab_works_from_the_shipped_examples_without_a_data_root(monkeypatch, tmp_path):
    """Build the app with WORKBENCH_DATA_ROOT pointing to an empty folder (as on a Space) and run every event
    handler with the first example in its image inputs and every other input at its initial value: none fails
    (a gr.Error such as "ISBI 2012 membranes not found" counts as a failure)."""
    import inspect

    import gradio as gr

    from workbench.app import build_app, common, weights

    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv("WORKBENCH_DATA_ROOT", str(empty))
    example = common.example_images()[0]
    assert "/examples/camvid/test/" in example
    demo = build_app(selection=["fcn8s", "naive"])

    def value(component):
        if isinstance(component, gr.Image):
            return example
        return None if isinstance(component, gr.State) else component.value

    ran, failed = [], {}
    for block_fn in demo.fns.values():
        if block_fn.fn is None or block_fn.fn.__module__.startswith("gradio"):  # Gradio's own example loader
            continue
        name = getattr(block_fn.fn, "__qualname__", block_fn.name)
        try:
            out = block_fn.fn(*[value(c) for c in block_fn.inputs])
            if inspect.isgenerator(out):
                list(out)
            ran.append(name)
        except Exception as exc:  # noqa: BLE001 - any failure is the finding
            failed[name] = f"{type(exc).__name__}: {exc}"
    assert not failed, failed
    for handler in ("CompareTab.run", "task_representation", "lab_operators", "lab_trained", "class_weights_view", "isbi_view", "leaderboard_view"):
        assert handler in ran, ran
    assert weights._slider_range() == (24, 26)  # the shipped ISBI slices
    text = weights.isbi_view(26)[-1]
    assert "shipped with the app" in text and text.count("pixel error") == 2  # both shipped U-Nets ran on it
