"""Finding records: files, folders and manifests to a list of picklable ``RecordSource``."""

from __future__ import annotations

import csv
import errno
import glob
import hashlib
import os
import stat
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from hubert_ecg.atomic import is_our_table, printable_path
from hubert_ecg.io.reader import read_record
from hubert_ecg.io.record import Record, RecordError, RecordSource
from hubert_ecg.io.registry import get_format, identify, read_head, xml_root_name

__all__ = ["discover_sources", "iter_sources", "read_source", "is_manifest", "InputAccount"]

_MANIFEST_PATH_COLUMNS = ("path", "filename", "file", "filepath", "file_path", "record", "record_path", "ecg_path")
_MANIFEST_ID_COLUMNS = ("record_id", "id")
_MANIFEST_KEY_COLUMNS = ("key", "exam_id")
_TEXT_SUFFIXES = {".csv", ".tsv", ".txt"}


def _first_line(path: Path) -> str:
    try:
        with open(path, encoding="utf-8-sig", errors="replace") as handle:
            for line in handle:
                if line.strip() and not line.lstrip().startswith("#"):
                    return line.rstrip("\r\n")
    except OSError:
        pass
    return ""


def _is_our_output(path: Path) -> bool:
    """One of the tables this package writes beside its outputs and inputs (predictions, rejects, skipped ...).

    A folder walk must not take one for a manifest: ``OUT.skipped.csv`` has a ``path`` column, and following
    it would re-read or refuse paths.
    """
    try:
        return is_our_table(path)
    except OSError:
        return False


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
            raise RecordError(
                path,
                f"row {number}: {entry} is outside the data root {os.path.abspath(path.parent)} "
                "(absolute or '..' paths need --allow-absolute-paths)",
            )
        if not target.exists() and target.with_name(target.name + ".hea").is_file():
            target = target.with_name(target.name + ".hea")  # PTB-XL lists record names
        if not target.exists():
            raise RecordError(path, f"row {number}: {entry} not found")
        key = next((row[c] for c in _MANIFEST_KEY_COLUMNS if row.get(c)), None)
        record_id = next((row[c] for c in _MANIFEST_ID_COLUMNS if row.get(c)), None)
        container = get_format(target.suffix) if target.suffix else None
        if key is not None and container is not None and container.keyed:
            yield RecordSource(str(target), key, record_id or key)
            continue
        found = list(_sources_for_file(target, explicit=True, allow_outside_root=allow_outside_root))
        if record_id and len(found) == 1:
            found = [RecordSource(found[0].path, found[0].key, record_id)]
        yield from found


class InputAccount:
    """Every path a discovery walk saw and did not turn into a record, with the reason.

    Records found are counted by the caller (they are read, then accepted or rejected). Files that
    are part of a record (the ``.dat``/``.mat`` signal files a WFDB header names, a sidecar
    ``<record>.json``) are counted as ``companions``; manifests as ``manifests``. Everything else
    is in ``skipped`` as ``(path, reason)``: ``unsupported format (.pdf)``, ``not a recognised
    layout (...)``, ``unreadable: permission denied``, ``not a regular file (FIFO)``,
    ``symlink loop``, ``hidden file``.
    """

    def __init__(self) -> None:
        self.skipped: list[tuple[str, str]] = []
        self.companions = 0
        self.manifests = 0

    def skip(self, path: str | Path, reason: str) -> None:
        self.skipped.append((str(path), reason))

    def counts(self) -> dict[str, int]:
        """Skipped paths per reason class (the reason up to its first ``(`` or ``:``)."""
        out: dict[str, int] = {}
        for _, reason in self.skipped:
            category = reason.split("(")[0].split(":")[0].strip()
            out[category] = out.get(category, 0) + 1
        return dict(sorted(out.items(), key=lambda item: (-item[1], item[0])))

    def summary(self) -> str:
        """``"3 skipped (2 unsupported format, 1 not a regular file)"``, or ``""`` when none."""
        if not self.skipped:
            return ""
        parts = ", ".join(f"{n} {category}" for category, n in self.counts().items())
        return f"{len(self.skipped)} skipped ({parts})"

    def write_csv(self, path: str | Path) -> Path | None:
        """Write ``path, reason`` rows atomically (the file is removed when nothing was skipped)."""
        from hubert_ecg.atomic import atomic_path

        path = Path(path)
        if not self.skipped:
            path.unlink(missing_ok=True)
            return None
        with atomic_path(path) as tmp:
            with open(tmp, "w", newline="") as handle:
                writer = csv.writer(handle)
                writer.writerow(["path", "reason"])
                writer.writerows((printable_path(p), reason) for p, reason in self.skipped)
        return path


