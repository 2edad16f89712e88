"""Exact-value and reference-parity checks of core rules that a plausible one-token bug would break.

Each test pins one property (a bin edge, a formula term, a split rule, a lead formula ...) on tiny
hand-made inputs or against scikit-learn / NumPy, so that a regression fails here rather than only
shifting a number somewhere downstream.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.calibration import calibration_curve
from sklearn.metrics import precision_score, recall_score

from hubert_ecg.metrics import compute_metrics, ece_bin_index

# ---------------------------------------------------------------------------------------------
# metrics
# ---------------------------------------------------------------------------------------------


def test_ece_bin_edges_follow_sklearn_left_closed_bins() -> None:
    # sklearn's calibration_curve: bin = searchsorted(edges[1:-1], p) (side "left"), so a score on
    # an inner edge belongs to the LOWER bin and 1.0 to the last one.
    scores = np.array([0.0, 0.05, 0.1, 0.1000001, 0.5, 0.55, 0.9, 0.95, 1.0])
    assert ece_bin_index(scores, 10).tolist() == [0, 0, 0, 1, 4, 5, 8, 9, 9]


def test_ece_exact_value_with_a_score_on_a_bin_edge() -> None:
    y = np.array([1, 0])
    p = np.array([0.1, 0.05])
    # sklearn puts both records in one bin (the edge score 0.1 joins the lower bin).
    prob_true, prob_pred = calibration_curve(y, p, n_bins=10)
    assert len(prob_true) == 1
    expected = abs(prob_true[0] - prob_pred[0])  # one bin holding every record
    result = compute_metrics("binary", y, p)
    assert result.per_label["ece"][0] == pytest.approx(expected)
    assert result.per_label["ece"][0] == pytest.approx(0.425)


def test_npv_and_specificity_exact_on_a_hand_made_example() -> None:
    y = np.array([1, 1, 1, 0, 0])
    p = np.array([0.9, 0.2, 0.3, 0.6, 0.1])
    # decisions at 0.5: [1, 0, 0, 1, 0] -> tp 1, fn 2, fp 1, tn 1
    r = compute_metrics("binary", y, p)
    assert r.per_label["npv"][0] == pytest.approx(1 / 3)
    assert r.per_label["specificity"][0] == pytest.approx(1 / 2)
    assert r.per_label["precision"][0] == pytest.approx(1 / 2)
    assert r.per_label["sensitivity"][0] == pytest.approx(1 / 3)


def test_npv_and_specificity_match_sklearn_with_negative_class_as_positive(rng: np.random.Generator) -> None:
    y = (rng.random((200, 3)) < [0.2, 0.4, 0.6]).astype(int)
    p = np.clip(0.3 * y + 0.7 * rng.random(y.shape), 0, 1)
    r = compute_metrics("multi_label", y, p)
    for j in range(3):
        pred = (p[:, j] >= 0.5).astype(int)
        # NPV is the precision of the negative class; specificity its recall.
        assert r.per_label["npv"][j] == pytest.approx(precision_score(y[:, j], pred, pos_label=0))
        assert r.per_label["specificity"][j] == pytest.approx(recall_score(y[:, j], pred, pos_label=0))


def test_task_metrics_leave_a_blank_label_out_instead_of_reading_it_as_zero() -> None:
    from sklearn.metrics import roc_auc_score

    from hubert_ecg.metrics import task_metrics, task_thresholds
    from hubert_ecg.tasks import get_task

    nan = np.nan
    labels = np.array([[1, 0], [0, 1], [1, 0], [nan, 1], [0, 0], [nan, 1]], dtype=np.float32)
    probs = np.array([[0.8, 0.1], [0.3, 0.7], [0.6, 0.2], [0.95, 0.9], [0.2, 0.4], [0.9, 0.6]])
    assert np.isnan(get_task("multi_label").metric_targets(labels)).sum() == 2  # blanks stay blank
    r = task_metrics("multi_label", labels, probs)
    known = np.isfinite(labels[:, 0])
    assert r.per_label["auroc"][0] == pytest.approx(roc_auc_score(labels[known, 0], probs[known, 0]))
    assert r.per_label["auroc"][0] == pytest.approx(1.0)  # read as negatives, the blanks would lower it
    assert r.n_positive.tolist() == [2, 3]
    # Thresholds are tuned on the known values only: label 0's best cut lies between 0.3 and 0.6.
    thr = task_thresholds("multi_label", labels, probs)
    assert thr[0] == pytest.approx(0.45)


# ---------------------------------------------------------------------------------------------
# compare
# ---------------------------------------------------------------------------------------------


def test_paired_bootstrap_matches_a_naive_sklearn_loop_two_sided_p(rng: np.random.Generator) -> None:
    from sklearn.metrics import roc_auc_score

    from hubert_ecg.compare import paired_bootstrap

    n = 80
    y = rng.integers(0, 2, n)
    a = np.clip(0.2 * y + 0.8 * rng.random(n), 0, 1)
    b = np.clip(0.25 * y + 0.75 * rng.random(n), 0, 1)
    out = paired_bootstrap("binary", y, a, b, n_resamples=60, seed=5, confidence=0.9)
    draws = np.random.default_rng(5).integers(0, n, size=(60, n))
    diffs = np.array([roc_auc_score(y[d], b[d]) - roc_auc_score(y[d], a[d]) for d in draws if 0 < y[d].sum() < n])
    d = out["per_label"]["positive"]["auroc"]
    assert d["difference"] == pytest.approx(roc_auc_score(y, b) - roc_auc_score(y, a))
    assert d["n_used"] == len(diffs)
    low, high = np.quantile(diffs, [0.05, 0.95])
    assert (d["lower"], d["upper"]) == pytest.approx((low, high), abs=1e-12)
    two_sided = min(1.0, max(2 * min((diffs <= 0).mean(), (diffs >= 0).mean()), 1 / len(diffs)))
    assert d["p_value"] == pytest.approx(two_sided)


def test_paired_difference_p_value_exact() -> None:
    from hubert_ecg.compare import _diff_stats

    # 1 of 4 replicates at or below 0, 3 at or above: two-sided p = 2 * 1/4.
    out = _diff_stats(0.5, np.array([-1.0, 1.0, 2.0, 3.0]), 0.95, "percentile", None)
    assert out["p_value"] == pytest.approx(0.5)
    # Never 0: all replicates above 0 gives 1 / B.
    assert _diff_stats(0.5, np.array([1.0, 2.0, 3.0, 4.0]), 0.95, "percentile", None)["p_value"] == pytest.approx(0.25)


# ---------------------------------------------------------------------------------------------
# preprocess: windows
# ---------------------------------------------------------------------------------------------


def test_random_window_starts_reach_the_last_valid_start() -> None:
    from hubert_ecg.preprocess import window_starts

    starts = window_starts(503, 500, mode="random", n_crops=400, rng=0)
    assert set(starts.tolist()) == {0, 1, 2, 3}  # uniform over [0, n - window], both ends included
    assert window_starts(500, 500, mode="random", n_crops=3, rng=0).tolist() == [0, 0, 0]
    assert window_starts(501, 500, mode="sliding", stride=200).tolist() == [0, 1]
    assert window_starts(1700, 500, mode="sliding", stride=500).tolist() == [0, 500, 1000, 1200]


def test_parse_lead_set_canonical_names_in_standard_order_and_errors() -> None:
    from hubert_ecg.preprocess import lead_keep_mask, parse_lead_set

    assert parse_lead_set(" v2, I , avr ") == ("I", "aVR", "V2")
    assert parse_lead_set("limb") == ("I", "II", "III", "aVR", "aVL", "aVF")
    assert lead_keep_mask(parse_lead_set("V6,II")).tolist() == [False, True] + [False] * 9 + [True]
    with pytest.raises(ValueError, match="names a lead twice"):
        parse_lead_set("I,i")
    with pytest.raises(ValueError, match="unknown lead 'V7'"):
        parse_lead_set("I,V7")


# ---------------------------------------------------------------------------------------------
# loader (duck-typed stores: only the attributes the loader reads)
# ---------------------------------------------------------------------------------------------


class _FakeStore:
    """Rows of ``lengths`` samples; ``record_ids``/``segments`` say which rows are segments of one record."""

    def __init__(self, lengths: list[int], record_ids: list[str] | None = None, segments: list[int] | None = None):
        self.lengths = np.asarray(lengths, dtype=np.int64)
        self.record_ids = np.asarray(record_ids or [f"r{i}" for i in range(len(lengths))])
        self.segments = np.asarray(segments or [0] * len(lengths), dtype=np.int64)
        self.labels = None
        self.path = "fake"
        self.row_samples = int(self.lengths.max())

    def __len__(self) -> int:
        return len(self.lengths)

    def crops(self, rows: np.ndarray, starts: np.ndarray, window: int) -> tuple[np.ndarray, np.ndarray]:
        valid = (starts[:, None] + np.arange(window)[None, :]) < self.lengths[rows][:, None]
        return np.zeros((len(rows), 12, window), dtype=np.float32), valid

    def record_groups(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        uniq, inverse = np.unique(self.record_ids[rows].astype(str), return_inverse=True)
        return uniq, inverse


def test_random_crops_cover_every_start_from_zero_to_the_last() -> None:
    from hubert_ecg.loader import StoreWindows

    ds = StoreWindows(_FakeStore([502]), window=500, crop="random", seed=3)  # type: ignore[arg-type]
    starts = {int(ds[(key, np.array([0]))]["start"][0]) for key in range(200)}
    assert starts == {0, 1, 2}
    # A record no longer than the window always starts at 0.
    ds_short = StoreWindows(_FakeStore([500]), window=500, crop="random", seed=3)  # type: ignore[arg-type]
    assert {int(ds_short[(k, np.array([0]))]["start"][0]) for k in range(20)} == {0}


def test_batch_sampler_reshuffles_per_epoch_with_epoch_keys() -> None:
    from hubert_ecg.loader import BatchSampler

    rows = np.arange(10, 22)
    first = list(BatchSampler(rows, 4, seed=7, epoch=0))
    second = list(BatchSampler(rows, 4, seed=7, epoch=1))
    expected0 = rows[np.random.default_rng([7, 0]).permutation(12)]
    expected1 = rows[np.random.default_rng([7, 1]).permutation(12)]
    np.testing.assert_array_equal(np.concatenate([r for _, r in first]), expected0)
    np.testing.assert_array_equal(np.concatenate([r for _, r in second]), expected1)
    assert not np.array_equal(expected0, expected1)
    # Keys (which seed the random crops) differ between epochs, so the crops do too.
    assert [k for k, _ in first] == [0, 1, 2]
    assert [k for k, _ in second] == [1_000_003, 1_000_004, 1_000_005]
    # Resuming at batch 2 of epoch 1 yields exactly the rest of that epoch.
    rest = list(BatchSampler(rows, 4, seed=7, epoch=1, start_batch=2))
    assert [k for k, _ in rest] == [1_000_005]
    np.testing.assert_array_equal(rest[0][1], second[2][1])


def test_batch_sampler_drop_last_counts_and_rank_slices() -> None:
    from hubert_ecg.loader import BatchSampler

    rows = np.arange(10)
    assert BatchSampler(rows, 4, drop_last=True).batches_per_epoch() == 2
    assert BatchSampler(rows, 4, drop_last=False).batches_per_epoch() == 3
    assert len(list(BatchSampler(rows, 4, drop_last=True))) == 2
    # Fewer rows than one batch: one partial batch even with drop_last.
    assert BatchSampler(np.arange(3), 4, drop_last=True).batches_per_epoch() == 1
    whole = list(BatchSampler(rows, 4, seed=1, shuffle=True))
    parts = [list(BatchSampler(rows, 4, seed=1, rank=r, world_size=2)) for r in range(2)]
    for b, (_, global_rows) in enumerate(whole):
        np.testing.assert_array_equal(np.concatenate([parts[0][b][1], parts[1][b][1]]), global_rows)
        np.testing.assert_array_equal(parts[0][b][1], global_rows[:2])


def test_evaluation_windows_sliding_starts_and_first_segment() -> None:
    from hubert_ecg.loader import evaluation_windows

    store = _FakeStore([1200], ["a"])
    win = evaluation_windows(store, np.array([0]), window=500, mode="sliding", stride=300)  # type: ignore[arg-type]
    assert win.starts.tolist() == [0, 300, 600, 700]  # the last window ends flush with the record
    # Two segments of one record stored out of order: "first" takes segment 0, sliding walks them in order.
    seg = _FakeStore([700, 600], ["a", "a"], segments=[1, 0])
    first = evaluation_windows(seg, np.array([0, 1]), window=500, mode="first")  # type: ignore[arg-type]
    assert first.rows.tolist() == [1] and first.starts.tolist() == [0]
    sliding = evaluation_windows(seg, np.array([0, 1]), window=500, mode="sliding")  # type: ignore[arg-type]
    assert list(zip(sliding.rows.tolist(), sliding.starts.tolist())) == [(1, 0), (1, 100), (0, 0), (0, 200)]
    assert sliding.groups.tolist() == [0, 0, 0, 0] and sliding.record_ids.tolist() == ["a"]


# ---------------------------------------------------------------------------------------------
# store: splits
# ---------------------------------------------------------------------------------------------


class _SplitStore:
    """The columns :func:`hubert_ecg.store.train_val_rows` reads."""

    def __init__(self, splits: list[str], record_ids: list[str] | None = None, groups: list[str] | None = None):
        n = len(splits)
        self.splits = np.asarray(splits, dtype=object)
        self.record_ids = np.asarray(record_ids or [f"r{i:03d}" for i in range(n)], dtype=object)
        self.groups = np.asarray(groups or [""] * n, dtype=object)
        self.path = "fake-store"

    def __len__(self) -> int:
        return len(self.splits)


def test_train_val_rows_validates_a_seeded_fraction_of_training_records_never_test() -> None:
    from hubert_ecg.store import train_val_rows

    n = 100
    store = _SplitStore(["train"] * 80 + ["test"] * 20)
    train, val, note = train_val_rows(store, fraction=0.2, seed=4)  # type: ignore[arg-type]
    expected_val = np.flatnonzero(np.random.default_rng(4).random(80) < 0.2)
    np.testing.assert_array_equal(val, expected_val)
    assert 8 <= len(val) <= 28  # ~20 % of the 80 training records, not ~80 %
    np.testing.assert_array_equal(np.sort(np.concatenate([train, val])), np.arange(80))
    assert not np.isin(np.arange(80, n), np.concatenate([train, val])).any()  # test rows never used
    assert "test rows untouched" in note
    # Given train/val splits are used as they are (spellings mapped).
    given = _SplitStore(["training", "dev", "test", "train", "validation"])
    train2, val2, _ = train_val_rows(given)  # type: ignore[arg-type]
    assert train2.tolist() == [0, 3] and val2.tolist() == [1, 4]


def test_hashed_record_splits_have_the_asked_shares() -> None:
    from hubert_ecg.store import _split_for

    ids = [f"patient{i}" for i in range(3000)]
    splits = [_split_for(r, (0.1, 0.25), 0) for r in ids]
    shares = {s: splits.count(s) / len(ids) for s in ("train", "val", "test")}
    assert shares["val"] == pytest.approx(0.1, abs=0.025)
    assert shares["test"] == pytest.approx(0.25, abs=0.03)
    assert shares["train"] == pytest.approx(0.65, abs=0.03)
    # Deterministic per (seed, record): the same id lands in the same split; another seed reshuffles.
    assert splits == [_split_for(r, (0.1, 0.25), 0) for r in ids]
    assert splits != [_split_for(r, (0.1, 0.25), 1) for r in ids]
    assert _split_for("x", (0.0, 0.0), 0) == ""


def test_grouped_splits_never_fill_a_split_with_zero_share() -> None:
    from hubert_ecg.store import grouped_splits

    rng = np.random.default_rng(0)
    groups = [f"p{i // 2}" for i in range(120)]  # 60 patients, 2 records each
    labels = (rng.random((120, 2)) < [0.1, 0.4]).astype(float)
    no_test = grouped_splits(groups, (0.2, 0.0), seed=1, labels=labels)
    assert "test" not in no_test
    assert no_test.count("val") / 120 == pytest.approx(0.2, abs=0.06)
    no_val = grouped_splits(groups, (0.0, 0.3), seed=1)
    assert "val" not in no_val
    assert no_val.count("test") / 120 == pytest.approx(0.3, abs=0.06)
    for out in (no_test, no_val):  # a patient's records share one split
        assert all(out[i] == out[i + 1] for i in range(0, 120, 2))


# ---------------------------------------------------------------------------------------------
# training: schedule, monitor direction, one optimizer step
# ---------------------------------------------------------------------------------------------


def test_linear_warmup_then_linear_decay_exact_factors() -> None:
    from hubert_ecg.training import _linear_warmup_decay

    f = _linear_warmup_decay(10, 0.2)  # warm-up of 2 steps, then decay to 0 at step 10
    assert [f(s) for s in range(11)] == pytest.approx(
        [0.5, 1.0, 1.0, 7 / 8, 6 / 8, 5 / 8, 4 / 8, 3 / 8, 2 / 8, 1 / 8, 0]
    )
    g = _linear_warmup_decay(4, 0.0)  # no warm-up: the first step uses the full rate
    assert [g(s) for s in range(5)] == pytest.approx([1.0, 0.75, 0.5, 0.25, 0.0])


def test_improved_respects_monitor_direction_and_min_delta() -> None:
    from hubert_ecg.training import TrainConfig, _improved

    low = TrainConfig(out_dir="unused", monitor="loss", monitor_mode="min", min_delta=0.01)
    high = TrainConfig(out_dir="unused", monitor="auroc", monitor_mode="max", min_delta=0.01)
    assert _improved(0.5, None, low) and _improved(0.5, None, high)
    assert _improved(0.48, 0.5, low) and not _improved(0.495, 0.5, low) and not _improved(0.6, 0.5, low)
    assert _improved(0.52, 0.5, high) and not _improved(0.505, 0.5, high) and not _improved(0.4, 0.5, high)
    assert not _improved(float("nan"), 0.5, high)


def _toy_run(grad_accum: int) -> tuple[object, torch.nn.Linear]:
    import contextlib
    from types import SimpleNamespace

    from hubert_ecg.distributed import DistEnv
    from hubert_ecg.training import TrainState

    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1)

    class Objective:
        def training_loss(self, module, batch, step, env, micro=0, accum=1):  # noqa: ANN001, ANN201
            return (module(batch["input"]) ** 2).mean(), {}

    class SGD:
        """Plain SGD (lr 0.1); a real torch optimizer's first construction imports torch._dynamo (seconds)."""

        def step(self) -> None:
            with torch.no_grad():
                for p in model.parameters():
                    p -= 0.1 * p.grad

        def zero_grad(self, set_to_none: bool = True) -> None:
            for p in model.parameters():
                p.grad = None

    run = SimpleNamespace(
        cfg=SimpleNamespace(grad_accum=grad_accum, clip_grad_norm=0.0),
        env=DistEnv(),
        module=model,
        model=model,
        objective=Objective(),
        autocast=contextlib.nullcontext,
        scaler=None,
        state=TrainState(),
        device=torch.device("cpu"),
        optimizer=SGD(),
        scheduler=SimpleNamespace(step=lambda: None),
        bar=SimpleNamespace(update=lambda n: None),
    )
    return run, model


