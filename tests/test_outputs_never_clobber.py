"""Outputs never overwrite inputs or a user's files, and a job's own outputs are never read back as inputs.

Found by writing outputs inside the input folder, as users do: `predict --out records/r1.csv` replaced an
ECG with the predictions (exit 0); a second `predict` into the input folder followed `pred.csv.skipped.csv`
as a manifest and failed; a second `prepare --out records/store` read the store's own shards as records.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from hubert_ecg.cli import main
from hubert_ecg.synthetic import synthetic_record

LEADS = ["I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch

    from hubert_ecg.checkpoint import save_pretrained
    from hubert_ecg.model import create_model
    from hubert_ecg.preprocess import PreprocessSpec

    torch.manual_seed(0)
    model = create_model("tiny", head={"num_labels": 1, "type": "linear"})
    model.info.task = "multi_label"
    model.info.label_names = ["af"]
    model.info.preprocessing = PreprocessSpec().to_dict()
    return save_pretrained(model, tmp_path_factory.mktemp("model") / "tiny")


def _records(folder: Path, fmt: str = "csv", n: int = 2) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        signal = synthetic_record(rng, seconds=3.0).signal
        path = folder / f"r{i}.{fmt}"
        if fmt == "csv":
            np.savetxt(path, signal.T, delimiter=",", header=",".join(LEADS), comments="", fmt="%.5f")
        else:
            np.save(path, signal)
        paths.append(path)
    return paths


def _one_line_error(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


@pytest.mark.parametrize(("command", "fmt"), [("predict", "csv"), ("embed", "csv"), ("embed", "npy")])
def test_an_output_over_an_input_record_is_refused_and_the_record_kept(
    model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], command: str, fmt: str
) -> None:
    records = _records(tmp_path / "records", fmt)
    before = records[1].read_bytes()
    code = main(
        [command, str(model_dir), str(tmp_path / "records"), "--fs", "500", "--out", str(records[1]), "--quiet"]
    )
    assert code == 1
    assert "was not written by hubert-ecg" in _one_line_error(capsys)  # the CLI checks before loading anything
    assert records[1].read_bytes() == before


def test_the_library_refuses_an_output_that_is_an_input_record(model_dir: Path, tmp_path: Path) -> None:
    from hubert_ecg.checkpoint import load_model
    from hubert_ecg.inference import predict_files

    records = _records(tmp_path / "records")
    before = records[0].read_bytes()
    with pytest.raises(ValueError, match="would overwrite the input record"):
        predict_files(load_model(model_dir), [str(records[0])], records[0], read_kwargs={"fs": 500.0}, progress=False)
    assert records[0].read_bytes() == before


def test_an_existing_file_that_is_not_ours_is_refused_but_our_own_output_is_replaced(
    model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _records(tmp_path / "records")
    theirs = tmp_path / "notes.csv"
    theirs.write_text("patient,comment\n1,fine\n")
    args = [str(model_dir), str(tmp_path / "records"), "--fs", "500", "--quiet", "--out"]
    assert main(["predict", *args, str(theirs)]) == 1
    assert "was not written by hubert-ecg" in _one_line_error(capsys)
    assert theirs.read_text() == "patient,comment\n1,fine\n"

    ours = tmp_path / "pred.csv"
    assert main(["predict", *args, str(ours)]) == 0
    first = ours.read_text()
    assert main(["predict", *args, str(ours)]) == 0  # a re-run replaces its own table
    assert ours.read_text() == first


def test_predicting_twice_into_the_input_folder_reads_the_same_records(
    model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "records"
    _records(folder)
    out = folder / "pred.csv"
    args = ["predict", str(model_dir), str(folder), "--fs", "500", "--quiet", "--out", str(out)]
    assert main(args) == 0
    first = out.read_text()
    assert main(args) == 0, capsys.readouterr().err
    assert out.read_text() == first  # the same two records, not our tables read as records or manifests
    with open(folder / "pred.csv.skipped.csv", newline="") as fh:
        skipped = {Path(r["path"]).name: r["reason"] for r in csv.DictReader(fh)}
    assert skipped["pred.csv"].startswith("a hubert-ecg output table")


def test_a_store_inside_its_input_folder_is_not_read_as_records(tmp_path: Path) -> None:
    from hubert_ecg.store import ECGStore, prepare_store

    folder = tmp_path / "records"
    _records(folder, "npy", n=3)
    for _ in range(2):
        result = prepare_store([folder], folder / "store", read_kwargs={"fs": 500.0}, progress=False)
    assert len(ECGStore(folder / "store")) == 3 and result.rejected == 0
    assert not any("appended" in note for note in result.notes)
    skipped = (folder / "store" / "skipped.csv").read_text()
    assert "a hubert-ecg store (folder not searched)" in skipped


def test_single_file_outputs_replace_only_their_own_earlier_versions(
    model_dir: Path, tmp_path: Path, make_store, capsys: pytest.CaptureFixture[str]
) -> None:
    """store-export (.parquet) and explain (.png): a user's file is refused, our own is replaced."""
    store = make_store(4, seconds=3.0)
    records = _records(tmp_path / "records")
    commands = {
        ".parquet": ["store-export", str(store), "--out"],
        ".png": ["explain", str(model_dir), str(records[0]), "--fs", "500", "--label", "af", "--out"],
    }
    for suffix, command in commands.items():
        theirs = tmp_path / f"theirs{suffix}"
        theirs.write_bytes(b"a user's file")
        assert main([*command, str(theirs)]) == 1
        assert "was not written by hubert-ecg" in _one_line_error(capsys)
        assert theirs.read_bytes() == b"a user's file"
        ours = tmp_path / f"ours{suffix}"
        assert main([*command, str(ours)]) == 0
        assert main([*command, str(ours)]) == 0, capsys.readouterr().err


