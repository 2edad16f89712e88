"""The prepared store: every record read and preprocessed once, memory-mappable at 100 Hz.

Layout of ``STORE/``::

    store.json              spec (preprocessing), row geometry, label names, counts, "complete"
    index.npz               the manifest columns training reads, as arrays (loaded instead of the CSV)
    manifest.csv            one row per stored segment: row, record_id, segment, start_s, length,
                            source, orig_fs, orig_samples, units, split, meta (JSON), label columns
    rejects.csv             record_id, source, reason: every record that could not be used
    unmatched_labels.csv    label rows that no record took (only when there are some)
    record_digests.json     a digest of each record's samples, for the leak checks (written on first use)
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
import functools
import json
import math
import os
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .atomic import atomic_path, atomic_write_json, check_output_dir, check_writable, output_lock, sha256_file
from .preprocess import PreprocessSpec
from .reading import REJECTED_ERRORS as REJECTED_ERRORS  # re-exported: what `prepare` files as a reject
from .reading import Accepted, ReadResult, ReadTask, Rejected, RejectsTable, read_one, worker_pool
from .shards import BlockJob, chunks

STORE_FORMAT = "hubert-ecg-store"
STORE_VERSION = 1
LABEL_PREFIX = "label:"
INDEX_FILE = "index.npz"
MANIFEST_FIELDS = [
    "row",
    "record_id",
    "segment",
    "start_s",
    "length",
    "source",
    "orig_fs",
    "orig_samples",
    "units",
    "split",
    "meta",
    "group",
]
csv.field_size_limit(min(sys.maxsize, 2**31 - 1))


class StoreError(ValueError):
    """A store that cannot be built or read; the message names the path and the problem."""


# ---------------------------------------------------------------------------------------------
# Labels
# ---------------------------------------------------------------------------------------------
@dataclass
class LabelTable:
    """Labels keyed by record id (or file stem): values (N, L) float32 with NaN for blanks.

    ``classes`` maps a categorical column (text values such as ``SR``/``AF``) to its class names:
    a column kept as class indices has ``classes[name]`` with index i meaning ``classes[name][i]``;
    one-hot columns are named ``column=CLASS`` and need no mapping. ``groups`` and ``times`` hold
    the ``--group-column`` / ``--time-column`` values used by grouped and temporal splits.
    """

    names: list[str]
    by_key: dict[str, np.ndarray]
    splits: dict[str, str] = field(default_factory=dict)
    classes: dict[str, list[str]] = field(default_factory=dict)
    groups: dict[str, str] = field(default_factory=dict)
    times: dict[str, str] = field(default_factory=dict)
    path: str = ""

    @classmethod
    def from_csv(
        cls,
        path: str | os.PathLike,
        *,
        id_column: str | None = None,
        label_columns: Sequence[str] | None = None,
        label_start_index: int | None = None,
        split_column: str | None = None,
        group_column: str | None = None,
        time_column: str | None = None,
        categorical: str = "index",
    ) -> LabelTable:
        """Read a labels CSV: an id column (``record_id``, ``filename``, ``ecg_id`` ...) and label columns.

        Label columns are ``label_columns``, or every column from ``label_start_index`` on (the
        reference's contract), or every column but the id, split, group and time columns. In that
        last case a column that looks like something else is refused rather than learned as a label:
        a split or fold column (``split``, ``fold``, ``strat_fold`` ...: name it ``split_column``),
        another identifier (``patient_id`` ...: ``group_column``), or text with nearly one value per
        row (free text or ids). Blank cells (and ``nan``/``NA``) become NaN; a column with text
        values is categorical: its classes (sorted) become class indices (``categorical="index"``)
        or one 0/1 column per class (``"onehot"``). Infinite values, duplicated column names, a file
        that is not a text CSV and split values outside :data:`SPLIT_ALIASES` are one-line errors
        naming the file (and row).
        """
        if categorical not in ("index", "onehot"):
            raise StoreError(f"categorical must be 'index' or 'onehot', got {categorical!r}")
        path = Path(path)
        header, rows = _read_label_rows(path)
        roles = _column_roles(path, header, id_column, split_column, group_column, time_column)
        explicit = label_columns is not None or label_start_index is not None
        label_columns = _label_columns(path, header, roles, label_columns, label_start_index)
        classes = _categorical_classes(path, rows, label_columns)
        if not explicit:
            _refuse_non_labels(path, label_columns, classes, len(rows))
        names: list[str] = []
        for col in label_columns:
            if col in classes and categorical == "onehot":
                names.extend(f"{col}={c}" for c in classes[col])
            else:
                names.append(col)
        table = cls(names, {}, path=str(path))
        table.classes = {c: classes[c] for c in classes if categorical == "index"}
        table._read_rows(rows, roles, label_columns, classes, onehot=categorical == "onehot")
        return table

    def _read_rows(
        self,
        rows: list[dict[str, str | None]],
        roles: _ColumnRoles,
        label_columns: Sequence[str],
        classes: dict[str, list[str]],
        *,
        onehot: bool,
    ) -> None:
        """Fill ``by_key`` (and splits, groups, times) from the CSV rows; one-line errors name the row."""
        path = self.path
        for line, row in enumerate(rows, start=2):
            raw_id = (row.get(roles.id) or "").strip()
            if not raw_id:
                raise StoreError(f"{path}, row {line}: empty record id in column {roles.id!r}")
            key = record_key(raw_id)
            if key in self.by_key:
                raise StoreError(f"{path}, row {line}: duplicate record id {raw_id!r}")
            values: list[float] = []
            for col in label_columns:
                cell = _cell(row, col)
                if col in classes:
                    index = classes[col].index(cell) if cell else -1
                    if onehot:
                        values.extend(np.nan if index < 0 else float(i == index) for i in range(len(classes[col])))
                    else:
                        values.append(np.nan if index < 0 else float(index))
                    continue
                value = float(cell) if cell else np.nan
                if np.isinf(value):
                    raise StoreError(f"{path}, row {line}: column {col!r} is not a finite number ({cell!r})")
                values.append(value)
            self.by_key[key] = np.asarray(values, dtype=np.float32)
            if roles.split:
                self.splits[key] = (row.get(roles.split) or "").strip()
            if roles.group:
                self.groups[key] = (row.get(roles.group) or "").strip()
                if not self.groups[key]:
                    raise StoreError(f"{path}, row {line}: empty {roles.group!r} (--group-column)")
            if roles.time:
                self.times[key] = (row.get(roles.time) or "").strip()
        if roles.split:
            what = f"{path}: column {roles.split!r}"
            self.splits = dict(zip(self.splits, normalise_splits(list(self.splits.values()), what)))
            if roles.group:
                check_groups_within_splits(self.groups, self.splits, what)

    def lookup(self, record_id: str, source: str) -> np.ndarray | None:
        for key in (record_key(record_id), record_key(source)):
            if key in self.by_key:
                return self.by_key[key]
        return None

    def key_of(self, record_id: str, source: str) -> str | None:
        for key in (record_key(record_id), record_key(source)):
            if key in self.by_key:
                return key
        return None

    def assign_splits(self, strategy: str, fractions: tuple[float, float], seed: int = 0) -> str:
        """Fill ``splits`` by ``strategy`` (grouped, temporal, grouped_temporal); returns a one-line summary.

        Every group goes to one split; see :func:`grouped_splits` and :func:`temporal_splits`.
        """
        keys = list(self.by_key)
        if strategy in ("grouped", "grouped_temporal") and not self.groups:
            raise StoreError(f"--split-strategy {strategy} needs --group-column")
        if strategy in ("temporal", "grouped_temporal") and not self.times:
            raise StoreError(f"--split-strategy {strategy} needs --time-column")
        groups = [self.groups[k] for k in keys] if self.groups else keys
        if strategy == "grouped":
            labels = np.stack([self.by_key[k] for k in keys]) if self.names else np.zeros((len(keys), 0))
            split = grouped_splits(groups, fractions, seed=seed, labels=labels)
        elif strategy in ("temporal", "grouped_temporal"):
            times = [_parse_time(self.times[k], f"{self.path}, record {k!r}: --time-column") for k in keys]
            split = temporal_splits(times, fractions, groups=groups if strategy == "grouped_temporal" else None)
        else:
            raise StoreError(f"unknown split strategy {strategy!r}")
        self.splits = dict(zip(keys, split))
        counts = {s: split.count(s) for s in ("train", "val", "test")}
        return f"{strategy} split of {len(keys)} labelled records in {len(set(groups))} groups: " + ", ".join(
            f"{n} {s}" for s, n in counts.items()
        )


def _read_label_rows(path: Path) -> tuple[list[str], list[dict[str, str | None]]]:
    """Header and rows of a labels CSV; refuses binary files and undecodable text on one line."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(8192)
    except IsADirectoryError:
        raise StoreError(f"{path}: is a directory, not a labels CSV") from None
    except OSError as err:
        raise StoreError(f"{path}: cannot read labels ({err.strerror})") from None
    kind = _binary_kind(head)
    if kind:
        raise StoreError(f"{path}: not a CSV file ({kind}); export the labels as comma-separated text")
    encoding = "utf-16" if head.startswith((b"\xff\xfe", b"\xfe\xff")) else "utf-8-sig"
    try:
        with open(path, newline="", encoding=encoding) as fh:
            sample = fh.read(4096)
            fh.seek(0)
            try:
                dialect = csv.Sniffer().sniff(sample, delimiters=",;\t") if sample.strip() else csv.excel
            except csv.Error:
                dialect = csv.excel  # one column, or a table the sniffer cannot decide: plain commas
            reader = csv.DictReader(fh, dialect=dialect)
            rows = list(reader)
            header = [h.strip() if h else "" for h in (reader.fieldnames or [])]
    except UnicodeDecodeError as err:
        raise StoreError(
            f"{path}: not UTF-8 text (byte {err.start}: {err.reason}); save the labels as UTF-8 CSV"
        ) from None
    except csv.Error as err:
        raise StoreError(f"{path}: not a readable CSV ({err})") from None
    if not header or not rows:
        raise StoreError(f"{path}: the labels file is empty")
    if reader.fieldnames and header != list(reader.fieldnames):
        rows = [{h: r.get(o) for h, o in zip(header, reader.fieldnames)} for r in rows]
    return header, rows


@dataclass(frozen=True)
class _ColumnRoles:
    """The non-label columns of a labels CSV: the record id, and the optional split, group and time."""

    id: str
    split: str | None = None
    group: str | None = None
    time: str | None = None

    def names(self) -> tuple[str | None, ...]:
        return (self.id, self.split, self.group, self.time)


#: Header names (lower case) of columns that hold a data split or fold numbers, never a label.
_SPLIT_LIKE = frozenset({"split", "splits", "fold", "folds", "strat_fold", "cv_fold", "partition", "dataset_split"})
_ID_LIKE = frozenset({"patient", "subject", "filename", "file_name", "file", "path", "filepath", "record"})
_TIME_LIKE = frozenset({"date", "time", "datetime", "timestamp", "recording_date", "recording_time", "acquired"})
#: A text column with more distinct values than this, and more than half as many as rows, is ids or free text.
_MAX_TEXT_CLASSES = 50


def _column_roles(
    path: Path,
    header: list[str],
    id_column: str | None,
    split_column: str | None,
    group_column: str | None,
    time_column: str | None,
) -> _ColumnRoles:
    dup = next((c for i, c in enumerate(header) if c in header[:i]), None)
    if dup is not None:
        cols = [str(i + 1) for i, c in enumerate(header) if c == dup]
        raise StoreError(f"{path}: column {dup!r} appears {len(cols)} times (columns {', '.join(cols)})")
    id_column = id_column or next(
        (c for c in ("record_id", "filename", "ecg_id", "id", "exam_id", "path") if c in header), header[0]
    )
    for option, column in (
        ("--id-column", id_column),
        ("--split-column", split_column),
        ("--group-column", group_column),
        ("--time-column", time_column),
    ):
        if column is not None and column not in header:
            raise StoreError(f"{path}: no column {column!r} for {option} (columns: {', '.join(header)})")
    return _ColumnRoles(id_column, split_column, group_column, time_column)


def _label_columns(
    path: Path,
    header: list[str],
    roles: _ColumnRoles,
    label_columns: Sequence[str] | None,
    label_start_index: int | None,
) -> list[str]:
    """The label columns: as named, from ``label_start_index`` on, or every column without a role."""
    if label_columns is None:
        if label_start_index is not None:
            if not 0 <= label_start_index < len(header):
                raise StoreError(
                    f"{path}: --label-start-index {label_start_index} is outside the {len(header)} columns"
                )
            label_columns = header[label_start_index:]
        else:
            label_columns = [c for c in header if c not in roles.names()]
    missing = [c for c in label_columns if c not in header]
    if missing:
        raise StoreError(f"{path}: label columns not found: {', '.join(missing)}")
    if len(set(label_columns)) != len(label_columns):
        raise StoreError(f"{path}: a label column is named twice in --label-columns")
    return list(label_columns)


def _categorical_classes(
    path: Path, rows: list[dict[str, str | None]], label_columns: Sequence[str]
) -> dict[str, list[str]]:
    """Sorted class names of every all-text label column; text among numbers is refused naming the row."""
    # Text among numbers is more likely a typo than a class, so it stays an error naming the row.
    first_text: dict[str, int] = {}
    has_number: set[str] = set()
    for line, row in enumerate(rows, start=2):
        for col in label_columns:
            cell = _cell(row, col)
            if not cell:
                continue
            if _is_number(cell):
                has_number.add(col)
            else:
                first_text.setdefault(col, line)
    classes: dict[str, list[str]] = {}
    for col in label_columns:
        if col in first_text and col in has_number:
            line = first_text[col]
            cell = _cell(rows[line - 2], col)
            raise StoreError(
                f"{path}, row {line}: column {col!r} is not a number ({cell!r}); "
                "a categorical column must hold text values only"
            )
        if col in first_text:
            classes[col] = sorted({_cell(r, col) for r in rows} - {""})
    return classes


def _refuse_non_labels(path: Path, columns: Sequence[str], classes: dict[str, list[str]], n_rows: int) -> None:
    """Refuse default label columns that are a split, an identifier or free text (nothing is guessed)."""
    choose = "or name the labels with --label-columns"
    for col in columns:
        lower = col.lower()
        if lower in _SPLIT_LIKE:
            raise StoreError(
                f"{path}: column {col!r} looks like a data split, not a label: pass --split-column {col} {choose}"
            )
        if lower in _TIME_LIKE:
            raise StoreError(
                f"{path}: column {col!r} looks like a recording time, not a label: pass --time-column {col} "
                f"for a temporal split, {choose}"
            )
        if lower.endswith("_id") or lower in _ID_LIKE:
            raise StoreError(
                f"{path}: column {col!r} looks like an identifier, not a label: pass --group-column {col} to keep "
                f"its records in one split, {choose}"
            )
        n_classes = len(classes.get(col, ()))
        if n_classes > _MAX_TEXT_CLASSES and n_classes > n_rows / 2:
            raise StoreError(
                f"{path}: column {col!r} has {n_classes} different text values in {n_rows} rows: it looks like "
                f"identifiers or free text, not a label; {choose}"
            )


def _binary_kind(head: bytes) -> str:
    """What a file that is not text looks like ('' for text), from its first bytes."""
    for magic, kind in (
        (b"PK\x03\x04", "a zip archive, e.g. an Excel .xlsx workbook"),
        (b"\xd0\xcf\x11\xe0", "an OLE file, e.g. an old Excel .xls workbook"),
        (b"%PDF", "a PDF document"),
        (b"\x89HDF", "an HDF5 file"),
        (b"\x93NUMPY", "a NumPy array"),
        (b"\x1f\x8b", "gzip-compressed data"),
        (b"PAR1", "a Parquet file"),
    ):
        if head.startswith(magic):
            return kind
    if b"\x00" in head and not head.startswith((b"\xff\xfe", b"\xfe\xff")):
        return "binary data"
    return ""


_BLANKS = frozenset({"", "nan", "na", "n/a", "null", "none"})


def _cell(row: Mapping[str, str | None], col: str) -> str:
    cell = (row.get(col) or "").strip()
    return "" if cell.lower() in _BLANKS else cell


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


# ---------------------------------------------------------------------------------------------
# Splits: one documented spelling rule, grouped and temporal assignment, leak checks
# ---------------------------------------------------------------------------------------------
#: Accepted spellings of split values (case-insensitive, surrounding spaces ignored). Integer fold
#: numbers are mapped as PTB-XL's: the highest fold is test, the next highest val, the rest train.
SPLIT_ALIASES: dict[str, str] = {
    **dict.fromkeys(("train", "training", "trn", "tr"), "train"),
    **dict.fromkeys(("val", "valid", "validation", "validate", "dev", "development", "tune", "tuning"), "val"),
    **dict.fromkeys(("test", "testing", "tst", "holdout", "hold-out", "held-out", "heldout"), "test"),
}


def normalise_splits(values: Sequence[str], what: str) -> list[str]:
    """Map split spellings to train/val/test by :data:`SPLIT_ALIASES` (or fold numbers), else refuse.

    All-blank values mean "no split" and stay blank. Anything else the rule does not map (a blank
    among non-blank values included) raises a one-line error listing the values found.
    """
    found = sorted({str(v).strip() for v in values})
    if found in ([], [""]):
        return ["" for _ in values]
    mapping: dict[str, str] = {}
    folds = [v for v in found if v.lstrip("-").isdigit()]
    if folds and len(folds) == len(found):
        ordered = sorted({int(v) for v in folds})
        if len(ordered) < 3:
            raise StoreError(
                f"{what}: fold numbers {', '.join(map(str, ordered))} cannot give train/val/test "
                "(need at least 3 folds: highest = test, next = val, the rest train)"
            )
        role = {ordered[-1]: "test", ordered[-2]: "val"}
        mapping = {v: role.get(int(v), "train") for v in folds}
    else:
        unknown = [v for v in found if v.lower() not in SPLIT_ALIASES]
        if unknown:
            shown = ", ".join(repr(v) for v in found[:12]) + (" ..." if len(found) > 12 else "")
            raise StoreError(
                f"{what}: split values {', '.join(repr(v) for v in unknown[:5])} are not train/val/test "
                f"(values found: {shown}; accepted: {', '.join(sorted(set(SPLIT_ALIASES)))}, "
                "or fold numbers)"
            )
        mapping = {v: SPLIT_ALIASES[v.lower()] for v in found}
    return [mapping[str(v).strip()] for v in values]


def check_groups_within_splits(groups: dict[str, str], splits: dict[str, str], what: str) -> None:
    """Refuse a split assignment where one group (patient) has records in two splits."""
    seen: dict[str, tuple[str, str]] = {}
    crossing: dict[str, set[str]] = {}
    for key, group in groups.items():
        split = splits.get(key, "")
        if group in seen and seen[group][0] != split:
            crossing.setdefault(group, {seen[group][0]}).add(split)
        seen.setdefault(group, (split, key))
    if crossing:
        group, where = next(iter(crossing.items()))
        raise StoreError(
            f"{what}: group {group!r} has records in {' and '.join(sorted(where))} "
            f"({len(crossing)} group(s) cross splits); a patient's records must stay in one split"
        )


def _seeded_order(items: Sequence[str], seed: int) -> list[int]:
    import hashlib

    return sorted(range(len(items)), key=lambda i: hashlib.sha1(f"{seed}:{items[i]}".encode()).digest())


def grouped_splits(
    groups: Sequence[str], fractions: tuple[float, float], *, seed: int = 0, labels: np.ndarray | None = None
) -> list[str]:
    """train/val/test per record such that every group is in one split, stratified on ``labels``.

    Greedy iterative stratification (Sechidis et al. 2011) over groups: groups holding the rarest
    label go first, each to the split furthest below its target share of that label's positives
    (records when a group has no positive label); ties break by a seeded hash, so the same inputs
    and seed give the same split. Targets are ``(1 - val - test, val, test)``.
    """
    val, test = fractions
    shares = np.array([1.0 - val - test, val, test])
    names = ("train", "val", "test")
    uniq: dict[str, list[int]] = {}
    for i, g in enumerate(groups):
        uniq.setdefault(g, []).append(i)
    gnames = list(uniq)
    n_labels = 0 if labels is None else labels.shape[1]
    # Per group: record count and positives per label (non-zero finite values count as positive;
    # class-index columns are stratified on their classes).
    counts = np.array([len(uniq[g]) for g in gnames], dtype=float)
    if n_labels:
        lab = np.nan_to_num(np.asarray(labels, dtype=float), nan=0.0)
        cols: list[np.ndarray] = []
        for j in range(n_labels):
            values = np.unique(lab[:, j])
            if len(values) > 2 or not set(values.tolist()) <= {0.0, 1.0}:
                cols.extend((lab[:, j] == v).astype(float) for v in values)
            else:
                cols.append((lab[:, j] != 0).astype(float))
        pos_rec = np.stack(cols, axis=1)
        pos = np.stack([pos_rec[uniq[g]].sum(0) for g in gnames])
    else:
        pos = np.zeros((len(gnames), 0))
    totals = pos.sum(0)
    want_pos = shares[:, None] * totals[None, :]
    want_n = shares * counts.sum()
    have_pos = np.zeros_like(want_pos)
    have_n = np.zeros(3)
    rank = {g: r for r, g in enumerate(gnames[i] for i in _seeded_order(gnames, seed))}
    rarity = [
        (float(totals[pos[i] > 0].min()) if (pos[i] > 0).any() else np.inf, rank[g]) for i, g in enumerate(gnames)
    ]
    out = [""] * len(groups)
    for i in sorted(range(len(gnames)), key=lambda i: rarity[i]):
        present = pos[i] > 0
        if present.any():
            j = int(np.flatnonzero(present)[np.argmin(totals[present])])
            deficit = want_pos[:, j] - have_pos[:, j]
        else:
            deficit = want_n - have_n
        deficit = np.where(shares > 0, deficit, -np.inf)
        # Among equal deficits prefer the split furthest below its record target.
        s = int(np.lexsort((-(want_n - have_n), -deficit))[0])
        have_pos[s] += pos[i]
        have_n[s] += counts[i]
        for r in uniq[gnames[i]]:
            out[r] = names[s]
    return out


def temporal_splits(
    times: Sequence[float], fractions: tuple[float, float], *, groups: Sequence[str] | None = None
) -> list[str]:
    """Oldest records train, then val, newest test (by record counts ``1 - val - test``, ``val``, ``test``).

    With ``groups`` each group moves as a whole, placed by its earliest record, so a patient's later
    visits never reach an earlier split than the first one.
    """
    val, test = fractions
    n = len(times)
    if groups is None:
        groups = [str(i) for i in range(n)]
    first: dict[str, float] = {}
    members: dict[str, list[int]] = {}
    for i, (t, g) in enumerate(zip(times, groups)):
        first[g] = min(first.get(g, np.inf), t)
        members.setdefault(g, []).append(i)
    out = [""] * n
    # Whole record counts, not float shares: 1 - 0.2 - 0.1 is 0.7000000000000001, which put one record
    # too many in train whenever the cut fell exactly on a record.
    n_train, n_train_val = (int(round(share * n + 1e-9)) for share in (1 - val - test, 1 - test))
    done = 0
    for g in sorted(first, key=lambda g: (first[g], g)):
        split = "train" if done < n_train else "val" if done < n_train_val else "test"
        for i in members[g]:
            out[i] = split
        done += len(members[g])
    return out


def _parse_time(text: str, what: str) -> float:
    """A number, or an ISO date/time (``2021-03-04``, ``2021-03-04T10:00``), as seconds."""
    from datetime import datetime, timezone

    text = text.strip()
    try:
        return float(text)
    except ValueError:
        pass
    try:
        stamp = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise StoreError(f"{what}: {text!r} is neither a number nor an ISO date (YYYY-MM-DD[THH:MM])") from None
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=timezone.utc)
    return stamp.timestamp()


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
    notes: list[str] = field(default_factory=list)  # one line each: split chosen, records appended/changed


