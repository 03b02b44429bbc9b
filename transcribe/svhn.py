"""SVHN format 1: the official archives, their `digitStruct.mat` labels and the photos.

Format 1 (Netzer et al. 2011) is one folder per split of numbered PNG photos plus a
`digitStruct.mat` saved by MATLAB in its v7.3 layout, which is HDF5 with a 512-byte header:

    /digitStruct            group, MATLAB_class 'struct' (a 1xN struct array)
    /digitStruct/name       (N, 1) object references -> (k, 1) uint16 chars, e.g. "1.png"
    /digitStruct/bbox       (N, 1) object references -> a group (MATLAB 'struct') holding
                            height, label, left, top, width; each one either a (1, 1) double
                            (a one-digit number) or an (n, 1) array of references to (1, 1)
                            doubles (n digits, in reading order)
    /#refs#/...             the referenced objects

Label 10 means the digit 0. Boxes are (left, top, width, height) in pixels per digit.
This is the one on-disk input format of the project: the synthetic generator writes the
same layout with `write_digitstruct`, and everything downstream starts from `read_split`.

Bad input is never skipped silently: a file that cannot be parsed raises `DataError` naming
it; an entry that cannot be used becomes a `Problem` (counted, listed by `summarize`).
Only the standard library and numpy are imported at module level; h5py, PIL and tqdm are
imported inside the functions that need them.
"""

from __future__ import annotations

import math
import os
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

# The model has 5 digit heads (Goodfellow et al. 2014, sec. 5.1: "we limit N to 5"); its
# length head has a ">5" class, but a number that long has no digit targets, so such photos
# are excluded from training data and counted (the full train split has one: 6 digits).
MAX_DIGITS = 5
MAT_NAME = "digitStruct.mat"
_CORE_DRIVER_MAX_BYTES = 1 << 30  # .mat files below 1 GiB are parsed in memory (train's is ~0.1 GB)
BOX_FIELDS = ("left", "top", "width", "height")  # order of a box tuple
_MAT_FIELDS = ("height", "left", "top", "width", "label")  # order MATLAB stores them in

# Official archives (format 1). No checksums are published for them, so they are verified
# structurally: the gzip stream is whole, every PNG the .mat names is present, counts match.
SVHN_URL = "http://ufldl.stanford.edu/housenumbers/"
SPLIT_COUNTS = {"train": 33_402, "test": 13_068, "extra": 202_353}

Box = tuple[float, float, float, float]


class DataError(Exception):
    """Unusable input. Every message starts with the offending file's path."""


@dataclass(frozen=True)
class Record:
    """One photo's labels: `file` is the name inside the split folder ("1.png"), digits 0-9,
    one (left, top, width, height) box per digit, in reading order."""
    file: str
    digits: tuple[int, ...]
    boxes: tuple[Box, ...]

    @property
    def text(self) -> str:
        return "".join(str(d) for d in self.digits)


@dataclass(frozen=True)
class Problem:
    """Something wrong with one entry. `problem` reads "<kind>: <detail>" (or just "<kind>");
    `skipped` says whether the entry was left out of the usable records."""
    file: str
    problem: str
    skipped: bool

    @property
    def kind(self) -> str:
        return self.problem.split(":", 1)[0]


@dataclass
class Split:
    folder: Path
    records: list[Record]
    problems: list[Problem] = field(default_factory=list)


# ----------------------------------------------------------------------------------------
# digitStruct.mat: reading

@dataclass(frozen=True)
class _Entry:
    """One entry as stored: raw MATLAB labels (10 = zero) and boxes, before any checks."""
    file: str
    labels: tuple[float, ...]
    boxes: tuple[Box, ...]


