"""Clinical evaluation additions checked against scikit-learn / SciPy / brute force:
NPV, Brier, ECE, BCa intervals, Platt/temperature calibration, paired bootstrap and DeLong."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import bootstrap, norm
from sklearn.calibration import calibration_curve
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import brier_score_loss, confusion_matrix, roc_auc_score

from hubert_ecg.calibration import apply_calibration, fit_platt, fit_temperature
from hubert_ecg.compare import delong_covariance, delong_test, paired_bootstrap
from hubert_ecg.metrics import (
    MetricsInputError,
    bca_bounds,
    bootstrap_ci,
    compute_metrics,
)


def _data(rng: np.random.Generator, n: int = 300, n_labels: int = 4) -> tuple[np.ndarray, np.ndarray]:
    prevalence = np.linspace(0.1, 0.5, n_labels)
    y = (rng.random((n, n_labels)) < prevalence).astype(int)
    score = np.clip(0.3 * y + 0.7 * rng.random((n, n_labels)), 0, 1).round(2)
    return y, score


def _ece_reference(y: np.ndarray, p: np.ndarray, n_bins: int = 10) -> float:
    """ECE from sklearn's calibration_curve plus the bin counts of the same (right-closed) bins."""
    prob_true, prob_pred = calibration_curve(y, p, n_bins=n_bins, strategy="uniform")
    edges = np.linspace(0, 1, n_bins + 1)
    counts = np.bincount(np.searchsorted(edges[1:-1], p), minlength=n_bins)
    counts = counts[counts > 0]
    return float((counts / len(p) * np.abs(prob_true - prob_pred)).sum())


def test_npv_brier_ece_match_sklearn(rng: np.random.Generator) -> None:
    y, score = _data(rng)
    result = compute_metrics("multi_label", y, score, thresholds=[0.3, 0.4, 0.5, 0.6])
    for j in range(y.shape[1]):
        tn, fp, fn, tp = confusion_matrix(y[:, j], score[:, j] >= 0.5, labels=[0, 1]).ravel()
        assert result.per_label["npv"][j] == pytest.approx(tn / (tn + fn), abs=1e-12)
        tn, fp, fn, tp = confusion_matrix(y[:, j], score[:, j] >= result.thresholds[j], labels=[0, 1]).ravel()
        assert result.per_label["npv_at_thr"][j] == pytest.approx(tn / (tn + fn), abs=1e-12)
        assert result.per_label["brier"][j] == pytest.approx(brier_score_loss(y[:, j], score[:, j]), abs=1e-12)
        assert result.per_label["ece"][j] == pytest.approx(_ece_reference(y[:, j], score[:, j]), abs=1e-12)
    assert result.macro["npv"] == pytest.approx(np.mean(result.per_label["npv"]))


def test_ece_of_perfectly_calibrated_bins_is_zero_and_of_overconfidence_is_gap() -> None:
    # Every record scored 0.75 and 3 of 4 positive: calibrated, ECE 0; scored 0.95: ECE 0.2.
    y = np.array([1, 1, 1, 0] * 25)
    assert compute_metrics("binary", y, np.full(100, 0.75)).per_label["ece"][0] == pytest.approx(0.0)
    assert compute_metrics("binary", y, np.full(100, 0.95)).per_label["ece"][0] == pytest.approx(0.2)


def test_npv_without_predicted_negatives_is_zero() -> None:
    result = compute_metrics("binary", [0, 1, 0, 1], [0.9, 0.9, 0.8, 0.7])
    assert result.per_label["npv"][0] == 0.0


def test_multiclass_brier_and_top_label_ece(rng: np.random.Generator) -> None:
    y = rng.integers(0, 3, 200)
    p = rng.dirichlet(np.ones(3), 200)
    p[np.arange(200), y] += 0.5
    p /= p.sum(axis=1, keepdims=True)
    result = compute_metrics("multi_class", y, p)
    onehot = np.eye(3)[y]
    assert result.overall["brier"] == pytest.approx(((p - onehot) ** 2).sum(axis=1).mean(), abs=1e-12)
    correct = (p.argmax(axis=1) == y).astype(int)
    assert result.overall["ece_top_label"] == pytest.approx(_ece_reference(correct, p.max(axis=1)), abs=1e-12)
    for c in range(3):
        assert result.per_label["brier"][c] == pytest.approx(brier_score_loss(onehot[:, c], p[:, c]), abs=1e-12)


