"""WFDB records: a ``.hea`` header with ``.dat`` signal files, or with MATLAB v4 ``.mat``
signal files as in the PhysioNet/CinC Challenge 2020/2021 data."""

from __future__ import annotations

import re
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from hubert_ecg.io._build import build_record
from hubert_ecg.io.record import Record, RecordError

__all__ = ["read_wfdb", "header_path_for", "parse_header_comments"]

_SIGNAL_SUFFIXES = {".hea", ".dat", ".mat", ".edf"}


def header_path_for(path: str | Path) -> Path:
    """The ``.hea`` header of a WFDB record given as header, signal file or bare record name."""
    p = Path(path)
    if p.suffix.lower() in _SIGNAL_SUFFIXES:
        return p.with_suffix(".hea")
    return p.with_name(p.name + ".hea")


def parse_header_comments(comments: Sequence[str]) -> dict[str, Any]:
    """Age, sex and diagnosis codes from WFDB header comments.

    Understands the CinC 2020/2021 style (``Age: 74``, ``Sex: Male``, ``Dx: 164889003,59118001``)
    and the LUDB style (``<age>: 51``, ``<sex>: F``). Returns a dict with ``age`` (float or
    None), ``sex`` ("M", "F" or the raw text), ``labels`` (list of str, empty when there is
    no ``Dx``) and ``comments`` (the raw lines).
    """
    meta: dict[str, Any] = {"age": None, "sex": None, "labels": [], "comments": list(comments)}
    for line in comments:
        match = re.match(r"^\s*<?\s*([A-Za-z][A-Za-z ]*?)\s*>?\s*:\s*(.*?)\s*$", line)
        if not match:
            continue
        key, value = match.group(1).lower(), match.group(2)
        if key == "age":
            try:
                age = float(value)
            except ValueError:
                age = float("nan")
            meta["age"] = age if np.isfinite(age) else None
        elif key in ("sex", "gender"):
            meta["sex"] = _normalise_sex(value)
        elif key == "dx":
            meta["labels"] = [code.strip() for code in value.split(",") if code.strip()]
    return meta


def _normalise_sex(value: str) -> str | None:
    text = value.strip().lower()
    if text in ("m", "male", "man"):
        return "M"
    if text in ("f", "female", "woman"):
        return "F"
    return value.strip() or None


def read_wfdb(
    path: str | Path,
    *,
    fs: float | None = None,
    units: str | None = None,
    lead_names: Sequence[str] | None = None,
    allow_missing_leads: bool = False,
) -> Record:
    """Read a WFDB record (``.hea`` + ``.dat`` or ``.hea`` + ``.mat``).

    Physical values use the header's gain, baseline and units; uV channels are converted to mV.
    The sampling rate comes from the header unless ``fs`` is given. ``units`` replaces the
    header's units, ``lead_names`` its signal descriptions.

    Returns:
        Record with ``signal`` (12, sig_len) float32.

    Raises:
        RecordError: missing or unreadable header, missing/truncated/corrupt signal file, bad
            leads (see :func:`hubert_ecg.io.leads.arrange_leads`).
    """
    import wfdb  # lazy: optional at import time of the package

    header = header_path_for(path)
    if not header.is_file():
        raise RecordError(path, f"WFDB header {header.name} not found")
    record_name = str(header.with_suffix(""))
    _sniff_header(header)
    multi_segment, uncalibrated, fs_stated = _header_facts(header)
    if not fs_stated and fs is None:
        # The WFDB library falls back to 250 Hz, the format's default; a rate is never assumed here.
        raise RecordError(
            header,
            "sampling rate unknown: the WFDB header's record line states none (the WFDB default "
            'would be 250 Hz); pass --fs HZ or a sidecar JSON with {"fs": HZ}',
        )
    if multi_segment:
        return _read_multi_segment(wfdb, header, record_name, fs, units, lead_names, allow_missing_leads)
    rec = _read_digital(wfdb, header, record_name)
    meta: dict[str, Any] = {"format": "wfdb", "signal_files": sorted(set(rec.file_name))}
    meta.update(parse_header_comments(rec.comments or []))
    warnings: list[str] = []
    values, channel_units = _physical_values(header, rec, uncalibrated, meta, warnings)

    header_fs = float(rec.fs) if rec.fs and fs_stated else None
    if fs is not None and header_fs is not None and float(fs) != header_fs:
        warnings.append(f"sampling rate {fs} Hz given overrides header's {header_fs:g} Hz")
    meta["warnings"] = warnings
    return build_record(
        header,
        values,
        list(lead_names) if lead_names is not None else list(rec.sig_name),
        fs=fs if fs is not None else header_fs,
        channel_units=channel_units,
        record_id=rec.record_name,
        meta=meta,
        units_override=units,
        allow_missing_leads=allow_missing_leads,
        units_explained=channel_units is None,
    )


