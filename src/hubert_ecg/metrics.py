"""Evaluation metrics, threshold tuning, bootstrap confidence intervals and TTA aggregation.

Everything here is plain NumPy so that it runs without torch and can be applied to saved
probabilities. It fixes the weak points of the reference evaluation (see
``docs/hubert-ecg-reference.md`` §7.3, §8 and §10):

* labels without positives (or without negatives) have *undefined* AUROC/AUPRC: they are NaN,
  left out of every macro average, and the result names them (the reference counted them as 0);
* scores must be probabilities; logits are rejected instead of being silently squashed;
* per-label thresholds can be tuned on validation data instead of a fixed 0.5;
* bootstrap confidence intervals (percentile, or BCa with a jackknife acceleration) use a seeded
  generator and an order that never depends on file modification times;
* PPV/NPV beside sensitivity/specificity, and calibration (Brier score, expected calibration error);
* regression has real metrics (MAE, RMSE, R², Pearson r).

Task types and array shapes:

``"multi_label"``  y_true (N, L) in {0, 1}, y_score (N, L) probabilities.
``"multi_class"``  y_true (N,) ints in 0..C-1, y_score (N, C) probabilities (binary = 2 classes).
``"binary"``       y_true (N,) in {0, 1}, y_score (N,) probability of the positive class.
``"regression"``   y_true (N,) or (N, D) floats, y_score (predictions) of the same shape.

All metrics are computed by one vectorised core that takes a matrix of per-record weights
(B, N). The point estimate uses a single row of ones; a bootstrap resample is the same
computation with the multiplicity of every record as its weight. Point estimates and bootstrap
replicates can therefore never disagree about definitions.
"""

from __future__ import annotations

import csv
import json
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from .progress import progress
from .tasks import MONITORS, TASKS, Task, find_task, get_task, monitor_mode, task_names

__all__ = [
    "MONITORS",
    "TASKS",
    "MetricsInputError",
    "MetricsResult",
    "compute_metrics",
    "tune_thresholds",
    "bootstrap_ci",
    "bca_bounds",
    "ece_bin_index",
    "aggregate_windows",
    "to_jsonable",
    "monitor_mode",
    "task_metrics",
    "task_thresholds",
]

# Metric names, in display order. "_at_thr" variants use caller-supplied per-label thresholds.
# "precision" is the positive predictive value (PPV); "npv" the negative predictive value.
THRESHOLD_METRICS = ("f1", "precision", "npv", "sensitivity", "specificity", "accuracy")
# Calibration of the probabilities themselves (no threshold): Brier score and expected calibration error.
CALIBRATION_METRICS = ("brier", "ece")
MULTICLASS_LABEL_METRICS = ("auroc", "auprc", "f1", "precision", "npv", "sensitivity", "specificity", "brier", "ece")
# Expected calibration error: ECE_BINS equal-width bins on [0, 1], right-closed like scikit-learn's
# calibration_curve(strategy="uniform") (bin k holds k/B < p <= (k+1)/B; p = 0 goes to the first bin).
ECE_BINS = 10

# Bootstrap memory bound: number of resamples x records processed at once.
_MAX_WEIGHT_CELLS = 4_000_000


class MetricsInputError(ValueError):
    """Raised when arrays passed to the metrics functions have the wrong shape or content."""


# --------------------------------------------------------------------------------------------
# Result container
# --------------------------------------------------------------------------------------------


