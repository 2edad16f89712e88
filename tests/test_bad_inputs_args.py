"""Bad options, output paths, labels files, loop configs and concurrent writers: each case asserts the
exit status, one message line naming the option/file and the cause, no traceback, and nothing
written (or nothing lost). Listed in docs/RELIABILITY.md ("Options, outputs, labels, configs")."""

from __future__ import annotations

import csv
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import yaml

from hubert_ecg.cli import main
from hubert_ecg.synthetic import synthetic_record


def run(capsys, *args: object) -> tuple[int, str, str]:
    """The command line in this process; argparse's exit (status 2) is caught like a shell sees it."""
    capsys.readouterr()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            code = main([str(a) for a in args])
        except SystemExit as stop:
            code = int(stop.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def one_error_line(err: str, prefix: str = "hubert-ecg") -> str:
    """The one error line (argparse prints its usage lines before it); never a traceback."""
    assert "Traceback" not in err, err
    errors = [line for line in err.splitlines() if line.startswith(prefix) and "error:" in line]
    assert len(errors) == 1, err
    return errors[0]


def files_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*")) if folder.exists() else []


@pytest.fixture(scope="module")
def records(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("rec")
    rng = np.random.default_rng(0)
    for i in range(4):
        np.save(folder / f"r{i}.npy", synthetic_record(rng, seconds=3.0).signal)
    return folder


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    import torch

    from hubert_ecg.checkpoint import save_pretrained
    from hubert_ecg.model import create_model
    from hubert_ecg.preprocess import PreprocessSpec

    torch.manual_seed(0)
    model = create_model("tiny", head={"num_labels": 2, "type": "linear"})
    model.info.task = "multi_label"
    model.info.label_names = ["a", "b"]
    model.info.preprocessing = PreprocessSpec().to_dict()
    return save_pretrained(model, tmp_path_factory.mktemp("ckpt") / "tiny")


# ---------------------------------------------------------------------------------------------
# numeric options: range-checked at parse time (exit 2), before anything is read
# ---------------------------------------------------------------------------------------------
OPTION_CASES = [
    ("predict_stride_0", ["predict", "M", "X", "--out", "p.csv", "--stride", "0"], "--stride", "must be > 0"),
    (
        "prepare_val_fraction_2",
        ["prepare", "X", "--out", "S", "--val-fraction", "2"],
        "--val-fraction",
        "must be at least 0 and below 1",
    ),
    ("prepare_row_seconds_0", ["prepare", "X", "--out", "S", "--row-seconds", "0"], "--row-seconds", "must be > 0"),
    ("prepare_workers_0", ["prepare", "X", "--out", "S", "--workers", "0"], "--workers", "positive integer"),
    (
        "prepare_shard_records_neg",
        ["prepare", "X", "--out", "S", "--shard-records", "-1"],
        "--shard-records",
        "positive integer",
    ),
    ("prepare_fs_0", ["prepare", "X", "--out", "S", "--fs", "0"], "--fs", "must be > 0"),
    ("prepare_fs_nan", ["prepare", "X", "--out", "S", "--fs", "nan"], "--fs", "not a finite number"),
    ("prepare_fs_text", ["prepare", "X", "--out", "S", "--fs", "fast"], "--fs", "'fast' is not a number"),
    (
        "pretrain_mask_prob_2",
        ["pretrain", "S", "--targets", "t", "--out", "R", "--mask-prob", "2"],
        "--mask-prob",
        r"must be in \(0, 1\]",
    ),
    (
        "evaluate_bootstrap_neg",
        ["evaluate", "M", "S", "--out", "E", "--bootstrap", "-5"],
        "--bootstrap",
        "must be >= 0",
    ),
    ("evaluate_n_crops_0", ["evaluate", "M", "S", "--out", "E", "--n-crops", "0"], "--n-crops", "positive integer"),
    ("evaluate_stride_0", ["evaluate", "M", "S", "--out", "E", "--stride", "0"], "--stride", "must be > 0"),
    (
        "finetune_batch_size_0",
        ["finetune", "S", "--init", "M", "--out", "R", "--batch-size", "0"],
        "--batch-size",
        "positive integer",
    ),
    ("finetune_lr_neg", ["finetune", "S", "--init", "M", "--out", "R", "--lr=-1e-4"], "--lr", "must be > 0"),
    ("finetune_dropout_1", ["finetune", "S", "--init", "M", "--out", "R", "--dropout", "1"], "--dropout", "below 1"),
    (
        "finetune_layer_decay_0",
        ["finetune", "S", "--init", "M", "--out", "R", "--layer-decay", "0"],
        "--layer-decay",
        r"must be in \(0, 1\]",
    ),
    ("finetune_warmup_1", ["finetune", "S", "--init", "M", "--out", "R", "--warmup", "1"], "--warmup", "below 1"),
    (
        "finetune_max_steps_0",
        ["finetune", "S", "--init", "M", "--out", "R", "--max-steps", "0"],
        "--max-steps",
        "positive integer",
    ),
    (
        "finetune_eval_crops_0",
        ["finetune", "S", "--init", "M", "--out", "R", "--eval-crops", "0"],
        "--eval-crops",
        "positive integer",
    ),
    ("finetune_seed_neg", ["finetune", "S", "--init", "M", "--out", "R", "--seed", "-3"], "--seed", "must be >= 0"),
    (
        "features_sample_fraction_0",
        ["features", "S", "--out", "F", "--sample-fraction", "0"],
        "--sample-fraction",
        r"must be in \(0, 1\]",
    ),
    ("cluster_k_0", ["cluster", "F", "--out", "K", "--k", "8", "0"], "--k", "positive integer"),
    ("embed_layer_neg", ["embed", "M", "X", "--out", "e.csv", "--layer", "-1"], "--layer", "must be >= 0"),
    ("export_opset_0", ["export", "M", "--out", "m.onnx", "--opset", "0"], "--opset", "positive integer"),
    (
        "datasets_min_count_0",
        ["datasets", "ptbxl", "--out", "D", "--min-count", "0"],
        "--min-count",
        "positive integer",
    ),
    (
        "batch_size_float",
        ["predict", "M", "X", "--out", "p.csv", "--batch-size", "2.5"],
        "--batch-size",
        "'2.5' is not an integer",
    ),
]


@pytest.mark.parametrize("name, argv, option, cause", OPTION_CASES, ids=[c[0] for c in OPTION_CASES])
def test_out_of_range_option_exits_2_at_parse_time(name, argv, option, cause, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, err = run(capsys, *argv)
    assert code == 2
    line = one_error_line(err)
    assert re.search(rf"argument {re.escape(option)}\b.*{cause}", line), line
    assert files_under(tmp_path) == []  # nothing created


def test_layer_beyond_the_model_is_refused_before_any_input_is_read(tiny_model, tmp_path, capsys):
    code, _, err = run(
        capsys,
        "embed",
        tiny_model,
        tmp_path / "does-not-exist.npy",
        "--layer",
        99,
        "--out",
        tmp_path / "e.csv",
        "--device",
        "cpu",
    )
    assert code == 1
    line = one_error_line(err)
    assert re.fullmatch(
        r"hubert-ecg: error: layer 99 does not exist: this model has hidden states 0\.\.\d+ "
        r"\(0 = encoder input, \d+ = last layer\)",
        line,
    ), line
    assert not (tmp_path / "e.csv").exists()


# ---------------------------------------------------------------------------------------------
# output paths: checked before any work
# ---------------------------------------------------------------------------------------------
def test_output_paths_are_checked_before_work(records, tiny_model, tmp_path, capsys):
    folder = tmp_path / "existing"
    folder.mkdir()
    a_file = tmp_path / "a.txt"
    a_file.write_text("mine")
    cases = [
        (
            ["predict", tiny_model, records, "--out", folder, "--fs", 500],
            rf"{folder}: is an existing folder; --out "
            "needs a file name",
        ),
        (
            ["predict", tiny_model, records, "--out", tmp_path / "p.json", "--fs", 500],
            r"p\.json: unknown extension '\.json' for --out; use \.csv or \.parquet",
        ),
        (
            ["embed", tiny_model, records, "--out", a_file / "e.csv", "--fs", 500],
            r"a\.txt/e\.csv: cannot write here \(Not a directory\): .*a\.txt is a file",
        ),
        (
            ["evaluate", tiny_model, tmp_path / "store", "--out", a_file],
            r"a\.txt: is an existing file; --out needs "
            "a folder",
        ),
        (["export", tiny_model, "--out", tmp_path / "model.txt"], r"unknown extension '\.txt' for --out; use \.onnx"),
        (
            ["prepare", records, "--out", a_file, "--fs", 500],
            r"a\.txt: cannot write here \(Not a directory\): it is "
            "a file",
        ),
    ]
    for argv, pattern in cases:
        code, _, err = (
            run(capsys, *argv, "--quiet") if argv[0] in ("predict", "embed", "prepare") else run(capsys, *argv)
        )
        assert code == 1, (argv, err)
        assert re.search(pattern, one_error_line(err)), (pattern, err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "existing"]  # nothing computed or written
    assert a_file.read_text() == "mine" and not list(folder.iterdir())


def test_prepare_refuses_a_folder_that_is_not_ours(records, tmp_path, capsys):
    theirs = tmp_path / "thesis"
    theirs.mkdir()
    (theirs / "chapter1.tex").write_text("precious")
    code, _, err = run(capsys, "prepare", records, "--out", theirs, "--fs", 500, "--quiet")
    assert code == 1
    assert re.search(
        r"thesis: exists and holds other files \(chapter1\.tex\) but no store\.json: not a store of "
        r"ours; give a new or empty folder",
        one_error_line(err),
    )
    assert [p.name for p in theirs.iterdir()] == ["chapter1.tex"]
    empty = tmp_path / "empty"
    empty.mkdir()
    code, _, err = run(capsys, "prepare", records, "--out", empty, "--fs", 500, "--quiet")
    assert code == 0, err


# ---------------------------------------------------------------------------------------------
# two writers, stale locks and temporary files, umask
# ---------------------------------------------------------------------------------------------
def test_second_writer_is_refused_and_a_stale_lock_is_taken_over(records, tmp_path, capsys):
    store = tmp_path / "store"
    store.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (store / ".lock").write_text(f"{holder.pid}\n")
        code, _, err = run(capsys, "prepare", records, "--out", store, "--fs", 500, "--quiet")
        assert code == 1
        assert re.search(rf"store: already in use by PID {holder.pid} \(lock file .*\.lock\)", one_error_line(err))
        assert sorted(p.name for p in store.iterdir()) == [".lock"]  # nothing written
    finally:
        holder.kill()
        holder.wait()
    # the holder is gone: its lock is stale, taken over, and released at the end
    (store / ".manifest.csv.abc123.tmp").write_text("half")  # left by a killed run
    code, out, err = run(capsys, "prepare", records, "--out", store, "--fs", 500, "--quiet")
    assert code == 0, err
    assert not (store / ".lock").exists() and not list(store.glob(".*.tmp"))
    assert "4 records" in out


def test_two_prepare_processes_on_one_store_never_mix(records, tmp_path):
    """Two real processes started together: one builds the store, the other is refused (or finds it done)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "hubert_ecg",
        "prepare",
        str(records),
        "--out",
        str(tmp_path / "s"),
        "--fs",
        "500",
        "--quiet",
    ]
    procs = [
        subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env) for _ in range(2)
    ]
    results = [(p.wait(timeout=180), p.stderr.read()) for p in procs]
    for code, err in results:
        assert "Traceback" not in err
        assert code == 0 or (code == 1 and "already in use by PID" in err), err
    from hubert_ecg.store import ECGStore

    assert len(ECGStore(tmp_path / "s").record_ids) == 4


@pytest.mark.parametrize("mask", [0o022, 0o002])
def test_outputs_follow_the_umask(mask, tmp_path):
    from hubert_ecg.atomic import atomic_write_text

    old = os.umask(mask)
    try:
        atomic_write_text(tmp_path / "x.txt", "hello")
    finally:
        os.umask(old)
    assert (tmp_path / "x.txt").stat().st_mode & 0o777 == 0o666 & ~mask


def test_store_files_are_not_private(records, tmp_path, capsys):
    old = os.umask(0o022)
    try:
        code, _, err = run(capsys, "prepare", records, "--out", tmp_path / "s", "--fs", 500, "--quiet")
    finally:
        os.umask(old)
    assert code == 0, err
    for name in ("store.json", "manifest.csv", "index.npz", "shards/00000.npy"):
        assert (tmp_path / "s" / name).stat().st_mode & 0o777 == 0o644, name


# ---------------------------------------------------------------------------------------------
# re-running prepare on a folder that changed
# ---------------------------------------------------------------------------------------------
def test_prepare_rerun_appends_new_records_and_reports_changes(tmp_path, capsys):
    data = tmp_path / "data"
    data.mkdir()
    rng = np.random.default_rng(1)
    for i in range(5):
        np.save(data / f"r{i}.npy", synthetic_record(rng, seconds=3.0).signal)
    args = ["prepare", data, "--out", tmp_path / "s", "--fs", 500, "--quiet", "--shard-records", 2]
    assert run(capsys, *args)[0] == 0
    first_shards = {p.name: p.read_bytes() for p in (tmp_path / "s" / "shards").glob("*.npy")}
    for i in range(5, 8):
        np.save(data / f"r{i}.npy", synthetic_record(rng, seconds=3.0).signal)
    code, out, err = run(capsys, *args)
    assert code == 0, err
    assert "3 new record(s) appended to the existing store" in out and "store " in out and "8 records" in out
    for name, data_bytes in first_shards.items():  # what was stored is untouched
        assert (tmp_path / "s" / "shards" / name).read_bytes() == data_bytes
    from hubert_ecg.store import ECGStore

    assert sorted(ECGStore(tmp_path / "s").record_ids.tolist()) == [f"r{i}" for i in range(8)]
    # one record changed, one vanished: reported, kept as stored
    np.save(data / "r1.npy", synthetic_record(rng, seconds=4.0).signal)
    (data / "r2.npy").unlink()
    code, out, err = run(capsys, *args)
    assert code == 0, err
    assert "1 stored record(s) no longer found in the inputs" in out
    assert "1 stored record(s) changed on disk since they were stored" in out
    with open(tmp_path / "s" / "changes.csv", newline="") as fh:
        changes = {Path(r["source"]).name: r["change"] for r in csv.DictReader(fh)}
    assert changes == {
        "r1.npy": "changed on disk since stored (kept as stored)",
        "r2.npy": "no longer found in the inputs (kept)",
    }


# ---------------------------------------------------------------------------------------------
# labels files
# ---------------------------------------------------------------------------------------------
def _labels_case(tmp_path: Path, name: str) -> tuple[Path, list[str]]:
    """Write one bad labels file; returns it and extra prepare options."""
    path = tmp_path / "labels.csv"
    ids = [f"r{i}" for i in range(4)]
    if name == "duplicated_column":
        path.write_text("record_id,a,b,a\n" + "".join(f"{i},1,0,1\n" for i in ids))
    elif name == "xlsx_named_csv":
        path.write_bytes(b"PK\x03\x04" + bytes(200))
    elif name == "binary_junk":
        path.write_bytes(bytes(range(256)) * 4)
    elif name == "not_utf8":
        path.write_bytes(b"record_id,a\n" + b"".join(f"{i},".encode() + b"\xe9t\xe9\n" for i in ids))
    elif name == "infinite_target":
        path.write_text("record_id,hr\n" + "".join(f"{i},{'inf' if i == 'r2' else 60}\n" for i in ids))
    elif name == "text_among_numbers":
        path.write_text("record_id,a\n" + "".join(f"{i},{'yes' if i == 'r3' else 1}\n" for i in ids))
    elif name == "unknown_split_values":
        path.write_text(
            "record_id,fold,a\n" + "".join(f"{i},{['train', 'eval', 'x', 'train'][j]},1\n" for j, i in enumerate(ids))
        )
        return path, ["--split-column", "fold"]
    elif name == "group_crosses_user_split":
        path.write_text(
            "record_id,split,patient,a\n"
            + "".join(f"{i},{['train', 'test'][j % 2]},p{j // 2},1\n" for j, i in enumerate(ids))
        )
        return path, ["--split-column", "split", "--group-column", "patient"]
    elif name == "missing_group_column":
        path.write_text("record_id,a\n" + "".join(f"{i},1\n" for i in ids))
        return path, ["--group-column", "patient_id", "--val-fraction", "0.5"]
    elif name == "empty_record_id":
        path.write_text("record_id,a\nr0,1\n,0\n")
    elif name == "folder_as_labels":
        path.mkdir()
    return path, []


LABEL_CASES = [
    ("duplicated_column", r"labels\.csv: column 'a' appears 2 times \(columns 2, 4\)"),
    ("xlsx_named_csv", r"labels\.csv: not a CSV file \(a zip archive, e\.g\. an Excel \.xlsx workbook\)"),
    ("binary_junk", r"labels\.csv: not a CSV file \(binary data\)"),
    ("not_utf8", r"labels\.csv: not UTF-8 text \(byte \d+: invalid continuation byte\)"),
    ("infinite_target", r"labels\.csv, row 4: column 'hr' is not a finite number \('inf'\)"),
    ("text_among_numbers", r"labels\.csv, row 5: column 'a' is not a number \('yes'\); a categorical column"),
    (
        "unknown_split_values",
        r"labels\.csv: column 'fold': split values 'eval', 'x' are not train/val/test "
        r"\(values found: 'eval', 'train', 'x'",
    ),
    ("group_crosses_user_split", r"labels\.csv: column 'split': group 'p0' has records in test and train"),
    ("missing_group_column", r"labels\.csv: no column 'patient_id' for --group-column \(columns: record_id, a\)"),
    ("empty_record_id", r"labels\.csv, row 3: empty record id in column 'record_id'"),
    ("folder_as_labels", r"labels\.csv: is a directory, not a labels CSV"),
]


@pytest.mark.parametrize("name, pattern", LABEL_CASES, ids=[c[0] for c in LABEL_CASES])
def test_bad_labels_file_is_one_line_and_no_store_is_created(name, pattern, records, tmp_path, capsys):
    path, extra = _labels_case(tmp_path, name)
    code, _, err = run(
        capsys, "prepare", records, "--out", tmp_path / "s", "--labels", path, "--fs", 500, "--quiet", *extra
    )
    assert code == 1
    assert re.search(pattern, one_error_line(err)), err
    assert not (tmp_path / "s").exists()


def test_bom_headers_and_nan_cells_are_read(records, tmp_path, capsys):
    (tmp_path / "labels.csv").write_bytes("\ufeffrecord_id,hr\nr0,60\nr1,nan\nr2,NA\nr3,72\n".encode("utf-8"))
    code, _, err = run(
        capsys, "prepare", records, "--out", tmp_path / "s", "--labels", tmp_path / "labels.csv", "--fs", 500, "--quiet"
    )
    assert code == 0, err
    from hubert_ecg.store import ECGStore

    store = ECGStore(tmp_path / "s")
    values = dict(zip(store.record_ids.tolist(), store.labels[:, 0].tolist()))
    assert values["r0"] == 60 and values["r3"] == 72 and np.isnan(values["r1"]) and np.isnan(values["r2"])
    utf16 = tmp_path / "u16.csv"
    utf16.write_bytes("record_id,hr\nr0,1\nr1,2\nr2,3\nr3,4\n".encode("utf-16"))
    from hubert_ecg.store import LabelTable

    assert LabelTable.from_csv(utf16).by_key["r3"].tolist() == [4.0]


# ---------------------------------------------------------------------------------------------
# pretrain-loop configs
# ---------------------------------------------------------------------------------------------
def _loop_store(tmp_path: Path) -> Path:
    import json

    store = tmp_path / "store"
    store.mkdir()
    (store / "store.json").write_text(json.dumps({"complete": True}))
    return store


CONFIG_CASES = [
    (
        "yaml_syntax",
        "loop.yaml",
        "store: s\nout: o\niterations: [\n",
        r"loop\.yaml: YAML syntax error at line \d+, "
        r"column \d+",
    ),
    ("toml_syntax", "loop.toml", "store = 's'\nout = \n", r"loop\.toml: TOML syntax error: .*line 2"),
    (
        "unknown_nested_key",
        "loop.yaml",
        {"iterations": [{"train": {"lrr": 0.1}}]},
        r"loop\.yaml: iterations\[1\]\.train\.lrr: unknown key \(allowed: .*lr",
    ),
    (
        "unknown_features_key",
        "loop.yaml",
        {"iterations": [{"features": {"kind": "tf", "layers": 3}}]},
        r"loop\.yaml: iterations\[1\]\.features\.layers: unknown key",
    ),
    (
        "wrong_type",
        "loop.yaml",
        {"iterations": [{"train": {"lr": "fast"}}]},
        r"loop\.yaml: iterations\[1\]\.train\.lr: expected a number, got 'fast'",
    ),
    (
        "bool_for_int",
        "loop.yaml",
        {"iterations": [{"train": {"max_steps": True}}]},
        r"iterations\[1\]\.train\.max_steps: expected an integer, got True",
    ),
    (
        "out_of_range",
        "loop.yaml",
        {"iterations": [{"kmeans": {"k": 1}}]},
        r"loop\.yaml: iterations\[1\]\.kmeans\.k: must be >= 2, got 1",
    ),
    (
        "bad_choice",
        "loop.yaml",
        {"iterations": [{"features": {"kind": "wavelets"}}]},
        r"iterations\[1\]\.features\.kind: 'wavelets' is not one of tf, mfcc, tf\+mfcc, hidden",
    ),
    (
        "iterations_not_list",
        "loop.yaml",
        {"iterations": {"name": "it1"}},
        r"loop\.yaml: iterations: expected a list, got \{'name': 'it1'\}",
    ),
    ("empty_iterations", "loop.yaml", {"iterations": []}, r"loop\.yaml: iterations: the list is empty"),
    (
        "unknown_model_field",
        "loop.yaml",
        {"model": {"hidden_sise": 8}, "iterations": [{}]},
        r"loop\.yaml: model\.hidden_sise: unknown model config field",
    ),
    (
        "missing_store",
        "loop.yaml",
        {"store": "nowhere", "iterations": [{}]},
        r"loop\.yaml: store: .*nowhere is not a prepared store \(no store\.json\)",
    ),
    (
        "layer_beyond_depth",
        "loop.yaml",
        {"size": "tiny", "iterations": [{}, {"features": {"kind": "hidden", "layer": 40}}]},
        r"loop\.yaml: iterations\[2\]\.features\.layer: 40 is beyond the model's \d+ layers",
    ),
]


@pytest.mark.parametrize("name, filename, content, pattern", CONFIG_CASES, ids=[c[0] for c in CONFIG_CASES])
def test_bad_loop_config_is_one_line_naming_file_and_key(name, filename, content, pattern, tmp_path, capsys):
    _loop_store(tmp_path)
    path = tmp_path / filename
    if isinstance(content, dict):
        path.write_text(yaml.safe_dump({"store": "store", "out": "out", **content}))
    else:
        path.write_text(content)
    code, _, err = run(capsys, "pretrain-loop", path, "--dry-run")
    assert code == 1
    assert re.search(pattern, one_error_line(err)), err
    assert not (tmp_path / "out").exists()


def test_dry_run_of_a_good_config_lists_the_stages(tmp_path, capsys, make_store):
    make_store(4, seconds=3.0, root=tmp_path, name="store")  # the dry run reads the store's preprocessing
    path = tmp_path / "loop.toml"
    path.write_text(
        'store = "store"\nout = "out"\nsize = "tiny"\n[[iterations]]\nname = "it1"\n[iterations.kmeans]\nk = 8\n'
    )
    code, out, err = run(capsys, "pretrain-loop", path, "--dry-run")
    assert code == 0, err
    assert "it1: features tf+mfcc, K=8" in out
