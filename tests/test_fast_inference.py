"""Fast inference modes stay within their stated tolerance of float32 eager; the fast conv stem is exact."""

from __future__ import annotations

import pytest
import torch

from hubert_ecg import fast_inference
from hubert_ecg.config import HeadConfig
from hubert_ecg.fast_inference import TOLERANCES, FastInferenceError, cpu_has_native_bf16, optimise_for_inference
from hubert_ecg.model import HubertECG, create_model


def _batch(batch: int = 3, samples: int = 6000) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.randn(batch, samples, generator=torch.Generator().manual_seed(3))
    mask = torch.ones(batch, samples, dtype=torch.bool)
    mask[-1, samples // 2 :] = False  # one padded record
    return x, mask


def _reference_conv_chain(model: HubertECG, x: torch.Tensor) -> torch.Tensor:
    """The plain Conv1d -> GroupNorm -> GELU chain the fast stem replaces. (B, L) -> (B, T, C)."""
    h = x.unsqueeze(1)
    for layer in model.feature_extractor.conv_layers:
        h = layer(h)
    return h.transpose(1, 2)


@pytest.mark.parametrize("rate", [100, 500, 50])
@pytest.mark.parametrize("conv_bias", [False, True])
def test_fast_stem_equals_conv_chain_values_and_gradients(rate, conv_bias):
    torch.manual_seed(0)
    model = create_model("tiny", input_rate_hz=rate, conv_bias=conv_bias)
    for layer in model.feature_extractor.conv_layers:  # non-trivial norm affine and biases
        if layer.layer_norm is not None:
            torch.nn.init.normal_(layer.layer_norm.weight, 1.0, 0.2)
            torch.nn.init.normal_(layer.layer_norm.bias, 0.0, 0.2)
        if layer.conv.bias is not None:
            torch.nn.init.normal_(layer.conv.bias, 0.0, 0.2)
    # A DC offset tests that the folded GroupNorm does not cancel catastrophically.
    x = (torch.randn(2, 12 * 5 * rate) * 2 + 5).requires_grad_()
    fast = model.feature_extractor.time_major(x)
    slow = _reference_conv_chain(model, x)
    assert fast.shape == slow.shape == (2, 93, 64)
    torch.testing.assert_close(fast, slow, atol=2e-5, rtol=1e-4)
    # The first conv's bias cancels in its GroupNorm: the fast stem leaves it unused, and the model freezes it.
    assert all(
        p.requires_grad != (n == "conv_layers.0.conv.bias") for n, p in model.feature_extractor.named_parameters()
    )
    inputs = [x, *(p for p in model.feature_extractor.parameters() if p.requires_grad)]
    g_fast = torch.autograd.grad(fast.square().sum(), inputs, allow_unused=True, materialize_grads=True)
    g_slow = torch.autograd.grad(slow.square().sum(), inputs)
    for a, b in zip(g_fast, g_slow):
        torch.testing.assert_close(a, b, atol=1e-3, rtol=1e-3)
    torch.testing.assert_close(model.feature_extractor(x), slow.transpose(1, 2), atol=2e-5, rtol=1e-4)


def _check_mode(model: HubertECG, mode: str, x: torch.Tensor, mask: torch.Tensor) -> None:
    with torch.inference_mode():
        ref = model.eval()(x, mask)
    run = optimise_for_inference(model, "cpu", mode)
    assert run.mode == mode and run.tolerance == TOLERANCES[mode]
    got = run(x, mask)
    hidden_tol, prob_tol = TOLERANCES[mode]
    valid = ref.token_mask
    assert got.last_hidden_state.dtype == torch.float32
    assert torch.equal(got.token_mask, valid)
    assert (got.last_hidden_state - ref.last_hidden_state)[valid].abs().max().item() <= max(hidden_tol, 1e-6)
    prob_diff = (torch.sigmoid(got.logits) - torch.sigmoid(ref.logits)).abs().max().item()
    assert prob_diff <= max(prob_tol, 1e-7)
    pooled_ref = HubertECG.pool(got.last_hidden_state, valid)  # bf16 pools before its float32 cast
    assert (got.pooled - pooled_ref).abs().max().item() <= max(hidden_tol, 1e-6)


def _modes() -> list:
    marks = {
        "bf16": pytest.mark.skipif(not cpu_has_native_bf16(), reason="CPU without AMX/AVX512-BF16"),
        "compile": pytest.mark.slow,
    }  # inductor needs about a minute to compile on two cores
    return [pytest.param(m, marks=marks.get(m, ())) for m in ("eager", "bf16", "int8", "onnx", "compile")]


@pytest.mark.parametrize("mode", _modes())
def test_modes_within_tolerance_on_tiny_with_head(mode):
    if mode == "onnx":
        pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    model = create_model("tiny", head=HeadConfig(5))
    torch.nn.init.normal_(model.classifier.weight, 0.0, 0.5)  # spread-out probabilities
    _check_mode(model, mode, *_batch())


@pytest.mark.parametrize("mode", [m for m in _modes() if m.values[0] in ("bf16", "int8")])
def test_lossy_modes_within_tolerance_on_small(mode):
    # Errors grow with width and depth: the tolerance must hold on a published size too.
    torch.manual_seed(0)
    model = create_model("small", head=HeadConfig(5))
    torch.nn.init.normal_(model.classifier.weight, 0.0, 0.5)
    _check_mode(model, mode, *_batch(2))


def test_eager_mode_is_the_model_itself():
    model = create_model("tiny", head=HeadConfig(2)).train()
    x, mask = _batch()
    run = optimise_for_inference(model, "cpu", "eager")
    assert not model.training  # dropout off
    with torch.no_grad():
        ref = model(x, mask)
    got = run(x.numpy(), mask.numpy())  # NumPy input is accepted too
    assert torch.equal(got.last_hidden_state, ref.last_hidden_state) and torch.equal(got.logits, ref.logits)


def test_auto_picks_bf16_only_with_native_support(monkeypatch):
    model = create_model("tiny")
    monkeypatch.setattr(fast_inference, "cpu_has_native_bf16", lambda: False)
    assert optimise_for_inference(model, "cpu", "auto").mode == "eager"
    with pytest.raises(
        FastInferenceError, match="^bf16 inference needs a CUDA device or a CPU with AMX or AVX512-BF16$"
    ):
        optimise_for_inference(model, "cpu", "bf16")
    monkeypatch.setattr(fast_inference, "cpu_has_native_bf16", lambda: True)
    assert optimise_for_inference(model, "cpu", "auto").mode == "bf16"


def test_bad_requests_are_refused():
    model = create_model("tiny")
    with pytest.raises(
        FastInferenceError,
        match="^unknown inference mode 'fast'; choose one of auto, eager, bf16, compile, int8, onnx$",
    ):
        optimise_for_inference(model, "cpu", "fast")
    with pytest.raises(FastInferenceError, match="^int8 dynamic quantisation runs on CPU only; use bf16 on CUDA$"):
        optimise_for_inference(model, "cuda", "int8")
    with pytest.raises(ValueError, match=r"^expected input of shape \(batch, samples\), got \(6000,\)$"):
        optimise_for_inference(model, "cpu", "eager")(torch.zeros(6000))


def test_int8_quantises_only_the_transformer_linears():
    model = create_model("tiny", head=HeadConfig(2), vocab_sizes=[4])
    quantised = fast_inference.quantise_linear_int8(model)
    kinds = {name: type(module).__name__ for name, module in quantised.named_modules()}
    assert "quantized" in type(quantised.encoder.layers[0].attention.q_proj).__module__
    assert "quantized" in type(quantised.feature_projection.projection).__module__
    assert kinds["classifier"] == "Linear" and kinds["final_proj.0"] == "Linear"
    assert type(model.encoder.layers[0].attention.q_proj) is torch.nn.Linear  # the original is untouched


def test_onnx_mode_refuses_other_lengths():
    pytest.importorskip("onnxruntime")
    run = optimise_for_inference(create_model("tiny"), "cpu", "onnx", samples=3000)
    assert run(torch.zeros(2, 3000)).last_hidden_state.shape == (2, 46, 64)
    with pytest.raises(ValueError, match="^the ONNX graph was traced for 3000 samples per window, got 6000$"):
        run(torch.zeros(2, 6000))
