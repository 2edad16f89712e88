"""Datasets and loaders over a prepared store, for pre-training, fine-tuning, evaluation and inference.

The unit of loading is a whole batch: a :class:`BatchSampler` yields ``(key, rows)`` pairs and
:class:`StoreWindows` turns one pair into a batch with a single gather from the memory-mapped
shards (no per-item Python work), so a worker delivers thousands of ECG/s. Random crops are drawn
from a generator seeded by ``(seed, key)``: the same batch comes out the same whatever the number
of workers or processes, and a resumed run sees exactly the batches it would have seen.

Batch dictionary (B = rows in the batch, W = 12 * window samples):

* ``input`` float32 (B, W): leads I..V6 end to end, each ``window`` samples;
* ``attention_mask`` bool (B, W): False where a short record was padded (end of each lead), or
  None when the whole batch is real signal (``full``);
* ``rows`` int64 (B,): store rows; ``start`` int64 (B,): crop start in samples;
* ``full`` bool: every sample of the batch is real signal (no mask needed);
* ``targets`` int64 (B, E, T) for pre-training; ``labels`` float32 (B, L) for fine-tuning.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from .store import ECGStore


def batch_mask(batch: dict[str, Any]) -> torch.Tensor:
    """The batch's sample mask (B, W), built as all-True when the batch is ``full`` and carries none."""
    mask = batch.get("attention_mask")
    if mask is None:
        return torch.ones(batch["input"].shape, dtype=torch.bool, device=batch["input"].device)
    return mask


class StoreWindows(Dataset):
    """Batches of 5 s windows from a store; ``__getitem__`` takes ``(key, rows)`` from :class:`BatchSampler`.

    ``crop``: ``"first"`` (start 0, as pre-training and the published encode path), ``"random"``
    (uniform start within the valid length), or ``"given"`` (``rows`` paired with explicit starts,
    used for evaluation windows).
    """

    def __init__(
        self,
        store: ECGStore,
        *,
        window: int | None = None,
        crop: str = "first",
        targets: Sequence[str] = (),
        labels: bool = False,
        seed: int = 0,
        label_dtype: str = "float32",
    ) -> None:
        if crop not in ("first", "random", "given"):
            raise ValueError(f"crop must be first, random or given, got {crop!r}")
        self.store = store
        self.window = window or int(round(store.spec.window_s * store.fs))
        self.crop, self.seed = crop, seed
        self.target_names = list(targets)
        self.with_labels = labels
        self.label_dtype = label_dtype
        if labels and store.labels is None:
            raise ValueError(f"{store.path}: the store has no labels; prepare it with --labels")

    def __len__(self) -> int:  # the sampler decides; this is only for DataLoader's bookkeeping
        return len(self.store)

    def __getitem__(self, item: tuple[int, np.ndarray] | tuple[int, np.ndarray, np.ndarray]) -> dict[str, Any]:
        # Values: tensors, plus "attention_mask" (None when every sample is real) and "full" (bool).
        key, rows = item[0], np.asarray(item[1], dtype=np.int64)
        lengths = self.store.lengths[rows]
        if self.crop == "given":
            if len(item) != 3:
                raise ValueError("crop='given' needs (key, rows, starts) items from the sampler")
            starts = np.asarray(item[2], dtype=np.int64)
        elif self.crop == "random":
            rng = np.random.default_rng([self.seed, int(key)])
            room = np.maximum(lengths - self.window, 0)
            starts = (rng.random(len(rows)) * (room + 1)).astype(np.int64)
        else:
            starts = np.zeros(len(rows), dtype=np.int64)
        x, valid = self.store.crops(rows, starts, self.window)
        full = bool(valid.all())
        # A full batch carries no mask: the step then skips it without a device sync, and a worker
        # does not pay to hand a (B, 12 * window) bool tensor to the main process.
        mask = (
            None
            if full
            else torch.from_numpy(
                np.ascontiguousarray(np.broadcast_to(valid[:, None, :], x.shape)).reshape(len(rows), -1)
            )
        )
        batch = {
            "input": torch.from_numpy(x.reshape(len(rows), -1)),
            "attention_mask": mask,
            "rows": torch.from_numpy(rows),
            "start": torch.from_numpy(starts),
            "full": full,
        }
        if self.target_names:
            batch["targets"] = torch.from_numpy(
                np.stack(
                    [np.asarray(self.store.targets(name)[rows], dtype=np.int64) for name in self.target_names], axis=1
                )
            )
        if self.with_labels:
            if self.store.labels is None:  # checked in __init__; the store object is not expected to change
                raise ValueError(f"{self.store.path}: the store has no labels; prepare it with --labels")
            labels = self.store.labels[rows]
            batch["labels"] = torch.from_numpy(labels.astype(np.float32))
        return batch


