"""HDF5 readers: CODE-15%-style multi-exam files and SPH-style one-record files."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

from conftest import shared_path, synthetic_12_lead
from hubert_ecg.io import RecordError, discover_sources, read_record, read_source


def float16_einthoven_tolerance(signal: np.ndarray) -> np.ndarray:
    """Per-sample bound on |III - (II - I)| after each lead was rounded to float16."""
    spacing = np.spacing(np.abs(signal[:3]).astype(np.float16)).astype(np.float64)
    return 0.5 * spacing.sum(axis=0) + 1e-6


@pytest.fixture
def code15_file(tmp_path: Path, rng: np.random.Generator) -> tuple[Path, list[np.ndarray]]:
    """Three exams as CODE-15% stores them: (n, 4096, 12) at 400 Hz, centred zero padding,
    and a trailing all-zero filler row with exam id 0."""
    exams = [synthetic_12_lead(rng, 4000, 400.0), synthetic_12_lead(rng, 2800, 400.0)]
    tracings = np.zeros((3, 4096, 12), dtype=np.float32)
    for row, exam in enumerate(exams):
        pad = (4096 - exam.shape[1]) // 2
        tracings[row, pad : pad + exam.shape[1]] = exam.T
    path = tmp_path / "exams_part0.hdf5"
    with h5py.File(path, "w") as handle:
        handle["tracings"] = tracings
        handle["exam_id"] = np.array([1169160, 2873686, 0], dtype=np.int64)
    return path, exams


def test_code15_one_source_per_exam(code15_file: tuple[Path, list[np.ndarray]]) -> None:
    path, exams = code15_file
    sources = discover_sources([path])
    assert [(s.key, s.record_id) for s in sources] == [("1169160", "1169160"), ("2873686", "2873686")]
    for source, exam in zip(sources, exams):
        record = read_source(source)
        assert record.fs == 400.0 and record.units == "mV"
        assert record.source == f"{path}#{source.key}"
        np.testing.assert_array_equal(record.signal, exam.astype(np.float32))
        pad = (4096 - exam.shape[1]) // 2
        assert record.meta["trimmed_padding"] == (pad, pad)
        x = record.signal.astype(np.float64)
        assert np.abs(x[2] - (x[1] - x[0])).max() < 1e-5  # float32 storage


def test_code15_key_errors(code15_file: tuple[Path, list[np.ndarray]], tmp_path: Path) -> None:
    path, _ = code15_file
    with pytest.raises(RecordError, match=r"exams_part0\.hdf5: HDF5 file holds 3 exams: pass key=<exam id>$"):
        read_record(path)
    with pytest.raises(RecordError, match=r"exams_part0\.hdf5: exam id 42 not in file$"):
        read_record(path, key="42")
    with pytest.raises(RecordError, match=r"exams_part0\.hdf5: exam 0 is all zeros"):
        read_record(path, key="0")
    cut = tmp_path / "cut.hdf5"
    cut.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(RecordError, match=r"cut\.hdf5: ") as info:
        read_record(cut, key="1169160")
    assert "\n" not in str(info.value)
    # A damaged file is still listed once, so that reading it reports the damage.
    assert [s.key for s in discover_sources([cut])] == [None]


def test_single_record_hdf5_with_attributes(tmp_path: Path, rng: np.random.Generator) -> None:
    signal = synthetic_12_lead(rng, 1000)
    path = tmp_path / "one.h5"
    with h5py.File(path, "w") as handle:
        dataset = handle.create_dataset("signal", data=(signal * 1000).T.astype(np.float32))
        dataset.attrs["fs"] = 250.0
        dataset.attrs["units"] = "uV"
        dataset.attrs["lead_names"] = ["i", "ii", "iii", "avr", "avl", "avf", "v1", "v2", "v3", "v4", "v5", "v6"]
    record = read_record(path)
    assert record.fs == 250.0 and record.units == "mV"
    np.testing.assert_allclose(record.signal, signal, rtol=1e-6, atol=1e-6)
    with h5py.File(tmp_path / "wrong.h5", "w") as handle:
        handle["ecg"] = np.zeros((11, 100), np.float16)
    with pytest.raises(RecordError, match=r"wrong\.h5: wrong lead count"):
        read_record(tmp_path / "wrong.h5")
    with h5py.File(tmp_path / "nothing.h5", "w") as handle:
        handle["a"] = np.zeros(3)
    with pytest.raises(RecordError, match=r"nothing\.h5: no ECG dataset found"):
        read_record(tmp_path / "nothing.h5")


def test_sph_style_round_trip(tmp_path: Path, rng: np.random.Generator) -> None:
    signal = synthetic_12_lead(rng, 5000)
    with h5py.File(tmp_path / "SPH99999.h5", "w") as handle:
        handle["ecg"] = signal.astype(np.float16)
    (tmp_path / "metadata.csv").write_text(
        "ECG_ID,AHA_Code,Patient_ID,Age,Sex,N,Date,fs,SNOMEDCTCode,SR\n"
        'SPH99999.h5,1,S9,70,F,5000,2020-01-01,500,"426783006,164889003",1\n'
    )
    record = read_record(tmp_path / "SPH99999.h5")
    assert record.fs == 500.0 and record.units == "mV"
    np.testing.assert_array_equal(record.signal, signal.astype(np.float16).astype(np.float32))
    assert (record.meta["age"], record.meta["sex"], record.meta["labels"]) == (70.0, "F", ["426783006", "164889003"])


def test_real_sph_file() -> None:
    path = shared_path("cinc2021-smoke", "SPH", "SPH00001.h5")
    record = read_record(path)
    with h5py.File(path, "r") as handle:
        stored = handle["ecg"][()]
    assert record.signal.shape == stored.shape == (12, 5000) and record.fs == 500.0
    np.testing.assert_array_equal(record.signal, stored.astype(np.float32))
    assert record.meta["labels"] == ["426177001", "427393009"] and record.meta["sex"] == "M"
    x = record.signal.astype(np.float64)
    residual = np.abs(x[2] - (x[1] - x[0]))
    # SPH values sit on a 0.8 uV grid (then rounded to float16): allow one grid step per
    # lead, as for WFDB's 1/gain, on top of the float16 rounding.
    grid = 0.0008
    small = stored[np.abs(stored) < 0.25].astype(np.float64)  # float16-exact region
    assert np.abs(small / grid - np.round(small / grid)).max() < 0.1
    assert np.all(residual <= float16_einthoven_tolerance(stored) + 3 * grid), residual.max()
    assert record.meta["warnings"] == []
