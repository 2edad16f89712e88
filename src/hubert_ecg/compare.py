"""Paired comparison of two models scored on the same records: bootstrap differences and DeLong.

Two models evaluated on the *same* records are correlated: a record that is hard for one is
usually hard for the other. Comparing two separate confidence intervals ignores that and is far
too conservative. Here both models are judged on the same resamples:

* :func:`paired_bootstrap` draws record resamples once and computes every metric of both models
  on each, so the interval of ``B - A`` reflects the pairing (percentile or BCa, optional
  stratification; the same vectorised core as :func:`hubert_ecg.metrics.bootstrap_ci`). The
  two-sided bootstrap p-value is ``2 * min(P(diff <= 0), P(diff >= 0))`` over the resamples, never
  below ``1 / resamples`` (the resolution of the bootstrap).
* :func:`delong_test` is DeLong, DeLong & Clarke-Pearson (1988) for correlated AUROCs, computed
  with the fast midrank algorithm of Sun & Xu (2014), O(N log N) per label.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from .metrics import (
    MetricsInputError,
    MetricsResult,
    _bootstrap_replicates,
    _check_ci_settings,
    _jackknife,
    _prepare,
    _Replicates,
    bca_bounds,
    bootstrap_ci,
    compute_metrics,
)
from .tasks import get_task

__all__ = ["delong_test", "delong_covariance", "paired_bootstrap", "compare_scores"]


def _midrank(x: np.ndarray) -> np.ndarray:
    """1-based ranks with ties given their average rank (Sun & Xu's midranks)."""
    order = np.argsort(x, kind="mergesort")
    sorted_x = x[order]
    n = len(x)
    # Group boundaries of equal values, vectorised: the midrank of a group is (first + last) / 2 + 1.
    starts = np.flatnonzero(np.r_[True, sorted_x[1:] != sorted_x[:-1]])
    ends = np.r_[starts[1:], n]
    group_rank = 0.5 * (starts + ends - 1) + 1.0
    ranks_sorted = np.repeat(group_rank, ends - starts)
    out = np.empty(n)
    out[order] = ranks_sorted
    return out


def delong_covariance(y_true: Any, scores: Sequence[Any]) -> tuple[np.ndarray, np.ndarray]:
    """AUROCs of K score vectors against one binary target and their DeLong covariance matrix.

    Args:
        y_true: (N,) 0/1 with at least one positive and one negative.
        scores: K arrays (N,) (higher = more likely positive).

    Returns:
        aucs (K,), covariance (K, K) = S10 / m + S01 / n with the structural components
        V10 (per positive) and V01 (per negative) of DeLong et al.
    """
    y = np.asarray(y_true).astype(bool)
    s = np.stack([np.asarray(v, dtype=np.float64) for v in scores])  # (K, N)
    pos, neg = s[:, y], s[:, ~y]
    m, n = pos.shape[1], neg.shape[1]
    if m == 0 or n == 0:
        raise MetricsInputError("DeLong's test needs at least one positive and one negative record")
    k = s.shape[0]
    tx = np.stack([_midrank(pos[i]) for i in range(k)])
    ty = np.stack([_midrank(neg[i]) for i in range(k)])
    tz = np.stack([_midrank(np.r_[pos[i], neg[i]]) for i in range(k)])
    aucs = tz[:, :m].sum(axis=1) / (m * n) - (m + 1.0) / (2.0 * n)
    v01 = (tz[:, :m] - tx) / n  # per positive: share of negatives it beats
    v10 = 1.0 - (tz[:, m:] - ty) / m  # per negative: share of positives that beat it
    s01 = np.atleast_2d(np.cov(v01)) if m > 1 else np.zeros((k, k))
    s10 = np.atleast_2d(np.cov(v10)) if n > 1 else np.zeros((k, k))
    return aucs, s01 / m + s10 / n


def delong_test(y_true: Any, score_a: Any, score_b: Any) -> dict[str, float]:
    """DeLong's test of AUROC(B) - AUROC(A) on the same records (two-sided).

    Returns ``{"auroc_a", "auroc_b", "difference", "se", "z", "p_value", "lower", "upper"}``
    (95 % normal interval of the difference). p is 1 when the two score vectors are identical.
    """
    from scipy.stats import norm

    aucs, cov = delong_covariance(y_true, [score_a, score_b])
    diff = float(aucs[1] - aucs[0])
    var = float(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1])
    se = math.sqrt(max(var, 0.0))
    if se == 0.0:
        z, p = 0.0 if diff == 0 else math.copysign(math.inf, diff), 1.0 if diff == 0 else 0.0
    else:
        z = diff / se
        p = float(2 * norm.sf(abs(z)))
    return {
        "auroc_a": float(aucs[0]),
        "auroc_b": float(aucs[1]),
        "difference": diff,
        "se": se,
        "z": float(z),
        "p_value": p,
        "lower": diff - 1.959963984540054 * se,
        "upper": diff + 1.959963984540054 * se,
    }


