"""Property-based fuzzing (Hypothesis) of everything that reads input we do not control: the
real digitStruct.mat fixtures with bytes flipped, cut off or duplicated; boxes of any value;
file names of any characters; tar archives with every member type. The property is always the
same: the input is read, or it is refused with the project's own error naming the file, within
a time bound (Hypothesis' deadline per case) and a memory bound (tracemalloc's peak of Python
and numpy allocations per case).

`make test` runs a short pass (FUZZ_EXAMPLES cases per property, default below: ~12 s in all,
derandomized so that it cannot flake);
`make fuzz` runs a long one (TRANSCRIBE_FUZZ_EXAMPLES=..., with --hypothesis-show-statistics
printing the cases run and the outcomes, which hypothesis.event records)."""

from __future__ import annotations

import atexit
import io
import os
import re
import shutil
import tarfile
import tempfile
import tracemalloc
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from conftest import SHARED_DATA
from transcribe import crops, dataset, fetch, predict, svhn
from transcribe.svhn import DataError, Record

FUZZ_EXAMPLES = int(os.environ.get("TRANSCRIBE_FUZZ_EXAMPLES", "100"))  # cases per property
DEADLINE_MS = 5_000      # per case; a case takes ~10-50 ms (the crafted .mat of issue 11 took an hour)
MEMORY_BOUND = 64 << 20  # bytes of Python/numpy allocations per case (issue 11's .mat reached 350 MB)
FUZZ = settings(max_examples=FUZZ_EXAMPLES, deadline=DEADLINE_MS, derandomize=FUZZ_EXAMPLES <= 100,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
FIXTURES = SHARED_DATA / "svhn-fixtures"
MATS = {s: FIXTURES / s / "digitStruct.mat" for s in ("train", "test", "extra")}
needs_fixtures = pytest.mark.skipif(not FIXTURES.exists(), reason=f"real SVHN fixtures not found at {FIXTURES}")
SCRATCH = Path(tempfile.mkdtemp(prefix="transcribe-fuzz-"))  # one folder per process, files overwritten
atexit.register(shutil.rmtree, SCRATCH, ignore_errors=True)


@contextmanager
def bounded_memory():
    tracemalloc.start()
    try:
        yield
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < MEMORY_BOUND, f"peak {peak:,} bytes"


def _outcome(err: Exception, path: Path) -> None:
    """A refusal must be ours, on one line, naming the file; counted by its kind."""
    assert isinstance(err, DataError), f"{type(err).__name__}: {err}"
    assert str(err).startswith(str(path)) and "\n" not in str(err), str(err)
    reason = re.sub(r"'.*?'|/\S*|\d+", "_", str(err)[len(str(path)) + 2:])  # no names or numbers: kinds
    event(f"refused: {reason.split('(')[0].split(';')[0].strip()[:60]}")


# ------------------------------------------------------------- digitStruct.mat

# Positions are fractions of the file's size: uniform over the file (Hypothesis draws small
# integers often, which would keep hitting the superblock).
_where = st.floats(0.0, 1.0, exclude_max=True)
_flip = st.tuples(st.just("flip"), _where, st.integers(0, 255))  # the byte there := value
_mutation = st.one_of(
    _flip, _flip, _flip, _flip, _flip, _flip,  # flips more often: HDF5 refuses any cut or grown file at once
    st.tuples(st.just("cut"), _where, st.just(0)),                # the file cut off there
    st.tuples(st.just("dup"), _where, st.integers(1, 4096)),      # a chunk there repeated in place
)


def _mutate(data: bytes, mutations) -> bytes:
    out = bytearray(data)
    for kind, pos, arg in mutations:
        if not out:
            break
        pos = int(pos * len(out))
        if kind == "flip":
            out[pos] = arg
        elif kind == "cut":
            del out[pos:]
        else:
            out[pos:pos] = out[pos:pos + arg]
    return bytes(out)


@needs_fixtures
@FUZZ
@given(split=st.sampled_from(sorted(MATS)), mutations=st.lists(_mutation, min_size=1, max_size=8),
       fast=st.booleans())
def test_damaged_mat_is_read_or_refused_clearly(split, mutations, fast):
    _read_damaged(_mutate(MATS[split].read_bytes(), mutations), fast)


def _read_damaged(data: bytes, fast: bool) -> None:
    path = SCRATCH / "digitStruct.mat"
    path.write_bytes(data)
    before, svhn._FAST_PARSER = svhn._FAST_PARSER, fast
    try:
        with bounded_memory():
            try:
                entries = svhn.read_entries(path)
            except Exception as err:  # noqa: BLE001 - the property: only DataError comes out
                _outcome(err, path)
            else:
                assert all(isinstance(e.file, str) for e in entries)
                event("parsed")
    finally:
        svhn._FAST_PARSER = before


@needs_fixtures
@FUZZ
@given(split=st.sampled_from(sorted(MATS)), flips=st.integers(1, 16), rnd=st.randoms(use_true_random=False),
       fast=st.booleans())
def test_bit_flipped_mat_is_read_or_refused_clearly(split, flips, rnd, fast):
    """Flips only, at uniformly random places: most reach the entries rather than the top level."""
    data = bytearray(MATS[split].read_bytes())
    for _ in range(flips):
        data[rnd.randrange(512, len(data))] ^= 1 << rnd.randrange(8)  # past MATLAB's 512-byte header
    _read_damaged(bytes(data), fast)


# ------------------------------------------------------------- boxes

_number = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.floats(-60, 160),  # any; near the photo
                    st.sampled_from([1e7, -1e7, 1e300, -1e300, 0.0, -0.0, 5e-324, 2.0**63]),
                    st.integers(-(10**20), 10**20))
