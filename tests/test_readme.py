"""The README and the docs say what is true: the quickstart is what CI runs, the tables are the manifests'
figures, and every link, path and Python name they mention exists."""

from __future__ import annotations

import importlib
import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CKPT = ROOT / "checkpoints"
DOCS = sorted((ROOT / "docs").glob("*.md"))
PAGES = [ROOT / "README.md", *DOCS, ROOT / "scripts" / "README.md", ROOT / "checkpoints" / "README.md"]


def _quickstart_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Quickstart", 1)[1].split("\n## ", 1)[0]
    blocks = section.split("```bash\n")[1:]
    return [b.split("```", 1)[0].strip() for b in blocks]


def test_quickstart_has_exactly_two_commands_and_ci_runs_the_test_one():
    commands = _quickstart_commands()
    assert len(commands) == 2, commands
    app_cmd, test_cmd = commands
    assert "app.py" in app_cmd and "pip install" in app_cmd
    assert "pytest" in test_cmd and "pip install" in test_cmd
    ci = (ROOT / ".ci" / "run").read_text()
    assert test_cmd in ci.splitlines()


# --- tables: the figures are the manifests' ------------------------------------------------------------------


def _section(path: Path, heading: str) -> str:
    text = path.read_text()
    assert f"\n## {heading}\n" in text, f"{path.name} has no '## {heading}' section"
    return text.split(f"\n## {heading}\n", 1)[1].split("\n## ", 1)[0]


def _table(section: str) -> list[dict[str, str]]:
    """The first Markdown table in ``section`` as rows keyed by header, cells without ** and backticks."""
    lines = [ln for ln in section.splitlines() if ln.startswith("|")]
    assert len(lines) >= 3, "no table found"
    cells = lambda ln: [c.strip().replace("**", "").strip("`") for c in ln.strip().strip("|").split("|")]  # noqa: E731
    header = cells(lines[0])
    return [dict(zip(header, cells(ln))) for ln in lines[2:]]


def _manifests(dataset: str) -> dict[str, dict]:
    out = {}
    for p in sorted(CKPT.glob("*.json")):
        man = json.loads(p.read_text())
        if man["dataset"]["name"] == dataset and not man.get("upsampling_lab") and (man.get("metrics") or {}).get("test"):
            out[p.stem] = man
    return out


def _pct(x: float) -> str:
    return f"{100 * x:.1f}"


def _cpu_ms(man: dict) -> str:
    ms = f"{man['cost']['cpu_latency_ms']:.0f}"
    return f"{ms} (fp32)" if man["cost"].get("cpu_precision") == "fp32" else ms


CAMVID_COLUMNS = {
    "test mIoU": lambda m: _pct(m["metrics"]["test"]["miou"]),
    "test global acc": lambda m: _pct(m["metrics"]["test"]["pixel_accuracy"]),
    "val mIoU": lambda m: _pct(m["metrics"]["val"]["miou"]),
    "params (M)": lambda m: f"{m['num_parameters'] / 1e6:.2f}",
    "GFLOPs": lambda m: f"{m['cost']['gflops']:.1f}",
    "CPU ms": _cpu_ms,
    "architecture": lambda m: m["architecture"],
}


@pytest.mark.parametrize(("page", "heading"), [("README.md", "Leaderboard"), ("docs/training-log.md", "CamVid test")])
def test_camvid_tables_show_the_manifests_figures(page, heading):
    manifests = _manifests("camvid")
    if not manifests:
        pytest.skip("no evaluated CamVid checkpoints shipped")
    rows = _table(_section(ROOT / page, heading))
    assert sorted(r["checkpoint"] for r in rows) == sorted(manifests), f"{page}: the table's checkpoints are not the shipped ones"
    for row in rows:
        man = manifests[row["checkpoint"]]
        for column, expected in CAMVID_COLUMNS.items():
            assert column in row, f"{page}: no '{column}' column"
            assert row[column] == expected(man), f"{page}, {row['checkpoint']}, {column}: table {row[column]}, manifest {expected(man)}"
    mious = [float(r["test mIoU"]) for r in rows]
    assert mious == sorted(mious, reverse=True), f"{page}: rows are not ordered by test mIoU"


