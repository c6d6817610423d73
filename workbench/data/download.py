"""Resumable HTTP downloads into a partial file: what ``workbench fetch-data`` streams its archives with.

The file is streamed with urllib into ``part`` (a tqdm bar on stderr). An interrupted download keeps
that file, and a small JSON beside it (``meta``) with the URL and the server's ETag; the next call
resumes it with an HTTP ``Range`` request (``If-Range`` guards against a changed file). Servers without
range support get a fresh download; a complete download is reused.
"""

from __future__ import annotations

import json
import re
import shutil
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from http.client import HTTPException
from pathlib import Path

from tqdm import tqdm

from .. import __version__
from .archive import human_size

__all__ = ["DownloadError", "Interrupted", "NetworkError", "download", "local_archive"]

TIMEOUT_S = 60.0  # per socket operation (connect, each read)
CHUNK = 1 << 16
DISK_MARGIN = 16 << 20  # bytes left free beyond what a download or an extraction needs


def local_archive(url: str) -> Path | None:
    """A local file given as ``file://...`` or a plain path (used in place, never deleted)."""
    parsed = urllib.parse.urlparse(url)
    if parsed.scheme == "file":
        return Path(urllib.request.url2pathname(parsed.path))
    if not parsed.scheme or re.match(r"^[A-Za-z]$", parsed.scheme):  # no scheme, or a Windows drive
        return Path(url).expanduser()
    return None


class DownloadError(RuntimeError):
    """A download that cannot go on (no disk space, a server that refuses every byte range); one line."""


class Interrupted(DownloadError):
    """The transfer stopped part way; the partial file can be resumed."""


class NetworkError(DownloadError):
    """The server could not be reached or answered with an error status."""


def _read_meta(meta: Path) -> dict:
    try:
        data = json.loads(meta.read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _content_range(value: str | None) -> tuple[int | None, int | None]:
    """(start, total) from ``bytes START-END/TOTAL`` or ``bytes */TOTAL``."""
    m = re.match(r"\s*bytes\s+(?:(\d+)-\d+|\*)/(\d+|\*)", value or "")
    if not m:
        return None, None
    start = int(m.group(1)) if m.group(1) is not None else None
    total = int(m.group(2)) if m.group(2) != "*" else None
    return start, total


def _open(url: str, headers: dict):
    req = urllib.request.Request(url, headers={"User-Agent": f"segmentation-workbench/{__version__}", **headers})
    return urllib.request.urlopen(req, timeout=TIMEOUT_S)


def _network_error(url: str, exc: BaseException, mirror_hint: str) -> NetworkError:
    if isinstance(exc, urllib.error.HTTPError):
        what = f"HTTP {exc.code} {exc.reason}".rstrip()
    elif isinstance(exc, urllib.error.URLError):
        what = str(exc.reason)
    else:
        what = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return NetworkError(
        f"cannot download {url}: {what}; check the connection and the URL, or give a mirror with {mirror_hint}"
    )


def download(url: str, part: Path, meta: Path, *, label: str, mirror_hint: str, progress: bool, say: Callable[[str], object]) -> None:
    """Stream ``url`` into ``part``, resuming a partial file with a Range request when possible.

    ``meta`` (JSON beside ``part``) remembers the URL, the server's ETag / Last-Modified and whether the
    download completed; a complete one is reused. ``label`` names the download in status lines (``say``)
    and on the tqdm bar (stderr, when ``progress``); ``mirror_hint`` says how to give another URL.

    Raises:
        Interrupted: the transfer stopped part way (``part`` can be resumed).
        NetworkError: the server could not be reached or answered with an error status.
        DownloadError: not enough disk space, or a server that keeps refusing the byte range.
    """
    info = _read_meta(meta) if part.is_file() else {}
    have = part.stat().st_size if part.is_file() else 0
    if info.get("url") != url:
        have, info = 0, {}
    if have and info.get("complete") and info.get("total") == have:
        say(f"{label}: using the complete download from an earlier run ({human_size(have)}, {part})")
        return
    for attempt in range(2):
        headers = {}
        if have:
            headers["Range"] = f"bytes={have}-"
            validator = info.get("etag") or info.get("last_modified")
            if validator:
                headers["If-Range"] = validator
        try:
            resp = _open(url, headers)
        except urllib.error.HTTPError as exc:
            if exc.code == 416 and have:  # nothing after byte `have`: complete already, or a changed file
                _, total = _content_range(exc.headers.get("Content-Range"))
                exc.close()
                if total == have:
                    _write_meta(meta, {**info, "url": url, "total": have, "complete": True})
                    return
                have, info = 0, {}
                continue
            raise _network_error(url, exc, mirror_hint) from None
        except (urllib.error.URLError, HTTPException, OSError) as exc:
            raise _network_error(url, exc, mirror_hint) from None
        with resp:
            status = getattr(resp, "status", None) or 200
            start, total = _content_range(resp.headers.get("Content-Range"))
            length = resp.headers.get("Content-Length")
            length = int(length) if length and length.isdigit() else None
            if status == 206 and have:
                if start != have:  # not the range we asked for: start over without Range
                    have, info = 0, {}
                    continue
                mode, done = "ab", have
                total = total if total is not None else (have + length if length is not None else None)
                say(f"{label}: resuming {url} at {human_size(have)}")
            else:
                mode, done, total = "wb", 0, length
                if have:
                    say(f"{label}: the server did not resume the download; starting again")
                say(f"{label}: downloading {url}" + (f" ({human_size(total)})" if total else ""))
            if total is not None:
                free = shutil.disk_usage(part.parent).free
                if free < total - done + DISK_MARGIN:
                    raise DownloadError(
                        f"not enough disk space in {part.parent}: the download needs {human_size(total - done)}, {human_size(free)} free; "
                        "free some space or choose another --data-root"
                    )
            _write_meta(
                meta, {"url": url, "etag": resp.headers.get("ETag"), "last_modified": resp.headers.get("Last-Modified"), "total": total}
            )
            _stream(resp, part, mode, done, total, label, progress=progress)
        _write_meta(meta, {**_read_meta(meta), "total": part.stat().st_size, "complete": True})
        return
    raise DownloadError(f"cannot download {url}: the server keeps refusing the byte range; delete {part} and run again")


def _write_meta(meta: Path, data: dict) -> None:
    meta.write_text(json.dumps(data))


def _stream(resp, part: Path, mode: str, done: int, total: int | None, label: str, *, progress: bool) -> None:
    with open(part, mode) as fh, tqdm(
        total=total, initial=done, unit="B", unit_scale=True, unit_divisor=1024, desc=label, disable=not progress, file=sys.stderr, leave=False
    ) as bar:
        while True:
            try:
                chunk = resp.read(CHUNK)
            except (HTTPException, OSError) as exc:  # reset, timeout, incomplete read
                raise Interrupted(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__) from None
            if not chunk:
                break
            fh.write(chunk)
            done += len(chunk)
            bar.update(len(chunk))
    if total is not None and done < total:
        raise Interrupted(f"the connection closed after {human_size(done)} of {human_size(total)}")

