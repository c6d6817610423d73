"""The Hub model card of a checkpoint, built from its manifest alone (no network, no files).

The YAML front matter is a ``huggingface_hub.ModelCardData`` (library, tags,
dataset, license, pipeline tag) whose ``eval_results`` (``EvalResult``: mIoU,
global and mean class accuracy in percent, per split, test first) become the
``model-index``; the Markdown body (architecture, metrics and per-class IoU,
cost, training recipe, how to load it) is rendered here, and the two are put
together as a ``huggingface_hub.ModelCard``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from ..models.registry import ArchitectureInfo, get_architecture
from .manifest import Manifest

__all__ = ["model_card", "build_model_card", "card_data", "LIBRARY_NAME", "MANIFEST_NAME", "WEIGHTS_NAME", "CARD_NAME", "DEFAULT_LICENSE"]

MANIFEST_NAME = "workbench.json"  # the manifest's name in a Hub repository
WEIGHTS_NAME = "model.safetensors"  # the weights' name in a Hub repository
CARD_NAME = "README.md"
LIBRARY_NAME = "segmentation-workbench"
DEFAULT_LICENSE = "other"
_DATASET_TITLES = {"camvid": "CamVid", "isbi": "ISBI 2012 EM segmentation", "synthetic": "synthetic shapes", "folder": "custom image folder"}
_PRIVATE_DATASETS = {"folder", "synthetic"}  # not public datasets: not listed under `datasets:` in the card
_TASK = ("image-segmentation", "Semantic Segmentation")  # model-index task: (type, name)
# model-index metrics: (metric type, pretty name, key in the manifest's metrics entry); values in percent
_CARD_METRICS = (("mean_iou", "mIoU", "miou"), ("accuracy", "Global accuracy", "pixel_accuracy"), ("mean_accuracy", "Mean class accuracy", "mean_class_accuracy"))


def _finite(v) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _pct(v, digits: int = 2) -> str:
    f = _finite(v)
    return "-" if f is None else f"{100 * f:.{digits}f}"


def _md(text) -> str:
    """A table cell: no pipes or newlines."""
    return str(text).replace("|", "\\|").replace("\n", " ")


def _dict(value: Any) -> dict:
    return value if isinstance(value, dict) else {}


def _arch_info(arch: str) -> ArchitectureInfo | None:
    try:
        return get_architecture(arch)
    except Exception:  # unknown here (e.g. a plugin this machine lacks, or one that fails to import): the card still renders
        return None


def _dataset_title(name: Any) -> str | None:
    return _DATASET_TITLES.get(str(name), str(name)) if name else None


def card_data(manifest: Mapping[str, Any], repo_id: str, *, license: str | None = None) -> ModelCardData:
    """The card's metadata: library, tags, public dataset, license, pipeline tag and the metrics as ``EvalResult``s."""
    man = Manifest.of(manifest)
    arch = str(man.architecture or "unknown")
    ds_name = man.dataset_name
    tags = ["semantic-segmentation", "image-segmentation", "workbench"]
    if arch not in tags:
        tags.append(arch)
    results = []
    for split, entry in man.metric_splits():
        for metric_type, metric_name, key in _CARD_METRICS:
            value = _finite(entry.get(key))
            if value is None:
                continue
            results.append(
                EvalResult(
                    task_type=_TASK[0],
                    task_name=_TASK[1],
                    dataset_type=str(ds_name or "unknown"),
                    dataset_name=_dataset_title(ds_name) or "unknown",
                    dataset_split=split,
                    metric_type=metric_type,
                    metric_name=metric_name,
                    metric_value=round(100 * value, 2),
                )
            )
    return ModelCardData(
        library_name=LIBRARY_NAME,
        tags=tags,
        datasets=[str(ds_name)] if ds_name and ds_name not in _PRIVATE_DATASETS else None,
        license=str(license or man.license or DEFAULT_LICENSE),
        pipeline_tag="image-segmentation",
        model_name=repo_id.split("/")[-1] if results else None,  # the model-index name; without results it would be a key of its own
        eval_results=results or None,
    )


