"""Render the results of the two LUDB experiments as Markdown tables (for docs/EXPERIMENTS.md).

Usage: ``python experiments/report_ludb.py --work /tmp/hubert-ecg-exp > /tmp/hubert-ecg-exp/tables.md``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def fmt_auroc(s: dict) -> str:
    return (f"{s['fold_mean']:.3f} ± {s['fold_sd']:.3f} | {s['pooled_auroc']:.3f} "
            f"[{s['ci_low']:.3f}, {s['ci_high']:.3f}]")


def fmt_diff(d: dict) -> str:
    return f"{d['diff']:+.3f} [{d['ci_low']:+.3f}, {d['ci_high']:+.3f}]"


def pretrain_tables(r: dict) -> list[str]:
    p, st = r["pretrain"], r["pretrain_store"]
    out = ["#### Pre-training corpus and masked prediction", "",
           f"Store: {st['records']} records accepted ({st['rows']} rows of 10 s; {st['train_rows']} train / "
           f"{st['val_rows']} validation rows), {st['rejected']} rejected.", "",
           "| quantity | value |", "|---|---|",
           f"| encoder parameters (backbone) | {p['parameters']:,} |",
           f"| optimizer steps x batch | {p['steps']} x {r['settings']['batch_size']} |",
           f"| validation rows (tokens scored: masked ones only) | {p['n_val_rows']} |",
           f"| masked-token accuracy, pre-trained (best validation step {p['best_step']}) | "
           f"{p['best_val_masked_acc']:.3f} |",
           f"| masked-token accuracy, same encoder untrained | {p['untrained_val_masked_acc']:.3f} |",
           f"| majority-cluster baseline (most frequent training cluster) | {p['majority_baseline']:.3f} |",
           f"| chance (1/K) | {1 / r['settings']['k']:.3f} |",
           f"| validation masked loss, untrained -> best | {p['untrained_val_loss']:.3f} -> {p['best_val_loss']:.3f} |",
           "", "#### k-means on tf+mfcc token descriptors (held-out ECGs)", "",
           "| K | held-out ECGs (tokens) | mean squared distance to centroid | Davies-Bouldin (lower is better) | "
           "Calinski-Harabasz (higher is better) | empty clusters | smallest / largest cluster (share of tokens) |",
           "|---|---|---|---|---|---|---|"]
    for km in r["kmeans"]:
        out.append(f"| {km['k']} | {km['n_held_out_ecgs']} ({km['n_rows']:,}) | {km['inertia_mean']:.4f} | "
                   f"{km['davies_bouldin']:.3f} | {km['calinski_harabasz']:.1f} | {km['n_empty_clusters']} | "
                   f"{km['cluster_size_min']} / {km['cluster_size_max']} ({km['majority_fraction']:.3f}) |")
    out += ["", "#### Linear probe on frozen embeddings (LUDB, 5-fold)", "",
            "AUROC: mean ± s.d. over the 5 test folds | pooled out-of-fold AUROC [95 % bootstrap CI, 1000 resamples].", ""]
    for label, block in r["probe"].items():
        out += [f"**{label}** (n = {block['n']} records, {block['positives']} positive)", "",
                "| embedding | AUROC per fold (mean ± s.d.) | pooled AUROC [95 % CI] |", "|---|---|---|"]
        for name, s in block.items():
            if isinstance(s, dict) and "fold_mean" in s:
                out.append(f"| {name} | {fmt_auroc(s)} |")
        for name, d in block.items():
            if isinstance(d, dict) and "diff" in d:
                out.append(f"| *{name}* (paired bootstrap) | | {fmt_diff(d)} |")
        out.append("")
    return out


def finetune_tables(r: dict) -> list[str]:
    out = ["#### Fine-tuning (LUDB, 5-fold)", "",
           "AUROC on the held-out fold: mean ± s.d. over folds | pooled out-of-fold AUROC [95 % bootstrap CI].", ""]
    for label, block in r["finetune"].items():
        out += [f"**{label}** (n = {block['n']} records, {block['positives']} positive)", "",
                "| start | AUROC per fold (mean ± s.d.) | pooled AUROC [95 % CI] |", "|---|---|---|"]
        for name in ("pretrained", "random init"):
            out.append(f"| {name} | {fmt_auroc(block[name])} |")
        out += [f"| *pretrained - random init* (paired bootstrap) | | {fmt_diff(block['pretrained - random'])} |", ""]
    runs = r["runs"]
    out += [f"Per run: {runs[0]['n_train']} train / {runs[0]['n_val']} validation / {runs[0]['n_test']} test records "
            f"(fold 0); best validation step per run: "
            + ", ".join(f"f{x['fold']} {x['init'].split()[0]} {x['best_step']}" for x in runs), ""]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", default="/tmp/hubert-ecg-exp")
    args = parser.parse_args()
    work = Path(args.work)
    lines: list[str] = []
    for name, render in (("results_pretrain_probe.json", pretrain_tables), ("results_finetune.json", finetune_tables)):
        path = work / name
        if path.exists():
            r = json.loads(path.read_text())
            lines += render(r)
            lines += [f"Wall time: {', '.join(f'{k} {v:.0f} s' for k, v in r['wall_s'].items())}. "
                      f"Machine: {r['machine']}.", ""]
    print("\n".join(lines))


if __name__ == "__main__":
    main()
