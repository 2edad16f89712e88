"""Multi-class and regression end to end: fine-tune, evaluate (plots, metrics), predict."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from hubert_ecg import load_model
from hubert_ecg.evaluate import evaluate
from hubert_ecg.finetune import FinetuneOptions, run_finetune
from hubert_ecg.store import LabelTable, prepare_store
from hubert_ecg.synthetic import synthetic_record
from hubert_ecg.training import TrainConfig


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tasks")
    rng = np.random.default_rng(7)
    lines = ["record_id,split,rate_class,heart_rate,tachycardia"]
    for i in range(48):
        cls = i % 3  # 0 normal, 1 tachycardia, 2 bradycardia
        rec = synthetic_record(rng, labels={"tachycardia": int(cls == 1), "bradycardia": int(cls == 2)}, seconds=5.0)
        np.save(root / f"r{i:03d}.npy", rec.signal)
        split = "test" if i % 8 in (0, 1) else "val" if i % 8 in (2, 3) else "train"
        lines.append(f"r{i:03d},{split},{cls},{rec.heart_rate / 100:.4f},{int(cls == 1)}")
    (root / "labels.csv").write_text("\n".join(lines) + "\n")
    out = {}
    for column in ("rate_class", "heart_rate", "tachycardia"):
        labels = LabelTable.from_csv(root / "labels.csv", id_column="record_id", split_column="split",
                                     label_columns=[column])
        prepare_store([root], root / f"store-{column}", labels=labels, read_kwargs={"fs": 500.0}, progress=False)
        out[column] = root / f"store-{column}"
    return out


def _train(store_path: Path, tmp_path: Path, task: str, monitor: str):
    cfg = TrainConfig(out_dir=str(tmp_path / task), max_steps=24, batch_size=8, lr=2e-3, val_every=12,
                      log_every=12, num_workers=0, progress=False)
    return run_finetune(str(store_path), cfg, FinetuneOptions(task=task, monitor=monitor, layer_decay=1.0,
                                                              head_lr_mult=1.0), random_init_size="tiny")


def test_multi_class_end_to_end(store, tmp_path):
    result = _train(store["rate_class"], tmp_path, "multi_class", "accuracy")
    model = load_model(result.best_dir)
    assert model.config.head.num_labels == 3 and model.info.label_names == [f"rate_class={c}" for c in range(3)]
    summary = evaluate(result.best_dir, store["rate_class"], tmp_path / "eval", n_bootstrap=50)
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())["metrics"]
    assert metrics["task"] == "multi_class" and 0.0 <= metrics["overall"]["accuracy"] <= 1.0
    assert np.asarray(metrics["confusion_matrix"]).sum() == summary["records"] == 12
    assert (tmp_path / "eval" / "confusion_matrix.png").stat().st_size > 0
    pred = model.predict(np.load(sorted(Path(store["rate_class"]).parent.glob("r*.npy"))[0]), fs=500)
    assert pred.probabilities.shape == (3,) and abs(pred.probabilities.sum() - 1) < 1e-5
    assert pred.decisions.sum() == 1


def test_regression_end_to_end(store, tmp_path):
    result = _train(store["heart_rate"], tmp_path, "regression", "mae")
    summary = evaluate(result.best_dir, store["heart_rate"], tmp_path / "eval", n_bootstrap=50)
    assert set(summary["macro"]) >= {"mae", "rmse", "r2", "pearson_r"}
    assert (tmp_path / "eval" / "regression.png").stat().st_size > 0
    rows = (tmp_path / "eval" / "probabilities.csv").read_text().splitlines()
    assert rows[0] == "record_id,heart_rate" and len(rows) == 13


def test_binary_one_logit_end_to_end(store, tmp_path):
    result = _train(store["tachycardia"], tmp_path, "binary", "auroc")
    model = load_model(result.best_dir)
    assert model.config.head.num_labels == 1 and len(model.info.thresholds) == 1
    summary = evaluate(result.best_dir, store["tachycardia"], tmp_path / "eval", n_bootstrap=50)
    assert 0.0 <= summary["macro"]["auroc"] <= 1.0
    pred = model.predict(np.load(sorted(Path(store["tachycardia"]).parent.glob("r*.npy"))[1]), fs=500)
    assert pred.probabilities.shape == () or pred.probabilities.shape == (1,)
    assert int(np.atleast_1d(pred.decisions)[0]) == int(np.atleast_1d(pred.probabilities)[0] >= model.info.thresholds[0])
