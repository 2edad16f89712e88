"""Hugging Face-style ``from_pretrained`` / ``save_pretrained`` / ``push_to_hub`` for HuBERT-ECG.

:class:`PretrainedMixin` is the base ``HubertECG`` inherits these methods from, in the manner of
``transformers.PreTrainedModel``: it works through ``cls``, ``self.config`` and ``self.info`` and
never imports the network module, so dependencies point one way (config -> hub -> model).

Layout written by :meth:`PretrainedMixin.save_pretrained` (documented in docs/MODEL_FORMAT.md):

* ``config.json``: a ``transformers.HubertConfig`` (``model_type: "hubert"``,
  ``architectures: ["HubertModel"]``), so ``transformers.AutoModel.from_pretrained(dir)`` loads the
  encoder without remote code; everything else (our full ``ModelConfig``, head, labels, thresholds,
  preprocessing spec, k-means references, the weights' SHA-256) under the ``"hubert_ecg"`` key;
* ``model.safetensors``: our state dict, whose names are ``HubertModel``'s (heads and codebooks are
  extra keys transformers reports as unexpected and ignores);
* ``README.md``: a model card with Hugging Face metadata (licence, base model, tags).

Read: that layout, our earlier ``{"format": "hubert-ecg", ...}`` directories, published Hugging Face
directories (``model_type`` ``hubert_ecg`` or ``hubert``; single-file or sharded weights; a
``HubertForSequenceClassification`` head folded into our linear head), published ``.pt`` training files (through
the restricted unpickler, after a container check), bare ``.safetensors`` state dicts, and Hub ids
(``owner/name`` or ``owner/name@revision``) from the local cache or, when allowed, the network.
Every path refuses weights that cannot work: non-finite values, shapes that contradict the config,
label names or thresholds that do not fit the head.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .atomic import sha256_file
from .config import CONV_STEMS, MODEL_SIZES, CheckpointInfo, HeadConfig, ModelConfig
from .safe_pickle import CheckpointError, ConfigBag, UnsafeCheckpointError, check_safetensors_header, safe_torch_load

__all__ = ["PretrainedMixin", "CheckpointError", "UnsafeCheckpointError", "resolve_pretrained", "write_model_card"]

FORMAT_NAME = "hubert-ecg"
FORMAT_VERSION = 2  # 1: {"format": "hubert-ecg", ...}; 2: HF HubertConfig + our keys under "hubert_ecg"
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
CARD_FILE = "README.md"
OUR_FILES = (WEIGHTS_FILE, CARD_FILE, CONFIG_FILE)  # written in this order; config.json (with the checksum) last
PUBLISHED_LICENSE = "cc-by-nc-4.0"
PUBLISHED_ORG = "Edoardo-BS/"
HUB_ID = re.compile(r"(?P<repo>[A-Za-z0-9][\w.-]*/[\w.-]+)(?:@(?P<revision>[\w./-]+))?")


# ---------------------------------------------------------------------------------------------
# State-dict translation (published spellings -> ours)
# ---------------------------------------------------------------------------------------------
_PREFIXES = ("module.", "_orig_mod.", "hubert_ecg.", "hubert.")
_PARAM_G = "pos_conv_embed.conv.parametrizations.weight.original0"
_PARAM_V = "pos_conv_embed.conv.parametrizations.weight.original1"


def normalise_state_dict(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Rename published key spellings to ours (HF names, weight_g/weight_v, ``classifier.*`` head)."""
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        changed = True
        while changed:
            changed = False
            for prefix in _PREFIXES:
                if key.startswith(prefix):
                    key, changed = key[len(prefix) :], True
        key = key.replace(_PARAM_G, "pos_conv_embed.conv.weight_g").replace(_PARAM_V, "pos_conv_embed.conv.weight_v")
        if key == "label_embedding.weight":  # fine-tuned cosine head of the reference
            key = "classifier.label_embedding.weight"
        out[key] = value
    if "projector.weight" in out and "classifier.weight" in out:
        _fold_projector(out)
    if "encoder.pos_conv_embed.conv.weight" in out and "encoder.pos_conv_embed.conv.weight_v" not in out:
        # Weight norm removed before saving: any (g, v) with g * v/|v| = w reproduces it.
        weight = out.pop("encoder.pos_conv_embed.conv.weight")
        out["encoder.pos_conv_embed.conv.weight_v"] = weight
        out["encoder.pos_conv_embed.conv.weight_g"] = torch.linalg.vector_norm(weight, dim=(0, 1), keepdim=True)
    return out


def _fold_projector(state: dict[str, Tensor]) -> None:
    """``HubertForSequenceClassification``'s head (mean-pool -> projector -> classifier, no activation
    between) as our linear head: two affine maps compose exactly into one, so its logits are kept."""
    wp, wc = state["projector.weight"], state["classifier.weight"]
    if wp.ndim != 2 or wc.ndim != 2 or wc.shape[1] != wp.shape[0]:
        return  # not the HF layout: left for the key check to name
    bp = state.get("projector.bias", torch.zeros(wp.shape[0], dtype=wp.dtype))
    bc = state.get("classifier.bias", torch.zeros(wc.shape[0], dtype=wc.dtype))
    # float64 so that folding adds no rounding beyond the final cast back to the stored dtype
    w64, c64 = wp.double(), wc.double()
    state["classifier.weight"] = (c64 @ w64).to(wc.dtype)
    state["classifier.bias"] = (c64 @ bp.double() + bc.double()).to(wc.dtype)
    state.pop("projector.weight")
    state.pop("projector.bias", None)


