"""Experiment A: pre-train a reduced HuBERT-ECG on real unlabelled ECGs, then linear-probe LUDB labels.

Pipeline (all library calls, each stage resumable and skipped when its outputs are complete):

1. ``prepare_store`` on PTB-XL (1,819 records, 100 Hz), the CinC-2021 subsets (70 WFDB + 10 SPH) and the
   200 LUDB signals (labels not used), 10 % of records held out for validation by a hash of the id;
2. ``dump_features(kind="tf+mfcc")`` -> ``cluster_features(K = 50, 100, 200)`` (held-out k-means quality)
   -> ``label_store`` with K = 100;
3. ``run_pretrain`` (masked prediction, mask p 0.33, span 1) of the reduced encoder of ``ludb_common``;
   masked-token accuracy on the validation records is compared with the majority-cluster baseline and
   with the same (untrained) architecture;
4. embeddings of every LUDB record (mean over tokens of the last layer and of layer 2, mean over the two
   5 s halves of the 10 s record) from the pre-trained and from a randomly initialised encoder, and a
   5-fold (stratified by record) logistic-regression probe for sinus rhythm and LVH; a probe on the
   hand-crafted tf+mfcc token descriptors (mean and s.d. over tokens) is given for reference.

Usage: ``python experiments/pretrain_probe_ludb.py --work /tmp/hubert-ecg-exp [--steps 160]``.
Writes ``WORK/results_pretrain_probe.json``; ``experiments/report_ludb.py`` turns it into tables.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ludb_common import (  # noqa: E402
    ENCODER_OVERRIDES,
    ENCODER_SIZE,
    LABELS,
    LUDB,
    PRETRAIN_INPUTS,
    SEED,
    Timer,
    auroc_summary,
    default_results_dir,
    ludb_folds,
    ludb_labels,
    paired_auroc_difference,
    provenance,
    write_csv,
    write_json,
)


@torch.no_grad()
def record_embeddings(model: torch.nn.Module, store, layers: list[int]) -> tuple[np.ndarray, dict[int, np.ndarray]]:
    """Per record: mean over valid tokens of ``hidden_states[layer]``, then mean over non-overlapping 5 s windows.

    Returns record ids (N,) and {layer: (N, H)}.
    """
    from hubert_ecg.loader import StoreWindows, evaluation_windows, window_batches
    from hubert_ecg.metrics import aggregate_windows

    model.eval()
    dataset = StoreWindows(store, crop="given")
    rows = store.rows(first_segment_only=False)
    win = evaluation_windows(store, rows, window=dataset.window, mode="sliding", stride=dataset.window)
    per_layer: dict[int, list[np.ndarray]] = {layer: [] for layer in layers}
    for item in window_batches(win, 64):
        batch = dataset[item]
        mask = None if batch["full"] else batch["attention_mask"]
        out = model(batch["input"], mask, output_hidden_states=True)
        for layer in layers:
            per_layer[layer].append(model.pool(out.hidden_states[layer], out.token_mask).numpy())
    result = {}
    for layer in layers:
        groups, agg = aggregate_windows(np.concatenate(per_layer[layer]), win.groups, how="mean")
        result[layer] = agg
    return win.record_ids[groups], result


def hand_embeddings(store) -> tuple[np.ndarray, np.ndarray]:
    """Reference descriptor without learning: mean and s.d. over tokens of the 29 tf+mfcc values, per record."""
    from hubert_ecg.loader import StoreWindows, evaluation_windows
    from hubert_ecg.metrics import aggregate_windows
    from hubert_ecg.pretraining.features import hand_features

    dataset = StoreWindows(store, crop="given")
    win = evaluation_windows(store, store.rows(), window=dataset.window, mode="sliding", stride=dataset.window)
    x = dataset[(0, win.rows, win.starts)]["input"].numpy()
    feats = hand_features(x, "tf+mfcc", store.fs)  # (W, T, 29)
    per_window = np.concatenate([feats.mean(1), feats.std(1)], axis=1)
    groups, agg = aggregate_windows(per_window, win.groups, how="mean")
    return win.record_ids[groups], agg


def probe(x: np.ndarray, y: np.ndarray, fold: np.ndarray) -> np.ndarray:
    """Out-of-fold probabilities of a standardised L2 logistic regression (C = 1), one fit per fold."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    oof = np.zeros(len(y))
    for k in np.unique(fold):
        clf = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=5000))
        clf.fit(x[fold != k], y[fold != k])
        oof[fold == k] = clf.predict_proba(x[fold == k])[:, 1]
    return oof


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", default="/tmp/hubert-ecg-exp", help="work directory (stores, runs, results)")
    parser.add_argument("--steps", type=int, default=160, help="pre-training optimizer steps")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--k", type=int, default=100, help="clusters of the training targets")
    parser.add_argument("--workers", type=int, default=2, help="prepare worker processes")
    parser.add_argument("--val-every", type=int, default=40, help="validation (and best-checkpoint) interval in steps")
    parser.add_argument("--results", help="folder for the raw outputs (default experiments/results/pretrain-STEPS)")
    args = parser.parse_args()
    out = Path(args.results) if args.results else default_results_dir(args.steps)

    from hubert_ecg.checkpoint import load_model
    from hubert_ecg.model import create_model
    from hubert_ecg.pretraining.objective import PretrainObjective, default_val_rows, majority_baseline, run_pretrain
    from hubert_ecg.pretraining.targets import cluster_features, dump_features, label_store
    from hubert_ecg.store import ECGStore, LabelTable, prepare_store
    from hubert_ecg.training import TrainConfig, read_history

    torch.manual_seed(SEED)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    timer = Timer()
    results: dict = {
        "provenance": provenance(),
        "settings": {k: v for k, v in vars(args).items() if k != "results"},
        "encoder": {"size": ENCODER_SIZE, **ENCODER_OVERRIDES},
    }

    # 1. stores ---------------------------------------------------------------------------------
    pre = prepare_store(
        [str(p) for p in PRETRAIN_INPUTS],
        work / "pretrain-store",
        workers=args.workers,
        split_fractions=(0.1, 0.0),
        seed=SEED,
        progress=False,
    )
    store = ECGStore(pre.store)
    results["pretrain_store"] = {
        "records": pre.records,
        "rows": pre.rows,
        "rejected": pre.rejected,
        "rejects": [list(r) for r in pre.rejects],
        "train_rows": int(len(store.rows("train"))),
        "val_rows": int(len(store.rows("val"))),
    }
    labels_csv, _, _ = ludb_labels(work)
    ludb = prepare_store(
        [str(LUDB)],
        work / "ludb-store",
        workers=1,
        progress=False,
        labels=LabelTable.from_csv(labels_csv, label_columns=LABELS),
    )
    ludb_store = ECGStore(ludb.store)
    timer.lap("prepare")

    # 2. targets ----------------------------------------------------------------------------------
    feats = dump_features(store, work / "features-tfmfcc", kind="tf+mfcc", progress=False)
    sweep = cluster_features(feats, sorted({50, args.k, 200}), work / "kmeans", seed=SEED)
    results["kmeans"] = [
        {k: v for k, v in r.items() if k not in ("settings", "cluster_sizes")}
        | {
            "cluster_size_min": int(np.min(r["cluster_sizes"])) if "cluster_sizes" in r else None,
            "cluster_size_max": int(np.max(r["cluster_sizes"])) if "cluster_sizes" in r else None,
        }
        for r in sweep
    ]
    target = f"tfmfcc-k{args.k}"
    label_store(store, [work / "kmeans" / f"k{args.k}"], target, progress=False)
    timer.lap("features+kmeans+label")

    # 3. pre-training -------------------------------------------------------------------------------
    cfg = TrainConfig(
        out_dir=str(work / "pretrain-run"),
        max_steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        warmup_fraction=0.08,
        val_every=args.val_every,
        log_every=20,
        num_workers=0,
        logger="none",
        progress=False,
        seed=SEED,
    )
    run = run_pretrain(str(store.path), [target], cfg, size=ENCODER_SIZE, model_overrides=dict(ENCODER_OVERRIDES))
    timer.lap("pretrain")
    train_rows, val_rows = default_val_rows(store, "val", 0.05, SEED)
    untrained = create_model(ENCODER_SIZE, input_rate_hz=int(store.fs), vocab_sizes=[args.k], **ENCODER_OVERRIDES)
    objective = PretrainObjective(
        untrained, store, [target], train_rows, val_rows, global_batch=args.batch_size, seed=SEED
    )
    untrained_val = objective.validate(
        untrained.eval(), torch.device("cpu"), lambda: torch.autocast("cpu", enabled=False)
    )
    best_dir = run.best_dir or run.last_dir
    history = read_history(run.run_dir)
    results["pretrain"] = {
        "steps": run.state.step,
        "best_step": run.state.best_step,
        "best_val_loss": run.state.best,
        "val_history": history.get("val/val_masked_acc", []),
        "val_loss_history": history.get("val/val_loss", []),
        "train_loss_history": history.get("train/loss", []),
        "best_val_masked_acc": json.loads((best_dir / "metrics.json").read_text()).get("val_masked_acc")
        if (best_dir / "metrics.json").exists()
        else None,
        "untrained_val_masked_acc": untrained_val["val_masked_acc"],
        "untrained_val_loss": untrained_val["val_loss"],
        "majority_baseline": majority_baseline(store, target, val_rows, train_rows),
        "n_train_rows": int(len(train_rows)),
        "n_val_rows": int(len(val_rows)),
        "parameters": int(load_model(best_dir).num_parameters(backbone_only=True)),
    }
    steps = sorted({s for key in ("train/loss", "val/val_loss", "val/val_masked_acc") for s, _ in history.get(key, [])})
    by_key = {key: dict(history.get(key, [])) for key in ("train/loss", "val/val_loss", "val/val_masked_acc")}
    write_csv(
        out / "pretrain_history.csv",
        ["step", "train_loss", "val_loss", "val_masked_acc"],
        [[s] + [by_key[key].get(s, "") for key in by_key] for s in steps],
    )
    write_json(out / "kmeans_quality.json", results["kmeans"])

    # 4. probes -----------------------------------------------------------------------------------
    _, label_by_id, ids = ludb_labels(work)
    fold_by_id = dict(zip(ids, ludb_folds(label_by_id)))
    index_by_id = {rid: i for i, rid in enumerate(ids)}
    n_layers = ENCODER_OVERRIDES["num_hidden_layers"]
    layers = [n_layers, n_layers // 2]
    pretrained = load_model(best_dir)
    random_model = create_model(ENCODER_SIZE, input_rate_hz=int(ludb_store.fs), **ENCODER_OVERRIDES)
    encoders = {"pretrained": pretrained, "random init": random_model}
    embeddings: dict[str, np.ndarray] = {}
    record_ids = None
    for name, model in encoders.items():
        rid, by_layer = record_embeddings(model, ludb_store, layers)
        record_ids = rid
        for layer, emb in by_layer.items():
            embeddings[f"{name}, layer {layer}"] = emb
    rid_hand, hand = hand_embeddings(ludb_store)
    assert list(rid_hand) == list(record_ids)
    embeddings["tf+mfcc descriptors (no learning)"] = hand
    order = np.array([index_by_id[str(r)] for r in record_ids])
    fold = np.array([fold_by_id[str(r)] for r in record_ids])
    probes: dict = {}
    oof: dict = {}
    for label in LABELS:
        y = label_by_id[label][order]
        probes[label] = {"n": int(len(y)), "positives": int(y.sum())}
        for name, x in embeddings.items():
            oof[(label, name)] = probe(x, y, fold)
            probes[label][name] = auroc_summary(y, oof[(label, name)], fold)
        for layer in layers:
            probes[label][f"pretrained - random, layer {layer}"] = paired_auroc_difference(
                y, oof[(label, f"pretrained, layer {layer}")], oof[(label, f"random init, layer {layer}")]
            )
    results["probe"] = probes
    names = list(embeddings)
    write_csv(
        out / "probe_predictions.csv",
        ["record_id", "fold", "label", "y"] + names,
        [
            [str(record_ids[i]), int(fold[i]), label, int(label_by_id[label][order][i])]
            + [float(oof[(label, name)][i]) for name in names]
            for label in LABELS
            for i in range(len(order))
        ],
    )
    timer.lap("probe")
    results.update(timer.summary())
    write_json(work / "results_pretrain_probe.json", results)
    write_json(out / "pretrain_probe.json", results)
    print(
        json.dumps(
            {"pretrain": {k: v for k, v in results["pretrain"].items() if "history" not in k}, "probe": probes},
            indent=1,
            default=float,
        )
    )


if __name__ == "__main__":
    main()
