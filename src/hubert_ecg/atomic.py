"""Crash-safe writes: temporary name, flush, fsync, rename; SHA-256 checksums.

Everything long-running jobs leave behind (checkpoints, shards, tables) goes through these helpers,
so a kill at any point leaves either the old complete file or the new complete file, never half.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is fsynced and renamed onto ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    # mkstemp creates 0600; the final file should get the mode any new file of the user gets.
    os.fchmod(fd, 0o666 & ~current_umask())
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        with open(tmp, "rb+") as fh:
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except OSError as err:
        # e.g. ENOSPC from write/fsync: say which output could not be written
        if err.filename is None and err.errno is not None:
            raise OSError(err.errno, err.strerror or str(err), str(path)) from err
        raise
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def _json_default(obj: Any) -> Any:
    import numpy as np

    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def check_writable(directory: str | os.PathLike) -> Path:
    """Create ``directory`` if needed and prove it is writable, with a one-line error otherwise."""
    directory = Path(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        probe = tempfile.NamedTemporaryFile(dir=directory, prefix=".write-test-", delete=True)
        probe.close()
    except OSError as err:
        raise PermissionError(f"{directory}: cannot write here ({err.strerror or err})") from None
    return directory


def current_umask() -> int:
    """The process umask, read without changing it where the system allows (Linux ``/proc``)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)  # elsewhere: set and restore (not thread-safe, but only for a moment)
    os.umask(mask)
    return mask


def check_output_dir(directory: str | os.PathLike, *, marker: str, what: str = "output folder") -> Path:
    """Check, without creating anything, that ``directory`` can be an output folder of ours.

    Refused on one line: a path that is a file, a parent that is a file, and an existing folder
    that holds other files but no ``marker`` (it is not ours: writing there could mix or, on a
    re-run, delete the user's files). An empty folder, a missing one, or one with ``marker`` is fine.
    """
    directory = Path(directory).expanduser()
    if directory.exists() and not directory.is_dir():
        raise NotADirectoryError(
            f"{directory}: cannot write here (Not a directory): it is a file; give a folder for the {what}"
        )
    for parent in directory.parents:
        if parent.exists():
            if not parent.is_dir():
                raise NotADirectoryError(f"{directory}: cannot write here (Not a directory): {parent} is a file")
            break
    if directory.is_dir() and not (directory / marker).exists():
        try:
            others = [p.name for p in directory.iterdir() if not p.name.startswith(".")]
        except OSError as err:
            raise PermissionError(f"{directory}: cannot list ({err.strerror})") from None
        if others:
            raise FileExistsError(
                f"{directory}: exists and holds other files ({', '.join(sorted(others)[:3])}"
                f"{' ...' if len(others) > 3 else ''}) but no {marker}: not a {what} of ours; "
                "give a new or empty folder"
            )
    return directory


#: Column names that open every table this package writes for a user (predictions, embeddings, rejects,
#: skipped files, store changes, unmatched labels).
OUR_TABLE_HEADS = (("record_id", "source"), ("path", "reason"), ("source", "change"), ("record_key", "reason"))


def is_our_table(path: str | os.PathLike) -> bool:
    """True for a CSV whose header opens with the columns of one of our tables (see :data:`OUR_TABLE_HEADS`)."""
    with open(path, encoding="utf-8-sig", errors="replace") as fh:
        cells = tuple(c.strip().lower() for c in fh.readline().split(","))
    return any(cells[: len(head)] == head for head in OUR_TABLE_HEADS)


def printable_path(text: str) -> str:
    """``text`` with bytes that are not UTF-8 (a Latin-1 file name) as ``\\xff`` escapes: safe to print and write."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def written_by_us(path: str | os.PathLike) -> bool:
    """True when the existing file ``path`` is recognisably one of this package's outputs.

    Outputs replace only their own earlier versions: a user's CSV, ONNX or figure that happens to sit at
    ``--out`` is never overwritten. Recognised by content, not name: our table columns (CSV, the ids
    file of a ``.npy``, Parquet), the ``hubert_ecg.*`` ONNX metadata, the PNG ``Software`` mark.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    try:
        if suffix in (".csv", ".npy"):
            return is_our_table(path.with_suffix(".ids.csv") if suffix == ".npy" else path)
        if suffix == ".parquet":
            import pyarrow.parquet as pq

            schema = pq.read_schema(str(path))
            return any(key.startswith(b"hubert_ecg") for key in (schema.metadata or {})) or tuple(schema.names[:2]) == (
                "record_id",
                "source",
            )
        if suffix == ".onnx":  # metadata_props are serialised after the graph: read the tail
            with open(path, "rb") as fh:
                fh.seek(max(0, path.stat().st_size - (1 << 20)))
                return b"hubert_ecg.version" in fh.read()
        if suffix == ".png":
            with open(path, "rb") as fh:
                return b"Software\x00hubert-ecg" in fh.read(1 << 16)
    except Exception:  # noqa: BLE001 - unreadable, or not the format its name says: not ours
        return False
    return False


def check_not_foreign(path: str | os.PathLike, option: str = "--out") -> Path:
    """Refuse an existing file at output ``path`` that this package did not write (see :func:`written_by_us`)."""
    path = Path(path)
    if path.is_file() and not written_by_us(path):
        raise FileExistsError(
            f"{path}: exists and was not written by hubert-ecg; choose another {option} or move it "
            "(nothing was changed)"
        )
    return path


def _age_s(path: Path) -> float:
    import time

    try:
        return time.time() - path.stat().st_mtime
    except OSError:
        return float("inf")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


@contextmanager
def output_lock(directory: str | os.PathLike, name: str = ".lock") -> Iterator[Path]:
    """Hold ``directory/.lock`` (our PID) while writing there; a second writer gets a one-line error.

    A lock left by a process that no longer exists (killed) is stale and taken over.
    """
    lock = Path(directory) / name
    for _ in range(3):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
        except FileExistsError:
            try:
                pid = int(lock.read_text().strip() or 0)
            except (OSError, ValueError):
                pid = 0
            if not pid and _age_s(lock) < 10:  # just created; its owner is writing its PID
                raise BlockingIOError(f"{directory}: already in use (lock file {lock} was just taken)") from None
            if pid and pid != os.getpid() and _pid_alive(pid):
                raise BlockingIOError(
                    f"{directory}: already in use by PID {pid} (lock file {lock}); wait for that "
                    "job to finish, or delete the lock file if it is not running"
                ) from None
            lock.unlink(missing_ok=True)  # stale: its process is gone
            continue
        with os.fdopen(fd, "w") as fh:
            fh.write(f"{os.getpid()}\n")
        break
    else:
        raise BlockingIOError(f"{directory}: cannot take the lock file {lock}")
    try:
        yield lock
    finally:
        lock.unlink(missing_ok=True)
