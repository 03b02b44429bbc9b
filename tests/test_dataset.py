"""dataset.py: the HDF5 cache (contents, problems, reuse/rebuild, strict) and batches."""

import json
import os
from dataclasses import replace

import h5py
import numpy as np
import pytest
import torch

from transcribe import svhn
from transcribe.crops import crop_number
from transcribe.dataset import (CACHE_VERSION, CacheConfig, DataConfig, build_cache, epoch_permutation,
                                evaluation_cache, load_cache, load_splits, prepare_batch)


def _photo(width, height, seed):
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    image = np.stack([x * 3 % 256, y * 5 % 256, rng.integers(0, 256, (height, width))], -1)
    return image.astype(np.uint8)


def make_folder(root, n_good=3, missing=True, corrupt=True, outside=True):
    """A tiny format-1 folder: n_good photos, plus a missing one, a corrupt PNG, a box past the border."""
    from PIL import Image
    root.mkdir(parents=True, exist_ok=True)
    records = []
    for i in range(1, n_good + 1):
        Image.fromarray(_photo(40 + 10 * i, 30, i)).save(root / f"{i}.png")
        digits = tuple((i + k) % 10 for k in range(i))  # lengths 1, 2, 3, ...
        boxes = tuple((5.0 + 8 * k, 4.0, 8.0, 20.0) for k in range(i))
        records.append(svhn.Record(file=f"{i}.png", digits=digits, boxes=boxes))
    if outside:
        Image.fromarray(_photo(30, 30, 9)).save(root / "outside.png")
        records.append(svhn.Record(file="outside.png", digits=(7,), boxes=((-3.0, 20.0, 10.0, 15.0),)))
    if missing:
        records.append(svhn.Record(file="missing.png", digits=(1, 2), boxes=((1.0, 1.0, 5.0, 5.0), (6.0, 1.0, 5.0, 5.0))))
    if corrupt:
        (root / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not a png")
        records.append(svhn.Record(file="corrupt.png", digits=(3,), boxes=((1.0, 1.0, 5.0, 5.0),)))
    svhn.write_digitstruct(root / "digitStruct.mat", records)
    return root, records


def test_cache_contents_and_problems(tmp_path):
    folder, records = make_folder(tmp_path / "toy" / "train")
    path = build_cache(folder, CacheConfig(widen=1.3, size=32), out_dir=tmp_path / "cache", progress=False)
    cache = load_cache(path)
    assert list(cache.files) == ["1.png", "2.png", "3.png", "outside.png"]  # source order kept
    assert cache.images.shape == (4, 32, 32, 3) and cache.images.dtype == np.uint8
    assert cache.lengths.tolist() == [1, 2, 3, 1]
    assert cache.digits[2].tolist() == [3, 4, 5, -1, -1] and cache.digits[3].tolist() == [7, -1, -1, -1, -1]
    # Row 1 is exactly the crops.py recipe applied to photo 2.png.
    expected, box = crop_number(svhn.load_image(folder / "2.png"), records[1].boxes, 1.3, 32)
    np.testing.assert_array_equal(cache.images[1], expected)
    np.testing.assert_allclose(cache.boxes[1], box, rtol=1e-6)
    assert cache.text(2) == "345" and cache.path(0) == str(folder.resolve() / "1.png")

    s = cache.summary
    assert (s["records"], s["usable"], s["skipped"]) == (6, 4, 2)
    by_file = {p["file"]: p for p in s["problems"]}
    assert by_file["missing.png"]["skipped"] and by_file["corrupt.png"]["skipped"]
    assert by_file["corrupt.png"]["problem"].startswith("unreadable image")
    assert by_file["missing.png"]["problem"].startswith("image file missing")
    assert s["by_kind"] == {"image file missing": 1, "unreadable image": 1, "box outside the image": 1}
    assert not by_file["outside.png"]["skipped"]                        # noted, kept, padded
    assert set(by_file) == {"missing.png", "corrupt.png", "outside.png"}
    with h5py.File(path) as f:
        params = json.loads(f.attrs["parameters"])
    assert params["widen"] == 1.3 and params["size"] == 32 and params["cache_version"] == CACHE_VERSION
    assert params["folder"] == str(folder.resolve())
    assert params["mat_size"] == (folder / "digitStruct.mat").stat().st_size


def test_strict_makes_any_problem_an_error(tmp_path):
    folder, _ = make_folder(tmp_path / "a", missing=False, outside=False)  # only the corrupt PNG
    with pytest.raises(svhn.DataError, match="corrupt.png"):
        build_cache(folder, out_dir=tmp_path / "cache", strict=True, progress=False)
    folder, _ = make_folder(tmp_path / "b", missing=False, corrupt=False)  # only a box past the border
    with pytest.raises(svhn.DataError, match="outside.png"):
        build_cache(folder, out_dir=tmp_path / "cache", strict=True, progress=False)
    # A cache built non-strict and then asked for strictly still refuses (its problems are stored).
    build_cache(folder, out_dir=tmp_path / "cache", progress=False)
    with pytest.raises(svhn.DataError, match="outside.png"):
        build_cache(folder, out_dir=tmp_path / "cache", strict=True, progress=False)
    assert not list((tmp_path / "cache").glob(".*tmp*"))  # failed builds leave no temp files


def test_cache_reused_when_parameters_match_rebuilt_when_not(tmp_path, capsys):
    folder, _ = make_folder(tmp_path / "toy" / "train", missing=False, corrupt=False)
    out = tmp_path / "cache"
    first = build_cache(folder, CacheConfig(widen=1.3), out_dir=out)
    stamp = first.stat().st_mtime_ns
    assert build_cache(folder, CacheConfig(widen=1.3), out_dir=out) == first
    assert "reusing cache" in capsys.readouterr().err
    assert first.stat().st_mtime_ns == stamp

    other = build_cache(folder, CacheConfig(widen=1.5), out_dir=out)  # new widen: another cache
    assert other != first and "reusing" not in capsys.readouterr().err
    assert load_cache(other).summary and not np.array_equal(load_cache(other).images, load_cache(first).images)

    # Same file name, stale source: digitStruct.mat touched -> rebuilt in place.
    mat = folder / "digitStruct.mat"
    os.utime(mat, ns=(mat.stat().st_atime_ns, mat.stat().st_mtime_ns + 10**9))
    assert build_cache(folder, CacheConfig(widen=1.3), out_dir=out) == first
    assert "rebuilding cache" in capsys.readouterr().err
    assert first.stat().st_mtime_ns != stamp


def test_worker_pool_gives_the_same_cache(tmp_path):
    folder, _ = make_folder(tmp_path / "toy" / "train")
    serial = load_cache(build_cache(folder, out_dir=tmp_path / "c0", progress=False, workers=0))
    pooled = load_cache(build_cache(folder, out_dir=tmp_path / "c2", progress=False, workers=2))
    np.testing.assert_array_equal(serial.images, pooled.images)
    assert serial.summary["problems"] == pooled.summary["problems"]


def test_real_fixtures_folder(svhn_fixtures, tmp_path):
    cache = evaluation_cache(svhn_fixtures / "train", DataConfig(cache_dir=str(tmp_path)), progress=False)
    assert len(cache) == 3 and cache.text(0) == "19" and cache.text(1) == "23"
    s = cache.summary
    assert s["usable"] == 3 and s["records"] > 3
    missing = [p for p in s["problems"] if p["skipped"] and p["file"] not in ("1.png", "2.png", "3.png")]
    assert len(missing) == s["records"] - 3  # every absent photo is reported, none silently dropped
    # 1.png's number box (246, 77)-(419, 300) widened 1.3 about its centre.
    np.testing.assert_allclose(cache.boxes[0], [246 - 0.15 * 173, 77 - 0.15 * 223, 1.3 * 173, 1.3 * 223], rtol=1e-5)


def test_load_splits_deterministic_and_disjoint(tmp_path):
    a, _ = make_folder(tmp_path / "p" / "a", n_good=5, missing=False, corrupt=False, outside=False)
    b, _ = make_folder(tmp_path / "p" / "b", n_good=5, missing=False, corrupt=False, outside=False)
    cfg = DataConfig(train=(str(a), str(b)), val_fraction=0.3, seed=1, size=16, cache_dir=str(tmp_path / "c"))
    train, val = load_splits(cfg, progress=False)
    assert (len(train), len(val)) == (7, 3)
    names = lambda c: {c.path(i) for i in range(len(c))}
    assert names(train).isdisjoint(names(val)) and len(names(train) | names(val)) == 10
    train2, val2 = load_splits(cfg, progress=False)
    assert names(val2) == names(val) and np.array_equal(train2.images, train.images)
    seeds = {frozenset(names(load_splits(replace(cfg, seed=s), progress=False)[1])) for s in range(4)}
    assert len(seeds) > 1  # the seed chooses the hold-out
    _, val5 = load_splits(replace(cfg, val_size=5), progress=False)
    assert len(val5) == 5  # val_size overrides the fraction
    # train_size: nested subsets of the training side, validation untouched.
    small, val_s = load_splits(replace(cfg, train_size=3), progress=False)
    larger, _ = load_splits(replace(cfg, train_size=5), progress=False)
    assert len(small) == 3 and names(small) < names(larger) < names(train) and names(val_s) == names(val)
    with pytest.raises(ValueError, match="train_size 8"):
        load_splits(replace(cfg, train_size=8), progress=False)
    # mix: extra photos join the training side only; validation is the same real photos.
    m, _ = make_folder(tmp_path / "p" / "m", n_good=4, missing=False, corrupt=False, outside=False)
    mixed, val_m = load_splits(replace(cfg, mix=(str(m),)), progress=False)
    assert names(val_m) == names(val) and names(mixed) == names(train) | {str(m / f"{i}.png") for i in range(1, 5)}
    mixed2, _ = load_splits(replace(cfg, mix=(str(m),), mix_size=2), progress=False)
    assert len(mixed2) == len(train) + 2 and names(train) < names(mixed2)
    with pytest.raises(ValueError, match="mix_size 9"):
        load_splits(replace(cfg, mix=(str(m),), mix_size=9), progress=False)
    # Rows keep their labels through concatenation and splitting.
    for c in (train, val, mixed):
        for i in range(len(c)):
            assert c.lengths[i] == int(os.path.basename(c.path(i)).split(".")[0])


def test_epoch_permutation_is_a_pure_permutation():
    p = epoch_permutation(100, seed=3, epoch=0)
    assert p.dtype == torch.int64 and sorted(p.tolist()) == list(range(100))
    assert torch.equal(p, epoch_permutation(100, seed=3, epoch=0))
    assert not torch.equal(p, epoch_permutation(100, seed=3, epoch=1))
    assert not torch.equal(p, epoch_permutation(100, seed=4, epoch=0))


def test_prepare_batch_shapes_mean_and_centre_crop():
    images = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (6, 64, 64, 3), dtype=np.uint8))
    x = prepare_batch(images, crop=54, train=False)
    assert x.shape == (6, 3, 54, 54) and x.dtype == torch.float32
    assert x.mean(dim=(1, 2, 3)).abs().max() < 1e-6  # each image's mean removed
    assert x.abs().max() <= 1.0
    centre = images[:, 5:59, 5:59].permute(0, 3, 1, 2).float()
    expected = (centre - centre.mean(dim=(1, 2, 3), keepdim=True)) / 255
    assert torch.allclose(x, expected, atol=1e-6)


