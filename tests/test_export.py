"""ONNX export: ONNX Runtime reproduces float32 PyTorch within 1e-4, batch axis free, heads exported."""

from __future__ import annotations

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
    assert list(got) == ["last_hidden_state", "pooled_embedding", "logits", "probabilities"]
    with torch.no_grad():
        ref = model(x, mask)
    valid = ref.token_mask.numpy()
    pooled = (ref.last_hidden_state * ref.token_mask[..., None]).sum(1) / ref.token_mask.sum(1, keepdim=True)
    np.testing.assert_allclose(got["pooled_embedding"], pooled.numpy(), atol=1e-4)  # padded tokens left out
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
    path = export_onnx(model, tmp_path / "small.onnx")
    x = _signals(3)
    got = _run(path, input_values=x)
    assert list(got) == ["last_hidden_state", "pooled_embedding"]
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


@pytest.mark.parametrize(
    "task, names",
    [
        ("multi_class", ["last_hidden_state", "pooled_embedding", "logits", "probabilities"]),
        ("regression", ["last_hidden_state", "pooled_embedding", "logits"]),
    ],
)
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
    with pytest.raises(
        ExportError,
        match=r"^.*short\.onnx: samples=50 is shorter than the conv stem's "
        r"receptive field \(82\)$",
    ):
        export_onnx(create_model("tiny"), tmp_path / "short.onnx", samples=50)


def test_metadata_carries_labels_thresholds_spec_task_and_version(tmp_path):
    import json

    import onnx

    import hubert_ecg
    from hubert_ecg.deploy import read_onnx_metadata
    from hubert_ecg.preprocess import PreprocessSpec

    model = create_model("tiny", head=HeadConfig(2))
    model.info.task, model.info.label_names, model.info.thresholds = "multi_label", ["AF", "LBBB"], [0.25, 0.6]
    model.info.preprocessing = PreprocessSpec.reference().to_dict()
    path = export_onnx(model, tmp_path / "m.onnx", verify=False)
    props = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert props["hubert_ecg.version"] == hubert_ecg.__version__ and props["hubert_ecg.task"] == "multi_label"
    assert json.loads(props["hubert_ecg.labels"]) == ["AF", "LBBB"]
    assert json.loads(props["hubert_ecg.thresholds"]) == [0.25, 0.6]
    assert PreprocessSpec.from_dict(json.loads(props["hubert_ecg.preprocessing"])) == PreprocessSpec.reference()
    meta = read_onnx_metadata(path)  # the same through onnxruntime, JSON decoded
    assert meta["labels"] == ["AF", "LBBB"] and meta["inputs"]["names"] == ["input_values"]
    assert meta["inputs"]["samples"] == 6000 and meta["inputs"]["leads"][:3] == ["I", "II", "III"]


@pytest.mark.slow  # two exports and five pipelines: ~5 s on an idle 2-core CPU
def test_numpy_deployment_reproduces_the_torch_pipeline(tmp_path):
    """OnnxECG (NumPy preprocessing + ONNX Runtime) gives the numbers of hubert_ecg.predict/embed."""
    import hubert_ecg
    from hubert_ecg.deploy import OnnxECG, onnx_inputs
    from hubert_ecg.pipeline import ECGPipeline

    torch.manual_seed(0)
    model = create_model("tiny", head=HeadConfig(3)).eval()
    model.info.task, model.info.label_names, model.info.thresholds = "multi_label", ["a", "b", "c"], [0.4, 0.5, 0.6]
    path = export_onnx(model, tmp_path / "m.onnx", with_mask=True, verify=False)
    rng = np.random.default_rng(0)
    deployed = OnnxECG(path)
    for signal, fs in ((rng.standard_normal((12, 6500)), 500), (rng.standard_normal((12, 2000)), 1000)):
        x, mask = onnx_inputs(signal, fs, deployed.metadata["preprocessing"])
        reference = ECGPipeline(model).prepare(signal, fs)
        np.testing.assert_array_equal(x, reference.x)
        np.testing.assert_array_equal(mask, reference.mask)
        np.testing.assert_allclose(deployed.embed(signal, fs), hubert_ecg.embed(model, signal, fs=fs), atol=1e-4)
        got, expected = deployed.predict(signal, fs), hubert_ecg.predict(model, signal, fs=fs)
        np.testing.assert_allclose(got["probabilities"], expected.probabilities, atol=1e-5)
        np.testing.assert_array_equal(got["decisions"], expected.decisions)
    no_mask = OnnxECG(export_onnx(model, tmp_path / "nomask.onnx", verify=False))
    with pytest.raises(ValueError, match="export it with --with-mask"):
        no_mask.embed(rng.standard_normal((12, 1000)), 500)


def test_deploy_module_does_not_import_torch():
    import subprocess
    import sys

    code = (
        "import sys, numpy as np\n"
        "from hubert_ecg.deploy import onnx_inputs\n"
        "x, m = onnx_inputs(np.random.default_rng(0).standard_normal((12, 5000)), 500)\n"
        "assert x.shape == (2, 6000) or x.shape == (1, 6000), x.shape\n"
        "print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"
