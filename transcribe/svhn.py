"""SVHN format 1: the `digitStruct.mat` labels, the photos, and what is wrong with them.

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
"""

from __future__ import annotations

import math
import os
import struct
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import h5py
import numpy as np
from h5py import h5d, h5g, h5o, h5r, h5s, h5t
from PIL import Image

from transcribe.config import MAX_DIGITS
from transcribe.matreader import MAT_FIELDS, MAX_FIELD_VALUES, MAX_NAME_CHARS, MatParser, Unsupported

# Digit positions of the model (Goodfellow et al. 2014 model at most 5 digits; their length
# head has a ">5" class, but a longer number has no digit targets), so such photos are
# excluded from the usable records and counted (the full train split has one: 6 digits).
MAT_NAME = "digitStruct.mat"
_FAST_PARSER = True  # read digitStruct.mat with matreader.MatParser (False: h5py only; tests compare both)
BOX_FIELDS = ("left", "top", "width", "height")  # order of a box tuple
# Photos larger than this are refused before decoding (a PNG of a few KB can declare 50,000 x
# 50,000 pixels: 7.5 GB decoded). SVHN's photos are at most about 1,000 x 600 pixels; 40 MP
# is a 7,000 x 5,700 photo, 120 MB decoded. PIL's own MAX_IMAGE_PIXELS guard is 89 MP.
MAX_PHOTO_PIXELS = 40_000_000

Box = tuple[float, float, float, float]


class DataError(Exception):
    """Unusable input. Every message starts with the offending file's path, and is one line
    (the reasons quoted from h5py and tarfile can span several: their whitespace is joined)."""

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))


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


def read_entries(path: Path) -> list[_Entry]:
    """All entries of a digitStruct.mat as stored. h5py opens the file and checks its top
    level; the entries are then parsed by `matreader.MatParser` (HDF5's on-disk format read
    directly from a memory map: 7-9x faster than h5py, which dereferences each of the ~12 tiny
    objects per entry; measured in matreader.py). Any layout that parser does not know, or
    damage, falls back to h5py, which reads the file or names the problem."""

    try:
        f = h5py.File(path, "r")
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
        if 8 * (names_ds.size + bbox_ds.size) > os.path.getsize(path):  # references: 8 bytes each
            raise DataError(f"{path}: /digitStruct declares {max(names_ds.size, bbox_ds.size):,} entries, more than "
                            f"the file's {os.path.getsize(path):,} bytes can hold (damaged file)")
        try:
            name_refs = names_ds[()].ravel()  # all N references in one read
            bbox_refs = bbox_ds[()].ravel()
            # The same references as file addresses (HDF5 object references are addresses).
            addrs = []
            for ds in (names_ds, bbox_ds):
                a = np.empty(ds.shape, dtype=np.uint64)
                ds.id.read(h5s.ALL, h5s.ALL, a, mtype=h5t.STD_REF_OBJ)
                addrs.append(a.ravel())
        except (OSError, RuntimeError, ValueError) as e:
            raise DataError(f"{path}: cannot read /digitStruct (truncated or damaged file: {e})") from None
        if len(name_refs) != len(bbox_refs):
            raise DataError(f"{path}: {len(name_refs)} names but {len(bbox_refs)} bboxes")
        if _FAST_PARSER:
            try:
                with MatParser(path, f.userblock_size) as parser:
                    return [_entry(name, cols) for name, cols in parser.entries(addrs[0], addrs[1])]
            except (Unsupported, struct.error, ValueError, IndexError, KeyError, OverflowError,
                    UnicodeDecodeError, OSError):
                pass  # unknown layout or damage: h5py reads it, or names the problem
        return _read_entries_h5py(path, f, name_refs, bbox_refs, addrs)