def test_gradient_accumulation_averages_micro_batches_and_the_step_clears_gradients() -> None:
    from hubert_ecg.training import _LogWindow, _optimizer_step, _training_step

    x1, x2 = torch.tensor([[1.0, 2.0, 3.0]]), torch.tensor([[-1.0, 0.5, 2.0]])
    run, model = _toy_run(grad_accum=2)
    reference = torch.nn.Linear(3, 1)
    reference.load_state_dict(model.state_dict())
    ((reference(x1) ** 2).mean() + (reference(x2) ** 2).mean()).div(2).backward()  # mean over the 2 micro-batches
    window = _LogWindow(running={"loss": torch.zeros(())})
    _training_step(run, {"input": x1}, 0, False, window)  # type: ignore[arg-type]
    _training_step(run, {"input": x2}, 1, True, window)  # type: ignore[arg-type]
    assert torch.allclose(model.weight.grad, reference.weight.grad)
    assert torch.allclose(model.bias.grad, reference.bias.grad)
    before = model.weight.detach().clone()
    _optimizer_step(run, window)  # type: ignore[arg-type]
    assert torch.allclose(model.weight, before - 0.1 * reference.weight.grad)
    assert model.weight.grad is None and model.bias.grad is None  # cleared for the next step
    assert run.state.step == 1 and window.steps == 1  # type: ignore[attr-defined]


