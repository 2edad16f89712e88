"""``read_record``: one entry point that picks the reader for a file's format."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from hubert_ecg.io.record import Record, RecordError

__all__ = ["read_record", "detect_format", "FORMATS"]

#: Canonical format names accepted by ``read_record(fmt=...)``, with their aliases.
FORMATS: dict[str, str] = {
    "wfdb": "wfdb", "hea": "wfdb", "dat": "wfdb",
    "mat": "mat", "matlab": "mat",
    "npy": "numpy", "npz": "numpy", "numpy": "numpy",
    "csv": "text", "tsv": "text", "txt": "text", "text": "text",
    "hdf5": "hdf5", "h5": "hdf5", "hdf": "hdf5",
    "dicom": "dicom", "dcm": "dicom",
    "muse": "muse", "xml": "muse",
}
_BY_SUFFIX = {
    ".hea": "wfdb", ".dat": "wfdb", ".npy": "numpy", ".npz": "numpy",
    ".csv": "text", ".tsv": "text", ".txt": "text",
    ".h5": "hdf5", ".hdf5": "hdf5", ".hdf": "hdf5",
    ".dcm": "dicom", ".dicom": "dicom", ".xml": "muse",
}


def detect_format(path: str | Path) -> str:
    """Canonical format name of ``path`` from its suffix, companion files or magic bytes.

    A ``.mat`` with a ``.hea`` beside it is a WFDB record (CinC 2020/2021); a path without
    suffix whose ``<path>.hea`` exists is a WFDB record name.

    Raises:
        RecordError: the file does not exist or its format is not recognised.
    """
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix == ".mat":
        return "wfdb" if p.with_suffix(".hea").is_file() else "mat"
    if suffix in _BY_SUFFIX:
        return _BY_SUFFIX[suffix]
    if not p.is_file():
        if p.with_name(p.name + ".hea").is_file():
            return "wfdb"
        raise RecordError(p, "file not found")
    try:
        with open(p, "rb") as handle:
            head = handle.read(4096)
    except OSError as exc:
        raise RecordError(p, f"cannot open file: {exc.strerror or exc}") from None
    if head[128:132] == b"DICM":
        return "dicom"
    if head.startswith(b"\x89HDF\r\n\x1a\n"):
        return "hdf5"
    if head.startswith(b"\x93NUMPY") or head.startswith(b"PK\x03\x04"):
        return "numpy"
    if b"<RestingECG" in head:
        return "muse"
    raise RecordError(p, f"unrecognised ECG file format (suffix {suffix or 'none'}); pass fmt=...")


def _reader(fmt: str) -> Callable[..., Record]:
    # Imported on demand so that one format's optional dependency never blocks another.
    if fmt == "wfdb":
        from hubert_ecg.io.wfdb_reader import read_wfdb
        return read_wfdb
    if fmt == "mat":
        from hubert_ecg.io.arrays import read_matlab
        return read_matlab
    if fmt == "numpy":
        from hubert_ecg.io.arrays import read_numpy
        return read_numpy
    if fmt == "text":
        from hubert_ecg.io.text import read_text
        return read_text
    if fmt == "hdf5":
        from hubert_ecg.io.hdf5 import read_hdf5
        return read_hdf5
    if fmt == "dicom":
        from hubert_ecg.io.dicom import read_dicom
        return read_dicom
    from hubert_ecg.io.muse import read_muse
    return read_muse


def read_record(
    path: str | Path,
    *,
    fmt: str | None = None,
    fs: float | None = None,
    units: str | None = None,
    lead_names: Sequence[str] | None = None,
    key: str | None = None,
    allow_missing_leads: bool = False,
) -> Record:
    """Read one 12-lead ECG from any supported file.

    Args:
        path: the file: WFDB header/signal file/record name, ``.mat``, ``.npy``/``.npz``,
            ``.csv``/``.tsv``/``.txt``, ``.h5``/``.hdf5``, DICOM, MUSE ``.xml``.
        fmt: force a format (``wfdb``, ``mat``, ``npy``, ``csv``, ``hdf5``, ``dicom``,
            ``muse`` or an alias) instead of detecting it.
        fs: sampling rate in Hz; overrides what the file says (needed for bare ``.mat`` and
            text without a time column).
        units: unit of the stored values (``"mV"``, ``"uV"``, ...); overrides the file's.
        lead_names: channel labels in file order; override the file's.
        key: exam id or row inside a multi-record HDF5 file (CODE-15%).
        allow_missing_leads: return NaN rows for leads that are neither stored nor derivable
            instead of raising.

    Returns:
        Record with ``signal`` float32 ``(12, n_samples)`` in standard lead order.

    Raises:
        RecordError: any unusable file; the message is ``"<path>: <reason>"`` on one line.
    """
    if fmt is not None:
        canonical = FORMATS.get(fmt.strip().lower().lstrip("."))
        if canonical is None:
            raise RecordError(path, f"unknown format {fmt!r}; use one of {', '.join(sorted(set(FORMATS.values())))}")
    else:
        canonical = detect_format(path)
    if key is not None and canonical != "hdf5":
        raise RecordError(path, f"key={key!r} only applies to multi-record HDF5 files, not {canonical}")
    if canonical != "wfdb" and not Path(path).is_file():
        raise RecordError(path, "file not found")
    kwargs = {"fs": fs, "units": units, "lead_names": lead_names, "allow_missing_leads": allow_missing_leads}
    if canonical == "hdf5":
        kwargs["key"] = key
    try:
        return _reader(canonical)(path, **kwargs)
    except RecordError:
        raise
    except MemoryError:
        raise
    except Exception as exc:
        # Last line of defence: a batch job must get a one-line, file-naming error, never a
        # library traceback, even for damage the format reader did not anticipate.
        raise RecordError(path, f"cannot read {canonical} file: {type(exc).__name__}: {exc}") from exc
