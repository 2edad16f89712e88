"""``prepare_store`` throughput per core and peak memory, on real and synthetic records.

Every measurement runs ``prepare_store`` in a fresh child process (this script with ``--child``),
so that wall time, CPU time and peak resident memory (``ru_maxrss``) belong to that one job:

1. **real data** (when ``--data`` exists): LUDB (200 WFDB ``.hea``/``.dat``, 500 Hz, 10 s), the
   CinC-2021 smoke set (70 WFDB ``.mat`` at 500/1000 Hz, 10-48 s, plus 10 SPH HDF5), and with
   ``--ptbxl`` the 1,819 PTB-XL records at 100 Hz; for each worker count in ``--workers``;
2. **synthetic**: ``--synthetic`` records as reference-layout ``.npy`` ``(12, 5000)`` at 500 Hz and
   as WFDB (format 16) records;
3. **where the time goes**: per-record time of ``read_source`` and ``preprocess_signal`` on LUDB,
   with the BLAS library's default threads and with one thread, and ``prepare_store`` on LUDB with
   its one-thread BLAS limit switched off (the state before that limit was added);
4. **memory**: ``prepare_store`` over N and ``--memory-factor`` x N synthetic ``.npy`` records with
   the same shard size, peak RSS of the child and, in a second child, the ``tracemalloc`` peak of
   Python-visible allocations (NumPy arrays included).

Default run: about 2-4 minutes on a 2-core machine. Inputs are written once under ``--workdir``
(default ``/tmp/hubert-ecg-bench/prepare``) and reused; stores are rebuilt every run.

    python benchmarks/prepare.py [--data /work/shared/data] [--workers 1,2] [--ptbxl]
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

LEADS = ("I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6")


# ---------------------------------------------------------------------------------------------
# Child: one measured job
# ---------------------------------------------------------------------------------------------
def _rss_now_kb() -> int:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return -1


def child_prepare(job: dict[str, Any]) -> dict[str, Any]:
    """Run one ``prepare_store`` and measure it; imports happen before the clock starts."""
    import tracemalloc

    import scipy.signal  # noqa: F401  (imported up front: its ~1 s import is not prepare's work)

    import hubert_ecg.io  # noqa: F401
    from hubert_ecg import store as store_module

    if not job.get("blas_limit", True):
        store_module._limit_blas_threads = lambda: None  # the behaviour before the limit existed
    out = Path(job["out"])
    shutil.rmtree(out, ignore_errors=True)
    rss_before = _rss_now_kb()
    if job.get("tracemalloc"):
        tracemalloc.start()
    usage0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.perf_counter()
    # The synthetic .npy files are 500 Hz; a .npy states no rate and the reader never assumes one.
    reading = {"fs": 500.0} if any("npy" in Path(i).name for i in job["inputs"]) else None
    result = store_module.prepare_store(
        job["inputs"],
        out,
        workers=job["workers"],
        progress=False,
        shard_records=job.get("shard_records", 512),
        read_kwargs=reading,
    )
    wall = time.perf_counter() - t0
    usage1 = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)  # pool workers, once joined
    peak_traced = tracemalloc.get_traced_memory()[1] if job.get("tracemalloc") else None
    cpu = (
        (usage1.ru_utime - usage0.ru_utime)
        + (usage1.ru_stime - usage0.ru_stime)
        + children.ru_utime
        + children.ru_stime
    )
    return {
        "records": result.records,
        "rows": result.rows,
        "rejected": result.rejected,
        "wall_s": wall,
        "cpu_s": cpu,
        "rss_after_imports_kb": rss_before,
        "maxrss_kb": usage1.ru_maxrss,
        "maxrss_workers_kb": children.ru_maxrss,
        "tracemalloc_peak_bytes": peak_traced,
        "rejects": result.rejects[:5],
    }


def child_stages(job: dict[str, Any]) -> dict[str, Any]:
    """Per-record seconds of reading and of preprocessing, BLAS at its default threads then at one."""
    from threadpoolctl import threadpool_info, threadpool_limits

    from hubert_ecg.io import discover_sources, read_source
    from hubert_ecg.preprocess import PreprocessSpec, preprocess_signal

    spec = PreprocessSpec()
    sources = discover_sources(job["inputs"])[: job["n"]]
    records = [read_source(s) for s in sources[:2]]
    preprocess_signal(records[0].signal, records[0].fs, spec)  # imports and caches
    t0 = time.perf_counter()
    records = [read_source(s) for s in sources]
    read_s = (time.perf_counter() - t0) / len(sources)
    out: dict[str, Any] = {
        "n": len(sources),
        "read_s": read_s,
        "blas": [
            {k: d.get(k) for k in ("internal_api", "num_threads", "version")}
            for d in threadpool_info()
            if d.get("user_api") == "blas"
        ],
    }
    for label, limit in (("preprocess_default_threads_s", None), ("preprocess_one_thread_s", 1)):
        with threadpool_limits(limits=limit):
            t0 = time.perf_counter()
            for rec in records:
                preprocess_signal(rec.signal, rec.fs, spec)
            out[label] = (time.perf_counter() - t0) / len(records)
    return out


def run_child(job: dict[str, Any], timeout: float = 1800) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, __file__, "--child", json.dumps(job)], capture_output=True, text=True, timeout=timeout
    )
    if proc.returncode != 0:
        raise RuntimeError(f"child failed ({job.get('task', 'prepare')}): {proc.stderr.strip().splitlines()[-1:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------------------------
# Synthetic inputs
# ---------------------------------------------------------------------------------------------
def raw_ecg(rng: np.random.Generator, n_samples: int, fs: float) -> np.ndarray:
    """One raw-looking 12-lead record in mV ``(12, n_samples)`` float32: beats, baseline wander, noise."""
    t = np.arange(n_samples) / fs
    rate = rng.uniform(50, 110) / 60
    phase = rng.uniform(0, 2 * np.pi, size=(12, 1))
    beat = rng.uniform(0.3, 1.5, size=(12, 1)) * np.cos(2 * np.pi * rate * t + phase) ** 31
    wander = 0.2 * np.sin(2 * np.pi * 0.3 * t + phase)
    return (beat + wander + 0.02 * rng.standard_normal((12, n_samples))).astype(np.float32)


def ensure_npy(folder: Path, n: int) -> list[Path]:
    files = [folder / f"{i:06d}.npy" for i in range(n)]
    if all(f.exists() for f in files):
        return files
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for f in files:
        if not f.exists():
            np.save(f, raw_ecg(rng, 5000, 500.0))
    return files


def ensure_wfdb(folder: Path, n: int) -> Path:
    import wfdb

    names = [f"syn{i:05d}" for i in range(n)]
    if all((folder / f"{name}.hea").exists() for name in names):
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    for name in names:
        signal = raw_ecg(rng, 5000, 500.0).astype(np.float64)
        wfdb.wrsamp(
            name,
            fs=500,
            units=["mV"] * 12,
            sig_name=list(LEADS),
            p_signal=signal.T,
            fmt=["16"] * 12,
            adc_gain=[1000.0] * 12,
            baseline=[0] * 12,
            write_dir=str(folder),
        )
    return folder


def write_manifest(path: Path, files: list[Path]) -> Path:
    """A ``.csv`` manifest (``path`` column) so that N and 10 N runs go through the same code path.

    Entries are relative to the manifest's folder (the files lie below it), as manifests must be
    unless the caller allows paths outside that root.
    """
    path.write_text("path\n" + "".join(f"{os.path.relpath(f, path.parent)}\n" for f in files))
    return path


# ---------------------------------------------------------------------------------------------
# Driver
# ---------------------------------------------------------------------------------------------
def machine_info() -> dict[str, Any]:
    cpu = "unknown"
    try:
        cpu = next(
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        )
    except (OSError, StopIteration):
        pass
    import scipy
    import wfdb

    return {
        "date": _dt.datetime.now().isoformat(timespec="seconds"),
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "load_avg": os.getloadavg(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "wfdb": wfdb.__version__,
        "platform": platform.platform(),
    }


def report_line(name: str, workers: int, r: dict[str, Any]) -> str:
    rate = r["records"] / r["wall_s"]
    return (
        f"{name:<34} {workers:>3} | {r['records']:>6} {r['rejected']:>4} {r['rows']:>6} | {r['wall_s']:>7.1f} "
        f"{rate:>8.1f} {rate / workers:>8.1f} {r['records'] / r['cpu_s']:>9.1f} | "
        f"{r['maxrss_kb'] / 1024:>7.0f} {r['maxrss_workers_kb'] / 1024:>7.0f}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/hubert-ecg-bench/prepare"))
    parser.add_argument(
        "--data", type=Path, default=Path("/work/shared/data"), help="real data root (skipped when absent)"
    )
    parser.add_argument("--workers", default="1,2", help="comma-separated worker counts for the throughput runs")
    parser.add_argument("--ptbxl", action="store_true", help="also run the 1,819 PTB-XL records (100 Hz)")
    parser.add_argument("--synthetic", type=int, default=200, help="synthetic records per format")
    parser.add_argument("--memory-n", type=int, default=200, help="N for the memory runs (N and factor x N)")
    parser.add_argument("--memory-factor", type=int, default=10)
    parser.add_argument(
        "--memory-shard-records",
        type=int,
        default=100,
        help="shard size of the memory runs (both runs hold at most one shard of records)",
    )
    parser.add_argument("--stage-records", type=int, default=60, help="LUDB records for the stage breakdown")
    parser.add_argument("--json", type=Path, help="also write every figure to this JSON file")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        job = json.loads(args.child)
        result = child_stages(job) if job.get("task") == "stages" else child_prepare(job)
        print(json.dumps(result, default=float))
        return 0

    work = args.workdir
    work.mkdir(parents=True, exist_ok=True)
    worker_counts = [int(w) for w in args.workers.split(",") if w.strip()]
    info = machine_info()
    results: dict[str, Any] = {"machine": info, "throughput": [], "memory": []}
    print(json.dumps(info))

    print("\npreparing synthetic inputs ...", flush=True)
    n_mem_large = args.memory_n * args.memory_factor
    npy_files = ensure_npy(work / "npy", max(args.synthetic, n_mem_large))
    wfdb_dir = ensure_wfdb(work / f"wfdb{args.synthetic}", args.synthetic)

    sets: list[tuple[str, list[str]]] = []
    ludb = args.data / "ludb"
    if ludb.is_dir():
        sets.append(("LUDB (WFDB .dat, 500 Hz, 10 s)", [str(ludb)]))
    cinc = args.data / "cinc2021-smoke"
    if cinc.is_dir():
        sets.append(("CinC-2021 smoke (.mat 500/1000 Hz + SPH)", [str(cinc)]))
    ptbxl = args.data / "ptbxl-unlabelled-100hz"
    if args.ptbxl and ptbxl.is_dir():
        sets.append(("PTB-XL records100 (100 Hz)", [str(ptbxl)]))
    if not sets:
        print(f"no real data under {args.data}: real-data runs skipped")
    sets.append(
        (
            f"synthetic .npy (12, 5000) x{args.synthetic}",
            [str(write_manifest(work / f"npy_first{args.synthetic}.csv", npy_files[: args.synthetic]))],
        )
    )
    sets.append((f"synthetic WFDB fmt16 x{args.synthetic}", [str(wfdb_dir)]))

    header = (
        f"{'input':<34} {'wrk':>3} | {'recs':>6} {'rej':>4} {'rows':>6} | {'wall s':>7} {'rec/s':>8} "
        f"{'/worker':>8} {'rec/cpu-s':>9} | {'RSS MiB':>7} {'wrk MiB':>7}"
    )
    print("\nthroughput (prepare_store, fresh store; wall includes worker start-up)\n" + header, flush=True)
    for name, inputs in sets:
        for workers in worker_counts:
            r = run_child({"inputs": inputs, "out": str(work / "store-throughput"), "workers": workers})
            results["throughput"].append({"set": name, "workers": workers, **r})
            print(report_line(name, workers, r), flush=True)

    if ludb.is_dir():
        print("\nwhere the time goes (LUDB, per record, one process)", flush=True)
        stages = run_child({"task": "stages", "inputs": [str(ludb)], "n": args.stage_records})
        results["stages"] = stages
        print(f"  BLAS: {stages['blas']}")
        print(f"  read_source (wfdb header + signal): {stages['read_s'] * 1e3:.1f} ms")
        print(f"  preprocess_signal, BLAS default threads: {stages['preprocess_default_threads_s'] * 1e3:.1f} ms")
        print(f"  preprocess_signal, BLAS one thread:      {stages['preprocess_one_thread_s'] * 1e3:.1f} ms")
        before = run_child(
            {"inputs": [str(ludb)], "out": str(work / "store-throughput"), "workers": 1, "blas_limit": False}
        )
        after = (
            next(r for r in results["throughput"] if r["set"].startswith("LUDB") and r["workers"] == 1)
            if 1 in worker_counts
            else run_child({"inputs": [str(ludb)], "out": str(work / "store-throughput"), "workers": 1})
        )
        results["blas_limit_effect"] = {"without_limit": before, "with_limit": after}
        print(
            f"  prepare_store LUDB, 1 worker: {before['records'] / before['wall_s']:.1f} rec/s without the "
            f"one-thread BLAS limit, {after['records'] / after['wall_s']:.1f} rec/s with it"
        )

    print(f"\nmemory (synthetic .npy, 1 worker, shard_records={args.memory_shard_records})", flush=True)
    print(
        f"{'records':>8} | {'RSS after imports':>17} {'peak RSS':>9} {'growth':>8} | {'tracemalloc peak':>16} | "
        f"{'rec/s':>6}"
    )
    for n in (args.memory_n, n_mem_large):
        manifest = write_manifest(work / f"npy_first{n}.csv", npy_files[:n])
        job = {
            "inputs": [str(manifest)],
            "out": str(work / "store-memory"),
            "workers": 1,
            "shard_records": args.memory_shard_records,
        }
        plain = run_child(job)
        traced = run_child({**job, "tracemalloc": True})
        results["memory"].append({"records": n, "plain": plain, "tracemalloc": traced})
        print(
            f"{n:>8} | {plain['rss_after_imports_kb'] / 1024:>13.0f} MiB {plain['maxrss_kb'] / 1024:>5.0f} MiB "
            f"{(plain['maxrss_kb'] - plain['rss_after_imports_kb']) / 1024:>4.0f} MiB | "
            f"{traced['tracemalloc_peak_bytes'] / 2**20:>12.1f} MiB | {plain['records'] / plain['wall_s']:>6.1f}",
            flush=True,
        )
    small, large = results["memory"]
    print(
        f"peak RSS x{large['plain']['maxrss_kb'] / small['plain']['maxrss_kb']:.2f}, tracemalloc peak "
        f"x{large['tracemalloc']['tracemalloc_peak_bytes'] / small['tracemalloc']['tracemalloc_peak_bytes']:.2f} "
        f"for x{args.memory_factor} records"
    )
    if args.json:
        args.json.write_text(json.dumps(results, indent=1, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
