"""CSV / TSV / TXT readers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from conftest import synthetic_12_lead
from hubert_ecg.io import STANDARD_LEADS, RecordError, read_record


def write_table(path: Path, header: list[str], columns: np.ndarray, delimiter: str, fmt: str = "%.6f") -> Path:
    np.savetxt(path, columns.T, delimiter=delimiter, header=delimiter.join(header), comments="", fmt=fmt)
    return path


def test_csv_with_time_column_and_aliases(tmp_path: Path, rng: np.random.Generator) -> None:
    fs = 400.0
    signal = synthetic_12_lead(rng, 1200, fs)
    time = np.arange(signal.shape[1]) / fs
    names = ["time", " i", "MLII", "III", "AVR", "avl", "aVF", "V1 ", "v2", "V3", "v4", "V5", "V6"]
    path = write_table(tmp_path / "r.csv", names, np.vstack([time, signal]), ",", fmt="%.3f")
    record = read_record(path)
    # Time stamps printed with 3 decimals (2.5 ms steps round unevenly) still give 400 Hz.
    assert record.fs == fs and record.units == "unknown"
    np.testing.assert_allclose(record.signal, signal, atol=5e-4 + 1e-7)
    x = record.signal.astype(np.float64)
    assert np.abs(x[2] - (x[1] - x[0])).max() <= 1.5e-3 + 1e-6  # three 3-decimal roundings


def test_tsv_units_in_header_and_ms_time(tmp_path: Path, rng: np.random.Generator) -> None:
    signal = synthetic_12_lead(rng, 600)
    time_ms = np.arange(600) * 2.0
    header = ["time_ms"] + [f"{name} (uV)" for name in STANDARD_LEADS]
    path = write_table(tmp_path / "r.tsv", header, np.vstack([time_ms, signal * 1000]), "\t", fmt="%.1f")
    record = read_record(path)
    assert record.fs == 500.0 and record.units == "mV"
    np.testing.assert_allclose(record.signal, signal, atol=5e-5 + 1e-7)


def test_text_without_time_needs_fs_and_index_column_is_ignored(tmp_path: Path, rng: np.random.Generator) -> None:
    signal = synthetic_12_lead(rng, 300)
    header = ["sample"] + list(STANDARD_LEADS)
    path = write_table(tmp_path / "r.txt", header, np.vstack([np.arange(300), signal]), ";")
    with pytest.raises(
        RecordError,
        match=r"r\.txt: sampling rate unknown \(no time column, no '# fs:' line\): "
        r"pass --fs HZ or a sidecar r\.json with \{\"fs\": HZ\}$",
    ):
        read_record(path)
    record = read_record(path, fs=500, units="mV")
    np.testing.assert_allclose(record.signal, signal, atol=5e-7 + 1e-7)
    commented = tmp_path / "c.csv"
    commented.write_text("# fs: 250\n" + (tmp_path / "r.txt").read_text().replace(";", ","))
    assert read_record(commented).fs == 250.0


def test_eight_lead_csv_derives_limb_leads(tmp_path: Path, rng: np.random.Generator) -> None:
    signal = synthetic_12_lead(rng, 300)
    keep = [0, 1] + list(range(6, 12))
    path = write_table(tmp_path / "eight.csv", [STANDARD_LEADS[i] for i in keep], signal[keep], ",", fmt="%.8f")
    record = read_record(path, fs=500)
    assert record.meta["derived_leads"] == ["III", "aVR", "aVL", "aVF"]
    np.testing.assert_allclose(record.signal, signal, atol=2e-7)


def test_text_errors_name_file_row_and_column(tmp_path: Path, rng: np.random.Generator) -> None:
    signal = synthetic_12_lead(rng, 20)
    good = write_table(tmp_path / "good.csv", list(STANDARD_LEADS), signal, ",")
    lines = good.read_text().splitlines()
    bad_cell = tmp_path / "cell.csv"
    bad_cell.write_text("\n".join(lines[:5] + [lines[5].replace(lines[5].split(",")[7], "abc", 1)] + lines[6:]))
    with pytest.raises(RecordError, match=r"cell\.csv: row 6 column 'V2': not a number 'abc'$"):
        read_record(bad_cell, fs=500)
    truncated = tmp_path / "cut.csv"
    truncated.write_text(good.read_text()[: len(lines[0]) + 1 + len(lines[1]) + 1 + 30])
    with pytest.raises(RecordError, match=r"cut\.csv: row 3 has \d+ fields, header has 12$"):
        read_record(truncated, fs=500)
    header_only = tmp_path / "header.csv"
    header_only.write_text(lines[0] + "\n")
    with pytest.raises(RecordError, match=r"header\.csv: zero-length signal"):
        read_record(header_only, fs=500)
    unknown = tmp_path / "unknown.csv"
    unknown.write_text("\n".join([lines[0].replace("V6", "pleth")] + lines[1:]))
    with pytest.raises(RecordError, match=r"unknown\.csv: unknown lead name 'pleth'"):
        read_record(unknown, fs=500)
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(RecordError, match=r"empty\.csv: empty text file"):
        read_record(tmp_path / "empty.csv", fs=500)
    jumpy = tmp_path / "jumpy.csv"
    jumpy.write_text(
        "t,I,II,V1,V2,V3,V4,V5,V6\n" + "".join(f"{t},1,2,3,4,5,6,7,8\n" for t in (0.0, 0.002, 0.004, 0.010))
    )
    with pytest.raises(RecordError, match=r"jumpy\.csv: time column is not uniformly sampled"):
        read_record(jumpy)