def _read_digital(wfdb: Any, header: Path, record_name: str) -> Any:
    """The single-segment ``wfdb.Record`` with its digital samples, checked for signals and length."""
    try:
        # One parse of the header: rdrecord reads it; the slower diagnosis runs only on failure.
        rec = wfdb.rdrecord(record_name, physical=False)
    except Exception as exc:  # wfdb raises many types (HeaderSyntaxError, ValueError, ...)
        raise _diagnose(wfdb, header, record_name, exc) from None
    if not rec.n_sig:
        raise RecordError(header, "WFDB header declares no signals")
    if rec.sig_len == 0:
        raise RecordError(header, "zero-length signal (header declares 0 samples)")
    digital = rec.d_signal
    if digital is None or digital.ndim != 2 or digital.shape[0] == 0:
        raise RecordError(header, "zero-length signal")
    if rec.sig_len and digital.shape[0] != rec.sig_len:
        raise RecordError(header, f"signal file truncated: {digital.shape[0]} of {rec.sig_len} samples")
    return rec


def _physical_values(
    header: Path, rec: Any, uncalibrated: list[str], meta: dict[str, Any], warnings: list[str]
) -> tuple[np.ndarray, list[str | None] | None]:
    """``(channels x samples, units)``: the header's calibration applied, or ADC counts with units None
    when the header has no usable calibration (gain 0, LUDB's per-lead ranges)."""
    digital = _counts_with_invalid_as_nan(rec)
    if uncalibrated:
        # WFDB gain 0 means "uncalibrated"; wfdb silently substitutes 200 units/mV. Keep the counts.
        values = (digital - np.asarray(rec.baseline, dtype=np.float64)).T
        meta["uncalibrated"] = True
        warnings.append(
            f"uncalibrated: WFDB gain 0 for signal(s) {', '.join(uncalibrated)}; values are ADC counts, "
            "units unknown (pass --units if you know the scale)"
        )
        return values, None
    if _gains_are_self_normalising(digital, rec.adc_gain):
        # LUDB v1.0.1 headers store each lead's own peak-to-peak range as its "gain", which
        # would rescale every lead to a range of 1 and break III = II - I. The ADC counts
        # themselves are consistent across leads, so keep them with one common scale.
        warnings.append(
            "header gains equal each lead's own peak-to-peak range (per-lead normalisation, "
            "not a calibration); using the raw ADC counts with one scale for all leads, "
            "units unknown"
        )
        return digital.T, None
    try:
        values = rec.dac(expanded=False, return_res=64, inplace=False).T
    except Exception as exc:
        raise RecordError(header, f"cannot apply header gains: {type(exc).__name__}: {exc}") from None
    return values, list(rec.units or [None] * rec.n_sig)


def _counts_with_invalid_as_nan(rec: Any) -> np.ndarray:
    """The digital samples as float64, with each format's "invalid sample" code (-32768 for format 16,
    -2048 for 212, ...) as NaN: the raw-count paths must not pass that code on as a huge spike."""
    from wfdb.io._signal import INVALID_SAMPLE_VALUE

    counts = np.asarray(rec.d_signal, dtype=np.float64).copy()
    for channel, fmt in enumerate(rec.fmt or []):
        invalid = INVALID_SAMPLE_VALUE.get(str(fmt))
        if invalid is not None:
            column = counts[:, channel]
            column[column == invalid] = np.nan
    return counts


def _diagnose(wfdb: Any, header: Path, record_name: str, exc: Exception) -> RecordError:
    """The most specific reason a record could not be read (header, declared signals, files)."""
    try:
        head = wfdb.rdheader(record_name)
    except Exception as header_exc:
        return RecordError(header, f"unreadable WFDB header: {type(header_exc).__name__}: {header_exc}")
    if not head.n_sig:
        return RecordError(header, "WFDB header declares no signals")
    if head.sig_len == 0:
        return RecordError(header, "zero-length signal (header declares 0 samples)")
    for file_name in sorted(set(head.file_name or [])):
        if not (header.parent / file_name).is_file():
            return RecordError(header, f"signal file {file_name} named by the header is missing")
    short = _short_signal_file(header, head)
    if short is not None:
        return RecordError(header, short)
    return RecordError(
        header, f"cannot read signal file(s) {', '.join(sorted(set(head.file_name)))}: {type(exc).__name__}: {exc}"
    )


# Bytes per sample of the fixed-width WFDB formats (212 packs two 12-bit samples in 3 bytes).
_BYTES_PER_SAMPLE = {"8": 1.0, "80": 1.0, "16": 2.0, "61": 2.0, "160": 2.0, "24": 3.0, "32": 4.0, "212": 1.5}