_KIND = (
    (stat.S_ISFIFO, "FIFO"),
    (stat.S_ISSOCK, "socket"),
    (stat.S_ISCHR, "character device"),
    (stat.S_ISBLK, "block device"),
)


def _not_regular(mode: int) -> str | None:
    """Reason a path of this ``st_mode`` is not read, or None for a regular file."""
    if stat.S_ISREG(mode):
        return None
    kind = next((name for test, name in _KIND if test(mode)), "special file")
    return f"not a regular file ({kind})"


def _stat_reason(path: Path, exc: OSError) -> str:
    if path.is_symlink():
        return "symlink loop" if exc.errno == errno.ELOOP else "broken symlink (target missing)"
    if isinstance(exc, PermissionError):
        return "unreadable: permission denied"
    return f"unreadable: {exc.strerror or exc}"


def _skip_or_raise(account: InputAccount | None, explicit: bool, path: Path, reason: str) -> list[RecordSource]:
    if explicit:
        raise RecordError(path, reason)
    if account is not None:
        account.skip(path, reason)
    return []


def _sources_for_file(
    path: Path, *, explicit: bool, allow_outside_root: bool = False, account: InputAccount | None = None
) -> Iterable[RecordSource]:
    """Sources in one regular file. From folder walks (``explicit=False``) companion and non-ECG
    files are skipped and recorded in ``account`` with the reason; an explicitly named file is
    always taken as a record, or refused with the reason."""
    suffix = path.suffix.lower()
    try:
        special = _not_regular(path.stat().st_mode)  # a manifest may name a FIFO: never open one
    except OSError as exc:
        return _skip_or_raise(account, explicit, path, _stat_reason(path, exc))
    if special is not None:
        return _skip_or_raise(account, explicit, path, special)
    if suffix == ".hea":
        return [RecordSource(str(path), None, path.stem)]
    header = path.with_suffix(".hea")
    if suffix in (".dat", ".mat") and header.is_file():
        # The header is the record; a folder walk meets it on its own.
        if explicit:
            return [RecordSource(str(header), None, header.stem)]
        if account is not None:
            account.companions += 1
        return []
    if suffix == ".dat":
        return _skip_or_raise(account, explicit, path, "WFDB signal file without its .hea header")
    if suffix == ".json" and not explicit and _has_record_sibling(path):
        if account is not None:
            account.companions += 1  # a sidecar: read with its record
        return []
    try:
        head = read_head(path)
    except OSError as exc:
        return _skip_or_raise(account, explicit, path, _stat_reason(path, exc))
    if not explicit and suffix == ".csv" and _is_our_output(path):
        return _skip_or_raise(account, explicit, path, "a hubert-ecg output table (predictions, rejects, skipped ...)")
    if suffix in _TEXT_SUFFIXES and is_manifest(path):
        if account is not None:
            account.manifests += 1
        return _from_manifest(path, allow_outside_root)
    fmt = identify(path, head, explicit=explicit)
    if fmt is None:
        return _skip_or_raise(account, explicit, path, _unrecognised_reason(path, head, explicit=explicit))
    if fmt.keyed:
        return _keyed_sources(path)
    return [RecordSource(str(path), None, path.stem)]


