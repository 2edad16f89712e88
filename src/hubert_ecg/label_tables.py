"""Label tables for public ECG datasets: PTB-XL benchmark splits, CinC-2021 SNOMED codes, LUDB.

Every builder writes a CSV that :meth:`hubert_ecg.store.LabelTable.from_csv` reads as it is: an id
column ``record_id`` holding the name the readers give the record (the WFDB record name, e.g.
``00001_lr`` for PTB-XL, ``A0002`` for CinC, ``1`` for LUDB), a few metadata columns, then one 0/1
column per label from a fixed ``label_start_index`` on (the reference's CSV contract).

PTB-XL (``build_ptbxl_tables``) follows the standard benchmark of helme/ecg_ptbxl_benchmarking,
which is also how the HuBERT-ECG reference built its PTB-XL CSVs: every SCP code of a record counts
as present whatever its likelihood (also 0.0), labels are sorted alphabetically, a label is kept when
it occurs in at least ``min_count`` records of the database, records left without a label for the
task are dropped, and the official ``strat_fold`` gives the splits (1-8 train, 9 val, 10 test).
Note: helme's ``min_samples`` is exclusive (``count > min_samples``, default 0), ours is inclusive
(``count >= min_count``, default 1), so the defaults select the same labels.

Output of ``build_ptbxl_tables(root, out)``::

    out/all.csv  train.csv  val.csv  test.csv   columns PTBXL_META_COLUMNS, then the labels
    out/labels.json                             labels, label_start_index, counts, dropped records
    out/manifest.txt                            absolute .hea paths of the records in all.csv,
                                                one per line, for ``hubert-ecg prepare``

and then, for example::

    hubert-ecg prepare out/manifest.txt --labels out/all.csv --label-start-index 8 \
        --id-column record_id --split-column split --out STORE --allow-absolute-paths

(the manifest lists files outside its own folder, which ``prepare`` refuses unless allowed)
"""

from __future__ import annotations

import ast
import csv
import logging
import math
import os
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .atomic import atomic_path, atomic_write_json

__all__ = [
    "DatasetTableError",
    "LabelCSV",
    "PTBXL_TASKS",
    "PTBXL_META_COLUMNS",
    "PTBXL_LABEL_START_INDEX",
    "PTBXL_SPLIT_OF_FOLD",
    "ScpStatement",
    "CINC_META_COLUMNS",
    "LUDB_META_COLUMNS",
    "LUDB_LABELS",
    "build_ptbxl_tables",
    "ptbxl_labels_for",
    "cinc_labels_table",
    "cinc_class_map",
    "CINC2021_SCORED",
    "CINC2020_SCORED",
    "ludb_labels_table",
    "reference_split_table",
]

log = logging.getLogger(__name__)


class DatasetTableError(ValueError):
    """A dataset file that cannot be turned into a label table; the message names the file/row."""


@dataclass
class LabelCSV:
    """What a label-table builder wrote.

    Attributes:
        path: the CSV written.
        labels: label column names, in column order (L names).
        label_start_index: index of the first label column (pass as ``--label-start-index``).
        n_records: data rows written.
        dropped: records left out, by reason (e.g. ``{"no_label": 3}``).
        positives: label -> number of rows with a 1.
    """

    path: Path
    labels: list[str]
    label_start_index: int
    n_records: int
    dropped: dict[str, int] = field(default_factory=dict)
    positives: dict[str, int] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------
# Small CSV helpers (the csv module, not pandas: pandas is not a dependency of the package)
# ---------------------------------------------------------------------------------------------
def _read_table(path: Path, required: Sequence[str]) -> tuple[list[str], list[dict[str, str]]]:
    """Header and rows of a comma-separated file, checking that ``required`` columns exist."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            rows = list(reader)
            header = list(reader.fieldnames or [])
    except FileNotFoundError:
        raise DatasetTableError(f"{path}: file not found") from None
    except OSError as err:
        raise DatasetTableError(f"{path}: cannot read ({err.strerror or err})") from None
    except csv.Error as err:
        raise DatasetTableError(f"{path}: not a readable CSV ({err})") from None
    if not header:
        raise DatasetTableError(f"{path}: the file is empty")
    missing = [c for c in required if c not in header]
    if missing:
        raise DatasetTableError(f"{path}: missing column(s) {', '.join(missing)}")
    return header, rows


@dataclass
class _LabelledRecord:
    """One record of a label table being built: its metadata cells by column, and its label set."""

    meta: dict[str, object]
    labels: set[str]

    def row(self, meta_columns: Sequence[str], labels: Sequence[str]) -> list[object]:
        """The output row: the metadata cells, then one 0/1 cell per label."""
        return [self.meta[c] for c in meta_columns] + [int(lab in self.labels) for lab in labels]


def _write_table(path: Path, columns: Sequence[str], rows: Iterable[Sequence[object]]) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh, lineterminator="\n")
            writer.writerow(columns)
            writer.writerows(rows)


def _clean_number(text: str) -> str:
    """``"15709.0"`` -> ``"15709"``; other text unchanged. Keeps ids readable in the output."""
    text = (text or "").strip()
    try:
        value = float(text)
    except ValueError:
        return text
    if math.isfinite(value) and value == int(value):
        return str(int(value))
    return text


def _flag(text: str | None) -> bool:
    """PTB-XL's statement flags are ``1.0`` or blank (NaN)."""
    text = (text or "").strip()
    if not text or text.lower() == "nan":
        return False
    try:
        return float(text) == 1.0
    except ValueError:
        return False


