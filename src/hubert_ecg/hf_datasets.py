"""Share a prepared store as Parquet or a Hugging Face ``datasets.Dataset``, and rebuild a store from one.

A store (:mod:`hubert_ecg.store`) is fast to train from but private to this package; this module
moves its rows and labels in and out of the formats the rest of the ecosystem reads. One Parquet
row / dataset example per store row:

    record_id, source, split, group, units, meta (JSON)   strings
    segment, length, orig_samples                           ints (length: valid samples of the row)
    start_s, orig_fs                                        floats
    label:<name>                                            float32 per label (null: unlabelled)
    signal                                                  float32 (12, row_samples): the preprocessed
                                                            row at ``fs`` (100 Hz), zero past ``length``

The store header (preprocessing spec, rate, label classes) travels as the Parquet schema metadata
key ``hubert_ecg.store`` and, for a ``datasets.Dataset``, as JSON in ``dataset.info.description``
(``datasets`` keeps its own schema metadata only). Importing writes an ordinary store directory,
checked like one built by ``prepare``; a store exported and imported back has identical rows,
labels and splits.

``pyarrow`` is needed for Parquet (``pip install hubert-ecg[parquet]``), ``datasets`` for the
Hugging Face forms (``pip install hubert-ecg[datasets]``).
"""

from __future__ import annotations

import csv
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from .atomic import atomic_path
from .store import LABEL_PREFIX, MANIFEST_FIELDS, STORE_FORMAT, STORE_VERSION, ECGStore, StoreError, _finalise

__all__ = ["export_store", "from_hf_dataset", "import_store", "to_hf_dataset"]

METADATA_KEY = b"hubert_ecg.store"
_STRINGS = ("record_id", "source", "split", "group", "units", "meta")
_INTS = ("segment", "length", "orig_samples")
_FLOATS = ("start_s", "orig_fs")
_HEADER_KEYS = ("preprocessing", "row_samples", "fs", "n_leads", "label_names", "label_classes")


def _pyarrow() -> Any:
    try:
        import pyarrow
        import pyarrow.parquet  # noqa: F401
    except ImportError:
        raise ImportError("sharing a store as Parquet needs `pip install pyarrow` (hubert-ecg[parquet])") from None
    return pyarrow


def _header(store: ECGStore) -> dict[str, Any]:
    return {k: store.meta[k] for k in _HEADER_KEYS if k in store.meta}


def _batches(store: ECGStore, split: str | None, batch_rows: int) -> Iterator[Any]:
    pa = _pyarrow()
    with open(store.path / "manifest.csv", newline="") as fh:
        manifest = [r for r in csv.DictReader(fh) if not split or r["split"] == split]
    names = store.label_names
    for start in range(0, len(manifest), batch_rows):
        part = manifest[start : start + batch_rows]
        signals = store.signals([int(r["row"]) for r in part])
        columns: dict[str, Any] = {}
        for key in _STRINGS:
            columns[key] = pa.array([r.get(key) or "" for r in part], pa.string())
        for key in _INTS:
            columns[key] = pa.array([int(r[key]) for r in part], pa.int64())
        for key in _FLOATS:
            columns[key] = pa.array([float(r[key]) for r in part], pa.float64())
        for name in names:
            cells = [r[LABEL_PREFIX + name] for r in part]
            columns[LABEL_PREFIX + name] = pa.array([float(c) if c != "" else None for c in cells], pa.float32())
        flat = pa.array(signals.reshape(-1), pa.float32())
        columns["signal"] = pa.FixedSizeListArray.from_arrays(
            pa.FixedSizeListArray.from_arrays(flat, store.row_samples), signals.shape[1]
        )
        yield pa.table(columns)


def export_store(
    store: str | os.PathLike | ECGStore, out: str | os.PathLike, *, split: str | None = None, batch_rows: int = 1024
) -> Path:
    """Write the rows of a store (or of one ``split``) and their labels to one Parquet file; returns its path."""
    _pyarrow()
    import pyarrow.parquet as pq

    store = store if isinstance(store, ECGStore) else ECGStore(store)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    header = json.dumps(_header(store)).encode()
    writer = None
    with atomic_path(out) as tmp:
        try:
            for table in _batches(store, split, batch_rows):
                table = table.replace_schema_metadata({METADATA_KEY: header})
                if writer is None:
                    writer = pq.ParquetWriter(str(tmp), table.schema)
                writer.write_table(table)
            if writer is None:
                raise StoreError(f"{store.path}: no rows{f' in split {split!r}' if split else ''} to export")
        finally:
            if writer is not None:
                writer.close()
    return out


def to_hf_dataset(store: str | os.PathLike | ECGStore, *, split: str | None = None) -> Any:
    """The rows of a store as a ``datasets.Dataset`` (in memory); the header is in ``info.description``."""
    try:
        import datasets
    except ImportError:
        raise ImportError("Hugging Face datasets support needs `pip install datasets` (hubert-ecg[datasets])") from None
    pa = _pyarrow()
    store = store if isinstance(store, ECGStore) else ECGStore(store)
    table = pa.concat_tables(list(_batches(store, split, 1024)))
    info = datasets.DatasetInfo(description=json.dumps({"hubert_ecg.store": _header(store)}))
    return datasets.Dataset(table, info=info)


