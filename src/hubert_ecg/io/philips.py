"""Philips PageWriter / IntelliSpace ECG XML (``<restingecgdata>``, Sierra ECG 1.03 / 1.04).

XLI-compressed waveforms (the usual case) are decoded by the ``sierraecg`` package (optional extra
``philips``), which also undoes Philips' storage of III, aVR, aVL and aVF as residuals of the
leads derived from I and II. Uncompressed waveforms (``Base64`` int16 or ``Plain`` text) are read
here as stored. Samples are counts of ``resolution`` microvolts (5 uV on PageWriter carts).
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

import numpy as np

from hubert_ecg.io._build import build_record, xml_root
from hubert_ecg.io.record import Record, RecordError

__all__ = ["read_philips"]

_LIMB_ORDER = ["I", "II", "III", "aVR", "aVL", "aVF"]


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _find(element: ElementTree.Element | None, name: str) -> ElementTree.Element | None:
    if element is None:
        return None
    return next((e for e in element.iter() if _local(e.tag) == name), None)


def _text(element: ElementTree.Element | None, name: str) -> str | None:
    found = _find(element, name)
    return found.text.strip() if found is not None and found.text and found.text.strip() else None


def _float(path: Path, text: str | None, what: str) -> float | None:
    if text is None:
        return None
    try:
        return float(text)
    except ValueError:
        raise RecordError(path, f"Philips XML: {what} is not a number ({text!r})") from None


def read_philips(
    path: str | Path,
    *,
    fs: float | None = None,
    units: str | None = None,
    lead_names: Sequence[str] | None = None,
    allow_missing_leads: bool = False,
) -> Record:
    """Read the rhythm waveforms (``parsedwaveforms``) of a Philips XML ECG.

    Raises:
        RecordError: malformed XML, an unsupported document version or compression, damaged
            waveform data, leads of different lengths, bad leads.
    """
    path = Path(path)
    root = _parse_root(path)
    wave = _Waveforms.find(path, root)
    if wave.compression.upper() == "XLI":
        names, rows = _decode_xli(path)
    else:
        names, rows = _decode_plain(path, wave.element, wave.labels, wave.fs, wave.duration_ms)
    if wave.fs is not None and wave.duration_ms is not None:
        expected = int(round(wave.duration_ms * wave.fs / 1000.0))
        # XLI chunks end on whole code words: a sample or two of padding beyond the declared duration.
        if all(row.size >= expected for row in rows):
            rows = [row[:expected] for row in rows]
    lengths = sorted({row.size for row in rows})
    if len(lengths) != 1:
        raise RecordError(path, f"leads have different lengths {lengths}")
    warnings: list[str] = []
    resolution = wave.resolution
    if resolution is None:
        warnings.append("no <resolution> in the file; assumed 5 uV per count (PageWriter default)")
        resolution = 5.0
    meta: dict[str, Any] = {
        "format": "philips",
        "compression": wave.compression,
        "labels": [],
        "age": _float(path, _text(_find(root, "age"), "years"), "age"),
        "sex": {"MALE": "M", "FEMALE": "F"}.get((_text(root, "sex") or "").upper()),
        "diagnosis_statements": [
            t for t in (_text(s, "leftstatement") for s in root.iter() if _local(s.tag) == "statement") if t
        ],
        "warnings": warnings,
    }
    return build_record(
        path,
        np.vstack(rows).astype(np.float64) * resolution,
        list(lead_names) if lead_names is not None else names,
        fs=fs if fs is not None else wave.fs,
        channel_units="uV",
        record_id=path.stem,
        meta=meta,
        units_override=units,
        allow_missing_leads=allow_missing_leads,
    )


def _parse_root(path: Path) -> ElementTree.Element:
    return xml_root(path, "Philips XML", "restingecgdata", "a Philips XML ECG")


@dataclass
class _Waveforms:
    """The ``parsedwaveforms`` element and the facts about it spread over the document."""

    element: ElementTree.Element
    fs: float | None
    resolution: float | None
    compression: str
    duration_ms: float | None
    labels: list[str]

    @classmethod
    def find(cls, path: Path, root: ElementTree.Element) -> _Waveforms:
        waveforms = _find(root, "parsedwaveforms")
        if waveforms is None or not (waveforms.text or "").strip():
            raise RecordError(path, "Philips XML has no <parsedwaveforms> data")
        characteristics = _find(root, "signalcharacteristics")
        file_fs = _float(
            path, _text(characteristics, "samplingrate") or waveforms.get("samplespersecond"), "samplingrate"
        )
        resolution = _float(
            path,
            _text(characteristics, "resolution")
            or _text(characteristics, "signalresolution")
            or waveforms.get("resolution"),
            "resolution",
        )
        compression = waveforms.get("compressmethod") or waveforms.get("compression") or "Uncompressed"
        duration_ms = _float(path, waveforms.get("durationperchannel"), "durationperchannel")
        labels = (waveforms.get("leadlabels") or "").split()
        return cls(waveforms, file_fs, resolution, compression, duration_ms, labels)


def _decode_xli(path: Path) -> tuple[list[str], list[np.ndarray]]:
    try:
        import sierraecg
    except ImportError:
        raise ImportError("sierraecg (pip install 'hubert-ecg[philips]')") from None
    try:
        ecg = sierraecg.read_file(str(path))
    except (
        sierraecg.UnsupportedXmlFileError,
        sierraecg.MissingXmlElementError,
        sierraecg.MissingXmlAttributeError,
    ) as exc:
        raise RecordError(path, f"Philips XML: {type(exc).__name__}: {exc}") from None
    except Exception as exc:  # damaged Base64 or LZW stream: IndexError, binascii.Error, ExpatError ...
        raise RecordError(path, f"cannot decode Philips XLI waveforms: {type(exc).__name__}: {exc}") from None
    names = [lead.label for lead in ecg.leads]
    if names[:6] != _LIMB_ORDER:
        # sierraecg rebuilds leads 3-6 from leads 1-2 by position: only valid in the standard order.
        raise RecordError(path, f"XLI limb leads in an unexpected order ({' '.join(names[:6])}); cannot rebuild them")
    return names, [np.asarray(lead.samples, dtype=np.float64) for lead in ecg.leads]


def _decode_plain(
    path: Path, waveforms: ElementTree.Element, labels: list[str], fs: float | None, duration_ms: float | None
) -> tuple[list[str], list[np.ndarray]]:
    if not labels:
        raise RecordError(path, "Philips XML: uncompressed waveforms without leadlabels")
    text = waveforms.text or ""
    encoding = (waveforms.get("dataencoding") or "Base64").lower()
    if encoding == "plain":
        try:
            samples = np.array(text.split(), dtype=np.float64)
        except ValueError:
            raise RecordError(path, "Philips XML: Plain waveform data is not numeric") from None
    else:
        try:
            raw = base64.b64decode("".join(text.split()), validate=True)
        except (binascii.Error, ValueError) as exc:
            raise RecordError(path, f"Philips XML: invalid base64 waveform data ({exc})") from None
        if len(raw) % 2:
            raise RecordError(path, f"Philips XML: waveform data truncated ({len(raw)} bytes, odd)")
        samples = np.frombuffer(raw, dtype="<i2").astype(np.float64)
    n = samples.size // len(labels)
    if fs is not None and duration_ms is not None:
        n = int(round(duration_ms * fs / 1000.0))
    if n == 0 or samples.size < n * len(labels):
        raise RecordError(
            path, f"Philips XML: waveform data truncated ({samples.size} samples for {len(labels)} leads of {n})"
        )
    return labels, [samples[i * n : (i + 1) * n] for i in range(len(labels))]