def _read_entries(path: Path) -> list[_Entry]:
    """Parse the v7.3 layout with h5py's low-level API (about 3x faster than the high-level
    one, which matters for 33k-200k entries: each entry is ~12 tiny HDF5 objects)."""
    import h5py
    from h5py import h5d, h5r, h5s, h5t

    try:
        # Small files are read into memory whole (driver "core"): tens of thousands of tiny
        # objects are then dereferenced without a system call each (measured ~1.3-2x faster).
        small = path.stat().st_size < _CORE_DRIVER_MAX_BYTES
        f = h5py.File(path, "r", driver="core" if small else None, backing_store=False) if small \
            else h5py.File(path, "r")
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: not a readable MATLAB v7.3 (HDF5) file ({e})") from None
    with f:
        try:
            group = f["digitStruct"]
            names_ds, bbox_ds = group["name"], group["bbox"]
        except (KeyError, TypeError, OSError) as e:
            raise DataError(f"{path}: no /digitStruct/name and /digitStruct/bbox datasets "
                            f"(not an SVHN format-1 digitStruct.mat: {e})") from None
        for what, ds in (("name", names_ds), ("bbox", bbox_ds)):
            if not isinstance(ds, h5py.Dataset) or ds.dtype != h5py.ref_dtype or len(ds.shape) != 2 \
                    or 1 not in ds.shape:
                raise DataError(f"{path}: /digitStruct/{what} should be an (N, 1) array of object "
                                f"references, found {type(ds).__name__} {getattr(ds, 'shape', None)} "
                                f"{getattr(ds, 'dtype', None)}")
        try:
            name_refs = names_ds[()].ravel()  # all N references in one read
            bbox_refs = bbox_ds[()].ravel()
        except (OSError, RuntimeError, ValueError) as e:
            raise DataError(f"{path}: cannot read /digitStruct (truncated or damaged file: {e})") from None
        if len(name_refs) != len(bbox_refs):
            raise DataError(f"{path}: {len(name_refs)} names but {len(bbox_refs)} bboxes")

        fid = f.id
        all_ = h5s.ALL
        obj_dtype = np.dtype(object)
        one = np.empty((1, 1), dtype=np.float64)  # reused buffer for (1, 1) doubles
        native_double = h5t.NATIVE_DOUBLE

        def read(dsid):  # whole dataset -> numpy array
            a = np.empty(dsid.shape, dsid.dtype)
            dsid.read(all_, all_, a)
            return a

        def scalar(dsid) -> float:
            # Fast path for the (1, 1) double every digit's value is stored as: read into a
            # preallocated buffer, skipping the shape/dtype queries (~4x faster per value).
            if dsid.get_storage_size() == 8 and dsid.get_space().get_simple_extent_npoints() == 1:
                dsid.read(all_, all_, one, mtype=native_double)
                return float(one[0, 0])
            a = read(dsid)
            if a.size != 1 or a.dtype.kind not in "fiu":
                raise ValueError(f"a digit's value should be a (1, 1) number, found {a.dtype} {a.shape}")
            return float(a.ravel()[0])

        def values(gid, key: bytes) -> list[float]:
            a = read(h5d.open(gid, key))
            if a.dtype == obj_dtype:  # (n, 1) references, one (1, 1) double per digit
                return [scalar(h5r.dereference(r, fid)) for r in a.ravel()]
            if a.dtype.kind == "f":  # (1, 1) double: a one-digit number
                return [float(v) for v in a.ravel()]
            if a.dtype == np.uint64 and a.shape == (2,):  # MATLAB's empty []: stores its dims
                return []
            raise ValueError(f"field {key.decode()} has unexpected type {a.dtype} {a.shape}")

        entries = []
        i = -1
        try:
            for i in range(len(name_refs)):
                chars = read(h5r.dereference(name_refs[i], fid)).ravel()
                name = chars.astype(np.uint16).tobytes().decode("utf-16-le")  # MATLAB char = UTF-16
                gid = h5r.dereference(bbox_refs[i], fid)
                cols = {k: values(gid, k.encode()) for k in _MAT_FIELDS}
                n = len(cols["label"])
                if any(len(cols[k]) != n for k in BOX_FIELDS):
                    raise ValueError(f"fields have different lengths {[len(cols[k]) for k in _MAT_FIELDS]}")
                boxes = tuple(zip(*(cols[k] for k in BOX_FIELDS)))
                entries.append(_Entry(name, tuple(cols["label"]), boxes))
        except (OSError, RuntimeError, ValueError, KeyError, TypeError, UnicodeDecodeError) as e:
            raise DataError(f"{path}: entry {i + 1} of {len(name_refs)} is damaged or has an "
                            f"unexpected layout ({type(e).__name__}: {e})") from None
    return entries


def _label_problem(labels: Sequence[float]) -> str | None:
    bad = [v for v in labels if not (math.isfinite(v) and v == int(v) and 1 <= v <= 10)]
    if bad:
        return f"label outside 1..10: {bad} (10 means the digit 0)"
    return None


