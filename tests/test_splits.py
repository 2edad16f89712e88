"""Splits that cannot leak: the split-spelling rule, validation rows never from test, grouped and
temporal splits, group checks, and categorical (text) labels end to end."""

from __future__ import annotations

import csv
import json
import warnings
from pathlib import Path

import numpy as np
import pytest

from hubert_ecg.cli import main
from hubert_ecg.store import (
    ECGStore,
    LabelTable,
    StoreError,
    check_store_splits,
    grouped_splits,
    normalise_splits,
    prepare_store,
    temporal_splits,
    train_val_rows,
)
from hubert_ecg.synthetic import synthetic_record


def _records(folder: Path, n: int, seconds: float = 3.0, seed: int = 0) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        np.save(folder / f"r{i:03d}.npy", synthetic_record(rng, seconds=seconds).signal)
    return folder


def _write_csv(path: Path, header: list[str], rows: list[list[object]]) -> Path:
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)
    return path


@pytest.fixture(scope="module")
def records(tmp_path_factory) -> Path:
    return _records(tmp_path_factory.mktemp("rec"), 24)


def run(capsys, *args: object) -> tuple[int, str, str]:
    capsys.readouterr()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return code, out, err


# ---------------------------------------------------------------------------------------------
# the spelling rule
# ---------------------------------------------------------------------------------------------
def test_split_spellings_map_by_the_documented_rule():
    values = ["training", "Train", " TEST ", "validation", "dev", "Valid", "holdout", "tune"]
    assert normalise_splits(values, "x") == ["train", "train", "test", "val", "val", "val", "test", "val"]
    # PTB-XL-style folds: highest = test, next = val, the rest train
    assert normalise_splits(["1", "8", "9", "10", "3"], "x") == ["train", "train", "val", "test", "train"]
    assert normalise_splits(["", ""], "x") == ["", ""]  # no split at all


@pytest.mark.parametrize(
    "values, found",
    [
        (["train", "eval", "test"], "'eval'"),
        (["train", "", "test"], "''"),
        (["fold_a", "fold_b"], "'fold_a', 'fold_b'"),
    ],
)
def test_unmapped_split_values_are_refused_listing_what_was_found(values, found):
    with pytest.raises(
        StoreError,
        match=r"labels.csv: column 'split': split values .* are not train/val/test "
        r"\(values found: .*" + found,
    ):
        normalise_splits(values, "labels.csv: column 'split'")


def test_two_folds_cannot_give_three_splits():
    with pytest.raises(StoreError, match=r"fold numbers 1, 2 cannot give train/val/test"):
        normalise_splits(["1", "2"], "x")


# ---------------------------------------------------------------------------------------------
# validation rows
# ---------------------------------------------------------------------------------------------
def _store_with(
    tmp_path: Path, records: Path, splits: list[str] | None, groups: list[str] | None = None, seconds_long: bool = False
) -> ECGStore:
    header = ["record_id", "y"] + (["split"] if splits else []) + (["patient"] if groups else [])
    rows = []
    for i in range(24):
        row: list[object] = [f"r{i:03d}", i % 2]
        if splits:
            row.append(splits[i])
        if groups:
            row.append(groups[i])
        rows.append(row)
    labels = LabelTable.from_csv(
        _write_csv(tmp_path / "labels.csv", header, rows),
        label_columns=["y"],
        split_column="split" if splits else None,
        group_column="patient" if groups else None,
    )
    prepare_store(
        [records], tmp_path / "store", labels=labels, read_kwargs={"fs": 500.0}, progress=False, row_seconds=1.0
    )  # 3 s records -> 3 rows each: segments must never straddle splits
    return ECGStore(tmp_path / "store")


def test_validation_never_comes_from_test_rows(tmp_path, records):
    store = _store_with(tmp_path, records, ["Test" if i < 8 else "training" for i in range(24)])
    assert set(store.splits.tolist()) == {"train", "test"}  # spellings mapped when the store was built
    train, val, note = train_val_rows(store, fraction=0.25, seed=1)
    test = store.rows("test")
    assert len(val) and not set(val) & set(test) and not set(train) & set(test)
    assert not set(train) & set(val)
    assert sorted([*train, *val]) == sorted(store.rows("train").tolist())
    # whole records: no record has segments on both sides
    assert not set(store.record_ids[train]) & set(store.record_ids[val])
    assert "of the 'train' records (the store has no 'val' rows; test rows untouched)" in note


