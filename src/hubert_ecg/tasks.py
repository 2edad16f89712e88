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

Everything that differs between tasks is declared here, as class attributes and methods, and every
other module asks the task object (no module outside this one compares task names). The metrics side
(:mod:`hubert_ecg.metrics`: ``compute_metrics``, ``task_metrics``, ``task_thresholds``) reads the
``scores`` layout, ``single_output``, ``blanks_allowed`` and ``uses_thresholds`` of a task; reports and
comparisons read ``main_metric``, ``probabilistic`` and ``metric_labels``; calibration reads
``calibrator``. This module imports neither torch nor the metrics (torch is imported inside the loss and
probability methods), so the NumPy-only layers (metrics, ONNX deployment) can use it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import TYPE_CHECKING

import numpy as np

from .config import TASKS

if TYPE_CHECKING:
    import torch

__all__ = [
    "MONITORS",
    "TASKS",
    "BinaryTask",
    "MultiClassTask",
    "MultiLabelTask",
    "RegressionTask",
    "Task",
    "get_task",
    "find_task",
    "monitor_mode",
    "probabilities",
    "register_task",
    "task_names",
]

#: Validation metrics where lower is better; every other monitor metric is better when higher.
LOWER_IS_BETTER = frozenset({"loss", "mae", "rmse"})


