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
