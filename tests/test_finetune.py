"""Fine-tuning, evaluation and prediction on a separable synthetic task, end to end."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import QUARTER_SPLITS
from hubert_ecg import embed, load_model, predict
from hubert_ecg.finetune import FinetuneOptions, prepare_model, run_finetune
from hubert_ecg.model import create_model
from hubert_ecg.runtime import param_groups
from hubert_ecg.training import TrainConfig


@pytest.fixture(scope="module")
def trained(make_store, tmp_path_factory):
    # Fast (tachycardia) vs slow (bradycardia) rhythms: separable by beat density. Own root: the run goes next to it.
    root = make_store(
        64, rhythm=2, seconds=6.0, splits=QUARTER_SPLITS, labels=["fast"], root=tmp_path_factory.mktemp("ft")
    ).parent
    cfg = TrainConfig(
        out_dir=str(root / "run"),
        max_steps=60,
        batch_size=16,
        lr=2e-3,
        val_every=20,
        log_every=20,
        num_workers=0,
        progress=False,
        warmup_fraction=0.1,
    )
    opts = FinetuneOptions(task="multi_label", layer_decay=0.9, head_lr_mult=2.0, monitor="auroc")
    result = run_finetune(str(root / "store"), cfg, opts, random_init_size="tiny")
    return root, result


def test_tiny_model_learns_a_separable_task(trained):
    root, result = trained
    assert result.state.best > 0.95
    best = load_model(result.best_dir)
    assert best.info.task == "multi_label" and best.info.label_names == ["fast"]
    assert best.info.thresholds is not None and len(best.info.thresholds) == 1
    assert best.info.preprocessing["target_hz"] == 100.0


def test_evaluate_writes_metrics_plots_and_report(trained, tmp_path):
    from hubert_ecg.evaluate import evaluate

    root, result = trained
    summary = evaluate(
        result.best_dir, root / "store", tmp_path / "eval", split="test", windows="sliding", n_bootstrap=100
    )
    assert summary["records"] == 16 and summary["macro"]["auroc"] > 0.9
    ci = summary["macro_ci"]["auroc"]
    assert ci["lower"] <= summary["macro"]["auroc"] <= ci["upper"]
    for name in ("probabilities.csv", "metrics.json", "metrics_per_label.csv", "roc_pr.png", "report.html"):
        assert (tmp_path / "eval" / name).stat().st_size > 0
    probs = (tmp_path / "eval" / "probabilities.csv").read_text().splitlines()
    assert probs[0] == "record_id,fast" and len(probs) == 17


def test_cli_and_python_api_give_identical_predictions(trained, tmp_path):
    root, result = trained
    files = sorted((root / "data").glob("r00*.npy"))[:4]
    out = tmp_path / "pred.csv"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "hubert_ecg.cli",
            "predict",
            str(result.best_dir),
            *map(str, files),
            "--out",
            str(out),
            "--fs",
            "500",
            "--quiet",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    import csv

    with open(out, newline="") as fh:
        rows = list(csv.reader(fh))  # the quality column may hold commas (quoted)
    header = rows[0]
    assert header[:3] == ["record_id", "source", "n_windows"] and {"p_fast", "y_fast"} <= set(header)
    model = load_model(result.best_dir)
    for row, f in zip(rows[1:], files):
        pred = predict(model, np.load(f), fs=500)
        assert row[0] == f.stem
        assert float(row[header.index("p_fast")]) == pytest.approx(float(pred.probabilities[0]), abs=1e-6)
        assert int(row[header.index("y_fast")]) == int(pred.decisions[0])


def test_embed_any_length_and_minimum(trained):
    root, result = trained
    model = load_model(result.best_dir)
    signal = np.load(root / "data" / "r000.npy")
    assert embed(model, signal, fs=500).shape == (model.config.hidden_size,)
    assert embed(model, signal[:, :1000], fs=500).shape == (model.config.hidden_size,)  # 2 s: padded
    with pytest.raises(ValueError, match=r"the minimum is 1.5 s"):
        embed(model, signal[:, :500], fs=500)
    tokens = embed(model, signal, fs=500, tokens=True)
    assert tokens.shape == (2, 93, model.config.hidden_size)  # 6 s -> windows at 0 and 1 s


def test_layerwise_lr_decay_and_freezing():
    model = create_model("tiny")
    opts = FinetuneOptions(layer_decay=0.5, head_lr_mult=10.0, train_last_blocks=1)
    prepare_model(model, opts, 3, ["a", "b", "c"])
    groups = param_groups(model, 1.0, layer_decay=0.5, head_lr_mult=10.0)
    lr_of = {id(p): g["lr"] for g in groups for p in g["params"]}
    named = dict(model.named_parameters())
    assert lr_of[id(named["classifier.weight"])] == 10.0
    assert lr_of[id(named["encoder.layers.1.attention.q_proj.weight"])] == 1.0
    assert id(named["encoder.layers.0.attention.q_proj.weight"]) not in lr_of  # frozen (last block only)
    assert not named["feature_extractor.conv_layers.0.conv.weight"].requires_grad
    full = create_model("tiny")
    prepare_model(full, FinetuneOptions(layer_decay=0.5), 3, ["a", "b", "c"])
    lr_full = {id(p): g["lr"] for g in param_groups(full, 1.0, layer_decay=0.5, head_lr_mult=10.0) for p in g["params"]}
    named = dict(full.named_parameters())
    assert lr_full[id(named["encoder.layers.0.attention.q_proj.weight"])] == 0.5
    assert lr_full[id(named["feature_projection.projection.weight"])] == 0.25


@pytest.mark.parametrize(
    "task,labels,n_out",
    [("multi_class", [[0], [2], [1]], 3), ("binary", [[0], [1], [1]], 1), ("regression", [[0.5], [1.5], [2.0]], 1)],
)
def test_losses_per_task(task, labels, n_out, tmp_path):
    from hubert_ecg.finetune import FinetuneObjective, num_outputs

    labels = np.asarray(labels, np.float32)
    assert num_outputs(task, labels) == n_out

    class FakeStore:
        path = tmp_path

    FakeStore.labels = labels
    obj = FinetuneObjective.__new__(FinetuneObjective)
    obj.opts, obj.pos_weight, obj.class_weight = FinetuneOptions(task=task), None, None
    logits = torch.randn(3, n_out)
    y = torch.from_numpy(labels)
    loss = obj.loss(logits, y)
    if task == "multi_class":
        expected = torch.nn.functional.cross_entropy(logits, y[:, 0].long())
    elif task == "binary":
        expected = torch.nn.functional.binary_cross_entropy_with_logits(logits[:, 0], y[:, 0])
    else:
        expected = torch.nn.functional.mse_loss(logits, y)
    torch.testing.assert_close(loss, expected)


def test_fast_engines_stay_within_their_stated_tolerance(trained):
    from hubert_ecg.fast_inference import TOLERANCES

    root, result = trained
    model = load_model(result.best_dir)
    signal = np.load(root / "data" / "r001.npy")
    exact = predict(model, signal, fs=500).probabilities
    for engine in ("int8", "onnx"):
        fast = predict(model, signal, fs=500, engine=engine).probabilities
        assert np.abs(fast - exact).max() <= TOLERANCES[engine][1]
    with pytest.raises(ValueError, match="last layer only"):
        embed(model, signal, fs=500, layer=1, engine="int8")


def test_keep_head_keeps_the_trained_head_and_drops_codebooks():
    from hubert_ecg.config import HeadConfig

    model = create_model("tiny", vocab_sizes=[5], head=HeadConfig(2))
    with torch.no_grad():
        model.classifier.weight.fill_(0.25)
    prepare_model(model, FinetuneOptions(), 2, ["a", "b"], keep_head=True)
    assert torch.all(model.classifier.weight == 0.25)
    assert model.config.vocab_sizes == () and len(model.final_proj) == 0
    prepare_model(model, FinetuneOptions(), 3, ["a", "b", "c"], keep_head=True)  # label count changed: new head
    assert model.classifier.weight.shape[0] == 3 and not torch.all(model.classifier.weight == 0.25)


def test_predict_files_with_worker_processes_matches_one_process(trained, tmp_path):
    from hubert_ecg.inference import predict_files

    root, result = trained
    model = load_model(result.best_dir)
    files = [str(f) for f in sorted((root / "data").glob("r01*.npy"))[:6]]
    one = predict_files(model, files, tmp_path / "one.csv", read_kwargs={"fs": 500.0}, progress=False, batch_size=5)
    two = predict_files(
        model, files, tmp_path / "two.csv", read_kwargs={"fs": 500.0}, progress=False, batch_size=5, workers=2
    )
    assert one.written == two.written == 6
    assert (tmp_path / "one.csv").read_text() == (tmp_path / "two.csv").read_text()


def _groups_by_param(model, groups, default_wd):
    optimizer = torch.optim.AdamW(groups, lr=123.0, weight_decay=default_wd)
    out = {}
    for group in optimizer.param_groups:
        for p in group["params"]:
            assert id(p) not in out, "a parameter in two groups"
            out[id(p)] = (group["lr"], group["weight_decay"])
    return {name: out.get(id(p)) for name, p in model.named_parameters()}


def test_param_groups_exact_lr_and_no_weight_decay_rule_same_in_pretraining_and_finetuning():
    """Every parameter's LR and weight decay, for fine-tuning (layer-wise decay) and pre-training (flat)."""
    from hubert_ecg.finetune import FinetuneObjective
    from hubert_ecg.pretraining.objective import PretrainObjective

    decay, lr, mult = 0.5, 1.0, 10.0
    model = create_model("tiny", head={"num_labels": 3, "type": "cosine"})
    prepare_model(
        model, FinetuneOptions(layer_decay=decay, head_lr_mult=mult, train_conv_stem=True), 3, ["a", "b", "c"]
    )
    ft = FinetuneObjective.__new__(FinetuneObjective)
    ft.opts = FinetuneOptions(layer_decay=decay, head_lr_mult=mult)
    got = _groups_by_param(model, ft.parameter_groups(model, lr), 0.01)
    n = model.config.num_hidden_layers
    for name, p in model.named_parameters():
        if name == "masked_spec_embed":
            assert got[name] is None and not p.requires_grad  # fine-tuning never masks: frozen, not optimised
            continue
        if name.startswith("feature_extractor."):
            want_lr = lr * decay ** (n + 1)
        elif name.startswith("encoder.layers."):
            want_lr = lr * decay ** (n - 1 - int(name.split(".")[2]))
        elif name.startswith("classifier."):
            want_lr = lr * mult
        else:  # feature projection, positional conv, encoder LayerNorm
            want_lr = lr * decay**n
        want_wd = 0.0 if (name.endswith(("bias", "log_scale")) or "layer_norm" in name) else 0.01
        assert got[name] == pytest.approx((want_lr, want_wd)), name

    pre = create_model("tiny", vocab_sizes=[4])
    po = PretrainObjective.__new__(PretrainObjective)
    got = _groups_by_param(pre, po.parameter_groups(pre, lr), 0.01)
    for name, p in pre.named_parameters():
        if not p.requires_grad:
            assert got[name] is None
            continue
        want_wd = 0.0 if (name.endswith("bias") or "layer_norm" in name or name == "masked_spec_embed") else 0.01
        assert got[name] == pytest.approx((lr, want_wd)), name