def _unrecognised_reason(path: Path, head: bytes, *, explicit: bool) -> str:
    """Why a file no format claims is skipped; an explicitly named file raises the reader's precise reason."""
    suffix = path.suffix.lower()
    if explicit:
        from hubert_ecg.io.reader import detect_format

        detect_format(path)  # raises the precise reason
    root = xml_root_name(head)
    if root is not None:
        return f"not a recognised layout (XML root <{root}>)"
    if get_format(suffix) is not None or suffix in _TEXT_SUFFIXES:
        return (
            "not a recognised layout (no lead columns)"
            if suffix in _TEXT_SUFFIXES
            else f"not a recognised layout ({suffix} file)"
        )
    return f"unsupported format ({suffix or 'no suffix'})"


def _keyed_sources(path: Path) -> list[RecordSource]:
    """One source per record of a multi-record HDF5 file (one for the whole file when its keys cannot be listed)."""
    from hubert_ecg.io.hdf5 import hdf5_record_keys

    try:
        keys = hdf5_record_keys(path)
    except RecordError:
        keys = None  # damaged: let reading report it for this one source
    if keys is None:
        return [RecordSource(str(path), None, path.stem)]
    return [RecordSource(str(path), key, key) for key in keys]


def _has_record_sibling(path: Path) -> bool:
    try:
        return any(p != path and p.suffix.lower() != ".json" for p in path.parent.glob(glob.escape(path.stem) + ".*"))
    except OSError:
        return False


#: Files that mark a folder written by this package, and what the folder is.
_OUR_FOLDER_MARKERS = (
    ("store.json", "store"),
    ("run.json", "run folder"),
    ("features.json", "features folder"),
    ("sweep.json", "k-means folder"),
    ("trainer_state.json", "checkpoint"),
)


def _our_folder(entries: Sequence[os.DirEntry[str]]) -> str | None:
    """What kind of hubert-ecg output folder holds ``entries`` (None for anything else)."""
    names = {entry.name for entry in entries}
    kind = next((what for marker, what in _OUR_FOLDER_MARKERS if marker in names), None)
    if kind is None and {"config.json", "model.safetensors"} <= names:
        kind = "model folder"
    return kind


def _walk(folder: Path, recursive: bool, account: InputAccount | None = None) -> Iterator[Path]:
    """Regular files under ``folder`` in sorted order (a folder's files before its sub-folders).

    Nothing but ``stat`` touches a path before it is known to be a regular file, so FIFOs, sockets
    and devices are never opened (opening a FIFO blocks until a writer comes). Symlinked folders
    are followed once: a folder already searched (a symlink loop) is skipped, as are unreadable
    folders and hidden entries; each skip is recorded in ``account``.
    """
    visited: set[tuple[int, int]] = set()

    def skip(path: Path, reason: str) -> None:
        if account is not None:
            account.skip(path, reason)

    def visit(directory: Path) -> Iterator[Path]:
        try:
            info = directory.stat()
            with os.scandir(directory) as scan:
                entries = sorted(scan, key=lambda entry: entry.name)
        except OSError as exc:
            reason = _stat_reason(directory, exc)
            skip(directory, reason.replace("unreadable:", "unreadable folder:", 1))
            return
        if (info.st_dev, info.st_ino) in visited:
            skip(directory, "symlink loop (folder already searched)")
            return
        visited.add((info.st_dev, info.st_ino))
        ours = _our_folder(entries)
        if ours is not None:  # its arrays and tables are ours, not records (e.g. a store inside its input)
            skip(directory, f"a hubert-ecg {ours} (folder not searched)")
            return
        folders: list[Path] = []
        for entry in entries:
            path = Path(entry.path)
            try:
                mode = entry.stat(follow_symlinks=True).st_mode
            except OSError as exc:
                skip(path, _stat_reason(path, exc))
                continue
            if entry.name.startswith("."):
                skip(path, "hidden folder (not searched)" if stat.S_ISDIR(mode) else "hidden file")
                continue
            if stat.S_ISDIR(mode):
                if recursive:
                    folders.append(path)
                else:
                    skip(path, "folder not searched (not recursive)")
                continue
            special = _not_regular(mode)
            if special is not None:
                skip(path, special)
                continue
            yield path
        for sub in folders:
            yield from visit(sub)

    yield from visit(folder)