def test_validation_runs_in_eval_mode_and_training_mode_comes_back(tmp_path) -> None:  # noqa: ANN001
    import contextlib

    from hubert_ecg.distributed import DistEnv
    from hubert_ecg.model import create_model
    from hubert_ecg.training import RunLogger, TrainConfig, TrainState, _validate_and_checkpoint

    seen: list[tuple[bool, bool]] = []

    class Objective:
        def validate(self, model, device, autocast):  # noqa: ANN001, ANN201
            seen.append((model.training, torch.is_grad_enabled()))
            return {"val_loss": 0.5}

    model = create_model("tiny")
    model.train()
    cfg = TrainConfig(out_dir=str(tmp_path), monitor="val_loss", monitor_mode="min")
    state = TrainState(step=3)
    logger = RunLogger(tmp_path, "none", {}, True)
    _validate_and_checkpoint(
        model,
        Objective(),
        cfg,
        state,
        torch.device("cpu"),
        contextlib.nullcontext,
        logger,
        DistEnv(),  # type: ignore[arg-type]
    )
    assert seen == [(False, False)]  # dropout off, no autograd graph during validation
    assert model.training  # back to training for the next step
    assert state.best == 0.5 and state.best_step == 3 and (tmp_path / "best" / "metrics.json").exists()


