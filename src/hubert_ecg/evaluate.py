"""Evaluation of a fine-tuned model on a store split: windows/TTA, metrics with CIs, plots, report.

Outputs in ``OUT/``: ``probabilities.csv`` (one row per record, keyed by record id),
``metrics.json`` (point estimates, bootstrap intervals, settings) and ``metrics_per_label.csv``
(both written by :func:`hubert_ecg.report.write_report`),
PNG plots, and ``report.html`` / ``report.md``.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .atomic import atomic_path, atomic_write_json, check_writable
from .loader import StoreWindows, evaluation_windows, window_batches
from .model import HubertECG
from .progress import progress
from .store import ECGStore
from .tasks import get_task, probabilities  # noqa: F401  (probabilities: moved to tasks)


def _scorable(task: str, labels: np.ndarray, *, warn: bool) -> np.ndarray:
    """(N,) records that enter the metrics, given their label rows (NaN = blank = unknown).

    Multi-label and regression keep every record: a blank label leaves that record out of that
    label's metrics only (see :mod:`hubert_ecg.metrics`). Binary and multi-class read one label column,
    so a record whose label is blank cannot be scored and is left out.
    """
    blank = ~np.isfinite(labels.reshape(len(labels), -1))
    if get_task(task).first_column_only:
        keep = ~blank[:, 0]
        if warn and not keep.all():
            warnings.warn(f"{int((~keep).sum())} records with a blank label were left out of the metrics", stacklevel=3)
        return keep
    if warn and blank.any():
        warnings.warn(
            f"{int(blank.sum())} blank label values ({int(blank.any(axis=1).sum())} records) were left "
            "out of their own label's metrics only",
            stacklevel=3,
        )
    return np.ones(len(labels), dtype=bool)


def targets_for_metrics(task: str, labels: np.ndarray) -> np.ndarray:
    """Store label columns (N, L) -> the y_true shape of :func:`hubert_ecg.metrics.compute_metrics`."""
    return get_task(task).metric_targets(labels)


@dataclass
class Scores:
    record_ids: np.ndarray  # (N,)
    probabilities: np.ndarray  # (N, L) or (N,)
    labels: np.ndarray | None  # (N, L) store label columns of each record
    loss: float | None
    n_windows: int


@torch.no_grad()
def score_rows(
    model: HubertECG,
    store: ECGStore,
    rows: np.ndarray,
    *,
    task: str,
    device: torch.device | str = "cpu",
    autocast: Callable[[], Any] | None = None,
    windows: str = "first",
    n_crops: int = 3,
    aggregate: str = "mean",
    stride: int | None = None,
    batch_size: int = 64,
    seed: int = 0,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    keep_leads: np.ndarray | None = None,
    show_progress: bool = False,
) -> Scores:
    """Run the model over evaluation windows of ``rows`` and aggregate per record (mean or max).

    ``sliding`` windows run over each whole record (a window may span two store rows), exactly as
    ``predict`` cuts the record file, so both give a record the same probabilities.
    ``keep_leads`` (12,) bool: score with only these leads, the others zeroed (reduced-lead evaluation).
    """
    from contextlib import nullcontext

    from .metrics import aggregate_windows

    device = torch.device(device)
    autocast = autocast or nullcontext
    has_labels = store.labels is not None
    if windows == "sliding":
        record_ids, first_rows, batches, n_windows = _record_sliding_batches(store, rows, stride, batch_size)
    else:
        record_ids, first_rows, batches, n_windows = _row_window_batches(
            store, rows, windows=windows, n_crops=n_crops, stride=stride, seed=seed, batch_size=batch_size
        )
    probs, losses, weights, window_groups = [], [], [], []
    n_batches = -(-n_windows // batch_size)
    for x, mask, groups in progress(batches, total=n_batches, desc="scoring", unit="batch", enabled=show_progress):
        x = x.to(device)
        if keep_leads is not None:
            from .preprocess import zero_leads

            x = zero_leads(x, keep_leads)
        mask = None if mask is None else mask.to(device)
        with autocast():
            logits = model(x, mask).logits
        if loss_fn is not None and has_labels and store.labels is not None:
            targets = torch.from_numpy(np.asarray(store.labels[first_rows[groups]], dtype=np.float32))
            losses.append(float(loss_fn(logits, targets.to(device))))
            weights.append(len(x))
        probs.append(probabilities(task, logits).cpu().numpy())
        window_groups.append(groups)
    order, agg = aggregate_windows(np.concatenate(probs), np.concatenate(window_groups), how=aggregate)
    labels = store.labels[first_rows[order]] if has_labels and store.labels is not None else None
    loss = float(np.average(losses, weights=weights)) if losses else None
    return Scores(record_ids[order], agg, labels, loss, n_windows)


_Batches = Any  # an iterable of (input (B, 12 * T), mask or None, record group of each window (B,))


def _row_window_batches(
    store: ECGStore,
    rows: np.ndarray,
    *,
    windows: str,
    n_crops: int,
    stride: int | None,
    seed: int,
    batch_size: int,
) -> tuple[np.ndarray, np.ndarray, _Batches, int]:
    """(record ids, first row of each record, batches, window count): windows inside store rows."""
    dataset = StoreWindows(store, crop="given", labels=False, seed=seed)
    win = evaluation_windows(
        store, rows, window=dataset.window, mode=windows, n_crops=n_crops, stride=stride, seed=seed
    )
    first_rows = np.zeros(len(win.record_ids), dtype=np.int64)
    seen: set[int] = set()
    for r, g in zip(win.rows, win.groups):
        if int(g) not in seen:
            seen.add(int(g))
            first_rows[int(g)] = int(r)

    def batches() -> Any:
        offset = 0
        for item in window_batches(win, batch_size):
            batch = dataset[item]
            n = len(item[1])
            mask = None if batch["full"] else batch["attention_mask"]
            yield batch["input"], mask, win.groups[offset : offset + n]
            offset += n

    return win.record_ids, first_rows, batches(), len(win.rows)


def _record_sliding_batches(
    store: ECGStore, rows: np.ndarray, stride: int | None, batch_size: int
) -> tuple[np.ndarray, np.ndarray, _Batches, int]:
    """Sliding windows over each whole record (its segments joined), cut as ``predict`` cuts a record."""
    from .preprocess import cut_windows, window_starts

    rows = np.asarray(rows, dtype=np.int64)
    record_ids, inverse = store.record_groups(rows)
    members = [rows[inverse == g] for g in range(len(record_ids))]
    members = [m[np.argsort(store.segments[m])] for m in members]
    usable = np.minimum(store.lengths, store.row_samples)
    window = store.spec.window_samples
    totals = [int(usable[m].sum()) for m in members]
    n_windows = sum(len(window_starts(max(t, 1), window, mode="sliding", stride=stride)) for t in totals)
    first_rows = np.asarray([m[0] for m in members], dtype=np.int64)

    def batches() -> Any:
        xs: list[np.ndarray] = []
        masks: list[np.ndarray] = []
        groups: list[np.ndarray] = []
        pending = 0
        for g, member in enumerate(members):
            signal = store.signals(member)
            record = np.concatenate([signal[i, :, : int(usable[r])] for i, r in enumerate(member)], axis=1)
            starts = window_starts(record.shape[1], window, mode="sliding", stride=stride)
            x, m = cut_windows(record, store.spec, starts)
            xs.append(x)
            masks.append(m)
            groups.append(np.full(len(x), g, dtype=np.int64))
            pending += len(x)
            while pending >= batch_size or (g == len(members) - 1 and pending):
                x_all, m_all, g_all = np.concatenate(xs), np.concatenate(masks), np.concatenate(groups)
                take = min(batch_size, len(x_all))
                mb = m_all[:take]
                yield (
                    torch.from_numpy(np.ascontiguousarray(x_all[:take])),
                    None if mb.all() else torch.from_numpy(np.ascontiguousarray(mb)),
                    g_all[:take],
                )
                xs, masks, groups = [x_all[take:]], [m_all[take:]], [g_all[take:]]
                pending -= take

    return record_ids, first_rows, batches(), n_windows


#: ``model.info.extra`` key of what a fine-tuned model was trained on (:func:`training_provenance`).
FINETUNED_ON = "finetuned_on"


def training_provenance(store: ECGStore, rows: tuple[np.ndarray, np.ndarray], task: str) -> dict[str, Any]:
    """What fine-tuning read: the store's fingerprint, the label columns (and class names) the head learned,
    and the splits its training and validation rows came from (``evaluate`` refuses those as a test set)."""
    from .runs import store_fingerprint
    from .store import store_splits

    spec = get_task(task)
    names = list(store.label_names)
    columns = names[:1] if spec.first_column_only else names
    classes = store.label_classes.get(columns[0]) if spec.outputs_are_classes and columns else None
    train_rows, val_rows = rows
    splits = store_splits(store)
    return {
        **store_fingerprint(store),
        "label_columns": columns,
        "label_classes": list(classes) if classes else None,
        "seen_splits": sorted(set(splits[np.concatenate([train_rows, val_rows])].tolist())),
        "train_rows": int(len(train_rows)),
        "val_rows": int(len(val_rows)),
    }


@dataclass
class LabelAlignment:
    """Which store label columns a model is scored against, matched by name (never by position alone)."""

    columns: list[int]  # store column of each label column the task reads, in the model's order
    class_map: np.ndarray | None = None  # multi-class: store class index -> the model's class index
    n_classes: int | None = None  # multi-class: the model's outputs (a larger class index is refused)


def align_labels(model: HubertECG, store: ECGStore) -> LabelAlignment:
    """Match the model's outputs to the store's label columns by name; refuse what cannot be matched.

    A store whose columns are in another order is re-ordered, one with extra columns is read for the
    model's columns only; a missing column, or multi-class class names that differ, are an error. Only a
    model without recorded names (converted weights, old runs) falls back to position, with equal counts.
    """
    head = model.config.head
    if head is None:
        raise ValueError("this model has no classification head; fine-tune it first")
    if store.labels is None:
        raise ValueError(f"{store.path}: the store has no labels to evaluate against")
    task = get_task(model.info.task or "multi_label")
    store_names = list(store.label_names)
    trained = (model.info.extra or {}).get(FINETUNED_ON) or {}
    names = list(model.info.label_names or [])
    if task.first_column_only:
        column = _trained_column(task, names, trained)
        columns = [0] if column is None else _columns_by_name(store, [column])
        if not task.outputs_are_classes:
            return LabelAlignment(columns)
        return LabelAlignment(columns, _class_map(store, store_names[columns[0]], trained), head.num_labels)
    if names and len(names) == head.num_labels:
        return LabelAlignment(_columns_by_name(store, names))
    # a model without a recorded task or names predates these checks: columns by position, counts equal
    if model.info.task is not None and task.checks_label_columns and store.labels.shape[1] != head.num_labels:
        raise ValueError(
            f"the model predicts {head.num_labels} labels but {store.path} has {store.labels.shape[1]} label columns"
        )
    return LabelAlignment(list(range(min(head.num_labels, store.labels.shape[1]))))


def _trained_column(task: Any, names: list[str], trained: dict[str, Any]) -> str | None:
    """The one store label column a binary / multi-class model learned (None: not recorded)."""
    recorded = trained.get("label_columns") or []
    if recorded:
        return str(recorded[0])
    if not task.outputs_are_classes:
        return names[0] if names else None  # a binary model's output is named after its column
    stems = {n.rsplit("=", 1)[0] for n in names if "=" in n}
    return stems.pop() if len(stems) == 1 and all("=" in n for n in names) else None


def _columns_by_name(store: ECGStore, wanted: list[str]) -> list[int]:
    store_names = list(store.label_names)
    missing = [n for n in wanted if n not in store_names]
    if missing:
        raise ValueError(
            f"{store.path}: no label column {', '.join(repr(n) for n in missing[:5])} for the model's output(s) "
            f"(store label columns: {', '.join(store_names[:10]) or 'none'}); columns are matched by name"
        )
    return [store_names.index(n) for n in wanted]


def _class_map(store: ECGStore, column: str, trained: dict[str, Any]) -> np.ndarray | None:
    """Store class index -> model class index when class names are known on both sides (else None: as stored)."""
    model_classes = trained.get("label_classes")
    store_classes = store.label_classes.get(column)
    if not model_classes and not store_classes:
        return None
    if not (model_classes and store_classes):
        which = "the model's" if model_classes else "the store's"
        raise ValueError(
            f"{store.path}: column {column!r}: only {which} classes have names, so class indices cannot be "
            "matched; prepare the store from the same kind of label column the model was trained on"
        )
    unknown = [c for c in store_classes if c not in model_classes]
    if unknown:
        raise ValueError(
            f"{store.path}: column {column!r} has class(es) {', '.join(map(repr, unknown[:5]))} the model never "
            f"learned (its classes: {', '.join(model_classes)})"
        )
    return np.asarray([list(model_classes).index(c) for c in store_classes], dtype=np.int64)


def aligned_labels(alignment: LabelAlignment, labels: np.ndarray) -> np.ndarray:
    """Store label rows (N, L) -> the model's label columns, class indices in the model's numbering."""
    out = labels[:, alignment.columns].astype(np.float64)
    if alignment.class_map is not None:
        col = out[:, 0]
        known = np.isfinite(col) & (col >= 0) & (col < len(alignment.class_map)) & (col == np.round(col))
        col[known] = alignment.class_map[col[known].astype(np.int64)]
    return out


def check_label_values(
    task: str, labels: np.ndarray, record_ids: np.ndarray, names: list[str], where: Any, n_classes: int | None
) -> None:
    """Refuse label values the metrics would misread (a binary 2, a class the model has no output for).

    Blanks are not refused here: they leave the metrics as :func:`_scorable` says.
    """
    spec = get_task(task)
    values = spec.label_columns(labels)
    bad, rule = spec.invalid_labels(values)
    bad &= np.isfinite(values)
    if n_classes is not None:
        over = np.isfinite(values) & (values >= n_classes)
        if over.any() and not bad.any():
            bad, rule = over, f"the model has {n_classes} classes (0 .. {n_classes - 1})"
    if bad.any():
        i, j = np.argwhere(bad)[0]
        name = names[j] if j < len(names) else f"column {j}"
        raise ValueError(
            f"{where}: record {str(record_ids[i])!r}, label {name!r} is {values[i, j]:g}; {rule} "
            f"({int(bad.sum())} such value(s))"
        )


def check_compatible(model: HubertECG, store: ECGStore) -> LabelAlignment:
    """The store must have been prepared the way the model expects; returns how its label columns match."""
    spec = model.info.preprocessing
    if spec is not None and spec != store.spec.to_dict():
        diffs = [k for k in spec if spec.get(k) != store.spec.to_dict().get(k)]
        raise ValueError(
            f"{store.path}: prepared with a different preprocessing than the model expects "
            f"(differs in: {', '.join(diffs)}); prepare it again with the model's spec"
        )
    return align_labels(model, store)


# --------------------------------------------------------------------------------------------
# Records the model has seen: the splits it was fine-tuned on, and the same signal under another id
# --------------------------------------------------------------------------------------------


@dataclass
class SeenRecords:
    """Records of an evaluated split that trained the model or selected its checkpoint and thresholds."""

    records: int
    splits: list[str]
    store: str

    def message(self, split: str) -> str:
        return (
            f"{f'split {split!r}' if split else 'the whole store'} holds {self.records} record(s) of the "
            f"{'/'.join(s or 'unsplit' for s in self.splits)} rows this model "
            f"was fine-tuned on ({self.store}): training rows fit the weights, validation rows chose best/ "
            "and tuned the thresholds, so metrics on them are optimistic"
        )


def _same_store(trained: dict[str, Any], store: ECGStore) -> bool:
    from .runs import store_fingerprint

    if trained.get("path") and Path(str(trained["path"])) == store.path.resolve():
        return True
    if trained.get("rows") != len(store) or not trained.get("manifest_sha256"):
        return False
    return store_fingerprint(store)["manifest_sha256"] == trained["manifest_sha256"]


def _normalised_splits(store: ECGStore) -> np.ndarray:
    from .store import StoreError, store_splits

    try:
        return store_splits(store)
    except StoreError:  # values the rule cannot map: compare them as stored
        return store.splits.astype(str)


def _seen_splits(model: HubertECG, store: ECGStore) -> set[str]:
    """Splits of ``store`` the model (or the checkpoint it was fine-tuned from) was fine-tuned on."""
    trained = (model.info.extra or {}).get(FINETUNED_ON)
    if not isinstance(trained, dict):
        return set()
    seen: set[str] = set()
    for entry in [trained, *(trained.get("earlier") or [])]:
        if isinstance(entry, dict) and _same_store(entry, store):
            seen.update(str(s) for s in entry.get("seen_splits") or [])
    return seen


def seen_records(model: HubertECG, store: ECGStore, rows: np.ndarray) -> SeenRecords | None:
    """The records among ``rows`` in a split the model was fine-tuned on (same store), else None."""
    seen = _seen_splits(model, store)
    if not seen:
        return None
    hit = np.isin(_normalised_splits(store)[rows], sorted(seen))
    if not hit.any():
        return None
    return SeenRecords(len(np.unique(store.record_ids[rows[hit]])), sorted(seen), str(store.path))


def _seen_rows(model: HubertECG, store: ECGStore) -> np.ndarray:
    """Rows of the store the model was fine-tuned on (empty when the store is another one)."""
    seen = _seen_splits(model, store)
    if not seen:
        return np.array([], dtype=np.int64)
    return np.flatnonzero(np.isin(_normalised_splits(store), sorted(seen)))


def signal_digests(store: ECGStore, rows: np.ndarray) -> dict[str, str]:
    """Record id -> digest of its stored samples, for the records of ``rows`` (:meth:`ECGStore.record_digests`)."""
    digests = store.record_digests()
    return {str(rid): digests[str(rid)] for rid in np.unique(store.record_ids[np.asarray(rows, dtype=np.int64)])}


def duplicate_signals(store: ECGStore, groups: dict[str, np.ndarray]) -> list[dict[str, Any]]:
    """Recordings whose stored signal is identical in two or more ``groups`` (name -> rows), e.g. train and test.

    Each entry: ``{"digest", "members": [(group, record_id), ...]}``; a digest within one group only is not listed.
    """
    by_digest: dict[str, list[tuple[str, str]]] = {}
    for name, rows in groups.items():
        if len(rows) == 0:
            continue
        for rid, digest in signal_digests(store, rows).items():
            by_digest.setdefault(digest, []).append((name, rid))
    return [{"digest": d, "members": sorted(m)} for d, m in sorted(by_digest.items()) if len({g for g, _ in m}) > 1]


def describe_duplicates(found: list[dict[str, Any]]) -> str:
    """One line: how many recordings appear in two groups under two ids, per pair of groups."""
    pairs: dict[str, int] = {}
    for entry in found:
        names = sorted({g for g, _ in entry["members"]})
        key = "/".join(names)
        pairs[key] = pairs.get(key, 0) + 1
    counts = ", ".join(f"{k}: {v}" for k, v in sorted(pairs.items()))
    return (
        f"{len(found)} recording(s) have an identical signal in more than one split under different record ids "
        f"({counts}); metrics on those records are optimistic"
    )


def write_duplicate_listing(path: Path, found: list[dict[str, Any]]) -> Path:
    """``digest,split,record_id``: one line per copy of each duplicated recording (an identical file is kept)."""
    import io

    text = io.StringIO(newline="")
    writer = csv.writer(text)
    writer.writerow(["digest", "split", "record_id"])
    for entry in found:
        for group, rid in entry["members"]:
            writer.writerow([entry["digest"], group, rid])
    content = text.getvalue()
    if path.is_file() and path.read_bytes() == content.encode():
        return path  # a re-run of a finished job leaves its folder untouched
    with atomic_path(path) as tmp:
        Path(tmp).write_text(content, newline="")
    return path


def write_probabilities(path: Path, scores: Scores, label_names: list[str]) -> Path:
    probs = scores.probabilities.reshape(len(scores.record_ids), -1)
    names = label_names if len(label_names) == probs.shape[1] else [f"output_{i}" for i in range(probs.shape[1])]
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["record_id", *names])
            for rid, row in zip(scores.record_ids, probs):
                writer.writerow([rid, *[f"{v:.6g}" for v in row]])
    return path


@dataclass
class ScoredSplit:
    """A model's record-level probabilities on a store split, ready for the metrics."""

    task: str
    record_ids: np.ndarray  # (N,) records with known labels, in store order
    y_true: np.ndarray
    y_score: np.ndarray
    label_names: list[str] | None  # metric label names (None: class_0 ... for multi-class)
    thresholds: list[float] | None
    n_windows: int
    all_scores: Scores  # every scored record, blank labels included (for probabilities.csv)


