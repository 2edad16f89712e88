"""Default label columns: a column that is a split, an identifier, a time or free text is refused, not learned.

Without ``--label-columns`` every column but the id (and the named split/group/time columns) is a label.
A ``split`` or ``strat_fold`` column learned as a label trains the model to predict the split, with exit 0;
these tests pin that such columns are refused with a one-line error naming the file, the column and the
option that says what it is, and that naming the column (or the labels) makes the same file work.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from hubert_ecg.cli import main
from hubert_ecg.store import LabelTable, StoreError


def _write(path: Path, header: list[str], rows: list[list[object]]) -> Path:
    path.write_text("\n".join(",".join(str(c) for c in r) for r in [header, *rows]) + "\n")
    return path


def _table(tmp_path: Path, extra: str, values: list[object]) -> Path:
    rows = [[f"r{i:03d}", i % 2, values[i]] for i in range(len(values))]
    return _write(tmp_path / "labels.csv", ["record_id", "af", extra], rows)


@pytest.mark.parametrize(
    ("column", "values", "option"),
    [
        ("split", ["train", "val", "test", "train"] * 5, "--split-column split"),
        ("Split", ["train", "test"] * 10, "--split-column Split"),
        ("strat_fold", list(range(1, 11)) * 2, "--split-column strat_fold"),
        ("patient_id", [f"p{i // 2}" for i in range(20)], "--group-column patient_id"),
        ("date", [f"2020-01-{i + 1:02d}" for i in range(20)], "--time-column date"),
    ],
)
def test_a_column_that_is_not_a_label_is_refused_naming_the_option(
    tmp_path: Path, column: str, values: list[object], option: str
) -> None:
    path = _table(tmp_path, column, values)
    with pytest.raises(StoreError) as err:
        LabelTable.from_csv(path)
    message = str(err.value)
    assert "\n" not in message
    assert str(path) in message and repr(column) in message and option in message


def test_naming_the_column_reads_it_in_its_role_and_keeps_the_labels(tmp_path: Path) -> None:
    path = _table(tmp_path, "split", ["train", "val", "test", "train"] * 5)
    table = LabelTable.from_csv(path, split_column="split")
    assert table.names == ["af"]
    assert table.splits["r002"] == "test" and table.splits["r001"] == "val"
    np.testing.assert_array_equal(table.by_key["r003"], [1.0])

    grouped = _table(tmp_path, "patient_id", [f"p{i // 2}" for i in range(20)])
    table = LabelTable.from_csv(grouped, group_column="patient_id")
    assert table.names == ["af"] and table.groups["r005"] == "p2"


def test_explicit_label_columns_are_taken_as_given(tmp_path: Path) -> None:
    path = _table(tmp_path, "fold", list(range(1, 11)) * 2)
    table = LabelTable.from_csv(path, label_columns=["af", "fold"])
    assert table.names == ["af", "fold"]
    np.testing.assert_array_equal(table.by_key["r012"], [0.0, 3.0])
    assert LabelTable.from_csv(path, label_start_index=1).names == ["af", "fold"]


def test_free_text_is_refused_but_a_few_classes_are_categorical(tmp_path: Path) -> None:
    n = 120
    notes = _table(tmp_path, "comment", [f"seen by doctor {i}" for i in range(n)])
    with pytest.raises(StoreError, match=r"'comment' has 120 different text values in 120 rows"):
        LabelTable.from_csv(notes)

    rhythm = _table(tmp_path, "rhythm", ["SR", "AF", "AFL"] * (n // 3))
    table = LabelTable.from_csv(rhythm)
    assert table.classes == {"rhythm": ["AF", "AFL", "SR"]}
    np.testing.assert_array_equal(table.by_key["r001"], [1.0, 0.0])  # af=1, rhythm=AF -> class 0


def test_prepare_refuses_a_split_column_left_unnamed_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from hubert_ecg.synthetic import write_synthetic_dataset

    data = write_synthetic_dataset(tmp_path / "data", 4, seconds=5.0)
    out = tmp_path / "store"
    code = main(
        ["prepare", str(data), "--out", str(out), "--fs", "500", "--labels", str(data / "labels.csv"), "--quiet"]
    )
    err = capsys.readouterr().err.strip()
    assert code == 1
    assert len(err.splitlines()) == 1 and "'split' looks like a data split" in err and "--split-column split" in err
    assert not (out / "store.json").exists()


def test_label_rows_that_no_record_takes_are_listed(tmp_path: Path) -> None:
    from hubert_ecg.store import prepare_store
    from hubert_ecg.synthetic import write_synthetic_dataset

    data = write_synthetic_dataset(tmp_path / "data", 3, seconds=3.0)
    text = (data / "labels.csv").read_text().splitlines()
    labels_csv = _write(tmp_path / "labels.csv", text[0].split(","), [r.split(",") for r in text[1:]])
    with open(labels_csv, "a") as fh:
        fh.write("ghost1,train,1,0,0,0,0\nsyn00000_copy,test,0,1,0,0,0\n")
    table = LabelTable.from_csv(labels_csv, split_column="split")
    out = tmp_path / "store"
    for _ in range(2):  # the listing is also right when re-running on the finished store
        result = prepare_store([data], out, labels=table, read_kwargs={"fs": 500.0}, progress=False)
        listed = (out / "unmatched_labels.csv").read_text().splitlines()
        assert [line.split(",")[0] for line in listed[1:]] == ["ghost1", "syn00000_copy"]
        assert any("2 of 5 label rows match no record" in note for note in result.notes)

    complete = _write(tmp_path / "complete.csv", text[0].split(","), [r.split(",") for r in text[1:]])
    prepare_store(
        [data],
        tmp_path / "store2",
        labels=LabelTable.from_csv(complete, split_column="split"),
        read_kwargs={"fs": 500.0},
        progress=False,
    )
    assert not (tmp_path / "store2" / "unmatched_labels.csv").exists()