_box = st.tuples(_number, _number, _number, _number)


@FUZZ
@given(box=_box, width=st.integers(1, 80), height=st.integers(1, 80))
def test_any_box_is_cropped_or_refused(box, width, height):
    image = np.zeros((height, width, 3), np.uint8)
    with bounded_memory():
        try:
            out = crops.crop(image, box, size=16)
        except ValueError as err:
            assert str(err).startswith("crop: box"), str(err)
            event("refused")
        else:
            assert out.shape == (16, 16, 3)
            event("cropped")


@FUZZ
@given(boxes=st.lists(_box, min_size=1, max_size=3))
def test_cache_builder_counts_any_label_box(boxes):
    folder = SCRATCH / "photos"
    if not (folder / "1.png").exists():
        folder.mkdir(exist_ok=True)
        from PIL import Image
        Image.new("RGB", (60, 30), (90, 160, 30)).save(folder / "1.png")
    with bounded_memory():
        out, box, skip, note = dataset._crop_one((str(folder), "1.png", tuple(boxes), 1.3, 32))
    assert (out is None) == (skip is not None)
    event("skipped: " + skip.split(":")[0] if skip else "cropped" + (" with a note" if note else ""))


@FUZZ
@given(text=st.one_of(st.text(max_size=40), st.lists(_number, min_size=0, max_size=5).map(
    lambda v: ",".join(str(x) for x in v))))
def test_predict_box_flag_is_parsed_or_refused(text):
    try:
        box = predict.parse_box(text)
    except ValueError as err:
        assert str(err).startswith("--box") and "\n" not in str(err)
        event("refused")
    else:
        assert len(box) == 4 and box[2] > 0 and box[3] > 0
        event("parsed")


# ------------------------------------------------------------- file names

_name = st.text(st.characters(blacklist_categories=("Cs",)), min_size=0, max_size=24)  # UTF-16-encodable


@FUZZ
@given(names=st.lists(st.one_of(_name, st.sampled_from(["..", ".", "../1.png", "a/1.png", "/etc/passwd", "1.png",
                                                        "1.png\x00", "\\..\\x"])), min_size=1, max_size=5))
