"""Metrics, thresholds, bootstrap CIs and TTA aggregation checked against scikit-learn / SciPy."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
from scipy.stats import pearsonr
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    balanced_accuracy_score,
    confusion_matrix,
    f1_score,
    mean_absolute_error,
    mean_squared_error,
    precision_score,
    r2_score,
    recall_score,
    roc_auc_score,
)

from hubert_ecg.metrics import (
    MetricsInputError,
    _ranking_metrics,
    aggregate_windows,
    bootstrap_ci,
    compute_metrics,
    tune_thresholds,
)


def _multilabel_data(rng: np.random.Generator, n: int = 300, n_labels: int = 6) -> tuple[np.ndarray, np.ndarray]:
    prevalence = np.linspace(0.05, 0.5, n_labels)
    y = (rng.random((n, n_labels)) < prevalence).astype(int)
    # Informative but noisy scores, rounded so that ties occur (sklearn's tie handling is tested).
    score = np.clip(0.25 * y + 0.75 * rng.random((n, n_labels)), 0, 1).round(2)
    return y, score


def _specificity(y: np.ndarray, pred: np.ndarray) -> float:
    negatives = y == 0
    return float((pred[negatives] == 0).mean()) if negatives.any() else float("nan")


def test_multilabel_matches_sklearn(rng: np.random.Generator) -> None:
    y, score = _multilabel_data(rng)
    result = compute_metrics("multi_label", y, score)
    pred = (score >= 0.5).astype(int)
    for j in range(y.shape[1]):
        assert result.per_label["auroc"][j] == pytest.approx(roc_auc_score(y[:, j], score[:, j]), abs=1e-12)
        assert result.per_label["auprc"][j] == pytest.approx(average_precision_score(y[:, j], score[:, j]), abs=1e-12)
        assert result.per_label["f1"][j] == pytest.approx(f1_score(y[:, j], pred[:, j]), abs=1e-12)
        assert result.per_label["precision"][j] == pytest.approx(
            precision_score(y[:, j], pred[:, j], zero_division=0), abs=1e-12
        )
        assert result.per_label["sensitivity"][j] == pytest.approx(recall_score(y[:, j], pred[:, j]), abs=1e-12)
        assert result.per_label["specificity"][j] == pytest.approx(_specificity(y[:, j], pred[:, j]), abs=1e-12)
        assert result.per_label["accuracy"][j] == pytest.approx(accuracy_score(y[:, j], pred[:, j]), abs=1e-12)
    assert result.macro["auroc"] == pytest.approx(roc_auc_score(y, score, average="macro"), abs=1e-12)
    assert result.macro["auprc"] == pytest.approx(average_precision_score(y, score, average="macro"), abs=1e-12)
    assert result.macro["f1"] == pytest.approx(f1_score(y, pred, average="macro"), abs=1e-12)
    assert result.n_undefined == 0
    assert result.n_positive.tolist() == y.sum(axis=0).tolist()


def test_thresholds_at_given_values_match_sklearn(rng: np.random.Generator) -> None:
    y, score = _multilabel_data(rng)
    thresholds = np.linspace(0.3, 0.7, y.shape[1])
    result = compute_metrics("multi_label", y, score, thresholds=thresholds)
    pred = (score >= thresholds).astype(int)
    expected_f1 = f1_score(y, pred, average=None)
    expected_recall = recall_score(y, pred, average=None)
    np.testing.assert_allclose(result.per_label["f1_at_thr"], expected_f1, atol=1e-12)
    np.testing.assert_allclose(result.per_label["sensitivity_at_thr"], expected_recall, atol=1e-12)
    np.testing.assert_allclose(result.thresholds, thresholds)


def test_precision_without_predicted_positives_is_zero_like_sklearn() -> None:
    y = np.array([[1], [0], [1], [0]])
    score = np.array([[0.2], [0.1], [0.3], [0.4]])  # nothing reaches 0.5
    result = compute_metrics("multi_label", y, score)
    assert result.per_label["precision"][0] == precision_score(y[:, 0], np.zeros(4), zero_division=0) == 0.0
    assert result.per_label["f1"][0] == 0.0


def test_undefined_label_is_nan_and_left_out_of_macro(rng: np.random.Generator) -> None:
    y, score = _multilabel_data(rng, n=200, n_labels=4)
    y[:, 1] = 0  # no positives
    y[:, 3] = 1  # no negatives
    names = ["AF", "RBBB", "LBBB", "SR"]
    result = compute_metrics("multi_label", y, score, label_names=names)
    assert np.isnan(result.per_label["auroc"][[1, 3]]).all()
    assert np.isnan(result.per_label["auprc"][[1, 3]]).all()
    assert np.isnan(result.per_label["sensitivity"][1])  # 0/0: nothing to detect
    assert result.undefined_labels == ["RBBB", "SR"]
    assert result.n_undefined == 2
    defined = [0, 2]
    assert result.macro["auroc"] == pytest.approx(np.mean([roc_auc_score(y[:, j], score[:, j]) for j in defined]))
    pred = (score >= 0.5).astype(int)
    # Threshold metrics average over the same defined labels (not over all four).
    assert result.macro["specificity"] == pytest.approx(np.mean([_specificity(y[:, j], pred[:, j]) for j in defined]))
    # Undefined values are null in JSON and empty in the rows' macro, never 0.
    as_json = json.loads(json.dumps(result.to_dict()))
    assert as_json["per_label"]["RBBB"]["auroc"] is None
    assert as_json["n_undefined_labels"] == 2
    rows = result.to_rows()
    assert [r["label"] for r in rows] == names + ["macro"]
    assert rows[1]["defined"] is False and rows[0]["defined"] is True


def test_multiclass_matches_sklearn(rng: np.random.Generator) -> None:
    n, n_classes = 400, 4
    y = rng.integers(0, n_classes, n)
    logits = rng.normal(size=(n, n_classes)) + 1.5 * np.eye(n_classes)[y]
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    result = compute_metrics("multi_class", y, probs)
    pred = probs.argmax(axis=1)
    assert result.overall["accuracy"] == pytest.approx(accuracy_score(y, pred), abs=1e-12)
    assert result.overall["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y, pred), abs=1e-12)
    assert result.macro["auroc"] == pytest.approx(roc_auc_score(y, probs, multi_class="ovr"), abs=1e-12)
    onehot = np.eye(n_classes)[y]
    assert result.macro["auprc"] == pytest.approx(average_precision_score(onehot, probs), abs=1e-12)
    np.testing.assert_allclose(result.per_label["f1"], f1_score(y, pred, average=None), atol=1e-12)
    np.testing.assert_allclose(result.per_label["precision"], precision_score(y, pred, average=None), atol=1e-12)
    np.testing.assert_allclose(result.per_label["sensitivity"], recall_score(y, pred, average=None), atol=1e-12)
    np.testing.assert_array_equal(result.confusion_matrix, confusion_matrix(y, pred, labels=range(n_classes)))
    cm = result.confusion_matrix
    expected_spec = [
        (cm.sum() - cm[c].sum() - cm[:, c].sum() + cm[c, c]) / (cm.sum() - cm[c].sum()) for c in range(n_classes)
    ]
    np.testing.assert_allclose(result.per_label["specificity"], expected_spec, atol=1e-12)


@pytest.mark.filterwarnings("ignore:y_pred contains classes not in y_true")
def test_multiclass_absent_class_is_undefined(rng: np.random.Generator) -> None:
    y = rng.integers(0, 2, 100)  # class 2 never occurs
    probs = rng.dirichlet(np.ones(3), size=100)
    result = compute_metrics("multi_class", y, probs, label_names=["a", "b", "c"])
    assert result.undefined_labels == ["c"]
    assert np.isnan(result.per_label["auroc"][2])
    assert result.macro["auroc"] == pytest.approx(
        np.mean([roc_auc_score(y == c, probs[:, c]) for c in (0, 1)]), abs=1e-12
    )
    assert result.overall["balanced_accuracy"] == pytest.approx(
        balanced_accuracy_score(y, probs.argmax(axis=1)), abs=1e-12
    )


def test_binary_one_logit_matches_sklearn(rng: np.random.Generator) -> None:
    y = rng.integers(0, 2, 250)
    prob = np.clip(0.3 * y + 0.7 * rng.random(250), 0, 1)
    result = compute_metrics("binary", y, prob)
    assert result.label_names == ["positive"]
    assert result.macro["auroc"] == pytest.approx(roc_auc_score(y, prob), abs=1e-12)
    assert result.macro["f1"] == pytest.approx(f1_score(y, prob >= 0.5), abs=1e-12)


def test_regression_matches_sklearn_and_scipy(rng: np.random.Generator) -> None:
    y = rng.normal(size=(150, 3)) * [1.0, 10.0, 100.0] + [0.0, 5.0, -300.0]
    pred = y + rng.normal(size=y.shape) * [0.5, 3.0, 80.0]
    result = compute_metrics("regression", y, pred, label_names=["qt", "hr", "lvef"])
    np.testing.assert_allclose(result.per_label["mae"], mean_absolute_error(y, pred, multioutput="raw_values"))
    np.testing.assert_allclose(result.per_label["rmse"], np.sqrt(mean_squared_error(y, pred, multioutput="raw_values")))
    np.testing.assert_allclose(result.per_label["r2"], r2_score(y, pred, multioutput="raw_values"), rtol=1e-10)
    np.testing.assert_allclose(
        result.per_label["pearson_r"], [pearsonr(y[:, d], pred[:, d])[0] for d in range(3)], rtol=1e-10
    )
    assert result.macro["r2"] == pytest.approx(r2_score(y, pred), rel=1e-10)
    one_d = compute_metrics("regression", y[:, 0], pred[:, 0])
    assert one_d.macro["mae"] == pytest.approx(mean_absolute_error(y[:, 0], pred[:, 0]))


def test_regression_constant_target_is_undefined(rng: np.random.Generator) -> None:
    y = np.column_stack([np.full(50, 0.1), rng.normal(size=50)])
    pred = y + rng.normal(size=y.shape)
    result = compute_metrics("regression", y, pred)
    assert np.isnan(result.per_label["r2"][0]) and np.isnan(result.per_label["pearson_r"][0])
    assert result.undefined_labels == ["output_0"]
    assert result.macro["r2"] == pytest.approx(r2_score(y[:, 1], pred[:, 1]))


@pytest.mark.parametrize(
    ("task", "y", "score", "message"),
    [
        (
            "multi_label",
            [[0, 1]],
            [[0.2, 1.7]],
            "y_score must hold probabilities in [0, 1] for task 'multi_label' "
            "(apply sigmoid/softmax to logits first); row 0, column 1 holds 1.7",
        ),
        ("multi_label", [[0, 2]], [[0.2, 0.7]], "y_true must be 0/1 for task 'multi_label'; row 0, column 1 holds 2"),
        ("multi_label", [[0, 1]], [[0.2, np.nan]], "y_score contains a non-finite value at row 0, column 1"),
        (
            "multi_label",
            [[0, 1]],
            [[0.2, 0.3, 0.4]],
            "task 'multi_label' expects y_true and y_score of the same shape (N, L); got (1, 2) and (1, 3)",
        ),
        ("multi_class", [0, 3], [[0.5, 0.5], [0.1, 0.9]], "y_true must hold class indices in 0..1; row 1 holds 3"),
        (
            "survival",
            [0],
            [0.1],
            "unknown task 'survival'; expected one of multi_label, multi_class, binary, regression",
        ),
        ("binary", [0, 1, 1], [0.1, 0.2], "y_true has 3 records but y_score has 2"),
    ],
)
def test_bad_input_messages(task: str, y: object, score: object, message: str) -> None:
    with pytest.raises(MetricsInputError) as info:
        compute_metrics(task, y, score)
    assert str(info.value) == message
    assert isinstance(info.value, ValueError)


def test_weighted_ranking_equals_sklearn_on_explicit_resample(rng: np.random.Generator) -> None:
    """The bootstrap's weighted AUROC/AUPRC equal sklearn on the physically resampled arrays."""
    y, score = _multilabel_data(rng, n=120, n_labels=3)
    indices = rng.integers(0, 120, size=(5, 120))
    weights = np.stack([np.bincount(row, minlength=120) for row in indices]).astype(float)
    auroc, auprc = _ranking_metrics(y.astype(bool), score, weights)
    for b, row in enumerate(indices):
        for j in range(3):
            assert auroc[b, j] == pytest.approx(roc_auc_score(y[row, j], score[row, j]), abs=1e-12)
            assert auprc[b, j] == pytest.approx(average_precision_score(y[row, j], score[row, j]), abs=1e-12)


