"""Shared test fixtures: where the real SVHN data lives, and tiny things to train on."""

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


def _shared(sub: str) -> Path:
    path = SHARED_DATA / sub
    if not path.exists():
        pytest.skip(f"real SVHN data not found at {path} (it lives in ../shared/data beside the repo)")
    return path


class OneBox:
    """A text detector that finds one box, (40, 20, 30, 30), in any photo (localize.locate's tests)."""
    def __call__(self, image):
        import numpy as np
        return np.array([[40, 20, 30, 30]], float), np.array([0.9])


def numbered_reader(images) -> list:
    """A reader that reads candidate k as str(k), at log P = -1 - k: the first is the surest."""
    return [{"pred": str(k), "confidence": -1.0 - k} for k in range(len(images))]


def fixture_folder(fixtures: Path, folder: Path, n: int) -> list:
    """A format-1 folder of n photos made of the 3 real fixture photos of fixtures/train, repeated
    (1.png, 2.png, ...), with its digitStruct.mat; returns its records."""
    import shutil
    from transcribe import svhn
    folder.mkdir(parents=True, exist_ok=True)
    real = svhn.read_split(fixtures / "train").records
    records = []
    for i in range(n):
        src = real[i % 3]
        shutil.copy(fixtures / "train" / src.file, folder / f"{i + 1}.png")
        records.append(svhn.Record(f"{i + 1}.png", src.digits, src.boxes))
    svhn.write_digitstruct(folder / "digitStruct.mat", records)
    return records


@pytest.fixture
def svhn_fixtures() -> Path:
    """Real digitStruct.mat files (trimmed) with images 1-3 of each split."""
    return _shared("svhn-fixtures")


@pytest.fixture
def svhn_sample() -> Path:
    """2,000 real SVHN training photos in format 1."""
    return _shared("svhn-sample/train")


@pytest.fixture
def svhn_labels() -> Path:
    return _shared("svhn-labels")


@pytest.fixture
def one_thread():
    """Tiny models run fastest on one thread, and the 2-core test machine is shared."""
    import torch
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_cache(tmp_path_factory):
    """80 synthetic photos (seed 0) in a cache: data for commands that train tiny models."""
    from transcribe import dataset, synth
    root = tmp_path_factory.mktemp("synth80")
    synth.generate(root / "train", 80, seed=0)
    return dataset.build_cache(root / "train", out_dir=root / "cache", progress=False)


@pytest.fixture(scope="session")
def postgres():
    """URL of a throwaway PostgreSQL server (tests/pg.py); skips with a reason where none is installed."""
    from pg import start_postgres
    yield from start_postgres()


@pytest.fixture(scope="session")
def tiny_whole_run(tmp_path_factory):
    """A tiny model trained 4 steps on 40 real photos (format 1, 8 held out), with a refusal
    threshold written by hand, exported for the runtime: (run, export folder, photo folder, records)."""
    import json
    import shutil
    import torch
    from transcribe import dataset, export, model, runs, svhn, training
    sample = _shared("svhn-sample/train")
    pytest.importorskip("onnxruntime", reason="the 'whole' extra is not installed")
    root = tmp_path_factory.mktemp("wholerun")
    records = svhn.read_split(sample).records[:40]
    photos = root / "photos"
    photos.mkdir()
    for r in records:
        shutil.copy(sample / r.file, photos / r.file)
    svhn.write_digitstruct(photos / "digitStruct.mat", records)
    data_cfg = dataset.DataConfig(train=(str(photos),), val_size=8, seed=0, cache_dir=str(root / "cache"))
    train_cfg = training.TrainConfig(out=str(root / "run"), preset="tiny", steps=4, batch_size=16, lr=0.01,
                                     eval_every=4, eval_limit=0, progress=False, hist_every=0, device="cpu")
    threads = torch.get_num_threads()
    try:
        run = Path(training.train(model.PRESETS["tiny"], data_cfg, train_cfg))
    finally:
        torch.set_num_threads(threads)
    step = runs.read_checkpoint(run / "ckpt-best.pt")["step"]
    (run / "threshold.json").write_text(json.dumps({"threshold": -3.0, "target": 0.98, "checkpoint": "best",
                                                    "step": step, "chosen_on": "val"}))
    out = root / "export"
    export.export_run(run, out, formats=("onnx", "torchscript"), say=lambda *a: None)
    return run, out, photos, records


@pytest.fixture(autouse=True, scope="session")
def precision_cache(tmp_path_factory):
    """`--amp auto` caches its measured choice (precision.py): in a folder of this session, not
    in the developer's ~/.cache (the variable reaches torchrun's processes too)."""
    from transcribe import precision
    folder = tmp_path_factory.mktemp("precision-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TRANSCRIBE_CACHE_DIR", str(folder))
        mp.setattr(precision, "CACHE_DIR", folder)
        yield folder