def _load_and_check(checkpoint: str | Path, store: ECGStore, device: str) -> tuple[HubertECG, torch.device]:
    from .checkpoint import load_model
    from .runtime import resolve_device

    device_ = resolve_device(device)
    model = load_model(checkpoint, device=device_)
    check_compatible(model, store)
    return model, device_


def _split_rows(store: ECGStore, split: str) -> np.ndarray:
    rows = store.rows(split) if split else store.rows()
    if len(rows) == 0:
        raise ValueError(
            f"{store.path}: no rows in split {split!r} (splits present: "
            f"{', '.join(sorted(set(store.splits.tolist()))) or 'none'})"
        )
    return rows


def score_split(
    model: HubertECG,
    store: ECGStore,
    split: str,
    *,
    device: torch.device,
    windows: str = "first",
    n_crops: int = 3,
    aggregate: str = "mean",
    stride: int | None = None,
    batch_size: int = 64,
    seed: int = 0,
    keep_leads: np.ndarray | None = None,
    warn_blank: bool = True,
    show_progress: bool = False,
) -> ScoredSplit:
    """Score every record of ``split`` (with ``keep_leads``: only those leads, the others zeroed)."""
    from .runtime import autocast_context, precision_dtype

    task = model.info.task or "multi_label"
    rows = _split_rows(store, split)
    autocast = autocast_context(device, precision_dtype("auto", device))
    scores = score_rows(
        model,
        store,
        rows,
        task=task,
        device=device,
        autocast=autocast,
        windows=windows,
        n_crops=n_crops,
        aggregate=aggregate,
        stride=stride,
        batch_size=batch_size,
        seed=seed,
        keep_leads=keep_leads,
        show_progress=show_progress,
    )
    label_names = list(model.info.label_names or store.label_names)
    if scores.labels is None:
        raise ValueError(f"{store.path}: the store has no labels to evaluate against")
    # The model's label columns, found by name: a store with its columns in another order is never misread.
    alignment = align_labels(model, store)
    labels = aligned_labels(alignment, scores.labels)
    column_names = [str(store.label_names[c]) for c in alignment.columns]
    check_label_values(task, labels, scores.record_ids, column_names, store.path, alignment.n_classes)
    scores = dataclasses.replace(scores, labels=labels)
    known = _scorable(task, labels, warn=warn_blank)
    y_true = targets_for_metrics(task, labels[known])
    spec = get_task(task)
    thresholds = model.info.thresholds if spec.uses_thresholds else None
    names = spec.metric_label_names(label_names)
    return ScoredSplit(
        task, scores.record_ids[known], y_true, scores.probabilities[known], names, thresholds, scores.n_windows, scores
    )


