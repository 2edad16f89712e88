"""A corpus of bad (and awkward but valid) ECG inputs, generated on demand into a folder.

Every case is a small function that writes one record (plus companions) and returns the path to
hand to a reader or a batch command. ``CASES`` says what must happen to each one:

* ``"reject"``: a batch job lists the file in its rejects table with a reason matching ``reason``
  and goes on; a single-input command exits 2 with that reason on one line;
* ``"warn"``: the record is used and ``reason`` matches one of its ``meta["warnings"]``;
* ``"ok"``: the record is used as it is (e.g. odd sampling rates that must simply work).

The corpus is self-describing (WFDB headers, ``.npz``/``.mat`` with ``fs``, DICOM, MUSE XML), so one
``prepare``/``predict`` over the whole folder needs no ``--fs``. ``docs/RELIABILITY.md`` lists it.

Usage::

    from bad_inputs import CASES, write_case, write_corpus
    paths = write_corpus(tmp_path / "corpus")        # {case name: path}
"""

from __future__ import annotations

import base64
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hubert_ecg.synthetic import synthetic_record

STANDARD = ["I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6"]
FS = 500.0


@dataclass(frozen=True)
class Case:
    """What a bad input is and what must happen to it."""

    name: str
    expect: str  # "reject" | "warn" | "ok"
    reason: str  # regex on the one-line reason (reject) or on one of the record's warnings (warn)
    what: str  # one-line description for the docs table
    write: Callable[[Path], Path]


def _signal(seconds: float = 10.0, fs: float = FS, seed: int = 0) -> np.ndarray:
    """A plausible (12, n) mV record (Einthoven holds, so no spurious warnings)."""
    return synthetic_record(np.random.default_rng(seed), fs=fs, seconds=seconds).signal.astype(np.float64)


def _wfdb(
    folder: Path, name: str, signal: np.ndarray, fs: float = FS, names: list[str] | None = None, units: str = "mV"
) -> Path:
    import wfdb

    # adc_gain is chosen by wfdb from the range; 16-bit keeps uV-sized values representable.
    wfdb.wrsamp(
        name,
        fs=fs,
        units=[units] * signal.shape[0],
        sig_name=names or STANDARD[: signal.shape[0]],
        p_signal=signal.T,
        fmt=["16"] * signal.shape[0],
        write_dir=str(folder),
    )
    return folder / f"{name}.hea"


def _npz(folder: Path, name: str, signal: np.ndarray, fs: float = FS, **extra: object) -> Path:
    path = folder / f"{name}.npz"
    np.savez(path, signal=signal.astype(np.float32), fs=fs, units="mV", **extra)
    return path


def _truncate(path: Path, fraction: float) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * fraction)])
    return path


# --- damaged files of each format --------------------------------------------------------------
def wfdb_truncated_dat(folder: Path) -> Path:
    header = _wfdb(folder, "wfdb_truncated_dat", _signal())
    _truncate(header.with_suffix(".dat"), 0.3)
    return header


def wfdb_garbage_header(folder: Path) -> Path:
    header = _wfdb(folder, "wfdb_garbage_header", _signal())
    header.write_text("wfdb_garbage_header twelve fivehundred\n%%% not a signal line\n")
    return header


def wfdb_missing_dat(folder: Path) -> Path:
    header = _wfdb(folder, "wfdb_missing_dat", _signal())
    header.with_suffix(".dat").unlink()
    return header


def mat_truncated(folder: Path) -> Path:
    from scipy.io import savemat

    path = folder / "mat_truncated.mat"
    savemat(path, {"val": _signal().astype(np.float32), "fs": FS})
    return _truncate(path, 0.4)


def npy_truncated(folder: Path) -> Path:
    path = folder / "npy_truncated.npy"
    np.save(path, _signal().astype(np.float32))
    return _truncate(path, 0.5)


def npz_not_a_zip(folder: Path) -> Path:
    path = folder / "npz_not_a_zip.npz"
    path.write_bytes(b"PK\x03\x04" + bytes(range(256)) * 4)
    return path


