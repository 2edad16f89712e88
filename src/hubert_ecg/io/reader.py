"""``read_record``: one entry point that picks the reader for a file's format."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hubert_ecg.io.record import Record, RecordError
from hubert_ecg.io.registry import Format, format_names, get_format, identify, read_head, xml_formats, xml_root_name

# Exception types that mean "our code is wrong" (or the machine ran out of memory), never "this file
# is damaged": re-raised as they are.
PROGRAMMING_ERRORS: tuple[type[BaseException], ...] = (
    MemoryError,
    TypeError,
    AttributeError,
    NameError,
    AssertionError,
    ZeroDivisionError,
    NotImplementedError,
    RecursionError,
)

__all__ = ["read_record", "detect_format", "load_sidecar", "SIDECAR_KEYS"]

#: Keys of a sidecar ``<record>.json`` (what the file itself does not say).
SIDECAR_KEYS = ("fs", "units", "leads")
# Compressed files are refused with a reason rather than "unrecognised format" (their suffix hides the format).
_COMPRESSED_SUFFIXES = (".gz", ".bz2", ".xz", ".zst", ".zip", ".7z", ".tgz", ".rar")
_COMPRESSED_MAGIC = (b"\x1f\x8b", b"BZh", b"\xfd7zXZ\x00", b"\x28\xb5\x2f\xfd")
# Signal files a WFDB header points to: the header is the record.
_WFDB_SIGNAL_SUFFIXES = (".dat", ".mat")


def _format_list() -> str:
    return ", ".join(format_names())


def detect_format(path: str | Path) -> str:
    """Canonical format name of ``path`` from its suffix, companion files or content.

    A ``.mat``/``.dat`` with a ``.hea`` beside it is a WFDB record (CinC 2020/2021); a path without
    suffix whose ``<path>.hea`` exists is a WFDB record name. Everything else is decided by the reader
    registry (:mod:`hubert_ecg.io.registry`).

    Raises:
        RecordError: the file does not exist, cannot be opened, or its format is not recognised.
    """
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix in _WFDB_SIGNAL_SUFFIXES and p.with_suffix(".hea").is_file():
        return "wfdb"
    if p.exists() and not p.is_file() and not p.is_dir():
        raise RecordError(p, "not a regular file (FIFO, socket or device); not opened")
    if not p.is_file():
        if p.with_name(p.name + ".hea").is_file():
            return "wfdb"
        raise RecordError(p, "file not found")
    try:
        head = read_head(p)
    except OSError as exc:
        raise RecordError(p, f"cannot open file: {exc.strerror or exc}") from None
    fmt = identify(p, head, explicit=True)
    if fmt is not None:
        return fmt.name
    if suffix in _COMPRESSED_SUFFIXES or head.startswith(_COMPRESSED_MAGIC):
        raise RecordError(
            p, f"compressed file ({suffix or 'compressed data'}); decompress it first (records are read uncompressed)"
        )
    root = xml_root_name(head)
    if root is not None and suffix in ("", ".xml"):
        known = ", ".join(f"<{r}> ({f.name})" for f in xml_formats() for r in f.xml_roots)
        raise RecordError(p, f"XML root element <{root}> is not an ECG format this package reads ({known})")
    raise RecordError(
        p, f"unrecognised ECG file format (suffix {suffix or 'none'}); name it with --format (one of {_format_list()})"
    )


def load_sidecar(path: str | Path) -> tuple[Path, dict[str, Any]] | None:
    """The sidecar ``<record>.json`` of ``path`` (``{"fs": 250, "units": "uV", "leads": [...]}``), or None.

    Raises:
        RecordError: the sidecar is not valid JSON, not an object, has unknown keys or bad values.
    """
    p = Path(path)
    sidecar = p.with_suffix(".json") if p.suffix else p.with_name(p.name + ".json")
    if sidecar == p or not sidecar.is_file():
        return None
    try:
        data = json.loads(sidecar.read_text(encoding="utf-8-sig"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RecordError(p, f"sidecar {sidecar.name}: unreadable JSON: {type(exc).__name__}: {exc}") from None
    if not isinstance(data, dict):
        raise RecordError(
            p, f'sidecar {sidecar.name} must be a JSON object like {{"fs": 500}}, got {type(data).__name__}'
        )
    unknown = sorted(set(data) - set(SIDECAR_KEYS))
    if unknown:
        raise RecordError(
            p, f"sidecar {sidecar.name}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(SIDECAR_KEYS)}"
        )
    out: dict[str, Any] = {}
    if data.get("fs") is not None:
        fs = data["fs"]
        if isinstance(fs, bool) or not isinstance(fs, (int, float)) or not math.isfinite(fs) or fs <= 0:
            raise RecordError(p, f"sidecar {sidecar.name}: 'fs' must be a positive number of Hz, got {fs!r}")
        out["fs"] = float(fs)
    if data.get("units") is not None:
        if not isinstance(data["units"], str):
            raise RecordError(
                p, f'sidecar {sidecar.name}: \'units\' must be a string such as "mV" or "uV", got {data["units"]!r}'
            )
        out["units"] = data["units"]
    if data.get("leads") is not None:
        leads = data["leads"]
        if not isinstance(leads, list) or not all(isinstance(n, str) for n in leads) or not leads:
            raise RecordError(p, f"sidecar {sidecar.name}: 'leads' must be a list of lead names, got {leads!r}")
        out["lead_names"] = leads
    return sidecar, out


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
            ``.csv``/``.tsv``/``.txt``, ``.h5``/``.hdf5``, DICOM, GE MUSE / HL7 aECG / Philips
            ``.xml``, EDF/BDF (every format of :mod:`hubert_ecg.io.registry`).
        fmt: force a format (a registry name such as ``wfdb``, ``numpy``, ``edf``, ``hl7``, or an
            alias) instead of detecting it.
        fs: sampling rate in Hz; overrides what the file says (needed for ``.npy``, ``.npz``
            without ``fs``, bare ``.mat`` and text without a time column or ``# fs:`` line, unless
            a sidecar ``<record>.json`` gives it). Arguments win over the sidecar, the sidecar
            over the file.
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
    chosen = _choose_format(path, fmt, key)
    sidecar = load_sidecar(path)
    meta_extra: dict[str, Any] = {}
    if sidecar is not None:
        sidecar_path, values = sidecar
        # Command-line options win over the sidecar, the sidecar over the file.
        fs = fs if fs is not None else values.get("fs")
        units = units if units is not None else values.get("units")
        lead_names = lead_names if lead_names is not None else values.get("lead_names")
        meta_extra["sidecar"] = str(sidecar_path)
    kwargs: dict[str, Any] = {
        "fs": fs,
        "units": units,
        "lead_names": lead_names,
        "allow_missing_leads": allow_missing_leads,
    }
    if chosen.keyed:
        kwargs["key"] = key
    record = _call_reader(path, chosen, kwargs)
    record.meta.update(meta_extra)
    return record


def _choose_format(path: str | Path, fmt: str | None, key: str | None) -> Format:
    """The format named by ``fmt`` or detected from the file, checked against ``key`` and the file's existence."""
    if fmt is not None:
        chosen = get_format(fmt)
        if chosen is None:
            raise RecordError(path, f"unknown format {fmt!r} (--format); use one of {_format_list()}")
        canonical = chosen.name
    else:
        canonical = detect_format(path)
        chosen = get_format(canonical)
    assert chosen is not None
    if key is not None and not chosen.keyed:
        raise RecordError(path, f"key={key!r} only applies to multi-record HDF5 files, not {canonical}")
    if canonical != "wfdb" and not Path(path).is_file():
        special = Path(path).exists() and not Path(path).is_dir()
        raise RecordError(
            path, "not a regular file (FIFO, socket or device); not opened" if special else "file not found"
        )
    return chosen


def _call_reader(path: str | Path, chosen: Format, kwargs: dict[str, Any]) -> Record:
    """Run the format's reader; a missing library or unanticipated damage becomes a RecordError, a bug does not."""
    canonical = chosen.name
    try:
        reader = chosen.load()
    except ImportError as exc:
        hint = f" (pip install 'hubert-ecg[{chosen.extra}]')" if chosen.extra else ""
        raise RecordError(
            path, f"reading {canonical} files needs a library that is not installed: {exc}{hint}"
        ) from None
    try:
        return reader(path, **kwargs)
    except RecordError:
        raise
    except PROGRAMMING_ERRORS:
        # A bug in a reader must fail loudly (a batch job would otherwise file it as a bad record).
        raise
    except Exception as exc:
        # Last line of defence: damage the format reader did not anticipate (a library's own error
        # types: struct.error, BadZipFile, ParseError, ...) becomes a one-line, file-naming error.
        raise RecordError(path, f"cannot read {canonical} file: {type(exc).__name__}: {exc}") from exc
