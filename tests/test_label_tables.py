"""Label tables: PTB-XL benchmark splits on a PTB-XL-shaped fixture, CinC #Dx codes, LUDB labels."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from conftest import shared_path
from hubert_ecg.io import discover_sources
from hubert_ecg.label_tables import (
    PTBXL_LABEL_START_INDEX,
    PTBXL_META_COLUMNS,
    DatasetTableError,
    build_ptbxl_tables,
    cinc_labels_table,
    ludb_labels_table,
    reference_split_table,
)
from hubert_ecg.store import LabelTable

LEADS = ["I", "II", "III", "AVR", "AVL", "AVF", "V1", "V2", "V3", "V4", "V5", "V6"]

# Statement table: code -> (diagnostic, form, rhythm, class, subclass). UNCL is diagnostic without a
# class (skipped by sub/superdiag); ABQRS never occurs (removed by min_count); NDT is diag AND form.
STATEMENTS = {
    "NORM": (1, 0, 0, "NORM", "NORM"),
    "IMI": (1, 0, 0, "MI", "IMI"),
    "ASMI": (1, 0, 0, "MI", "AMI"),
    "LVH": (1, 0, 0, "HYP", "LVH"),
    "NDT": (1, 1, 0, "STTC", "STTC"),
    "UNCL": (1, 0, 0, "", ""),
    "LVOLT": (0, 1, 0, "", ""),
    "ABQRS": (0, 1, 0, "", ""),
    "SR": (0, 0, 1, "", ""),
    "AFIB": (0, 0, 1, "", ""),
    "STACH": (0, 0, 1, "", ""),
}
# ecg_id -> (strat_fold, scp_codes). Likelihoods 0/15/50 must still count. ZZZ is not in the
# statement table (counts for "all" only); record 9 has no code; record 10's file is not written.
DATABASE = {
    1: (1, {"NORM": 100.0, "SR": 0.0}),
    2: (2, {"IMI": 50.0, "LVOLT": 0.0, "SR": 0.0}),
    3: (3, {"ASMI": 100.0, "IMI": 15.0, "AFIB": 0.0}),
    4: (8, {"LVOLT": 100.0, "SR": 0.0}),
    5: (9, {"NORM": 80.0, "SR": 0.0}),
    6: (9, {"LVH": 100.0, "NDT": 100.0, "STACH": 0.0}),
    7: (10, {"UNCL": 100.0, "SR": 0.0}),
    8: (10, {"ZZZ": 100.0}),
    9: (4, {}),
    10: (10, {"NORM": 100.0, "SR": 0.0}),
}
MISSING_FILE = {10}


def _stem(ecg_id: int, sampling: str = "100") -> str:
    suffix = "lr" if sampling == "100" else "hr"
    return f"records{sampling}/{(ecg_id // 1000) * 1000:05d}/{ecg_id:05d}_{suffix}"


def _write_ptbxl(
    root: Path, database: dict[int, tuple[object, dict]] = DATABASE, scp_override: dict[int, str] | None = None
) -> Path:
    import wfdb

    rng = np.random.default_rng(0)
    for ecg_id in database:
        if ecg_id in MISSING_FILE:
            continue
        rel = Path(_stem(ecg_id))
        (root / rel.parent).mkdir(parents=True, exist_ok=True)
        sig = rng.normal(0, 0.5, (1000, 12))
        lead_i, lead_ii = sig[:, 0], sig[:, 1]
        # Consistent limb leads (III = II - I ...), so the readers' Einthoven check stays quiet.
        sig[:, 2:6] = np.stack(
            [lead_ii - lead_i, -(lead_i + lead_ii) / 2, lead_i - lead_ii / 2, lead_ii - lead_i / 2], axis=1
        )
        wfdb.wrsamp(
            rel.name,
            fs=100,
            units=["mV"] * 12,
            sig_name=LEADS,
            p_signal=sig.round(3),
            fmt=["16"] * 12,
            adc_gain=[1000.0] * 12,
            baseline=[0] * 12,
            write_dir=str(root / rel.parent),
        )
    with open(root / "scp_statements.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["", "description", "diagnostic", "form", "rhythm", "diagnostic_class", "diagnostic_subclass"])
        for code, (diag, form, rhythm, cls, sub) in STATEMENTS.items():
            w.writerow(
                [
                    code,
                    f"statement {code}",
                    "1.0" if diag else "",
                    "1.0" if form else "",
                    "1.0" if rhythm else "",
                    cls,
                    sub,
                ]
            )
    with open(root / "ptbxl_database.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["ecg_id", "patient_id", "age", "sex", "scp_codes", "strat_fold", "filename_lr", "filename_hr"])
        for ecg_id, (fold, codes) in database.items():
            scp = (scp_override or {}).get(ecg_id, repr(codes))
            w.writerow(
                [ecg_id, f"{1000.0 + ecg_id}", "56.0", ecg_id % 2, scp, fold, _stem(ecg_id), _stem(ecg_id, "500")]
            )
    return root


@pytest.fixture(scope="module")
def ptbxl_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Shared by the tests of this module, which only read it (writing wfdb records is slow)."""
    return _write_ptbxl(tmp_path_factory.mktemp("ptbxl"))


