"""Safe extraction of zip archives: every member is checked before anything is written.

Refused, with an :class:`ArchiveError` whose message is one line:

* member names that are absolute (``/x``, ``\\x``, ``C:x``), contain a ``..`` component or a NUL
  byte (zip-slip), and, while writing, any destination that resolves outside the target folder;
* symbolic links (a link could point anywhere; data archives need none);
* archives whose declared sizes add up to more than ``max_bytes`` (zip bombs: ``zipfile`` never
  inflates a member past its declared size, so the declared total bounds what is written);
* corrupt members (bad CRC, truncated data: :class:`CorruptArchiveError`) and a member given twice.

Nothing here knows about datasets, downloads or progress bars: :func:`open_zip` opens, :func:`check_names`
vets the names, the caller chooses which members go where (a list of ``(ZipInfo, relative path)``),
:func:`check_plan` vets that choice and :func:`extract_members` writes it. :mod:`workbench.data.fetch` uses
it for the dataset archives.
"""

from __future__ import annotations

import re
import shutil
import zipfile
import zlib
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

__all__ = [
    "ArchiveError",
    "CorruptArchiveError",
    "human_size",
    "unsafe_name",
    "is_symlink",
    "open_zip",
    "check_names",
    "unpacked_size",
    "check_plan",
    "extract_members",
]

Plan = Sequence[tuple[zipfile.ZipInfo, str]]  # (member, destination relative to the target folder)


class ArchiveError(ValueError):
    """An archive that cannot be extracted safely; the message is one line and names the member."""


class CorruptArchiveError(ArchiveError):
    """A member's data is damaged (bad CRC, truncated): a fresh copy of the archive may be fine."""


def human_size(n: float) -> str:
    """A byte count for people: 840 B, 21.6 kB, 182.4 MB, 1.2 GB."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{int(n)} B"


def unsafe_name(name: str) -> bool:
    """True for an empty, absolute (``/``, ``\\``, drive letter), NUL-containing or ``..`` member name."""
    if not name or "\x00" in name or name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name):
        return True
    return any(part == ".." for part in re.split(r"[/\\]", name))


def is_symlink(info: zipfile.ZipInfo) -> bool:
    """True when the member is a symbolic link (Unix mode bits in ``external_attr``)."""
    return (info.external_attr >> 16) & 0o170000 == 0o120000


def open_zip(path: Path, what: str = "the file") -> zipfile.ZipFile:
    """``path`` opened as a zip archive; :class:`ArchiveError` if it is not one (saying so when it looks
    like an HTML page, the usual reply of a login or error page). ``what`` names it in messages."""
    try:
        return zipfile.ZipFile(path)
    except (zipfile.BadZipFile, zlib.error, EOFError, ValueError) as exc:
        with open(path, "rb") as fh:
            head = fh.read(64)
        hint = "; it looks like an HTML page (a login or error page?)" if head.lstrip()[:1] == b"<" else ""
        raise ArchiveError(f"{what} ({human_size(Path(path).stat().st_size)}) is not a valid zip archive ({exc}){hint}") from None


def check_names(infos: Iterable[zipfile.ZipInfo], what: str = "the archive") -> None:
    """:class:`ArchiveError` for the first member whose name is unsafe (:func:`unsafe_name`)."""
    for info in infos:
        if unsafe_name(info.filename):
            raise ArchiveError(f"{what} holds an unsafe member path {info.filename!r} (absolute or '..'); refusing to extract it")


def unpacked_size(plan: Plan) -> int:
    """Bytes the planned members unpack to (their declared sizes)."""
    return sum(info.file_size for info, _ in plan)


def check_plan(plan: Plan, *, max_bytes: int | None = None, what: str = "the archive") -> None:
    """:class:`ArchiveError` unless every planned member has a safe name, none is a symbolic link and
    the declared total is at most ``max_bytes`` (when given). Reads no member data."""
    check_names((info for info, _ in plan), what)
    for info, _ in plan:
        if is_symlink(info):
            raise ArchiveError(f"{what} holds a symbolic link {info.filename!r} where data files are expected; refusing to extract it")
    need = unpacked_size(plan)
    if max_bytes is not None and need > max_bytes:
        raise ArchiveError(f"{what} would unpack to {human_size(need)}; refusing (more than {human_size(max_bytes)})")


def _copy(fsrc, fdst) -> None:
    shutil.copyfileobj(fsrc, fdst, 1 << 20)


def extract_members(
    zf: zipfile.ZipFile,
    plan: Plan,
    dest: Path,
    *,
    max_bytes: int | None = None,
    what: str = "the archive",
    on_file: Callable[[], None] | None = None,
) -> None:
    """Write each planned member to ``dest / relative path``; ``dest`` is created and must not exist.

    Every member is checked first (:func:`check_plan`: safe names, no symbolic link, the declared
    total at most ``max_bytes``). Then, while writing, every destination must resolve inside ``dest`` and be
    new (a member given twice is refused). ``on_file`` is called after each file (a progress bar).
    OSError (disk full, permissions) propagates unchanged; the caller removes a partial ``dest``.

    Raises:
        ArchiveError: an unsafe, linked, oversized or duplicated member.
        CorruptArchiveError: a member whose data does not decompress or check.
    """
    check_plan(plan, max_bytes=max_bytes, what=what)
    dest.mkdir()
    root = dest.resolve()
    for info, rel in plan:
        out = (dest / rel).resolve()
        if root != out and root not in out.parents:  # belt and braces after check_names
            raise ArchiveError(f"{what} holds an unsafe member path {info.filename!r}; refusing to extract it")
        out.parent.mkdir(parents=True, exist_ok=True)
        try:
            with zf.open(info) as fsrc, open(out, "xb") as fdst:
                _copy(fsrc, fdst)
        except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError) as exc:
            raise CorruptArchiveError(f"{what} is corrupt ({info.filename}: {exc})") from None
        except FileExistsError:
            raise ArchiveError(f"{what} holds {info.filename!r} twice; refusing it") from None
        if on_file is not None:
            on_file()