class Task:
    """The behaviour of one task; see the module docstring. Instances come from :func:`get_task`.

    The base class is the per-label (sigmoid) behaviour; each task overrides what differs. A new task is a
    subclass plus one :func:`register_task` call.
    """

    name: str = ""
    monitor: str = "auroc"  # default validation metric
    main_metric: str = "auroc"  # headline metric of reports, extra sections and model comparisons
    monitors: tuple[str, ...] = ("loss", "auroc", "auprc", "f1", "accuracy")  # metrics its validation produces
    uses_thresholds: bool = True  # per-label decision thresholds tuned on validation
    first_column_only: bool = False  # reads the first label column only (binary, multi_class)
    blanks_allowed: bool = True  # NaN = unknown label, masked per label
    activation: str | None = "sigmoid"  # "sigmoid", "softmax" or None (identity), as exported
    # How metrics read y_true / y_score (see hubert_ecg.metrics): "labels" = one probability per 0/1 label,
    # "classes" = softmax over the classes of one label, "values" = real-valued predictions.
    scores: str = "labels"
    single_output: bool = False  # metrics take y_true (N,) and y_score (N,): one label, one probability
    outputs_are_classes: bool = False  # the head's outputs are the classes of one label column ("NAME=c")
    # evaluation refuses a store whose label columns are not the head's outputs one to one (and warns on names)
    checks_label_columns: bool = False
    calibrator: str | None = "platt"  # post-hoc calibration of its probabilities: "platt", "temperature" or None
    metric_labels: Mapping[str, str] = MappingProxyType({})  # report names that differ for this task

    def __repr__(self) -> str:
        return f"get_task({self.name!r})"

    @property
    def probabilistic(self) -> bool:
        """Whether its outputs are probabilities (ranking metrics, positives, ROC and reliability plots, DeLong)."""
        return self.activation is not None

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

    def metric_label_names(self, label_names: Sequence[str]) -> list[str] | None:
        """The model's label names -> the ``label_names`` its metrics take (None: the metrics' defaults)."""
        return list(label_names)

    def metric_columns(
        self, y: np.ndarray, p: np.ndarray, names: list[str]
    ) -> tuple[np.ndarray, np.ndarray, list[str]]:
        """Label and prediction columns (N, K) read from CSV files -> metric shapes and names."""
        return y, p, names

    # ---- training -------------------------------------------------------------------------------
    def training_weights(
        self, train_labels: np.ndarray, *, pos_weight: bool, class_weights: bool, n_outputs: int | None = None
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """(BCE ``pos_weight``, CE class weights) from the TRAINING rows' labels only.

        ``pos_weight`` = negatives / positives per label (known values only); class weights =
        ``N / (C * count)`` per class index (sklearn's "balanced"), one per head output: ``n_outputs``
        (the class count of the whole store) covers a class that no training row has (count taken as 1).
        """
        import torch

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
        import torch
        import torch.nn.functional as F

        if pos_weight is not None:
            pos_weight = pos_weight.to(logits.device)
        per = F.binary_cross_entropy_with_logits(
            logits.float(), torch.nan_to_num(labels.float()), reduction="none", pos_weight=pos_weight
        )
        return _known_mean(per, labels)

    # ---- outputs --------------------------------------------------------------------------------
    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """Logits -> what metrics take (sigmoid here; softmax, one column or identity in subclasses)."""
        import torch

        return torch.sigmoid(logits.float())

    def decisions(self, probs: np.ndarray, thresholds: Sequence[float] | np.ndarray | None = None) -> np.ndarray:
        """0/1 decisions for probabilities ``(..., L)`` at ``thresholds`` (0.5 when None)."""
        probs = np.asarray(probs)
        limit = np.asarray(thresholds if thresholds is not None and np.size(thresholds) else 0.5, dtype=np.float64)
        return (probs >= limit).astype(np.int64)


def _known_mean(per: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean of per-cell losses over the cells whose label is known (finite)."""
    import torch

    known = torch.isfinite(labels)
    return (per * known).sum() / known.sum().clamp(min=1)


class MultiLabelTask(Task):
    """Independent 0/1 labels: one sigmoid output per label column, BCE, thresholds per label."""

    name = "multi_label"
    checks_label_columns = True


class BinaryTask(Task):
    """One 0/1 label (the first column): one logit, BCE, one threshold; no blanks."""

    name = "binary"
    first_column_only = True
    blanks_allowed = False
    single_output = True

    def num_outputs(self, labels: np.ndarray) -> int:
        return 1

    def output_names(self, label_names: Sequence[str], n_outputs: int) -> list[str]:
        return list(label_names)[:1]

    def metric_label_names(self, label_names: Sequence[str]) -> list[str] | None:
        return list(label_names)[:1] or None

    def metric_columns(
        self, y: np.ndarray, p: np.ndarray, names: list[str]
    ) -> tuple[np.ndarray, np.ndarray, list[str]]:
        return y[:, 0], p[:, 0], names[:1]

    def loss(
        self,
        logits: torch.Tensor,
        labels: torch.Tensor,
        *,
        pos_weight: torch.Tensor | None = None,
        class_weight: torch.Tensor | None = None,
        kind: str = "auto",
    ) -> torch.Tensor:
        import torch.nn.functional as F

        if pos_weight is not None:
            pos_weight = pos_weight.to(logits.device)
        return F.binary_cross_entropy_with_logits(logits.float()[:, 0], labels[:, 0].float(), pos_weight=pos_weight)

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        import torch

        return torch.sigmoid(logits.float()[:, 0])  # (B,), as the labels it is scored against


class MultiClassTask(Task):
    """One class index 0..C-1 (the first column): C logits, cross-entropy, softmax, argmax decisions."""

    name = "multi_class"
    monitors = ("loss", "auroc", "auprc", "f1", "accuracy", "balanced_accuracy")
    uses_thresholds = False
    first_column_only = True
    blanks_allowed = False
    activation = "softmax"
    scores = "classes"
    outputs_are_classes = True
    calibrator = "temperature"
    # its decisions are the argmax, not a 0.5 cut
    metric_labels = MappingProxyType(
        {
            "f1": "F1",
            "precision": "PPV (precision)",
            "npv": "NPV",
            "sensitivity": "Sensitivity",
            "specificity": "Specificity",
            "accuracy": "Accuracy (micro)",
            "brier": "Brier score (multi-class)",
        }
    )

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

    def metric_label_names(self, label_names: Sequence[str]) -> list[str] | None:
        return None

    def metric_columns(
        self, y: np.ndarray, p: np.ndarray, names: list[str]
    ) -> tuple[np.ndarray, np.ndarray, list[str]]:
        return y[:, 0], p, names

    def training_weights(
        self, train_labels: np.ndarray, *, pos_weight: bool, class_weights: bool, n_outputs: int | None = None
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        import torch

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
        import torch.nn.functional as F

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
    main_metric = "mae"
    monitors = ("loss", "mae", "rmse", "r2", "pearson_r")
    uses_thresholds = False
    activation = None
    scores = "values"
    calibrator = None

    def invalid_labels(self, values: np.ndarray) -> tuple[np.ndarray, str]:
        return np.isinf(values), "regression targets must be finite (blank = unknown)"

    def metric_targets(self, labels: np.ndarray) -> np.ndarray:
        return labels[:, 0] if labels.shape[1] == 1 else labels

    def metric_columns(
        self, y: np.ndarray, p: np.ndarray, names: list[str]
    ) -> tuple[np.ndarray, np.ndarray, list[str]]:
        return (y[:, 0], p[:, 0], names) if y.shape[1] == 1 else (y, p, names)

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
        import torch
        import torch.nn.functional as F

        target = torch.nan_to_num(labels.float())
        loss_fn = F.huber_loss if kind == "huber" else F.mse_loss
        return _known_mean(loss_fn(logits.float(), target, reduction="none"), labels)

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        return logits[:, 0] if logits.shape[-1] == 1 else logits  # one target: (B,), as its labels

    def decisions(self, probs: np.ndarray, thresholds: Sequence[float] | np.ndarray | None = None) -> np.ndarray:
        return np.full(np.shape(probs), -1, dtype=np.int64)


_REGISTRY: dict[str, Task] = {}

#: Every validation metric a fine-tuning run can monitor, with its direction ("min": lower is better): the
#: union of the registered tasks' ``monitors`` (lower-is-better first). The one list used by
#: ``FinetuneOptions``, the recipes and the ``--monitor`` choices; updated in place by :func:`register_task`.
MONITORS: dict[str, str] = {}


def register_task(task: Task) -> Task:
    """Add ``task`` to the registry (by its ``name``) and its monitor metrics to :data:`MONITORS`."""
    if not task.name:
        raise ValueError(f"{type(task).__name__} has no name")
    _REGISTRY[task.name] = task
    metrics = dict.fromkeys(m for t in _REGISTRY.values() for m in t.monitors)
    ordered = sorted(metrics, key=lambda m: m not in LOWER_IS_BETTER)  # stable: keeps first appearance order
    MONITORS.clear()
    MONITORS.update({m: "min" if m in LOWER_IS_BETTER else "max" for m in ordered})
    return task


for _task in (MultiLabelTask(), MultiClassTask(), BinaryTask(), RegressionTask()):
    register_task(_task)
assert tuple(_REGISTRY) == TASKS  # one list of tasks (config.TASKS is what checkpoints are checked against)


def task_names() -> tuple[str, ...]:
    """Names of the registered tasks, in registration order."""
    return tuple(_REGISTRY)


def find_task(name: str | Task | None) -> Task | None:
    """Like :func:`get_task`, but None for a name that is not registered."""
    if isinstance(name, Task):
        return name
    return _REGISTRY.get(name or "multi_label")


def get_task(name: str | Task | None) -> Task:
    """The :class:`Task` called ``name`` (None = multi_label, what a model without a recorded task is)."""
    task = find_task(name)
    if task is None:
        raise ValueError(f"unknown task {name!r} (choose from {', '.join(_REGISTRY)})")
    return task


def monitor_mode(metric: str) -> str:
    """``"min"`` or ``"max"``: the direction of a monitor metric (unknown names are a one-line error)."""
    try:
        return MONITORS[metric]
    except KeyError:
        raise ValueError(f"unknown monitor metric {metric!r} (choose from {', '.join(MONITORS)})") from None


def probabilities(task: str | Task, logits: torch.Tensor) -> torch.Tensor:
    """Logits -> probabilities for ``task`` (see :meth:`Task.probabilities`)."""
    return get_task(task).probabilities(logits)