class BatchSampler(Sampler):
    """Seeded, resumable, rank-aware batches of store rows: yields ``(key, rows)``.

    Each epoch shuffles ``rows`` with ``default_rng([seed, epoch])`` and cuts global batches of
    ``batch_size``; rank ``r`` of ``world`` takes the r-th slice of every global batch, so the union
    over ranks is the single-process batch. ``start_batch`` skips batches already consumed (resume).
    """

    def __init__(
        self,
        rows: np.ndarray,
        batch_size: int,
        *,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = True,
        rank: int = 0,
        world_size: int = 1,
        epoch: int = 0,
        start_batch: int = 0,
    ) -> None:
        if batch_size % world_size:
            raise ValueError(f"global batch size {batch_size} is not divisible by {world_size} processes")
        if len(rows) == 0:
            raise ValueError("no rows to sample from (empty split?)")
        self.rows = np.asarray(rows, dtype=np.int64)
        self.batch_size, self.shuffle, self.seed, self.drop_last = batch_size, shuffle, seed, drop_last
        self.rank, self.world_size = rank, world_size
        self.epoch, self.start_batch = epoch, start_batch

    def batches_per_epoch(self) -> int:
        n = len(self.rows)
        if self.drop_last and n >= self.batch_size:
            return n // self.batch_size
        return math.ceil(n / self.batch_size)

    def __len__(self) -> int:
        return self.batches_per_epoch() - self.start_batch

    def order(self, epoch: int) -> np.ndarray:
        if not self.shuffle:
            return self.rows
        return self.rows[np.random.default_rng([self.seed, epoch]).permutation(len(self.rows))]

    def __iter__(self) -> Iterator[tuple[int, np.ndarray]]:
        order = self.order(self.epoch)
        per_rank = self.batch_size // self.world_size
        for b in range(self.start_batch, self.batches_per_epoch()):
            global_rows = order[b * self.batch_size : (b + 1) * self.batch_size]
            if len(global_rows) < self.batch_size:  # last partial batch: split as evenly as possible
                local = np.array_split(global_rows, self.world_size)[self.rank]
            else:
                local = global_rows[self.rank * per_rank : (self.rank + 1) * per_rank]
            key = self.epoch * 1_000_003 + b
            yield key, local


@dataclass
class EvalWindows:
    """Every window of every record in ``rows``: parallel arrays of store row, start and record group."""

    rows: np.ndarray
    starts: np.ndarray
    groups: np.ndarray
    record_ids: np.ndarray


def evaluation_windows(
    store: ECGStore,
    rows: np.ndarray,
    *,
    window: int,
    mode: str = "first",
    n_crops: int = 1,
    stride: int | None = None,
    seed: int = 0,
) -> EvalWindows:
    """Windows for test-time augmentation over whole records (all segments of each record).

    ``mode``: ``first`` (one window per record), ``random`` (``n_crops`` random windows per record),
    ``sliding`` (stride ``stride``, the last window flush with the record end).
    """
    rows = np.asarray(rows, dtype=np.int64)
    record_ids, groups = store.record_groups(rows)
    rng = np.random.default_rng(seed)
    out_rows, out_starts, out_groups = [], [], []
    # Records span consecutive rows (segments); windows may not cross rows, so we window per row.
    for g in range(len(record_ids)):
        member_rows = rows[groups == g]
        member_rows = member_rows[np.argsort(store.segments[member_rows])]
        if mode == "first":
            out_rows.append(member_rows[:1])
            out_starts.append(np.zeros(1, np.int64))
            out_groups.append([g])
            continue
        candidates = []
        for r in member_rows:
            length = int(store.lengths[r])
            if mode == "sliding":
                step = stride or window
                last = max(length - window, 0)
                starts = list(range(0, last + 1, step))
                if starts[-1] != last:
                    starts.append(last)
            elif length > window:
                candidates.append((r, length))
                continue
            else:
                starts = [0]
            for s in starts:
                candidates.append((r, -s - 1))  # negative marks an explicit start
        if mode == "random":
            picks = []
            for _ in range(n_crops):
                r, length = candidates[int(rng.integers(len(candidates)))]
                if length < 0:
                    picks.append((r, -length - 1))
                else:
                    picks.append((r, int(rng.integers(0, max(length - window, 0) + 1))))
        else:
            picks = [(r, -s - 1) for r, s in candidates]
        out_rows.append(np.array([p[0] for p in picks], np.int64))
        out_starts.append(np.array([p[1] for p in picks], np.int64))
        out_groups.append([g] * len(picks))
    return EvalWindows(
        np.concatenate(out_rows),
        np.concatenate(out_starts),
        np.concatenate([np.asarray(x, np.int64) for x in out_groups]),
        record_ids,
    )


def make_loader(
    dataset: StoreWindows, sampler: Any, *, num_workers: int = 0, pin_memory: bool = False, prefetch_factor: int = 4
) -> DataLoader:
    """A DataLoader whose items are whole batches (``batch_size=None``), with persistent workers."""
    kwargs: dict[str, Any] = {}
    if num_workers > 0:
        kwargs.update(
            prefetch_factor=prefetch_factor,
            persistent_workers=False,
            multiprocessing_context="fork" if hasattr(__import__("os"), "fork") else None,
        )
    return DataLoader(
        dataset, sampler=sampler, batch_size=None, num_workers=num_workers, pin_memory=pin_memory, **kwargs
    )


def window_batches(windows: EvalWindows, batch_size: int) -> list[tuple[int, np.ndarray, np.ndarray]]:
    """Evaluation windows -> sampler items ``(key, rows, starts)`` for ``StoreWindows(crop="given")``."""
    return [
        (i, windows.rows[s : s + batch_size], windows.starts[s : s + batch_size])
        for i, s in enumerate(range(0, len(windows.rows), batch_size))
    ]
