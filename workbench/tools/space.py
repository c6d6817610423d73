"""``workbench space deploy USER/NAME``: assemble the Hugging Face Space and upload it with ``huggingface_hub``.

Three steps, each usable on its own:

* :func:`plan_space` (pure: reads the checkout, writes nothing) decides every file of the Space, its size, whether
  the Hub stores it through LFS/Xet, the README front matter, and checks all of it against the Hub's rules
  (:func:`check_front_matter`, :func:`check_files`); ``--dry-run`` prints this plan and stops;
* :func:`stage_space` writes the plan into a folder (the Space repository's tree);
* :func:`upload_space` creates the Space if missing (``create_repo(repo_type="space", space_sdk="gradio",
  exist_ok=True)``) and uploads the folder in one ``upload_folder`` call, which sends every binary and every file
  over 10 MiB through the Hub's LFS/Xet storage (a plain ``git push`` of such files is refused by the Hub).

The weights travel inside the Space (not in a model repository the Space pulls at start): the Space then starts
with the network down, and its code and checkpoints change in the same commit. Why, and what the alternative
would need: docs/space.md.
"""

from __future__ import annotations

import fnmatch
import importlib.metadata
import json
import re
import shutil
import sys
import tempfile
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from huggingface_hub import HfApi, constants as hub_constants
from huggingface_hub.errors import HfHubHTTPError

from ..paths import PACKAGE_DIR

__all__ = [
    "SpaceFile",
    "SpacePlan",
    "plan_space",
    "check_front_matter",
    "check_files",
    "stage_space",
    "upload_space",
    "format_plan",
    "cmd_space",
    "cmd_space_deploy",
    "GITATTRIBUTES",
    "REGULAR_FILE_LIMIT",
]

# --- the Hub's rules (https://huggingface.co/docs/hub/spaces-config-reference, .../storage-limits)

SPACE_COLOURS = ("red", "yellow", "green", "blue", "indigo", "purple", "pink", "gray")
SPACE_SDKS = ("gradio", "docker", "static")
SHORT_DESCRIPTION_MAX = 60  # characters; the Hub refuses longer ones
REGULAR_FILE_LIMIT = 10 * 1024 * 1024  # 10 MiB: larger files must go through LFS/Xet
FILE_HARD_LIMIT = 500 * 1000**3  # 500 GB: no single file on the Hub may be larger
ENTRIES_PER_FOLDER_MAX = 10_000
BOOLEAN_KEYS = ("pinned", "fullWidth", "disable_embedding", "hf_oauth")
LIST_KEYS = ("tags", "models", "datasets", "preload_from_hub", "hf_oauth_scopes")
KNOWN_KEYS = {
    "title", "emoji", "colorFrom", "colorTo", "sdk", "python_version", "sdk_version", "suggested_hardware",
    "suggested_storage", "app_file", "app_build_command", "app_port", "base_path", "fullWidth", "header",
    "short_description", "models", "datasets", "tags", "thumbnail", "pinned", "hf_oauth", "hf_oauth_scopes",
    "hf_oauth_expiration_minutes", "hf_oauth_authorized_org", "disable_embedding", "startup_duration_timeout",
    "custom_headers", "preload_from_hub", "license",
}  # fmt: skip
# The license identifiers the Hub accepts (https://huggingface.co/docs/hub/repositories-licenses).
HUB_LICENSES = frozenset(
    "afl-3.0 agpl-3.0 apache-2.0 apple-amlr apple-ascl artistic-2.0 bigcode-openrail-m bigscience-bloom-rail-1.0 "
    "bigscience-openrail-m bsd bsd-2-clause bsd-3-clause bsd-3-clause-clear bsl-1.0 c-uda cc cc-by-2.0 cc-by-2.5 "
    "cc-by-3.0 cc-by-4.0 cc-by-nc-2.0 cc-by-nc-3.0 cc-by-nc-4.0 cc-by-nc-nd-3.0 cc-by-nc-nd-4.0 cc-by-nc-sa-2.0 "
    "cc-by-nc-sa-3.0 cc-by-nc-sa-4.0 cc-by-nd-4.0 cc-by-sa-3.0 cc-by-sa-4.0 cc0-1.0 cdla-permissive-1.0 "
    "cdla-permissive-2.0 cdla-sharing-1.0 creativeml-openrail-m deepfloyd-if-license ecl-2.0 epl-1.0 epl-2.0 "
    "etalab-2.0 eupl-1.1 eupl-1.2 gemma gfdl gpl gpl-2.0 gpl-3.0 isc lgpl lgpl-2.1 lgpl-3.0 lgpl-lr llama2 llama3 "
    "llama3.1 llama3.2 llama3.3 llama4 lppl-1.3c mit mpl-2.0 ms-pl ncsa odbl odc-by ofl-1.1 openrail osl-3.0 other "
    "pddl postgresql unknown unlicense wtfpl zlib".split()
)