def hdf5_truncated(folder: Path) -> Path:
    import h5py

    path = folder / "hdf5_truncated.h5"
    with h5py.File(path, "w") as handle:
        handle.create_dataset("tracings", data=np.stack([_signal(seconds=8.0, fs=400.0).T] * 2).astype(np.float32))
        handle.attrs["fs"] = 400.0
    return _truncate(path, 0.5)


def dicom_truncated(folder: Path) -> Path:
    from pydicom.data import get_testdata_file

    path = folder / "dicom_truncated.dcm"
    shutil.copyfile(get_testdata_file("waveform_ecg.dcm"), path)
    return _truncate(path, 0.6)


def dicom_without_waveform(folder: Path) -> Path:
    import pydicom
    from pydicom.data import get_testdata_file

    ds = pydicom.dcmread(get_testdata_file("waveform_ecg.dcm"))
    del ds.WaveformSequence  # e.g. a report or image exported with an ECG SOP class
    path = folder / "dicom_without_waveform.dcm"
    ds.save_as(path)
    return path


def _muse(leads: dict[str, str], fs: int = 500, n: int = 5000) -> str:
    body = "".join(
        f"""
      <LeadData>
        <LeadSampleCountTotal>{n}</LeadSampleCountTotal>
        <LeadAmplitudeUnitsPerBit>4.88</LeadAmplitudeUnitsPerBit>
        <LeadAmplitudeUnits>MICROVOLTS</LeadAmplitudeUnits>
        <LeadID>{name}</LeadID>
        <WaveFormData>{payload}</WaveFormData>
      </LeadData>"""
        for name, payload in leads.items()
    )
    return f"""<?xml version="1.0" encoding="ISO-8859-1"?>
<RestingECG>
  <Waveform>
    <WaveformType>Rhythm</WaveformType>
    <SampleBase>{fs}</SampleBase>
    <SampleExponent>0</SampleExponent>
    <NumberofLeads>{len(leads)}</NumberofLeads>{body}
  </Waveform>
</RestingECG>
"""


def _muse_leads(signal: np.ndarray) -> dict[str, str]:
    # MUSE stores I, II, V1-V6 as int16 counts of 4.88 uV; the reader derives III, aVR, aVL, aVF.
    keep = [0, 1, 6, 7, 8, 9, 10, 11]
    return {
        STANDARD[i]: base64.b64encode(np.round(signal[i] * 1000 / 4.88).astype("<i2").tobytes()).decode() for i in keep
    }


def muse_truncated_xml(folder: Path) -> Path:
    path = folder / "muse_truncated_xml.xml"
    path.write_text(_muse(_muse_leads(_signal())))
    return _truncate(path, 0.5)


def muse_bad_base64(folder: Path) -> Path:
    leads = _muse_leads(_signal())
    leads["V3"] = "this is ### not base64 at all"
    path = folder / "muse_bad_base64.xml"
    path.write_text(_muse(leads))
    return path


# --- readable files with unusable content -------------------------------------------------------
def wrong_lead_count(folder: Path) -> Path:
    return _npz(folder, "wrong_lead_count", _signal()[:8])


def unknown_lead_names(folder: Path) -> Path:
    return _wfdb(folder, "unknown_lead_names", _signal(), names=[f"X{i}" for i in range(1, 13)])


def duplicated_leads(folder: Path) -> Path:
    header = _wfdb(folder, "duplicated_leads", _signal())
    # wfdb refuses to write duplicate names, so rename lead I to II in the header text itself.
    lines = header.read_text().splitlines()
    first_signal = lines[1].rsplit(" ", 1)
    assert first_signal[1] == "I", lines[1]
    lines[1] = f"{first_signal[0]} II"
    header.write_text("\n".join(lines) + "\n")
    return header


def all_nan(folder: Path) -> Path:
    return _npz(folder, "all_nan", np.full((12, 5000), np.nan))


def all_infinite(folder: Path) -> Path:
    return _npz(folder, "all_infinite", np.full((12, 5000), np.inf))