def _read_entries_h5py(path: Path, f, name_refs, bbox_refs, addrs=None) -> list[_Entry]:
    """The same parse through h5py's low-level API (about 3x faster than its high-level one).

    Bounded like matreader: each reference must point at the kind of object expected (a
    dataset or a group; a crafted one may point at a group or a committed datatype), every
    declared size is checked against the file's size and matreader's limits before a buffer
    is allocated, and an object shared by several entries is read once (`addrs`, the
    references as file addresses, key the memo)."""

    fid = f.id
    all_ = h5s.ALL
    file_size = os.path.getsize(path)
    one = np.empty((1, 1), dtype=np.float64)  # reused buffer for (1, 1) doubles
    native_double = h5t.NATIVE_DOUBLE

    def deref(ref, cls, what: str):
        obj = h5r.dereference(ref, fid)
        if not isinstance(obj, cls):
            raise ValueError(f"{what} refers to a {type(obj).__name__.removesuffix('ID').lower()}, "
                             f"not a {cls.__name__.removesuffix('ID').lower()}")
        return obj

    def read(dsid, limit: int, mtype=None, dtype=None):  # whole dataset -> numpy array, bounded
        n = dsid.get_space().get_simple_extent_npoints()
        dtype = dtype or dsid.dtype
        if n > limit or n * dtype.itemsize > file_size:
            raise ValueError(f"a dataset declares {n} elements of {dtype.itemsize} bytes "
                             f"(at most {limit}, in a file of {file_size:,} bytes)")
        a = np.empty(dsid.shape, dtype)
        dsid.read(all_, all_, a, mtype=mtype)
        return a

    values_memo: dict[int, float] = {}
    fields_memo: dict[int, list[float]] = {}
    groups_memo: dict[int, dict[str, list[float]]] = {}

    def scalar(ref, addr: int) -> float:
        if addr in values_memo:
            return values_memo[addr]
        dsid = deref(ref, h5d.DatasetID, "a digit's value")
        # Fast path for the (1, 1) double every digit's value is stored as: read into a
        # preallocated buffer, skipping the shape/dtype queries (~4x faster per value).
        if dsid.get_storage_size() == 8 and dsid.get_space().get_simple_extent_npoints() == 1:
            dsid.read(all_, all_, one, mtype=native_double)
            v = float(one[0, 0])
        else:
            a = read(dsid, 1)
            if a.size != 1 or a.dtype.kind not in "fiu":
                raise ValueError(f"a digit's value should be a (1, 1) number, found {a.dtype} {a.shape}")
            v = float(a.ravel()[0])
        values_memo[addr] = v
        return v

    def values(gid, key: bytes) -> list[float]:
        dsid = h5d.open(gid, key)
        addr = h5o.get_info(dsid).addr
        if addr not in fields_memo:
            a = read(dsid, MAX_FIELD_VALUES)
            if a.dtype == np.dtype(object):  # (n, 1) references, one (1, 1) double per digit
                where = read(dsid, MAX_FIELD_VALUES, h5t.STD_REF_OBJ, np.dtype(np.uint64)).ravel()
                fields_memo[addr] = [scalar(r, int(w)) for r, w in zip(a.ravel(), where)]
            elif a.dtype.kind == "f":  # (1, 1) double: a one-digit number
                fields_memo[addr] = [float(v) for v in a.ravel()]
            elif a.dtype == np.uint64 and a.shape == (2,):  # MATLAB's empty []: stores its dims
                fields_memo[addr] = []
            else:
                raise ValueError(f"field {key.decode()} has unexpected type {a.dtype} {a.shape}")
        return fields_memo[addr]

    if addrs is None:
        addrs = (range(len(name_refs)), range(len(name_refs), 2 * len(name_refs)))  # no sharing known
    names_memo: dict[int, str] = {}
    entries = []
    i = -1
    try:
        for i in range(len(name_refs)):
            name_addr, bbox_addr = int(addrs[0][i]), int(addrs[1][i])
            if name_addr not in names_memo:
                chars = read(deref(name_refs[i], h5d.DatasetID, "a name"), MAX_NAME_CHARS).ravel()
                names_memo[name_addr] = chars.astype(np.uint16).tobytes().decode("utf-16-le")  # MATLAB char = UTF-16
            if bbox_addr not in groups_memo:
                gid = deref(bbox_refs[i], h5g.GroupID, "a bbox")
                groups_memo[bbox_addr] = {k: values(gid, k.encode()) for k in MAT_FIELDS}
            entries.append(_entry(names_memo[name_addr], groups_memo[bbox_addr]))
    except (OSError, RuntimeError, ValueError, KeyError, TypeError, AttributeError, UnicodeDecodeError,
            OverflowError) as e:
        raise DataError(f"{path}: entry {i + 1} of {len(name_refs)} is damaged or has an "
                        f"unexpected layout ({type(e).__name__}: {e})") from None
    return entries


def _entry(name: str, cols: dict[str, list[float]]) -> _Entry:
    n = len(cols["label"])
    if any(len(cols[k]) != n for k in BOX_FIELDS):
        raise ValueError(f"fields have different lengths {[len(cols[k]) for k in MAT_FIELDS]}")
    return _Entry(name, tuple(cols["label"]), tuple(zip(*(cols[k] for k in BOX_FIELDS))))


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
    for e in read_entries(path):
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
# Every name, struct and per-digit value goes into the one `#refs#` group (MATLAB's layout),
# whose old-style symbol table keeps all its link names in one local heap: ~2.1 million links
# for SVHN's extra split (202,353 records). Under h5py's default metadata cache ceiling (32 MB)
# the inserts stall once that heap grows to about the ceiling: after 1.75 million links with
# the old names "r0", "r1", ... (a 202,353-record write added 3 MB in its last 10 minutes).
# So the writer raises the ceiling to HDF5's maximum, 128 MB (H5C__MAX_MAX_CACHE_SIZE), and
# keeps the names short (base 36; MATLAB's own are short too: "0", "0b", ...): up to 36**5 =
# 60 million links each takes 8 heap bytes (name + NUL, 8-byte aligned), the old ones past
# "r999999" 16. Measured with both, 6 million links (~2.9x extra) insert at a steady 2.9-3.2 s
# per 250,000 (scripts/bench_digitstruct.py --links; README, "the full-size rehearsal").
WRITE_CACHE_BYTES = 128 * 2**20
_NAME_DIGITS = "0123456789abcdefghijklmnopqrstuvwxyz"


