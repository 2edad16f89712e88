"""Round 3 of awkward reader inputs: each file either reads to the source signal (after unit conversion
and lead mapping) or is refused with a one-line reason naming the file. Never a guessed rate, a flipped
or shuffled lead, counts read as microvolts, a time column read as a lead, or a gap closed silently.

Every case writes one file from a known 12-lead mV signal and states the exact outcome."""

from __future__ import annotations

import base64
import gzip
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bad_inputs import _muse, _muse_leads, _signal, _wfdb
from format_files import STANDARD, hl7_xml, write_edf
from hubert_ecg.io import read_record
from hubert_ecg.io.leads import lead_sign
from hubert_ecg.io.record import RecordError
from test_robustness_inputs import assert_one_line_error, run_main, tiny_classifier  # noqa: F401

FS = 500.0
SIG = _signal(seconds=4.0)  # (12, 2000) mV, Einthoven and Goldberger hold


@dataclass
class Case:
    name: str
    write: Callable[[Path], Path]
    reason: str | None = None  # regex on the one-line RecordError; None: the record must read correctly
    kwargs: dict[str, Any] = field(default_factory=dict)
    atol: float = 1e-4  # mV, for read cases
    expect_fs: float = FS
    expect_units: str = "mV"


def _csv(path: Path, lines: list[str], *, bom: bool = False, newline: str = "\n") -> Path:
    text = newline.join(lines) + newline
    path.write_bytes(("\ufeff" if bom else "").encode() + text.encode())
    return path


def _rows(
    signal: np.ndarray, sep: str = ",", decimal: str = ".", prefix: Callable[[int], str] | None = None
) -> list[str]:
    out = []
    for i in range(signal.shape[1]):
        cells = [f"{v:.5f}".replace(".", decimal) for v in signal[:, i]]
        out.append(sep.join(([prefix(i)] if prefix else []) + cells))
    return out


# --- lead names with a sign ---------------------------------------------------------------------
def wfdb_minus_avr(folder: Path) -> Path:
    stored = SIG.copy()
    stored[3] = -stored[3]
    names = STANDARD[:3] + ["-aVR"] + STANDARD[4:]
    return _wfdb(folder, "wfdb_minus_avr", stored, names=names)


def wfdb_avr_inverted_remark(folder: Path) -> Path:
    stored = SIG.copy()
    stored[3] = -stored[3]
    names = STANDARD[:3] + ["aVR_inverted"] + STANDARD[4:]
    return _wfdb(folder, "wfdb_avr_inverted_remark", stored, names=names)


def wfdb_trailing_minus(folder: Path) -> Path:
    return _wfdb(folder, "wfdb_trailing_minus", SIG, names=STANDARD[:6] + ["V1-"] + STANDARD[7:])


def edf_minus_avr(folder: Path) -> Path:
    stored = SIG.copy()
    stored[3] = -stored[3]
    labels = [f"ECG {n}" for n in STANDARD]
    labels[3] = "ECG -aVR"
    return write_edf(folder / "edf_minus_avr.edf", stored, labels=labels)


def hl7_minus_avr(folder: Path) -> Path:
    stored = SIG.copy()
    stored[3] = -stored[3]
    path = folder / "hl7_minus_avr.xml"
    path.write_text(hl7_xml(stored).replace("MDC_ECG_LEAD_AVR", "MDC_ECG_LEAD_-aVR"))
    return path


def edf_discontinuous(folder: Path) -> Path:
    path = write_edf(folder / "edf_discontinuous.edf", SIG)
    data = bytearray(path.read_bytes())
    data[192:197] = b"EDF+D"
    path.write_bytes(bytes(data))
    return path


def edf_latin1_micro_sign(folder: Path) -> Path:
    path = write_edf(folder / "edf_latin1_micro_sign.edf", SIG)  # uV
    data = bytearray(path.read_bytes())
    n_signals = int(data[252:256])
    at = 256 + n_signals * 96
    for k in range(n_signals):
        data[at + 8 * k : at + 8 * (k + 1)] = b"\xb5V".ljust(8)  # "µV" in Latin-1, as many EDF writers store it
    path.write_bytes(bytes(data))
    return path