def _blank(text: str | None) -> bool:
    return not (text or "").strip() or (text or "").strip().lower() == "nan"


# ---------------------------------------------------------------------------------------------
# PTB-XL
# ---------------------------------------------------------------------------------------------
PTBXL_TASKS: tuple[str, ...] = ("all", "diag", "subdiag", "superdiag", "form", "rhythm")
#: Columns before the labels in every PTB-XL table; labels start at ``len(PTBXL_META_COLUMNS)``.
PTBXL_META_COLUMNS: tuple[str, ...] = ("record_id", "ecg_id", "path", "patient_id", "age", "sex", "strat_fold", "split")
PTBXL_LABEL_START_INDEX: int = len(PTBXL_META_COLUMNS)
#: The official PTB-XL recommendation (and the reference's split files): folds 1-8 / 9 / 10.
PTBXL_SPLIT_OF_FOLD: dict[int, str] = {**{f: "train" for f in range(1, 9)}, 9: "val", 10: "test"}
_PTBXL_DB_COLUMNS = ("ecg_id", "patient_id", "scp_codes", "strat_fold", "filename_lr", "filename_hr")
_PTBXL_STATEMENT_COLUMNS = ("diagnostic", "form", "rhythm", "diagnostic_class", "diagnostic_subclass")


@dataclass(frozen=True)
class ScpStatement:
    """One row of scp_statements.csv: which task families a code belongs to, and its classes."""

    diagnostic: bool
    form: bool
    rhythm: bool
    diagnostic_class: str | None
    diagnostic_subclass: str | None


def _read_scp_statements(path: Path) -> dict[str, ScpStatement]:
    """``scp_statements.csv``: first column = SCP code (its header is blank in PTB-XL)."""
    header, rows = _read_table(path, _PTBXL_STATEMENT_COLUMNS)
    code_column = header[0]
    statements: dict[str, ScpStatement] = {}
    for line, row in enumerate(rows, start=2):
        code = (row.get(code_column) or "").strip()
        if not code:
            raise DatasetTableError(f"{path}, row {line}: empty SCP code in the first column")
        statements[code] = ScpStatement(
            diagnostic=_flag(row.get("diagnostic")),
            form=_flag(row.get("form")),
            rhythm=_flag(row.get("rhythm")),
            diagnostic_class=None if _blank(row.get("diagnostic_class")) else row["diagnostic_class"].strip(),
            diagnostic_subclass=None if _blank(row.get("diagnostic_subclass")) else row["diagnostic_subclass"].strip(),
        )
    return statements


def _parse_scp_codes(text: str, path: Path, line: int) -> dict[str, float]:
    """``"{'NORM': 100.0, 'SR': 0.0}"`` -> dict. ``ast.literal_eval`` only: the file is data, never code."""
    try:
        value = ast.literal_eval((text or "").strip() or "{}")
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        raise DatasetTableError(f"{path}, row {line}: scp_codes is not a dict literal ({text[:60]!r})") from None
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise DatasetTableError(f"{path}, row {line}: scp_codes is not a dict of SCP codes ({text[:60]!r})")
    return value


#: How each PTB-XL label subset turns one SCP code into a label: the label, or None to skip the code.
#: ``all`` keeps every code, even one missing from ``scp_statements.csv`` (its statement is None).
_SUBSET_LABEL: dict[str, Callable[[str, ScpStatement | None], str | None]] = {
    "all": lambda code, st: code,
    "diag": lambda code, st: code if st is not None and st.diagnostic else None,
    "form": lambda code, st: code if st is not None and st.form else None,
    "rhythm": lambda code, st: code if st is not None and st.rhythm else None,
    "subdiag": lambda code, st: (st.diagnostic_subclass or None) if st is not None and st.diagnostic else None,
    "superdiag": lambda code, st: (st.diagnostic_class or None) if st is not None and st.diagnostic else None,
}