def test_bootstrap_contains_point_reproducible_and_narrows(rng: np.random.Generator) -> None:
    y_big, score_big = _multilabel_data(rng, n=2000, n_labels=5)
    y_small, score_small = y_big[:200], score_big[:200]
    ci_small = bootstrap_ci("multi_label", y_small, score_small, n_resamples=300, seed=1)
    ci_big = bootstrap_ci("multi_label", y_big, score_big, n_resamples=300, seed=1)
    for ci in (ci_small, ci_big):
        for metric, stats in ci["macro"].items():
            assert stats["lower"] <= stats["point"] <= stats["upper"], metric
    width = {
        name: ci["macro"]["auroc"]["upper"] - ci["macro"]["auroc"]["lower"]
        for name, ci in (("small", ci_small), ("big", ci_big))
    }
    assert width["big"] < width["small"]
    # Point estimates are exactly compute_metrics.
    assert ci_big["macro"]["auroc"]["point"] == compute_metrics("multi_label", y_big, score_big).macro["auroc"]
    again = bootstrap_ci("multi_label", y_small, score_small, n_resamples=300, seed=1)
    assert again == ci_small
    other = bootstrap_ci("multi_label", y_small, score_small, n_resamples=300, seed=2)
    assert other["macro"]["auroc"]["lower"] != ci_small["macro"]["auroc"]["lower"]


