"""DICOM waveform ECG reader, on pydicom's bundled 12-lead ECG and edited copies of it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pydicom = pytest.importorskip("pydicom")
from pydicom.data import get_testdata_file  # noqa: E402

from conftest import synthetic_12_lead  # noqa: E402
from hubert_ecg.io import STANDARD_LEADS, RecordError, read_record  # noqa: E402


@pytest.fixture
def ecg_path() -> Path:
    return Path(get_testdata_file("waveform_ecg.dcm"))


def test_pydicom_sample_ecg(ecg_path: Path) -> None:
    record = read_record(ecg_path)
    dataset = pydicom.dcmread(ecg_path)
    reference_uv = dataset.waveform_array(0).T  # pydicom applies sensitivity: microvolts
    assert record.signal.shape == (12, 10000) and record.fs == 1000.0 and record.units == "mV"
    np.testing.assert_allclose(record.signal, reference_uv / 1000.0, rtol=1e-6, atol=1e-7)
    assert record.meta["waveform_group"] == "RHYTHM"
    assert (record.meta["age"], record.meta["sex"]) == (42.0, "F")
    assert record.meta["original_lead_names"][:4] == ["Lead I (Einthoven)", "Lead II", "Lead III", "Lead aVR"]
    x = record.signal.astype(np.float64)
    lsb_mv = 1.25e-3  # ChannelSensitivity 1.25 uV per count
    assert np.abs(x[2] - (x[1] - x[0])).max() <= 3 * lsb_mv / 2 + 1e-7
    assert record.meta["warnings"] == []


def test_edited_dicom_round_trip(tmp_path: Path, ecg_path: Path, rng: np.random.Generator) -> None:
    """New samples, shuffled channels labelled only by free text, mV sensitivity units, a
    baseline offset, and the median-beat group moved first."""
    dataset = pydicom.dcmread(ecg_path)
    rhythm, median = dataset.WaveformSequence[0], dataset.WaveformSequence[1]
    signal_mv = synthetic_12_lead(rng, 3000, 500.0)
    order = rng.permutation(12)
    sensitivity_mv, baseline_mv = 0.0025, 0.1
    counts = np.round((signal_mv[order] - baseline_mv) / sensitivity_mv).astype("<i2")
    rhythm.WaveformData = counts.T.tobytes()  # multiplexed: sample-major
    rhythm.NumberOfWaveformSamples = 3000
    rhythm.SamplingFrequency = 500
    channels = list(rhythm.ChannelDefinitionSequence)
    labels = ["  " + STANDARD_LEADS[i].lower() + " " for i in order]
    for channel, label in zip(channels, labels):
        del channel.ChannelSourceSequence
        channel.ChannelLabel = label
        channel.ChannelSensitivity = sensitivity_mv
        channel.ChannelBaseline = baseline_mv
        channel.ChannelSensitivityUnitsSequence[0].CodeValue = "mV"
    dataset.WaveformSequence = [median, rhythm]
    out = tmp_path / "edited.dcm"
    dataset.save_as(out)

    record = read_record(out)
    assert record.fs == 500.0 and record.units == "mV" and record.meta["waveform_group"] == "RHYTHM"
    expected = np.empty_like(signal_mv)
    expected[order] = counts.astype(np.float64) * sensitivity_mv + baseline_mv
    np.testing.assert_allclose(record.signal, expected, atol=1e-6)
    np.testing.assert_allclose(record.signal, signal_mv, atol=sensitivity_mv / 2 + 1e-6)
    assert [name.strip() for name in record.meta["original_lead_names"]] == [label.strip() for label in labels]


def test_truncated_and_corrupt_dicom(tmp_path: Path, ecg_path: Path) -> None:
    dataset = pydicom.dcmread(ecg_path)
    dataset.WaveformSequence[0].WaveformData = dataset.WaveformSequence[0].WaveformData[:1000]
    short = tmp_path / "short.dcm"
    dataset.save_as(short)
    with pytest.raises(RecordError, match=r"short\.dcm: waveform data truncated: 1000 of 240000 bytes$"):
        read_record(short)

    cut = tmp_path / "cut.dcm"
    cut.write_bytes(ecg_path.read_bytes()[:50000])
    with pytest.raises(RecordError, match=r"cut\.dcm: ") as info:
        read_record(cut)
    assert "\n" not in str(info.value)

    junk = tmp_path / "junk.dcm"
    junk.write_bytes(b"not a dicom file at all" * 10)
    with pytest.raises(RecordError, match=r"junk\.dcm: cannot read DICOM file"):
        read_record(junk)

    no_wave = pydicom.dcmread(ecg_path)
    del no_wave.WaveformSequence
    no_wave.save_as(tmp_path / "nowave.dcm")
    with pytest.raises(RecordError, match=r"nowave\.dcm: DICOM file has no WaveformSequence"):
        read_record(tmp_path / "nowave.dcm")