def too_short(folder: Path) -> Path:
    return _wfdb(folder, "too_short", _signal(seconds=1.0))


# --- awkward but usable -------------------------------------------------------------------------
def one_lead_nan(folder: Path) -> Path:
    signal = _signal()
    signal[8] = np.nan
    return _npz(folder, "one_lead_nan", signal)


def flat_lead(folder: Path) -> Path:
    signal = _signal()
    signal[10] = 0.25
    return _npz(folder, "flat_lead", signal)


def some_infinite(folder: Path) -> Path:
    signal = _signal()
    signal[7, 100:110] = np.inf
    return _npz(folder, "some_infinite", signal)


def uv_as_mv(folder: Path) -> Path:
    return _wfdb(folder, "uv_as_mv", _signal() * 1000.0, units="mV")


def fs_257(folder: Path) -> Path:
    return _wfdb(folder, "fs_257", _signal(fs=257.0), fs=257.0)


def fs_1000(folder: Path) -> Path:
    return _wfdb(folder, "fs_1000", _signal(fs=1000.0), fs=1000.0)


def minimum_length(folder: Path) -> Path:
    return _wfdb(folder, "minimum_length", _signal(seconds=1.5))


# --- sampling rate and units never guessed; physical plausibility; awkward layouts ----------------
def npy_without_fs(folder: Path, name: str = "npy_without_fs") -> Path:
    path = folder / f"{name}.npy"
    np.save(path, _signal().astype(np.float32))
    return path


def npz_without_fs(folder: Path) -> Path:
    path = folder / "npz_without_fs.npz"
    np.savez(path, signal=_signal().astype(np.float32))
    return path


def mat_without_fs(folder: Path) -> Path:
    from scipy.io import savemat

    path = folder / "mat_without_fs.mat"
    savemat(path, {"val": _signal().astype(np.float32)})
    return path


def csv_without_fs(folder: Path) -> Path:
    path = folder / "csv_without_fs.csv"
    np.savetxt(path, _signal(seconds=3.0).T, delimiter=",", header=",".join(STANDARD), comments="", fmt="%.4f")
    return path


def hdf5_single_without_fs(folder: Path) -> Path:
    import h5py

    path = folder / "hdf5_single_without_fs.h5"
    with h5py.File(path, "w") as handle:
        handle["ecg"] = _signal().astype(np.float32)
    return path


def fs_too_low(folder: Path) -> Path:
    return _wfdb(folder, "fs_too_low", _signal(fs=50.0), fs=50.0)


def sidecar_bad_json(folder: Path) -> Path:
    path = npy_without_fs(folder, "sidecar_bad_json")
    (folder / "sidecar_bad_json.json").write_text('{"fs": 500,')
    return path


def sidecar_bad_fs(folder: Path) -> Path:
    path = npy_without_fs(folder, "sidecar_bad_fs")
    (folder / "sidecar_bad_fs.json").write_text('{"fs": -250}')
    return path


def npy_with_sidecar(folder: Path) -> Path:
    path = folder / "npy_with_sidecar.npy"
    np.save(path, (_signal(fs=250.0) * 1000).astype(np.float32))
    (folder / "npy_with_sidecar.json").write_text('{"fs": 250, "units": "uV"}')
    return path


def csv_headerless(folder: Path) -> Path:
    path = folder / "csv_headerless.csv"
    np.savetxt(path, _signal(seconds=3.0).T, delimiter=",", header="fs: 500", comments="# ", fmt="%.4f")
    return path


def partial_nan(folder: Path) -> Path:
    signal = _signal()
    signal[4, 1000:1040] = np.nan
    return _npz(folder, "partial_nan", signal)


def frank_xyz_15_lead(folder: Path) -> Path:
    signal = _signal()
    xyz = signal[[0, 5, 7]] * 0.8
    return _wfdb(folder, "frank_xyz_15_lead", np.vstack([signal, xyz]), names=STANDARD + ["vx", "vy", "vz"])


