"""WFDB records: .hea + .dat, .hea + MATLAB v4 .mat (CinC 2021), real LUDB / CinC / PTB-XL files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.io
import wfdb

from conftest import shared_path, synthetic_12_lead
from hubert_ecg.io import STANDARD_LEADS, RecordError, read_record

LOWER = ["i", "ii", "iii", "avr", "avl", "avf", "v1", "v2", "v3", "v4", "v5", "v6"]


def assert_einthoven(signal: np.ndarray, atol: float | np.ndarray) -> None:
    x = signal.astype(np.float64)
    residual = np.abs(x[2] - (x[1] - x[0]))
    assert np.all(residual <= atol), f"max |III - (II - I)| = {residual.max()}"


def write_wfdb(
    folder: Path,
    name: str,
    signal_mv: np.ndarray,
    *,
    units: list[str],
    gains: list[float],
    sig_name: list[str],
    comments: list[str] | None = None,
    fs: float = 500,
) -> Path:
    """Write with wfdb.wrsamp; ``signal_mv`` rows are converted into each channel's units."""
    factor = np.array([1000.0 if u == "uV" else 1.0 for u in units])
    wfdb.wrsamp(
        name,
        fs=fs,
        units=units,
        sig_name=sig_name,
        p_signal=(signal_mv * factor[:, None]).T,
        fmt=["16"] * len(units),
        adc_gain=gains,
        baseline=[7] * len(units),
        comments=comments or [],
        write_dir=str(folder),
    )
    return folder / f"{name}.hea"


def test_dat_round_trip_with_aliases_units_and_comments(tmp_path: Path, rng: np.random.Generator) -> None:
    signal = synthetic_12_lead(rng)
    units = ["mV"] * 6 + ["uV"] * 6
    gains = [200.0] * 6 + [0.5] * 6  # 5 uV and 2 uV per count
    header = write_wfdb(
        tmp_path,
        "rec1",
        signal,
        units=units,
        gains=gains,
        sig_name=LOWER,
        comments=["Age: 63", "Sex: Female", "Dx: 164889003,59118001"],
    )
    record = read_record(header)
    assert record.signal.shape == (12, 2000) and record.signal.dtype == np.float32
    assert record.units == "mV" and record.fs == 500.0 and record.record_id == "rec1"
    # Each channel is quantised to half its LSB: 1/200 mV limb, 2 uV chest.
    lsb = np.array([1 / 200] * 6 + [2e-3] * 6)
    error = np.abs(record.signal - signal).max(axis=1)
    assert np.all(error <= lsb / 2 + 1e-6), error
    assert_einthoven(record.signal, 3 * lsb[0] / 2 + 1e-6)
    assert record.meta["age"] == 63.0 and record.meta["sex"] == "F"
    assert record.meta["labels"] == ["164889003", "59118001"]
    assert record.meta["original_lead_names"] == LOWER and record.meta["warnings"] == []
    # Any spelling of the record reaches the same data.
    for alias in (tmp_path / "rec1.dat", tmp_path / "rec1"):
        np.testing.assert_array_equal(read_record(alias).signal, record.signal)


def test_eight_lead_wfdb_derives_limb_leads(tmp_path: Path, rng: np.random.Generator) -> None:
    signal = synthetic_12_lead(rng)
    keep = [0, 1] + list(range(6, 12))
    header = write_wfdb(
        tmp_path,
        "rec8",
        signal[keep],
        units=["mV"] * 8,
        gains=[1000.0] * 8,
        sig_name=["MLII" if i == 1 else STANDARD_LEADS[i] for i in keep],
    )
    record = read_record(header)
    assert record.meta["derived_leads"] == ["III", "aVR", "aVL", "aVF"]
    np.testing.assert_allclose(record.signal, signal, atol=1.5e-3)
    assert_einthoven(record.signal, 1e-6)  # derived exactly