def _model_section(man: Manifest, arch: str, info: ArchitectureInfo | None) -> list[str]:
    kwargs = _dict(man.kwargs)
    title = info.title if info and info.title else arch
    encoder = man.encoder or (info.default_encoder if info else None)
    upsample = man.upsample or (info.default_upsample if info else None)
    names = man.class_names()
    out = ["## Model", "", "| | |", "|---|---|", f"| architecture | {_md(title)} (`{arch}`) |"]
    if info and info.paper:
        out.append(f"| paper | {_md(info.paper)} |")
    out.append(f"| encoder | {f'`{encoder}`' if encoder else '- (none)'} |")
    if upsample:
        out.append(f"| upsampling | `{_md(upsample)}` |")
    if kwargs.get("num_classes") is not None:
        out.append(f"| classes | {kwargs['num_classes']}{': ' + _md(', '.join(names)) if names else ''} |")
    inp = _dict(man.input)
    chans = inp.get("channels", kwargs.get("in_chans", 3))
    out.append(f"| input | {chans} channel(s){' (' + _md(inp['mode']) + ')' if inp.get('mode') else ''}, 0..255 pixels normalised with the manifest's mean/std |")
    if man.num_parameters is not None:
        n = int(man.num_parameters)
        out.append(f"| parameters | {n:,} ({n / 1e6:.2f} M) |")
    cost = _dict(man.cost)
    if man.gflops is not None:
        size = cost.get("input")
        at = f" at {size[0]}x{size[1]}" if isinstance(size, list) and len(size) == 2 else ""
        out.append(f"| FLOPs | {man.gflops:.1f} GFLOPs{at} |")
    if man.cpu_latency_ms is not None:
        out.append(f"| CPU latency | {man.cpu_latency_ms:.0f} ms ({_md(cost.get('cpu_precision', '?'))}) |")
    w = _dict(man.weights)
    if w:
        size_txt = f", {int(w['bytes']) / 1e6:.1f} MB" if isinstance(w.get("bytes"), int) else ""
        out.append(f"| weights | `{WEIGHTS_NAME}` ({_md(w.get('dtype', '?'))}{size_txt}), sha256 `{_md(w.get('sha256', '?'))}` |")
    return out + [""]


def _metrics_section(man: Manifest) -> list[str]:
    splits = man.metric_splits()
    out = ["## Metrics", ""]
    if not splits:
        return out + ["No metrics in the manifest: this checkpoint was not evaluated (`python -m workbench eval CHECKPOINT.json --update-manifests` adds them).", ""]
    out += ["Values in percent. mIoU and accuracies come from one confusion matrix over all images of the split.", ""]
    out += ["| split | images | mIoU | global accuracy | mean class accuracy |", "|---|---:|---:|---:|---:|"]
    for split, e in splits:
        n = e.get("n_images", "-")
        out.append(f"| {_md(split)} | {_md(n if n is not None else '-')} | {_pct(e.get('miou'))} | {_pct(e.get('pixel_accuracy'))} | {_pct(e.get('mean_class_accuracy'))} |")
    out.append("")
    with_iou = [(s, e) for s, e in splits if isinstance(e.get("per_class_iou"), list)]
    if with_iou:
        class_rows: list[str] = []
        for s, _ in with_iou:
            class_rows += [n for n in man.class_names(s) if n not in class_rows]
        out += ["### Per-class IoU", "", "| class | " + " | ".join(_md(s) for s, _ in with_iou) + " |", "|---|" + "---:|" * len(with_iou)]
        lookups = [dict(zip(man.class_names(s), e["per_class_iou"])) for s, e in with_iou]
        for name in class_rows:
            out.append(f"| {_md(name)} | " + " | ".join(_pct(lk.get(name)) for lk in lookups) + " |")
        out.append("")
    binary = [(s, e["binary"]) for s, e in splits if isinstance(e.get("binary"), dict)]
    if binary:
        out += ["### Binary metrics (foreground class 1, means over images)", "", "| split | pixel error | foreground IoU | Rand error |", "|---|---:|---:|---:|"]
        for s, b in binary:
            out.append(f"| {_md(s)} | {_pct(b.get('pixel_error'))} | {_pct(b.get('foreground_iou'))} | {_pct(b.get('rand_error'))} |")
        out.append("")
    return out