# The Space's .gitattributes: the LFS rules the Hub writes into a new repository, plus the image formats the
# Space ships (the Hub refuses binary files outside LFS/Xet whatever their size). upload_folder routes files by
# the Hub's answer anyway; these rules make a `git clone` + `git push` of the Space repository work as well.
_LFS = "filter=lfs diff=lfs merge=lfs -text"
LFS_PATTERNS = (
    "*.7z", "*.arrow", "*.bin", "*.bz2", "*.ckpt", "*.ftz", "*.gz", "*.h5", "*.joblib", "*.lfs.*", "*.mlmodel",
    "*.model", "*.msgpack", "*.npy", "*.npz", "*.onnx", "*.ot", "*.parquet", "*.pb", "*.pickle", "*.pkl", "*.pt",
    "*.pth", "*.rar", "*.safetensors", "saved_model/**/*", "*.tar.*", "*.tar", "*.tflite", "*.tgz", "*.wasm",
    "*.xz", "*.zip", "*.zst", "*tfevents*",
    "*.png", "*.jpg", "*.jpeg", "*.webp", "*.gif",
)  # fmt: skip
GITATTRIBUTES = "".join(f"{p} {_LFS}\n" for p in LFS_PATTERNS)

# What the Space carries from the checkout: (folder, file patterns); __pycache__ and the like never.
_TREES = (
    ("workbench", ("*",)),  # the package, its shipped examples included (workbench/examples)
    ("plugins", ("*.py", "*.md")),
    ("benchmarks", ("*.json", "*.md")),  # figures the app quotes (class weights, latency)
)
_CHECKPOINT_FILES = ("*.json", "*.safetensors", "*.int8.xml", "*.int8.bin", "*.metrics.jsonl", "README.md")  # not eval/: the app never reads it
_ROOT_FILES = ("app.py", "requirements.txt", "packages.txt", "LICENSE")
_SKIP_PARTS = {"__pycache__", "_bundled", ".pytest_cache", ".ipynb_checkpoints"}
_SKIP_NAMES = ("*.pyc", "*.pyo", "*.tmp", "*.pending", ".DS_Store", "*.egg-info")


@dataclass(frozen=True)
class SpaceFile:
    """One file of the Space: where it goes (``path``, POSIX, relative), where it comes from (``source``, or
    ``content`` for generated files), its size, and how the Hub stores it."""

    path: str
    size: int
    lfs: bool  # matched by a .gitattributes LFS rule: stored through LFS/Xet
    binary: bool  # git's test: a NUL byte in the first 8000 bytes
    source: Path | None = None
    content: bytes | None = None

    def read(self) -> bytes:
        return self.content if self.content is not None else self.source.read_bytes()


@dataclass
class SpacePlan:
    """Everything the Space will hold, and what is wrong with it (``problems``: the deploy refuses)."""

    repo_id: str
    files: list[SpaceFile]
    front_matter: dict
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def total_size(self) -> int:
        return sum(f.size for f in self.files)

    def file(self, path: str) -> SpaceFile:
        return next(f for f in self.files if f.path == path)