# ---------------------------------------------------------------------------------------------
# tasks
# ---------------------------------------------------------------------------------------------


def test_task_decisions_at_the_threshold_are_positive() -> None:
    from hubert_ecg.tasks import get_task

    ml = get_task("multi_label")
    assert ml.decisions(np.array([[0.5, 0.49]])).tolist() == [[1, 0]]
    assert ml.decisions(np.array([[0.3, 0.49]]), [0.3, 0.5]).tolist() == [[1, 0]]
    assert get_task("binary").decisions(np.array([0.7, 0.2]), [0.2]).tolist() == [1, 1]
    assert get_task("multi_class").decisions(np.array([[0.2, 0.5, 0.3]])).tolist() == [[0, 1, 0]]
    assert get_task("regression").decisions(np.array([1.5, -2.0])).tolist() == [-1, -1]


def test_task_weights_outputs_and_monitor_directions_exact() -> None:
    from hubert_ecg.tasks import get_task, monitor_mode

    nan = np.nan
    labels = np.array([[1, 0], [0, 0], [1, nan], [0, 1]], dtype=np.float32)
    pos_weight, none = get_task("multi_label").training_weights(labels, pos_weight=True, class_weights=False)
    assert none is None and pos_weight.tolist() == pytest.approx([2 / 2, 2 / 1])  # negatives / positives, known only
    classes = np.array([[0], [0], [0], [1]], dtype=np.float32)
    mc = get_task("multi_class")
    assert mc.num_outputs(np.array([[0], [2], [nan]])) == 3
    _, weight = mc.training_weights(classes, pos_weight=False, class_weights=True, n_outputs=3)
    assert weight.tolist() == pytest.approx([4 / (3 * 3), 4 / (3 * 1), 4 / (3 * 1)])  # N / (C * count), count >= 1
    for metric, mode in {"loss": "min", "mae": "min", "rmse": "min", "auroc": "max", "r2": "max", "f1": "max"}.items():
        assert monitor_mode(metric) == mode