def test_bootstrap_interval_matches_naive_sklearn_loop(rng: np.random.Generator) -> None:
    """Same draws as a plain loop over sklearn: the vectorised intervals are the textbook ones."""
    y = rng.integers(0, 2, 150)
    prob = np.clip(0.3 * y + 0.7 * rng.random(150), 0, 1)
    ci = bootstrap_ci("binary", y, prob, n_resamples=200, seed=7, confidence=0.9)
    draws = np.random.default_rng(7).integers(0, 150, size=(200, 150))
    replicates = [roc_auc_score(y[d], prob[d]) for d in draws if 0 < y[d].sum() < 150]
    low, high = np.quantile(replicates, [0.05, 0.95])
    stats = ci["per_label"]["positive"]["auroc"]
    assert stats["lower"] == pytest.approx(low, abs=1e-12)
    assert stats["upper"] == pytest.approx(high, abs=1e-12)
    assert stats["n_used"] == len(replicates)


def test_bootstrap_skips_resamples_without_positives() -> None:
    rng = np.random.default_rng(3)
    y = np.zeros((60, 2), dtype=int)
    y[:, 0] = rng.integers(0, 2, 60)
    y[0, 1] = 1  # a single positive: many resamples lose it
    score = rng.random((60, 2))
    ci = bootstrap_ci("multi_label", y, score, n_resamples=400, seed=0)
    used = ci["per_label"]["label_1"]["auroc"]["n_used"]
    # P(record 0 absent from a resample) = (59/60)^60 ~ 0.36.
    assert 200 < used < 320
    assert ci["per_label"]["label_0"]["auroc"]["n_used"] == 400