def import_store(
    source: Any, out: str | os.PathLike, *, header: dict[str, Any] | None = None, shard_rows: int = 512
) -> ECGStore:
    """Rebuild a store directory from an exported Parquet file (path) or a ``datasets.Dataset``.

    ``header`` supplies the store header (at least ``preprocessing``) when the source lost it, e.g.
    a dataset re-created from plain Parquet files. ``out`` must not exist or be empty.
    """
    _pyarrow()
    table, found = _read_source(source)
    header = header or found
    if not header or "preprocessing" not in header:
        raise StoreError(
            f"{source}: no hubert_ecg store header (preprocessing spec); pass header=... "
            "(the 'hubert_ecg.store' JSON of the export)"
        )
    if "signal" not in table.column_names:
        raise StoreError(f"{source}: no 'signal' column; not an exported store")
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise StoreError(f"{out}: exists and is not empty; choose a new directory")
    label_names = [c[len(LABEL_PREFIX) :] for c in table.column_names if c.startswith(LABEL_PREFIX)]
    table = _fixed_size_signal(table, source)
    signal_type = table.schema.field("signal").type
    n_leads, row_samples = signal_type.list_size, signal_type.value_type.list_size
    full = {
        "format": STORE_FORMAT,
        "version": STORE_VERSION,
        "n_leads": n_leads,
        "shard_records": shard_rows,
        "fs": float(header.get("fs", header["preprocessing"].get("target_hz", 100.0))),
        **{k: v for k, v in header.items() if k in _HEADER_KEYS},
        "row_samples": row_samples,
        "label_names": label_names,
        "n_sources": 0,
    }
    (out / "shards").mkdir(parents=True, exist_ok=True)
    try:
        n_blocks = 0
        for start in range(0, table.num_rows, shard_rows):
            _write_block(out, n_blocks, table.slice(start, shard_rows), label_names, row_samples, n_leads)
            n_blocks += 1
        _finalise(out, full, n_blocks, 0)
    except BaseException:
        shutil.rmtree(out, ignore_errors=True)
        raise
    return ECGStore(out)


def from_hf_dataset(dataset: Any, out: str | os.PathLike, **kwargs: Any) -> ECGStore:
    """Alias of :func:`import_store` for a ``datasets.Dataset`` (reads the header from ``info.description``)."""
    return import_store(dataset, out, **kwargs)


def _fixed_size_signal(table: Any, source: Any) -> Any:
    """The table with ``signal`` as fixed-size (leads, samples) float32 lists. Tools that rewrite a
    dataset (pandas, ``datasets.Dataset.from_dict``, other Parquet writers) may store variable-length
    lists; those are accepted when every row has one shape, otherwise refused with the shapes found."""
    pa = _pyarrow()
    column = table.column("signal")
    kind = column.type
    if pa.types.is_fixed_size_list(kind) and pa.types.is_fixed_size_list(kind.value_type):
        return table
    try:
        rows = column.to_pylist()
        shapes = sorted({(len(r), *sorted({len(lead) for lead in r})) for r in rows if r is not None})
    except TypeError:
        raise StoreError(f"{source}: the 'signal' column ({kind}) is not a list of (leads, samples) lists") from None
    if any(r is None for r in rows) or len(shapes) != 1 or len(shapes[0]) != 2:
        raise StoreError(
            f"{source}: the 'signal' column must hold one (leads, samples) shape in every row; found {shapes[:5]}"
            + (" and empty rows" if any(r is None for r in rows) else "")
        )
    n_leads, row_samples = shapes[0]
    flat = pa.array(np.asarray(rows, dtype=np.float32).reshape(-1), pa.float32())
    fixed = pa.FixedSizeListArray.from_arrays(pa.FixedSizeListArray.from_arrays(flat, row_samples), n_leads)
    return table.set_column(table.column_names.index("signal"), "signal", fixed)


def _read_source(source: Any) -> tuple[Any, dict[str, Any] | None]:
    if hasattr(source, "with_format") and hasattr(source, "info"):  # a datasets.Dataset
        table = source.with_format("arrow")[:]
        try:
            header = json.loads(source.info.description or "{}").get("hubert_ecg.store")
        except (json.JSONDecodeError, AttributeError):
            header = None
        return table, header
    import pyarrow.parquet as pq

    path = Path(source)
    if not path.is_file():
        raise StoreError(f"{path}: no such Parquet file")
    table = pq.read_table(str(path))
    raw = (table.schema.metadata or {}).get(METADATA_KEY)
    return table, json.loads(raw) if raw else None


def _write_block(out: Path, block: int, table: Any, label_names: list[str], row_samples: int, n_leads: int) -> None:
    """One shard in the layout of :func:`hubert_ecg.store._write_shard` (no sources: nothing to resume)."""
    signal = table.column("signal").combine_chunks()
    flat = signal.flatten().flatten().to_numpy(zero_copy_only=False)
    data = np.asarray(flat, dtype=np.float32).reshape(table.num_rows, n_leads, row_samples)
    with atomic_path(out / "shards" / f"{block:05d}.npy") as tmp:
        with open(tmp, "wb") as fh:
            np.save(fh, data)
    for suffix, head in (
        (".rejects.csv", ["record_id", "source", "reason"]),
        (".sources.csv", ["source", "fingerprint"]),
    ):
        with atomic_path(out / "shards" / f"{block:05d}{suffix}") as tmp:
            with open(tmp, "w", newline="") as fh:
                csv.writer(fh).writerow(head)
    values = {name: table.column(name).to_pylist() for name in table.column_names if name != "signal"}
    fields = MANIFEST_FIELDS[1:] + [LABEL_PREFIX + n for n in label_names]
    with atomic_path(out / "shards" / f"{block:05d}.csv") as tmp:
        with open(tmp, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=fields)
            writer.writeheader()
            for i in range(table.num_rows):
                row = {
                    k: ("" if values.get(k) is None or values[k][i] is None else values[k][i])
                    for k in MANIFEST_FIELDS[1:]
                }
                for name in label_names:
                    value = values[LABEL_PREFIX + name][i]
                    row[LABEL_PREFIX + name] = "" if value is None or np.isnan(value) else f"{value:g}"
                writer.writerow(row)
