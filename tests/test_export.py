"""ONNX export: ONNX Runtime reproduces float32 PyTorch within 1e-4, batch axis free, heads exported."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from hubert_ecg.config import HeadConfig
from hubert_ecg.export import ExportError, export_onnx, onnx_session
from hubert_ecg.model import create_model

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")


def _signals(batch: int, samples: int = 6000, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, samples, generator=torch.Generator().manual_seed(seed))


def _run(path, **feeds):
    session = onnx_session(path)
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(None, {k: v.numpy() for k, v in feeds.items()})))


def test_tiny_with_head_and_mask_matches_pytorch_at_another_batch_size(tmp_path):
    torch.manual_seed(0)
    model = create_model("tiny", head=HeadConfig(3)).eval()
    path = export_onnx(model, tmp_path / "tiny.onnx", with_mask=True)
    assert path == tmp_path / "tiny.onnx" and path.is_file()
    # Traced at batch 2; run at batch 5 with two padded records.
    x = _signals(5)
    mask = torch.ones(5, 6000, dtype=torch.bool)
    mask[1, 4000:] = False
    mask[3, 1500:] = False
    got = _run(path, input_values=x, attention_mask=mask)
    assert list(got) == ["last_hidden_state", "logits", "probabilities"]
    with torch.no_grad():
        ref = model(x, mask)
    valid = ref.token_mask.numpy()
    assert np.abs(got["last_hidden_state"] - ref.last_hidden_state.numpy())[valid].max() <= 1e-4
    assert np.abs(got["logits"] - ref.logits.numpy()).max() <= 1e-4
    np.testing.assert_allclose(got["probabilities"], torch.sigmoid(ref.logits).numpy(), atol=1e-5)
    assert model.training is False  # export leaves the caller's model as it was


def test_export_keeps_the_callers_train_mode(tmp_path):
    model = create_model("tiny").train()
    export_onnx(model, tmp_path / "m.onnx")
    assert model.training and all(m.training for m in model.modules())


def test_small_without_mask_within_1e4(tmp_path):
    torch.manual_seed(0)
    model = create_model("small").eval()
    start = time.perf_counter()
    path = export_onnx(model, tmp_path / "small.onnx")
    assert time.perf_counter() - start < 20
    x = _signals(3)
    got = _run(path, input_values=x)
    assert list(got) == ["last_hidden_state"]
    with torch.no_grad():
        ref = model(x).last_hidden_state.numpy()
    assert got["last_hidden_state"].shape == (3, 93, 512)
    assert np.abs(got["last_hidden_state"] - ref).max() <= 1e-4


def test_fixed_batch_graph_declares_its_batch_size(tmp_path):
    model = create_model("tiny")
    path = export_onnx(model, tmp_path / "fixed.onnx", batch_dynamic=False, samples=3000)
    session = onnx_session(path)
    assert session.get_inputs()[0].shape == [2, 3000]
    dynamic_path = export_onnx(model, tmp_path / "dyn.onnx", samples=3000)
    assert onnx_session(dynamic_path).get_inputs()[0].shape == ["batch", 3000]
    assert _run(dynamic_path, input_values=_signals(4, 3000))["last_hidden_state"].shape == (4, 46, 64)


@pytest.mark.parametrize("task, names", [("multi_class", ["last_hidden_state", "logits", "probabilities"]),
                                         ("regression", ["last_hidden_state", "logits"])])
def test_probabilities_follow_the_task(tmp_path, task, names):
    torch.manual_seed(0)
    model = create_model("tiny", head=HeadConfig(4, type="mlp", hidden_size=8)).eval()
    model.info.task = task
    got = _run(export_onnx(model, tmp_path / f"{task}.onnx"), input_values=_signals(3))
    assert list(got) == names
    if task == "multi_class":
        with torch.no_grad():
            expected = model(_signals(3)).logits.softmax(-1).numpy()
        np.testing.assert_allclose(got["probabilities"], expected, atol=1e-5)
        np.testing.assert_allclose(got["probabilities"].sum(-1), 1.0, atol=1e-5)


def test_too_short_input_is_refused(tmp_path):
    with pytest.raises(ExportError, match=r"^.*short\.onnx: samples=50 is shorter than the conv stem's "
                                          r"receptive field \(82\)$"):
        export_onnx(create_model("tiny"), tmp_path / "short.onnx", samples=50)