@dataclass
class MetricsResult:
    """Metrics of one evaluation.

    Attributes:
        task: one of :data:`TASKS`.
        n_records: number of records N that were evaluated.
        label_names: L names (labels, classes or regression outputs).
        per_label: metric name -> array (L,) (NaN where undefined).
        macro: metric name -> mean over the *defined* labels only.
        overall: task-level scalars that are not label averages (multi-class accuracy, ...).
        n_positive: (L,) number of positive records per label/class (None for regression).
        undefined_labels: labels whose ranking metrics (AUROC/AUPRC; R²/Pearson for regression)
            are undefined in this data and were therefore left out of the macro averages.
        thresholds: (L,) thresholds used for the ``*_at_thr`` metrics, or None.
        confusion_matrix: (C, C) counts, rows = true class, columns = predicted (multi-class only).
    """

    task: str
    n_records: int
    label_names: list[str]
    per_label: dict[str, np.ndarray]
    macro: dict[str, float]
    overall: dict[str, float] = field(default_factory=dict)
    n_positive: np.ndarray | None = None
    undefined_labels: list[str] = field(default_factory=list)
    thresholds: np.ndarray | None = None
    confusion_matrix: np.ndarray | None = None

    @property
    def n_undefined(self) -> int:
        """How many labels were left out of the macro averages."""
        return len(self.undefined_labels)

    @property
    def metric_names(self) -> list[str]:
        return list(self.per_label)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dictionary (NaN becomes None)."""
        per_label = {
            name: {metric: values[i] for metric, values in self.per_label.items()}
            for i, name in enumerate(self.label_names)
        }
        if self.n_positive is not None:
            for i, name in enumerate(self.label_names):
                per_label[name]["n_positive"] = int(self.n_positive[i])
        if self.thresholds is not None:
            for i, name in enumerate(self.label_names):
                per_label[name]["threshold"] = self.thresholds[i]
        out: dict[str, Any] = {
            "task": self.task,
            "n_records": self.n_records,
            "n_labels": len(self.label_names),
            "n_undefined_labels": self.n_undefined,
            "undefined_labels": list(self.undefined_labels),
            "macro": dict(self.macro),
            "overall": dict(self.overall),
            "per_label": per_label,
        }
        if self.confusion_matrix is not None:
            out["confusion_matrix"] = self.confusion_matrix
        return to_jsonable(out)

    def to_rows(self) -> list[dict[str, Any]]:
        """One row per label plus a final ``macro`` row (for CSV / pandas.DataFrame)."""
        rows: list[dict[str, Any]] = []
        for i, name in enumerate(self.label_names):
            row: dict[str, Any] = {"label": name}
            if self.n_positive is not None:
                row["n_positive"] = int(self.n_positive[i])
            if self.thresholds is not None:
                row["threshold"] = float(self.thresholds[i])
            row["defined"] = name not in self.undefined_labels
            for metric, values in self.per_label.items():
                row[metric] = float(values[i])
            rows.append(row)
        macro_row: dict[str, Any] = {"label": "macro"}
        if self.n_positive is not None:
            macro_row["n_positive"] = None
        if self.thresholds is not None:
            macro_row["threshold"] = None
        macro_row["defined"] = None
        macro_row.update({metric: float(value) for metric, value in self.macro.items()})
        rows.append(macro_row)
        return rows

    def write_json(self, path: str | Path) -> Path:
        path = Path(path)
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return path

    def write_csv(self, path: str | Path) -> Path:
        """Per-label table (plus the macro row); empty cells stand for undefined values."""
        path = Path(path)
        rows = self.to_rows()
        with path.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            for row in rows:
                writer.writerow({k: _csv_cell(v) for k, v in row.items()})
        return path


def _csv_cell(value: Any) -> Any:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return value


def to_jsonable(obj: Any) -> Any:
    """Recursively convert NumPy values to Python ones; NaN/inf become None (valid JSON)."""
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
    if isinstance(obj, (np.bool_, bool)):
        return bool(obj)
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        value = float(obj)
        return value if math.isfinite(value) else None
    return obj


# --------------------------------------------------------------------------------------------
# Input checking
# --------------------------------------------------------------------------------------------


@dataclass
class _Prepared:
    """Validated inputs in the layout the vectorised core expects.

    One subclass per score layout a task declares (:attr:`hubert_ecg.tasks.Task.scores`): per-label
    probabilities, softmax classes, real values. Each knows its metrics, when a label is defined, how
    records are stratified, and what it counts (positives, confusion matrix).
    """

    task: str
    y: np.ndarray  # (N, L) bool for classification labels / one-hot classes, (N, D) float for regression
    score: np.ndarray  # (N, L) float
    label_names: list[str]
    classes: np.ndarray | None = None  # (N,) int, multi-class only
    # (N, L) bool: False where the label is blank (unknown; NaN in y_true). Multi-label and regression
    # only. A blank cell takes no part in that label's metrics; the record still counts for the others.
    known: np.ndarray | None = None

    @classmethod
    def build(
        cls, task: Task, y: np.ndarray, score: np.ndarray, label_names: Sequence[str] | None, known: np.ndarray | None
    ) -> _Prepared:
        """Check the shapes and values of this layout (finite, blanks zeroed) and build it."""
        raise NotImplementedError

    def core(
        self, weights: np.ndarray, thresholds: np.ndarray | None
    ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """All metrics for every weight row: (per-label metric -> (B, L), overall metric -> (B,))."""
        raise NotImplementedError

    def ranking(self, weights: np.ndarray) -> dict[str, np.ndarray]:
        auroc, auprc = _ranking_metrics(self.y, self.score, weights, self.known)
        return {"auroc": auroc, "auprc": auprc}

    def defined(self) -> np.ndarray:
        """(L,) True where the label's ranking metrics are defined on the full data."""
        known = np.ones(self.y.shape, dtype=bool) if self.known is None else self.known
        n_pos = (self.y & known).sum(axis=0)
        return (n_pos > 0) & (n_pos < known.sum(axis=0))

    def strata(self) -> list[np.ndarray]:
        """Record indices per stratum: class (multi-class), target (binary) or exact label set."""
        _, inverse = np.unique(self.y, axis=0, return_inverse=True)
        inverse = inverse.ravel()
        return [np.flatnonzero(inverse == k) for k in range(inverse.max() + 1)]

    def n_positive(self) -> np.ndarray | None:
        """(L,) known positive cells per label / class."""
        cells = self.y if self.known is None else self.y & self.known
        return cells.sum(axis=0).astype(np.int64)

    def confusion(self) -> np.ndarray | None:
        return None