def test_per_label_loss_averages_only_the_known_cells() -> None:
    import torch.nn.functional as F

    from hubert_ecg.tasks import get_task

    logits = torch.tensor([[0.3, -1.0], [2.0, 0.5]])
    labels = torch.tensor([[1.0, float("nan")], [0.0, 1.0]])
    loss = get_task("multi_label").loss(logits, labels)
    known = torch.tensor([True, False, True, True])
    per = F.binary_cross_entropy_with_logits(logits.flatten(), torch.nan_to_num(labels).flatten(), reduction="none")
    assert float(loss) == pytest.approx(float(per[known].mean()))
    pw = torch.tensor([3.0, 1.0])
    weighted = get_task("multi_label").loss(logits, labels, pos_weight=pw)
    per_w = F.binary_cross_entropy_with_logits(
        logits, torch.nan_to_num(labels), reduction="none", pos_weight=pw
    ).flatten()
    assert float(weighted) == pytest.approx(float(per_w[known].mean()))
    reg = get_task("regression").loss(torch.tensor([[1.0], [3.0], [0.0]]), torch.tensor([[2.0], [float("nan")], [1.0]]))
    assert float(reg) == pytest.approx(1.0)  # (1 + 1) / 2 known cells


# ---------------------------------------------------------------------------------------------
# pre-training objective, span masks, token masks, pooling
# ---------------------------------------------------------------------------------------------