def store_columns(store: ECGStore, record_ids: np.ndarray, names: list[str]) -> dict[str, list[Any]]:
    """Values of manifest fields, record metadata keys (``age``, ``sex``, ...) or label columns per record.

    Raises ValueError naming the column when it is in none of them (and listing what is available).
    """
    from .store import LABEL_PREFIX

    with open(store.path / "manifest.csv", newline="") as fh:
        reader = csv.DictReader(fh)
        first: dict[str, dict[str, Any]] = {}
        for row in reader:
            rid = row["record_id"]
            if rid in first:
                continue
            meta = {}
            try:
                meta = json.loads(row.get("meta") or "{}")
            except json.JSONDecodeError:
                pass
            values: dict[str, Any] = {k: v for k, v in row.items() if k != "meta"}
            values.update({k[len(LABEL_PREFIX) :]: v for k, v in row.items() if k.startswith(LABEL_PREFIX)})
            values.update({k: v for k, v in meta.items() if not isinstance(v, (list, dict))})
            first[rid] = values
    available = sorted({k for v in first.values() for k in v} - {"row", "shard", "shard_row"})
    out: dict[str, list[Any]] = {}
    for name in names:
        if name not in available:
            raise ValueError(
                f"--subgroups: no column {name!r} in {store.path} (manifest fields, record metadata "
                f"or labels; available: {', '.join(available)})"
            )
        out[name] = [first.get(str(rid), {}).get(name) for rid in record_ids]
    return out


