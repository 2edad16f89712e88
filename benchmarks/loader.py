"""Loader throughput: a prepared store through ``make_loader`` against the reference per-item path.

Both paths run in the same process on the same machine:

* **ours**: a store of ``--records`` synthetic 10 s records at 100 Hz (written straight into the
  store layout of :mod:`hubert_ecg.store`, see :func:`write_synthetic_store`), read through
  ``make_loader(StoreWindows(store, crop="random"), BatchSampler(...))`` at batch 256;
* **reference**: a ``torch.utils.data.Dataset`` that, per item, does what the reference
  ``ECGDataset.__getitem__`` does (reference doc section 3.2): ``np.load`` a ``(12, 5000)`` float32
  ``.npy`` at 500 Hz, random 5 s crop (2500 samples), NaN -> mean, flatten, ``scipy.signal.decimate``
  by 5 on the flattened vector, and the padding mask from the first / last non-zero time index over
  leads found with a Python loop; ``DataLoader(batch_size=256, shuffle=True)``.

For every worker count it prints ECG/s (steady state: from the first batch to the last, so worker
start-up is excluded; the figure with start-up is printed too), ECG/s per worker and the ratio.
It then times fine-tuning steps of ``create_model("small")`` at batch 64 on this CPU, to state
what the model consumes here, and compares the loader with GPU consumption figures given on the
command line (defaults: the figures quoted in the Throughput issue for an H100).

Default run: about 3-5 minutes on a 2-core machine (most of it the first build of the store,
~1 GB under ``--workdir``, and the CPU training steps). Re-runs reuse the store and the files.

    python benchmarks/loader.py [--workdir /tmp/hubert-ecg-bench] [--records 20000] [--workers 0,1,2,4]
"""

from __future__ import annotations

import argparse
import csv
import datetime as _dt
import json
import os
import platform
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, RandomSampler

from hubert_ecg.loader import BatchSampler, StoreWindows, make_loader
from hubert_ecg.preprocess import PreprocessSpec
from hubert_ecg.store import MANIFEST_FIELDS, STORE_FORMAT, STORE_VERSION, ECGStore

REFERENCE_FS = 500  # the reference .npy layout: (12, N) at 500 Hz
REFERENCE_CROP = 2500  # 5 s at 500 Hz
REFERENCE_DECIMATION = 5


# ---------------------------------------------------------------------------------------------
# Synthetic data
# ---------------------------------------------------------------------------------------------
def synthetic_ecg(rng: np.random.Generator, n_records: int, n_samples: int, fs: float) -> np.ndarray:
    """ECG-like float32 signals ``(n_records, 12, n_samples)`` in [-1, 1] (already "preprocessed").

    A sharp periodic beat (heart rate 50-110 bpm) plus a slow baseline and noise, scaled per lead
    with min-max like the real pipeline. Only the bytes and shapes matter for throughput; the shape of
    the waveform keeps the reference's "first/last non-zero" loop on its usual path (no zeros).
    """
    t = np.arange(n_samples, dtype=np.float32) / np.float32(fs)
    rate_hz = rng.uniform(50, 110, size=(n_records, 1, 1)).astype(np.float32) / 60
    phase = rng.uniform(0, 2 * np.pi, size=(n_records, 12, 1)).astype(np.float32)
    gain = rng.uniform(0.3, 1.5, size=(n_records, 12, 1)).astype(np.float32)
    beat = np.cos(2 * np.pi * rate_hz * t + phase) ** 31  # narrow peaks, like QRS complexes
    wander = 0.1 * np.sin(2 * np.pi * 0.3 * t + phase)
    x = gain * beat + wander + 0.02 * rng.standard_normal((n_records, 12, n_samples), dtype=np.float32)
    lo, hi = x.min(axis=-1, keepdims=True), x.max(axis=-1, keepdims=True)
    return (2 * (x - lo) / (hi - lo + 1e-8) - 1).astype(np.float32)