def iter_sources(
    inputs: Sequence[str | Path],
    *,
    recursive: bool = True,
    allow_outside_root: bool = False,
    account: InputAccount | None = None,
) -> Iterator[RecordSource]:
    """Expand files, folders and manifests into one ``RecordSource`` per record.

    * a folder is walked (recursively by default) in sorted order; WFDB companions (the ``.dat``
      or ``.mat`` of a ``.hea``), sidecar JSONs, annotation files, metadata CSVs and anything that
      is not an ECG are skipped, and recorded with their reason in ``account`` when given
      (special files and symlink loops are never opened);
    * a ``.csv``/``.txt`` manifest (column ``path``, ``filename``, ``file`` or ``record``,
      relative to the manifest's folder; optional ``record_id`` and ``key``/``exam_id``) lists
      records; PTB-XL's ``records.csv`` style record names without suffix resolve to ``.hea``;
    * a multi-record HDF5 file (CODE-15% ``tracings``) gives one source per exam;
    * a WFDB record name without suffix is accepted when ``<name>.hea`` exists.

    Duplicates are dropped, first occurrence kept. A manifest entry must stay inside the
    manifest's folder (the data root): absolute paths and ``..`` that leave it are refused
    unless ``allow_outside_root`` (the check is lexical, so symlinks inside the root work).

    Raises:
        RecordError: an input or manifest entry that does not exist, that leaves the data root,
            or an input named explicitly that is not a regular file or not an ECG.
    """
    # Duplicates are recognised by an 8-byte digest of (path, key): about 60 bytes per record
    # instead of the record itself, so millions of records stream through in little memory.
    seen: set[int] = set()
    for item in inputs:
        path = Path(item)
        try:
            mode: int | None = path.stat().st_mode
        except OSError as exc:
            if path.is_symlink() or isinstance(exc, PermissionError):
                raise RecordError(path, _stat_reason(path, exc)) from None
            mode = None
        if mode is not None and stat.S_ISDIR(mode):
            found: Iterable[RecordSource] = (
                source
                for file in _walk(path, recursive, account)
                for source in _sources_for_file(
                    file, explicit=False, allow_outside_root=allow_outside_root, account=account
                )
            )
        elif mode is not None:
            refused = _not_regular(mode)
            if refused is not None:
                raise RecordError(path, refused)
            found = _sources_for_file(path, explicit=True, allow_outside_root=allow_outside_root)
        elif path.with_name(path.name + ".hea").is_file():
            header = path.with_name(path.name + ".hea")
            found = [RecordSource(str(header), None, header.stem)]
        else:
            raise RecordError(path, "input not found")
        for source in found:
            if not _utf8_name(source.path):
                # Its name would reach every table and id we write; listed, not read (see _NOT_UTF8).
                if mode is None or not stat.S_ISDIR(mode):  # named by the user: an error, not a skip
                    raise RecordError(printable_path(source.path), _NOT_UTF8)
                if account is not None:
                    account.skip(source.path, _NOT_UTF8)
                continue
            marker = f"{os.path.normpath(source.path)}\0{source.key}".encode()
            digest = int.from_bytes(hashlib.blake2b(marker, digest_size=8).digest(), "little")
            if digest not in seen:
                seen.add(digest)
                yield source


_NOT_UTF8 = "file name is not valid UTF-8 (e.g. Latin-1 from an old share): rename it to read it"


def _utf8_name(path: str) -> bool:
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def discover_sources(
    inputs: Sequence[str | Path],
    *,
    recursive: bool = True,
    allow_outside_root: bool = False,
    account: InputAccount | None = None,
) -> list[RecordSource]:
    """All sources of :func:`iter_sources` as a list (same order, duplicates dropped, same errors)."""
    return list(iter_sources(inputs, recursive=recursive, allow_outside_root=allow_outside_root, account=account))


def read_source(src: RecordSource, **kw: Any) -> Record:
    """Read the record ``src`` points to; keyword arguments go to :func:`read_record`."""
    record = read_record(src.path, key=src.key, **kw)
    record.record_id = src.record_id
    return record
