"""`prepare` turns bad records into rejects, but a bug in the package fails loudly (issue 10 §3)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from hubert_ecg import store as store_module
from hubert_ecg.io.record import RecordError
from hubert_ecg.preprocess import PreprocessError
from hubert_ecg.store import REJECTED_ERRORS, prepare_store


def _records(folder: Path, n: int = 3) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        np.save(folder / f"r{i}.npy", rng.standard_normal((12, 5000)).astype(np.float32) * 0.1)
    return folder


def test_only_record_and_preprocessing_errors_are_rejects() -> None:
    assert set(REJECTED_ERRORS) == {RecordError, PreprocessError}


def test_a_damaged_record_is_a_reject_and_the_rest_is_stored(tmp_path: Path) -> None:
    data = _records(tmp_path / "data")
    (data / "broken.npy").write_bytes(b"not a numpy file")
    result = prepare_store([data], tmp_path / "store", read_kwargs={"fs": 500.0}, progress=False)
    rejects = (tmp_path / "store" / "rejects.csv").read_text()
    assert "broken" in rejects and result is not None


def test_a_bug_in_the_package_is_not_swallowed_as_a_reject(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = _records(tmp_path / "data")

    def buggy(*args: object, **kwargs: object) -> None:
        raise ZeroDivisionError("planted bug")

    monkeypatch.setattr(store_module, "preprocess_signal", buggy)
    with pytest.raises(ZeroDivisionError, match="planted bug"):
        prepare_store([data], tmp_path / "store", read_kwargs={"fs": 500.0}, progress=False, workers=1)


def test_a_plain_value_error_from_our_code_also_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A plain ValueError from our own code (e.g. a numpy shape mismatch) is a bug, not a bad record."""
    data = _records(tmp_path / "data")

    def buggy(*args: object, **kwargs: object) -> None:
        raise ValueError("operands could not be broadcast together")

    monkeypatch.setattr(store_module, "preprocess_signal", buggy)
    with pytest.raises(ValueError, match="broadcast"):
        prepare_store([data], tmp_path / "store", read_kwargs={"fs": 500.0}, progress=False, workers=1)
