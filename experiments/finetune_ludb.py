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
import shutil
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ludb_common import (  # noqa: E402
    ENCODER_OVERRIDES,
    ENCODER_SIZE,
    LABELS,
    LUDB,
    N_FOLDS,
    SEED,
    Timer,
    auroc_summary,
    cpu_seconds,
    ludb_folds,
    ludb_labels,
    paired_auroc_difference,
    provenance,
    write_csv,
    write_json,
)


def reuse_label(work: str | None) -> str | None:
    """ "160-step" for a work folder whose pre-training ran 160 steps (its folder name when unknown)."""
    if not work:
        return None
    path = Path(work) / "results_pretrain_probe.json"
    return f"{json.loads(path.read_text())['settings']['steps']}-step" if path.exists() else Path(work).name


@contextmanager
def timed(path: Path) -> Iterator[dict[str, float]]:
    """Wall and CPU seconds of the block, kept in ``path`` with the output they produced.

    The first invocation that does the work writes ``path``; a later one that finds the output finished (a
    resumed or copied run) reads the recorded times instead, so the results always report what the work
    cost, whichever invocation did it. Yields a dict filled on exit: wall_s, cpu_s, timed_by_earlier_call.
    """
    recorded = json.loads(path.read_text()) if path.exists() else None
    t0, c0 = time.perf_counter(), cpu_seconds()
    out: dict[str, float] = {}
    yield out
    if recorded is None:
        recorded = {"wall_s": round(time.perf_counter() - t0, 1), "cpu_s": round(cpu_seconds() - c0, 1)}
        write_json(path, recorded)
        out["timed_by_earlier_call"] = False
    else:
        out["timed_by_earlier_call"] = True
    out.update(wall_s=recorded["wall_s"], cpu_s=recorded["cpu_s"])


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
    parser.add_argument(
        "--reuse-random-from",
        metavar="WORK2",
        help="copy the finished random-init runs and fold stores of another work folder of this script "
        "(they do not depend on the pre-trained checkpoint) instead of training them again",
    )
    parser.add_argument(
        "--results",
        help="folder for the raw outputs (default: the --results folder of the "
        "pre-training run whose checkpoint is used, read from WORK)",
    )
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
    started = provenance()
    init_pre = Path(args.init) if args.init else work / "pretrain-run" / "best"
    if not (init_pre / "config.json").exists():
        raise SystemExit(f"{init_pre}: no pre-trained model; run experiments/pretrain_probe_ludb.py first")
    # run_finetune(random_init_size=...) builds a named size without overrides, so the from-scratch
    # encoder (same architecture as the pre-trained one) is saved once and passed as init=.
    init_random = ft / "random-init-model"
    if args.reuse_random_from and not init_random.exists():
        shutil.copytree(Path(args.reuse_random_from) / "finetune" / "random-init-model", init_random)
    if not (init_random / "config.json").exists():
        torch.manual_seed(SEED)
        save_pretrained(create_model(ENCODER_SIZE, **ENCODER_OVERRIDES), init_random)
    starts = {"pretrained": init_pre, "random init": init_random}
    if args.results:
        out = Path(args.results)
    else:
        pre_results = work / "results_pretrain_probe.json"
        if not pre_results.exists():
            raise SystemExit(f"{pre_results}: missing; pass --results")
        from ludb_common import default_results_dir

        out = default_results_dir(json.loads(pre_results.read_text())["settings"]["steps"])

    labels_csv, label_by_id, ids = ludb_labels(work)
    fold = ludb_folds(label_by_id)
    joint = label_by_id[LABELS[0]] * 2 + label_by_id[LABELS[1]]
    index_by_id = {rid: i for i, rid in enumerate(ids)}
    probs = {name: np.full((len(ids), len(LABELS)), np.nan) for name in starts}
    runs: list[dict] = []
    stores: list[dict] = []
    for k in args.folds:
        fold_dir = ft / f"fold{k}"
        fold_dir.mkdir(exist_ok=True)
        reused = False
        if args.reuse_random_from:
            # Same folds, same seeded recipe and the same saved random-init weights: the runs are copies, not re-runs.
            src = Path(args.reuse_random_from) / "finetune" / f"fold{k}"
            if not ((src / "random-init" / "last").is_dir() and (src / "store").is_dir()):
                raise SystemExit(f"{src}: no finished random-init run to reuse")
            for name in ("store", "random-init"):
                if not (fold_dir / name).exists():
                    shutil.copytree(src / name, fold_dir / name)
            reused = True
        table = fold_table(labels_csv, fold_dir / "labels.csv", fold, k, joint)
        with timed(fold_dir / "store" / "timing.json") as store_time:
            prepared = prepare_store(
                [str(LUDB)],
                fold_dir / "store",
                workers=1,
                progress=False,
                labels=LabelTable.from_csv(table, label_columns=LABELS, split_column="split"),
            )
        store = ECGStore(prepared.store)
        stores.append({"fold": k, "reused": reused, **store_time})
        test_rows = store.rows("test")
        for name, init in starts.items():
            cfg = TrainConfig(
                out_dir=str(fold_dir / name.replace(" ", "-")),
                max_steps=args.steps,
                batch_size=args.batch_size,
                lr=args.lr,
                warmup_fraction=0.1,
                val_every=max(1, args.steps // 5),
                log_every=max(1, args.steps // 5),
                clip_grad_norm=1.0,
                num_workers=0,
                logger="none",
                progress=False,
                seed=SEED,
            )
            opts = FinetuneOptions(task="multi_label", monitor="auroc", crop="random", train_conv_stem=True)
            with timed(Path(cfg.out_dir) / "timing.json") as run_time:
                result = run_finetune(str(store.path), cfg, opts, init=str(init))
                model = load_model(result.best_dir or result.last_dir).eval()
                scores = score_rows(
                    model,
                    store,
                    test_rows,
                    task="multi_label",
                    windows="sliding",
                    stride=store.row_samples // 2,
                    batch_size=64,
                )
            for rid, p in zip(scores.record_ids, scores.probabilities):
                probs[name][index_by_id[str(rid)]] = p
            runs.append(
                {
                    "fold": k,
                    "init": name,
                    "reused": reused and name == "random init",
                    "best_step": result.state.best_step,
                    "best_val_auroc": result.state.best,
                    "n_train": int(len(store.rows("train"))),
                    "n_val": int(len(store.rows("val"))),
                    "n_test": int(len(test_rows)),
                    **run_time,
                }
            )
            timer.lap(f"fold {k} {name}")
    done = np.isfinite(probs["pretrained"][:, 0]) & np.isfinite(probs["random init"][:, 0])
    summary: dict = {}
    for j, label in enumerate(LABELS):
        y = label_by_id[label][done]
        summary[label] = {"n": int(done.sum()), "positives": int(y.sum())}
        for name in starts:
            summary[label][name] = auroc_summary(y, probs[name][done, j], fold[done])
        summary[label]["pretrained - random"] = paired_auroc_difference(
            y, probs["pretrained"][done, j], probs["random init"][done, j]
        )
    pred_rows = [
        [str(ids[i]), int(fold[i]), name]
        + [int(label_by_id[lab][i]) for lab in LABELS]
        + [float(v) for v in probs[name][i]]
        for i in np.flatnonzero(done)
        for name in starts
    ]
    write_csv(
        out / "finetune_predictions.csv",
        ["record_id", "fold", "start"] + [f"y_{lab}" for lab in LABELS] + [f"p_{lab}" for lab in LABELS],
        pred_rows,
    )
    results = {
        "provenance": started,
        "settings": {
            **{k: v for k, v in vars(args).items() if k not in ("results", "work", "init", "reuse_random_from")},
            "random_init_runs_reused_from": reuse_label(args.reuse_random_from),
            "init": str(init_pre.relative_to(work) if init_pre.is_relative_to(work) else init_pre),
        },
        "encoder": {"size": ENCODER_SIZE, **ENCODER_OVERRIDES},
        "runs": runs,
        "stores": stores,
        "finetune": summary,
        **timer.summary(),
    }
    write_json(work / "results_finetune.json", results)
    write_json(out / "finetune.json", results)
    print(json.dumps(summary, indent=1, default=float))


if __name__ == "__main__":
    main()
