"""Evaluation and training plots written as PNG files.

Figures are built with ``matplotlib.figure.Figure`` and rendered by the Agg canvas directly,
so nothing touches pyplot's global state or the user's interactive backend, and the module
works on headless machines and in threads. Matplotlib is imported lazily (it is slow to load).

Every function returns the path it wrote.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

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


PNG_SOFTWARE = "hubert-ecg"


def _save(fig: Figure, path: str | Path) -> Path:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)
    # The mark lets a later command tell our figure from a user's file before replacing it.
    fig.savefig(path, format="png", metadata={"Software": PNG_SOFTWARE})
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
    ax_roc.set(
        xlim=(0, 1),
        ylim=(0, 1.01),
        xlabel="False positive rate (1 - specificity)",
        ylabel="True positive rate (sensitivity)",
    )
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
                ax.text(
                    j,
                    i,
                    f"{int(matrix[i, j])}",
                    ha="center",
                    va="center",
                    fontsize="small",
                    color="white" if colour[i, j] > threshold else "black",
                )
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
    ax.set(xlabel="Number of clusters K", ylabel="Inertia (sum of squared distances)", title="K-means inertia versus K")
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


def plot_ecg(
    signal: Any,
    fs: float,
    path: str | Path,
    *,
    model_input: Any = None,
    model_fs: float = 100.0,
    title: str | None = None,
    lead_names: Sequence[str] | None = None,
) -> Path:
    """The 12 leads as read (mV or stored units), and optionally what the model sees.

    ``signal`` (12, n) at ``fs``; ``model_input`` (12, m) at ``model_fs`` (the preprocessed record,
    drawn on a second axis scale so a person can check filtering, scaling and decimation).
    """
    signal = np.asarray(signal, dtype=float)
    names = (
        list(lead_names)
        if lead_names is not None
        else ["I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6"]
    )
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
            twin.plot(np.arange(len(m)) / model_fs, m, color="tab:red", linewidth=0.7, alpha=0.8, label="model input")
            twin.set_ylim(-1.2, 1.2)
            twin.tick_params(axis="y", labelsize=7, colors="tab:red")
    axes[-1].set_xlabel("time (s)")
    handles = [axes[0].lines[0]] + ([fig.axes[-1].lines[0]] if model_input is not None else [])
    fig.legend(handles, [h.get_label() for h in handles], loc="upper right")
    fig.suptitle(title or "12-lead ECG")
    return _save(fig, path)


# --------------------------------------------------------------------------------------------
# Clinical evaluation: reliability diagrams, interval (forest) plots, side-by-side comparison
# --------------------------------------------------------------------------------------------


def plot_reliability(
    y_true: Any,
    y_score: Any,
    label_names: Sequence[str] | None,
    path: str | Path,
    *,
    n_bins: int | None = None,
    max_panels: int = 12,
) -> Path:
    """Reliability diagram per label: observed frequency vs mean predicted probability per bin.

    The bins are the ECE bins of :func:`hubert_ecg.metrics.ece_bin_index` (equal width, right-closed);
    marker area is proportional to the records in the bin, the dashed diagonal is perfect
    calibration and each panel title carries the label's ECE. Beyond ``max_panels`` labels the
    ones with the most positives are drawn (the title says how many are not shown).
    """
    from .metrics import ECE_BINS, ece_bin_index

    bins = n_bins or ECE_BINS
    y, score = _binary_targets(y_true, y_score)
    names = list(label_names) if label_names is not None else [f"label_{i}" for i in range(y.shape[1])]
    order = np.argsort(-y.sum(axis=0), kind="stable")[:max_panels]
    cols = min(4, len(order))
    rows = math.ceil(len(order) / cols)
    fig = _new_figure(3.2 * cols, 3.0 * rows + 0.4)
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
    for ax, j in zip(axes, order):
        b = ece_bin_index(score[:, j], bins)
        counts = np.bincount(b, minlength=bins)
        used = counts > 0
        mean_p = np.bincount(b, weights=score[:, j], minlength=bins)[used] / counts[used]
        freq = np.bincount(b, weights=y[:, j].astype(float), minlength=bins)[used] / counts[used]
        ece = float((counts[used] * np.abs(freq - mean_p)).sum() / len(b))
        ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1)
        ax.plot(mean_p, freq, color="tab:blue", lw=1)
        ax.scatter(mean_p, freq, s=15 + 200 * counts[used] / counts.max(), color="tab:blue", alpha=0.7, zorder=3)
        ax.set(xlim=(0, 1), ylim=(0, 1), title=f"{names[j]} (ECE {ece:.3f})")
        ax.grid(alpha=0.3)
    for ax in axes[len(order) :]:
        ax.set_visible(False)
    fig.supxlabel("mean predicted probability (bin)")
    fig.supylabel("observed frequency of positives")
    hidden = y.shape[1] - len(order)
    fig.suptitle(
        f"Reliability diagrams ({bins} equal-width bins, marker area = records)"
        + (f"; {hidden} label(s) not shown" if hidden > 0 else "")
    )
    return _save(fig, path)


def plot_intervals(
    rows: Sequence[tuple[str, float, float, float]],
    path: str | Path,
    *,
    xlabel: str,
    title: str,
    reference: float | None = None,
    groups: Sequence[str] | None = None,
) -> Path:
    """Forest plot: one line per (name, point, lower, upper); NaN intervals show the point only.

    ``reference`` draws a vertical dashed line (0 for differences, 0.5 for AUROC); ``groups``
    (one per row) separates blocks, e.g. the columns of a subgroup analysis.
    """
    n = max(len(rows), 1)
    fig = _new_figure(8, min(1.5 + 0.3 * n, 40.0))
    ax = fig.subplots()
    y = np.arange(len(rows))[::-1]
    for yi, (_, point, lower, upper) in zip(y, rows):
        if math.isfinite(lower) and math.isfinite(upper):
            ax.plot([lower, upper], [yi, yi], color="black", lw=1.2)
        if math.isfinite(point):
            ax.plot([point], [yi], "s", color="tab:blue", ms=5)
    ax.set_yticks(y, [r[0] for r in rows], fontsize="small")
    if groups is not None:
        for i in range(1, len(rows)):
            if groups[i] != groups[i - 1]:
                ax.axhline(y[i] + 0.5, color="grey", lw=0.6)
    if reference is not None:
        ax.axvline(reference, color="grey", ls="--", lw=1)
    ax.set_xlabel(xlabel)
    ax.set_title(title)
    ax.grid(axis="x", alpha=0.3)
    return _save(fig, path)


def plot_compare(
    names: Sequence[str],
    a: Sequence[tuple[float, float, float]],
    b: Sequence[tuple[float, float, float]],
    path: str | Path,
    *,
    labels: tuple[str, str] = ("A", "B"),
    metric: str = "AUROC",
) -> Path:
    """Side-by-side horizontal bars of a per-label metric for two models, with CI whiskers."""
    n = max(len(names), 1)
    fig = _new_figure(8, min(1.8 + 0.45 * n, 60.0))
    ax = fig.subplots()
    pos = np.arange(len(names))
    for offset, values, label, colour in ((-0.2, a, labels[0], "tab:grey"), (0.2, b, labels[1], "tab:blue")):
        arr = np.asarray(values, dtype=np.float64).reshape(-1, 3)
        ax.barh(pos + offset, np.nan_to_num(arr[:, 0]), height=0.38, color=colour, alpha=0.85, label=label)
        ok = np.isfinite(arr[:, 1]) & np.isfinite(arr[:, 2])
        if ok.any():
            err = np.clip(np.vstack([arr[:, 0] - arr[:, 1], arr[:, 2] - arr[:, 0]]), 0, None)
            err[:, ~ok] = 0
            ax.errorbar(np.nan_to_num(arr[:, 0]), pos + offset, xerr=err, fmt="none", ecolor="black", capsize=2, lw=1)
    ax.set_yticks(pos, list(names), fontsize="small")
    ax.set_xlabel(f"{metric} (whiskers: bootstrap CI)")
    ax.legend(loc="lower right", fontsize="small")
    ax.grid(axis="x", alpha=0.3)
    ax.set_title(f"{metric} per label: {labels[0]} vs {labels[1]}")
    return _save(fig, path)


# --------------------------------------------------------------------------------------------
# Clinical 12-lead ECG: 3x4 layout + rhythm strip on ECG paper
# --------------------------------------------------------------------------------------------

#: Standard 3x4 layout: rows of (lead, column) -- each column shows the next 2.5 s of a 10 s record.
CLINICAL_LAYOUT: tuple[tuple[str, ...], ...] = (
    ("I", "aVR", "V1", "V4"),
    ("II", "aVL", "V2", "V5"),
    ("III", "aVF", "V3", "V6"),
)
_STANDARD = ("I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6")
_ROW_MM = 37.5  # vertical room per row on the paper (mm); +-1.9 mV at 10 mm/mV


def _paper_grid(width_mm: float, height_mm: float) -> tuple[Any, Any]:
    """Minor (1 mm) and major (5 mm) grid as two LineCollections (two draw calls, not hundreds)."""
    from matplotlib.collections import LineCollection

    def lines(step: float) -> np.ndarray:
        xs = np.arange(0.0, width_mm + 1e-9, step)
        ys = np.arange(0.0, height_mm + 1e-9, step)
        vertical = np.stack([np.stack([xs, np.zeros_like(xs)], 1), np.stack([xs, np.full_like(xs, height_mm)], 1)], 1)
        horizontal = np.stack([np.stack([np.zeros_like(ys), ys], 1), np.stack([np.full_like(ys, width_mm), ys], 1)], 1)
        return np.concatenate([vertical, horizontal])

    # list(...): a sequence of (2, 2) segments, which is what LineCollection is typed to take
    minor = LineCollection(list(lines(1.0)), colors="#f6c3c3", linewidths=0.3, zorder=0)
    major = LineCollection(list(lines(5.0)), colors="#e88b8b", linewidths=0.6, zorder=0)
    return minor, major


def ecg_figure(
    signal: Any,
    fs: float,
    *,
    lead_names: Sequence[str] | None = None,
    title: str | None = None,
    attribution: Any = None,
    rhythm_lead: str = "II",
    speed_mm_s: float = 25.0,
    gain_mm_mv: float = 10.0,
    duration_s: float | None = None,
    fig: Figure | None = None,
    dpi: int = 100,
) -> Figure:
    """A 12-lead ECG on ECG paper: standard 3x4 layout plus a rhythm strip, as printed in clinics.

    Args:
        signal: (12, n) in mV, rows in the standard order I, II, III, aVR, aVL, aVF, V1-V6
            (or in the order of ``lead_names``). Missing leads (all-NaN) are drawn as a gap.
        fs: sampling rate of ``signal`` in Hz.
        attribution: optional (12, n) relevance on the same time base (absolute value used), drawn
            as a red heat band behind each trace (white = none, dark red = the record's maximum), e.g. from
            :func:`hubert_ecg.explain.explain_record`.
        rhythm_lead: lead of the full-length strip at the bottom.
        speed_mm_s, gain_mm_mv: paper speed and gain (25 mm/s, 10 mm/mV standard); the figure is
            sized so 1 mm on the grid is 1 mm on paper at ``dpi``.
        duration_s: time drawn (default: the record, at most 10 s); the 3x4 columns split it in four.
        fig: a Figure to draw into (cleared first); reuse one for many records, it is much faster.

    Returns:
        the matplotlib Figure (render with ``fig.savefig``; nothing touches pyplot).
    """
    x = np.asarray(signal, dtype=np.float64)
    index = _clinical_lead_index(x, lead_names, rhythm_lead)
    paper = _Paper.layout(x, fs, speed_mm_s, gain_mm_mv, duration_s, title)
    fig, ax = _paper_axes(fig, paper, dpi)
    attr = _normalised_attribution(attribution, x, paper.n_show)
    panels = _Panels(x, index, paper, ax, attr)
    for r, row in enumerate(CLINICAL_LAYOUT):
        base = paper.height_mm - (r + 0.5) * _ROW_MM
        for c, lead in enumerate(row):
            start = int(round(c * paper.col_s * fs))
            stop = min(paper.n_show, int(round((c + 1) * paper.col_s * fs)) + 1)
            if stop - start > 1:
                panels.add(lead, start, stop, c * paper.col_s * speed_mm_s, base)
    panels.add(rhythm_lead, 0, paper.n_show, 0.0, 0.5 * _ROW_MM)
    panels.finish()
    _annotate(fig, ax, paper, rhythm_lead, title)
    return fig


def _clinical_lead_index(x: np.ndarray, lead_names: Sequence[str] | None, rhythm_lead: str) -> dict[str, int]:
    """Row of each lead in ``x``; the layout's leads and the rhythm lead must all be there."""
    names = list(lead_names) if lead_names is not None else list(_STANDARD)
    if x.ndim != 2 or x.shape[0] != len(names):
        raise MetricsInputError(
            f"expected a ({len(names)}, samples) signal for leads {', '.join(names)}; got shape {x.shape}"
        )
    index = {name: i for i, name in enumerate(names)}
    missing = [lead for row in CLINICAL_LAYOUT for lead in row if lead not in index]
    if missing or rhythm_lead not in index:
        raise MetricsInputError(f"the clinical layout needs leads {', '.join(missing or [rhythm_lead])}")
    return index


@dataclass(frozen=True)
class _Paper:
    """Geometry of one clinical ECG page: time shown, paper size in mm and figure size in inches."""

    fs: float
    speed_mm_s: float
    gain_mm_mv: float
    total_s: float
    n_show: int
    col_s: float
    width_mm: float
    height_mm: float
    size: tuple[float, float]
    margin_in: float = 0.3

    @classmethod
    def layout(
        cls, x: np.ndarray, fs: float, speed_mm_s: float, gain_mm_mv: float, duration_s: float | None, title: str | None
    ) -> _Paper:
        total_s = duration_s if duration_s is not None else min(x.shape[1] / fs, 10.0)
        n_show = min(x.shape[1], int(round(total_s * fs)))
        width_mm = total_s * speed_mm_s
        height_mm = (len(CLINICAL_LAYOUT) + 1) * _ROW_MM
        margin_in = 0.3
        size = (width_mm / 25.4 + 2 * margin_in, height_mm / 25.4 + 2 * margin_in + (0.3 if title else 0.0))
        return cls(fs, speed_mm_s, gain_mm_mv, total_s, n_show, total_s / 4.0, width_mm, height_mm, size, margin_in)


def _paper_axes(fig: Figure | None, paper: _Paper, dpi: int) -> tuple[Figure, Any]:
    """``fig`` (new, or cleared and resized) with one axes spanning the paper, grid drawn."""
    size, margin_in = paper.size, paper.margin_in
    if fig is None:
        from matplotlib.figure import Figure as _Figure

        fig = _Figure(figsize=size, dpi=dpi)
    else:
        fig.clear()
        fig.set_size_inches(*size)
    ax = fig.add_axes(
        (
            margin_in / size[0],
            margin_in / size[1],
            (paper.width_mm / 25.4) / size[0],
            (paper.height_mm / 25.4) / size[1],
        )
    )
    minor, major = _paper_grid(paper.width_mm, paper.height_mm)
    ax.add_collection(minor)
    ax.add_collection(major)
    return fig, ax


def _normalised_attribution(attribution: Any, x: np.ndarray, n_show: int) -> np.ndarray | None:
    """``|attribution|`` scaled so the largest value shown is 1 (all zeros when there is none)."""
    if attribution is None:
        return None
    attr = np.abs(np.asarray(attribution, dtype=np.float64))
    if attr.shape != x.shape:
        raise MetricsInputError(f"attribution has shape {attr.shape} but the signal has {x.shape}")
    top = np.nanmax(attr[:, :n_show]) if n_show else 0.0
    return attr / top if top > 0 else np.zeros_like(attr)


class _Panels:
    """Collects the trace of every panel (drawn at the end as one LineCollection) and its label;
    the relevance band of a panel is drawn as it is added."""

    def __init__(self, x: np.ndarray, index: dict[str, int], paper: _Paper, ax: Any, attr: np.ndarray | None) -> None:
        self.x, self.index, self.paper, self.ax, self.attr = x, index, paper, ax, attr
        self.traces: list[np.ndarray] = []
        self.labels: list[tuple[float, float, str]] = []

    def add(self, lead: str, start: int, stop: int, x0_mm: float, base_mm: float) -> None:
        paper = self.paper
        row = self.x[self.index[lead], start:stop]
        t_mm = x0_mm + np.arange(stop - start) / paper.fs * paper.speed_mm_s
        # One polyline per panel (a NaN breaks it at a missing stretch): 13 paths, not 10^4 segments.
        self.traces.append(np.stack([t_mm, base_mm + paper.gain_mm_mv * row], axis=1))
        self.labels.append((x0_mm + 1.0, base_mm + 0.3 * _ROW_MM, lead))
        if self.attr is not None:
            # Relevance as a heat band behind the trace: one small image per panel.
            band = self.attr[self.index[lead], start:stop][None, :]
            self.ax.imshow(
                band,
                extent=(t_mm[0], t_mm[-1], base_mm - 0.45 * _ROW_MM, base_mm + 0.45 * _ROW_MM),
                cmap="Reds",
                vmin=0.0,
                vmax=1.0,
                alpha=0.55,
                aspect="auto",
                interpolation="nearest",
                zorder=1,
            )

    def finish(self) -> None:
        """The traces, then column separators and the lead names."""
        from matplotlib.collections import LineCollection

        paper, ax = self.paper, self.ax
        ax.add_collection(LineCollection(self.traces, colors="black", linewidths=0.7, zorder=2))
        for r in range(len(CLINICAL_LAYOUT)):
            base = paper.height_mm - (r + 0.5) * _ROW_MM
            for c in range(1, 4):
                ax.plot([c * paper.col_s * paper.speed_mm_s] * 2, [base - 3, base + 3], color="black", lw=0.8, zorder=2)
        for text_x, text_y, lead in self.labels:
            ax.text(text_x, text_y, lead, fontsize=8, fontweight="bold", zorder=3)


def _annotate(fig: Figure, ax: Any, paper: _Paper, rhythm_lead: str, title: str | None) -> None:
    """Axes limits at paper scale, the speed/gain note and the title."""
    ax.set_xlim(0, paper.width_mm)
    ax.set_ylim(0, paper.height_mm)
    ax.set_aspect("equal")
    ax.set_axis_off()
    size, margin_in = paper.size, paper.margin_in
    note = f"{paper.speed_mm_s:g} mm/s, {paper.gain_mm_mv:g} mm/mV, rhythm strip: lead {rhythm_lead}"
    fig.text(margin_in / size[0], 0.15 * margin_in / size[1], note, fontsize=7)
    if title:
        fig.text(margin_in / size[0], 1 - 0.6 * margin_in / size[1], title, fontsize=10, va="top")


def save_figure(fig: Figure, path: str | Path) -> Path:
    """Render a Figure to PNG with the Agg canvas (no pyplot)."""
    return _save(fig, path)