def _record_rows(record: Any, signal: np.ndarray, row_samples: int) -> tuple[np.ndarray, dict[str, Any]]:
    """Post-step of the reading worker: one preprocessed record -> its fixed-shape rows and manifest info."""
    length = signal.shape[1]
    n_segments = max(1, math.ceil(length / row_samples))
    rows = np.zeros((n_segments, 12, row_samples), dtype=np.float32)
    lengths = []
    for s in range(n_segments):
        part = signal[:, s * row_samples : (s + 1) * row_samples]
        rows[s, :, : part.shape[1]] = part
        lengths.append(part.shape[1])
    meta = dict(record.meta)
    info = dict(
        record_id=record.record_id,
        source=record.source,
        orig_fs=record.fs,
        orig_samples=int(record.signal.shape[1]),
        units=record.units,
        meta=meta,
        lengths=lengths,
    )
    return rows, info


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


def prepare_store(
    inputs: Sequence[str | os.PathLike],
    out: str | os.PathLike,
    *,
    spec: PreprocessSpec | None = None,
    labels: LabelTable | None = None,
    row_seconds: float = 10.0,
    shard_records: int = 512,
    workers: int = 1,
    read_kwargs: dict[str, Any] | None = None,
    progress: bool = True,
    split_fractions: tuple[float, float] = (0.0, 0.0),
    seed: int = 0,
    stop_after_shards: int | None = None,
    allow_outside_root: bool = False,
    split_strategy: str | None = None,
) -> PrepareResult:
    """Read every record under ``inputs``, preprocess it once and write a store at ``out``.

    Re-running the same command resumes: finished shards are kept, unfinished blocks redone. Re-running
    it after records were added appends them as new shards; records whose file changed or vanished
    since they were stored are reported (``changes.csv``), not silently re-read. A record that fails
    goes to ``rejects.csv`` with its reason and never stops the job. ``split_fractions`` (val, test)
    assigns splits when the labels give none: by ``split_strategy`` (``grouped``, ``temporal``,
    ``grouped_temporal``; grouped is the default when the labels have a group column), else by a
    hash of the record id. ``allow_outside_root`` lets manifest entries point outside the
    manifest's folder (absolute or ``..`` paths); by default they are refused before anything is
    written. Only one job may write a store at a time (``STORE/.lock``).
    """
    job = _PrepareJob(
        out=check_output_dir(out, marker="store.json", what="store"),
        input_paths=[str(p) for p in inputs],
        spec=spec or PreprocessSpec(),
        labels=labels,
        row_seconds=row_seconds,
        shard_records=shard_records,
        workers=workers,
        read_kwargs=read_kwargs or {},
        progress=progress,
        split_fractions=split_fractions,
        seed=seed,
        stop_after_shards=stop_after_shards,
        allow_outside_root=allow_outside_root,
    )
    notes: list[str] = []
    _assign_splits(job, split_strategy, notes)
    scan = _scan_inputs(job)
    job.out = check_writable(job.out)
    with output_lock(job.out):
        return _prepare_locked(job, scan, notes)


