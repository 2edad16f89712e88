"""ECG file readers: WFDB (.dat and CinC .mat), bare .mat, NumPy, CSV/TSV, HDF5 (CODE-15%,
SPH), DICOM waveforms, GE MUSE / HL7 aECG / Philips XML and EDF/BDF (see ``registry``), all
returning a :class:`Record` with a ``(12, N)``
float32 signal in standard lead order (I, II, III, aVR, aVL, aVF, V1-V6)."""

from hubert_ecg.io.leads import STANDARD_LEADS, arrange_leads, canonical_lead_name
from hubert_ecg.io.quality import amplitude_warnings, quality_label
from hubert_ecg.io.reader import detect_format, read_record
from hubert_ecg.io.record import Record, RecordError, RecordSource
from hubert_ecg.io.registry import Format, format_names, get_format
from hubert_ecg.io.sources import InputAccount, discover_sources, iter_sources, read_source

__all__ = [
    "Format",
    "InputAccount",
    "STANDARD_LEADS",
    "Record",
    "RecordError",
    "RecordSource",
    "amplitude_warnings",
    "arrange_leads",
    "canonical_lead_name",
    "detect_format",
    "discover_sources",
    "format_names",
    "get_format",
    "iter_sources",
    "quality_label",
    "read_record",
    "read_source",
]
