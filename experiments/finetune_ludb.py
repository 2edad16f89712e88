"""Experiment B: fine-tune on LUDB (sinus rhythm, LVH) from the pre-trained encoder and from random init, 5-fold.

Folds are the ones of the probe (``ludb_common.ludb_folds``: StratifiedKFold by record on the joint
sinus x LVH label, seed 0). In each fold, 20 % of the training records (stratified the same way) are the
validation split used for early model selection (``best`` by macro AUROC) and threshold tuning; the held-out
fold is scored once at the end. One store per fold (``prepare_store`` with a split column, 200 records).

Both starts get the same recipe: ``FinetuneOptions(task="multi_label")`` with both labels as one
two-logit head, layer-wise LR decay 0.8 (library default), conv stem trainable, random 5 s crops; the
test fold is scored on both 5 s halves of each 10 s record (mean of the probabilities).

Usage: ``python experiments/finetune_ludb.py --work /tmp/hubert-ecg-exp [--steps 48]`` after
``pretrain_probe_ludb.py`` (it reads ``WORK/pretrain-run/best``; ``--init`` overrides).
Writes ``WORK/results_finetune.json``.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ludb_common import (ENCODER_OVERRIDES, ENCODER_SIZE, LABELS, LUDB, N_FOLDS, SEED, Timer,  # noqa: E402
                         auroc_summary, ludb_folds, ludb_labels, machine, paired_auroc_difference, write_json)


def fold_table(src: Path, out: Path, fold: np.ndarray, k: int, joint: np.ndarray) -> Path:
    """The label CSV with a ``split`` column: test = fold k, val = 20 % of the rest (stratified), train = others."""
    from sklearn.model_selection import train_test_split

    rest = np.flatnonzero(fold != k)
    _, val = train_test_split(rest, test_size=0.2, stratify=joint[rest], random_state=SEED + k)
    split = np.where(fold == k, "test", "train").astype(object)
    split[val] = "val"
    with open(src, newline="") as fh:
        rows = list(csv.DictReader(fh))
    with open(out, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]) + ["split"])
        writer.writeheader()
        for row, s in zip(rows, split):
            writer.writerow({**row, "split": s})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", default="/tmp/hubert-ecg-exp")
    parser.add_argument("--init", help="pre-trained checkpoint (default WORK/pretrain-run/best)")
    parser.add_argument("--steps", type=int, default=48, help="optimizer steps per fine-tuning run")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=3e-4, help="top-layer LR (head x10, lower layers x0.8 per layer)")
    parser.add_argument("--folds", type=int, nargs="+", default=list(range(N_FOLDS)))
    args = parser.parse_args()

    from hubert_ecg.checkpoint import load_model, save_pretrained
    from hubert_ecg.evaluate import score_rows
    from hubert_ecg.finetune import FinetuneOptions, run_finetune
    from hubert_ecg.model import create_model
    from hubert_ecg.store import ECGStore, LabelTable, prepare_store
    from hubert_ecg.training import TrainConfig

    work = Path(args.work)
    ft = work / "finetune"
    ft.mkdir(parents=True, exist_ok=True)
    timer = Timer()
    init_pre = Path(args.init) if args.init else work / "pretrain-run" / "best"
    if not (init_pre / "config.json").exists():
        raise SystemExit(f"{init_pre}: no pre-trained model; run experiments/pretrain_probe_ludb.py first")
    # run_finetune(random_init_size=...) builds a named size without overrides, so the from-scratch
    # encoder (same architecture as the pre-trained one) is saved once and passed as init=.
    init_random = ft / "random-init-model"
    if not (init_random / "config.json").exists():
        torch.manual_seed(SEED)
        save_pretrained(create_model(ENCODER_SIZE, **ENCODER_OVERRIDES), init_random)
    starts = {"pretrained": init_pre, "random init": init_random}

    labels_csv, label_by_id, ids = ludb_labels(work)
    fold = ludb_folds(label_by_id)
    joint = label_by_id[LABELS[0]] * 2 + label_by_id[LABELS[1]]
    index_by_id = {rid: i for i, rid in enumerate(ids)}
    probs = {name: np.full((len(ids), len(LABELS)), np.nan) for name in starts}
    runs = []
    for k in args.folds:
        fold_dir = ft / f"fold{k}"
        fold_dir.mkdir(exist_ok=True)
        table = fold_table(labels_csv, fold_dir / "labels.csv", fold, k, joint)
        prepared = prepare_store([str(LUDB)], fold_dir / "store", workers=1, progress=False,
                                 labels=LabelTable.from_csv(table, label_columns=LABELS, split_column="split"))
        store = ECGStore(prepared.store)
        test_rows = store.rows("test")
        for name, init in starts.items():
            cfg = TrainConfig(out_dir=str(fold_dir / name.replace(" ", "-")), max_steps=args.steps,
                              batch_size=args.batch_size, lr=args.lr, warmup_fraction=0.1,
                              val_every=max(1, args.steps // 5), log_every=max(1, args.steps // 5),
                              clip_grad_norm=1.0, num_workers=0, logger="none", progress=False, seed=SEED)
            opts = FinetuneOptions(task="multi_label", monitor="auroc", crop="random", train_conv_stem=True)
            result = run_finetune(str(store.path), cfg, opts, init=str(init))
            model = load_model(result.best_dir or result.last_dir).eval()
            scores = score_rows(model, store, test_rows, task="multi_label", windows="sliding",
                                stride=store.row_samples // 2, batch_size=64)
            for rid, p in zip(scores.record_ids, scores.probabilities):
                probs[name][index_by_id[str(rid)]] = p
            runs.append({"fold": k, "init": name, "best_step": result.state.best_step,
                         "best_val_auroc": result.state.best, "n_train": int(len(store.rows("train"))),
                         "n_val": int(len(store.rows("val"))), "n_test": int(len(test_rows))})
            timer.lap(f"fold {k} {name}")
    done = np.isfinite(probs["pretrained"][:, 0]) & np.isfinite(probs["random init"][:, 0])
    summary: dict = {}
    for j, label in enumerate(LABELS):
        y = label_by_id[label][done]
        summary[label] = {"n": int(done.sum()), "positives": int(y.sum())}
        for name in starts:
            summary[label][name] = auroc_summary(y, probs[name][done, j], fold[done])
        summary[label]["pretrained - random"] = paired_auroc_difference(
            y, probs["pretrained"][done, j], probs["random init"][done, j])
    results = {"machine": machine(), "settings": {**vars(args), "init": str(init_pre)},
               "encoder": {"size": ENCODER_SIZE, **ENCODER_OVERRIDES}, "runs": runs, "finetune": summary,
               "wall_s": {**timer.stages, "total": timer.total()}}
    write_json(work / "results_finetune.json", results)
    print(json.dumps(summary, indent=1, default=float))


if __name__ == "__main__":
    main()
