"""HDF5 ECG files.

Two layouts:

* CODE-15%: dataset ``tracings`` of shape ``(n_exams, 4096, 12)`` at 400 Hz in mV, with an
  ``exam_id`` dataset; each exam is one record (``key`` = exam id, or row index when there is
  no ``exam_id``). Records shorter than 4096 samples are zero-padded symmetrically in the file;
  the padding is trimmed.
* One record per file, e.g. SPH: a 2-D dataset ``ecg`` (12, 5000) in mV. A ``metadata.csv``
  next to SPH files (columns ``ECG_ID``, ``Age``, ``Sex``, ``SNOMEDCTCode``) fills age, sex and
  labels, and marks the file as SPH, whose rate is 500 Hz. Any other single-record file needs an
  ``fs`` attribute, ``--fs`` or a sidecar JSON: the rate is never guessed.

Attributes ``fs`` / ``sampling_rate``, ``units`` and ``lead_names`` on the dataset or the file
override these defaults; function arguments override everything.
"""

from __future__ import annotations

import csv
import functools
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from hubert_ecg.io._build import build_record
from hubert_ecg.io.arrays import orient_leads_first
from hubert_ecg.io.leads import STANDARD_LEADS
from hubert_ecg.io.record import Record, RecordError

__all__ = ["read_hdf5", "hdf5_record_keys", "CODE15_FS", "SPH_FS"]

CODE15_FS = 400.0
SPH_FS = 500.0
_SINGLE_KEYS = ("ecg", "signal", "signals", "data", "val", "tracing")
_FS_ATTRS = ("fs", "Fs", "FS", "sampling_rate", "sampling_frequency", "sample_rate", "samplerate", "sfreq", "srate")


def _open(path: Path):  # -> h5py.File
    import h5py

    try:
        return h5py.File(path, "r")
    except Exception as exc:  # OSError for truncated/corrupt, FileNotFoundError...
        raise RecordError(path, f"cannot open HDF5 file: {type(exc).__name__}: {exc}") from None


def hdf5_record_keys(path: str | Path) -> list[str] | None:
    """Keys of the records in a multi-record (CODE-15%-style) file, or None for one record.

    Keys are exam ids as strings; rows whose exam id is 0 are skipped (CODE-15% parts end with
    such an all-zero filler row). Without an ``exam_id`` dataset the keys are row indices. An exam id
    that appears again in the same file is not dropped: its later rows get the key ``<id>@row<r>``
    (read by row, so the second exam is not silently replaced by the first).
    """
    path = Path(path)
    with _open(path) as handle:
        if "tracings" not in handle:
            return None
        try:
            n = int(handle["tracings"].shape[0])
            if "exam_id" in handle:
                ids = [_id_text(v) for v in np.asarray(handle["exam_id"][()]).ravel()[:n]]
                seen: set[str] = set()
                keys = []
                for row, exam in enumerate(ids):
                    if exam in ("0", ""):
                        continue
                    keys.append(exam if exam not in seen else f"{exam}@row{row}")
                    seen.add(exam)
                return keys
        except Exception as exc:
            raise RecordError(path, f"cannot read HDF5 index: {type(exc).__name__}: {exc}") from None
        return [str(i) for i in range(n)]


def _id_text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace").strip()
    if isinstance(value, (np.integer, int)):
        return str(int(value))
    if isinstance(value, (np.floating, float)) and float(value).is_integer():
        return str(int(value))
    return str(value).strip()


def _attr(objects: Sequence[Any], names: Sequence[str]) -> Any:
    for obj in objects:
        for name in names:
            if name in obj.attrs:
                return obj.attrs[name]
    return None


def _text_list(value: Any) -> list[str]:
    return [v.decode() if isinstance(v, bytes) else str(v) for v in np.asarray(value).ravel()]


def _units(value: Any) -> str | list[str]:
    """A ``units`` attribute: one unit for every lead, or one per lead (kept per lead, never just the first)."""
    units = _text_list(value)
    return units[0] if len(set(units)) == 1 else units