def test_masked_prediction_loss_exact_on_masked_and_unmasked_tokens() -> None:
    import torch.nn.functional as F

    from hubert_ecg.pretraining.objective import masked_prediction_loss

    torch.manual_seed(0)
    logits = [torch.randn(1, 5, 3), torch.randn(1, 5, 4)]
    targets = torch.tensor([[[0, 1, 2, 0, 1], [3, 2, 1, 0, 3]]])
    mask = torch.tensor([[True, True, False, False, False]])
    valid = torch.tensor([[True, True, True, True, False]])  # the last token is padding
    ce = [F.cross_entropy(lg[0], targets[0, i], reduction="none") for i, lg in enumerate(logits)]
    masked_ce = sum(c[:2].mean() for c in ce)
    unmasked_ce = sum(c[2:4].mean() for c in ce)
    loss, stats = masked_prediction_loss(logits, targets, mask, valid, alpha=1.0)
    assert float(loss) == pytest.approx(float(masked_ce), rel=1e-6)
    loss_mix, _ = masked_prediction_loss(logits, targets, mask, valid, alpha=0.25)
    assert float(loss_mix) == pytest.approx(float(0.25 * masked_ce + 0.75 * unmasked_ce), rel=1e-6)
    hits = [((lg[0].argmax(-1) == targets[0, i])[:2]).float().mean() for i, lg in enumerate(logits)]
    assert float(stats["masked_acc"]) == pytest.approx(float(sum(hits) / 2))
    perfect = [F.one_hot(targets[:, i], k).float() * 50 for i, k in enumerate((3, 4))]
    _, perfect_stats = masked_prediction_loss(perfect, targets, mask, valid)
    assert float(perfect_stats["masked_acc"]) == pytest.approx(1.0)  # a mean over codebooks, not a sum


