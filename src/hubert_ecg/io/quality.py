"""Plausibility checks on a record's amplitudes: unit mix-ups, flat leads, mislabelled leads."""

from __future__ import annotations

import numpy as np

from hubert_ecg.io.leads import STANDARD_LEADS
from hubert_ecg.io.record import Record

__all__ = [
    "amplitude_warnings",
    "lead_ranges",
    "unscorable_reason",
    "quality_label",
    "MIN_FS",
    "UNSCORABLE_ABOVE_MV",
    "UNSCORABLE_BELOW_MV",
]

#: Lowest sampling rate read: the model's band ends at 47 Hz, which needs a Nyquist rate of 47 Hz.
MIN_FS = 94.0
# Amplitudes no unit mix-up explains: 1000x beyond the uV-as-mV / mV-as-uV warnings below (which
# stay usable, since per-lead min-max scaling makes the model input independent of the unit).
UNSCORABLE_ABOVE_MV = 1e5
UNSCORABLE_BELOW_MV = 1e-4

# A surface ECG lead spans roughly 0.3-5 mV peak to peak; the median over 12 leads of a real
# recording stays well inside [0.05, 20] mV even for large QRS voltages. The limits below sit
# more than an order of magnitude beyond that, where only a 1000x unit mistake lands.
_UV_AS_MV_ABOVE_MV = 50.0
_MV_AS_UV_BELOW_MV = 0.03
# Einthoven residual (rms of III - (II - I), less its median, i.e. ignoring DC offsets) as a fraction of the
# largest of the three leads' rms; rounding and float16 storage stay far below 1 %.
_EINTHOVEN_MAX_FRACTION = 0.1


def lead_ranges(signal: np.ndarray) -> np.ndarray:
    """Robust peak-to-peak amplitude per lead: 99.5th minus 0.5th percentile of finite samples.

    Args:
        signal: shape ``(n_leads, n_samples)``.

    Returns:
        float64 array, shape ``(n_leads,)``; NaN for a lead without finite samples.
    """
    out = np.full(signal.shape[0], np.nan)
    for i, row in enumerate(np.asarray(signal, dtype=np.float64)):
        finite = row[np.isfinite(row)]
        if finite.size:
            lo, hi = np.percentile(finite, [0.5, 99.5])
            out[i] = hi - lo
    return out


def amplitude_warnings(record: Record) -> list[str]:
    """Human-readable warnings about implausible amplitudes in ``record``.

    Detects: microvolt data labelled mV (and the reverse, mV data converted as if in uV),
    leads without finite samples, flat (constant) leads, stored limb leads that violate
    Einthoven's law III = II - I (per-lead rescaling, or swapped/mislabelled electrodes), and stored
    augmented leads that do not sum to zero (aVR + aVL + aVF = 0; an inverted or mislabelled one).
    Returns an empty list for a plausible record.
    """
    warnings: list[str] = []
    signal = np.asarray(record.signal, dtype=np.float64)
    names = list(STANDARD_LEADS) if signal.shape[0] == len(STANDARD_LEADS) else [str(i) for i in range(signal.shape[0])]
    missing = set(record.meta.get("missing_leads", []))
    ranges = lead_ranges(signal)

    empty = [n for n, r in zip(names, ranges) if np.isnan(r) and n not in missing]
    if empty:
        warnings.append(f"no finite samples in lead(s) {', '.join(empty)}")
    flat = [n for n, row in zip(names, signal) if _is_flat(row)]
    if flat:
        warnings.append(f"flat (constant) lead(s) {', '.join(flat)}")

    live = ranges[np.isfinite(ranges) & (ranges > 0)]
    if record.units == "mV" and live.size:
        typical = float(np.median(live))
        if typical > _UV_AS_MV_ABOVE_MV:
            warnings.append(
                f"median lead range {typical:.4g} mV is ~1000x too large for an ECG: "
                "values look like microvolts labelled as mV (pass --units uV)"
            )
        elif typical < _MV_AS_UV_BELOW_MV:
            warnings.append(
                f"median lead range {typical:.4g} mV is ~1000x too small for an ECG: "
                "values look like millivolts labelled as microvolts (pass --units mV)"
            )

    einthoven = _einthoven_fraction(signal, names, record.meta.get("derived_leads", []))
    if einthoven is not None and einthoven > _EINTHOVEN_MAX_FRACTION:
        warnings.append(
            f"leads I, II, III violate Einthoven's law: rms(III - (II - I)) is "
            f"{100 * einthoven:.0f}% of the lead rms (leads scaled independently, or mislabelled)"
        )
    goldberger = _relation_fraction(signal, names, record.meta.get("derived_leads", []), ("aVR", "aVL", "aVF"))
    if goldberger is not None and goldberger > _EINTHOVEN_MAX_FRACTION:
        warnings.append(
            f"leads aVR, aVL, aVF do not sum to zero: rms(aVR + aVL + aVF) is {100 * goldberger:.0f}% of the "
            "lead rms (one stored inverted, e.g. -aVR labelled aVR, or mislabelled)"
        )
    return warnings