def _diff_stats(
    point: float, samples: np.ndarray, confidence: float, method: str, jackknife: np.ndarray | None
) -> dict[str, Any]:
    finite = samples[np.isfinite(samples)]
    if finite.size == 0 or not math.isfinite(point):
        return {
            "difference": float(point),
            "lower": float("nan"),
            "upper": float("nan"),
            "p_value": float("nan"),
            "n_used": int(finite.size),
        }
    if method == "bca" and jackknife is not None:
        lower, upper = bca_bounds(point, samples, jackknife, confidence)
    else:
        alpha = (1.0 - confidence) / 2.0
        lower, upper = (float(v) for v in np.quantile(finite, [alpha, 1.0 - alpha]))
    # Never 0: with B resamples the p-value is only known to be below about 1/B.
    p = min(1.0, max(2.0 * min(float((finite <= 0).mean()), float((finite >= 0).mean())), 1.0 / finite.size))
    return {"difference": float(point), "lower": lower, "upper": upper, "p_value": p, "n_used": int(finite.size)}


def _difference(a: _Replicates, b: _Replicates) -> _Replicates:
    """``B - A`` of every metric both models have (A's order; ``*_at_thr`` only when both have thresholds)."""
    return _Replicates(
        per_label={m: b.per_label[m] - a.per_label[m] for m in a.per_label if m in b.per_label},
        macro={m: b.macro[m] - a.macro[m] for m in a.macro if m in b.macro},
        overall={m: b.overall[m] - a.overall[m] for m in a.overall},
    )


def _paired_intervals(
    res_a: MetricsResult,
    res_b: MetricsResult,
    diff: _Replicates,
    jack: _Replicates | None,
    confidence: float,
    method: str,
) -> dict[str, Any]:
    """``{"macro", "overall", "per_label"}`` stats of every difference ``B - A`` (see :func:`_diff_stats`)."""
    per_label: dict[str, dict[str, Any]] = {}
    for i, name in enumerate(res_a.label_names):
        per_label[name] = {}
        for metric, values in diff.per_label.items():
            point = res_b.per_label[metric][i] - res_a.per_label[metric][i]
            j = jack.per_label[metric][:, i] if jack else None
            per_label[name][metric] = _diff_stats(point, values[:, i], confidence, method, j)
    macro = {
        m: _diff_stats(res_b.macro[m] - res_a.macro[m], values, confidence, method, jack.macro.get(m) if jack else None)
        for m, values in diff.macro.items()
    }
    overall = {
        m: _diff_stats(
            res_b.overall[m] - res_a.overall[m], values, confidence, method, jack.overall.get(m) if jack else None
        )
        for m, values in diff.overall.items()
    }
    return {"macro": macro, "overall": overall, "per_label": per_label}


