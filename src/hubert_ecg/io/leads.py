"""Lead names: the standard order, alias resolution and derivation of missing limb leads."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from hubert_ecg.io.record import RecordError

__all__ = ["STANDARD_LEADS", "LIMB_LEADS", "canonical_lead_name", "arrange_leads", "is_extra_lead", "lead_sign"]

STANDARD_LEADS: tuple[str, ...] = (
    "I",
    "II",
    "III",
    "aVR",
    "aVL",
    "aVF",
    "V1",
    "V2",
    "V3",
    "V4",
    "V5",
    "V6",
)
LIMB_LEADS: tuple[str, ...] = STANDARD_LEADS[:6]
_INDEX = {name: i for i, name in enumerate(STANDARD_LEADS)}

# Keys are names after _squash(): lower case, no "lead" prefix, no separators, no "(...)".
_ALIASES: dict[str, str] = {
    "i": "I",
    "li": "I",
    "l1": "I",
    "d1": "I",
    "di": "I",
    "ii": "II",
    "lii": "II",
    "l2": "II",
    "d2": "II",
    "dii": "II",
    "mlii": "II",
    "ml2": "II",
    "mli": "I",
    "ml1": "I",
    "mliii": "III",
    "ml3": "III",
    "iii": "III",
    "liii": "III",
    "l3": "III",
    "d3": "III",
    "diii": "III",
    "avr": "aVR",
    "avl": "aVL",
    "avf": "aVF",
}
for _k in range(1, 7):
    # "C1".."C6" is the European (IEC) name of the chest leads V1..V6.
    _ALIASES[f"v{_k}"] = _ALIASES[f"c{_k}"] = f"V{_k}"


# Recorded ECG leads beyond the standard 12 (Frank X/Y/Z of PTB-style 15-lead records, right-sided
# and posterior chest leads, rhythm strips): read past with a warning, never a reason to reject.
_EXTRA_LEADS = {
    "x",
    "y",
    "z",
    "vx",
    "vy",
    "vz",
    "v7",
    "v8",
    "v9",
    "c7",
    "c8",
    "c9",
    "v3r",
    "v4r",
    "v5r",
    "v6r",
    "v7r",
    "v1r",
    "v2r",
    "rhythm",
    "rhythmstrip",
}


def is_extra_lead(name: str) -> bool:
    """True for a lead that is an ECG channel but not one of the 12 standard leads (Frank ``X``/``Y``/``Z``,
    ``V7``-``V9``, ``V3R``-``V6R``, a rhythm strip), which readers drop with a warning."""
    return _squash(name) in _EXTRA_LEADS


def _squash(name: str) -> str:
    text = re.sub(r"\(.*?\)|\[.*?\]", "", str(name)).strip().lower()
    text = re.sub(r"^(?:ecg|ekg)(?=\W|_|lead)", "", text).strip(" _-:")  # "ECG Lead II", "EKG_V1"
    text = re.sub(r"^lead", "", text)
    return re.sub(r"[\s_\-.:]", "", text)


# A sign mark in a lead label: Cabrera displays and some exports store -aVR (the negated aVR), spelled
# "-aVR", "aVR (inverted)", "aVR_neg". Squashing the label would lose the sign and read -aVR as aVR.
_LEADING_MINUS = re.compile(r"^\s*(?:lead\s*)?[-\u2212]\s*(?=\S)", re.IGNORECASE)
_NEGATION = r"(?:inv|inverted|neg|negated|negative)"
_NEGATION_REMARK = re.compile(rf"[(\[]\s*{_NEGATION}\s*[)\]]", re.IGNORECASE)
_NEGATION_WORD = re.compile(rf"(?:^|(?<=[\s_.-])){_NEGATION}(?=$|[\s_.-])", re.IGNORECASE)
_TRAILING_SIGN = re.compile(r"\S\s*[-+\u2212]\s*$")


def lead_sign(name: str) -> tuple[str, int]:
    """The label without its sign mark and the sign: ``"-aVR"`` -> ``("aVR", -1)``,
    ``"aVR (inverted)"`` -> ``("aVR", -1)``, ``"V1"`` -> ``("V1", 1)``.

    Raises:
        ValueError: a trailing sign (``"V1-"``, ``"aVR+"``), which may mean the negated lead or be a typo.
    """
    text = str(name)
    if _TRAILING_SIGN.search(text):
        raise ValueError(f"lead name {text!r} ends in a sign; it may be the inverted lead or a typo")
    negated = False
    match = _LEADING_MINUS.match(text)
    if match:
        text, negated = text[match.end() :], True
    for pattern in (_NEGATION_REMARK, _NEGATION_WORD):
        if pattern.search(text):
            text, negated = pattern.sub(" ", text).strip(" _.-"), not negated
            break
    return text, -1 if negated else 1


def canonical_lead_name(name: str) -> str | None:
    """Standard name of a lead label, or None when it is not one of the 12 standard leads.

    Case and surrounding whitespace are ignored, and so are a ``Lead`` prefix and a
    parenthesised remark: ``"i"``, ``"LI"``, ``"Lead I (Einthoven)"`` give ``"I"``; ``"MLII"``
    gives ``"II"``; ``"AVR"`` gives ``"aVR"``; ``"V1 "`` and ``"C1"`` give ``"V1"``.
    """
    return _ALIASES.get(_squash(name))


def arrange_leads(
    path: str | Path,
    channels: np.ndarray,
    names: Sequence[str],
    *,
    allow_missing_leads: bool = False,
) -> tuple[np.ndarray, dict[str, list[str]]]:
    """Put the channels of a file into ``STANDARD_LEADS`` order, deriving missing limb leads.

    Args:
        path: the file, for error messages.
        channels: float array, shape ``(n_channels, n_samples)``, in file order.
        names: one label per channel (aliases allowed, see :func:`canonical_lead_name`).
        allow_missing_leads: leave leads that are neither stored nor derivable as NaN rows
            instead of raising.

    Returns:
        ``(signal, info)``: signal is float64 ``(12, n_samples)``; info has
        ``original_lead_names``, ``derived_leads`` and ``missing_leads`` (lists of str).

    A channel stored negated (``-aVR``, ``aVR (inverted)``) is multiplied by -1 and listed in
    ``info["negated_leads"]``; a label ending in a sign (``V1-``) is refused as ambiguous.

    Channels of extra ECG leads (:func:`is_extra_lead`: Frank X/Y/Z, V7-V9, rhythm strips) are left
    out and listed in ``info["ignored_leads"]``.

    Raises:
        RecordError: unknown or duplicated lead names, a name count that does not match the
            channel count, or missing leads without ``allow_missing_leads``.
    """
    names = [str(n) for n in names]
    if channels.ndim != 2 or channels.shape[0] != len(names):
        raise RecordError(
            path,
            f"{len(names)} lead names for {channels.shape[0] if channels.ndim == 2 else '?'} "
            f"signal channels (array shape {channels.shape})",
        )
    rows, ignored, negated = _lead_rows(path, names)
    signal = np.full((len(STANDARD_LEADS), channels.shape[1]), np.nan, dtype=np.float64)
    for canon, i in rows.items():
        signal[_INDEX[canon]] = -channels[i] if canon in negated else channels[i]
    present = set(rows)
    derived = _derive_limb_leads(signal, present)

    missing = [n for n in STANDARD_LEADS if n not in present]
    if missing and not allow_missing_leads:
        raise RecordError(
            path,
            f"missing leads {', '.join(missing)} (file has {', '.join(names)}); "
            "pass --allow-missing-leads to keep them (zero in the model input, flagged)",
        )
    info = {"original_lead_names": names, "derived_leads": derived, "missing_leads": missing}
    if ignored:
        info["ignored_leads"] = ignored
    if negated:
        info["negated_leads"] = negated
    return signal, info


def _lead_rows(path: str | Path, names: list[str]) -> tuple[dict[str, int], list[str], list[str]]:
    """``{standard name: channel index}``, the extra leads left out and the leads stored negated (``-aVR``);
    unknown or duplicated names raise."""
    rows: dict[str, int] = {}
    ignored: list[str] = []
    negated: list[str] = []
    for i, raw in enumerate(names):
        try:
            unsigned, sign = lead_sign(raw)
        except ValueError as exc:
            raise RecordError(path, f"{exc} (channel {i}); pass --lead-names to name the channels") from None
        canon = canonical_lead_name(unsigned)
        if canon is None and is_extra_lead(unsigned):
            ignored.append(raw)
            continue
        if canon is None:
            raise RecordError(
                path,
                f"unknown lead name {raw!r} (channel {i}); expected the 12 standard leads "
                "I, II, III, aVR, aVL, aVF, V1-V6 or an alias of them",
            )
        if canon in rows:
            j = rows[canon]
            raise RecordError(path, f"duplicated lead {canon}: channels {j} ({names[j]!r}) and {i} ({raw!r})")
        rows[canon] = i
        if sign < 0:
            negated.append(canon)
    return rows, ignored, negated


def _derive_limb_leads(signal: np.ndarray, present: set[str]) -> list[str]:
    """Fill missing limb leads of ``signal`` in place from the ones present; returns them in derivation order."""
    derived: list[str] = []

    def lead(name: str) -> np.ndarray:
        return signal[_INDEX[name]]

    def put(name: str, values: np.ndarray) -> None:
        signal[_INDEX[name]] = values
        present.add(name)
        derived.append(name)

    # Einthoven's law (III = II - I) lets any two of the bipolar limb leads give the third.
    bipolar = {"I", "II", "III"} & present
    if len(bipolar) == 2:
        if "III" not in present:
            put("III", lead("II") - lead("I"))
        elif "II" not in present:
            put("II", lead("I") + lead("III"))
        else:
            put("I", lead("II") - lead("III"))
    if {"I", "II"} <= present:
        goldberger = {
            "aVR": lambda: -(lead("I") + lead("II")) / 2.0,
            "aVL": lambda: lead("I") - lead("II") / 2.0,
            "aVF": lambda: lead("II") - lead("I") / 2.0,
        }
        for name, formula in goldberger.items():
            if name not in present:
                put(name, formula())
    return derived