def read_hdf5(
    path: str | Path,
    *,
    key: str | None = None,
    fs: float | None = None,
    units: str | None = None,
    lead_names: Sequence[str] | None = None,
    allow_missing_leads: bool = False,
) -> Record:
    """Read one record from an HDF5 file (see the module docstring for the layouts).

    Args:
        key: exam id (or row index) inside a CODE-15%-style file; may be omitted when the file
            holds a single exam.

    Raises:
        RecordError: truncated/corrupt file, unknown layout, unknown key, bad leads.
    """
    path = Path(path)
    with _open(path) as handle:
        try:
            if "tracings" in handle:
                return _read_multi(path, handle, key, fs, units, lead_names, allow_missing_leads)
            return _read_single(path, handle, fs, units, lead_names, allow_missing_leads)
        except RecordError:
            raise
        except Exception as exc:  # h5py raises OSError/KeyError on damaged chunks
            raise RecordError(path, f"cannot read HDF5 data: {type(exc).__name__}: {exc}") from None


def _read_multi(path, handle, key, fs, units, lead_names, allow_missing_leads) -> Record:
    tracings = handle["tracings"]
    if tracings.ndim != 3:
        raise RecordError(path, f"dataset 'tracings' must be (exams, samples, leads), got shape {tracings.shape}")
    n = tracings.shape[0]
    if key is None:
        if n != 1:
            raise RecordError(path, f"HDF5 file holds {n} exams: pass key=<exam id>")
        row = 0
    else:
        row = _row_for_key(path, handle, str(key), n)
    exam = np.asarray(tracings[row], dtype=np.float64)
    names = list(lead_names) if lead_names is not None else None
    if names is None:
        stored = _attr([tracings, handle], ("lead_names", "leads"))
        names = _text_list(stored) if stored is not None else None
    exam = orient_leads_first(path, exam, len(names) if names else len(STANDARD_LEADS))
    exam, padding = _trim_zero_padding(exam)
    if exam.shape[1] == 0:
        raise RecordError(path, f"exam {key} is all zeros (empty slot)")
    file_fs = _attr([tracings, handle], _FS_ATTRS)
    if fs is None and file_fs is None and "exam_id" not in handle:
        # CODE-15% files always carry exam ids; 'tracings' alone is someone's own layout, whose rate is unknown.
        raise RecordError(
            path,
            "sampling rate unknown: dataset 'tracings' has no 'fs' attribute and no 'exam_id' dataset beside it "
            f"(not the CODE-15% layout, whose rate is 400 Hz); pass --fs HZ or a sidecar {path.stem}.json "
            'with {"fs": HZ}',
        )
    file_units = _attr([tracings, handle], ("units",))
    exam_id = _id_text(handle["exam_id"][row]) if "exam_id" in handle else str(row)
    meta: dict[str, Any] = {"format": "hdf5-code15", "row": row, "trimmed_padding": padding}
    if key is not None and "@row" in str(key):
        exam_id = str(key)
        meta["warnings"] = [f"exam id {key.partition('@row')[0]} appears more than once in the file; this is row {row}"]
    return build_record(
        path,
        exam,
        names,
        fs=fs if fs is not None else (float(file_fs) if file_fs is not None else CODE15_FS),
        channel_units=_units(file_units) if file_units is not None else "mV",
        record_id=exam_id,
        key=str(key) if key is not None else None,
        meta=meta,
        units_override=units,
        allow_missing_leads=allow_missing_leads,
    )


def _row_for_key(path: Path, handle, key: str, n: int) -> int:
    if "exam_id" in handle:
        ids = [_id_text(v) for v in np.asarray(handle["exam_id"][()]).ravel()[:n]]
        exam, at, row_text = key.partition("@row")
        if at and row_text.isdigit() and int(row_text) < n and ids[int(row_text)] == exam:
            return int(row_text)
        if key in ids:
            return ids.index(key)
        raise RecordError(path, f"exam id {key} not in file")
    try:
        row = int(key)
    except ValueError:
        raise RecordError(path, f"key {key!r} is not a row index") from None
    if not 0 <= row < n:
        raise RecordError(path, f"row {row} out of range (file holds {n} exams)")
    return row