# --- checks


def lfs_tracked(path: str, patterns=LFS_PATTERNS) -> bool:
    """Whether ``path`` matches one of the .gitattributes ``patterns`` (as git does: a pattern without ``/``
    matches the file name in any folder, one with ``/`` the whole path; ``**`` spans folders)."""
    name = path.rsplit("/", 1)[-1]
    for pattern in patterns:
        if "/" in pattern:
            if fnmatch.fnmatchcase(path, pattern.replace("**/", "*")):
                return True
        elif fnmatch.fnmatchcase(name, pattern):
            return True
    return False


def _is_binary(data: bytes) -> bool:
    return b"\0" in data[:8000]


def _is_emoji(text: str) -> bool:
    """One emoji (possibly a sequence: joiners, variation selectors, skin tones), nothing else."""
    if not text or len(text) > 10:
        return False
    has_symbol = False
    for ch in text:
        cat = unicodedata.category(ch)
        if ch in "\u200d\ufe0f\ufe0e" or cat in ("Sk", "Mn", "Me"):
            continue
        if cat != "So":
            return False
        has_symbol = True
    return has_symbol


def check_front_matter(fm: dict, *, gradio_version: str | None = None, files: set[str] | None = None) -> tuple[list[str], list[str]]:
    """``(problems, warnings)`` of a Space's README front matter against the Hub's configuration reference.

    ``gradio_version``: the Gradio the app was tested with (``sdk_version`` should equal it); ``files``: the
    Space's paths (``app_file`` must be one of them)."""
    problems: list[str] = []
    warnings: list[str] = []
    if not isinstance(fm, dict):
        return ["the front matter is not a YAML mapping"], warnings
    for key in ("title", "sdk", "app_file"):
        if key not in fm:
            problems.append(f"{key}: missing")
    title = fm.get("title")
    if title is not None and (not isinstance(title, str) or not title.strip()):
        problems.append(f"title: must be a non-empty string, got {title!r}")
    emoji = fm.get("emoji")
    if emoji is not None and not (isinstance(emoji, str) and _is_emoji(emoji)):
        problems.append(f"emoji: must be a single emoji, got {emoji!r}")
    for key in ("colorFrom", "colorTo"):
        if key in fm and fm[key] not in SPACE_COLOURS:
            problems.append(f"{key}: {fm[key]!r} is not one of {', '.join(SPACE_COLOURS)}")
    sdk = fm.get("sdk")
    if sdk is not None and sdk not in SPACE_SDKS:
        problems.append(f"sdk: {sdk!r} is not one of {', '.join(SPACE_SDKS)}")
    if sdk == "gradio":
        version = fm.get("sdk_version")
        if not isinstance(version, str) or not re.fullmatch(r"\d+(\.\d+){1,2}", version):
            problems.append(f"sdk_version: a Gradio version as a string (e.g. '5.9.1') is required, got {version!r}")
        elif gradio_version and version != gradio_version:
            warnings.append(f"sdk_version {version} differs from the Gradio installed here ({gradio_version}), which the app was tested with")
    python = fm.get("python_version")
    if python is not None and not (isinstance(python, str) and re.fullmatch(r"3\.\d+(\.\d+)?", python)):
        problems.append(f"python_version: must be a string '3.x' or '3.x.x' (quote it: YAML reads 3.10 as 3.1), got {python!r}")
    app_file = fm.get("app_file")
    if app_file is not None and (not isinstance(app_file, str) or (files is not None and app_file not in files)):
        problems.append(f"app_file: {app_file!r} is not a file of the Space")
    short = fm.get("short_description")
    if short is not None and (not isinstance(short, str) or len(short) > SHORT_DESCRIPTION_MAX):
        problems.append(f"short_description: at most {SHORT_DESCRIPTION_MAX} characters, got {len(str(short))}: {short!r}")
    lic = fm.get("license")
    if lic is not None and lic not in HUB_LICENSES:
        problems.append(f"license: {lic!r} is not a license identifier the Hub knows (e.g. mit, apache-2.0, other)")
    for key in BOOLEAN_KEYS:
        if key in fm and not isinstance(fm[key], bool):
            problems.append(f"{key}: must be true or false, got {fm[key]!r}")
    for key in LIST_KEYS:
        if key in fm and not (isinstance(fm[key], list) and all(isinstance(t, str) for t in fm[key])):
            problems.append(f"{key}: must be a list of strings, got {fm[key]!r}")
    if "header" in fm and fm["header"] not in ("mini", "default"):
        problems.append(f"header: must be 'mini' or 'default', got {fm['header']!r}")
    if "app_port" in fm and sdk != "docker":
        warnings.append("app_port: used only by docker Spaces")
    for key in sorted(set(fm) - KNOWN_KEYS):
        warnings.append(f"{key}: not a key of the Spaces configuration reference (the Hub ignores it)")
    text = yaml.safe_dump(fm, sort_keys=False, allow_unicode=True)
    if yaml.safe_load(text) != fm:
        problems.append("the front matter does not survive a YAML round trip")
    return problems, warnings