def test_store_without_splits_draws_whole_records(tmp_path, records):
    store = _store_with(tmp_path, records, None)
    train, val, note = train_val_rows(store, fraction=0.3, seed=0)
    assert len(train) + len(val) == len(store)
    assert not set(store.record_ids[train]) & set(store.record_ids[val])
    assert "all records (the store has no split column)" in note


def test_fallback_validation_keeps_patients_whole(tmp_path, records):
    groups = [f"p{i // 3}" for i in range(24)]  # 8 patients, 3 records each
    store = _store_with(tmp_path, records, None, groups)
    train, val, note = train_val_rows(store, fraction=0.3, seed=0)
    assert not set(store.groups[train]) & set(store.groups[val])
    assert "by group" in note


def test_store_with_train_and_val_uses_them(tmp_path, records):
    store = _store_with(tmp_path, records, ["val" if i < 6 else "train" for i in range(24)])
    train, val, _ = train_val_rows(store, fraction=0.5)
    assert np.array_equal(val, store.rows("val")) and np.array_equal(train, store.rows("train"))


def test_hand_edited_store_with_unknown_split_values_is_refused(tmp_path, records):
    store = _store_with(tmp_path, records, ["val" if i < 6 else "train" for i in range(24)])
    store.splits = np.where(store.splits == "val", "eval", store.splits)
    with pytest.raises(
        StoreError,
        match=r"split values 'eval' are not train/val/test \(values found: 'eval', "
        r"'train'",
    ):
        train_val_rows(store)


def test_a_group_crossing_splits_is_refused(tmp_path, records):
    store = _store_with(tmp_path, records, ["val" if i < 6 else "train" for i in range(24)])
    store.groups = np.asarray([f"p{i // 4}" for i in range(24) for _ in range(3)])  # p1 spans rows 4-7
    with pytest.raises(StoreError, match=r"group 'p1' has rows in train and val \(1 group\(s\) cross splits\)"):
        check_store_splits(store)


def test_user_split_where_a_patient_crosses_splits_is_refused(tmp_path):
    path = _write_csv(
        tmp_path / "labels.csv",
        ["record_id", "split", "patient_id", "y"],
        [["a", "train", "p1", 0], ["b", "test", "p1", 1], ["c", "train", "p2", 0]],
    )
    with pytest.raises(StoreError, match=r"labels.csv: column 'split': group 'p1' has records in test and train"):
        LabelTable.from_csv(path, split_column="split", group_column="patient_id")


# ---------------------------------------------------------------------------------------------
# grouped and temporal assignment
# ---------------------------------------------------------------------------------------------
def test_grouped_split_keeps_groups_whole_and_is_stratified():
    rng = np.random.default_rng(0)
    n_groups = 300
    groups, labels = [], []
    for g in range(n_groups):
        rare = g % 30 == 0  # 10 groups carry the rare label
        for _ in range(int(rng.integers(1, 5))):
            groups.append(f"p{g}")
            labels.append([float(rng.random() < 0.5), float(rare)])
    labels = np.asarray(labels)
    split = grouped_splits(groups, (0.2, 0.2), seed=3, labels=labels)
    by_group: dict[str, set[str]] = {}
    for g, s in zip(groups, split):
        by_group.setdefault(g, set()).add(s)
    assert all(len(s) == 1 for s in by_group.values())
    split = np.asarray(split)
    # the 10 groups with the rare label are spread over every split, near 60/20/20 of its positives
    rare = labels[:, 1] == 1
    rare_share = {s: (rare & (split == s)).sum() / rare.sum() for s in ("train", "val", "test")}
    assert all(abs(rare_share[s] - t) <= 0.1 for s, t in (("train", 0.6), ("val", 0.2), ("test", 0.2))), rare_share
    shares = [np.mean(split == s) for s in ("train", "val", "test")]
    assert abs(shares[0] - 0.6) < 0.05 and abs(shares[1] - 0.2) < 0.05 and abs(shares[2] - 0.2) < 0.05
    assert grouped_splits(groups, (0.2, 0.2), seed=3, labels=labels) == split.tolist()  # deterministic