def write_synthetic_store(
    path: Path,
    n_records: int,
    *,
    row_seconds: float = 10.0,
    shard_records: int = 512,
    short_fraction: float = 0.05,
    seed: int = 0,
) -> Path:
    """Write a complete store of ``n_records`` synthetic records at ``path`` without preprocessing them.

    Same files as :func:`hubert_ecg.store.prepare_store` writes: ``shards/NNNNN.npy`` float32
    ``(rows, 12, row_samples)``, ``shards/NNNNN.csv`` (the shard's manifest part), an empty
    ``shards/NNNNN.rejects.csv``, then the merged ``manifest.csv``, ``rejects.csv`` and, last,
    ``store.json`` with ``complete: true``. One record per row (10 s records); ``short_fraction`` of
    them are shorter (3-9.99 s, zero-padded, true ``length`` kept) so that masks are exercised.
    """
    spec = PreprocessSpec()
    fs = spec.target_hz
    row_samples = int(round(row_seconds * fs))
    rng = np.random.default_rng(seed)
    (path / "shards").mkdir(parents=True, exist_ok=True)
    fields = MANIFEST_FIELDS + ["shard", "shard_row"]
    n_shards = 0
    with open(path / "manifest.csv", "w", newline="") as manifest_file:
        manifest = csv.DictWriter(manifest_file, fieldnames=fields)
        manifest.writeheader()
        for shard, first in enumerate(range(0, n_records, shard_records)):
            count = min(shard_records, n_records - first)
            rows = synthetic_ecg(rng, count, row_samples, fs)
            lengths = np.full(count, row_samples, dtype=np.int64)
            short = rng.random(count) < short_fraction
            lengths[short] = rng.integers(int(3 * fs), row_samples, size=int(short.sum()))
            rows *= (np.arange(row_samples)[None, :] < lengths[:, None])[:, None, :]  # zero padding
            np.save(path / "shards" / f"{shard:05d}.npy", rows)
            with open(path / "shards" / f"{shard:05d}.rejects.csv", "w", newline="") as fh:
                csv.writer(fh).writerow(["record_id", "source", "reason"])
            with open(path / "shards" / f"{shard:05d}.csv", "w", newline="") as fh:
                part = csv.DictWriter(fh, fieldnames=MANIFEST_FIELDS[1:])
                part.writeheader()
                for local in range(count):
                    rec = {
                        "record_id": f"syn{first + local:07d}",
                        "segment": 0,
                        "start_s": 0.0,
                        "length": int(lengths[local]),
                        "source": f"synthetic/{first + local:07d}.npy",
                        "orig_fs": 500.0,
                        "orig_samples": 5000,
                        "units": "mV",
                        "split": "",
                        "meta": "{}",
                    }
                    part.writerow(rec)
                    manifest.writerow({**rec, "row": first + local, "shard": shard, "shard_row": local})
            n_shards += 1
    with open(path / "rejects.csv", "w", newline="") as fh:
        csv.writer(fh).writerow(["record_id", "source", "reason"])
    meta = {
        "format": STORE_FORMAT,
        "version": STORE_VERSION,
        "preprocessing": spec.to_dict(),
        "row_samples": row_samples,
        "fs": fs,
        "n_leads": 12,
        "label_names": [],
        "shard_records": shard_records,
        "n_sources": n_records,
        "complete": True,
        "n_rows": n_records,
        "n_records": n_records,
        "n_rejected": 0,
        "n_shards": n_shards,
    }
    (path / "store.json").write_text(json.dumps(meta, indent=1))  # written last: marks the store complete
    return path


def ensure_store(path: Path, n_records: int, rebuild: bool) -> ECGStore:
    meta_file = path / "store.json"
    if not rebuild and meta_file.exists():
        meta = json.loads(meta_file.read_text())
        if meta.get("complete") and meta.get("n_records") == n_records:
            print(f"reusing store {path} ({n_records} records)")
            return ECGStore(path)
    print(f"writing synthetic store of {n_records} records to {path} ...", flush=True)
    t0 = time.perf_counter()
    if path.exists():
        import shutil

        shutil.rmtree(path)
    write_synthetic_store(path, n_records)
    print(f"  done in {time.perf_counter() - t0:.1f} s")
    return ECGStore(path)


def ensure_reference_files(folder: Path, n_files: int, rebuild: bool) -> list[Path]:
    """``n_files`` reference-layout records: ``(12, 5000)`` float32 ``.npy`` at 500 Hz."""
    files = [folder / f"{i:06d}.npy" for i in range(n_files)]
    done = folder / "complete.json"
    if not rebuild and done.exists() and json.loads(done.read_text()).get("n_files") == n_files:
        print(f"reusing {n_files} reference .npy files in {folder}")
        return files
    print(f"writing {n_files} reference .npy files (12, 5000) to {folder} ...", flush=True)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    for first in range(0, n_files, 256):
        block = synthetic_ecg(rng, min(256, n_files - first), 10 * REFERENCE_FS, REFERENCE_FS)
        for j, signal in enumerate(block):
            np.save(files[first + j], signal)
    done.write_text(json.dumps({"n_files": n_files}))
    return files


