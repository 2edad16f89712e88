"""The prepared store: every record read and preprocessed once, memory-mappable at 100 Hz.

Layout of ``STORE/``::

    store.json              spec (preprocessing), row geometry, label names, counts, "complete"
    index.npz               the manifest columns training reads, as arrays (loaded instead of the CSV)
    manifest.csv            one row per stored segment: row, record_id, segment, start_s, length,
                            source, orig_fs, orig_samples, units, split, meta (JSON), label columns
    rejects.csv             record_id, source, reason: every record that could not be used
    shards/00000.npy        float32 (rows, 12, row_samples): fixed-shape rows, zero-padded
    shards/00000.csv        the manifest part of that shard (a shard is complete iff both exist)
    targets/<name>.npy      int16 (rows, tokens): k-means cluster ids written by ``hubert-ecg label``

A record longer than ``row_seconds`` (10 s by default) fills several consecutive rows (segments
0, 1, ...), so nothing is cut away and every row has the same shape; a shorter one is padded and
its true ``length`` kept. Sources are split into fixed blocks in discovery order, one block per
shard, so a re-run after a kill redoes only unfinished blocks and writes identical shards.
Memory stays flat: only one block of records is held at a time.
"""

from __future__ import annotations

import csv
import json
import math
import multiprocessing as mp
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np

from .atomic import atomic_path, atomic_write_json, check_writable
from .preprocess import PreprocessSpec, preprocess_signal

STORE_FORMAT = "hubert-ecg-store"
STORE_VERSION = 1
LABEL_PREFIX = "label:"
INDEX_FILE = "index.npz"
MANIFEST_FIELDS = ["row", "record_id", "segment", "start_s", "length", "source", "orig_fs", "orig_samples",
                   "units", "split", "meta"]
csv.field_size_limit(min(sys.maxsize, 2**31 - 1))


class StoreError(ValueError):
    """A store that cannot be built or read; the message names the path and the problem."""


# ---------------------------------------------------------------------------------------------
# Labels
# ---------------------------------------------------------------------------------------------
@dataclass
class LabelTable:
    """Labels keyed by record id (or file stem): values (N, L) float32 with NaN for blanks."""

    names: list[str]
    by_key: dict[str, np.ndarray]
    splits: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_csv(cls, path: str | os.PathLike, *, id_column: str | None = None,
                 label_columns: Sequence[str] | None = None, label_start_index: int | None = None,
                 split_column: str | None = None) -> "LabelTable":
        """Read a labels CSV: an id column (``record_id``, ``filename``, ``ecg_id`` ...) and label columns.

        Label columns are ``label_columns``, or every column from ``label_start_index`` on (the
        reference's contract), or every numeric column but the id and split. Blank cells become NaN;
        values that are not numbers are a one-line error naming the row.
        """
        path = Path(path)
        try:
            with open(path, newline="") as fh:
                sample = fh.read(4096)
                fh.seek(0)
                dialect = csv.Sniffer().sniff(sample, delimiters=",;\t") if sample.strip() else csv.excel
                reader = csv.DictReader(fh, dialect=dialect)
                rows = list(reader)
                header = reader.fieldnames or []
        except OSError as err:
            raise StoreError(f"{path}: cannot read labels ({err.strerror})") from None
        if not header or not rows:
            raise StoreError(f"{path}: the labels file is empty")
        id_column = id_column or next((c for c in ("record_id", "filename", "ecg_id", "id", "exam_id", "path")
                                       if c in header), header[0])
        if id_column not in header:
            raise StoreError(f"{path}: no column {id_column!r} (columns: {', '.join(header)})")
        if label_columns is None:
            if label_start_index is not None:
                label_columns = header[label_start_index:]
            else:
                label_columns = [c for c in header if c not in (id_column, split_column)]
        missing = [c for c in label_columns if c not in header]
        if missing:
            raise StoreError(f"{path}: label columns not found: {', '.join(missing)}")
        by_key: dict[str, np.ndarray] = {}
        splits: dict[str, str] = {}
        for line, row in enumerate(rows, start=2):
            key = record_key(row[id_column])
            if key in by_key:
                raise StoreError(f"{path}, row {line}: duplicate record id {row[id_column]!r}")
            values = np.full(len(label_columns), np.nan, dtype=np.float32)
            for j, col in enumerate(label_columns):
                cell = (row.get(col) or "").strip()
                if cell == "":
                    continue
                try:
                    values[j] = float(cell)
                except ValueError:
                    raise StoreError(f"{path}, row {line}: column {col!r} is not a number ({cell!r})") from None
            by_key[key] = values
            if split_column:
                splits[key] = (row.get(split_column) or "").strip()
        return cls(list(label_columns), by_key, splits)

    def lookup(self, record_id: str, source: str) -> np.ndarray | None:
        for key in (record_key(record_id), record_key(source)):
            if key in self.by_key:
                return self.by_key[key]
        return None