def test_isbi_table_shows_the_manifests_figures():
    manifests = _manifests("isbi")
    if not manifests:
        pytest.skip("no evaluated ISBI checkpoints shipped")
    rows = _table(_section(ROOT / "docs" / "training-log.md", "ISBI 2012 membranes"))
    assert sorted(r["checkpoint"] for r in rows) == sorted(manifests)
    for row in rows:
        test = manifests[row["checkpoint"]]["metrics"]["test"]
        assert row["pixel error"] == _pct(test["binary"]["pixel_error"])
        assert row["foreground IoU"] == _pct(test["binary"]["foreground_iou"])
        assert row["Rand error"] == _pct(test["binary"]["rand_error"])
        assert row["membrane IoU"] == _pct(test["per_class_iou"][0])


def test_upsampling_lab_page_shows_the_committed_table():
    committed = CKPT / "eval" / "upsampling" / "lab_table.md"
    if not committed.is_file():
        pytest.skip("no upsampling lab table committed")
    page = (ROOT / "docs" / "upsampling-lab.md").read_text().splitlines()
    for line in committed.read_text().splitlines():
        if line.startswith("|"):
            assert line in page, f"docs/upsampling-lab.md lacks the committed row {line}"


# --- links, paths and Python names ---------------------------------------------------------------------------


def _anchors(path: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    out = set()
    for line in path.read_text().splitlines():
        if line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            out.add(re.sub(r"[^\w\- ]", "", title).replace(" ", "-"))
    return out


def _prose(path: Path) -> str:
    """The page without its YAML front matter."""
    text = path.read_text()
    return text.split("---\n", 2)[2] if text.startswith("---\n") else text


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(ROOT)) for p in PAGES])
def test_relative_links_point_at_files_and_headings(page):
    for target in re.findall(r"\]\(([^)\s]+)\)", _prose(page)):
        if re.match(r"[a-z]+://", target):
            continue
        file, _, anchor = target.partition("#")
        dest = (page.parent / file).resolve() if file else page
        assert dest.exists(), f"{page.relative_to(ROOT)} links to {target}, which does not exist"
        if anchor:
            assert anchor in _anchors(dest), f"{page.relative_to(ROOT)} links to {target}: no such heading"


PATH_RE = re.compile(r"`((?:workbench|tests|scripts|plugins|docs|checkpoints|benchmarks|examples)/[^`\s]*)`")
NOT_PATHS = {"workbench/_bundled/"}  # exists only inside an installed wheel


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(ROOT)) for p in PAGES])
def test_paths_named_in_backticks_exist(page):
    for name in PATH_RE.findall(_prose(page)):
        if name in NOT_PATHS or re.search(r"<|NAME|ARCH|RUN\b|my_net", name):
            continue  # placeholders (checkpoints/upsampling_unet_<method>, checkpoints/NAME.json) and files a guide has you create
        pattern = name if "*" in name else None
        found = list(ROOT.glob(pattern)) if pattern else [p for p in (ROOT / name, *ROOT.glob(name.rstrip("/") + ".*")) if p.exists()]
        assert found, f"{page.relative_to(ROOT)} names `{name}`, which does not exist"


DOTTED_RE = re.compile(r"(?:`|-m |python -m |^)(workbench(?:\.[A-Za-z_]\w*)+)", re.M)
FROM_RE = re.compile(r"^\s*from (workbench(?:\.\w+)*) import ([\w, ]+)$", re.M)
NOT_NAMES = {
    "workbench.plugins",  # the entry-point group's name, not a module
    "workbench.json",  # the manifest's file name in a Hub repository
}


def _resolve(dotted: str) -> bool:
    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ModuleNotFoundError:
            continue
        try:
            for attr in parts[i:]:
                obj = getattr(obj, attr)
        except AttributeError:
            return False
        return True
    return False


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(ROOT)) for p in PAGES])
def test_python_names_in_the_docs_exist(page):
    text = _prose(page)
    names = set(DOTTED_RE.findall(text)) - NOT_NAMES
    for module, imported in FROM_RE.findall(text):
        names.update(f"{module}.{n.strip()}" for n in imported.split(",") if n.strip())
    missing = sorted(n for n in names if not _resolve(n))
    assert not missing, f"{page.relative_to(ROOT)} names {missing}, which cannot be imported"
