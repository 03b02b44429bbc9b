"""The official SVHN archives: download (resumable), verify, extract safely.

    transcribe data svhn --root data/svhn      (datacli.py calls fetch_svhn)

No checksums are published for the archives, so they are verified structurally: the gzip
stream is whole (verify_gzip), every PNG the split's digitStruct.mat names is present and the
counts are the published ones (verify_split). Extraction refuses members that would land
outside the destination (paths with '..', absolute paths, links out), and a split folder is
only put in place once verified, so an interrupted run never leaves a half split behind.
"""

from __future__ import annotations

import gzip
import http.client
import os
import shutil
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
import zlib
from pathlib import Path
from typing import Sequence

from transcribe.progress import bar as progress_bar
from transcribe.svhn import MAT_NAME, DataError, read_entries

SVHN_URL = "http://ufldl.stanford.edu/housenumbers/"
SPLIT_COUNTS = {"train": 33_402, "test": 13_068, "extra": 202_353}

_CHUNK = 1 << 20  # bytes per read while streaming


def download(url: str, dest: str | os.PathLike, attempts: int = 5, retry_wait: float = 2.0,
             timeout: float = 60.0, progress: bool = True) -> Path:
    """Stream `url` to `dest`, via `dest.part` renamed into place when complete.

    An existing `.part` is resumed with an HTTP Range request; a server that ignores Range
    (200 instead of 206) or answers with a different start restarts the file cleanly. A
    dropped connection is retried (resuming) up to `attempts` times. The length is checked
    against Content-Length / Content-Range when the server sends them."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    last_error = "no attempt made"
    for attempt in range(attempts):
        if attempt:
            time.sleep(retry_wait * attempt)
        have = part.stat().st_size if part.exists() else 0
        request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
        try:
            with urllib.request.urlopen(request, timeout=timeout) as resp:
                total = _expected_total(resp, have)
                if total is _RESTART:  # a 206 that does not continue at `have`: start over
                    part.unlink(missing_ok=True)
                    last_error = f"the server answered a range not starting at byte {have}"
                    continue
                if resp.status == 206:
                    mode = "ab"  # the server continues where the .part stops
                else:  # 200: a fresh download, or a server that ignores Range: start over
                    have, mode = 0, "wb"
                    length = resp.headers.get("Content-Length", "")
                    total = int(length) if length.isdigit() else None
                with open(part, mode) as out, progress_bar(total=total, initial=have, unit="B", unit_scale=True,
                                                            desc=dest.name, disable=not progress) as bar:
                    while chunk := resp.read(_CHUNK):
                        out.write(chunk)
                        bar.update(len(chunk))
        except urllib.error.HTTPError as e:
            if e.code == 416 and have:  # nothing left after `have`: complete .part, or a stale one
                size = _range_total(e.headers.get("Content-Range", ""))
                if size == have:
                    os.replace(part, dest)
                    return dest
                part.unlink(missing_ok=True)
                last_error = f"the server refused to resume at byte {have}; restarting"
                continue
            if e.code >= 500:  # a server-side hiccup: try again
                last_error = f"HTTP {e.code} {e.reason}"
                continue
            raise DataError(f"{dest}: downloading {url} failed: HTTP {e.code} {e.reason}") from None
        except (urllib.error.URLError, http.client.HTTPException, ConnectionError, TimeoutError, OSError) as e:
            last_error = f"{type(e).__name__}: {e}"  # dropped connection: resume from .part
            continue
        size = part.stat().st_size
        if total is not None and size != total:
            last_error = f"got {size:,} of {total:,} bytes"
            if size > total:  # more than announced: the .part cannot be trusted
                part.unlink()
            continue
        os.replace(part, dest)
        return dest
    raise DataError(f"{dest}: downloading {url} did not complete after {attempts} attempts "
                    f"({last_error}); run again to resume from {part.name}")


_RESTART = object()


def _range_total(content_range: str) -> int | None:
    """'bytes 100-199/1000' or 'bytes */1000' -> 1000; None if absent or '*'."""
    total = content_range.rpartition("/")[2].strip()
    return int(total) if total.isdigit() else None


def _expected_total(resp, have: int):
    """For a 206 answer: the full file size, or _RESTART if it does not continue at `have`."""
    if resp.status != 206:
        return None
    content_range = resp.headers.get("Content-Range", "")
    start = content_range.removeprefix("bytes ").partition("-")[0].strip()
    if not start.isdigit() or int(start) != have:
        return _RESTART
    return _range_total(content_range)


def verify_gzip(archive: str | os.PathLike) -> int:
    """Read the whole gzip stream (gzip checks its CRC-32 and length at the end); return the
    uncompressed size. No checksums are published for the SVHN archives, so this is the
    integrity check. DataError naming the archive if it is truncated or damaged."""
    archive = Path(archive)
    n = 0
    try:
        with gzip.open(archive, "rb") as f:
            while chunk := f.read(_CHUNK * 4):
                n += len(chunk)
    except (EOFError, gzip.BadGzipFile, zlib.error, OSError) as e:
        raise DataError(f"{archive}: damaged or incomplete gzip archive ({type(e).__name__}: {e}); "
                        f"delete it and run again to download it afresh") from None
    return n


def _inside(root: Path, target: Path) -> bool:
    return target == root or root in target.parents


def extract(archive: str | os.PathLike, dest: str | os.PathLike, progress: bool = True) -> list[str]:
    """Extract a .tar(.gz) into `dest`, refusing (DataError naming the member, before
    anything is written) any member that would land outside `dest` (absolute paths, '..') and
    every member that is not a plain file or folder (links, devices, pipes). Returns the
    member names."""
    archive, dest = Path(archive), Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    root = dest.resolve()
    try:
        with tarfile.open(archive, "r:*") as tar:
            members = tar.getmembers()  # reads the whole stream: truncation fails here
            for m in members:
                _check_member(archive, root, m)
            _check_layout(archive, members)
            # The 'data' filter (Python >= 3.11.4) re-checks the same and drops owners and
            # odd permissions; the check above is what gives the clear message.
            safe = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
            for m in progress_bar(members, desc=f"extract {archive.name}", unit="file", disable=not progress):
                tar.extract(m, dest, **safe)
    except DataError:
        raise
    except (tarfile.TarError, EOFError, OSError, zlib.error) as e:
        raise DataError(f"{archive}: cannot extract ({type(e).__name__}: {e})") from None
    return [m.name for m in members]


def _check_member(archive: Path, root: Path, m) -> None:
    """Only plain files and folders inside `root`. Every link is refused, wherever it points:
    the official archives hold none, and a chain of harmless-looking links (d -> ., d/d2 -> .,
    d/d2/e -> ../.., then e/x) escapes a check made one member at a time."""
    name = m.name
    where = f"{archive}: member {name!r}"
    if os.path.isabs(name) or name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        raise DataError(f"{where} has an absolute path; refusing to extract")
    target = (root / name).resolve()
    if not _inside(root, target):
        raise DataError(f"{where} would be written outside {root}; refusing to extract")
    if m.issym() or m.islnk():
        raise DataError(f"{where} is a {'symbolic' if m.issym() else 'hard'} link (to {m.linkname!r}); "
                        f"the SVHN archives hold none; refusing to extract")
    if not (m.isfile() or m.isdir()):
        raise DataError(f"{where} is a device, pipe or other special file; refusing to extract")
    if m.isfile() and name.split("/")[-1] in ("", ".", ".."):  # 'a/', 'a/.': a folder's name
        raise DataError(f"{where} is a file with a folder's name; refusing to extract")


def _check_layout(archive: Path, members) -> None:
    """No path is both a file and a folder (`d` a file, then `d/x`; or a file named '.'):
    extraction would fail half-way through."""
    files, folders = {}, {"."}
    for m in members:
        path = os.path.normpath(m.name)
        if not m.isdir():
            files.setdefault(path, m.name)
        parent = os.path.dirname(path)
        while parent:
            folders.add(parent)
            parent = os.path.dirname(parent)
        if m.isdir():
            folders.add(path)
    for path in folders & set(files):
        raise DataError(f"{archive}: member {files[path]!r} is a file where the archive also has a folder; "
                        f"refusing to extract")


def verify_split(folder: str | os.PathLike, expected: int | None = None) -> int:
    """Every PNG the split's digitStruct.mat names is present, and (for official splits)
    the count is the published one. Returns the number of entries; DataError otherwise."""
    folder = Path(folder)
    mat = folder / MAT_NAME
    if not mat.is_file():
        raise DataError(f"{mat}: missing (a format-1 split folder holds numbered PNGs and {MAT_NAME})")
    names = [e.file for e in read_entries(mat)]
    present = {p.name for p in folder.iterdir()}
    missing = [n for n in names if n not in present]
    if missing:
        raise DataError(f"{folder}: {len(missing):,} of {len(names):,} images named in {MAT_NAME} are "
                        f"missing, e.g. {', '.join(missing[:5])}")
    pngs = sum(1 for n in present if n.endswith(".png"))
    if expected is not None and (len(names) != expected or pngs != expected):
        raise DataError(f"{folder}: {len(names):,} entries in {MAT_NAME} and {pngs:,} PNG files, "
                        f"expected {expected:,}")
    return len(names)


def fetch_svhn(root: str | os.PathLike, splits: Sequence[str] = ("train", "test", "extra"),
               base_url: str = SVHN_URL, expected: dict[str, int] | None = None,
               progress: bool = True) -> dict[str, Path]:
    """Download -> verify -> extract -> verify each split into `root/<split>/`, skipping
    work already done: a split folder whose .mat names only present images (and the right
    count) is kept, an archive already downloaded is not fetched again. `expected` maps a
    split to its image count (default: the official counts, SPLIT_COUNTS)."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    expected = SPLIT_COUNTS if expected is None else expected
    done = {}
    for split in splits:
        folder = root / split
        count = expected.get(split)
        if folder.exists():
            try:
                verify_split(folder, count)
                print(f"{folder}: already extracted and complete, skipping")
                done[split] = folder
                continue
            except DataError as e:
                print(f"{e}\n{folder}: extracting again")
        archive = root / f"{split}.tar.gz"
        if not archive.exists():
            download(base_url.rstrip("/") + f"/{split}.tar.gz", archive, progress=progress)
        verify_gzip(archive)
        staging = Path(tempfile.mkdtemp(prefix=f".{split}.extracting-", dir=root))
        try:
            extract(archive, staging, progress=progress)
            if not (staging / split).is_dir():
                raise DataError(f"{archive}: has no top-level folder {split}/ (found "
                                f"{', '.join(sorted(p.name for p in staging.iterdir())) or 'nothing'})")
            verify_split(staging / split, count)
            if folder.exists():  # an incomplete earlier extraction, replaced by a verified one
                shutil.rmtree(folder)
            os.replace(staging / split, folder)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        print(f"{folder}: extracted and verified")
        done[split] = folder
    return done
