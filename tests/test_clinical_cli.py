"""evaluate (subgroups, lead subsets, calibration, predictions CSVs, BCa), compare and explain, end to end
on a tiny model and a small synthetic store."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from hubert_ecg.checkpoint import load_model, save_pretrained
from hubert_ecg.cli import main
from hubert_ecg.compare import paired_bootstrap
from hubert_ecg.config import CheckpointInfo
from hubert_ecg.model import create_model
from hubert_ecg.store import ECGStore


def _tiny_model(store: ECGStore, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = create_model("tiny", head={"type": "linear", "num_labels": 1})
    model.info = CheckpointInfo(
        task="multi_label", label_names=["fast"], thresholds=[0.5], preprocessing=store.spec.to_dict()
    )
    return model


@pytest.fixture(scope="module")
def setup(make_store, tmp_path_factory):
    # Own root: the checkpoints go next to the store.
    splits = ("test", "test", "val", "val")
    root = make_store(48, rhythm=2, splits=splits, labels=["fast"], root=tmp_path_factory.mktemp("clin")).parent
    store = ECGStore(root / "store")
    for name, seed in (("a", 0), ("b", 1)):
        save_pretrained(_tiny_model(store, seed), root / name)
    return root


@pytest.mark.slow
def test_evaluate_leads_calibration_subgroups_bca(setup, tmp_path):
    from hubert_ecg.evaluate import evaluate, score_split

    root = setup
    summary = evaluate(
        root / "a",
        root / "store",
        tmp_path / "ev",
        n_bootstrap=60,
        leads=["all", "II"],
        calibrate="auto",
        save_calibration=True,
        subgroups=["fast"],
        ci_method="bca",
        device="cpu",
    )
    payload = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    details = payload["details"]
    # Lead set "all" zeroes nothing: the paired difference is exactly zero, interval included.
    zero = details["lead_subsets"]["all"]["paired_difference_vs_all_leads"]["brier"]
    assert zero["difference"] == zero["lower"] == zero["upper"] == 0.0
    # "II" really scores different inputs: the probabilities differ from the 12-lead ones.
    store = ECGStore(root / "store")
    model = load_model(root / "a")
    full = score_split(model, store, "test", device=torch.device("cpu"))
    only_ii = score_split(
        model,
        store,
        "test",
        device=torch.device("cpu"),
        keep_leads=np.isin(
            np.array(["I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6"]), ["II"]
        ),
    )
    assert not np.allclose(full.y_score, only_ii.y_score)
    # Calibration was fitted on the 24 validation records only and stored in the checkpoint.
    fit = details["calibration"]["fit"]
    assert fit["method"] == "platt" and fit["n_records"] == 24 and fit["split"] == "val"
    assert load_model(root / "a").info.extra["calibration"]["a"] == pytest.approx(fit["a"])
    # Subgroups by the label itself: each group has one class only, so AUROC is undefined there.
    groups = details["subgroups"]["fast"]["groups"]
    assert set(groups) == {"0", "1"} and groups["0"]["n_records"] == 12
    assert payload["confidence_intervals"]["method"] == "bca"
    html = Path(summary["report"]).read_text()
    for text in (
        "Reduced leads",
        "Post-hoc calibration",
        "Subgroups",
        "BCa (bias-corrected and accelerated)",
        "NPV @0.5",
        "Brier score",
        "Reliability diagrams",
    ):
        assert text in html
    # A later evaluation applies the stored calibration without being asked.
    again = evaluate(root / "a", root / "store", tmp_path / "ev2", n_bootstrap=0, device="cpu")
    assert again["macro"]["brier"] == pytest.approx(summary["macro"]["brier"])


def _write_predictions(path: Path, ids: list[str], probs: np.ndarray, prefix: str = "p_") -> None:
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["record_id", f"{prefix}fast"])
        w.writerows([[i, f"{p:.6f}"] for i, p in zip(ids, probs)])


@pytest.fixture
def predictions(tmp_path):
    rng = np.random.default_rng(3)
    n = 80
    ids = [f"x{i}" for i in range(n)]
    y = (rng.random(n) < 0.4).astype(int)
    pa = np.clip(0.2 * y + 0.8 * rng.random(n), 0, 1)
    pb = np.clip(0.5 * y + 0.5 * rng.random(n), 0, 1)
    ages = rng.integers(20, 95, n)
    with (tmp_path / "labels.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["record_id", "fast", "sex", "age"])
        w.writerows([[i, int(v), "MF"[k % 2], a] for k, (i, v, a) in enumerate(zip(ids, y, ages))])
    _write_predictions(tmp_path / "a.csv", ids, pa)
    # B in a different row order and evaluate's column style: matched by record id, not position.
    _write_predictions(tmp_path / "b.csv", ids[::-1], pb[::-1], prefix="")
    return tmp_path, y, pa, pb


def test_evaluate_predictions_csv_cli(predictions, capsys):
    root, y, pa, _ = predictions
    code = main(
        [
            "evaluate",
            "--predictions",
            str(root / "a.csv"),
            "--labels",
            str(root / "labels.csv"),
            "--out",
            str(root / "ev"),
            "--bootstrap",
            "50",
            "--subgroups",
            "sex,age",
        ]
    )
    assert code == 0
    payload = json.loads((root / "ev" / "metrics.json").read_text())
    from sklearn.metrics import roc_auc_score

    assert payload["metrics"]["macro"]["auroc"] == pytest.approx(roc_auc_score(y, pa), abs=1e-9)
    assert set(payload["details"]["subgroups"]["sex"]["groups"]) == {"M", "F"}
    assert set(payload["details"]["subgroups"]["age"]["groups"]) <= {"<40", "40-59", "60-79", ">=80"}
    captured = capsys.readouterr()
    assert "records:" in captured.out
    assert "bootstrap" in captured.err and "50/50" in captured.err  # the progress bar, on stderr
    quiet = ["evaluate", "--predictions", str(root / "a.csv"), "--labels", str(root / "labels.csv")]
    assert main([*quiet, "--out", str(root / "ev2"), "--bootstrap", "50", "--quiet"]) == 0
    assert "bootstrap" not in capsys.readouterr().err


def test_evaluate_usage_and_input_errors(predictions, capsys):
    root, *_ = predictions
    with pytest.raises(SystemExit) as exc:
        main(["evaluate", "--predictions", str(root / "a.csv"), "--out", str(root / "x")])
    assert exc.value.code == 2
    assert "--predictions and --labels go together" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(
            [
                "evaluate",
                "--predictions",
                str(root / "a.csv"),
                "--labels",
                str(root / "labels.csv"),
                "--out",
                str(root / "x"),
                "--leads",
                "I,XX",
            ]
        )
    assert exc.value.code == 2 and "unknown lead 'XX'" in capsys.readouterr().err
    (root / "short.csv").write_text("record_id,p_fast\nx0,0.5\n")
    code = main(
        [
            "evaluate",
            "--predictions",
            str(root / "short.csv"),
            "--labels",
            str(root / "labels.csv"),
            "--out",
            str(root / "x"),
        ]
    )
    assert code == 1
    assert "record 'x1' has no prediction" in capsys.readouterr().err
    code = main(
        [
            "evaluate",
            "--predictions",
            str(root / "a.csv"),
            "--labels",
            str(root / "labels.csv"),
            "--out",
            str(root / "x"),
            "--subgroups",
            "site",
        ]
    )
    assert code == 1 and "no column 'site'" in capsys.readouterr().err


def test_compare_predictions_csvs_matches_library(predictions, capsys):
    root, y, pa, pb = predictions
    code = main(
        [
            "compare",
            str(root / "a.csv"),
            str(root / "b.csv"),
            "--labels",
            str(root / "labels.csv"),
            "--out",
            str(root / "cmp"),
            "--bootstrap",
            "200",
            "--seed",
            "4",
        ]
    )
    assert code == 0
    payload = json.loads((root / "cmp" / "comparison.json").read_text())
    direct = paired_bootstrap(
        "multi_label", y[:, None], pa[:, None], pb[:, None], n_resamples=200, seed=4, label_names=["fast"]
    )
    got = payload["paired_difference_b_minus_a"]["macro"]["auroc"]
    assert got["difference"] == pytest.approx(direct["macro"]["auroc"]["difference"])
    assert got["lower"] == pytest.approx(direct["macro"]["auroc"]["lower"])
    assert payload["delong"]["fast"]["difference"] == pytest.approx(got["difference"])
    html = (root / "cmp" / "compare.html").read_text()
    assert "DeLong" in html and "a.csv" in html and "b.csv" in html
    assert "B - A" in capsys.readouterr().out


@pytest.mark.slow
def test_compare_two_checkpoints_and_explain(setup, tmp_path, capsys):
    root = setup
    code = main(
        [
            "compare",
            str(root / "a"),
            str(root / "b"),
            "--store",
            str(root / "store"),
            "--out",
            str(tmp_path / "cmp"),
            "--bootstrap",
            "50",
            "--device",
            "cpu",
        ]
    )
    assert code == 0
    payload = json.loads((tmp_path / "cmp" / "comparison.json").read_text())
    assert payload["metrics_a"]["n_records"] == 24
    record = sorted((root / "data").glob("*.npy"))[0]
    code = main(
        [
            "explain",
            str(root / "a"),
            str(record),
            "--label",
            "fast",
            "--fs",
            "500",
            "--steps",
            "8",
            "--out",
            str(tmp_path / "why.png"),
            "--device",
            "cpu",
        ]
    )
    assert code == 0 and (tmp_path / "why.png").stat().st_size > 10_000
    assert "top leads by attribution" in capsys.readouterr().out
    code = main(
        [
            "explain",
            str(root / "a"),
            str(record),
            "--label",
            "AF",
            "--fs",
            "500",
            "--out",
            str(tmp_path / "x.png"),
            "--device",
            "cpu",
        ]
    )
    assert code == 1 and "unknown label 'AF'" in capsys.readouterr().err
