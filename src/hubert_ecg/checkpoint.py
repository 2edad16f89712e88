"""Load any HuBERT-ECG checkpoint; save ours (the functional face of :mod:`hubert_ecg.hub`).

``load_model(path)`` accepts:

* our directory: HF-compatible ``config.json`` (``model_type: "hubert"`` + our keys under
  ``"hubert_ecg"``) or the earlier ``{"format": "hubert-ecg"}`` one, with ``model.safetensors``;
* a published Hugging Face directory (``model_type`` ``hubert_ecg`` or ``hubert``) with
  ``model.safetensors`` or ``pytorch_model.bin``, or shards with their ``*.index.json``, without
  running any remote code; a ``HubertForSequenceClassification`` head (projector + classifier) is
  folded into one linear layer with the same logits, its task taken from ``problem_type`` as
  transformers does; fields the config leaves out take ``HubertConfig``'s defaults;
* a published ``.pt`` training file (pre-trained or fine-tuned), after a container check, through a
  restricted unpickler (:mod:`hubert_ecg.safe_pickle`); a bare ``.safetensors`` state dict;
* a Hugging Face model id such as ``Edoardo-BS/hubert-ecg-small`` or ``owner/name@revision`` (local
  cache, or online when allowed).

Both weight-norm spellings (``weight_g/weight_v`` and ``parametrizations.weight.original0/1``)
are accepted; ``masked_spec_embed``, ``final_proj.*`` and ``label_embedding.*`` may be missing.
Codebook sizes and the fine-tuning head are read from the weights themselves, because published
configs can describe stale codebooks. Nothing in a file is ever executed, and weights that cannot
work (NaN/inf, wrong shapes, labels or thresholds that do not fit the head) are refused with the
tensor or key named (docs/RELIABILITY.md, "Checkpoint safety").
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .atomic import atomic_write_json
from .config import MODEL_SIZES, CheckpointInfo, ModelConfig
from .hub import (
    CONFIG_FILE,
    FORMAT_NAME,
    FORMAT_VERSION,
    WEIGHTS_FILE,
    CheckpointError,
    UnsafeCheckpointError,
    check_info,
    config_from_hf,
    config_from_state,
    infer_head,
    normalise_state_dict,
    read_config_json,
    write_model_card,
)
from .model import HubertECG

__all__ = [
    "CheckpointError",
    "UnsafeCheckpointError",
    "load_model",
    "save_pretrained",
    "build_from_state",
    "update_saved_info",
    "describe",
    "normalise_state_dict",
    "infer_head",
    "config_from_hf",
    "config_from_state",
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "CONFIG_FILE",
    "WEIGHTS_FILE",
]


def build_from_state(
    config: ModelConfig, state: Mapping[str, Tensor], source: str, info: CheckpointInfo | None = None
) -> HubertECG:
    """Build a model and load ``state`` with every check of :meth:`HubertECG.from_pretrained`."""
    return HubertECG._from_state(config, state, source, info)


def load_model(
    path: str | os.PathLike,
    *,
    device: str | torch.device | None = None,
    verify_checksum: bool = True,
    revision: str | None = None,
) -> HubertECG:
    """Load any accepted checkpoint and return the model in eval mode (masking only when asked for)."""
    return HubertECG.from_pretrained(path, revision=revision, device=device, verify_checksum=verify_checksum)


def save_pretrained(model: HubertECG, directory: str | os.PathLike, *, dtype: torch.dtype | None = None) -> Path:
    """``model.save_pretrained(directory)``: HF-compatible config, safetensors weights, model card."""
    return model.save_pretrained(directory, dtype=dtype)


def update_saved_info(directory: str | os.PathLike, **changes: Any) -> CheckpointInfo:
    """Change fields of a saved model's :class:`CheckpointInfo` (e.g. ``thresholds=[...]`` after tuning)
    without rewriting its weights; the config and the model card are rewritten atomically."""
    directory = Path(directory)
    config_json = read_config_json(directory)
    ours: dict[str, Any] = config_json["hubert_ecg"] if isinstance(config_json.get("hubert_ecg"), dict) else config_json
    if ours.get("format") != FORMAT_NAME:
        raise CheckpointError(f"{directory}: not a hubert-ecg model folder; cannot update its info")
    info = CheckpointInfo.from_dict({**(ours.get("info") or {}), **changes})
    config = ModelConfig.from_dict(ours["model"])
    check_info(config, info, str(directory))
    ours["info"] = info.to_dict()
    if "hubert_ecg" in config_json and config.head is not None and len(info.label_names) == config.head.num_labels:
        config_json["id2label"] = {str(i): n for i, n in enumerate(info.label_names)}
        config_json["label2id"] = {n: i for i, n in enumerate(info.label_names)}
    if (directory / "README.md").exists() or "hubert_ecg" in config_json:
        write_model_card(directory, config, info)
    atomic_write_json(directory / CONFIG_FILE, config_json)
    return info


def describe(model: HubertECG) -> dict[str, Any]:
    """Summary for ``hubert-ecg info``."""
    c = model.config
    size = next(
        (
            name
            for name, s in MODEL_SIZES.items()
            if s["hidden_size"] == c.hidden_size and s["num_hidden_layers"] == c.num_hidden_layers
        ),
        "custom",
    )
    head = c.head
    return {
        "size": size,
        "parameters": model.num_parameters(),
        "backbone_parameters": model.num_parameters(backbone_only=True),
        "hidden_size": c.hidden_size,
        "layers": c.num_hidden_layers,
        "attention_heads": c.num_attention_heads,
        "input_rate_hz": c.input_rate_hz,
        "tokens_per_5s_window": c.num_tokens(c.window_samples),
        "codebooks": list(c.vocab_sizes),
        "head": None
        if head is None
        else {"type": head.type, "num_labels": head.num_labels, "hidden_size": head.hidden_size},
        "task": model.info.task,
        "labels": model.info.label_names,
        "thresholds": model.info.thresholds,
        "preprocessing": model.info.preprocessing,
        "license": model.info.extra.get("license"),
        "base_model": model.info.extra.get("base_model"),
        "source": model.info.source,
    }
