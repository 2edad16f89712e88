"""HL7 v3 annotated ECG (aECG) XML: the FDA's ECG waveform format (``<AnnotatedECG>``).

Layout read here (HL7 aECG implementation guide)::

    AnnotatedECG / component / series            code RHYTHM (derivedSeries hold median beats)
      / component / sequenceSet
        / component / sequence   code TIME_ABSOLUTE | TIME_RELATIVE; value GLIST_TS | GLIST_PQ:
                                 <head value=.../> <increment value="0.002" unit="s"/>
        / component / sequence   code MDC_ECG_LEAD_I ... MDC_ECG_LEAD_V6 (X, Y, Z ...); value SLIST_PQ:
                                 <origin value="0" unit="uV"/> <scale value="5" unit="uV"/>
                                 <digits>12 15 -3 ...</digits>

Physical value = origin + scale * digit, in the scale's unit. The sampling rate is 1 / increment.
A small reader of our own: the ``aecg`` package is not installable from PyPI here, and this
layout needs ~150 lines of ElementTree.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

import numpy as np

from hubert_ecg.io._build import build_record, xml_root
from hubert_ecg.io.record import Record, RecordError

__all__ = ["read_hl7_aecg"]

_TIME_UNITS = {"s": 1.0, "sec": 1.0, "ms": 1e-3, "us": 1e-6}
_LEAD_PREFIXES = ("MDC_ECG_LEAD_", "MDC_ECG_")


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _children(element: ElementTree.Element, name: str) -> list[ElementTree.Element]:
    return [child for child in element if _local(child.tag) == name]


def _child(element: ElementTree.Element | None, *path: str) -> ElementTree.Element | None:
    for name in path:
        if element is None:
            return None
        found = _children(element, name)
        element = found[0] if found else None
    return element


def _code(element: ElementTree.Element) -> str:
    code = _child(element, "code")
    return (code.get("code") or "").strip() if code is not None else ""


def _rhythm_series(root: ElementTree.Element) -> list[ElementTree.Element]:
    series = [s for c in _children(root, "component") for s in _children(c, "series")]
    rhythm = [s for s in series if _code(s).upper() in ("RHYTHM", "")]
    return rhythm or series


def _number(path: Path, element: ElementTree.Element | None, what: str) -> tuple[float, str]:
    if element is None or element.get("value") is None:
        raise RecordError(path, f"HL7 aECG: missing {what}")
    try:
        return float(element.get("value", "")), (element.get("unit") or "").strip()
    except ValueError:
        raise RecordError(path, f"HL7 aECG: {what} is not a number ({element.get('value')!r})") from None


def read_hl7_aecg(
    path: str | Path,
    *,
    fs: float | None = None,
    units: str | None = None,
    lead_names: Sequence[str] | None = None,
    allow_missing_leads: bool = False,
) -> Record:
    """Read the first rhythm ``sequenceSet`` of an HL7 aECG file.

    Leads are named by their MDC codes (``MDC_ECG_LEAD_AVR`` -> ``aVR``); leads beyond the
    standard 12 (Frank X/Y/Z, V7-V9) are ignored with a warning; 8-lead files get III, aVR, aVL
    and aVF derived. Units come from each lead's ``scale`` (``uV`` converted to mV).

    Raises:
        RecordError: malformed XML, no rhythm series, no time sequence, a lead without digits,
            non-numeric digits, leads of different lengths, bad leads.
    """
    path = Path(path)
    sequence_set, warnings = _first_sequence_set(path)
    meta: dict[str, Any] = {"format": "hl7-aecg", "labels": []}
    file_fs: float | None = None
    names: list[str] = []
    rows: list[np.ndarray] = []
    channel_units: list[str | None] = []
    for component in _children(sequence_set, "component"):
        sequence = _child(component, "sequence")
        if sequence is None:
            continue
        code = _code(sequence)
        value = _child(sequence, "value")
        if code.upper().startswith("TIME_"):
            file_fs = _time_fs(path, value)
            continue
        name, row, unit = _lead_sequence(path, code, value)
        names.append(name)
        rows.append(row)
        channel_units.append(unit)
    if not rows:
        raise RecordError(path, "HL7 aECG sequenceSet has no lead sequences")
    lengths = sorted({row.size for row in rows})
    if len(lengths) != 1:
        raise RecordError(path, f"leads have different lengths {lengths}")
    rate = fs if fs is not None else file_fs
    if rate is None:
        raise RecordError(path, "HL7 aECG has no TIME sequence with an increment (sampling rate unknown); pass --fs HZ")
    meta["warnings"] = warnings
    return build_record(
        path,
        np.vstack(rows),
        list(lead_names) if lead_names is not None else names,
        fs=rate,
        channel_units=channel_units,
        record_id=path.stem,
        meta=meta,
        units_override=units,
        allow_missing_leads=allow_missing_leads,
    )


def _first_sequence_set(path: Path) -> tuple[ElementTree.Element, list[str]]:
    """The first rhythm ``sequenceSet`` of the file, and a warning when there are more."""
    root = xml_root(path, "HL7 aECG XML", "AnnotatedECG", "an HL7 aECG file")
    series = _rhythm_series(root)
    sets = [q for s in series for c in _children(s, "component") for q in _children(c, "sequenceSet")]
    if not sets:
        raise RecordError(path, "HL7 aECG has no rhythm series with a sequenceSet (no waveform)")
    warnings: list[str] = []
    if len(sets) > 1:
        warnings.append(f"{len(sets)} rhythm sequence sets; read the first")
    return sets[0], warnings


def _time_fs(path: Path, value: ElementTree.Element | None) -> float:
    """Sampling rate from the ``increment`` of a TIME sequence."""
    increment, unit = _number(path, _child(value, "increment"), "time increment")
    seconds = increment * _TIME_UNITS.get(unit.lower() or "s", float("nan"))
    if not np.isfinite(seconds) or seconds <= 0:
        raise RecordError(path, f"HL7 aECG: invalid time increment {increment:g} {unit or '(no unit)'}")
    return 1.0 / seconds


def _lead_sequence(path: Path, code: str, value: ElementTree.Element | None) -> tuple[str, np.ndarray, str | None]:
    """``(lead name, origin + scale * digits, unit)`` of one lead sequence."""
    name = code
    for prefix in _LEAD_PREFIXES:
        if name.upper().startswith(prefix):
            name = name[len(prefix) :]
            break
    digits = _child(value, "digits")
    if digits is None or not (digits.text or "").strip():
        raise RecordError(path, f"lead {name}: no <digits>")
    try:
        samples = np.array((digits.text or "").split(), dtype=np.float64)
    except ValueError:
        bad = next(t for t in (digits.text or "").split() if not _is_float(t))
        raise RecordError(path, f"lead {name}: digit {bad!r} is not a number") from None
    origin, origin_unit = (
        (0.0, "") if _child(value, "origin") is None else _number(path, _child(value, "origin"), f"lead {name} origin")
    )
    scale, scale_unit = (
        (1.0, "") if _child(value, "scale") is None else _number(path, _child(value, "scale"), f"lead {name} scale")
    )
    if origin_unit and scale_unit and origin_unit != scale_unit:
        raise RecordError(path, f"lead {name}: origin in {origin_unit} but scale in {scale_unit}")
    return name, origin + scale * samples, scale_unit or origin_unit or None


def _is_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True