# ---------------------------------------------------------------------------------------------
# The reference per-item path
# ---------------------------------------------------------------------------------------------
class ReferenceItemDataset(Dataset):
    """Per-item loading as in the reference ``ECGDataset.__getitem__`` (fine-tuning, random crop).

    Returns float32 ``(6000,)`` (12 leads x 500 samples at 100 Hz, flattened) and an int64 padding
    mask ``(6000,)``. A label lookup is left out, which only makes this path faster.
    """

    def __init__(self, files: list[Path], seed: int = 0) -> None:
        self.files = files
        self.rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        from scipy.signal import decimate

        ecg = np.load(self.files[index])  # (12, 5000) at 500 Hz
        start = int(self.rng.integers(0, ecg.shape[1] - REFERENCE_CROP + 1))
        ecg = ecg[:, start : start + REFERENCE_CROP]
        if np.isnan(ecg).any():
            ecg = np.where(np.isnan(ecg), np.nanmean(ecg), ecg)
        flat = ecg.reshape(-1)  # leads end to end: 30000
        flat = decimate(flat, REFERENCE_DECIMATION)  # Chebyshev I order 8, zero phase: 6000
        leads = flat.reshape(12, -1)
        # Padding mask the way the reference builds it: scan time for the first and the last index
        # where any lead is non-zero, ones in between, repeated over the 12 leads.
        first, last = 0, leads.shape[1] - 1
        for t in range(leads.shape[1]):
            if np.any(leads[:, t] != 0):
                first = t
                break
        for t in range(leads.shape[1] - 1, -1, -1):
            if np.any(leads[:, t] != 0):
                last = t
                break
        mask = np.zeros(leads.shape[1], dtype=np.int64)
        mask[first : last + 1] = 1
        mask = np.tile(mask, 12)
        return torch.from_numpy(flat.astype(np.float32)), torch.from_numpy(mask)


def _reference_worker_init(worker_id: int) -> None:
    # Each worker needs its own crop stream (the reference relied on numpy's global state).
    info = torch.utils.data.get_worker_info()
    info.dataset.rng = np.random.default_rng([1234, worker_id])


# ---------------------------------------------------------------------------------------------
# Measurement
# ---------------------------------------------------------------------------------------------
def time_loader(
    make: Callable[[], Iterable[Any]], batch_size_of: Callable[[Any], int], max_batches: int
) -> dict[str, float]:
    """Iterate ``max_batches`` batches of a fresh loader; ECG/s with and without the first batch."""
    t_start = time.perf_counter()
    iterator = iter(make())
    first = next(iterator)
    t_first = time.perf_counter()
    n_first, n_rest, batches = batch_size_of(first), 0, 1
    for batch in iterator:
        n_rest += batch_size_of(batch)
        batches += 1
        if batches >= max_batches:
            break
    t_end = time.perf_counter()
    del iterator  # stops the workers before the next configuration starts
    return {
        "batches": batches,
        "ecg": n_first + n_rest,
        "steady_ecg_s": n_rest / (t_end - t_first) if n_rest else float("nan"),
        "with_startup_ecg_s": (n_first + n_rest) / (t_end - t_start),
        "first_batch_s": t_first - t_start,
    }