def _short_signal_file(header: Path, head: Any) -> str | None:
    """Why a signal file is too short for the samples its header declares, or None (unknown or long enough)."""
    if not head.sig_len:
        return None
    for file_name in sorted(set(head.file_name or [])):
        channels = [i for i, name in enumerate(head.file_name) if name == file_name]
        widths = [_BYTES_PER_SAMPLE.get(str(head.fmt[i])) for i in channels]
        if any(w is None for w in widths) or head.fmt[channels[0]] == "8":
            continue  # format 8 stores differences; other formats are not fixed-width
        offset = int((head.byte_offset or [0] * head.n_sig)[channels[0]] or 0)
        expected = offset + int(np.ceil(head.sig_len * sum(w for w in widths if w is not None)))
        actual = (header.parent / file_name).stat().st_size
        if actual < expected:
            return (
                f"signal file {file_name} is truncated: {actual} bytes, the header's {head.sig_len} samples "
                f"x {len(channels)} signals need {expected}"
            )
    return None


def _gains_are_self_normalising(digital: np.ndarray, gains: Sequence[float] | None) -> bool:
    """True when every channel's gain equals its own digital peak-to-peak (LUDB v1.0.1)."""
    if gains is None or digital.shape[1] < 3 or len(set(gains)) == 1:
        return False
    with warnings.catch_warnings():  # an all-invalid channel has no range: NaN, never equal to a gain
        warnings.simplefilter("ignore", RuntimeWarning)
        ptp = np.nanmax(digital, axis=0) - np.nanmin(digital, axis=0)
    return bool(np.all(np.abs(ptp - np.asarray(gains, dtype=np.float64)) <= 1.0))


#: A WFDB header is a short text file (one line per signal plus comments); far larger is not a header.
_MAX_HEADER_BYTES = 1 << 20


def _sniff_header(header: Path) -> None:
    """Refuse a file that cannot be a WFDB header from its size and first bytes, without reading it all."""
    try:
        size = header.stat().st_size
        with open(header, "rb") as fh:
            head = fh.read(4096)
    except OSError as exc:
        raise RecordError(header, f"cannot read WFDB header: {exc.strerror or exc}") from None
    if b"\x00" in head:
        raise RecordError(header, "not a WFDB header: binary data (NUL bytes) in the first bytes")
    if size > _MAX_HEADER_BYTES:
        raise RecordError(header, f"not a WFDB header: {size / 1e6:.0f} MB (a header is a small text file)")


def _header_facts(header: Path) -> tuple[bool, list[str], bool]:
    """(multi-segment record?, names of signals with gain 0, does the record line state a sampling rate?)
    from the header text itself (wfdb hides all three)."""
    try:
        lines = [line.split("#")[0].split() for line in header.read_text(errors="replace").splitlines()]
    except OSError:
        return False, [], True
    lines = [tokens for tokens in lines if tokens]
    if not lines:
        return False, [], True
    fs_stated = len(lines[0]) >= 3
    if "/" in lines[0][0]:
        return True, [], fs_stated
    uncalibrated = []
    for tokens in lines[1:]:
        if len(tokens) >= 3:
            match = re.match(r"^[-+]?[0-9.]+(?:[eE][-+]?\d+)?", tokens[2])
            if match and _is_zero(match.group(0)):
                uncalibrated.append(tokens[8] if len(tokens) > 8 else tokens[0])
    return False, uncalibrated, fs_stated


def _is_zero(text: str) -> bool:
    try:
        return float(text) == 0.0
    except ValueError:
        return False


def _read_multi_segment(
    wfdb: Any,
    header: Path,
    record_name: str,
    fs: float | None,
    units: str | None,
    lead_names: Sequence[str] | None,
    allow_missing_leads: bool,
) -> Record:
    """A multi-segment record, joined by wfdb into physical values (each segment has its own gains,
    so the digital samples of different segments cannot share one scale)."""
    try:
        rec = wfdb.rdrecord(record_name, physical=True, m2s=True)
    except Exception as exc:
        raise RecordError(header, f"cannot read multi-segment WFDB record: {type(exc).__name__}: {exc}") from None
    values = rec.p_signal
    if values is None or values.ndim != 2 or values.shape[0] == 0:
        raise RecordError(header, "multi-segment WFDB record without samples")
    meta: dict[str, Any] = {
        "format": "wfdb",
        "multi_segment": True,
        "warnings": ["multi-segment WFDB record: segments joined (gaps between layouts are NaN)"],
    }
    meta.update(parse_header_comments(rec.comments or []))
    return build_record(
        header,
        values.T,
        list(lead_names) if lead_names is not None else list(rec.sig_name),
        fs=fs if fs is not None else rec.fs,
        channel_units=list(rec.units),
        record_id=header.stem,
        meta=meta,
        units_override=units,
        allow_missing_leads=allow_missing_leads,
    )