def test_bootstrap_multiclass_regression_and_stratified(rng: np.random.Generator) -> None:
    y = rng.integers(0, 3, 300)
    probs = rng.dirichlet(np.ones(3), size=300)
    ci = bootstrap_ci("multi_class", y, probs, n_resamples=200, stratify=True)
    acc = ci["overall"]["accuracy"]
    assert acc["lower"] <= acc["point"] <= acc["upper"]
    assert "balanced_accuracy" in ci["overall"] and ci["stratify"] is True
    yr = rng.normal(size=300)
    ci_r = bootstrap_ci("regression", yr, yr + rng.normal(size=300) * 0.3, n_resamples=200)
    r2 = ci_r["macro"]["r2"]
    assert r2["lower"] <= r2["point"] <= r2["upper"] and r2["n_used"] == 200
    with pytest.raises(MetricsInputError, match="stratify=True is not supported for task 'regression'"):
        bootstrap_ci("regression", yr, yr, n_resamples=10, stratify=True)


def test_stratified_resamples_keep_class_counts(rng: np.random.Generator) -> None:
    from hubert_ecg.metrics import _prepare, _resample_weights

    y = rng.integers(0, 2, 80)
    prep = _prepare("binary", y, rng.random(80), None)
    weights = _resample_weights(np.random.default_rng(0), 80, 50, prep.strata())
    np.testing.assert_array_equal(weights @ y, np.full(50, y.sum()))