def test_temporal_split_puts_the_newest_records_in_test():
    times = np.random.default_rng(0).permutation(100).astype(float)
    split = np.asarray(temporal_splits(times.tolist(), (0.1, 0.2)))
    assert (split == "test").sum() == 20 and (split == "val").sum() == 10
    assert times[split == "train"].max() < times[split == "val"].min() < times[split == "test"].min()


def test_grouped_temporal_moves_patients_by_their_first_record():
    times = [0, 50, 1, 2, 3, 4, 5, 6, 7, 8]
    groups = ["a", "a", "b", "c", "d", "e", "f", "g", "h", "i"]
    split = temporal_splits(times, (0.2, 0.2), groups=groups)
    assert split[0] == split[1] == "train"  # patient a's late visit stays with its first
    assert split[-2:] == ["test", "test"]


def test_prepare_grouped_split_from_the_command_line(tmp_path, records, capsys):
    rows = [[f"r{i:03d}", f"p{i // 2}", ["SR", "AF", "OTHER"][i % 3], f"2020-01-{i + 1:02d}"] for i in range(24)]
    _write_csv(tmp_path / "labels.csv", ["record_id", "patient_id", "rhythm", "date"], rows)
    code, out, err = run(
        capsys,
        "prepare",
        records,
        "--out",
        tmp_path / "s",
        "--labels",
        tmp_path / "labels.csv",
        "--label-columns",
        "rhythm",
        "--group-column",
        "patient_id",
        "--val-fraction",
        0.25,
        "--test-fraction",
        0.25,
        "--fs",
        500,
        "--quiet",
    )
    assert code == 0, err
    assert "grouped split of 24 labelled records in 12 groups" in out
    store = ECGStore(tmp_path / "s")
    for g in set(store.groups.tolist()):
        assert len(set(store.splits[store.groups == g].tolist())) == 1
    assert set(store.splits.tolist()) == {"train", "val", "test"}
    # temporal: the latest dates are the test split
    code, out, err = run(
        capsys,
        "prepare",
        records,
        "--out",
        tmp_path / "t",
        "--labels",
        tmp_path / "labels.csv",
        "--label-columns",
        "rhythm",
        "--time-column",
        "date",
        "--split-strategy",
        "temporal",
        "--test-fraction",
        0.25,
        "--val-fraction",
        0.25,
        "--fs",
        500,
        "--quiet",
    )
    assert code == 0, err
    store = ECGStore(tmp_path / "t")
    test_ids = sorted(set(store.record_ids[store.splits == "test"].tolist()))
    assert test_ids == [f"r{i:03d}" for i in range(18, 24)]


def test_split_strategy_without_its_column_is_a_one_line_error(tmp_path, records, capsys):
    _write_csv(tmp_path / "labels.csv", ["record_id", "y"], [[f"r{i:03d}", i % 2] for i in range(24)])
    code, _, err = run(
        capsys,
        "prepare",
        records,
        "--out",
        tmp_path / "s",
        "--labels",
        tmp_path / "labels.csv",
        "--split-strategy",
        "temporal",
        "--test-fraction",
        0.2,
        "--fs",
        500,
        "--quiet",
    )
    assert code == 1 and err.strip() == "hubert-ecg: error: --split-strategy temporal needs --time-column"
    assert not (tmp_path / "s").exists()


def test_ptbxl_folds_survive_as_the_table_gives_them(tmp_path):
    path = _write_csv(
        tmp_path / "all.csv",
        ["record_id", "strat_fold", "split", "NORM"],
        [[f"{i:05d}_lr", 1 + i % 10, {9: "val", 10: "test"}.get(1 + i % 10, "train"), i % 2] for i in range(40)],
    )
    table = LabelTable.from_csv(path, split_column="split", label_columns=["NORM"])
    folds = {f"{i:05d}_lr": 1 + i % 10 for i in range(40)}
    assert all(table.splits[k] == {9: "val", 10: "test"}.get(f, "train") for k, f in folds.items())


