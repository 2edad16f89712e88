"""Finding records: files, folders and manifests to a list of picklable ``RecordSource``."""

from __future__ import annotations

import csv
import hashlib
import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from hubert_ecg.io.leads import canonical_lead_name
from hubert_ecg.io.reader import read_record
from hubert_ecg.io.record import Record, RecordError, RecordSource

__all__ = ["discover_sources", "read_source", "is_manifest"]

_MANIFEST_PATH_COLUMNS = ("path", "filename", "file", "filepath", "file_path", "record", "record_path", "ecg_path")
_MANIFEST_ID_COLUMNS = ("record_id", "id")
_MANIFEST_KEY_COLUMNS = ("key", "exam_id")
_TEXT_SUFFIXES = {".csv", ".tsv", ".txt"}
_HDF5_SUFFIXES = {".h5", ".hdf5", ".hdf"}
_PLAIN_SUFFIXES = {".npy", ".npz", ".dcm", ".dicom"}


def _first_line(path: Path) -> str:
    try:
        with open(path, encoding="utf-8-sig", errors="replace") as handle:
            for line in handle:
                if line.strip() and not line.lstrip().startswith("#"):
                    return line.rstrip("\r\n")
    except OSError:
        pass
    return ""


def _cells(line: str) -> list[str]:
    for delimiter in ("\t", ";", ","):
        if delimiter in line:
            return [c.strip().strip('"') for c in next(csv.reader([line], delimiter=delimiter))]
    return line.split()


def _path_column(header: list[str]) -> int | None:
    lowered = [c.strip().lower() for c in header]
    for name in _MANIFEST_PATH_COLUMNS:
        if name in lowered:
            return lowered.index(name)
    return None


def is_manifest(path: str | Path) -> bool:
    """True for a ``.csv``/``.txt`` listing records (a path/filename/record column, or, for
    ``.txt``, one existing path per line) rather than holding a signal."""
    p = Path(path)
    if p.suffix.lower() not in _TEXT_SUFFIXES:
        return False
    line = _first_line(p)
    if not line:
        return False
    if _path_column(_cells(line)) is not None:
        return True
    if p.suffix.lower() == ".txt":
        candidate = p.parent / line.strip()
        return candidate.is_file() or candidate.with_name(candidate.name + ".hea").is_file()
    return False


def _looks_like_ecg_table(path: Path) -> bool:
    """A text file whose header names at least two standard leads (metadata CSVs do not)."""
    cells = _cells(_first_line(path))
    return sum(canonical_lead_name(c.split("(")[0].split("[")[0]) is not None for c in cells) >= 2


def _resolve(base: Path, entry: str) -> Path:
    p = Path(entry.strip())
    return p if p.is_absolute() else base / p


def _manifest_rows(path: Path) -> Iterator[tuple[int, dict[str, str]]]:
    line = _first_line(path)
    if _path_column(_cells(line)) is None:  # .txt: one path per line, no header
        with open(path, encoding="utf-8-sig") as handle:
            for number, text in enumerate(handle, start=1):
                if text.strip() and not text.lstrip().startswith("#"):
                    yield number, {"path": text.strip()}
        return
    delimiter = next((d for d in ("\t", ";", ",") if d in line), ",")
    with open(path, newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle, delimiter=delimiter)
        for number, row in enumerate(reader, start=2):
            yield number, {str(k).strip().lower(): (v or "").strip() for k, v in row.items() if k is not None}


def _outside_root(root: Path, target: Path) -> bool:
    # Lexical check (no symlink resolution): ``..`` and absolute entries cannot escape, while a
    # symlink an administrator placed inside the data root stays usable.
    root_abs = os.path.normpath(os.path.abspath(root))
    target_abs = os.path.normpath(os.path.abspath(target))
    return os.path.commonpath([root_abs, target_abs]) != root_abs


def _from_manifest(path: Path, allow_outside_root: bool = False) -> Iterator[RecordSource]:
    """Manifest rows as sources, one at a time (a manifest may list millions of records)."""
    for number, row in _manifest_rows(path):
        entry = next((row[c] for c in _MANIFEST_PATH_COLUMNS if row.get(c)), "")
        if not entry:
            raise RecordError(path, f"row {number}: empty path")
        target = _resolve(path.parent, entry)
        if not allow_outside_root and _outside_root(path.parent, target):
            raise RecordError(path, f"row {number}: {entry} is outside the data root {os.path.abspath(path.parent)} "
                                    "(absolute or '..' paths need --allow-absolute-paths)")
        if not target.exists() and target.with_name(target.name + ".hea").is_file():
            target = target.with_name(target.name + ".hea")  # PTB-XL lists record names
        if not target.exists():
            raise RecordError(path, f"row {number}: {entry} not found")
        key = next((row[c] for c in _MANIFEST_KEY_COLUMNS if row.get(c)), None)
        record_id = next((row[c] for c in _MANIFEST_ID_COLUMNS if row.get(c)), None)
        if key is not None and target.suffix.lower() in _HDF5_SUFFIXES:
            yield RecordSource(str(target), key, record_id or key)
            continue
        found = list(_sources_for_file(target, explicit=True, allow_outside_root=allow_outside_root))
        if record_id and len(found) == 1:
            found = [RecordSource(found[0].path, found[0].key, record_id)]
        yield from found


