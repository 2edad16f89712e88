"""DICOM waveform ECGs (12-Lead ECG, General ECG IODs) through pydicom."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from hubert_ecg.io._build import build_record
from hubert_ecg.io.leads import canonical_lead_name
from hubert_ecg.io.record import Record, RecordError

__all__ = ["read_dicom", "dicom_channel_lead"]

# SCP-ECG lead numbers, shared by DICOM's SCPECG ("5.6.3-9-<n>") and MDC ("2:<n>") codes.
_SCP_LEAD_NUMBERS = {
    1: "I",
    2: "II",
    3: "V1",
    4: "V2",
    5: "V3",
    6: "V4",
    7: "V5",
    8: "V6",
    61: "III",
    62: "aVR",
    63: "aVL",
    64: "aVF",
}


def dicom_channel_lead(channel: Any) -> tuple[str, str | None]:
    """Label and standard lead of one Channel Definition item.

    Tries the code meaning (``"Lead I (Einthoven)"``), then the SCP-ECG / MDC code value,
    then the free-text Channel Label. Returns ``(label, standard_name_or_None)``.
    """
    labels: list[str] = []
    source = channel.get("ChannelSourceSequence")
    if source:
        item = source[0]
        meaning = str(item.get("CodeMeaning", "") or "")
        if meaning:
            labels.append(meaning)
        code = str(item.get("CodeValue", "") or "")
        match = re.fullmatch(r"(?:5\.6\.3-9-|2:)(\d+)", code.strip())
        if match and int(match.group(1)) in _SCP_LEAD_NUMBERS:
            lead = _SCP_LEAD_NUMBERS[int(match.group(1))]
            said = canonical_lead_name(meaning) if meaning else None
            if said is not None and said != lead:
                # Code and meaning disagree: either could be the mistake, and picking one could swap leads.
                raise ValueError(f"channel code {code} is lead {lead} but its meaning says {meaning!r}")
            return meaning or code, lead
    label = str(channel.get("ChannelLabel", "") or "")
    if label:
        labels.append(label)
    for text in labels:
        found = canonical_lead_name(text)
        if found is not None:
            return text, found
    return (labels[0] if labels else "?"), None


def _pick_group(path: Path, groups: Sequence[Any]) -> int:
    """Index of the rhythm multiplex group (never the median beat)."""
    labelled = [(i, str(g.get("MultiplexGroupLabel", "") or "").upper()) for i, g in enumerate(groups)]
    for i, label in labelled:
        if "RHYTHM" in label:
            return i
    usable = [
        i
        for i, label in labelled
        if "MEDIAN" not in label and int(groups[i].get("NumberOfWaveformChannels", 0) or 0) >= 8
    ]
    if not usable:
        raise RecordError(path, "no rhythm waveform group with at least 8 channels")
    return max(usable, key=lambda i: int(groups[i].get("NumberOfWaveformSamples", 0) or 0))


def read_dicom(
    path: str | Path,
    *,
    fs: float | None = None,
    units: str | None = None,
    lead_names: Sequence[str] | None = None,
    allow_missing_leads: bool = False,
) -> Record:
    """Read the rhythm waveform of a DICOM ECG.

    Samples are scaled by each channel's sensitivity, sensitivity correction factor and
    baseline, in the channel's sensitivity units (uV converted to mV); padding values become
    NaN. Lead names come from the channel source codes.

    Raises:
        RecordError: not DICOM, no waveform, truncated waveform data, bad leads.
    """
    import pydicom  # lazy: optional dependency

    path = Path(path)
    try:
        ds = pydicom.dcmread(path)
        groups = ds.get("WaveformSequence")
    except Exception as exc:  # InvalidDicomError, EOFError, struct errors on truncation
        raise RecordError(path, f"cannot read DICOM file: {type(exc).__name__}: {exc}") from None
    if not groups:
        raise RecordError(path, "DICOM file has no WaveformSequence (not a waveform ECG)")
    index = _pick_group(path, groups)
    group = groups[index]
    raw, channels, file_fs, n_samples = _decode_group(path, ds, index, group)
    pad_value = _padding_value(group)
    if pad_value is not None:
        raw[raw == pad_value] = np.nan
    values, names, channel_units = _scale_channels(path, raw, channels, n_samples)

    if fs is None and file_fs is None:
        raise RecordError(path, "waveform group has no SamplingFrequency (sampling rate unknown); pass --fs HZ")
    meta: dict[str, Any] = {
        "format": "dicom",
        "waveform_group": str(group.get("MultiplexGroupLabel", "") or index),
        "age": _dicom_age(ds.get("PatientAge")),
        "sex": {"M": "M", "F": "F"}.get(str(ds.get("PatientSex", "") or "").upper()),
        "labels": [],
    }
    return build_record(
        path,
        values,
        list(lead_names) if lead_names is not None else names,
        fs=fs if fs is not None else file_fs,
        channel_units=channel_units,
        record_id=path.stem,
        meta=meta,
        units_override=units,
        allow_missing_leads=allow_missing_leads,
    )


def _decode_group(path: Path, ds: Any, index: int, group: Any) -> tuple[np.ndarray, list[Any], float | None, int]:
    """``(raw samples x channels as float64, channel definitions, sampling rate, samples per channel)`` of
    multiplex group ``index``."""
    from pydicom.waveforms.numpy_handler import multiplex_array

    try:
        n_channels = int(group.NumberOfWaveformChannels)
        n_samples = int(group.NumberOfWaveformSamples)
        bits = int(group.WaveformBitsAllocated)
        expected = n_channels * n_samples * bits // 8
        actual = len(group.WaveformData)
        if actual < expected:
            raise RecordError(path, f"waveform data truncated: {actual} of {expected} bytes")
        raw = multiplex_array(ds, index, as_raw=True).astype(np.float64)  # (samples, channels)
        channels = list(group.ChannelDefinitionSequence)
        stated_fs = group.get("SamplingFrequency")
        file_fs = float(stated_fs) if stated_fs not in (None, "") else None
    except RecordError:
        raise
    except Exception as exc:
        raise RecordError(path, f"cannot decode DICOM waveform: {type(exc).__name__}: {exc}") from None
    if n_samples == 0:
        raise RecordError(path, "zero-length signal (NumberOfWaveformSamples is 0)")
    if len(channels) != n_channels:
        raise RecordError(path, f"{len(channels)} channel definitions for {n_channels} channels")
    return raw, channels, file_fs, n_samples


def _scale_channels(
    path: Path, raw: np.ndarray, channels: list[Any], n_samples: int
) -> tuple[np.ndarray, list[str], list[str | None]]:
    """``(channels x samples, lead labels, units)``: sensitivity, correction factor and baseline applied."""
    names: list[str] = []
    channel_units: list[str | None] = []
    values = np.empty((len(channels), n_samples), dtype=np.float64)
    for c, channel in enumerate(channels):
        try:
            label, lead = dicom_channel_lead(channel)
        except ValueError as exc:
            raise RecordError(path, f"channel {c}: {exc}") from None
        # Keep the file's own label when it resolves to the same lead, for meta provenance.
        names.append(label if lead is None or canonical_lead_name(label) == lead else lead)
        stated = channel.get("ChannelSensitivity")
        sensitivity = float(stated) if stated not in (None, "") else 1.0
        correction = float(channel.get("ChannelSensitivityCorrectionFactor", 1) or 1)
        baseline = float(channel.get("ChannelBaseline", 0) or 0)
        unit_seq = channel.get("ChannelSensitivityUnitsSequence")
        # Without a sensitivity the samples are raw counts: the units sequence does not apply to them.
        calibrated = stated not in (None, "") and sensitivity != 0.0
        sensitivity = sensitivity if calibrated else 1.0
        channel_units.append(str(unit_seq[0].CodeValue) if unit_seq and calibrated else None)
        values[c] = raw[:, c] * sensitivity * correction + baseline
    return values, names, channel_units


_SAMPLE_DTYPES = {"SB": "i1", "UB": "u1", "SS": "<i2", "US": "<u2", "SL": "<i4", "UL": "<u4"}


def _padding_value(group: Any) -> float | None:
    """Waveform Padding Value (stored as raw bytes) in the group's sample type, or None."""
    padding = group.get("WaveformPaddingValue")
    dtype = _SAMPLE_DTYPES.get(str(group.get("WaveformSampleInterpretation", "")))
    if padding is None or dtype is None:
        return None
    data = bytes(padding) if not isinstance(padding, int) else int(padding).to_bytes(8, "little")
    width = np.dtype(dtype).itemsize
    if len(data) < width:
        return None
    return float(np.frombuffer(data[:width], dtype=dtype)[0])


def _dicom_age(value: Any) -> float | None:
    """DICOM age string ``nnnY`` / ``nnnM`` / ``nnnW`` / ``nnnD`` in years."""
    match = re.fullmatch(r"\s*(\d+)\s*([YMWD]?)\s*", str(value or ""))
    if not match:
        return None
    per_year = {"Y": 1.0, "": 1.0, "M": 12.0, "W": 52.1775, "D": 365.25}[match.group(2)]
    return float(match.group(1)) / per_year