def wfdb_gain_0(folder: Path) -> Path:
    import re

    header = _wfdb(folder, "wfdb_gain_0", _signal())
    lines = header.read_text().splitlines()
    lines = lines[:1] + [re.sub(r" [0-9.]+(\(-?\d+\))?/mV", " 0/mV", line) for line in lines[1:]]
    header.write_text("\n".join(lines) + "\n")
    return header


def wfdb_multi_segment(folder: Path) -> Path:
    """Not in CASES: its segment headers are records of their own in a folder walk."""
    signal = _signal()
    _wfdb(folder, "wfdb_multi_segment_1", signal[:, :2500])  # each segment gets its own gains
    _wfdb(folder, "wfdb_multi_segment_2", signal[:, 2500:] * 1.7)
    header = folder / "wfdb_multi_segment.hea"
    header.write_text("wfdb_multi_segment/2 12 500 5000\nwfdb_multi_segment_1 2500\nwfdb_multi_segment_2 2500\n")
    return header


def hl7_ok(folder: Path, name: str = "hl7_ok") -> Path:
    from format_files import write_hl7

    return write_hl7(folder / f"{name}.xml", _signal())


def hl7_utf16_bom(folder: Path) -> Path:
    from format_files import write_hl7

    return write_hl7(folder / "hl7_utf16_bom.xml", _signal(), encoding="utf-16")


def hl7_truncated(folder: Path) -> Path:
    return _truncate(hl7_ok(folder, "hl7_truncated"), 0.5)


def hl7_no_time(folder: Path) -> Path:
    from format_files import write_hl7

    return write_hl7(folder / "hl7_no_time.xml", _signal(), increment="")


def hl7_bad_digits(folder: Path) -> Path:
    path = hl7_ok(folder, "hl7_bad_digits")
    text = path.read_text()
    at = text.rindex("<digits>")  # the last lead of the rhythm series (V6), not the median beat
    path.write_text(text[:at] + "<digits>12 x7 " + text[at + len("<digits>") :])
    return path


def philips_xli_ok(folder: Path, name: str = "philips_xli_ok") -> Path:
    from format_files import write_philips

    return write_philips(folder / f"{name}.xml", _signal())[0]


def philips_truncated(folder: Path) -> Path:
    return _truncate(philips_xli_ok(folder, "philips_truncated"), 0.6)


def philips_bad_base64(folder: Path) -> Path:
    from format_files import write_philips

    return write_philips(folder / "philips_bad_base64.xml", _signal(), compression="none", waveform="@@ not base64 @@")[
        0
    ]


def edf_ok(folder: Path, name: str = "edf_ok") -> Path:
    from format_files import write_edf

    return write_edf(folder / f"{name}.edf", _signal())


def bdf_ok(folder: Path) -> Path:
    from format_files import write_edf

    return write_edf(folder / "bdf_ok.bdf", _signal(), bdf=True, unit="mV")


def edf_truncated(folder: Path) -> Path:
    return _truncate(edf_ok(folder, "edf_truncated"), 0.5)


def edf_without_ecg(folder: Path) -> Path:
    from format_files import write_edf

    return write_edf(folder / "edf_without_ecg.edf", _signal()[:2], labels=["EEG Fp1", "Resp"])


def muse_utf16_bom(folder: Path) -> Path:
    path = folder / "muse_utf16_bom.xml"
    path.write_bytes(_muse(_muse_leads(_signal())).replace("ISO-8859-1", "UTF-16").encode("utf-16"))
    return path


def csv_headerless_11_columns(folder: Path) -> Path:
    path = folder / "csv_headerless_11_columns.csv"
    np.savetxt(path, _signal(seconds=3.0)[:11].T, delimiter=",", header="fs: 500", comments="# ", fmt="%.4f")
    return path


def npz_fs_zero(folder: Path) -> Path:
    return _npz(folder, "npz_fs_zero", _signal(), fs=0.0)


def hl7_lengths_differ(folder: Path) -> Path:
    from format_files import hl7_sequence, write_hl7

    signal = _signal()
    body = "".join(
        hl7_sequence(f"MDC_ECG_LEAD_{name.upper()}", np.round(signal[i] * 400)[: 5000 - (i == 7) * 10])
        for i, name in enumerate(STANDARD)
    )
    return write_hl7(folder / "hl7_lengths_differ.xml", signal, sequences=body)