def to_hf_state_dict(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Our names -> what ``transformers.HubertModel.save_pretrained`` writes (weight-norm parametrization)."""
    return {
        k.replace("pos_conv_embed.conv.weight_g", _PARAM_G).replace("pos_conv_embed.conv.weight_v", _PARAM_V): v
        for k, v in state.items()
    }


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
        return HeadConfig(
            num_labels=int(weight.shape[0]),
            type="cosine",
            cosine_scale=float(state["classifier.log_scale"].exp()) if learn else 1.0,
            learn_cosine_scale=learn,
        )
    if "classifier.0.weight" in state and "classifier.2.weight" in state:
        return HeadConfig(
            num_labels=int(state["classifier.2.weight"].shape[0]),
            type="mlp",
            hidden_size=int(state["classifier.0.weight"].shape[0]),
            activation=activation,
        )
    if "classifier.weight" in state:
        return HeadConfig(num_labels=int(state["classifier.weight"].shape[0]), type="linear")
    return None


def head_output_key(head: HeadConfig) -> str:
    """The state-dict key whose first dimension is the head's number of outputs."""
    return {"linear": "classifier.weight", "mlp": "classifier.2.weight", "cosine": "classifier.label_embedding.weight"}[
        head.type
    ]


def _rate_from_stride(strides: tuple[int, ...], source: str = "checkpoint") -> int:
    """The input rate a conv stem was built for; an unknown stem is refused rather than assumed 100 Hz,
    because every preprocessing step (resampling, 5 s windows) is derived from that rate."""
    for rate, stem in CONV_STEMS.items():
        if tuple(stem["conv_stride"]) == tuple(strides):
            return rate
    known = "; ".join(f"{rate} Hz: {list(stem['conv_stride'])}" for rate, stem in CONV_STEMS.items())
    raise CheckpointError(
        f"{source}: conv strides {list(strides)} match no known HuBERT-ECG stem ({known}); "
        "the input sampling rate of this model cannot be inferred"
    )


_HF_FIELDS = (
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "intermediate_size",
    "classifier_proj_size",
    "conv_dim",
    "conv_kernel",
    "conv_stride",
    "conv_bias",
    "num_conv_pos_embeddings",
    "num_conv_pos_embedding_groups",
    "layer_norm_eps",
    "hidden_dropout",
    "attention_dropout",
    "activation_dropout",
    "feat_proj_dropout",
    "layerdrop",
    "mask_time_prob",
    "mask_time_length",
    "mask_time_min_masks",
)
# transformers.HubertConfig's defaults: a config.json that leaves a field out means this value to
# transformers, so a foreign folder must be read with it, not with our (100 Hz, small) defaults.
_HF_DEFAULTS: dict[str, Any] = {
    "hidden_size": 768,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "intermediate_size": 3072,
    "classifier_proj_size": 256,
    "conv_dim": [512] * 7,
    "conv_kernel": [10, 3, 3, 3, 3, 2, 2],
    "conv_stride": [5, 2, 2, 2, 2, 2, 2],
    "conv_bias": False,
    "num_conv_pos_embeddings": 128,
    "num_conv_pos_embedding_groups": 16,
    "layer_norm_eps": 1e-5,
    "layerdrop": 0.1,
    "mask_time_prob": 0.05,
    "mask_time_length": 10,
    "mask_time_min_masks": 2,
}
# HubertConfig settings whose value is fixed by the HuBERT-ECG architecture.
_HF_FIXED = {
    "feat_extract_norm": "group",
    "do_stable_layer_norm": False,
    "feat_proj_layer_norm": True,
    "hidden_act": "gelu",
    "feat_extract_activation": "gelu",
    "conv_pos_batch_norm": False,
}


def config_from_hf(hf: Mapping[str, Any], state: Mapping[str, Tensor], source: str) -> ModelConfig:
    """Our config from a Hugging Face-style config (dict or unpickled attribute bag) and the weights."""
    for name, expected in _HF_FIXED.items():
        if name in hf and hf[name] is not None and hf[name] != expected:
            raise CheckpointError(
                f"{source}: unsupported architecture setting {name}={hf[name]!r} (HuBERT-ECG uses {expected!r})"
            )
    if hf.get("use_weighted_layer_sum") and "layer_weights" in state:
        raise CheckpointError(
            f"{source}: use_weighted_layer_sum=True (a learned mix of all layers feeds the head) is not "
            "supported; HuBERT-ECG heads read the last layer"
        )
    values = {name: hf[name] for name in _HF_FIELDS if name in hf and hf[name] is not None}
    values["conv_dim"] = tuple(values.get("conv_dim", (512,) * 5))
    values["input_rate_hz"] = _rate_from_stride(tuple(values.get("conv_stride", (4, 2, 2, 2, 2))), source)
    values["vocab_sizes"] = _codebook_sizes(state)
    values["head"] = infer_head(state)
    values["use_mask_embedding"] = "masked_spec_embed" in state
    try:
        return ModelConfig(**values)
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"{source}: invalid model config ({err})") from None


# transformers' ``problem_type`` -> the name of our task with the same loss and activation. A name
# translation, not task behaviour (that stays on the Task classes); the network layer may not import
# tasks.py, so the table lives here.
_HF_PROBLEM_TYPES = (
    ("multi_label_classification", "multi_label"),
    ("single_label_classification", "multi_class"),
    ("regression", "regression"),
)


def hf_task(hf: Mapping[str, Any], head: HeadConfig | None) -> str | None:
    """Our task for a transformers classification config, chosen as transformers picks its loss
    (``problem_type``, else regression for one output and single-label for more), so that predict
    applies the activation the head was trained with."""
    if head is None:
        return None
    table = dict(_HF_PROBLEM_TYPES)
    problem = hf.get("problem_type")
    if problem not in table:
        problem = _HF_PROBLEM_TYPES[2][0] if head.num_labels == 1 else _HF_PROBLEM_TYPES[1][0]
    return table[problem]


