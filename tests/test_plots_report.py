"""Plots write real PNG images; the report carries the numbers and the data note."""

from __future__ import annotations

import base64
import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest

from hubert_ecg.metrics import MetricsInputError, bootstrap_ci, compute_metrics
from hubert_ecg.plots import (
    plot_confusion_matrix,
    plot_inertia_vs_k,
    plot_per_label_auroc,
    plot_regression,
    plot_roc_pr,
    plot_training_curves,
)
from hubert_ecg.report import write_report

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
DATA_NOTE = "Demo-scale model on synthetic data, not a clinical result."


def assert_real_png(path: Path) -> None:
    from matplotlib.image import imread

    raw = path.read_bytes()
    assert raw[:8] == PNG_SIGNATURE
    pixels = imread(path)
    assert pixels.ndim == 3 and pixels.shape[0] > 100 and pixels.shape[1] > 100
    # A blank or single-colour canvas has (almost) no variance.
    assert float(pixels[..., :3].std()) > 0.02


@pytest.fixture
def multilabel(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, list[str]]:
    y = (rng.random((300, 5)) < [0.1, 0.2, 0.3, 0.4, 0.0]).astype(int)  # last label has no positives
    score = np.clip(0.3 * y + 0.7 * rng.random(y.shape), 0, 1)
    return y, score, ["AF", "IAVB", "LBBB", "RBBB", "PVC"]


def test_roc_pr_plot(tmp_path: Path, multilabel) -> None:
    y, score, names = multilabel
    path = plot_roc_pr(y, score, names, tmp_path / "roc_pr.png")
    assert path == tmp_path / "roc_pr.png"
    assert_real_png(path)


def test_roc_pr_plot_multiclass_indices(tmp_path: Path, rng: np.random.Generator) -> None:
    y = rng.integers(0, 3, 100)
    probs = rng.dirichlet(np.ones(3), size=100)
    assert_real_png(plot_roc_pr(y, probs, ["a", "b", "c"], tmp_path / "mc.png"))


def test_per_label_auroc_plot_from_ci_and_result(tmp_path: Path, multilabel) -> None:
    y, score, names = multilabel
    ci = bootstrap_ci("multi_label", y, score, n_resamples=50, label_names=names)
    assert_real_png(plot_per_label_auroc(ci, tmp_path / "bars_ci.png"))
    result = compute_metrics("multi_label", y, score, label_names=names)
    assert_real_png(plot_per_label_auroc(result, tmp_path / "bars.png"))
    with pytest.raises(MetricsInputError, match="metric 'kappa' is missing for label 'AF'"):
        plot_per_label_auroc(ci, tmp_path / "x.png", metric="kappa")


def test_confusion_matrix_plot(tmp_path: Path) -> None:
    cm = np.array([[50, 3, 2], [4, 40, 6], [1, 2, 30]])
    assert_real_png(plot_confusion_matrix(cm, ["NORM", "AF", "OTHER"], tmp_path / "cm.png"))
    with pytest.raises(MetricsInputError, match=r"confusion matrix must be square \(C, C\); got shape \(2, 3\)"):
        plot_confusion_matrix(np.ones((2, 3)), None, tmp_path / "bad.png")


def test_regression_plot(tmp_path: Path, rng: np.random.Generator) -> None:
    y = rng.normal(size=(80, 2))
    assert_real_png(plot_regression(y, y + 0.3 * rng.normal(size=y.shape), tmp_path / "reg.png"))
    assert_real_png(plot_regression(y[:, 0], y[:, 0] * 0.8, tmp_path / "reg1.png"))


