"""Load any HuBERT-ECG checkpoint; save our own format.

``load_model(path)`` accepts:

* our directory: ``config.json`` (``"format": "hubert-ecg"``) + ``model.safetensors``;
* a published Hugging Face directory (``model_type`` ``hubert_ecg`` or ``hubert``) with
  ``model.safetensors`` or ``pytorch_model.bin``, without running any remote code;
* a published ``.pt`` training file (pre-trained or fine-tuned), through a restricted unpickler;
* a Hugging Face model id such as ``Edoardo-BS/hubert-ecg-small`` (local cache, or online when allowed).

Both weight-norm spellings (``weight_g/weight_v`` and ``parametrizations.weight.original0/1``)
are accepted; ``masked_spec_embed``, ``final_proj.*`` and ``label_embedding.*`` may be missing.
Codebook sizes and the fine-tuning head are read from the weights themselves, because published
configs can describe stale codebooks.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import Tensor

from .atomic import atomic_directory, sha256_file
from .config import MODEL_SIZES, CONV_STEMS, CheckpointInfo, HeadConfig, ModelConfig
from .model import HubertECG
from .safe_pickle import ConfigBag, safe_torch_load

FORMAT_NAME = "hubert-ecg"
FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded; the message names the file and the reason."""


# ---------------------------------------------------------------------------------------------
# State-dict translation
# ---------------------------------------------------------------------------------------------
_PREFIXES = ("module.", "_orig_mod.", "hubert_ecg.", "hubert.")


