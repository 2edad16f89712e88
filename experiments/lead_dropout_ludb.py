"""Experiment C: what lead dropout buys on reduced-lead input (LUDB, 5-fold, sinus rhythm + LVH).

Same folds, labels and split rule as experiment B (``finetune_ludb.py``). In each fold a reduced encoder
is fine-tuned twice from the SAME random initialisation with the same recipe and steps: without lead
dropout and with ``FinetuneOptions(lead_dropout=P)``. Each model then scores the held-out fold three
times: with all 12 leads, with the 6 limb leads only (a 6-lead export) and with lead II only (a 1-lead
strip); the missing leads are zeroed, as preprocessing makes of a lead that is absent from a file.

Statistics on the pooled out-of-fold predictions (200 records): macro AUROC (mean of the two labels) with
a 95 % percentile bootstrap CI, the paired bootstrap difference dropout - no dropout for every lead set
(``hubert_ecg.compare.paired_bootstrap``, same resamples for both models) and DeLong's test per label.

No pre-training is needed (random init), so the script stands alone. It is sized to run in a few minutes
on 2 CPU cores: ``nice -n 10 .venv/bin/python experiments/lead_dropout_ludb.py --work /tmp/ld``.
Writes ``results/lead-dropout/lead_dropout.json`` and ``lead_dropout_predictions.csv``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from finetune_ludb import fold_table  # noqa: E402
from ludb_common import (  # noqa: E402
    LABELS,
    LUDB,
    N_FOLDS,
    RESULTS,
    SEED,
    Timer,
    ludb_folds,
    ludb_labels,
    provenance,
    write_csv,
    write_json,
)

# Smaller than experiment B's encoder so 10 fine-tuning runs fit in minutes on 2 shared cores.
ENCODER = dict(
    hidden_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=128,
    conv_dim=(32,) * 5,
    classifier_proj_size=32,
    num_conv_pos_embedding_groups=4,
)
LEAD_SETS = {"12 leads": "all", "6 limb leads": "limb", "lead II only": "II"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", default="/tmp/hubert-ecg-exp-ld")
    parser.add_argument("--steps", type=int, default=60, help="optimizer steps per fine-tuning run")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--lead-dropout", type=float, default=0.5)
    parser.add_argument("--layer-decay", type=float, default=1.0)
    parser.add_argument("--head-lr-mult", type=float, default=3.0)
    parser.add_argument("--folds", type=int, nargs="+", default=list(range(N_FOLDS)))
    parser.add_argument("--bootstrap", type=int, default=1000)
    parser.add_argument("--results", default=str(RESULTS / "lead-dropout"))
    parser.add_argument(
        "--init",
        help="start both runs from this checkpoint (e.g. experiment A's pre-trained "
        "encoder, WORK/pretrain-run/best) instead of a fresh small encoder",
    )
    args = parser.parse_args()
    if not LUDB.exists():
        print(f"{LUDB}: no LUDB data; nothing to do")
        return

    from hubert_ecg.checkpoint import load_model, save_pretrained
    from hubert_ecg.compare import delong_test, paired_bootstrap
    from hubert_ecg.evaluate import score_rows
    from hubert_ecg.finetune import FinetuneOptions, run_finetune
    from hubert_ecg.metrics import bootstrap_ci
    from hubert_ecg.model import create_model
    from hubert_ecg.preprocess import lead_keep_mask, parse_lead_set
    from hubert_ecg.store import ECGStore, LabelTable, prepare_store
    from hubert_ecg.training import TrainConfig

    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    timer = Timer()
    started = provenance()
    init = Path(args.init) if args.init else work / "random-init-model"
    if not args.init and not (init / "config.json").exists():
        torch.manual_seed(SEED)
        save_pretrained(create_model("tiny", **ENCODER), init)
    labels_csv, label_by_id, ids = ludb_labels(work)
    fold = ludb_folds(label_by_id)
    joint = label_by_id[LABELS[0]] * 2 + label_by_id[LABELS[1]]
    index_by_id = {rid: i for i, rid in enumerate(ids)}
    runs = {"no dropout": 0.0, f"lead dropout {args.lead_dropout:g}": args.lead_dropout}
    probs = {(run, ls): np.full((len(ids), len(LABELS)), np.nan) for run in runs for ls in LEAD_SETS}
    bookkeeping = []
    for k in args.folds:
        fold_dir = work / f"fold{k}"
        fold_dir.mkdir(exist_ok=True)
        table = fold_table(labels_csv, fold_dir / "labels.csv", fold, k, joint)
        if not (fold_dir / "store" / "store.json").exists():
            prepare_store(
                [str(LUDB)],
                fold_dir / "store",
                workers=1,
                progress=False,
                labels=LabelTable.from_csv(table, label_columns=LABELS, split_column="split"),
            )
        store = ECGStore(fold_dir / "store")
        test_rows = store.rows("test")
        for run, p in runs.items():
            cfg = TrainConfig(
                out_dir=str(fold_dir / run.replace(" ", "-")),
                max_steps=args.steps,
                batch_size=args.batch_size,
                lr=args.lr,
                warmup_fraction=0.1,
                val_every=max(1, args.steps // 4),
                log_every=max(1, args.steps // 4),
                clip_grad_norm=1.0,
                num_workers=0,
                logger="none",
                progress=False,
                seed=SEED,
            )
            opts = FinetuneOptions(
                task="multi_label",
                monitor="auroc",
                crop="random",
                train_conv_stem=True,
                layer_decay=args.layer_decay,
                head_lr_mult=args.head_lr_mult,
                lead_dropout=p,
            )
            result = run_finetune(str(store.path), cfg, opts, init=str(init), overwrite=True)
            model = load_model(result.best_dir or result.last_dir).eval()
            for name, lead_set in LEAD_SETS.items():
                scores = score_rows(
                    model,
                    store,
                    test_rows,
                    task="multi_label",
                    windows="sliding",
                    stride=store.row_samples // 2,
                    batch_size=64,
                    keep_leads=lead_keep_mask(parse_lead_set(lead_set)),
                )
                for rid, prob in zip(scores.record_ids, scores.probabilities):
                    probs[(run, name)][index_by_id[str(rid)]] = prob
            bookkeeping.append(
                {"fold": k, "run": run, "best_step": result.state.best_step, "best_val_auroc": result.state.best}
            )
            timer.lap(f"fold {k} {run}")

    done = np.all([np.isfinite(v[:, 0]) for v in probs.values()], axis=0)
    y = np.stack([label_by_id[lab] for lab in LABELS], axis=1)[done]
    base, drop = list(runs)
    summary: dict = {}
    for name in LEAD_SETS:
        entry: dict = {}
        for run in runs:
            ci = bootstrap_ci(
                "multi_label", y, probs[(run, name)][done], n_resamples=args.bootstrap, seed=SEED, label_names=LABELS
            )
            entry[run] = {
                "macro_auroc": ci["macro"]["auroc"],
                "per_label_auroc": {lab: ci["per_label"][lab]["auroc"] for lab in LABELS},
            }
        paired = paired_bootstrap(
            "multi_label",
            y,
            probs[(base, name)][done],
            probs[(drop, name)][done],
            n_resamples=args.bootstrap,
            seed=SEED,
            label_names=LABELS,
        )
        entry["dropout - no dropout"] = {
            "macro_auroc": paired["macro"]["auroc"],
            "per_label_auroc": {lab: paired["per_label"][lab]["auroc"] for lab in LABELS},
            "delong": {
                lab: delong_test(y[:, j], probs[(base, name)][done, j], probs[(drop, name)][done, j])
                for j, lab in enumerate(LABELS)
            },
        }
        summary[name] = entry
    out = Path(args.results)
    rows = [
        [str(ids[i]), int(fold[i]), run, name]
        + [int(label_by_id[lab][i]) for lab in LABELS]
        + [float(v) for v in probs[(run, name)][i]]
        for i in np.flatnonzero(done)
        for run in runs
        for name in LEAD_SETS
    ]
    write_csv(
        out / "lead_dropout_predictions.csv",
        ["record_id", "fold", "run", "leads"] + [f"y_{lab}" for lab in LABELS] + [f"p_{lab}" for lab in LABELS],
        rows,
    )
    results = {
        "provenance": started,
        "settings": {k: v for k, v in vars(args).items() if k not in ("work", "results")},
        "encoder": {"init": str(init)} if args.init else {"size": "tiny", **ENCODER},
        "n_records": int(done.sum()),
        "runs": bookkeeping,
        "summary": summary,
        **timer.summary(),
    }
    write_json(out / "lead_dropout.json", results)
    for name, entry in summary.items():
        cells = [
            f"{run}: {entry[run]['macro_auroc']['point']:.3f} [{entry[run]['macro_auroc']['lower']:.3f}, "
            f"{entry[run]['macro_auroc']['upper']:.3f}]"
            for run in runs
        ]
        d = entry["dropout - no dropout"]["macro_auroc"]
        print(
            f"{name:>14}: {'; '.join(cells)}; difference {d['difference']:+.3f} [{d['lower']:+.3f}, {d['upper']:+.3f}]"
        )


if __name__ == "__main__":
    main()