def ptbxl_labels_for(scp_codes: dict[str, float], task: str, statements: dict[str, ScpStatement]) -> set[str]:
    """The task's labels of one record: every code counts whatever its likelihood (helme's rule).

    ``all`` keeps every code (also codes missing from ``scp_statements.csv``); ``diag``, ``form``
    and ``rhythm`` keep codes flagged 1.0 in that column; ``subdiag``/``superdiag`` map diagnostic
    codes to their ``diagnostic_subclass``/``diagnostic_class`` and skip codes without one.
    """
    # ``task`` here is a PTB-XL label subset (PTBXL_TASKS), not a fine-tuning task.
    rule = _SUBSET_LABEL.get(task)
    if rule is None:
        return set()
    labels: set[str] = set()
    for code in scp_codes:
        label = rule(code, statements.get(code))
        if label is not None:
            labels.add(label)
    return labels


def build_ptbxl_tables(
    root: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    task: str = "all",
    sampling: str = "100",
    min_count: int = 1,
    check_files: bool = True,
    database_csv: str | os.PathLike | None = None,
    statements_csv: str | os.PathLike | None = None,
) -> dict[str, Path]:
    """Write the PTB-XL benchmark tables of ``task`` from a local PTB-XL copy.

    Args:
        root: the PTB-XL folder (``ptbxl_database.csv``, ``scp_statements.csv``, ``records100/``
            and/or ``records500/``). Record paths in the tables are relative to it.
        out_dir: where to write ``all.csv``, ``train.csv``, ``val.csv``, ``test.csv``,
            ``labels.json`` and ``manifest.txt`` (created if needed).
        task: ``all`` (71 labels on the full database), ``diag`` (44), ``subdiag`` (23),
            ``superdiag`` (5), ``form`` (19) or ``rhythm`` (12).
        sampling: ``"100"`` (``filename_lr``, records100/) or ``"500"`` (``filename_hr``, records500/).
        min_count: keep a label that occurs in at least this many records of the database.
        check_files: drop (and count) records whose ``.hea`` is not under ``root``; off, the
            tables list every record of the database whether downloaded or not.
        database_csv, statements_csv: other locations of the two CSVs (default: under ``root``).

    Returns:
        ``{"all", "train", "val", "test", "labels", "manifest"}`` -> the paths written. The counts
        (records per split, positives per label, records dropped without a label for the task or
        without a file) are in ``labels.json`` and logged.

    Raises:
        DatasetTableError: unknown task/sampling, a missing file or column, a ``scp_codes`` cell that
            is not a dict literal, a ``strat_fold`` outside 1-10, or no record left.
    """
    subset = task  # a PTB-XL label subset, not a fine-tuning task (the public name stays ``task``)
    sampling = _check_ptbxl_options(subset, sampling, min_count)
    root = Path(root).resolve()
    out_dir = Path(out_dir)
    db_path = Path(database_csv) if database_csv else root / "ptbxl_database.csv"
    st_path = Path(statements_csv) if statements_csv else root / "scp_statements.csv"
    statements = _read_scp_statements(st_path)
    _, db_rows = _read_table(db_path, _PTBXL_DB_COLUMNS)
    file_column = "filename_lr" if sampling == "100" else "filename_hr"
    records = _ptbxl_records(db_path, db_rows, file_column, subset, statements)
    selection = _PtbxlSelection.choose(records, min_count, root if check_files else None)
    if not selection.kept:
        where = f"{root / ('records' + sampling)}" if check_files else str(db_path)
        raise DatasetTableError(
            f"{where}: no PTB-XL record left for task {subset!r} "
            f"({selection.dropped_no_label} without a label, {selection.dropped_missing} without a .hea file)"
        )
    paths = _write_ptbxl_tables(out_dir, root, selection)
    paths["labels"] = out_dir / "labels.json"
    atomic_write_json(paths["labels"], _ptbxl_summary(subset, sampling, min_count, len(records), selection))
    split_counts = Counter(str(r.meta["split"]) for r in selection.kept)
    log.info(
        "PTB-XL %s: %d records (%s), %d labels; dropped %d without a %s label and %d without a file",
        subset,
        len(selection.kept),
        ", ".join(f"{s} {split_counts.get(s, 0)}" for s in ("train", "val", "test")),
        len(selection.labels),
        selection.dropped_no_label,
        subset,
        selection.dropped_missing,
    )
    return paths


def _check_ptbxl_options(subset: str, sampling: str, min_count: int) -> str:
    """``sampling`` as ``"100"``/``"500"``; an unknown subset or sampling or a ``min_count`` below 1 raises."""
    if subset not in PTBXL_TASKS:
        raise DatasetTableError(f"unknown PTB-XL task {subset!r} (choose from {', '.join(PTBXL_TASKS)})")
    sampling = str(sampling)
    if sampling not in ("100", "500"):
        raise DatasetTableError(f"unknown PTB-XL sampling {sampling!r} (choose 100 or 500)")
    if int(min_count) < 1:
        raise DatasetTableError(f"min_count must be >= 1, got {min_count}")
    return sampling