def test_prepare_batch_random_crops_are_windows_and_reproducible():
    images = torch.from_numpy(np.random.default_rng(1).integers(0, 256, (8, 64, 64, 3), dtype=np.uint8))
    x1 = prepare_batch(images, 54, train=True, generator=torch.Generator().manual_seed(7))
    x2 = prepare_batch(images, 54, train=True, generator=torch.Generator().manual_seed(7))
    x3 = prepare_batch(images, 54, train=True, generator=torch.Generator().manual_seed(8))
    assert torch.equal(x1, x2) and not torch.equal(x1, x3)
    assert x1.mean(dim=(1, 2, 3)).abs().max() < 1e-6
    offsets = []
    for b in range(8):  # each output is one 54x54 window of its own image, mean removed
        found = [(oy, ox) for oy in range(11) for ox in range(11)
                 if torch.allclose(x1[b], _window(images[b], oy, ox), atol=1e-6)]
        assert len(found) == 1
        offsets.append(found[0])
    assert len(set(offsets)) > 1  # offsets differ across the batch


def _window(image, oy, ox):
    w = image[oy:oy + 54, ox:ox + 54].permute(2, 0, 1).float()
    return (w - w.mean()) / 255


def _slow_prepare(images, crop, offsets):
    """The straightforward prepare_batch, one image at a time: float first, then crop, mean, scale."""
    out = []
    for image, (oy, ox) in zip(images, offsets.tolist()):
        x = image.float()[oy:oy + crop, ox:ox + crop].permute(2, 0, 1)  # (3, crop, crop)
        out.append((x - x.mean()) / 255)
    return torch.stack(out)