def _read(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        rows = list(reader)
    return list(reader.fieldnames or []), rows


# task -> (labels, {ecg_id: set of labels}, dropped without a label). Worked out by hand from the
# fixture, following helme/ecg_ptbxl_benchmarking's aggregation rules.
EXPECTED = {
    "all": (
        ["AFIB", "ASMI", "IMI", "LVH", "LVOLT", "NDT", "NORM", "SR", "STACH", "UNCL", "ZZZ"],
        {
            1: {"NORM", "SR"},
            2: {"IMI", "LVOLT", "SR"},
            3: {"ASMI", "IMI", "AFIB"},
            4: {"LVOLT", "SR"},
            5: {"NORM", "SR"},
            6: {"LVH", "NDT", "STACH"},
            7: {"UNCL", "SR"},
            8: {"ZZZ"},
        },
        1,
    ),
    "diag": (
        ["ASMI", "IMI", "LVH", "NDT", "NORM", "UNCL"],
        {1: {"NORM"}, 2: {"IMI"}, 3: {"ASMI", "IMI"}, 5: {"NORM"}, 6: {"LVH", "NDT"}, 7: {"UNCL"}},
        3,
    ),
    "subdiag": (
        ["AMI", "IMI", "LVH", "NORM", "STTC"],
        {1: {"NORM"}, 2: {"IMI"}, 3: {"AMI", "IMI"}, 5: {"NORM"}, 6: {"LVH", "STTC"}},
        4,
    ),
    "superdiag": (
        ["HYP", "MI", "NORM", "STTC"],
        {1: {"NORM"}, 2: {"MI"}, 3: {"MI"}, 5: {"NORM"}, 6: {"HYP", "STTC"}},
        4,
    ),
    "form": (["LVOLT", "NDT"], {2: {"LVOLT"}, 4: {"LVOLT"}, 6: {"NDT"}}, 7),
    "rhythm": (
        ["AFIB", "SR", "STACH"],
        {1: {"SR"}, 2: {"SR"}, 3: {"AFIB"}, 4: {"SR"}, 5: {"SR"}, 6: {"STACH"}, 7: {"SR"}},
        2,
    ),
}


@pytest.mark.parametrize("task", list(EXPECTED))
def test_ptbxl_tables_labels_splits_and_drops(ptbxl_root: Path, tmp_path: Path, task: str) -> None:
    labels, members, dropped = EXPECTED[task]
    paths = build_ptbxl_tables(ptbxl_root, tmp_path / task, task=task)
    header, rows = _read(paths["all"])
    assert header == list(PTBXL_META_COLUMNS) + labels
    assert header.index(labels[0]) == PTBXL_LABEL_START_INDEX
    got = {int(r["ecg_id"]): {lab for lab in labels if r[lab] == "1"} for r in rows}
    assert got == members
    assert all(r[lab] in ("0", "1") for r in rows for lab in labels)
    info = json.loads(paths["labels"].read_text())
    assert info["labels"] == labels and info["label_start_index"] == PTBXL_LABEL_START_INDEX
    assert info["dropped_no_label"] == dropped
    assert info["dropped_missing_file"] == (1 if task in ("all", "diag", "subdiag", "superdiag", "rhythm") else 0)
    # Folds 1-8 train, 9 val, 10 test; each split file holds exactly its rows of all.csv.
    fold_split = {**{f: "train" for f in range(1, 9)}, 9: "val", 10: "test"}
    for split in ("train", "val", "test"):
        _, split_rows = _read(paths[split])
        assert {int(r["ecg_id"]) for r in split_rows} == {e for e in members if fold_split[DATABASE[e][0]] == split}
        assert {r["split"] for r in split_rows} <= {split}
        assert info["records_per_split"][split] == len(split_rows)
    assert info["positives"][labels[0]]["train"] + info["positives"][labels[0]]["val"] + info["positives"][labels[0]][
        "test"
    ] == sum(labels[0] in m for m in members.values())


def test_ptbxl_row_content_and_manifest(ptbxl_root: Path, tmp_path: Path) -> None:
    paths = build_ptbxl_tables(ptbxl_root, tmp_path / "out", task="all")
    _, rows = _read(paths["all"])
    first = rows[0]
    assert first["record_id"] == "00001_lr" and first["path"] == "records100/00000/00001_lr"
    assert first["patient_id"] == "1001" and first["strat_fold"] == "1" and first["split"] == "train"
    listed = paths["manifest"].read_text().splitlines()
    assert listed == [str(ptbxl_root.resolve() / f"{r['path']}.hea") for r in rows]
    assert all(Path(p).is_absolute() and Path(p).is_file() for p in listed)
    # The manifest feeds `prepare`: the readers name each record as the table's record_id.
    sources = discover_sources([paths["manifest"]], allow_outside_root=True)
    assert [s.record_id for s in sources] == [r["record_id"] for r in rows]


def test_ptbxl_tables_read_by_label_table(ptbxl_root: Path, tmp_path: Path) -> None:
    paths = build_ptbxl_tables(ptbxl_root, tmp_path / "out", task="superdiag")
    info = json.loads(paths["labels"].read_text())
    table = LabelTable.from_csv(
        paths["all"], id_column="record_id", label_start_index=info["label_start_index"], split_column="split"
    )
    assert table.names == ["HYP", "MI", "NORM", "STTC"]
    np.testing.assert_array_equal(table.lookup("00006_lr", "/x/records100/00000/00006_lr.hea"), [1, 0, 0, 1])
    assert table.splits == {
        "00001_lr": "train",
        "00002_lr": "train",
        "00003_lr": "train",
        "00005_lr": "val",
        "00006_lr": "val",
    }


def test_ptbxl_tables_feed_prepare(ptbxl_root: Path, tmp_path: Path) -> None:
    """manifest.txt + all.csv through `prepare`: every record matched, splits and labels carried."""
    from hubert_ecg.store import open_store, prepare_store

    paths = build_ptbxl_tables(ptbxl_root, tmp_path / "out", task="superdiag")
    table = LabelTable.from_csv(
        paths["all"], id_column="record_id", label_start_index=PTBXL_LABEL_START_INDEX, split_column="split"
    )
    result = prepare_store(
        [paths["manifest"]], tmp_path / "store", labels=table, progress=False, allow_outside_root=True
    )
    assert (result.records, result.rejected) == (5, 0)
    store = open_store(tmp_path / "store")
    assert store.label_names == ["HYP", "MI", "NORM", "STTC"]
    assert sorted(store.record_ids[store.rows("val")]) == ["00005_lr", "00006_lr"]
    for row, record_id in enumerate(store.record_ids):
        np.testing.assert_array_equal(store.labels[row], table.by_key[record_id])


def test_ptbxl_min_count_is_inclusive_and_counts_the_database(ptbxl_root: Path, tmp_path: Path) -> None:
    # Counts over the database incl. record 10 (file missing): NORM 3, SR 6, IMI 2, LVOLT 2, rest 1.
    paths = build_ptbxl_tables(ptbxl_root, tmp_path / "out", task="all", min_count=2)
    info = json.loads(paths["labels"].read_text())
    assert info["labels"] == ["IMI", "LVOLT", "NORM", "SR"]
    assert info["dropped_no_label"] == 3  # 6 (only rare codes), 8 (ZZZ), 9 (none)
    _, rows = _read(paths["all"])
    assert [int(r["ecg_id"]) for r in rows] == [1, 2, 3, 4, 5, 7]


def test_ptbxl_500hz_paths_and_unchecked_files(ptbxl_root: Path, tmp_path: Path) -> None:
    # No records500/ in the fixture: with file checks every record is missing, which is an error...
    with pytest.raises(
        DatasetTableError,
        match=r"records500: no PTB-XL record left for task 'rhythm' "
        r"\(2 without a label, 8 without a \.hea file\)",
    ):
        build_ptbxl_tables(ptbxl_root, tmp_path / "a", task="rhythm", sampling="500")
    # ... without them the tables are built from the CSVs alone (record 10 included).
    paths = build_ptbxl_tables(ptbxl_root, tmp_path / "b", task="rhythm", sampling="500", check_files=False)
    _, rows = _read(paths["all"])
    assert [r["path"] for r in rows][-1] == "records500/00000/00010_hr"
    assert [int(r["ecg_id"]) for r in rows] == [1, 2, 3, 4, 5, 6, 7, 10]


def test_ptbxl_scp_codes_are_never_evaluated(tmp_path: Path) -> None:
    root = _write_ptbxl(tmp_path / "p", scp_override={3: "__import__('os').getcwd()"})
    with pytest.raises(DatasetTableError) as err:
        build_ptbxl_tables(root, tmp_path / "out")
    assert str(err.value) == (
        f"{root / 'ptbxl_database.csv'}, row 4: scp_codes is not a dict literal (\"__import__('os').getcwd()\")"
    )


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (
            {"task": "diagnostic"},
            "unknown PTB-XL task 'diagnostic' (choose from all, diag, subdiag, superdiag, form, rhythm)",
        ),
        ({"sampling": "250"}, "unknown PTB-XL sampling '250' (choose 100 or 500)"),
        ({"min_count": 0}, "min_count must be >= 1, got 0"),
    ],
)
def test_ptbxl_bad_options(ptbxl_root: Path, tmp_path: Path, kwargs: dict, message: str) -> None:
    with pytest.raises(DatasetTableError) as err:
        build_ptbxl_tables(ptbxl_root, tmp_path / "out", **kwargs)
    assert str(err.value) == message