def test_predict_labels_read_only_the_model_outputs(
    model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A labels CSV with a split and a patient column beside the truth column is fine for predict."""
    _records(tmp_path / "records")
    labels = tmp_path / "labels.csv"
    labels.write_text("record_id,split,patient_id,af\nr0,test,p1,1\nr1,train,p2,0\n")
    out = tmp_path / "pred.csv"
    args = ["predict", str(model_dir), str(tmp_path / "records"), "--fs", "500", "--quiet"]
    assert main([*args, "--labels", str(labels), "--out", str(out)]) == 0, capsys.readouterr().err
    with open(out, newline="") as fh:
        truth = {r["record_id"]: r["y_true_af"] for r in csv.DictReader(fh)}
    assert truth == {"r0": "1", "r1": "0"}


@pytest.mark.parametrize(
    ("markers", "kind"),
    [
        (["run.json"], "run folder"),
        (["config.json", "model.safetensors"], "model folder"),
        (["features.json"], "features folder"),
        (["sweep.json"], "k-means folder"),
    ],
)
def test_folder_walks_skip_every_kind_of_our_output_folder(tmp_path: Path, markers: list[str], kind: str) -> None:
    from hubert_ecg.io import InputAccount, discover_sources

    _records(tmp_path / "records", "npy", n=1)
    ours = tmp_path / "records" / "out"
    _records(ours, "npy", n=1)  # an array inside it must not be read as a record
    for name in markers:
        (ours / name).write_text("{}")
    account = InputAccount()
    sources = discover_sources([tmp_path / "records"], account=account)
    assert [Path(s.path).name for s in sources] == ["r0.npy"] and Path(sources[0].path).parent.name == "records"
    assert (str(ours), f"a hubert-ecg {kind} (folder not searched)") in account.skipped
    (ours / markers[-1]).unlink()  # without its marker it is the user's folder, and is searched
    assert len(discover_sources([tmp_path / "records"])) == 2


def test_written_by_us_recognises_onnx_and_npy_outputs_by_content(tmp_path: Path) -> None:
    from hubert_ecg.atomic import written_by_us

    ours, theirs = tmp_path / "ours.onnx", tmp_path / "theirs.onnx"
    ours.write_bytes(b"\x08\x07" + b"graph" * 1000 + b"hubert_ecg.version\x12\x050.1.0")
    theirs.write_bytes(b"\x08\x07" + b"graph" * 1000 + b"producer\x12pytorch")
    assert written_by_us(ours) and not written_by_us(theirs)
    np.save(tmp_path / "emb.npy", np.zeros((2, 4), np.float32))
    assert not written_by_us(tmp_path / "emb.npy")  # no ids table beside it: a user's array
    (tmp_path / "emb.ids.csv").write_text("record_id,source,seconds\nr0,a.npy,3\n")
    assert written_by_us(tmp_path / "emb.npy")
