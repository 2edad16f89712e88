"""GE MUSE XML resting ECGs (``<RestingECG>`` with base64 ``WaveFormData`` per lead)."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

import numpy as np

from hubert_ecg.io._build import build_record, xml_root
from hubert_ecg.io.record import Record, RecordError

__all__ = ["read_muse", "is_muse_xml"]

_MUSE_UNITS = {"MICROVOLTS": "uV", "MILLIVOLTS": "mV", "VOLTS": "V"}


def is_muse_xml(path: str | Path) -> bool:
    """True when the file looks like a MUSE export (root element ``RestingECG``)."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(4096)
    except OSError:
        return False
    return b"<RestingECG" in head


def _text(element: ElementTree.Element | None, tag: str, default: str | None = None) -> str | None:
    if element is None:
        return default
    found = element.find(tag)
    if found is None or found.text is None:
        return default
    return found.text.strip()


def _pick_waveform(path: Path, root: ElementTree.Element) -> ElementTree.Element:
    waveforms = root.findall("Waveform")
    if not waveforms:
        raise RecordError(path, "MUSE XML has no <Waveform> element")
    for waveform in waveforms:
        if (_text(waveform, "WaveformType") or "").lower() == "rhythm":
            return waveform
    # Only a median beat is left: usable, but it is one averaged beat, not a recording.
    return waveforms[0]


def read_muse(
    path: str | Path,
    *,
    fs: float | None = None,
    units: str | None = None,
    lead_names: Sequence[str] | None = None,
    allow_missing_leads: bool = False,
) -> Record:
    """Read a GE MUSE XML ECG, preferring the ``Rhythm`` waveform over the median beat.

    Each ``LeadData`` holds little-endian int16 samples (base64) scaled by
    ``LeadAmplitudeUnitsPerBit`` in ``LeadAmplitudeUnits``. MUSE usually stores 8 leads
    (I, II, V1-V6); III, aVR, aVL and aVF are then derived and listed in
    ``meta["derived_leads"]``.

    Raises:
        RecordError: malformed XML, bad base64, fewer bytes than the declared sample count,
            inconsistent lead lengths, bad leads.
    """
    path = Path(path)
    root = _parse_root(path)
    waveform = _pick_waveform(path, root)
    kind = _text(waveform, "WaveformType") or "unknown"
    try:
        base = float(_text(waveform, "SampleBase") or "nan")
        exponent = int(_text(waveform, "SampleExponent") or "0")
    except ValueError:
        raise RecordError(path, "unreadable SampleBase/SampleExponent") from None
    file_fs = base * 10.0**exponent
    if fs is None and not np.isfinite(file_fs):
        raise RecordError(path, f"{kind} waveform has no <SampleBase> (sampling rate unknown); pass --fs HZ")

    names: list[str] = []
    rows: list[np.ndarray] = []
    channel_units: list[str | None] = []
    for number, lead in enumerate(waveform.findall("LeadData")):
        name, row, unit = _lead_data(path, lead, number)
        channel_units.append(unit)
        names.append(name)
        rows.append(row)
    if not rows:
        raise RecordError(path, f"{kind} waveform has no <LeadData>")
    lengths = {row.size for row in rows}
    if len(lengths) != 1:
        raise RecordError(path, f"leads have different lengths {sorted(lengths)}")

    meta = _meta(root, kind)
    unscaled = [
        name for name, lead in zip(names, waveform.findall("LeadData")) if not _text(lead, "LeadAmplitudeUnitsPerBit")
    ]
    if unscaled:
        meta.setdefault("warnings", []).append(
            f"no LeadAmplitudeUnitsPerBit for lead(s) {', '.join(unscaled)}: values are ADC counts, units unknown"
        )
    return build_record(
        path,
        np.vstack(rows),
        list(lead_names) if lead_names is not None else names,
        fs=fs if fs is not None else file_fs,
        channel_units=channel_units,
        record_id=path.stem,
        meta=meta,
        units_override=units,
        allow_missing_leads=allow_missing_leads,
    )


def _parse_root(path: Path) -> ElementTree.Element:
    return xml_root(path, "MUSE XML", "RestingECG", "a MUSE XML ECG")


def _lead_data(path: Path, lead: ElementTree.Element, number: int) -> tuple[str, np.ndarray, str | None]:
    """``(lead name, samples in the file's unit, unit)`` of one ``LeadData`` element."""
    name = _text(lead, "LeadID") or f"lead {number}"
    payload = _text(lead, "WaveFormData") or ""
    try:
        data = base64.b64decode("".join(payload.split()), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise RecordError(path, f"lead {name}: invalid base64 waveform data ({exc})") from None
    declared = _text(lead, "LeadSampleCountTotal")
    n_declared = int(declared) if declared and declared.isdigit() else len(data) // 2
    if len(data) < 2 * n_declared or len(data) % 2:
        raise RecordError(path, f"lead {name}: waveform data truncated ({len(data)} bytes for {n_declared} samples)")
    if declared and declared.isdigit() and len(data) > 2 * n_declared:
        # More samples than the count the file states: which of the two is wrong cannot be told, so the
        # surplus is not silently dropped.
        raise RecordError(
            path,
            f"lead {name}: waveform data holds {len(data) // 2} samples but LeadSampleCountTotal says {n_declared}",
        )
    samples = np.frombuffer(data[: 2 * n_declared], dtype="<i2").astype(np.float64)
    per_bit_text = _text(lead, "LeadAmplitudeUnitsPerBit")
    try:
        per_bit = float(per_bit_text) if per_bit_text else None
    except ValueError:
        raise RecordError(path, f"lead {name}: unreadable LeadAmplitudeUnitsPerBit") from None
    if per_bit is None or not np.isfinite(per_bit) or per_bit <= 0:
        # Without the scale the samples are counts: naming them in LeadAmplitudeUnits would be off by
        # the missing factor (4.88 on GE carts), so their unit is unknown.
        return name, samples, None
    unit_text = (_text(lead, "LeadAmplitudeUnits") or "").upper()
    return name, samples * per_bit, _MUSE_UNITS.get(unit_text, unit_text or None)


def _meta(root: ElementTree.Element, kind: str) -> dict[str, Any]:
    """Demographics and diagnosis statements of the export, and a warning when no Rhythm waveform was found."""
    demographics = root.find("PatientDemographics")
    age_text = _text(demographics, "PatientAge")
    try:
        age = float(age_text) if age_text else None
    except ValueError:
        age = None
    gender = (_text(demographics, "Gender") or "").upper()
    statements = [text for text in (_text(stmt, "StmtText") for stmt in root.iter("DiagnosisStatement")) if text]
    meta: dict[str, Any] = {
        "format": "muse",
        "waveform_type": kind,
        "age": age,
        "sex": {"MALE": "M", "FEMALE": "F"}.get(gender),
        "labels": [],
        "diagnosis_statements": statements,
    }
    if kind.lower() != "rhythm":
        meta["warnings"] = [f"no Rhythm waveform; read the {kind} waveform instead"]
    return meta