def test_hea_with_matlab_v4_signal_file(tmp_path: Path, rng: np.random.Generator) -> None:
    """CinC 2020/2021 layout: the header names a MATLAB v4 .mat holding int16 ``val``."""
    signal = synthetic_12_lead(rng, 1500)
    counts = np.round(signal * 1000).astype(np.int16)
    scipy.io.savemat(tmp_path / "E1.mat", {"val": counts}, format="4")
    lines = (
        ["E1 12 500 1500"]
        + [f"E1.mat 16+24 1000/mv 16 0 {counts[i, 0]} 0 0 {name}" for i, name in enumerate(STANDARD_LEADS)]
        + ["#Age: 50", "#Sex: Male", "#Dx: 426783006"]
    )
    (tmp_path / "E1.hea").write_text("\n".join(lines) + "\n")
    for path in (tmp_path / "E1.hea", tmp_path / "E1.mat"):  # the .mat resolves to its header
        record = read_record(path)
        np.testing.assert_allclose(record.signal, counts / 1000.0, atol=1e-6)
        assert record.units == "mV" and record.meta["labels"] == ["426783006"] and record.meta["sex"] == "M"


def test_fs_and_units_overrides(tmp_path: Path, rng: np.random.Generator) -> None:
    signal = synthetic_12_lead(rng, 500)
    header = write_wfdb(tmp_path, "nu", signal, units=["NU"] * 12, gains=[1000.0] * 12, sig_name=LOWER)
    plain = read_record(header)
    assert plain.units == "unknown" and "units 'NU' are not a voltage" in plain.meta["warnings"][0]
    forced = read_record(header, units="uV", fs=250)
    assert forced.units == "mV" and forced.fs == 250.0
    np.testing.assert_allclose(forced.signal, plain.signal / 1000.0, rtol=1e-6)


def test_truncated_dat_and_broken_header(tmp_path: Path, rng: np.random.Generator) -> None:
    header = write_wfdb(
        tmp_path, "cut", synthetic_12_lead(rng, 500), units=["mV"] * 12, gains=[1000.0] * 12, sig_name=LOWER
    )
    dat = tmp_path / "cut.dat"
    dat.write_bytes(dat.read_bytes()[:5000])
    with pytest.raises(RecordError) as info:
        read_record(header)
    message = str(info.value)
    assert message.startswith(f"{header}: ") and "cut.dat" in message and "\n" not in message

    (tmp_path / "bad.hea").write_text("this is not a header\n???\n")
    with pytest.raises(RecordError, match=r"bad\.hea: unreadable WFDB header"):
        read_record(tmp_path / "bad.hea")
    lonely = header.read_text().replace("cut.dat", "lonely.dat").replace("cut ", "lonely ", 1)
    (tmp_path / "lonely.hea").write_text(lonely)
    with pytest.raises(RecordError, match=r"lonely\.hea: signal file lonely\.dat named by the header is missing"):
        read_record(tmp_path / "lonely.hea")
    (tmp_path / "empty.hea").write_text(
        "empty 12 500 0\n" + "".join(f"empty.dat 16 1000/mV 16 0 0 0 0 {n}\n" for n in LOWER)
    )
    (tmp_path / "empty.dat").write_bytes(b"")
    with pytest.raises(RecordError, match=r"empty\.hea: zero-length signal"):
        read_record(tmp_path / "empty.hea")


def test_truncated_cinc_mat(tmp_path: Path, rng: np.random.Generator) -> None:
    counts = np.round(synthetic_12_lead(rng, 1000) * 1000).astype(np.int16)
    scipy.io.savemat(tmp_path / "T1.mat", {"val": counts}, format="4")
    (tmp_path / "T1.hea").write_text(
        "T1 12 500 1000\n" + "".join(f"T1.mat 16+24 1000/mV 16 0 0 0 0 {n}\n" for n in STANDARD_LEADS)
    )
    mat = tmp_path / "T1.mat"
    mat.write_bytes(mat.read_bytes()[:3000])
    with pytest.raises(RecordError, match=r"T1\.hea: .*T1\.mat"):
        read_record(tmp_path / "T1.hea")