class _LabelScores(_Prepared):
    """Independent 0/1 labels, one probability each (multi-label; binary with ``single_output``)."""

    @classmethod
    def build(
        cls, task: Task, y: np.ndarray, score: np.ndarray, label_names: Sequence[str] | None, known: np.ndarray | None
    ) -> _Prepared:
        if task.single_output:
            if y.ndim != 1 or score.ndim != 1:
                raise MetricsInputError(
                    f"task '{task.name}' expects y_true (N,) and y_score (N,); got {y.shape} and {score.shape} "
                    "(use task 'multi_class' for two softmax columns)"
                )
            y, score = y[:, None], score[:, None]
            names = _check_names(label_names, 1, "positive")
            if label_names is None:
                names = ["positive"]
        else:
            if y.ndim != 2 or y.shape != score.shape:
                raise MetricsInputError(
                    f"task '{task.name}' expects y_true and y_score of the same shape (N, L); "
                    f"got {y.shape} and {score.shape}"
                )
            names = _check_names(label_names, y.shape[1], "label_")
        bad = (y != 0) & (y != 1)
        if bad.any():
            index = tuple(np.argwhere(bad)[0])
            raise MetricsInputError(f"y_true must be 0/1 for task '{task.name}'; {_first_bad(bad)} holds {y[index]:g}")
        _check_probabilities(task.name, score)
        return cls(task.name, y.astype(bool), score, names, known=known)

    def core(
        self, weights: np.ndarray, thresholds: np.ndarray | None
    ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        per_label = self.ranking(weights)
        tp, fp, fn, tn = _confusion_counts(self.y, self.score >= 0.5, weights, self.known)
        per_label.update(_threshold_metrics(tp, fp, fn, tn))
        per_label.update(_calibration_metrics(self.y, self.score, weights, self.known))
        if thresholds is not None:
            tp, fp, fn, tn = _confusion_counts(self.y, self.score >= thresholds[None, :], weights, self.known)
            for metric, values in _threshold_metrics(tp, fp, fn, tn).items():
                per_label[f"{metric}_at_thr"] = values
        return per_label, {}


class _ClassScores(_Prepared):
    """One class index per record, softmax probabilities over the classes (multi-class)."""

    @classmethod
    def build(
        cls, task: Task, y: np.ndarray, score: np.ndarray, label_names: Sequence[str] | None, known: np.ndarray | None
    ) -> _Prepared:
        if y.ndim != 1 or score.ndim != 2:
            raise MetricsInputError(
                f"task '{task.name}' expects y_true (N,) and y_score (N, C); got {y.shape} and {score.shape}"
            )
        n_classes = score.shape[1]
        if n_classes < 2:
            raise MetricsInputError(f"task '{task.name}' needs at least 2 score columns; got {n_classes}")
        bad = (y != np.round(y)) | (y < 0) | (y >= n_classes)
        if bad.any():
            row = int(np.argmax(bad))
            raise MetricsInputError(f"y_true must hold class indices in 0..{n_classes - 1}; row {row} holds {y[row]:g}")
        _check_probabilities(task.name, score)
        classes = y.astype(np.int64)
        onehot = np.zeros(score.shape, dtype=bool)
        onehot[np.arange(len(classes)), classes] = True
        names = _check_names(label_names, n_classes, "class_")
        return cls(task.name, onehot, score, names, classes)

    def core(
        self, weights: np.ndarray, thresholds: np.ndarray | None
    ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        assert self.classes is not None
        per_label = self.ranking(weights)
        predicted = np.zeros_like(self.y)
        predicted[np.arange(len(self.classes)), self.score.argmax(axis=1)] = True
        tp, fp, fn, tn = _confusion_counts(self.y, predicted, weights)
        stats = _threshold_metrics(tp, fp, fn, tn)
        stats.update(_calibration_metrics(self.y, self.score, weights))
        for metric in MULTICLASS_LABEL_METRICS[2:]:
            per_label[metric] = stats[metric]
        total = weights.sum(axis=1)
        # Top-label calibration: confidence = max probability, outcome = argmax was right.
        confidence = self.score.max(axis=1, keepdims=True)
        correct = predicted[np.arange(len(predicted)), self.classes][:, None]
        overall = {
            "accuracy": tp.sum(axis=1) / total,
            # Mean recall over the classes present (sklearn's balanced_accuracy_score).
            "balanced_accuracy": _nanmean_rows(stats["sensitivity"]),
            # Multi-class Brier score: sum over classes of (p_c - y_c)^2, averaged over records.
            "brier": (weights @ ((self.score - self.y) ** 2).sum(axis=1)) / total,
            "ece_top_label": _calibration_metrics(correct, confidence, weights)["ece"][:, 0],
        }
        return per_label, overall

    def confusion(self) -> np.ndarray | None:
        """(C, C) counts, rows = true class, columns = argmax."""
        assert self.classes is not None
        n_labels = self.y.shape[1]
        predicted = self.score.argmax(axis=1)
        return np.bincount(self.classes * n_labels + predicted, minlength=n_labels * n_labels).reshape(
            n_labels, n_labels
        )


class _ValueScores(_Prepared):
    """Real-valued targets and predictions of the same shape (regression)."""

    @classmethod
    def build(
        cls, task: Task, y: np.ndarray, score: np.ndarray, label_names: Sequence[str] | None, known: np.ndarray | None
    ) -> _Prepared:
        if y.shape != score.shape or y.ndim not in (1, 2):
            raise MetricsInputError(
                f"task '{task.name}' expects y_true and predictions of the same shape (N,) or (N, D); "
                f"got {y.shape} and {score.shape}"
            )
        y2 = y.reshape(len(y), -1)
        names = _check_names(label_names, y2.shape[1], "output_")
        return cls(task.name, y2, score.reshape(len(y), -1), names, known=known)

    def core(
        self, weights: np.ndarray, thresholds: np.ndarray | None
    ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        return _regression_metrics(self.y, self.score, weights, self.known), {}

    def defined(self) -> np.ndarray:
        """(D,) True where the target is not constant (R² and Pearson r are defined)."""
        known = np.ones(self.y.shape, dtype=bool) if self.known is None else self.known
        low = np.where(known, self.y, np.inf).min(axis=0)
        high = np.where(known, self.y, -np.inf).max(axis=0)
        return high > low

    def strata(self) -> list[np.ndarray]:
        raise MetricsInputError(f"stratify=True is not supported for task '{self.task}'")

    def n_positive(self) -> np.ndarray | None:
        return None


#: The layouts of :attr:`hubert_ecg.tasks.Task.scores`.
_SCORE_LAYOUTS: dict[str, type[_Prepared]] = {"labels": _LabelScores, "classes": _ClassScores, "values": _ValueScores}


def _first_bad(mask: np.ndarray) -> str:
    """'row i, column j' (or 'row i') of the first True in mask, for error messages."""
    index = np.argwhere(mask)[0]
    return f"row {index[0]}" + (f", column {index[1]}" if len(index) > 1 else "")


def _check_finite(name: str, array: np.ndarray) -> None:
    bad = ~np.isfinite(array)
    if bad.any():
        raise MetricsInputError(f"{name} contains a non-finite value at {_first_bad(bad)}")


def _check_probabilities(task: str, array: np.ndarray) -> None:
    bad = (array < 0) | (array > 1)
    if bad.any():
        where = _first_bad(bad)
        value = array[tuple(np.argwhere(bad)[0])]
        raise MetricsInputError(
            f"y_score must hold probabilities in [0, 1] for task '{task}' (apply sigmoid/softmax to "
            f"logits first); {where} holds {value:g}"
        )


def _as_float_array(name: str, values: Any) -> np.ndarray:
    try:
        array = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise MetricsInputError(f"{name} is not numeric: {exc}") from None
    return array


def _check_names(label_names: Sequence[str] | None, n_labels: int, default_prefix: str) -> list[str]:
    if label_names is None:
        return [f"{default_prefix}{i}" for i in range(n_labels)]
    names = [str(n) for n in label_names]
    if len(names) != n_labels:
        raise MetricsInputError(f"label_names has {len(names)} names but there are {n_labels} labels")
    if len(set(names)) != len(names):
        raise MetricsInputError("label_names contains duplicate names")
    return names


def _task(task: str | Task) -> Task:
    """The registered task called ``task`` (a one-line MetricsInputError naming the choices otherwise)."""
    spec = task if isinstance(task, Task) else find_task(task) if isinstance(task, str) and task else None
    if spec is None:
        raise MetricsInputError(f"unknown task '{task}'; expected one of {', '.join(task_names())}")
    return spec


def _prepare(task: str | Task, y_true: Any, y_score: Any, label_names: Sequence[str] | None) -> _Prepared:
    spec = _task(task)
    y = _as_float_array("y_true", y_true)
    score = _as_float_array("y_score", y_score)
    if y.shape[:1] != score.shape[:1]:
        raise MetricsInputError(
            f"y_true has {y.shape[0] if y.ndim else 0} records but y_score has {score.shape[0] if score.ndim else 0}"
        )
    if y.ndim == 0 or y.shape[0] == 0:
        raise MetricsInputError("y_true is empty: nothing to evaluate")
    # Blank labels (NaN) are "unknown" for the per-label tasks; infinities are always an error.
    blanks = np.isnan(y) if spec.blanks_allowed else np.zeros(y.shape, dtype=bool)
    _check_finite("y_true", np.where(blanks, 0.0, y))
    _check_finite("y_score", score)
    known = None
    if blanks.any():
        known = ~blanks.reshape(len(y), -1)
        y = np.where(blanks, 0.0, y)
    return _SCORE_LAYOUTS[spec.scores].build(spec, y, score, label_names, known)


def _check_thresholds(thresholds: Any, n_labels: int) -> np.ndarray:
    thr = np.atleast_1d(_as_float_array("thresholds", thresholds))
    if thr.ndim != 1 or thr.shape[0] != n_labels:
        raise MetricsInputError(f"thresholds has {thr.size} values but there are {n_labels} labels")
    _check_finite("thresholds", thr)
    return thr


# --------------------------------------------------------------------------------------------
# Vectorised weighted core: weights (B, N) -> metrics (B, L)
# --------------------------------------------------------------------------------------------


def _safe_divide(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den with NaN where den == 0."""
    out = np.full(np.broadcast(num, den).shape, np.nan)
    np.divide(num, den, out=out, where=den != 0)
    return out


def _ranking_metrics(
    y: np.ndarray, score: np.ndarray, weights: np.ndarray, known: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Weighted AUROC and average precision for every label.

    Args:
        y: (N, L) bool targets.
        score: (N, L) scores (higher = more likely positive).
        weights: (B, N) non-negative record weights (bootstrap multiplicities or ones).

    Returns:
        auroc, auprc: (B, L) each; NaN when a row has no positive or no negative weight.

    With unit weights the values equal sklearn's ``roc_auc_score`` (Mann-Whitney with ties
    counted as 1/2) and ``average_precision_score`` (step-wise sum of precision x recall
    increments over distinct thresholds). Records are sorted once per label; every resample then
    costs a few cumulative sums instead of a sort.
    """
    n_rows = weights.shape[0]
    n_labels = y.shape[1]
    auroc = np.full((n_rows, n_labels), np.nan)
    auprc = np.full((n_rows, n_labels), np.nan)
    for label in range(n_labels):
        order = np.argsort(-score[:, label], kind="stable")
        sorted_score = score[order, label]
        sorted_pos = y[order, label]
        # Records with equal scores form one threshold step.
        starts = np.flatnonzero(np.r_[True, sorted_score[1:] != sorted_score[:-1]])
        w_sorted = weights[:, order] if known is None else weights[:, order] * known[order, label]
        pos = np.add.reduceat(np.where(sorted_pos, w_sorted, 0.0), starts, axis=1)  # (B, G)
        neg = np.add.reduceat(np.where(sorted_pos, 0.0, w_sorted), starts, axis=1)
        tp = np.cumsum(pos, axis=1)
        fp = np.cumsum(neg, axis=1)
        n_pos = tp[:, -1]
        n_neg = fp[:, -1]
        # A positive beats every negative with a strictly lower score and ties half of its group.
        neg_below = n_neg[:, None] - fp
        auroc[:, label] = _safe_divide((pos * (neg_below + 0.5 * neg)).sum(axis=1), n_pos * n_neg)
        precision = np.zeros_like(tp)
        np.divide(tp, tp + fp, out=precision, where=(tp + fp) > 0)
        auprc[:, label] = _safe_divide((pos * precision).sum(axis=1), n_pos)
        undefined = (n_pos == 0) | (n_neg == 0)
        auroc[undefined, label] = np.nan
        auprc[undefined, label] = np.nan
    return auroc, auprc


def _confusion_counts(
    y: np.ndarray, predicted: np.ndarray, weights: np.ndarray, known: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Weighted TP, FP, FN, TN, each (B, L), from (N, L) bool targets and predictions (blank cells: none)."""
    yf = y.astype(np.float64)
    pf = predicted.astype(np.float64)
    negative = 1.0 - yf
    if known is not None:  # a blank cell is in none of the four counts
        mask = known.astype(np.float64)
        yf, negative = yf * mask, negative * mask
    tp = weights @ (yf * pf)
    fp = weights @ (negative * pf)
    fn = weights @ (yf * (1.0 - pf))
    tn = weights @ (negative * (1.0 - pf))
    return tp, fp, fn, tn


def _threshold_metrics(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray, tn: np.ndarray) -> dict[str, np.ndarray]:
    """F1, precision (PPV), NPV, sensitivity, specificity, accuracy from confusion counts (B, L).

    0/0 gives NaN, except precision of a label that has positives but was never predicted:
    that classifier found none of them, so it gets precision 0 (sklearn's zero_division=0)
    rather than being excused. NPV is handled the same way (negatives present, none predicted).
    """
    n_pos = tp + fn
    n_neg = tn + fp
    precision = _safe_divide(tp, tp + fp)
    precision[np.isnan(precision) & (n_pos > 0)] = 0.0
    npv = _safe_divide(tn, tn + fn)
    npv[np.isnan(npv) & (n_neg > 0)] = 0.0
    return {
        "f1": _safe_divide(2 * tp, 2 * tp + fp + fn),
        "precision": precision,
        "npv": npv,
        "sensitivity": _safe_divide(tp, n_pos),
        "specificity": _safe_divide(tn, tn + fp),
        "accuracy": _safe_divide(tp + tn, tp + fp + fn + tn),
    }


def ece_bin_index(score: np.ndarray, n_bins: int = ECE_BINS) -> np.ndarray:
    """Bin of every probability for the ECE / reliability diagram (scikit-learn's uniform binning)."""
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    return np.searchsorted(edges[1:-1], score, side="left")


def _calibration_metrics(
    y: np.ndarray, score: np.ndarray, weights: np.ndarray, known: np.ndarray | None = None
) -> dict[str, np.ndarray]:
    """Weighted Brier score and expected calibration error per label, each (B, L).

    Brier = mean of (p - y)^2. ECE = sum over bins of (records in bin / N) x |mean y - mean p| in
    that bin = sum_k |sum_{i in k} w_i (y_i - p_i)| / sum_i w_i, with :data:`ECE_BINS` equal-width
    bins (see :func:`ece_bin_index`). Both are defined whenever there is a record.
    """
    yf = y.astype(np.float64)
    err = score - yf
    mask = np.ones(y.shape) if known is None else known.astype(np.float64)
    err = err * mask
    total = weights @ mask  # (B, L): weight of the known cells of each label
    brier = _safe_divide(weights @ (err**2), total)
    ece = np.full(brier.shape, np.nan)
    bins = ece_bin_index(score)
    for label in range(y.shape[1]):
        onehot = np.zeros((len(score), ECE_BINS))
        onehot[np.arange(len(score)), bins[:, label]] = -err[:, label]
        ece[:, label] = _safe_divide(np.abs(weights @ onehot).sum(axis=1), total[:, label])
    return {"brier": brier, "ece": ece}


def _regression_metrics(
    y: np.ndarray, pred: np.ndarray, weights: np.ndarray, known: np.ndarray | None = None
) -> dict[str, np.ndarray]:
    """Weighted MAE, RMSE, R², Pearson r per output, each (B, D); R²/r NaN for constant targets.

    With ``known``, blank targets are left out of their output only (every sum runs over known cells).
    """
    mask = np.ones(y.shape) if known is None else known.astype(np.float64)
    total = weights @ mask  # (B, D)
    err = (pred - y) * mask
    mae = _safe_divide(weights @ np.abs(err), total)
    sse = weights @ (err**2)
    rmse = np.sqrt(_safe_divide(sse, total))
    # Centre once on the full-data means: variances are shift invariant and centring avoids
    # catastrophic cancellation in sum(w y^2) - (sum(w y))^2 / n.
    n_known = np.maximum(mask.sum(axis=0), 1.0)
    yc = (y - (y * mask).sum(axis=0) / n_known) * mask
    pc = (pred - (pred * mask).sum(axis=0) / n_known) * mask
    sum_y = weights @ yc
    sum_p = weights @ pc
    ss_y = weights @ (yc**2) - sum_y**2 / total
    ss_p = weights @ (pc**2) - sum_p**2 / total
    cross = weights @ (yc * pc) - sum_y * sum_p / total
    # Relative tolerance: a constant column leaves only rounding noise in ss_y.
    scale_y = total * (np.abs(y).max(axis=0) + 1e-300) ** 2
    scale_p = total * (np.abs(pred).max(axis=0) + 1e-300) ** 2
    y_const = ss_y <= 1e-12 * scale_y
    p_const = ss_p <= 1e-12 * scale_p
    r2 = np.where(y_const, np.nan, 1.0 - sse / np.where(y_const, 1.0, ss_y))
    denom = np.sqrt(np.where(y_const | p_const, 1.0, ss_y * ss_p))
    pearson = np.where(y_const | p_const, np.nan, cross / denom)
    return {"mae": mae, "rmse": rmse, "r2": r2, "pearson_r": np.clip(pearson, -1.0, 1.0)}


def _core(
    prep: _Prepared, weights: np.ndarray, thresholds: np.ndarray | None
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """All metrics for every weight row: (per-label metric -> (B, L), overall metric -> (B,))."""
    return prep.core(weights, thresholds)


def _nanmean_rows(values: np.ndarray) -> np.ndarray:
    """Mean over the last axis ignoring NaN; NaN (no warning) when a row is all NaN."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=RuntimeWarning)
        return np.nanmean(values, axis=-1)


def _defined_mask(prep: _Prepared) -> np.ndarray:
    """(L,) True where the label's ranking metrics are defined on the full data."""
    return prep.defined()


def _macro(per_label: dict[str, np.ndarray], defined: np.ndarray) -> dict[str, np.ndarray]:
    """Macro average over the labels defined on the full data, per weight row (B,).

    Within a bootstrap resample a defined label can still lose all its positives; it is then
    skipped for that resample only (nanmean).
    """
    return {metric: _nanmean_rows(values[..., defined]) for metric, values in per_label.items()}


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------


def compute_metrics(
    task: str | Task,
    y_true: Any,
    y_score: Any,
    *,
    thresholds: Any = None,
    label_names: Sequence[str] | None = None,
) -> MetricsResult:
    """Compute all metrics of a task (see the module docstring for the shapes).

    Classification metrics per label: ``auroc``, ``auprc`` (average precision), at threshold
    0.5 ``f1``, ``precision`` (PPV), ``npv``, ``sensitivity`` (recall), ``specificity``,
    ``accuracy``, and the calibration metrics ``brier`` and ``ece`` (:data:`ECE_BINS` uniform
    bins); with ``thresholds`` (L,) the six threshold metrics again as ``*_at_thr``.
    Multi-class: one-vs-rest ``auroc``/``auprc`` and argmax-based ``f1``, ``precision``,
    ``sensitivity``, ``specificity`` per class, ``overall`` accuracy (micro) and balanced
    accuracy, and the confusion matrix. Regression: ``mae``, ``rmse``, ``r2``, ``pearson_r`` per
    output, macro = mean over outputs.

    Labels (classes) with no positive or no negative record are undefined: their AUROC/AUPRC are
    NaN and they are excluded from *every* macro average so all macro values describe the same
    set of labels; ``result.undefined_labels`` lists them. For regression an output with a
    constant target has undefined R² and Pearson r and is excluded from all macro means.

    Raises:
        MetricsInputError: wrong shapes, non-finite values, labels outside {0, 1} or class range,
            or scores outside [0, 1] for classification tasks.
    """
    spec = _task(task)
    prep = _prepare(spec, y_true, y_score, label_names)
    n_records, n_labels = prep.y.shape
    thr = None
    if thresholds is not None:
        if not spec.uses_thresholds:
            raise MetricsInputError(f"thresholds are not used by task '{prep.task}'")
        thr = _check_thresholds(thresholds, n_labels)

    ones = np.ones((1, n_records))
    per_label_b, overall_b = _core(prep, ones, thr)
    defined = _defined_mask(prep)
    per_label = {metric: values[0] for metric, values in per_label_b.items()}
    macro = {metric: float(values[0]) for metric, values in _macro(per_label_b, defined).items()}
    overall = {metric: float(values[0]) for metric, values in overall_b.items()}

    return MetricsResult(
        task=prep.task,
        n_records=n_records,
        label_names=prep.label_names,
        per_label=per_label,
        macro=macro,
        overall=overall,
        n_positive=prep.n_positive(),
        undefined_labels=[name for name, ok in zip(prep.label_names, defined) if not ok],
        thresholds=thr,
        confusion_matrix=prep.confusion(),
    )


def tune_thresholds(y_true: Any, y_score: Any, method: Literal["max_f1", "youden"] | str = "max_f1") -> np.ndarray:
    """Per-label decision thresholds chosen on (validation) data.

    Args:
        y_true: (N, L) or (N,) 0/1 targets.
        y_score: probabilities of the same shape.
        method: ``"max_f1"`` maximises F1; ``"youden"`` maximises sensitivity + specificity - 1.

    Returns:
        (L,) thresholds ((1,) for 1-D input); a record is positive when score >= threshold.
        The threshold is the midpoint between the optimal cut score and the next lower distinct
        score, so it reproduces the optimum on this data and does not sit on a training score.
        Labels without positives or without negatives get 0.5. Ties keep the highest threshold.
    """
    if method not in ("max_f1", "youden"):
        raise MetricsInputError(f"unknown threshold method '{method}'; expected 'max_f1' or 'youden'")
    y = _as_float_array("y_true", y_true)
    task = "binary" if y.ndim == 1 else "multi_label"
    prep = _prepare(task, y_true, y_score, None)
    n_records, n_labels = prep.y.shape
    thresholds = np.full(n_labels, 0.5)
    for label in range(n_labels):
        positive = prep.y[:, label]
        n_pos = int(positive.sum())
        if n_pos == 0 or n_pos == n_records:
            continue
        order = np.argsort(-prep.score[:, label], kind="stable")
        sorted_score = prep.score[order, label]
        # Last index of every group of equal scores = cut points "score >= this value".
        ends = np.flatnonzero(np.r_[sorted_score[1:] != sorted_score[:-1], True])
        tp = np.cumsum(positive[order])[ends].astype(np.float64)
        fp = (ends + 1) - tp
        if method == "max_f1":
            objective = 2 * tp / (tp + fp + n_pos)
        else:
            objective = tp / n_pos - fp / (n_records - n_pos)
        best = int(np.argmax(objective))
        cut = sorted_score[ends[best]]
        if best + 1 < len(ends):
            cut = 0.5 * (cut + sorted_score[ends[best + 1]])
        thresholds[label] = cut
    return thresholds


def _resample_weights(
    rng: np.random.Generator, n_records: int, n_rows: int, strata: list[np.ndarray] | None
) -> np.ndarray:
    """(n_rows, N) bootstrap multiplicities; within each stratum the size is kept fixed."""
    groups = strata if strata is not None else [np.arange(n_records)]
    flat = np.empty((n_rows, n_records), dtype=np.int64)
    column = 0
    for members in groups:
        draws = rng.integers(0, len(members), size=(n_rows, len(members)))
        flat[:, column : column + len(members)] = members[draws]
        column += len(members)
    offsets = (np.arange(n_rows) * n_records)[:, None]
    counts = np.bincount((flat + offsets).ravel(), minlength=n_rows * n_records)
    return counts.reshape(n_rows, n_records).astype(np.float64)


CI_METHODS = ("percentile", "bca")


def bca_bounds(point: float, samples: np.ndarray, jackknife: np.ndarray, confidence: float) -> tuple[float, float]:
    """Bias-corrected and accelerated (BCa) interval from bootstrap replicates and jackknife values.

    Efron (1987), as in ``scipy.stats.bootstrap(method="BCa")``: the bias correction
    z0 = Phi^-1(share of replicates below the estimate, ties counted half), the acceleration
    a = sum(d^3) / (6 sum(d^2)^1.5) with d = mean(jackknife) - jackknife, and the percentile
    levels Phi(z0 + (z0 + z) / (1 - a (z0 + z))) for z = Phi^-1(alpha), Phi^-1(1 - alpha).
    Non-finite replicates/jackknife values are dropped; NaN when nothing usable is left or all
    replicates lie on one side of the estimate.
    """
    from scipy.special import ndtr, ndtri

    theta = samples[np.isfinite(samples)]
    jack = jackknife[np.isfinite(jackknife)]
    if theta.size == 0 or jack.size < 2 or not math.isfinite(point):
        return float("nan"), float("nan")
    share = ((theta < point).sum() + (theta <= point).sum()) / (2.0 * theta.size)
    z0 = float(ndtri(share))
    if not math.isfinite(z0):
        return float("nan"), float("nan")
    d = jack.mean() - jack
    den = 6.0 * float((d**2).sum()) ** 1.5
    accel = float((d**3).sum()) / den if den > 0 else 0.0
    alpha = (1.0 - confidence) / 2.0
    levels = []
    for z in (ndtri(alpha), ndtri(1.0 - alpha)):
        levels.append(float(ndtr(z0 + (z0 + z) / (1.0 - accel * (z0 + z)))))
    lower, upper = np.percentile(theta, [100 * levels[0], 100 * levels[1]])
    return float(lower), float(upper)


def _summarise(
    point: float, samples: np.ndarray, confidence: float, jackknife: np.ndarray | None = None
) -> dict[str, Any]:
    finite = samples[np.isfinite(samples)]
    alpha = (1.0 - confidence) / 2.0
    if finite.size == 0 or not math.isfinite(point):
        lower = upper = float("nan")
    elif jackknife is not None:
        lower, upper = bca_bounds(point, samples, jackknife, confidence)
    else:
        lower, upper = (float(v) for v in np.quantile(finite, [alpha, 1.0 - alpha]))
    return {"point": float(point), "lower": lower, "upper": upper, "n_used": int(finite.size)}


@dataclass
class _Replicates:
    """Values of every metric over many weightings of the records (bootstrap resamples, jackknife leave-outs)."""

    per_label: dict[str, np.ndarray] = field(default_factory=dict)  # metric -> (B, L)
    macro: dict[str, np.ndarray] = field(default_factory=dict)  # metric -> (B,)
    overall: dict[str, np.ndarray] = field(default_factory=dict)  # metric -> (B,)
    _parts: tuple[dict[str, list[np.ndarray]], ...] = field(default_factory=lambda: ({}, {}, {}), repr=False)

    def add(self, prep: _Prepared, weights: np.ndarray, thr: np.ndarray | None, defined: np.ndarray) -> None:
        """Evaluate one chunk of weight rows; :meth:`join` stacks the chunks."""
        per_label_b, overall_b = prep.core(weights, thr)
        for parts, values in zip(self._parts, (per_label_b, _macro(per_label_b, defined), overall_b)):
            for metric, rows in values.items():
                parts.setdefault(metric, []).append(rows)

    def join(self) -> _Replicates:
        self.per_label, self.macro, self.overall = (
            {m: np.concatenate(v, axis=0) for m, v in parts.items()} for parts in self._parts
        )
        return self


def _jackknife(prep: _Prepared, thr: np.ndarray | None, defined: np.ndarray) -> _Replicates:
    """Leave-one-record-out values of every metric: per-label (N, L), macro (N,), overall (N,)."""
    n_records = prep.y.shape[0]
    chunk = max(1, min(n_records, _MAX_WEIGHT_CELLS // max(n_records, 1)))
    out = _Replicates()
    for start in range(0, n_records, chunk):
        stop = min(n_records, start + chunk)
        weights = np.ones((stop - start, n_records))
        weights[np.arange(stop - start), np.arange(start, stop)] = 0.0
        out.add(prep, weights, thr, defined)
    return out.join()


def _bootstrap_replicates(
    models: Sequence[tuple[_Prepared, np.ndarray | None]],
    defined: np.ndarray,
    strata: list[np.ndarray] | None,
    n_resamples: int,
    seed: int,
    bar: Any = None,
) -> list[_Replicates]:
    """Every metric of every (prepared scores, thresholds) on the same ``n_resamples`` record resamples.

    The resamples are drawn in chunks (memory bound :data:`_MAX_WEIGHT_CELLS`) from one generator seeded
    with ``seed``; several models are evaluated on the same weights (paired bootstrap).
    """
    n_records = models[0][0].y.shape[0]
    rng = np.random.default_rng(seed)
    chunk = max(1, min(n_resamples, _MAX_WEIGHT_CELLS // max(n_records, 1)))
    out = [_Replicates() for _ in models]
    done = 0
    while done < n_resamples:
        rows = min(chunk, n_resamples - done)
        weights = _resample_weights(rng, n_records, rows, strata)
        for (prep, thr), replicates in zip(models, out):
            replicates.add(prep, weights, thr, defined)
        done += rows
        if bar is not None:
            bar.update(rows)
    return [replicates.join() for replicates in out]


def _check_ci_settings(n_resamples: int, confidence: float | None, method: str) -> None:
    """One-line errors for settings no interval can be computed with (``confidence`` None: not checked)."""
    if n_resamples < 1:
        raise MetricsInputError(f"n_resamples must be at least 1; got {n_resamples}")
    if confidence is not None and not 0.0 < confidence < 1.0:
        raise MetricsInputError(f"confidence must be in (0, 1); got {confidence}")
    if method not in CI_METHODS:
        raise MetricsInputError(f"unknown CI method '{method}'; expected one of {', '.join(CI_METHODS)}")


def _intervals(
    point: MetricsResult, samples: _Replicates, jack: _Replicates | None, confidence: float
) -> dict[str, Any]:
    """``{"macro", "overall", "per_label"}`` intervals of every metric (BCa where ``jack`` is given)."""
    per_label: dict[str, dict[str, Any]] = {}
    for i, name in enumerate(point.label_names):
        per_label[name] = {
            metric: _summarise(
                point.per_label[metric][i], values[:, i], confidence, jack.per_label[metric][:, i] if jack else None
            )
            for metric, values in samples.per_label.items()
        }
    macro = {
        metric: _summarise(point.macro[metric], values, confidence, jack.macro.get(metric) if jack else None)
        for metric, values in samples.macro.items()
    }
    overall = {
        metric: _summarise(point.overall[metric], values, confidence, jack.overall.get(metric) if jack else None)
        for metric, values in samples.overall.items()
    }
    return {"macro": macro, "overall": overall, "per_label": per_label}


def bootstrap_ci(
    task: str | Task,
    y_true: Any,
    y_score: Any,
    *,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    thresholds: Any = None,
    stratify: bool = False,
    label_names: Sequence[str] | None = None,
    method: str = "percentile",
    show_progress: bool = False,
) -> dict[str, Any]:
    """Bootstrap confidence intervals (percentile or BCa) for every metric of :func:`compute_metrics`.

    Records are resampled with replacement (``n_resamples`` times, generator seeded with
    ``seed``, so the same call gives the same intervals). The interval is the
    ((1-confidence)/2, 1-(1-confidence)/2) quantile pair of the replicates; the point estimate
    is the metric on the original data. A resample in which a label has no positive (or no
    negative) record is excluded for that label and metric; ``n_used`` reports how many
    resamples were left. Macro replicates average the labels defined on the full data that are
    defined in the resample.

    ``stratify=True`` keeps the number of records of each class (multi-class, binary) or of
    each exact label combination (multi-label, as the reference did) fixed. With many labels most
    combinations are unique, and stratification then understates the variance, hence the
    default False.

    ``method="bca"`` gives bias-corrected and accelerated intervals (:func:`bca_bounds`; the
    acceleration comes from a leave-one-record-out jackknife, N extra metric evaluations) from the
    same replicates. BCa corrects the skew of bounded metrics near 0 or 1 (AUROC of a good model)
    but needs more resamples (>= 2000) for stable tail quantiles.

    Returns:
        ``{"method", "n_resamples", "confidence", "seed", "stratify", "n_records",
        "undefined_labels", "macro": {metric: stats}, "overall": {metric: stats},
        "per_label": {label: {metric: stats}}}`` with
        ``stats = {"point", "lower", "upper", "n_used"}``.
    """
    _check_ci_settings(n_resamples, confidence, method)
    point = compute_metrics(task, y_true, y_score, thresholds=thresholds, label_names=label_names)
    prep = _prepare(task, y_true, y_score, label_names)
    n_records, n_labels = prep.y.shape
    defined = prep.defined()
    strata = prep.strata() if stratify else None
    bar = progress(total=n_resamples, desc="bootstrap", unit="resample", enabled=show_progress)
    (samples,) = _bootstrap_replicates([(prep, point.thresholds)], defined, strata, n_resamples, seed, bar)
    bar.close()
    jack = _jackknife(prep, point.thresholds, defined) if method == "bca" else None
    return {
        "method": method,
        "task": point.task,
        "n_resamples": int(n_resamples),
        "confidence": float(confidence),
        "seed": int(seed),
        "stratify": bool(stratify),
        "n_records": n_records,
        "n_labels": n_labels,
        "undefined_labels": list(point.undefined_labels),
        **_intervals(point, samples, jack, confidence),
    }


def aggregate_windows(
    probs: Any, group_ids: Any, how: Literal["mean", "max"] | str = "mean"
) -> tuple[np.ndarray, np.ndarray]:
    """Combine test-time-augmentation windows into one prediction per record.

    Args:
        probs: (W, ...) probabilities, one row per window.
        group_ids: (W,) record id of every window (any hashable NumPy-compatible type).
        how: ``"mean"`` or ``"max"`` over the windows of a record.

    Returns:
        groups: (G,) distinct ids in order of first appearance (so record order is kept).
        aggregated: (G, ...) aggregated probabilities.
    """
    if how not in ("mean", "max"):
        raise MetricsInputError(f"unknown aggregation '{how}'; expected 'mean' or 'max'")
    values = _as_float_array("probs", probs)
    ids = np.asarray(group_ids)
    if values.ndim == 0 or ids.ndim != 1 or ids.shape[0] != values.shape[0]:
        raise MetricsInputError(
            f"group_ids must be 1-D with one id per window; got {ids.shape} ids for probs of shape {values.shape}"
        )
    if ids.shape[0] == 0:
        raise MetricsInputError("probs is empty: no windows to aggregate")
    _check_finite("probs", values)
    unique, first, inverse = np.unique(ids, return_index=True, return_inverse=True)
    inverse = inverse.ravel()
    appearance = np.argsort(first, kind="stable")
    rank = np.empty_like(appearance)
    rank[appearance] = np.arange(len(appearance))
    group_of_window = rank[inverse]
    n_groups = len(unique)
    if how == "mean":
        out = np.zeros((n_groups,) + values.shape[1:])
        np.add.at(out, group_of_window, values)
        counts = np.bincount(group_of_window, minlength=n_groups).astype(np.float64)
        out /= counts.reshape((-1,) + (1,) * (values.ndim - 1))
    else:
        out = np.full((n_groups,) + values.shape[1:], -np.inf)
        np.maximum.at(out, group_of_window, values)
    return unique[appearance], out


def task_metrics(
    task: str | Task,
    labels: np.ndarray,
    probs: np.ndarray,
    *,
    thresholds: Any = None,
    label_names: Sequence[str] | None = None,
) -> MetricsResult:
    """:func:`compute_metrics` on store label columns (N, L), blanks dropped per label.

    A record with a blank in label j is left out of label j's metrics only. Tasks that read the first
    label column (binary, multi-class) drop records whose (one) label is blank.
    """
    spec = get_task(task)
    probs = np.asarray(probs)
    if spec.first_column_only:
        keep = np.isfinite(labels[:, 0])
        return compute_metrics(
            spec, labels[keep, 0].astype(np.int64), probs[keep], thresholds=thresholds, label_names=label_names
        )
    # compute_metrics reads NaN labels as blank and leaves each out of its own label only.
    return compute_metrics(spec, spec.metric_targets(labels), probs, thresholds=thresholds, label_names=label_names)


def task_thresholds(task: str | Task, labels: np.ndarray, probs: np.ndarray) -> np.ndarray | None:
    """Max-F1 thresholds per label on known values only (None for tasks without thresholds)."""
    spec = get_task(task)
    if not spec.uses_thresholds:
        return None
    y = spec.metric_targets(labels)
    if spec.first_column_only:
        return np.atleast_1d(tune_thresholds(y, np.asarray(probs)))
    probs = np.asarray(probs)
    out = np.empty(y.shape[1])
    for j in range(y.shape[1]):
        known = np.isfinite(y[:, j])
        out[j] = tune_thresholds(y[known, j : j + 1], probs[known, j : j + 1])[0] if known.any() else 0.5
    return out