def test_span_mask_may_start_at_the_last_position_that_fits_and_counts_spans_exactly() -> None:
    from hubert_ecg.model import sample_span_mask

    scores = torch.zeros(1, 12)
    scores[0, 7] = 1.0  # the best-scored start is n - mask_length with n = 10 valid tokens
    token_mask = torch.tensor([[True] * 10 + [False] * 2])
    mask = sample_span_mask(
        1, 12, mask_prob=0.0, mask_length=3, min_masks=1, token_mask=token_mask, scores=scores, u=torch.tensor(0.0)
    )
    assert torch.nonzero(mask[0]).flatten().tolist() == [7, 8, 9]
    # int(0.5 * 12 / 2 + 0) = 3 spans of 2 at the three best starts.
    scores = torch.zeros(1, 12)
    scores[0, [0, 4, 8]] = torch.tensor([3.0, 2.0, 1.0])
    mask = sample_span_mask(1, 12, mask_prob=0.5, mask_length=2, min_masks=1, scores=scores, u=torch.tensor(0.0))
    assert torch.nonzero(mask[0]).flatten().tolist() == [0, 1, 4, 5, 8, 9]


def test_token_mask_needs_the_whole_receptive_field_and_matches_the_length_formula() -> None:
    from hubert_ecg.config import CONV_STEMS, num_tokens, token_mask_from_sample_mask

    sample = torch.tensor([[True] * 4 + [False] * 3])
    assert token_mask_from_sample_mask(sample, (3,), (2,)).tolist() == [[True, False, False]]
    assert num_tokens(7, (3,), (2,)) == 3 and num_tokens(2, (3,), (2,)) == 0
    kernels, strides = CONV_STEMS[100]["conv_kernel"], CONV_STEMS[100]["conv_stride"]
    assert num_tokens(6000, kernels, strides) == 93  # a 12-lead 5 s window at 100 Hz
    for valid in (82, 83, 146, 1000, 3001, 6000):
        m = np.zeros((1, 6000), dtype=bool)
        m[0, :valid] = True
        assert int(token_mask_from_sample_mask(m, kernels, strides).sum()) == num_tokens(valid, kernels, strides)