def paired_bootstrap(
    task: str,
    y_true: Any,
    score_a: Any,
    score_b: Any,
    *,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    thresholds_a: Any = None,
    thresholds_b: Any = None,
    stratify: bool = False,
    label_names: Sequence[str] | None = None,
    method: str = "percentile",
) -> dict[str, Any]:
    """Paired bootstrap of every metric difference ``B - A`` (same records, same resamples).

    Returns ``{"method", "n_resamples", "confidence", "seed", "stratify", "macro": {metric: d},
    "overall": {...}, "per_label": {label: {metric: d}}}`` with
    ``d = {"difference", "lower", "upper", "p_value", "n_used"}``. Macro differences average the
    labels defined on the full data (the same set for both models).
    """
    _check_ci_settings(n_resamples, None, method)
    res_a = compute_metrics(task, y_true, score_a, thresholds=thresholds_a, label_names=label_names)
    res_b = compute_metrics(task, y_true, score_b, thresholds=thresholds_b, label_names=label_names)
    prep_a = _prepare(task, y_true, score_a, label_names)
    prep_b = _prepare(task, y_true, score_b, label_names)
    defined = prep_a.defined()
    strata = prep_a.strata() if stratify else None
    models = [(prep_a, res_a.thresholds), (prep_b, res_b.thresholds)]
    reps_a, reps_b = _bootstrap_replicates(models, defined, strata, n_resamples, seed)
    jack = None
    if method == "bca":
        jack = _difference(_jackknife(prep_a, res_a.thresholds, defined), _jackknife(prep_b, res_b.thresholds, defined))
    return {
        "method": method,
        "task": res_a.task,
        "n_resamples": int(n_resamples),
        "confidence": float(confidence),
        "seed": int(seed),
        "stratify": bool(stratify),
        "n_records": int(prep_a.y.shape[0]),
        "undefined_labels": list(res_a.undefined_labels),
        **_paired_intervals(res_a, res_b, _difference(reps_a, reps_b), jack, confidence, method),
    }


def compare_scores(
    task: str,
    y_true: Any,
    score_a: Any,
    score_b: Any,
    *,
    label_names: Sequence[str] | None = None,
    n_resamples: int = 1000,
    seed: int = 0,
    method: str = "percentile",
    stratify: bool = False,
    thresholds_a: Any = None,
    thresholds_b: Any = None,
) -> dict[str, Any]:
    """Everything a side-by-side comparison needs: both models' metrics and CIs, paired differences, DeLong.

    Returns ``{"a": MetricsResult, "b": MetricsResult, "ci_a", "ci_b": bootstrap_ci dicts,
    "paired": paired_bootstrap dict, "delong": {label: delong_test dict}}``.

    DeLong is computed per label (per class one-vs-rest for multi-class) where the label has both
    classes; regression has no AUROC and gets no DeLong table.
    """
    res_a = compute_metrics(task, y_true, score_a, thresholds=thresholds_a, label_names=label_names)
    res_b = compute_metrics(task, y_true, score_b, thresholds=thresholds_b, label_names=label_names)
    paired = paired_bootstrap(
        task,
        y_true,
        score_a,
        score_b,
        n_resamples=n_resamples,
        seed=seed,
        method=method,
        stratify=stratify,
        label_names=label_names,
        thresholds_a=thresholds_a,
        thresholds_b=thresholds_b,
    )
    # Each model's own interval, on the same resamples (same seed) as the paired differences.
    ci_a = bootstrap_ci(
        task,
        y_true,
        score_a,
        n_resamples=n_resamples,
        seed=seed,
        method=method,
        stratify=stratify,
        label_names=label_names,
        thresholds=thresholds_a,
    )
    ci_b = bootstrap_ci(
        task,
        y_true,
        score_b,
        n_resamples=n_resamples,
        seed=seed,
        method=method,
        stratify=stratify,
        label_names=label_names,
        thresholds=thresholds_b,
    )
    delong: dict[str, Any] = {}
    if get_task(res_a.task).probabilistic:
        prep_a = _prepare(task, y_true, score_a, label_names)
        prep_b = _prepare(task, y_true, score_b, label_names)
        for j, name in enumerate(res_a.label_names):
            if name in res_a.undefined_labels:
                continue
            delong[name] = delong_test(prep_a.y[:, j], prep_a.score[:, j], prep_b.score[:, j])
    return {"a": res_a, "b": res_b, "ci_a": ci_a, "ci_b": ci_b, "paired": paired, "delong": delong}