def normalise_state_dict(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Rename published key spellings to ours (HF names, weight_g/weight_v, ``classifier.*`` head)."""
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        changed = True
        while changed:
            changed = False
            for prefix in _PREFIXES:
                if key.startswith(prefix):
                    key, changed = key[len(prefix):], True
        key = key.replace("pos_conv_embed.conv.parametrizations.weight.original0", "pos_conv_embed.conv.weight_g")
        key = key.replace("pos_conv_embed.conv.parametrizations.weight.original1", "pos_conv_embed.conv.weight_v")
        if key == "label_embedding.weight":  # fine-tuned cosine head of the reference
            key = "classifier.label_embedding.weight"
        out[key] = value
    if "encoder.pos_conv_embed.conv.weight" in out and "encoder.pos_conv_embed.conv.weight_v" not in out:
        # Weight norm removed before saving: any (g, v) with g * v/|v| = w reproduces it.
        weight = out.pop("encoder.pos_conv_embed.conv.weight")
        out["encoder.pos_conv_embed.conv.weight_v"] = weight
        out["encoder.pos_conv_embed.conv.weight_g"] = torch.linalg.vector_norm(weight, dim=(0, 1), keepdim=True)
    return out


def _codebook_sizes(state: Mapping[str, Tensor]) -> tuple[int, ...]:
    sizes = {}
    for key, value in state.items():
        match = re.fullmatch(r"label_embedding\.(\d+)\.weight", key)
        if match:
            sizes[int(match.group(1))] = int(value.shape[0])
    return tuple(sizes[i] for i in sorted(sizes))


def infer_head(state: Mapping[str, Tensor], activation: str = "tanh") -> HeadConfig | None:
    """Head type and size from the classifier keys (the published files do not store them reliably)."""
    if "classifier.label_embedding.weight" in state:
        weight = state["classifier.label_embedding.weight"]
        learn = "classifier.log_scale" in state
        return HeadConfig(num_labels=int(weight.shape[0]), type="cosine",
                          cosine_scale=float(state["classifier.log_scale"].exp()) if learn else 1.0,
                          learn_cosine_scale=learn)
    if "classifier.0.weight" in state and "classifier.2.weight" in state:
        return HeadConfig(num_labels=int(state["classifier.2.weight"].shape[0]), type="mlp",
                          hidden_size=int(state["classifier.0.weight"].shape[0]), activation=activation)
    if "classifier.weight" in state:
        return HeadConfig(num_labels=int(state["classifier.weight"].shape[0]), type="linear")
    return None


def _rate_from_stride(strides: tuple[int, ...]) -> int:
    for rate, stem in CONV_STEMS.items():
        if tuple(stem["conv_stride"]) == tuple(strides):
            return rate
    return 100


_HF_FIELDS = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
              "classifier_proj_size", "conv_dim", "conv_kernel", "conv_stride", "conv_bias",
              "num_conv_pos_embeddings", "num_conv_pos_embedding_groups", "layer_norm_eps",
              "hidden_dropout", "attention_dropout", "activation_dropout", "feat_proj_dropout", "layerdrop",
              "mask_time_prob", "mask_time_length", "mask_time_min_masks")


def config_from_hf(hf: Mapping[str, Any], state: Mapping[str, Tensor], source: str) -> ModelConfig:
    """Our config from a Hugging Face-style config (dict or unpickled attribute bag) and the weights."""
    checks = {"feat_extract_norm": "group", "do_stable_layer_norm": False, "feat_proj_layer_norm": True,
              "hidden_act": "gelu", "feat_extract_activation": "gelu", "conv_pos_batch_norm": False}
    for name, expected in checks.items():
        if name in hf and hf[name] is not None and hf[name] != expected:
            raise CheckpointError(f"{source}: unsupported architecture setting {name}={hf[name]!r} "
                                  f"(HuBERT-ECG uses {expected!r})")
    values = {name: hf[name] for name in _HF_FIELDS if name in hf and hf[name] is not None}
    values["conv_dim"] = tuple(values.get("conv_dim", (512,) * 5))
    values["input_rate_hz"] = _rate_from_stride(tuple(values.get("conv_stride", (4, 2, 2, 2, 2))))
    values["vocab_sizes"] = _codebook_sizes(state)
    values["head"] = infer_head(state)
    values["use_mask_embedding"] = "masked_spec_embed" in state
    return ModelConfig(**values)


def config_from_state(state: Mapping[str, Tensor], source: str) -> ModelConfig:
    """Config for a bare state dict: geometry from shapes, head count from the named sizes."""
    try:
        hidden = int(state["feature_projection.projection.weight"].shape[0])
        conv_dim = int(state["feature_projection.projection.weight"].shape[1])
    except KeyError:
        raise CheckpointError(f"{source}: no HuBERT-ECG encoder weights found "
                              "(missing feature_projection.projection.weight)") from None
    layers = 1 + max(int(m.group(1)) for k in state if (m := re.match(r"encoder\.layers\.(\d+)\.", k)))
    ffn = int(state["encoder.layers.0.feed_forward.intermediate_dense.weight"].shape[0])
    convs = sorted({int(m.group(1)) for k in state if (m := re.match(r"feature_extractor\.conv_layers\.(\d+)\.conv", k))})
    kernels = tuple(int(state[f"feature_extractor.conv_layers.{i}.conv.weight"].shape[-1]) for i in convs)
    stem = next((s for s in CONV_STEMS.values() if tuple(s["conv_kernel"]) == kernels), None)
    if stem is None:
        raise CheckpointError(f"{source}: unknown conv stem with kernels {kernels}")
    size = next((s for s in MODEL_SIZES.values() if s["hidden_size"] == hidden and s["num_hidden_layers"] == layers), None)
    if size is None:
        raise CheckpointError(f"{source}: weights without a config and no named size has hidden={hidden}, "
                              f"layers={layers}; the number of attention heads cannot be inferred")
    pos_g = state["encoder.pos_conv_embed.conv.weight_v"]
    proj = next((int(v.shape[0]) for k, v in state.items() if k.startswith("final_proj.") and k.endswith("weight")),
                size["classifier_proj_size"])
    return ModelConfig(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=size["num_attention_heads"],
                       intermediate_size=ffn, classifier_proj_size=proj, conv_dim=(conv_dim,) * len(kernels),
                       conv_kernel=kernels, conv_stride=tuple(stem["conv_stride"]),
                       num_conv_pos_embeddings=int(pos_g.shape[-1]),
                       num_conv_pos_embedding_groups=hidden // int(pos_g.shape[1]),
                       input_rate_hz=_rate_from_stride(tuple(stem["conv_stride"])),
                       vocab_sizes=_codebook_sizes(state), head=infer_head(state),
                       use_mask_embedding="masked_spec_embed" in state)


def build_from_state(config: ModelConfig, state: Mapping[str, Tensor], source: str,
                     info: CheckpointInfo | None = None) -> HubertECG:
    """Build a model and load ``state``; backbone keys must all be present, nothing unknown may remain."""
    model = HubertECG(config, info)
    expected = model.state_dict()
    unexpected = sorted(k for k in state if k not in expected)
    optional = {"masked_spec_embed"}
    missing = sorted(k for k in expected if k not in state and k not in optional)
    if unexpected or missing:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} keys (e.g. {', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)} keys (e.g. {', '.join(unexpected[:3])})")
        raise CheckpointError(f"{source}: weights do not match the architecture: {'; '.join(parts)}")
    for key, value in state.items():
        if tuple(value.shape) != tuple(expected[key].shape):
            raise CheckpointError(f"{source}: {key} has shape {tuple(value.shape)}, "
                                  f"the config implies {tuple(expected[key].shape)}")
    model.load_state_dict({k: v.to(expected[k].dtype) for k, v in state.items()}, strict=False)
    return model.eval()


# ---------------------------------------------------------------------------------------------
# Readers for each checkpoint kind
# ---------------------------------------------------------------------------------------------
def _read_weights_file(path: Path) -> dict[str, Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file
        try:
            return load_file(str(path))
        except Exception as err:  # safetensors raises several error types for corrupt files
            raise CheckpointError(f"{path}: cannot read safetensors weights ({err})") from None
    obj = _safe_load(path)
    if isinstance(obj, Mapping) and "model_state_dict" in obj:
        obj = obj["model_state_dict"]
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path}: expected a state dict, found {type(obj).__name__}")
    return dict(obj)


def _safe_load(path: Path) -> Any:
    import pickle
    import zipfile
    try:
        return safe_torch_load(str(path))
    except pickle.UnpicklingError as err:
        # The restricted unpickler's refusals already name the file; anything else is a damaged file.
        raise CheckpointError(str(err) if str(path) in str(err)
                              else f"{path}: not a readable PyTorch checkpoint ({err})") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as err:
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({str(err).splitlines()[0]})") from None


def _load_ours(directory: Path, config_json: dict[str, Any], verify: bool) -> HubertECG:
    weights = directory / WEIGHTS_FILE
    if not weights.exists():
        raise CheckpointError(f"{directory}: {WEIGHTS_FILE} is missing")
    expected_sha = config_json.get("weights_sha256")
    if verify and expected_sha and sha256_file(weights) != expected_sha:
        raise CheckpointError(f"{weights}: checksum mismatch (file is corrupt or was modified)")
    config = ModelConfig.from_dict(config_json["model"])
    info = CheckpointInfo.from_dict(config_json.get("info"))
    state = _read_weights_file(weights)
    return build_from_state(config, state, str(directory), info)


def _load_hf_directory(directory: Path, config_json: dict[str, Any]) -> HubertECG:
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (directory / name).exists():
            state = normalise_state_dict(_read_weights_file(directory / name))
            break
    else:
        raise CheckpointError(f"{directory}: no model.safetensors or pytorch_model.bin")
    config = config_from_hf(config_json, state, str(directory))
    info = CheckpointInfo(source=str(directory), label_names=_hf_label_names(config_json, config))
    return build_from_state(config, state, str(directory), info)


def _hf_label_names(config_json: Mapping[str, Any], config: ModelConfig) -> list[str]:
    id2label = config_json.get("id2label") or {}
    if config.head and len(id2label) == config.head.num_labels:
        return [str(id2label.get(str(i), id2label.get(i, i))) for i in range(config.head.num_labels)]
    return []


def _load_pt(path: Path) -> HubertECG:
    obj = _safe_load(path)
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path}: expected a checkpoint dictionary, found {type(obj).__name__}")
    if "model_state_dict" not in obj:
        state = normalise_state_dict(obj)
        return build_from_state(config_from_state(state, str(path)), state, str(path),
                                CheckpointInfo(source=str(path)))
    state = normalise_state_dict(obj["model_state_dict"])
    raw_config = obj.get("model_config")
    if isinstance(raw_config, ConfigBag):
        hf = raw_config.to_dict()
    elif isinstance(raw_config, Mapping):
        hf = dict(raw_config)
    else:
        hf = {}
    config = config_from_hf(hf, state, str(path)) if hf else config_from_state(state, str(path))
    info = CheckpointInfo(source=str(path))
    for key in ("global_step", "pretraining_vocab_sizes", "finetuning_vocab_size", "linear", "use_label_embedding"):
        if key in obj and isinstance(obj[key], (int, float, bool, list, tuple)):
            info.extra[key] = obj[key] if not isinstance(obj[key], tuple) else list(obj[key])
    return build_from_state(config, state, str(path), info)


def _resolve_hub_id(model_id: str) -> Path:
    """A Hugging Face repo id -> local snapshot directory (cache first, network only when allowed)."""
    hint = (f"download it while online, e.g. `huggingface-cli download {model_id} --local-dir DIR`, "
            f"then pass DIR")
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise CheckpointError(f"{model_id}: not a local path, and huggingface_hub is not installed to look it "
                              f"up ({hint}; or `pip install huggingface_hub`)") from None
    patterns = ["config.json", "*.safetensors", "pytorch_model.bin"]
    try:
        return Path(snapshot_download(model_id, allow_patterns=patterns, local_files_only=True))
    except Exception:
        pass
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        raise CheckpointError(f"{model_id}: not in the local Hugging Face cache and HF_HUB_OFFLINE is set; {hint}")
    try:
        return Path(snapshot_download(model_id, allow_patterns=patterns))
    except Exception as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise CheckpointError(f"{model_id}: could not download from the Hugging Face Hub ({reason}); {hint}") from None


def load_model(path: str | os.PathLike, *, device: str | torch.device | None = None,
               verify_checksum: bool = True) -> HubertECG:
    """Load any accepted checkpoint and return the model in eval mode (masking only when asked for)."""
    path_str = str(path)
    p = Path(path_str).expanduser()
    if not p.exists():
        if re.fullmatch(r"[\w.-]+/[\w.-]+", path_str) and not path_str.startswith((".", "/")):
            p = _resolve_hub_id(path_str)
        else:
            raise CheckpointError(f"{path_str}: no such file or directory")
    if p.is_dir():
        config_file = p / CONFIG_FILE
        if not config_file.exists():
            raise CheckpointError(f"{p}: not a model directory (no {CONFIG_FILE})")
        try:
            config_json = json.loads(config_file.read_text())
        except json.JSONDecodeError as err:
            raise CheckpointError(f"{config_file}: invalid JSON ({err.msg} at line {err.lineno})") from None
        if config_json.get("format") == FORMAT_NAME:
            model = _load_ours(p, config_json, verify_checksum)
        elif config_json.get("model_type") in ("hubert_ecg", "hubert"):
            model = _load_hf_directory(p, config_json)
        else:
            raise CheckpointError(f"{config_file}: unknown model format "
                                  f"(model_type={config_json.get('model_type')!r})")
    else:
        model = _load_pt(p)
    if device is not None:
        model = model.to(device)
    return model.eval()


def save_pretrained(model: HubertECG, directory: str | os.PathLike, *, dtype: torch.dtype | None = None) -> Path:
    """Write ``config.json`` + ``model.safetensors`` atomically; the config records the weights' checksum."""
    from safetensors.torch import save_file

    directory = Path(directory)
    state = {k: (v.detach().to(dtype) if dtype is not None and v.is_floating_point() else v.detach())
             .contiguous().cpu() for k, v in model.state_dict().items()}
    with atomic_directory(directory) as tmp:
        save_file(state, str(tmp / WEIGHTS_FILE), metadata={"format": FORMAT_NAME})
        config_json = {
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "model": model.config.to_dict(),
            "info": model.info.to_dict(),
            "weights_sha256": sha256_file(tmp / WEIGHTS_FILE),
        }
        (tmp / CONFIG_FILE).write_text(json.dumps(config_json, indent=2) + "\n")
    return directory


def describe(model: HubertECG) -> dict[str, Any]:
    """Summary for ``hubert-ecg info``."""
    c = model.config
    size = next((name for name, s in MODEL_SIZES.items()
                 if s["hidden_size"] == c.hidden_size and s["num_hidden_layers"] == c.num_hidden_layers), "custom")
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
        "head": None if head is None else {"type": head.type, "num_labels": head.num_labels,
                                           "hidden_size": head.hidden_size},
        "task": model.info.task,
        "labels": model.info.label_names,
        "thresholds": model.info.thresholds,
        "preprocessing": model.info.preprocessing,
        "source": model.info.source,
    }
