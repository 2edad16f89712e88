"""One prepared GPU check (issue 15 §1): run it in one short call wherever a GPU is lent.

Usage::

    python benchmarks/gpu_check.py --out gpu_check_out            # on a GPU: < 8 min on an H100/H200
    python benchmarks/gpu_check.py --out /tmp/gc --dry-run        # CPU plumbing check (tiny sizes, few steps)
    make gpu-check                                                # = benchmarks/gpu_check.sh gpu_check_out

Sections, each a subprocess with its own time limit (a failure is recorded, the next section runs):

1. ``cuda-tests``: ``pytest -m cuda tests/test_cuda.py`` with pass/fail/skip per test (JUnit XML);
2. ``throughput``: ``benchmarks/throughput.py`` for small, base and large (inference, fine-tune and
   pre-train steps, ours vs ``transformers.HubertModel`` with the same weights, as shipped and like for
   like: ECG/s, MFU, our peak memory), plus ``large`` at batch 64 with gradient checkpointing (peak
   memory; goal: fits 16 GB);
3. ``pretrain``: a 60-second ``pretrain`` of ``small`` on a synthetic store with random targets,
   reporting ECG/s and the data-loader wait fraction (goal: under 5 % of step time).

Writes ``OUT/gpu_check.json`` (everything) and ``OUT/gpu_check.md`` (a summary to paste into
``benchmarks/RESULTS.md``), plus each section's raw output under ``OUT/``.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable


@dataclass
class Section:
    """One step of the check: a command, its time limit, and how to read its result."""

    name: str
    command: list[str]
    timeout_s: int
    env: dict[str, str] = field(default_factory=dict)


def plan(out: Path, dry_run: bool, pretrain_seconds: float | None = None) -> list[Section]:
    """The sections to run. ``dry_run``: tiny sizes, CPU, a few steps (the plumbing, in about a minute)."""
    tests = Section(
        "cuda-tests",
        [
            PY,
            "-m",
            "pytest",
            "-m",
            "cuda",
            str(ROOT / "tests" / "test_cuda.py"),
            "-q",
            "-p",
            "no:cacheprovider",
            f"--junitxml={out / 'cuda_tests.xml'}",
        ],
        120 if dry_run else 130,
    )
    if dry_run:
        bench = [
            "--sizes",
            "tiny",
            "--device",
            "cpu",
            "--steps",
            "1",
            "--train-steps",
            "1",
            "--rounds",
            "1",
            "--warmup",
            "0",
            "--infer-batch",
            "2",
            "--train-batch",
            "2",
        ]
        pre = [
            "--size",
            "tiny",
            "--records",
            "16",
            "--batch",
            "4",
            "--workers",
            "0",
            "--seconds",
            str(pretrain_seconds or 3),
            "--device",
            "cpu",
            "--log-every",
            "1",
        ]
    else:
        # Batches that fill an H100 (inference 1024; training 256 per GPU: small/base are launch-bound below).
        bench = [
            "--sizes",
            "small",
            "base",
            "large",
            "--infer-batch",
            "1024",
            "--train-batch",
            "256",
            "--memory-batch",
            "64",
            "--steps",
            "10",
            "--train-steps",
            "10",
            "--rounds",
            "2",
            "--warmup",
            "3",
        ]
        pre = [
            "--size",
            "small",
            "--records",
            "1024",
            "--batch",
            "256",
            "--workers",
            "8",
            "--seconds",
            str(pretrain_seconds or 60),
        ]
    throughput = Section(
        "throughput",
        [
            PY,
            str(ROOT / "benchmarks" / "throughput.py"),
            *bench,
            "--no-write",
            "--results",
            str(out / "throughput.md"),
            "--json",
            str(out / "throughput.json"),
        ],
        180 if dry_run else 200,
    )
    pretrain = Section("pretrain", [PY, str(Path(__file__).resolve()), "--pretrain-only", "--out", str(out), *pre], 120)
    # Time limits, not estimates: together <= 450 s on a GPU, so the whole check stays under 8 minutes.
    return [tests, throughput, pretrain]


# ---------------------------------------------------------------------------------------------
# The timed pre-training run (section 3), in its own process
# ---------------------------------------------------------------------------------------------
class _TimeUp(Exception):
    pass


def timed_pretrain(
    out: Path,
    *,
    size: str,
    records: int,
    batch: int,
    workers: int,
    seconds: float,
    device: str = "auto",
    log_every: int = 10,
) -> dict[str, Any]:
    """Pre-train ``size`` on a synthetic store for ``seconds`` of training; ECG/s and data-wait share
    from the loop's own log (``history.jsonl``), the first logging window (warm-up, compile) left out."""
    import numpy as np
    import torch

    from hubert_ecg.config import create_config
    from hubert_ecg.model import create_model
    from hubert_ecg.pretraining.objective import PretrainObjective
    from hubert_ecg.store import ECGStore, prepare_store
    from hubert_ecg.synthetic import write_synthetic_dataset
    from hubert_ecg.training import TrainConfig, read_history, train

    work = out / "pretrain_work"
    store_dir = work / "store"
    started = time.perf_counter()
    if not (store_dir / "manifest.csv").exists():
        raw = write_synthetic_dataset(work / "raw", records, fmt="npy", seed=0, fs=100.0, seconds=10.0)
        prepare_store([raw], store_dir, read_kwargs={"fs": 100.0}, progress=False, workers=max(1, workers))
    store = ECGStore(store_dir)
    tokens = create_config(size).num_tokens(6000)  # 5 s x 12 leads at 100 Hz
    (store_dir / "targets").mkdir(exist_ok=True)
    targets = np.random.default_rng(0).integers(0, 100, (len(store), tokens)).astype(np.int16)
    np.save(store_dir / "targets" / "random.npy", targets)
    store = ECGStore(store_dir)
    build_s = time.perf_counter() - started

    torch.manual_seed(0)
    model = create_model(size, vocab_sizes=[100])
    rows = store.rows()
    deadline: list[float] = []

    class Timed(PretrainObjective):
        def training_loss(self, *args: Any, **kwargs: Any) -> Any:
            if not deadline:
                deadline.append(time.perf_counter() + seconds)
            elif time.perf_counter() > deadline[0]:
                raise _TimeUp
            return super().training_loss(*args, **kwargs)

    n_val = min(64, len(rows) // 4)
    objective = Timed(model, store, ["random"], rows[:-n_val], rows[-n_val:], global_batch=batch)
    run = work / "run"
    cfg = TrainConfig(
        out_dir=str(run),
        max_steps=10**9,
        batch_size=batch,
        lr=5e-4,
        val_every=10**9,
        save_every=10**9,
        log_every=log_every,
        num_workers=workers,
        progress=False,
        logger="none",
        device=device,
    )
    try:
        train(model, objective, cfg)
    except _TimeUp:
        pass
    history = read_history(run)
    speed = [v for _, v in history.get("train/ecg_per_s", [])]
    wait = [v for _, v in history.get("train/data_wait", [])]
    steady = slice(1, None) if len(speed) > 1 else slice(None)
    result = dict(
        size=size,
        batch=batch,
        workers=workers,
        records=len(store),
        seconds=seconds,
        store_build_s=round(build_s, 1),
        logged_windows=len(speed),
        ecg_per_s=float(np.mean(speed[steady])) if speed else None,
        data_wait_fraction=float(np.mean(wait[steady])) if wait else None,
    )
    result["data_wait_ok"] = result["data_wait_fraction"] is not None and result["data_wait_fraction"] < 0.05
    (out / "pretrain.json").write_text(json.dumps(result, indent=1) + "\n")
    return result


# ---------------------------------------------------------------------------------------------
# Running the sections and summarising
# ---------------------------------------------------------------------------------------------
def read_junit(path: Path) -> list[dict[str, str]]:
    """Per-test outcome from pytest's JUnit XML: name, outcome (passed/failed/error/skipped), message."""
    if not path.exists():
        return []
    out = []
    for case in ET.parse(path).getroot().iter("testcase"):
        outcome, message = "passed", ""
        for tag in ("failure", "error", "skipped"):
            node = case.find(tag)
            if node is not None:
                outcome = {"failure": "failed", "error": "error", "skipped": "skipped"}[tag]
                message = (node.get("message") or "")[:300]
        out.append({"name": case.get("name", "?"), "outcome": outcome, "message": message})
    return out


def run_section(section: Section, out: Path) -> dict[str, Any]:
    started = time.perf_counter()
    log = out / f"{section.name}.log"
    try:
        proc = subprocess.run(
            section.command,
            cwd=ROOT,
            env={**os.environ, **section.env},
            timeout=section.timeout_s,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        rc, text = proc.returncode, proc.stdout
    except subprocess.TimeoutExpired as err:
        rc, text = 124, (err.stdout or b"").decode() if isinstance(err.stdout, bytes) else (err.stdout or "")
    log.write_text(text)
    return {
        "name": section.name,
        "command": " ".join(section.command),
        "returncode": rc,
        "seconds": round(time.perf_counter() - started, 1),
        "log": str(log),
        "tail": text[-1500:],
    }


def summarise(out: Path, results: list[dict[str, Any]], dry_run: bool) -> dict[str, Any]:
    """Collect every section's result into ``gpu_check.json`` and ``gpu_check.md``; returns the JSON."""
    import torch

    cuda = torch.cuda.is_available()
    summary: dict[str, Any] = {
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "dry_run": dry_run,
        "cuda": cuda,
        "device": torch.cuda.get_device_name(0) if cuda else platform.machine(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "sections": results,
        "cuda_tests": read_junit(out / "cuda_tests.xml"),
    }
    for name in ("throughput", "pretrain"):
        path = out / f"{name}.json"
        summary[name] = json.loads(path.read_text()) if path.exists() else None
    summary["total_seconds"] = round(sum(r["seconds"] for r in results), 1)
    (out / "gpu_check.json").write_text(json.dumps(summary, indent=1) + "\n")
    (out / "gpu_check.md").write_text(markdown(summary))
    return summary


def markdown(summary: dict[str, Any]) -> str:
    lines = [
        f"## GPU check · {summary['date']} · {summary['device']}"
        + (" · DRY RUN (CPU plumbing only)" if summary["dry_run"] else ""),
        "",
        f"torch {summary['torch']}, python {summary['python']}; total {summary['total_seconds']} s.",
        "",
        "| section | exit | seconds |",
        "|---|---|---|",
    ]
    lines += [f"| {r['name']} | {r['returncode']} | {r['seconds']} |" for r in summary["sections"]]
    tests = summary["cuda_tests"]
    if tests:
        counts = {k: sum(t["outcome"] == k for t in tests) for k in ("passed", "failed", "error", "skipped")}
        lines += [
            "",
            "CUDA tests: " + ", ".join(f"{v} {k}" for k, v in counts.items()),
            "",
            "| test | outcome | message |",
            "|---|---|---|",
        ]
        lines += [f"| {t['name']} | {t['outcome']} | {t['message'][:120].replace('|', '/')} |" for t in tests]
    bench = summary.get("throughput")
    if bench:
        lines += [
            "",
            f"Throughput ({bench['device']}):",
            "",
            "| size | workload | comparison | reference | ours | ref ECG/s | ours ECG/s | ratio | MFU | peak GiB |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in bench["rows"]:

            def f(key: str, fmt: str, r: dict[str, Any] = r) -> str:
                return format(r[key], fmt) if r.get(key) is not None else "-"

            lines.append(
                f"| {r['size']} | {r['workload']} | {r['comparison']} | {r.get('reference', '-')} | "
                f"{r.get('ours', '-')} | {f('reference_ecg_s', ',.1f')} | {f('ours_ecg_s', ',.1f')} | "
                f"{f('ratio', '.2f')} | {f('mfu', '.1%')} | {f('peak_gib_ours', '.2f')} |"
            )
    pre = summary.get("pretrain")
    if pre:
        wait = pre["data_wait_fraction"]
        lines += [
            "",
            f"Pre-training {pre['size']}, batch {pre['batch']}, {pre['workers']} workers, "
            f"{pre['seconds']} s on a synthetic store of {pre['records']} records: "
            f"{pre['ecg_per_s'] or 0:,.0f} ECG/s, data-loader wait "
            f"{'n/a' if wait is None else f'{wait:.1%}'} of step time "
            f"({'OK' if pre['data_wait_ok'] else 'over the 5 % goal'}).",
        ]
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for gpu_check.json / .md and raw outputs")
    parser.add_argument("--dry-run", action="store_true", help="CPU plumbing check: tiny sizes, a few steps")
    parser.add_argument(
        "--sections",
        nargs="+",
        default=None,
        choices=["cuda-tests", "throughput", "pretrain"],
        help="run only these sections",
    )
    # The timed pre-training section (run as its own process by the driver).
    parser.add_argument("--pretrain-only", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--size", default="small")
    parser.add_argument("--records", type=int, default=1024, help="synthetic store size (read from the page cache)")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=None, help="pre-training wall time (default 60; dry run 3)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--log-every", type=int, default=10, help="steps per ECG/s and data-wait window")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.pretrain_only:
        result = timed_pretrain(
            args.out,
            size=args.size,
            records=args.records,
            batch=args.batch,
            workers=args.workers,
            seconds=args.seconds or 60,
            device=args.device,
            log_every=args.log_every,
        )
        print(json.dumps(result))
        return 0
    sections = [s for s in plan(args.out, args.dry_run, args.seconds) if not args.sections or s.name in args.sections]
    results = []
    for section in sections:
        print(f"[gpu-check] {section.name}: {' '.join(section.command)}", flush=True)
        result = run_section(section, args.out)
        print(f"[gpu-check] {section.name}: exit {result['returncode']} in {result['seconds']} s", flush=True)
        results.append(result)
    summary = summarise(args.out, results, args.dry_run)
    print((args.out / "gpu_check.md").read_text())
    failed = [r["name"] for r in results if r["returncode"] not in (0, 5)]  # pytest 5: no tests collected
    failed += [t["name"] for t in summary["cuda_tests"] if t["outcome"] in ("failed", "error")]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
