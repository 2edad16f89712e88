"""More exact-value / reference-parity checks of core rules (see test_core_properties.py)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest


def test_regression_bootstrap_matches_a_naive_sklearn_loop(rng: np.random.Generator) -> None:
    from sklearn.metrics import r2_score

    from hubert_ecg.metrics import bootstrap_ci

    n = 60
    y = rng.normal(size=n) + 3.0
    pred = y + rng.normal(scale=0.7, size=n)
    ci = bootstrap_ci("regression", y, pred, n_resamples=40, seed=2, confidence=0.8)
    draws = np.random.default_rng(2).integers(0, n, size=(40, n))
    r2 = np.array([r2_score(y[d], pred[d]) for d in draws])
    stats = ci["per_label"]["output_0"]["r2"]
    assert stats["point"] == pytest.approx(r2_score(y, pred))
    assert (stats["lower"], stats["upper"]) == pytest.approx(tuple(np.quantile(r2, [0.1, 0.9])), abs=1e-9)


def test_macro_leaves_undefined_labels_out_of_every_metric() -> None:
    from hubert_ecg.metrics import compute_metrics

    y = np.array([[1, 0, 0], [0, 0, 1], [1, 0, 1], [0, 0, 0]])
    p = np.array([[0.9, 0.7, 0.2], [0.1, 0.6, 0.8], [0.4, 0.1, 0.6], [0.3, 0.2, 0.1]])
    r = compute_metrics("multi_label", y, p)
    assert r.undefined_labels == ["label_1"]
    for metric in ("f1", "accuracy", "brier", "specificity"):
        assert r.macro[metric] == pytest.approx(np.nanmean(r.per_label[metric][[0, 2]]))


def test_multiclass_brier_sums_over_classes() -> None:
    from hubert_ecg.metrics import compute_metrics

    y = np.array([0, 2])
    p = np.array([[0.5, 0.3, 0.2], [0.1, 0.1, 0.8]])
    # record 0: 0.25 + 0.09 + 0.04 = 0.38; record 1: 0.01 + 0.01 + 0.04 = 0.06
    assert compute_metrics("multi_class", y, p).overall["brier"] == pytest.approx(0.22)


def test_platt_keeps_the_identity_for_a_label_with_one_class_and_temperature_divides_logs() -> None:
    from hubert_ecg.calibration import apply_calibration, fit_platt

    y = np.array([[1, 0], [1, 1], [1, 0], [1, 1]])
    p = np.array([[0.9, 0.2], [0.8, 0.7], [0.6, 0.4], [0.95, 0.6]])
    fit = fit_platt(y, p)
    assert (fit["a"][0], fit["b"][0]) == (1.0, 0.0)
    np.testing.assert_allclose(apply_calibration(fit, p)[:, 0], p[:, 0], atol=1e-12)
    probs = np.array([[0.7, 0.2, 0.1]])
    out = apply_calibration({"method": "temperature", "temperature": 2.0}, probs)
    expected = np.sqrt(probs) / np.sqrt(probs).sum()  # softmax(log p / 2)
    np.testing.assert_allclose(out, expected, rtol=1e-12)


def test_deltas_across_tokens_match_the_regression_formula() -> None:
    from hubert_ecg.pretraining.features import _deltas_across_tokens

    x = np.array([0.0, 1.0, 4.0, 9.0, 16.0, 20.0])[None, :, None]
    padded = np.r_[[0.0, 0.0], x[0, :, 0], [20.0, 20.0]]  # edges replicated
    expected = [
        (1 * (padded[t + 3] - padded[t + 1]) + 2 * (padded[t + 4] - padded[t])) / 10.0 for t in range(6)
    ]  # sum_k k (x[t+k] - x[t-k]) / (2 sum_k k^2)
    np.testing.assert_allclose(_deltas_across_tokens(x)[0, :, 0], expected)


def test_standardising_normaliser_gives_zero_mean_unit_std_on_its_fit_rows() -> None:
    from hubert_ecg.pretraining.kmeans import FeatureNormaliser

    rng = np.random.default_rng(0)
    rows = rng.normal(loc=[5.0, -2.0, 0.0], scale=[3.0, 0.5, 1.0], size=(200, 3))
    rows[:, 2] = 4.0  # a constant dimension maps to 0
    norm = FeatureNormaliser("standardise").fit(rows)
    out = norm.transform(rows)
    np.testing.assert_allclose(out.mean(0), 0, atol=1e-9)
    np.testing.assert_allclose(out[:, :2].std(0), 1, atol=1e-9)
    assert np.all(out[:, 2] == 0)
    both = FeatureNormaliser("standardise+l2").fit(rows).transform(rows[:5])
    np.testing.assert_allclose(np.linalg.norm(both, axis=1), 1, atol=1e-6)


def test_a_record_in_two_splits_is_refused() -> None:
    from hubert_ecg.store import StoreError, check_store_splits

    store = SimpleNamespace(
        splits=np.array(["train", "val", "train"], dtype=object),
        record_ids=np.array(["a", "a", "b"], dtype=object),
        groups=np.array(["", "", ""], dtype=object),
        path="fake",
    )
    with pytest.raises(StoreError, match="record 'a' has rows in train and val"):
        check_store_splits(store)  # type: ignore[arg-type]
    store_ok = SimpleNamespace(
        splits=np.array(["train", "train", "val"], dtype=object),
        record_ids=np.array(["a", "a", "b"], dtype=object),
        groups=np.array(["p1", "p1", "p2"], dtype=object),
        path="fake2",
    )
    check_store_splits(store_ok)  # type: ignore[arg-type]


def test_file_predictions_decide_at_the_models_saved_thresholds() -> None:
    from hubert_ecg.inference import _decisions

    model = SimpleNamespace(info=SimpleNamespace(task="multi_label", thresholds=[0.3, 0.9]))
    assert _decisions(model, np.array([[0.35, 0.8], [0.2, 0.95]])).tolist() == [[1, 0], [0, 1]]  # type: ignore[arg-type]
    plain = SimpleNamespace(info=SimpleNamespace(task=None, thresholds=None))
    assert _decisions(plain, np.array([[0.5, 0.4]])).tolist() == [[1, 0]]  # type: ignore[arg-type]


def test_run_windows_passes_the_padding_mask_to_the_model() -> None:
    import torch

    from hubert_ecg.inference import run_windows
    from hubert_ecg.model import create_model

    torch.manual_seed(0)
    model = create_model("tiny").eval()
    x = np.random.default_rng(0).normal(size=(2, 6000)).astype(np.float32)
    mask = np.ones((2, 6000), dtype=bool)
    mask[1, :] = np.tile(np.arange(500) < 300, 12)  # window 1: a 3 s record padded to 5 s
    x[1, ~mask[1]] = 0.0
    out = run_windows(model, x, mask, batch_size=2)
    with torch.no_grad():
        ref = model(torch.from_numpy(x), torch.from_numpy(mask))
        expected = model.pool(ref.last_hidden_state, ref.token_mask).numpy()
        unmasked = model(torch.from_numpy(x)).last_hidden_state.mean(1).numpy()
    np.testing.assert_allclose(out["embedding"], expected, rtol=1e-5, atol=1e-6)
    assert not np.allclose(out["embedding"][1], unmasked[1], atol=1e-4)  # the mask does change the result


def test_score_rows_loss_is_weighted_by_batch_size() -> None:
    import torch

    from hubert_ecg.evaluate import score_rows

    class Store:
        lengths = np.array([500, 500, 500])
        record_ids = np.array(["a", "b", "c"], dtype=object)
        segments = np.zeros(3, dtype=np.int64)
        labels = np.array([[0.0], [0.0], [3.0]], dtype=np.float32)
        spec = SimpleNamespace(window_s=5.0)
        fs = 100.0
        path = "fake"

        def __len__(self) -> int:
            return 3

        def crops(self, rows, starts, window):  # noqa: ANN001, ANN201
            return np.zeros((len(rows), 12, window), dtype=np.float32), np.ones((len(rows), window), dtype=bool)

        def record_groups(self, rows):  # noqa: ANN001, ANN201
            return np.unique(self.record_ids[rows].astype(str), return_inverse=True)

    def model(x, mask):  # noqa: ANN001, ANN202
        return SimpleNamespace(logits=torch.zeros(len(x), 1))

    scores = score_rows(
        model,  # type: ignore[arg-type]
        Store(),  # type: ignore[arg-type]
        np.arange(3),
        task="multi_label",
        batch_size=2,
        loss_fn=lambda logits, labels: labels.mean(),
    )
    # batches [a, b] (loss 0) and [c] (loss 3): the record-weighted mean is 1, not (0 + 3) / 2
    assert scores.loss == pytest.approx(1.0)
    assert scores.record_ids.tolist() == ["a", "b", "c"] and scores.n_windows == 3
    np.testing.assert_allclose(scores.probabilities, 0.5)


def test_feature_row_sample_is_without_replacement() -> None:
    from hubert_ecg.pretraining.targets import _select_rows

    class Store:
        path = "fake"

        def __len__(self) -> int:
            return 40

    for seed in range(5):
        rows = _select_rows(Store(), None, 0.75, seed)  # type: ignore[arg-type]
        assert len(rows) == 30 and len(np.unique(rows)) == 30 and np.all(np.diff(rows) > 0)
    assert _select_rows(Store(), [5, 3, 5], 1.0, 0).tolist() == [3, 5]  # type: ignore[arg-type]


def test_codebook_logits_are_cosines_divided_by_the_temperature() -> None:
    import torch
    import torch.nn.functional as F

    from hubert_ecg.model import create_model

    torch.manual_seed(0)
    model = create_model("tiny")
    model.set_codebooks([7])
    hidden = torch.randn(2, 3, model.config.hidden_size)
    (logits,) = model.codebook_logits(hidden)
    projected = model.final_proj[0](hidden)
    weight = model.label_embedding[0].weight
    cosine = F.cosine_similarity(projected[:, :, None, :], weight[None, None], dim=-1)
    torch.testing.assert_close(logits, cosine / model.config.codebook_temperature, rtol=1e-5, atol=1e-5)
    assert model.config.codebook_temperature < 1  # sharpened: |logit| may exceed 1


def test_fir_filtfilt_equals_scipy_filtfilt_including_the_edges() -> None:
    from scipy.signal import filtfilt, firwin

    from hubert_ecg.preprocess import fir_filtfilt

    rng = np.random.default_rng(1)
    x = np.cumsum(rng.normal(size=(2, 3, 400)), axis=-1)  # a wandering baseline: edge handling matters
    taps = firwin(31, [0.02, 0.4], pass_zero=False)
    np.testing.assert_allclose(fir_filtfilt(taps, x), filtfilt(taps, [1.0], x, axis=-1), atol=1e-9)


def test_bca_bias_correction_counts_ties_with_the_estimate_as_half() -> None:
    from hubert_ecg.metrics import bca_bounds

    # Half the replicates tie with the estimate, a quarter lie on each side: z0 = Phi^-1(1/2) = 0, and a
    # symmetric jackknife gives acceleration 0, so BCa reduces to the plain percentile interval.
    theta = np.array([1.0] * 50 + [0.0] * 25 + [2.0] * 25)
    jack = np.array([-1.0, 0.0, 1.0])
    assert bca_bounds(1.0, theta, jack, 0.9) == pytest.approx((0.0, 2.0))
    assert bca_bounds(1.0, theta, jack, 0.9) == pytest.approx(tuple(np.percentile(theta, [5, 95])))


def test_pipeline_pools_a_records_windows_by_the_chosen_aggregate() -> None:
    import torch

    from hubert_ecg.config import HeadConfig
    from hubert_ecg.model import create_model
    from hubert_ecg.pipeline import ECGPipeline

    torch.manual_seed(0)
    model = create_model("tiny")
    model.set_head(HeadConfig(num_labels=2))
    model.eval()
    signal = np.random.default_rng(3).normal(size=(12, 1200))  # 12 s at 100 Hz: 3 sliding windows
    preds = {how: ECGPipeline(model, aggregate=how).predict(signal, fs=100) for how in ("mean", "max")}
    for how, pool in (("mean", np.mean), ("max", np.max)):
        assert preds[how].n_windows == 3
        np.testing.assert_allclose(preds[how].probabilities, pool(preds[how].window_probabilities, axis=0), rtol=1e-6)
    mean, high = preds["mean"].probabilities, preds["max"].probabilities
    assert np.all(high >= mean - 1e-7) and np.any(high > mean + 1e-6)


def test_window_layout_round_trips_and_zero_leads_hits_the_right_slices() -> None:
    import torch

    from hubert_ecg.preprocess import PreprocessSpec, flatten_window, unflatten_window, zero_leads

    x = np.arange(2 * 12 * 5, dtype=np.float32).reshape(2, 12, 5)
    flat = flatten_window(x)
    assert flat.shape == (2, 60) and flat[0, 5:10].tolist() == x[0, 1].tolist()  # leads end to end
    np.testing.assert_array_equal(unflatten_window(flat), x)
    keep = np.zeros(12, dtype=bool)
    keep[[0, 11]] = True
    out = zero_leads(flat, keep)
    np.testing.assert_array_equal(unflatten_window(out)[:, keep], x[:, keep])
    assert not unflatten_window(out)[:, ~keep].any()
    np.testing.assert_array_equal(zero_leads(torch.from_numpy(flat), torch.from_numpy(keep)).numpy(), out)
    spec = PreprocessSpec(scaling="zscore", target_hz=100.0)
    assert PreprocessSpec.from_dict(spec.to_dict()) == spec


def test_aggregate_windows_exact_in_order_of_first_appearance() -> None:
    from hubert_ecg.metrics import aggregate_windows

    probs = np.array([[0.2], [0.9], [0.4], [0.1], [0.6]])
    ids = np.array(["b", "a", "b", "c", "a"])
    groups, mean = aggregate_windows(probs, ids, how="mean")
    assert groups.tolist() == ["b", "a", "c"]
    np.testing.assert_allclose(mean[:, 0], [0.3, 0.75, 0.1])
    _, high = aggregate_windows(probs, ids, how="max")
    np.testing.assert_allclose(high[:, 0], [0.4, 0.9, 0.1])


def test_temporal_and_fold_splits_follow_the_documented_rules() -> None:
    from hubert_ecg.store import normalise_splits, temporal_splits

    times = [5.0, 1.0, 3.0, 2.0, 4.0, 8.0, 7.0, 6.0]
    out = temporal_splits(times, (0.25, 0.25))  # shares exact in binary: no rounding at the cut points
    order = np.argsort(times)
    assert [out[i] for i in order] == ["train"] * 4 + ["val"] * 2 + ["test"] * 2
    assert normalise_splits(["1", "2", "3", "10", "9", " 3"], "x") == [
        "train",
        "train",
        "train",
        "test",
        "val",
        "train",
    ]


def test_l2_normaliser_leaves_an_all_zero_row_at_zero() -> None:
    from hubert_ecg.pretraining.kmeans import FeatureNormaliser

    out = FeatureNormaliser("l2").transform(np.array([[0.0, 0.0], [3.0, 4.0]]))
    np.testing.assert_array_equal(out, [[0.0, 0.0], [0.6, 0.8]])


def test_run_windows_zeroes_padded_tokens_in_per_token_output() -> None:
    import torch

    from hubert_ecg.inference import run_windows
    from hubert_ecg.model import create_model

    torch.manual_seed(0)
    model = create_model("tiny").eval()
    x = np.random.default_rng(1).normal(size=(1, 6000)).astype(np.float32)
    mask = np.tile(np.arange(500) < 250, 12)[None]
    x[~mask] = 0.0
    tokens = run_windows(model, x, mask, tokens=True)["embedding"]
    with torch.no_grad():
        ref = model(torch.from_numpy(x), torch.from_numpy(mask))
    valid = ref.token_mask[0].numpy()
    assert 0 < valid.sum() < len(valid)
    assert not tokens[0, ~valid].any()  # padded tokens are exactly zero
    np.testing.assert_allclose(tokens[0, valid], ref.last_hidden_state[0, valid].numpy(), rtol=1e-5, atol=1e-6)


def test_finetune_lead_dropout_differs_per_micro_batch_and_repeats_on_resume() -> None:
    import torch

    from hubert_ecg.distributed import DistEnv
    from hubert_ecg.finetune import FinetuneObjective

    objective = object.__new__(FinetuneObjective)  # only what training_loss reads
    objective.opts = SimpleNamespace(lead_dropout=0.5, task="multi_label", loss="auto")  # type: ignore[assignment]
    objective.seed, objective.pos_weight, objective.class_weight = 3, None, None
    seen: list[np.ndarray] = []

    def module(x, mask):  # noqa: ANN001, ANN202
        seen.append(x.reshape(len(x), 12, -1).abs().amax(-1).gt(0).numpy())
        return SimpleNamespace(logits=torch.zeros(len(x), 1))

    batch = {"input": torch.ones(8, 12 * 5), "labels": torch.zeros(8, 1), "full": True}

    def kept(step: int, micro: int, rank: int = 0) -> np.ndarray:
        objective.training_loss(module, batch, step, DistEnv(rank=rank, world_size=2), micro=micro, accum=2)
        return seen[-1]

    first = kept(5, 0)
    assert 0 < first.sum() < first.size and first.any(axis=1).all()  # some leads dropped, never all of a record
    np.testing.assert_array_equal(kept(5, 0), first)  # same (seed, step, micro, rank): same leads (resume)
    assert not np.array_equal(kept(5, 1), first)  # the other micro-batch of the step
    assert not np.array_equal(kept(6, 0), first)
    assert not np.array_equal(kept(5, 0, rank=1), first)


def test_label_value_rules_per_task() -> None:
    from hubert_ecg.metrics import MetricsInputError, compute_metrics
    from hubert_ecg.tasks import get_task

    nan = np.nan
    values = np.array([[0.0], [-1.0], [2.0], [1.5], [nan], [1.0]])
    assert get_task("multi_class").invalid_labels(values)[0][:, 0].tolist() == [False, True, False, True, True, False]
    assert get_task("binary").invalid_labels(values)[0][:, 0].tolist() == [False, True, True, True, True, False]
    assert get_task("multi_label").invalid_labels(values)[0][:, 0].tolist() == [False, True, True, True, False, False]
    with pytest.raises(MetricsInputError, match=r"class indices in 0\.\.2; row 1 holds 3"):
        compute_metrics("multi_class", np.array([0, 3]), np.array([[0.5, 0.3, 0.2], [0.2, 0.2, 0.6]]))


def test_single_column_tasks_drop_records_with_a_blank_label() -> None:
    from hubert_ecg.evaluate import _scorable
    from hubert_ecg.metrics import compute_metrics, task_metrics

    nan = np.nan
    labels = np.array([[1, nan], [nan, 1], [0, 0], [1, 1], [0, nan]], dtype=np.float32)
    probs = np.array([0.8, 0.9, 0.3, 0.6, 0.7])
    r = task_metrics("binary", labels, probs)
    keep = [0, 2, 3, 4]
    ref = compute_metrics("binary", labels[keep, 0].astype(int), probs[keep])
    assert r.n_records == 4 and r.per_label["auroc"][0] == pytest.approx(ref.per_label["auroc"][0])
    # Only the column the task reads decides; a blank elsewhere does not drop the record.
    assert _scorable("binary", labels, warn=False).tolist() == [True, False, True, True, True]
    assert _scorable("multi_label", labels, warn=False).all()