def wfdb_repeated_rhythm_strip(folder: Path) -> Path:
    # 13 channels: lead II again at the end as the rhythm strip, with the same samples.
    return _renamed_copy(
        _wfdb(folder, "wfdb_repeated_rhythm_strip", np.vstack([SIG, SIG[1:2]]), names=[*STANDARD, "IIx"])
    )


def _renamed_copy(header: Path) -> Path:
    """The header with channel ``IIx`` renamed ``II`` (wfdb itself refuses to write two names alike)."""
    header.write_text(re.sub(r" IIx$", " II", header.read_text(), flags=re.MULTILINE))
    return header


def wfdb_ecg_lead_prefix(folder: Path) -> Path:
    return _wfdb(folder, "wfdb_ecg_lead_prefix", SIG, names=[f"ECG_Lead_{n}" for n in STANDARD])


def hdf5_tracings_without_exam_id(folder: Path) -> Path:
    h5py = pytest.importorskip("h5py")
    path = folder / "hdf5_tracings_without_exam_id.h5"
    with h5py.File(path, "w") as handle:
        handle["tracings"] = SIG.T[None].astype(np.float32)
    return path


# --- WFDB headers ---------------------------------------------------------------------------------
def wfdb_header_without_fs(folder: Path) -> Path:
    header = _wfdb(folder, "wfdb_header_without_fs", SIG)
    lines = header.read_text().splitlines()
    lines[0] = " ".join(lines[0].split()[:2])  # record name and signal count only
    header.write_text("\n".join(lines) + "\n")
    return header


def wfdb_header_claims_more_samples(folder: Path) -> Path:
    header = _wfdb(folder, "wfdb_header_claims_more_samples", SIG)
    lines = header.read_text().splitlines()
    tokens = lines[0].split()
    tokens[3] = str(int(tokens[3]) + 100)
    lines[0] = " ".join(tokens)
    header.write_text("\n".join(lines) + "\n")
    return header


def wfdb_empty_dat(folder: Path) -> Path:
    header = _wfdb(folder, "wfdb_empty_dat", SIG)
    (folder / "wfdb_empty_dat.dat").write_bytes(b"")
    return header


def wfdb_gain_0_with_invalid_samples(folder: Path) -> Path:
    import wfdb

    counts = np.round(SIG.T * 200).astype(np.int64)
    counts[100:150, 7] = -32768  # format 16's "invalid sample" code
    wfdb.wrsamp(
        "wfdb_gain_0_with_invalid_samples",
        fs=FS,
        units=["mV"] * 12,
        sig_name=STANDARD,
        d_signal=counts,
        fmt=["16"] * 12,
        adc_gain=[200.0] * 12,
        baseline=[0] * 12,
        write_dir=str(folder),
    )
    header = folder / "wfdb_gain_0_with_invalid_samples.hea"
    header.write_text(re.sub(r" 200(\.0)?(\(0\))?/mV", " 0/mV", header.read_text()))
    return header


# --- text tables ----------------------------------------------------------------------------------
def csv_semicolon_decimal_comma(folder: Path) -> Path:
    header = ";".join(STANDARD)
    return _csv(folder / "csv_semicolon_decimal_comma.csv", [header, *_rows(SIG, ";", ",")])


def csv_headerless_decimal_comma(folder: Path) -> Path:
    return _csv(folder / "csv_headerless_decimal_comma.csv", ["# fs: 500", *_rows(SIG, ";", ",")])


def csv_excel_sep_line(folder: Path) -> Path:
    return _csv(folder / "csv_excel_sep_line.csv", ["sep=;", ";".join(STANDARD), *_rows(SIG, ";", ",")])


def tsv_decimal_comma(folder: Path) -> Path:
    # In a tab table "0,123" may be a thousands separator as well: refused, not guessed.
    return _csv(folder / "tsv_decimal_comma.tsv", ["\t".join(STANDARD), *_rows(SIG, "\t", ",")])


def csv_sampling_frequency_comment_in_khz(folder: Path) -> Path:
    lines = ["# Sampling Frequency: 0.5 kHz", "# units: whatever", ",".join(STANDARD), *_rows(SIG)]
    return _csv(folder / "csv_sampling_frequency_comment_in_khz.csv", lines)