@dataclass
class _PrepareJob:
    """The settings of one ``prepare`` run (see :func:`prepare_store`)."""

    out: Path
    input_paths: list[str]
    spec: PreprocessSpec
    labels: LabelTable | None
    row_seconds: float
    shard_records: int
    workers: int
    read_kwargs: dict[str, Any]
    progress: bool
    split_fractions: tuple[float, float]
    seed: int
    stop_after_shards: int | None
    allow_outside_root: bool

    @property
    def row_samples(self) -> int:
        return int(round(self.row_seconds * self.spec.target_hz))

    def sources(self, account: Any = None) -> Iterator[Any]:
        from .io import iter_sources

        return iter_sources(self.input_paths, allow_outside_root=self.allow_outside_root, account=account)


@dataclass
class _InputScan:
    """What the first pass over the inputs found, compared with what the store already holds."""

    known: dict[int, tuple[str, str]]  # stored records: digest -> (source, fingerprint)
    next_block: int
    n_pending: int  # records not stored yet
    changed: list[str]
    missing: list[str]
    account: Any  # io.InputAccount: every file the walk saw but did not take as a record, with the reason

    @property
    def n_sources(self) -> int:
        return len(self.known) + self.n_pending


def _assign_splits(job: _PrepareJob, split_strategy: str | None, notes: list[str]) -> None:
    """Check the split options; a strategy (or a group column) assigns the labels' splits here."""
    labels, split_fractions = job.labels, job.split_fractions
    val_fraction, test_fraction = split_fractions
    if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
        raise StoreError(
            f"val and test fractions must be in [0, 1) with a sum below 1, got {val_fraction:g} and {test_fraction:g}"
        )
    if split_strategy not in (None, "random", "grouped", "temporal", "grouped_temporal"):
        raise StoreError(f"unknown split strategy {split_strategy!r}")
    if split_strategy not in (None, "random") and labels is None:
        raise StoreError(f"--split-strategy {split_strategy} needs --labels with a group or time column")
    if (
        labels is not None
        and labels.groups
        and split_strategy in (None, "random")
        and not labels.splits
        and val_fraction + test_fraction > 0
    ):
        split_strategy = "grouped"  # a group column never gets a per-record split
    if labels is not None and split_strategy not in (None, "random"):
        if labels.splits:
            raise StoreError(f"--split-strategy {split_strategy} and --split-column both give splits; use one")
        if val_fraction + test_fraction <= 0:
            raise StoreError(f"--split-strategy {split_strategy} needs --val-fraction and/or --test-fraction")
        notes.append(labels.assign_splits(split_strategy, split_fractions, job.seed))