def test_prepare_batch_equals_the_slow_reference_bit_for_bit():
    images = torch.from_numpy(np.random.default_rng(2).integers(0, 256, (40, 64, 64, 3), dtype=np.uint8))
    index = torch.from_numpy(np.random.default_rng(3).integers(0, 40, 32))
    for seed in (0, 1, 2):
        x = prepare_batch(images, 54, train=True, generator=torch.Generator().manual_seed(seed), index=index)
        offsets = torch.randint(0, 11, (32, 2), generator=torch.Generator().manual_seed(seed))  # the same draw
        assert torch.equal(x, _slow_prepare(images[index], 54, offsets))
        assert x.is_contiguous(memory_format=torch.channels_last)
        # without index: the same crops from the gathered rows
        y = prepare_batch(images[index], 54, train=True, generator=torch.Generator().manual_seed(seed))
        assert torch.equal(x, y)
    centre = prepare_batch(images[5:25], 54, train=False)  # a slice: a view with a storage offset
    assert torch.equal(centre, _slow_prepare(images[5:25], 54, torch.full((20, 2), 5)))
    assert torch.equal(prepare_batch(images[:3].numpy(), 64, train=True),  # crop = size: the whole image
                       _slow_prepare(images[:3], 64, torch.zeros(3, 2, dtype=torch.int64)))
