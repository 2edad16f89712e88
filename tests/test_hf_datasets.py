"""A prepared store exported to Parquet / a Hugging Face Dataset and imported back is the same store."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import StoreFactory
from hubert_ecg.hf_datasets import export_store, import_store
from hubert_ecg.store import ECGStore, StoreError

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")


@pytest.fixture(scope="module")
def store(make_store: StoreFactory) -> ECGStore:
    rng = np.random.default_rng(0)
    signals, rows = [], []
    for i in range(6):
        seconds = 14 if i == 2 else 6  # record 2 spans two 10 s rows
        signals.append(rng.standard_normal((12, 500 * seconds)))
        rows.append({"split": ["train", "val", "test"][i % 3], "af": i % 2, "lbbb": "" if i == 4 else (i + 1) % 2})
    return ECGStore(make_store(signals=signals, label_rows=rows, labels=["af", "lbbb"], shard_records=4))


def _same_store(a, b) -> None:
    assert len(a) == len(b) == 7
    np.testing.assert_array_equal(a.signals(np.arange(len(a))), b.signals(np.arange(len(b))))
    np.testing.assert_array_equal(a.labels, b.labels)  # NaN (blank) in the same places
    for name in ("record_ids", "segments", "lengths", "splits"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    assert a.label_names == b.label_names and a.spec == b.spec and a.row_samples == b.row_samples


def test_parquet_round_trip(store, tmp_path):
    path = export_store(store, tmp_path / "rows.parquet")
    table = pq.read_table(path)
    assert table.schema.field("signal").type == pa.list_(pa.list_(pa.float32(), store.row_samples), 12)
    assert table.column("label:lbbb").to_pylist()[5] is None  # r4's blank label stays missing
    header = json.loads(table.schema.metadata[b"hubert_ecg.store"])
    assert header["preprocessing"] == store.spec.to_dict()
    back = import_store(path, tmp_path / "back")
    _same_store(store, back)
    test_only = pq.read_table(export_store(store, tmp_path / "test.parquet", split="test"))
    assert set(test_only.column("split").to_pylist()) == {"test"} and test_only.num_rows == 3  # r2 has 2 rows
    with pytest.raises(StoreError, match="exists and is not empty"):
        import_store(path, tmp_path / "back")


def test_hf_dataset_round_trip(store, tmp_path):
    pytest.importorskip("datasets")
    from hubert_ecg.hf_datasets import from_hf_dataset, to_hf_dataset

    dataset = to_hf_dataset(store)
    assert dataset.num_rows == 7 and "label:af" in dataset.column_names
    row = dataset.with_format("numpy")[0]
    np.testing.assert_array_equal(row["signal"], store.signals([0])[0])
    _same_store(store, from_hf_dataset(dataset, tmp_path / "back"))
    plain = dataset.select(range(7))  # a copy whose info still carries the header
    assert json.loads(plain.info.description)["hubert_ecg.store"]["row_samples"] == store.row_samples
    plain.info.description = ""
    with pytest.raises(StoreError, match="no hubert_ecg store header"):
        from_hf_dataset(plain, tmp_path / "again")