def _scan_inputs(job: _PrepareJob) -> _InputScan:
    """Count the records and check every input and manifest row before anything is written.

    A bad manifest must not leave an empty store folder behind; neither pass holds the record list in
    memory, so millions of records cost a walk of the folders, not gigabytes. The walk also compares
    what is already stored (a re-run) with what is there now.
    """
    from .io import InputAccount

    known, next_block = _stored_sources(job.out)
    n_current = n_pending = 0
    changed: list[str] = []
    seen: set[int] = set()
    account = InputAccount()
    for src in job.sources(account):
        n_current += 1
        ident = _source_ident(src)
        key = _digest(ident)
        seen.add(key)
        if key not in known:
            n_pending += 1
        elif known[key][1] and known[key][1] != _fingerprint(src.path):
            changed.append(ident)
    if not n_current and not known:
        raise StoreError(
            f"no ECG records found under {', '.join(job.input_paths)}"
            + (f" ({account.summary()})" if account.skipped else "")
        )
    missing = [name for key, (name, _) in known.items() if key not in seen]
    return _InputScan(known, next_block, n_pending, changed, missing, account)


def _prepare_locked(job: _PrepareJob, scan: _InputScan, notes: list[str]) -> PrepareResult:
    """The writing part of :func:`prepare_store`, under the store's lock."""
    out = job.out
    # Temporary files of writes cut short by a kill (SIGKILL skips their clean-up); one job owns a store.
    for stale in [*out.glob(".*.tmp"), *(out / "shards").glob(".*.tmp")]:
        stale.unlink(missing_ok=True)
    header = _store_header(job, scan.n_sources)
    meta_path = out / "store.json"
    previous = json.loads(meta_path.read_text()) if meta_path.exists() else None
    if previous is not None:
        for setting in ("preprocessing", "row_samples", "shard_records", "label_names", "label_classes"):
            if previous.get(setting) != header.get(setting):
                raise StoreError(f"{out}: exists with a different {setting}; use a new --out or delete it")
    _write_changes(out, scan.changed, scan.missing)
    _note_changes(out, scan, notes)
    was_complete = previous is not None and previous.get("complete")
    if previous is not None and was_complete and not scan.n_pending:
        _list_skipped(out, scan, notes)
        _list_unmatched_labels(out, job.labels, notes)
        return _result_from_existing(out, previous, notes)
    if was_complete and scan.n_pending:
        notes.append(f"{scan.n_pending} new record(s) appended to the existing store")
    atomic_write_json(meta_path, {**header, "complete": False})
    (out / "shards").mkdir(exist_ok=True)
    n_blocks = scan.next_block + math.ceil(scan.n_pending / job.shard_records)
    _write_new_shards(job, scan, header["row_samples"])
    result = _finalise(out, header, n_blocks, len(scan.known))
    check_store_splits(ECGStore(out))
    _list_skipped(out, scan, notes)
    _list_unmatched_labels(out, job.labels, notes)
    result.notes = notes
    return result


