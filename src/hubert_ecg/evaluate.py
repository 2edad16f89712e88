"""Evaluation of a fine-tuned model on a store split: windows/TTA, metrics with CIs, plots, report.

Outputs in ``OUT/``: ``probabilities.csv`` (one row per record, keyed by record id),
``metrics.json`` (point estimates, bootstrap intervals, settings) and ``metrics_per_label.csv``
(both written by :func:`hubert_ecg.report.write_report`),
PNG plots, and ``report.html`` / ``report.md``.
"""

from __future__ import annotations

import csv
import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from .atomic import atomic_path, atomic_write_json, check_writable
from .loader import StoreWindows, evaluation_windows, window_batches
from .model import HubertECG
from .store import ECGStore


def probabilities(task: str, logits: torch.Tensor) -> torch.Tensor:
    """Logits -> what metrics take: sigmoid (multi-label, binary), softmax (multi-class), identity (regression)."""
    if task == "multi_class":
        return logits.float().softmax(-1)
    if task == "regression":  # one target: (B,), as the labels it is scored against
        return logits.float()[:, 0] if logits.shape[-1] == 1 else logits.float()
    if task == "binary":
        return torch.sigmoid(logits.float()[:, 0])
    return torch.sigmoid(logits.float())


def targets_for_metrics(task: str, labels: np.ndarray) -> np.ndarray:
    """Store label columns (N, L) -> the y_true shape of :func:`hubert_ecg.metrics.compute_metrics`."""
    if task in ("multi_class", "binary"):
        return labels[:, 0].astype(np.int64)
    if task == "regression" and labels.shape[1] == 1:
        return labels[:, 0]
    return labels


@dataclass
class Scores:
    record_ids: np.ndarray  # (N,)
    probabilities: np.ndarray  # (N, L) or (N,)
    labels: np.ndarray | None  # (N, L) store label columns of each record
    loss: float | None
    n_windows: int


@torch.no_grad()
def score_rows(model: HubertECG, store: ECGStore, rows: np.ndarray, *, task: str,
               device: torch.device | str = "cpu", autocast: Callable[[], Any] | None = None,
               windows: str = "first", n_crops: int = 3, aggregate: str = "mean", stride: int | None = None,
               batch_size: int = 64, seed: int = 0,
               loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None) -> Scores:
    """Run the model over evaluation windows of ``rows`` and aggregate per record (mean or max)."""
    from contextlib import nullcontext

    from .metrics import aggregate_windows

    device = torch.device(device)
    autocast = autocast or nullcontext
    has_labels = store.labels is not None
    dataset = StoreWindows(store, crop="given", labels=has_labels, seed=seed)
    win = evaluation_windows(store, rows, window=dataset.window, mode=windows, n_crops=n_crops,
                             stride=stride, seed=seed)
    probs, losses, weights = [], [], []
    for item in window_batches(win, batch_size):
        batch = dataset[item]
        x = batch["input"].to(device)
        mask = None if batch["full"] else batch["attention_mask"].to(device)
        with autocast():
            logits = model(x, mask).logits
        if loss_fn is not None and has_labels:
            losses.append(float(loss_fn(logits, batch["labels"].to(device))))
            weights.append(len(x))
        probs.append(probabilities(task, logits).cpu().numpy())
    window_probs = np.concatenate(probs)
    groups, agg = aggregate_windows(window_probs, win.groups, how=aggregate)
    first_row: dict[int, int] = {}
    for r, g in zip(win.rows, win.groups):
        first_row.setdefault(int(g), int(r))
    labels = store.labels[[first_row[int(g)] for g in groups]] if has_labels else None
    loss = float(np.average(losses, weights=weights)) if losses else None
    return Scores(win.record_ids[groups], agg, labels, loss, len(win.rows))


def check_compatible(model: HubertECG, store: ECGStore) -> None:
    """The store must have been prepared the way the model expects, with matching label columns."""
    spec = model.info.preprocessing
    if spec is not None and spec != store.spec.to_dict():
        diffs = [k for k in spec if spec.get(k) != store.spec.to_dict().get(k)]
        raise ValueError(f"{store.path}: prepared with a different preprocessing than the model expects "
                         f"(differs in: {', '.join(diffs)}); prepare it again with the model's spec")
    head = model.config.head
    if head is None:
        raise ValueError("this model has no classification head; fine-tune it first")
    if store.labels is None:
        raise ValueError(f"{store.path}: the store has no labels to evaluate against")
    if model.info.task == "multi_label" and store.labels.shape[1] != head.num_labels:
        raise ValueError(f"the model predicts {head.num_labels} labels but {store.path} has "
                         f"{store.labels.shape[1]} label columns")
    names = model.info.label_names
    if names and model.info.task == "multi_label" and list(names) != list(store.label_names):
        warnings.warn("label names differ between the model and the store; columns are matched by position")


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