def record_key(value: str) -> str:
    """Match ids written as paths, file names or bare ids: the file name without its extensions."""
    name = Path(str(value).split("#")[0]).name
    for suffix in (".npy", ".npz", ".hea", ".mat", ".dat", ".csv", ".h5", ".hdf5", ".xml", ".dcm", ".json"):
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
    return name


# ---------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------
@dataclass
class PrepareResult:
    store: Path
    records: int
    rows: int
    rejected: int
    skipped_done: int
    rejects: list[tuple[str, str]]
    warned: int = 0  # accepted records whose reader flagged something (units, amplitude, Einthoven ...)


def _limit_blas_threads() -> Any:
    """Pin BLAS/OpenMP pools of this process to one thread; returns the limiter (None without threadpoolctl).

    Why: ``filtfilt``/``sosfiltfilt`` solve small systems (up to 150 x 150) in ``lfilter_zi``, five
    times per record. A multi-threaded OpenBLAS spends far longer waking and spinning its threads than
    solving, worst when the cores are already busy (prepare workers, other jobs): measured 27 ms per
    call with 2 threads on a loaded 2-core machine against 0.13 ms with one, so ~70-175 ms against
    ~9 ms per 10 s, 500 Hz record. Parallelism in ``prepare`` comes from worker processes instead.
    """
    try:
        from threadpoolctl import threadpool_limits  # a scikit-learn dependency, so normally present
    except ImportError:  # pragma: no cover - then the library defaults stay, only slower
        return None
    return threadpool_limits(limits=1)


def _init_prepare_worker() -> None:
    """Pool initializer: one BLAS thread per worker process (see :func:`_limit_blas_threads`)."""
    _limit_blas_threads()


def _process_source(args: tuple[Any, dict[str, Any], int, int, dict[str, Any]]) -> tuple[str, Any]:
    """Worker: read + preprocess one record -> ("ok", payload) or ("reject", reason)."""
    from .io import read_source

    source, spec_dict, row_samples, target_hz, read_kwargs = args
    spec = PreprocessSpec.from_dict(spec_dict)
    try:
        record = read_source(source, **read_kwargs)
        signal = preprocess_signal(record.signal, record.fs, spec)
    except ValueError as err:  # RecordError, PreprocessError and friends: one line each
        return "reject", (source.record_id, source.path, str(err).splitlines()[0])
    except Exception as err:  # a reader bug must not stop a million-record job either
        return "reject", (source.record_id, source.path, f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}")
    length = signal.shape[1]
    n_segments = max(1, math.ceil(length / row_samples))
    rows = np.zeros((n_segments, 12, row_samples), dtype=np.float32)
    lengths = []
    for s in range(n_segments):
        part = signal[:, s * row_samples:(s + 1) * row_samples]
        rows[s, :, : part.shape[1]] = part
        lengths.append(part.shape[1])
    meta = dict(record.meta)
    info = dict(record_id=record.record_id, source=record.source, orig_fs=record.fs,
                orig_samples=int(record.signal.shape[1]), units=record.units, meta=meta, lengths=lengths)
    return "ok", (rows, info)