def config_from_state(state: Mapping[str, Tensor], source: str) -> ModelConfig:
    """Config for a bare state dict: geometry from shapes, head count from the named sizes."""
    try:
        hidden = int(state["feature_projection.projection.weight"].shape[0])
        conv_dim = int(state["feature_projection.projection.weight"].shape[1])
        pos_v = state["encoder.pos_conv_embed.conv.weight_v"]
        ffn = int(state["encoder.layers.0.feed_forward.intermediate_dense.weight"].shape[0])
    except KeyError as err:
        raise CheckpointError(f"{source}: no HuBERT-ECG encoder weights found (missing {err.args[0]})") from None
    layers = 1 + max(int(m.group(1)) for k in state if (m := re.match(r"encoder\.layers\.(\d+)\.", k)))
    conv_key = re.compile(r"feature_extractor\.conv_layers\.(\d+)\.conv")
    convs = sorted({int(m.group(1)) for k in state if (m := conv_key.match(k))})
    kernels = tuple(int(state[f"feature_extractor.conv_layers.{i}.conv.weight"].shape[-1]) for i in convs)
    stem = next((s for s in CONV_STEMS.values() if tuple(s["conv_kernel"]) == kernels), None)
    if stem is None:
        raise CheckpointError(f"{source}: unknown conv stem with kernels {kernels}")
    size = next(
        (s for s in MODEL_SIZES.values() if s["hidden_size"] == hidden and s["num_hidden_layers"] == layers), None
    )
    if size is None:
        raise CheckpointError(
            f"{source}: weights without a config and no named size has hidden={hidden}, "
            f"layers={layers}; the number of attention heads cannot be inferred"
        )
    proj = next(
        (int(v.shape[0]) for k, v in state.items() if k.startswith("final_proj.") and k.endswith("weight")),
        size["classifier_proj_size"],
    )
    return ModelConfig(
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=size["num_attention_heads"],
        intermediate_size=ffn,
        classifier_proj_size=proj,
        conv_dim=(conv_dim,) * len(kernels),
        conv_kernel=kernels,
        conv_stride=tuple(stem["conv_stride"]),
        num_conv_pos_embeddings=int(pos_v.shape[-1]),
        num_conv_pos_embedding_groups=hidden // int(pos_v.shape[1]),
        input_rate_hz=_rate_from_stride(tuple(stem["conv_stride"]), source),
        vocab_sizes=_codebook_sizes(state),
        head=infer_head(state),
        use_mask_embedding="masked_spec_embed" in state,
    )


def hf_config(config: ModelConfig, info: CheckpointInfo, dtype: torch.dtype | None = None) -> dict[str, Any]:
    """The ``transformers.HubertConfig`` fields that rebuild our encoder exactly in ``HubertModel``."""
    out: dict[str, Any] = {"model_type": "hubert", "architectures": ["HubertModel"]}
    out.update({name: getattr(config, name) for name in _HF_FIELDS})
    out.update({k: list(v) for k, v in out.items() if isinstance(v, tuple)})
    out.update(_HF_FIXED)
    out.update(
        num_feat_extract_layers=len(config.conv_dim),
        apply_spec_augment=config.mask_time_prob > 0,
        mask_feature_prob=0.0,
        initializer_range=0.02,
        torch_dtype=str(dtype or torch.float32).removeprefix("torch."),
    )
    if config.head is not None and len(info.label_names) == config.head.num_labels:
        out["id2label"] = {str(i): name for i, name in enumerate(info.label_names)}
        out["label2id"] = {name: i for i, name in enumerate(info.label_names)}
    return out


# ---------------------------------------------------------------------------------------------
# Checks that make unusable weights fail at load time, naming the tensor or key
# ---------------------------------------------------------------------------------------------
def check_finite(state: Mapping[str, Tensor], source: str) -> None:
    """Refuse NaN or infinite values anywhere in the weights."""
    for key, value in state.items():
        if value.is_floating_point() or value.is_complex():
            finite = torch.isfinite(value)
            if not bool(finite.all()):
                bad = int((~finite).sum())
                kind = "NaN" if bool(torch.isnan(value).any()) else "infinite"
                raise CheckpointError(
                    f"{source}: tensor {key} has {bad} {kind} value(s) of {value.numel()}; the weights are unusable"
                )


def check_info(config: ModelConfig, info: CheckpointInfo, source: str) -> None:
    """Label names and thresholds must fit the head they describe."""
    head = config.head
    if head is not None and info.label_names and len(info.label_names) != head.num_labels:
        raise CheckpointError(
            f"{source}: info.label_names has {len(info.label_names)} names but the head "
            f"({head_output_key(head)}) has {head.num_labels} outputs"
        )
    if info.thresholds is not None:
        thresholds = list(info.thresholds)
        if head is not None and len(thresholds) != head.num_labels:
            raise CheckpointError(
                f"{source}: info.thresholds has {len(thresholds)} values but the head "
                f"({head_output_key(head)}) has {head.num_labels} outputs"
            )
        for i, t in enumerate(thresholds):
            if not isinstance(t, (int, float)) or isinstance(t, bool) or not 0.0 <= float(t) <= 1.0:
                raise CheckpointError(f"{source}: info.thresholds[{i}] = {t!r} is outside [0, 1]")