def _fmt_p(value: Any) -> str:
    return "" if value is None or not np.isfinite(value) else f"{value:.3g}"


def report_scores(
    out: Path,
    *,
    task: str,
    y_true: np.ndarray,
    y_score: np.ndarray,
    label_names: list[str] | None,
    thresholds: Any = None,
    n_bootstrap: int = 1000,
    seed: int = 0,
    ci_method: str = "percentile",
    stratify: bool = False,
    subgroup_columns: dict[str, list[Any]] | None = None,
    calibration_info: dict[str, Any] | None = None,
    uncalibrated: np.ndarray | None = None,
    lead_subsets: dict[str, np.ndarray] | None = None,
    title: str,
    data_note: str,
    extra: dict[str, Any],
    show_progress: bool = False,
) -> dict[str, Any]:
    """Metrics, CIs, plots and the report for record-level probabilities; returns the summary.

    ``uncalibrated``: probabilities before post-hoc calibration (``y_score`` is after), for the
    before/after table. ``lead_subsets``: lead-set name -> probabilities of the same records with
    only those leads (reported as paired differences against ``y_score``).
    """
    from .calibration import calibrated_thresholds
    from .report import ReportSection, write_report

    # The model's thresholds were tuned on raw probabilities: on calibrated ones they move with the calibration.
    raw_thresholds, thresholds = thresholds, calibrated_thresholds(calibration_info, thresholds)
    cautions = sample_size_warnings(task, y_true, label_names, n_bootstrap)
    for caution in cautions:
        warnings.warn(caution, stacklevel=2)
    if cautions:
        extra = {**extra, "sample size": "; ".join(cautions)}
    s = _ScoredRecords(out, task, y_true, y_score, label_names, thresholds, n_bootstrap, seed, ci_method, stratify)
    result, ci = _metrics_and_intervals(s, show_progress)
    figures = _standard_figures(s, result, ci)
    sections: list[ReportSection] = []
    details: dict[str, Any] = {}
    if calibration_info is not None and uncalibrated is not None:
        section, details["calibration"] = _calibration_section(
            s, result, calibration_info, uncalibrated, raw_thresholds
        )
        sections.append(section)
    if subgroup_columns:
        section, details["subgroups"] = _subgroup_section(s, subgroup_columns)
        sections.append(section)
    if lead_subsets:
        section, details["lead_subsets"] = _lead_subset_section(s, lead_subsets)
        sections.append(section)
    report = write_report(
        out,
        title=title,
        metrics_result=result,
        ci=ci,
        plots=figures,
        data_note=data_note,
        extra=extra,
        sections=sections,
        details=details,
    )
    summary = {
        "report": str(report),
        "records": int(len(y_true)),
        "macro": result.macro,
        "undefined_labels": result.undefined_labels,
        "out": str(out),
        "warnings": cautions,
    }
    if ci is not None:
        summary["macro_ci"] = ci.get("macro")
        summary["ci_method"] = ci_method
    atomic_write_json(out / "summary.json", summary)
    return summary


#: Fewer positives (or negatives) than this in a label: its interval is too unstable to quote without a caution.
MIN_CLASS_RECORDS = 10
#: Fewer bootstrap resamples than this give intervals that move with the seed (1000 is the default).
MIN_RESAMPLES = 200


def sample_size_warnings(task: str, y_true: np.ndarray, label_names: list[str] | None, n_bootstrap: int) -> list[str]:
    """Cautions a report must carry: labels with few positives or negatives, too few bootstrap resamples."""
    spec = get_task(task)
    notes = []
    if 0 < n_bootstrap < MIN_RESAMPLES:
        notes.append(f"intervals from {n_bootstrap} resample(s) are unstable (use >= {MIN_RESAMPLES}; default 1000)")
    if not spec.probabilistic:
        if len(y_true) < MIN_CLASS_RECORDS:
            notes.append(f"{len(y_true)} records: too few for stable intervals")
        return notes
    y = np.asarray(y_true, dtype=np.float64)
    if spec.outputs_are_classes:
        k = int(np.nanmax(y)) + 1 if np.isfinite(y).any() else 0
        columns = np.stack([(y == c).astype(np.float64) for c in range(k)], axis=1) if k else np.zeros((len(y), 0))
        names = [f"class_{c}" for c in range(k)]
    else:
        columns = y.reshape(len(y), -1)
        names = list(label_names or [f"label_{j}" for j in range(columns.shape[1])])
    few = []
    for j in range(columns.shape[1]):
        known = columns[:, j][np.isfinite(columns[:, j])]
        pos, neg = int((known == 1).sum()), int((known == 0).sum())
        if 0 < min(pos, neg) < MIN_CLASS_RECORDS:
            few.append(f"{names[j] if j < len(names) else j} ({pos} pos / {neg} neg)")
    if few:
        notes.append(
            f"{len(few)} label(s) with under {MIN_CLASS_RECORDS} positive or negative records, whose metrics "
            f"and intervals are unstable: {', '.join(few[:8])}{' ...' if len(few) > 8 else ''}"
        )
    return notes


@dataclass
class _ScoredRecords:
    """What every part of a report needs: where it goes, the records' labels and scores, the bootstrap settings."""

    out: Path
    task: str
    y_true: np.ndarray
    y_score: np.ndarray
    label_names: list[str] | None
    thresholds: Any
    n_bootstrap: int
    seed: int
    ci_method: str
    stratify: bool

    @property
    def key(self) -> str:
        """The headline metric of the extra sections."""
        return get_task(self.task).main_metric


def _metrics_and_intervals(s: _ScoredRecords, show_progress: bool) -> tuple[Any, dict[str, Any] | None]:
    """Point estimates, and bootstrap intervals unless ``n_bootstrap`` is 0."""
    from .metrics import bootstrap_ci, compute_metrics

    result = compute_metrics(s.task, s.y_true, s.y_score, thresholds=s.thresholds, label_names=s.label_names)
    ci = (
        bootstrap_ci(
            s.task,
            s.y_true,
            s.y_score,
            n_resamples=s.n_bootstrap,
            seed=s.seed,
            thresholds=s.thresholds,
            label_names=s.label_names,
            method=s.ci_method,
            stratify=s.stratify,
            show_progress=show_progress,
        )
        if s.n_bootstrap > 0
        else None
    )
    return result, ci


def _standard_figures(s: _ScoredRecords, result: Any, ci: dict[str, Any] | None) -> dict[str, Path]:
    """The task's usual plots: ROC/PR, AUROC per label, reliability, confusion matrix or predicted vs true."""
    from . import plots

    probabilistic, names = get_task(s.task).probabilistic, s.label_names or list(result.label_names)
    figures: dict[str, Path] = {}
    if probabilistic:
        figures["ROC and precision-recall curves"] = plots.plot_roc_pr(s.y_true, s.y_score, names, s.out / "roc_pr.png")
        if ci is not None:
            figures["AUROC per label with 95% CI"] = plots.plot_per_label_auroc(ci, s.out / "auroc_per_label.png")
        figures["Reliability diagrams (calibration)"] = plots.plot_reliability(
            s.y_true, s.y_score, names, s.out / "reliability.png"
        )
    if result.confusion_matrix is not None:
        figures["Confusion matrix"] = plots.plot_confusion_matrix(
            result.confusion_matrix, names, s.out / "confusion_matrix.png"
        )
    if not probabilistic:
        figures["Predicted vs true"] = plots.plot_regression(s.y_true, s.y_score, s.out / "regression.png")
    return figures


