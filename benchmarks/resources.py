"""Peak memory on hostile inputs: a 100 kHz record, a 1 GB junk file named .csv/.hea, an hour-long record.

Each case runs in a fresh child process (this script with ``--child CASE``) and reports its peak
resident memory (``ru_maxrss``), the same after imports only (``base``), wall time and the outcome.
The "before" columns of benchmarks/RESULTS_DATA.md were measured with the previous code (SciPy
``filtfilt`` on all leads at once, whole-file reads); this script measures the current code only.

    python benchmarks/resources.py [--workdir /tmp/hubert-ecg-bench/resources] [--json FILE]

About 1-2 minutes on a 2-core machine. The junk files are sparse (64 KiB of random bytes, then a hole),
so they take no disk space.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

CASES = ("khz100_10s", "hour_500hz_npy", "junk_1gb_csv", "junk_1gb_hea", "prepare_hour_record")


def _child(case: str, workdir: Path) -> dict:
    import numpy as np
    import wfdb  # noqa: F401  (all lazy imports done before the baseline)

    from hubert_ecg.io import read_record
    from hubert_ecg.preprocess import PreprocessSpec, preprocess_signal
    from hubert_ecg.store import prepare_store

    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    outcome = ""
    if case == "khz100_10s":
        x = np.random.default_rng(0).standard_normal((12, 1_000_000)).astype(np.float32)
        outcome = f"output {preprocess_signal(x, 100_000.0, PreprocessSpec()).shape}"
    elif case == "hour_500hz_npy":
        path = workdir / "hour.npy"
        record = read_record(path, fs=500.0)
        outcome = f"output {preprocess_signal(record.signal, record.fs, PreprocessSpec()).shape}"
    elif case.startswith("junk_1gb"):
        path = workdir / f"junk.{case.rsplit('_', 1)[1]}"
        try:
            read_record(path, fs=500.0)
        except ValueError as err:
            outcome = f"rejected: {str(err).split(': ', 1)[1]}"
    elif case == "prepare_hour_record":
        out = workdir / "store"
        import shutil

        shutil.rmtree(out, ignore_errors=True)
        result = prepare_store([workdir / "hour.npy"], out, read_kwargs={"fs": 500.0}, progress=False)
        outcome = f"{result.records} record in {result.rows} rows"
    return {
        "case": case,
        "base_mb": base / 1024,
        "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "seconds": time.perf_counter() - start,
        "outcome": outcome,
    }


def _inputs(workdir: Path) -> None:
    import numpy as np

    workdir.mkdir(parents=True, exist_ok=True)
    hour = workdir / "hour.npy"
    if not hour.exists():
        t = np.arange(500 * 3600) / 500.0
        beats = np.exp(-((((t % 0.8) - 0.3) / 0.012) ** 2))
        np.save(hour, (np.outer(np.linspace(0.5, 1.5, 12), beats)).astype(np.float32))
    head = np.random.default_rng(0).integers(0, 256, 1 << 16, dtype=np.uint8).tobytes()
    for suffix in ("csv", "hea"):
        path = workdir / f"junk.{suffix}"
        if not path.exists():
            with open(path, "wb") as fh:
                fh.write(head)
                fh.truncate(1 << 30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/hubert-ecg-bench/resources"))
    parser.add_argument("--json", type=Path)
    parser.add_argument("--child", choices=CASES)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(_child(args.child, args.workdir)))
        return
    _inputs(args.workdir)
    rows = []
    print("| case | peak RSS MB | after imports MB | growth MB | seconds | outcome |")
    print("|---|---:|---:|---:|---:|---|")
    for case in CASES:
        proc = subprocess.run(
            [sys.executable, __file__, "--child", case, "--workdir", str(args.workdir)],
            capture_output=True,
            text=True,
            env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"},
        )
        if proc.returncode != 0:
            print(f"| {case} | failed: {proc.stderr.strip().splitlines()[-1]} |||||")
            continue
        row = json.loads(proc.stdout.strip().splitlines()[-1])
        rows.append(row)
        print(
            f"| {case} | {row['peak_mb']:.0f} | {row['base_mb']:.0f} | {row['peak_mb'] - row['base_mb']:.0f} | "
            f"{row['seconds']:.1f} | {row['outcome']} |"
        )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