# ---------------------------------------------------------------------------------------------
# Reading files
# ---------------------------------------------------------------------------------------------
def read_weights_file(path: Path) -> dict[str, Tensor]:
    """A state dict from ``.safetensors`` (header checked first) or a torch file (container checked first)."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        check_safetensors_header(path)
        try:
            return load_file(str(path))
        except Exception as err:  # safetensors raises several error types for corrupt files
            raise CheckpointError(f"{path}: cannot read safetensors weights ({err})") from None
    obj = _torch_load(path)
    if isinstance(obj, Mapping) and "model_state_dict" in obj:
        obj = obj["model_state_dict"]
    if not isinstance(obj, Mapping) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise CheckpointError(f"{path}: expected a state dict of tensors, found {type(obj).__name__}")
    return dict(obj)


_SHARD_INDEXES = (WEIGHTS_FILE + ".index.json", "pytorch_model.bin.index.json")


def read_directory_weights(directory: Path) -> dict[str, Tensor]:
    """The state dict of a transformers folder: ``model.safetensors``, ``pytorch_model.bin``, or the
    shards named by their ``*.index.json`` (what ``save_pretrained(max_shard_size=...)`` writes),
    safetensors first, as transformers prefers them."""
    for name in (WEIGHTS_FILE, _SHARD_INDEXES[0], "pytorch_model.bin", _SHARD_INDEXES[1]):
        path = directory / name
        if path.exists():
            return read_sharded_weights(path) if name.endswith(".index.json") else read_weights_file(path)
    raise CheckpointError(
        f"{directory}: no {WEIGHTS_FILE}, pytorch_model.bin or sharded weights ({' / '.join(_SHARD_INDEXES)})"
    )


def read_sharded_weights(index_file: Path) -> dict[str, Tensor]:
    """Every shard an index names, each read with the usual checks; the shards must hold exactly the
    keys the index maps to them, so a lost or stale shard is an error, not a silent gap."""
    try:
        index = json.loads(index_file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{index_file}: cannot read the shard index ({err})") from None
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise CheckpointError(f"{index_file}: no weight_map in the shard index")
    shards: dict[str, set[str]] = {}
    for key, shard in weight_map.items():
        if not isinstance(shard, str) or Path(shard).name != shard or shard in ("", ".", ".."):
            raise CheckpointError(f"{index_file}: shard {shard!r} of {key} is not a file name in this folder")
        shards.setdefault(shard, set()).add(str(key))
    state: dict[str, Tensor] = {}
    for shard, keys in sorted(shards.items()):
        path = index_file.parent / shard
        if not path.exists():
            raise CheckpointError(f"{index_file}: shard {shard} is missing (it holds {len(keys)} tensors)")
        part = read_weights_file(path)
        if set(part) != keys:
            lost, extra = sorted(keys - set(part)), sorted(set(part) - keys)
            detail = "; ".join(
                f"{what} {len(ks)} (e.g. {', '.join(ks[:3])})" for what, ks in (("lacks", lost), ("adds", extra)) if ks
            )
            raise CheckpointError(f"{path}: does not hold the tensors the index assigns to it: {detail}")
        state.update(part)
    return state


def _torch_load(path: Path) -> Any:
    import pickle
    import zipfile

    try:
        return safe_torch_load(path)
    except CheckpointError:
        raise
    except (
        pickle.UnpicklingError,
        RuntimeError,
        EOFError,
        zipfile.BadZipFile,
        OSError,
        ValueError,
        AttributeError,
        TypeError,
        IndexError,
        KeyError,
    ) as err:
        reason = (str(err).splitlines() or [type(err).__name__])[0]
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({reason})") from None


def _hf_label_names(config_json: Mapping[str, Any], config: ModelConfig) -> list[str]:
    id2label = config_json.get("id2label") or {}
    if config.head and len(id2label) == config.head.num_labels:
        return [str(id2label.get(str(i), id2label.get(i, i))) for i in range(config.head.num_labels)]
    return []


def _foreign_info(source: str, base_model: str | None, published: bool) -> CheckpointInfo:
    """Info for weights not saved by us. Weights from the HuBERT-ECG authors carry their CC BY-NC 4.0 licence
    into everything derived; other foreign weights record where they came from (licence unknown)."""
    info = CheckpointInfo(source=source)
    info.extra["base_model"] = base_model or source
    if published:
        info.extra["license"] = PUBLISHED_LICENSE
    return info


def _rewritten_elsewhere(weights: Path) -> bool:
    """True when the safetensors header is intact and names no ``producer`` of ours (another program wrote it).

    Read by hand, not with ``safe_open``: a file cut short keeps its header but fails safetensors' size
    check, and it is corrupt, not rewritten. An unreadable header is also reported as corrupt.
    """
    try:
        with open(weights, "rb") as fh:
            size = int.from_bytes(fh.read(8), "little")
            if not 0 < size <= 100_000_000:
                return False
            header = json.loads(fh.read(size))
    except (OSError, ValueError):
        return False
    metadata = header.get("__metadata__") if isinstance(header, dict) else None
    return not (isinstance(metadata, dict) and metadata.get("producer") == FORMAT_NAME)


def _is_ours(config_json: Mapping[str, Any]) -> bool:
    return isinstance(config_json.get("hubert_ecg"), Mapping) or config_json.get("format") == FORMAT_NAME


def read_config_json(directory: Path) -> dict[str, Any]:
    config_file = directory / CONFIG_FILE
    if not config_file.exists():
        raise CheckpointError(f"{directory}: not a model directory (no {CONFIG_FILE})")
    try:
        config_json = json.loads(config_file.read_text())
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{config_file}: invalid JSON ({err.msg} at line {err.lineno})") from None
    except (OSError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{config_file}: cannot read ({err})") from None
    if not isinstance(config_json, dict):
        raise CheckpointError(f"{config_file}: expected a JSON object")
    return config_json


# ---------------------------------------------------------------------------------------------
# Hub ids and the local cache
# ---------------------------------------------------------------------------------------------
def download_command() -> str:
    """The download command the installed huggingface_hub provides (``hf`` from 1.0 on)."""
    try:
        import huggingface_hub

        major = int(huggingface_hub.__version__.split(".")[0])
    except (ImportError, ValueError):
        return "hf download"
    return "hf download" if major >= 1 else "huggingface-cli download"


def split_hub_id(name: str) -> tuple[str, str | None] | None:
    """``owner/name[@revision]`` -> (repo id, revision); None if ``name`` is not shaped like a Hub id."""
    if name.startswith((".", "/", "~")) or "\\" in name:
        return None
    match = HUB_ID.fullmatch(name)
    return (match.group("repo"), match.group("revision")) if match else None


def resolve_pretrained(name: str, revision: str | None = None) -> Path:
    """A Hub id (``owner/name``, ``owner/name@revision``) -> local snapshot directory (cache first, network
    only when allowed); an existing path is returned as is."""
    path = Path(name).expanduser()
    if path.exists():
        if revision:
            raise CheckpointError(f"{name}: a revision ({revision}) applies to Hub ids, not to a local path")
        return path
    parts = split_hub_id(name)
    if parts is None:
        raise CheckpointError(f"{name}: no such file or directory")
    repo_id, at_revision = parts
    if at_revision and revision and at_revision != revision:
        raise CheckpointError(f"{name}: revision given twice ({at_revision} and revision={revision})")
    revision = at_revision or revision
    rev = f" --revision {revision}" if revision else ""
    hint = f"download it while online, e.g. `{download_command()} {repo_id}{rev} --local-dir DIR`, then pass DIR"
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise CheckpointError(
            f"{name}: not a local path, and huggingface_hub is not installed to look it "
            f"up ({hint}; or `pip install huggingface_hub`)"
        ) from None
    # sharded repos too: their index files and numbered shards (what read_directory_weights reads)
    patterns = [
        CONFIG_FILE,
        "*.safetensors",
        "*.safetensors.index.json",
        "pytorch_model*.bin",
        "*.bin.index.json",
        CARD_FILE,
    ]
    try:
        return Path(snapshot_download(repo_id, revision=revision, allow_patterns=patterns, local_files_only=True))
    except Exception:  # noqa: BLE001  (not cached: every huggingface_hub error type means the same here)
        pass
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        raise CheckpointError(f"{name}: not in the local Hugging Face cache and HF_HUB_OFFLINE is set; {hint}")
    try:
        return Path(snapshot_download(repo_id, revision=revision, allow_patterns=patterns))
    except Exception as err:  # noqa: BLE001
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise CheckpointError(f"{name}: could not download from the Hugging Face Hub ({reason}); {hint}") from None


# ---------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------
def _owned_by_us(directory: Path) -> bool:
    try:
        return _is_ours(json.loads((directory / CONFIG_FILE).read_text()))
    except (OSError, ValueError, AttributeError):
        return False


def check_output_directory(directory: Path) -> None:
    """Saving may replace our own model files, never anything else: a non-empty folder that does not
    hold a hubert-ecg model is refused."""
    if directory.exists() and not directory.is_dir():
        raise CheckpointError(f"{directory}: exists and is not a directory")
    if directory.is_dir():
        others = sorted(p.name for p in directory.iterdir())
        if others and not _owned_by_us(directory):
            shown = ", ".join(others[:3]) + (f" and {len(others) - 3} more" if len(others) > 3 else "")
            raise CheckpointError(
                f"{directory}: refusing to write a model into a non-empty folder that does not "
                f"hold a hubert-ecg model (it has {shown}); choose a new or empty folder"
            )


def _fsync(path: Path) -> None:
    with open(path, "rb+") as fh:
        os.fsync(fh.fileno())


def write_files(directory: Path, build: Any) -> Path:
    """Call ``build(tmp)`` to write our files into a temporary folder, then move each into ``directory``
    with an atomic rename (``config.json`` last). Other files in ``directory`` are left alone."""
    check_output_directory(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    if not directory.exists():
        tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", suffix=".tmp", dir=directory.parent))
        try:
            build(tmp)
            for child in tmp.iterdir():
                _fsync(child)
            os.replace(tmp, directory)  # a new folder appears complete or not at all
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return directory
    tmp = Path(tempfile.mkdtemp(prefix=".saving.", suffix=".tmp", dir=directory))
    try:
        build(tmp)
        for name in OUR_FILES:
            if (tmp / name).exists():
                _fsync(tmp / name)
                os.replace(tmp / name, directory / name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return directory


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _license(info: CheckpointInfo) -> tuple[str, str]:
    """(licence id, explanation) for the card's metadata."""
    extra = info.extra or {}
    if extra.get("license") == PUBLISHED_LICENSE:
        return PUBLISHED_LICENSE, (
            f"These weights derive from the published HuBERT-ECG weights ({extra.get('base_model')}), released "
            "under CC BY-NC 4.0; that licence (non-commercial use, attribution) applies to this model too."
        )
    if extra.get("license"):
        return str(extra["license"]), f"Licence recorded with the weights: {extra['license']}."
    if extra.get("base_model"):
        return "other", (
            f"Initialised from {extra['base_model']}, whose licence is not recorded; check it before "
            "sharing or using this model."
        )
    return "apache-2.0", (
        "Trained from a random initialisation with hubert-ecg (Apache-2.0); check the licences "
        "of the training data before sharing."
    )