def check_files(files: list[SpaceFile], patterns=LFS_PATTERNS) -> list[str]:
    """Problems of the Space's files against the Hub's storage rules: a binary or a file over 10 MiB outside the
    LFS rules (git would send it as a plain blob, which the Hub refuses), a file over the 500 GB hard limit, a
    folder with more than 10,000 entries, paths that are not plain relative paths, duplicates."""
    problems = []
    seen: set[str] = set()
    per_folder: dict[str, set[str]] = {}
    for f in files:
        parts = f.path.split("/")
        if f.path.startswith("/") or "\\" in f.path or any(p in ("", ".", "..") for p in parts):
            problems.append(f"{f.path}: not a plain relative path")
        if f.path in seen:
            problems.append(f"{f.path}: listed twice")
        seen.add(f.path)
        for depth in range(len(parts)):
            per_folder.setdefault("/".join(parts[:depth]), set()).add(parts[depth])
        tracked = lfs_tracked(f.path, patterns)
        if f.size > REGULAR_FILE_LIMIT and not tracked:
            problems.append(f"{f.path}: {f.size / 2**20:.1f} MiB and no LFS rule in .gitattributes (the Hub takes files over 10 MiB only through LFS/Xet)")
        elif f.binary and not tracked:
            problems.append(f"{f.path}: a binary file without an LFS rule in .gitattributes (the Hub refuses binaries outside LFS/Xet)")
        if f.size > FILE_HARD_LIMIT:
            problems.append(f"{f.path}: over the Hub's 500 GB file limit")
    for folder, entries in per_folder.items():
        if len(entries) > ENTRIES_PER_FOLDER_MAX:
            problems.append(f"{folder or '.'}/: {len(entries)} entries (the Hub allows {ENTRIES_PER_FOLDER_MAX} per folder)")
    return problems


# --- the plan


def _skipped(rel: Path) -> bool:
    return any(part in _SKIP_PARTS or part.endswith(".egg-info") for part in rel.parts) or any(fnmatch.fnmatch(rel.name, p) for p in _SKIP_NAMES)


def _from_disk(path: str, source: Path) -> SpaceFile:
    size = source.stat().st_size
    with open(source, "rb") as fh:
        head = fh.read(8000)
    return SpaceFile(path=path, size=size, lfs=lfs_tracked(path), binary=_is_binary(head), source=source)


def _generated(path: str, content: bytes) -> SpaceFile:
    return SpaceFile(path=path, size=len(content), lfs=lfs_tracked(path), binary=_is_binary(content), content=content)