def _to_digits(labels: Sequence[float]) -> tuple[int, ...]:
    return tuple(int(v) % 10 for v in labels)  # label 10 -> digit 0


def read_digitstruct(path: str | os.PathLike) -> list[Record]:
    """All entries of a digitStruct.mat, in file order. Raises DataError naming the file if
    it is not HDF5, is truncated, lacks /digitStruct, or holds a label outside 1..10.
    Entries with 0 or more than MAX_DIGITS digits are returned; `read_split` filters them."""
    path = Path(path)
    records = []
    for e in _read_entries(path):
        bad = _label_problem(e.labels)
        if bad:
            raise DataError(f"{path}: entry {e.file!r}: {bad}")
        records.append(Record(e.file, _to_digits(e.labels), e.boxes))
    return records


# ----------------------------------------------------------------------------------------
# digitStruct.mat: writing (the synthetic generator and the tests use it)

# MATLAB's 128-byte v7.3 header: 116 bytes of text, 8 bytes subsystem offset, version
# 0x0200 and the endian indicator 'IM'; the HDF5 data starts after a 512-byte user block.
_USERBLOCK = 512


def _matlab_header() -> bytes:
    text = b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: Thu Jan  1 00:00:00 1970 HDF5 schema 1.00 ."
    return text.ljust(116, b" ") + b"\0" * 8 + b"\x00\x02" + b"IM"


def write_digitstruct(path: str | os.PathLike, records: Iterable[Record]) -> None:
    """Write records in MATLAB's v7.3 layout (as the official files; `read_digitstruct`
    reads it back the same way). Atomic: written to a temp file in the same folder, renamed."""
    import h5py

    path = Path(path)
    records = list(records)
    vlen_s1 = h5py.vlen_dtype(np.dtype("S1"))

    def fields_attr(names: Sequence[str]) -> np.ndarray:  # MATLAB_fields: vlen arrays of chars
        a = np.empty(len(names), dtype=object)
        for i, n in enumerate(names):
            a[i] = np.frombuffer(n.encode(), dtype="S1")
        return a

    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        with h5py.File(tmp, "w", userblock_size=_USERBLOCK, libver="earliest") as f:
            refs = f.create_group("#refs#")
            counter = iter(range(1 << 62))

            def double(value: float):
                ds = refs.create_dataset(f"r{next(counter)}", data=np.array([[value]], dtype="<f8"))
                ds.attrs["MATLAB_class"] = np.bytes_(b"double")
                return ds

            name_refs = np.empty((len(records), 1), dtype=h5py.ref_dtype)
            bbox_refs = np.empty((len(records), 1), dtype=h5py.ref_dtype)
            for i, rec in enumerate(records):
                chars = np.frombuffer(rec.file.encode("utf-16-le"), dtype="<u2").reshape(-1, 1)
                nds = refs.create_dataset(f"r{next(counter)}", data=chars)
                nds.attrs["MATLAB_class"] = np.bytes_(b"char")
                nds.attrs["MATLAB_int_decode"] = np.int32(2)
                name_refs[i, 0] = nds.ref

                g = refs.create_group(f"g{next(counter)}")
                g.attrs["MATLAB_class"] = np.bytes_(b"struct")
                g.attrs.create("MATLAB_fields", fields_attr(_MAT_FIELDS), dtype=vlen_s1)
                labels = [10 if d == 0 else int(d) for d in rec.digits]
                cols = {"label": labels, **{k: [b[j] for b in rec.boxes] for j, k in enumerate(BOX_FIELDS)}}
                for key in _MAT_FIELDS:
                    vals = cols[key]
                    if len(vals) == 1:  # one digit: the value itself, a (1, 1) double
                        ds = g.create_dataset(key, data=np.array([[vals[0]]], dtype="<f8"))
                        ds.attrs["MATLAB_class"] = np.bytes_(b"double")
                    elif len(vals) == 0:  # MATLAB's empty []: its dims (0, 0) as uint64
                        ds = g.create_dataset(key, data=np.zeros(2, dtype=np.uint64))
                        ds.attrs["MATLAB_class"] = np.bytes_(b"double")
                        ds.attrs["MATLAB_empty"] = np.uint8(1)
                    else:  # a cell of (1, 1) doubles
                        col = np.empty((len(vals), 1), dtype=h5py.ref_dtype)
                        for j, v in enumerate(vals):
                            col[j, 0] = double(float(v)).ref
                        g.create_dataset(key, data=col)
                bbox_refs[i, 0] = g.ref

            ds_group = f.create_group("digitStruct")
            ds_group.attrs["MATLAB_class"] = np.bytes_(b"struct")
            ds_group.attrs.create("MATLAB_fields", fields_attr(("name", "bbox")), dtype=vlen_s1)
            ds_group.create_dataset("name", data=name_refs)
            ds_group.create_dataset("bbox", data=bbox_refs)
        with open(tmp, "r+b") as fh:  # fill the user block with MATLAB's header
            fh.write(_matlab_header())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# ----------------------------------------------------------------------------------------