def _ptbxl_records(
    db_path: Path,
    db_rows: list[dict[str, str]],
    file_column: str,
    subset: str,
    statements: dict[str, ScpStatement],
) -> list[_LabelledRecord]:
    """Every row of ``ptbxl_database.csv`` with its metadata cells and its labels of ``subset``."""
    records: list[_LabelledRecord] = []
    seen_ids: dict[str, int] = {}
    for line, row in enumerate(db_rows, start=2):
        fold_text = _clean_number(row["strat_fold"])
        if not fold_text.isdigit() or int(fold_text) not in PTBXL_SPLIT_OF_FOLD:
            raise DatasetTableError(f"{db_path}, row {line}: strat_fold must be 1-10, got {row['strat_fold']!r}")
        rel = (row[file_column] or "").strip().replace("\\", "/")
        if not rel:
            raise DatasetTableError(f"{db_path}, row {line}: empty {file_column}")
        record_id = Path(rel).name
        if record_id in seen_ids:
            raise DatasetTableError(
                f"{db_path}, row {line}: record {record_id} already listed in row {seen_ids[record_id]}"
            )
        seen_ids[record_id] = line
        codes = _parse_scp_codes(row["scp_codes"], db_path, line)
        meta: dict[str, object] = {
            "record_id": record_id,
            "ecg_id": _clean_number(row["ecg_id"]),
            "path": rel,
            "patient_id": _clean_number(row["patient_id"]),
            "age": _clean_number(row.get("age", "")),
            "sex": _clean_number(row.get("sex", "")),
            "strat_fold": int(fold_text),
            "split": PTBXL_SPLIT_OF_FOLD[int(fold_text)],
        }
        records.append(_LabelledRecord(meta, ptbxl_labels_for(codes, subset, statements)))
    return records


@dataclass
class _PtbxlSelection:
    """The labels kept (by count over the whole database) and the records that still have one."""

    labels: list[str]
    kept: list[_LabelledRecord]
    dropped_no_label: int
    dropped_missing: int

    @classmethod
    def choose(cls, records: list[_LabelledRecord], min_count: int, root: Path | None) -> _PtbxlSelection:
        """``root`` None: keep records whether their ``.hea`` is downloaded or not."""
        # Counted over the whole database, so the label set does not depend on which files a user has.
        counts = Counter(label for rec in records for label in rec.labels)
        labels = sorted(label for label, n in counts.items() if n >= min_count)
        kept_set = set(labels)
        dropped_no_label = dropped_missing = 0
        kept: list[_LabelledRecord] = []
        for rec in records:
            rec.labels = rec.labels & kept_set
            if not rec.labels:
                dropped_no_label += 1
                continue
            if root is not None and not (root / f"{rec.meta['path']}.hea").is_file():
                dropped_missing += 1
                continue
            kept.append(rec)
        return cls(labels, kept, dropped_no_label, dropped_missing)


def _write_ptbxl_tables(out_dir: Path, root: Path, selection: _PtbxlSelection) -> dict[str, Path]:
    """``all``/``train``/``val``/``test`` CSVs and the manifest of ``.hea`` paths; returns their paths."""
    columns = list(PTBXL_META_COLUMNS) + selection.labels

    def table_rows(records: Iterable[_LabelledRecord]) -> Iterable[list[object]]:
        for rec in records:
            yield rec.row(PTBXL_META_COLUMNS, selection.labels)

    kept = selection.kept
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {name: out_dir / f"{name}.csv" for name in ("all", "train", "val", "test")}
    _write_table(paths["all"], columns, table_rows(kept))
    for split in ("train", "val", "test"):
        _write_table(paths[split], columns, table_rows(r for r in kept if r.meta["split"] == split))
    paths["manifest"] = out_dir / "manifest.txt"
    with atomic_path(paths["manifest"]) as tmp:
        tmp.write_text("".join(f"{root / str(rec.meta['path'])}.hea\n" for rec in kept), encoding="utf-8")
    return paths


def _ptbxl_summary(
    subset: str, sampling: str, min_count: int, n_database: int, selection: _PtbxlSelection
) -> dict[str, object]:
    """The content of ``labels.json``."""
    kept, labels = selection.kept, selection.labels
    split_counts = Counter(str(r.meta["split"]) for r in kept)
    positives = {
        lab: {s: sum(1 for r in kept if r.meta["split"] == s and lab in r.labels) for s in ("train", "val", "test")}
        for lab in labels
    }
    return {
        "dataset": "ptbxl",
        "task": subset,
        "sampling_hz": int(sampling),
        "min_count": int(min_count),
        "labels": labels,
        "label_start_index": PTBXL_LABEL_START_INDEX,
        "id_column": "record_id",
        "split_column": "split",
        "columns": list(PTBXL_META_COLUMNS) + labels,
        "folds": {"train": list(range(1, 9)), "val": [9], "test": [10]},
        "records_in_database": n_database,
        "records": len(kept),
        "records_per_split": {s: split_counts.get(s, 0) for s in ("train", "val", "test")},
        "dropped_no_label": selection.dropped_no_label,
        "dropped_missing_file": selection.dropped_missing,
        "positives": positives,
    }