def test_pos_weight_and_class_weights_ignore_the_validation_rows(tmp_path):
    """pos_weight = negatives / positives of the TRAINING rows; a validation split with another prevalence
    (or other classes) must not move it. Class weights likewise."""
    from types import SimpleNamespace

    from hubert_ecg.finetune import FinetuneObjective

    train = np.array([[1, 0], [0, 0], [0, 1], [0, 1]], np.float32)  # label 0: 1 pos / 3 neg; label 1: 2 / 2
    rows, val_rows = np.arange(4), np.arange(4, 8)

    def objective(val_labels, task="multi_label", class_weights=False):
        labels = np.concatenate([train, val_labels]).astype(np.float32)
        store = SimpleNamespace(
            path=tmp_path,
            labels=labels,
            record_ids=np.array([f"r{i}" for i in range(8)]),
            label_names=["a", "b"],
            spec=SimpleNamespace(window_s=5.0),
            fs=100.0,
        )
        opts = FinetuneOptions(task=task, class_weights=class_weights)
        return FinetuneObjective(create_model("tiny"), store, opts, rows, val_rows)

    for val in (np.ones((4, 2)), np.zeros((4, 2)), np.array([[1, 0], [1, 1], [0, 0], [1, 1]])):
        assert objective(val).pos_weight.tolist() == [3.0, 1.0]
    # multi-class: classes 0, 1, 1, 1 in training -> weight N / (C * count) = 4 / (2 * 1), 4 / (2 * 3)
    train = np.array([[0, 0], [1, 0], [1, 0], [1, 0]], np.float32)
    for val in (np.array([[0, 0]] * 4), np.array([[1, 0]] * 4), np.array([[0, 0], [1, 0]] * 2)):
        weights = objective(val, task="multi_class", class_weights=True).class_weight
        torch.testing.assert_close(weights, torch.tensor([2.0, 2 / 3]))


def test_class_weights_cover_every_output_even_a_class_missing_from_training(tmp_path):
    from types import SimpleNamespace

    from hubert_ecg.finetune import FinetuneObjective

    labels = np.array([[0], [1], [1], [1], [2], [2], [0], [1]], np.float32)
    store = SimpleNamespace(
        path=tmp_path,
        labels=labels,
        record_ids=np.array([f"r{i}" for i in range(8)]),
        label_names=["c"],
        spec=SimpleNamespace(window_s=5.0),
        fs=100.0,
    )
    obj = FinetuneObjective(
        create_model("tiny"),
        store,
        FinetuneOptions(task="multi_class", class_weights=True),
        np.arange(4),
        np.arange(4, 8),
    )
    assert obj.class_weight.shape == (3,)  # the head has 3 outputs (classes 0, 1, 2)
