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
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

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


def _wfdb(folder: Path, name: str, signal: np.ndarray, fs: float = FS, names: list[str] | None = None,
          units: str = "mV") -> Path:
    import wfdb

    # adc_gain is chosen by wfdb from the range; 16-bit keeps uV-sized values representable.
    wfdb.wrsamp(name, fs=fs, units=[units] * signal.shape[0], sig_name=names or STANDARD[: signal.shape[0]],
                p_signal=signal.T, fmt=["16"] * signal.shape[0], write_dir=str(folder))
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
    body = "".join(f"""
      <LeadData>
        <LeadSampleCountTotal>{n}</LeadSampleCountTotal>
        <LeadAmplitudeUnitsPerBit>4.88</LeadAmplitudeUnitsPerBit>
        <LeadAmplitudeUnits>MICROVOLTS</LeadAmplitudeUnits>
        <LeadID>{name}</LeadID>
        <WaveFormData>{payload}</WaveFormData>
      </LeadData>""" for name, payload in leads.items())
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
    return {STANDARD[i]: base64.b64encode(np.round(signal[i] * 1000 / 4.88).astype("<i2").tobytes()).decode()
            for i in keep}


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


CASES: dict[str, Case] = {c.name: c for c in [
    Case("wfdb_truncated_dat", "reject", r"wfdb_truncated_dat\.hea: .*(signal|sample|dat|length|size|buffer)",
         "WFDB .dat cut to 30 % of its size", wfdb_truncated_dat),
    Case("wfdb_garbage_header", "reject", r"wfdb_garbage_header\.hea: ", "WFDB header with non-numeric fields",
         wfdb_garbage_header),
    Case("wfdb_missing_dat", "reject", r"wfdb_missing_dat\.hea: ", "WFDB header whose .dat is missing",
         wfdb_missing_dat),
    Case("mat_truncated", "reject", r"mat_truncated\.mat: ", "MATLAB .mat cut to 40 %", mat_truncated),
    Case("npy_truncated", "reject", r"npy_truncated\.npy: ", "NumPy .npy cut in half", npy_truncated),
    Case("npz_not_a_zip", "reject", r"npz_not_a_zip\.npz: ", ".npz with a zip magic and garbage after it",
         npz_not_a_zip),
    Case("hdf5_truncated", "reject", r"hdf5_truncated\.h5: ", "HDF5 (CODE-15% layout) cut in half", hdf5_truncated),
    Case("dicom_truncated", "reject", r"dicom_truncated\.dcm: ", "DICOM waveform (pydicom's waveform_ecg.dcm) cut "
         "to 60 %", dicom_truncated),
    Case("dicom_without_waveform", "reject", r"dicom_without_waveform\.dcm: .*(waveform|Waveform)",
         "DICOM without a WaveformSequence", dicom_without_waveform),
    Case("muse_truncated_xml", "reject", r"muse_truncated_xml\.xml: ", "MUSE XML cut mid-element", muse_truncated_xml),
    Case("muse_bad_base64", "reject", r"muse_bad_base64\.xml: .*V3", "MUSE XML with a lead that is not base64",
         muse_bad_base64),
    Case("wrong_lead_count", "reject", r"wrong_lead_count\.npz: .*(lead|12)", "8 unnamed channels",
         wrong_lead_count),
    Case("unknown_lead_names", "reject", r"unknown_lead_names\.hea: .*X1", "channels named X1..X12",
         unknown_lead_names),
    Case("duplicated_leads", "reject", r"duplicated_leads\.hea: .*II", "lead II twice (and no lead I)",
         duplicated_leads),
    Case("all_nan", "reject", r"all_nan\.npz: no finite samples", "every sample NaN", all_nan),
    Case("all_infinite", "reject", r"all_infinite\.npz: no finite samples", "every sample +inf", all_infinite),
    Case("too_short", "reject", r"record is 500 samples \(1\.000 s at 500 Hz\) long; the minimum is 1\.5 s",
         "1.0 s record (minimum 1.5 s)", too_short),
    Case("one_lead_nan", "warn", r"no finite samples in lead\(s\) V3", "lead V3 all NaN (replaced by zeros)",
         one_lead_nan),
    Case("flat_lead", "warn", r"flat \(constant\) lead\(s\) V5", "lead V5 constant", flat_lead),
    Case("some_infinite", "warn", r"10 infinite samples replaced by NaN", "10 samples of V2 are +inf",
         some_infinite),
    Case("uv_as_mv", "warn", r"values look like microvolts labelled as mV", "microvolt values in a header "
         "that says mV", uv_as_mv),
    Case("fs_257", "ok", "", "257 Hz (resampled to 500 Hz, then 100 Hz)", fs_257),
    Case("fs_1000", "ok", "", "1000 Hz", fs_1000),
    Case("minimum_length", "ok", "", "exactly 1.5 s (the minimum; padded with a mask)", minimum_length),
]}

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