def read_front_matter(readme: Path) -> tuple[dict, str]:
    """``(front matter, body)`` of a README with a ``---`` YAML block at the top."""
    text = readme.read_text(encoding="utf-8")
    if not text.startswith("---\n"):
        raise ValueError(f"{readme} has no YAML front matter (a '---' block at the top)")
    head, sep, body = text[4:].partition("\n---\n")
    if not sep:
        raise ValueError(f"{readme}: the front matter is not closed by a '---' line")
    data = yaml.safe_load(head) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{readme}: the front matter is not a YAML mapping")
    return data, body


def _intro(body: str) -> str:
    """The first paragraph after the README's title."""
    paragraphs = [p.strip() for p in body.split("\n\n") if p.strip()]
    text = next((p for p in paragraphs if not p.startswith(("#", "!", "```", "|", "-"))), "")
    return re.sub(r"\s*\n\s*", " ", text)


def space_readme(fm: dict, intro: str, n_checkpoints: int, n_examples: int) -> str:
    """The Space's README.md: the front matter, then a short page (the checkout's README links to docs the Space
    does not carry)."""
    front = yaml.safe_dump(fm, sort_keys=False, allow_unicode=True)
    title = fm.get("title", "Segmentation Workbench")
    return (
        f"---\n{front}---\n\n# {title}\n\n{intro}\n\n"
        f"This Space runs `app.py` and the `workbench` package with {n_checkpoints} trained checkpoints and "
        f"{n_examples} example images with their labels (CamVid and ISBI 2012 test images; sources and licences in "
        "`workbench/examples/README.md`). It was assembled and uploaded by `workbench space deploy`; the models "
        "know only what they were trained on: CamVid's 11 street-scene classes, and ISBI 2012's EM membranes.\n"
    )


def plan_space(repo_id: str, *, root: str | Path | None = None, gradio_version: str | None = None, title: str | None = None) -> SpacePlan:
    """Plan the Space ``repo_id`` from the checkout at ``root`` (default: the one holding this package).

    Reads files and writes nothing. The front matter is the checkout README's, with ``sdk_version`` set to
    ``gradio_version`` (default: the installed Gradio, which the app was tested with) and ``title`` replaced if
    given. The plan's ``problems`` list every rule the Space would break."""
    _check_repo_id(repo_id)
    root = Path(root) if root is not None else PACKAGE_DIR.parent
    missing = [name for name in ("app.py", "README.md", "requirements.txt", "workbench") if not (root / name).exists()]
    if missing:
        raise FileNotFoundError(f"{root} is not a source checkout of the workbench (missing: {', '.join(missing)}); run `workbench space deploy` from a clone")
    if gradio_version is None:
        gradio_version = importlib.metadata.version("gradio")
    files: list[SpaceFile] = []
    for name in _ROOT_FILES:
        if (root / name).is_file():
            files.append(_from_disk(name, root / name))
    for folder, patterns in _TREES:
        base = root / folder
        for src in sorted(base.rglob("*")) if base.is_dir() else []:
            rel = src.relative_to(root)
            if src.is_file() and not _skipped(rel) and any(fnmatch.fnmatch(src.name, p) for p in patterns):
                files.append(_from_disk(rel.as_posix(), src))
    checkpoints = root / "checkpoints"
    for src in sorted(checkpoints.iterdir()) if checkpoints.is_dir() else []:
        if src.is_file() and not _skipped(src.relative_to(root)) and any(fnmatch.fnmatch(src.name, p) for p in _CHECKPOINT_FILES):
            files.append(_from_disk(f"checkpoints/{src.name}", src))

    fm, body = read_front_matter(root / "README.md")
    fm = dict(fm)
    fm["sdk"] = fm.get("sdk", "gradio")
    fm["sdk_version"] = gradio_version
    fm.setdefault("app_file", "app.py")
    if title is not None:
        fm["title"] = title
    manifests = [f for f in files if f.path.startswith("checkpoints/") and f.path.endswith(".json")]
    examples = [f for f in files if f.path.startswith("workbench/examples/") and f.path.endswith(".png") and ("/test/" in f.path or "/image/" in f.path)]
    readme = space_readme(fm, _intro(body), len(manifests), len(examples))
    files.append(_generated("README.md", readme.encode()))
    files.append(_generated(".gitattributes", GITATTRIBUTES.encode()))
    files.sort(key=lambda f: f.path)

    plan = SpacePlan(repo_id=repo_id, files=files, front_matter=fm)
    paths = {f.path for f in files}
    problems, warnings = check_front_matter(fm, gradio_version=gradio_version, files=paths)
    plan.problems += problems + check_files(files)
    plan.warnings += warnings
    plan.problems += _check_checkpoints(manifests, paths)
    plan.problems += _check_requirements(root / "requirements.txt")
    if not examples:
        plan.warnings.append("no example images under workbench/examples: the app falls back to a synthetic example")
    return plan