def test_pool_averages_valid_tokens_only() -> None:
    from hubert_ecg.model import HubertECG

    hidden = torch.arange(12, dtype=torch.float32).reshape(1, 4, 3)
    token_mask = torch.tensor([[True, True, False, False]])
    assert HubertECG.pool(hidden, token_mask).tolist() == [[1.5, 2.5, 3.5]]
    assert HubertECG.pool(hidden).tolist() == [[4.5, 5.5, 6.5]]


# ---------------------------------------------------------------------------------------------
# io: lead derivation and units
# ---------------------------------------------------------------------------------------------


def test_limb_leads_derived_by_einthoven_and_goldberger_exactly() -> None:
    from hubert_ecg.io.leads import arrange_leads

    rng = np.random.default_rng(0)
    lead_i, lead_iii = rng.normal(size=50), rng.normal(size=50)
    chest = rng.normal(size=(6, 50))
    channels = np.vstack([lead_i, lead_iii, chest])
    names = ["I", "III", "V1", "V2", "V3", "V4", "V5", "V6"]
    signal, info = arrange_leads("x", channels, names)
    lead_ii = lead_i + lead_iii
    expected = [lead_i, lead_ii, lead_iii, -(lead_i + lead_ii) / 2, lead_i - lead_ii / 2, lead_ii - lead_i / 2]
    np.testing.assert_allclose(signal[:6], np.vstack(expected), atol=1e-12)
    np.testing.assert_array_equal(signal[6:], chest)
    assert info["derived_leads"] == ["II", "aVR", "aVL", "aVF"]
    # Goldberger's leads sum to zero and aVL - aVF = (I - II) * 3 / 2.
    np.testing.assert_allclose(signal[3] + signal[4] + signal[5], 0, atol=1e-12)
    # Channels in another order (and C-names) land in the standard rows.
    shuffled, _ = arrange_leads("x", channels[::-1], ["C6", "C5", "C4", "C3", "C2", "C1", "DIII", "DI"])
    np.testing.assert_allclose(shuffled, signal, atol=1e-12)


def test_voltage_units_scale_to_millivolts() -> None:
    from hubert_ecg.io._build import _scale_to_mv
    from hubert_ecg.io.record import unit_scale_to_mv

    assert [unit_scale_to_mv(u) for u in ("uV", "µV", "mV", "V", "adu", None)] == [1e-3, 1e-3, 1.0, 1e3, None, None]
    data = np.ones((3, 4))
    out, unit = _scale_to_mv(data, ["uV", "mV", "V"], [], units_explained=True)
    assert unit == "mV" and out[:, 0].tolist() == [1e-3, 1.0, 1e3]
    warnings: list[str] = []
    kept, unit = _scale_to_mv(data, ["uV", "adu", "mV"], warnings, units_explained=True)
    assert unit == "unknown" and np.array_equal(kept, data) and "not a voltage" in warnings[0]