def _flat_items(obj: Any, prefix: str = "", limit: int = 40) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    if isinstance(obj, Mapping):
        for key, value in obj.items():
            out.extend(_flat_items(value, f"{prefix}{key}.", limit))
    elif isinstance(obj, (list, tuple)) and len(obj) > 8:
        out.append((prefix[:-1], f"[{len(obj)} values]"))
    else:
        out.append((prefix[:-1], json.dumps(obj, default=str)[:100]))
    return out[:limit]


def write_model_card(directory: Path, config: ModelConfig, info: CheckpointInfo, context: Path | None = None) -> Path:
    """Write ``README.md``: HF metadata (licence, base model, tags), what the model is, its labels and
    thresholds, the run record (``run.json``) and validation/evaluation results found in ``context``
    (the folder being saved) or its parent, intended use and the medical-device disclaimer."""
    license_id, license_note = _license(info)
    run, metrics, evaluation = _card_context(context or directory, info.extra or {})
    lines = _card_front_matter(config, info, license_id)
    lines += _card_summary(config, info)
    lines += ["## Licence", "", license_note, "", *_CARD_HOW_TO_LOAD]
    lines += _card_labels(info)
    lines += _card_preprocessing(info)
    lines += _card_training(run)
    if metrics is not None:
        lines += ["## Validation results", "", "| metric | value |", "|---|---|"]
        lines += [f"| {k} | {v} |" for k, v in _flat_items(metrics, limit=25)]
        lines.append("")
    if evaluation is not None:
        lines += _card_evaluation(evaluation)
    lines += _CARD_INTENDED_USE
    path = directory / CARD_FILE
    path.write_text("\n".join(lines))
    return path