def _calibration_section(
    s: _ScoredRecords, result: Any, calibration_info: dict[str, Any], uncalibrated: np.ndarray, raw_thresholds: Any
) -> tuple[Any, dict[str, Any]]:
    """The before/after table of post-hoc calibration, and its details for ``metrics.json``."""
    from .metrics import compute_metrics
    from .report import ReportSection

    before = compute_metrics(s.task, s.y_true, uncalibrated, thresholds=raw_thresholds, label_names=s.label_names)
    rows = []
    for metric in ("brier", "ece"):
        rows.append([f"macro {metric}", f"{before.macro[metric]:.4f}", f"{result.macro[metric]:.4f}"])
    for metric in ("brier", "ece_top_label"):
        if metric in result.overall:
            rows.append([metric, f"{before.overall[metric]:.4f}", f"{result.overall[metric]:.4f}"])
    params = {k: v for k, v in calibration_info.items() if k not in ("a", "b")}
    section = ReportSection(
        "Post-hoc calibration",
        ["metric", "before", "after"],
        rows,
        intro=f"Probabilities in this report are calibrated: {json.dumps(params)} "
        "(fitted on validation records only, never on the records evaluated here). "
        "Platt scaling and temperature scaling keep the ranking, so AUROC is unchanged.",
    )
    return section, {"fit": calibration_info, "before": {"macro": before.macro, "overall": before.overall}}


def _subgroup_section(s: _ScoredRecords, subgroup_columns: dict[str, list[Any]]) -> tuple[Any, dict[str, Any]]:
    """Metrics with intervals per subgroup (a table and a forest plot), and the per-group details."""
    from . import plots
    from .report import ReportSection
    from .subgroups import subgroup_results

    sub = subgroup_results(
        s.task,
        s.y_true,
        s.y_score,
        subgroup_columns,
        label_names=s.label_names,
        thresholds=s.thresholds,
        n_resamples=s.n_bootstrap,
        seed=s.seed,
        method=s.ci_method,
        stratify=s.stratify,
    )
    key = s.key
    header = ["column", "group", "records", f"macro {key}", "macro AUPRC" if key == "auroc" else "macro R²", "note"]
    rows, forest, groups = _subgroup_rows(sub, key, "auprc" if key == "auroc" else "r2")
    plot = plots.plot_intervals(
        forest,
        s.out / "subgroups.png",
        xlabel=f"macro {key.upper()} (bootstrap CI)",
        title="Subgroups",
        reference=0.5 if key == "auroc" else None,
        groups=groups,
    )
    from .subgroups import AGE_BANDS, MAX_NUMERIC_LEVELS, MIN_GROUP_RECORDS

    section = ReportSection(
        "Subgroups",
        header,
        rows,
        plots={f"macro {key.upper()} per subgroup": plot},
        intro="Each group is bootstrapped on its own. Grouping: text columns by value; numeric columns with "
        f"at most {MAX_NUMERIC_LEVELS} values by value; 'age' in bands "
        f"{', '.join(b[2] for b in AGE_BANDS)}; other numeric columns at their quartiles; blank = "
        f"'missing'. Groups under {MIN_GROUP_RECORDS} records get no interval.",
    )
    return section, sub


def _subgroup_rows(
    sub: dict[str, Any], key: str, second: str
) -> tuple[list[list[str]], list[tuple[str, float, float, float]], list[str]]:
    """Table rows, forest-plot entries and their column (plot group), one per subgroup."""
    from .report import format_interval

    rows, forest, groups = [], [], []
    for column, entry in sub.items():
        for group, info in entry["groups"].items():
            stats = info["macro"].get(key, {})
            rows.append(
                [
                    column,
                    group,
                    str(info["n_records"]),
                    format_interval(stats),
                    format_interval(info["macro"].get(second, {})),
                    info["note"] or "",
                ]
            )
            forest.append(
                (
                    f"{column} = {group} (n={info['n_records']})",
                    stats.get("point", np.nan),
                    stats.get("lower", np.nan),
                    stats.get("upper", np.nan),
                )
            )
            groups.append(column)
    return rows, forest, groups


def _lead_subset_section(s: _ScoredRecords, lead_subsets: dict[str, np.ndarray]) -> tuple[Any, dict[str, Any]]:
    """Reduced-lead scores as paired differences against all 12 leads (a table and a forest plot)."""
    from . import plots
    from .report import ReportSection

    key = s.key
    rows, forest = [], []
    lead_details = {}
    for name, probs in lead_subsets.items():
        row, entry, lead_details[name] = _lead_subset_row(s, name, probs)
        rows.append(row)
        forest.append(entry)
    plot = plots.plot_intervals(
        forest,
        s.out / "lead_subsets.png",
        xlabel=f"change in macro {key.upper()} vs all 12 leads (paired bootstrap CI)",
        title="Reduced-lead input",
        reference=0.0,
    )
    section = ReportSection(
        "Reduced leads",
        ["leads kept", f"macro {key}", "change vs 12 leads", "p", "change in macro F1"],
        rows,
        plots={"Change vs 12 leads": plot},
        intro="The same records scored again with only these leads (the others zeroed, as a missing lead "
        "reaches the model); differences are paired bootstrap intervals against the 12-lead scores.",
    )
    return section, lead_details


def _lead_subset_row(
    s: _ScoredRecords, name: str, probs: np.ndarray
) -> tuple[list[str], tuple[str, float, float, float], dict[str, Any]]:
    """One lead set: its table row, its forest-plot entry and its details."""
    from .compare import paired_bootstrap
    from .metrics import bootstrap_ci
    from .report import format_interval

    key = s.key
    paired = paired_bootstrap(
        s.task,
        s.y_true,
        s.y_score,
        probs,
        n_resamples=max(s.n_bootstrap, 1),
        seed=s.seed,
        label_names=s.label_names,
        thresholds_a=s.thresholds,
        thresholds_b=s.thresholds,
        method=s.ci_method,
        stratify=s.stratify,
    )
    sub_ci = bootstrap_ci(
        s.task,
        s.y_true,
        probs,
        n_resamples=max(s.n_bootstrap, 1),
        seed=s.seed,
        thresholds=s.thresholds,
        label_names=s.label_names,
        method=s.ci_method,
        stratify=s.stratify,
    )
    d = paired["macro"][key]
    row = [
        name,
        format_interval(sub_ci["macro"][key]),
        format_interval(d, "difference", signed=True),
        _fmt_p(d["p_value"]),
        format_interval(paired["macro"]["f1"], "difference", signed=True) if "f1" in paired["macro"] else "",
    ]
    detail = {"macro": sub_ci["macro"], "paired_difference_vs_all_leads": paired["macro"]}
    return row, (name, d["difference"], d["lower"], d["upper"]), detail


def _calibration_for(
    model: HubertECG,
    store: ECGStore,
    method: str,
    split: str,
    *,
    device: torch.device,
    windows: str,
    n_crops: int,
    aggregate: str,
    stride: int | None,
    batch_size: int,
    seed: int,
) -> dict[str, Any]:
    """Fit post-hoc calibration on the records of ``split`` (validation) only."""
    from .calibration import fit_calibration

    task = model.info.task or "multi_label"
    expected = get_task(task).calibrator
    if expected is None:
        raise ValueError(f"--calibrate: a {task} model has no probabilities to calibrate")
    if method not in ("auto", expected):
        raise ValueError(f"--calibrate {method}: a {task} model is calibrated with '{expected}'")
    val = score_split(
        model,
        store,
        split,
        device=device,
        windows=windows,
        n_crops=n_crops,
        aggregate=aggregate,
        stride=stride,
        batch_size=batch_size,
        seed=seed,
        warn_blank=False,
    )
    fit = fit_calibration(task, val.y_true, val.y_score)
    fit["split"] = split
    return fit