def _check_repo_id(repo_id: str) -> None:
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,95}/[A-Za-z0-9][A-Za-z0-9_.-]{0,95}", repo_id or "") or ".." in repo_id or repo_id.endswith((".git", ".")):
        raise ValueError(f"expected the Space as USER/NAME (letters, digits, '-', '_', '.'), got {repo_id!r}")


def _check_checkpoints(manifests: list[SpaceFile], paths: set[str]) -> list[str]:
    """Every checkpoint manifest's weights (and int8 model, if it names one) travel with it."""
    problems = []
    for m in manifests:
        try:
            data = json.loads(m.read())
        except (OSError, ValueError) as exc:
            problems.append(f"{m.path}: not readable JSON ({exc})")
            continue
        weights = data.get("weights", {}).get("file") if isinstance(data.get("weights"), dict) else None
        if weights is None:
            continue  # not a checkpoint manifest
        if f"checkpoints/{weights}" not in paths:
            problems.append(f"{m.path}: its weights checkpoints/{weights} are not in the Space")
    return problems


def _check_requirements(path: Path) -> list[str]:
    if not path.is_file():
        return ["requirements.txt: missing (the Space installs its Python dependencies from it)"]
    names = [re.split(r"[<>=!~\[; ]", ln.split("#")[0].strip(), maxsplit=1)[0].lower() for ln in path.read_text().splitlines()]
    if "gradio" in names:
        return ["requirements.txt: lists gradio, which the Space installs from sdk_version (two pins conflict)"]
    return []


# --- staging and upload


def stage_space(plan: SpacePlan, folder: str | Path) -> Path:
    """Write the plan's files into ``folder`` (created; must be empty or missing). Returns the folder."""
    folder = Path(folder)
    if folder.exists() and any(folder.iterdir()):
        raise FileExistsError(f"{folder} is not empty; give an empty or new folder for the staged Space")
    folder.mkdir(parents=True, exist_ok=True)
    for f in plan.files:
        dst = folder / f.path
        dst.parent.mkdir(parents=True, exist_ok=True)
        if f.content is not None:
            dst.write_bytes(f.content)
        else:
            shutil.copyfile(f.source, dst)
    return folder


def upload_space(plan: SpacePlan, folder: str | Path, *, token: str | None = None, private: bool = False, endpoint: str | None = None, message: str | None = None) -> str:
    """Create the Space if it does not exist and upload the staged ``folder`` with ``upload_folder`` (one commit;
    with hf_xet a slow upload may be committed in a few batches). Files the Space holds that the plan does not
    are deleted, so the Space then equals the plan. Returns the (last) commit's URL.

    ``private`` applies only when the Space is created. ``endpoint`` defaults to ``$HF_ENDPOINT`` (the Hub)."""
    if plan.problems:
        raise ValueError("the Space breaks the Hub's rules, nothing was uploaded:\n  " + "\n  ".join(plan.problems))
    api = HfApi(endpoint=endpoint, token=token)
    try:
        api.create_repo(plan.repo_id, repo_type="space", space_sdk=plan.front_matter.get("sdk", "gradio"), private=private, exist_ok=True)
        info = api.upload_folder(
            repo_id=plan.repo_id, repo_type="space", folder_path=str(folder), delete_patterns=["*"],
            commit_message=message or f"Deploy the Segmentation Workbench ({len(plan.files)} files, workbench space deploy)",
        )  # fmt: skip
    except HfHubHTTPError as exc:
        status = exc.response.status_code if exc.response is not None else None
        hint = {401: " (no valid token: `hf auth login`, $HF_TOKEN or --token)", 403: " (the token cannot write to this namespace)"}.get(status, "")
        raise ValueError(f"the Hub refused the upload{hint}: {str(exc).splitlines()[0]}") from None
    return getattr(info, "commit_url", None) or str(info)