def test_wrong_lead_count_and_duplicates(tmp_path: Path, rng: np.random.Generator) -> None:
    signal = synthetic_12_lead(rng, 300)
    dup = write_wfdb(tmp_path, "dup", signal, units=["mV"] * 12, gains=[1000.0] * 12, sig_name=LOWER[:11] + ["V1"])
    with pytest.raises(RecordError, match=r"dup\.hea: duplicated lead V1"):
        read_record(dup)
    few = write_wfdb(
        tmp_path, "few", signal[[0, 6, 7]], units=["mV"] * 3, gains=[1000.0] * 3, sig_name=["I", "V1", "V2"]
    )
    with pytest.raises(RecordError, match=r"few\.hea: missing leads II, III, aVR, aVL, aVF, V3"):
        read_record(few)
    partial = read_record(few, allow_missing_leads=True)
    assert np.isnan(partial.signal[1:6]).all() and partial.meta["missing_leads"][:2] == ["II", "III"]


# ---------------------------------------------------------------- real data


def _quantum(header: Path) -> np.ndarray:
    """1/gain of leads I, II, III from a header: the LSB of each in its physical units."""
    head = wfdb.rdheader(str(header.with_suffix("")))
    return 1.0 / np.asarray(head.adc_gain[:3], dtype=np.float64)


def test_ludb_lower_case_leads_and_self_normalised_gains() -> None:
    header = shared_path("ludb", "data", "1.hea")
    record = read_record(header)
    assert record.signal.shape == (12, 5000) and record.fs == 500.0
    assert record.meta["original_lead_names"] == LOWER
    assert record.meta["age"] == 51.0 and record.meta["sex"] == "F"
    # LUDB v1.0.1 headers store each lead's peak-to-peak as its gain; taken literally they
    # would break Einthoven by ~0.36 "mV". The reader keeps the common-scale ADC counts.
    assert record.units == "unknown"
    assert "peak-to-peak" in record.meta["warnings"][0]
    digital = wfdb.rdrecord(str(header.with_suffix("")), physical=False).d_signal.T
    np.testing.assert_array_equal(record.signal, digital.astype(np.float32))
    assert_einthoven(record.signal, 1.0)  # within one ADC count
    assert not any("Einthoven" in w for w in record.meta["warnings"])


@pytest.mark.parametrize(
    ("folder", "name", "fs", "n_samples"),
    [
        ("CPSC_CPSC-Extra", "A0001", 500.0, 7500),
        ("G12EC", "E00001", 500.0, 5000),
        ("PTB_PTBXL", "S0001", 1000.0, 38400),
        ("PTB_PTBXL", "HR00001", 500.0, 5000),
    ],
)
def test_cinc2021_mat_records(folder: str, name: str, fs: float, n_samples: int) -> None:
    header = shared_path("cinc2021-smoke", folder, f"{name}.hea")
    record = read_record(header)
    assert (record.fs, record.signal.shape, record.units) == (fs, (12, n_samples), "mV")
    reference = wfdb.rdrecord(str(header.with_suffix(""))).p_signal.T
    np.testing.assert_allclose(record.signal, reference, atol=1e-6)
    assert record.meta["labels"] and all(code.isdigit() for code in record.meta["labels"])
    assert_einthoven(record.signal, _quantum(header).sum() + 1e-6)


def test_ptbxl_100hz_normalised_units() -> None:
    header = shared_path("ptbxl-unlabelled-100hz", "records100", "00000", "00009_lr.hea")
    record = read_record(header)
    assert (record.fs, record.signal.shape, record.units) == (100.0, (12, 1000), "unknown")
    reference = wfdb.rdrecord(str(header.with_suffix(""))).p_signal.T
    np.testing.assert_allclose(record.signal, reference, atol=1e-6)
    assert record.meta["original_lead_names"][3:6] == ["AVR", "AVL", "AVF"]
    # These copies were z-scored per lead, so Einthoven does not hold; the reader says so
    # instead of silently passing the record off as calibrated.
    warnings = " ".join(record.meta["warnings"])
    assert "'NU'" in warnings and "Einthoven" in warnings
