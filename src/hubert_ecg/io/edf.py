"""EDF, EDF+ and BDF/BDF+ files through ``edfio`` (pure Python; optional extra ``edf``).

Each ordinary signal is a channel named by its label (``ECG I``, ``EKG V1``, ``II``: the ``ECG``/
``EKG`` prefix is dropped) in its physical dimension (``uV``, ``mV``). EDF+ annotation signals
are not channels. All channels used must share one sampling rate (EDF allows one per signal).
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from hubert_ecg.io._build import build_record
from hubert_ecg.io.leads import canonical_lead_name, is_extra_lead
from hubert_ecg.io.record import Record, RecordError

__all__ = ["read_edf", "edf_channel_lead"]


def edf_channel_lead(label: str) -> str:
    """A signal label without the ``ECG``/``EKG`` prefix (``"ECG V1"`` -> ``"V1"``)."""
    # One separator only: in "ECG -aVR" the minus is the lead's sign, not part of the prefix.
    return re.sub(r"^\s*(ecg|ekg)(?:[\s_:]+|-|)", "", label.strip(), flags=re.I) or label.strip()


def read_edf(
    path: str | Path,
    *,
    fs: float | None = None,
    units: str | None = None,
    lead_names: Sequence[str] | None = None,
    allow_missing_leads: bool = False,
) -> Record:
    """Read the ECG channels of an EDF/EDF+/BDF file.

    Channels whose label is not an ECG lead (EEG, respiration, SpO2 ...) are dropped with a
    warning when ``lead_names`` is not given.

    Raises:
        RecordError: unreadable or truncated file, channels at different rates, bad leads.
    """
    try:
        import edfio
    except ImportError:
        raise ImportError("edfio (pip install 'hubert-ecg[edf]')") from None
    path = Path(path)
    signals, is_bdf = _load_signals(edfio, path)
    if not signals:
        raise RecordError(path, "EDF file has no signals")
    labels = [edf_channel_lead(s.label) for s in signals]
    notes: list[str] = []
    keep = _ecg_channels(path, signals, labels, notes) if lead_names is None else list(range(len(signals)))
    rates = sorted({float(signals[i].sampling_frequency) for i in keep})
    if len(rates) != 1:
        raise RecordError(path, f"ECG channels have different sampling rates {rates} Hz")
    try:
        data = [np.asarray(signals[i].data, dtype=np.float64) for i in keep]
    except Exception as exc:
        raise RecordError(path, f"cannot read EDF signal data: {type(exc).__name__}: {exc}") from None
    meta: dict[str, Any] = {"format": "bdf" if is_bdf else "edf", "labels": [], "warnings": notes}
    return build_record(
        path,
        np.vstack(data),
        list(lead_names) if lead_names is not None else [labels[i] for i in keep],
        fs=fs if fs is not None else rates[0],
        channel_units=[_dimension(path, signals, i) for i in keep],
        record_id=path.stem,
        meta=meta,
        units_override=units,
        allow_missing_leads=allow_missing_leads,
    )


def _load_signals(edfio: Any, path: Path) -> tuple[list[Any], bool]:
    """Every signal of the file with its data loaded, and whether it is a BDF; truncation is refused."""
    with open(path, "rb") as handle:
        head = handle.read(256)
    is_bdf = head[:8] == b"\xffBIOSEMI"
    if head[192:236].strip().upper().startswith((b"EDF+D", b"BDF+D")):
        # edfio joins the data records of a discontinuous file as if they were contiguous: the gaps
        # between them would vanish and every later sample would be misplaced in time.
        raise RecordError(
            path,
            f"{head[192:197].decode('ascii', 'replace')} (discontinuous) recording: its data records have "
            "gaps in time and cannot be read as one signal; export the continuous segments (EDF+C)",
        )
    try:
        with warnings.catch_warnings():
            # edfio reads a file cut short up to its last whole data record, with a warning: refuse it.
            warnings.simplefilter("error", UserWarning)
            edf = edfio.read_bdf(path) if is_bdf else edfio.read_edf(path, lazy_load_data=False)
            signals: list[Any] = list(edf.signals)
            for signal in signals:
                signal.data  # noqa: B018  (load now, inside the warning filter)
    except Exception as exc:  # ValueError for header damage, truncated data records ...
        raise RecordError(path, f"cannot read {'BDF' if is_bdf else 'EDF'} file: {type(exc).__name__}: {exc}") from None
    return signals, is_bdf


def _dimension(path: Path, signals: list[Any], index: int) -> str | None:
    """The physical dimension of signal ``index``; a non-ASCII micro sign (Latin-1 0xB5 or code page 437's
    0xE6 before "V", which edfio decodes as U+FFFD) is read from the header bytes as "uV"."""
    dimension = str(signals[index].physical_dimension or "").strip()
    if "\ufffd" not in dimension:
        return dimension or None
    try:
        with open(path, "rb") as handle:
            head = handle.read(256)
            n_signals = int(head[252:256])
            handle.seek(256)
            table = handle.read(n_signals * 256)
    except (OSError, ValueError):
        return dimension
    labels = [table[16 * k : 16 * (k + 1)].decode("latin-1").strip() for k in range(n_signals)]
    at = 96 * n_signals
    raw = [table[at + 8 * k : at + 8 * (k + 1)].strip() for k in range(n_signals)]
    ordinary = [r for r, label in zip(raw, labels) if label not in ("EDF Annotations", "BDF Annotations")]
    if index < len(ordinary) and ordinary[index] in (b"\xb5V", b"\xe6V"):
        return "uV"
    return dimension


def _ecg_channels(path: Path, signals: list[Any], labels: list[str], notes: list[str]) -> list[int]:
    """Indices of the signals labelled as ECG leads; the others are noted as ignored."""
    keep = [i for i, name in enumerate(labels) if canonical_lead_name(name) is not None or is_extra_lead(name)]
    dropped = [signals[i].label for i in range(len(signals)) if i not in keep]
    if not keep:
        raise RecordError(
            path,
            f"no ECG lead among the EDF signals ({', '.join(s.label for s in signals)}); "
            "pass --lead-names to name them",
        )
    if dropped:
        notes.append(f"ignored {len(dropped)} non-ECG signal(s): {', '.join(dropped)}")
    return keep
