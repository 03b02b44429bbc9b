"""`transcribe data`: the summary of a folder, strict mode, errors without tracebacks, svhn/synth wiring."""

import numpy as np
from PIL import Image

from transcribe import fetch, svhn
from transcribe.cli import main


def data(*args):
    return main(["data", *map(str, args)])


def toy_folder(root, n=3):
    """n usable photos, one missing, one corrupt PNG."""
    root.mkdir(parents=True)
    records = []
    for i in range(1, n + 1):
        Image.fromarray(np.full((30, 40, 3), 20 * i, np.uint8)).save(root / f"{i}.png")
        records.append(svhn.Record(f"{i}.png", (i % 10,) * min(i, 5), ((2.0, 2.0, 10.0, 20.0),) * min(i, 5)))
    (root / "bad.png").write_bytes(b"not a png at all")
    records.append(svhn.Record("bad.png", (4,), ((2.0, 2.0, 10.0, 20.0),)))
    records.append(svhn.Record("gone.png", (5, 6), ((2.0, 2.0, 10.0, 20.0), (12.0, 2.0, 10.0, 20.0))))
    svhn.write_digitstruct(root / "digitStruct.mat", records)
    return root


def test_fixtures_folder_summary(svhn_fixtures, tmp_path, capsys):
    folder = svhn_fixtures / "train"
    split = svhn.read_split(folder)
    n_missing = sum(p.kind == "image file missing" for p in split.problems)
    assert n_missing > 30  # the trimmed .mat names ~40 photos, 3 are present
    assert data(folder, "--cache-dir", tmp_path) == 0
    out = capsys.readouterr().out
    assert f"{3 + n_missing} in digitStruct.mat: 3 usable, {n_missing} skipped" in out
    assert f"{n_missing}  image file missing (skipped): 4.png" in out
    assert "2       3  ####" in out  # length histogram: 1.png "19", 2.png "23", 3.png "25" have 2 digits
    assert "validation 3 train / 0 val" in out
    # Second run reuses the cache and says so.
    assert data(folder, "--cache-dir", tmp_path) == 0
    captured = capsys.readouterr()
    assert "reusing cache" in captured.err and "(reused; built in" in captured.out


def test_toy_folder_counts_each_kind(tmp_path, capsys):
    folder = toy_folder(tmp_path / "toy", n=5)
    assert data(folder, "--cache-dir", tmp_path / "c", "--val-size", 2, "--crop-widen", 1.5) == 0
    out = capsys.readouterr().out
    assert "7 in digitStruct.mat: 5 usable, 2 skipped" in out
    assert "image file missing (skipped): gone.png" in out
    assert "unreadable image (skipped): bad.png" in out
    assert "validation 3 train / 2 val  (val_size 2" in out
    assert list((tmp_path / "c").glob("*-w1.5-s64-*.h5"))  # --crop-widen reached the cache


def test_strict_and_bad_targets_exit_nonzero_without_traceback(svhn_fixtures, tmp_path, capsys):
    assert data(svhn_fixtures / "train", "--cache-dir", tmp_path, "--strict") == 1
    err = capsys.readouterr().err
    assert "error: " in err and "4.png: image file missing" in err and "Traceback" not in err
    assert not list(tmp_path.glob("*.h5"))  # strict build failed: nothing half-written left
    assert data(tmp_path / "nowhere") == 2
    assert "nowhere: not 'svhn', 'synth', a folder or a .h5 cache" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert data(tmp_path / "empty", "--cache-dir", tmp_path) == 1  # no digitStruct.mat
    assert "digitStruct.mat: missing" in capsys.readouterr().err


def test_h5_target_prints_stored_summary(tmp_path, capsys):
    folder = toy_folder(tmp_path / "toy")
    assert data(folder, "--cache-dir", tmp_path / "c") == 0
    capsys.readouterr()
    (cache,) = (tmp_path / "c").glob("*.h5")
    assert data(cache) == 0
    assert "5 in digitStruct.mat: 3 usable, 2 skipped" in capsys.readouterr().out


def test_synth_writes_a_folder_the_cache_reads(tmp_path, capsys):
    assert data("synth") == 2 and "--photos" in capsys.readouterr().err
    out = tmp_path / "synth" / "train"
    assert data("synth", "--photos", 3, "--out", out, "--synth-seed", 1) == 0
    assert "wrote 3 synthetic photos" in capsys.readouterr().out
    assert data(out, "--cache-dir", tmp_path / "c") == 0
    assert "3 in digitStruct.mat: 3 usable, 0 skipped" in capsys.readouterr().out


def test_svhn_fetches_then_caches_each_split(tmp_path, capsys, monkeypatch):
    calls = []

    def fake_fetch(root, splits):  # stands in for the download: lays out format-1 folders
        calls.append((str(root), list(splits)))
        for s in splits:
            toy_folder(root / s, n=2)

    monkeypatch.setattr(fetch, "fetch_svhn", fake_fetch)
    root = tmp_path / "svhn"
    assert data("svhn", "--root", root, "--splits", "train", "test", "--cache-dir", tmp_path / "c") == 0
    assert calls == [(str(root), ["train", "test"])]
    out = capsys.readouterr().out
    assert out.count("4 in digitStruct.mat: 2 usable, 2 skipped") == 2
    assert len(list((tmp_path / "c").glob("svhn-*.h5"))) == 2

    def failing_fetch(root, splits):
        raise svhn.DataError(f"{root}/train.tar.gz: truncated gzip stream")

    monkeypatch.setattr(fetch, "fetch_svhn", failing_fetch)
    assert data("svhn", "--root", root) == 1
    assert "train.tar.gz: truncated gzip stream" in capsys.readouterr().err


def test_help_does_not_import_torch():
    import subprocess
    import sys
    code = ("import sys; from transcribe.cli import main\n"
            "try:\n    main(['data', '--help'])\nexcept SystemExit:\n    pass\n"
            "assert 'torch' not in sys.modules, 'torch imported'\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "svhn|synth|FOLDER|CACHE.h5" in result.stdout
