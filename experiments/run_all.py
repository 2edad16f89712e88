"""`make experiments`: run every LUDB experiment of docs/EXPERIMENTS.md, then regenerate its tables and README's.

For each pre-training budget (``--steps``, default 160 and 640): experiment A (``pretrain_probe_ludb.py``) and
experiment B (``finetune_ludb.py``, 48 fine-tuning steps), raw outputs to ``experiments/results/pretrain-<steps>/``
and stores/checkpoints to ``--work`` (outside the repository); then the random-init probe over seeded draws
(``random_probe_ludb.py``, ``experiments/results/random-init-probe/``); then ``report_ludb.py`` rewrites the
generated blocks of docs/EXPERIMENTS.md and README.md. Every stage resumes after an interruption. Without the real data
(``../shared/data`` or ``HUBERT_ECG_DATA``) it says so and exits 0 without running anything.

Usage: ``python experiments/run_all.py [--work /tmp/hubert-ecg-exp] [--steps 160 640] [--threads 1]``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from ludb_common import DATA, PRETRAIN_INPUTS  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", default="/tmp/hubert-ecg-exp", help="stores, features, checkpoints (not committed)")
    parser.add_argument("--steps", type=int, nargs="+", default=[160, 640], help="pre-training budgets to compare")
    parser.add_argument("--finetune-steps", type=int, default=48)
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads (OMP_NUM_THREADS) per run; the committed results used 1"
    )
    args = parser.parse_args()

    missing = [str(p) for p in PRETRAIN_INPUTS if not p.is_dir()]
    if missing:
        print(
            f"experiments skipped: real data not found ({', '.join(missing)}); set HUBERT_ECG_DATA to the folder "
            f"holding ptbxl-unlabelled-100hz/, cinc2021-smoke/ and ludb/ (looked in {DATA})"
        )
        return 0
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
    first = None
    for steps in args.steps:
        work = str(Path(args.work) / f"pretrain-{steps}")
        # The random-init fine-tuning runs do not depend on the budget: the later budgets copy the first one's.
        reuse = ["--reuse-random-from", first] if first else []
        for cmd in (
            [sys.executable, str(HERE / "pretrain_probe_ludb.py"), "--work", work, "--steps", str(steps)],
            [sys.executable, str(HERE / "finetune_ludb.py"), "--work", work, "--steps", str(args.finetune_steps)]
            + reuse,
        ):
            print("+ " + " ".join(cmd), flush=True)
            subprocess.run(cmd, check=True, env=env)
        first = first or work
    # the random-init probe baseline over many seeded draws (needs one work folder's LUDB store)
    cmd = [sys.executable, str(HERE / "random_probe_ludb.py"), "--work", first]
    print("+ " + " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, env=env)
    return subprocess.run([sys.executable, str(HERE / "report_ludb.py")], check=False).returncode


if __name__ == "__main__":
    sys.exit(main())
