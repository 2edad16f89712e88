"""What each fine-tuning task means, in one place: outputs, loss, probabilities, decisions, metrics, monitor.

One :class:`Task` object per task, looked up by name with :func:`get_task` (as scikit-learn looks up
scorers with ``get_scorer``)::

    task = get_task("multi_label")
    task.num_outputs(labels)                 # logits the head needs
    task.loss(logits, labels, pos_weight=w)  # blank (NaN) labels are masked per label
    task.probabilities(logits)               # sigmoid / softmax / identity
    task.decisions(probs, thresholds)        # 0/1 at thresholds, argmax one-hot, or -1 (no decision)
    task.monitor, monitor_mode("mae")        # default validation metric and its direction

============  ===========  ==============  ==========================  ================================
task          outputs      loss            probabilities / decisions   default monitor (direction)
============  ===========  ==============  ==========================  ================================
multi_label   labels (L)   BCE per label   sigmoid / >= threshold      auroc (higher is better)
multi_class   classes (C)  cross-entropy   softmax / argmax            auroc (higher is better)
binary        1            BCE             sigmoid / >= threshold      auroc (higher is better)
regression    targets (D)  MSE or Huber    identity / none             mae (lower is better)
============  ===========  ==============  ==========================  ================================

Blank labels (NaN) mean "unknown": multi-label and regression leave a blank out of that label's loss
and that label's metrics only (the record still counts for its other labels); binary and multi-class
read the first label column and refuse blanks.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .config import TASKS
from .metrics import MONITORS, MetricsResult, compute_metrics, monitor_mode, tune_thresholds

__all__ = [
    "MONITORS",
    "TASKS",
    "BinaryTask",
    "MultiClassTask",
    "MultiLabelTask",
    "RegressionTask",
    "Task",
    "get_task",
    "monitor_mode",
    "probabilities",
]


class Task:
    """The behaviour of one task; see the module docstring. Instances come from :func:`get_task`.

    The base class is the per-label (sigmoid) behaviour; each task overrides what differs. A new task is a
    subclass plus one registry entry.
    """

    name: str = ""
    monitor: str = "auroc"  # default validation metric
    monitors: tuple[str, ...] = ("loss", "auroc", "auprc", "f1", "accuracy")  # metrics its validation produces
    uses_thresholds: bool = True  # per-label decision thresholds tuned on validation
    first_column_only: bool = False  # reads the first label column only (binary, multi_class)
    blanks_allowed: bool = True  # NaN = unknown label, masked per label
    activation: str | None = "sigmoid"  # "sigmoid", "softmax" or None (identity), as exported

    def __repr__(self) -> str:
        return f"get_task({self.name!r})"

    # ---- labels ---------------------------------------------------------------------------------
    def label_columns(self, labels: np.ndarray) -> np.ndarray:
        """The store label columns this task reads: (N, 1) for binary / multi-class, all otherwise."""
        return labels[:, :1] if self.first_column_only else labels

    def num_outputs(self, labels: np.ndarray) -> int:
        """Logits the head needs for store labels (N, L)."""
        return int(labels.shape[1])

    def output_names(self, label_names: Sequence[str], n_outputs: int) -> list[str]:
        """Names of the head's outputs."""
        return list(label_names)

    def invalid_labels(self, values: np.ndarray) -> tuple[np.ndarray, str]:
        """(mask of label values the loss would misuse, the rule in words) for label columns ``values``."""
        bad = np.isfinite(values) & (values != 0) & (values != 1)
        if not self.blanks_allowed:
            return bad | ~np.isfinite(values), f"{self.name} labels must be 0 or 1 (no blanks)"
        return bad, f"{self.name} labels must be 0 or 1 (blank = unknown)"

    def metric_targets(self, labels: np.ndarray) -> np.ndarray:
        """Store label columns (N, L) -> the ``y_true`` shape of :func:`~hubert_ecg.metrics.compute_metrics`."""
        return labels[:, 0].astype(np.int64) if self.first_column_only else labels

    # ---- training -------------------------------------------------------------------------------
    def training_weights(
        self, train_labels: np.ndarray, *, pos_weight: bool, class_weights: bool, n_outputs: int | None = None
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """(BCE ``pos_weight``, CE class weights) from the TRAINING rows' labels only.

        ``pos_weight`` = negatives / positives per label (known values only); class weights =
        ``N / (C * count)`` per class index (sklearn's "balanced"), one per head output: ``n_outputs``
        (the class count of the whole store) covers a class that no training row has (count taken as 1).
        """
        if not pos_weight:
            return None, None
        labels = self.label_columns(train_labels)
        pos = np.nansum(labels == 1, axis=0)
        neg = np.nansum(labels == 0, axis=0)
        return torch.tensor(neg / np.maximum(pos, 1), dtype=torch.float32), None

    def loss(
        self,
        logits: torch.Tensor,
        labels: torch.Tensor,
        *,
        pos_weight: torch.Tensor | None = None,
        class_weight: torch.Tensor | None = None,
        kind: str = "auto",
    ) -> torch.Tensor:
        """Mean loss of a batch; ``labels`` are the store label columns (B, L), NaN = unknown.

        Per-label tasks average over the known (record, label) cells only, so a blank label removes that
        cell and nothing else.
        """
        if pos_weight is not None:
            pos_weight = pos_weight.to(logits.device)
        per = F.binary_cross_entropy_with_logits(
            logits.float(), torch.nan_to_num(labels.float()), reduction="none", pos_weight=pos_weight
        )
        return _known_mean(per, labels)

    # ---- outputs --------------------------------------------------------------------------------
    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """Logits -> what metrics take (sigmoid here; softmax, one column or identity in subclasses)."""
        return torch.sigmoid(logits.float())

    def decisions(self, probs: np.ndarray, thresholds: Sequence[float] | np.ndarray | None = None) -> np.ndarray:
        """0/1 decisions for probabilities ``(..., L)`` at ``thresholds`` (0.5 when None)."""
        probs = np.asarray(probs)
        limit = np.asarray(thresholds if thresholds is not None and len(thresholds) else 0.5, dtype=np.float64)
        return (probs >= limit).astype(np.int64)

    # ---- metrics --------------------------------------------------------------------------------
    def metrics(
        self, labels: np.ndarray, probs: np.ndarray, *, thresholds: Any = None, label_names: Sequence[str] | None = None
    ) -> MetricsResult:
        """:func:`~hubert_ecg.metrics.compute_metrics` on store label columns, blanks dropped per label.

        A record with a blank in label j is left out of label j's metrics only. Binary and multi-class
        drop records whose (one) label is blank.
        """
        probs = np.asarray(probs)
        if self.first_column_only:
            keep = np.isfinite(labels[:, 0])
            return compute_metrics(
                self.name, labels[keep, 0].astype(np.int64), probs[keep], thresholds=thresholds, label_names=label_names
            )
        # compute_metrics reads NaN labels as blank and leaves each out of its own label only.
        return compute_metrics(
            self.name, self.metric_targets(labels), probs, thresholds=thresholds, label_names=label_names
        )

    def tune_thresholds(self, labels: np.ndarray, probs: np.ndarray) -> np.ndarray | None:
        """Max-F1 thresholds per label on known values only (None for tasks without thresholds)."""
        if not self.uses_thresholds:
            return None
        y = self.metric_targets(labels)
        if self.first_column_only:
            return np.atleast_1d(tune_thresholds(y, np.asarray(probs)))
        probs = np.asarray(probs)
        out = np.empty(y.shape[1])
        for j in range(y.shape[1]):
            known = np.isfinite(y[:, j])
            out[j] = tune_thresholds(y[known, j : j + 1], probs[known, j : j + 1])[0] if known.any() else 0.5
        return out


def _known_mean(per: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean of per-cell losses over the cells whose label is known (finite)."""
    known = torch.isfinite(labels)
    return (per * known).sum() / known.sum().clamp(min=1)


class MultiLabelTask(Task):
    """Independent 0/1 labels: one sigmoid output per label column, BCE, thresholds per label."""

    name = "multi_label"


class BinaryTask(Task):
    """One 0/1 label (the first column): one logit, BCE, one threshold; no blanks."""

    name = "binary"
    first_column_only = True
    blanks_allowed = False

    def num_outputs(self, labels: np.ndarray) -> int:
        return 1

    def output_names(self, label_names: Sequence[str], n_outputs: int) -> list[str]:
        return list(label_names)[:1]

    def loss(
        self,
        logits: torch.Tensor,
        labels: torch.Tensor,
        *,
        pos_weight: torch.Tensor | None = None,
        class_weight: torch.Tensor | None = None,
        kind: str = "auto",
    ) -> torch.Tensor:
        if pos_weight is not None:
            pos_weight = pos_weight.to(logits.device)
        return F.binary_cross_entropy_with_logits(logits.float()[:, 0], labels[:, 0].float(), pos_weight=pos_weight)

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(logits.float()[:, 0])  # (B,), as the labels it is scored against


class MultiClassTask(Task):
    """One class index 0..C-1 (the first column): C logits, cross-entropy, softmax, argmax decisions."""

    name = "multi_class"
    monitors = ("loss", "auroc", "auprc", "f1", "accuracy", "balanced_accuracy")
    uses_thresholds = False
    first_column_only = True
    blanks_allowed = False
    activation = "softmax"

    def num_outputs(self, labels: np.ndarray) -> int:
        column = labels[:, 0]
        finite = column[np.isfinite(column)]
        return int(finite.max()) + 1 if len(finite) else 2

    def output_names(self, label_names: Sequence[str], n_outputs: int) -> list[str]:
        names = list(label_names)
        return [f"{names[0]}={c}" for c in range(n_outputs)] if names else names

    def invalid_labels(self, values: np.ndarray) -> tuple[np.ndarray, str]:
        bad = ~np.isfinite(values) | (values < 0) | (values != np.round(values))
        return bad, "multi_class labels must be class indices 0, 1, 2 ... (no blanks)"

    def training_weights(
        self, train_labels: np.ndarray, *, pos_weight: bool, class_weights: bool, n_outputs: int | None = None
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        if not class_weights:
            return None, None
        classes = max(n_outputs or 0, self.num_outputs(train_labels))
        column = train_labels[:, 0]
        counts = np.bincount(column[np.isfinite(column)].astype(int), minlength=classes)
        return None, torch.tensor(len(train_labels) / (classes * np.maximum(counts, 1)), dtype=torch.float32)

    def loss(
        self,
        logits: torch.Tensor,
        labels: torch.Tensor,
        *,
        pos_weight: torch.Tensor | None = None,
        class_weight: torch.Tensor | None = None,
        kind: str = "auto",
    ) -> torch.Tensor:
        if class_weight is not None:
            class_weight = class_weight.to(logits.device)
        return F.cross_entropy(logits.float(), labels[:, 0].long(), weight=class_weight)

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        return logits.float().softmax(-1)

    def decisions(self, probs: np.ndarray, thresholds: Sequence[float] | np.ndarray | None = None) -> np.ndarray:
        probs = np.asarray(probs)
        out = np.zeros_like(probs, dtype=np.int64)
        np.put_along_axis(out, np.argmax(probs, axis=-1)[..., None], 1, axis=-1)
        return out


class RegressionTask(Task):
    """Real-valued targets (every label column): identity outputs, MSE (or Huber), no decisions."""

    name = "regression"
    monitor = "mae"
    monitors = ("loss", "mae", "rmse", "r2", "pearson_r")
    uses_thresholds = False
    activation = None

    def invalid_labels(self, values: np.ndarray) -> tuple[np.ndarray, str]:
        return np.isinf(values), "regression targets must be finite (blank = unknown)"

    def metric_targets(self, labels: np.ndarray) -> np.ndarray:
        return labels[:, 0] if labels.shape[1] == 1 else labels

    def training_weights(
        self, train_labels: np.ndarray, *, pos_weight: bool, class_weights: bool, n_outputs: int | None = None
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        return None, None

    def loss(
        self,
        logits: torch.Tensor,
        labels: torch.Tensor,
        *,
        pos_weight: torch.Tensor | None = None,
        class_weight: torch.Tensor | None = None,
        kind: str = "auto",
    ) -> torch.Tensor:
        """MSE, or Huber with ``kind="huber"``, over the known cells."""
        target = torch.nan_to_num(labels.float())
        loss_fn = F.huber_loss if kind == "huber" else F.mse_loss
        return _known_mean(loss_fn(logits.float(), target, reduction="none"), labels)

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        return logits[:, 0] if logits.shape[-1] == 1 else logits  # one target: (B,), as its labels

    def decisions(self, probs: np.ndarray, thresholds: Sequence[float] | np.ndarray | None = None) -> np.ndarray:
        return np.full(np.shape(probs), -1, dtype=np.int64)


_REGISTRY: dict[str, Task] = {
    task.name: task for task in (MultiLabelTask(), MultiClassTask(), BinaryTask(), RegressionTask())
}
assert tuple(_REGISTRY) == TASKS  # one list of tasks (config.TASKS is what checkpoints are checked against)


def get_task(name: str | Task | None) -> Task:
    """The :class:`Task` called ``name`` (None = multi_label, what a model without a recorded task is)."""
    if isinstance(name, Task):
        return name
    try:
        return _REGISTRY[name or "multi_label"]
    except KeyError:
        raise ValueError(f"unknown task {name!r} (choose from {', '.join(TASKS)})") from None


def probabilities(task: str | Task, logits: torch.Tensor) -> torch.Tensor:
    """Logits -> probabilities for ``task`` (see :meth:`Task.probabilities`)."""
    return get_task(task).probabilities(logits)
