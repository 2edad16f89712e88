"""Output tables of predict/embed: Parquet list column, .npy + ids, y_true beside the predictions."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch

import hubert_ecg
from hubert_ecg import create_model
from hubert_ecg.config import CheckpointInfo, HeadConfig
from hubert_ecg.inference import predict_files, read_embeddings
from hubert_ecg.store import LabelTable


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    root = tmp_path_factory.mktemp("records")
    rng = np.random.default_rng(0)
    signals = {}
    for i in range(4):
        signals[f"r{i}"] = rng.standard_normal((12, 2500 + 500 * i))
        np.save(root / f"r{i}.npy", signals[f"r{i}"])
    return root, signals


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = create_model("tiny", head=HeadConfig(2))
    m.info = CheckpointInfo(task="multi_label", label_names=["af", "lbbb"], thresholds=[0.5, 0.5])
    return m.eval()


def test_parquet_embeddings_are_one_float32_list_column(records, model, tmp_path):
    pq = pytest.importorskip("pyarrow.parquet")
    import pyarrow as pa

    root, signals = records
    out = tmp_path / "emb.parquet"
    summary = predict_files(model, [str(root)], out, mode="embed", read_kwargs={"fs": 500.0}, progress=False)
    assert summary.written == 4
    table = pq.read_table(out)
    assert table.column_names == ["record_id", "source", "seconds", "missing_leads", "embedding"]
    assert table.schema.field("embedding").type == pa.list_(pa.float32(), model.config.hidden_size)
    ids, matrix = read_embeddings(out)
    expected = hubert_ecg.embed(model, [signals[i] for i in ids], fs=500)
    np.testing.assert_allclose(matrix, expected, atol=1e-5)


def test_npy_embeddings_with_ids_beside_them(records, model, tmp_path):
    root, signals = records
    out = tmp_path / "emb.npy"
    predict_files(model, [str(root)], out, mode="embed", read_kwargs={"fs": 500.0}, progress=False)
    matrix = np.load(out)
    assert matrix.dtype == np.float32 and matrix.shape == (4, model.config.hidden_size)
    with open(tmp_path / "emb.ids.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["record_id"] for r in rows] == ["r0", "r1", "r2", "r3"] and rows[3]["seconds"] == "8"
    np.testing.assert_allclose(
        matrix, hubert_ecg.embed(model, [signals[r["record_id"]] for r in rows], fs=500), atol=1e-5
    )
    with pytest.raises(ValueError, match=r"\.npy output holds embeddings only"):
        predict_files(model, [str(root)], tmp_path / "p.npy", read_kwargs={"fs": 500.0}, progress=False)
    with pytest.raises(ValueError, match=r"unsupported output format '\.txt'"):
        predict_files(model, [str(root)], tmp_path / "p.txt", read_kwargs={"fs": 500.0}, progress=False)


def test_predictions_carry_y_true_when_labels_are_known(records, model, tmp_path):
    root, signals = records
    labels_csv = tmp_path / "labels.csv"
    labels_csv.write_text("record_id,lbbb,af,other\nr0,1,0,5\nr1,0,1,5\nr3,1,,5\n")  # r2 unlabelled, r3 af blank
    labels = LabelTable.from_csv(labels_csv)
    out = tmp_path / "pred.csv"
    predict_files(model, [str(root)], out, read_kwargs={"fs": 500.0}, progress=False, labels=labels)
    with open(out, newline="") as fh:
        rows = {r["record_id"]: r for r in csv.DictReader(fh)}
    assert list(rows["r0"])[-2:] == ["y_true_af", "y_true_lbbb"]
    assert (rows["r0"]["y_true_af"], rows["r0"]["y_true_lbbb"]) == ("0", "1")  # matched by name, not position
    assert (rows["r2"]["y_true_af"], rows["r2"]["y_true_lbbb"]) == ("", "")
    assert (rows["r3"]["y_true_af"], rows["r3"]["y_true_lbbb"]) == ("", "1")
    expected = hubert_ecg.predict(model, signals["r1"], fs=500)
    assert float(rows["r1"]["p_af"]) == pytest.approx(float(expected.probabilities[0]), abs=1e-6)
    assert int(rows["r1"]["y_af"]) == int(expected.decisions[0])
    wrong = LabelTable.from_csv(labels_csv, label_columns=["other"])
    with pytest.raises(ValueError, match=r"labels table has no column for the model's output\(s\) af, lbbb"):
        predict_files(model, [str(root)], tmp_path / "p2.csv", read_kwargs={"fs": 500.0}, progress=False, labels=wrong)


def test_embed_files_returns_ids_and_the_matrix_and_warns_about_rejects(records, model, tmp_path):
    root, signals = records
    (tmp_path / "data").mkdir()
    for name in ("r0", "r3"):
        np.save(tmp_path / "data" / f"{name}.npy", signals[name])
    np.save(tmp_path / "data" / "short.npy", signals["r0"][:, :400])  # 0.8 s: below the 1.5 s minimum
    with pytest.warns(UserWarning, match=r"1 record\(s\) left out; first: .*short\.npy: .*minimum is 1\.5 s"):
        ids, matrix = hubert_ecg.embed_files(model, str(tmp_path / "data"), read_kwargs={"fs": 500.0})
    assert ids == ["r0", "r3"] and matrix.dtype == np.float32
    np.testing.assert_allclose(matrix, hubert_ecg.embed(model, [signals["r0"], signals["r3"]], fs=500), atol=1e-5)
