"""The prepared store: counts, rejects, resume after a stop, long/short records, labels."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from conftest import shared_path
from hubert_ecg.store import ECGStore, LabelTable, StoreError, prepare_store
from hubert_ecg.synthetic import write_synthetic_dataset


@pytest.fixture(scope="module")
def synthetic_dir(tmp_path_factory) -> Path:
    d = write_synthetic_dataset(tmp_path_factory.mktemp("syn"), 12, fmt="wfdb", seed=3)
    # one long record (25 s) and one short one (3 s), and a corrupt file
    import wfdb

    from hubert_ecg.synthetic import synthetic_record

    rng = np.random.default_rng(0)
    for rid, seconds in (("long", 25.0), ("short", 3.0)):
        rec = synthetic_record(rng, seconds=seconds)
        wfdb.wrsamp(
            rid,
            fs=500,
            units=["mV"] * 12,
            sig_name=["I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6"],
            p_signal=rec.signal.T.astype(float),
            fmt=["16"] * 12,
            write_dir=str(d),
        )
    (d / "broken.hea").write_text("broken 12 500 5000\nnot a header line\n")
    return d


def _labels(d: Path) -> LabelTable:
    return LabelTable.from_csv(d / "labels.csv", id_column="record_id", label_start_index=2, split_column="split")


def test_prepare_counts_rejects_and_rows(synthetic_dir, tmp_path):
    result = prepare_store([synthetic_dir], tmp_path / "s", progress=False, shard_records=5)
    assert result.records == 14 and result.rejected == 1
    assert "broken" in result.rejects[0][0]
    store = ECGStore(tmp_path / "s")
    long_rows = np.flatnonzero(store.record_ids == "long")
    assert len(long_rows) == 3 and store.lengths[long_rows].tolist() == [1000, 1000, 500]
    short = np.flatnonzero(store.record_ids == "short")
    assert store.lengths[short].tolist() == [300]
    assert np.all(store.signals(short)[0, :, 300:] == 0)
    with open(tmp_path / "s" / "rejects.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert rows[0]["record_id"] == "broken" and rows[0]["reason"]


def test_labels_without_a_row_are_rejected_and_values_kept(synthetic_dir, tmp_path):
    labels = _labels(synthetic_dir)
    result = prepare_store([synthetic_dir], tmp_path / "s", labels=labels, progress=False)
    store = ECGStore(tmp_path / "s")
    assert store.label_names == labels.names
    assert result.rejected == 3  # broken + long + short have no label row
    for i in range(len(store)):
        np.testing.assert_array_equal(store.labels[i], labels.by_key[store.record_ids[i]])
        assert store.splits[i] == labels.splits[store.record_ids[i]]


def test_resume_after_a_stop_gives_identical_store(synthetic_dir, tmp_path):
    prepare_store([synthetic_dir], tmp_path / "full", progress=False, shard_records=4)
    with pytest.raises(StoreError, match="stopped after 1 shards"):
        prepare_store([synthetic_dir], tmp_path / "resumed", progress=False, shard_records=4, stop_after_shards=1)
    with pytest.raises(StoreError, match="incomplete"):
        ECGStore(tmp_path / "resumed")
    result = prepare_store([synthetic_dir], tmp_path / "resumed", progress=False, shard_records=4)
    assert result.skipped_done == 4
    for name in ("manifest.csv", "rejects.csv"):
        assert (tmp_path / "full" / name).read_text() == (tmp_path / "resumed" / name).read_text()
    for shard in sorted((tmp_path / "full" / "shards").glob("*.npy")):
        assert shard.read_bytes() == (tmp_path / "resumed" / "shards" / shard.name).read_bytes()


def test_rerun_of_a_complete_store_is_a_no_op_and_spec_change_is_refused(synthetic_dir, tmp_path):
    from hubert_ecg.preprocess import PreprocessSpec

    prepare_store([synthetic_dir], tmp_path / "s", progress=False)
    before = (tmp_path / "s" / "manifest.csv").stat().st_mtime_ns
    prepare_store([synthetic_dir], tmp_path / "s", progress=False)
    assert (tmp_path / "s" / "manifest.csv").stat().st_mtime_ns == before
    with pytest.raises(StoreError, match="different preprocessing"):
        prepare_store([synthetic_dir], tmp_path / "s", progress=False, spec=PreprocessSpec.reference())


def test_store_matches_direct_preprocessing(synthetic_dir, tmp_path):
    from hubert_ecg.io import read_record
    from hubert_ecg.preprocess import PreprocessSpec, preprocess_signal

    prepare_store([synthetic_dir / "syn00002.hea"], tmp_path / "s", progress=False)
    store = ECGStore(tmp_path / "s")
    record = read_record(synthetic_dir / "syn00002.hea")
    expected = preprocess_signal(record.signal, record.fs, PreprocessSpec())
    np.testing.assert_array_equal(store.signals([0])[0], expected)


def test_label_table_errors_name_the_row(tmp_path):
    bad = tmp_path / "labels.csv"
    bad.write_text("record_id,a,b\nx,1,0\ny,1,maybe\n")
    with pytest.raises(StoreError, match=r"labels.csv, row 3: column 'b' is not a number \('maybe'\)"):
        LabelTable.from_csv(bad)
    dup = tmp_path / "dup.csv"
    dup.write_text("record_id,a\nx,1\nx,0\n")
    with pytest.raises(StoreError, match="row 3: duplicate record id 'x'"):
        LabelTable.from_csv(dup)
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(StoreError, match="empty"):
        LabelTable.from_csv(empty)
    blanks = tmp_path / "blank.csv"
    blanks.write_text("record_id,a,b\nx,,1\n")
    assert np.isnan(LabelTable.from_csv(blanks).by_key["x"][0])


def test_prepare_real_shared_data(tmp_path):
    ludb = shared_path("ludb")
    cinc = shared_path("cinc2021-smoke")
    result = prepare_store(
        [ludb / "data" if (ludb / "data").exists() else ludb, cinc],
        tmp_path / "s",
        progress=False,
        workers=2,
        shard_records=64,
    )
    assert result.records >= 270 and result.rejected <= 10
    meta = json.loads((tmp_path / "s" / "store.json").read_text())
    assert meta["complete"] and meta["n_records"] == result.records
    store = ECGStore(tmp_path / "s")
    x = store.signals(store.rows()[:50])
    assert np.isfinite(x).all() and np.abs(x).max() < 2.5


def test_reader_warnings_are_counted(tmp_path):
    ludb = shared_path("ludb")
    records = sorted(ludb.rglob("*.hea"))[:3]
    result = prepare_store(records, tmp_path / "s", progress=False)
    # LUDB's header gains equal each lead's range: the reader keeps raw counts and warns.
    assert result.warned == 3 and json.loads((tmp_path / "s" / "store.json").read_text())["n_warned"] == 3


def test_columnar_index_equals_the_manifest(synthetic_dir, tmp_path):
    prepare_store([synthetic_dir], tmp_path / "s", labels=_labels(synthetic_dir), progress=False)
    fast = ECGStore(tmp_path / "s")
    (tmp_path / "s" / "index.npz").unlink()
    slow = ECGStore(tmp_path / "s")
    for name in ("record_ids", "segments", "lengths", "shard_of", "shard_row", "splits", "labels"):
        np.testing.assert_array_equal(getattr(fast, name), getattr(slow, name))


def test_duplicate_ids_of_long_records_keep_all_their_segments(tmp_path):
    from hubert_ecg.synthetic import synthetic_record

    rng = np.random.default_rng(1)
    for sub in ("a", "b"):
        (tmp_path / sub).mkdir()
        np.save(tmp_path / sub / "same.npy", synthetic_record(rng, seconds=25.0).signal)
    prepare_store([tmp_path / "a", tmp_path / "b"], tmp_path / "s", read_kwargs={"fs": 500.0}, progress=False)
    store = ECGStore(tmp_path / "s")
    assert store.record_ids.tolist() == ["same"] * 3 + ["same@1"] * 3
    assert store.segments.tolist() == [0, 1, 2, 0, 1, 2]