_CARD_HOW_TO_LOAD = [
    "## How to load",
    "",
    "```python",
    "import hubert_ecg",
    'model = hubert_ecg.HubertECG.from_pretrained("PATH_OR_HUB_ID")  # everything',
    "",
    "import transformers  # the encoder only, no remote code",
    'encoder = transformers.AutoModel.from_pretrained("PATH_OR_HUB_ID")',
    "```",
    "",
]

_CARD_INTENDED_USE = [
    "## Intended use",
    "",
    "Research on 12-lead ECG representation learning and classification: embeddings, linear probes, "
    "fine-tuning, benchmarking. Check calibration and performance on data from your own population "
    "and devices before relying on any output.",
    "",
    "**Not a medical device.** This model has not been cleared or approved for clinical use and must "
    "not be used to diagnose, treat or triage patients.",
    "",
]


def _card_context(context: Path, extra: Mapping[str, Any]) -> tuple[Any, Any, Any]:
    """``(run.json, metrics.json, evaluation summary)`` found in ``context`` or its parent (None when absent);
    an evaluation stored with the weights wins over a ``summary.json``."""
    search = [context, context.parent]
    run = next((r for d in search if isinstance(r := _read_json(d / "run.json"), Mapping)), None)
    metrics = next((m for d in search if isinstance(m := _read_json(d / "metrics.json"), Mapping)), None)
    evaluation = extra.get("evaluation") or next(
        (e for d in search if isinstance(e := _read_json(d / "summary.json"), Mapping) and "macro" in e), None
    )
    return run, metrics, evaluation


def _card_front_matter(config: ModelConfig, info: CheckpointInfo, license_id: str) -> list[str]:
    """The HF metadata block (licence, library, tags, base model) and the title."""
    extra = info.extra or {}
    tags = ["hubert-ecg", "ecg", "electrocardiogram", "hubert", "feature-extraction"]
    if config.head is not None:
        tags.append(info.task or "classification")
    meta = [
        f"license: {license_id}",
        "library_name: transformers",
        "pipeline_tag: feature-extraction",
        "tags:",
        *[f"- {t}" for t in tags],
    ]
    if extra.get("base_model") and split_hub_id(str(extra["base_model"])):
        meta.append(f"base_model: {extra['base_model']}")
    if license_id == "other":
        meta.append("license_name: see-model-card")
    return ["---", *meta, "---", "", "# HuBERT-ECG model", ""]


def _card_summary(config: ModelConfig, info: CheckpointInfo) -> list[str]:
    """One sentence on the encoder size, input and head; the source of the weights when known."""
    size = next(
        (
            n
            for n, s in MODEL_SIZES.items()
            if s["hidden_size"] == config.hidden_size and s["num_hidden_layers"] == config.num_hidden_layers
        ),
        "custom",
    )
    lines = [
        f"A HuBERT-ECG encoder ({size}: {config.num_hidden_layers} layers, hidden size {config.hidden_size}, "
        f"input {config.input_rate_hz} Hz, 12 leads x 5 s flattened)"
        + (
            f" with a {config.head.type} head, {config.head.num_labels} output"
            f"{'s' if config.head.num_labels != 1 else ''} ({info.task or 'task unset'})."
            if config.head
            else "."
        ),
        "",
    ]
    if info.source:
        lines += [f"Source: {info.source}", ""]
    return lines


def _card_labels(info: CheckpointInfo) -> list[str]:
    if not info.label_names:
        return []
    lines = ["## Labels and decision thresholds", "", "| # | label | threshold |", "|---|---|---|"]
    for i, name in enumerate(info.label_names):
        t = info.thresholds[i] if info.thresholds is not None and i < len(info.thresholds) else None
        lines.append(f"| {i} | {name} | {'' if t is None else f'{t:.4g}'} |")
    lines.append("")
    return lines


def _card_preprocessing(info: CheckpointInfo) -> list[str]:
    if not info.preprocessing:
        return []
    lines = [
        "## Preprocessing",
        "",
        "Inputs must be preprocessed exactly as during training "
        "(`hubert-ecg predict` / `embed` and `hubert_ecg.predict` replay it):",
        "",
        "| step | value |",
        "|---|---|",
    ]
    lines += [f"| {k} | {v} |" for k, v in _flat_items(info.preprocessing)]
    lines.append("")
    return lines


def _card_training(run: Any) -> list[str]:
    """The command and settings of the run record, or a note that there is none."""
    lines = ["## Training data and settings", ""]
    if run is None:
        return lines + ["No run record (`run.json`) was found beside this model.", ""]
    command = run.get("command") or run.get("argv")
    if command:
        lines += [f"Command: `{command if isinstance(command, str) else ' '.join(map(str, command))}`", ""]
    lines += ["| setting | value |", "|---|---|"]
    shown = {k: v for k, v in run.items() if k not in ("command", "argv", "invocations", "format", "version")}
    lines += [f"| {k} | {v} |" for k, v in _flat_items(shown, limit=60)]
    lines.append("")
    return lines


