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
