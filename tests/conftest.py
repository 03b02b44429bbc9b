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