def _trim_zero_padding(exam: np.ndarray) -> tuple[np.ndarray, tuple[int, int]]:
    """Drop leading/trailing samples where every lead is exactly zero. Shapes (L, T) -> (L, T')."""
    live = np.flatnonzero(np.any(exam != 0, axis=0))
    if live.size == 0:
        return exam[:, :0], (exam.shape[1], 0)
    start, stop = int(live[0]), int(live[-1]) + 1
    return exam[:, start:stop], (start, exam.shape[1] - stop)


def _read_single(path, handle, fs, units, lead_names, allow_missing_leads) -> Record:
    import h5py

    name = next((k for k in _SINGLE_KEYS if k in handle), None)
    if name is None:
        datasets = [k for k, v in handle.items() if isinstance(v, h5py.Dataset) and v.ndim == 2]
        if len(datasets) != 1:
            raise RecordError(
                path,
                f"no ECG dataset found (looked for 'tracings', {', '.join(map(repr, _SINGLE_KEYS))}; "
                f"file has {', '.join(map(repr, handle.keys())) or 'nothing'})",
            )
        name = datasets[0]
    dataset = handle[name]
    if not isinstance(dataset, h5py.Dataset):
        raise RecordError(path, f"{name!r} is a group, not a dataset")
    names = list(lead_names) if lead_names is not None else None
    if names is None:
        stored = _attr([dataset, handle], ("lead_names", "leads"))
        names = _text_list(stored) if stored is not None else None
    signal = orient_leads_first(path, np.asarray(dataset[()]), len(names) if names else len(STANDARD_LEADS))
    file_fs = _attr([dataset, handle], _FS_ATTRS)
    file_units = _attr([dataset, handle], ("units",))
    meta: dict[str, Any] = {"format": "hdf5", "dataset": name}
    sph = _sph_metadata(path)
    meta.update(sph)
    rate = fs if fs is not None else (float(file_fs) if file_fs is not None else None)
    if rate is None:
        if not sph:
            # Only the SPH layout (a metadata.csv row for this file) documents its rate; never guess.
            raise RecordError(
                path,
                f"sampling rate unknown: dataset {name!r} has no 'fs' attribute and the file is "
                f"not listed in an SPH metadata.csv; pass --fs HZ or a sidecar {path.stem}.json "
                'with {"fs": HZ}',
            )
        rate = SPH_FS
        meta["fs_source"] = "SPH layout (metadata.csv): 500 Hz"
    return build_record(
        path,
        signal,
        names,
        fs=rate,
        # SPH is documented in mV; any other file without a units attribute has unknown units.
        channel_units=_units(file_units) if file_units is not None else ("mV" if sph else None),
        record_id=path.stem,
        meta=meta,
        units_override=units,
        allow_missing_leads=allow_missing_leads,
    )


def _sph_metadata(path: Path) -> dict[str, Any]:
    table = _metadata_table(str(path.parent / "metadata.csv"))
    row = table.get(path.name)
    if row is None:
        return {}
    out: dict[str, Any] = {}
    try:
        out["age"] = float(row.get("Age", ""))
    except ValueError:
        pass
    sex = (row.get("Sex") or "").strip().upper()
    if sex in ("M", "F"):
        out["sex"] = sex
    codes = row.get("SNOMEDCTCode") or ""
    out["labels"] = [c.strip() for c in codes.replace(";", ",").split(",") if c.strip()]
    return out


@functools.lru_cache(maxsize=32)
def _metadata_table(csv_path: str) -> dict[str, dict[str, str]]:
    """SPH ``metadata.csv`` keyed by ``ECG_ID`` (cached: one read per folder)."""
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as handle:
            return {row["ECG_ID"].strip(): row for row in csv.DictReader(handle) if row.get("ECG_ID")}
    except (OSError, KeyError, csv.Error, UnicodeDecodeError):
        return {}
