"""Experiment A': how much the random-init probe baseline moves from one random draw of the weights to another.

Experiment A compares the pre-trained encoder with ONE randomly initialised encoder of the same architecture,
drawn after pre-training (so each budget's run draws different weights). This script draws several seeded
random encoders (``torch.manual_seed(seed)`` then ``create_model``), embeds the LUDB records exactly as A does
(``pretrain_probe_ludb.record_embeddings``, last layer) and fits the same 5-fold linear probe
(``pretrain_probe_ludb.probe``). ``report_ludb.py`` then sets every pre-trained probe of ``results/pretrain-*``
against every draw (paired on the same records).

Usage: ``python experiments/random_probe_ludb.py --work WORK`` where WORK is a work folder of
``pretrain_probe_ludb.py`` (it reads ``WORK/ludb-store`` and ``WORK/ludb_labels.csv``).
Writes ``results/random-init-probe/random_probe.json`` and ``random_probe_predictions.csv``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ludb_common import (  # noqa: E402
    ENCODER_OVERRIDES,
    ENCODER_SIZE,
    LABELS,
    RESULTS,
    Timer,
    auroc_summary,
    ludb_folds,
    ludb_labels,
    provenance,
    write_csv,
    write_json,
)
from pretrain_probe_ludb import probe, record_embeddings  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", required=True, help="a work folder of pretrain_probe_ludb.py (holds ludb-store/)")
    parser.add_argument("--seeds", type=int, nargs="+", default=list(range(20)), help="one random draw per seed")
    parser.add_argument("--results", default=str(RESULTS / "random-init-probe"))
    args = parser.parse_args()

    from hubert_ecg.model import create_model
    from hubert_ecg.store import ECGStore

    work, out = Path(args.work), Path(args.results)
    store_dir = work / "ludb-store"
    if not (store_dir / "store.json").exists():
        raise SystemExit(f"{store_dir}: no LUDB store; run experiments/pretrain_probe_ludb.py --work {work} first")
    timer = Timer()
    started = provenance()
    store = ECGStore(store_dir)
    _, label_by_id, ids = ludb_labels(work)
    fold_by_id = dict(zip(ids, ludb_folds(label_by_id)))
    index_by_id = {rid: i for i, rid in enumerate(ids)}
    layer = ENCODER_OVERRIDES["num_hidden_layers"]
    oof: dict[tuple[str, int], np.ndarray] = {}
    record_ids = None
    for seed in args.seeds:
        torch.manual_seed(seed)
        model = create_model(ENCODER_SIZE, input_rate_hz=int(store.fs), **ENCODER_OVERRIDES)
        rid, by_layer = record_embeddings(model, store, [layer])
        if record_ids is not None and list(rid) != list(record_ids):
            raise RuntimeError("record order changed between draws")
        record_ids = rid
        order = np.array([index_by_id[str(r)] for r in rid])
        fold = np.array([fold_by_id[str(r)] for r in rid])
        for label in LABELS:
            oof[(label, seed)] = probe(by_layer[layer], label_by_id[label][order], fold)
        timer.lap(f"seed {seed}")
    assert record_ids is not None
    summary: dict = {}
    for label in LABELS:
        y = label_by_id[label][order]
        summary[label] = {
            "n": int(len(y)),
            "positives": int(y.sum()),
            "draws": {str(seed): auroc_summary(y, oof[(label, seed)], fold) for seed in args.seeds},
        }
    columns = [f"random init seed {seed}, layer {layer}" for seed in args.seeds]
    write_csv(
        out / "random_probe_predictions.csv",
        ["record_id", "fold", "label", "y"] + columns,
        [
            [str(record_ids[i]), int(fold[i]), label, int(label_by_id[label][order][i])]
            + [float(oof[(label, seed)][i]) for seed in args.seeds]
            for label in LABELS
            for i in range(len(order))
        ],
    )
    write_json(
        out / "random_probe.json",
        {
            "provenance": started,
            "settings": {"seeds": args.seeds, "layer": layer},
            "encoder": {"size": ENCODER_SIZE, **ENCODER_OVERRIDES},
            "probe": summary,
            **timer.summary(),
        },
    )
    for label in LABELS:
        print(label, [round(s["pooled_auroc"], 3) for s in summary[label]["draws"].values()])


if __name__ == "__main__":
    main()
