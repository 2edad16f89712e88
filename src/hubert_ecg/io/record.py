"""The in-memory ECG record, the error type every reader raises, and unit handling."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "Record",
    "RecordError",
    "RecordSource",
    "normalise_units",
    "unit_scale_to_mv",
]


class RecordError(ValueError):
    """An ECG file that cannot be turned into a usable record.

    The message is always one line, ``"<path>: <reason>"``, so batch jobs can log it as is.
    """

    def __init__(self, path: str | Path, reason: str | None = None) -> None:
        # Library messages can span lines; a log line per bad file is what callers grep for.
        if reason is None:  # RecordError("<path>: <reason>") with a ready-made message
            message = " ".join(str(path).split())
            self.path, _, self.reason = message.partition(": ")
        else:
            self.path = str(path)
            self.reason = " ".join(str(reason).split())
            message = f"{self.path}: {self.reason}"
        super().__init__(message)

    def __reduce__(self):  # keep pickling (process pools) working with two arguments
        return (type(self), (self.path, self.reason))


@dataclass
class Record:
    """One 12-lead ECG.

    Attributes:
        signal: float32 array, shape ``(12, n_samples)``, rows in ``STANDARD_LEADS`` order
            (I, II, III, aVR, aVL, aVF, V1..V6); in mV when ``units == "mV"``. Rows of leads
            that were absent (only with ``allow_missing_leads``) are NaN.
        fs: sampling rate in Hz.
        record_id: short identifier (file stem, WFDB record name, or exam id).
        source: file path, plus ``"#<key>"`` for one record inside a multi-record container.
        units: ``"mV"`` or ``"unknown"`` (normalised units such as PTB-XL's ``NU``, or files
            that carry no calibration).
        meta: free-form metadata. Keys the readers fill when they know them: ``format``,
            ``age`` (float), ``sex`` ("M"/"F"), ``labels`` (list of str, e.g. SNOMED CT codes),
            ``original_lead_names`` (list of str, file order), ``derived_leads`` (list of str),
            ``missing_leads`` (list of str), ``ignored_leads`` (leads beyond the 12, dropped),
            ``warnings`` (list of str), ``unscorable`` (why the record is physically implausible
            and must get no probabilities), ``uncalibrated`` (WFDB gain 0), ``sidecar`` (the
            ``<record>.json`` that was applied), ``fs_source`` (where the rate came from).
    """

    signal: np.ndarray
    fs: float
    record_id: str
    source: str
    units: str
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def n_samples(self) -> int:
        return int(self.signal.shape[1])

    @property
    def duration_s(self) -> float:
        return self.n_samples / self.fs


@dataclass(frozen=True, slots=True)
class RecordSource:
    """A cheap, picklable pointer to one record (for parallel workers and resumable jobs).

    Attributes:
        path: the file to open (for WFDB, the ``.hea`` header).
        key: exam id or row index inside a multi-record container (CODE-15% HDF5), else None.
        record_id: the id the record will carry once read.
    """

    path: str
    key: str | None
    record_id: str

    @property
    def source(self) -> str:
        return self.path if self.key is None else f"{self.path}#{self.key}"


# Lower-cased, with "µ" / "μ" folded to "u", mapped to the factor that converts to mV.
_UNIT_TO_MV: dict[str, float] = {
    "mv": 1.0,
    "millivolt": 1.0,
    "millivolts": 1.0,
    "uv": 1e-3,
    "microvolt": 1e-3,
    "microvolts": 1e-3,
    "v": 1e3,
    "volt": 1e3,
    "volts": 1e3,
    "nv": 1e-6,
    "microv": 1e-3,
    "mcv": 1e-3,
}


def _fold_unit(unit: str) -> str:
    return unit.strip().lower().replace("\u00b5", "u").replace("\u03bc", "u").replace(" ", "")


def unit_scale_to_mv(unit: str | None) -> float | None:
    """Factor converting values in ``unit`` to mV, or None when ``unit`` is not a voltage.

    ``"uV"``, ``"μV"``, ``"µV"``, ``"microvolts"`` give 1e-3; ``"mV"`` 1; ``"V"`` 1e3; anything
    else (``"NU"``, ``"adu"``, empty) None.
    """
    if unit is None:
        return None
    return _UNIT_TO_MV.get(_fold_unit(unit))


def normalise_units(unit: str | None) -> str:
    """``"mV"`` for any voltage unit (after conversion), else ``"unknown"``."""
    return "mV" if unit_scale_to_mv(unit) is not None else "unknown"
