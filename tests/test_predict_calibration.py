"""`predict` applies a calibration saved by `evaluate --save-calibration`, as `evaluate` does.

Without this, `evaluate` reports calibrated probabilities while `predict` (what is deployed) writes the
uncalibrated ones from the same checkpoint. Decisions must not move: the thresholds were tuned on
uncalibrated validation probabilities, so they are applied to those.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch

from hubert_ecg.checkpoint import load_model, save_pretrained, update_saved_info
from hubert_ecg.inference import predict_files
from hubert_ecg.model import create_model
from hubert_ecg.preprocess import PreprocessSpec
from hubert_ecg.synthetic import synthetic_record

PLATT = {"method": "platt", "a": [2.0, 0.5], "b": [0.7, -1.0], "n_records": 10}


@pytest.fixture(scope="module")
def records(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("records")
    rng = np.random.default_rng(3)
    for i in range(5):
        np.save(folder / f"r{i}.npy", synthetic_record(rng, seconds=4.0).signal)
    return folder


@pytest.fixture()
def checkpoint(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    model = create_model("tiny", head={"num_labels": 2, "type": "linear"})
    model.info.task = "multi_label"
    model.info.label_names = ["a", "b"]
    model.info.thresholds = [0.45, 0.55]
    model.info.preprocessing = PreprocessSpec().to_dict()
    return save_pretrained(model, tmp_path / "model")


def _predict(checkpoint: Path, records: Path, out: Path, **kwargs: object) -> dict[str, np.ndarray]:
    summary = predict_files(
        load_model(checkpoint), [str(records)], out, read_kwargs={"fs": 500.0}, progress=False, **kwargs
    )
    with open(out, newline="") as fh:
        rows = sorted(csv.DictReader(fh), key=lambda r: r["record_id"])
    table = {c: np.array([float(r[c]) for r in rows]) for c in ("p_a", "p_b", "y_a", "y_b")}
    table["calibration"] = np.array(summary.calibration)
    return table


def test_saved_platt_calibration_is_applied_and_decisions_stay(checkpoint: Path, records: Path, tmp_path: Path) -> None:
    raw = _predict(checkpoint, records, tmp_path / "raw.csv")
    assert str(raw["calibration"]) == ""
    update_saved_info(checkpoint, calibration=PLATT)

    calibrated = _predict(checkpoint, records, tmp_path / "cal.csv")
    assert str(calibrated["calibration"]) == "platt"
    for j, name in enumerate(("a", "b")):
        p = raw[f"p_{name}"]
        expected = 1 / (1 + np.exp(-(PLATT["a"][j] * np.log(p / (1 - p)) + PLATT["b"][j])))
        np.testing.assert_allclose(calibrated[f"p_{name}"], expected, rtol=1e-5)
        assert not np.allclose(calibrated[f"p_{name}"], p)
        np.testing.assert_array_equal(calibrated[f"y_{name}"], raw[f"y_{name}"])  # thresholds of the raw scale

    opted_out = _predict(checkpoint, records, tmp_path / "off.csv", use_saved_calibration=False)
    np.testing.assert_allclose(opted_out["p_a"], raw["p_a"], rtol=1e-6)
    assert str(opted_out["calibration"]) == ""


def test_calibrated_thresholds_keep_every_decision() -> None:
    from hubert_ecg.calibration import apply_calibration, calibrated_thresholds

    rng = np.random.default_rng(0)
    probs = rng.uniform(0.001, 0.999, size=(500, 2))
    thresholds = [0.3, 0.62]
    moved = calibrated_thresholds(PLATT, thresholds)
    assert not np.allclose(moved, thresholds)
    np.testing.assert_array_equal(apply_calibration(PLATT, probs) >= np.asarray(moved), probs >= np.asarray(thresholds))
    assert calibrated_thresholds({"method": "temperature", "temperature": 2.0}, None) is None
    assert calibrated_thresholds(None, thresholds) == thresholds


def test_evaluate_scores_calibrated_probabilities_with_the_decisions_of_the_raw_thresholds(tmp_path: Path) -> None:
    import json

    from hubert_ecg.calibration import apply_calibration
    from hubert_ecg.evaluate import report_scores
    from hubert_ecg.metrics import compute_metrics

    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, size=(80, 2)).astype(np.float64)
    raw = np.clip(0.35 * y + rng.uniform(0, 0.65, size=y.shape), 0.01, 0.99)
    thresholds = [0.4, 0.5]
    report_scores(
        tmp_path,
        task="multi_label",
        y_true=y,
        y_score=apply_calibration(PLATT, raw),
        label_names=["a", "b"],
        thresholds=thresholds,
        n_bootstrap=10,
        calibration_info=PLATT,
        uncalibrated=raw,
        title="t",
        data_note="n",
        extra={},
    )
    reported = json.loads((tmp_path / "metrics.json").read_text())
    expected = compute_metrics("multi_label", y, raw, thresholds=thresholds, label_names=["a", "b"])
    for metric in ("sensitivity_at_thr", "specificity_at_thr", "f1_at_thr"):  # plain ones are at 0.5
        assert reported["metrics"]["macro"][metric] == pytest.approx(expected.macro[metric])