def csv_fs_line_and_time_column_disagree(folder: Path) -> Path:
    lines = ["# fs: 250", ",".join(["time", *STANDARD]), *_rows(SIG, prefix=lambda i: f"{i / FS:.4f}")]
    return _csv(folder / "csv_fs_line_and_time_column_disagree.csv", lines)


def npz_sfreq(folder: Path) -> Path:
    path = folder / "npz_sfreq.npz"
    np.savez(path, data=SIG, sfreq=FS, units="mV")  # MNE's name for the rate
    return path


def csv_units_row(folder: Path) -> Path:
    lines = [",".join(["time", *STANDARD]), ",".join(["ms"] + ["uV"] * 12)]
    lines += _rows(SIG * 1000, prefix=lambda i: f"{i * 2}")
    return _csv(folder / "csv_units_row.csv", lines, bom=True, newline="\r\n")


def csv_units_row_blank_time_unit(folder: Path) -> Path:
    lines = [",".join(["time_ms", *STANDARD]), ",".join(["", *["mV"] * 12])]
    lines += _rows(SIG, prefix=lambda i: f"{i * 2}")
    return _csv(folder / "csv_units_row_blank_time_unit.csv", lines)


def csv_physionet_export(folder: Path) -> Path:
    # PhysioNet's CSV export: quoted names, a units row, elapsed time as a clock.
    lines = ["'Elapsed time'," + ",".join(f"'{n}'" for n in STANDARD), "'hh:mm:ss.mmm'," + ",".join(["'mV'"] * 12)]
    lines += _rows(SIG, prefix=lambda i: f"'{i // 30000}:{(i / FS) % 60:06.3f}'")
    return _csv(folder / "csv_physionet_export.csv", lines)


def csv_units_row_contradicts_header(folder: Path) -> Path:
    lines = [",".join(f"{n} (mV)" for n in STANDARD), ",".join(["uV"] * 12), *_rows(SIG)]
    return _csv(folder / "csv_units_row_contradicts_header.csv", lines)


def csv_time_in_ms_named_time(folder: Path) -> Path:
    lines = [",".join(["time", *STANDARD]), *_rows(SIG, prefix=lambda i: f"{i * 2}")]
    return _csv(folder / "csv_time_in_ms_named_time.csv", lines)


def csv_headerless_time_column(folder: Path) -> Path:
    # 12 columns, but the first is a time column and V6 is absent: not the 12 leads in standard order.
    lines = ["# fs: 500", *_rows(SIG[:11], prefix=lambda i: f"{i / FS:.4f}")]
    return _csv(folder / "csv_headerless_time_column.csv", lines)


def npy_time_row(folder: Path) -> Path:
    path = folder / "npy_time_row.npy"
    np.save(path, np.vstack([np.arange(SIG.shape[1]) / FS, SIG[1:]]))
    return path


# --- arrays ---------------------------------------------------------------------------------------
def npz_byte_lead_names_shuffled(folder: Path) -> Path:
    order = [6, 0, 7, 1, 8, 2, 9, 3, 10, 4, 11, 5]
    path = folder / "npz_byte_lead_names_shuffled.npz"
    names = np.array([STANDARD[i].encode() for i in order])
    np.savez(path, signal=SIG[order].T, fs=FS, units="mV", lead_names=names)  # (samples, leads)
    return path


def mat_cell_lead_names(folder: Path) -> Path:
    from scipy.io import savemat

    order = list(range(12))[::-1]
    path = folder / "mat_cell_lead_names.mat"
    savemat(
        path,
        {
            "val": SIG[order] * 1000,
            "fs": FS,
            "units": "uV",
            "lead_names": np.array([STANDARD[i] for i in order], dtype=object),
        },
    )
    return path


def mat73_char_lead_names(folder: Path) -> Path:
    """A MATLAB v7.3 file (HDF5 with a 512-byte MATLAB header) whose lead names are a char matrix."""
    h5py = pytest.importorskip("h5py")
    order = list(range(12))[::-1]
    path = folder / "mat73_char_lead_names.mat"
    with h5py.File(path, "w", userblock_size=512) as handle:
        for name, value, kind in (
            ("val", SIG[order].T, "double"),
            (
                "lead_names",
                np.array([[ord(c) for c in STANDARD[i].ljust(3)] for i in order], dtype=np.uint16).T,
                "char",
            ),
            ("fs", np.array([[FS]]), "double"),
            ("units", np.array([[ord(c)] for c in "mV"], dtype=np.uint16), "char"),
        ):
            handle.create_dataset(name, data=value).attrs["MATLAB_class"] = np.bytes_(kind)
    header = b"MATLAB 7.3 MAT-file, Platform: GLNXA64, HDF5 schema 1.00 .".ljust(116) + bytes(8) + b"\x00\x02IM"
    with open(path, "r+b") as handle:
        handle.write(header)
    return path


