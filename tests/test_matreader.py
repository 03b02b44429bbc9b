"""matreader.py, the fast digitStruct.mat reader: the same entries as h5py on real and written
files, a clean fallback to h5py on layouts it does not know, and no crash on damaged files."""

import numpy as np

from transcribe import svhn
from test_svhn import _records
from transcribe.svhn import DataError, Record


def _no_fallback(*args):
    raise AssertionError("the HDF5 parser fell back to h5py")


def test_fast_parser_matches_h5py_on_real_files(svhn_fixtures, svhn_sample, monkeypatch):
    paths = [svhn_fixtures / s / "digitStruct.mat" for s in ("train", "test", "extra")]
    paths.append(svhn_sample / "digitStruct.mat")
    h5py_reader = svhn._read_entries_h5py
    for path in paths:
        monkeypatch.setattr(svhn, "_read_entries_h5py", _no_fallback)
        fast = svhn.read_entries(path)  # MATLAB's compact layout and the sample's contiguous one
        monkeypatch.setattr(svhn, "_read_entries_h5py", h5py_reader)
        monkeypatch.setattr(svhn, "_FAST_PARSER", False)
        assert fast == svhn.read_entries(path), path
        monkeypatch.setattr(svhn, "_FAST_PARSER", True)


def test_fast_parser_reads_written_files(tmp_path, monkeypatch):
    """A few hundred records of 1-5 digits (thousands of links in #refs#, short base-36 names:
    see svhn.WRITE_CACHE_BYTES), read back the same by the mmap reader and by h5py."""
    import h5py

    path = tmp_path / "digitStruct.mat"
    rng = np.random.default_rng(0)
    recs = _records() + [Record("12.png", (), ())]  # incl. MATLAB's empty [] fields
    for i in range(400):
        k = int(rng.integers(1, 6))
        boxes = tuple(tuple(float(v) for v in rng.integers(0, 500, 4)) for _ in range(k))
        recs.append(Record(f"{i + 100}.png", tuple(int(d) for d in rng.integers(0, 10, k)), boxes))
    svhn.write_digitstruct(path, recs)
    monkeypatch.setattr(svhn, "_read_entries_h5py", _no_fallback)
    assert svhn.read_digitstruct(path) == recs
    monkeypatch.undo()
    monkeypatch.setattr(svhn, "_FAST_PARSER", False)
    assert svhn.read_digitstruct(path) == recs
    with h5py.File(path, "r") as f:  # one #refs# group, as MATLAB writes it
        names = list(f["#refs#"])
        assert len(names) == len(set(names)) > 2 * len(recs)
        assert max(len(n) for n in names) <= 3 and all(n.isalnum() for n in names)


def test_ref_names_are_unique_and_short():
    names = [svhn._ref_name(i) for i in range(36**3 + 10)]
    assert len(set(names)) == len(names) and names[:3] == ["0", "1", "2"] and names[36] == "10"
    assert len(svhn._ref_name(36**5 - 1)) == 5  # with its NUL, 8 heap bytes, to 60 million links


def test_unknown_layout_falls_back_to_h5py(tmp_path):
    """Chunked, compressed datasets in new-style (v2) headers: the parser declines, h5py reads."""
    import h5py

    path = tmp_path / "digitStruct.mat"
    with h5py.File(path, "w", libver="latest") as f:
        name = f.create_dataset("n0", data=np.frombuffer("7.png".encode("utf-16-le"), "<u2").reshape(-1, 1),
                                chunks=True, compression="gzip")
        box = f.create_group("b0")
        for key, value in zip(("height", "left", "top", "width", "label"), (9.0, 1.0, 2.0, 3.0, 10.0)):
            box.create_dataset(key, data=np.array([[value]]), chunks=True, compression="gzip")
        f.create_dataset("digitStruct/name", data=np.array([[name.ref]], dtype=h5py.ref_dtype))
        f.create_dataset("digitStruct/bbox", data=np.array([[box.ref]], dtype=h5py.ref_dtype))
    assert svhn.read_digitstruct(path) == [Record("7.png", (0,), ((1.0, 2.0, 3.0, 9.0),))]


def test_damaged_files_give_entries_or_a_clear_error_never_a_crash(tmp_path):
    """Fuzz: random bytes of a written file overwritten, 150 times (seeded). The fast reader may
    decline (then h5py reads or names the problem); read_entries returns entries or raises
    DataError naming the file, nothing else."""
    good = tmp_path / "good.mat"
    svhn.write_digitstruct(good, _records())
    data = good.read_bytes()
    rng = np.random.default_rng(0)
    bad = tmp_path / "digitStruct.mat"
    outcomes = {"entries": 0, "DataError": 0}
    for _ in range(150):
        mutated = bytearray(data)
        for pos in rng.integers(512, len(data), rng.integers(1, 9)):  # past MATLAB's 512-byte header
            mutated[pos] = int(rng.integers(0, 256))
        bad.write_bytes(bytes(mutated))
        try:
            entries = svhn.read_entries(bad)
        except DataError as e:
            assert str(bad) in str(e)
            outcomes["DataError"] += 1
        else:
            assert isinstance(entries, list)
            outcomes["entries"] += 1
    assert outcomes["entries"] > 0  # most single-byte damage leaves the file readable