# ---------------------------------------------------------------------------------------------
# categorical labels
# ---------------------------------------------------------------------------------------------
def test_text_labels_become_class_indices_or_one_hot(tmp_path):
    path = _write_csv(
        tmp_path / "labels.csv",
        ["record_id", "rhythm", "age"],
        [["a", "SR", 60], ["b", "AF", 70], ["c", "OTHER", ""], ["d", "", 50]],
    )
    table = LabelTable.from_csv(path, label_columns=["rhythm", "age"])
    assert table.classes == {"rhythm": ["AF", "OTHER", "SR"]}
    assert table.names == ["rhythm", "age"]
    assert table.by_key["a"].tolist() == [2.0, 60.0] and table.by_key["b"].tolist() == [0.0, 70.0]
    assert np.isnan(table.by_key["d"][0]) and np.isnan(table.by_key["c"][1])
    onehot = LabelTable.from_csv(path, label_columns=["rhythm"], categorical="onehot")
    assert onehot.names == ["rhythm=AF", "rhythm=OTHER", "rhythm=SR"] and onehot.classes == {}
    assert onehot.by_key["a"].tolist() == [0.0, 0.0, 1.0] and np.isnan(onehot.by_key["d"]).all()


@pytest.mark.slow
def test_multi_class_from_a_text_column_end_to_end(tmp_path, capsys):
    """prepare (text labels) -> finetune --task multi_class -> predict: class names all the way."""
    data = _records(tmp_path / "data", 12, seconds=5.0, seed=2)
    classes = ["SR", "AF", "OTHER"]
    _write_csv(
        data / "labels.csv",
        ["record_id", "rhythm", "split"],
        [[f"r{i:03d}", classes[i % 3], "test" if i < 3 else "train"] for i in range(12)],
    )
    code, out, err = run(
        capsys,
        "prepare",
        data,
        "--out",
        tmp_path / "s",
        "--labels",
        data / "labels.csv",
        "--label-columns",
        "rhythm",
        "--split-column",
        "split",
        "--fs",
        500,
        "--quiet",
    )
    assert code == 0, err
    assert "label 'rhythm': text values stored as class indices 0=AF, 1=OTHER, 2=SR" in out
    assert json.loads((tmp_path / "s" / "store.json").read_text())["label_classes"] == {"rhythm": ["AF", "OTHER", "SR"]}
    code, out, err = run(
        capsys,
        "finetune",
        tmp_path / "s",
        "--random-init",
        "--size",
        "tiny",
        "--task",
        "multi_class",
        "--out",
        tmp_path / "run",
        "--max-steps",
        2,
        "--batch-size",
        4,
        "--val-every",
        2,
        "--workers",
        0,
        "--logger",
        "none",
        "--quiet",
        "--device",
        "cpu",
        "--monitor",
        "loss",
    )
    assert code == 0, err
    assert "test rows untouched" in err  # no 'val' split: validation from training records only
    from hubert_ecg import load_model

    model = load_model(tmp_path / "run" / "last")
    assert model.info.label_names == ["AF", "OTHER", "SR"]
    code, out, err = run(
        capsys,
        "predict",
        tmp_path / "run" / "last",
        data / "r000.npy",
        "--fs",
        500,
        "--out",
        tmp_path / "p.csv",
        "--quiet",
        "--device",
        "cpu",
    )
    assert code == 0, err
    header = (tmp_path / "p.csv").read_text().splitlines()[0]
    assert all(f"p_{c}" in header for c in ("AF", "OTHER", "SR"))


@pytest.mark.parametrize(("n", "expected"), [(10, (7, 2, 1)), (20, (14, 4, 2)), (7, (5, 1, 1))])
def test_temporal_split_counts_are_the_rounded_shares_of_whole_records(n: int, expected: tuple[int, int, int]) -> None:
    # 1 - 0.2 - 0.1 == 0.7000000000000001 once put 8 of 10 records in train.
    from collections import Counter

    from hubert_ecg.store import temporal_splits

    counts = Counter(temporal_splits([float(t) for t in range(n)], (0.2, 0.1)))
    assert (counts["train"], counts["val"], counts["test"]) == expected