def test_any_file_names_become_records_or_counted_problems(names):
    folder = SCRATCH / "names"
    folder.mkdir(exist_ok=True)
    (folder / "1.png").touch()
    recs = [Record(n, (1,), ((1.0, 1.0, 5.0, 5.0),)) for n in names]
    svhn.write_digitstruct(folder / svhn.MAT_NAME, recs)
    with bounded_memory():
        try:
            split = svhn.read_split(folder)
        except Exception as err:  # noqa: BLE001
            _outcome(err, folder / svhn.MAT_NAME)
            return
    assert len(split.records) + sum(p.skipped for p in split.problems) >= len(names)
    for r in split.records:  # what is kept is a plain name inside the folder
        assert r.file == Path(r.file).name and r.file not in ("", ".", "..") and (folder / r.file).is_file()
    event(f"{len(split.records)} kept, {len(split.problems)} problems")


# ------------------------------------------------------------- tar archives

_TYPES = {"file": tarfile.REGTYPE, "dir": tarfile.DIRTYPE, "symlink": tarfile.SYMTYPE, "hardlink": tarfile.LNKTYPE,
          "chardev": tarfile.CHRTYPE, "blockdev": tarfile.BLKTYPE, "fifo": tarfile.FIFOTYPE, "contiguous": tarfile.CONTTYPE}
_path = st.one_of(st.sampled_from(["train", "train/1.png", "d", "d/d2", "d/d2/e", "e/x", ".", "..", "../x", "/tmp/x",
                                   "a/../../x", "C:x", "train/../..", "./train/2.png"]),
                  st.text(st.sampled_from("ab./\\:~"), min_size=1, max_size=10))
_member = st.tuples(st.sampled_from(sorted(_TYPES)), _path, _path, st.binary(max_size=64))


def _archive(members, compress: bool) -> bytes | None:
    buf = io.BytesIO()
    try:
        with tarfile.open(fileobj=buf, mode="w:gz" if compress else "w") as tar:
            for kind, name, target, content in members:
                info = tarfile.TarInfo(name)
                info.type = _TYPES[kind]
                info.linkname = target if kind in ("symlink", "hardlink") else ""
                regular = info.type in (tarfile.REGTYPE, tarfile.CONTTYPE)
                info.size = len(content) if regular else 0
                tar.addfile(info, io.BytesIO(content) if regular else None)
    except (ValueError, UnicodeError, tarfile.TarError):
        return None  # a member tarfile itself cannot write
    return buf.getvalue()


@FUZZ
@given(members=st.lists(_member, min_size=1, max_size=6), compress=st.booleans(),
       damage=st.one_of(st.none(), st.lists(_mutation, min_size=1, max_size=3)))
def test_any_archive_is_extracted_safely_or_refused_before_writing(members, compress, damage):
    data = _archive(members, compress)
    if data is None:
        event("not writable by tarfile")
        return
    if damage:
        data = _mutate(data, damage)
    box = Path(tempfile.mkdtemp(dir=SCRATCH))  # box/a.tar(.gz), box/dest/; nothing else may appear
    archive, dest = box / "a.tar.gz", box / "dest"
    archive.write_bytes(data)
    try:
        with bounded_memory():
            try:
                fetch.extract(archive, dest, progress=False)
            except Exception as err:  # noqa: BLE001
                _outcome(err, archive)
                assert list(dest.iterdir()) == []  # refused before anything was written
            else:
                event("extracted")
        assert sorted(p.name for p in box.iterdir()) == ["a.tar.gz", "dest"]
        for p in dest.rglob("*"):  # only plain files and folders, all inside dest
            assert not p.is_symlink() and (p.is_file() or p.is_dir()), p
            assert dest.resolve() in p.resolve().parents
    finally:
        shutil.rmtree(box)
