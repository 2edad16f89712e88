"""The in-memory inference API: hubert_ecg.embed / hubert_ecg.predict / ECGPipeline on batches."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest
import torch

import hubert_ecg
from hubert_ecg import ECGPipeline, create_model
from hubert_ecg.config import CheckpointInfo, HeadConfig
from hubert_ecg.io import Record


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = create_model("tiny", head=HeadConfig(3))
    m.info = CheckpointInfo(task="multi_label", label_names=["a", "b", "c"], thresholds=[0.3, 0.5, 0.7])
    return m.eval()


@pytest.fixture(scope="module")
def signals():
    rng = np.random.default_rng(1)
    return rng.standard_normal((5, 12, 5000))  # 10 s at 500 Hz


class _CountCalls:
    def __init__(self, module: torch.nn.Module) -> None:
        self.calls, self.batch_sizes = 0, []
        self.handle = module.register_forward_hook(self)

    def __call__(self, module, args, output) -> None:
        self.calls += 1
        self.batch_sizes.append(args[0].shape[0])


def test_batch_embedding_equals_per_record_and_uses_one_forward_per_batch(model, signals):
    counter = _CountCalls(model)
    try:
        batch = hubert_ecg.embed(model, signals, fs=500, batch_size=64)
        assert counter.calls == 1 and counter.batch_sizes == [10]  # 5 records x 2 windows, one device batch
        single = np.stack([hubert_ecg.embed(model, s, fs=500) for s in signals])
        counter.calls, counter.batch_sizes = 0, []
        hubert_ecg.embed(model, signals, fs=500, batch_size=4)
        assert counter.batch_sizes == [4, 4, 2]  # windows of different records share batches
    finally:
        counter.handle.remove()
    assert batch.shape == (5, model.config.hidden_size) and batch.dtype == np.float32
    np.testing.assert_allclose(batch, single, atol=1e-5)
    assert not np.allclose(batch[0], batch[1])  # records are not mixed up


def test_mixed_rates_and_lengths_equal_per_record_results(model, signals):
    rng = np.random.default_rng(2)
    records = [signals[0], signals[1][:, :1500], rng.standard_normal((12, 14000)), rng.standard_normal((5000, 12))]
    rates = [500, 500, 1000, 500]
    batch = hubert_ecg.predict(model, records, fs=rates)
    assert batch.probabilities.shape == (4, 3) and list(batch.n_windows) == [2, 1, 3, 2]
    for i, (record, fs) in enumerate(zip(records, rates)):
        alone = hubert_ecg.predict(model, record, fs=fs)
        np.testing.assert_allclose(batch[i].probabilities, alone.probabilities, atol=1e-6)
        np.testing.assert_array_equal(batch[i].decisions, alone.decisions)
    # Record objects carry their own rate
    recs = [
        Record(signal=r.T if r.shape[0] != 12 else r, fs=f, record_id=str(i), source="mem", units="mV")
        for i, (r, f) in enumerate(zip(records, rates))
    ]
    np.testing.assert_allclose(hubert_ecg.predict(model, recs).probabilities, batch.probabilities, atol=1e-6)


def test_decisions_use_the_pipeline_thresholds(model, signals):
    pred = hubert_ecg.predict(model, signals, fs=500)
    np.testing.assert_array_equal(pred.decisions, (pred.probabilities >= [0.3, 0.5, 0.7]).astype(int))
    pipe = ECGPipeline(model, thresholds=[0.0, 1.1, 0.5])
    assert (pipe.predict(signals, fs=500).decisions[:, :2] == [1, 0]).all()
    frame = pred.to_pandas(ids=[f"r{i}" for i in range(5)])
    assert list(frame.columns) == ["p_a", "p_b", "p_c", "y_a", "y_b", "y_c"] and frame.index[0] == "r0"


def test_leads_argument_reorders_rows(model, signals):
    order = ["V6", "V5", "V4", "V3", "V2", "V1", "aVF", "aVL", "aVR", "III", "II", "I"]
    reversed_ = signals[:2, ::-1]
    np.testing.assert_allclose(
        hubert_ecg.embed(model, reversed_, fs=500, leads=order), hubert_ecg.embed(model, signals[:2], fs=500), atol=1e-6
    )


def test_engine_is_built_once_per_pipeline_and_not_stored_on_the_model(model, signals, monkeypatch):
    from hubert_ecg import fast_inference

    built = []
    real = fast_inference.optimise_for_inference

    def counting(*args, **kwargs):
        built.append(args[2])
        return real(*args, **kwargs)

    monkeypatch.setattr(fast_inference, "optimise_for_inference", counting)
    pipe = ECGPipeline(model, engine="int8")
    first = pipe.embed(signals[:2], fs=500)
    pipe.embed(signals[2:], fs=500)
    assert built == ["int8"]
    assert "_fast_runners" not in model.__dict__
    np.testing.assert_allclose(first, hubert_ecg.embed(model, signals[:2], fs=500), atol=0.1)


def test_bad_inputs_are_one_line_errors(model, signals):
    with pytest.raises(ValueError, match="pass the sampling rate"):
        hubert_ecg.embed(model, signals)
    with pytest.raises(ValueError, match="2 sampling rates for 3 records"):
        hubert_ecg.embed(model, list(signals[:3]), fs=[500, 500])
    with pytest.raises(ValueError, match=r"layer 9 does not exist: this model has hidden states 0..2"):
        hubert_ecg.embed(model, signals, fs=500, layer=9)
    with pytest.raises(ValueError, match="expected one record"):
        hubert_ecg.embed(model, signals[0, 0], fs=500)
    backbone = create_model("tiny")
    with pytest.raises(ValueError, match="no classification head"):
        hubert_ecg.predict(backbone, signals, fs=500)


def test_layer_and_tokens(model, signals):
    layer1 = hubert_ecg.embed(model, signals[:2], fs=500, layer=1)
    last = hubert_ecg.embed(model, signals[:2], fs=500)
    assert layer1.shape == last.shape and not np.allclose(layer1, last)
    tokens = hubert_ecg.embed(model, [signals[0], signals[1][:, :2500]], fs=500, tokens=True)
    assert [t.shape for t in tokens] == [(2, 93, 64), (1, 93, 64)]


def test_the_network_is_a_leaf_without_inference_methods():
    from hubert_ecg import model as model_module

    assert not hasattr(model_module.HubertECG, "predict") and not hasattr(model_module.HubertECG, "embed")
    tree = ast.parse(Path(model_module.__file__).read_text())
    imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
    assert not imported & {"inference", "pipeline", "evaluate", "fast_inference", "export"}
