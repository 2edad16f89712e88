"""ECG file readers: WFDB (.dat and CinC .mat), bare .mat, NumPy, CSV/TSV, HDF5 (CODE-15%,
SPH), DICOM waveforms and GE MUSE XML, all returning a :class:`Record` with a ``(12, N)``
float32 signal in standard lead order (I, II, III, aVR, aVL, aVF, V1-V6)."""

from hubert_ecg.io.leads import STANDARD_LEADS, arrange_leads, canonical_lead_name
from hubert_ecg.io.quality import amplitude_warnings
from hubert_ecg.io.reader import detect_format, read_record
from hubert_ecg.io.record import Record, RecordError, RecordSource
from hubert_ecg.io.sources import discover_sources, iter_sources, read_source

__all__ = [
    "STANDARD_LEADS",
    "Record",
    "RecordError",
    "RecordSource",
    "amplitude_warnings",
    "arrange_leads",
    "canonical_lead_name",
    "detect_format",
    "discover_sources",
    "iter_sources",
    "read_record",
    "read_source",
]