def evaluate(
    checkpoint: str | Path,
    store_path: str | Path,
    out_dir: str | Path,
    *,
    split: str = "test",
    windows: str = "first",
    n_crops: int = 3,
    aggregate: str = "mean",
    stride: int | None = None,
    batch_size: int = 64,
    n_bootstrap: int = 1000,
    seed: int = 0,
    device: str = "auto",
    data_note: str | None = None,
    title: str | None = None,
    ci_method: str = "percentile",
    stratify: bool = False,
    subgroups: list[str] | None = None,
    leads: list[str] | None = None,
    calibrate: str | None = None,
    calibration_split: str = "val",
    save_calibration: bool = False,
    use_saved_calibration: bool = True,
    allow_seen_records: bool = False,
    show_progress: bool = False,
) -> dict[str, Any]:
    """Evaluate a fine-tuned model on a split of a store and write the report; returns a summary.

    A split holding rows the model was fine-tuned on (training, or validation: it chose ``best/`` and the
    thresholds) of this same store is refused unless ``allow_seen_records`` (the report then says so);
    recordings of the split whose signal is identical to one the model was fine-tuned on are warned
    about and listed in ``OUT/duplicates_of_training_records.csv``.

    ``ci_method``: "percentile" or "bca"; ``stratify``: resample within classes / label sets.
    ``subgroups``: manifest / metadata / label columns to report per group (see :mod:`hubert_ecg.subgroups`).
    ``leads``: lead sets (``limb``, ``precordial``, ``I``, ``II`` or ``I,II,V1``...) to score again with the
    other leads zeroed, reported as paired differences against all 12 leads.
    ``calibrate``: "platt" / "temperature" / "auto": fit post-hoc calibration on ``calibration_split``
    (never the evaluated split) and report calibrated probabilities; ``save_calibration`` stores the fit in
    the checkpoint's config (``info.calibration``); a stored calibration is applied unless
    ``use_saved_calibration`` is False.
    """
    scoring = _Scoring(windows, n_crops, aggregate, stride, batch_size, seed)
    calib = _CalibrationRequest(calibrate, calibration_split, save_calibration, use_saved_calibration)
    out = check_writable(out_dir)
    store = ECGStore(store_path)
    model, device_ = _load_and_check(checkpoint, store, device)
    if calibrate and calibration_split == split:
        raise ValueError(
            f"--calibration-split {split!r} is the evaluated split: calibration must be fitted on "
            "other (validation) records"
        )
    if calibrate and calibration_split == "train" and "train" in _seen_splits(model, store):
        # A model is over-confident on the rows it was trained on: a fit there would flatten nothing.
        raise ValueError(
            f"--calibration-split train: the model was fine-tuned on these rows of {store.path}; "
            "fit calibration on validation records (--calibration-split val)"
        )
    opts = scoring.options(device_)
    lead_sets = _LeadSets(leads or [])
    honesty = _check_unseen(model, store, split, out, allow_seen_records)
    scored = score_split(model, store, split, show_progress=show_progress, **opts)
    write_probabilities(out / "probabilities.csv", scored.all_scores, list(model.info.label_names or store.label_names))
    calibration = _resolve_calibration(model, store, checkpoint, calib, opts)
    y_score = _calibrated(calibration, scored.y_score)
    lead_scores = lead_sets.score(model, store, split, calibration, opts)
    columns = store_columns(store, scored.record_ids, subgroups) if subgroups else None
    note = data_note or (
        f"Evaluated on split '{split}' of {store.path} ({len(scored.all_scores.record_ids)} "
        "records). Check the data provenance before drawing clinical conclusions."
    )
    if honesty:
        note = "WARNING: " + "; ".join(honesty.values()) + ". " + note
    intervals = {"bootstrap resamples": n_bootstrap, "CI method": ci_method, "stratified resampling": stratify}
    extra = {**_evaluation_extra(checkpoint, store, split, scoring, scored, intervals, calibration), **honesty}
    return report_scores(
        out,
        task=scored.task,
        y_true=scored.y_true,
        y_score=y_score,
        label_names=scored.label_names,
        thresholds=scored.thresholds,
        n_bootstrap=n_bootstrap,
        seed=seed,
        ci_method=ci_method,
        stratify=stratify,
        subgroup_columns=columns,
        calibration_info=calibration,
        uncalibrated=scored.y_score if calibration else None,
        lead_subsets=lead_scores or None,
        title=title or f"HuBERT-ECG evaluation: {Path(str(checkpoint)).name}",
        data_note=note,
        extra=extra,
        show_progress=show_progress,
    )


def _check_unseen(model: HubertECG, store: ECGStore, split: str, out: Path, allow_seen: bool) -> dict[str, str]:
    """Refuse (or, allowed, describe) evaluated records the model was fine-tuned on; warn about copies of them.

    Returns report entries (empty when the split is clean).
    """
    rows = _split_rows(store, split)
    notes: dict[str, str] = {}
    seen = seen_records(model, store, rows)
    if seen is not None:
        if not allow_seen:
            raise ValueError(
                f"{store.path}: {seen.message(split)}; evaluate held-out records (e.g. --split test), or pass "
                "--allow-seen-records to report them anyway (the report then says so)"
            )
        warnings.warn(seen.message(split), stacklevel=3)
        notes["records seen in fine-tuning"] = seen.message(split)
    others = np.setdiff1d(_seen_rows(model, store), rows)
    if len(others):
        found = duplicate_signals(store, {f"evaluated ({split or 'all rows'})": rows, "fine-tuning": others})
        if found:
            listing = write_duplicate_listing(out / "duplicates_of_training_records.csv", found)
            text = describe_duplicates(found).replace("in more than one split", "in fine-tuning and evaluated rows")
            warnings.warn(f"{text}; listed in {listing}", stacklevel=3)
            notes["identical signals in fine-tuning"] = f"{text} (listed in {listing.name})"
    return notes


def _evaluation_extra(
    checkpoint: str | Path,
    store: ECGStore,
    split: str,
    scoring: _Scoring,
    scored: ScoredSplit,
    intervals: dict[str, Any],
    calibration: dict[str, Any] | None,
) -> dict[str, Any]:
    """The details table of an evaluation report: what was scored, how, and the interval settings."""
    extra: dict[str, Any] = {
        "checkpoint": str(checkpoint),
        "store": str(store.path),
        "split": split,
        "windows": scoring.windows,
        "aggregate": scoring.aggregate,
        "records": len(scored.all_scores.record_ids),
        "windows scored": scored.n_windows,
        **intervals,
    }
    if calibration:
        extra["calibration"] = {k: v for k, v in calibration.items() if k not in ("a", "b")}
    return extra


@dataclass
class _Scoring:
    """How records are cut into windows and scored (the scoring keywords of :func:`evaluate`)."""

    windows: str
    n_crops: int
    aggregate: str
    stride: int | None
    batch_size: int
    seed: int

    def options(self, device: torch.device) -> dict[str, Any]:
        """Keyword arguments of :func:`score_split` and :func:`_calibration_for`."""
        return dict(device=device, **dataclasses.asdict(self))


@dataclass
class _CalibrationRequest:
    """The calibration keywords of :func:`evaluate`: fit one (and save it), or apply the saved one."""

    method: str | None  # "platt" / "temperature" / "auto", or None: no new fit
    split: str
    save: bool
    use_saved: bool


def _resolve_calibration(
    model: HubertECG, store: ECGStore, checkpoint: str | Path, request: _CalibrationRequest, opts: dict[str, Any]
) -> dict[str, Any] | None:
    """A new fit on ``request.split`` (saved into the checkpoint if asked), the saved one, or None."""
    if request.method:
        calibration = _calibration_for(model, store, request.method, request.split, **opts)
        if request.save:
            from .checkpoint import update_saved_info

            update_saved_info(checkpoint, calibration=calibration)
        return calibration
    if request.use_saved:
        return (model.info.extra or {}).get("calibration")
    return None


def _calibrated(calibration: dict[str, Any] | None, y_score: np.ndarray) -> np.ndarray:
    from .calibration import apply_calibration

    return apply_calibration(calibration, y_score) if calibration else y_score


class _LeadSets:
    """The ``leads`` of :func:`evaluate`: lead sets parsed up front, scored with the other leads zeroed."""

    def __init__(self, leads: list[str]) -> None:
        from .preprocess import parse_lead_set

        self.lead_sets = {name: parse_lead_set(name) for name in leads}

    def score(
        self, model: HubertECG, store: ECGStore, split: str, calibration: dict[str, Any] | None, opts: dict[str, Any]
    ) -> dict[str, np.ndarray]:
        """Lead-set name -> (calibrated) probabilities of the split's records with only those leads."""
        from .preprocess import lead_keep_mask

        out = {}
        for name, names in self.lead_sets.items():
            sub = score_split(model, store, split, keep_leads=lead_keep_mask(names), warn_blank=False, **opts)
            out[name] = _calibrated(calibration, sub.y_score)
        return out


# --------------------------------------------------------------------------------------------
# Predictions made elsewhere: a predictions CSV scored against a labels CSV
# --------------------------------------------------------------------------------------------

