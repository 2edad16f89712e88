"""What users of transformers, NumPy/PyTorch and scikit-learn hand us: folders transformers saved
itself (sharded, half precision, with a classification head, sparse configs), and arrays in every
awkward shape and dtype. Each test pins one property: the same numbers, or a clear refusal."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import torch

import hubert_ecg
from hubert_ecg import create_model
from hubert_ecg.checkpoint import CheckpointError, load_model
from hubert_ecg.config import HeadConfig
from hubert_ecg.io import Record
from hubert_ecg.pipeline import ECGPipeline

transformers = pytest.importorskip("transformers")

X = torch.randn(2, 6000, generator=torch.Generator().manual_seed(0))
# A tiny 100 Hz geometry, unlike every named size, so nothing can fall back to a default.
TINY = dict(
    hidden_size=32,
    num_hidden_layers=3,
    num_attention_heads=2,
    intermediate_size=48,
    conv_dim=[16] * 5,
    conv_kernel=[10, 3, 3, 2, 2],
    conv_stride=[4, 2, 2, 2, 2],
    num_feat_extract_layers=5,
    num_conv_pos_embeddings=16,
    num_conv_pos_embedding_groups=4,
)


def _hf(cls_name: str = "HubertModel", seed: int = 0, **overrides):
    torch.manual_seed(seed)
    config = transformers.HubertConfig(**{**TINY, **overrides})
    return getattr(transformers, cls_name)(config).eval()


def _hidden(model, x: torch.Tensor = X) -> torch.Tensor:
    with torch.no_grad():
        return model(x).last_hidden_state.float()


# ---------------------------------------------------------------------------------------------
# Folders written by transformers' own save_pretrained
# ---------------------------------------------------------------------------------------------
def test_sharded_safetensors_folder_loads_equal_to_the_single_file(tmp_path):
    hf = _hf()
    hf.save_pretrained(tmp_path / "one")
    hf.save_pretrained(tmp_path / "sharded", max_shard_size="20KB")
    shards = sorted(p.name for p in (tmp_path / "sharded").glob("model-*.safetensors"))
    assert len(shards) > 1 and (tmp_path / "sharded" / "model.safetensors.index.json").exists()
    one, sharded = load_model(tmp_path / "one"), load_model(tmp_path / "sharded")
    torch.testing.assert_close(_hidden(sharded), _hidden(hf), atol=1e-4, rtol=0)
    torch.testing.assert_close(_hidden(sharded), _hidden(one), atol=0, rtol=0)
    # A lost shard is named, never silently left random.
    (tmp_path / "sharded" / shards[-1]).unlink()
    with pytest.raises(CheckpointError, match=rf"shard {shards[-1]} is missing"):
        load_model(tmp_path / "sharded")


def test_sharded_index_that_disagrees_with_its_shards_or_escapes_the_folder_is_refused(tmp_path):
    hf = _hf()
    d = tmp_path / "sharded"
    hf.save_pretrained(d, max_shard_size="20KB")
    index_file = d / "model.safetensors.index.json"
    index = json.loads(index_file.read_text())
    key, shard = next(iter(index["weight_map"].items()))
    moved = dict(index, weight_map={**index["weight_map"], key: "model-elsewhere.safetensors"})
    (d / "model-elsewhere.safetensors").write_bytes((d / shard).read_bytes())
    index_file.write_text(json.dumps(moved))
    with pytest.raises(CheckpointError, match=r"does not hold the tensors the index assigns"):
        load_model(d)
    index_file.write_text(json.dumps(dict(index, weight_map={**index["weight_map"], key: "../x.safetensors"})))
    with pytest.raises(CheckpointError, match=r"not a file name in this folder"):
        load_model(d)


def test_sharded_pytorch_bin_folder_loads(tmp_path):
    hf = _hf()
    d = tmp_path / "bin"
    hf.save_pretrained(d)
    (d / "model.safetensors").unlink()
    state = hf.state_dict()
    keys = sorted(state)
    parts = {"pytorch_model-00001-of-00002.bin": keys[::2], "pytorch_model-00002-of-00002.bin": keys[1::2]}
    for name, part in parts.items():
        torch.save({k: state[k] for k in part}, d / name)
    weight_map = {k: name for name, part in parts.items() for k in part}
    (d / "pytorch_model.bin.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    torch.testing.assert_close(_hidden(load_model(d)), _hidden(hf), atol=1e-4, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_folder_loads_as_float32_with_the_stored_values(tmp_path, dtype):
    hf = _hf().to(dtype)
    hf.save_pretrained(tmp_path / "half")
    ours = load_model(tmp_path / "half")
    assert all(p.dtype == torch.float32 for p in ours.parameters())
    upcast = _hf().to(dtype).float()  # same seed: the same weights, rounded to half and back
    torch.testing.assert_close(_hidden(ours), _hidden(upcast), atol=1e-4, rtol=0)


@pytest.mark.parametrize(
    "problem_type,num_labels,task",
    [
        (None, 3, "multi_class"),
        ("multi_label_classification", 3, "multi_label"),
        ("single_label_classification", 2, "multi_class"),
        (None, 1, "regression"),
    ],
)
def test_hubert_for_sequence_classification_keeps_its_logits_and_activation(tmp_path, problem_type, num_labels, task):
    labels = {str(i): f"class_{i}" for i in range(num_labels)}
    hf = _hf(
        "HubertForSequenceClassification",
        num_labels=num_labels,
        id2label=labels,
        label2id={v: int(k) for k, v in labels.items()},
        problem_type=problem_type,
        classifier_proj_size=8,
    )
    hf.save_pretrained(tmp_path / "cls")
    ours = load_model(tmp_path / "cls")
    assert ours.config.head is not None and ours.config.head.type == "linear"
    assert ours.info.task == task and ours.info.label_names == list(labels.values())
    with torch.no_grad():
        torch.testing.assert_close(ours(X).logits, hf(X).logits, atol=1e-5, rtol=0)


def test_weighted_layer_sum_head_is_refused_by_name(tmp_path):
    hf = _hf("HubertForSequenceClassification", num_labels=2, use_weighted_layer_sum=True)
    hf.save_pretrained(tmp_path / "cls")
    with pytest.raises(CheckpointError, match=r"use_weighted_layer_sum"):
        load_model(tmp_path / "cls")


def test_unknown_conv_stem_is_refused_not_assumed_100_hz(tmp_path):
    _hf(conv_stride=[5, 2, 2, 2, 2]).save_pretrained(tmp_path / "odd")
    with pytest.raises(CheckpointError, match=r"conv strides \[5, 2, 2, 2, 2\] match no known .*sampling rate"):
        load_model(tmp_path / "odd")


def test_fields_a_config_leaves_out_take_transformers_defaults(tmp_path):
    """transformers reads a missing field as HubertConfig's default (7-layer 500 Hz stem), so must we."""
    geometry = {k: v for k, v in TINY.items() if not k.startswith(("conv_", "num_feat"))}
    stem = {"conv_dim": [512] * 7, "conv_kernel": [10, 3, 3, 3, 3, 2, 2], "conv_stride": [5] + [2] * 6}
    hf = _hf(**geometry, **stem, num_feat_extract_layers=7)
    d = tmp_path / "sparse"
    hf.save_pretrained(d)
    config = json.loads((d / "config.json").read_text())
    for name in ("conv_dim", "conv_kernel", "conv_stride", "num_feat_extract_layers"):
        config.pop(name)
    (d / "config.json").write_text(json.dumps(config))
    ours = load_model(d)
    assert ours.config.input_rate_hz == 500 and ours.config.conv_stride == (5, 2, 2, 2, 2, 2, 2)
    x = torch.randn(1, 30000, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(_hidden(ours, x), _hidden(hf, x), atol=1e-4, rtol=0)


def test_impossible_config_is_a_checkpoint_error(tmp_path):
    d = tmp_path / "bad"
    _hf().save_pretrained(d)
    config = json.loads((d / "config.json").read_text())
    config["num_attention_heads"] = 5  # 32 is not divisible by 5
    (d / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"invalid model config .*not divisible"):
        load_model(d)


def test_our_model_with_a_head_goes_to_transformers_without_remote_code(tmp_path):
    ours = create_model("tiny", vocab_sizes=[5], head=HeadConfig(3)).eval()
    ours.info.label_names = ["a", "b", "c"]
    ours.save_pretrained(tmp_path / "m")
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert "auto_map" not in config and config["id2label"] == {"0": "a", "1": "b", "2": "c"}
    theirs = transformers.AutoModel.from_pretrained(tmp_path / "m", trust_remote_code=False).eval()
    torch.testing.assert_close(_hidden(theirs), _hidden(ours), atol=1e-4, rtol=0)
    back = load_model(tmp_path / "m")
    with torch.no_grad():
        torch.testing.assert_close(back(X).logits, ours(X).logits, atol=0, rtol=0)


# ---------------------------------------------------------------------------------------------
# Arrays in the Python API
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return create_model("tiny", head=HeadConfig(3)).eval()


@pytest.fixture(scope="module")
def record():
    return np.random.default_rng(0).standard_normal((12, 2500)).astype(np.float32)


def test_half_precision_tensors_give_the_float32_result(model, record):
    reference = hubert_ecg.embed(model, record.astype(np.float16).astype(np.float32), fs=500)
    for tensor in (torch.from_numpy(record).half(), torch.from_numpy(record.astype(np.float16)).float()):
        np.testing.assert_allclose(hubert_ecg.embed(model, tensor, fs=500), reference, atol=1e-6)
    bf16 = torch.from_numpy(record).bfloat16()
    np.testing.assert_allclose(
        hubert_ecg.embed(model, bf16, fs=500), hubert_ecg.embed(model, bf16.float().numpy(), fs=500), atol=1e-6
    )
    batch = hubert_ecg.embed(model, [bf16, torch.from_numpy(record[:, :2000])], fs=500)
    assert batch.shape == (2, model.config.hidden_size)


def test_nested_lists_are_one_record_and_ragged_rows_are_refused(model, record):
    np.testing.assert_allclose(
        hubert_ecg.embed(model, record.tolist(), fs=500), hubert_ecg.embed(model, record, fs=500), atol=1e-6
    )
    assert hubert_ecg.embed(model, [record.tolist(), record.tolist()], fs=500).shape == (2, model.config.hidden_size)
    with pytest.raises(ValueError, match=r"rows of different lengths"):
        hubert_ecg.embed(model, [row for row in record[:11]] + [record[11, :100]], fs=500)


@pytest.mark.parametrize("dtype", [bool, np.complex64, str])
def test_non_numeric_arrays_are_refused(model, record, dtype):
    with pytest.raises(ValueError, match=r"numeric .* got dtype"):
        hubert_ecg.embed(model, record.astype(dtype), fs=500)


def test_empty_batch_is_refused_by_name(model):
    with pytest.raises(ValueError, match=r"no records given"):
        hubert_ecg.embed(model, np.zeros((0, 12, 2500)), fs=500)


def test_samples_by_leads_with_lead_names_is_transposed_as_without(model, record):
    order = ["V6", "V5", "V4", "V3", "V2", "V1", "aVF", "aVL", "aVR", "III", "II", "I"]
    reordered = record[::-1]
    expected = hubert_ecg.embed(model, record, fs=500)
    np.testing.assert_allclose(hubert_ecg.embed(model, reordered.T, fs=500, leads=order), expected, atol=1e-6)
    np.testing.assert_allclose(hubert_ecg.embed(model, record.T, fs=500), expected, atol=1e-6)


def test_thresholds_nan_is_refused_and_an_array_is_accepted(model, record):
    with pytest.raises(ValueError, match=r"thresholds\[1\] is NaN"):
        ECGPipeline(model, thresholds=[0.5, float("nan"), 0.5])
    pred = hubert_ecg.predict(model, record, fs=500, thresholds=np.array([0.0, 1.1, 0.5]))
    assert pred.decisions[:2].tolist() == [1, 0]


# ---------------------------------------------------------------------------------------------
# scikit-learn
# ---------------------------------------------------------------------------------------------
def test_embedder_refuses_one_record_in_any_container(model, record):
    from hubert_ecg.sklearn import Embedder

    embedder = Embedder(model, fs=500)
    for one in (torch.from_numpy(record), record.tolist(), list(record)):
        with pytest.raises(ValueError, match=r"expected a batch|each record must be \(12, samples\)"):
            embedder.transform(one)
    out = embedder.transform([record])  # a list of one record stays a batch of one
    assert out.shape == (1, model.config.hidden_size)
    out = embedder.transform(torch.from_numpy(np.stack([record, record])).bfloat16())
    assert out.shape == (2, model.config.hidden_size) and out.dtype == np.float32


def test_embedder_takes_records_with_their_own_rate(model, record):
    from hubert_ecg.sklearn import Embedder

    records = [Record(signal=record, fs=500.0, record_id="a", source="mem", units="mV")]
    np.testing.assert_allclose(Embedder(model).transform(records), Embedder(model, fs=500).transform([record]))


def test_per_record_rates_that_do_not_follow_a_split_are_a_clear_error(model, record):
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_score
    from sklearn.pipeline import make_pipeline

    from hubert_ecg.sklearn import Embedder

    X = np.stack([record] * 4)
    with pytest.raises(ValueError, match=r"fs has 4 rates for 2 records"):
        Embedder(model, fs=[500] * 4).transform(X[:2])
    probe = make_pipeline(Embedder(model, fs=[500] * 4), LogisticRegression())
    with pytest.raises(ValueError, match=r"rates for 2 records"):
        cross_val_score(probe, X, [0, 1, 0, 1], cv=2, error_score="raise")


def test_embedder_pickles_and_clones_with_a_path(tmp_path, model, record):
    from sklearn.base import clone

    from hubert_ecg.sklearn import Embedder

    model.save_pretrained(tmp_path / "m")
    embedder = Embedder(str(tmp_path / "m"), fs=500, device="cpu").fit([record])
    assert embedder.n_features_out_ == model.config.hidden_size
    restored = pickle.loads(pickle.dumps(embedder))
    assert "_cache" not in restored.__dict__
    np.testing.assert_allclose(restored.transform([record]), embedder.transform([record]), atol=1e-6)
    np.testing.assert_allclose(clone(embedder).transform([record]), embedder.transform([record]), atol=1e-6)
    np.testing.assert_allclose(embedder.transform([record])[0], hubert_ecg.embed(model, record, fs=500), atol=1e-6)


def test_half_precision_model_saves_a_config_naming_its_dtype(tmp_path):
    half = create_model("tiny").eval().half()
    half.save_pretrained(tmp_path / "m")
    assert json.loads((tmp_path / "m" / "config.json").read_text())["torch_dtype"] == "float16"
    assert next(load_model(tmp_path / "m").parameters()).dtype == torch.float32


def test_hub_download_asks_for_every_file_of_a_sharded_repo(monkeypatch):
    pytest.importorskip("huggingface_hub")
    import fnmatch

    import huggingface_hub

    from hubert_ecg.hub import resolve_pretrained

    asked: list[list[str]] = []

    def snapshot_download(repo_id, revision=None, allow_patterns=None, local_files_only=False):
        asked.append(list(allow_patterns))
        raise OSError("offline")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    with pytest.raises(CheckpointError):
        resolve_pretrained("lab/sharded-model")
    files = [
        "config.json",
        "model.safetensors.index.json",
        "model-00001-of-00002.safetensors",
        "pytorch_model.bin.index.json",
        "pytorch_model-00002-of-00002.bin",
    ]
    assert asked and all(any(fnmatch.fnmatch(f, p) for p in asked[-1]) for f in files)


# ---------------------------------------------------------------------------------------------
# The NumPy-only ONNX runner
# ---------------------------------------------------------------------------------------------
def test_onnx_runner_feeds_a_fixed_batch_graph_in_chunks_and_names_a_length_mismatch(tmp_path, model):
    pytest.importorskip("onnxruntime")
    from hubert_ecg.deploy import OnnxECG
    from hubert_ecg.export import export_onnx

    signal = np.random.default_rng(3).standard_normal((12, 6 * 500 + 250))  # 6.5 s: 2 windows of 5 s
    fixed = OnnxECG(export_onnx(model, tmp_path / "fixed.onnx", batch_dynamic=False, verify=False))
    assert fixed._batch == 2
    for s in (signal, np.concatenate([signal, signal], axis=1)):  # 2 and 3 windows: exact and padded chunk
        np.testing.assert_allclose(fixed.embed(s, 500), hubert_ecg.embed(model, s, fs=500), atol=1e-4)
        np.testing.assert_allclose(
            fixed.predict(s, 500)["probabilities"], hubert_ecg.predict(model, s, fs=500).probabilities, atol=1e-5
        )
    short = OnnxECG(export_onnx(model, tmp_path / "short.onnx", samples=3000, verify=False))
    with pytest.raises(ValueError, match=r"takes windows of 3000 samples .* export it with --samples 6000"):
        short.embed(signal, 500)
    with pytest.raises(ValueError, match=r"aggregate must be"):
        OnnxECG(tmp_path / "fixed.onnx", aggregate="median")


def test_folder_re_saved_by_transformers_is_named_as_such_not_as_corrupt(tmp_path):
    ours = create_model("tiny", vocab_sizes=[5], head=HeadConfig(3)).eval()
    ours.save_pretrained(tmp_path / "ours")
    transformers.AutoModel.from_pretrained(tmp_path / "ours").save_pretrained(tmp_path / "resaved")
    with pytest.raises(CheckpointError, match=r"rewritten by another program .* delete the \"hubert_ecg\" key"):
        load_model(tmp_path / "resaved")
    config = json.loads((tmp_path / "resaved" / "config.json").read_text())
    del config["hubert_ecg"]
    (tmp_path / "resaved" / "config.json").write_text(json.dumps(config))
    encoder = load_model(tmp_path / "resaved")  # as the advice says: the encoder, equal to ours
    assert encoder.config.head is None
    torch.testing.assert_close(_hidden(encoder), _hidden(ours), atol=1e-5, rtol=0)


@pytest.mark.parametrize("device,fragment", [("foo", "is not a torch device"), ("auto", None)])
def test_load_model_device_names_are_checked_before_loading(tmp_path, device, fragment):
    create_model("tiny").save_pretrained(tmp_path / "m")
    if fragment is None:
        expected = "cuda" if torch.cuda.is_available() else "cpu"
        assert next(load_model(tmp_path / "m", device=device).parameters()).device.type == expected
        return
    with pytest.raises(ValueError, match=fragment):
        load_model(tmp_path / "m", device=device)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_cuda_without_cuda_is_a_one_line_error(tmp_path):
    create_model("tiny").save_pretrained(tmp_path / "m")
    with pytest.raises(ValueError, match=r"CUDA is not available here"):
        load_model(tmp_path / "m", device="cuda")


def test_embedder_has_no_default_rate(model, record):
    from hubert_ecg.sklearn import Embedder

    with pytest.raises(ValueError, match=r"needs the sampling rate .* fs=500"):
        Embedder(model).transform([record])
    assert Embedder(model).get_params()["fs"] is None


def test_a_dataframe_is_refused_with_the_conversion_to_use(model, record):
    pd = pytest.importorskip("pandas")
    names = ["I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6"]
    frame = pd.DataFrame(record.T, columns=names)
    with pytest.raises(TypeError, match=r"df.to_numpy\(\).T .* leads=list\(df.columns\)"):
        hubert_ecg.embed(model, frame, fs=500)
    np.testing.assert_allclose(
        hubert_ecg.embed(model, frame.to_numpy().T, fs=500, leads=list(frame.columns)),
        hubert_ecg.embed(model, record, fs=500),
        atol=1e-6,
    )


# ---------------------------------------------------------------------------------------------
# Stores through Parquet written by other tools
# ---------------------------------------------------------------------------------------------
def test_store_import_accepts_variable_length_signal_lists_of_one_shape(make_store, tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    from hubert_ecg.hf_datasets import export_store, import_store
    from hubert_ecg.store import ECGStore, StoreError

    store = ECGStore(make_store(4))
    table = pq.read_table(export_store(store, tmp_path / "rows.parquet"))
    nested = pa.array(table.column("signal").to_pylist(), pa.list_(pa.list_(pa.float32())))
    loose = table.set_column(table.column_names.index("signal"), "signal", nested)
    pq.write_table(loose, tmp_path / "loose.parquet")
    back = import_store(tmp_path / "loose.parquet", tmp_path / "back")
    np.testing.assert_array_equal(back.signals(np.arange(len(back))), store.signals(np.arange(len(store))))
    rows = nested.to_pylist()
    rows[1] = [lead[:-1] for lead in rows[1]]  # one row a sample short
    ragged = table.set_column(table.column_names.index("signal"), "signal", pa.array(rows))
    pq.write_table(ragged, tmp_path / "ragged.parquet")
    with pytest.raises(StoreError, match=r"one \(leads, samples\) shape in every row"):
        import_store(tmp_path / "ragged.parquet", tmp_path / "never")


def test_training_file_with_an_mlp_head_says_which_activation_it_assumes(tmp_path):
    from hf_reference import hf_config_dict

    src = create_model("tiny", head=HeadConfig(4, type="mlp", hidden_size=16)).eval()
    config = {k: v for k, v in hf_config_dict(src.config).items() if k not in ("vocab_sizes", "ensemble_length")}
    torch.save({"model_config": config, "model_state_dict": src.state_dict()}, tmp_path / "ft.pt")
    with pytest.warns(UserWarning, match=r"activation is not stored .* assuming 'tanh'"):
        loaded = load_model(tmp_path / "ft.pt")
    assert loaded.info.extra["assumed_head_activation"] == "tanh"
    with torch.no_grad():
        torch.testing.assert_close(loaded(X).logits, src(X).logits)
