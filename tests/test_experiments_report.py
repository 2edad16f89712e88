"""The real-data results in README/docs are generated from experiments/results/, and those files agree.

`experiments/report_ludb.py` writes every number of docs/EXPERIMENTS.md and of README's Results from the raw
outputs committed in experiments/results/. These tests fail when a number is typed (or left stale) in a
document, when a summary JSON disagrees with the prediction file it claims to summarise, or when the folder
grows past its size budget.
"""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS = ROOT / "experiments"


@pytest.fixture(scope="module")
def report():
    sys.path.insert(0, str(EXPERIMENTS))
    try:
        yield importlib.import_module("report_ludb")
    finally:
        sys.path.remove(str(EXPERIMENTS))


@pytest.fixture(scope="module")
def budgets(report):
    found = report.load_budgets()
    if not found:
        pytest.skip("no results in experiments/results/")
    return found


def test_documents_are_generated_from_results(report, budgets):
    """README and docs/EXPERIMENTS.md hold exactly what report_ludb.py makes of experiments/results/."""
    for path, text in report.targets().items():
        assert path.read_text() == text, f"{path.name} differs from the results: run python experiments/report_ludb.py"


def test_replace_block_touches_only_the_marked_text(report, tmp_path):
    doc = tmp_path / "doc.md"
    text = f"# keep 1.0\n{report.BEGIN}\nold 0.5\n{report.END}\ntail 2.0\n"
    new = f"# keep 1.0\n{report.BEGIN}\nnew 0.7\n{report.END}\ntail 2.0\n"
    assert report.replace_block(text, "new 0.7", doc) == new
    with pytest.raises(ValueError, match=r"doc\.md: needs exactly one"):
        report.replace_block("no markers", "x", doc)
    with pytest.raises(ValueError, match="needs exactly one"):
        report.replace_block(text + text, "x", doc)


def test_summaries_match_the_prediction_files(budgets):
    """Pooled and per-fold AUROCs in the JSON files are those of the committed per-record predictions."""
    for b in budgets:
        rows = b["probe_pred"]
        for label, block in b["A"]["probe"].items():
            sel = [r for r in rows if r["label"] == label]
            assert len(sel) == block["n"] and sum(int(r["y"]) for r in sel) == block["positives"]
            y, fold = np.array([int(r["y"]) for r in sel]), np.array([int(r["fold"]) for r in sel])
            for name, s in block.items():
                if not (isinstance(s, dict) and "fold_mean" in s):
                    continue
                p = np.array([float(r[name]) for r in sel])
                assert roc_auc_score(y, p) == pytest.approx(s["pooled_auroc"], abs=2e-3), (b["steps"], label, name)
                per_fold = [roc_auc_score(y[fold == k], p[fold == k]) for k in range(5)]
                assert np.mean(per_fold) == pytest.approx(s["fold_mean"], abs=2e-3)
        if "B" not in b:
            continue
        for label, block in b["B"]["finetune"].items():
            for start in ("pretrained", "random init"):
                sel = [r for r in b["ft_pred"] if r["start"] == start]
                assert len(sel) == block["n"]
                y, p = np.array([int(r[f"y_{label}"]) for r in sel]), np.array([float(r[f"p_{label}"]) for r in sel])
                assert roc_auc_score(y, p) == pytest.approx(block[start]["pooled_auroc"], abs=2e-3), (label, start)


def test_random_draw_summaries_match_their_predictions(report, budgets):
    draws = report.load_random_draws()
    if draws is None:
        pytest.skip("no random-init-probe results")
    layer = draws["json"]["settings"]["layer"]
    for label, block in draws["json"]["probe"].items():
        sel = [r for r in draws["pred"] if r["label"] == label]
        y = np.array([int(r["y"]) for r in sel])
        for seed, s in block["draws"].items():
            p = np.array([float(r[f"random init seed {seed}, layer {layer}"]) for r in sel])
            assert roc_auc_score(y, p) == pytest.approx(s["pooled_auroc"], abs=2e-3), (label, seed)


def test_vectorised_paired_difference_equals_sklearn(report):
    """The report's rank AUROC is sklearn's (ties included) and its paired CI brackets the point difference."""
    rng = np.random.default_rng(3)
    y = (rng.random(120) < 0.4).astype(int)
    a, b = np.round(rng.random(120), 1), y * 0.5 + rng.random(120)  # a has many ties
    assert report.rank_auroc(y, a) == pytest.approx(roc_auc_score(y, a), abs=1e-12)
    d = report.paired_difference(y, b, a)
    assert d["diff"] == pytest.approx(roc_auc_score(y, b) - roc_auc_score(y, a), abs=1e-12)
    assert d["ci_low"] < d["diff"] < d["ci_high"] and d["ci_low"] > 0  # b is informative, a is noise


def test_results_folder_is_small_and_holds_no_checkpoints():
    files = [p for p in (EXPERIMENTS / "results").rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in files) < 2_000_000
    assert not [p for p in files if p.suffix not in (".json", ".csv", ".md")]


def test_run_all_skips_cleanly_without_data(tmp_path):
    env = {"HUBERT_ECG_DATA": str(tmp_path / "absent"), "PATH": "/usr/bin:/bin"}
    proc = subprocess.run(
        [sys.executable, str(EXPERIMENTS / "run_all.py"), "--work", str(tmp_path / "work")],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert "experiments skipped: real data not found" in proc.stdout
    assert not (tmp_path / "work").exists()
