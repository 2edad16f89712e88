"""Where and how a job runs: device choice, precision, autocast, backend flags, seeds, compile, optimizer groups.

One home for decisions every command makes the same way:

* :func:`resolve_device` -- ``"auto"`` -> ``cuda:{LOCAL_RANK}`` when CUDA is available, else CPU;
  under torchrun an explicit ``cuda:N`` is refused (every rank would share GPU N);
* :func:`precision_dtype` -- ``"auto"`` -> bf16 on GPUs with native bf16 (compute capability >= 8.0),
  fp16 (with a GradScaler) on older GPUs, float32 on CPU;
* :func:`autocast_context` -- a zero-argument factory of the autocast context for that dtype;
* :func:`configure_backends` -- ``cudnn.benchmark`` for fixed-shape steps unless deterministic, and
  TF32 off when float32 is asked for (an "exact float32" run must not round matmul inputs to 10 bits);
* :func:`seed_everything` -- identical CPU generators on every rank (layerdrop decisions must agree),
  a different CUDA generator per rank (dropout must not be identical on every GPU);
* :func:`compile_regions` -- regional ``torch.compile`` (per layer), which layerdrop cannot make recompile;
* :func:`param_groups` -- the optimizer groups of pre-training and fine-tuning, from the model's own
  declaration (:meth:`HubertECG.no_weight_decay`, :meth:`HubertECG.layer_id`), with one rule.
"""

from __future__ import annotations

import contextlib
import os
import random
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

if TYPE_CHECKING:  # runtime sits below the network: it only needs the model's methods
    from .model import HubertECG

PRECISIONS = ("auto", "bf16", "fp16", "fp32")


def _world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


def _local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0") or 0)


def resolve_device(requested: str | torch.device | None = "auto", *, local_rank: int | None = None) -> torch.device:
    """The device a process uses. ``"auto"``/None/``"cuda"`` -> ``cuda:{local_rank}`` when CUDA is available.

    ``local_rank`` defaults to ``$LOCAL_RANK`` (0 outside torchrun). Under torchrun (WORLD_SIZE > 1) an
    explicit ``cuda:N`` is refused: every rank would put its model on the same GPU.
    """
    rank = _local_rank() if local_rank is None else local_rank
    text = "auto" if requested is None else str(requested)
    if text == "auto":
        return torch.device("cuda", rank) if torch.cuda.is_available() else torch.device("cpu")
    device = torch.device(text)
    if device.type == "cuda":
        if device.index is not None and _world_size() > 1:
            raise ValueError(
                f"--device {text}: under torchrun every process picks its own GPU from LOCAL_RANK; "
                "use --device cuda or auto"
            )
        if device.index is None:
            device = torch.device("cuda", rank)
    return device


def bf16_is_native(device: torch.device) -> bool:
    """True on GPUs whose tensor cores run bf16 (compute capability >= 8.0: A100, H100, L4, RTX 30xx+)."""
    if device.type != "cuda":
        return False
    major, _ = torch.cuda.get_device_capability(device)
    return major >= 8