# A split folder: records + problems

def _entry_problems(e: _Entry) -> list[str]:
    out = []
    if not e.labels:
        out.append("no digits: the entry has no labelled digit")
    elif len(e.labels) > MAX_DIGITS:
        out.append(f"more than {MAX_DIGITS} digits: {len(e.labels)} digits "
                   f"(the model's digit heads have {MAX_DIGITS} positions)")
    bad = _label_problem(e.labels)
    if bad:
        out.append(bad)
    for j, b in enumerate(e.boxes):
        if not all(math.isfinite(v) for v in b) or b[2] <= 0 or b[3] <= 0:
            out.append(f"invalid box: digit {j + 1} has (left, top, width, height) = {b}")
            break
    return out


def read_split(folder: str | os.PathLike, strict: bool = False) -> Split:
    """Records usable for a cache, plus every problem found, one per entry and kind.

    Skipped (problem with skipped=True): image file missing, no digits, more than
    MAX_DIGITS digits, a label outside 1..10, a box with non-positive or non-finite size,
    a name that leaves the folder, a name listed twice (the second one). Boxes reaching
    outside the photo are kept: see `box_problem`. `strict=True` raises DataError on the
    first problem instead."""
    folder = Path(folder)
    mat = folder / MAT_NAME
    if not mat.is_file():
        raise DataError(f"{mat}: missing (a format-1 split folder holds numbered PNGs and {MAT_NAME})")
    entries = _read_entries(mat)
    present = {p.name for p in folder.iterdir()}  # one listing instead of N stat calls
    records, problems, seen = [], [], set()

    def report(file: str, problem: str) -> None:
        if strict:
            raise DataError(f"{folder / file}: {problem} (listed in {mat})")
        problems.append(Problem(file, problem, skipped=True))

    for e in entries:
        if not e.file or Path(e.file).name != e.file or e.file in (".", ".."):
            report(e.file, "name leaves the split folder: a plain file name was expected")
            continue
        if e.file in seen:
            report(e.file, f"duplicate entry: {e.file} is listed more than once in {MAT_NAME}")
            continue
        seen.add(e.file)
        issues = _entry_problems(e)
        if e.file not in present:
            issues.insert(0, "image file missing")
        for issue in issues:
            report(e.file, issue)
        if not issues:
            records.append(Record(e.file, _to_digits(e.labels), e.boxes))
    return Split(folder, records, problems)


def box_problem(record: Record, width: int, height: int) -> str | None:
    """Describe digit boxes reaching outside a width x height photo (None if all inside).
    Not a reason to skip: official labels do this (train/477.png: 6 px below the photo),
    and crops pad. The cache builder reports it as a note (Problem with skipped=False)."""
    over = {"left of": 0.0, "above": 0.0, "right of": 0.0, "below": 0.0}
    for left, top, w, h in record.boxes:
        over["left of"] = max(over["left of"], -left)
        over["above"] = max(over["above"], -top)
        over["right of"] = max(over["right of"], left + w - width)
        over["below"] = max(over["below"], top + h - height)
    parts = [f"{v:g} px {k}" for k, v in over.items() if v > 0]
    if not parts:
        return None
    return f"box outside the image: digit boxes reach {', '.join(parts)} the {width}x{height} photo"


