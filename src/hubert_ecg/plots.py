"""Evaluation and training plots written as PNG files.

Figures are built with ``matplotlib.figure.Figure`` and rendered by the Agg canvas directly,
so nothing touches pyplot's global state or the user's interactive backend, and the module
works on headless machines and in threads. Matplotlib is imported lazily (it is slow to load).

Every function returns the path it wrote.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np

from hubert_ecg.metrics import MetricsInputError, MetricsResult

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = [
    "plot_roc_pr",
    "plot_per_label_auroc",
    "plot_confusion_matrix",
    "plot_regression",
    "plot_inertia_vs_k",
    "plot_training_curves",
]

# Beyond this many curves a legend hides the plot; the title then carries the summary.
_MAX_LEGEND_ENTRIES = 12


def _new_figure(width: float, height: float) -> Figure:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def _save(fig: Figure, path: str | Path) -> Path:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)
    fig.savefig(path, format="png")
    return path


def _binary_targets(y_true: Any, y_score: Any) -> tuple[np.ndarray, np.ndarray]:
    """(N, L) 0/1 targets and scores from multi-label, one-logit binary or class-index input."""
    y = np.asarray(y_true)
    score = np.asarray(y_score, dtype=np.float64)
    if score.ndim == 1:
        score = score[:, None]
        y = y.reshape(-1, 1)
    elif y.ndim == 1:  # class indices against (N, C) scores: one-vs-rest curves
        if y.shape[0] != score.shape[0]:
            raise MetricsInputError(f"y_true has {y.shape[0]} records but y_score has {score.shape[0]}")
        onehot = np.zeros(score.shape, dtype=bool)
        onehot[np.arange(len(y)), y.astype(np.int64)] = True
        y = onehot
    if y.shape != score.shape:
        raise MetricsInputError(f"y_true has shape {y.shape} but y_score has shape {score.shape}")
    return y.astype(bool), score


def plot_roc_pr(y_true: Any, y_score: Any, label_names: Sequence[str] | None, path: str | Path) -> Path:
    """ROC and precision-recall curves, one line per label (or class, one-vs-rest).

    Args:
        y_true: (N, L) 0/1, (N,) 0/1 with (N,) scores, or (N,) class indices with (N, C) scores.
        y_score: (N, L) / (N,) / (N, C) probabilities.
        label_names: L names (None: label_0, ...).
        path: output PNG.

    Labels without positives or negatives have no curve; the title says how many were skipped.
    """
    from sklearn.metrics import auc, precision_recall_curve, roc_curve

    y, score = _binary_targets(y_true, y_score)
    n_labels = y.shape[1]
    names = list(label_names) if label_names is not None else [f"label_{i}" for i in range(n_labels)]
    fig = _new_figure(12, 5.5)
    ax_roc, ax_pr = fig.subplots(1, 2)
    aurocs: list[float] = []
    skipped = 0
    for i in range(n_labels):
        n_pos = int(y[:, i].sum())
        if n_pos == 0 or n_pos == len(y):
            skipped += 1
            continue
        fpr, tpr, _ = roc_curve(y[:, i], score[:, i])
        precision, recall, _ = precision_recall_curve(y[:, i], score[:, i])
        area = auc(fpr, tpr)
        aurocs.append(area)
        width = 1.5 if n_labels <= _MAX_LEGEND_ENTRIES else 0.8
        ax_roc.plot(fpr, tpr, lw=width, label=f"{names[i]} ({area:.3f})")
        ax_pr.step(recall, precision, where="post", lw=width, label=names[i])
    ax_roc.plot([0, 1], [0, 1], ls="--", color="grey", lw=1, label="chance")
    ax_roc.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="False positive rate (1 - specificity)",
               ylabel="True positive rate (sensitivity)")
    ax_pr.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="Recall (sensitivity)", ylabel="Precision")
    macro = f"macro AUROC {np.mean(aurocs):.3f}" if aurocs else "no label with both classes"
    skipped_note = f", {skipped} label(s) without both classes skipped" if skipped else ""
    ax_roc.set_title(f"ROC curves ({macro}{skipped_note})")
    ax_pr.set_title("Precision-recall curves")
    if n_labels <= _MAX_LEGEND_ENTRIES:
        ax_roc.legend(loc="lower right", fontsize="small")
        if aurocs:  # no curve, no legend entry
            ax_pr.legend(loc="lower left", fontsize="small")
    for ax in (ax_roc, ax_pr):
        ax.grid(alpha=0.3)
    return _save(fig, path)


def _per_label_intervals(result_with_ci: Any, metric: str) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
    """Names, point, lower, upper (NaN where unknown) from a bootstrap dict or a MetricsResult."""
    if isinstance(result_with_ci, MetricsResult):
        if metric not in result_with_ci.per_label:
            raise MetricsInputError(f"metric '{metric}' is not in the result")
        point = np.asarray(result_with_ci.per_label[metric], dtype=np.float64)
        nan = np.full_like(point, np.nan)
        return list(result_with_ci.label_names), point, nan, nan.copy()
    if not isinstance(result_with_ci, Mapping) or "per_label" not in result_with_ci:
        raise MetricsInputError("result_with_ci must be a MetricsResult or the dict returned by bootstrap_ci")
    names = list(result_with_ci["per_label"])
    stats = []
    for name in names:
        entry = result_with_ci["per_label"][name]
        if metric not in entry:
            raise MetricsInputError(f"metric '{metric}' is missing for label '{name}'")
        stats.append([_nan_if_none(entry[metric][key]) for key in ("point", "lower", "upper")])
    array = np.asarray(stats, dtype=np.float64).reshape(-1, 3)
    return names, array[:, 0], array[:, 1], array[:, 2]


def _nan_if_none(value: Any) -> float:
    return float("nan") if value is None else float(value)


def plot_per_label_auroc(result_with_ci: Any, path: str | Path, *, metric: str = "auroc") -> Path:
    """Horizontal bars of a per-label metric, sorted, with bootstrap CI error bars.

    Args:
        result_with_ci: the dict returned by :func:`hubert_ecg.metrics.bootstrap_ci` (bars with
            intervals) or a :class:`MetricsResult` (bars only).
        path: output PNG.
        metric: per-label metric to draw (default AUROC).

    Undefined labels are listed in the title instead of being drawn as zero-length bars.
    """
    names, point, lower, upper = _per_label_intervals(result_with_ci, metric)
    defined = np.isfinite(point)
    order = np.flatnonzero(defined)[np.argsort(point[defined], kind="stable")]
    n_bars = max(len(order), 1)
    fig = _new_figure(8, min(2.0 + 0.28 * n_bars, 60.0))
    ax = fig.subplots()
    positions = np.arange(len(order))
    values = point[order]
    has_ci = np.isfinite(lower[order]) & np.isfinite(upper[order])
    ax.barh(positions, values, color="tab:blue", alpha=0.8)
    if has_ci.any():
        err = np.vstack([values - lower[order], upper[order] - values])
        err = np.where(has_ci, np.clip(err, 0, None), 0.0)
        ax.errorbar(values, positions, xerr=err, fmt="none", ecolor="black", capsize=2, lw=1)
    ax.set_yticks(positions, [names[i] for i in order], fontsize="small" if n_bars > 30 else "medium")
    low_edge = 0.0
    if metric == "auroc":
        ax.axvline(0.5, color="grey", ls="--", lw=1)
        low_edge = 0.4 if len(order) and np.nanmin(np.r_[values, lower[order]]) > 0.45 else 0.0
    ax.set_xlim(low_edge, 1.0)
    ax.set_xlabel(metric.upper() + (" (bars: point estimate, whiskers: bootstrap CI)" if has_ci.any() else ""))
    title = f"Per-label {metric.upper()}"
    n_undefined = int((~defined).sum())
    if n_undefined:
        missing = [names[i] for i in np.flatnonzero(~defined)]
        listed = ", ".join(missing) if len(missing) <= 5 else f"{len(missing)} labels"
        title += f" (undefined, not shown: {listed})"
    ax.set_title(title)
    ax.grid(axis="x", alpha=0.3)
    return _save(fig, path)


def plot_confusion_matrix(
    cm: Any, class_names: Sequence[str] | None, path: str | Path, *, normalize: bool = True
) -> Path:
    """Confusion matrix heat map (rows = true class, columns = predicted).

    Args:
        cm: (C, C) counts.
        class_names: C names (None: class_0, ...).
        path: output PNG.
        normalize: colour by row fraction (recall per class) while the cells show the counts.
    """
    matrix = np.asarray(cm, dtype=np.float64)
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
        raise MetricsInputError(f"confusion matrix must be square (C, C); got shape {matrix.shape}")
    n = matrix.shape[0]
    names = list(class_names) if class_names is not None else [f"class_{i}" for i in range(n)]
    if len(names) != n:
        raise MetricsInputError(f"class_names has {len(names)} names but the matrix has {n} classes")
    row_sums = matrix.sum(axis=1, keepdims=True)
    colour = np.divide(matrix, row_sums, out=np.zeros_like(matrix), where=row_sums > 0) if normalize else matrix
    side = min(3.0 + 0.6 * n, 30.0)
    fig = _new_figure(side + 1.5, side)
    ax = fig.subplots()
    image = ax.imshow(colour, cmap="Blues", vmin=0, vmax=1 if normalize else None)
    fig.colorbar(image, ax=ax, label="fraction of true class" if normalize else "count")
    if n <= 30:
        threshold = 0.5 * (colour.max() if colour.size else 1)
        for i in range(n):
            for j in range(n):
                ax.text(j, i, f"{int(matrix[i, j])}", ha="center", va="center", fontsize="small",
                        color="white" if colour[i, j] > threshold else "black")
    ax.set_xticks(range(n), names, rotation=45, ha="right")
    ax.set_yticks(range(n), names)
    ax.set(xlabel="Predicted class", ylabel="True class", title=f"Confusion matrix (n = {int(matrix.sum())})")
    return _save(fig, path)


def plot_regression(y_true: Any, y_pred: Any, path: str | Path, *, output_names: Sequence[str] | None = None) -> Path:
    """Predicted versus true scatter with the identity line, one panel per output.

    Args:
        y_true: (N,) or (N, D) targets.
        y_pred: predictions of the same shape.
        path: output PNG.
        output_names: D names for the panel titles.
    """
    y = np.asarray(y_true, dtype=np.float64)
    pred = np.asarray(y_pred, dtype=np.float64)
    if y.shape != pred.shape:
        raise MetricsInputError(f"y_true has shape {y.shape} but y_pred has shape {pred.shape}")
    y = y.reshape(len(y), -1)
    pred = pred.reshape(len(pred), -1)
    n_outputs = y.shape[1]
    names = list(output_names) if output_names is not None else [f"output_{i}" for i in range(n_outputs)]
    columns = min(n_outputs, 3)
    rows = math.ceil(n_outputs / columns)
    fig = _new_figure(4.5 * columns, 4.2 * rows)
    axes = np.atleast_1d(fig.subplots(rows, columns)).ravel()
    for i in range(n_outputs):
        ax = axes[i]
        ax.scatter(y[:, i], pred[:, i], s=8, alpha=0.5)
        low = float(min(y[:, i].min(), pred[:, i].min()))
        high = float(max(y[:, i].max(), pred[:, i].max()))
        ax.plot([low, high], [low, high], color="grey", ls="--", lw=1, label="y = x")
        mae = float(np.mean(np.abs(pred[:, i] - y[:, i])))
        ss_tot = float(np.sum((y[:, i] - y[:, i].mean()) ** 2))
        r2 = 1 - float(np.sum((pred[:, i] - y[:, i]) ** 2)) / ss_tot if ss_tot > 0 else float("nan")
        ax.set(xlabel="True value", ylabel="Predicted value", title=f"{names[i]}: MAE {mae:.3g}, R² {r2:.3f}")
        ax.legend(loc="upper left", fontsize="small")
        ax.grid(alpha=0.3)
    for ax in axes[n_outputs:]:
        ax.set_visible(False)
    return _save(fig, path)


def plot_inertia_vs_k(ks: Sequence[int], inertias: Sequence[float], path: str | Path) -> Path:
    """K-means inertia (sum of squared distances) against the number of clusters K (elbow plot)."""
    k = np.asarray(ks, dtype=np.float64)
    inertia = np.asarray(inertias, dtype=np.float64)
    if k.shape != inertia.shape or k.ndim != 1 or k.size == 0:
        raise MetricsInputError(f"ks and inertias must be 1-D of equal length; got {k.shape} and {inertia.shape}")
    order = np.argsort(k)
    fig = _new_figure(7, 4.5)
    ax = fig.subplots()
    ax.plot(k[order], inertia[order], marker="o")
    ax.set(xlabel="Number of clusters K", ylabel="Inertia (sum of squared distances)",
           title="K-means inertia versus K")
    ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_training_curves(history: Mapping[str, Sequence[tuple[float, float]]], path: str | Path) -> Path:
    """Training curves: losses in the left panel, every other metric in the right one.

    Args:
        history: series name -> list of (step, value), e.g. ``{"train_loss": [(0, 1.2), ...],
            "val_auroc": [(500, 0.81), ...]}``. Names containing "loss" go to the loss panel.
        path: output PNG.
    """
    if not history:
        raise MetricsInputError("history is empty: nothing to plot")
    losses = {name: series for name, series in history.items() if "loss" in name.lower()}
    others = {name: series for name, series in history.items() if name not in losses}
    panels = [(title, group) for title, group in (("Loss", losses), ("Metrics", others)) if group]
    fig = _new_figure(6.5 * len(panels), 4.5)
    axes = np.atleast_1d(fig.subplots(1, len(panels))).ravel()
    for ax, (title, group) in zip(axes, panels):
        for name, series in group.items():
            points = np.asarray(list(series), dtype=np.float64).reshape(-1, 2)
            if points.size == 0:
                continue
            ax.plot(points[:, 0], points[:, 1], marker="o" if len(points) < 30 else None, ms=3, label=name)
        ax.set(xlabel="Optimizer step", ylabel="loss" if group is losses else "metric value", title=title)
        ax.legend(fontsize="small")
        ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_ecg(signal: Any, fs: float, path: str | Path, *, model_input: Any = None, model_fs: float = 100.0,
             title: str | None = None, lead_names: Sequence[str] | None = None) -> Path:
    """The 12 leads as read (mV or stored units), and optionally what the model sees.

    ``signal`` (12, n) at ``fs``; ``model_input`` (12, m) at ``model_fs`` (the preprocessed record,
    drawn on a second axis scale so a person can check filtering, scaling and decimation).
    """
    signal = np.asarray(signal, dtype=float)
    names = list(lead_names) if lead_names is not None else ["I", "II", "III", "aVR", "aVL", "aVF",
                                                              "V1", "V2", "V3", "V4", "V5", "V6"]
    fig = _new_figure(12, 14)
    axes = fig.subplots(12, 1, sharex=True)
    t = np.arange(signal.shape[1]) / fs
    for i, ax in enumerate(axes):
        ax.plot(t, signal[i], color="black", linewidth=0.7, label="as read")
        ax.set_ylabel(names[i], rotation=0, ha="right", va="center")
        ax.grid(True, alpha=0.3)
        if model_input is not None:
            twin = ax.twinx()
            m = np.asarray(model_input)[i]
            twin.plot(np.arange(len(m)) / model_fs, m, color="tab:red", linewidth=0.7, alpha=0.8,
                      label="model input")
            twin.set_ylim(-1.2, 1.2)
            twin.tick_params(axis="y", labelsize=7, colors="tab:red")
    axes[-1].set_xlabel("time (s)")
    handles = [axes[0].lines[0]] + ([fig.axes[-1].lines[0]] if model_input is not None else [])
    fig.legend(handles, [h.get_label() for h in handles], loc="upper right")
    fig.suptitle(title or "12-lead ECG")
    return _save(fig, path)
