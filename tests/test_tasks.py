"""Multi-class, binary and regression end to end: fine-tune, evaluate (plots, metrics), predict.

Each end-to-end test shows learning: on a task separable by heart rate, the held-out test metric beats the
majority-class (or training-mean) baseline by a clear margin, not only lies in a valid range.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from conftest import QUARTER_SPLITS, StoreFactory
from hubert_ecg import load_model, predict
from hubert_ecg.evaluate import evaluate
from hubert_ecg.finetune import FinetuneOptions, run_finetune
from hubert_ecg.training import TrainConfig


@pytest.fixture(scope="module")
def store(make_store: StoreFactory, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    # Three stores of one record set (classes 0 normal, 1 tachycardia, 2 bradycardia), one label column each.
    root = tmp_path_factory.mktemp("tasks")
    return {
        column: make_store(
            48, seed=7, rhythm=3, splits=QUARTER_SPLITS, labels=[column], root=root, name=f"store-{column}"
        )
        for column in ("rate_class", "heart_rate", "tachycardia")
    }


def _train(store_path: Path, tmp_path: Path, task: str, monitor: str):
    cfg = TrainConfig(
        out_dir=str(tmp_path / task),
        max_steps=48,
        batch_size=8,
        lr=2e-3,
        val_every=12,
        log_every=12,
        num_workers=0,
        progress=False,
    )
    return run_finetune(
        str(store_path),
        cfg,
        FinetuneOptions(task=task, monitor=monitor, layer_decay=1.0, head_lr_mult=1.0),
        random_init_size="tiny",
    )


def _split_labels(store_path: Path, split: str) -> np.ndarray:
    from hubert_ecg.store import ECGStore

    store = ECGStore(store_path)
    return store.labels[store.rows(split)][:, 0]


def test_multi_class_end_to_end(store, tmp_path):
    result = _train(store["rate_class"], tmp_path, "multi_class", "accuracy")
    model = load_model(result.best_dir)
    assert model.config.head.num_labels == 3 and model.info.label_names == [f"rate_class={c}" for c in range(3)]
    summary = evaluate(result.best_dir, store["rate_class"], tmp_path / "eval", n_bootstrap=50)
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())["metrics"]
    assert metrics["task"] == "multi_class" and 0.0 <= metrics["overall"]["accuracy"] <= 1.0
    test = _split_labels(store["rate_class"], "test")
    majority = np.bincount(test.astype(int)).max() / len(test)
    assert metrics["overall"]["accuracy"] >= majority + 0.3, (metrics["overall"]["accuracy"], majority)
    assert np.asarray(metrics["confusion_matrix"]).sum() == summary["records"] == 12
    assert (tmp_path / "eval" / "confusion_matrix.png").stat().st_size > 0
    pred = predict(model, np.load(sorted((Path(store["rate_class"]).parent / "data").glob("r*.npy"))[0]), fs=500)
    assert pred.probabilities.shape == (3,) and abs(pred.probabilities.sum() - 1) < 1e-5
    assert pred.decisions.sum() == 1


def test_regression_end_to_end(store, tmp_path):
    result = _train(store["heart_rate"], tmp_path, "regression", "mae")
    summary = evaluate(result.best_dir, store["heart_rate"], tmp_path / "eval", n_bootstrap=50)
    assert set(summary["macro"]) >= {"mae", "rmse", "r2", "pearson_r"}
    test, train = _split_labels(store["heart_rate"], "test"), _split_labels(store["heart_rate"], "train")
    mean_baseline = float(np.abs(test - train.mean()).mean())
    assert summary["macro"]["mae"] < 0.6 * mean_baseline, (summary["macro"]["mae"], mean_baseline)
    assert summary["macro"]["pearson_r"] > 0.7
    assert (tmp_path / "eval" / "regression.png").stat().st_size > 0
    rows = (tmp_path / "eval" / "probabilities.csv").read_text().splitlines()
    assert rows[0] == "record_id,heart_rate" and len(rows) == 13


def test_binary_one_logit_end_to_end(store, tmp_path):
    result = _train(store["tachycardia"], tmp_path, "binary", "auroc")
    model = load_model(result.best_dir)
    assert model.config.head.num_labels == 1 and len(model.info.thresholds) == 1
    summary = evaluate(result.best_dir, store["tachycardia"], tmp_path / "eval", n_bootstrap=50)
    assert summary["macro"]["auroc"] >= 0.9  # chance is 0.5
    test = _split_labels(store["tachycardia"], "test")
    majority = max(test.mean(), 1 - test.mean())
    assert summary["macro"]["accuracy_at_thr"] >= majority + 0.15, (summary["macro"], majority)
    pred = predict(model, np.load(sorted((Path(store["tachycardia"]).parent / "data").glob("r*.npy"))[1]), fs=500)
    assert pred.probabilities.shape == () or pred.probabilities.shape == (1,)
    probability = np.atleast_1d(pred.probabilities)[0]
    assert int(np.atleast_1d(pred.decisions)[0]) == int(probability >= model.info.thresholds[0])


# ---------------------------------------------------------------------------------------------
# Task objects: one home per task (loss, probabilities, decisions, metrics, monitor)
# ---------------------------------------------------------------------------------------------
def test_registry_and_monitor_directions() -> None:
    from hubert_ecg.config import TASKS
    from hubert_ecg.recipes import MONITORS as RECIPE_MONITORS
    from hubert_ecg.tasks import MONITORS, get_task, monitor_mode

    assert tuple(get_task(t).name for t in TASKS) == TASKS and get_task(None).name == "multi_label"
    assert get_task("regression").monitor == "mae" and monitor_mode("mae") == "min"
    assert all(monitor_mode(m) == "min" for m in ("loss", "mae", "rmse"))
    assert all(monitor_mode(m) == "max" for m in ("auroc", "auprc", "f1", "accuracy", "r2", "pearson_r"))
    assert set(RECIPE_MONITORS) == set(MONITORS)  # one list
    for task in TASKS:
        assert set(get_task(task).monitors) <= set(MONITORS) and get_task(task).monitor in get_task(task).monitors
    with pytest.raises(ValueError, match="unknown task"):
        get_task("ranking")


def test_cli_monitor_choices_are_the_one_list() -> None:
    from hubert_ecg.cli import build_parser
    from hubert_ecg.tasks import MONITORS

    sub = next(a for a in build_parser()._actions if a.__class__.__name__ == "_SubParsersAction")
    monitor = next(a for a in sub.choices["finetune"]._actions if "--monitor" in a.option_strings)
    assert list(monitor.choices) == list(MONITORS)


@pytest.mark.parametrize("task", ["multi_label", "regression"])
def test_a_blank_label_leaves_only_that_labels_loss(task: str) -> None:
    import torch
    import torch.nn.functional as F

    from hubert_ecg.tasks import get_task

    torch.manual_seed(0)
    logits = torch.randn(6, 3)
    labels = (torch.rand(6, 3) > 0.5).float() if task == "multi_label" else torch.randn(6, 3)
    blank = labels.clone()
    blank[2, 1] = float("nan")
    per = (
        F.binary_cross_entropy_with_logits(logits, labels, reduction="none")
        if task == "multi_label"
        else F.mse_loss(logits, labels, reduction="none")
    )
    keep = torch.ones(6, 3, dtype=torch.bool)
    keep[2, 1] = False
    expected = per[keep].mean()  # every other cell of record 2 still counts
    assert torch.allclose(get_task(task).loss(logits, blank), expected)
    assert not torch.allclose(expected, per[torch.arange(6) != 2].mean())  # not "drop the whole record"


def test_a_blank_label_leaves_only_that_labels_metrics() -> None:
    from sklearn.metrics import roc_auc_score

    from hubert_ecg.metrics import task_metrics, task_thresholds

    rng = np.random.default_rng(0)
    y = (rng.random((40, 2)) > 0.5).astype(float)
    p = np.clip(0.6 * y + 0.4 * rng.random((40, 2)), 0, 1)
    p[5, 0] = 1.0 - y[5, 0]  # record 5 is badly wrong on label 0 ...
    y[5, 1] = np.nan  # ... and blank on label 1: it must still count for label 0
    result = task_metrics("multi_label", y, p, label_names=["a", "b"])
    assert result.per_label["auroc"][0] == pytest.approx(roc_auc_score(y[:, 0], p[:, 0]))
    known = ~np.isnan(y[:, 1])
    assert result.per_label["auroc"][1] == pytest.approx(roc_auc_score(y[known, 1], p[known, 1]))
    assert result.macro["auroc"] == pytest.approx(result.per_label["auroc"].mean())
    assert result.n_positive.tolist() == [int(y[:, 0].sum()), int(np.nansum(y[:, 1]))]
    thresholds = task_thresholds("multi_label", y, p)
    assert thresholds.shape == (2,) and np.all((thresholds >= 0) & (thresholds <= 1))


def test_probabilities_and_decisions_per_task() -> None:
    import torch

    from hubert_ecg.tasks import get_task, probabilities

    logits = torch.tensor([[2.0, -1.0, 0.0], [-3.0, 0.5, 1.0]])
    assert torch.allclose(probabilities("multi_label", logits), torch.sigmoid(logits))
    assert torch.allclose(probabilities("multi_class", logits).sum(-1), torch.ones(2))
    assert probabilities("binary", logits[:, :1]).shape == (2,)
    assert torch.equal(probabilities("regression", logits[:, :1]), logits[:, 0])
    probs = np.array([[0.7, 0.2], [0.4, 0.9]])
    assert get_task("multi_label").decisions(probs, [0.5, 0.95]).tolist() == [[1, 0], [0, 0]]
    assert get_task("multi_class").decisions(probs).tolist() == [[1, 0], [0, 1]]
    assert (get_task("regression").decisions(probs) == -1).all()


def test_pos_weight_and_class_weights_come_from_the_given_rows_only() -> None:
    from hubert_ecg.tasks import get_task

    train = np.array([[1.0], [0.0], [0.0], [0.0], [np.nan]])
    pw, _ = get_task("multi_label").training_weights(train, pos_weight=True, class_weights=False)
    assert pw.tolist() == [3.0]  # negatives / positives, blanks ignored
    classes = np.array([[0.0], [0.0], [0.0], [1.0], [2.0], [2.0]])
    _, cw = get_task("multi_class").training_weights(classes, pos_weight=False, class_weights=True)
    assert np.allclose(cw.numpy(), 6 / (3 * np.array([3, 1, 2])))


# ---------------------------------------------------------------------------------------------
# Task behaviour lives on the task objects: no module branches on task names, a new task is picked up
# ---------------------------------------------------------------------------------------------
def _task_name_branches(path: Path, names: set[str]) -> list[str]:
    """``x == "regression"``, ``x in ("binary", ...)``, ``{"multi_class": ...}`` and ``case "binary":`` in a file."""
    import ast

    def named(node: ast.AST) -> bool:
        if isinstance(node, ast.Constant):
            return node.value in names
        if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
            return any(isinstance(e, ast.Constant) and e.value in names for e in node.elts)
        return False

    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Compare) and any(named(side) for side in [node.left, *node.comparators]):
            found.append(f"{path.name}:{node.lineno}")
        elif isinstance(node, ast.Dict) and any(k is not None and named(k) for k in node.keys):
            found.append(f"{path.name}:{node.lineno}")
        elif isinstance(node, ast.MatchValue) and named(node.value):  # match task: case "binary": ...
            found.append(f"{path.name}:{node.value.lineno}")
    return found


def test_no_module_branches_on_task_names() -> None:
    """What differs between tasks is declared on the Task classes (tasks.py); every other module asks them."""
    import hubert_ecg
    from hubert_ecg.tasks import task_names

    package = Path(hubert_ecg.__file__).parent
    names = set(task_names())
    found = [
        hit
        for path in sorted(package.rglob("*.py"))
        if path.name != "tasks.py"
        for hit in _task_name_branches(path, names)
    ]
    assert not found, f"branches on task names (declare the behaviour on the Task class instead): {found}"


def test_the_task_branch_check_can_fail(tmp_path: Path) -> None:
    planted = tmp_path / "planted.py"
    planted.write_text(
        'def f(task):\n    if task == "regression":\n        return 1\n'
        '    return {"binary": 2}.get(task) if task in ("multi_class", "x") else 3\n'
    )
    assert _task_name_branches(planted, {"regression", "binary", "multi_class"}) == [
        "planted.py:2",
        "planted.py:4",
        "planted.py:4",
    ]


def test_a_registered_task_is_picked_up_everywhere() -> None:
    """A new Task subclass plus register_task: lookup, monitors and metrics follow without other edits."""
    from hubert_ecg import tasks
    from hubert_ecg.metrics import MONITORS as METRIC_MONITORS
    from hubert_ecg.metrics import compute_metrics, task_metrics
    from hubert_ecg.report import _display_name

    class OrdinalTask(tasks.MultiClassTask):
        name = "ordinal_test"
        monitor = main_metric = "spearman_test"
        monitors = ("loss", "spearman_test", "accuracy")
        metric_labels = {"accuracy": "Exact grade"}

    saved_registry, saved_monitors = dict(tasks._REGISTRY), dict(tasks.MONITORS)
    try:
        task = tasks.register_task(OrdinalTask())
        assert tasks.get_task("ordinal_test") is task and "ordinal_test" in tasks.task_names()
        assert tasks.monitor_mode("spearman_test") == "max" and "spearman_test" in METRIC_MONITORS
        assert list(tasks.MONITORS)[:3] == ["loss", "mae", "rmse"]  # lower-is-better first, as before
        y = np.array([0, 1, 2, 1, 0, 2])
        p = np.eye(3)[[0, 1, 2, 2, 0, 1]] * 0.8 + 0.2 / 3
        result = compute_metrics("ordinal_test", y, p)
        assert result.task == "ordinal_test" and result.confusion_matrix.sum() == 6
        labels = np.array([[0.0], [1.0], [2.0], [1.0], [0.0], [2.0]])
        assert task_metrics(task, labels, p).overall == result.overall
        assert _display_name("accuracy", "ordinal_test") == "Exact grade"
    finally:
        tasks._REGISTRY.clear()
        tasks._REGISTRY.update(saved_registry)
        tasks.MONITORS.clear()
        tasks.MONITORS.update(saved_monitors)
    assert "spearman_test" not in METRIC_MONITORS


def test_monitor_list_is_derived_from_the_registered_tasks() -> None:
    from hubert_ecg.tasks import MONITORS, get_task, task_names

    assert list(MONITORS) == [
        "loss",
        "mae",
        "rmse",
        "auroc",
        "auprc",
        "f1",
        "accuracy",
        "balanced_accuracy",
        "r2",
        "pearson_r",
    ]
    assert set(MONITORS) == {m for t in task_names() for m in get_task(t).monitors}


def test_tasks_and_metrics_import_without_torch() -> None:
    """The NumPy-only layers (metrics, ONNX deployment) ask the task objects, so tasks must not pull in torch."""
    import subprocess
    import sys

    code = "import sys, hubert_ecg.tasks, hubert_ecg.metrics, hubert_ecg.deploy; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


@pytest.mark.parametrize("task", ["multi_label", "multi_class", "binary", "regression"])
def test_declared_behaviour_matches_the_old_rules(task: str) -> None:
    """The attributes that replaced the task-name branches give the answers the branches gave."""
    from hubert_ecg.tasks import get_task

    t = get_task(task)
    assert t.main_metric == ("mae" if task == "regression" else "auroc")
    assert t.probabilistic == (task != "regression")
    assert t.calibrator == {"multi_label": "platt", "binary": "platt", "multi_class": "temperature"}.get(task)
    assert t.outputs_are_classes == (task == "multi_class")
    assert t.first_column_only == (task in ("binary", "multi_class"))
    assert t.uses_thresholds == (task in ("multi_label", "binary"))
    assert t.checks_label_columns == (task == "multi_label")
    assert t.metric_label_names(["a", "b"]) == {"multi_class": None, "binary": ["a"]}.get(task, ["a", "b"])