def hdf5_units_per_lead(folder: Path) -> Path:
    h5py = pytest.importorskip("h5py")
    path = folder / "hdf5_units_per_lead.h5"
    stored = SIG.copy()
    stored[11] *= 1000  # V6 in uV, the rest in mV
    with h5py.File(path, "w") as handle:
        dataset = handle.create_dataset("ecg", data=stored)
        dataset.attrs["fs"] = FS
        dataset.attrs["units"] = np.array([b"mV"] * 11 + [b"uV"])
    return path


def npz_fs_per_lead_differs(folder: Path) -> Path:
    path = folder / "npz_fs_per_lead_differs.npz"
    np.savez(path, signal=SIG, fs=np.array([500.0] * 11 + [250.0]), units="mV")
    return path


def npz_fs_per_lead_agrees(folder: Path) -> Path:
    path = folder / "npz_fs_per_lead_agrees.npz"
    np.savez(path, signal=SIG, fs=np.full(12, 500.0), units="mV")
    return path


def npy_gzipped(folder: Path) -> Path:
    path = folder / "npy_gzipped.npy.gz"
    raw = folder / "raw.npy"
    np.save(raw, SIG)
    with open(raw, "rb") as src, gzip.open(path, "wb") as dst:
        shutil.copyfileobj(src, dst)
    raw.unlink()
    return path


# --- MUSE / DICOM ---------------------------------------------------------------------------------
def muse_without_units_per_bit(folder: Path) -> Path:
    path = folder / "muse_without_units_per_bit.xml"
    path.write_text(
        _muse(_muse_leads(SIG), n=SIG.shape[1]).replace("<LeadAmplitudeUnitsPerBit>4.88</LeadAmplitudeUnitsPerBit>", "")
    )
    return path


def muse_payload_longer_than_declared(folder: Path) -> Path:
    path = folder / "muse_payload_longer_than_declared.xml"
    path.write_text(_muse(_muse_leads(SIG), n=SIG.shape[1] - 500))
    return path


def muse_without_sample_base(folder: Path) -> Path:
    path = folder / "muse_without_sample_base.xml"
    path.write_text(_muse(_muse_leads(SIG), n=SIG.shape[1]).replace("<SampleBase>500</SampleBase>", ""))
    return path


def _dicom(folder: Path, name: str, change: Callable[[Any], None]) -> Path:
    pydicom = pytest.importorskip("pydicom")
    from pydicom.data import get_testdata_file

    ds = pydicom.dcmread(get_testdata_file("waveform_ecg.dcm"))
    change(ds)
    path = folder / f"{name}.dcm"
    ds.save_as(path)
    return path


def dicom_code_and_meaning_disagree(folder: Path) -> Path:
    def change(ds: Any) -> None:
        ds.WaveformSequence[0].ChannelDefinitionSequence[0].ChannelSourceSequence[0].CodeMeaning = "Lead II"

    return _dicom(folder, "dicom_code_and_meaning_disagree", change)


def dicom_without_sensitivity(folder: Path) -> Path:
    def change(ds: Any) -> None:
        for channel in ds.WaveformSequence[0].ChannelDefinitionSequence:
            del channel.ChannelSensitivity

    return _dicom(folder, "dicom_without_sensitivity", change)


def dicom_without_sampling_frequency(folder: Path) -> Path:
    def change(ds: Any) -> None:
        del ds.WaveformSequence[0].SamplingFrequency

    return _dicom(folder, "dicom_without_sampling_frequency", change)