def _relation_fraction(
    signal: np.ndarray, names: list[str], derived: list[str], leads: tuple[str, str, str]
) -> float | None:
    """rms of the sum of three stored leads that must sum to zero (aVR + aVL + aVF), centred, as a fraction of
    the largest lead rms; None when any of them was derived or missing."""
    if any(lead in derived for lead in leads) or not set(leads) <= set(names):
        return None
    rows = signal[[names.index(lead) for lead in leads]]
    ok = np.all(np.isfinite(rows), axis=0)
    if ok.sum() < 2:
        return None
    centred = rows[:, ok] - np.median(rows[:, ok], axis=1, keepdims=True)
    scale = float(np.sqrt(np.mean(centred**2, axis=1)).max())
    if scale == 0.0:
        return None
    residual = rows[:, ok].sum(axis=0)
    residual = residual - np.median(residual)
    return float(np.sqrt(np.mean(residual**2))) / scale


def _is_flat(row: np.ndarray) -> bool:
    finite = row[np.isfinite(row)]
    return finite.size > 1 and bool(np.all(finite == finite[0]))


def _einthoven_fraction(signal: np.ndarray, names: list[str], derived: list[str]) -> float | None:
    if any(lead in derived for lead in ("I", "II", "III")) or names[:3] != ["I", "II", "III"]:
        return None
    limb = signal[:3]
    ok = np.all(np.isfinite(limb), axis=0)
    if ok.sum() < 2:
        return None
    centred = limb[:, ok] - np.median(limb[:, ok], axis=1, keepdims=True)
    scale = float(np.sqrt(np.mean(centred**2, axis=1)).max())
    if scale == 0.0:
        return None
    # Centre the residual itself: per-lead medians need not obey the law, offsets do.
    residual = limb[2, ok] - (limb[1, ok] - limb[0, ok])
    residual = residual - np.median(residual)
    return float(np.sqrt(np.mean(residual**2))) / scale


def unscorable_reason(record: Record) -> str | None:
    """Why ``record`` is physically implausible and must not be scored, or None.

    * every recorded lead flat (constant) or without finite samples: leads off / no signal;
    * (units mV) a median lead range above :data:`UNSCORABLE_ABOVE_MV` or below
      :data:`UNSCORABLE_BELOW_MV`: far outside any ECG, beyond what a unit mix-up explains.

    The model's per-lead min-max scaling would turn a flat line plus rounding noise, or garbage
    of any size, into a full-scale "ECG", so such records get no probabilities.
    """
    signal = np.asarray(record.signal, dtype=np.float64)
    missing = set(record.meta.get("missing_leads", []))
    names = list(STANDARD_LEADS) if signal.shape[0] == len(STANDARD_LEADS) else [str(i) for i in range(len(signal))]
    recorded = [i for i, name in enumerate(names) if name not in missing]
    ranges = lead_ranges(signal[recorded])
    live = ranges[np.isfinite(ranges) & (ranges > 0)]
    if live.size == 0 or all(_is_flat(signal[i]) or not np.isfinite(signal[i]).any() for i in recorded):
        return "all leads flat (leads off or no signal)"
    if record.units == "mV":
        typical = float(np.median(live))
        if typical > UNSCORABLE_ABOVE_MV:
            return f"amplitude far outside the ECG range (median lead range {typical:.3g} mV)"
        if typical < UNSCORABLE_BELOW_MV:
            return f"amplitude far below the ECG range (median lead range {typical:.3g} mV; leads off?)"
    return None


def quality_label(record: Record) -> str:
    """One-cell summary for tables: ``ok``, ``warning: ...``, ``uncalibrated: ...`` or ``unscorable: ...``."""
    reason = record.meta.get("unscorable")
    if reason:
        return f"unscorable: {reason}"
    warnings = [str(w) for w in record.meta.get("warnings", [])]
    if record.meta.get("uncalibrated"):
        return "uncalibrated: " + "; ".join(w.removeprefix("uncalibrated: ") for w in warnings)
    return "warning: " + "; ".join(warnings) if warnings else "ok"