# ---------------------------------------------------------------------------------------------
# PhysioNet/CinC 2021: SNOMED CT codes in the '#Dx:' header line
# ---------------------------------------------------------------------------------------------
CINC_META_COLUMNS: tuple[str, ...] = ("record_id", "path", "age", "sex")


# The PhysioNet/CinC Challenge scored classes (evaluation-2021 ``weights.csv`` / evaluation-2020
# ``weights.csv``): abbreviation -> (SNOMED CT codes scored as one class, full name). Codes in one
# entry are the challenge's equivalence classes (e.g. RBBB = 713427006 complete RBBB | 59118001 RBBB);
# a record carrying either code is positive for that class. Order = the weights.csv column order.
CINC2021_SCORED: dict[str, tuple[tuple[str, ...], str]] = {
    "AF": (("164889003",), "atrial fibrillation"),
    "AFL": (("164890007",), "atrial flutter"),
    "BBB": (("6374002",), "bundle branch block"),
    "Brady": (("426627000",), "bradycardia"),
    "LBBB": (("733534002", "164909002"), "complete left bundle branch block | left bundle branch block"),
    "RBBB": (("713427006", "59118001"), "complete right bundle branch block | right bundle branch block"),
    "IAVB": (("270492004",), "1st degree AV block"),
    "IRBBB": (("713426002",), "incomplete right bundle branch block"),
    "LAD": (("39732003",), "left axis deviation"),
    "LAnFB": (("445118002",), "left anterior fascicular block"),
    "LPR": (("164947007",), "prolonged PR interval"),
    "LQRSV": (("251146004",), "low QRS voltages"),
    "LQT": (("111975006",), "prolonged QT interval"),
    "NSIVCB": (("698252002",), "nonspecific intraventricular conduction disorder"),
    "NSR": (("426783006",), "sinus rhythm"),
    "PAC": (("284470004", "63593006"), "premature atrial contraction | supraventricular premature beats"),
    "PR": (("10370003",), "pacing rhythm"),
    "PRWP": (("365413008",), "poor R wave progression"),
    "PVC": (("427172004", "17338001"), "premature ventricular contractions | ventricular premature beats"),
    "QAb": (("164917005",), "Q wave abnormal"),
    "RAD": (("47665007",), "right axis deviation"),
    "SA": (("427393009",), "sinus arrhythmia"),
    "SB": (("426177001",), "sinus bradycardia"),
    "STach": (("427084000",), "sinus tachycardia"),
    "TAb": (("164934002",), "T wave abnormal"),
    "TInv": (("59931005",), "T wave inversion"),
}
#: 2020: 24 classes (27 codes); no BBB, no PRWP, and LBBB is 164909002 alone.
CINC2020_SCORED: dict[str, tuple[tuple[str, ...], str]] = {
    **{k: v for k, v in CINC2021_SCORED.items() if k not in ("BBB", "PRWP", "LBBB")},
    "LBBB": (("164909002",), "left bundle branch block"),
}
CINC_CLASS_SETS = ("scored2021", "scored2020", "all")


def cinc_class_map(classes: str) -> dict[str, tuple[tuple[str, ...], str]]:
    """Abbreviation -> (codes, name) of ``classes`` (``scored2021`` or ``scored2020``)."""
    if classes == "scored2021":
        return dict(CINC2021_SCORED)
    if classes == "scored2020":
        return dict(CINC2020_SCORED)
    raise DatasetTableError(f"classes must be one of {', '.join(CINC_CLASS_SETS)}, got {classes!r}")


