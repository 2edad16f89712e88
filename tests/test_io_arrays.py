"""NumPy .npy/.npz and bare MATLAB .mat readers."""

from __future__ import annotations

import zipfile
from pathlib import Path

import h5py
import numpy as np
import pytest
import scipy.io

from conftest import synthetic_12_lead
from hubert_ecg.io import STANDARD_LEADS, RecordError, read_record


def test_npy_reference_layout_and_transposed(tmp_path: Path, rng: np.random.Generator) -> None:
    signal = synthetic_12_lead(rng).astype(np.float32)
    np.save(tmp_path / "leads_first.npy", signal)
    np.save(tmp_path / "time_first.npy", signal.T)
    for name in ("leads_first.npy", "time_first.npy"):
        # A .npy states no rate: never assumed (not even the reference's 500 Hz); the message names the flag.
        with pytest.raises(
            RecordError,
            match=rf"{name[:-4]}\.npy: sampling rate unknown: .*pass --fs HZ or a sidecar "
            rf"{name[:-4]}\.json",
        ):
            read_record(tmp_path / name)
        record = read_record(tmp_path / name, fs=500)
        np.testing.assert_array_equal(record.signal, signal)
        assert record.fs == 500.0
        assert record.units == "unknown"  # reference files are scaled, not calibrated
        assert record.record_id == Path(name).stem
    record = read_record(tmp_path / "leads_first.npy", fs=100, units="uV")
    assert record.fs == 100.0 and record.units == "mV"
    np.testing.assert_allclose(record.signal, signal / 1000, rtol=1e-6)


def test_npz_with_fs_lead_names_and_units(tmp_path: Path, rng: np.random.Generator) -> None:
    signal = synthetic_12_lead(rng, 800)
    order = rng.permutation(12)
    names = np.array([STANDARD_LEADS[i].lower() for i in order])
    np.savez_compressed(
        tmp_path / "r.npz", ecg=(signal[order] * 1000).T, fs=np.float64(250), lead_names=names, units=np.array("uV")
    )
    record = read_record(tmp_path / "r.npz")
    assert record.fs == 250.0 and record.units == "mV"
    np.testing.assert_allclose(record.signal, signal, rtol=1e-6, atol=1e-6)
    x = record.signal.astype(np.float64)
    assert np.abs(x[2] - (x[1] - x[0])).max() < 1e-5


def test_numpy_errors(tmp_path: Path, rng: np.random.Generator) -> None:
    signal = synthetic_12_lead(rng, 500).astype(np.float32)
    np.save(tmp_path / "eleven.npy", signal[:11])
    with pytest.raises(
        RecordError, match=r"eleven\.npy: wrong lead count: expected 12 leads on one axis, got shape \(11, 500\)$"
    ):
        read_record(tmp_path / "eleven.npy")
    np.save(tmp_path / "zero.npy", np.zeros((12, 0), np.float32))
    with pytest.raises(RecordError, match=r"zero\.npy: zero-length signal"):
        read_record(tmp_path / "zero.npy")
    np.save(tmp_path / "nan.npy", np.full((12, 100), np.nan, np.float32))
    with pytest.raises(RecordError, match=r"nan\.npy: no finite samples \(NaN/inf everywhere\)$"):
        read_record(tmp_path / "nan.npy", fs=500)
    inf = signal.copy()
    inf[3, :5] = np.inf
    record = read_record(_save(tmp_path / "inf.npy", inf), fs=500)
    assert np.isnan(record.signal[3, :5]).all() and "5 infinite samples replaced by NaN" in record.meta["warnings"]

    np.save(tmp_path / "cut.npy", signal)
    (tmp_path / "cut.npy").write_bytes((tmp_path / "cut.npy").read_bytes()[:1000])
    with pytest.raises(RecordError, match=r"cut\.npy: cannot read NumPy file"):
        read_record(tmp_path / "cut.npy")
    np.savez(tmp_path / "cut.npz", signal=signal)
    (tmp_path / "cut.npz").write_bytes((tmp_path / "cut.npz").read_bytes()[:3000])
    with pytest.raises(RecordError, match=r"cut\.npz: cannot read NumPy file") as info:
        read_record(tmp_path / "cut.npz")
    assert "\n" not in str(info.value)
    with zipfile.ZipFile(tmp_path / "other.npz", "w") as archive:
        archive.writestr("notes.txt", "hello")
    with pytest.raises(RecordError, match=r"other\.npz: "):
        read_record(tmp_path / "other.npz")


def _save(path: Path, array: np.ndarray) -> Path:
    np.save(path, array)
    return path


def test_bare_mat_val_needs_fs(tmp_path: Path, rng: np.random.Generator) -> None:
    counts = np.round(synthetic_12_lead(rng, 1000) * 1000).astype(np.int16)
    scipy.io.savemat(tmp_path / "A.mat", {"val": counts})  # v5, no .hea beside it
    with pytest.raises(RecordError, match=r"A\.mat: sampling rate unknown"):
        read_record(tmp_path / "A.mat")
    record = read_record(tmp_path / "A.mat", fs=500, units="uV")
    np.testing.assert_allclose(record.signal, counts / 1000.0, atol=1e-7)
    x = record.signal.astype(np.float64)
    assert np.abs(x[2] - (x[1] - x[0])).max() <= 3e-3 + 1e-7  # 1 uV counts, three roundings
    scipy.io.savemat(tmp_path / "B.mat", {"val": counts, "fs": 250.0}, format="4")
    assert read_record(tmp_path / "B.mat").fs == 250.0
    assert read_record(tmp_path / "B.mat").units == "unknown"


def write_mat73(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """A MATLAB v7.3 file: 512-byte MATLAB user block, then HDF5 (column-major, so transposed)."""
    with h5py.File(path, "w", userblock_size=512) as handle:
        for name, value in arrays.items():
            handle[name] = np.asarray(value).T
    text = b"MATLAB 7.3 MAT-file, written by a test. HDF5 schema 1.00 .".ljust(116, b" ")
    with open(path, "r+b") as handle:
        handle.write(text + b"\x00" * 8 + b"\x00\x02" + b"IM")


def test_mat_v73_is_read_through_hdf5(tmp_path: Path, rng: np.random.Generator) -> None:
    signal = synthetic_12_lead(rng, 400)
    write_mat73(tmp_path / "v73.mat", {"val": signal})
    with pytest.raises(NotImplementedError):  # why the reader needs its own path for v7.3
        scipy.io.loadmat(tmp_path / "v73.mat")
    record = read_record(tmp_path / "v73.mat", fs=500, units="mV")
    np.testing.assert_allclose(record.signal, signal, rtol=1e-6, atol=1e-7)


def test_corrupt_mat(tmp_path: Path, rng: np.random.Generator) -> None:
    scipy.io.savemat(tmp_path / "c.mat", {"val": synthetic_12_lead(rng, 1000)})
    (tmp_path / "c.mat").write_bytes((tmp_path / "c.mat").read_bytes()[:2000])
    with pytest.raises(RecordError, match=r"c\.mat: cannot read MATLAB file") as info:
        read_record(tmp_path / "c.mat", fs=500)
    assert "\n" not in str(info.value)
    scipy.io.savemat(tmp_path / "many.mat", {"a": np.zeros((12, 5)), "b": np.zeros((12, 5))})
    with pytest.raises(RecordError, match=r"many\.mat: no signal array found .*file has: a, b\)$"):
        read_record(tmp_path / "many.mat", fs=500)
