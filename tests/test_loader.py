"""Batches from a store: crops, masks, determinism, rank slicing, evaluation windows."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hubert_ecg.loader import BatchSampler, StoreWindows, evaluation_windows, make_loader
from hubert_ecg.preprocess import PreprocessSpec, cut_windows
from hubert_ecg.store import ECGStore
from hubert_ecg.synthetic import SYNTHETIC_LABELS


@pytest.fixture(scope="module")
def store(make_store) -> ECGStore:
    return ECGStore(make_store(24, seed=1, seconds=12.0, labels=SYNTHETIC_LABELS))


def test_store_crops_equal_cut_windows_on_one_record(store):
    """The crops training batches are made of (ECGStore.crops) equal the published window cut."""
    row = 0
    signal = store.signals([row])[0][:, : store.lengths[row]]
    for start in (0, 137, 500):
        expected, expected_mask = cut_windows(signal, PreprocessSpec(), [start])
        x, valid = store.crops([row], np.array([start]), 500)
        np.testing.assert_array_equal(x.reshape(1, -1), expected)
        np.testing.assert_array_equal(np.broadcast_to(valid[:, None, :], x.shape).reshape(1, -1), expected_mask)


def test_crops_past_the_valid_length_are_zero_and_invalid(store):
    short = int(np.argmin(store.lengths))
    start = max(0, int(store.lengths[short]) - 200)
    x, valid = store.crops([short], np.array([start]), 500)
    assert valid[0, :200].all() and not valid[0, 200:].any()
    assert (x[0, :, 200:] == 0).all() and np.abs(x[0, :, :200]).sum() > 0


def test_random_crops_are_deterministic_per_batch_key(store):
    ds = StoreWindows(store, crop="random", seed=5, labels=True)
    rows = np.arange(8)
    a, b = ds[(3, rows)], ds[(3, rows)]
    torch.testing.assert_close(a["input"], b["input"])
    assert not torch.equal(ds[(4, rows)]["start"], a["start"])
    assert (a["start"] <= torch.from_numpy(np.maximum(store.lengths[rows] - 500, 0))).all()
    assert a["input"].shape == (8, 6000) and a["labels"].shape == (8, 5)


def test_rank_slices_union_is_the_single_process_batch():
    rows = np.arange(37)
    single = list(BatchSampler(rows, 8, seed=2, epoch=1))
    ranks = [list(BatchSampler(rows, 8, seed=2, epoch=1, rank=r, world_size=2)) for r in range(2)]
    assert len(single) == 4
    for b, (key, batch) in enumerate(single):
        assert ranks[0][b][0] == ranks[1][b][0] == key
        np.testing.assert_array_equal(np.concatenate([ranks[0][b][1], ranks[1][b][1]]), batch)
    resumed = list(BatchSampler(rows, 8, seed=2, epoch=1, start_batch=2))
    assert [k for k, _ in resumed] == [k for k, _ in single[2:]]
    with pytest.raises(ValueError, match="not divisible by 3"):
        BatchSampler(rows, 8, world_size=3)


def test_loader_with_workers_gives_the_same_batches(store):
    ds = StoreWindows(store, crop="random", seed=0, labels=True)
    sampler = BatchSampler(store.rows(), 4, seed=0)
    a = [b["input"] for b in make_loader(ds, sampler, num_workers=0)]
    b = [b["input"] for b in make_loader(ds, sampler, num_workers=2)]
    assert len(a) == len(b) > 0
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y)


def test_evaluation_windows_cover_records(store):
    rows = store.rows()
    first = evaluation_windows(store, rows, window=500, mode="first")
    assert len(first.rows) == len(first.record_ids) == len(set(store.record_ids[rows]))
    sliding = evaluation_windows(store, rows, window=500, mode="sliding")
    # 12 s records: row 0 (10 s) gives windows at 0, 500; row 1 (2 s) one padded window.
    per_record = np.bincount(sliding.groups)
    assert (per_record == 3).all()
    rand = evaluation_windows(store, rows, window=500, mode="random", n_crops=4, seed=1)
    assert (np.bincount(rand.groups) == 4).all()