def _store_header(job: _PrepareJob, n_sources: int) -> dict[str, Any]:
    """``store.json``'s settings (a re-run must match them)."""
    spec, labels = job.spec, job.labels
    header = {
        "format": STORE_FORMAT,
        "version": STORE_VERSION,
        "preprocessing": spec.to_dict(),
        "row_samples": job.row_samples,
        "fs": spec.target_hz,
        "n_leads": 12,
        "label_names": labels.names if labels else [],
        "shard_records": job.shard_records,
        "n_sources": n_sources,
    }
    if labels is not None and labels.classes:
        header["label_classes"] = labels.classes
    return header


def _note_changes(out: Path, scan: _InputScan, notes: list[str]) -> None:
    """One note each for stored records that vanished from the inputs or changed on disk."""
    if scan.missing:
        notes.append(
            f"{len(scan.missing)} stored record(s) no longer found in the inputs "
            f"(kept; listed in {out / 'changes.csv'})"
        )
    if scan.changed:
        notes.append(
            f"{len(scan.changed)} stored record(s) changed on disk since they were stored (kept as stored; "
            f"listed in {out / 'changes.csv'}; prepare a new store to use the new content)"
        )


def _list_skipped(out: Path, scan: _InputScan, notes: list[str]) -> None:
    """``skipped.csv``; written last, so that a full disk fails on the store's own files first."""
    if scan.account.write_csv(out / "skipped.csv") is not None:
        notes.append(f"{scan.account.summary()}: not ECG records (listed in {out / 'skipped.csv'})")