@pytest.mark.slow  # a timing bound: kept out of the default run, where a shared CI core can stall it
def test_bootstrap_speed_n2000_l20() -> None:
    rng = np.random.default_rng(0)
    y = (rng.random((2000, 20)) < 0.1).astype(int)
    score = rng.random((2000, 20))
    start = time.perf_counter()
    bootstrap_ci("multi_label", y, score, n_resamples=1000, thresholds=np.full(20, 0.4))
    assert time.perf_counter() - start < 10.0  # ~0.6 s on 2 cores; generous for slow CI machines


def test_tune_thresholds_max_f1_is_the_brute_force_optimum(rng: np.random.Generator) -> None:
    y, score = _multilabel_data(rng, n=200, n_labels=3)
    thresholds = tune_thresholds(y, score, method="max_f1")
    for j in range(3):
        candidates = np.unique(score[:, j])
        best = max(f1_score(y[:, j], score[:, j] >= c) for c in candidates)
        assert f1_score(y[:, j], score[:, j] >= thresholds[j]) == pytest.approx(best, abs=1e-12)


def test_tune_thresholds_constructed_example() -> None:
    # Positives at 0.9, 0.8, 0.35; negatives at 0.7, 0.3, 0.2, 0.1.
    # Cut >= 0.8 gives F1 = 0.8 (TP 2, FN 1); >= 0.35 gives F1 = 6/7 ~ 0.857 (TP 3, FP 1), the max.
    y = np.array([1, 1, 0, 1, 0, 0, 0])
    score = np.array([0.9, 0.8, 0.7, 0.35, 0.3, 0.2, 0.1])
    (threshold,) = tune_thresholds(y, score, method="max_f1")
    assert threshold == pytest.approx((0.35 + 0.3) / 2)
    # Youden J: >= 0.8 gives 2/3 - 0 = 0.667; >= 0.35 gives 1 - 1/4 = 0.75.
    (youden,) = tune_thresholds(y, score, method="youden")
    assert youden == pytest.approx((0.35 + 0.3) / 2)


def test_tune_thresholds_youden_matches_roc_curve(rng: np.random.Generator) -> None:
    from sklearn.metrics import roc_curve

    y, score = _multilabel_data(rng, n=300, n_labels=2)
    thresholds = tune_thresholds(y, score, method="youden")
    for j in range(2):
        fpr, tpr, _ = roc_curve(y[:, j], score[:, j])
        pred = score[:, j] >= thresholds[j]
        j_stat = recall_score(y[:, j], pred) - (1 - _specificity(y[:, j], pred.astype(int)))
        assert j_stat == pytest.approx(np.max(tpr - fpr), abs=1e-12)


def test_tune_thresholds_label_without_positives_gets_half() -> None:
    y = np.array([[0, 1], [0, 0], [0, 1]])
    score = np.array([[0.9, 0.8], [0.1, 0.2], [0.4, 0.7]])
    thresholds = tune_thresholds(y, score)
    assert thresholds[0] == 0.5
    assert thresholds[1] == pytest.approx(0.45)
    with pytest.raises(MetricsInputError, match="unknown threshold method 'best'"):
        tune_thresholds(y, score, method="best")


def test_aggregate_windows_mean_and_max() -> None:
    probs = np.array([[0.1, 0.9], [0.3, 0.5], [0.8, 0.2], [0.2, 0.4], [0.6, 0.6]])
    ids = np.array(["rec_b", "rec_b", "rec_a", "rec_b", "rec_a"])
    groups, mean = aggregate_windows(probs, ids, how="mean")
    assert groups.tolist() == ["rec_b", "rec_a"]  # order of first appearance
    np.testing.assert_allclose(mean, [[0.2, 0.6], [0.7, 0.4]])
    groups_max, maximum = aggregate_windows(probs, ids, how="max")
    assert groups_max.tolist() == ["rec_b", "rec_a"]
    np.testing.assert_allclose(maximum, [[0.3, 0.9], [0.8, 0.6]])
    with pytest.raises(MetricsInputError, match="unknown aggregation 'median'; expected 'mean' or 'max'"):
        aggregate_windows(probs, ids, how="median")
    with pytest.raises(MetricsInputError, match="one id per window"):
        aggregate_windows(probs, ids[:3])