def test_bca_matches_scipy_bootstrap(rng: np.random.Generator) -> None:
    # The Brier score is a mean, so scipy.stats.bootstrap can compute its BCa interval directly.
    n = 120
    y = (rng.random(n) < 0.3).astype(int)
    p = np.clip(0.4 * y + 0.6 * rng.random(n) ** 2, 0, 1)
    ours = bootstrap_ci("binary", y, p, n_resamples=10000, seed=1, method="bca")
    point = ours["per_label"]["positive"]["brier"]
    ref = bootstrap(
        (((p - y) ** 2),), np.mean, n_resamples=10000, method="BCa", random_state=2, confidence_level=0.95
    ).confidence_interval
    # Monte-Carlo error of the tail quantiles at 10000 resamples is ~1e-3 of the metric scale.
    assert point["lower"] == pytest.approx(ref.low, abs=2e-3)
    assert point["upper"] == pytest.approx(ref.high, abs=2e-3)
    pct = bootstrap_ci("binary", y, p, n_resamples=10000, seed=1)["per_label"]["positive"]["brier"]
    assert ours["method"] == "bca"
    # A skewed statistic: BCa must move the interval relative to the percentile one.
    assert (point["lower"], point["upper"]) != (pct["lower"], pct["upper"])


def test_bca_bounds_formula_against_scipy_internals() -> None:
    # Deterministic: the same replicates and jackknife values scipy uses, fed to its formula by hand.
    rng = np.random.default_rng(5)
    theta = rng.normal(0.3, 0.1, 5000) ** 2
    jack = rng.normal(0.1, 0.01, 50)
    point = 0.1
    lo, hi = bca_bounds(point, theta, jack, 0.9)
    z0 = norm.ppf(((theta < point).mean() + (theta <= point).mean()) / 2)
    d = jack.mean() - jack
    a = (d**3).sum() / (6 * ((d**2).sum()) ** 1.5)
    levels = [norm.cdf(z0 + (z0 + z) / (1 - a * (z0 + z))) for z in (norm.ppf(0.05), norm.ppf(0.95))]
    assert (lo, hi) == pytest.approx(tuple(np.percentile(theta, [100 * levels[0], 100 * levels[1]])))


def test_bootstrap_rejects_unknown_method(rng: np.random.Generator) -> None:
    y, s = _data(rng, 50)
    with pytest.raises(MetricsInputError, match="unknown CI method 'bootstrap-t'"):
        bootstrap_ci("multi_label", y, s, n_resamples=10, method="bootstrap-t")


def test_platt_matches_unpenalised_logistic_regression_and_improves_ece(rng: np.random.Generator) -> None:
    n = 2000
    z = rng.normal(0, 2, n)
    y = (rng.random(n) < 1 / (1 + np.exp(-z))).astype(int)
    overconfident = 1 / (1 + np.exp(-3 * z + 0.5))  # true logit is z, model says 3z - 0.5
    calib = fit_platt(y, overconfident)
    logit = np.log(overconfident / (1 - overconfident))
    ref = LogisticRegression(C=np.inf, tol=1e-10, max_iter=1000).fit(logit[:, None], y)
    assert calib["a"][0] == pytest.approx(ref.coef_[0, 0], rel=1e-3)
    assert calib["b"][0] == pytest.approx(ref.intercept_[0], abs=1e-3)
    assert calib["a"][0] == pytest.approx(1 / 3, abs=0.05)
    fixed = apply_calibration(calib, overconfident)
    before = compute_metrics("binary", y, overconfident)
    after = compute_metrics("binary", y, fixed)
    assert after.per_label["ece"][0] < before.per_label["ece"][0] / 2
    assert after.per_label["auroc"][0] == pytest.approx(before.per_label["auroc"][0])  # ranking kept


def test_temperature_recovers_known_temperature(rng: np.random.Generator) -> None:
    n, c = 4000, 4
    logits = rng.normal(0, 1.5, (n, c))
    true_p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    y = np.array([rng.choice(c, p=row) for row in true_p])
    sharp = np.exp(2.0 * logits)
    sharp /= sharp.sum(axis=1, keepdims=True)  # a model twice too confident: T should be ~2
    calib = fit_temperature(y, sharp)
    assert calib["temperature"] == pytest.approx(2.0, rel=0.1)
    fixed = apply_calibration(calib, sharp)
    assert (fixed.argmax(axis=1) == sharp.argmax(axis=1)).all()
    np.testing.assert_allclose(fixed.sum(axis=1), 1.0)