def edf_mixed_rates(folder: Path) -> Path:
    import edfio

    signal = _signal()
    signals = [
        edfio.EdfSignal(
            row * 1000, 500.0, label=f"ECG {name}", physical_dimension="uV", physical_range=(-10000.0, 10000.0)
        )
        for row, name in zip(signal[:11], STANDARD)
    ]
    signals.append(
        edfio.EdfSignal(
            signal[11, ::2] * 1000, 250.0, label="ECG V6", physical_dimension="uV", physical_range=(-10000.0, 10000.0)
        )
    )
    path = folder / "edf_mixed_rates.edf"
    edfio.Edf(signals).write(path)
    return path


CASES: dict[str, Case] = {
    c.name: c
    for c in [
        Case(
            "wfdb_truncated_dat",
            "reject",
            r"wfdb_truncated_dat\.hea: .*(signal|sample|dat|length|size|buffer)",
            "WFDB .dat cut to 30 % of its size",
            wfdb_truncated_dat,
        ),
        Case(
            "wfdb_garbage_header",
            "reject",
            r"wfdb_garbage_header\.hea: ",
            "WFDB header with non-numeric fields",
            wfdb_garbage_header,
        ),
        Case(
            "wfdb_missing_dat",
            "reject",
            r"wfdb_missing_dat\.hea: ",
            "WFDB header whose .dat is missing",
            wfdb_missing_dat,
        ),
        Case("mat_truncated", "reject", r"mat_truncated\.mat: ", "MATLAB .mat cut to 40 %", mat_truncated),
        Case("npy_truncated", "reject", r"npy_truncated\.npy: ", "NumPy .npy cut in half", npy_truncated),
        Case(
            "npz_not_a_zip",
            "reject",
            r"npz_not_a_zip\.npz: ",
            ".npz with a zip magic and garbage after it",
            npz_not_a_zip,
        ),
        Case("hdf5_truncated", "reject", r"hdf5_truncated\.h5: ", "HDF5 (CODE-15% layout) cut in half", hdf5_truncated),
        Case(
            "dicom_truncated",
            "reject",
            r"dicom_truncated\.dcm: ",
            "DICOM waveform (pydicom's waveform_ecg.dcm) cut to 60 %",
            dicom_truncated,
        ),
        Case(
            "dicom_without_waveform",
            "reject",
            r"dicom_without_waveform\.dcm: .*(waveform|Waveform)",
            "DICOM without a WaveformSequence",
            dicom_without_waveform,
        ),
        Case(
            "muse_truncated_xml", "reject", r"muse_truncated_xml\.xml: ", "MUSE XML cut mid-element", muse_truncated_xml
        ),
        Case(
            "muse_bad_base64",
            "reject",
            r"muse_bad_base64\.xml: .*V3",
            "MUSE XML with a lead that is not base64",
            muse_bad_base64,
        ),
        Case(
            "wrong_lead_count", "reject", r"wrong_lead_count\.npz: .*(lead|12)", "8 unnamed channels", wrong_lead_count
        ),
        Case(
            "unknown_lead_names",
            "reject",
            r"unknown_lead_names\.hea: .*X1",
            "channels named X1..X12",
            unknown_lead_names,
        ),
        Case(
            "duplicated_leads",
            "reject",
            r"duplicated_leads\.hea: .*II",
            "lead II twice (and no lead I)",
            duplicated_leads,
        ),
        Case("all_nan", "reject", r"all_nan\.npz: no finite samples", "every sample NaN", all_nan),
        Case("all_infinite", "reject", r"all_infinite\.npz: no finite samples", "every sample +inf", all_infinite),
        Case(
            "too_short",
            "reject",
            r"record is 500 samples \(1\.000 s at 500 Hz\) long; the minimum is 1\.5 s",
            "1.0 s record (minimum 1.5 s)",
            too_short,
        ),
        Case(
            "one_lead_nan",
            "warn",
            r"no finite samples in lead\(s\) V3",
            "lead V3 all NaN (replaced by zeros)",
            one_lead_nan,
        ),
        Case("flat_lead", "warn", r"flat \(constant\) lead\(s\) V5", "lead V5 constant", flat_lead),
        Case(
            "some_infinite", "warn", r"10 infinite samples replaced by NaN", "10 samples of V2 are +inf", some_infinite
        ),
        Case(
            "uv_as_mv",
            "warn",
            r"values look like microvolts labelled as mV",
            "microvolt values in a header that says mV",
            uv_as_mv,
        ),
        Case("fs_257", "ok", "", "257 Hz (resampled to 500 Hz, then 100 Hz)", fs_257),
        Case("fs_1000", "ok", "", "1000 Hz", fs_1000),
        Case("minimum_length", "ok", "", "exactly 1.5 s (the minimum; padded with a mask)", minimum_length),
        # nothing guessed: a rate the file does not state needs --fs or a sidecar
        Case(
            "npy_without_fs",
            "reject",
            r"npy_without_fs\.npy: sampling rate unknown: .*pass --fs HZ or a sidecar "
            r"npy_without_fs\.json",
            ".npy (no rate stored; 500 Hz is not assumed)",
            npy_without_fs,
        ),
        Case(
            "npz_without_fs",
            "reject",
            r"npz_without_fs\.npz: sampling rate unknown: .*--fs",
            ".npz without an fs entry",
            npz_without_fs,
        ),
        Case(
            "mat_without_fs",
            "reject",
            r"mat_without_fs\.mat: sampling rate unknown: .*--fs",
            "bare .mat, no fs variable",
            mat_without_fs,
        ),
        Case(
            "csv_without_fs",
            "reject",
            r"csv_without_fs\.csv: sampling rate unknown \(no time column, no '# fs:' "
            r"line\): pass --fs",
            "CSV with lead names but no time column or '# fs:' line",
            csv_without_fs,
        ),
        Case(
            "hdf5_single_without_fs",
            "reject",
            r"hdf5_single_without_fs\.h5: sampling rate unknown: .*--fs",
            "single-record HDF5 without an fs attribute (not SPH)",
            hdf5_single_without_fs,
        ),
        Case(
            "fs_too_low",
            "reject",
            r"fs_too_low\.hea: sampling rate 50 Hz is too low for the model's 0\.05-47 Hz band",
            "50 Hz (the 47 Hz band edge needs 94 Hz)",
            fs_too_low,
        ),
        Case(
            "sidecar_bad_json",
            "reject",
            r"sidecar_bad_json\.npy: sidecar sidecar_bad_json\.json: unreadable JSON",
            "sidecar JSON cut short",
            sidecar_bad_json,
        ),
        Case(
            "sidecar_bad_fs",
            "reject",
            r"sidecar_bad_fs\.npy: sidecar sidecar_bad_fs\.json: 'fs' must be a positive number of Hz, got -250",
            "sidecar with a negative fs",
            sidecar_bad_fs,
        ),
        Case("npy_with_sidecar", "ok", "", ".npy in uV at 250 Hz described by a sidecar JSON", npy_with_sidecar),
        Case(
            "csv_headerless",
            "warn",
            r"no header row; assumed 12 columns in standard lead order",
            "CSV without a header row (and a '# fs: 500' line)",
            csv_headerless,
        ),
        Case(
            "partial_nan",
            "warn",
            r"40 NaN sample\(s\) in lead\(s\) aVL filled with the lead mean",
            "40 NaN samples in aVL (filled, counted)",
            partial_nan,
        ),
        Case(
            "frank_xyz_15_lead",
            "warn",
            r"ignored 3 lead\(s\) beyond the standard 12: vx, vy, vz",
            "15-lead PTB-style record (Frank vx, vy, vz)",
            frank_xyz_15_lead,
        ),
        Case(
            "wfdb_gain_0", "warn", r"uncalibrated: WFDB gain 0", "WFDB header with gain 0 (uncalibrated)", wfdb_gain_0
        ),
        Case(
            "csv_headerless_11_columns",
            "reject",
            r"csv_headerless_11_columns\.csv: no header row of lead names and "
            r"11 columns .*pass --lead-names",
            "header-less CSV with 11 columns (order cannot be assumed)",
            csv_headerless_11_columns,
        ),
        Case(
            "npz_fs_zero",
            "reject",
            r"npz_fs_zero\.npz: invalid sampling rate 0\.0",
            ".npz whose fs entry is 0",
            npz_fs_zero,
        ),
        # hospital formats
        Case(
            "hl7_lengths_differ",
            "reject",
            r"hl7_lengths_differ\.xml: leads have different lengths \[4990, 5000\]",
            "HL7 aECG with one lead 10 samples short",
            hl7_lengths_differ,
        ),
        Case(
            "edf_mixed_rates",
            "reject",
            r"edf_mixed_rates\.edf: ECG channels have different sampling rates "
            r"\[250\.0, 500\.0\] Hz",
            "EDF whose V6 is sampled at 250 Hz, the rest at 500 Hz",
            edf_mixed_rates,
        ),
        Case("muse_utf16_bom", "ok", "", "GE MUSE XML in UTF-16 with a BOM", muse_utf16_bom),
        Case("hl7_ok", "ok", "", "HL7 aECG (rhythm series, MDC lead codes, uV scale)", hl7_ok),
        Case("hl7_utf16_bom", "ok", "", "HL7 aECG in UTF-16 with a BOM", hl7_utf16_bom),
        Case(
            "hl7_truncated",
            "reject",
            r"hl7_truncated\.xml: malformed HL7 aECG XML",
            "HL7 aECG cut in half",
            hl7_truncated,
        ),
        Case(
            "hl7_no_time",
            "reject",
            r"hl7_no_time\.xml: HL7 aECG: missing time increment",
            "HL7 aECG whose time sequence has no increment",
            hl7_no_time,
        ),
        Case(
            "hl7_bad_digits",
            "reject",
            r"hl7_bad_digits\.xml: lead V6: digit 'x7' is not a number",
            "HL7 aECG with a non-numeric digit",
            hl7_bad_digits,
        ),
        Case("philips_xli_ok", "ok", "", "Philips PageWriter XML 1.04, XLI-compressed", philips_xli_ok),
        Case(
            "philips_truncated",
            "reject",
            r"philips_truncated\.xml: malformed Philips XML",
            "Philips XML cut to 60 %",
            philips_truncated,
        ),
        Case(
            "philips_bad_base64",
            "reject",
            r"philips_bad_base64\.xml: cannot decode Philips XLI waveforms: .*base64",
            "Philips XML whose XLI waveform is not base64",
            philips_bad_base64,
        ),
        Case("edf_ok", "ok", "", "EDF with 'ECG I'...'ECG V6' signals in uV", edf_ok),
        Case("bdf_ok", "ok", "", "BDF (24-bit) in mV", bdf_ok),
        Case(
            "edf_truncated",
            "reject",
            r"edf_truncated\.edf: cannot read EDF file: .*(Incomplete|truncated)",
            "EDF cut in half",
            edf_truncated,
        ),
        Case(
            "edf_without_ecg",
            "reject",
            r"edf_without_ecg\.edf: no ECG lead among the EDF signals",
            "EDF with EEG and respiration only",
            edf_without_ecg,
        ),
    ]
}

REJECTED = [name for name, case in CASES.items() if case.expect == "reject"]
USABLE = [name for name, case in CASES.items() if case.expect != "reject"]


def write_case(name: str, folder: str | Path) -> Path:
    """Write case ``name`` into ``folder`` (created) and return the path to read."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    return CASES[name].write(folder)


def write_corpus(folder: str | Path, names: list[str] | None = None) -> dict[str, Path]:
    """Write every case (or ``names``) into one folder; returns ``{name: path to read}``."""
    return {name: write_case(name, folder) for name in (names or list(CASES))}
