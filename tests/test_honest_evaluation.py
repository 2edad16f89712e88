"""Evaluation honesty: labels matched by name, no scoring of seen records, leaks warned, reruns change nothing.

Each test asserts the exact property and would fail on the behaviour before the fix (noted per test).
"""

from __future__ import annotations

import csv
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import synthetic_12_lead
from hubert_ecg.checkpoint import load_model, save_pretrained
from hubert_ecg.evaluate import (
    FINETUNED_ON,
    compare_models,
    duplicate_signals,
    evaluate,
    report_scores,
    score_split,
    training_provenance,
)
from hubert_ecg.model import create_model
from hubert_ecg.store import ECGStore, train_val_rows
from hubert_ecg.synthetic import SYNTHETIC_LABELS

pytestmark = pytest.mark.usefixtures("single_threaded")
CPU = torch.device("cpu")


def _tiny(store: Path, out: Path, *, task: str, names: list[str], n_out: int, extra: dict | None = None) -> Path:
    torch.manual_seed(0)
    model = create_model("tiny", head={"num_labels": n_out})
    model.info.task = task
    model.info.label_names = list(names)
    model.info.preprocessing = ECGStore(store).spec.to_dict()
    model.info.extra.update(extra or {})
    return save_pretrained(model, out)


def _signals(n: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [synthetic_12_lead(rng, 2500).astype(np.float32) for _ in range(n)]


# ---- label columns: by name, never by position ----------------------------------------------------


def test_reordered_label_columns_are_matched_by_name(make_store, tmp_path: Path) -> None:
    # Before: a store with the same labels in another order was scored by position (a warning only), so
    # every label's AUROC was computed against another label's truth.
    names = list(SYNTHETIC_LABELS)
    store = make_store(12, seed=3, labels=names, root=tmp_path)
    reordered = make_store(12, seed=3, labels=names[::-1], root=tmp_path, name="reordered")
    assert ECGStore(reordered).label_names == names[::-1]
    model = load_model(_tiny(store, tmp_path / "m", task="multi_label", names=names, n_out=len(names)))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "matched by position" warning either
        a = score_split(model, ECGStore(store), "", device=CPU)
        b = score_split(model, ECGStore(reordered), "", device=CPU)
    np.testing.assert_array_equal(a.y_true, b.y_true)
    np.testing.assert_allclose(a.y_score, b.y_score)
    assert a.label_names == b.label_names == names


def test_a_missing_label_column_is_refused_and_extra_columns_are_ignored(make_store, tmp_path: Path) -> None:
    names = list(SYNTHETIC_LABELS)
    store = make_store(12, seed=3, labels=names, root=tmp_path)
    fewer = make_store(12, seed=3, labels=names[:3], root=tmp_path, name="fewer")
    model = load_model(_tiny(store, tmp_path / "m", task="multi_label", names=names[3:], n_out=2))
    with pytest.raises(ValueError, match=r"no label column 'st_elevation', 'irregular'.*matched by name"):
        score_split(model, ECGStore(fewer), "", device=CPU)
    scored = score_split(model, ECGStore(store), "", device=CPU)  # a superset: the model's two columns only
    full = ECGStore(store)
    np.testing.assert_array_equal(scored.y_true, full.labels[full.rows(), 3:])


def test_a_binary_model_reads_its_own_column_not_the_first(make_store, tmp_path: Path) -> None:
    # Before: binary (and multi-class) read the store's FIRST label column whatever the model learned.
    names = list(SYNTHETIC_LABELS)
    store = make_store(16, seed=4, labels=names, root=tmp_path)
    model = load_model(_tiny(store, tmp_path / "m", task="binary", names=["wide_qrs"], n_out=1))
    scored = score_split(model, ECGStore(store), "", device=CPU)
    st = ECGStore(store)
    np.testing.assert_array_equal(scored.y_true, st.labels[st.rows(), names.index("wide_qrs")])


def test_binary_labels_other_than_0_1_are_refused(make_store, tmp_path: Path) -> None:
    # Before: a 2 in a binary column was scored as a negative (y == 1 is the positive class), exit 0.
    rows = [{"ok": v, "split": "test"} for v in (0, 1, 2, 0, 1, 0)]
    store = make_store(signals=_signals(6), label_rows=rows, labels=["ok"], root=tmp_path)
    model = load_model(_tiny(store, tmp_path / "m", task="binary", names=["ok"], n_out=1))
    with pytest.raises(ValueError, match=r"record 'r002', label 'ok' is 2; binary labels must be 0 or 1"):
        score_split(model, ECGStore(store), "test", device=CPU)


def test_predictions_csv_labels_are_checked_as_store_labels_are(tmp_path: Path) -> None:
    from hubert_ecg.evaluate import evaluate_predictions

    (tmp_path / "p.csv").write_text("record_id,p_ok\na,0.2\nb,0.9\nc,0.4\n")
    (tmp_path / "l.csv").write_text("record_id,ok\na,0\nb,2\nc,1\n")
    with pytest.raises(ValueError, match=r"l.csv: record 'b', label 'ok' is 2; binary labels must be 0 or 1"):
        evaluate_predictions(tmp_path / "p.csv", tmp_path / "l.csv", tmp_path / "ev", task="binary", n_bootstrap=0)
    (tmp_path / "pc.csv").write_text("record_id,class_0,class_1\na,0.2,0.8\nb,0.9,0.1\nc,0.4,0.6\n")
    (tmp_path / "lc.csv").write_text("record_id,rhythm\na,0\nb,1\nc,2\n")
    with pytest.raises(ValueError, match=r"record 'c', label 'rhythm' is 2; the model has 2 classes"):
        evaluate_predictions(
            tmp_path / "pc.csv", tmp_path / "lc.csv", tmp_path / "ev", task="multi_class", n_bootstrap=0
        )


@pytest.mark.parametrize("field", ["val_split", "train_split"])
def test_fine_tuning_never_trains_or_validates_on_the_test_split(make_store, tmp_path: Path, field: str) -> None:
    from hubert_ecg.finetune import FinetuneOptions, run_finetune
    from hubert_ecg.training import TrainConfig

    store = make_store(24, seed=1, labels=list(SYNTHETIC_LABELS))
    cfg = TrainConfig(out_dir=str(tmp_path / "run"), max_steps=1, num_workers=0, progress=False)
    with pytest.raises(ValueError, match=rf"{field} 'Test' is the test split"):
        run_finetune(str(store), cfg, FinetuneOptions(), random_init_size="tiny", **{field: "Test"})
    assert not (tmp_path / "run").exists()


def _rhythm_store(make_store, root: Path, values: list[str], name: str) -> Path:
    rows = [{"rhythm": v, "split": "test"} for v in values]
    return make_store(
        signals=_signals(len(values), seed=len(values)), label_rows=rows, labels=["rhythm"], root=root, name=name
    )


def test_multi_class_indices_are_matched_by_class_name(make_store, tmp_path: Path) -> None:
    # Before: class index 1 meant OTHER in the training store and SR in a store without OTHER: silently
    # misaligned classes. A class the model never learned is refused.
    train = _rhythm_store(make_store, tmp_path / "a", ["AF", "OTHER", "SR", "SR", "AF", "OTHER"], "train")
    test = _rhythm_store(make_store, tmp_path / "b", ["SR", "AF", "SR", "AF", "SR"], "test")
    odd = _rhythm_store(make_store, tmp_path / "c", ["SR", "AF", "XX", "AF"], "odd")
    assert ECGStore(train).label_classes["rhythm"] == ["AF", "OTHER", "SR"]
    assert ECGStore(test).label_classes["rhythm"] == ["AF", "SR"]
    trained = {"label_columns": ["rhythm"], "label_classes": ["AF", "OTHER", "SR"]}
    path = _tiny(
        train, tmp_path / "m", task="multi_class", names=["AF", "OTHER", "SR"], n_out=3, extra={FINETUNED_ON: trained}
    )
    model = load_model(path)
    scored = score_split(model, ECGStore(test), "test", device=CPU)
    np.testing.assert_array_equal(scored.y_true, [2, 0, 2, 0, 2])  # SR is the model's class 2
    with pytest.raises(ValueError, match=r"class\(es\) 'XX' the model never learned"):
        score_split(model, ECGStore(odd), "test", device=CPU)


# ---- records the model has seen ------------------------------------------------------------------------


def _provenance_model(store: Path, out: Path) -> Path:
    st = ECGStore(store)
    train, val, _ = train_val_rows(st)
    extra = {FINETUNED_ON: training_provenance(st, (train, val), "multi_label")}
    names = list(st.label_names)
    return _tiny(store, out, task="multi_label", names=names, n_out=len(names), extra=extra)


@pytest.mark.parametrize("split", ["train", "val", ""])
def test_evaluating_on_rows_the_model_was_fine_tuned_on_is_refused(make_store, tmp_path: Path, split: str) -> None:
    # Before: evaluate scored the training (or validation, threshold-tuning) rows with exit 0 and no word.
    store = make_store(24, seed=1, labels=list(SYNTHETIC_LABELS))
    model = _provenance_model(store, tmp_path / "m")
    with pytest.raises(ValueError, match=r"fine-tuned on .*optimistic.*--allow-seen-records"):
        evaluate(model, store, tmp_path / "ev", split=split, n_bootstrap=0, device="cpu")
    assert not (tmp_path / "ev" / "metrics.json").exists()


def test_calibration_is_never_fitted_on_the_rows_the_model_trained_on(make_store, tmp_path: Path) -> None:
    # Before: --calibration-split train fitted Platt scaling on the training rows, where the model is over-confident.
    store = make_store(24, seed=1, labels=list(SYNTHETIC_LABELS))
    model = _provenance_model(store, tmp_path / "m")
    with pytest.raises(ValueError, match=r"--calibration-split train: the model was fine-tuned on these rows"):
        evaluate(
            model,
            store,
            tmp_path / "ev",
            split="test",
            calibrate="platt",
            calibration_split="train",
            n_bootstrap=0,
            device="cpu",
        )
    assert not (tmp_path / "ev" / "metrics.json").exists()


def test_seen_records_when_allowed_are_written_into_the_report(make_store, tmp_path: Path) -> None:
    store = make_store(24, seed=1, labels=list(SYNTHETIC_LABELS))
    model = _provenance_model(store, tmp_path / "m")
    with pytest.warns(UserWarning, match="optimistic"):
        evaluate(model, store, tmp_path / "ev", split="val", n_bootstrap=0, device="cpu", allow_seen_records=True)
    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert metrics["data_note"].startswith("WARNING: split 'val' holds")
    assert "records seen in fine-tuning" in metrics["extra"]
    # The held-out split is scored as before, with no caution; a store the model never saw is not checked.
    summary = evaluate(model, store, tmp_path / "ev-test", split="test", n_bootstrap=0, device="cpu")
    assert summary["records"] > 0
    with pytest.raises(ValueError, match="compare: .*fine-tuned on"):
        compare_models(model, model, tmp_path / "cmp", store=store, split="train", n_bootstrap=1, device="cpu")


def test_a_store_the_init_checkpoint_was_fine_tuned_on_stays_seen(make_store, tmp_path: Path) -> None:
    from hubert_ecg.finetune import _earlier_training

    store = make_store(24, seed=1, labels=list(SYNTHETIC_LABELS))
    first = load_model(_provenance_model(store, tmp_path / "m"))
    earlier = _earlier_training(first)  # what run_finetune keeps when it starts from this checkpoint
    other = {"path": str(tmp_path / "another-store"), "rows": 3, "manifest_sha256": "0" * 64, "seen_splits": ["train"]}
    names = list(SYNTHETIC_LABELS)
    extra = {FINETUNED_ON: {**other, "earlier": earlier}}
    second = _tiny(store, tmp_path / "m2", task="multi_label", names=names, n_out=len(names), extra=extra)
    with pytest.raises(ValueError, match="fine-tuned on"):
        evaluate(second, store, tmp_path / "ev", split="train", n_bootstrap=0, device="cpu")


# ---- the same recording under two ids -------------------------------------------------------------------


def test_identical_signals_across_splits_are_listed(make_store, tmp_path: Path, capsys) -> None:
    # Before: nothing looked at the signals; a record copied under a new id into test went unnoticed.
    signals = _signals(8, seed=7)
    signals.append(signals[0].copy())  # r008: r000's recording, exported again
    splits = ["train"] * 5 + ["val", "test", "test", "test"]
    rows = [{"a": i % 2, "split": s} for i, s in enumerate(splits)]
    store = make_store(signals=signals, label_rows=rows, labels=["a"], root=tmp_path)
    st = ECGStore(store)
    found = duplicate_signals(st, {s: st.rows(s) for s in ("train", "val", "test")})
    assert [e["members"] for e in found] == [[("test", "r008"), ("train", "r000")]]
    # fine-tuning says so on the console and lists the copies in the run folder
    from hubert_ecg.finetune import _report_duplicate_signals

    train, val, _ = train_val_rows(st)
    _report_duplicate_signals(st, (train, val), tmp_path, "cpu")
    err = capsys.readouterr().err
    assert "warning: 1 recording(s) have an identical signal in more than one split" in err and "test/train: 1" in err
    assert (tmp_path / "duplicate_signals.csv").read_text().count("\n") == 3
    model = _provenance_model(store, tmp_path / "m")
    with pytest.warns(UserWarning, match=r"1 recording\(s\) have an identical signal in fine-tuning and evaluated"):
        evaluate(model, store, tmp_path / "ev", split="test", n_bootstrap=0, device="cpu")
    with open(tmp_path / "ev" / "duplicates_of_training_records.csv", newline="") as fh:
        listed = sorted((r["split"], r["record_id"]) for r in csv.DictReader(fh))
    assert listed == [("evaluated (test)", "r008"), ("fine-tuning", "r000")]
    assert "identical signals in fine-tuning" in json.loads((tmp_path / "ev" / "metrics.json").read_text())["extra"]


# ---- small samples --------------------------------------------------------------------------------------


def test_small_samples_and_few_resamples_carry_a_caution(tmp_path: Path) -> None:
    # Before: a label with 2 positives and an interval from 1 resample were reported like any other.
    rng = np.random.default_rng(0)
    y = np.zeros((40, 2))
    y[:2, 0] = 1
    y[:20, 1] = 1
    with pytest.warns(UserWarning):
        summary = report_scores(
            tmp_path / "r",
            task="multi_label",
            y_true=y,
            y_score=rng.random((40, 2)),
            label_names=["rare", "common"],
            n_bootstrap=1,
            title="t",
            data_note="n",
            extra={},
        )
    notes = " | ".join(summary["warnings"])
    assert "from 1 resample(s)" in notes and "rare (2 pos / 38 neg)" in notes and "common" not in notes


# ---- a finished run re-run changes nothing ---------------------------------------------------------------


@pytest.mark.slow
def test_rerunning_a_finished_finetune_changes_nothing(make_store, tmp_path: Path, capsys) -> None:
    # Before: every re-run re-scored validation and rewrote the thresholds of best/ and last/.
    from hubert_ecg.finetune import FinetuneOptions, run_finetune
    from hubert_ecg.training import TrainConfig

    store = make_store(24, seed=2, labels=list(SYNTHETIC_LABELS), root=tmp_path)
    cfg = dict(out_dir=str(tmp_path / "run"), max_steps=2, batch_size=8, val_every=2, num_workers=0, progress=False)
    opts = FinetuneOptions(task="multi_label")
    first = run_finetune(str(store), TrainConfig(**cfg), opts, random_init_size="tiny")
    saved = {
        p: (p.read_bytes(), p.stat().st_mtime_ns) for d in ("best", "last") for p in (tmp_path / "run" / d).iterdir()
    }
    info = load_model(first.best_dir).info
    assert info.thresholds is not None
    assert info.extra[FINETUNED_ON]["seen_splits"] == ["train", "val"]
    capsys.readouterr()
    again = run_finetune(str(store), TrainConfig(**cfg), FinetuneOptions(task="multi_label"), random_init_size="tiny")
    assert again.steps_run == 0
    assert "already finished" in capsys.readouterr().out
    for p, (content, mtime) in saved.items():
        assert p.read_bytes() == content and p.stat().st_mtime_ns == mtime, p


# ---- predict and evaluate agree -------------------------------------------------------------------------


@pytest.mark.parametrize("seconds", [7.0, 13.0])
@pytest.mark.parametrize("windows", ["first", "sliding"])
def test_predict_writes_the_probabilities_and_decisions_evaluate_scores(
    make_store, tmp_path: Path, windows: str, seconds: float
) -> None:
    from hubert_ecg.inference import predict_files

    names = list(SYNTHETIC_LABELS)
    store = make_store(12, seed=6, seconds=seconds, labels=names)
    path = _tiny(store, tmp_path / "m", task="multi_label", names=names, n_out=len(names))
    thresholds = [0.3, 0.45, 0.5, 0.55, 0.7]
    from hubert_ecg.checkpoint import update_saved_info

    update_saved_info(path, thresholds=thresholds)
    evaluate(path, store, tmp_path / "ev", split="", windows=windows, n_bootstrap=0, device="cpu")
    with open(tmp_path / "ev" / "probabilities.csv", newline="") as fh:
        scored = {r["record_id"]: [float(r[n]) for n in names] for r in csv.DictReader(fh)}
    files = sorted(str(p) for p in (store.parent / "data").glob("*.npy"))
    predict_files(
        load_model(path), files, tmp_path / "p.csv", windows=windows, read_kwargs={"fs": 500.0}, progress=False
    )
    with open(tmp_path / "p.csv", newline="") as fh:
        predicted = {r["record_id"]: r for r in csv.DictReader(fh)}
    assert set(predicted) == set(scored)
    for rid, probs in scored.items():
        p = [float(predicted[rid][f"p_{n}"]) for n in names]
        np.testing.assert_allclose(p, probs, atol=2e-5, err_msg=rid)
        assert [int(predicted[rid][f"y_{n}"]) for n in names] == [int(v >= t) for v, t in zip(p, thresholds)]


def test_record_digests_are_hashed_once_per_store_content(make_store, tmp_path: Path, monkeypatch) -> None:
    # The leak checks run at every finetune and evaluate: the signals are read once, not at every run.
    store_dir = make_store(6, seed=3, labels=list(SYNTHETIC_LABELS), root=tmp_path)
    store = ECGStore(store_dir)
    first = store.record_digests()
    assert sorted(first) == sorted(set(store.record_ids.astype(str))) and len(set(first.values())) == len(first)
    assert (store_dir / "record_digests.json").exists()

    def must_not_hash(self, chunk=256):  # noqa: ANN001, ANN202
        raise AssertionError("hashed again although the store did not change")

    monkeypatch.setattr(ECGStore, "_hash_records", must_not_hash)
    assert ECGStore(store_dir).record_digests() == first
    with open(store_dir / "manifest.csv", "a") as fh:  # the store changed: the cache no longer applies
        fh.write("\n")
    with pytest.raises(AssertionError, match="hashed again"):
        ECGStore(store_dir).record_digests()