def _list_unmatched_labels(out: Path, labels: LabelTable | None, notes: list[str]) -> None:
    """``unmatched_labels.csv``: label rows that no record took (an id spelled differently, a file missing).

    Every row of the labels file is accounted for: used by a stored record, by a rejected one, or listed here.
    """
    path = out / "unmatched_labels.csv"
    if labels is None:
        path.unlink(missing_ok=True)
        return
    store = ECGStore(out)
    used = {labels.key_of(str(r), str(s)) for r, s in zip(store.record_ids, store.sources)}
    if (out / "rejects.csv").exists():
        used.update(labels.key_of(r, s.split("#")[0]) for r, s, _ in RejectsTable.read(out / "rejects.csv").rows)
    unmatched = [key for key in labels.by_key if key not in used]
    if not unmatched:
        path.unlink(missing_ok=True)
        return
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["record_key", "reason"])
            writer.writerows((key, "no record with this id or file name was found") for key in unmatched)
    notes.append(f"{len(unmatched)} of {len(labels.by_key)} label rows match no record (listed in {path})")


def _write_new_shards(job: _PrepareJob, scan: _InputScan, row_samples: int) -> None:
    """Read, preprocess and write the records not stored yet, one shard per block (worker pool if asked)."""
    post = functools.partial(_record_rows, row_samples=row_samples)
    spec_dict = job.spec.to_dict()
    blocks = BlockJob(
        desc="prepare",
        unit="rec",
        enabled=job.progress,
        stop_after=job.stop_after_shards,
        stopped=lambda: StoreError(f"{job.out}: stopped after {job.stop_after_shards} shards (incomplete)"),
    )
    # New blocks are consecutive runs of the discovery order of the records not stored yet, so a
    # re-run after a kill forms the same blocks and a finished shard never needs redoing.
    pending = (src for src in job.sources() if _digest(_source_ident(src)) not in scan.known)
    # The in-process path gets the same one-thread BLAS limit as the workers; the previous limits come back after.
    with worker_pool(job.workers, limit_in_process=True) as pool:

        def write_block(numbered: tuple[int, list[Any]]) -> None:
            b, block = numbered
            tasks = [ReadTask(src, spec_dict, job.read_kwargs, post) for src in block]
            results = list(pool.imap(read_one, tasks, chunksize=4))
            _write_shard(
                job.out, b, results, job.labels, job.split_fractions, job.seed, job.spec.target_hz, row_samples, block
            )

        blocks.run(
            enumerate(chunks(pending, job.shard_records), start=scan.next_block),
            write_block,
            size=lambda numbered: len(numbered[1]),
            total=scan.n_sources,
            initial=len(scan.known),
        )


def _source_ident(src: Any) -> str:
    """One string per record source: the file, plus ``#key`` for one record inside a multi-record file."""
    return src.path if src.key is None else f"{src.path}#{src.key}"


def _fingerprint(path: str) -> str:
    """Size and modification time of a record's file(s): a cheap "has this changed" check (no reading)."""
    parts = []
    p = Path(path)
    candidates = [p]
    if p.suffix.lower() == ".hea":  # WFDB: the samples live beside the header
        candidates += [p.with_suffix(s) for s in (".dat", ".mat")]
    for c in candidates:
        try:
            st = c.stat()
        except OSError:
            continue
        parts.append(f"{st.st_size}:{st.st_mtime_ns}")
    return "/".join(parts)


def _stored_sources(out: Path) -> tuple[dict[int, tuple[str, str]], int]:
    """Sources held by the finished shards of an existing store (digest -> (source, fingerprint)), and
    the next free block number. Unfinished shards are redone, so their sources count as not stored."""
    known: dict[int, tuple[str, str]] = {}
    shards = out / "shards"
    if not (out / "store.json").exists() or not shards.is_dir():
        return known, 0
    done = sorted(
        int(p.stem)
        for p in shards.glob("[0-9][0-9][0-9][0-9][0-9].csv")
        if p.stem.isdigit() and _shard_done(out, int(p.stem))
    )
    next_block = 0
    for b in done:
        if b != next_block:
            break  # blocks are written in order; anything after a gap is redone
        listing = shards / f"{b:05d}.sources.csv"
        if listing.exists():
            with open(listing, newline="") as fh:
                for rec in csv.DictReader(fh):
                    known[_digest(rec["source"])] = (rec["source"], rec["fingerprint"])
        else:  # a store written before sources were listed: its rows and rejects name them
            for part in (f"{b:05d}.csv", f"{b:05d}.rejects.csv"):
                with open(shards / part, newline="") as fh:
                    for rec in csv.DictReader(fh):
                        known.setdefault(_digest(rec["source"]), (rec["source"], ""))
        next_block = b + 1
    return known, next_block


def _write_changes(out: Path, changed: list[str], missing: list[str]) -> None:
    path = out / "changes.csv"
    if not changed and not missing:
        path.unlink(missing_ok=True)
        return
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["source", "change"])
            writer.writerows([(s, "changed on disk since stored (kept as stored)") for s in changed])
            writer.writerows([(s, "no longer found in the inputs (kept)") for s in missing])


def _shard_done(out: Path, block: int) -> bool:
    return (out / "shards" / f"{block:05d}.npy").exists() and (out / "shards" / f"{block:05d}.csv").exists()