def direct_window_gather(
    store: ECGStore, rows: np.ndarray, window: int, starts: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Prototype for ``StoreWindows`` (not used by the package): copy each crop straight from its shard.

    ``StoreWindows`` now gathers whole rows ``(B, 12, row_samples)`` and then crops them with
    ``take_along_axis``; copying only ``[start, start + window)`` of each row reads half the bytes
    and skips the index arrays. Same outputs as the row gather it replaced:
    float32 ``(B, 12 * window)`` and bool mask ``(B, 12 * window)``.
    """
    lengths = np.minimum(store.lengths[rows], store.row_samples)
    out = np.zeros((len(rows), 12, window), dtype=np.float32)
    shard_of, local = store.shard_of[rows], store.shard_row[rows]
    for i in range(len(rows)):
        stop = min(int(starts[i]) + window, store.row_samples)
        out[i, :, : stop - starts[i]] = store.shard(int(shard_of[i]))[local[i], :, starts[i] : stop]
    valid = (starts[:, None] + np.arange(window)[None, :]) < lengths[:, None]
    if not valid.all():
        out *= valid[:, None, :]
    mask = np.broadcast_to(valid[:, None, :], out.shape)
    return out.reshape(len(rows), -1), np.ascontiguousarray(mask).reshape(len(rows), -1)


class PrototypeWindows(StoreWindows):
    """Prototype of a leaner ``StoreWindows`` (not part of the package), timed next to it.

    Two changes: crops copied straight from the shards (:func:`direct_window_gather`), and no
    ``attention_mask`` tensor when every sample of the batch is real (``full``): a worker hands each
    tensor to the main process through a fresh shared-memory segment, which costs about as much per
    byte as building the batch, and the bool mask is a fifth of the bytes.
    """

    def __getitem__(self, item: Any) -> dict[str, Any]:
        key, rows = item[0], np.asarray(item[1], dtype=np.int64)
        lengths = self.store.lengths[rows]
        rng = np.random.default_rng([self.seed, int(key)])
        starts = (rng.random(len(rows)) * (np.maximum(lengths - self.window, 0) + 1)).astype(np.int64)
        x, mask = direct_window_gather(self.store, rows, self.window, starts)
        full = bool(mask.all())
        return {
            "input": torch.from_numpy(x),
            "attention_mask": None if full else torch.from_numpy(mask),
            "rows": torch.from_numpy(rows),
            "start": torch.from_numpy(starts),
            "full": full,
        }


def compare_gather(dataset: StoreWindows, items: list[tuple[int, np.ndarray]]) -> dict[str, Any]:
    """In-process ms per batch: ``StoreWindows.__getitem__`` against :func:`direct_window_gather`."""
    store, window = dataset.store, dataset.window
    starts_of = {}
    for key, rows in items:  # the same crops StoreWindows draws for this key
        lengths = store.lengths[rows]
        rng = np.random.default_rng([dataset.seed, int(key)])
        starts_of[key] = (rng.random(len(rows)) * (np.maximum(lengths - window, 0) + 1)).astype(np.int64)
    same = True
    for key, rows in items[:3]:
        ours = dataset[(key, rows)]
        x, mask = direct_window_gather(store, rows, window, starts_of[key])
        same &= bool(np.array_equal(ours["input"].numpy(), x) and np.array_equal(ours["attention_mask"].numpy(), mask))
    timings = {}
    for name, fn in (
        ("StoreWindows", lambda k, r: dataset[(k, r)]),
        ("direct gather", lambda k, r: direct_window_gather(store, r, window, starts_of[k])),
    ):
        t0 = time.perf_counter()
        for key, rows in items:
            fn(key, rows)
        timings[name] = (time.perf_counter() - t0) / len(items)
    return {"identical": same, "ms_per_batch": {k: v * 1e3 for k, v in timings.items()}}


def time_model_steps(batch: int, steps: int, threads: int | None) -> dict[str, float]:
    """Fine-tuning steps (forward, BCE loss, backward, AdamW) of ``small`` on this CPU, float32."""
    from hubert_ecg.config import HeadConfig
    from hubert_ecg.model import create_model

    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = create_model("small", head=HeadConfig(num_labels=5)).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    x = torch.from_numpy(synthetic_ecg(np.random.default_rng(3), batch, 500, 100.0).reshape(batch, -1))
    y = (torch.rand(batch, 5) > 0.5).float()
    durations = []
    for step in range(steps + 1):  # step 0 warms up allocators and kernels
        t0 = time.perf_counter()
        out = model(x)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(out.logits, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step:
            durations.append(time.perf_counter() - t0)
    per_step = float(np.median(durations))
    return {
        "batch": batch,
        "steps": steps,
        "s_per_step": per_step,
        "ecg_s": batch / per_step,
        "torch_threads": torch.get_num_threads(),
    }


def machine_info() -> dict[str, Any]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import scipy

    return {
        "date": _dt.datetime.now().isoformat(timespec="seconds"),
        "nproc": os.cpu_count(),
        "affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "cpu": cpu,
        "load_avg": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "torch": torch.__version__,
        "platform": platform.platform(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/hubert-ecg-bench"))
    parser.add_argument("--records", type=int, default=20_000, help="store size (default 20000)")
    parser.add_argument("--reference-files", type=int, default=2_000)
    parser.add_argument("--workers", default="0,1,2,4", help="comma-separated DataLoader worker counts")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--batches", type=int, default=60, help="batches timed per store-loader run")
    parser.add_argument("--reference-batches", type=int, default=10, help="batches timed per reference run")
    parser.add_argument("--model-steps", type=int, default=2, help="timed CPU training steps (0 skips)")
    parser.add_argument("--model-batch", type=int, default=64)
    parser.add_argument(
        "--gpu-train-ecg-s",
        type=float,
        default=6_450.0,
        help="GPU training consumption to compare with (default: 3x the reference's 2,150 "
        "ECG/s for small on an H100, the Throughput floor; ~6,400 is also the compiled "
        "bf16 reference at batch 256)",
    )
    parser.add_argument(
        "--gpu-infer-ecg-s",
        type=float,
        default=35_400.0,
        help="GPU inference consumption (default: 2x the reference's 17,700 ECG/s, small, H100)",
    )
    parser.add_argument(
        "--no-prototype",
        dest="prototype",
        action="store_false",
        help="skip timing PrototypeWindows (a leaner StoreWindows proposed for the package)",
    )
    parser.add_argument("--rebuild", action="store_true", help="rewrite the store and the reference files")
    parser.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    args = parser.parse_args(argv)
    worker_counts = [int(w) for w in args.workers.split(",") if w.strip()]

    info = machine_info()
    print(json.dumps(info))
    store = ensure_store(args.workdir / "store", args.records, args.rebuild)
    files = ensure_reference_files(args.workdir / "reference-npy", args.reference_files, args.rebuild)

    # Warm the page cache for both paths so that neither pays first-touch disk reads in its timing;
    # plain reads into one buffer, so that this process's peak RSS does not count the files.
    buffer = bytearray(1 << 22)
    for f in [*sorted((store.path / "shards").glob("*.npy")), *files]:
        with open(f, "rb", buffering=0) as fh:
            while fh.readinto(buffer):
                pass

    dataset = StoreWindows(store, crop="random", seed=0)
    reference = ReferenceItemDataset(files)
    rows = store.rows()
    results: dict[str, Any] = {"machine": info, "records": len(store), "batch_size": args.batch_size, "runs": []}
    prototype = PrototypeWindows(store, crop="random", seed=0)
    print(
        f"\n{'workers':>7} | {'ours ECG/s':>11} {'per worker':>11} {'w/ start-up':>11} | "
        f"{'ref ECG/s':>9} {'per worker':>10} {'w/ start-up':>11} | {'ratio':>6} || {'prototype':>9} {'ratio':>6}"
    )
    for workers in worker_counts:
        ours = time_loader(
            lambda: make_loader(dataset, BatchSampler(rows, args.batch_size, seed=workers), num_workers=workers),
            lambda b: int(b["input"].shape[0]),
            args.batches,
        )
        ref = time_loader(
            lambda: DataLoader(
                reference,
                batch_size=args.batch_size,
                num_workers=workers,
                drop_last=True,
                sampler=RandomSampler(
                    reference, replacement=True, num_samples=args.batch_size * args.reference_batches
                ),
                worker_init_fn=_reference_worker_init if workers else None,
            ),
            lambda b: int(b[0].shape[0]),
            args.reference_batches,
        )
        proto = (
            time_loader(
                lambda: make_loader(prototype, BatchSampler(rows, args.batch_size, seed=workers), num_workers=workers),
                lambda b: int(b["input"].shape[0]),
                args.batches,
            )
            if args.prototype
            else None
        )
        per = max(workers, 1)
        ratio = ours["steady_ecg_s"] / ref["steady_ecg_s"]
        results["runs"].append({"workers": workers, "ours": ours, "reference": ref, "ratio": ratio, "prototype": proto})
        proto_cols = (
            f" || {proto['steady_ecg_s']:>9,.0f} {proto['steady_ecg_s'] / ref['steady_ecg_s']:>5.1f}x" if proto else ""
        )
        print(
            f"{workers:>7} | {ours['steady_ecg_s']:>11,.0f} {ours['steady_ecg_s'] / per:>11,.0f} "
            f"{ours['with_startup_ecg_s']:>11,.0f} | {ref['steady_ecg_s']:>9,.0f} "
            f"{ref['steady_ecg_s'] / per:>10,.0f} {ref['with_startup_ecg_s']:>11,.0f} | {ratio:>5.1f}x" + proto_cols,
            flush=True,
        )
    print(
        "(steady = from the first batch to the last; 'w/ start-up' includes worker start and the first batch;"
        " workers=0 is the main process; prototype = PrototypeWindows, steady ECG/s and ratio to the reference)"
    )

    items = list(BatchSampler(rows, args.batch_size, seed=99))[: args.batches]
    gather = compare_gather(dataset, items)
    results["gather_prototype"] = gather
    ms = gather["ms_per_batch"]
    print(
        f"\nin-process batch assembly (batch {args.batch_size}, {len(items)} batches): StoreWindows "
        f"{ms['StoreWindows']:.1f} ms = {args.batch_size / ms['StoreWindows'] * 1e3:,.0f} ECG/s; prototype "
        f"direct_window_gather {ms['direct gather']:.1f} ms = {args.batch_size / ms['direct gather'] * 1e3:,.0f} "
        f"ECG/s; identical outputs: {gather['identical']}"
    )

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    # One worker process is the honest unit for extrapolation: it pays the transfer to the main
    # process that workers=0 does not.
    runs = results["runs"]
    one = next((r for r in runs if r["workers"] == 1), next((r for r in runs if r["workers"] == 0), runs[0]))
    per_core = one["ours"]["steady_ecg_s"]
    print(
        f"\nloader, workers={one['workers']}: {per_core:,.0f} ECG/s; best measured here ({cores} cores): "
        f"{max(r['ours']['steady_ecg_s'] for r in results['runs']):,.0f} ECG/s"
    )
    import resource

    # Peak resident memory of the loader runs alone (the CPU model run below needs GBs of activations).
    loader_peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if args.model_steps:
        model = time_model_steps(args.model_batch, args.model_steps, None)
        results["model_cpu"] = model
        print(
            f"model on this CPU: small fine-tune step at batch {model['batch']}: {model['s_per_step']:.2f} s/step "
            f"= {model['ecg_s']:.1f} ECG/s ({model['torch_threads']} torch threads) -> the loader with "
            f"workers={one['workers']} delivers {per_core / model['ecg_s']:,.0f}x what the model consumes: "
            + (
                "on this CPU the model is the bottleneck"
                if per_core >= 2 * model["ecg_s"]
                else "the loader is the bottleneck here"
            )
        )
    # On a GPU host every worker has its own core; 4 workers then deliver about 4x the one-process
    # figure. Only the one-process figure is measured, and it is measured on a loaded 2-core VM.
    four = 4 * per_core
    results["gpu_extrapolation"] = {
        "four_workers_ecg_s": four,
        "train_ecg_s": args.gpu_train_ecg_s,
        "infer_ecg_s": args.gpu_infer_ecg_s,
    }
    print(
        f"GPU (consumption figures from the Throughput issue, not measured here): 4 workers ~ 4 x {per_core:,.0f} = "
        f"{four:,.0f} ECG/s (extrapolated, one core each)"
    )
    for name, need in (("training", args.gpu_train_ecg_s), ("inference", args.gpu_infer_ecg_s)):
        workers_needed = int(np.ceil(2 * need / per_core))
        verdict = "keeps up (>= 2x)" if four >= 2 * need else "does NOT reach 2x"
        print(
            f"  {name}: model ~{need:,.0f} ECG/s -> 4 workers give {four / need:.1f}x: {verdict}; "
            f"2x needs ~{workers_needed} worker(s)"
        )
    # Mapped shard pages that were touched count in RSS too, although they are page cache shared
    # with every other reader rather than memory the loader owns.
    peak = {
        "main_loader_mib": loader_peak_mib,
        "main_with_model_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "largest_worker_mib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
    }
    results["peak_rss"] = peak
    print(
        f"peak RSS: main process {peak['main_loader_mib']:,.0f} MiB during the loader runs"
        + (f" ({peak['main_with_model_mib']:,.0f} MiB after the CPU model run)" if args.model_steps else "")
        + f", largest loader worker {peak['largest_worker_mib']:,.0f} MiB (both include touched memory-mapped "
        "shard pages)"
    )
    if args.json:
        args.json.write_text(json.dumps(results, indent=1, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