def _json_meta(meta: dict[str, Any]) -> str:
    def clean(v: Any) -> Any:
        if isinstance(v, (np.generic,)):
            return v.item()
        if isinstance(v, np.ndarray):
            return v.tolist()
        if isinstance(v, dict):
            return {str(k): clean(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [clean(x) for x in v]
        return v if isinstance(v, (str, int, float, bool)) or v is None else str(v)
    return json.dumps(clean(meta), separators=(",", ":"))


def prepare_store(inputs: Sequence[str | os.PathLike], out: str | os.PathLike, *,
                  spec: PreprocessSpec | None = None, labels: LabelTable | None = None,
                  row_seconds: float = 10.0, shard_records: int = 512, workers: int = 1,
                  read_kwargs: dict[str, Any] | None = None, progress: bool = True,
                  split_fractions: tuple[float, float] = (0.0, 0.0), seed: int = 0,
                  stop_after_shards: int | None = None, allow_outside_root: bool = False) -> PrepareResult:
    """Read every record under ``inputs``, preprocess it once and write a store at ``out``.

    Re-running the same command resumes: finished shards are kept, unfinished blocks redone. A record
    that fails goes to ``rejects.csv`` with its reason and never stops the job. ``split_fractions``
    (val, test) assigns splits by a hash of the record id when the labels give none.
    ``allow_outside_root`` lets manifest entries point outside the manifest's folder (absolute or
    ``..`` paths); by default they are refused before anything is written.
    """
    from .io import iter_sources

    spec = spec or PreprocessSpec()
    input_paths = [str(p) for p in inputs]

    def sources() -> Iterator[Any]:
        return iter_sources(input_paths, allow_outside_root=allow_outside_root)

    # A first pass counts the records and checks every input and manifest row before anything is
    # written (a bad manifest must not leave an empty store folder behind); neither pass holds the
    # record list in memory, so millions of records cost a walk of the folders, not gigabytes.
    n_sources = sum(1 for _ in sources())
    if not n_sources:
        raise StoreError(f"no ECG records found under {', '.join(input_paths)}")
    out = check_writable(out)
    (out / "shards").mkdir(exist_ok=True)
    # Temporary files of writes cut short by a kill (SIGKILL skips their clean-up); one job owns a store.
    for stale in [*out.glob(".*.tmp"), *(out / "shards").glob(".*.tmp")]:
        stale.unlink(missing_ok=True)
    row_samples = int(round(row_seconds * spec.target_hz))
    header = {"format": STORE_FORMAT, "version": STORE_VERSION, "preprocessing": spec.to_dict(),
              "row_samples": row_samples, "fs": spec.target_hz, "n_leads": 12,
              "label_names": labels.names if labels else [], "shard_records": shard_records,
              "n_sources": n_sources}
    meta_path = out / "store.json"
    if meta_path.exists():
        previous = json.loads(meta_path.read_text())
        for key in ("preprocessing", "row_samples", "shard_records", "label_names"):
            if previous.get(key) != header[key]:
                raise StoreError(f"{out}: exists with a different {key}; use a new --out or delete it")
        if previous.get("complete") and previous.get("n_sources") == n_sources:
            return _result_from_existing(out, previous)
    atomic_write_json(meta_path, {**header, "complete": False})

    n_blocks = math.ceil(n_sources / shard_records)
    done = {b for b in range(n_blocks) if _shard_done(out, b)}
    skipped_done = sum(min(shard_records, n_sources - b * shard_records) for b in done)
    tasks_kwargs = read_kwargs or {}
    spec_dict = spec.to_dict()
    bar = _progress(total=n_sources, initial=skipped_done, enabled=progress, desc="prepare", unit="rec")
    pool = mp.get_context("spawn").Pool(workers, initializer=_init_prepare_worker) if workers > 1 else None
    # The in-process path gets the same one-thread BLAS limit; the previous limits come back after.
    limiter = _limit_blas_threads() if pool is None else None
    stopped = False
    try:
        written = 0
        # Blocks are consecutive runs of the discovery order, so block b is the same set of
        # records on every run and a finished shard never needs redoing.
        for b, block in enumerate(_chunks(sources(), shard_records)):
            if b in done:
                continue
            if stop_after_shards is not None and written >= stop_after_shards:
                stopped = True
                break
            args = [(src, spec_dict, row_samples, spec.target_hz, tasks_kwargs) for src in block]
            results = pool.map(_process_source, args, chunksize=4) if pool else map(_process_source, args)
            _write_shard(out, b, list(results), labels, split_fractions, seed, spec.target_hz, row_samples)
            written += 1
            bar.update(len(block))
    finally:
        bar.close()
        if pool is not None:
            pool.terminate()
        if limiter is not None:
            limiter.restore_original_limits()
    if stopped:
        raise StoreError(f"{out}: stopped after {stop_after_shards} shards (incomplete)")
    return _finalise(out, header, n_blocks, skipped_done)


def _chunks(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    block: list[Any] = []
    for item in items:
        block.append(item)
        if len(block) == size:
            yield block
            block = []
    if block:
        yield block


def _shard_done(out: Path, block: int) -> bool:
    return (out / "shards" / f"{block:05d}.npy").exists() and (out / "shards" / f"{block:05d}.csv").exists()


def _split_for(record_id: str, fractions: tuple[float, float], seed: int) -> str:
    import hashlib
    val, test = fractions
    if val <= 0 and test <= 0:
        return ""
    h = int(hashlib.sha1(f"{seed}:{record_id}".encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    return "test" if h < test else "val" if h < test + val else "train"


def _write_shard(out: Path, block: int, results: list[tuple[str, Any]], labels: LabelTable | None,
                 split_fractions: tuple[float, float], seed: int, fs: float, row_samples: int) -> None:
    oks = [payload for status, payload in results if status == "ok"]
    rejects = [payload for status, payload in results if status == "reject"]
    label_names = labels.names if labels else []
    table_rows: list[dict[str, Any]] = []
    arrays = []
    for rows, info in oks:
        label_values = None
        if labels is not None:
            label_values = labels.lookup(info["record_id"], info["source"])
            if label_values is None:
                rejects.append((info["record_id"], info["source"], "no row for this record in the labels file"))
                continue
        split = (labels.splits.get(record_key(info["record_id"])) if labels and labels.splits else None) \
            or _split_for(info["record_id"], split_fractions, seed)
        for segment, length in enumerate(info["lengths"]):
            row = {"record_id": info["record_id"], "segment": segment, "start_s": segment * row_samples / fs,
                   "length": length, "source": info["source"], "orig_fs": info["orig_fs"],
                   "orig_samples": info["orig_samples"], "units": info["units"], "split": split,
                   "meta": _json_meta(info["meta"]) if segment == 0 else "{}"}
            for name, value in zip(label_names, label_values if label_values is not None else []):
                row[LABEL_PREFIX + name] = "" if np.isnan(value) else f"{value:g}"
            table_rows.append(row)
        arrays.append(rows)
    data = np.concatenate(arrays) if arrays else np.zeros((0, 12, row_samples), np.float32)
    shard_npy = out / "shards" / f"{block:05d}.npy"
    with atomic_path(shard_npy) as tmp:
        with open(tmp, "wb") as fh:
            np.save(fh, data)
    fields = MANIFEST_FIELDS[1:] + [LABEL_PREFIX + n for n in label_names]
    reject_csv = out / "shards" / f"{block:05d}.rejects.csv"
    with atomic_path(reject_csv) as tmp:
        with open(tmp, "w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["record_id", "source", "reason"])
            writer.writerows(rejects)
    # The manifest part is written last: its presence marks the shard complete.
    with atomic_path(out / "shards" / f"{block:05d}.csv") as tmp:
        with open(tmp, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=fields)
            writer.writeheader()
            writer.writerows(table_rows)


def _finalise(out: Path, header: dict[str, Any], n_blocks: int, skipped_done: int) -> PrepareResult:
    """Merge the shard manifests (streaming) and mark the store complete."""
    label_names = header["label_names"]
    fields = MANIFEST_FIELDS + ["shard", "shard_row"] + [LABEL_PREFIX + n for n in label_names]
    n_rows = 0
    warned = 0
    n_records = 0
    # id digest -> source digest: ids repeated by different files are told apart in little memory.
    seen_ids: dict[int, int] = {}
    current_id = ""
    all_rejects: list[tuple[str, str]] = []
    with atomic_path(out / "manifest.csv") as tmp_manifest, atomic_path(out / "rejects.csv") as tmp_rejects:
        with open(tmp_manifest, "w", newline="") as fm, open(tmp_rejects, "w", newline="") as fr:
            manifest = csv.DictWriter(fm, fieldnames=fields)
            manifest.writeheader()
            rejects = csv.writer(fr)
            rejects.writerow(["record_id", "source", "reason"])
            for b in range(n_blocks):
                with open(out / "shards" / f"{b:05d}.rejects.csv", newline="") as fh:
                    for rec in csv.DictReader(fh):
                        rejects.writerow([rec["record_id"], rec["source"], rec["reason"]])
                        all_rejects.append((rec["source"], rec["reason"]))
                with open(out / "shards" / f"{b:05d}.csv", newline="") as fh:
                    for shard_row, rec in enumerate(csv.DictReader(fh)):
                        if rec["segment"] == "0":
                            rid = rec["record_id"]
                            id_key, source_key = _digest(rid), _digest(rec["source"])
                            if seen_ids.get(id_key, source_key) != source_key:
                                # Same id from two files: keep both, but make the second id unique.
                                rid = f"{rid}@{n_records}"
                                id_key = _digest(rid)
                            seen_ids[id_key] = source_key
                            current_id = rid
                            n_records += 1
                            if '"warnings":[' in rec["meta"] and '"warnings":[]' not in rec["meta"]:
                                warned += 1
                        # Later segments follow their first row (and its renaming, if any).
                        rec.update(row=n_rows, shard=b, shard_row=shard_row, record_id=current_id)
                        manifest.writerow(rec)
                        n_rows += 1
    summary = {**header, "complete": True, "n_rows": n_rows, "n_records": n_records, "n_warned": warned,
               "n_rejected": len(all_rejects), "n_shards": n_blocks}
    # Columnar copy of what training reads, so that opening a store of millions of rows is instant.
    with atomic_path(out / INDEX_FILE) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, **_parse_manifest(out / "manifest.csv", label_names))
    atomic_write_json(out / "store.json", summary)
    return PrepareResult(out, n_records, n_rows, len(all_rejects), skipped_done, all_rejects, warned)


def _digest(text: str) -> int:
    import hashlib
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little")


def _parse_manifest(manifest: Path, label_names: Sequence[str]) -> dict[str, np.ndarray]:
    """manifest.csv -> the columns training needs, as arrays (strings as fixed-width unicode)."""
    ids, segments, lengths, shards, shard_rows, splits, labels = [], [], [], [], [], [], []
    label_cols = [LABEL_PREFIX + n for n in label_names]
    with open(manifest, newline="") as fh:
        for rec in csv.DictReader(fh):
            ids.append(rec["record_id"])
            segments.append(int(rec["segment"]))
            lengths.append(int(rec["length"]))
            shards.append(int(rec["shard"]))
            shard_rows.append(int(rec["shard_row"]))
            splits.append(rec["split"])
            labels.append([float(rec[c]) if rec[c] != "" else np.nan for c in label_cols])
    return {"record_ids": np.asarray(ids, dtype=str), "segments": np.asarray(segments, dtype=np.int32),
            "lengths": np.asarray(lengths, dtype=np.int32), "shard_of": np.asarray(shards, dtype=np.int32),
            "shard_row": np.asarray(shard_rows, dtype=np.int64), "splits": np.asarray(splits, dtype=str),
            "labels": np.asarray(labels, dtype=np.float32).reshape(len(ids), len(label_cols))}


def _result_from_existing(out: Path, meta: dict[str, Any]) -> PrepareResult:
    rejects = []
    with open(out / "rejects.csv", newline="") as fh:
        rejects = [(r["source"], r["reason"]) for r in csv.DictReader(fh)]
    return PrepareResult(out, meta["n_records"], meta["n_rows"], meta["n_rejected"], meta["n_sources"], rejects,
                         meta.get("n_warned", 0))


def _progress(**kwargs: Any) -> Any:
    from tqdm.auto import tqdm
    enabled = kwargs.pop("enabled", True)
    return tqdm(disable=not enabled, dynamic_ncols=True, **kwargs)


# ---------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------
class ECGStore:
    """Read side of a store: memory-mapped rows, manifest columns as arrays, labels, targets."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        meta_file = self.path / "store.json"
        if not meta_file.exists():
            raise StoreError(f"{self.path}: not a store (no store.json); build one with `hubert-ecg prepare`")
        self.meta = json.loads(meta_file.read_text())
        if not self.meta.get("complete"):
            raise StoreError(f"{self.path}: the store is incomplete; re-run the same `hubert-ecg prepare` "
                             "command to finish it")
        self.spec = PreprocessSpec.from_dict(self.meta["preprocessing"])
        self.fs = float(self.meta["fs"])
        self.row_samples = int(self.meta["row_samples"])
        self.label_names: list[str] = list(self.meta.get("label_names", []))
        self._read_manifest()
        self._shards: dict[int, np.ndarray] = {}

    def _read_manifest(self) -> None:
        index = self.path / INDEX_FILE
        arrays = dict(np.load(index, allow_pickle=False)) if index.exists() \
            else _parse_manifest(self.path / "manifest.csv", self.label_names)
        self.record_ids = arrays["record_ids"]
        self.segments = arrays["segments"]
        self.lengths = arrays["lengths"]
        self.shard_of = arrays["shard_of"]
        self.shard_row = arrays["shard_row"]
        self.splits = arrays["splits"]
        self.labels = arrays["labels"] if self.label_names else None

    def __len__(self) -> int:
        return len(self.record_ids)

    @property
    def sources(self) -> np.ndarray:
        """Source path of every row (read from manifest.csv on first use; training never needs it)."""
        if not hasattr(self, "_sources"):
            with open(self.path / "manifest.csv", newline="") as fh:
                self._sources = np.asarray([rec["source"] for rec in csv.DictReader(fh)], dtype=str)
        return self._sources

    def shard(self, index: int) -> np.ndarray:
        """Memory-mapped shard (rows, 12, row_samples); opened lazily (safe across worker forks)."""
        arr = self._shards.get(index)
        if arr is None:
            arr = np.load(self.path / "shards" / f"{index:05d}.npy", mmap_mode="r")
            self._shards[index] = arr
        return arr

    def rows(self, split: str | None = None, *, first_segment_only: bool = False) -> np.ndarray:
        """Row indices of a split ('' = all when the store has no splits)."""
        keep = np.ones(len(self), dtype=bool)
        if split:
            keep &= self.splits == split
        if first_segment_only:
            keep &= self.segments == 0
        return np.flatnonzero(keep)

    def signals(self, rows: Sequence[int] | np.ndarray) -> np.ndarray:
        """Gather rows -> float32 (B, 12, row_samples), reading each shard once per call."""
        rows = np.asarray(rows, dtype=np.int64)
        out = np.empty((len(rows), 12, self.row_samples), dtype=np.float32)
        shard_ids = self.shard_of[rows]
        for s in np.unique(shard_ids):
            where = np.flatnonzero(shard_ids == s)
            local = self.shard_row[rows[where]]
            order = np.argsort(local)  # ascending reads are kinder to the page cache
            out[where[order]] = self.shard(int(s))[local[order]]
        return out

    def crops(self, rows: Sequence[int] | np.ndarray, starts: np.ndarray, window: int) -> tuple[np.ndarray, np.ndarray]:
        """Copy ``[start, start + window)`` of each row straight from its shard.

        Returns float32 (B, 12, window), zero past each row's valid length, and the validity of
        each time step (B, window). Reading only the crop moves half the bytes of whole rows.
        """
        rows = np.asarray(rows, dtype=np.int64)
        starts = np.asarray(starts, dtype=np.int64)
        out = np.zeros((len(rows), 12, window), dtype=np.float32)
        shard_of, local = self.shard_of[rows], self.shard_row[rows]
        for i in range(len(rows)):
            start = int(starts[i])
            stop = min(start + window, self.row_samples)
            out[i, :, : stop - start] = self.shard(int(shard_of[i]))[local[i], :, start:stop]
        valid = (starts[:, None] + np.arange(window)[None, :]) < np.minimum(self.lengths[rows], self.row_samples)[:, None]
        if not valid.all():
            out *= valid[:, None, :]
        return out, valid

    def targets_path(self, name: str) -> Path:
        return self.path / "targets" / f"{name}.npy"

    def targets(self, name: str) -> np.ndarray:
        path = self.targets_path(name)
        if not path.exists():
            raise StoreError(f"{self.path}: no targets named {name!r}; create them with `hubert-ecg label`")
        return np.load(path, mmap_mode="r")

    def record_groups(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Unique record ids of ``rows`` and the group index of each row (for window aggregation)."""
        uniq, inverse = np.unique(self.record_ids[rows].astype(str), return_inverse=True)
        return uniq, inverse


def open_store(path: str | os.PathLike) -> ECGStore:
    return ECGStore(path)