def test_ptbxl_bad_files(tmp_path: Path) -> None:
    root = _write_ptbxl(tmp_path / "p", database={1: (11, {"NORM": 100.0})})
    with pytest.raises(DatasetTableError) as err:
        build_ptbxl_tables(root, tmp_path / "out")
    assert str(err.value) == f"{root / 'ptbxl_database.csv'}, row 2: strat_fold must be 1-10, got '11'"
    with pytest.raises(DatasetTableError) as err:
        build_ptbxl_tables(tmp_path / "nowhere", tmp_path / "out", statements_csv=root / "scp_statements.csv")
    assert str(err.value) == f"{tmp_path / 'nowhere' / 'ptbxl_database.csv'}: file not found"
    (root / "scp_statements.csv").write_text(",description,diagnostic\nNORM,x,1.0\n")
    with pytest.raises(DatasetTableError) as err:
        build_ptbxl_tables(root, tmp_path / "out")
    assert str(err.value) == (
        f"{root / 'scp_statements.csv'}: missing column(s) form, rhythm, diagnostic_class, diagnostic_subclass"
    )


def test_ptbxl_layout_of_real_records_is_discoverable(tmp_path: Path) -> None:
    """The shared 100 Hz PTB-XL subset has no labels; a database naming some of its records must
    give a manifest that resolves to the same files as its records.csv."""
    real = shared_path("ptbxl-unlabelled-100hz")
    with open(real / "records.csv", newline="") as fh:
        listed = list(csv.DictReader(fh))[:25]
    database = {
        int(r["ecg_id"]): ((i % 10) + 1, {"NORM": 100.0} if i % 3 else {"SR": 0.0}) for i, r in enumerate(listed)
    }
    meta = tmp_path / "meta"
    meta.mkdir()
    with open(meta / "scp_statements.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["", "diagnostic", "form", "rhythm", "diagnostic_class", "diagnostic_subclass"])
        w.writerow(["NORM", "1.0", "", "", "NORM", "NORM"])
        w.writerow(["SR", "", "", "1.0", "", ""])
    with open(meta / "ptbxl_database.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["ecg_id", "patient_id", "scp_codes", "strat_fold", "filename_lr", "filename_hr"])
        for ecg_id, (fold, codes) in database.items():
            w.writerow([ecg_id, ecg_id, repr(codes), fold, _stem(ecg_id), _stem(ecg_id, "500")])
    paths = build_ptbxl_tables(
        real,
        tmp_path / "out",
        task="all",
        database_csv=meta / "ptbxl_database.csv",
        statements_csv=meta / "scp_statements.csv",
    )
    info = json.loads(paths["labels"].read_text())
    assert info["records"] == 25 and info["dropped_missing_file"] == 0
    from_manifest = discover_sources([paths["manifest"]], allow_outside_root=True)
    from_records_csv = discover_sources([real / "records.csv"])[:25]
    assert [Path(s.path).resolve() for s in from_manifest] == [Path(s.path).resolve() for s in from_records_csv]
    assert [s.record_id for s in from_manifest] == [Path(r["record"]).name for r in listed]


# ---------------------------------------------------------------------------------------------
# CinC 2021
# ---------------------------------------------------------------------------------------------
def _write_cinc_header(path: Path, dx: str | None, age: str = "60", sex: str = "Male") -> None:
    lines = [f"{path.stem} 12 500 5000"] + [f"{path.stem}.mat 16+24 1000/mV 16 0 0 0 0 {lead}" for lead in LEADS]
    lines += [f"#Age: {age}", f"#Sex: {sex}"] + ([f"#Dx: {dx}"] if dx is not None else []) + ["#Rx: Unknown"]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


def test_cinc_labels_from_dx_lines(tmp_path: Path) -> None:
    base = tmp_path / "cinc"
    _write_cinc_header(base / "G12EC" / "E001.hea", "426783006,164889003")
    _write_cinc_header(base / "G12EC" / "E002.hea", "426783006", age="NaN", sex="Female")
    _write_cinc_header(base / "CPSC" / "A001.hea", "59118001, 164889003")
    _write_cinc_header(base / "CPSC" / "A002.hea", None)
    out = cinc_labels_table(base, tmp_path / "cinc.csv", classes="all")
    assert out.labels == ["59118001", "164889003", "426783006"]  # numeric order, not text order
    assert out.label_start_index == 4 and out.dropped == {"no_label": 1} and out.n_records == 3
    assert out.positives == {"59118001": 1, "164889003": 2, "426783006": 2}
    header, rows = _read(out.path)
    assert header == ["record_id", "path", "age", "sex", "59118001", "164889003", "426783006"]
    assert [(r["record_id"], r["path"], r["age"], r["sex"]) for r in rows] == [
        ("A001", "CPSC/A001", "60", "M"),
        ("E001", "G12EC/E001", "60", "M"),
        ("E002", "G12EC/E002", "", "F"),
    ]
    rare = cinc_labels_table(base, tmp_path / "rare.csv", min_count=2, classes="all")
    assert rare.labels == ["164889003", "426783006"] and rare.n_records == 3


def test_cinc_duplicate_record_names(tmp_path: Path) -> None:
    _write_cinc_header(tmp_path / "a" / "X1.hea", "1")
    _write_cinc_header(tmp_path / "b" / "X1.hea", "2")
    with pytest.raises(DatasetTableError) as err:
        cinc_labels_table(tmp_path, tmp_path / "out.csv")
    assert str(err.value) == f"{tmp_path / 'b' / 'X1.hea'}: record name X1 also used by {tmp_path / 'a' / 'X1.hea'}"
    with pytest.raises(DatasetTableError, match="no WFDB .hea headers found"):
        cinc_labels_table(tmp_path / "empty", tmp_path / "out.csv")


def test_cinc_real_headers_match_wfdb(tmp_path: Path) -> None:
    import wfdb

    base = shared_path("cinc2021-smoke")
    out = cinc_labels_table(base, tmp_path / "cinc.csv", classes="all")
    table = LabelTable.from_csv(out.path, id_column="record_id", label_start_index=out.label_start_index)
    headers = sorted(base.rglob("*.hea"))
    assert out.n_records == len(headers) == len(table.by_key)
    for hea in headers:
        comments = wfdb.rdheader(str(hea.with_suffix(""))).comments
        dx = next(c.split(":", 1)[1] for c in comments if c.strip().startswith("Dx"))
        expected = {code.strip() for code in dx.split(",") if code.strip()}
        row = table.by_key[hea.stem]
        assert {name for name, v in zip(table.names, row) if v == 1} == expected, hea
    # The readers give the same record ids, so `prepare --labels` matches every record.
    assert {s.record_id for s in discover_sources([base]) if s.path.endswith(".hea")} == set(table.by_key)


# ---------------------------------------------------------------------------------------------
# LUDB
# ---------------------------------------------------------------------------------------------
def test_ludb_labels_on_a_small_csv(tmp_path: Path) -> None:
    columns = [
        "ID",
        "Sex",
        "Age",
        "Rhythms",
        "Electric axis of the heart",
        "Conduction abnormalities",
        "Extrasystolies",
        "Hypertrophies",
        "Cardiac pacing",
        "Ischemia",
        "Non-specific repolarization abnormalities",
        "Other states",
    ]
    rows = [
        [
            "1",
            "F\n",
            "51\n",
            "Sinus rhythm",
            "",
            "",
            "",
            "Left ventricular hypertrophy\nLeft atrial hypertrophy",
            "",
            "",
            "",
            "",
        ],
        ["2", "M\n", ">89\n", "Sinus rhythm\nWandering atrial pacemaker", "", "", "", "", "", "Stemi: septal", "", ""],
        ["3", "M\n", "40\n", "Atrial fibrillation", "", "", "", "Left ventricular overload", "", "", "", ""],
    ]
    src = tmp_path / "ludb.csv"
    with open(src, "w", newline="") as fh:
        csv.writer(fh).writerows([columns] + rows)
    out = ludb_labels_table(src, tmp_path / "labels.csv")
    _, got = _read(out.path)
    assert [(r["record_id"], r["sex"], r["age"]) for r in got] == [
        ("1", "F", "51"),
        ("2", "M", ">89"),
        ("3", "M", "40"),
    ]
    assert [r["sinus_rhythm"] for r in got] == ["1", "0", "0"]  # exactly 'Sinus rhythm' and nothing else
    assert [r["sinus_origin"] for r in got] == ["1", "1", "0"]
    assert [r["lvh"] for r in got] == ["1", "0", "0"]  # 'overload' is not hypertrophy
    assert [r["ischemia"] for r in got] == ["0", "1", "0"]
    assert out.label_start_index == 3


def test_ludb_real_counts_and_ids(tmp_path: Path) -> None:
    ludb = shared_path("ludb")
    out = ludb_labels_table(ludb, tmp_path / "ludb_labels.csv")
    assert out.n_records == 200
    # Counts from the LUDB data README (rhythm: sinus 142 alone, AF 15 incl. one with aberrant
    # conduction; IRBBB 29, LAH 16, 1st-degree AV block 10, LVH 108).
    expected = {
        "sinus_rhythm": 142,
        "atrial_fibrillation": 15,
        "incomplete_rbbb": 29,
        "left_anterior_hemiblock": 16,
        "av_block_1": 10,
        "lvh": 108,
        "sinus_origin": 182,
    }
    assert {k: out.positives[k] for k in expected} == expected
    table = LabelTable.from_csv(out.path, id_column="record_id", label_start_index=out.label_start_index)
    # Same ids as the readers give the records, and LVH agrees with each header's diagnoses.
    sources = discover_sources([ludb / "data"])
    assert {s.record_id for s in sources} == set(table.by_key)
    lvh = table.names.index("lvh")
    for s in sources:
        in_header = "#Left ventricular hypertrophy." in Path(s.path).read_text()
        assert table.by_key[s.record_id][lvh] == float(in_header), s.path


# ---------------------------------------------------------------------------------------------
# The reference's split CSVs
# ---------------------------------------------------------------------------------------------
def test_reference_split_table_merges_and_keeps_test_whole(tmp_path: Path) -> None:
    header = ["filename", "age", "sex", "AF", "NSR"]
    files = {
        "train": [
            ["A1.hea.npy", "50", "M", "1", "0"],
            ["A2.hea.npy", "61", "F", "0", "1"],
            ["A9.hea.npy", "70", "F", "1", "1"],
        ],
        "val": [["A3.hea.npy", "40", "M", "0", "1"]],
        "test": [["A9.hea.npy", "70", "F", "1", "1"], ["A4.hea.npy", "33", "M", "1.0", "0.0"]],
    }
    paths = {}
    for split, rows in files.items():
        paths[split] = tmp_path / f"{split}0.csv"
        with open(paths[split], "w", newline="") as fh:
            csv.writer(fh).writerows([header] + rows)
    out = reference_split_table(paths, tmp_path / "merged.csv", label_start_index=3)
    assert (out.labels, out.label_start_index, out.n_records, out.dropped) == (["AF", "NSR"], 5, 5, {"duplicate": 1})
    assert out.positives == {"AF": 3, "NSR": 3}
    table = LabelTable.from_csv(
        out.path, id_column="record_id", label_start_index=out.label_start_index, split_column="split"
    )
    assert table.names == ["AF", "NSR"]
    assert table.splits == {"A9": "test", "A4": "test", "A3": "val", "A1": "train", "A2": "train"}
    np.testing.assert_array_equal(table.by_key["A4"], [1, 0])
    (tmp_path / "other.csv").write_text("filename,AF\nA5.npy,1\n")
    with pytest.raises(DatasetTableError) as err:
        reference_split_table({"train": paths["train"], "val": tmp_path / "other.csv"}, tmp_path / "m2.csv")
    # Read in the order test, val, train: the train file is the one that differs from the first.
    assert str(err.value) == f"{paths['train']}: columns differ from {tmp_path / 'other.csv'}"
    with pytest.raises(DatasetTableError) as err:
        reference_split_table({"train": paths["train"]}, tmp_path / "m3.csv", label_start_index=0)
    assert str(err.value) == (
        f"{paths['train']}: label_start_index 0 does not point after 'filename' inside the 5 columns"
    )


def test_cinc_scored_classes_merge_equivalent_codes(tmp_path: Path) -> None:
    from hubert_ecg.label_tables import CINC2020_SCORED, CINC2021_SCORED

    # the challenge's label spaces: 2021 26 classes from 30 codes, 2020 24 from 27
    assert len(CINC2021_SCORED) == 26 and sum(len(c) for c, _ in CINC2021_SCORED.values()) == 30
    assert len(CINC2020_SCORED) == 24 and sum(len(c) for c, _ in CINC2020_SCORED.values()) == 27
    assert CINC2021_SCORED["RBBB"][0] == ("713427006", "59118001")
    assert CINC2021_SCORED["LBBB"][0] == ("733534002", "164909002")
    assert CINC2021_SCORED["PAC"][0] == ("284470004", "63593006")
    assert CINC2021_SCORED["PVC"][0] == ("427172004", "17338001")
    base = tmp_path / "cinc"
    _write_cinc_header(base / "A1.hea", "713427006,164889003")  # complete RBBB + AF
    _write_cinc_header(base / "A2.hea", "59118001")  # RBBB: same class
    _write_cinc_header(base / "A3.hea", "733534002")  # complete LBBB: LBBB in 2021, unscored in 2020
    _write_cinc_header(base / "A4.hea", "11157007")  # unscored only: kept, all 0
    _write_cinc_header(base / "A5.hea", None)  # no #Dx: dropped
    out = cinc_labels_table(base, tmp_path / "scored.csv")
    assert out.labels == list(CINC2021_SCORED) and out.label_start_index == 5
    assert out.n_records == 4 and out.dropped == {"no_label": 1}
    assert out.positives["RBBB"] == 2 and out.positives["AF"] == 1 and out.positives["LBBB"] == 1
    header, rows = _read(out.path)
    assert header[:5] == ["record_id", "path", "age", "sex", "dx"]
    by_id = {r["record_id"]: r for r in rows}
    assert by_id["A1"]["dx"] == "164889003;713427006"  # raw codes kept beside the classes
    assert all(by_id["A4"][c] == "0" for c in out.labels)
    old = cinc_labels_table(base, tmp_path / "scored2020.csv", classes="scored2020")
    assert "LBBB" in old.labels and "BBB" not in old.labels and old.positives["LBBB"] == 0
    table = LabelTable.from_csv(out.path, label_start_index=out.label_start_index)
    assert table.names == list(CINC2021_SCORED)
    with pytest.raises(DatasetTableError, match="classes must be one of scored2021, scored2020, all"):
        cinc_labels_table(base, tmp_path / "x.csv", classes="scored2019")