def _ref_name(i: int) -> str:
    """The i-th link name in #refs#, base 36 ("0", "1", ... "z", "10", ...). Readers follow
    references, never these names; they only have to be unique."""
    out = ""
    while True:
        i, d = divmod(i, 36)
        out = _NAME_DIGITS[d] + out
        if not i:
            return out


def _matlab_header() -> bytes:
    text = b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: Thu Jan  1 00:00:00 1970 HDF5 schema 1.00 ."
    return text.ljust(116, b" ") + b"\0" * 8 + b"\x00\x02" + b"IM"


def write_digitstruct(path: str | os.PathLike, records: Iterable[Record]) -> None:
    """Write records in MATLAB's v7.3 layout (as the official files; `read_digitstruct`
    reads it back the same way). Atomic: written to a temp file in the same folder, renamed."""

    path = Path(path)
    records = list(records)
    for rec in records:
        if len(rec.boxes) != len(rec.digits) or not all(0 <= d <= 9 for d in rec.digits) \
                or not all(len(b) == 4 for b in rec.boxes):
            raise ValueError(f"{path}: cannot write record {rec.file!r}: digits must be 0-9 with one "
                             f"(left, top, width, height) box each, got {rec.digits} and {rec.boxes}")
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
            mdc = f.id.get_mdc_config()  # the cache ceiling: see WRITE_CACHE_BYTES
            mdc.max_size = WRITE_CACHE_BYTES
            mdc.min_size = min(mdc.min_size, WRITE_CACHE_BYTES)
            mdc.initial_size = min(mdc.initial_size, WRITE_CACHE_BYTES)
            f.id.set_mdc_config(mdc)
            refs = f.create_group("#refs#")
            counter = iter(range(1 << 62))  # link names in #refs#

            def double(value: float):
                ds = refs.create_dataset(_ref_name(next(counter)), data=np.array([[value]], dtype="<f8"))
                ds.attrs["MATLAB_class"] = np.bytes_(b"double")
                return ds

            name_refs = np.empty((len(records), 1), dtype=h5py.ref_dtype)
            bbox_refs = np.empty((len(records), 1), dtype=h5py.ref_dtype)
            for i, rec in enumerate(records):
                chars = np.frombuffer(rec.file.encode("utf-16-le"), dtype="<u2").reshape(-1, 1)
                nds = refs.create_dataset(_ref_name(next(counter)), data=chars)
                nds.attrs["MATLAB_class"] = np.bytes_(b"char")
                nds.attrs["MATLAB_int_decode"] = np.int32(2)
                name_refs[i, 0] = nds.ref

                g = refs.create_group(_ref_name(next(counter)))
                g.attrs["MATLAB_class"] = np.bytes_(b"struct")
                g.attrs.create("MATLAB_fields", fields_attr(MAT_FIELDS), dtype=vlen_s1)
                labels = [10 if d == 0 else int(d) for d in rec.digits]
                cols = {"label": labels, **{k: [b[j] for b in rec.boxes] for j, k in enumerate(BOX_FIELDS)}}
                for key in MAT_FIELDS:
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
    entries = read_entries(mat)
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
    """A photo as (H, W, 3) uint8 RGB. DataError naming the file if missing, unreadable (a
    truncated PNG fails here, not later) or over MAX_PHOTO_PIXELS (checked from its header,
    before decoding)."""

    path = Path(path)
    try:
        with Image.open(path) as im:
            if im.width * im.height > MAX_PHOTO_PIXELS:
                raise DataError(f"{path}: photo of {im.width:,} x {im.height:,} pixels, over the limit of "
                                f"{MAX_PHOTO_PIXELS:,} (refused before decoding)")
            im.load()  # decode now so truncation/corruption is detected here
            return np.asarray(im.convert("RGB"), dtype=np.uint8)
    except FileNotFoundError:
        raise DataError(f"{path}: image file missing") from None
    except Image.DecompressionBombError as e:  # PIL's guard, at open, for the very largest
        raise DataError(f"{path}: photo over PIL's pixel limit, refused before decoding ({e})") from None
    except (OSError, ValueError, SyntaxError) as e:
        raise DataError(f"{path}: unreadable image ({type(e).__name__}: {e})") from None