def _delong_bruteforce(y: np.ndarray, a: np.ndarray, b: np.ndarray) -> tuple[float, float, float]:
    """DeLong from the O(m n) Mann-Whitney kernel psi(x, y) = 1, 1/2, 0."""
    comps = []
    for s in (a, b):
        pos, neg = s[y == 1], s[y == 0]
        psi = (pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])
        comps.append((psi.mean(), psi.mean(axis=1), psi.mean(axis=0)))
    m, n = (y == 1).sum(), (y == 0).sum()
    v10 = np.stack([c[1] for c in comps])
    v01 = np.stack([c[2] for c in comps])
    cov = np.cov(v10) / m + np.cov(v01) / n
    return comps[0][0], comps[1][0], cov[0, 0] + cov[1, 1] - 2 * cov[0, 1]


def test_fast_delong_equals_bruteforce_with_ties(rng: np.random.Generator) -> None:
    n = 250
    y = (rng.random(n) < 0.35).astype(int)
    a = (0.3 * y + rng.random(n)).round(1)  # many ties
    b = (0.6 * y + rng.random(n)).round(2)
    auc_a, auc_b, var = _delong_bruteforce(y, a, b)
    result = delong_test(y, a, b)
    assert result["auroc_a"] == pytest.approx(roc_auc_score(y, a), abs=1e-12)
    assert result["auroc_a"] == pytest.approx(auc_a, abs=1e-12)
    assert result["auroc_b"] == pytest.approx(auc_b, abs=1e-12)
    assert result["se"] ** 2 == pytest.approx(var, rel=1e-10)
    assert result["p_value"] == pytest.approx(2 * norm.sf(abs((auc_b - auc_a) / np.sqrt(var))), rel=1e-9)
    aucs, cov = delong_covariance(y, [a, b])
    assert cov.shape == (2, 2) and cov[0, 1] == pytest.approx(cov[1, 0])


def test_delong_identical_models_and_clearly_better_model(rng: np.random.Generator) -> None:
    n = 400
    y = (rng.random(n) < 0.4).astype(int)
    weak = 0.1 * y + rng.random(n)
    strong = 1.0 * y + rng.random(n)
    assert delong_test(y, weak, weak)["p_value"] == 1.0
    result = delong_test(y, weak, strong)
    assert result["difference"] > 0.2 and result["p_value"] < 1e-6
    with pytest.raises(MetricsInputError, match="at least one positive and one negative"):
        delong_test(np.zeros(5), np.arange(5), np.arange(5))


def test_paired_bootstrap_uses_same_resamples(rng: np.random.Generator) -> None:
    y, a = _data(rng, 300, 3)
    b = np.clip(a + 0.15 * y, 0, 1)
    paired = paired_bootstrap("multi_label", y, a, b, n_resamples=400, seed=3)
    point_diff = (
        compute_metrics("multi_label", y, b).macro["auroc"] - compute_metrics("multi_label", y, a).macro["auroc"]
    )
    d = paired["macro"]["auroc"]
    assert d["difference"] == pytest.approx(point_diff)
    assert d["lower"] > 0 and d["p_value"] < 0.01
    # Pairing: the interval of the difference is narrower than the independent-CI combination.
    ca = bootstrap_ci("multi_label", y, a, n_resamples=400, seed=3)["macro"]["auroc"]
    cb = bootstrap_ci("multi_label", y, b, n_resamples=400, seed=3)["macro"]["auroc"]
    independent = np.hypot(ca["upper"] - ca["lower"], cb["upper"] - cb["lower"])
    assert d["upper"] - d["lower"] < 0.8 * independent
    # Comparing a model with itself: every difference is exactly 0.
    same = paired_bootstrap("multi_label", y, a, a, n_resamples=50, seed=0)
    assert same["macro"]["auroc"]["lower"] == same["macro"]["auroc"]["upper"] == 0.0
    bca = paired_bootstrap("multi_label", y, a, b, n_resamples=400, seed=3, method="bca")
    assert bca["macro"]["auroc"]["lower"] > 0