_NON_SCORE_COLUMNS = {"record_id", "source", "n_windows", "seconds", "quality", "missing_leads", "split"}


def _read_csv(path: str | Path, what: str) -> tuple[list[str], list[dict[str, str]]]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path}: no such file")
    with path.open(newline="") as fh:
        reader = csv.DictReader(fh)
        rows = list(reader)
        header = list(reader.fieldnames or [])
    if "record_id" not in header:
        raise ValueError(f"{path}: needs a 'record_id' column (columns: {', '.join(header[:10])})")
    return header, rows


def _float(path: str | Path, line: int, column: str, text: str) -> float:
    text = (text or "").strip()
    if text == "":
        return float("nan")
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"{path}: row {line}, column {column!r}: {text!r} is not a number") from None


@dataclass
class PredictionTable:
    """Predictions and labels matched by record id."""

    task: str
    record_ids: np.ndarray
    y_true: np.ndarray
    y_score: np.ndarray
    label_names: list[str] | None
    label_rows: list[dict[str, str]]  # the labels CSV row of every record (for --subgroups)


def read_predictions(
    predictions: str | Path, labels: str | Path, *, task: str = "multi_label", label_columns: list[str] | None = None
) -> PredictionTable:
    """Match a predictions CSV to a labels CSV by ``record_id``.

    Predictions: one row per record, probabilities in columns ``p_<label>`` (``hubert-ecg predict``
    output) or ``<label>`` (``evaluate``'s probabilities.csv, other tools). Labels: ``record_id`` and
    one column per label with 0/1 (multi-label, binary) or the class index (multi-class: prediction
    columns ``NAME=0``, ``NAME=1``... or ``class_0``...; the label column is ``NAME`` or the only
    remaining column), or the target (regression). Records in only one file are a one-line error
    naming the first; blank labels leave the record out (with a warning).
    """
    p_header, p_rows = _read_csv(predictions, "predictions")
    l_header, l_rows = _read_csv(labels, "labels")
    prob_cols, names = _score_columns(predictions, p_header, label_columns)
    target_cols = _target_columns(task, names, labels, l_header)
    ids, ys, ps, rows = _match_records(predictions, p_rows, prob_cols, labels, l_rows, target_cols)
    y = np.asarray(ys, dtype=np.float64)
    p = np.asarray(ps, dtype=np.float64)
    bad = ~np.isfinite(p)
    if bad.any():
        r, c = np.argwhere(bad)[0]
        raise ValueError(f"{predictions}: row {r + 2}, column {prob_cols[c]!r} is blank or not finite")
    n_classes = len(prob_cols) if get_task(task).outputs_are_classes else None
    check_label_values(task, y, np.asarray(ids), target_cols, labels, n_classes)
    known = _scorable(task, y, warn=True)
    y, p = y[known], p[known]
    rows = [r for r, k in zip(rows, known) if k]
    record_ids = np.asarray(ids)[known]
    y, p, label_names = get_task(task).metric_columns(y, p, names)
    return PredictionTable(task, record_ids, y, p, label_names, rows)


def _score_columns(
    predictions: str | Path, p_header: list[str], label_columns: list[str] | None
) -> tuple[list[str], list[str]]:
    """(probability columns of the predictions CSV, their label names), restricted to ``label_columns``."""
    prob_cols = [c for c in p_header if c.startswith("p_")]
    if prob_cols:
        names = [c[2:] for c in prob_cols]
    else:
        prob_cols = [c for c in p_header if c not in _NON_SCORE_COLUMNS and not c.startswith(("y_", "y_true_"))]
        names = list(prob_cols)
    if label_columns:
        missing = [c for c in label_columns if c not in names]
        if missing:
            raise ValueError(
                f"{predictions}: no prediction column for {', '.join(missing)} "
                f"(prediction columns: {', '.join(names[:10])})"
            )
        keep = [names.index(c) for c in label_columns]
        prob_cols, names = [prob_cols[i] for i in keep], [names[i] for i in keep]
    if not prob_cols:
        raise ValueError(f"{predictions}: no probability columns (expected p_<label> or <label> columns)")
    return prob_cols, names


def _target_columns(task: str, names: list[str], labels: str | Path, l_header: list[str]) -> list[str]:
    """The labels CSV columns scored against: one per prediction, or the one class column of a multi-class task."""
    if get_task(task).outputs_are_classes:
        stem = {n.rsplit("=", 1)[0] for n in names if "=" in n}
        if len(stem) == 1 and stem.pop() in l_header:
            return [names[0].rsplit("=", 1)[0]]
        rest = [c for c in l_header if c not in _NON_SCORE_COLUMNS]
        if len(rest) != 1:
            raise ValueError(
                f"{labels}: {task} needs one label column with class indices; found {', '.join(rest[:10]) or 'none'}"
            )
        return rest
    missing = [n for n in names if n not in l_header]
    if missing:
        raise ValueError(
            f"{labels}: no label column for prediction(s) {', '.join(missing[:5])} "
            f"(label columns: {', '.join(l_header[:10])})"
        )
    return names


def _match_records(
    predictions: str | Path,
    p_rows: list[dict[str, str]],
    prob_cols: list[str],
    labels: str | Path,
    l_rows: list[dict[str, str]],
    target_cols: list[str],
) -> tuple[list[str], list[list[float]], list[list[float]], list[dict[str, str]]]:
    """(record ids, label values, probabilities, label rows) in prediction order; every record in both files."""
    by_id: dict[str, tuple[int, dict[str, str]]] = {}
    for i, row in enumerate(l_rows, start=2):
        by_id.setdefault(row["record_id"], (i, row))
    seen = set()
    ids, ys, ps, rows = [], [], [], []
    for line, row in enumerate(p_rows, start=2):
        rid = row["record_id"]
        if rid in seen:
            raise ValueError(f"{predictions}: row {line}: record {rid!r} appears twice")
        seen.add(rid)
        if rid not in by_id:
            raise ValueError(f"{predictions}: row {line}: record {rid!r} is not in {labels}")
        l_line, l_row = by_id[rid]
        ids.append(rid)
        ps.append([_float(predictions, line, c, row[c]) for c in prob_cols])
        ys.append([_float(labels, l_line, c, l_row[c]) for c in target_cols])
        rows.append(l_row)
    unmatched = [rid for rid in by_id if rid not in seen]
    if unmatched:
        raise ValueError(
            f"{labels}: record {unmatched[0]!r} has no prediction in {predictions} ({len(unmatched)} unmatched)"
        )
    return ids, ys, ps, rows


def evaluate_predictions(
    predictions: str | Path,
    labels: str | Path,
    out_dir: str | Path,
    *,
    task: str = "multi_label",
    label_columns: list[str] | None = None,
    n_bootstrap: int = 1000,
    seed: int = 0,
    ci_method: str = "percentile",
    stratify: bool = False,
    subgroups: list[str] | None = None,
    data_note: str | None = None,
    title: str | None = None,
    show_progress: bool = False,
) -> dict[str, Any]:
    """Score predictions made elsewhere (any model or vendor algorithm) with the same metrics, CIs and report.

    ``subgroups`` name columns of the labels CSV.
    """
    out = check_writable(out_dir)
    table = read_predictions(predictions, labels, task=task, label_columns=label_columns)
    columns = None
    if subgroups:
        header = set(table.label_rows[0]) if table.label_rows else set()
        missing = [c for c in subgroups if c not in header]
        if missing:
            raise ValueError(
                f"--subgroups: no column {missing[0]!r} in {labels} (columns: {', '.join(sorted(header))})"
            )
        columns = {c: [r[c] for r in table.label_rows] for c in subgroups}
    note = data_note or (
        f"Predictions from {predictions} scored against {labels} ({len(table.record_ids)} "
        "records). Check the data provenance before drawing clinical conclusions."
    )
    extra = {
        "predictions": str(predictions),
        "labels": str(labels),
        "task": task,
        "records": len(table.record_ids),
        "bootstrap resamples": n_bootstrap,
        "CI method": ci_method,
        "stratified resampling": stratify,
    }
    return report_scores(
        out,
        task=task,
        y_true=table.y_true,
        y_score=table.y_score,
        label_names=table.label_names,
        n_bootstrap=n_bootstrap,
        seed=seed,
        ci_method=ci_method,
        stratify=stratify,
        subgroup_columns=columns,
        title=title or f"Evaluation of {Path(str(predictions)).name}",
        data_note=note,
        extra=extra,
        show_progress=show_progress,
    )


