"""GE MUSE XML reader on generated exports."""

from __future__ import annotations

import base64
from pathlib import Path

import numpy as np
import pytest

from conftest import synthetic_12_lead
from hubert_ecg.io import RecordError, read_record

MUSE_LEADS = ["I", "II", "V1", "V2", "V3", "V4", "V5", "V6"]
UV_PER_BIT = 4.88


def lead_xml(name: str, counts: np.ndarray, declared: int | None = None, payload: str | None = None) -> str:
    data = payload if payload is not None else base64.b64encode(counts.astype("<i2").tobytes()).decode()
    # MUSE wraps the base64 text in lines; the reader must ignore the whitespace.
    wrapped = "\n".join(data[i : i + 76] for i in range(0, len(data), 76))
    return f"""
      <LeadData>
        <LeadByteCountTotal>{2 * counts.size}</LeadByteCountTotal>
        <LeadSampleCountTotal>{declared if declared is not None else counts.size}</LeadSampleCountTotal>
        <LeadAmplitudeUnitsPerBit>{UV_PER_BIT}</LeadAmplitudeUnitsPerBit>
        <LeadAmplitudeUnits>MICROVOLTS</LeadAmplitudeUnits>
        <LeadID>{name}</LeadID>
        <WaveFormData>{wrapped}</WaveFormData>
      </LeadData>"""


def muse_xml(rhythm: dict[str, np.ndarray], median: dict[str, np.ndarray] | None, fs: int = 500, **lead_kw) -> str:
    def waveform(kind: str, leads: dict[str, np.ndarray]) -> str:
        body = "".join(lead_xml(name, counts, **lead_kw.get(name, {})) for name, counts in leads.items())
        return f"""
  <Waveform>
    <WaveformType>{kind}</WaveformType>
    <SampleBase>{fs}</SampleBase>
    <SampleExponent>0</SampleExponent>
    <NumberofLeads>{len(leads)}</NumberofLeads>{body}
  </Waveform>"""

    parts = [waveform("Median", median)] if median is not None else []
    parts.append(waveform("Rhythm", rhythm))
    return f"""<?xml version="1.0" encoding="ISO-8859-1"?>
<!DOCTYPE RestingECG SYSTEM "restecg.dtd">
<RestingECG>
  <PatientDemographics><PatientAge>67</PatientAge><Gender>MALE</Gender></PatientDemographics>
  <Diagnosis><DiagnosisStatement><StmtText>Sinus rhythm</StmtText></DiagnosisStatement></Diagnosis>
  {"".join(parts)}
</RestingECG>
"""


def eight_lead_counts(signal_mv: np.ndarray) -> dict[str, np.ndarray]:
    rows = [0, 1] + list(range(6, 12))
    return {name: np.round(signal_mv[row] * 1000 / UV_PER_BIT).astype(np.int16) for name, row in zip(MUSE_LEADS, rows)}


def test_muse_round_trip_prefers_rhythm_and_derives_limb_leads(tmp_path: Path, rng: np.random.Generator) -> None:
    signal = synthetic_12_lead(rng, 5000)
    rhythm = eight_lead_counts(signal)
    median = {name: counts[:600] for name, counts in eight_lead_counts(synthetic_12_lead(rng, 600)).items()}
    path = tmp_path / "muse.xml"
    path.write_text(muse_xml(rhythm, median), encoding="ISO-8859-1")
    record = read_record(path)
    assert record.meta["waveform_type"] == "Rhythm" and record.signal.shape == (12, 5000)
    assert record.fs == 500.0 and record.units == "mV"
    assert record.meta["derived_leads"] == ["III", "aVR", "aVL", "aVF"]
    assert (record.meta["age"], record.meta["sex"]) == (67.0, "M")
    assert record.meta["diagnosis_statements"] == ["Sinus rhythm"]
    stored = np.vstack(list(rhythm.values())).astype(np.float64) * UV_PER_BIT / 1000
    np.testing.assert_allclose(record.signal[[0, 1, 6, 7, 8, 9, 10, 11]], stored, rtol=1e-6, atol=1e-7)
    lsb = UV_PER_BIT / 1000
    np.testing.assert_allclose(record.signal, signal, atol=1.5 * lsb)  # derived leads add roundings
    x = record.signal.astype(np.float64)
    assert np.abs(x[2] - (x[1] - x[0])).max() < 1e-6  # III derived exactly
    assert np.abs(x[3] + (x[0] + x[1]) / 2).max() < 1e-6


def test_muse_median_only_is_read_with_warning(tmp_path: Path, rng: np.random.Generator) -> None:
    counts = eight_lead_counts(synthetic_12_lead(rng, 600))
    path = tmp_path / "median.xml"
    path.write_text(muse_xml(counts, None).replace("<WaveformType>Rhythm", "<WaveformType>Median"))
    record = read_record(path)
    assert record.meta["waveform_type"] == "Median"
    assert record.meta["warnings"][0] == "no Rhythm waveform; read the Median waveform instead"


def test_muse_corrupt_files(tmp_path: Path, rng: np.random.Generator) -> None:
    counts = eight_lead_counts(synthetic_12_lead(rng, 1000))
    text = muse_xml(counts, None)
    cut = tmp_path / "cut.xml"
    cut.write_text(text[: len(text) // 2])
    with pytest.raises(RecordError, match=r"cut\.xml: malformed MUSE XML") as info:
        read_record(cut)
    assert "\n" not in str(info.value)

    short = tmp_path / "short.xml"
    short.write_text(muse_xml(counts, None, V3={"declared": 1200}))
    with pytest.raises(
        RecordError, match=r"short\.xml: lead V3: waveform data truncated \(2000 bytes for 1200 samples\)$"
    ):
        read_record(short)

    bad = tmp_path / "bad64.xml"
    bad.write_text(muse_xml(counts, None, V5={"payload": "@@@@not-base64"}))
    with pytest.raises(RecordError, match=r"bad64\.xml: lead V5: invalid base64"):
        read_record(bad)

    dup = tmp_path / "dup.xml"
    dup.write_text(muse_xml({**counts, "v1 ": counts["V1"]}, None))
    with pytest.raises(RecordError, match=r"dup\.xml: duplicated lead V1"):
        read_record(dup)

    other = tmp_path / "other.xml"
    other.write_text("<?xml version='1.0'?><AnnotatedECG/>")
    with pytest.raises(RecordError, match=r"other\.xml: not a MUSE XML ECG \(root element <AnnotatedECG>"):
        read_record(other, fmt="muse")  # forced: detection sends an AnnotatedECG root to the HL7 reader
