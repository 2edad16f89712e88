"""Shared pieces of the LUDB experiments: paths, the reduced encoder, the folds, and the statistics.

Both experiment scripts import this file (``experiments/`` is not a package; the scripts put their
own folder on ``sys.path``). Nothing here is part of the library.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import time
from pathlib import Path
from typing import Any

import numpy as np

DATA = Path(os.environ.get("HUBERT_ECG_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
LUDB = DATA / "ludb"
PRETRAIN_INPUTS = [DATA / "ptbxl-unlabelled-100hz", DATA / "cinc2021-smoke", LUDB]

# The published SMALL (30 M parameters) is far too slow for the shared 2-core machine these runs were
# made on (even this encoder trained at 3-6 ECG/s there). This one has a 4-layer, 128-wide transformer
# behind a 64-channel conv stem (~0.9 M parameters): the same stem geometry and token rate as the
# published models (93 tokens per 5 s window at 100 Hz), ~35x fewer parameters than SMALL.
ENCODER_SIZE = "tiny"
ENCODER_OVERRIDES: dict[str, Any] = dict(
    hidden_size=128,
    num_hidden_layers=4,
    num_attention_heads=4,
    intermediate_size=256,
    conv_dim=(64,) * 5,
    classifier_proj_size=64,
    num_conv_pos_embedding_groups=4,
)
LABELS = ["sinus_rhythm", "lvh"]
N_FOLDS = 5
SEED = 0


def ludb_labels(work: Path) -> tuple[Path, dict[str, np.ndarray], np.ndarray]:
    """LUDB label table (via the library) -> (csv path, {label: (200,) int}, record ids (200,) str)."""
    from hubert_ecg.label_tables import ludb_labels_table

    table = ludb_labels_table(LUDB, work / "ludb_labels.csv")
    import csv

    with open(table.path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    ids = np.array([r["record_id"] for r in rows], dtype=object)
    return table.path, {lab: np.array([int(r[lab]) for r in rows]) for lab in LABELS}, ids


def ludb_folds(labels: dict[str, np.ndarray], n_folds: int = N_FOLDS, seed: int = SEED) -> np.ndarray:
    """Fold index (0..n_folds-1) per record: StratifiedKFold by record on the joint label (sinus x LVH)."""
    from sklearn.model_selection import StratifiedKFold

    joint = labels[LABELS[0]] * 2 + labels[LABELS[1]]
    fold = np.empty(len(joint), dtype=np.int64)
    for k, (_, test) in enumerate(StratifiedKFold(n_folds, shuffle=True, random_state=seed).split(joint, joint)):
        fold[test] = k
    return fold


def auroc_summary(y: np.ndarray, score: np.ndarray, fold: np.ndarray, seed: int = SEED) -> dict[str, Any]:
    """Per-fold AUROC (mean, sd) and pooled out-of-fold AUROC with a 95 % percentile bootstrap CI."""
    from sklearn.metrics import roc_auc_score

    from hubert_ecg.metrics import bootstrap_ci

    per_fold = [float(roc_auc_score(y[fold == k], score[fold == k])) for k in np.unique(fold)]
    boot = bootstrap_ci("binary", y, score, n_resamples=1000, seed=seed)
    stats = (
        boot["macro"]["auroc"]
        if "auroc" in boot["macro"]
        else boot["per_label"][next(iter(boot["per_label"]))]["auroc"]
    )
    return {
        "fold_auroc": per_fold,
        "fold_mean": float(np.mean(per_fold)),
        "fold_sd": float(np.std(per_fold, ddof=1)),
        "pooled_auroc": float(stats["point"]),
        "ci_low": float(stats["lower"]),
        "ci_high": float(stats["upper"]),
    }


def paired_auroc_difference(
    y: np.ndarray, a: np.ndarray, b: np.ndarray, n: int = 1000, seed: int = SEED
) -> dict[str, float]:
    """AUROC(a) - AUROC(b) on the same records, with a paired percentile bootstrap 95 % CI."""
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(seed)
    point = roc_auc_score(y, a) - roc_auc_score(y, b)
    diffs = []
    for _ in range(n):
        idx = rng.integers(0, len(y), len(y))
        if y[idx].min() == y[idx].max():
            continue
        diffs.append(roc_auc_score(y[idx], a[idx]) - roc_auc_score(y[idx], b[idx]))
    lo, hi = np.percentile(diffs, [2.5, 97.5])
    return {"diff": float(point), "ci_low": float(lo), "ci_high": float(hi)}


def machine() -> str:
    import torch

    return (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__} "
        f"({torch.get_num_threads()} threads), Python {platform.python_version()}"
    )


def cpu_seconds() -> float:
    """User + system CPU seconds of this process and of its finished child processes (prepare workers)."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


class Timer:
    """Wall time and CPU time (user + sys, this process and its children) per named stage, for the report."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.cpu_start = cpu_seconds()
        self.stages: dict[str, float] = {}
        self.cpu_stages: dict[str, float] = {}
        self._t = self.start
        self._c = self.cpu_start

    def lap(self, name: str) -> None:
        now, cpu = time.perf_counter(), cpu_seconds()
        self.stages[name] = round(now - self._t, 1)
        self.cpu_stages[name] = round(cpu - self._c, 1)
        self._t, self._c = now, cpu
        print(
            f"[{time.strftime('%H:%M:%S')}] {name}: wall {self.stages[name]:.1f} s, cpu {self.cpu_stages[name]:.1f} s",
            flush=True,
        )

    def total(self) -> float:
        return round(time.perf_counter() - self.start, 1)

    def summary(self) -> dict[str, Any]:
        """{"wall_s": {stage: s, "total": s}, "cpu_s": {stage: s, "total": s}} (user + sys CPU seconds)."""
        return {
            "wall_s": {**self.stages, "total": self.total()},
            "cpu_s": {**self.cpu_stages, "total": round(cpu_seconds() - self.cpu_start, 1)},
        }


def write_json(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2, default=float) + "\n")


def write_csv(path: Path, header: list[str], rows: list[list[Any]]) -> None:
    """A small CSV of raw outputs; floats with 6 significant digits (enough to recompute every AUROC)."""
    import csv

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(header)
        for row in rows:
            writer.writerow([f"{v:.6g}" if isinstance(v, (float, np.floating)) else v for v in row])


def provenance() -> dict[str, Any]:
    """Which code produced a result: git commit (or ``HUBERT_ECG_COMMIT`` for a snapshot without .git), package
    location and version, machine, and the start time (UTC)."""
    import subprocess

    import hubert_ecg

    commit, dirty = os.environ.get("HUBERT_ECG_COMMIT"), None
    if commit is None:
        try:
            root = Path(__file__).resolve().parent
            commit = subprocess.run(
                ["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, check=True
            ).stdout.strip()
            dirty = bool(
                subprocess.run(
                    ["git", "-C", str(root), "status", "--porcelain", "--", "src", "experiments"],
                    capture_output=True,
                    text=True,
                    check=True,
                ).stdout.strip()
            )
        except (OSError, subprocess.CalledProcessError):
            commit = "unknown"
    return {
        "git_commit": commit,
        "uncommitted_changes": dirty,
        "package": getattr(hubert_ecg, "__version__", None),
        "machine": machine(),
        "machine_note": os.environ.get("HUBERT_ECG_MACHINE_NOTE", ""),
        "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


RESULTS = Path(__file__).resolve().parent / "results"


def default_results_dir(steps: int) -> Path:
    """``experiments/results/pretrain-<steps>``: one folder per pre-training budget, A and B outputs together."""
    return RESULTS / f"pretrain-{steps}"