# --- the command


def _size(n: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


def format_plan(plan: SpacePlan) -> str:
    """The dry run's report: every file with its size and storage, the front matter, the checks."""
    lines = [f"Space {plan.repo_id}: {len(plan.files)} files, {_size(plan.total_size)}", "", f"{'size':>10}  {'storage':<8} path"]
    for f in plan.files:
        lines.append(f"{_size(f.size):>10}  {'LFS/Xet' if f.lfs else 'git':<8} {f.path}")
    big = sum(1 for f in plan.files if f.size > REGULAR_FILE_LIMIT)
    lines += ["", f"{sum(f.lfs for f in plan.files)} files through LFS/Xet ({big} over 10 MiB), {sum(not f.lfs for f in plan.files)} as plain git blobs", ""]
    lines.append("README.md front matter:")
    lines += ["  " + ln for ln in yaml.safe_dump(plan.front_matter, sort_keys=False, allow_unicode=True).splitlines()]
    lines.append("")
    for w in plan.warnings:
        lines.append(f"warning: {w}")
    if plan.problems:
        lines.append(f"{len(plan.problems)} problem(s), the Hub would refuse this Space:")
        lines += [f"  - {p}" for p in plan.problems]
    else:
        lines.append("checks passed: front matter (Spaces configuration reference), file storage (binaries and files over 10 MiB through LFS/Xet), checkpoints complete")
    return "\n".join(lines)


def cmd_space_deploy(args) -> int:
    """``workbench space deploy USER/NAME [--dry-run] [--staging DIR] [--token T] [--private] [--title T] [--message M]``."""
    plan = plan_space(args.repo_id, title=args.title)
    if args.dry_run:
        print(format_plan(plan))
        if args.staging:
            stage_space(plan, args.staging)
            print(f"staged in {args.staging} (nothing uploaded)")
        if plan.problems:
            raise ValueError(f"{len(plan.problems)} problem(s) above; fix them before deploying")
        return 0
    if plan.problems:
        print(format_plan(plan), file=sys.stderr)
        raise ValueError(f"{len(plan.problems)} problem(s) above; nothing was uploaded")
    for w in plan.warnings:
        print(f"warning: {w}", file=sys.stderr)
    if args.staging:
        folder = stage_space(plan, args.staging)
        url = upload_space(plan, folder, token=args.token, private=args.private, message=args.message)
    else:
        with tempfile.TemporaryDirectory(prefix="workbench-space-") as tmp:
            folder = stage_space(plan, Path(tmp) / "space")
            url = upload_space(plan, folder, token=args.token, private=args.private, message=args.message)
    print(f"uploaded {len(plan.files)} files ({_size(plan.total_size)}) to the Space {plan.repo_id}: {url}")
    print(f"the Space builds and starts by itself: {hub_constants.ENDPOINT}/spaces/{plan.repo_id}")
    return 0


SPACE_COMMANDS = {"deploy": cmd_space_deploy}


def cmd_space(args) -> int:
    """``workbench space COMMAND``: run the subcommand (``deploy``)."""
    return SPACE_COMMANDS[args.space_command](args)