def _sources_for_file(path: Path, *, explicit: bool, allow_outside_root: bool = False) -> Iterable[RecordSource]:
    """Sources in one file. From folder walks (``explicit=False``) companion and non-ECG
    files are skipped silently; an explicitly named file is always taken as a record."""
    suffix = path.suffix.lower()
    if suffix == ".hea":
        return [RecordSource(str(path), None, path.stem)]
    if suffix in (".dat", ".mat"):
        header = path.with_suffix(".hea")
        if header.is_file():
            # The header is the record; a folder walk meets it on its own.
            return [RecordSource(str(header), None, header.stem)] if explicit else []
        if suffix == ".dat":
            if explicit:
                raise RecordError(path, "WFDB signal file without its .hea header")
            return []
        return [RecordSource(str(path), None, path.stem)]
    if suffix in _HDF5_SUFFIXES:
        from hubert_ecg.io.hdf5 import hdf5_record_keys

        try:
            keys = hdf5_record_keys(path)
        except RecordError:
            keys = None  # damaged: let reading report it for this one source
        if keys is None:
            return [RecordSource(str(path), None, path.stem)]
        return [RecordSource(str(path), key, key) for key in keys]
    if suffix in _TEXT_SUFFIXES:
        if is_manifest(path):
            return _from_manifest(path, allow_outside_root)
        if explicit or _looks_like_ecg_table(path):
            return [RecordSource(str(path), None, path.stem)]
        return []
    if suffix in _PLAIN_SUFFIXES:
        return [RecordSource(str(path), None, path.stem)]
    if suffix == ".xml":
        from hubert_ecg.io.muse import is_muse_xml

        return [RecordSource(str(path), None, path.stem)] if explicit or is_muse_xml(path) else []
    if explicit or suffix == "":
        try:
            from hubert_ecg.io.reader import detect_format

            detect_format(path)
        except RecordError:
            if explicit:
                raise
            return []
        return [RecordSource(str(path), None, path.stem)]
    return []


def _walk(folder: Path, recursive: bool) -> Iterator[Path]:
    if not recursive:
        yield from sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
        return
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if not name.startswith("."):
                yield Path(root) / name


def iter_sources(inputs: Sequence[str | Path], *, recursive: bool = True,
                 allow_outside_root: bool = False) -> Iterator[RecordSource]:
    """Expand files, folders and manifests into one ``RecordSource`` per record.

    * a folder is walked (recursively by default) in sorted order; WFDB companions (the ``.dat``
      or ``.mat`` of a ``.hea``), annotation files and metadata CSVs are skipped;
    * a ``.csv``/``.txt`` manifest (column ``path``, ``filename``, ``file`` or ``record``,
      relative to the manifest's folder; optional ``record_id`` and ``key``/``exam_id``) lists
      records; PTB-XL's ``records.csv`` style record names without suffix resolve to ``.hea``;
    * a multi-record HDF5 file (CODE-15% ``tracings``) gives one source per exam;
    * a WFDB record name without suffix is accepted when ``<name>.hea`` exists.

    Duplicates are dropped, first occurrence kept. A manifest entry must stay inside the
    manifest's folder (the data root): absolute paths and ``..`` that leave it are refused
    unless ``allow_outside_root`` (the check is lexical, so symlinks inside the root work).

    Raises:
        RecordError: an input or manifest entry that does not exist, or that leaves the data root.
    """
    # Duplicates are recognised by an 8-byte digest of (path, key): about 60 bytes per record
    # instead of the record itself, so millions of records stream through in little memory.
    seen: set[int] = set()
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found: Iterable[RecordSource] = (
                source for file in _walk(path, recursive)
                for source in _sources_for_file(file, explicit=False, allow_outside_root=allow_outside_root))
        elif path.is_file():
            found = _sources_for_file(path, explicit=True, allow_outside_root=allow_outside_root)
        elif path.with_name(path.name + ".hea").is_file():
            header = path.with_name(path.name + ".hea")
            found = [RecordSource(str(header), None, header.stem)]
        else:
            raise RecordError(path, "input not found")
        for source in found:
            marker = f"{os.path.normpath(source.path)}\0{source.key}".encode()
            digest = int.from_bytes(hashlib.blake2b(marker, digest_size=8).digest(), "little")
            if digest not in seen:
                seen.add(digest)
                yield source


def discover_sources(inputs: Sequence[str | Path], *, recursive: bool = True,
                     allow_outside_root: bool = False) -> list[RecordSource]:
    """All sources of :func:`iter_sources` as a list (same order, duplicates dropped, same errors)."""
    return list(iter_sources(inputs, recursive=recursive, allow_outside_root=allow_outside_root))


def read_source(src: RecordSource, **kw: Any) -> Record:
    """Read the record ``src`` points to; keyword arguments go to :func:`read_record`."""
    record = read_record(src.path, key=src.key, **kw)
    record.record_id = src.record_id
    return record