def _training_section(man: Manifest) -> list[str]:
    tr = _dict(man.training)
    ds = man.dataset_info
    if not tr and not ds:
        return []
    out = ["## Training", ""]
    if ds:
        parts = [f"dataset **{_dataset_title(ds.get('name'))}** (`{ds.get('name')}`)"]
        if ds.get("train_split"):
            parts.append(f"trained on split `{ds['train_split']}`")
        if ds.get("val_split"):
            parts.append(f"model selected on `{ds['val_split']}`")
        out.append("- " + ", ".join(parts))
    facts = [("epochs", tr.get("epochs_completed")), ("steps", tr.get("global_step")), ("precision", tr.get("precision")), ("processes (world size)", tr.get("world_size"))]
    if _finite(tr.get("wall_time_s")) is not None:
        facts.append(("wall time", f"{_finite(tr['wall_time_s']) / 3600:.2f} h"))
    hw = tr.get("hardware")
    if isinstance(hw, dict):
        facts.append(("hardware", ", ".join(f"{k} {v}" for k, v in hw.items() if v is not None)))
    if isinstance(tr.get("class_weights"), list):
        facts.append(("class weights", ", ".join(str(x) for x in tr["class_weights"])))
    out += [f"- {k}: {_md(v)}" for k, v in facts if v is not None]
    out.append("")
    init = _dict(tr.get("init_from"))
    parent = _dict(init.get("training"))
    if init:  # fine-tuned (workbench train --init-from): the run it started from comes first
        phw = _dict(parent.get("hardware"))
        where = phw.get("cuda") or phw.get("cpu")
        out += [f"Fine-tuned from `{_md(init.get('checkpoint'))}` (weights sha256 `{_md(str(init.get('weights_sha256', ''))[:12])}...`), "
                f"itself trained for {_md(parent.get('epochs_completed'))} epochs" + (f" on {_md(where)}" if where else "") + ".", ""]
    for label, command in (("Training command of the start checkpoint:", parent.get("command")), ("Training command:", tr.get("command"))):
        if not command:
            continue
        cmd = re.sub(r"^\S*__main__\.py\b", "python -m workbench", str(command))
        fence = "````" if "```" in cmd else "```"
        out += [label, "", f"{fence}bash", cmd, fence, ""]
    if isinstance(tr.get("config"), dict):
        out += [f"The full training config is in `{MANIFEST_NAME}` under `training.config`.", ""]
    return out


def _usage_section(repo_id: str) -> list[str]:
    return [
        "## How to use",
        "",
        "```python",
        "import workbench",
        "",
        f'model, manifest = workbench.from_hub("{repo_id}")  # hash-checked, cached; works offline once downloaded',
        'pred = workbench.Predictor(model).predict("street.jpg")  # PIL image, array or path',
        "pred.labels, pred.probs, pred.latency_ms",
        "```",
        "",
        "or from the command line (copies the checkpoint into a folder the app and `workbench eval` read):",
        "",
        "```bash",
        f"python -m workbench hub-pull {repo_id} --out checkpoints/",
        "```",
        "",
        f"The weights are only ever read with safetensors and checked against the sha256 in `{MANIFEST_NAME}`.",
        "",
    ]


def build_model_card(manifest: Mapping[str, Any], repo_id: str, *, license: str | None = None) -> ModelCard:
    """The ``huggingface_hub.ModelCard`` of a Hub repository holding this checkpoint.

    Args:
        manifest: a :class:`~workbench.io.manifest.Manifest` or its dict.
        repo_id: ``"owner/name"``; its name titles the card and the ``model-index``.
        license: the card's license (default: the manifest's ``license``, else ``other``).
    """
    man = Manifest.of(manifest)
    arch = str(man.architecture or "unknown")
    info = _arch_info(arch)
    title = info.title if info and info.title else arch
    ds_title = _dataset_title(man.dataset_name)
    what = f"**{title}** (`{arch}`) semantic-segmentation model" + (f" trained on **{ds_title}**" if ds_title else "")
    body = [
        f"# {repo_id.split('/')[-1]}",
        "",
        f"{what}, packaged with Segmentation Workbench as a self-describing checkpoint: "
        f"`{WEIGHTS_NAME}` (weights, safetensors) plus `{MANIFEST_NAME}` (architecture, constructor kwargs, classes, "
        "input normalisation, sha256 of the weights, training recipe and metrics).",
        "",
        *_model_section(man, arch, info),
        *_metrics_section(man),
        *_training_section(man),
        *_usage_section(repo_id),
    ]
    data = card_data(man, repo_id, license=license)
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(body))


def model_card(manifest: Mapping[str, Any], repo_id: str, *, license: str | None = None) -> str:
    """The ``README.md`` text of a Hub repository holding this checkpoint (see :func:`build_model_card`).

    YAML front matter (library, tags, dataset, license, pipeline tag and, when the
    manifest has metrics, a ``model-index`` with mIoU and accuracies in percent),
    then the architecture, the metrics and per-class IoU, cost, the training recipe
    and how to load the model.
    """
    return str(build_model_card(manifest, repo_id, license=license))