def _card_evaluation(evaluation: Any) -> list[str]:
    """Macro metrics of an evaluation summary with their bootstrap CIs."""
    lines = [
        "## Evaluation results (95% bootstrap CIs where computed)",
        "",
        "| metric | value | 95% CI |",
        "|---|---|---|",
    ]
    cis = evaluation.get("macro_ci") or {}
    for name, value in (evaluation.get("macro") or {}).items():
        ci = cis.get(name) if isinstance(cis, Mapping) else None
        ci_text = (
            f"{ci[0]:.4g} - {ci[1]:.4g}"
            if isinstance(ci, (list, tuple)) and len(ci) == 2
            else json.dumps(ci, default=str)
            if ci is not None
            else ""
        )
        lines.append(
            f"| {name} | {value:.4g} | {ci_text} |"
            if isinstance(value, (int, float))
            else f"| {name} | {value} | {ci_text} |"
        )
    lines.append("")
    return lines


def _note_assumed_activation(config: ModelConfig, info: CheckpointInfo, source: str) -> None:
    """Foreign training files store an MLP head's weights but not its activation (a command-line
    choice of the reference: tanh by default, or relu, gelu, sigmoid); say which one is assumed."""
    if config.head is None or config.head.type != "mlp":
        return
    import warnings

    info.extra["assumed_head_activation"] = config.head.activation
    warnings.warn(
        f"{source}: the MLP head's activation is not stored in the file; assuming {config.head.activation!r} "
        "(the reference default). A head trained with relu, gelu or sigmoid gives wrong outputs this way",
        stacklevel=4,
    )


def checked_device(device: str | torch.device | None) -> torch.device | None:
    """``device`` as a torch.device (``"auto"``: CUDA when available), or a one-line ValueError for a
    name torch does not know or a device this machine does not have (torch raises an assertion)."""
    if device is None:
        return None
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        target = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"device {device!r} is not a torch device ({str(err).splitlines()[0][:80]})") from None
    if target.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {device!r}: CUDA is not available here; use device='cpu' or 'auto'")
        count = torch.cuda.device_count()
        if target.index is not None and count and target.index >= count:
            raise ValueError(f"device {device!r}: this machine has {count} CUDA device(s)")
    if target.type == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise ValueError(f"device {device!r}: MPS is not available here; use device='cpu' or 'auto'")
    return target


