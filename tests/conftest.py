"""Shared fixtures: paths to the optional real-data folder and small helpers."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("HUBERT_ECG_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))


def shared_path(*parts: str) -> Path:
    """Path inside ../shared/data, or skip the calling test when it is absent."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"real data not available: {path}")
    return path


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


@pytest.fixture
def single_threaded() -> Iterator[None]:
    """One BLAS/OpenMP thread: sklearn's k-means is many times slower on tiny data when 2 CI cores are shared.

    Modules that need it everywhere declare ``pytestmark = pytest.mark.usefixtures("single_threaded")``.
    """
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1):
        yield


def synthetic_12_lead(rng: np.random.Generator, n: int = 2000, fs: float = 500.0) -> np.ndarray:
    """(12, n) mV signal obeying Einthoven and Goldberger, ~1 mV QRS-like spikes."""
    t = np.arange(n) / fs
    beats = sum(np.exp(-(((t - c) / 0.012) ** 2)) for c in np.arange(0.3, t[-1], 0.8))
    lead_i = 0.8 * beats + 0.05 * np.sin(2 * np.pi * 0.3 * t) + 0.01 * rng.standard_normal(n)
    lead_ii = 1.2 * beats + 0.08 * np.sin(2 * np.pi * 1.1 * t) + 0.01 * rng.standard_normal(n)
    chest = np.stack([(k - 2.5) * 0.4 * beats + 0.01 * rng.standard_normal(n) for k in range(6)])
    limb = np.stack(
        [lead_i, lead_ii, lead_ii - lead_i, -(lead_i + lead_ii) / 2, lead_i - lead_ii / 2, lead_ii - lead_i / 2]
    )
    return np.vstack([limb, chest])
