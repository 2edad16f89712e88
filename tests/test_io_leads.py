"""Lead-name aliases, lead ordering, limb-lead derivation and amplitude warnings."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import synthetic_12_lead
from hubert_ecg.io import (
    STANDARD_LEADS,
    Record,
    RecordError,
    amplitude_warnings,
    arrange_leads,
    canonical_lead_name,
)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("i", "I"),
        ("I", "I"),
        (" LI ", "I"),
        ("Lead I (Einthoven)", "I"),
        ("DI", "I"),
        ("ii", "II"),
        ("MLII", "II"),
        ("lii", "II"),
        ("lead_II", "II"),
        ("III", "III"),
        ("LIII", "III"),
        ("d3", "III"),
        ("avr", "aVR"),
        ("AVR", "aVR"),
        ("aVL", "aVL"),
        ("AvF ", "aVF"),
        ("V1 ", "V1"),
        ("v6", "V6"),
        ("C3", "V3"),
        ("V4 (mV)", "V4"),
        ("V7", None),
        ("resp", None),
        ("", None),
        ("IV", None),
    ],
)
def test_alias_resolution(raw: str, expected: str | None) -> None:
    assert canonical_lead_name(raw) == expected


def test_arrange_reorders_shuffled_aliases(rng: np.random.Generator) -> None:
    signal = synthetic_12_lead(rng, 300)
    order = rng.permutation(12)
    aliases = ["li", "MLII", "iii", "AVR", "avl", "aVF ", "v1", "V2", "c3", "V4", "v5", "V6"]
    out, info = arrange_leads("x.csv", signal[order], [aliases[i] for i in order])
    np.testing.assert_array_equal(out, signal)
    assert info["derived_leads"] == [] and info["missing_leads"] == []
    assert info["original_lead_names"] == [aliases[i] for i in order]


def test_eight_leads_derive_limb_leads_exactly(rng: np.random.Generator) -> None:
    signal = synthetic_12_lead(rng, 300)
    keep = [0, 1] + list(range(6, 12))
    out, info = arrange_leads("x", signal[keep], [STANDARD_LEADS[i] for i in keep])
    np.testing.assert_allclose(out, signal, atol=1e-12)
    assert info["derived_leads"] == ["III", "aVR", "aVL", "aVF"]


def test_any_two_bipolar_leads_give_the_third(rng: np.random.Generator) -> None:
    signal = synthetic_12_lead(rng, 300)
    keep = [0, 2] + list(range(6, 12))  # I and III, no II
    out, info = arrange_leads("x", signal[keep], [STANDARD_LEADS[i] for i in keep])
    np.testing.assert_allclose(out, signal, atol=1e-12)
    assert info["derived_leads"][0] == "II"


def test_duplicate_unknown_and_missing_leads_are_one_line_errors(rng: np.random.Generator) -> None:
    signal = synthetic_12_lead(rng, 50)
    names = list(STANDARD_LEADS)
    with pytest.raises(RecordError, match=r"^rec\.csv: duplicated lead II: channels 1 \('II'\) and 2 \('MLII'\)$"):
        arrange_leads("rec.csv", signal, ["I", "II", "MLII"] + names[3:])
    with pytest.raises(RecordError, match=r"^rec\.csv: unknown lead name 'resp' \(channel 11\)"):
        arrange_leads("rec.csv", signal, names[:11] + ["resp"])
    with pytest.raises(RecordError, match=r"^rec\.csv: missing leads V5, V6 "):
        arrange_leads("rec.csv", signal[:10], names[:10])
    with pytest.raises(RecordError, match=r"^rec\.csv: 11 lead names for 12 signal channels"):
        arrange_leads("rec.csv", signal, names[:11])


def test_allow_missing_leads_gives_nan_rows(rng: np.random.Generator) -> None:
    signal = synthetic_12_lead(rng, 50)
    out, info = arrange_leads("x", signal[:10], STANDARD_LEADS[:10], allow_missing_leads=True)
    assert np.isnan(out[10:]).all()
    np.testing.assert_array_equal(out[:10], signal[:10])
    assert info["missing_leads"] == ["V5", "V6"]


def _record(signal: np.ndarray, units: str = "mV", **meta) -> Record:
    return Record(signal=signal.astype(np.float32), fs=500.0, record_id="r", source="r", units=units, meta=meta)


def test_amplitude_warnings(rng: np.random.Generator) -> None:
    signal = synthetic_12_lead(rng)
    assert amplitude_warnings(_record(signal)) == []
    assert "microvolts labelled as mV" in " ".join(amplitude_warnings(_record(signal * 1000)))
    assert "millivolts labelled as microvolts" in " ".join(amplitude_warnings(_record(signal / 1000)))
    # Unknown units: no scale judgement, but structure checks still apply.
    assert amplitude_warnings(_record(signal * 1000, units="unknown")) == []
    flat = signal.copy()
    flat[8:] = 0.0
    assert amplitude_warnings(_record(flat)) == ["flat (constant) lead(s) V3, V4, V5, V6"]
    rescaled = signal / np.abs(signal).max(axis=1, keepdims=True)  # per-lead scaling
    assert any("Einthoven" in w for w in amplitude_warnings(_record(rescaled, units="unknown")))
    # A constant offset on one lead is not an Einthoven violation.
    offset = signal.copy()
    offset[2] += 0.3
    assert amplitude_warnings(_record(offset)) == []
    empty = signal.copy()
    empty[7] = np.nan
    assert amplitude_warnings(_record(empty)) == ["no finite samples in lead(s) V2"]


def test_record_error_is_one_line_and_picklable() -> None:
    import pickle

    error = RecordError("dir/x.dat", "decoder said:\nbad block\n  at byte 7")
    assert str(error) == "dir/x.dat: decoder said: bad block at byte 7"
    assert (error.path, error.reason) == ("dir/x.dat", "decoder said: bad block at byte 7")
    assert isinstance(error, ValueError)
    copy = pickle.loads(pickle.dumps(error))  # crosses process-pool boundaries intact
    assert type(copy) is RecordError and str(copy) == str(error)
    ready = RecordError("dir/y.csv: row 3: not a number")  # one-argument form also works
    assert (ready.path, ready.reason) == ("dir/y.csv", "row 3: not a number")
