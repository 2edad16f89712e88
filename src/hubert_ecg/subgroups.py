"""Subgroup results: metrics with bootstrap CIs for each value of a manifest or label column.

A model can be good on average and poor for women, the elderly or one hospital. ``evaluate
--subgroups sex,age,site`` splits the evaluated records by each named column and reports every
metric, with its own bootstrap interval, per group.

Grouping rule (:func:`group_values`), applied to one column at a time:

* blank cells (empty, ``nan``, ``None``) form the group ``missing``;
* a column whose non-blank values are not all numbers is categorical: one group per value;
* a numeric column with at most :data:`MAX_NUMERIC_LEVELS` distinct values (0/1 flags, a site
  number, a pre-binned ``age_bin``) is also one group per value;
* a column named ``age`` (any case) with more distinct values is cut into the clinical bands
  ``<40``, ``40-59``, ``60-79``, ``>=80`` years; values written as ``>89`` (LUDB, PTB-XL style
  censoring) count as 89;
* any other numeric column is cut at its quartiles into four groups ``[q0, q1)``, ``[q1, q2)``,
  ``[q2, q3)``, ``[q3, q4]`` (edges rounded to 3 significant digits; fewer groups when quartiles
  coincide).

Groups with fewer than :data:`MIN_GROUP_RECORDS` records are listed but get no interval (their
metrics are shown with a warning flag): a bootstrap of 5 records describes nothing.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .metrics import bootstrap_ci, compute_metrics
from .tasks import get_task

__all__ = ["group_values", "subgroup_results", "MAX_NUMERIC_LEVELS", "MIN_GROUP_RECORDS", "AGE_BANDS"]

MAX_NUMERIC_LEVELS = 6
MIN_GROUP_RECORDS = 10
AGE_BANDS: tuple[tuple[float, float, str], ...] = (
    (-math.inf, 40, "<40"),
    (40, 60, "40-59"),
    (60, 80, "60-79"),
    (80, math.inf, ">=80"),
)
_BLANK = {"", "nan", "none", "null", "na", "n/a"}


def _number(text: str) -> float | None:
    text = text.strip().lstrip("<>=+").strip()
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _fmt_edge(value: float) -> str:
    return f"{value:.3g}"


def group_values(name: str, values: Sequence[Any]) -> np.ndarray:
    """Group label (str) of every record for column ``name``, by the rule in the module docstring."""
    text = np.array(["" if v is None else str(v).strip() for v in values], dtype=object)
    blank = np.array([t.lower() in _BLANK for t in text])
    numbers = [None if b else _number(t) for t, b in zip(text, blank)]
    out = np.array(["missing" if b else t for t, b in zip(text, blank)], dtype=object)
    present = ~blank
    if not present.any() or any(n is None for n, b in zip(numbers, blank) if not b):
        return out  # categorical (or all blank)
    x = np.array([n if n is not None else np.nan for n in numbers], dtype=np.float64)
    levels = np.unique(x[present])
    if len(levels) <= MAX_NUMERIC_LEVELS:
        for value in levels:
            label = f"{value:g}"
            out[present & (x == value)] = label
        return out
    if name.strip().lower() == "age":
        for lo, hi, label in AGE_BANDS:
            out[present & (x >= lo) & (x < hi)] = label
        return out
    edges = np.unique(np.quantile(x[present], [0.0, 0.25, 0.5, 0.75, 1.0]))
    for i in range(len(edges) - 1):
        lo, hi = edges[i], edges[i + 1]
        last = i == len(edges) - 2
        inside = present & (x >= lo) & ((x <= hi) if last else (x < hi))
        out[inside] = f"[{_fmt_edge(lo)}, {_fmt_edge(hi)}{']' if last else ')'}"
    return out


def _order(labels: Sequence[str]) -> list[str]:
    """Groups in a readable order: age bands / numeric bins in value order, 'missing' last."""
    band_order = {label: i for i, (_, _, label) in enumerate(AGE_BANDS)}

    def key(label: str) -> tuple[int, float, str]:
        if label == "missing":
            return (3, 0.0, label)
        if label in band_order:
            return (0, float(band_order[label]), label)
        number = _number(label.lstrip("[").split(",")[0]) if label.startswith("[") else _number(label)
        return (1, number, label) if number is not None else (2, 0.0, label)

    return sorted(set(labels), key=key)


def _no_interval(values: Mapping[str, float]) -> dict[str, dict[str, Any]]:
    nan = float("nan")
    return {m: {"point": v, "lower": nan, "upper": nan, "n_used": 0} for m, v in values.items()}


def subgroup_results(
    task: str,
    y_true: Any,
    y_score: Any,
    columns: Mapping[str, Sequence[Any]],
    *,
    label_names: Sequence[str] | None = None,
    thresholds: Any = None,
    n_resamples: int = 1000,
    seed: int = 0,
    method: str = "percentile",
    stratify: bool = False,
) -> dict[str, Any]:
    """Metrics and bootstrap CIs per group of every column in ``columns`` (name -> one value per record).

    Returns ``{column: {"rule": str, "groups": {group: {"n_records", "n_positive", "macro": {metric: stats},
    "overall": {...}, "per_label": {...}, "note": str | None}}}}`` where ``stats`` is as in
    :func:`hubert_ecg.metrics.bootstrap_ci` (``lower``/``upper`` NaN without an interval).
    """
    spec = get_task(task)
    y = np.asarray(y_true)
    score = np.asarray(y_score)
    out: dict[str, Any] = {}
    for column, values in columns.items():
        if len(values) != len(y):
            raise ValueError(f"subgroup column {column!r} has {len(values)} values for {len(y)} records")
        groups = group_values(column, values)
        entry: dict[str, Any] = {"groups": {}}
        for group in _order(groups.tolist()):
            rows = np.flatnonzero(groups == group)
            yg, sg = y[rows], score[rows]
            n_pos = np.asarray(yg).reshape(len(rows), -1).sum(axis=0).tolist() if spec.probabilistic else None
            info: dict[str, Any] = {"n_records": int(len(rows)), "n_positive": n_pos, "note": None}
            if len(rows) < MIN_GROUP_RECORDS or n_resamples <= 0:
                point = compute_metrics(task, yg, sg, label_names=label_names, thresholds=thresholds)
                info.update(macro=_no_interval(point.macro), overall=_no_interval(point.overall), per_label={})
                if len(rows) < MIN_GROUP_RECORDS:
                    info["note"] = f"only {len(rows)} records: no interval"
            else:
                ci = bootstrap_ci(
                    task,
                    yg,
                    sg,
                    label_names=label_names,
                    thresholds=thresholds,
                    n_resamples=n_resamples,
                    seed=seed,
                    method=method,
                    stratify=stratify,
                )
                info.update(macro=ci["macro"], overall=ci["overall"], per_label=ci["per_label"])
                if ci["undefined_labels"]:
                    info["note"] = f"{len(ci['undefined_labels'])} label(s) without both classes in this group"
            entry["groups"][group] = info
        out[column] = entry
    return out