# ---------------------------------------------------------------------------------------------
# The mixin
# ---------------------------------------------------------------------------------------------
class PretrainedMixin:
    """``from_pretrained`` / ``save_pretrained`` / ``push_to_hub`` for a module with ``config``
    (:class:`ModelConfig`) and ``info`` (:class:`CheckpointInfo`) built as ``cls(config, info)``."""

    config: ModelConfig
    info: CheckpointInfo

    # -- loading ---------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | os.PathLike,
        *,
        revision: str | None = None,
        device: str | torch.device | None = None,
        verify_checksum: bool = True,
    ) -> Any:
        """Load any accepted checkpoint (see the module docstring) and return the model in eval mode.

        ``name_or_path`` is a directory, a ``.pt``/``.bin``/``.safetensors`` file, or a Hub id
        (``owner/name``, ``owner/name@revision``); ``revision`` pins a Hub branch, tag or commit.
        """
        target = checked_device(device)  # before any reading: a typo should not cost a load
        name = str(name_or_path)
        path = resolve_pretrained(name, revision)
        hub = split_hub_id(name) if not Path(name).expanduser().exists() else None
        base = hub[0] if hub else None
        if path.is_dir():
            model = cls._load_directory(path, base, verify_checksum)
        else:
            model = cls._load_file(path)
        if target is not None:
            model = model.to(target)
        return model.eval()

    @classmethod
    def _from_state(
        cls, config: ModelConfig, state: Mapping[str, Tensor], source: str, info: CheckpointInfo | None = None
    ) -> Any:
        """Build a model and load ``state``: backbone keys all present, nothing unknown, shapes equal to
        the config's, every value finite, labels and thresholds fitting the head."""
        info = info or CheckpointInfo()
        check_finite(state, source)
        check_info(config, info, source)
        model: Any = cls(config, info)  # type: ignore[call-arg]
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
                raise CheckpointError(
                    f"{source}: tensor {key} has shape {tuple(value.shape)}, "
                    f"the config implies {tuple(expected[key].shape)}"
                )
        model.load_state_dict({k: v.to(expected[k].dtype) for k, v in state.items()}, strict=False)
        return model.eval()

    @classmethod
    def _load_directory(cls, directory: Path, base: str | None, verify: bool) -> Any:
        config_json = read_config_json(directory)
        if _is_ours(config_json):
            ours = config_json["hubert_ecg"] if "hubert_ecg" in config_json else config_json
            weights = directory / WEIGHTS_FILE
            if not weights.exists():
                raise CheckpointError(f"{directory}: {WEIGHTS_FILE} is missing")
            expected_sha = ours.get("weights_sha256")
            if verify and expected_sha and sha256_file(weights) != expected_sha:
                if _rewritten_elsewhere(weights):
                    raise CheckpointError(
                        f"{weights}: was rewritten by another program (e.g. transformers' save_pretrained, which "
                        "keeps the hubert_ecg section of config.json but drops head and codebook tensors), so it no "
                        'longer matches that section; load the original folder, or delete the "hubert_ecg" key '
                        "from config.json to load the file as a plain transformers encoder"
                    )
                raise CheckpointError(f"{weights}: checksum mismatch (file is corrupt or was modified)")
            try:
                config = ModelConfig.from_dict(ours["model"])
                info = CheckpointInfo.from_dict(ours.get("info"))
            except (KeyError, TypeError, ValueError) as err:
                raise CheckpointError(f"{directory / CONFIG_FILE}: invalid hubert_ecg settings ({err})") from None
            state = normalise_state_dict(read_weights_file(weights))
            return cls._from_state(config, state, str(directory), info)
        model_type = config_json.get("model_type")
        if model_type not in ("hubert_ecg", "hubert"):
            raise CheckpointError(f"{directory / CONFIG_FILE}: unknown model format (model_type={model_type!r})")
        state = normalise_state_dict(read_directory_weights(directory))
        config = config_from_hf({**_HF_DEFAULTS, **config_json}, state, str(directory))
        published = model_type == "hubert_ecg" or (base or "").startswith(PUBLISHED_ORG)
        info = _foreign_info(str(directory), base, published)
        info.label_names = _hf_label_names(config_json, config)
        architectures = config_json.get("architectures") or []
        if any(str(a).endswith("ForSequenceClassification") for a in architectures):
            info.task = hf_task(config_json, config.head)
        _note_assumed_activation(config, info, str(directory))
        return cls._from_state(config, state, str(directory), info)

    @classmethod
    def _load_file(cls, path: Path) -> Any:
        if path.suffix == ".safetensors":
            state = normalise_state_dict(read_weights_file(path))
            return cls._from_state(
                config_from_state(state, str(path)),
                state,
                str(path),
                _foreign_info(str(path), path.name, published=False),
            )
        obj = _torch_load(path)
        if not isinstance(obj, Mapping):
            raise CheckpointError(f"{path}: expected a checkpoint dictionary, found {type(obj).__name__}")
        if "model_state_dict" not in obj:
            if not all(isinstance(v, Tensor) for v in obj.values()):
                raise CheckpointError(
                    f"{path}: expected a state dict of tensors or a training checkpoint with model_state_dict"
                )
            state = normalise_state_dict(obj)
            return cls._from_state(
                config_from_state(state, str(path)),
                state,
                str(path),
                _foreign_info(str(path), path.name, published=False),
            )
        raw_state = obj["model_state_dict"]
        if not isinstance(raw_state, Mapping) or not all(isinstance(v, Tensor) for v in raw_state.values()):
            raise CheckpointError(f"{path}: model_state_dict is not a mapping of tensors")
        state = normalise_state_dict(raw_state)
        raw_config = obj.get("model_config")
        if isinstance(raw_config, ConfigBag):
            hf = raw_config.to_dict()
        elif isinstance(raw_config, Mapping):
            hf = dict(raw_config)
        else:
            hf = {}
        config = config_from_hf(hf, state, str(path)) if hf else config_from_state(state, str(path))
        # A pickled HuBERTECGConfig (or, in the oldest files, HubertConfig) marks the authors' training files.
        info = _foreign_info(str(path), path.name, published=isinstance(raw_config, ConfigBag))
        for key in ("global_step", "pretraining_vocab_sizes", "finetuning_vocab_size", "linear", "use_label_embedding"):
            if key in obj and isinstance(obj[key], (int, float, bool, list, tuple)):
                info.extra[key] = obj[key] if not isinstance(obj[key], tuple) else list(obj[key])
        _note_assumed_activation(config, info, str(path))
        return cls._from_state(config, state, str(path), info)

    # -- saving ----------------------------------------------------------------------------------
    def save_pretrained(
        self, directory: str | os.PathLike, *, dtype: torch.dtype | None = None, model_card: bool = True
    ) -> Path:
        """Write ``config.json`` (HF ``HubertConfig`` + our keys), ``model.safetensors`` and ``README.md``.

        A new folder appears complete or not at all; in a folder that already holds a hubert-ecg model our
        three files are replaced one atomic rename each (the config, which carries the weights' checksum,
        last) and every other file stays; a non-empty folder holding anything else is refused.
        """
        from safetensors.torch import save_file

        directory = Path(directory).expanduser()
        check_info(self.config, self.info, str(directory))
        state = {
            k: (v.detach().to(dtype) if dtype is not None and v.is_floating_point() else v.detach()).contiguous().cpu()
            for k, v in self.state_dict().items()  # type: ignore[attr-defined]  # the mixin sits on an nn.Module
        }
        state = to_hf_state_dict(state)

        def build(tmp: Path) -> None:
            save_file(state, str(tmp / WEIGHTS_FILE), metadata={"format": "pt", "producer": FORMAT_NAME})
            # torch_dtype names what the file holds (a model moved to half precision saves half weights)
            stored = next((v.dtype for v in state.values() if v.is_floating_point()), torch.float32)
            config_json = hf_config(self.config, self.info, stored)
            config_json["hubert_ecg"] = {
                "format": FORMAT_NAME,
                "format_version": FORMAT_VERSION,
                "model": self.config.to_dict(),
                "info": self.info.to_dict(),
                "weights_sha256": sha256_file(tmp / WEIGHTS_FILE),
            }
            if model_card:
                write_model_card(tmp, self.config, self.info, context=directory)
            (tmp / CONFIG_FILE).write_text(json.dumps(config_json, indent=2) + "\n")

        return write_files(directory, build)

    def push_to_hub(
        self,
        repo_id: str,
        *,
        private: bool | None = None,
        token: str | None = None,
        revision: str | None = None,
        commit_message: str = "Upload HuBERT-ECG model",
        create_pr: bool = False,
    ) -> Any:
        """Save to a temporary folder and upload it with ``huggingface_hub`` (``HfApi.create_repo`` then
        ``HfApi.upload_folder``); returns the commit info."""
        try:
            from huggingface_hub import HfApi
        except ImportError:
            raise CheckpointError("push_to_hub needs huggingface_hub (`pip install huggingface_hub`)") from None
        api = HfApi(token=token)
        repo = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        with tempfile.TemporaryDirectory(prefix="hubert-ecg-push-") as tmp:
            folder = self.save_pretrained(Path(tmp) / "model")
            return api.upload_folder(
                repo_id=getattr(repo, "repo_id", repo_id),
                folder_path=str(folder),
                repo_type="model",
                revision=revision,
                commit_message=commit_message,
                create_pr=create_pr,
            )
