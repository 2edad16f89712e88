"""Shared last step of every reader: units, lead order, validity checks, warnings."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from hubert_ecg.io.leads import STANDARD_LEADS, arrange_leads
from hubert_ecg.io.quality import MIN_FS, amplitude_warnings, unscorable_reason
from hubert_ecg.io.record import Record, RecordError, unit_scale_to_mv


def check_fs(path: str | Path, fs: Any) -> float:
    """A positive finite sampling rate as float, else RecordError."""
    try:
        value = float(fs)
    except (TypeError, ValueError):
        raise RecordError(path, f"invalid sampling rate {fs!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise RecordError(path, f"invalid sampling rate {fs!r}")
    return value


def build_record(
    path: str | Path,
    channels: np.ndarray,
    lead_names: Sequence[str] | None,
    *,
    fs: Any,
    channel_units: Sequence[str | None] | str | None,
    record_id: str,
    key: str | None = None,
    meta: dict[str, Any] | None = None,
    units_override: str | None = None,
    allow_missing_leads: bool = False,
    units_explained: bool = False,
) -> Record:
    """Turn the raw channels of a file into a validated :class:`Record`.

    Args:
        path: the file (for ``source`` and error messages).
        channels: numeric array, shape ``(n_channels, n_samples)``, physical values in
            ``channel_units``.
        lead_names: one label per channel; None means the channels already are the 12 standard
            leads in standard order.
        fs: sampling rate in Hz.
        channel_units: the file's unit per channel, or one unit for all, or None when the file
            states none.
        record_id: id for the record.
        key: position inside a multi-record container (appended to ``source`` as ``#key``).
        meta: metadata gathered by the reader; ``warnings`` is extended here.
        units_override: the caller's unit for every channel; replaces the file's units.
        allow_missing_leads: see :func:`hubert_ecg.io.leads.arrange_leads`.
        units_explained: the reader already put the reason for missing units in ``meta``.
    """
    fs_value, data = _checked_signal(path, channels, fs)
    meta = dict(meta or {})
    warnings: list[str] = list(meta.get("warnings", []))
    units_list = _units_per_channel(path, channel_units, units_override, data.shape[0])
    data, units = _scale_to_mv(data, units_list, warnings, units_explained=units_explained)
    signal = _arrange(path, data, lead_names, meta, warnings, allow_missing_leads=allow_missing_leads)
    _check_not_a_clock(path, signal, meta)
    _check_finite(path, signal, warnings)

    record = Record(
        signal=signal.astype(np.float32),
        fs=fs_value,
        record_id=str(record_id),
        source=str(path) if key is None else f"{path}#{key}",
        units=units,
        meta=meta,
    )
    record.meta["warnings"] = warnings + amplitude_warnings(record)
    reason = unscorable_reason(record)
    if reason:
        record.meta["unscorable"] = reason
    return record


def _checked_signal(path: str | Path, channels: np.ndarray, fs: Any) -> tuple[float, np.ndarray]:
    """The sampling rate and a non-empty 2-D float64 signal, else RecordError."""
    fs_value = check_fs(path, fs)
    if fs_value < MIN_FS:
        raise RecordError(
            path,
            f"sampling rate {fs_value:g} Hz is too low for the model's 0.05-47 Hz band (needs at least {MIN_FS:g} Hz)",
        )
    try:
        data = np.asarray(channels, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise RecordError(path, f"signal is not numeric ({exc})") from None
    if data.ndim != 2:
        raise RecordError(path, f"signal must be 2-D (leads x samples), got shape {data.shape}")
    if data.shape[1] == 0:
        raise RecordError(path, "zero-length signal (no samples)")
    return fs_value, data


def _units_per_channel(
    path: str | Path,
    channel_units: Sequence[str | None] | str | None,
    units_override: str | None,
    n_channels: int,
) -> list[str | None]:
    """One unit per channel: the caller's override, else the file's (one for all or one each)."""
    if units_override is not None:
        return [units_override] * n_channels
    if channel_units is None or isinstance(channel_units, str):
        return [channel_units] * n_channels
    units_list = list(channel_units)
    if len(units_list) != n_channels:
        raise RecordError(path, f"{len(units_list)} units for {n_channels} channels")
    return units_list


def _scale_to_mv(
    data: np.ndarray, units_list: list[str | None], warnings: list[str], *, units_explained: bool
) -> tuple[np.ndarray, str]:
    """The signal in mV when every unit is a voltage; otherwise as stored, with a warning why."""
    scales = [unit_scale_to_mv(u) for u in units_list]
    if all(s is not None for s in scales):
        return data * np.asarray(scales, dtype=np.float64)[:, None], "mV"
    stated = sorted({str(u) for u in units_list if u is not None and unit_scale_to_mv(u) is None})
    if stated:
        warnings.append(f"units {', '.join(map(repr, stated))} are not a voltage; values kept as stored")
    elif not units_explained:
        warnings.append("file states no amplitude units; values kept as stored, units unknown (pass --units mV or uV)")
    return data, "unknown"


def _arrange(
    path: str | Path,
    data: np.ndarray,
    lead_names: Sequence[str] | None,
    meta: dict[str, Any],
    warnings: list[str],
    *,
    allow_missing_leads: bool,
) -> np.ndarray:
    """The 12 standard leads in order; lead facts go to ``meta``, ignored extra leads to ``warnings``."""
    n_channels = data.shape[0]
    if lead_names is None:
        if n_channels != len(STANDARD_LEADS):
            raise RecordError(path, f"expected 12 leads, got {n_channels} channels (shape {data.shape})")
        lead_names = STANDARD_LEADS
    signal, lead_info = arrange_leads(path, data, lead_names, allow_missing_leads=allow_missing_leads)
    meta.update(lead_info)
    if lead_info.get("ignored_leads"):
        warnings.append(
            f"ignored {len(lead_info['ignored_leads'])} lead(s) beyond the standard 12: "
            f"{', '.join(lead_info['ignored_leads'])}"
        )
    return signal


def _check_not_a_clock(path: str | Path, signal: np.ndarray, meta: dict[str, Any]) -> None:
    """Refuse a lead that rises (or falls) at every sample: a time or sample-index column read as a lead
    (a header-less table, an array with a time axis), which no ECG lead does over 1.5 s."""
    derived = set(meta.get("derived_leads", []))
    for row, name in zip(signal, STANDARD_LEADS):
        if name in derived:
            continue
        values = row[np.isfinite(row)]
        if values.size < 16:
            continue
        steps = np.diff(values)
        if np.all(steps > 0) or np.all(steps < 0):
            raise RecordError(
                path,
                f"lead {name} changes in the same direction at every sample ({values[0]:g} to {values[-1]:g}): "
                "a time or sample-index column, not an ECG lead; name the columns (--lead-names)",
            )


def _check_finite(path: str | Path, signal: np.ndarray, warnings: list[str]) -> None:
    """Infinite samples become NaN (in place); an all-NaN signal is rejected; partial NaN is reported."""
    infinite = np.isinf(signal)
    if infinite.any():
        warnings.append(f"{int(infinite.sum())} infinite samples replaced by NaN")
        signal[infinite] = np.nan
    if not np.isfinite(signal).any():
        raise RecordError(path, "no finite samples (NaN/inf everywhere)")
    nan = np.isnan(signal)
    partial = nan.any(axis=1) & ~nan.all(axis=1)  # whole-lead NaN is reported as a missing/empty lead
    if partial.any():
        leads = [STANDARD_LEADS[i] for i in np.flatnonzero(partial)]
        warnings.append(
            f"{int(nan[partial].sum())} NaN sample(s) in lead(s) {', '.join(leads)} "
            "filled with the lead mean before filtering"
        )


def xml_root(path: Path, what: str, expected: str, kind: str) -> Any:
    """The root element of the XML file ``path``, checked to be ``expected`` (namespace ignored).

    A file that does not parse is "malformed ``what``"; another kind of XML is "not ``kind``" (e.g.
    ``"a MUSE XML ECG"``): one-line :class:`RecordError` naming the file, worded alike by every XML reader.
    """
    from xml.etree import ElementTree

    try:
        root = ElementTree.parse(path).getroot()
    except (ElementTree.ParseError, OSError, UnicodeDecodeError) as exc:
        raise RecordError(path, f"malformed {what}: {type(exc).__name__}: {exc}") from None
    tag = root.tag.rsplit("}", 1)[-1]
    if tag != expected:
        raise RecordError(path, f"not {kind} (root element <{tag}>, expected <{expected}>)")
    return root