def precision_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """Autocast dtype for ``precision`` on ``device`` (None = plain float32).

    ``auto``: bf16 on GPUs with native bf16, fp16 on older GPUs (T4, V100: bf16 is emulated and slow
    there; fp16 runs with a GradScaler), float32 on CPU.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "fp32" or (precision == "auto" and device.type != "cuda"):
        return None
    if precision == "fp16":
        return torch.float16
    if precision == "auto" and not bf16_is_native(device):
        return torch.float16
    return torch.bfloat16


def autocast_context(device: torch.device, dtype: torch.dtype | None) -> Callable[[], AbstractContextManager[Any]]:
    """A zero-argument factory of the autocast context for ``dtype`` (a null context for float32)."""
    if dtype is None or device.type == "meta":
        return contextlib.nullcontext
    return lambda: torch.autocast(device_type=device.type, dtype=dtype)


def configure_backends(device: torch.device, dtype: torch.dtype | None, deterministic: bool) -> None:
    """Backend flags for a training or inference run on ``device``.

    ``cudnn.benchmark`` picks the fastest conv algorithms for the fixed window shapes (off when
    deterministic). In float32 runs TF32 is switched off for matmuls and cuDNN convs, so that
    ``--precision fp32`` really computes in float32; mixed precision leaves them to autocast.
    """
    if device.type != "cuda":
        return
    torch.backends.cudnn.benchmark = not deterministic
    if dtype is None:
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False


@contextlib.contextmanager
def exact_float32() -> Iterator[None]:
    """TF32 off (matmul and cuDNN) inside the block, the previous flags restored after it."""
    matmul, cudnn = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = matmul, cudnn


def seed_everything(seed: int, rank: int = 0, deterministic: bool = False) -> None:
    """Seed Python, NumPy and torch. CPU generators get ``seed`` on every rank (layerdrop decisions
    and anything else drawn on the CPU must agree across ranks); CUDA generators get ``seed + rank``
    so that dropout differs between GPUs, as it would within one large batch."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)  # also seeds every CUDA device with ``seed``
    if torch.cuda.is_available():
        torch.cuda.manual_seed(seed + rank)  # the current device only
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False


def compile_regions(model: HubertECG, **options: Any) -> HubertECG:
    """Regional compilation: each encoder layer, the stem and the projection compiled on their own.

    Compiling the whole model puts layerdrop's Python decisions inside the graph: a graph break and
    one recompilation per pattern of skipped layers until the recompile limit, after which it runs
    eager. Compiled per layer, the layer loop stays Python and every layer is one graph (the layers
    share their code, so they share the compiled artefact). Compiles in place; returns ``model``.
    """
    for layer in model.encoder.layers:
        layer.compile(**options)
    model.feature_projection.compile(**options)
    return model


# ---------------------------------------------------------------------------------------------
# Optimizer parameter groups
# ---------------------------------------------------------------------------------------------
def param_groups(
    model: HubertECG,
    lr: float,
    *,
    layer_decay: float = 1.0,
    weight_decay: float | None = None,
    head_lr_mult: float = 1.0,
) -> list[dict[str, Any]]:
    """AdamW groups for the trainable parameters of ``model``: one rule for pre-training and fine-tuning.

    LR by depth (:meth:`HubertECG.layer_id`: stem 0, embeddings 1, layer i -> i + 2, heads on top):
    the top transformer layer gets ``lr``, each level below ``layer_decay`` times the level above
    (layer i: ``lr * decay ** (N - 1 - i)``, embeddings ``lr * decay ** N``, stem ``lr * decay ** (N + 1)``
    for N layers), the heads ``lr * head_lr_mult``. Weight decay: 0 for the names in
    :meth:`HubertECG.no_weight_decay` (biases, norm weights, scalars, single vectors such as
    ``masked_spec_embed``), ``weight_decay`` (the optimizer's default when None) for the rest.
    Frozen parameters are left out. Each group carries its ``layer_id``.
    """
    if not 0 < layer_decay <= 1:
        raise ValueError(f"layer_decay must be in (0, 1], got {layer_decay}")
    no_decay = model.no_weight_decay()
    heads = model.num_layer_ids() - 1
    groups: dict[tuple[int, bool], list[nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            groups.setdefault((model.layer_id(name), name in no_decay), []).append(p)
    out = []
    for (layer, exempt), params in sorted(groups.items()):
        scale = layer_decay ** max(0, heads - 1 - layer) if layer < heads else head_lr_mult
        group: dict[str, Any] = {"params": params, "lr": lr * scale, "layer_id": layer}
        if exempt:
            group["weight_decay"] = 0.0
        elif weight_decay is not None:
            group["weight_decay"] = weight_decay
        out.append(group)
    return out
