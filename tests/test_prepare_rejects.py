"""`prepare` turns bad records into rejects, but a bug in the package fails loudly (issue 10 §3)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from hubert_ecg import reading as reading_module
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

    monkeypatch.setattr(reading_module, "preprocess_signal", buggy)
    with pytest.raises(ZeroDivisionError, match="planted bug"):
        prepare_store([data], tmp_path / "store", read_kwargs={"fs": 500.0}, progress=False, workers=1)


def test_a_plain_value_error_from_our_code_also_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A plain ValueError from our own code (e.g. a numpy shape mismatch) is a bug, not a bad record."""
    data = _records(tmp_path / "data")

    def buggy(*args: object, **kwargs: object) -> None:
        raise ValueError("operands could not be broadcast together")

    monkeypatch.setattr(reading_module, "preprocess_signal", buggy)
    with pytest.raises(ValueError, match="broadcast"):
        prepare_store([data], tmp_path / "store", read_kwargs={"fs": 500.0}, progress=False, workers=1)


@pytest.mark.parametrize("error", [AttributeError("'NoneType' object has no attribute 'T'"), TypeError("bad call")])
def test_a_bug_in_a_reader_is_not_swallowed_as_a_reject(
    error: Exception, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The reader dispatch turns library errors into one-line RecordErrors, but not programming errors."""
    from hubert_ecg.io import arrays, read_record

    data = _records(tmp_path / "data")

    def buggy(*args: object, **kwargs: object) -> None:
        raise error

    monkeypatch.setattr(arrays, "read_numpy", buggy)
    with pytest.raises(type(error)):
        read_record(data / "r0.npy", fs=500.0)
    with pytest.raises(type(error)):
        prepare_store([data], tmp_path / "store", read_kwargs={"fs": 500.0}, progress=False, workers=1)


def test_a_library_error_on_a_damaged_file_is_still_a_one_line_record_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import struct

    from hubert_ecg.io import arrays, read_record

    data = _records(tmp_path / "data")

    def damaged(*args: object, **kwargs: object) -> None:
        raise struct.error("unpack requires a buffer of 4 bytes")

    monkeypatch.setattr(arrays, "read_numpy", damaged)
    with pytest.raises(RecordError, match=r"r0\.npy: cannot read numpy file: error: unpack requires"):
        read_record(data / "r0.npy", fs=500.0)


def test_mat_v73_is_recognised_by_its_hdf5_signature_behind_the_user_block(tmp_path: Path) -> None:
    from hubert_ecg.io.arrays import _is_hdf5

    plain, matlab, other = tmp_path / "a.h5", tmp_path / "b.mat", tmp_path / "c.mat"
    signature = b"\x89HDF\r\n\x1a\n"
    plain.write_bytes(signature + bytes(100))
    matlab.write_bytes(b"MATLAB 7.3 MAT-file".ljust(512, b" ") + signature + bytes(100))
    other.write_bytes(b"MATLAB 5.0 MAT-file".ljust(1024, b" "))
    assert _is_hdf5(plain) and _is_hdf5(matlab) and not _is_hdf5(other)
    assert not _is_hdf5(tmp_path / "missing.mat")