def _split_for(record_id: str, fractions: tuple[float, float], seed: int) -> str:
    import hashlib

    val, test = fractions
    if val <= 0 and test <= 0:
        return ""
    h = int(hashlib.sha1(f"{seed}:{record_id}".encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    return "test" if h < test else "val" if h < test + val else "train"


def _write_shard(
    out: Path,
    block: int,
    results: list[ReadResult],
    labels: LabelTable | None,
    split_fractions: tuple[float, float],
    seed: int,
    fs: float,
    row_samples: int,
    block_sources: Sequence[Any] = (),
) -> None:
    oks = [result.value for result in results if isinstance(result, Accepted)]
    rejects = RejectsTable(out / "shards" / f"{block:05d}.rejects.csv")
    for result in results:
        if isinstance(result, Rejected):
            rejects.add(result.source.record_id, result.source.source, result.reason)
        elif not isinstance(result, Accepted):  # read, but physically implausible: not a training example
            src = result.source
            rejects.add(src.record_id, src.source, f"{src.source}: not scorable: {result.reason}")
    label_names = labels.names if labels else []
    table_rows: list[dict[str, Any]] = []
    arrays = []
    for rows, info in oks:
        label_values = labels.lookup(info["record_id"], info["source"]) if labels is not None else None
        if labels is not None and label_values is None:
            rejects.add(info["record_id"], info["source"], "no row for this record in the labels file")
            continue
        split, group = _split_and_group(info, labels, split_fractions, seed)
        for segment, length in enumerate(info["lengths"]):
            row = {
                "record_id": info["record_id"],
                "segment": segment,
                "start_s": segment * row_samples / fs,
                "length": length,
                "source": info["source"],
                "orig_fs": info["orig_fs"],
                "orig_samples": info["orig_samples"],
                "units": info["units"],
                "split": split,
                "meta": _json_meta(info["meta"]) if segment == 0 else "{}",
                "group": group,
            }
            for name, value in zip(label_names, label_values if label_values is not None else []):
                row[LABEL_PREFIX + name] = "" if np.isnan(value) else f"{value:g}"
            table_rows.append(row)
        arrays.append(rows)
    data = np.concatenate(arrays) if arrays else np.zeros((0, 12, row_samples), np.float32)
    fields = MANIFEST_FIELDS[1:] + [LABEL_PREFIX + n for n in label_names]
    _write_block_files(out, block, data, rejects, block_sources, fields, table_rows)


def _split_and_group(
    info: dict[str, Any], labels: LabelTable | None, split_fractions: tuple[float, float], seed: int
) -> tuple[str, str]:
    """A record's split (from the labels, else a hash of its id) and its group ("" without one)."""
    split: str | None = None
    group = ""
    key = labels.key_of(info["record_id"], info["source"]) if labels is not None else None
    if labels is not None and key is not None:
        split = labels.splits.get(key) if labels.splits else None
        group = labels.groups.get(key, "") if labels.groups else ""
    return split or _split_for(info["record_id"], split_fractions, seed), group


def _write_block_files(
    out: Path,
    block: int,
    data: np.ndarray,
    rejects: RejectsTable,
    block_sources: Sequence[Any],
    fields: list[str],
    table_rows: list[dict[str, Any]],
) -> None:
    """One shard's files, each atomically; the manifest part last, as its presence marks the shard done."""
    with atomic_path(out / "shards" / f"{block:05d}.npy") as tmp:
        with open(tmp, "wb") as fh:
            np.save(fh, data)
    rejects.write()
    # Every source of the block and its fingerprint: what a re-run compares to find new or changed records.
    with atomic_path(out / "shards" / f"{block:05d}.sources.csv") as tmp:
        with open(tmp, "w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["source", "fingerprint"])
            writer.writerows((_source_ident(src), _fingerprint(src.path)) for src in block_sources)
    with atomic_path(out / "shards" / f"{block:05d}.csv") as tmp:
        with open(tmp, "w", newline="") as fh:
            manifest = csv.DictWriter(fh, fieldnames=fields)
            manifest.writeheader()
            manifest.writerows(table_rows)


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
    rejects = RejectsTable(out / "rejects.csv")
    with atomic_path(out / "manifest.csv") as tmp_manifest:
        with open(tmp_manifest, "w", newline="") as fm:
            manifest = csv.DictWriter(fm, fieldnames=fields)
            manifest.writeheader()
            for b in range(n_blocks):
                rejects.rows += RejectsTable.read(out / "shards" / f"{b:05d}.rejects.csv").rows
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
        rejects.write()  # committed before manifest.csv: a finished manifest always has its rejects beside it
    all_rejects = [(source, reason) for _, source, reason in rejects.rows]
    summary = {
        **header,
        "complete": True,
        "n_rows": n_rows,
        "n_records": n_records,
        "n_warned": warned,
        "n_rejected": len(all_rejects),
        "n_shards": n_blocks,
    }
    # Columnar copy of what training reads, so that opening a store of millions of rows is instant.
    with atomic_path(out / INDEX_FILE) as tmp:
        with open(tmp, "wb") as fh:
            # Typed as Any: numpy's stubs would match the ** values against savez's allow_pickle: bool.
            columns: dict[str, Any] = _parse_manifest(out / "manifest.csv", label_names)
            np.savez(fh, **columns)
    atomic_write_json(out / "store.json", summary)
    return PrepareResult(out, n_records, n_rows, len(all_rejects), skipped_done, all_rejects, warned)


def _digest(text: str) -> int:
    import hashlib

    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little")


def _parse_manifest(manifest: Path, label_names: Sequence[str]) -> dict[str, np.ndarray]:
    """manifest.csv -> the columns training needs, as arrays (strings as fixed-width unicode)."""
    ids, segments, lengths, shards, shard_rows, splits, labels, groups = [], [], [], [], [], [], [], []
    label_cols = [LABEL_PREFIX + n for n in label_names]
    with open(manifest, newline="") as fh:
        for rec in csv.DictReader(fh):
            ids.append(rec["record_id"])
            segments.append(int(rec["segment"]))
            lengths.append(int(rec["length"]))
            shards.append(int(rec["shard"]))
            shard_rows.append(int(rec["shard_row"]))
            splits.append(rec["split"])
            groups.append(rec.get("group") or "")
            labels.append([float(rec[c]) if rec[c] != "" else np.nan for c in label_cols])
    return {
        "record_ids": np.asarray(ids, dtype=str),
        "segments": np.asarray(segments, dtype=np.int32),
        "lengths": np.asarray(lengths, dtype=np.int32),
        "shard_of": np.asarray(shards, dtype=np.int32),
        "shard_row": np.asarray(shard_rows, dtype=np.int64),
        "splits": np.asarray(splits, dtype=str),
        "groups": np.asarray(groups, dtype=str),
        "labels": np.asarray(labels, dtype=np.float32).reshape(len(ids), len(label_cols)),
    }


def _result_from_existing(out: Path, meta: dict[str, Any], notes: list[str] | None = None) -> PrepareResult:
    rejects = [(source, reason) for _, source, reason in RejectsTable.read(out / "rejects.csv").rows]
    return PrepareResult(
        out,
        meta["n_records"],
        meta["n_rows"],
        meta["n_rejected"],
        meta["n_sources"],
        rejects,
        meta.get("n_warned", 0),
        list(notes or []),
    )


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
            raise StoreError(
                f"{self.path}: the store is incomplete; re-run the same `hubert-ecg prepare` command to finish it"
            )
        self.spec = PreprocessSpec.from_dict(self.meta["preprocessing"])
        self.fs = float(self.meta["fs"])
        self.row_samples = int(self.meta["row_samples"])
        self.label_names: list[str] = list(self.meta.get("label_names", []))
        #: class names of categorical label columns kept as class indices (``prepare`` on text labels)
        self.label_classes: dict[str, list[str]] = dict(self.meta.get("label_classes", {}))
        self._read_manifest()
        self._shards: dict[int, np.ndarray] = {}

    def _read_manifest(self) -> None:
        index = self.path / INDEX_FILE
        arrays = (
            dict(np.load(index, allow_pickle=False))
            if index.exists()
            else _parse_manifest(self.path / "manifest.csv", self.label_names)
        )
        self.record_ids = arrays["record_ids"]
        self.segments = arrays["segments"]
        self.lengths = arrays["lengths"]
        self.shard_of = arrays["shard_of"]
        self.shard_row = arrays["shard_row"]
        self.splits = arrays["splits"]
        self.groups = arrays["groups"] if "groups" in arrays else np.full(len(self.record_ids), "", dtype=str)
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
        usable = np.minimum(self.lengths[rows], self.row_samples)
        valid = (starts[:, None] + np.arange(window)[None, :]) < usable[:, None]
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

    def record_digests(self) -> dict[str, str]:
        """Record id -> digest of its stored samples (every segment, valid length only).

        What the leak checks of ``finetune`` and ``evaluate`` compare (the same recording under two ids).
        Computed once per store content and kept in ``STORE/record_digests.json`` with the checksum of the
        manifest it describes, so a run reads the signals again only after the store changed. A store
        that cannot be written to (a shared, read-only copy) is hashed each time instead.
        """
        cache = self.path / "record_digests.json"
        manifest = sha256_file(self.path / "manifest.csv")
        try:
            saved = json.loads(cache.read_text())
            if saved.get("manifest_sha256") == manifest:
                return dict(saved["digests"])
        except (OSError, ValueError, KeyError, AttributeError):
            pass
        digests = self._hash_records()
        try:
            atomic_write_json(cache, {"manifest_sha256": manifest, "digests": digests})
        except OSError:
            pass
        return digests

    def _hash_records(self, chunk: int = 256) -> dict[str, str]:
        import hashlib

        rows = np.lexsort((self.segments, self.record_ids))
        parts: dict[str, Any] = {}
        for start in range(0, len(rows), chunk):
            block = rows[start : start + chunk]
            for r, signal in zip(block, self.signals(block)):
                h = parts.setdefault(str(self.record_ids[r]), hashlib.blake2b(digest_size=16))
                h.update(np.ascontiguousarray(signal[:, : min(int(self.lengths[r]), self.row_samples)]).tobytes())
        return {rid: h.hexdigest() for rid, h in parts.items()}


def open_store(path: str | os.PathLike) -> ECGStore:
    return ECGStore(path)


# ---------------------------------------------------------------------------------------------
# Choosing training and validation rows (fine-tuning and pre-training)
# ---------------------------------------------------------------------------------------------
def check_store_splits(store: ECGStore) -> None:
    """Refuse a store whose split values the rule cannot map, or where a group or record crosses splits."""
    splits = store_splits(store)
    if not splits.any():
        return
    for what, keys in (("group", store.groups), ("record", store.record_ids)):
        if what == "group" and not (keys != "").any():
            continue
        pairs = np.unique(np.stack([keys.astype(str), splits]), axis=1)
        owners, counts = np.unique(pairs[0], return_counts=True)
        crossing = owners[counts > 1]
        if what == "group":
            crossing = crossing[crossing != ""]
        if len(crossing):
            first = str(crossing[0])
            where = sorted(set(pairs[1][pairs[0] == first].tolist()))
            raise StoreError(
                f"{store.path}: {what} {first!r} has rows in {' and '.join(where)} "
                f"({len(crossing)} {what}(s) cross splits); rebuild the store with one split per {what}"
            )


def store_splits(store: ECGStore) -> np.ndarray:
    """The store's split column mapped to train/val/test by :func:`normalise_splits` (refused if unmapped)."""
    cached = getattr(store, "_normalised_splits", None)
    if cached is None:
        raw = store.splits.astype(str)
        values, inverse = np.unique(raw, return_inverse=True)
        mapped = normalise_splits(values.tolist(), f"{store.path}: split column")
        cached = np.asarray(mapped, dtype=str)[inverse.reshape(-1)] if len(values) else raw
        store._normalised_splits = cached  # type: ignore[attr-defined]
    return cached


def train_val_rows(
    store: ECGStore, *, val_split: str = "val", fraction: float = 0.1, seed: int = 0, train_split: str = "train"
) -> tuple[np.ndarray, np.ndarray, str]:
    """(training rows, validation rows, a one-line note of what was chosen) -- never test rows.

    The store's ``train``/``val`` rows when both exist (spellings mapped by :data:`SPLIT_ALIASES`).
    Without validation rows, a seeded ``fraction`` of the *training* records (whole groups when the
    store has a group column, whole records otherwise, so no record's segments straddle) becomes
    validation; test rows are never touched. A store without any split uses all its rows the same
    way. Values the rule cannot map, or a group that crosses splits, are refused.
    """
    if not 0 < fraction < 1:
        raise StoreError(f"validation fraction must be in (0, 1), got {fraction:g}")
    check_store_splits(store)
    splits = store_splits(store)
    train_split = SPLIT_ALIASES.get(train_split.lower(), train_split) if train_split else "train"
    val_split = SPLIT_ALIASES.get(val_split.lower(), val_split) if val_split else ""
    found = sorted(set(splits.tolist()) - {""})
    if found:
        train_rows = np.flatnonzero(splits == train_split)
        if not len(train_rows):
            raise StoreError(f"{store.path}: no {train_split!r} rows to train on (splits found: {', '.join(found)})")
        val_rows = np.flatnonzero(splits == val_split) if val_split else np.array([], dtype=np.int64)
        if len(val_rows):
            return (
                train_rows,
                val_rows,
                (
                    f"training on {len(train_rows)} {train_split!r} rows, validating on "
                    f"{len(val_rows)} {val_split!r} rows"
                ),
            )
        pool, where = (
            train_rows,
            f"the {train_split!r} records (the store has no {val_split or 'val'!r} rows; "
            f"{'test rows untouched' if 'test' in found else 'splits: ' + ', '.join(found)})",
        )
    else:
        pool, where = np.arange(len(store), dtype=np.int64), "all records (the store has no split column)"
    has_groups = bool((store.groups[pool] != "").any())
    units = store.groups[pool].astype(str) if has_groups else store.record_ids[pool].astype(str)
    uniq, inverse = np.unique(units, return_inverse=True)
    if len(uniq) < 2:
        raise StoreError(
            f"{store.path}: {len(uniq)} {'group' if has_groups else 'record'} to split into training "
            "and validation; give the store a 'val' split"
        )
    rng = np.random.default_rng(seed)
    is_val = rng.random(len(uniq)) < fraction
    if not is_val.any():
        is_val[rng.integers(len(uniq))] = True
    if is_val.all():
        is_val[0] = False
    val_mask = is_val[inverse.reshape(-1)]
    kind = "groups" if has_groups else "records"
    note = (
        f"validation: a random {fraction:.0%} of {where}, by {kind[:-1]} (seed {seed}): "
        f"{int(is_val.sum())} {kind}, {int(val_mask.sum())} rows; training: {int((~val_mask).sum())} rows"
    )
    return pool[~val_mask], pool[val_mask], note