def _header_comments(path: Path) -> list[str]:
    """Comment lines of a WFDB header without reading the signal (fast on thousands of records)."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as err:
        raise DatasetTableError(f"{path}: cannot read ({err.strerror or err})") from None
    return [line.strip()[1:].strip() for line in text.splitlines() if line.strip().startswith("#")]


def _code_sort_key(code: str) -> tuple[int, int, str]:
    return (0, int(code), code) if code.isdigit() else (1, 0, code)


def cinc_labels_table(
    records_dir: str | os.PathLike, out_csv: str | os.PathLike, *, min_count: int = 1, classes: str = "scored2021"
) -> LabelCSV:
    """Multi-hot label CSV from the ``#Dx:`` SNOMED CT codes of CinC 2020/2021 WFDB headers.

    Every ``.hea`` under ``records_dir`` (recursively) is one record; its ``record_id`` is the
    header's file stem, as ``hubert_ecg.io.discover_sources`` names it.

    ``classes="scored2021"`` (default) / ``"scored2020"``: the challenge's scored classes
    (:data:`CINC2021_SCORED`: 26 classes from 30 codes; 2020: 24 from 27), equivalent codes merged,
    columns named by abbreviation (``AF``, ``RBBB``, ...) in the challenge's order, all kept. Columns:
    ``CINC_META_COLUMNS`` plus ``dx`` (the record's raw codes, ``;``-separated), labels from index 5.
    A record whose codes are all unscored is kept with every class 0, as the challenge scores it;
    a record without a ``#Dx`` line is dropped (``dropped["no_label"]``).

    ``classes="all"``: the raw codes, one 0/1 column per SNOMED code (numerically sorted) occurring in
    at least ``min_count`` records; labels start at index 4. Records without any kept code (no
    ``#Dx`` line, or only rare codes) are dropped and counted in ``dropped["no_label"]``.

    Raises:
        DatasetTableError: no header found, or two headers with the same record name.
    """
    from .io.wfdb_reader import parse_header_comments

    if classes not in CINC_CLASS_SETS:
        raise DatasetTableError(f"classes must be one of {', '.join(CINC_CLASS_SETS)}, got {classes!r}")
    base = Path(records_dir)
    headers = sorted(base.rglob("*.hea")) if base.is_dir() else []
    if not headers:
        raise DatasetTableError(f"{base}: no WFDB .hea headers found")
    rows: list[_LabelledRecord] = []
    seen: dict[str, Path] = {}
    for hea in headers:
        if hea.stem in seen:
            raise DatasetTableError(f"{hea}: record name {hea.stem} also used by {seen[hea.stem]}")
        seen[hea.stem] = hea
        meta = parse_header_comments(_header_comments(hea))
        age = meta.get("age")
        rows.append(
            _LabelledRecord(
                {
                    "record_id": hea.stem,
                    "path": hea.relative_to(base).with_suffix("").as_posix(),
                    "age": "" if age is None else _clean_number(str(age)),
                    "sex": meta.get("sex") or "",
                },
                set(meta.get("labels") or []),
            )
        )
    if classes == "all":
        return _write_multi_hot(Path(out_csv), rows, CINC_META_COLUMNS, min_count)
    scored = cinc_class_map(classes)
    code_to_class = {code: abbr for abbr, (codes, _) in scored.items() for code in codes}
    kept = []
    for r in rows:
        codes = r.labels
        if not codes:
            continue
        r.meta["dx"] = ";".join(sorted(codes, key=_code_sort_key))
        r.labels = {code_to_class[c] for c in codes if c in code_to_class}
        kept.append(r)
    if not kept:
        raise DatasetTableError(f"{base}: no header has a #Dx line")
    labels = list(scored)
    meta_columns = [*CINC_META_COLUMNS, "dx"]
    out_path = Path(out_csv)
    _write_table(out_path, meta_columns + labels, (r.row(meta_columns, labels) for r in kept))
    return LabelCSV(
        path=out_path,
        labels=labels,
        label_start_index=len(meta_columns),
        n_records=len(kept),
        dropped={"no_label": len(rows) - len(kept)},
        positives={lab: sum(1 for r in kept if lab in r.labels) for lab in labels},
    )


def _write_multi_hot(
    out_csv: Path, rows: list[_LabelledRecord], meta_columns: Sequence[str], min_count: int
) -> LabelCSV:
    counts = Counter(code for r in rows for code in r.labels)
    labels = sorted((c for c, n in counts.items() if n >= min_count), key=_code_sort_key)
    kept_set = set(labels)
    kept = [r for r in rows if r.labels & kept_set]
    if not kept:
        raise DatasetTableError(f"{out_csv}: no record has a label occurring at least {min_count} times")
    _write_table(out_csv, list(meta_columns) + labels, (r.row(meta_columns, labels) for r in kept))
    return LabelCSV(
        path=out_csv,
        labels=labels,
        label_start_index=len(meta_columns),
        n_records=len(kept),
        dropped={"no_label": len(rows) - len(kept)},
        positives={lab: sum(1 for r in kept if lab in r.labels) for lab in labels},
    )


# ---------------------------------------------------------------------------------------------
# LUDB: binary labels from ludb.csv (one multi-line cell per diagnosis group)
# ---------------------------------------------------------------------------------------------
LUDB_META_COLUMNS: tuple[str, ...] = ("record_id", "sex", "age")
_SINUS_RHYTHMS = frozenset(
    {"Sinus rhythm", "Sinus bradycardia", "Sinus tachycardia", "Sinus arrhythmia", "Irregular sinus rhythm"}
)

#: label -> (ludb.csv column, rule, what it means). Rules: ``only:X`` the cell lists exactly X and
#: nothing else; ``has:X`` the cell lists X; ``any_of:X|Y`` lists X or Y; ``nonempty`` lists anything.
LUDB_LABELS: dict[str, tuple[str, str, str]] = {
    "sinus_rhythm": (
        "Rhythms",
        "only:Sinus rhythm",
        "normal sinus rhythm and no other rhythm statement (0 = brady/tachycardia, sinus "
        "arrhythmia, AF, flutter, wandering pacemaker ...)",
    ),
    "sinus_origin": (
        "Rhythms",
        "any_of:" + "|".join(sorted(_SINUS_RHYTHMS)),
        "any sinus rhythm incl. brady/tachycardia and sinus arrhythmia (0 = AF, flutter)",
    ),
    "atrial_fibrillation": ("Rhythms", "has:Atrial fibrillation", "atrial fibrillation"),
    "sinus_bradycardia": ("Rhythms", "has:Sinus bradycardia", "sinus bradycardia"),
    "left_axis_deviation": (
        "Electric axis of the heart",
        "has:Electric axis of the heart: left axis deviation",
        "left axis deviation (records without an axis statement count as 0)",
    ),
    "incomplete_rbbb": (
        "Conduction abnormalities",
        "has:Incomplete right bundle branch block",
        "incomplete right bundle branch block",
    ),
    "left_anterior_hemiblock": ("Conduction abnormalities", "has:Left anterior hemiblock", "left anterior hemiblock"),
    "av_block_1": ("Conduction abnormalities", "has:I degree av block", "first-degree AV block"),
    "lvh": ("Hypertrophies", "has:Left ventricular hypertrophy", "left ventricular hypertrophy"),
    "left_atrial_hypertrophy": ("Hypertrophies", "has:Left atrial hypertrophy", "left atrial hypertrophy"),
    "ischemia": ("Ischemia", "nonempty", "any ischaemia, scar or STEMI statement"),
    "repolarization_abnormality": (
        "Non-specific repolarization abnormalities",
        "nonempty",
        "any non-specific repolarisation abnormality",
    ),
    "extrasystoles": ("Extrasystolies", "nonempty", "any atrial or ventricular extrasystole"),
    "pacemaker": ("Cardiac pacing", "nonempty", "any pacing statement"),
}


def _cell_items(text: str | None) -> list[str]:
    """A ludb.csv cell holds one statement per line."""
    return [item.strip() for item in (text or "").splitlines() if item.strip()]


def _ludb_rule(items: list[str], rule: str) -> bool:
    kind, _, arg = rule.partition(":")
    if kind == "only":
        return items == [arg]
    if kind == "has":
        return arg in items
    if kind == "any_of":
        return any(item in arg.split("|") for item in items)
    if kind == "nonempty":
        return bool(items)
    raise AssertionError(f"unknown LUDB rule {rule!r}")  # a bug in LUDB_LABELS, not in the data


def ludb_labels_table(ludb_dir: str | os.PathLike, out_csv: str | os.PathLike) -> LabelCSV:
    """Binary label columns (``LUDB_LABELS``) from LUDB's ``ludb.csv``.

    ``ludb_dir`` is the LUDB folder (holding ``ludb.csv``) or the CSV itself. ``record_id`` is the
    LUDB ``ID`` (1..200), which is the WFDB record name ``data/<ID>.hea`` the readers give. Columns:
    ``record_id, sex, age`` (age as written, e.g. ``>89``), then the labels from index 3 (the
    reference's default ``--label_start_index``). All 200 records are kept (no record is unlabelled).

    Raises:
        DatasetTableError: ``ludb.csv`` missing, a column missing, or an ID that is not a number.
    """
    src = Path(ludb_dir)
    csv_path = src / "ludb.csv" if src.is_dir() else src
    needed = ["ID", "Sex", "Age"] + sorted({col for col, _, _ in LUDB_LABELS.values()})
    _, rows = _read_table(csv_path, needed)
    out_rows: list[list[object]] = []
    label_rows: list[list[int]] = []
    seen: set[str] = set()
    for line, row in enumerate(rows, start=2):
        record_id = _clean_number(row["ID"])
        if not record_id.isdigit():
            raise DatasetTableError(f"{csv_path}, row {line}: ID is not a record number ({row['ID']!r})")
        if record_id in seen:
            raise DatasetTableError(f"{csv_path}, row {line}: duplicate ID {record_id}")
        seen.add(record_id)
        values = [int(_ludb_rule(_cell_items(row[col]), rule)) for col, rule, _ in LUDB_LABELS.values()]
        label_rows.append(values)
        out_rows.append([record_id, (row["Sex"] or "").strip(), (row["Age"] or "").strip(), *values])
    labels = list(LUDB_LABELS)
    out_csv = Path(out_csv)
    _write_table(out_csv, list(LUDB_META_COLUMNS) + labels, out_rows)
    return LabelCSV(
        path=out_csv,
        labels=labels,
        label_start_index=len(LUDB_META_COLUMNS),
        n_records=len(out_rows),
        dropped={},
        positives={lab: sum(values[j] for values in label_rows) for j, lab in enumerate(labels)},
    )


# ---------------------------------------------------------------------------------------------
# The reference's split CSVs (reproducibility/, reference doc §9.1) -> one table with a split column
# ---------------------------------------------------------------------------------------------
_SPLIT_PRIORITY = ("test", "val", "train")


def reference_split_table(
    splits: Mapping[str, str | os.PathLike],
    out_csv: str | os.PathLike,
    *,
    label_start_index: int = 3,
    id_column: str = "filename",
) -> LabelCSV:
    """Merge the reference's per-split CSVs (``train0.csv``, ``val0.csv``, ``test.csv`` ...) into one.

    The reference passes one CSV per split to ``finetune.py``/``test.py``; ``hubert-ecg prepare``
    takes one labels table with a split column. The output has ``record_id`` (the file name without
    ``.hea.npy``-style extensions, as ``hubert_ecg.store.record_key`` matches records) and ``split``
    in front of the original columns, so its labels start at ``label_start_index + 2``.

    Args:
        splits: split name (``train``, ``val``, ``test``) -> that split's CSV. A dataset without
            a published validation file (PTB, CPSC-Extra, SaMi-Trop) simply has no ``val`` entry.
        out_csv: the merged table.
        label_start_index: first label column of the input CSVs (the reference's ``--label_start_index``).
        id_column: the column naming each record's file.

    A record listed in more than one split (Chapman, Hefei: one each) is kept once, in the first of
    test, val, train, so the published test sets stay whole; ``dropped["duplicate"]`` counts the rest.

    Raises:
        DatasetTableError: unknown split name, a missing file, different headers, or no id column.
    """
    unknown = sorted(set(splits) - set(_SPLIT_PRIORITY))
    if unknown or not splits:
        raise DatasetTableError(f"split names must be train, val or test, got {', '.join(unknown) or 'none'}")
    header, first_path, rows_by_split = _read_split_csvs(splits, id_column)
    if not 0 <= label_start_index < len(header) or label_start_index <= header.index(id_column):
        raise DatasetTableError(
            f"{first_path}: label_start_index {label_start_index} does not point after "
            f"{id_column!r} inside the {len(header)} columns"
        )
    out_rows, duplicates = _merge_splits(rows_by_split, header, id_column)
    labels = header[label_start_index:]
    out_csv = Path(out_csv)
    _write_table(out_csv, ["record_id", "split"] + header, out_rows)
    start = label_start_index + 2
    return LabelCSV(
        path=out_csv,
        labels=labels,
        label_start_index=start,
        n_records=len(out_rows),
        dropped={"duplicate": duplicates},
        positives={lab: sum(_positive(r[start + j]) for r in out_rows) for j, lab in enumerate(labels)},
    )


def _read_split_csvs(
    splits: Mapping[str, str | os.PathLike], id_column: str
) -> tuple[list[str], Path, dict[str, list[dict[str, str]]]]:
    """``(header, first file read, rows per split)``, read test first; every file must share the header."""
    header: list[str] | None = None
    first_path: Path | None = None
    rows_by_split: dict[str, list[dict[str, str]]] = {}
    for split in _SPLIT_PRIORITY:
        if split not in splits:
            continue
        path = Path(splits[split])
        this_header, rows = _read_table(path, [id_column])
        if header is None:
            header, first_path = this_header, path
        elif this_header != header:
            raise DatasetTableError(f"{path}: columns differ from {first_path}")
        rows_by_split[split] = rows
    assert header is not None and first_path is not None
    return header, first_path, rows_by_split


def _merge_splits(
    rows_by_split: dict[str, list[dict[str, str]]], header: list[str], id_column: str
) -> tuple[list[list[str]], int]:
    """Output rows (``record_id``, ``split``, then the input cells) and how many duplicates were left out."""
    from .store import record_key

    seen: set[str] = set()
    duplicates = 0
    out_rows: list[list[str]] = []
    for split, rows in rows_by_split.items():  # test first: a duplicated record stays in test
        for row in rows:
            record_id = record_key(row[id_column])
            if record_id in seen:
                duplicates += 1
                continue
            seen.add(record_id)
            out_rows.append([record_id, split] + [row[c] for c in header])
    return out_rows, duplicates


def _positive(cell: str) -> bool:
    try:
        return float(cell) > 0
    except ValueError:
        return False