def evaluate(checkpoint: str | Path, store_path: str | Path, out_dir: str | Path, *, split: str = "test",
             windows: str = "first", n_crops: int = 3, aggregate: str = "mean", stride: int | None = None,
             batch_size: int = 64, n_bootstrap: int = 1000, seed: int = 0, device: str = "auto",
             data_note: str | None = None, title: str | None = None) -> dict[str, Any]:
    """Evaluate a fine-tuned model on a split of a store and write the report; returns a summary."""
    from .checkpoint import load_model
    from .distributed import DistEnv, default_device
    from .metrics import bootstrap_ci, compute_metrics
    from . import plots
    from .report import write_report
    from .training import autocast_context

    out = check_writable(out_dir)
    device_ = default_device(DistEnv(), device)
    model = load_model(checkpoint, device=device_)
    store = ECGStore(store_path)
    check_compatible(model, store)
    task = model.info.task or "multi_label"
    rows = store.rows(split) if split else store.rows()
    if len(rows) == 0:
        raise ValueError(f"{store.path}: no rows in split {split!r} (splits present: "
                         f"{', '.join(sorted(set(store.splits.tolist()))) or 'none'})")
    autocast = autocast_context(device_, torch.bfloat16 if device_.type == "cuda" else None)
    scores = score_rows(model, store, rows, task=task, device=device_, autocast=autocast, windows=windows,
                        n_crops=n_crops, aggregate=aggregate, stride=stride, batch_size=batch_size, seed=seed)
    label_names = model.info.label_names or store.label_names
    write_probabilities(out / "probabilities.csv", scores, list(label_names))
    y_true = targets_for_metrics(task, scores.labels)
    known = np.isfinite(scores.labels).all(axis=1)
    if not known.all():
        warnings.warn(f"{int((~known).sum())} records with blank labels were left out of the metrics")
    y_true, y_score = y_true[known], scores.probabilities[known]
    thresholds = model.info.thresholds if task in ("multi_label", "binary") else None
    names = list(label_names) if task != "multi_class" else None
    if task == "binary":
        names = list(label_names)[:1] or None
    result = compute_metrics(task, y_true, y_score, thresholds=thresholds, label_names=names)
    ci = bootstrap_ci(task, y_true, y_score, n_resamples=n_bootstrap, seed=seed, thresholds=thresholds,
                      label_names=names) if n_bootstrap > 0 else None
    figures: dict[str, Path] = {}
    if task in ("multi_label", "binary", "multi_class"):
        figures["ROC and precision-recall curves"] = plots.plot_roc_pr(y_true, y_score, names, out / "roc_pr.png")
        if ci is not None:
            figures["AUROC per label with 95% CI"] = plots.plot_per_label_auroc(ci, out / "auroc_per_label.png")
    if task == "multi_class" and result.confusion_matrix is not None:
        figures["Confusion matrix"] = plots.plot_confusion_matrix(result.confusion_matrix, list(label_names) or
                                                                  [str(i) for i in range(len(result.confusion_matrix))],
                                                                  out / "confusion_matrix.png")
    if task == "regression":
        figures["Predicted vs true"] = plots.plot_regression(y_true, y_score, out / "regression.png")
    note = data_note or (f"Evaluated on split '{split}' of {store.path} ({len(scores.record_ids)} records). "
                         "Check the data provenance before drawing clinical conclusions.")
    report = write_report(out, title=title or f"HuBERT-ECG evaluation: {Path(str(checkpoint)).name}",
                          metrics_result=result, ci=ci, plots=figures, data_note=note,
                          extra={"checkpoint": str(checkpoint), "store": str(store.path), "split": split,
                                 "windows": windows, "aggregate": aggregate, "records": len(scores.record_ids),
                                 "windows scored": scores.n_windows, "bootstrap resamples": n_bootstrap})
    summary = {"report": str(report), "records": int(len(scores.record_ids)), "macro": result.macro,
               "undefined_labels": result.undefined_labels, "out": str(out)}
    if ci is not None:
        summary["macro_ci"] = ci.get("macro")
    atomic_write_json(out / "summary.json", summary)
    return summary
