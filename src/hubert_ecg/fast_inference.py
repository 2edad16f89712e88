"""Fast inference paths for CPU and GPU, each with a stated accuracy cost against float32 eager.

``optimise_for_inference(model, device, mode)`` returns a callable ``run(x, attention_mask=None)``
that maps (B, L) float32 windows (and an optional (B, L) bool sample mask) to a
:class:`~hubert_ecg.model.HubertECGOutput` whose tensors are float32 on ``device``:
``last_hidden_state`` (B, T, H), ``token_mask`` (B, T) or None, and for models with a head
``pooled`` (B, H) and ``logits`` (B, num_labels).

Modes (figures in ``benchmarks/RESULTS.md``):

=========  ==============================================================  ===========================
mode       what runs                                                       where
=========  ==============================================================  ===========================
eager      the model as is, float32, ``torch.inference_mode``              anywhere (the reference)
bf16       bf16 autocast (matmuls and convs in bf16, norms in float32)     CUDA; CPUs with AMX/AVX512-BF16
compile    ``torch.compile`` (inductor) of the float32 model               anywhere with a C++ compiler
int8       dynamic int8 quantisation of the transformer's Linear layers    CPU
onnx       ONNX Runtime on the exported float32 graph                      CPU (CUDA provider if present;
                                                                           ``providers`` says which ran)
auto       bf16 where the hardware runs it natively, else eager            anywhere
=========  ==============================================================  ===========================

``TOLERANCES[mode]`` is the largest abs difference of ``last_hidden_state`` and of the
probabilities from float32 eager that each mode is tested to stay within.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from .model import HubertECG, HubertECGOutput
from .runtime import bf16_is_native, exact_float32, resolve_device

MODES = ("auto", "eager", "bf16", "compile", "int8", "onnx")

# Max abs difference from float32 eager: (last_hidden_state, probabilities). Hidden states are
# LayerNorm outputs (unit scale), so these are relative errors too. bf16 keeps 8 mantissa bits
# (about 4e-3 relative per rounding); int8 rounds every activation row to 1/127 of its range.
TOLERANCES: dict[str, tuple[float, float]] = {
    "eager": (0.0, 0.0),
    "compile": (1e-3, 1e-4),
    "onnx": (1e-4, 1e-5),
    "bf16": (0.25, 0.02),
    "int8": (0.5, 0.05),
}


class FastInferenceError(ValueError):
    """A mode that cannot run here (unknown name, hardware or optional package missing)."""


def cpu_has_native_bf16() -> bool:
    """True on CPUs whose matmul units take bf16 directly (AMX tiles or AVX512-BF16), where bf16 pays."""
    probes = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
    for name in probes:
        probe = getattr(torch.cpu, name, None)
        if probe is not None and probe():
            return True
    return False


def auto_mode(device: torch.device) -> str:
    """The mode ``"auto"`` picks: bf16 on GPUs and CPUs that run it natively (compute capability >= 8.0;
    AMX / AVX512-BF16), else float32 eager (bf16 is emulated on a T4 or V100: slower and no gain)."""
    if device.type == "cuda":
        return "bf16" if bf16_is_native(device) else "eager"
    if device.type == "cpu" and cpu_has_native_bf16():
        return "bf16"
    return "eager"


@dataclass
class FastInference:
    """The callable :func:`optimise_for_inference` returns; ``mode`` is the resolved mode."""

    mode: str
    device: torch.device
    tolerance: tuple[float, float]
    _forward: Callable[[Tensor, Tensor | None], HubertECGOutput]
    providers: list[str] = field(default_factory=list)  # ONNX Runtime execution providers in use (onnx mode)
    _keepalive: list[Any] = field(default_factory=list, repr=False)  # e.g. the ONNX temp directory

    def __call__(
        self, input_values: Tensor | np.ndarray, attention_mask: Tensor | np.ndarray | None = None
    ) -> HubertECGOutput:
        """(B, L) windows [+ (B, L) bool mask] -> float32 outputs on ``device`` (see module docs)."""
        x = torch.as_tensor(input_values, dtype=torch.float32)
        if x.dim() != 2:
            raise ValueError(f"expected input of shape (batch, samples), got {tuple(x.shape)}")
        mask = None if attention_mask is None else torch.as_tensor(attention_mask).to(torch.bool)
        with torch.inference_mode():
            return self._forward(x, mask)


def optimise_for_inference(
    model: HubertECG, device: str | torch.device | None = "auto", mode: str = "auto", *, samples: int = 6000
) -> FastInference:
    """A fast inference callable for ``model`` on ``device`` (see the module docstring for modes).

    The model is put in eval mode and moved to ``device``; ``int8`` and ``onnx`` work on copies.
    ``samples`` is the window length the ONNX graph is traced at (other modes take any length).
    """
    if mode not in MODES:
        raise FastInferenceError(f"unknown inference mode {mode!r}; choose one of {', '.join(MODES)}")
    device = resolve_device(device)
    if mode == "auto":
        mode = auto_mode(device)
    if mode == "bf16" and device.type == "cpu" and not cpu_has_native_bf16():
        # Emulated bf16 on such CPUs is slower than float32 and less accurate.
        raise FastInferenceError("bf16 inference needs a CUDA device or a CPU with AMX or AVX512-BF16")
    if mode == "int8" and device.type != "cpu":
        raise FastInferenceError("int8 dynamic quantisation runs on CPU only; use bf16 on CUDA")
    model = model.eval().to(device)
    keepalive: list[Any] = []
    providers: list[str] = []
    if mode == "eager":  # float32 means float32: TF32 off for the call (see _torch_forward)
        forward = _torch_forward(model, device, autocast=False, exact=True)
    elif mode == "bf16":
        forward = _torch_forward(model, device, autocast=True)
    elif mode == "compile":
        forward = _torch_forward(torch.compile(model), device, autocast=False, exact=True)
    elif mode == "int8":
        forward = _torch_forward(quantise_linear_int8(model), device, autocast=False)
    else:
        forward, keepalive, providers = _onnx_forward(model, device, samples)
    return FastInference(
        mode=mode,
        device=device,
        tolerance=TOLERANCES[mode],
        _forward=forward,
        _keepalive=keepalive,
        providers=providers,
    )


def quantise_linear_int8(model: HubertECG) -> HubertECG:
    """A copy whose transformer Linear layers (attention, feed-forward, projection) run dynamic int8.

    Heads (classifier, codebook projections) stay float32: they are a tiny share of the work and
    their outputs are what users read. Conv layers stay float32 (dynamic quantisation has no conv).
    """
    from torch.ao.quantization import quantize_dynamic

    quantised = copy.deepcopy(model).cpu().eval()
    # Linear layers from the feature projection up to the last encoder layer, by module name.
    names = {
        name
        for name, module in quantised.named_modules()
        if isinstance(module, nn.Linear) and name.startswith(("encoder.", "feature_projection."))
    }
    engine = "x86" if "x86" in torch.backends.quantized.supported_engines else torch.backends.quantized.engine
    torch.backends.quantized.engine = engine
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao.quantization announces its move to torchao
        return quantize_dynamic(quantised, names, dtype=torch.qint8)


def _torch_forward(
    model: Callable[..., HubertECGOutput], device: torch.device, autocast: bool, exact: bool = False
) -> Callable[[Tensor, Tensor | None], HubertECGOutput]:
    import contextlib

    def forward(x: Tensor, mask: Tensor | None) -> HubertECGOutput:
        x = x.to(device, non_blocking=True)
        mask = None if mask is None else mask.to(device, non_blocking=True)
        # On a GPU, TF32 (cuDNN's default for convs) would round float32 inputs to 10 mantissa bits.
        fp32 = exact_float32() if exact and device.type == "cuda" else contextlib.nullcontext()
        with fp32, torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            out = model(x, mask)
        return _as_float32(out)

    return forward


def _as_float32(out: HubertECGOutput) -> HubertECGOutput:
    def f(t: Tensor | None) -> Tensor | None:
        return None if t is None else t.float()

    return HubertECGOutput(
        last_hidden_state=out.last_hidden_state.float(),
        token_mask=out.token_mask,
        pooled=f(out.pooled),
        logits=f(out.logits),
    )


def _onnx_forward(
    model: HubertECG, device: torch.device, samples: int
) -> tuple[Callable[[Tensor, Tensor | None], HubertECGOutput], list[Any], list[str]]:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        raise FastInferenceError("mode 'onnx' needs onnxruntime (pip install hubert-ecg[onnx])") from None
    from .export import export_to_temporary, onnx_session, output_names

    # The masked graph serves both cases (an all-true mask when none is given).
    directory = export_to_temporary(model, samples=samples, with_mask=True)
    session = onnx_session(f"{directory.name}/model.onnx", device)
    providers = list(session.get_providers())
    if device.type == "cuda" and "CUDAExecutionProvider" not in providers:
        import warnings

        warnings.warn(
            "mode 'onnx' on CUDA is running on the CPU: this onnxruntime has no CUDA provider "
            f"(providers: {', '.join(providers)}); install onnxruntime-gpu, or use mode bf16",
            stacklevel=3,
        )
    names = output_names(model)
    directory.cleanup()  # the session holds the graph in memory

    def forward(x: Tensor, mask: Tensor | None) -> HubertECGOutput:
        if x.shape[1] != samples:
            raise ValueError(f"the ONNX graph was traced for {samples} samples per window, got {x.shape[1]}")
        sample_mask = torch.ones(x.shape, dtype=torch.bool) if mask is None else mask.cpu()
        got = dict(
            zip(names, session.run(None, {"input_values": x.cpu().numpy(), "attention_mask": sample_mask.numpy()}))
        )
        hidden = torch.from_numpy(got["last_hidden_state"]).to(device)
        token_mask = None if mask is None else model.token_mask(mask.to(device))
        out = HubertECGOutput(last_hidden_state=hidden, token_mask=token_mask)
        if "logits" in got:
            out.logits = torch.from_numpy(got["logits"]).to(device)
            out.pooled = HubertECG.pool(hidden, token_mask)
        return out

    return forward, [], providers