def test_csv_and_json_round_trip(tmp_path, rng: np.random.Generator) -> None:
    import csv

    y, score = _multilabel_data(rng, n=100, n_labels=3)
    y[:, 2] = 0
    result = compute_metrics("multi_label", y, score, label_names=["a", "b", "c"])
    rows = list(csv.DictReader(result.write_csv(tmp_path / "m.csv").open()))
    assert [r["label"] for r in rows] == ["a", "b", "c", "macro"]
    assert float(rows[0]["auroc"]) == pytest.approx(result.per_label["auroc"][0])
    assert rows[2]["auroc"] == ""  # undefined, not 0
    assert float(rows[3]["auroc"]) == pytest.approx(result.macro["auroc"])
    loaded = json.loads(result.write_json(tmp_path / "m.json").read_text())
    assert loaded["undefined_labels"] == ["c"]
    assert loaded["macro"]["auroc"] == pytest.approx(result.macro["auroc"])


# ---------------------------------------------------------------------------------------------
# Blank labels (NaN = unknown) leave one cell out, never the whole record
# ---------------------------------------------------------------------------------------------
def _with_blanks(rng: np.random.Generator, n: int = 120, n_labels: int = 3) -> tuple[np.ndarray, np.ndarray]:
    y = (rng.random((n, n_labels)) < 0.4).astype(float)
    p = np.clip(0.3 * y + 0.7 * rng.random((n, n_labels)), 0, 1)
    y[rng.random((n, n_labels)) < 0.15] = np.nan
    y[0] = [np.nan, 1.0, 0.0]  # record 0: blank in label 0 only; a positive scored low for label 1
    p[0, 1] = 0.01
    return y, p


def test_a_blank_label_leaves_the_record_out_of_that_label_only() -> None:
    from sklearn.metrics import brier_score_loss, f1_score, roc_auc_score

    y, p = _with_blanks(np.random.default_rng(3))
    result = compute_metrics("multi_label", y, p)
    for j in range(y.shape[1]):
        known = np.isfinite(y[:, j])
        assert result.per_label["auroc"][j] == pytest.approx(roc_auc_score(y[known, j], p[known, j]), abs=1e-12)
        assert result.per_label["f1"][j] == pytest.approx(f1_score(y[known, j], p[known, j] >= 0.5), abs=1e-12)
        assert result.per_label["brier"][j] == pytest.approx(brier_score_loss(y[known, j], p[known, j]), abs=1e-12)
    # record 0 still counts for labels 1 and 2: dropping it everywhere would change their AUROC
    rest = np.arange(1, len(y))
    known1 = np.isfinite(y[rest, 1])
    assert result.per_label["auroc"][1] != pytest.approx(roc_auc_score(y[rest][known1, 1], p[rest][known1, 1]))
    assert result.n_positive.tolist() == [int(np.nansum(y[:, j])) for j in range(y.shape[1])]


def test_bootstrap_with_blank_labels_matches_per_label_bootstrap_of_known_cells() -> None:
    y, p = _with_blanks(np.random.default_rng(4))
    ci = bootstrap_ci("multi_label", y, p, n_resamples=200, seed=1)
    for j, name in enumerate(ci["per_label"]):
        known = np.isfinite(y[:, j])
        assert ci["per_label"][name]["auroc"]["point"] == pytest.approx(
            compute_metrics("binary", y[known, j], p[known, j]).per_label["auroc"][0], abs=1e-12
        )
        low, high = ci["per_label"][name]["auroc"]["lower"], ci["per_label"][name]["auroc"]["upper"]
        assert low <= ci["per_label"][name]["auroc"]["point"] <= high


def test_regression_blank_targets_are_left_out_per_output() -> None:
    from sklearn.metrics import mean_absolute_error, r2_score

    rng = np.random.default_rng(5)
    y = rng.normal(size=(80, 2))
    pred = y + 0.3 * rng.normal(size=(80, 2))
    y[rng.random((80, 2)) < 0.2] = np.nan
    result = compute_metrics("regression", y, pred)
    for j in range(2):
        known = np.isfinite(y[:, j])
        assert result.per_label["mae"][j] == pytest.approx(mean_absolute_error(y[known, j], pred[known, j]))
        assert result.per_label["r2"][j] == pytest.approx(r2_score(y[known, j], pred[known, j]))


def test_infinite_labels_are_still_refused() -> None:
    y, p = _with_blanks(np.random.default_rng(6))
    y[5, 2] = np.inf
    with pytest.raises(MetricsInputError, match="row 5, column 2"):
        compute_metrics("multi_label", y, p)