def summarize(problems: Sequence[Problem], examples: int = 5) -> str:
    """Counts by kind, with the first few files of each kind, e.g. for a build log."""
    if not problems:
        return "no problems"
    kinds = Counter(p.kind for p in problems)
    lines = []
    for kind, n in kinds.most_common():
        ps = [p for p in problems if p.kind == kind]
        action = "skipped" if all(p.skipped for p in ps) else (
            "kept" if not any(p.skipped for p in ps) else "some skipped")
        files = ", ".join(p.file for p in ps[:examples]) + (", ..." if n > examples else "")
        lines.append(f"{n:>7,}  {kind} ({action}): {files}")
    skipped = sum(p.skipped for p in problems)
    head = f"{len(problems):,} problems ({skipped:,} entries skipped)"
    return "\n".join([head] + lines)


def load_image(path: str | os.PathLike) -> np.ndarray:
    """A photo as (H, W, 3) uint8 RGB. DataError naming the file if missing or unreadable
    (a truncated PNG fails here, not later)."""
    from PIL import Image

    path = Path(path)
    try:
        with Image.open(path) as im:
            im.load()  # decode now so truncation/corruption is detected here
            return np.asarray(im.convert("RGB"), dtype=np.uint8)
    except FileNotFoundError:
        raise DataError(f"{path}: image file missing") from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise DataError(f"{path}: unreadable image ({type(e).__name__}: {e})") from None


# ----------------------------------------------------------------------------------------
# The official archives: download (resumable), verify, extract safely

_CHUNK = 1 << 20  # bytes per read while streaming


def download(url: str, dest: str | os.PathLike, attempts: int = 5, retry_wait: float = 2.0,
             timeout: float = 60.0, progress: bool = True) -> Path:
    """Stream `url` to `dest`, via `dest.part` renamed into place when complete.

    An existing `.part` is resumed with an HTTP Range request; a server that ignores Range
    (200 instead of 206) or answers with a different start restarts the file cleanly. A
    dropped connection is retried (resuming) up to `attempts` times. The length is checked
    against Content-Length / Content-Range when the server sends them."""
    import http.client
    import time
    import urllib.error
    import urllib.request

    from tqdm import tqdm

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
                with open(part, mode) as out, tqdm(total=total, initial=have, unit="B", unit_scale=True,
                                                    desc=dest.name, disable=not progress or None) as bar:
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
    import gzip
    import zlib

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
    anything is written) any member that would land outside `dest`: absolute paths, '..',
    links pointing outside, devices. Returns the member names."""
    import tarfile

    from tqdm import tqdm

    archive, dest = Path(archive), Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    root = dest.resolve()
    try:
        with tarfile.open(archive, "r:*") as tar:
            members = tar.getmembers()  # reads the whole stream: truncation fails here
            for m in members:
                _check_member(archive, root, m)
            for m in tqdm(members, desc=f"extract {archive.name}", unit="file",
                          disable=not progress or None):
                # The 'data' filter (Python >= 3.11.4) re-checks the same and drops
                # permissions/owners from the archive; our check above gives the clear message.
                tar.extract(m, dest, filter="data") if hasattr(tarfile, "data_filter") else tar.extract(m, dest)
    except DataError:
        raise
    except (tarfile.TarError, EOFError, OSError) as e:
        raise DataError(f"{archive}: cannot extract ({type(e).__name__}: {e})") from None
    return [m.name for m in members]


def _check_member(archive: Path, root: Path, m) -> None:
    name = m.name
    where = f"{archive}: member {name!r}"
    if os.path.isabs(name) or name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        raise DataError(f"{where} has an absolute path; refusing to extract")
    target = (root / name).resolve()
    if not _inside(root, target):
        raise DataError(f"{where} would be written outside {root}; refusing to extract")
    if m.issym() or m.islnk():
        base = target.parent if m.issym() else root  # symlinks are relative to their folder
        link = Path(m.linkname)
        if link.is_absolute() or not _inside(root, (base / link).resolve()):
            raise DataError(f"{where} links to {m.linkname!r} outside {root}; refusing to extract")
    elif not (m.isfile() or m.isdir()):
        raise DataError(f"{where} is a device or pipe; refusing to extract")


def verify_split(folder: str | os.PathLike, expected: int | None = None) -> int:
    """Every PNG the split's digitStruct.mat names is present, and (for official splits)
    the count is the published one. Returns the number of entries; DataError otherwise."""
    folder = Path(folder)
    mat = folder / MAT_NAME
    if not mat.is_file():
        raise DataError(f"{mat}: missing (a format-1 split folder holds numbered PNGs and {MAT_NAME})")
    names = [e.file for e in _read_entries(mat)]
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
    import shutil

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