def test_inertia_and_training_curves(tmp_path: Path) -> None:
    ks = [25, 50, 100, 200]
    assert_real_png(plot_inertia_vs_k(ks, [900.0, 600.0, 450.0, 400.0], tmp_path / "elbow.png"))
    history = {
        "train_loss": [(s, 1.0 / (1 + 0.01 * s)) for s in range(0, 1000, 50)],
        "val_loss": [(s, 1.1 / (1 + 0.008 * s)) for s in range(0, 1000, 250)],
        "val_auroc": [(s, 0.6 + 0.0003 * s) for s in range(0, 1000, 250)],
    }
    assert_real_png(plot_training_curves(history, tmp_path / "curves.png"))
    with pytest.raises(MetricsInputError, match="history is empty"):
        plot_training_curves({}, tmp_path / "none.png")


def test_report_contains_numbers_and_note(tmp_path: Path, multilabel) -> None:
    y, score, names = multilabel
    result = compute_metrics("multi_label", y, score, label_names=names)
    ci = bootstrap_ci("multi_label", y, score, n_resamples=100, label_names=names)
    plots = {
        "ROC and PR curves": plot_roc_pr(y, score, names, tmp_path / "plots" / "roc_pr.png"),
        "Per-label AUROC": plot_per_label_auroc(ci, tmp_path / "plots" / "auroc.png"),
    }
    out = tmp_path / "report"
    html_path = write_report(
        out,
        title="PTB-XL demo",
        metrics_result=result,
        ci=ci,
        plots=plots,
        data_note=DATA_NOTE,
        extra={"checkpoint": "demo.pt", "seed": 0},
    )
    assert html_path == out / "report.html"
    md = (out / "report.md").read_text()
    page = html_path.read_text()
    macro = f"{result.macro['auroc']:.3f}"
    low, high = ci["macro"]["auroc"]["lower"], ci["macro"]["auroc"]["upper"]
    for text in (md, page):
        assert DATA_NOTE in text
        assert macro in text
        assert f"[{low:.3f}, {high:.3f}]" in text
        assert "Records evaluated: 300" in text
        assert "Labels left out of macro averages (no positive or no negative record): 1 (PVC)" in text
        assert "demo.pt" in text
    # Note comes before the summary table.
    assert md.index(DATA_NOTE) < md.index("## Summary")
    # HTML embeds the images; Markdown links them relatively.
    embedded = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(embedded) == 2
    assert base64.b64decode(embedded[0]) == plots["ROC and PR curves"].read_bytes()
    assert "](../plots/roc_pr.png)" in md
    payload = json.loads((out / "metrics.json").read_text())
    assert payload["metrics"]["macro"]["auroc"] == pytest.approx(result.macro["auroc"])
    assert payload["confidence_intervals"]["per_label"]["PVC"]["auroc"]["point"] is None
    rows = list(csv.DictReader((out / "metrics_per_label.csv").open()))
    assert [r["label"] for r in rows] == names + ["macro"]


def test_report_multiclass_with_confusion_and_no_ci(tmp_path: Path, rng: np.random.Generator) -> None:
    y = rng.integers(0, 3, 120)
    probs = rng.dirichlet(np.ones(3), size=120)
    result = compute_metrics("multi_class", y, probs, label_names=["NORM", "AF", "OTHER"])
    write_report(tmp_path, title="Rhythm", metrics_result=result, data_note=DATA_NOTE)
    md = (tmp_path / "report.md").read_text()
    assert f"| Accuracy (micro) | {result.overall['accuracy']:.3f} |" in md
    assert "## Confusion matrix" in md
    assert "Confidence intervals: not computed" in md


def test_report_rejects_missing_note_and_plot(tmp_path: Path, multilabel) -> None:
    y, score, names = multilabel
    result = compute_metrics("multi_label", y, score, label_names=names)
    with pytest.raises(MetricsInputError, match="data_note is empty"):
        write_report(tmp_path, title="t", metrics_result=result, data_note="  ")
    with pytest.raises(MetricsInputError, match="plot 'ROC' not found: "):
        write_report(
            tmp_path, title="t", metrics_result=result, data_note=DATA_NOTE, plots={"ROC": tmp_path / "missing.png"}
        )