CASES = [
    Case("wfdb_minus_avr", wfdb_minus_avr),
    Case("wfdb_avr_inverted_remark", wfdb_avr_inverted_remark),
    Case("wfdb_trailing_minus", wfdb_trailing_minus, r"wfdb_trailing_minus\.hea: lead name 'V1-' ends in a sign"),
    Case("edf_minus_avr", edf_minus_avr, atol=0.002),
    Case("hl7_minus_avr", hl7_minus_avr, atol=0.0013),
    Case("edf_discontinuous", edf_discontinuous, r"edf_discontinuous\.edf: EDF\+D \(discontinuous\) recording"),
    Case("edf_latin1_micro_sign", edf_latin1_micro_sign, atol=0.001),
    Case(
        "wfdb_repeated_rhythm_strip",
        wfdb_repeated_rhythm_strip,
        r"wfdb_repeated_rhythm_strip\.hea: duplicated lead II: channels 1 \('II'\) and 12 \('II'\)",
    ),
    Case("wfdb_ecg_lead_prefix", wfdb_ecg_lead_prefix),
    Case(
        "hdf5_tracings_without_exam_id",
        hdf5_tracings_without_exam_id,
        r"hdf5_tracings_without_exam_id\.h5: sampling rate unknown: "
        r"dataset 'tracings' has no 'fs' attribute and no 'exam_id'",
    ),
    Case(
        "hdf5_tracings_without_exam_id_given",
        hdf5_tracings_without_exam_id,
        kwargs={"fs": FS, "units": "mV"},
        atol=1e-6,
    ),
    Case(
        "wfdb_header_without_fs", wfdb_header_without_fs, r"wfdb_header_without_fs\.hea: sampling rate unknown.*250 Hz"
    ),
    Case("wfdb_header_without_fs_given", wfdb_header_without_fs, kwargs={"fs": 500.0}),
    Case(
        "wfdb_header_claims_more_samples",
        wfdb_header_claims_more_samples,
        r"wfdb_header_claims_more_samples\.hea: signal file wfdb_header_claims_more_samples\.dat is truncated: "
        r"48000 bytes, the header's 2100 samples x 12 signals need 50400",
    ),
    Case(
        "wfdb_empty_dat", wfdb_empty_dat, r"wfdb_empty_dat\.hea: signal file wfdb_empty_dat\.dat is truncated: 0 bytes"
    ),
    Case("csv_semicolon_decimal_comma", csv_semicolon_decimal_comma, kwargs={"fs": FS, "units": "mV"}),
    Case("csv_headerless_decimal_comma", csv_headerless_decimal_comma, kwargs={"units": "mV"}),
    Case("csv_excel_sep_line", csv_excel_sep_line, kwargs={"fs": FS, "units": "mV"}),
    Case("csv_units_row", csv_units_row, atol=1e-7),
    Case(
        "tsv_decimal_comma",
        tsv_decimal_comma,
        r"tsv_decimal_comma\.tsv: row 2 column 'I': not a number '.*' \(a decimal comma is read only in ';'-separated",
        kwargs={"fs": FS},
    ),
    Case("csv_sampling_frequency_comment_in_khz", csv_sampling_frequency_comment_in_khz, kwargs={"units": "mV"}),
    Case(
        "csv_fs_line_and_time_column_disagree",
        csv_fs_line_and_time_column_disagree,
        r"csv_fs_line_and_time_column_disagree\.csv: the '# fs' line says 250 Hz but the time column steps at 500 Hz",
    ),
    Case("npz_sfreq", npz_sfreq),
    Case("csv_physionet_export", csv_physionet_export),
    Case("csv_units_row_blank_time_unit", csv_units_row_blank_time_unit),
    Case(
        "csv_units_row_contradicts_header",
        csv_units_row_contradicts_header,
        r"csv_units_row_contradicts_header\.csv: column 'I \(mV\)': header says 'mV' but the units row says 'uV'",
        kwargs={"fs": FS},
    ),
    Case(
        "csv_time_in_ms_named_time",
        csv_time_in_ms_named_time,
        r"csv_time_in_ms_named_time\.csv: time column 'time' steps by 2 per sample .*looks like milliseconds",
    ),
    Case(
        "csv_headerless_time_column",
        csv_headerless_time_column,
        r"csv_headerless_time_column\.csv: lead I changes in the same direction at every sample",
    ),
    Case("npy_time_row", npy_time_row, r"npy_time_row\.npy: lead I changes in the same direction", kwargs={"fs": FS}),
    Case("npz_byte_lead_names_shuffled", npz_byte_lead_names_shuffled),
    Case("mat_cell_lead_names", mat_cell_lead_names, atol=1e-9),
    Case(
        "npz_fs_per_lead_differs",
        npz_fs_per_lead_differs,
        r"npz_fs_per_lead_differs\.npz: entry 'fs' holds different sampling rates \[250\.0, 500\.0\]",
    ),
    Case("npz_fs_per_lead_agrees", npz_fs_per_lead_agrees),
    Case("mat73_char_lead_names", mat73_char_lead_names, atol=1e-9),
    Case("hdf5_units_per_lead", hdf5_units_per_lead, atol=1e-6),
    Case(
        "muse_payload_longer_than_declared",
        muse_payload_longer_than_declared,
        r"muse_payload_longer_than_declared\.xml: lead I: "
        r"waveform data holds 2000 samples but LeadSampleCountTotal says 1500",
    ),
    Case("npy_gzipped", npy_gzipped, r"npy_gzipped\.npy\.gz: compressed file \(\.gz\); decompress it first"),
    Case("muse_without_units_per_bit", muse_without_units_per_bit, expect_units="unknown"),
    Case(
        "muse_without_sample_base",
        muse_without_sample_base,
        r"muse_without_sample_base\.xml: Rhythm waveform has no <SampleBase>",
    ),
    Case(
        "dicom_code_and_meaning_disagree",
        dicom_code_and_meaning_disagree,
        r"dicom_code_and_meaning_disagree\.dcm: channel 0: "
        r"channel code 5\.6\.3-9-1 is lead I but its meaning says 'Lead II'",
    ),
    Case("dicom_without_sensitivity", dicom_without_sensitivity, expect_fs=1000.0, expect_units="unknown"),
    Case(
        "dicom_without_sampling_frequency",
        dicom_without_sampling_frequency,
        r"dicom_without_sampling_frequency\.dcm: waveform group has no SamplingFrequency",
    ),
    Case(
        "dicom_without_sampling_frequency_given",
        dicom_without_sampling_frequency,
        kwargs={"fs": 1000.0},
        expect_fs=1000.0,
    ),
    Case("wfdb_gain_0_with_invalid_samples", wfdb_gain_0_with_invalid_samples, expect_units="unknown"),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_each_awkward_input_reads_right_or_is_refused_naming_the_file(tmp_path: Path, case: Case) -> None:
    path = case.write(tmp_path)
    if case.reason is not None:
        with pytest.raises(RecordError) as info:
            read_record(path, **case.kwargs)
        message = str(info.value)
        assert "\n" not in message and message.startswith(str(path)), message
        assert re.search(case.reason, message), message
        return
    record = read_record(path, **case.kwargs)
    assert record.fs == case.expect_fs and record.units == case.expect_units
    if case.expect_units == "mV" and case.expect_fs == FS:
        np.testing.assert_allclose(record.signal, SIG, atol=case.atol, rtol=0)


def test_negated_leads_are_listed_in_meta(tmp_path: Path) -> None:
    record = read_record(wfdb_minus_avr(tmp_path))
    assert record.meta["negated_leads"] == ["aVR"]
    assert record.meta["original_lead_names"][3] == "-aVR"


def test_uncalibrated_wfdb_keeps_counts_and_marks_invalid_samples_as_nan(tmp_path: Path) -> None:
    record = read_record(wfdb_gain_0_with_invalid_samples(tmp_path))
    counts = np.round(SIG * 200)
    v2 = STANDARD.index("V2")
    assert np.isnan(record.signal[v2, 100:150]).all()
    np.testing.assert_array_equal(
        np.delete(record.signal, np.s_[100:150], axis=1), np.delete(counts, np.s_[100:150], axis=1)
    )


def test_muse_without_scale_keeps_counts(tmp_path: Path) -> None:
    record = read_record(muse_without_units_per_bit(tmp_path))
    stored = np.frombuffer(base64.b64decode(_muse_leads(SIG)["V1"]), dtype="<i2")
    np.testing.assert_array_equal(record.signal[STANDARD.index("V1")], stored)
    assert any("LeadAmplitudeUnitsPerBit" in w for w in record.meta["warnings"])


def test_dicom_without_sensitivity_keeps_raw_counts(tmp_path: Path) -> None:
    pydicom = pytest.importorskip("pydicom")
    from pydicom.data import get_testdata_file
    from pydicom.waveforms.numpy_handler import multiplex_array

    raw = multiplex_array(pydicom.dcmread(get_testdata_file("waveform_ecg.dcm")), 0, as_raw=True).T
    record = read_record(dicom_without_sensitivity(tmp_path))
    np.testing.assert_array_equal(record.signal, raw.astype(np.float32))


@pytest.mark.parametrize(
    ("label", "expected"),
    [
        ("-aVR", ("aVR", -1)),
        ("\u2212aVR", ("aVR", -1)),
        ("Lead -aVR", ("aVR", -1)),
        ("aVR (inverted)", ("aVR", -1)),
        ("aVR [neg]", ("aVR", -1)),
        ("aVR_neg", ("aVR", -1)),
        ("aVR", ("aVR", 1)),
        ("V-1", ("V-1", 1)),
        ("Lead I (Einthoven)", ("Lead I (Einthoven)", 1)),
    ],
)
def test_lead_sign(label: str, expected: tuple[str, int]) -> None:
    assert lead_sign(label) == expected


@pytest.mark.parametrize("label", ["V1-", "aVR+", "II -"])
def test_a_trailing_sign_is_ambiguous(label: str) -> None:
    with pytest.raises(ValueError, match="ends in a sign"):
        lead_sign(label)


@pytest.mark.parametrize("case", ["wfdb_trailing_minus", "csv_time_in_ms_named_time", "npy_gzipped"])
def test_inspect_gives_one_line_naming_the_file(tmp_path: Path, capsys: pytest.CaptureFixture, case: str) -> None:
    chosen = next(c for c in CASES if c.name == case)
    path = chosen.write(tmp_path)
    code, out, err = run_main(capsys, "inspect", path)
    assert code == 1 and "Traceback" not in err
    assert chosen.reason is not None
    # A file inspect can identify is listed as REJECT with its reason; one it cannot is a one-line error.
    lines = [line for line in out.splitlines() if line.startswith("REJECT")] or [assert_one_line_error(err)]
    assert len(lines) == 1 and str(path) in lines[0], (out, err)
    assert re.search(chosen.reason, lines[0]), lines[0]


def test_predict_on_one_refused_file_is_a_one_line_error(
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
    tiny_classifier: Path,  # noqa: F811  (the fixture imported from test_robustness_inputs)
) -> None:
    path = wfdb_header_without_fs(tmp_path)
    pred = tmp_path / "p.csv"
    code, _, err = run_main(capsys, "predict", tiny_classifier, path, "--out", pred, "--quiet", "--device", "cpu")
    assert code == 1
    assert_one_line_error(err, re.escape(path.name), "sampling rate unknown")
    assert not pred.exists()


def test_real_records_have_no_negated_or_clock_leads() -> None:
    """The shared real records (when present) still read, and none trips the new checks."""
    root = Path(__file__).resolve().parents[2] / "shared" / "data"
    headers = sorted(root.glob("*/**/*.hea"))[:40] if root.is_dir() else []
    if not headers:
        pytest.skip("no real WFDB records under ../shared/data")
    read = 0
    for header in headers:
        try:
            record = read_record(header)
        except RecordError as exc:
            assert "changes in the same direction" not in str(exc) and "ends in a sign" not in str(exc), exc
            continue
        assert "negated_leads" not in record.meta
        read += 1
    assert read > 0


def test_an_inverted_avr_labelled_avr_is_flagged(tmp_path: Path) -> None:
    """-aVR stored under the name aVR cannot be told from the name: the augmented leads then fail
    aVR + aVL + aVF = 0, and the record says so (a correct file does not)."""
    stored = SIG.copy()
    stored[3] = -stored[3]
    np.savez(tmp_path / "flipped.npz", signal=stored, fs=FS, units="mV")
    np.savez(tmp_path / "fine.npz", signal=SIG, fs=FS, units="mV")
    flipped = read_record(tmp_path / "flipped.npz")
    assert any(w.startswith("leads aVR, aVL, aVF do not sum to zero") for w in flipped.meta["warnings"])
    assert read_record(tmp_path / "fine.npz").meta["warnings"] == []