# --------------------------------------------------------------------------------------------
# Two models on the same records
# --------------------------------------------------------------------------------------------


def compare_models(
    a: str | Path,
    b: str | Path,
    out_dir: str | Path,
    *,
    store: str | Path | None = None,
    split: str = "test",
    labels: str | Path | None = None,
    task: str = "multi_label",
    n_bootstrap: int = 1000,
    seed: int = 0,
    ci_method: str = "percentile",
    stratify: bool = False,
    names: tuple[str, str] | None = None,
    device: str = "auto",
    windows: str = "first",
    batch_size: int = 64,
    data_note: str | None = None,
    title: str | None = None,
    allow_seen_records: bool = False,
) -> dict[str, Any]:
    """Compare two models on the same records and write ``compare.html`` (:func:`hubert_ecg.compare.compare_scores`).

    ``a``/``b`` are checkpoints scored on ``split`` of ``store``, or predictions CSVs scored against
    ``labels``. Differences are ``B - A``. Returns ``{"report", "comparison", "lines"}``.
    """
    from .report import write_compare_report

    out = check_writable(out_dir)
    names = names or (Path(str(a)).name or str(a), Path(str(b)).name or str(b))
    if names[0] == names[1]:
        names = (f"A: {names[0]}", f"B: {names[1]}")
    if store is not None and labels is not None:
        raise ValueError("compare: give --store (two checkpoints) or --labels (two predictions CSVs), not both")
    if store is not None:
        p = _paired_from_store(
            a,
            b,
            store,
            split,
            device=device,
            windows=windows,
            batch_size=batch_size,
            seed=seed,
            allow_seen_records=allow_seen_records,
        )
    elif labels is not None:
        p = _paired_from_predictions(a, b, labels, task)
    else:
        raise ValueError("compare: give --store STORE (two checkpoints) or --labels FILE (two predictions CSVs)")
    comparison = _compare(p, n_bootstrap=n_bootstrap, seed=seed, ci_method=ci_method, stratify=stratify)
    key = get_task(p.task).main_metric
    figures = _compare_figures(comparison, key, names, out)
    note = data_note or (
        f"Both models scored on the same {len(p.y_true)} records ({p.source}). "
        "Check the data provenance before drawing clinical conclusions."
    )
    report = write_compare_report(
        out,
        title=title or f"{names[0]} vs {names[1]}",
        comparison=comparison,
        names=names,
        data_note=note,
        plots=figures,
        extra={"A": str(a), "B": str(b), "records": p.source, "task": p.task},
    )
    return {"report": str(report), "comparison": comparison, "lines": _compare_lines(comparison, key, names, p)}


@dataclass
class _PairedScores:
    """Two models' scores of the same records, in the same order, with the shared labels."""

    task: str
    y_true: np.ndarray
    score_a: np.ndarray
    score_b: np.ndarray
    label_names: list[str] | None
    thresholds_a: Any
    thresholds_b: Any
    source: str  # where the records come from, for the report


def _paired_from_store(
    a: str | Path,
    b: str | Path,
    store: str | Path,
    split: str,
    *,
    device: str,
    windows: str,
    batch_size: int,
    seed: int,
    allow_seen_records: bool = False,
) -> _PairedScores:
    """Two checkpoints scored on ``split`` of ``store`` (one model in memory at a time)."""
    st = ECGStore(store)
    model_a, device_ = _load_and_check(a, st, device)
    model_b, _ = _load_and_check(b, st, device)
    rows = _split_rows(st, split)
    for name, model in ((a, model_a), (b, model_b)):
        seen = seen_records(model, st, rows)
        if seen is not None and not allow_seen_records:
            raise ValueError(
                f"compare: {name}: {seen.message(split)}; compare on held-out records (e.g. --split test), "
                "or pass --allow-seen-records"
            )
    if (model_a.info.task or "multi_label") != (model_b.info.task or "multi_label"):
        raise ValueError(f"compare: {a} is a {model_a.info.task} model but {b} is a {model_b.info.task} model")
    opts: dict[str, Any] = dict(device=device_, windows=windows, batch_size=batch_size, seed=seed)
    sa = score_split(model_a, st, split, **opts)
    del model_a
    sb = score_split(model_b, st, split, warn_blank=False, **opts)
    if sa.label_names != sb.label_names:
        raise ValueError(f"compare: the models predict different labels ({sa.label_names} vs {sb.label_names})")
    return _PairedScores(
        sa.task,
        sa.y_true,
        sa.y_score,
        sb.y_score,
        sa.label_names,
        sa.thresholds,
        sb.thresholds,
        f"split '{split}' of {st.path}",
    )


def _paired_from_predictions(a: str | Path, b: str | Path, labels: str | Path, task: str) -> _PairedScores:
    """Two predictions CSVs scored against ``labels``; B's rows are put in A's record order."""
    ta = read_predictions(a, labels, task=task)
    columns = None if get_task(task).outputs_are_classes else ta.label_names
    tb = read_predictions(b, labels, task=task, label_columns=columns)
    order = {rid: i for i, rid in enumerate(tb.record_ids)}
    if set(order) != set(ta.record_ids.tolist()):
        raise ValueError(f"compare: {a} and {b} score different records")
    idx = np.array([order[rid] for rid in ta.record_ids])
    return _PairedScores(
        task, ta.y_true, ta.y_score, tb.y_score[idx], ta.label_names, None, None, f"records of {labels}"
    )


def _compare(p: _PairedScores, *, n_bootstrap: int, seed: int, ci_method: str, stratify: bool) -> dict[str, Any]:
    """Metrics of A and B with intervals, and their paired differences (:func:`hubert_ecg.compare.compare_scores`)."""
    from .compare import compare_scores

    return compare_scores(
        p.task,
        p.y_true,
        p.score_a,
        p.score_b,
        label_names=p.label_names,
        n_resamples=max(n_bootstrap, 1),
        seed=seed,
        method=ci_method,
        stratify=stratify,
        thresholds_a=p.thresholds_a,
        thresholds_b=p.thresholds_b,
    )


def _compare_figures(comparison: dict[str, Any], key: str, names: tuple[str, str], out: Path) -> dict[str, Path]:
    """Per-label metric side by side, and the paired differences B - A of every metric."""
    from . import plots

    figures: dict[str, Path] = {}
    res_a = comparison["a"]
    per_a = [
        tuple(comparison["ci_a"]["per_label"][n][key][k] for k in ("point", "lower", "upper"))
        for n in res_a.label_names
    ]
    per_b = [
        tuple(comparison["ci_b"]["per_label"][n][key][k] for k in ("point", "lower", "upper"))
        for n in res_a.label_names
    ]
    figures[f"{key.upper()} per label, side by side"] = plots.plot_compare(
        res_a.label_names, per_a, per_b, out / "compare_per_label.png", labels=names, metric=key.upper()
    )
    diff_rows = [
        (f"macro {m}", d["difference"], d["lower"], d["upper"]) for m, d in comparison["paired"]["macro"].items()
    ]
    diff_rows += [(m, d["difference"], d["lower"], d["upper"]) for m, d in comparison["paired"]["overall"].items()]
    figures["Paired differences B - A (macro)"] = plots.plot_intervals(
        diff_rows,
        out / "compare_differences.png",
        xlabel=f"{names[1]} - {names[0]} (paired bootstrap CI)",
        title="Paired differences, every metric",
        reference=0.0,
    )
    return figures


def _compare_lines(comparison: dict[str, Any], key: str, names: tuple[str, str], p: _PairedScores) -> list[str]:
    """The console summary: record count and the headline paired difference."""
    d = comparison["paired"]["macro"].get(key)
    lines = [f"{len(p.y_true)} records; A = {names[0]}, B = {names[1]}"]
    if d:
        lines.append(
            f"macro {key} A {comparison['a'].macro[key]:.3f}, B {comparison['b'].macro[key]:.3f}; "
            f"B - A {d['difference']:+.3f} [{d['lower']:+.3f}, {d['upper']:+.3f}] "
            f"(paired bootstrap, p {d['p_value']:.3g})"
        )
    return lines
